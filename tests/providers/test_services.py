"""Provider and model services: validation that names the field, encrypted keys, one default, audited."""

from __future__ import annotations

import json

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import connection

from audit.models import AuditEvent
from audit.services import AgentActor, SystemActor
from providers.crypto import decrypt_secret
from providers.models import LanguageModel, Provider
from providers.services import model_create, model_set_default, model_update, provider_create, provider_update
from tests.factories import LanguageModelFactory, ProviderFactory
from tests.providers.conftest import SECRET_KEY


def make_provider(org, actor=None, **overrides) -> Provider:
    fields = {"name": "vLLM", "kind": "openai-compatible", "base_url": "http://vllm:8000/v1", "api_key": SECRET_KEY}
    return provider_create(actor=actor, organization=org, **{**fields, **overrides})


def make_model(org, provider, actor=None, **overrides) -> LanguageModel:
    fields = {"identifier": "llama3", "display_name": "Llama 3", "context_limit": 8192}
    return model_create(actor=actor, organization=org, provider=provider, **{**fields, **overrides})


def raw_provider_row(provider: Provider) -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM providers_provider WHERE id = %s", [provider.pk])
        return repr(cursor.fetchone())


def test_owner_creates_a_provider_and_the_key_is_stored_only_encrypted(org, owner):
    provider = make_provider(org, owner)

    assert SECRET_KEY not in raw_provider_row(provider)
    assert decrypt_secret(provider.api_key_encrypted) == SECRET_KEY
    assert provider.api_key_hint == "7890" and provider.has_api_key
    assert provider.base_url == "http://vllm:8000/v1", "internal host names without a dot are accepted"


def test_provider_created_is_audited_with_a_masked_key_and_never_the_key(org, owner):
    provider = make_provider(org, owner)

    event = AuditEvent.objects.get(action="provider.created")
    assert event.actor_id == str(owner.pk) and event.target_id == str(provider.pk)
    assert event.data == {
        "name": "vLLM",
        "kind": "openai-compatible",
        "base_url": "http://vllm:8000/v1",
        "is_simulator": False,
        "api_key": "****7890",
    }
    assert "SECRETKEY" not in json.dumps(list(AuditEvent.objects.values()), default=str)


def test_provider_without_a_key_has_no_key_in_the_audit_row(org):
    make_provider(org, api_key="", is_simulator=True, name="Offline simulator")

    event = AuditEvent.objects.get(action="provider.created")
    assert "api_key" not in event.data and event.actor_type == "system" and event.data["is_simulator"] is True


@pytest.mark.parametrize(
    ("overrides", "field", "words"),
    [
        ({"kind": "soap"}, "kind", "Unknown kind 'soap'"),
        ({"base_url": ""}, "base_url", "Give the provider's base URL"),
        ({"base_url": "ftp://models.internal/v1"}, "base_url", "http:// or https://"),
        ({"base_url": "not a url"}, "base_url", "contains spaces"),
        ({"base_url": "http:///v1"}, "base_url", "no host name"),
        ({"base_url": "http://user:pw@vllm:8000/v1"}, "base_url", "Remove the user name / password"),
        ({"base_url": "http://vllm:99999/v1"}, "base_url", "invalid port"),
        ({"name": "  "}, "name", "Give the provider a name"),
        ({"api_key": "sk-abc\nX-Evil: 1"}, "api_key", "spaces or line breaks"),
    ],
)
def test_provider_validation_errors_name_the_field_to_fix(org, owner, overrides, field, words):
    with pytest.raises(ValidationError) as error:
        make_provider(org, owner, **overrides)

    assert words in " ".join(error.value.message_dict[field])
    assert not Provider.objects.exists() and not AuditEvent.objects.exists()


def test_provider_names_are_unique_per_organization_only(org, other_org, owner):
    make_provider(org, owner)
    make_provider(other_org, name="vLLM")

    with pytest.raises(ValidationError) as error:
        make_provider(org, owner, name=" vLLM ")

    assert "already has a provider named 'vLLM'" in error.value.message_dict["name"][0]


@pytest.mark.parametrize("user_fixture", ["agents_user", "auditor", "plain_member", "outsider"])
def test_only_owners_may_create_providers(request, org, user_fixture):
    user = request.getfixturevalue(user_fixture)

    with pytest.raises(PermissionDenied):
        make_provider(org, user)

    assert not Provider.objects.exists()


def test_the_agent_may_not_create_providers(org, agents_user):
    with pytest.raises(PermissionDenied):
        make_provider(org, AgentActor(user=agents_user, session_id="s"))


