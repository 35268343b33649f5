"""The role the services connect as can append to the audit log but cannot change or delete it (PostgreSQL).

`python manage.py audit grants --role ROLE` gives the role its rights; the tests then act as it (`SET ROLE`) the way
a compromised web process would, and as the product does: record, chain, checkpoint, purge.
"""

from __future__ import annotations

import datetime as dt
from io import StringIO

import pytest
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command
from django.db import connection

from audit import chaining, record
from audit.checkpoints import checkpoint_write
from audit.models import (
    AuditChainHead,
    AuditCheckpoint,
    AuditDestination,
    AuditEvent,
    AuditPurge,
    AuditSettings,
    DestinationKind,
)
from audit.retention import PURGE_FUNCTION, audit_purge
from audit.services import SystemActor
from audit.verify import verify_chain
from tests.audit.conftest import acting_as, age_events, execute, purge_directly, record_mixed_chain, refused
from tests.audit.test_retention import expiring_through, sequences

pytestmark = pytest.mark.postgres

OPERATOR = SystemActor("cli:test")


def test_the_runtime_role_records_chains_and_signs_like_the_owner(org, agents_user, runtime_role, settings):
    with acting_as(runtime_role):
        record_mixed_chain(org, agents_user, count=4)
        settings.AUDIT_CHAINING = "batched"
        record(action="session.created", actor=agents_user, organization=org, data={"n": 5})
        assert chaining.chain_pending(org.pk, wait=True) == 1
        checkpoint = checkpoint_write(organization=org)

    assert sequences(org) == [1, 2, 3, 4, 5, 6]  # the checkpoint is itself recorded
    assert checkpoint.sequence == 5
    assert verify_chain(organization=org).ok


def test_the_runtime_role_cannot_delete_update_or_truncate_events_even_with_the_purge_flag(
    org, agents_user, runtime_role
):
    record_mixed_chain(org, agents_user, count=3)
    events = AuditEvent._meta.db_table

    with acting_as(runtime_role):
        deleted = refused(
            lambda: (
                execute("SET LOCAL airlock.audit_purge = 'on'"),
                execute(f"DELETE FROM {events} WHERE sequence = 1"),  # noqa: S608
            )
        )
        updated = refused(lambda: execute(f"UPDATE {events} SET action = 'nothing.happened'"))  # noqa: S608
        truncated = refused(lambda: execute(f"TRUNCATE {events}"))

    for message in (deleted, updated, truncated):
        assert "permission denied" in message
    assert sequences(org) == [1, 2, 3]


def test_the_runtime_role_cannot_move_the_anchor_or_remove_checkpoints(org, agents_user, runtime_role):
    record_mixed_chain(org, agents_user, count=3)
    checkpoint_write(organization=org)

    with acting_as(runtime_role):
        moved = refused(lambda: AuditChainHead.objects.filter(organization=org).update(anchor_sequence=2))
        removed = refused(lambda: AuditCheckpoint.objects.filter(organization=org).delete())

    assert "permission denied" in moved and "permission denied" in removed
    assert AuditChainHead.objects.get(organization=org).anchor_sequence == 0
    assert AuditCheckpoint.objects.filter(organization=org).count() == 1


def test_the_runtime_role_purges_only_through_the_audited_path(org, agents_user, runtime_role):
    record_mixed_chain(org, agents_user, count=10)
    AuditSettings.objects.create(organization=org, retention_days=30)

    now = expiring_through(org, 6)  # set-up as a superuser

    with acting_as(runtime_role):
        result = audit_purge(organization=org, actor=OPERATOR, now=now)

    assert (result.purged, result.to_sequence) == (6, 6)
    assert sequences(org) == [7, 8, 9, 10, 11]
    purged = AuditEvent.objects.get(organization=org, sequence=11)
    assert purged.action == "audit.purged"
    assert purged.data["anchor"]["sequence"] == 6
    assert verify_chain(organization=org).ok
    trace = AuditPurge.objects.get(organization=org)
    assert (trace.from_sequence, trace.to_sequence, trace.deleted, trace.retention_days) == (1, 6, 6, 30)
    assert trace.anchor_hash == purged.data["anchor"]["hash"]
    with acting_as(runtime_role):
        erased = refused(lambda: AuditPurge.objects.filter(organization=org).delete())
        forged = refused(
            lambda: AuditPurge.objects.create(
                organization=org,
                from_sequence=7,
                to_sequence=8,
                anchor_hash="0" * 64,
                deleted=2,
                retention_days=1,
                purged_at=trace.purged_at,
                database_user="someone",
            )
        )
    assert "permission denied" in erased and "permission denied" in forged


