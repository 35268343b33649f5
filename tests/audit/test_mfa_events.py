"""Two-factor authentication through allauth's own pages is audited, and its secrets never reach the audit log."""

from __future__ import annotations

import time
from dataclasses import dataclass

import pytest
from allauth.mfa import app_settings as mfa_settings
from allauth.mfa.models import Authenticator
from allauth.mfa.totp.internal.auth import format_hotp_value, hotp_value
from django.test import Client

from audit.models import AuditEvent
from tests.audit.conftest import everything_stored

ORIGIN = {"REMOTE_ADDR": "203.0.113.9", "HTTP_USER_AGENT": "Mozilla/5.0 (MfaTest)"}
pytestmark = pytest.mark.usefixtures("fresh_cache")  # allauth keeps rate limits and used codes there


@dataclass
class Enrolment:
    """What the user saw while turning on the authenticator app."""

    secret: str
    recovery_codes: list[str]


def totp_code(secret: str) -> str:
    """The code an authenticator app shows now, computed with allauth's own TOTP helper.

    Waits for the next time step when this one ends within 5 s, so that the code is still valid when posted
    (allauth accepts no neighbouring step).
    """
    period = mfa_settings.TOTP_PERIOD
    if period - time.time() % period < 5:
        time.sleep(period - time.time() % period + 0.05)
    return format_hotp_value(hotp_value(secret, int(time.time()) // period))


def a_wrong_code(secret: str) -> str:
    """A well-formed code that is not the current one."""
    right = int(totp_code(secret))
    return format_hotp_value((right + 1) % 10**mfa_settings.TOTP_DIGITS)


def sign_in_with_password(client: Client, username: str) -> None:
    """Fill in allauth's sign-in form."""
    response = client.post("/accounts/login/", {"login": username, "password": f"pw-{username}"}, **ORIGIN)
    assert response.status_code == 302, response.content.decode()[:500]


def confirm_password(client: Client, username: str, path: str) -> None:
    """allauth asks for the password again before a security setting changes: go there, confirm, come back."""
    asked = client.get(path, **ORIGIN)
    assert asked.status_code == 302
    assert asked["Location"].startswith("/accounts/reauthenticate/")
    confirmed = client.post(asked["Location"], {"password": f"pw-{username}"}, **ORIGIN)
    assert confirmed.status_code == 302
    assert confirmed["Location"] == path


def activate_totp(client: Client, django_capture_on_commit_callbacks, username: str = "alice") -> Enrolment:
    """Turn on the authenticator app through allauth's pages, as a signed-in user would."""
    confirm_password(client, username, "/accounts/2fa/totp/activate/")
    page = client.get("/accounts/2fa/totp/activate/", **ORIGIN)
    assert page.status_code == 200
    secret = page.context["form"].secret
    assert secret in page.content.decode()  # shown once, to type into the app
    # allauth announces the new authenticator after its transaction commits.
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post("/accounts/2fa/totp/activate/", {"code": totp_code(secret)}, **ORIGIN)
    assert response.status_code == 302
    assert response["Location"] == "/accounts/2fa/recovery-codes/"
    codes_page = client.get(response["Location"], **ORIGIN)
    recovery_codes = list(codes_page.context["unused_codes"])
    assert recovery_codes
    return Enrolment(secret=secret, recovery_codes=recovery_codes)


def enrolled_and_signed_out(agents_user, django_capture_on_commit_callbacks) -> tuple[Client, Enrolment]:
    """alice has turned on TOTP and signed out again."""
    client = Client()
    sign_in_with_password(client, agents_user.username)
    enrolment = activate_totp(client, django_capture_on_commit_callbacks)
    assert client.post("/accounts/logout/", **ORIGIN).status_code == 302
    return client, enrolment


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
