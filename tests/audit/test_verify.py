"""`audit verify` proves a chain intact and names the first event that was altered, removed or reordered."""

from __future__ import annotations

import datetime as dt
import uuid
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db.models import F

from audit import record
from audit.chain import GENESIS_HASH, chain_hash, event_document
from audit.models import AuditChainHead, AuditEvent
from audit.services import SystemActor
from audit.verify import verify_chain
from tests.audit.conftest import record_mixed_chain, tampering


@pytest.fixture
def chain(org, agents_user) -> list[AuditEvent]:
    """Twelve events of mixed kinds in acme."""
    return record_mixed_chain(org, agents_user, count=12)


def verify_cli(*args: str) -> str:
    """Run `audit verify` in-process and return what it printed (CommandError propagates)."""
    out = StringIO()
    call_command("audit", "verify", *args, stdout=out)
    return out.getvalue()


def events(org) -> object:
    """All of an organization's events (a queryset to tamper with)."""
    return AuditEvent.objects.filter(organization=org)


def test_untouched_chain_of_mixed_actions_verifies(org, chain):
    result = verify_chain(organization=org)

    assert result.ok, result.reason
    assert (result.events_checked, result.first_bad_sequence) == (12, None)
    assert (result.head_sequence, result.head_hash) == (12, chain[-1].hash)
    assert verify_cli("--org", "acme") == f"OK: 12 events verified, head #12 {chain[-1].hash[:12]}\n"


def test_empty_log_verifies_with_zero_events(org):
    assert verify_cli("--org", "acme") == f"OK: 0 events verified, head #0 {GENESIS_HASH[:12]}\n"


@pytest.mark.parametrize(
    "field, value",
    [
        ("data", {"chars": 1}),
        ("actor_display", "somebody else"),
        ("outcome", "success"),
        ("action", "prompt.deleted"),
        ("occurred_at", dt.datetime(2020, 1, 1, tzinfo=dt.UTC)),
    ],
)
def test_altered_event_fails_naming_its_sequence(org, chain, field, value):
    with tampering():
        events(org).filter(sequence=7).update(**{field: value})

    result = verify_chain(organization=org)

    assert not result.ok
    assert result.first_bad_sequence == 7
    assert result.reason == "event #7: stored hash does not match its content (altered)"
    with pytest.raises(CommandError, match=r"^FAILED at #7: event #7: stored hash does not match its content"):
        verify_cli("--org", "acme")


def test_each_verification_is_recorded_with_its_result(org, chain):
    verify_cli("--org", "acme")
    with tampering():
        events(org).filter(sequence=7).update(action="prompt.deleted")
    with pytest.raises(CommandError):
        verify_cli("--org", "acme")

    intact, broken = events(org).filter(action="audit.verified").order_by("sequence")
    assert (intact.sequence, intact.outcome, intact.actor_display) == (13, "success", "cli:audit verify")
    assert (intact.data["events_checked"], intact.data["head_sequence"]) == (12, 12)
    assert (broken.outcome, broken.data["first_bad_sequence"]) == ("failure", 7)
    assert broken.error.startswith("#7: event #7: stored hash does not match its content")


def test_moving_the_time_by_one_microsecond_is_detected(org, chain):
    with tampering():
        events(org).filter(sequence=3).update(occurred_at=F("occurred_at") + dt.timedelta(microseconds=1))

    assert verify_chain(organization=org).first_bad_sequence == 3


def test_altered_event_with_recomputed_hash_breaks_the_next_link(org, chain):
    forged = events(org).get(sequence=7)
    forged.data = {"chars": 0}
    forged.hash = chain_hash(forged.prev_hash, event_document(forged))
    with tampering():
        events(org).filter(sequence=7).update(data=forged.data, hash=forged.hash)

    result = verify_chain(organization=org)

    assert result.first_bad_sequence == 8
    assert result.reason.startswith("event #8: prev_hash does not match the hash of the event before it")


