"""Reads of the audit log are themselves audited: one `audit.viewed` event per query of the log."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction

from audit.models import AuditEvent, AuditPendingEvent
from audit.services import record
from organizations.models import Organization


@transaction.atomic
def audit_viewed_record(
    *,
    actor: AbstractBaseUser,
    organization: Organization,
    view: str,
    filters: dict[str, Any] | None = None,
    page: dict[str, Any] | None = None,
    event_id: str = "",
) -> AuditEvent | AuditPendingEvent:
    """Record that a user read the organization's audit log: what view, with which filters, which page."""
    data: dict[str, Any] = {"view": view, "filters": filters or {}}
    if page is not None:
        data["page"] = page
    if event_id:
        data["event_id"] = event_id
    return record(action="audit.viewed", actor=actor, organization=organization, target=organization, data=data)
