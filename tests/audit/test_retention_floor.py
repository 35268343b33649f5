"""The operator's minimum retention: no organization keeps its audit events for less, and on PostgreSQL the
services' role can neither lower it nor purge under it."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.management import CommandError, call_command
from django.db import connection

from audit.models import AuditEvent, AuditPurge, AuditRetentionFloor, AuditSettings
from audit.retention import audit_purge, audit_retention_update
from audit.retention_floor import audit_retention_floor_set
from audit.services import SystemActor
from tests.audit.conftest import acting_as, execute, purge_directly, record_mixed_chain, refused
from tests.audit.test_retention import expiring_through, sequences

OPERATOR = SystemActor("cli:test")


def floor(days: int | None) -> str:
    out = StringIO()
    if days is None:
        call_command("audit", "retention_floor", "--clear", stdout=out)
    else:
        call_command("audit", "retention_floor", "--days", str(days), stdout=out)
    return out.getvalue()


def test_no_owner_sets_a_retention_under_the_operators_minimum(org, owner):
    floor(90)

    with pytest.raises(ValidationError, match="at least 90 days \\(the operator's minimum\\)"):
        audit_retention_update(actor=owner, organization=org, retention_days=30)
    audit_retention_update(actor=owner, organization=org, retention_days=90)
    audit_retention_update(actor=owner, organization=org, retention_days=None)  # forever is always allowed


def test_a_legal_hold_is_placed_even_under_an_older_shorter_retention(org, owner):
    AuditSettings.objects.create(organization=org, retention_days=30)
    floor(90)

    # The settings page sends the retention as it is along with the hold.
    row = audit_retention_update(
        actor=owner, organization=org, retention_days=30, legal_hold=True, legal_hold_reason="case 42"
    )

    assert row.legal_hold and row.retention_days == 30


def test_a_retention_set_before_the_minimum_skips_the_purge_and_says_why(org, agents_user):
    record_mixed_chain(org, agents_user, count=10)
    AuditSettings.objects.create(organization=org, retention_days=30)
    now = expiring_through(org, 6)
    floor(90)

    preview = audit_purge(organization=org, actor=OPERATOR, now=now, dry_run=True)
    result = audit_purge(organization=org, actor=OPERATOR, now=now)

    for outcome in (preview, result):
        assert outcome.skipped == "the retention of 30 days is under the operator's minimum of 90 days"
    assert sequences(org)[:10] == list(range(1, 11))
    skipped = AuditEvent.objects.get(organization=org, action="audit.purge_skipped")
    assert skipped.data["minimum_days"] == 90 and skipped.data["retention_days"] == 30


def test_the_cli_sets_shows_and_clears_the_minimum_and_every_organization_records_it(org, other_org):
    AuditSettings.objects.create(organization=org, retention_days=30)

    shown = floor(60)
    cleared = floor(None)
    out = StringIO()
    call_command("audit", "retention_floor", stdout=out)

    assert "minimum retention: 60 days" in shown and "under it (their purges are skipped" in shown and "acme" in shown
    assert "minimum retention: none" in cleared and "minimum retention: none" in out.getvalue()
    for organization in (org, other_org):
        changes = AuditEvent.objects.filter(organization=organization, action="audit.retention_floor_set")
        assert [e.data for e in changes.order_by("sequence")] == [
            {"before": None, "after": 60},
            {"before": 60, "after": None},
        ]
    with pytest.raises(CommandError, match="from 1 to 36500"):
        call_command("audit", "retention_floor", "--days", "0")


@pytest.mark.postgres
def test_the_services_role_can_neither_change_the_minimum_nor_purge_under_it(org, agents_user, runtime_role):
    record_mixed_chain(org, agents_user, count=10)
    AuditSettings.objects.create(organization=org, retention_days=30)
    expiring_through(org, 6)
    floor(90)

    with acting_as(runtime_role):  # a compromised process
        lowered = refused(lambda: execute("UPDATE audit_auditretentionfloor SET minimum_days = 1"))
        erased = refused(lambda: execute("DELETE FROM audit_auditretentionfloor"))
        with pytest.raises(PermissionDenied, match="Only the database's owner"):
            audit_retention_floor_set(actor=OPERATOR, minimum_days=1)
        AuditSettings.objects.filter(organization=org).update(retention_days=30)
        under = purge_directly(org, 6)

    assert "permission denied" in lowered and "permission denied" in erased
    assert "the retention of 30 days is under the operator's minimum of 90 days" in under
    assert AuditRetentionFloor.objects.get().minimum_days == 90
    assert sequences(org)[:10] == list(range(1, 11)) and not AuditPurge.objects.exists()


@pytest.mark.postgres
@pytest.mark.parametrize(
    "grant", ["UPDATE", "UPDATE (minimum_days)", "INSERT (id, minimum_days, set_at, set_by)", "DELETE"]
)
def test_grants_refuse_a_role_that_could_write_the_minimum(runtime_role, grant):
    execute(f"CREATE ROLE {runtime_role}_extra NOLOGIN")
    execute(f"GRANT {grant} ON audit_auditretentionfloor TO {runtime_role}_extra")  # a column-level one too
    execute(f"GRANT {runtime_role}_extra TO {runtime_role}")

    with pytest.raises(CommandError, match=f"{grant.split()[0]} on audit_auditretentionfloor"):
        call_command("audit", "grants", "--role", runtime_role, stdout=StringIO())


@pytest.mark.postgres
def test_a_purge_holds_the_minimum_so_a_new_one_waits_for_it(org, agents_user, runtime_role):
    record_mixed_chain(org, agents_user, count=10)
    AuditSettings.objects.create(organization=org, retention_days=30)
    expiring_through(org, 6)

    with acting_as(runtime_role):
        execute("SELECT airlock_audit_purge(%s, %s)", [org.pk, 6])
    with connection.cursor() as cursor:  # still in the purge's transaction
        cursor.execute(
            "SELECT mode FROM pg_locks WHERE pid = pg_backend_pid() "
            "AND relation = 'audit_auditretentionfloor'::regclass"
        )
        modes = {row[0] for row in cursor.fetchall()}

    assert "ShareLock" in modes
