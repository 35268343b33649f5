"""Provider and model services: validation that names the field, encrypted keys, one default, audited."""

from __future__ import annotations

import json

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import connection

from audit.models import AuditEvent
from audit.services import AgentActor, SystemActor
from portal.crypto import decrypt_secret
from providers.models import LanguageModel, Provider
from providers.services import (
    model_create,
    model_delete,
    model_grant_access,
    model_revoke_access,
    model_set_default,
    model_update,
    provider_create,
    provider_delete,
    provider_update,
    secrets_rotate,
)
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
        "api_key_hint": "****7890",
    }
    assert "SECRETKEY" not in json.dumps(list(AuditEvent.objects.values()), default=str)


def test_provider_without_a_key_has_no_key_in_the_audit_row(org):
    make_provider(org, api_key="", is_simulator=True, name="Offline simulator")

    event = AuditEvent.objects.get(action="provider.created")
    assert "api_key_hint" not in event.data and event.actor_type == "system" and event.data["is_simulator"] is True


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


# --- every vendor kind, validation per kind ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        ({"kind": "anthropic"}, "api_key", "needs an API key"),
        ({"kind": "openai"}, "api_key", "needs an API key"),
        ({"kind": "google"}, "api_key", "needs an API key"),
        (
            {"kind": "azure-openai", "api_key": SECRET_KEY, "api_version": "2024-10-21"},
            "base_url",
            "Give the provider's base URL",
        ),
        (
            {"kind": "azure-openai", "api_key": SECRET_KEY, "base_url": "https://r.openai.azure.com"},
            "api_version",
            "API version",
        ),
        ({"kind": "bedrock", "use_ambient_credentials": True}, "region", "AWS region"),
        ({"kind": "bedrock", "region": "moon-1", "use_ambient_credentials": True}, "region", "not an AWS region"),
        ({"kind": "bedrock", "region": "us-east-1"}, "aws_access_key_id", "use_ambient_credentials"),
        ({"kind": "bedrock", "region": "us-east-1", "aws_access_key_id": "AKIAABCDEFGHIJKLMNOP"}, "api_key", "secret"),
        (
            {"kind": "openai-compatible", "base_url": "http://x/v1", "extra_headers": {"Authorization": "Bearer x"}},
            "extra_headers",
            "put the key in api_key",
        ),
        (
            {"kind": "openai-compatible", "base_url": "http://x/v1", "extra_headers": {"X-Api-Key": "k"}},
            "extra_headers",
            "carries a credential",
        ),
        (
            {"kind": "openai-compatible", "base_url": "http://x/v1", "extra_headers": ["X-Team"]},
            "extra_headers",
            "object of names",
        ),
        (
            {"kind": "openai-compatible", "base_url": "http://x/v1", "extra_headers": {"X-Team": 5}},
            "extra_headers",
            "must both be text",
        ),
        (
            {"kind": "openai-compatible", "base_url": "http://x/v1", "extra_headers": {"X-T": "a\r\nEvil: 1"}},
            "extra_headers",
            "one line",
        ),
    ],
)
def test_each_kind_says_which_setting_is_missing(org, owner, fields, field, words):
    with pytest.raises(ValidationError) as error:
        provider_create(actor=owner, organization=org, name="P", **fields)

    assert words in " ".join(error.value.message_dict[field])
    assert not Provider.objects.exists()


@pytest.mark.parametrize(
    "fields",
    [
        {"kind": "anthropic", "api_key": SECRET_KEY},
        {"kind": "openai", "api_key": SECRET_KEY},
        {"kind": "google", "api_key": SECRET_KEY},
        {
            "kind": "azure-openai",
            "api_key": SECRET_KEY,
            "base_url": "https://r.openai.azure.com",
            "api_version": "2024-10-21",
        },
        {"kind": "bedrock", "region": "eu-central-1", "use_ambient_credentials": True},
        {
            "kind": "bedrock",
            "region": "us-east-1",
            "aws_access_key_id": "AKIAABCDEFGHIJKLMNOP",
            "api_key": "wJalrXUtnFEMI/K7MDENG",
        },
        {"kind": "openai-compatible", "base_url": "http://ollama:11434/v1", "extra_headers": {"X-Team": "ml"}},
    ],
)
def test_every_vendor_kind_can_be_configured(org, owner, fields):
    provider = provider_create(actor=owner, organization=org, name="P", **fields)

    assert provider.kind == fields["kind"]
    event = AuditEvent.objects.get(action="provider.created")
    assert event.data["kind"] == fields["kind"]
    assert SECRET_KEY not in json.dumps(event.data) and "wJalrXUtnFEMI" not in json.dumps(event.data)


