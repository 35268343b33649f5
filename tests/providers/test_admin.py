"""Django admin for providers and models: keys are write-only, changes go through audited services."""

from __future__ import annotations

import pytest
from django.test import Client

from audit.models import AuditEvent
from organizations.models import Role
from portal.crypto import decrypt_secret
from providers.models import LanguageModel, Provider
from providers.services import model_create, provider_create
from tests.factories import ProviderFactory, UserFactory, make_member
from tests.providers.conftest import SECRET_KEY


@pytest.fixture
def staff_owner(org):
    """An owner of acme who may use the admin site."""
    user = UserFactory(username="sam", is_staff=True)
    make_member(org, user, Role.OWNER)
    return user


@pytest.fixture
def browser(staff_owner) -> Client:
    client = Client()
    client.force_login(staff_owner)
    return client


@pytest.fixture
def provider(org):
    return provider_create(
        actor=None,
        organization=org,
        name="vLLM",
        kind="openai-compatible",
        base_url="http://vllm:8000/v1",
        api_key=SECRET_KEY,
    )


def test_change_page_never_shows_the_key_or_its_ciphertext(browser, provider):
    page = browser.get(f"/admin/providers/provider/{provider.pk}/change/").content.decode()
    listing = browser.get("/admin/providers/provider/").content.decode()

    for html in (page, listing):
        assert SECRET_KEY not in html and provider.api_key_encrypted not in html
    assert "7890" in page and 'name="new_api_key"' in page and 'name="api_key_encrypted"' not in page


def test_adding_a_provider_in_the_admin_encrypts_the_key_and_audits(browser, org, staff_owner):
    response = browser.post(
        "/admin/providers/provider/add/",
        {
            "organization": org.pk,
            "name": "Gateway",
            "kind": "openai-compatible",
            "base_url": "https://llm.internal/v1",
            "new_api_key": "sk-admin-ENTERED-key-5678",
        },
    )

    assert response.status_code == 302, response.content.decode()[:2000]
    provider = Provider.objects.get(name="Gateway")
    assert decrypt_secret(provider.api_key_encrypted) == "sk-admin-ENTERED-key-5678"
    event = AuditEvent.objects.get(action="provider.created", target_id=str(provider.pk))
    assert event.actor_id == str(staff_owner.pk) and event.data["api_key_hint"] == "****5678"


def test_a_bad_base_url_in_the_admin_shows_on_the_field_instead_of_failing(browser, org):
    response = browser.post(
        "/admin/providers/provider/add/",
        {"organization": org.pk, "name": "Bad", "kind": "openai-compatible", "base_url": "ftp://x/v1"},
    )

    assert response.status_code == 200
    assert "http:// or https://" in response.content.decode()
    assert not Provider.objects.filter(name="Bad").exists()


def test_rotating_the_key_in_the_admin_keeps_it_write_only(browser, provider):
    response = browser.post(
        f"/admin/providers/provider/{provider.pk}/change/",
        {"name": "vLLM", "base_url": "http://vllm:8000/v1", "new_api_key": "sk-rotated-in-admin-0000"},
    )

    assert response.status_code == 302
    provider.refresh_from_db()
    assert decrypt_secret(provider.api_key_encrypted) == "sk-rotated-in-admin-0000"
    assert AuditEvent.objects.get(action="provider.key_rotated").data == {"before": "****7890", "after": "****0000"}


def test_saving_without_a_new_key_keeps_the_stored_one(browser, provider):
    browser.post(
        f"/admin/providers/provider/{provider.pk}/change/",
        {"name": "vLLM renamed", "base_url": "http://vllm:8000/v1", "new_api_key": ""},
    )

    provider.refresh_from_db()
    assert provider.name == "vLLM renamed" and decrypt_secret(provider.api_key_encrypted) == SECRET_KEY
    assert not AuditEvent.objects.filter(action="provider.key_rotated").exists()


def test_adding_a_default_model_in_the_admin_moves_the_default(browser, org, provider):
    first = model_create(
        actor=None, organization=org, provider=provider, identifier="a", display_name="A", context_limit=1000
    )

    response = browser.post(
        "/admin/providers/languagemodel/add/",
        {
            "provider": provider.pk,
            "identifier": "b",
            "display_name": "B",
            "context_limit": 2000,
            "is_default": "on",
            "is_enabled": "on",
        },
    )

    assert response.status_code == 302
    assert list(LanguageModel.objects.filter(is_default=True).values_list("identifier", flat=True)) == ["b"]
    first.refresh_from_db()
    assert not first.is_default and AuditEvent.objects.filter(action="model.created").count() == 2


