"""Two-factor authentication as a user goes through it on allauth's pages: shared by the MFA and SSO tests."""

from __future__ import annotations

import time
from dataclasses import dataclass

from allauth.mfa import app_settings as mfa_settings
from allauth.mfa.totp.internal.auth import format_hotp_value, hotp_value
from django.test import Client

ORIGIN = {"REMOTE_ADDR": "203.0.113.9", "HTTP_USER_AGENT": "Mozilla/5.0 (MfaTest)"}


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