def test_deleted_middle_event_is_named_as_missing(org, chain):
    with tampering():
        events(org).filter(sequence=5).delete()

    result = verify_chain(organization=org)

    assert (result.ok, result.first_bad_sequence) == (False, 5)
    assert result.reason == "sequence jumps from #4 to #6: event #5 is missing"
    assert result.events_checked == 4
    with pytest.raises(CommandError, match="FAILED at #5: sequence jumps from #4 to #6: event #5 is missing"):
        verify_cli("--org", "acme")


def test_several_deleted_events_are_named_as_a_range(org, chain):
    with tampering():
        events(org).filter(sequence__in=[5, 6, 7]).delete()

    assert verify_chain(organization=org).reason == "sequence jumps from #4 to #8: events #5 to #7 are missing"


def test_swapped_sequence_numbers_fail_at_the_first_swapped_event(org, chain):
    third, fourth = events(org).get(sequence=3), events(org).get(sequence=4)
    with tampering():
        events(org).filter(pk=third.pk).update(sequence=-1)
        events(org).filter(pk=fourth.pk).update(sequence=3)
        events(org).filter(pk=third.pk).update(sequence=4)

    result = verify_chain(organization=org)

    assert result.first_bad_sequence == 3
    assert "event #3: prev_hash does not match" in result.reason


def test_deleted_last_event_is_reported_as_a_truncated_tail(org, chain):
    with tampering():
        events(org).filter(sequence=12).delete()

    result = verify_chain(organization=org)

    assert (result.ok, result.first_bad_sequence, result.events_checked) == (False, 12, 11)
    assert result.reason == "chain head says #12 but the log ends at #11: events were removed from the end"
    with pytest.raises(CommandError, match="FAILED at #12: chain head says #12 but the log ends at #11"):
        verify_cli("--org", "acme")


def test_every_event_deleted_is_reported_against_the_head(org, chain):
    with tampering():
        events(org).delete()

    result = verify_chain(organization=org)

    assert (result.ok, result.first_bad_sequence) == (False, 1)
    assert "chain head says #12 but the log ends at its anchor" in result.reason


def test_changed_prev_hash_fails_at_that_event(org, chain):
    with tampering():
        events(org).filter(sequence=9).update(prev_hash="f" * 64)

    result = verify_chain(organization=org)

    assert result.first_bad_sequence == 9
    assert result.reason.startswith("event #9: prev_hash does not match the hash of the event before it")
    with pytest.raises(CommandError, match="FAILED at #9: event #9: prev_hash"):
        verify_cli("--org", "acme")


def test_garbage_prev_hash_on_the_first_event_is_reported_not_crashed_on(org, chain):
    with tampering():
        events(org).filter(sequence=1).update(prev_hash="é" * 64)

    result = verify_chain(organization=org)

    assert result.first_bad_sequence == 1
    assert result.reason.startswith("event #1: prev_hash does not match the hash of the event before it")


def test_replaced_last_event_is_caught_by_the_head_hash(org, chain):
    last = events(org).get(sequence=12)
    last.data = {"rewritten": True}
    last.hash = chain_hash(last.prev_hash, event_document(last))
    with tampering():
        events(org).filter(pk=last.pk).update(data=last.data, hash=last.hash)

    result = verify_chain(organization=org)

    assert result.first_bad_sequence == 12
    assert result.reason.startswith("chain head hash does not match event #12")


def test_event_forged_past_the_head_is_reported(org, chain):
    head = AuditChainHead.objects.get(organization=org)
    forged = AuditEvent(
        id=uuid.uuid4(),
        organization=org,
        sequence=13,
        occurred_at=dt.datetime.now(dt.UTC),
        action="role.granted",
        actor_type="system",
        actor_display="system",
        data={},
        prev_hash=head.hash,
    )
    forged.hash = chain_hash(head.hash, event_document(forged))
    forged.save(force_insert=True)

    result = verify_chain(organization=org)

    assert result.first_bad_sequence == 13
    assert "the log continues past the chain head (#12) with event #13" in result.reason


