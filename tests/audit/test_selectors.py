"""Only owners and auditors read an organization's audit log, and only that organization's."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import AnonymousUser
from django.core.exceptions import PermissionDenied

from audit import record
from audit.selectors import events_for_user, session_timeline
from audit.services import AgentActor
from tests.audit.conftest import SESSION_ID, record_mixed_chain


@pytest.fixture
def logs(org, other_org, agents_user, outsider) -> None:
    """Eight events in acme, three in globex."""
    record_mixed_chain(org, agents_user, count=8)
    record_mixed_chain(other_org, outsider, count=3)


@pytest.mark.parametrize("reader", ["owner", "auditor"])
def test_owners_and_auditors_read_their_organizations_log_in_order(request, org, logs, reader):
    user = request.getfixturevalue(reader)

    sequences = list(events_for_user(user=user, organization=org).values_list("sequence", flat=True))

    assert sequences == list(range(1, 9))


@pytest.mark.parametrize("reader", ["agents_user", "plain_member", "outsider"])
def test_members_without_the_auditor_role_and_outsiders_are_denied(request, org, logs, reader):
    user = request.getfixturevalue(reader)

    with pytest.raises(PermissionDenied, match="auditor"):
        events_for_user(user=user, organization=org)


def test_anonymous_visitor_is_denied(org, logs):
    with pytest.raises(PermissionDenied):
        events_for_user(user=AnonymousUser(), organization=org)


def test_reading_the_log_costs_two_queries(org, logs, auditor, django_assert_num_queries):
    with django_assert_num_queries(2):
        events = list(events_for_user(user=auditor, organization=org))

    assert len(events) == 8


def test_session_timeline_lists_only_that_sessions_events_in_order(org, logs, auditor, agents_user):
    record(action="tool.call", actor=AgentActor(user=agents_user, session_id="another-session"), organization=org)

    timeline = list(session_timeline(user=auditor, organization=org, session_id=SESSION_ID))

    assert [event.sequence for event in timeline] == [2, 3, 6, 7]
    assert {event.session_id for event in timeline} == {SESSION_ID}


def test_session_timeline_of_another_organization_is_denied(org, logs, outsider):
    with pytest.raises(PermissionDenied):
        session_timeline(user=outsider, organization=org, session_id=SESSION_ID)
