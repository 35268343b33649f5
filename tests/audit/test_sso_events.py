"""Single sign-on through a real OpenID Connect provider on loopback is audited; its client secret never leaks."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from allauth.socialaccount.models import SocialAccount
from django.test import Client

from audit.models import AuditEvent
from tests.audit.conftest import everything_stored
from tests.audit.mfa import enrolled_and_signed_out, totp_code
from tests.idp.fixtures import TestIdentityProvider, portal_path

ROOT = Path(__file__).resolve().parents[2]
ORIGIN = {"REMOTE_ADDR": "203.0.113.21", "HTTP_USER_AGENT": "Mozilla/5.0 (SsoTest)"}
pytestmark = pytest.mark.usefixtures("fresh_cache")  # allauth keeps rate limits and used codes there


def link_identity(user, idp: TestIdentityProvider) -> SocialAccount:
    """An operator has linked the user's account to the IdP's account (as the admin does)."""
    return SocialAccount.objects.create(user=user, provider=idp.provider_id, uid=idp.account_id)


def start_sso(client: Client, idp: TestIdentityProvider, process: str = "login") -> str:
    """Press "Sign in with ..." (a POST, as the sign-in page does); return where the portal sends the browser."""
    response = client.post(f"/accounts/oidc/{idp.provider_id}/login/", {"process": process}, **ORIGIN)
    assert response.status_code == 302, response.content.decode()[:1000]
    return response["Location"]


def test_sign_in_page_offers_the_identity_provider(db, sso):
    page = Client().get("/accounts/login/").content.decode()

    assert f"Sign in with {sso.provider_name}" in page
    assert f'action="/accounts/oidc/{sso.provider_id}/login/?process=login"' in page
    assert sso.client_secret not in page


def test_sso_sign_in_of_an_org_member_is_audited_with_method_and_provider(org, agents_user, sso, caplog):
    link_identity(agents_user, sso)
    client = Client()

    with caplog.at_level(logging.DEBUG):
        authorize_url = start_sso(client, sso)
        callback_url = sso.sign_in(authorize_url)
        response = client.get(portal_path(callback_url), **ORIGIN)

    assert response.status_code == 302
    assert client.get("/orgs/acme/chat/").status_code == 200
    event = AuditEvent.objects.get(organization=org, action="auth.login")
    assert (event.actor_display, event.outcome, event.auth_method) == ("alice", "success", "sso")
    assert event.data == {
        "username": "alice",
        "method": "sso",
        "provider": sso.provider_id,
        "provider_name": sso.provider_name,
    }
    assert (event.source_ip, event.user_agent) == ("203.0.113.21", "Mozilla/5.0 (SsoTest)")
    assert sso.client_secret not in everything_stored()
    assert sso.client_secret not in caplog.text
    assert all(sso.client_secret not in str(record.args) for record in caplog.records)


def test_sso_sign_in_with_a_second_factor_is_audited_as_mfa_with_the_provider(
    org, agents_user, sso, django_capture_on_commit_callbacks
):
    client, enrolment = enrolled_and_signed_out(agents_user, django_capture_on_commit_callbacks)
    link_identity(agents_user, sso)

    callback = client.get(portal_path(sso.sign_in(start_sso(client, sso))), **ORIGIN)
    assert callback["Location"] == "/accounts/2fa/authenticate/"
    response = client.post("/accounts/2fa/authenticate/", {"code": totp_code(enrolment.secret)}, **ORIGIN)

    assert response.status_code == 302 and client.get("/orgs/acme/chat/").status_code == 200
    login = AuditEvent.objects.filter(organization=org, action="auth.login").order_by("sequence").last()
    assert login.auth_method == "mfa"
    assert (login.data["method"], login.data["provider"]) == ("mfa", sso.provider_id)


def test_a_signed_in_user_links_an_identity_after_confirming_the_password_and_it_is_audited(org, agents_user, sso):
    client = Client()
    client.post("/accounts/login/", {"login": "alice", "password": "pw-alice"}, **ORIGIN)

    callback_url = sso.sign_in(start_sso(client, sso, process="connect"))
    asked = client.get(portal_path(callback_url), **ORIGIN)
    assert asked["Location"].startswith("/accounts/reauthenticate/")
    response = client.post(asked["Location"], {"password": "pw-alice"}, **ORIGIN)

    assert response.status_code == 302
    assert SocialAccount.objects.filter(user=agents_user, provider=sso.provider_id, uid=sso.account_id).exists()
    linked = AuditEvent.objects.get(organization=org, action="auth.sso_linked")
    assert (linked.actor_display, linked.outcome, linked.auth_method) == ("alice", "success", "sso")
    assert linked.data["provider"] == sso.provider_id
    assert linked.data["subject"] == sso.account_id
    assert sso.client_secret not in everything_stored()

    # The linked identity now signs alice in.
    client.post("/accounts/logout/", **ORIGIN)
    fresh = Client()
    fresh.get(portal_path(sso.sign_in(start_sso(fresh, sso))), **ORIGIN)
    assert fresh.get("/orgs/acme/chat/").status_code == 200
    assert AuditEvent.objects.filter(organization=org, action="auth.login", auth_method="sso").count() == 1


def test_unlinking_an_identity_is_audited(org, agents_user, sso):
    account = link_identity(agents_user, sso)
    client = Client()
    client.post("/accounts/login/", {"login": "alice", "password": "pw-alice"}, **ORIGIN)
    client.post("/accounts/reauthenticate/", {"password": "pw-alice"}, **ORIGIN)

    response = client.post("/accounts/3rdparty/", {"account": account.pk}, **ORIGIN)

    assert response.status_code == 302
    assert not SocialAccount.objects.filter(pk=account.pk).exists()
    unlinked = AuditEvent.objects.get(organization=org, action="auth.sso_unlinked")
    assert (unlinked.actor_display, unlinked.data["provider"], unlinked.data["subject"]) == (
        "alice",
        sso.provider_id,
        sso.account_id,
    )


def test_cancelled_sso_sign_in_with_nobody_signed_in_is_logged_not_audited(org, agents_user, sso, caplog):
    link_identity(agents_user, sso)
    client = Client()

    with caplog.at_level(logging.DEBUG):
        callback_url = sso.cancel(start_sso(client, sso))
        assert "error=access_denied" in callback_url
        response = client.get(portal_path(callback_url), **ORIGIN)

    assert response.status_code == 302
    assert response["Location"] == "/accounts/3rdparty/login/cancelled/"
    assert client.get("/orgs/acme/chat/")["Location"].startswith("/accounts/login/")
    assert not AuditEvent.objects.exists()
    warning = next(r for r in caplog.records if r.name == "audit.auth_events" and r.levelno == logging.WARNING)
    message = warning.getMessage()
    assert sso.provider_id in message
    assert "cancelled" in message
    assert "access_denied" in message
    assert "203.0.113.21" in message
    assert sso.client_secret not in caplog.text


def test_cancelled_sso_of_a_signed_in_user_is_audited_as_a_failure(org, agents_user, sso, caplog):
    client = Client()
    client.post("/accounts/login/", {"login": "alice", "password": "pw-alice"}, **ORIGIN)

    with caplog.at_level(logging.DEBUG):
        callback_url = sso.cancel(start_sso(client, sso, process="connect"))
        response = client.get(portal_path(callback_url), **ORIGIN)

    assert response.status_code == 302
    failed = AuditEvent.objects.get(organization=org, action="auth.sso_failed")
    assert (failed.actor_display, failed.outcome, failed.auth_method) == ("alice", "failure", "sso")
    assert failed.data == {
        "username": "alice",
        "method": "sso",
        "provider": sso.provider_id,
        "provider_name": sso.provider_name,
        "process": "connect",
        "reason": "cancelled",
        "idp_error": "access_denied",
    }
    assert failed.error
    assert (failed.source_ip, failed.user_agent) == ("203.0.113.21", "Mozilla/5.0 (SsoTest)")
    assert not SocialAccount.objects.exists()
    assert sso.client_secret not in everything_stored()
    assert sso.client_secret not in caplog.text


def test_an_identity_linked_to_no_account_is_refused_and_logged(org, agents_user, sso, caplog):
    client = Client()

    with caplog.at_level(logging.WARNING, logger="audit.auth_events"):
        response = client.get(portal_path(sso.sign_in(start_sso(client, sso))), **ORIGIN)

    assert response.status_code == 200
    assert "sign up is currently closed" in response.content.decode()
    assert client.get("/orgs/acme/chat/")["Location"].startswith("/accounts/login/")
    assert not SocialAccount.objects.exists()
    assert not AuditEvent.objects.exists()
    assert sso.account_id in caplog.text
    assert "203.0.113.21" in caplog.text


def test_oidc_settings_without_a_client_secret_refuse_to_start():
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRLOCK_OIDC_")}
    env.update(
        DJANGO_SETTINGS_MODULE="portal.settings.test",
        AIRLOCK_OIDC_SERVER_URL="https://idp.example.test",
        AIRLOCK_OIDC_CLIENT_ID="airlock",
    )

    result = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )

    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert "AIRLOCK_OIDC_CLIENT_SECRET" in result.stderr


def test_a_failed_token_exchange_is_audited_for_the_signed_in_user_without_the_secret(
    org, agents_user, sso, settings, caplog
):
    wrong_secret = "wrong-client-secret-4f1b7c9e"
    providers = sso.provider_settings()
    providers["openid_connect"]["APPS"][0]["secret"] = wrong_secret
    settings.SOCIALACCOUNT_PROVIDERS = providers
    client = Client()
    client.post("/accounts/login/", {"login": "alice", "password": "pw-alice"}, **ORIGIN)

    with caplog.at_level(logging.DEBUG):
        callback_url = sso.sign_in(start_sso(client, sso, process="connect"))
        response = client.get(portal_path(callback_url), **ORIGIN)

    assert response.status_code == 401  # allauth's "Third-Party Login Failure" page
    failed = AuditEvent.objects.get(organization=org, action="auth.sso_failed")
    assert (failed.outcome, failed.data["reason"], failed.data["exception"]) == ("failure", "unknown", "OAuth2Error")
    assert not SocialAccount.objects.exists()
    stored = everything_stored()
    for secret in (wrong_secret, sso.client_secret):
        assert secret not in stored
        assert secret not in caplog.text


def test_sign_in_page_offers_no_sso_when_none_is_configured(db, settings):
    settings.SOCIALACCOUNT_PROVIDERS = {}

    page = Client().get("/accounts/login/").content.decode()

    assert "Sign in with" not in page
    assert 'name="password"' in page


def test_a_forged_callback_without_this_sessions_state_writes_nothing_into_the_signed_in_users_log(
    org, agents_user, sso, caplog
):
    client = Client()
    client.post("/accounts/login/", {"login": "alice", "password": "pw-alice"}, **ORIGIN)
    events = AuditEvent.objects.filter(organization=org).count()

    with caplog.at_level(logging.WARNING):
        callback = f"/accounts/oidc/{sso.provider_id}/login/callback/?error=ATTACKER_CHOSEN&state=forged"
        client.get(callback, **ORIGIN)

    assert not AuditEvent.objects.filter(action="auth.sso_failed").exists()
    assert AuditEvent.objects.filter(organization=org).count() == events
    assert "not audited" in caplog.text
