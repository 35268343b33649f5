"""Reads of the audit log, scoped to the requesting user.

Only owners and auditors (permission action "audit.view") may read an organization's log; anyone else
gets PermissionDenied rather than an empty list, so that "no events" never hides "not allowed".
API views resolve the organization first (a non-member gets 404 there, like for a missing organization),
so a PermissionDenied here means a member without the role: answer 403.
"""

from __future__ import annotations

import uuid

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import QuerySet

from audit.models import AuditEvent
from organizations.models import Organization
from organizations.permissions import require_permission

VIEW_ACTION = "audit.view"


def events_for_user(*, user: AbstractBaseUser | AnonymousUser, organization: Organization) -> QuerySet[AuditEvent]:
    """The organization's events, oldest first; raises PermissionDenied unless the user may view the audit log."""
    require_permission(user, organization, VIEW_ACTION)
    return AuditEvent.objects.filter(organization_id=organization.pk).order_by("sequence")


def session_timeline(
    *, user: AbstractBaseUser | AnonymousUser, organization: Organization, session_id: str | uuid.UUID
) -> QuerySet[AuditEvent]:
    """Every event of one agent session in the order it happened; same permission as `events_for_user`."""
    return events_for_user(user=user, organization=organization).filter(session_id=str(session_id))
