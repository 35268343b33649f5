"""Authentication events: sign-in, sign-out, failed sign-in (and MFA when allauth.mfa is installed).

A sign-in belongs to no single organization, so each event is written into the chain of every organization
the user belongs to (one event each, sharing the request id). A failed sign-in for a username that matches
no account has no organization to go to: it is logged (never with the password), not audited.

The signal receivers at the bottom only adapt allauth's and Django's signals into the service calls.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.http import HttpRequest

from audit import context as audit_context
from audit.models import AuditEvent, Outcome
from audit.services import record
from organizations.models import Organization

logger = logging.getLogger(__name__)

USERNAME_MAX_LENGTH = 150
# allauth's names for authentication steps -> the method an audit event states.
ALLAUTH_METHODS = {"password": "password", "socialaccount": "sso", "mfa": "mfa", "code": "login-code"}


def _organizations_of(user: AbstractBaseUser) -> list[Organization]:
    """The user's organizations in primary-key order (a fixed lock order for the chain heads)."""
    return list(Organization.objects.filter(memberships__user_id=user.pk).order_by("pk"))


@transaction.atomic
def auth_event_record(
    *,
    action: str,
    user: AbstractBaseUser,
    method: str = "",
    outcome: str = Outcome.SUCCESS,
    error: str = "",
    data: dict[str, Any] | None = None,
) -> list[AuditEvent]:
    """Write one authentication event into the chain of every organization the user belongs to."""
    organizations = _organizations_of(user)
    if not organizations:
        logger.info("%s for %s (no organization to audit it in)", action, user.get_username())
        return []
    bound = audit_context.bound(auth_method=method[:32]) if method else nullcontext()
    with bound:
        return [
            record(
                action=action,
                actor=user,
                organization=organization,
                target=user,
                outcome=outcome,
                error=error,
                data={"username": user.get_username(), **({"method": method} if method else {}), **(data or {})},
            )
            for organization in organizations
        ]


def auth_login_failed_record(*, username: str, method: str = "password") -> list[AuditEvent]:
    """Audit a failed sign-in for the account the username names; an unknown username is only logged."""
    username = str(username or "")[:USERNAME_MAX_LENGTH]
    user_model = get_user_model()
    field = user_model.USERNAME_FIELD
    user = user_model.objects.filter(**{field: username}).first() if username else None
    if user is None and username:
        user = user_model.objects.filter(**{f"{field}__iexact": username}).order_by("pk").first()
    if user is None:
        request = audit_context.current()
        logger.warning(
            "Failed sign-in for unknown username %r from %s (request %s); not audited: no organization",
            username,
            request.source_ip or "unknown address",
            request.request_id or "-",
        )
        return []
    return auth_event_record(
        action="auth.login_failed",
        user=user,
        method=method,
        outcome=Outcome.FAILURE,
        error="Wrong username or password.",
        data={"username_tried": username},
    )


# --- signal adapters (no logic beyond reading the signal's arguments) -------------------------------------


def _request_context(request: HttpRequest | None) -> Any:
    """Bind the request's origin if the audit middleware did not (a sign-in outside the middleware stack)."""
    if request is None or audit_context.current().request_id:
        return nullcontext()
    meta = getattr(request, "META", {}) or {}
    return audit_context.bound(
        source_ip=str(meta.get("REMOTE_ADDR", "") or ""), user_agent=str(meta.get("HTTP_USER_AGENT", ""))[:500]
    )


def _login_method(request: HttpRequest | None, user: AbstractBaseUser, kwargs: dict[str, Any]) -> str:
    """How allauth says the user signed in: password, sso or mfa (mfa wins when a second factor was used)."""
    if kwargs.get("sociallogin") is not None:
        return "sso"
    records: list[dict[str, Any]] = []
    if request is not None and hasattr(request, "session"):
        from allauth.account.authentication import get_authentication_records

        records = get_authentication_records(request, user)
    methods = [ALLAUTH_METHODS.get(str(item.get("method")), str(item.get("method"))) for item in records]
    if "mfa" in methods:
        return "mfa"
    return methods[-1] if methods else "unknown"


def on_user_logged_in(sender: type, request: HttpRequest | None = None, user: Any = None, **kwargs: Any) -> None:
    """allauth's user_logged_in -> auth.login."""
    if user is None:
        return
    with _request_context(request):
        auth_event_record(action="auth.login", user=user, method=_login_method(request, user, kwargs))


def on_user_logged_out(sender: type, request: HttpRequest | None = None, user: Any = None, **kwargs: Any) -> None:
    """Django's (and allauth's) user_logged_out -> auth.logout."""
    if user is None or not getattr(user, "is_authenticated", False):
        return
    with _request_context(request):
        auth_event_record(action="auth.logout", user=user)


def on_user_login_failed(
    sender: str, credentials: dict[str, Any] | None = None, request: HttpRequest | None = None, **kwargs: Any
) -> None:
    """Django's user_login_failed -> auth.login_failed (the username tried; the password never leaves here)."""
    credentials = credentials or {}
    field = get_user_model().USERNAME_FIELD
    username = credentials.get(field) or credentials.get("username") or credentials.get("email") or ""
    with _request_context(request):
        auth_login_failed_record(username=str(username))


def _mfa_adapter(action: str, outcome: str = Outcome.SUCCESS) -> Any:
    def receiver(sender: type, request: HttpRequest | None = None, user: Any = None, **kwargs: Any) -> None:
        authenticator = kwargs.get("authenticator")
        if user is None or not getattr(user, "pk", None):
            return
        with _request_context(request):
            auth_event_record(
                action=action,
                user=user,
                method="mfa",
                outcome=outcome,
                data={"authenticator_type": str(getattr(authenticator, "type", "") or "")},
            )

    receiver.__doc__ = f"allauth.mfa signal -> {action}."
    return receiver


MFA_SIGNAL_ACTIONS = {
    "authenticator_added": ("auth.mfa_added", Outcome.SUCCESS),
    "authenticator_removed": ("auth.mfa_removed", Outcome.SUCCESS),
    "authenticator_reset": ("auth.mfa_reset", Outcome.SUCCESS),
    "authentication_failed": ("auth.mfa_failed", Outcome.FAILURE),
}
_MFA_RECEIVERS = {name: _mfa_adapter(action, outcome) for name, (action, outcome) in MFA_SIGNAL_ACTIONS.items()}


def connect_signals() -> None:
    """Connect the adapters (called once from AuditConfig.ready)."""
    from allauth.account.signals import user_logged_in
    from django.contrib.auth.signals import user_logged_out, user_login_failed

    user_logged_in.connect(on_user_logged_in, dispatch_uid="audit.auth.login")
    user_logged_out.connect(on_user_logged_out, dispatch_uid="audit.auth.logout")
    user_login_failed.connect(on_user_login_failed, dispatch_uid="audit.auth.login_failed")
    if "allauth.mfa" in settings.INSTALLED_APPS:
        from allauth.mfa import signals as mfa_signals

        for name, receiver in _MFA_RECEIVERS.items():
            getattr(mfa_signals, name).connect(receiver, dispatch_uid=f"audit.auth.{name}")