def test_the_runtime_role_cannot_purge_recent_events_whatever_it_writes_in_the_settings(org, agents_user, runtime_role):
    record_mixed_chain(org, agents_user, count=10)
    AuditSettings.objects.create(organization=org, retention_days=36_500, legal_hold=True, legal_hold_reason="case")

    with acting_as(runtime_role):  # a compromised process: lifts the hold, shortens retention, calls the function
        AuditSettings.objects.filter(organization=org).update(legal_hold=False, retention_days=1)
        message = purge_directly(org, 9)

    assert "event #1 is younger than the retention of 1 days" in message
    assert sequences(org) == list(range(1, 11))
    assert not AuditPurge.objects.filter(organization=org).exists()


@pytest.fixture
def retained_chain(org, agents_user) -> None:
    """Ten events in acme and a 30-day retention."""
    record_mixed_chain(org, agents_user, count=10)
    AuditSettings.objects.create(organization=org, retention_days=30)


def test_the_purge_function_keeps_the_rules_when_called_directly(org, retained_chain, runtime_role):
    with acting_as(runtime_role):
        last = purge_directly(org, 10)
        before_anchor = purge_directly(org, 0)
    AuditSettings.objects.filter(organization=org).update(legal_hold=True, legal_hold_reason="litigation")
    with acting_as(runtime_role):
        held = purge_directly(org, 5)
    AuditSettings.objects.filter(organization=org).update(legal_hold=False, retention_days=None)
    with acting_as(runtime_role):
        forever = purge_directly(org, 5)

    assert "the chain's last event #10 is always kept" in last
    assert "event #0 is not after the chain anchor #0" in before_anchor
    assert "legal hold" in held
    assert "keeps its events forever" in forever
    assert sequences(org) == list(range(1, 11))


def test_a_refusal_of_the_purge_function_reaches_the_operator_as_a_clear_error(org, retained_chain, runtime_role):
    with acting_as(runtime_role), pytest.raises(ValidationError) as caught:
        # A `now` ahead of the database's clock: the service plans a purge the function refuses.
        audit_purge(organization=org, actor=OPERATOR, now=dt.datetime.now(dt.UTC) + dt.timedelta(days=31))

    assert caught.value.messages == ["Audit purge refused: event #1 is younger than the retention of 30 days."]
    assert sequences(org) == list(range(1, 11))


def test_the_purge_function_keeps_undelivered_and_checkpointed_events(org, retained_chain, runtime_role):
    age_events(org, through=10, days=40)
    AuditDestination.objects.create(
        organization=org, name="splunk", kind=DestinationKind.SPLUNK_HEC, url="https://splunk.test/", enabled=False
    )
    AuditDestination.objects.filter(organization=org).update(delivered_sequence=4)
    with acting_as(runtime_role):
        undelivered = purge_directly(org, 5)
    AuditDestination.objects.filter(organization=org).update(delivered_sequence=10)
    checkpoint_write(organization=org)  # signs #10 and is recorded as #11
    with acting_as(runtime_role):
        checkpointed = purge_directly(org, 10)
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT {PURGE_FUNCTION}(%s, %s)", [org.pk, 2])
            deleted = cursor.fetchone()[0]

    assert "events after #4 are not yet delivered to every SIEM destination" in undelivered
    assert "events from #10, the newest signed checkpoint's event, on are kept" in checkpointed
    assert deleted == 2
    assert AuditChainHead.objects.get(organization=org).anchor_sequence == 2
    assert sequences(org)[:2] == [3, 4]


def test_grants_refuse_a_superuser_an_unknown_role_and_print_without_running(runtime_role):
    with pytest.raises(CommandError, match=r"superuser \(it can switch the append-only trigger off\)[;.]"):
        call_command("audit", "grants", "--role", connection.settings_dict["USER"] or "postgres", stdout=StringIO())
    with pytest.raises(CommandError, match="No PostgreSQL role 'nobody_here'; create it first"):
        call_command("audit", "grants", "--role", "nobody_here", stdout=StringIO())
    out = StringIO()
    call_command("audit", "grants", "--role", "nobody_here", "--print", stdout=out)
    assert "GRANT EXECUTE ON FUNCTION" in out.getvalue()
    assert "REVOKE UPDATE, DELETE, TRUNCATE" in out.getvalue()


@pytest.mark.parametrize("inherit", ["INHERIT", "NOINHERIT"])
def test_grants_refuse_a_role_that_keeps_delete_through_another_role(runtime_role, inherit):
    helper = f"{runtime_role}_helper"
    execute(f'CREATE ROLE "{helper}" NOLOGIN')
    execute(f'GRANT DELETE ON {AuditEvent._meta.db_table} TO "{helper}"')
    execute(f'ALTER ROLE "{runtime_role}" {inherit}')
    execute(f'GRANT "{helper}" TO "{runtime_role}"')

    with pytest.raises(CommandError) as refusal:
        call_command("audit", "grants", "--role", runtime_role, stdout=StringIO())

    assert f"DELETE on {AuditEvent._meta.db_table} (through role '{helper}')" in str(refusal.value)