def test_updating_settings_audits_before_and_after(org, owner):
    provider = make_provider(org, owner)

    provider_update(actor=owner, provider=provider, base_url="http://vllm-2:8000/v1", extra_headers={"X-Team": "ml"})

    changes = AuditEvent.objects.get(action="provider.updated").data["changes"]
    assert changes["base_url"] == {"before": "http://vllm:8000/v1", "after": "http://vllm-2:8000/v1"}
    assert changes["extra_headers"] == {"before": {}, "after": {"X-Team": "ml"}}


def test_unknown_change_names_are_refused_by_name(org, owner):
    provider = make_provider(org, owner)

    with pytest.raises(ValidationError) as error:
        provider_update(actor=owner, provider=provider, kind="anthropic", colour="red")

    assert "colour, kind" in error.value.messages[0]


def test_clearing_the_key_of_a_kind_that_needs_one_is_refused(org, owner):
    provider = make_provider(org, owner, kind="anthropic", base_url="")

    with pytest.raises(ValidationError) as error:
        provider_update(actor=owner, provider=provider, clear_api_key=True)

    assert "needs an API key" in error.value.message_dict["api_key"][0]


def test_a_provider_with_models_cannot_be_deleted_and_an_unused_one_can(org, owner):
    provider = make_provider(org, owner)
    model = make_model(org, provider, owner)

    with pytest.raises(ValidationError) as error:
        provider_delete(actor=owner, provider=provider)
    assert "Llama 3" in error.value.message_dict["provider"][0]

    model_delete(actor=owner, model=model)
    provider_delete(actor=owner, provider=provider)

    assert not Provider.objects.exists()
    event = AuditEvent.objects.get(action="provider.deleted")
    assert event.data["before"]["name"] == "vLLM" and event.data["before"]["api_key_hint"] == "****7890"


def test_a_model_used_by_a_session_cannot_be_deleted_disable_it_instead(org, owner, agents_user):
    from agents.services import session_start

    provider = make_provider(org, owner)
    model = make_model(org, provider, owner)
    session_start(user=agents_user, organization=org, prompt="hello")

    with pytest.raises(ValidationError) as error:
        model_delete(actor=owner, model=model)

    assert "disable it instead" in error.value.message_dict["model"][0]
    assert LanguageModel.objects.filter(pk=model.pk).exists()


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        ({"compaction_threshold_percent": 0}, "compaction_threshold_percent", "from 1 to 100"),
        ({"compaction_threshold_percent": 101}, "compaction_threshold_percent", "from 1 to 100"),
        ({"max_output_tokens": 8192}, "max_output_tokens", "below the context limit"),
        ({"max_output_tokens": 0}, "max_output_tokens", "above 0"),
        ({"input_price_per_mtok": "-1"}, "input_price_per_mtok", "at least 0"),
        ({"output_price_per_mtok": "cheap"}, "output_price_per_mtok", "at least 0"),
        ({"options": {"temperature": 3}}, "options", "from 0 to 2"),
        ({"options": {"reasoning_effort": "max"}}, "options", "low, medium, high"),
        ({"options": {"thinking_budget_tokens": 100}}, "options", "at least 1024"),
        ({"options": {"top_k": 5}}, "options", "Unknown option"),
        ({"colour": "red"}, "__all__", "Unknown model field"),
    ],
)
def test_model_settings_are_checked_and_name_the_field(org, owner, fields, field, words):
    provider = make_provider(org, owner)

    with pytest.raises(ValidationError) as error:
        make_model(org, provider, owner, **fields)

    assert words in " ".join(error.value.message_dict[field])


