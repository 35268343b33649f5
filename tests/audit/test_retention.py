"""Retention: old events go through one audited purge that re-anchors the chain; legal hold and SIEM lag keep them."""

from __future__ import annotations

import datetime as dt
import json
from io import StringIO

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.management import CommandError, call_command
from django.db import DatabaseError, connection, transaction

from audit import record
from audit.checkpoints import checkpoint_write
from audit.jobs.retention import purge_expired
from audit.models import AuditChainHead, AuditDestination, AuditEvent, AuditPurge, AuditSettings, DestinationKind
from audit.policy import invalidate_policy
from audit.retention import audit_purge, audit_retention_update
from audit.services import SystemActor
from audit.verify import verify_chain
from tests.audit.conftest import age_events, record_mixed_chain

OPERATOR = SystemActor("cli:test")


@pytest.fixture
def aged_chain(org, agents_user) -> None:
    """Ten events in acme and a 30-day retention."""
    record_mixed_chain(org, agents_user, count=10)
    AuditSettings.objects.create(organization=org, retention_days=30)


def expiring_through(org, sequence: int) -> dt.datetime:
    """Make acme's events up to `sequence` 40 days old (past the 30-day retention; the rest stay new): the time to
    purge at. The database's purge function judges age by its own clock, so the events must really be old."""
    age_events(org, through=sequence, days=40)
    return dt.datetime.now(dt.UTC)


def sequences(org) -> list[int]:
    """The sequence numbers left in acme's log."""
    return list(AuditEvent.objects.filter(organization=org).order_by("sequence").values_list("sequence", flat=True))


def test_purge_removes_only_expired_events_and_moves_the_anchor(org, aged_chain):
    now = expiring_through(org, 6)
    sixth = AuditEvent.objects.get(organization=org, sequence=6)

    result = audit_purge(organization=org, actor=OPERATOR, now=now)

    assert (result.purged, result.from_sequence, result.to_sequence) == (6, 1, 6)
    assert sequences(org) == [7, 8, 9, 10, 11]
    head = AuditChainHead.objects.get(organization=org)
    assert (head.anchor_sequence, head.anchor_hash) == (6, sixth.hash)
    verified = verify_chain(organization=org)
    assert verified.ok, verified.reason
    assert verified.events_checked == 5


def test_purge_is_recorded_with_its_range_count_and_new_anchor(org, aged_chain):
    audit_purge(organization=org, actor=OPERATOR, now=expiring_through(org, 6))

    event = AuditEvent.objects.get(organization=org, action="audit.purged")
    assert event.sequence == 11
    assert event.actor_display == "cli:test"
    assert (event.data["from_sequence"], event.data["to_sequence"], event.data["count"]) == (1, 6, 6)
    assert event.data["anchor"]["sequence"] == 6
    assert event.data["previous_anchor"] == {"sequence": 0, "hash": "0" * 64}


@pytest.mark.parametrize(
    "patterns",
    [
        [r"\b[0-9a-f]{32,}\b"],  # masks the hashes
        ["sequence"],  # masks the keys
        ["(unclosed"],  # saved around the service: fails closed, every text masked
    ],
)
def test_a_purge_verifies_whatever_redaction_does_to_its_event(org, aged_chain, patterns):
    AuditSettings.objects.filter(organization=org).update(content_policy="redacted", redaction_patterns=patterns)
    invalidate_policy(org.pk)

    audit_purge(organization=org, actor=OPERATOR, now=expiring_through(org, 6))

    purged = AuditEvent.objects.get(organization=org, action="audit.purged")
    assert "REDACTED" in json.dumps(purged.data)
    assert (purged.target_type, purged.target_id) == (
        "audit.auditpurge",
        str(AuditPurge.objects.get(organization=org).pk),
    )
    verified = verify_chain(organization=org)
    assert verified.ok, verified.reason


def test_second_purge_continues_from_the_anchor(org, aged_chain):
    audit_purge(organization=org, actor=OPERATOR, now=expiring_through(org, 6))

    result = audit_purge(organization=org, actor=OPERATOR, now=expiring_through(org, 8))

    assert (result.from_sequence, result.to_sequence, result.purged) == (7, 8, 2)
    assert verify_chain(organization=org).ok