def test_rotating_the_key_is_audited_with_hints_only(org, owner):
    provider = make_provider(org, owner)

    provider_update(actor=owner, provider=provider, api_key="sk-new-ROTATED-key-abcd")

    provider.refresh_from_db()
    assert decrypt_secret(provider.api_key_encrypted) == "sk-new-ROTATED-key-abcd"
    event = AuditEvent.objects.get(action="provider.key_rotated")
    assert event.data == {"before": "****7890", "after": "****abcd"}
    assert "ROTATED" not in json.dumps(list(AuditEvent.objects.values("data")))


def test_first_model_of_an_organization_becomes_its_default(org, owner):
    provider = make_provider(org, owner)

    first = make_model(org, provider, owner)
    second = make_model(org, provider, owner, identifier="qwen")

    assert first.is_default and not second.is_default
    event = AuditEvent.objects.filter(action="model.created").first()
    assert event.data["is_default"] is True and event.data["provider"] == "vLLM"


def test_creating_a_default_model_moves_the_default_so_there_is_one_per_org(org, other_org, owner):
    provider = make_provider(org, owner)
    other = LanguageModelFactory(provider__organization=other_org, is_default=True)
    first = make_model(org, provider, owner)

    second = make_model(org, provider, owner, identifier="qwen", is_default=True)

    assert list(LanguageModel.objects.filter(organization=org, is_default=True)) == [second]
    first.refresh_from_db()
    other.refresh_from_db()
    assert not first.is_default and other.is_default
    event = AuditEvent.objects.filter(action="model.created").last()
    assert event.data["previous_default"]["id"] == first.pk


def test_set_default_swaps_the_default_and_audits_before_and_after(org, owner):
    provider = make_provider(org, owner)
    first = make_model(org, provider, owner)
    second = make_model(org, provider, owner, identifier="qwen", display_name="Qwen")

    model_set_default(actor=owner, model=second)

    assert list(LanguageModel.objects.filter(organization=org, is_default=True)) == [second]
    event = AuditEvent.objects.get(action="model.default_changed")
    assert event.data["before"]["id"] == first.pk and event.data["after"]["id"] == second.pk
    assert event.data["after"]["display_name"] == "Qwen"


def test_set_default_on_the_default_changes_nothing(org, owner):
    provider = make_provider(org, owner)
    first = make_model(org, provider, owner)

    model_set_default(actor=owner, model=first)

    assert not AuditEvent.objects.filter(action="model.default_changed").exists()


@pytest.mark.parametrize(
    ("overrides", "field", "words"),
    [
        ({"context_limit": 0}, "context_limit", "whole number above 0"),
        ({"context_limit": -5}, "context_limit", "whole number above 0"),
        ({"context_limit": "lots"}, "context_limit", "whole number above 0"),
        ({"identifier": " "}, "identifier", "Give the model name the provider expects"),
    ],
)
def test_model_validation_errors_name_the_field_to_fix(org, owner, overrides, field, words):
    provider = make_provider(org, owner)

    with pytest.raises(ValidationError) as error:
        make_model(org, provider, owner, **overrides)

    assert words in error.value.message_dict[field][0]
    assert not LanguageModel.objects.exists()


def test_the_same_identifier_twice_on_a_provider_is_refused(org, owner):
    provider = make_provider(org, owner)
    make_model(org, provider, owner)

    with pytest.raises(ValidationError) as error:
        make_model(org, provider, owner)

    assert "already offers 'llama3'" in error.value.message_dict["identifier"][0]


def test_a_model_on_another_organizations_provider_is_refused(org, other_org, owner):
    foreign = ProviderFactory(organization=other_org)

    with pytest.raises(ValidationError) as error:
        make_model(org, foreign, owner)

    assert "No such provider in acme" in error.value.message_dict["provider"][0]


def test_display_name_defaults_to_the_identifier_and_updates_are_audited(org, owner):
    provider = make_provider(org, owner)
    model = make_model(org, provider, owner, display_name="")

    model_update(actor=owner, model=model, display_name="Llama 3 (8B)", context_limit=16384)

    model.refresh_from_db()
    assert (model.display_name, model.context_limit) == ("Llama 3 (8B)", 16384)
    event = AuditEvent.objects.get(action="model.updated")
    assert event.data["changes"]["display_name"] == {"before": "llama3", "after": "Llama 3 (8B)"}


def test_agents_user_may_not_manage_models(org, owner, agents_user):
    provider = make_provider(org, owner)

    with pytest.raises(PermissionDenied):
        make_model(org, provider, agents_user)


def test_bootstrap_as_system_actor_needs_no_membership(org):
    provider = make_provider(org, SystemActor(name="bootstrap"), api_key="")

    model = make_model(org, provider, SystemActor(name="bootstrap"))

    assert model.is_default
    assert set(AuditEvent.objects.values_list("actor_display", flat=True)) == {"bootstrap"}
