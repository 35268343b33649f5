"""The models and providers read API and selectors: who sees what, and never a key."""

from __future__ import annotations

import json

import pytest
from django.core.exceptions import PermissionDenied
from django.db import connection
from django.http import Http404
from django.test.utils import CaptureQueriesContext

from providers.selectors import model_default, model_for_user, models_for_user
from providers.services import model_create, provider_create
from tests.api import api
from tests.factories import LanguageModelFactory
from tests.providers.conftest import SECRET_KEY

MODELS = "/api/v1/orgs/acme/models/"
PROVIDERS = "/api/v1/orgs/acme/providers/"


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
    [row] = response.json()["results"]
    assert {k: row[k] for k in ("id", "identifier", "display_name", "context_limit", "is_default")} == {
        "id": model.pk,
        "identifier": "sim",
        "display_name": "Simulator",
        "context_limit": 8000,
        "is_default": True,
    }
    assert (row["provider_name"], row["provider_kind"], row["is_simulator"], row["can_use"]) == (
        "Offline simulator",
        "openai-compatible",
        True,
        True,
    )
    assert row["is_enabled"] is True and row["compaction_threshold_percent"] == 80 and row["fallback"] is None


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


# --- writes: owners create, change, delete; auditors read; the key is write-only ---------------------------------

NEW_KEY = "sk-live-APIWRITTEN-key-4321"


def test_owner_creates_a_provider_and_the_answer_never_holds_the_key(owner, org):
    response = api(owner).post(
        PROVIDERS,
        {
            "name": "Gateway",
            "kind": "openai-compatible",
            "base_url": "https://gw.internal/v1",
            "api_key": NEW_KEY,
            "extra_headers": {"X-Team": "ml"},
        },
        format="json",
    )

    assert response.status_code == 201, response.content
    body = response.json()
    assert body["has_api_key"] is True and body["api_key_hint"] == "4321" and "api_key" not in body
    assert body["extra_headers"] == {"X-Team": "ml"}
    assert "APIWRITTEN" not in response.content.decode()


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"name": "X", "kind": "soap", "base_url": "http://x/v1"}, "kind"),
        ({"name": "X", "kind": "openai-compatible", "base_url": "ftp://x"}, "base_url"),
        ({"name": "X", "kind": "anthropic"}, "api_key"),
        (
            {"name": "X", "kind": "azure-openai", "api_key": NEW_KEY, "base_url": "https://r.openai.azure.com"},
            "api_version",
        ),
        ({"name": "X", "kind": "bedrock", "use_ambient_credentials": True}, "region"),
        (
            {
                "name": "X",
                "kind": "openai-compatible",
                "base_url": "http://x/v1",
                "extra_headers": {"Authorization": "k"},
            },
            "extra_headers",
        ),
        ({"name": "X", "kind": "openai-compatible", "base_url": "http://x/v1", "colour": "red"}, "colour"),
    ],
)
def test_bad_provider_input_answers_400_naming_the_field(owner, org, payload, field):
    response = api(owner).post(PROVIDERS, payload, format="json")

    assert response.status_code == 400
    assert field in response.json()


def test_owner_rotates_the_key_with_patch_and_never_sees_it(owner, provider):
    response = api(owner).patch(f"{PROVIDERS}{provider.pk}/", {"api_key": NEW_KEY}, format="json")

    assert response.status_code == 200
    assert response.json()["api_key_hint"] == "4321" and "APIWRITTEN" not in response.content.decode()


@pytest.mark.parametrize("user_fixture", ["auditor", "agents_user", "plain_member"])
def test_non_owners_may_not_write_providers(request, user_fixture, provider):
    client = api(request.getfixturevalue(user_fixture))

    assert client.post(PROVIDERS, {"name": "X", "kind": "openai"}, format="json").status_code == 403
    assert client.patch(f"{PROVIDERS}{provider.pk}/", {"name": "Y"}, format="json").status_code == 403
    assert client.delete(f"{PROVIDERS}{provider.pk}/").status_code == 403
    assert client.post(f"{PROVIDERS}{provider.pk}/check/").status_code == 403


def test_foreign_provider_id_answers_404_to_writes(owner, other_org):
    from tests.factories import ProviderFactory

    foreign = ProviderFactory(organization=other_org)
    client = api(owner)

    assert client.patch(f"{PROVIDERS}{foreign.pk}/", {"name": "Y"}, format="json").status_code == 404
    assert client.delete(f"{PROVIDERS}{foreign.pk}/").status_code == 404
    assert client.post(f"{PROVIDERS}{foreign.pk}/check/").status_code == 404


def test_deleting_a_provider_that_models_use_answers_400(owner, model, provider):
    response = api(owner).delete(f"{PROVIDERS}{provider.pk}/")

    assert response.status_code == 400 and "Simulator" in response.json()["provider"][0]