def test_missing_chain_head_is_reported(org, chain):
    AuditChainHead.objects.filter(organization=org).delete()

    result = verify_chain(organization=org)

    assert (result.ok, result.first_bad_sequence) == (False, 1)
    assert "chain head row is missing" in result.reason


def test_tampering_in_one_organization_leaves_another_verified(org, other_org, chain, owner):
    record_mixed_chain(other_org, owner, count=5)
    with tampering():
        events(org).filter(sequence=2).update(data={})

    assert not verify_chain(organization=org).ok
    assert verify_cli("--org", "globex").startswith("OK: 5 events verified, head #5 ")


def test_verify_since_checks_only_the_later_events(org, chain):
    with tampering():
        events(org).filter(sequence=3).update(data={})

    assert verify_cli("--org", "acme", "--since", "6").startswith("OK: 7 events verified, head #12 ")
    with pytest.raises(CommandError, match="FAILED at #3"):
        verify_cli("--org", "acme", "--since", "3")


def test_verify_since_past_the_head_is_refused(org, chain):
    with pytest.raises(CommandError, match=r"Cannot verify from #50: the chain head is #12\."):
        verify_cli("--org", "acme", "--since", "50")


def test_verify_since_zero_is_refused(org, chain):
    with pytest.raises(CommandError, match="must be a sequence number of 1 or more"):
        verify_cli("--org", "acme", "--since", "0")


def test_verify_unknown_organization_names_the_slug(db):
    with pytest.raises(CommandError, match="No organization with slug 'nope'"):
        verify_cli("--org", "nope")


def test_verification_starts_from_the_anchor_after_a_purge(org, chain):
    # What the retention purge will do: remove the oldest events and re-anchor the head on the last one removed.
    with tampering():
        events(org).filter(sequence__lte=4).delete()
    AuditChainHead.objects.filter(organization=org).update(anchor_sequence=4, anchor_hash=chain[3].hash)

    result = verify_chain(organization=org)

    assert (result.ok, result.events_checked) == (True, 8)
    record(action="audit.verified", actor=SystemActor(), organization=org)
    assert verify_chain(organization=org).events_checked == 9


def test_purge_without_re_anchoring_is_reported_as_missing_events(org, chain):
    with tampering():
        events(org).filter(sequence__lte=4).delete()

    result = verify_chain(organization=org)

    assert result.first_bad_sequence == 1
    assert result.reason == "sequence jumps from #0 to #5: events #1 to #4 are missing"


@pytest.mark.django_db(transaction=True)
def test_cli_exits_zero_on_an_intact_chain_and_one_naming_the_altered_row(org, agents_user, manage_py):
    chain = record_mixed_chain(org, agents_user, count=12)

    intact = manage_py("audit", "verify", "--org", "acme")
    assert (intact.returncode, intact.stderr) == (0, "")
    assert intact.stdout == f"OK: 12 events verified, head #12 {chain[-1].hash[:12]}\n"

    with tampering():
        AuditEvent.objects.filter(organization=org, sequence=7).update(data={"chars": 1})
    tampered = manage_py("audit", "verify", "--org", "acme")
    assert tampered.returncode == 1
    assert tampered.stdout == ""
    assert "FAILED at #7: event #7: stored hash does not match its content (altered)" in tampered.stderr
    assert "Traceback" not in tampered.stderr


@pytest.mark.django_db(transaction=True)
def test_cli_unknown_organization_exits_non_zero_with_a_message(manage_py):
    run = manage_py("audit", "verify", "--org", "nope")

    assert run.returncode != 0
    assert "No organization with slug 'nope'" in run.stderr
    assert "Traceback" not in run.stderr
