"""The models and providers read API and selectors: who sees what, and never a key."""

from __future__ import annotations

import json

import pytest
from django.core.exceptions import PermissionDenied
from django.db import connection
from django.http import Http404
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from providers.selectors import model_default, model_for_user, models_for_user
from providers.services import model_create, provider_create
from tests.factories import LanguageModelFactory
from tests.providers.conftest import SECRET_KEY

MODELS = "/api/v1/orgs/acme/models/"
PROVIDERS = "/api/v1/orgs/acme/providers/"


def api(user=None) -> APIClient:
    client = APIClient()
    if user is not None:
        client.force_authenticate(user)
    return client


@pytest.fixture
def provider(org):
    return provider_create(
        actor=None,
        organization=org,
        name="Offline simulator",
        kind="openai-compatible",
        base_url="http://127.0.0.1:8765/v1",
        api_key=SECRET_KEY,
        is_simulator=True,
    )


@pytest.fixture
def model(org, provider):
    return model_create(
        actor=None, organization=org, provider=provider, identifier="sim", display_name="Simulator", context_limit=8000
    )


@pytest.fixture
def foreign_model(other_org):
    return LanguageModelFactory(provider__organization=other_org, is_default=True)


def test_agents_user_lists_the_orgs_models_with_provider_and_simulator_flag(agents_user, model, foreign_model):
    response = api(agents_user).get(MODELS)

    assert response.status_code == 200
    assert response.json()["results"] == [
        {
            "id": model.pk,
            "identifier": "sim",
            "display_name": "Simulator",
            "context_limit": 8000,
            "is_default": True,
            "provider_name": "Offline simulator",
            "provider_kind": "openai-compatible",
            "is_simulator": True,
            "can_use": True,
        }
    ]


def test_member_without_agents_role_sees_the_catalogue_but_may_not_use_it(plain_member, auditor, model):
    for user in (plain_member, auditor):
        results = api(user).get(MODELS).json()["results"]

        assert [(m["id"], m["can_use"]) for m in results] == [(model.pk, False)]


def test_another_organizations_slug_answers_404(outsider, agents_user, model):
    assert api(outsider).get(MODELS).status_code == 404
    assert api(outsider).get(f"{MODELS}{model.pk}/").status_code == 404
    assert api(agents_user).get("/api/v1/orgs/globex/models/").status_code == 404
    assert api(agents_user).get("/api/v1/orgs/no-such-org/models/").status_code == 404


def test_a_foreign_model_id_answers_404_like_a_missing_one(agents_user, model, foreign_model):
    assert api(agents_user).get(f"{MODELS}{foreign_model.pk}/").status_code == 404
    assert api(agents_user).get(f"{MODELS}999999/").status_code == 404
    assert api(agents_user).get(f"{MODELS}{model.pk}/").json()["identifier"] == "sim"


def test_anonymous_is_refused(model):
    assert api().get(MODELS).status_code == 403
    assert api().get(PROVIDERS).status_code == 403


def test_models_list_costs_the_same_queries_for_one_or_many_models(
    agents_user, org, provider, model, django_assert_num_queries
):
    client = api(agents_user)
    with CaptureQueriesContext(connection) as one:
        client.get(MODELS)
    for n in range(5):
        LanguageModelFactory(provider=provider, organization=org, identifier=f"extra-{n}")
    with django_assert_num_queries(len(one.captured_queries)):
        response = client.get(MODELS)

    assert response.json()["count"] == 6


@pytest.mark.parametrize("user_fixture", ["owner", "auditor"])
def test_owners_and_auditors_list_providers_without_any_key(request, user_fixture, provider):
    user = request.getfixturevalue(user_fixture)

    response = api(user).get(PROVIDERS)

    assert response.status_code == 200
    [row] = response.json()["results"]
    assert row["name"] == "Offline simulator" and row["is_simulator"] is True
    assert row["has_api_key"] is True and row["api_key_hint"] == "7890"
    assert not {"api_key", "api_key_encrypted"} & set(row)
    body = response.content.decode()
    assert SECRET_KEY not in body and provider.api_key_encrypted not in body


@pytest.mark.parametrize("user_fixture", ["agents_user", "plain_member"])
def test_members_without_owner_or_auditor_role_get_403_naming_the_roles(request, user_fixture, provider):
    user = request.getfixturevalue(user_fixture)

    response = api(user).get(PROVIDERS)

    assert response.status_code == 403
    assert "auditor" in response.json()["detail"] and "owner" in response.json()["detail"]


def test_providers_of_another_organization_answer_404(outsider, provider):
    assert api(outsider).get(PROVIDERS).status_code == 404
    assert api(outsider).get(f"{PROVIDERS}{provider.pk}/").status_code == 404


def test_no_api_response_contains_the_key(owner, model, provider):
    client = api(owner)
    bodies = [
        client.get(url).content.decode()
        for url in (MODELS, f"{MODELS}{model.pk}/", PROVIDERS, f"{PROVIDERS}{provider.pk}/")
    ]

    assert all(SECRET_KEY not in body and "SECRETKEY" not in body for body in bodies)
    assert json.loads(bodies[3])["api_key_hint"] == "7890"


def test_models_for_user_is_one_query_and_only_for_agents_users_and_owners(
    org, model, owner, agents_user, plain_member, auditor, outsider, django_assert_num_queries
):
    with django_assert_num_queries(1):
        usable = list(models_for_user(user=agents_user, organization=org))
        _ = usable[0].provider.name

    assert usable == [model]
    assert list(models_for_user(user=owner, organization=org)) == [model]
    for user in (plain_member, auditor, outsider):
        assert list(models_for_user(user=user, organization=org)) == []


def test_model_for_user_answers_404_for_foreign_or_missing_and_403_for_viewers(
    org, model, foreign_model, agents_user, plain_member, outsider
):
    assert model_for_user(user=agents_user, organization=org, model_id=str(model.pk)) == model
    for model_id in (foreign_model.pk, 999999, "abc", None):
        with pytest.raises(Http404):
            model_for_user(user=agents_user, organization=org, model_id=model_id)
    with pytest.raises(Http404):
        model_for_user(user=outsider, organization=org, model_id=model.pk)
    with pytest.raises(PermissionDenied, match="agents-user"):
        model_for_user(user=plain_member, organization=org, model_id=model.pk)


def test_model_default_is_the_orgs_own_default(org, other_org, model, foreign_model):
    assert model_default(organization=org) == model
    assert model_default(organization=other_org) == foreign_model
