"""Authentication events: sign-in, sign-out, failed sign-in, two-factor authentication and single sign-on.

A sign-in belongs to no single organization, so each event is written into the chain of every organization
the user belongs to (one event each, sharing the request id). A failed sign-in for a username that matches
no account has no organization to go to: it is logged (never with the password), not audited.

Two-factor authentication (allauth.mfa): `auth.mfa_added`, `auth.mfa_removed`, `auth.mfa_reset` and
`auth.mfa_failed` (a wrong code, outcome failure) name the authenticator type only; a TOTP secret, a code
and recovery codes never reach an event. A sign-in completed with a second factor is `auth.login` with
method "mfa".

Single sign-on (allauth.socialaccount, OpenID Connect): a sign-in through the identity provider is
`auth.login` with method "sso" and the provider's id and name in data; linking and unlinking an identity
are `auth.sso_linked` / `auth.sso_unlinked`. A failed or cancelled hand-shake (the IdP answers
error=access_denied, the token exchange fails, ...) is `auth.sso_failed`, outcome failure, only when the
user can be identified, which means a user signed in to this browser session (linking an identity,
signing in again). The IdP's error callback carries no identity Airlock could trust, so a failed SSO
sign-in with nobody signed in is logged (provider, reason, address, request id), not audited, as a
failed sign-in for an unknown username is. An identity the IdP vouched for that is linked to no local
account is refused (sign-up is closed) and logged. The OIDC client secret is never logged or audited;
error texts are scrubbed of it before they are logged.

The signal receivers at the bottom only adapt allauth's and Django's signals into the service calls;
AuditedSocialAccountAdapter does the same for the SSO failures allauth reports to its adapter instead of
sending a signal.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from typing import Any

from allauth.socialaccount.adapter import DefaultSocialAccountAdapter
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ImproperlyConfigured, MultipleObjectsReturned, ObjectDoesNotExist
from django.db import transaction
from django.http import HttpRequest

from audit import context as audit_context
from audit.models import AuditEvent, AuditPendingEvent, Outcome
from audit.secrets import without_secrets
from audit.services import record
from organizations.models import Organization

logger = logging.getLogger(__name__)

USERNAME_MAX_LENGTH = 150
REDACTED = "[redacted]"
# allauth's AuthError codes -> the error text of an auth.sso_failed event.
SSO_FAILURE_ERRORS = {
    "cancelled": "Single sign-on was cancelled at the identity provider.",
    "denied": "The identity provider denied single sign-on.",
}
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
) -> list[AuditEvent | AuditPendingEvent]:
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


def auth_login_failed_record(*, username: str, method: str = "password") -> list[AuditEvent | AuditPendingEvent]:
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


def auth_sso_failed_record(
    *,
    user: AbstractBaseUser | None,
    provider: str,
    provider_name: str = "",
    process: str = "login",
    reason: str = "unknown",
    idp_error: str = "",
    exception: str = "",
    detail: str = "",
) -> list[AuditEvent | AuditPendingEvent]:
    """Audit a failed SSO hand-shake for the signed-in user it happened to; with nobody signed in, only log it.

    `detail` (an exception's text, the IdP's error description) goes to the log only, never into an event.
    """
    reason = str(reason or "unknown")[:32]
    idp_error = str(idp_error or "")[:64]
    if user is None or not getattr(user, "pk", None):
        request = audit_context.current()
        logger.warning(
            "SSO %s through %r failed (%s%s%s%s) from %s (request %s); not audited: no signed-in user",
            process,
            provider,
            reason,
            f", IdP error {idp_error!r}" if idp_error else "",
            f", {exception}" if exception else "",
            f": {detail[:300]!r}" if detail else "",
            request.source_ip or "unknown address",
            request.request_id or "-",
        )
        return []
    data = {"provider": provider, "provider_name": provider_name, "process": process, "reason": reason}
    if idp_error:
        data["idp_error"] = idp_error
    if exception:
        data["exception"] = exception
    return auth_event_record(
        action="auth.sso_failed",
        user=user,
        method="sso",
        outcome=Outcome.FAILURE,
        error=SSO_FAILURE_ERRORS.get(reason, "Single sign-on failed."),
        data=data,
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
    """How allauth says the user signed in: password, sso or mfa (mfa wins when a second factor was used, also
    after single sign-on: allauth's second-factor stage runs after a social login too)."""
    records: list[dict[str, Any]] = []
    if request is not None and hasattr(request, "session"):
        from allauth.account.authentication import get_authentication_records

        records = get_authentication_records(request, user)
    methods = [ALLAUTH_METHODS.get(str(item.get("method")), str(item.get("method"))) for item in records]
    if "mfa" in methods:
        return "mfa"
    if kwargs.get("sociallogin") is not None:
        return "sso"
    return methods[-1] if methods else "unknown"


def _provider_data(account: Any, request: HttpRequest | None) -> dict[str, str]:
    """The SSO provider's id and display name of a SocialAccount (never its client credentials)."""
    provider_id = str(getattr(account, "provider", "") or "")
    try:
        name = str(account.get_provider(request).name)
    except (ImproperlyConfigured, ObjectDoesNotExist, MultipleObjectsReturned):
        # An app removed from the settings still has accounts: its id is enough.
        name = ""
    return {"provider": provider_id, "provider_name": name or provider_id}


def on_user_logged_in(sender: type, request: HttpRequest | None = None, user: Any = None, **kwargs: Any) -> None:
    """allauth's user_logged_in -> auth.login (with the provider when the user came through SSO)."""
    if user is None:
        return
    sociallogin = kwargs.get("sociallogin")
    data = _provider_data(sociallogin.account, request) if sociallogin is not None else None
    with _request_context(request):
        auth_event_record(action="auth.login", user=user, method=_login_method(request, user, kwargs), data=data)


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


def on_social_account_added(
    sender: type, request: HttpRequest | None = None, sociallogin: Any = None, **kwargs: Any
) -> None:
    """allauth's social_account_added -> auth.sso_linked."""
    _sso_account_event("auth.sso_linked", getattr(sociallogin, "account", None), request)


def on_social_account_removed(
    sender: type, request: HttpRequest | None = None, socialaccount: Any = None, **kwargs: Any
) -> None:
    """allauth's social_account_removed -> auth.sso_unlinked."""
    _sso_account_event("auth.sso_unlinked", socialaccount, request)


def _sso_account_event(action: str, account: Any, request: HttpRequest | None) -> None:
    """Audit a linked or unlinked SocialAccount for its user: the provider and the subject, nothing secret."""
    user = getattr(account, "user", None)
    if user is None or not getattr(user, "pk", None):
        return
    with _request_context(request):
        auth_event_record(
            action=action, user=user, method="sso", data={**_provider_data(account, request), "subject": account.uid}
        )


class AuditedSocialAccountAdapter(DefaultSocialAccountAdapter):
    """allauth's social-account adapter, reporting SSO failures and refused identities to the audit services."""

    def on_authentication_error(
        self,
        request: HttpRequest,
        provider: Any,
        error: str | None = None,
        exception: BaseException | None = None,
        extra_context: dict[str, Any] | None = None,
    ) -> None:
        """A failed or cancelled SSO hand-shake -> auth.sso_failed (or a log line when nobody is signed in)."""
        super().on_authentication_error(
            request, provider, error=error, exception=exception, extra_context=extra_context
        )
        app = getattr(provider, "app", None)
        secret = str(getattr(app, "secret", "") or "")
        # Only a callback carrying a state this session issued (allauth unstashes it once) belongs to the
        # signed-in user: anyone can send a browser to the callback URL with an error of their choosing.
        state = (extra_context or {}).get("state") or {}
        user = getattr(request, "user", None)
        with _request_context(request):
            auth_sso_failed_record(
                user=user if state and getattr(user, "is_authenticated", False) else None,
                provider=str(getattr(app, "provider_id", "") or getattr(provider, "id", "")),
                provider_name=str(getattr(provider, "name", "") or ""),
                process=str(state.get("process") or "login"),
                reason=str(error or "unknown"),
                idp_error=without_secrets(str(request.GET.get("error", "")), secret, mask_text=REDACTED),
                exception=type(exception).__name__ if exception is not None else "",
                detail=without_secrets(
                    " ".join(part for part in (str(exception or ""), request.GET.get("error_description", "")) if part),
                    secret,
                    mask_text=REDACTED,
                ),
            )

    def is_open_for_signup(self, request: HttpRequest, sociallogin: Any) -> bool:
        """Sign-up stays closed; an SSO identity linked to no local account is logged when it is refused."""
        is_open = super().is_open_for_signup(request, sociallogin)
        if not is_open:
            with _request_context(request):
                context = audit_context.current()
                logger.warning(
                    "SSO sign-in through %r by subject %r refused: linked to no account and sign-up is closed "
                    "(from %s, request %s)",
                    sociallogin.account.provider,
                    sociallogin.account.uid,
                    context.source_ip or "unknown address",
                    context.request_id or "-",
                )
        return is_open


def connect_signals() -> None:
    """Connect the adapters (called once from AuditConfig.ready)."""
    from allauth.account.signals import user_logged_in
    from django.contrib.auth.signals import user_logged_out, user_login_failed

    user_logged_in.connect(on_user_logged_in, dispatch_uid="audit.auth.login")
    user_logged_out.connect(on_user_logged_out, dispatch_uid="audit.auth.logout")
    user_login_failed.connect(on_user_login_failed, dispatch_uid="audit.auth.login_failed")
    if "allauth.socialaccount" in settings.INSTALLED_APPS:
        from allauth.socialaccount import signals as social_signals

        social_signals.social_account_added.connect(on_social_account_added, dispatch_uid="audit.auth.sso_linked")
        social_signals.social_account_removed.connect(on_social_account_removed, dispatch_uid="audit.auth.sso_unlinked")
    if "allauth.mfa" in settings.INSTALLED_APPS:
        from allauth.mfa import signals as mfa_signals

        for name, receiver in _MFA_RECEIVERS.items():
            getattr(mfa_signals, name).connect(receiver, dispatch_uid=f"audit.auth.{name}")