def test_dry_run_shows_the_purge_and_writes_nothing(org, aged_chain):
    age_events(org, through=6, days=40)
    printed = StringIO()
    call_command("audit", "purge", "--org", "acme", "--dry-run", stdout=printed)

    assert "would purge 6 events (#1 to #6)" in printed.getvalue()
    assert sequences(org) == list(range(1, 11))
    assert AuditChainHead.objects.get(organization=org).anchor_sequence == 0


def test_legal_hold_stops_the_purge_and_the_skip_is_recorded(org, owner, aged_chain):
    audit_retention_update(actor=owner, organization=org, legal_hold=True, legal_hold_reason="Case 2024-17")

    result = audit_purge(organization=org, actor=OPERATOR, now=expiring_through(org, 6))

    assert result.purged == 0
    assert result.skipped == "legal hold is on (Case 2024-17)"
    assert sequences(org)[:6] == [1, 2, 3, 4, 5, 6]
    skipped = AuditEvent.objects.get(organization=org, action="audit.purge_skipped")
    assert skipped.data == {"reason": "legal hold", "legal_hold_reason": "Case 2024-17"}


def test_purge_keeps_events_a_siem_destination_has_not_received(org, aged_chain):
    AuditDestination.objects.create(
        organization=org, name="splunk", kind=DestinationKind.SPLUNK_HEC, url="https://siem", delivered_sequence=3
    )

    result = audit_purge(organization=org, actor=OPERATOR, now=expiring_through(org, 6))

    assert (result.purged, result.to_sequence) == (3, 3)
    assert result.kept == ["#4 to #6 not yet delivered to SIEM destination 'splunk'"]
    assert sequences(org)[:3] == [4, 5, 6]
    assert verify_chain(organization=org).ok


def test_a_paused_destination_keeps_what_it_will_catch_up_on_when_resumed(org, aged_chain):
    AuditDestination.objects.create(
        organization=org, name="splunk", kind=DestinationKind.SPLUNK_HEC, url="https://siem", delivered_sequence=10
    )
    AuditDestination.objects.create(
        organization=org, name="off", kind=DestinationKind.WEBHOOK, url="https://x", enabled=False, delivered_sequence=2
    )

    result = audit_purge(organization=org, actor=OPERATOR, now=expiring_through(org, 6))

    assert (result.purged, result.to_sequence) == (2, 2)
    assert result.kept == ["#3 to #6 not yet delivered to paused SIEM destination 'off'"]
    assert sequences(org)[0] == 3


def test_purge_keeps_the_newest_checkpoint_event_and_verify_still_checks_it(org, agents_user):
    record_mixed_chain(org, agents_user, count=4)
    now = expiring_through(org, 4)  # before signing: ageing re-hashes the chain
    checkpoint_write(organization=org)  # signs #4, announced as #5
    record_mixed_chain(org, agents_user, count=3)  # #6-#8
    AuditSettings.objects.create(organization=org, retention_days=30)

    result = audit_purge(organization=org, actor=OPERATOR, now=now)

    assert result.to_sequence == 3
    assert "newest signed checkpoint #4" in result.kept[0]
    verified = verify_chain(organization=org)
    assert verified.ok, verified.reason
    assert verified.checkpoint_sequence == 4


def test_purge_never_removes_the_last_event(org, agents_user):
    record_mixed_chain(org, agents_user, count=3)
    AuditSettings.objects.create(organization=org, retention_days=30)

    result = audit_purge(organization=org, actor=OPERATOR, now=expiring_through(org, 3))

    assert (result.purged, result.to_sequence) == (2, 2)
    assert sequences(org) == [3, 4]
    assert verify_chain(organization=org).ok


def test_nothing_expired_means_nothing_purged_and_nothing_recorded(org, agents_user):
    record_mixed_chain(org, agents_user, count=3)
    AuditSettings.objects.create(organization=org, retention_days=30)

    result = audit_purge(organization=org, actor=OPERATOR)

    assert (result.purged, result.skipped) == (0, "")
    assert sequences(org) == [1, 2, 3]


def test_nightly_task_purges_every_org_with_retention(org, other_org, agents_user, aged_chain):
    age_events(org, through=6, days=40)
    record(action="prompt.submitted", actor=OPERATOR, organization=other_org)  # no retention: untouched

    assert purge_expired.apply().get() == 6
    assert AuditEvent.objects.filter(organization=other_org).count() == 1


