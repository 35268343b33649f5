"""The provider and model settings pages: owners manage, auditors read, keys never shown, errors next to fields."""

from __future__ import annotations

import re

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from audit.models import AuditEvent
from organizations.models import Organization
from portal.crypto import decrypt_secret
from providers.models import LanguageModel, Provider
from providers.services import model_create, provider_create
from providers.simulator import ModelSimulator
from tests.factories import LanguageModelFactory, ProviderFactory
from tests.livesrv import free_port
from tests.pages import field_block as _field_block
from tests.pages import logged_in_client as _client
from tests.pages import page_text as _text

KEY = "sk-page-SECRET-0042-wxyz"
PROVIDERS = "/orgs/acme/settings/providers/"
MODELS = "/orgs/acme/settings/models/"


def _add_provider(client: Client, **overrides: str):
    data = {"name": "Gateway", "kind": "openai-compatible", "base_url": "http://127.0.0.1:9/v1", "api_key": KEY}
    data.update(overrides)
    return client.post(PROVIDERS, data)


@pytest.fixture
def provider(org: Organization) -> Provider:
    """A keyed provider of acme, created through the service (key encrypted)."""
    return provider_create(
        actor=None,
        organization=org,
        name="Gateway",
        kind="openai-compatible",
        base_url="http://127.0.0.1:9/v1",
        api_key=KEY,
    )


@pytest.fixture
def two_models(org: Organization, provider: Provider) -> tuple[LanguageModel, LanguageModel]:
    """Two models of acme; the first is the default."""
    first = model_create(
        actor=None, organization=org, provider=provider, identifier="qwen", display_name="Qwen", context_limit=32_000
    )
    second = model_create(
        actor=None, organization=org, provider=provider, identifier="llama", display_name="Llama", context_limit=8_000
    )
    return first, second


# --- providers: owners ---------------------------------------------------------------------------------------


def test_owner_adds_a_provider_and_its_key_never_appears_in_a_page_again(owner) -> None:
    client = _client(owner)

    created = _add_provider(client)
    listing = client.get(PROVIDERS)
    provider = Provider.objects.get(name="Gateway")
    edit = client.get(f"{PROVIDERS}{provider.pk}/edit/")

    assert created.status_code == 302
    assert decrypt_secret(provider.api_key_encrypted) == KEY
    for response in (created, listing, edit):
        assert KEY not in _text(response)
        assert "SECRET" not in _text(response)
    assert "key •••• wxyz" in _text(listing)
    assert 'type="password"' in _text(edit)
    assert AuditEvent.objects.filter(action="provider.created").count() == 1


def test_editing_a_provider_without_retyping_the_key_keeps_it(owner, provider: Provider) -> None:
    response = _client(owner).post(
        f"{PROVIDERS}{provider.pk}/edit/", {"name": "Gateway 2", "base_url": "http://127.0.0.1:9/v1", "api_key": ""}
    )

    provider.refresh_from_db()
    assert response.status_code == 302
    assert provider.name == "Gateway 2"
    assert decrypt_secret(provider.api_key_encrypted) == KEY
    assert not AuditEvent.objects.filter(action="provider.key_rotated").exists()


def test_remove_key_checkbox_clears_the_stored_key(owner, provider: Provider) -> None:
    client = _client(owner)

    client.post(
        f"{PROVIDERS}{provider.pk}/edit/",
        {"name": "Gateway", "base_url": "http://127.0.0.1:9/v1", "api_key": "", "clear_api_key": "on"},
    )

    provider.refresh_from_db()
    assert not provider.has_api_key
    assert "no key" in _text(client.get(PROVIDERS))
    assert AuditEvent.objects.filter(action="provider.key_rotated").count() == 1


