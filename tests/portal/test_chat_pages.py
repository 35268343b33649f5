"""The chat pages: who may open them, what they list, and how a foreign organization looks (missing)."""

from __future__ import annotations

import uuid

import pytest
from django.test import Client

from agents.models import AgentSession
from organizations.models import Organization, Role
from providers.models import LanguageModel
from tests.factories import LanguageModelFactory, ProviderFactory, UserFactory, make_member


def _session(org: Organization, user, model: LanguageModel, title: str = "Fix the build") -> AgentSession:
    """A stored session (test set-up, not a service call)."""
    return AgentSession.objects.create(organization=org, created_by=user, model=model, title=title)


@pytest.fixture
def sim_model(org: Organization) -> LanguageModel:
    """The default model of acme, served by the offline simulator."""
    provider = ProviderFactory(organization=org, name="Simulator", is_simulator=True)
    return LanguageModelFactory(provider=provider, identifier="sim-1", display_name="Sim One", is_default=True)


@pytest.fixture
def real_model(org: Organization) -> LanguageModel:
    """A second model of acme behind a real (non-simulator) provider."""
    provider = ProviderFactory(organization=org, name="vLLM", is_simulator=False)
    return LanguageModelFactory(provider=provider, identifier="qwen-coder", display_name="Qwen Coder")


def _client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_anonymous_chat_page_redirects_to_login(org: Organization) -> None:
    response = Client().get("/orgs/acme/chat/")

    assert response.status_code == 302
    assert response["Location"] == "/accounts/login/?next=/orgs/acme/chat/"


def test_anonymous_home_redirects_to_login(db: None) -> None:
    response = Client().get("/")

    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


def test_home_sends_a_member_to_their_organization_chat(org: Organization, agents_user) -> None:
    response = _client(agents_user).get("/")

    assert response.status_code == 302
    assert response["Location"] == "/orgs/acme/chat/"


def test_home_explains_when_the_user_has_no_organization(db: None) -> None:
    loner = UserFactory(username="lonely")

    response = _client(loner).get("/")

    assert response.status_code == 200
    assert "not a member of any organization" in response.content.decode()


def test_member_of_another_org_gets_404_for_acme_chat(org: Organization, outsider) -> None:
    response = _client(outsider).get("/orgs/acme/chat/")

    assert response.status_code == 404


def test_unknown_org_answers_404_like_a_foreign_one(org: Organization, agents_user) -> None:
    response = _client(agents_user).get("/orgs/nope/chat/")

    assert response.status_code == 404


def test_foreign_session_id_answers_404(org: Organization, other_org: Organization, agents_user, outsider, sim_model):
    acme_session = _session(org, agents_user, sim_model)

    # The outsider asks for acme's session under acme, and under their own organization.
    client = _client(outsider)
    assert client.get(f"/orgs/acme/chat/{acme_session.pk}/").status_code == 404
    assert client.get(f"/orgs/globex/chat/{acme_session.pk}/").status_code == 404


def test_session_of_another_org_under_the_wrong_slug_answers_404(
    org: Organization, other_org: Organization, agents_user, sim_model
) -> None:
    session = _session(org, agents_user, sim_model)
    make_member(other_org, agents_user, Role.AGENTS_USER)

    response = _client(agents_user).get(f"/orgs/globex/chat/{session.pk}/")

    assert response.status_code == 404


def test_missing_session_answers_404(org: Organization, agents_user, sim_model) -> None:
    response = _client(agents_user).get(f"/orgs/acme/chat/{uuid.uuid4()}/")

    assert response.status_code == 404


def test_another_users_session_is_hidden_from_a_plain_agents_user(org: Organization, agents_user, sim_model) -> None:
    bob = UserFactory(username="bob")
    make_member(org, bob, Role.AGENTS_USER)
    bobs = _session(org, bob, sim_model, title="Bob's secret work")

    response = _client(agents_user).get(f"/orgs/acme/chat/{bobs.pk}/")

    assert response.status_code == 404


