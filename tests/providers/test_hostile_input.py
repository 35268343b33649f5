"""Hostile input to the provider and model APIs: a 4xx that says what to fix, never a 500; gateway credentials
in extra headers are never shown again, nor audited in clear."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from audit.models import AuditEvent
from providers.checks import run_check
from providers.models import Provider
from providers.services import model_create, provider_create
from providers.validation import validate_options
from tests.api import api

PROVIDERS = "/api/v1/orgs/acme/providers/"
MODELS = "/api/v1/orgs/acme/models/"
GATEWAY_TOKEN = "gw-token-7f3e9a1c5b2d4e6f"


@pytest.fixture
def provider(org) -> Provider:
    return provider_create(
        actor=None, organization=org, name="vllm", kind="openai-compatible", base_url="http://127.0.0.1:9/v1"
    )


@pytest.mark.parametrize("price", [1e30, "1e400", 12345678901234567890123])
def test_a_price_too_large_to_store_is_a_400(org, owner, provider, price) -> None:
    model = model_create(
        actor=None, organization=org, provider=provider, identifier="m", display_name="M", context_limit=8000
    )

    response = api(owner).patch(f"{MODELS}{model.pk}/", {"input_price_per_mtok": price}, format="json")

    assert response.status_code == 400
    assert "below 1,000,000" in str(response.json())


def test_json_nested_too_deeply_is_a_400_in_a_body_and_in_a_form_field(owner, provider) -> None:
    deep = "[" * 100_000
    as_json = api(owner).patch(f"{PROVIDERS}{provider.pk}/", deep, content_type="application/json")
    as_form = api(owner).patch(f"{PROVIDERS}{provider.pk}/", {"extra_headers": deep}, format="multipart")

    for response in (as_json, as_form):
        assert response.status_code == 400, response.content
        assert "nested too deeply" in str(response.json())


def test_a_header_value_no_database_can_store_is_a_400(owner, provider) -> None:
    response = api(owner).patch(
        f"{PROVIDERS}{provider.pk}/", {"extra_headers": '{"X-Team": "\\ud800"}'}, format="multipart"
    )

    assert response.status_code == 400 and "one line of at most 1000 characters" in str(response.json())
    provider.refresh_from_db()
    assert provider.extra_headers == {}
    assert api(owner).get(f"{PROVIDERS}{provider.pk}/").status_code == 200


def test_an_unknown_option_name_is_named_in_a_message_that_can_be_sent() -> None:
    with pytest.raises(ValidationError) as refused:
        validate_options({"\ud800x": 1})

    message = str(refused.value.message_dict["options"])
    assert "Unknown option" in message and "\\ud800x" in message
    message.encode("utf-8")  # a lone surrogate echoed back could not be rendered


@pytest.mark.parametrize("base_url", ["http://a..b/v1", "http://.example/v1", f"http://{'x' * 64}.internal/v1"])
def test_a_host_name_dns_cannot_carry_is_refused(owner, base_url) -> None:
    response = api(owner).post(
        PROVIDERS, {"name": "p", "kind": "openai-compatible", "base_url": base_url}, format="json"
    )

    assert response.status_code == 400
    assert "not a valid host name" in str(response.json()["base_url"])


def test_the_check_says_a_stored_host_name_is_invalid(org, provider) -> None:
    Provider.objects.filter(pk=provider.pk).update(base_url="http://a..b/v1")  # stored before validation caught it
    provider.refresh_from_db()

    result = run_check(provider)

    assert not result.ok
    assert "not a valid host name" in str(result.as_dict())


def test_a_nul_in_a_query_string_is_a_400_everywhere(owner) -> None:
    owner.is_staff = True
    owner.save()
    client = api(owner)
    client.force_login(owner)

    for path in ("/admin/providers/provider/?kind__exact=%00", f"{PROVIDERS}?x=a%00b"):
        response = client.get(path)
        assert response.status_code == 400
        assert "NUL" in response.content.decode()


def test_a_gateway_credential_header_is_shown_as_unchanged_kept_when_sent_back_and_audited_masked(
    owner, auditor, provider
) -> None:
    path = f"{PROVIDERS}{provider.pk}/"
    set_token = api(owner).patch(path, {"extra_headers": {"X-Gateway-Token": GATEWAY_TOKEN}}, format="json")
    shown = api(auditor).get(path).json()
    sent_back = api(owner).patch(path, {"extra_headers": {**shown["extra_headers"], "X-Team": "ml"}}, format="json")

    assert set_token.status_code == 200 and sent_back.status_code == 200
    assert shown["extra_headers"] == {"X-Gateway-Token": "(unchanged)"}
    provider.refresh_from_db()
    assert provider.extra_headers == {"X-Gateway-Token": GATEWAY_TOKEN, "X-Team": "ml"}
    logged = str(list(AuditEvent.objects.values_list("data", flat=True)))
    assert GATEWAY_TOKEN not in logged and "****4e6f" in logged
    assert GATEWAY_TOKEN not in set_token.content.decode() + sent_back.content.decode()


def test_a_gateway_credential_stays_hidden_in_the_admin_and_when_its_provider_is_deleted(
    client, org, owner, auditor, provider
) -> None:
    api(owner).patch(f"{PROVIDERS}{provider.pk}/", {"extra_headers": {"X-Gateway-Token": GATEWAY_TOKEN}}, format="json")
    for user in (owner, auditor):
        user.is_staff = True
        user.save()
        client.force_login(user)
        page = client.get(f"/admin/providers/provider/{provider.pk}/change/")
        assert page.status_code == 200
        assert GATEWAY_TOKEN not in page.content.decode() and "(unchanged)" in page.content.decode()

    assert api(owner).delete(f"{PROVIDERS}{provider.pk}/").status_code == 204

    assert GATEWAY_TOKEN not in str(list(AuditEvent.objects.values_list("data", flat=True)))


def test_unchanged_is_not_a_value_a_new_provider_can_have(owner) -> None:
    response = api(owner).post(
        PROVIDERS,
        {
            "name": "gw",
            "kind": "openai-compatible",
            "base_url": "https://gw.internal/v1",
            "extra_headers": {"X-Gateway-Token": "(unchanged)"},
        },
        format="json",
    )

    assert response.status_code == 400 and "none is stored" in str(response.json()["extra_headers"])