def test_a_new_key_on_edit_replaces_the_old_one_and_is_not_echoed(owner, provider: Provider) -> None:
    new_key = "sk-rotated-NEWSECRET-5678"

    response = _client(owner).post(
        f"{PROVIDERS}{provider.pk}/edit/",
        {"name": "Gateway", "base_url": "http://127.0.0.1:9/v1", "api_key": new_key},
        follow=True,
    )

    provider.refresh_from_db()
    assert decrypt_secret(provider.api_key_encrypted) == new_key
    assert new_key not in _text(response)
    assert "•••• 5678" in _text(response)


def test_bad_base_url_shows_the_error_next_to_the_field_and_writes_nothing(owner) -> None:
    response = _add_provider(_client(owner), base_url="ftp://files.internal/v1")

    html = _text(response)
    assert response.status_code == 400
    assert "http:// or https://" in _field_block(html, "id_base_url")
    assert "Nothing was saved" in html
    assert KEY not in html  # the key is not filled back in either
    assert not Provider.objects.exists()
    assert not AuditEvent.objects.filter(action="provider.created").exists()


def test_vendor_kind_without_a_key_names_the_key_field(owner) -> None:
    response = _add_provider(_client(owner), kind="openai", base_url="", api_key="")

    assert response.status_code == 400
    assert "needs an API key" in _field_block(_text(response), "id_api_key")
    assert not Provider.objects.exists()


def test_malformed_extra_headers_name_the_line(owner) -> None:
    response = _add_provider(_client(owner), extra_headers="X-Team: ml\nthis line has no colon")

    assert response.status_code == 400
    assert "Line 2" in _field_block(_text(response), "id_extra_headers")
    assert not Provider.objects.exists()


def test_extra_headers_are_stored_and_shown_on_edit(owner) -> None:
    client = _client(owner)

    _add_provider(client, extra_headers="X-Team: ml\nHTTP-Referer: https://airlock.internal")
    provider = Provider.objects.get(name="Gateway")

    assert provider.extra_headers == {"X-Team": "ml", "HTTP-Referer": "https://airlock.internal"}
    assert "X-Team: ml" in _text(client.get(f"{PROVIDERS}{provider.pk}/edit/"))


def test_a_token_looking_header_is_masked_on_edit_and_kept_when_left_unchanged(owner, org: Organization) -> None:
    provider = provider_create(
        actor=None,
        organization=org,
        name="Gateway",
        kind="openai-compatible",
        base_url="http://127.0.0.1:9/v1",
        extra_headers={"X-Team": "ml", "X-Gateway-Token": "tok-HIDDEN-123456"},
    )
    client = _client(owner)

    edit = _text(client.get(f"{PROVIDERS}{provider.pk}/edit/"))
    client.post(
        f"{PROVIDERS}{provider.pk}/edit/",
        {
            "name": "Gateway",
            "base_url": "http://127.0.0.1:9/v1",
            "extra_headers": "X-Team: ai\nX-Gateway-Token: (unchanged)",
        },
    )

    provider.refresh_from_db()
    assert "tok-HIDDEN-123456" not in edit
    assert "X-Gateway-Token: (unchanged)" in edit
    assert provider.extra_headers == {"X-Team": "ai", "X-Gateway-Token": "tok-HIDDEN-123456"}


def test_a_new_provider_cannot_keep_a_header_value_it_never_had(owner) -> None:
    response = _add_provider(_client(owner), extra_headers="X-Gateway-Token: (unchanged)")

    assert response.status_code == 400 and "none is stored" in _text(response)
    assert not Provider.objects.filter(name="Gateway").exists()


def test_deleting_a_provider_asks_first_then_deletes(owner, provider: Provider) -> None:
    client = _client(owner)

    confirm = client.get(f"{PROVIDERS}{provider.pk}/delete/")
    assert Provider.objects.filter(pk=provider.pk).exists()
    deleted = client.post(f"{PROVIDERS}{provider.pk}/delete/", follow=True)

    assert "Delete the provider Gateway?" in _text(confirm)
    assert not Provider.objects.filter(pk=provider.pk).exists()
    assert "Deleted the provider Gateway" in _text(deleted)


