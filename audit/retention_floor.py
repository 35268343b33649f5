"""The operator's minimum retention: a deployment-wide floor under every organization's audit retention.

Only the database's owner may set it on PostgreSQL (`audit grants` leaves the services' role SELECT only on its
table), and the purge function refuses any purge under it (migration 0009), so an application whose credentials
leak cannot shorten what the operator promised auditors to keep. Each change is recorded in every organization's
chain as `audit.retention_floor_set`, with the value before and after.
"""

from __future__ import annotations

import datetime as dt

from django.core.exceptions import PermissionDenied
from django.db import DatabaseError, connection, transaction

from audit.models import AuditRetentionFloor
from audit.retention import validate_days
from audit.selectors import organizations_under_retention_floor, retention_floor_days
from audit.services import SystemActor, record
from organizations.models import Organization

INSUFFICIENT_PRIVILEGE = "42501"  # PostgreSQL's SQLSTATE, whatever language its messages are in


def _database_user() -> str:
    if connection.vendor != "postgresql":
        return "sqlite"
    with connection.cursor() as cursor:
        cursor.execute("SELECT session_user")
        return cursor.fetchone()[0]


@transaction.atomic
def audit_retention_floor_set(*, actor: SystemActor, minimum_days: int | None) -> list[str]:
    """Set (or, with None, remove) the deployment's minimum retention; returns the slugs of organizations whose
    retention is now under it (their purges are skipped until an owner raises it).

    An operator's action (a SystemActor from the CLI); on PostgreSQL it needs the owner's credentials.
    """
    if minimum_days is not None:
        validate_days(minimum_days, field="minimum_days")
    before = retention_floor_days()
    if before == minimum_days:
        return organizations_under_retention_floor(minimum_days)
    try:
        with transaction.atomic():
            if minimum_days is None:
                AuditRetentionFloor.objects.filter(pk=1).delete()
            else:
                AuditRetentionFloor.objects.update_or_create(
                    pk=1,
                    defaults={
                        "minimum_days": minimum_days,
                        "set_at": dt.datetime.now(dt.UTC),
                        "set_by": _database_user(),
                    },
                )
    except DatabaseError as exc:
        if getattr(exc.__cause__, "sqlstate", None) == INSUFFICIENT_PRIVILEGE:
            raise PermissionDenied(
                "Only the database's owner may change the minimum retention: run this with the credentials that ran "
                "`migrate`, not the services' role."
            ) from None
        raise
    for organization in Organization.objects.order_by("pk"):
        record(
            action="audit.retention_floor_set",
            actor=actor,
            organization=organization,
            data={"before": before, "after": minimum_days},
        )
    return organizations_under_retention_floor(minimum_days)
