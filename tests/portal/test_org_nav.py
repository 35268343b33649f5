"""The header offers each member the organization's pages their roles open, and no others."""

from __future__ import annotations

import pytest
from django.test import Client

from tests.factories import LanguageModelFactory


@pytest.fixture
def chat_page(org):
    LanguageModelFactory(provider__organization=org, is_default=True)

    def fetch(user) -> str:
        client = Client()
        client.force_login(user)
        response = client.get(f"/orgs/{org.slug}/chat/")
        assert response.status_code == 200
        return response.content.decode()

    return fetch


def test_owner_sees_providers_models_and_audit(chat_page, owner):
    page = chat_page(owner)
    for link in ("/orgs/acme/settings/providers/", "/orgs/acme/settings/models/", "/orgs/acme/audit/"):
        assert f'href="{link}"' in page


def test_auditor_sees_audit_and_settings_read_only_links(chat_page, auditor):
    page = chat_page(auditor)
    assert 'href="/orgs/acme/audit/"' in page and 'href="/orgs/acme/settings/providers/"' in page


def test_agents_user_sees_no_audit_or_settings_link(chat_page, agents_user):
    page = chat_page(agents_user)
    assert "/orgs/acme/audit/" not in page and "/settings/providers/" not in page