def test_deleting_a_provider_that_serves_models_is_refused_with_a_reason(owner, two_models) -> None:
    provider = two_models[0].provider

    response = _client(owner).post(f"{PROVIDERS}{provider.pk}/delete/", follow=True)

    assert Provider.objects.filter(pk=provider.pk).exists()
    assert "Models still use" in _text(response)


def test_provider_list_takes_the_same_number_of_queries_for_one_or_many_providers(owner, org: Organization) -> None:
    client = _client(owner)
    ProviderFactory(organization=org, name="p0")
    client.get(PROVIDERS)  # warm up session/user caches

    with CaptureQueriesContext(connection) as one:
        client.get(PROVIDERS)
    for index in range(1, 6):
        LanguageModelFactory(provider=ProviderFactory(organization=org, name=f"p{index}"))
    with CaptureQueriesContext(connection) as many:
        response = client.get(PROVIDERS)

    assert response.status_code == 200
    assert len(many) == len(one)


def test_model_list_takes_the_same_number_of_queries_for_one_or_many_models(owner, provider: Provider) -> None:
    client = _client(owner)
    LanguageModelFactory(provider=provider, identifier="m0")
    client.get(MODELS)

    with CaptureQueriesContext(connection) as one:
        client.get(MODELS)
    first = LanguageModel.objects.get(identifier="m0")
    for index in range(1, 6):
        LanguageModelFactory(provider=provider, identifier=f"m{index}", fallback=first)
    with CaptureQueriesContext(connection) as many:
        response = client.get(MODELS)

    assert response.status_code == 200
    assert len(many) == len(one)


def test_every_post_needs_the_csrf_token(owner) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(owner)

    response = _add_provider(client)

    assert response.status_code == 403
    assert not Provider.objects.exists()


# --- who may see what -----------------------------------------------------------------------------------------


def test_auditor_reads_both_lists_without_any_form_or_button(auditor, two_models) -> None:
    client = _client(auditor)

    for url in (PROVIDERS, MODELS):
        response = client.get(url)
        html = _text(response)
        assert response.status_code == 200
        assert "read-only" in html
        assert 'action="/orgs/acme/settings/' not in html
        assert "Edit" not in html and "Delete" not in html
        assert 'name="api_key"' not in html and ">Test<" not in html
    assert "Gateway" in _text(client.get(PROVIDERS))
    assert "Qwen" in _text(client.get(MODELS))
    assert KEY not in _text(client.get(PROVIDERS))


def test_auditor_writes_answer_403_and_change_nothing(auditor, two_models) -> None:
    client = _client(auditor)
    qwen, llama = two_models
    provider = qwen.provider

    answers = [
        _add_provider(client, name="Sneaky"),
        client.post(f"{PROVIDERS}{provider.pk}/edit/", {"name": "Renamed", "base_url": "http://127.0.0.1:9/v1"}),
        client.post(f"{PROVIDERS}{provider.pk}/delete/"),
        client.post(f"{PROVIDERS}{provider.pk}/test/"),
        client.post(f"{MODELS}{llama.pk}/default/"),
        client.post(f"{MODELS}{llama.pk}/delete/"),
        client.get(f"{MODELS}{llama.pk}/edit/"),
    ]

    assert [response.status_code for response in answers] == [403] * len(answers)
    assert "owner" in _text(answers[0])
    provider.refresh_from_db()
    assert provider.name == "Gateway"
    assert LanguageModel.objects.get(is_default=True) == qwen
    assert Provider.objects.count() == 1


def test_member_without_a_settings_role_gets_a_403_page_naming_the_roles(plain_member, agents_user) -> None:
    for user in (plain_member, agents_user):
        for url in (PROVIDERS, MODELS):
            response = _client(user).get(url)
            assert response.status_code == 403
            assert "auditor, owner" in _text(response)


