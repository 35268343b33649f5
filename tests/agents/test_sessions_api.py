"""The sessions API: who may open and see sessions, and clear errors for bad input."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from agents.models import AgentSession, SessionEvent
from agents.services import session_start
from audit.models import AuditEvent
from organizations.api.base import OrganizationScopedViewSet
from organizations.models import Role
from tests.api import api
from tests.factories import LanguageModelFactory, UserFactory, make_member

URL = "/api/v1/orgs/acme/sessions/"


@pytest.fixture
def model(org):
    return LanguageModelFactory(provider__organization=org, is_default=True)


def test_agents_user_opens_a_session_and_the_prompt_is_audited_in_full(agents_user, model):
    response = api(agents_user).post(URL, {"prompt": "List the files"}, format="json")

    assert response.status_code == 201, response.data
    assert response.data["status"] == "queued"
    assert response.data["model"]["id"] == model.pk
    assert response.data["stream_url"] == f"/ws/sessions/{response.data['id']}/"
    event = AuditEvent.objects.get(action="prompt.submitted")
    assert event.data["text"] == "List the files" and event.actor_id == str(agents_user.pk)
    assert event.session_id == response.data["id"]
    assert list(SessionEvent.objects.values_list("seq", "type")) == [(1, "prompt"), (2, "status")]


@pytest.mark.parametrize(
    ("payload", "field", "words"),
    [
        ({"prompt": "   "}, "prompt", "cannot be empty"),
        ({}, "prompt", "required"),
        ({"prompt": "x", "model": 999999}, "model", "No model with id 999999"),
        ({"prompt": "x", "model": "gpt"}, "model", "valid integer"),
        ({"prompt": "x" * 100_001}, "prompt", "limit is 100000"),
    ],
)
def test_bad_input_answers_400_naming_the_field(agents_user, model, payload, field, words):
    response = api(agents_user).post(URL, payload, format="json")

    assert response.status_code == 400
    assert words in str(response.data[field])
    assert not AgentSession.objects.exists()


def test_model_of_another_org_cannot_be_used(agents_user, model, other_org):
    foreign = LanguageModelFactory(provider__organization=other_org)
    response = api(agents_user).post(URL, {"prompt": "hi", "model": foreign.pk}, format="json")
    assert response.status_code == 400 and "model" in response.data


def test_no_default_model_says_what_to_do(agents_user, org):
    response = api(agents_user).post(URL, {"prompt": "hi"}, format="json")
    assert response.status_code == 400
    assert "no default model" in str(response.data["model"])


def test_member_without_agents_role_may_not_start_a_session(plain_member, auditor, model):
    for user in (plain_member, auditor):
        response = api(user).post(URL, {"prompt": "hi"}, format="json")
        assert response.status_code == 403
        assert "agents-user" in str(response.data["detail"])


def test_anonymous_gets_403_and_foreign_org_gets_404(outsider, model):
    assert APIClient().get(URL).status_code == 403
    assert api(outsider).get(URL).status_code == 404
    assert api(outsider).post(URL, {"prompt": "hi"}, format="json").status_code == 404


def test_foreign_session_id_answers_404(agents_user, outsider, model, other_org):
    session = session_start(user=agents_user, organization=model.organization, prompt="secret plans")
    client = api(outsider)

    assert client.get(f"{URL}{session.pk}/").status_code == 404
    assert client.get(f"/api/v1/orgs/globex/sessions/{session.pk}/").status_code == 404
    assert client.get(f"/api/v1/orgs/globex/sessions/{session.pk}/events/").status_code == 404
    assert client.post(f"/api/v1/orgs/globex/sessions/{session.pk}/prompts/", {"prompt": "x"}).status_code == 404
    assert api(agents_user).get(f"{URL}not-a-uuid/").status_code == 404


def test_agents_users_see_their_own_sessions_owners_and_auditors_see_all(org, agents_user, owner, auditor, model):
    colleague = UserFactory(username="bob")
    make_member(org, colleague, Role.AGENTS_USER)
    mine = session_start(user=agents_user, organization=org, prompt="mine")
    theirs = session_start(user=colleague, organization=org, prompt="theirs")

    def ids(user) -> set[str]:
        return {row["id"] for row in api(user).get(URL).data["results"]}

    assert ids(agents_user) == {str(mine.pk)}
    assert ids(owner) == ids(auditor) == {str(mine.pk), str(theirs.pk)}
    assert api(agents_user).get(f"{URL}{theirs.pk}/").status_code == 404


def test_follow_up_prompt_while_the_agent_works_is_refused_with_a_reason(agents_user, model):
    session = session_start(user=agents_user, organization=model.organization, prompt="first")
    response = api(agents_user).post(f"{URL}{session.pk}/prompts/", {"prompt": "second"}, format="json")
    assert response.status_code == 400
    assert "still working" in str(response.data["session"])


def test_follow_up_prompt_on_idle_session_is_queued(agents_user, model):
    session = session_start(user=agents_user, organization=model.organization, prompt="first")
    AgentSession.objects.filter(pk=session.pk).update(status="idle")
    response = api(agents_user).post(f"{URL}{session.pk}/prompts/", {"prompt": "second"}, format="json")
    assert response.status_code == 202
    assert list(session.events.values_list("seq", "type")) == [
        (1, "prompt"),
        (2, "status"),
        (3, "prompt"),
        (4, "status"),
    ]
    assert AuditEvent.objects.filter(action="prompt.submitted").count() == 2


def test_events_endpoint_returns_stored_events_after_seq(agents_user, model):
    session = session_start(user=agents_user, organization=model.organization, prompt="first")
    response = api(agents_user).get(f"{URL}{session.pk}/events/?after=1")
    assert response.status_code == 200
    assert response.data["results"] == [{"seq": 2, "type": "status", "status": "queued"}]
    assert api(agents_user).get(f"{URL}{session.pk}/events/?after=-1").status_code == 400


def test_session_list_costs_the_same_queries_for_3_or_30_sessions(org, owner, agents_user, model):
    client = api(owner)

    def count_queries() -> int:
        with CaptureQueriesContext(connection) as queries:
            assert client.get(URL).status_code == 200
        return len(queries)

    for _ in range(3):
        session_start(user=agents_user, organization=org, prompt="x")
    few = count_queries()
    for _ in range(27):
        session_start(user=agents_user, organization=org, prompt="x")
    assert count_queries() == few


def test_viewsets_cannot_override_the_tenant_filter():
    with pytest.raises(TypeError, match="overrides get_queryset"):

        class Leaky(OrganizationScopedViewSet):
            def get_queryset(self):
                return AgentSession.objects.all()
