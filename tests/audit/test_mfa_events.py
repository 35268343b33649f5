"""Two-factor authentication through allauth's own pages is audited, and its secrets never reach the audit log."""

from __future__ import annotations

import pytest
from allauth.mfa.models import Authenticator
from django.test import Client

from audit.models import AuditEvent
from tests.audit.conftest import everything_stored
from tests.audit.mfa import (
    ORIGIN,
    a_wrong_code,
    activate_totp,
    confirm_password,
    enrolled_and_signed_out,
    sign_in_with_password,
    totp_code,
)

pytestmark = pytest.mark.usefixtures("fresh_cache")  # allauth keeps rate limits and used codes there


def test_activating_totp_is_audited_with_the_authenticator_type(org, agents_user, django_capture_on_commit_callbacks):
    client = Client()
    sign_in_with_password(client, "alice")

    activate_totp(client, django_capture_on_commit_callbacks)

    added = AuditEvent.objects.filter(organization=org, action="auth.mfa_added").order_by("sequence")
    assert [event.data["authenticator_type"] for event in added] == ["totp", "recovery_codes"]
    for event in added:
        assert (event.actor_display, event.outcome, event.auth_method) == ("alice", "success", "mfa")
        assert (event.source_ip, event.user_agent) == ("203.0.113.9", "Mozilla/5.0 (MfaTest)")


def test_signing_in_with_password_and_totp_is_audited_as_mfa(org, agents_user, django_capture_on_commit_callbacks):
    client, enrolment = enrolled_and_signed_out(agents_user, django_capture_on_commit_callbacks)

    first_step = client.post("/accounts/login/", {"login": "alice", "password": "pw-alice"}, **ORIGIN)
    assert first_step.status_code == 302
    assert first_step["Location"] == "/accounts/2fa/authenticate/"
    assert client.get("/orgs/acme/chat/")["Location"].startswith("/accounts/login/")  # not signed in yet
    response = client.post("/accounts/2fa/authenticate/", {"code": totp_code(enrolment.secret)}, **ORIGIN)

    assert response.status_code == 302
    assert client.get("/orgs/acme/chat/").status_code == 200
    login = AuditEvent.objects.filter(organization=org, action="auth.login").order_by("sequence").last()
    assert (login.actor_display, login.outcome, login.auth_method) == ("alice", "success", "mfa")
    assert login.data == {"username": "alice", "method": "mfa"}
    assert (login.source_ip, login.user_agent) == ("203.0.113.9", "Mozilla/5.0 (MfaTest)")
    mfa_added = AuditEvent.objects.get(organization=org, action="auth.mfa_added", data__authenticator_type="totp")
    assert mfa_added.sequence < login.sequence
    assert not AuditEvent.objects.filter(action="auth.mfa_failed").exists()


def test_a_wrong_totp_code_is_audited_as_a_failure_and_does_not_sign_in(
    org, agents_user, django_capture_on_commit_callbacks
):
    client, enrolment = enrolled_and_signed_out(agents_user, django_capture_on_commit_callbacks)
    logins_before = AuditEvent.objects.filter(action="auth.login").count()
    client.post("/accounts/login/", {"login": "alice", "password": "pw-alice"}, **ORIGIN)

    response = client.post("/accounts/2fa/authenticate/", {"code": a_wrong_code(enrolment.secret)}, **ORIGIN)

    assert response.status_code == 200
    assert "incorrect" in response.content.decode().lower()
    assert client.get("/orgs/acme/chat/")["Location"].startswith("/accounts/login/")
    failed = AuditEvent.objects.get(organization=org, action="auth.mfa_failed")
    assert (failed.actor_display, failed.outcome, failed.auth_method) == ("alice", "failure", "mfa")
    assert failed.data["authenticator_type"] == "totp"
    assert (failed.source_ip, failed.user_agent) == ("203.0.113.9", "Mozilla/5.0 (MfaTest)")
    assert AuditEvent.objects.filter(action="auth.login").count() == logins_before


def test_removing_the_authenticator_app_is_audited(org, agents_user, django_capture_on_commit_callbacks):
    client = Client()
    sign_in_with_password(client, "alice")
    activate_totp(client, django_capture_on_commit_callbacks)
    assert client.get("/accounts/2fa/totp/deactivate/", **ORIGIN).status_code == 200

    response = client.post("/accounts/2fa/totp/deactivate/", **ORIGIN)

    assert response.status_code == 302
    assert not Authenticator.objects.filter(user=agents_user).exists()
    removed = AuditEvent.objects.filter(organization=org, action="auth.mfa_removed").order_by("sequence")
    # Recovery codes without an authenticator app are useless, so allauth removes them with it.
    assert [event.data["authenticator_type"] for event in removed] == ["totp", "recovery_codes"]
    assert {(event.actor_display, event.outcome) for event in removed} == {("alice", "success")}


def test_totp_secret_and_recovery_codes_never_reach_the_audit_log(org, agents_user, django_capture_on_commit_callbacks):
    client, enrolment = enrolled_and_signed_out(agents_user, django_capture_on_commit_callbacks)
    client.post("/accounts/login/", {"login": "alice", "password": "pw-alice"}, **ORIGIN)
    client.post("/accounts/2fa/authenticate/", {"code": a_wrong_code(enrolment.secret)}, **ORIGIN)
    # A recovery code signs in too, and is as secret as the TOTP seed.
    client.post("/accounts/2fa/authenticate/", {"code": enrolment.recovery_codes[0]}, **ORIGIN)
    assert client.get("/orgs/acme/chat/").status_code == 200
    confirm_password(client, "alice", "/accounts/2fa/totp/deactivate/")
    client.post("/accounts/2fa/totp/deactivate/", **ORIGIN)

    actions = set(AuditEvent.objects.values_list("action", flat=True))
    assert {"auth.mfa_added", "auth.mfa_failed", "auth.login", "auth.mfa_removed"} <= actions
    stored = everything_stored()
    assert enrolment.secret not in stored
    assert enrolment.secret.lower() not in stored.lower()
    for code in enrolment.recovery_codes:
        assert code not in stored


def test_account_security_is_in_the_user_menu_and_looks_like_the_portal(org, agents_user):
    client = Client()
    sign_in_with_password(client, "alice")

    chat = client.get("/orgs/acme/chat/").content.decode()
    page = client.get("/accounts/2fa/").content.decode()

    assert 'href="/accounts/2fa/"' in chat
    assert "Account security" in chat
    assert 'class="topbar"' in page
    assert "airlock/airlock.css" in page
    assert "Signed in as <strong>alice</strong>" in page
    assert 'href="/accounts/2fa/totp/activate/"' in page
    assert 'class="card settings-card"' in page