def test_model_settings_are_stored_and_audited(org, owner):
    provider = make_provider(org, owner)

    model = make_model(
        org,
        provider,
        owner,
        max_output_tokens=4096,
        compaction_threshold_percent=70,
        options={"temperature": 0.2, "reasoning_effort": "high"},
        input_price_per_mtok="2.50",
        output_price_per_mtok=10,
        restricted_access=True,
    )

    model.refresh_from_db()
    assert (model.max_output_tokens, model.compaction_threshold_percent) == (4096, 70)
    assert str(model.input_price_per_mtok.normalize()) == "2.5" and model.restricted_access
    data = AuditEvent.objects.get(action="model.created").data
    assert data["input_price_per_mtok"] == "2.50" and data["options"]["reasoning_effort"] == "high"


def test_fallback_must_be_another_model_of_the_org_without_a_loop(org, other_org, owner):
    provider = make_provider(org, owner)
    first = make_model(org, provider, owner)
    second = make_model(org, provider, owner, identifier="qwen", fallback=first)
    foreign = LanguageModelFactory(provider__organization=other_org)

    for fallback, words in ((first, "its own fallback"), (second, "loop"), (foreign, "No such model")):
        with pytest.raises(ValidationError) as error:
            model_update(actor=owner, model=first, fallback=fallback)
        assert words in error.value.message_dict["fallback"][0]

    event = AuditEvent.objects.filter(action="model.created").last()
    assert event.data["fallback"]["id"] == first.pk


def test_the_default_model_cannot_be_disabled_and_a_disabled_one_cannot_be_starred(org, owner):
    provider = make_provider(org, owner)
    default = make_model(org, provider, owner)
    disabled = make_model(org, provider, owner, identifier="qwen", is_enabled=False)

    with pytest.raises(ValidationError) as error:
        model_update(actor=owner, model=default, is_enabled=False)
    assert "make another model the default first" in error.value.message_dict["is_enabled"][0]
    with pytest.raises(ValidationError) as error:
        model_set_default(actor=owner, model=disabled)
    assert "enable it" in error.value.message_dict["is_default"][0]


def test_granting_and_revoking_access_is_audited(org, owner, agents_user):
    from django.contrib.auth.models import Group

    provider = make_provider(org, owner)
    model = make_model(org, provider, owner, restricted_access=True)
    group = Group.objects.create(name="ml-team")
    agents_user.groups.add(group)  # a group is granted only when it has members here

    model_grant_access(actor=owner, model=model, user=agents_user)
    model_grant_access(actor=owner, model=model, user=agents_user)  # already granted: no second event
    model_grant_access(actor=owner, model=model, group=group)
    model_revoke_access(actor=owner, model=model, user=agents_user)

    actions = list(AuditEvent.objects.filter(action__startswith="model.access").values_list("action", "data"))
    assert [a for a, _ in actions] == ["model.access_granted", "model.access_granted", "model.access_revoked"]
    assert actions[0][1]["user"] == "alice" and actions[1][1]["group"] == "ml-team"


def test_access_is_granted_only_to_members(org, owner, outsider):
    provider = make_provider(org, owner)
    model = make_model(org, provider, owner, restricted_access=True)

    with pytest.raises(ValidationError) as error:
        model_grant_access(actor=owner, model=model, user=outsider)

    assert "not a member of acme" in error.value.message_dict["user"][0]


def test_rotate_keys_reencrypts_under_the_first_key_and_audits(org, owner, settings):
    from cryptography.fernet import Fernet

    old_key = settings.AIRLOCK_ENCRYPTION_KEYS[0]
    provider = make_provider(org, owner)
    new_key = Fernet.generate_key().decode()
    settings.AIRLOCK_ENCRYPTION_KEYS = [new_key, old_key]

    counts = secrets_rotate(actor=SystemActor(name="cli:ops"))

    provider.refresh_from_db()
    assert counts["provider_keys"] == 1
    assert Fernet(new_key.encode()).decrypt(provider.api_key_encrypted.encode()).decode() == SECRET_KEY
    settings.AIRLOCK_ENCRYPTION_KEYS = [new_key]
    assert decrypt_secret(provider.api_key_encrypted) == SECRET_KEY
    event = AuditEvent.objects.filter(action="provider.key_rotated").last()
    assert event.data["before"] == event.data["after"] == "****7890" and event.actor_display == "cli:ops"