def test_retention_change_is_audited_with_before_and_after(org, owner):
    audit_retention_update(actor=owner, organization=org, retention_days=90)
    audit_retention_update(actor=owner, organization=org, legal_hold=True, legal_hold_reason="  SEC   inquiry ")

    changes = list(AuditEvent.objects.filter(organization=org, action="audit.retention_updated").order_by("sequence"))
    assert changes[0].data["before"]["retention_days"] is None
    assert changes[0].data["after"]["retention_days"] == 90
    assert changes[1].data["after"] == {"retention_days": 90, "legal_hold": True, "legal_hold_reason": "SEC inquiry"}
    assert changes[1].actor_display == "olivia"


def test_legal_hold_without_a_reason_is_refused(org, owner):
    with pytest.raises(ValidationError, match="needs a reason"):
        audit_retention_update(actor=owner, organization=org, legal_hold=True)


@pytest.mark.parametrize("days", [0, -5, 10**6])
def test_nonsense_retention_is_refused(org, owner, days):
    with pytest.raises(ValidationError, match="retention_days"):
        audit_retention_update(actor=owner, organization=org, retention_days=days)


def test_only_owners_change_retention_or_purge(org, auditor, aged_chain):
    with pytest.raises(PermissionDenied):
        audit_retention_update(actor=auditor, organization=org, retention_days=1)
    with pytest.raises(PermissionDenied):
        audit_purge(organization=org, actor=auditor)
    assert sequences(org)[0] == 1


def test_retention_cli_sets_shows_and_refuses_hold_without_reason(org):
    def cli(*args: str) -> str:
        out = StringIO()
        call_command("audit", "retention", "--org", "acme", *args, stdout=out)
        return out.getvalue().strip()

    assert cli() == "acme: retention forever; legal hold off"
    assert cli("--days", "365") == "acme: retention 365 days; legal hold off"
    assert cli("--legal-hold", "on", "--reason", "Case 9") == "acme: retention 365 days; legal hold on (Case 9)"
    assert cli("--forever", "--legal-hold", "off") == "acme: retention forever; legal hold off"
    with pytest.raises(CommandError, match="a legal hold needs a reason"):
        cli("--legal-hold", "on")
    with pytest.raises(CommandError, match="--days: must be a number of days"):
        cli("--days", "0")
    with pytest.raises(CommandError, match="No organization with slug 'nope'"):
        call_command("audit", "retention", "--org", "nope", stdout=StringIO())


# PostgreSQL: the trigger lets exactly the purge path through ---------------------------------------------------


def refused(block) -> str:
    """Run a write that must fail, in a savepoint; return the database's message."""
    with pytest.raises(DatabaseError) as caught, transaction.atomic():
        block()
    return str(caught.value)


@pytest.mark.postgres
def test_plain_delete_is_still_refused_after_the_purge_path_exists(org, aged_chain):
    message = refused(lambda: AuditEvent.objects.filter(organization=org, sequence=1).delete())

    assert "audit events are append-only: DELETE" in message
    assert sequences(org)[0] == 1


@pytest.mark.postgres
def test_purge_setting_alone_does_not_delete_past_the_anchor(org, aged_chain):
    def delete_with_setting() -> None:
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL airlock.audit_purge = 'on'")
        AuditEvent.objects.filter(organization=org, sequence=1).delete()

    assert "audit purge refused: event #1 is not before the chain anchor" in refused(delete_with_setting)
    assert sequences(org)[0] == 1


@pytest.mark.postgres
def test_update_is_refused_even_with_the_purge_setting_on(org, aged_chain):
    def update_with_setting() -> None:
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL airlock.audit_purge = 'on'")
        AuditChainHead.objects.filter(organization=org).update(anchor_sequence=5)
        AuditEvent.objects.filter(organization=org, sequence=2).update(action="nothing.happened")

    assert "audit events are append-only: UPDATE" in refused(update_with_setting)
    assert AuditEvent.objects.get(organization=org, sequence=2).action != "nothing.happened"


@pytest.mark.postgres
def test_purge_setting_does_not_outlive_the_purge(org, aged_chain):
    audit_purge(organization=org, actor=OPERATOR, now=expiring_through(org, 6))

    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('airlock.audit_purge', true)")
        assert cursor.fetchone()[0] in (None, "", "off")
    assert "append-only: DELETE" in refused(lambda: AuditEvent.objects.filter(organization=org, sequence=7).delete())