def test_owners_see_only_their_organizations_providers(browser, other_org, provider):
    foreign = ProviderFactory(organization=other_org, name="Foreign")

    listing = browser.get("/admin/providers/provider/").content.decode()

    assert "vLLM" in listing and "Foreign" not in listing
    answer = browser.get(f"/admin/providers/provider/{foreign.pk}/change/", follow=True)
    # Django's admin says a hidden row "doesn't exist" and goes back to the index, still signed in.
    assert answer.redirect_chain and answer.redirect_chain[-1][0] == "/admin/"
    assert "doesn’t exist" in answer.content.decode() and "Foreign" not in answer.content.decode()


@pytest.fixture
def staff_auditor(org):
    """An auditor of acme who may use the admin site."""
    user = UserFactory(username="audra", is_staff=True)
    make_member(org, user, Role.AUDITOR)
    return user


def test_auditors_read_providers_and_models_but_cannot_change_them(org, staff_auditor, provider):
    model = model_create(
        actor=None, organization=org, provider=provider, identifier="a", display_name="A", context_limit=1000
    )
    client = Client()
    client.force_login(staff_auditor)

    page = client.get(f"/admin/providers/provider/{provider.pk}/change/")
    assert page.status_code == 200 and 'name="new_api_key"' not in page.content.decode()
    assert SECRET_KEY not in page.content.decode()
    assert client.get(f"/admin/providers/languagemodel/{model.pk}/change/").status_code == 200
    assert client.get("/admin/providers/provider/add/").status_code == 403
    client.post(f"/admin/providers/provider/{provider.pk}/change/", {"name": "Renamed", "base_url": "http://x/v1"})
    provider.refresh_from_db()
    assert provider.name == "vLLM" and not AuditEvent.objects.filter(action="provider.updated").exists()


def test_an_anthropic_provider_without_a_key_shows_the_error_on_the_key_field(browser, org):
    response = browser.post(
        "/admin/providers/provider/add/", {"organization": org.pk, "name": "Claude", "kind": "anthropic"}
    )

    assert response.status_code == 200 and "needs an API key" in response.content.decode()
    assert not Provider.objects.filter(name="Claude").exists()


@pytest.mark.parametrize(
    ("headers", "words"),
    [
        ('{"Authorization": "Bearer abc"}', "carries a credential"),
        ('{"X-Gateway-Token": "(unchanged)"}', "none is stored"),  # (unchanged) keeps a stored value only
    ],
)
def test_a_bad_extra_header_is_an_error_on_the_form(browser, org, headers, words):
    response = browser.post(
        "/admin/providers/provider/add/",
        {
            "organization": org.pk,
            "name": "Gw",
            "kind": "openai-compatible",
            "base_url": "http://gw/v1",
            "extra_headers": headers,
        },
    )

    assert response.status_code == 200 and words in response.content.decode()


def test_owner_deletes_an_unused_provider_through_the_audited_service(browser, provider):
    response = browser.post(f"/admin/providers/provider/{provider.pk}/delete/", {"post": "yes"})

    assert response.status_code == 302
    assert not Provider.objects.filter(pk=provider.pk).exists()
    assert AuditEvent.objects.filter(action="provider.deleted", target_id=str(provider.pk)).exists()


def test_a_provider_with_models_cannot_be_deleted_in_the_admin(browser, org, provider):
    model_create(actor=None, organization=org, provider=provider, identifier="a", display_name="A", context_limit=10)

    browser.post(f"/admin/providers/provider/{provider.pk}/delete/", {"post": "yes"})

    assert Provider.objects.filter(pk=provider.pk).exists()


def test_bad_model_settings_show_on_their_fields(browser, org, provider):
    response = browser.post(
        "/admin/providers/languagemodel/add/",
        {
            "provider": provider.pk,
            "identifier": "b",
            "display_name": "B",
            "context_limit": 2000,
            "is_enabled": "on",
            "max_output_tokens": 5000,
            "options": '{"temperature": 9}',
        },
    )

    html = response.content.decode()
    assert response.status_code == 200 and "below the context limit" in html
    assert not LanguageModel.objects.filter(identifier="b").exists()