def test_outsider_gets_404_for_the_organization(outsider, org: Organization) -> None:
    assert _client(outsider).get(PROVIDERS).status_code == 404
    assert _client(outsider).get(MODELS).status_code == 404
    assert _client(outsider).get("/orgs/nope/settings/providers/").status_code == 404


def test_foreign_provider_and_model_ids_answer_404(outsider, two_models, other_org: Organization) -> None:
    client = _client(outsider)
    provider, model = two_models[0].provider, two_models[0]

    urls = [
        f"/orgs/globex/settings/providers/{provider.pk}/edit/",
        f"/orgs/globex/settings/providers/{provider.pk}/delete/",
        f"/orgs/globex/settings/models/{model.pk}/edit/",
    ]
    for url in urls:
        assert client.get(url).status_code == 404
    assert client.post(f"/orgs/globex/settings/providers/{provider.pk}/test/").status_code == 404
    assert client.post(f"/orgs/globex/settings/models/{model.pk}/default/").status_code == 404


def test_anonymous_visitor_is_sent_to_sign_in(org: Organization) -> None:
    response = Client().get(PROVIDERS)

    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


# --- models ---------------------------------------------------------------------------------------------------


def test_owner_adds_a_model_with_every_setting(owner, provider: Provider, two_models) -> None:
    qwen = two_models[0]
    response = _client(owner).post(
        MODELS,
        {
            "provider": provider.pk,
            "identifier": "gpt-oss-120b",
            "display_name": "GPT OSS",
            "context_limit": "131072",
            "is_enabled": "on",
            "compaction_threshold_percent": "70",
            "max_output_tokens": "4096",
            "temperature": "0.2",
            "reasoning_effort": "high",
            "thinking_budget_tokens": "",
            "input_price_per_mtok": "0.15",
            "output_price_per_mtok": "0.6",
            "cache_read_price_per_mtok": "0.03",
            "cache_write_price_per_mtok": "",
            "restricted_access": "on",
            "fallback": qwen.pk,
        },
        follow=True,
    )

    model = LanguageModel.objects.get(identifier="gpt-oss-120b")
    assert response.status_code == 200
    assert (model.display_name, model.context_limit, model.compaction_threshold_percent) == ("GPT OSS", 131072, 70)
    assert model.max_output_tokens == 4096
    assert model.options == {"temperature": 0.2, "reasoning_effort": "high"}
    assert str(model.input_price_per_mtok.normalize()) == "0.15"
    assert model.restricted_access and model.fallback == qwen and not model.is_default
    html = _text(response)
    assert "Added the model GPT OSS" in html
    assert "restricted" in html and "$0.15 / $0.6" in html


def test_making_a_model_default_moves_the_star(owner, two_models) -> None:
    qwen, llama = two_models
    client = _client(owner)

    response = client.post(f"{MODELS}{llama.pk}/default/", follow=True)

    html = _text(response)
    llama_row = re.search(rf'<tr id="model-{llama.pk}".*?</tr>', html, re.S).group(0)
    qwen_row = re.search(rf'<tr id="model-{qwen.pk}".*?</tr>', html, re.S).group(0)
    assert 'aria-label="Default model">★' in llama_row
    assert "Make Qwen the default" in qwen_row
    assert LanguageModel.objects.get(is_default=True) == llama
    assert AuditEvent.objects.filter(action="model.default_changed").count() == 1


def test_bad_model_input_shows_errors_next_to_the_fields_and_writes_nothing(owner, provider: Provider) -> None:
    client = _client(owner)
    base = {"provider": provider.pk, "identifier": "m", "display_name": "M", "compaction_threshold_percent": "80"}

    zero_context = client.post(MODELS, {**base, "context_limit": "0"})
    hot = client.post(MODELS, {**base, "context_limit": "8000", "temperature": "5"})
    not_a_number = client.post(MODELS, {**base, "context_limit": "lots"})

    assert zero_context.status_code == hot.status_code == not_a_number.status_code == 400
    assert "above 0" in _field_block(_text(zero_context), "id_context_limit")
    assert "temperature must be" in _field_block(_text(hot), "id_temperature")
    assert "whole number" in _field_block(_text(not_a_number), "id_context_limit")
    assert not LanguageModel.objects.exists()


