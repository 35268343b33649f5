"""`audit.record()` writes complete, gapless events whose stored form is exactly what was hashed."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from decimal import Decimal

import pytest
from django.db import transaction

from audit import record
from audit.chain import GENESIS_HASH, event_document
from audit.context import bound
from audit.models import AuditEvent
from audit.services import AgentActor, SystemActor
from audit.verify import verify_chain


class CallerFailed(Exception):
    """The audited action failed after its event was recorded."""


def test_events_chain_with_gapless_sequences(org, owner):
    first = record(action="org.created", actor=owner, organization=org, target=org)
    second = record(action="member.added", actor=owner, organization=org, data={"user": "x"})

    assert (first.sequence, second.sequence) == (1, 2)
    assert first.prev_hash == GENESIS_HASH
    assert second.prev_hash == first.hash


def test_each_organization_has_its_own_sequence(org, other_org, owner, outsider):
    record(action="org.created", actor=owner, organization=org)
    record(action="org.updated", actor=owner, organization=org)

    first_elsewhere = record(action="org.created", actor=outsider, organization=other_org)

    assert (first_elsewhere.sequence, first_elsewhere.prev_hash) == (1, GENESIS_HASH)


@pytest.mark.django_db(transaction=True)
def test_rolled_back_transaction_leaves_no_event_and_no_gap(org, owner):
    record(action="org.created", actor=owner, organization=org)

    with pytest.raises(CallerFailed), transaction.atomic():
        record(action="provider.created", actor=owner, organization=org, data={"name": "lost"})
        raise CallerFailed

    assert not AuditEvent.objects.filter(action="provider.created").exists()
    after = record(action="provider.created", actor=owner, organization=org, data={"name": "kept"})
    assert after.sequence == 2
    assert list(AuditEvent.objects.filter(organization=org).values_list("sequence", flat=True)) == [1, 2]
    assert verify_chain(organization=org).ok


def test_user_actor_carries_who_and_where(org, agents_user):
    with bound(request_id="req-42", source_ip="10.1.2.3", user_agent="Firefox/140", auth_method="session"):
        event = record(action="prompt.submitted", actor=agents_user, organization=org, target=org)

    stored = AuditEvent.objects.get(pk=event.pk)
    assert (stored.actor_type, stored.actor_id, stored.actor_display) == ("user", str(agents_user.pk), "alice")
    assert (stored.request_id, stored.source_ip, stored.user_agent, stored.auth_method) == (
        "req-42",
        "10.1.2.3",
        "Firefox/140",
        "session",
    )
    assert (stored.target_type, stored.target_id, stored.target_display) == (
        "organizations.organization",
        str(org.pk),
        "acme",
    )


def test_agent_actor_says_whom_it_acts_for_and_in_which_session(org, agents_user):
    session_id = str(uuid.uuid4())

    with bound(request_id="req-7", auth_method="session"):
        event = record(
            action="tool.call",
            actor=AgentActor(user=agents_user, session_id=session_id),
            organization=org,
            workspace_id=17,
        )

    stored = AuditEvent.objects.get(pk=event.pk)
    assert stored.actor_type == "agent"
    assert stored.actor_id == str(agents_user.pk)
    assert stored.actor_display == f"agent acting for alice in session {session_id}"
    assert (stored.session_id, stored.workspace_id) == (session_id, "17")
    assert stored.auth_method == ""  # the agent did not log in; the user it acts for did
    assert stored.request_id == "req-7"


@pytest.mark.parametrize(
    "actor, display", [(SystemActor("retention"), "retention"), (SystemActor(), "system"), (None, "system")]
)
def test_system_actor_is_recorded_as_airlock_itself(org, actor, display):
    event = record(action="audit.purged", actor=actor, organization=org)

    stored = AuditEvent.objects.get(pk=event.pk)
    assert (stored.actor_type, stored.actor_id, stored.actor_display) == ("system", "", display)


def test_time_is_hashed_as_utc_with_microseconds(org, owner):
    event = record(action="auth.login", actor=owner, organization=org)

    stored = AuditEvent.objects.get(pk=event.pk)
    hashed_time = event_document(stored)["occurred_at"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", hashed_time)
    assert stored.occurred_at == event.occurred_at
    assert stored.occurred_at.utcoffset() == dt.timedelta(0)
    assert event_document(stored) == event_document(event)


def test_data_that_json_has_no_type_for_is_stored_exactly_as_hashed(org, owner):
    moment = dt.datetime(2026, 3, 1, 12, 30, 5, 123456, tzinfo=dt.UTC)
    ident = uuid.UUID("12345678-1234-5678-1234-567812345678")
    data = {
        "when": moment,
        "ident": ident,
        "amount": Decimal("12.50"),
        "huge": 1.5e20,
        "tiny": 1e-7,
        "minus_zero": -0.0,
        "not_a_number": float("nan"),
        "nested": {"list": [1, 2.5, None, True, "ünïcode ✓"], "b": {"a": 1}},
        "nul": "before\x00after",
    }

    event = record(action="model.call", actor=owner, organization=org, data=data)

    stored = AuditEvent.objects.get(pk=event.pk)
    assert stored.data == event.data
    assert event_document(stored) == event_document(event)
    assert stored.data["when"] == "2026-03-01 12:30:05.123456+00:00"
    assert stored.data["ident"] == "12345678-1234-5678-1234-567812345678"
    assert stored.data["amount"] == "12.50"
    assert stored.data["nul"] == "before\ufffdafter"
    assert verify_chain(organization=org).ok


def test_overlong_display_fields_are_cut_to_fit_and_still_verify(org, owner):
    owner.username = "u" * 150
    long_session = "s" * 64

    event = record(action="tool.call", actor=AgentActor(user=owner, session_id=long_session), organization=org)

    assert len(AuditEvent.objects.get(pk=event.pk).actor_display) == 200
    assert verify_chain(organization=org).ok


def test_request_facts_are_stored_cleaned_and_cut_to_their_columns(org, owner):
    with bound(request_id="r" * 80, source_ip="10.0.0.1\x00", user_agent="Agent/" + "x" * 600, auth_method="s" * 40):
        event = record(action="auth.login", actor=owner, organization=org)

    stored = AuditEvent.objects.get(pk=event.pk)
    assert (len(stored.request_id), stored.source_ip, len(stored.user_agent), len(stored.auth_method)) == (
        64,
        "10.0.0.1\ufffd",
        500,
        32,
    )
    assert verify_chain(organization=org).ok


def test_unknown_outcome_is_refused(org, owner):
    with pytest.raises(ValueError, match="Unknown audit outcome 'maybe'"):
        record(action="auth.login", actor=owner, organization=org, outcome="maybe")

    assert not AuditEvent.objects.exists()


def test_overlong_session_id_is_refused_with_its_name(org, owner):
    with pytest.raises(ValueError, match="session_id must be at most 64 characters"):
        record(action="tool.call", actor=owner, organization=org, session_id="x" * 65)
