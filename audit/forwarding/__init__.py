"""Forwarding to SIEM destinations (Splunk HEC, signed webhook, syslog), at least once, in order."""

from __future__ import annotations


def schedule_forwarding(organization_id: int) -> None:
    """After an event commits: wake delivery for the organization's enabled destinations, if it has any."""
    # Forwarding is being built: destinations, the delivery task and the receivers' tests land together.
    return None