def test_grants_refuse_a_member_of_the_tables_owner(runtime_role):
    owner = connection.settings_dict["USER"] or "postgres"
    execute(f'GRANT "{owner}" TO "{runtime_role}"')

    with pytest.raises(CommandError) as refusal:
        call_command("audit", "grants", "--role", runtime_role, stdout=StringIO())

    assert f"superuser (it can switch the append-only trigger off) (through role '{owner}')" in str(refusal.value)


def test_verify_names_a_purge_made_by_calling_the_function_directly(org, retained_chain, runtime_role):
    age_events(org, through=6, days=40)

    with acting_as(runtime_role), connection.cursor() as cursor:
        cursor.execute(f"SELECT {PURGE_FUNCTION}(%s, %s)", [org.pk, 6])  # the rules hold: it deletes
        deleted = cursor.fetchone()[0]
        result = verify_chain(organization=org)

    assert deleted == 6
    assert sequences(org) == [7, 8, 9, 10]
    assert not result.ok
    assert result.first_bad_sequence == 6
    assert "the purge of #1 to #6 at " in result.reason
    assert "has no audit.purged event: the purge function was called outside Airlock's retention service" in (
        result.reason
    )


def test_the_purge_function_runs_with_its_own_search_path_and_time_zone(db):
    """Pinned on the function itself, so nothing the caller (or an object it plants in a schema) sets reaches it."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT prosecdef, proconfig FROM pg_proc WHERE proname = %s", [PURGE_FUNCTION])
        rows = cursor.fetchall()

    assert len(rows) == 1
    definer, config = rows[0]
    assert definer
    assert "search_path=pg_catalog, pg_temp" in config and "TimeZone=UTC" in config


def swinging_time_zone(days: int) -> str:
    """A POSIX time zone whose offset jumps by about two weeks, placed so that `now() - <days> days` moves the most."""
    best: tuple[float, str] | None = None
    with connection.cursor() as cursor:
        for day in range(1, 366, 4):
            for rule in (f"J{day}/0,J365/24", f"J1/0,J{day}/0"):
                zone = f"AAA-167BBB+167,{rule}"
                cursor.execute("SELECT set_config('TimeZone', %s, true)", [zone])
                cursor.execute("SELECT extract(epoch FROM (now() - make_interval(days => %s)) - now())", [days])
                shift = float(cursor.fetchone()[0]) + days * 86400
                if best is None or shift > best[0]:
                    best = (shift, zone)
        cursor.execute("SELECT set_config('TimeZone', 'UTC', true)")
    assert best is not None and best[0] > 7 * 86400, "no zone moved calendar-day arithmetic by a week"
    return best[1]


def test_the_callers_time_zone_does_not_move_the_age_rule(org, retained_chain, runtime_role):
    age_events(org, through=9, days=20)  # twenty days old under a thirty-day retention: kept
    zone = swinging_time_zone(30)

    with acting_as(runtime_role):
        execute("SELECT set_config('TimeZone', %s, true)", [zone])
        message = purge_directly(org, 9)

    assert "event #1 is younger than the retention of 30 days" in message
    assert sequences(org) == list(range(1, 11))


def test_a_role_that_held_every_right_before_the_grants_cannot_plant_a_trigger(org, retained_chain, db):
    role = f"{connection.settings_dict['NAME']}_loose"
    execute(f'CREATE ROLE "{role}" NOLOGIN')
    execute(f'GRANT ALL ON ALL TABLES IN SCHEMA public TO "{role}"')  # what a DBA often starts with
    call_command("audit", "grants", "--role", role, stdout=StringIO())

    with acting_as(role):
        execute("CREATE FUNCTION pg_temp.planted() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$")
        planted = refused(
            lambda: execute(
                f"CREATE TRIGGER planted BEFORE UPDATE ON {AuditChainHead._meta.db_table} "
                "FOR EACH ROW EXECUTE FUNCTION pg_temp.planted()"
            )
        )

    assert "permission denied" in planted


def test_grants_refuse_createrole_and_trigger_rights_held_through_another_role(runtime_role):
    execute(f'ALTER ROLE "{runtime_role}" CREATEROLE')
    with pytest.raises(CommandError, match=r"still has CREATEROLE \(it could grant itself the tables' owner\)"):
        call_command("audit", "grants", "--role", runtime_role, stdout=StringIO())
    execute(f'ALTER ROLE "{runtime_role}" NOCREATEROLE')
    helper = f"{runtime_role}_triggers"
    execute(f'CREATE ROLE "{helper}" NOLOGIN')
    execute(f'GRANT TRIGGER ON {AuditChainHead._meta.db_table} TO "{helper}"')
    execute(f'GRANT "{helper}" TO "{runtime_role}"')

    with pytest.raises(CommandError, match=f"TRIGGER on a table .through role '{helper}'."):
        call_command("audit", "grants", "--role", runtime_role, stdout=StringIO())