def test_chat_page_lists_models_and_labels_the_simulator(org: Organization, agents_user, sim_model, real_model):
    response = _client(agents_user).get("/orgs/acme/chat/")

    assert response.status_code == 200
    html = response.content.decode()
    assert "Sim One (Offline simulator)" in html
    assert "Qwen Coder" in html
    assert "Qwen Coder (Offline simulator)" not in html
    assert "Offline simulator — not a real model" in html
    # The default (simulator) model is preselected and the badge is visible.
    selected = [m for m in response.context["models"] if m.pk == response.context["selected_model_id"]]
    assert selected == [sim_model]
    assert 'id="simulator-badge" class="badge badge-simulator">' in html


def test_simulator_badge_is_hidden_when_the_default_model_is_real(org: Organization, agents_user, real_model):
    sim_provider = ProviderFactory(organization=org, name="Simulator", is_simulator=True)
    LanguageModelFactory(provider=sim_provider, display_name="Sim Two")
    real_model.is_default = True
    real_model.save()

    html = _client(agents_user).get("/orgs/acme/chat/").content.decode()

    assert "Sim Two (Offline simulator)" in html
    assert 'id="simulator-badge" class="badge badge-simulator" hidden>' in html


def test_chat_page_does_not_list_models_of_other_orgs(
    org: Organization, other_org: Organization, agents_user, sim_model
):
    foreign_provider = ProviderFactory(organization=other_org, name="Globex vLLM")
    LanguageModelFactory(provider=foreign_provider, display_name="Globex Private Model")

    html = _client(agents_user).get("/orgs/acme/chat/").content.decode()

    assert "Sim One" in html
    assert "Globex Private Model" not in html


def test_chat_page_without_models_says_so_and_disables_sending(org: Organization, agents_user) -> None:
    html = _client(agents_user).get("/orgs/acme/chat/").content.decode()

    assert "No models are configured for Acme" in html
    assert 'id="send" class="button primary" disabled' in html


def test_chat_page_carries_what_the_script_needs(org: Organization, agents_user, sim_model) -> None:
    session = _session(org, agents_user, sim_model)

    html = _client(agents_user).get(f"/orgs/acme/chat/{session.pk}/").content.decode()

    assert 'data-org-slug="acme"' in html
    assert f'data-session-id="{session.pk}"' in html
    assert 'data-api-base="/api/v1/orgs/acme/"' in html
    assert 'name="csrfmiddlewaretoken"' in html
    assert "airlock/chat.js" in html


def test_sidebar_lists_only_the_users_own_sessions(org: Organization, agents_user, owner, sim_model) -> None:
    _session(org, agents_user, sim_model, title="Alice refactors the parser")
    _session(org, owner, sim_model, title="Olivia audits the billing code")

    html = _client(agents_user).get("/orgs/acme/chat/").content.decode()

    assert "Alice refactors the parser" in html
    assert "Olivia audits the billing code" not in html


def test_session_titles_are_escaped(org: Organization, agents_user, sim_model) -> None:
    session = _session(org, agents_user, sim_model, title="<script>alert(1)</script>")

    html = _client(agents_user).get(f"/orgs/acme/chat/{session.pk}/").content.decode()

    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_auditor_may_read_a_session_but_not_prompt(org: Organization, agents_user, auditor, sim_model) -> None:
    session = _session(org, agents_user, sim_model)

    response = _client(auditor).get(f"/orgs/acme/chat/{session.pk}/")

    assert response.status_code == 200
    assert 'data-can-prompt="false"' in response.content.decode()
    assert "You may read this session but not send prompts to it." in response.content.decode()


def test_member_without_the_agents_role_is_told_why_they_cannot_prompt(org: Organization, plain_member, sim_model):
    html = _client(plain_member).get("/orgs/acme/chat/").content.decode()

    assert 'data-can-prompt="false"' in html
    assert "ask an owner for the Coder Agents User role" in html
    assert 'id="send" class="button primary" disabled' in html