def test_owner_creates_changes_stars_and_deletes_models(owner, org, provider, model):
    client = api(owner)

    created = client.post(
        MODELS,
        {
            "provider": provider.pk,
            "identifier": "qwen",
            "display_name": "Qwen",
            "context_limit": 32000,
            "max_output_tokens": 4096,
            "input_price_per_mtok": "0.5",
            "options": {"temperature": 0.1},
        },
        format="json",
    )
    assert created.status_code == 201, created.content
    new_id = created.json()["id"]
    changed = client.patch(f"{MODELS}{new_id}/", {"display_name": "Qwen 2.5", "fallback": model.pk}, format="json")
    assert changed.status_code == 200 and changed.json()["fallback"] == model.pk
    starred = client.post(f"{MODELS}{new_id}/default/")
    assert starred.status_code == 200 and starred.json()["is_default"] is True
    assert client.delete(f"{MODELS}{model.pk}/").status_code == 204


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"identifier": "x", "context_limit": 0}, "context_limit"),
        ({"identifier": "x", "context_limit": 100, "max_output_tokens": 100}, "max_output_tokens"),
        (
            {"identifier": "x", "context_limit": 100, "compaction_threshold_percent": 120},
            "compaction_threshold_percent",
        ),
        ({"identifier": "x", "context_limit": 100, "input_price_per_mtok": -1}, "input_price_per_mtok"),
        ({"identifier": "x", "context_limit": 100, "options": {"reasoning_effort": "max"}}, "options"),
        ({"identifier": "x", "context_limit": 100, "fallback": 999999}, "fallback"),
    ],
)
def test_bad_model_input_answers_400_naming_the_field(owner, provider, payload, field):
    response = api(owner).post(MODELS, {"provider": provider.pk, **payload}, format="json")

    assert response.status_code == 400
    assert field in response.json()


def test_a_model_on_a_foreign_provider_answers_400(owner, other_org):
    from tests.factories import ProviderFactory

    foreign = ProviderFactory(organization=other_org)

    response = api(owner).post(MODELS, {"provider": foreign.pk, "identifier": "x", "context_limit": 10}, format="json")

    assert response.status_code == 400 and "provider" in response.json()


@pytest.mark.parametrize("user_fixture", ["auditor", "agents_user", "plain_member"])
def test_non_owners_may_not_write_models(request, user_fixture, provider, model):
    client = api(request.getfixturevalue(user_fixture))

    assert (
        client.post(MODELS, {"provider": provider.pk, "identifier": "x", "context_limit": 9}, format="json").status_code
        == 403
    )
    assert client.patch(f"{MODELS}{model.pk}/", {"display_name": "Y"}, format="json").status_code == 403
    assert client.delete(f"{MODELS}{model.pk}/").status_code == 403
    assert client.post(f"{MODELS}{model.pk}/default/").status_code == 403


def test_owner_checks_a_provider_and_reads_each_step(owner, org):
    from providers.simulator import ModelSimulator

    with ModelSimulator(api_key=SECRET_KEY) as sim:
        provider = provider_create(
            actor=None,
            organization=org,
            name="Sim",
            kind="openai-compatible",
            base_url=sim.base_url,
            api_key=SECRET_KEY,
        )
        model = model_create(
            actor=None,
            organization=org,
            provider=provider,
            identifier="airlock-simulator",
            display_name="S",
            context_limit=8000,
        )
        response = api(owner).post(f"{PROVIDERS}{provider.pk}/check/", {"model": model.pk}, format="json")

    assert response.status_code == 200
    body = response.json()
    assert body["ok"] is True, body
    assert [step["name"] for step in body["steps"]] == ["credentials", "dns", "tcp", "api", "model"]


def test_the_model_list_costs_the_same_queries_for_owners_with_many_models(
    owner, org, provider, model, django_assert_num_queries
):
    client = api(owner)
    with CaptureQueriesContext(connection) as one:
        client.get(MODELS)
    for n in range(5):
        LanguageModelFactory(provider=provider, organization=org, identifier=f"more-{n}", restricted_access=True)
    with django_assert_num_queries(len(one.captured_queries)):
        response = client.get(MODELS)

    assert response.json()["count"] == 6


def test_provider_list_costs_the_same_queries_for_one_or_many(owner, org, provider, django_assert_num_queries):
    from tests.factories import ProviderFactory

    client = api(owner)
    with CaptureQueriesContext(connection) as one:
        client.get(PROVIDERS)
    ProviderFactory.create_batch(4, organization=org)
    with django_assert_num_queries(len(one.captured_queries)):
        assert client.get(PROVIDERS).json()["count"] == 5