def test_owner_edits_a_model_and_the_change_is_audited(owner, two_models) -> None:
    _, llama = two_models
    data = {
        "identifier": "llama",
        "display_name": "Llama 3.1",
        "context_limit": "16000",
        "compaction_threshold_percent": "80",
        "input_price_per_mtok": "1",
    }

    response = _client(owner).post(f"{MODELS}{llama.pk}/edit/", data)

    llama.refresh_from_db()
    assert response.status_code == 302
    assert (llama.display_name, llama.context_limit, llama.is_enabled) == ("Llama 3.1", 16000, False)
    event = AuditEvent.objects.get(action="model.updated")
    assert set(event.data["changes"]) == {"display_name", "context_limit", "is_enabled", "input_price_per_mtok"}


def test_disabling_the_default_model_is_refused_next_to_the_enabled_box(owner, two_models) -> None:
    qwen, _ = two_models
    data = {
        "identifier": "qwen",
        "display_name": "Qwen",
        "context_limit": "32000",
        "compaction_threshold_percent": "80",
    }

    response = _client(owner).post(f"{MODELS}{qwen.pk}/edit/", data)

    assert response.status_code == 400
    assert "make another model the default first" in _field_block(_text(response), "id_is_enabled")
    qwen.refresh_from_db()
    assert qwen.is_enabled


def test_deleting_a_model_asks_first_then_deletes(owner, two_models) -> None:
    _, llama = two_models
    client = _client(owner)

    assert "Delete the model Llama?" in _text(client.get(f"{MODELS}{llama.pk}/delete/"))
    client.post(f"{MODELS}{llama.pk}/delete/")

    assert not LanguageModel.objects.filter(pk=llama.pk).exists()


def test_models_page_without_providers_points_to_the_providers_page(owner) -> None:
    html = _text(_client(owner).get(MODELS))

    assert "add a provider" in html
    assert 'name="identifier"' not in html


# --- the Test button --------------------------------------------------------------------------------------------


def _steps(html: str) -> list[tuple[str, str]]:
    """(mark, text) of each check step on the page."""
    items = re.findall(r'<li class="check-step (step-ok|step-failed)">(.*?)</li>', html, re.S)
    return [(kind, re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", body)).strip()) for kind, body in items]


def test_test_button_against_a_live_simulator_shows_every_step_passing(
    owner, org: Organization, simulator: ModelSimulator
) -> None:
    provider = provider_create(
        actor=None, organization=org, name="Sim", kind="openai-compatible", base_url=simulator.base_url
    )

    response = _client(owner).post(f"{PROVIDERS}{provider.pk}/test/", follow=True)

    steps = _steps(_text(response))
    assert steps, "the page shows the check's steps"
    assert all(kind == "step-ok" for kind, _ in steps), steps
    assert "✓ passed" in _text(response)


def test_test_button_against_a_closed_port_shows_the_tcp_step_failing_with_advice(owner, org: Organization) -> None:
    port = free_port()
    provider = provider_create(
        actor=None,
        organization=org,
        name="Down",
        kind="openai-compatible",
        base_url=f"http://127.0.0.1:{port}/v1",
        api_key=KEY,
    )

    response = _client(owner).post(f"{PROVIDERS}{provider.pk}/test/", follow=True)

    html = _text(response)
    failed = [text for kind, text in _steps(html) if kind == "step-failed"]
    assert failed, _steps(html)
    assert "tcp" in failed[0].lower()
    assert f"127.0.0.1:{port}" in failed[0]
    assert "nothing listens on that port" in failed[0]
    assert "✗ failed" in html
    assert KEY not in html
