"""Writes to providers and models: permission check, validation, change, audit, all in one transaction.

Every function is keyword-only and audited with before/after values; a secret appears in an audit row only
masked ("****" and at most its last four characters). Validation errors are `ValidationError({field: message})`
whose message says what to fix.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser, Group
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import ProtectedError

import audit
from audit.services import Actor
from organizations.models import Membership, Organization
from organizations.permissions import require_actor_permission
from portal.crypto import encrypt_secret, masked_secret, secret_hint
from providers.models import LanguageModel, Provider
from providers.selectors import grantable_groups
from providers.validation import (
    MODEL_FIELDS,
    MODEL_UPDATE_FIELDS,
    PROVIDER_CHANGES,
    audited_headers,
    clean_base_url,
    clean_display_name,
    clean_model_fields,
    clean_text,
    duplicate_identifier,
    keep_stored_headers,
    reject_unknown_names,
    validate_api_key,
    validate_context_limit,
    validate_extra_headers,
    validate_kind,
    validate_model_identifier,
    validate_provider_config,
    validate_provider_name,
)

USE_PERMISSION = "providers.use_languagemodel"


def _stored_key_mask(provider: Provider) -> str | None:
    return "****" + provider.api_key_hint if provider.has_api_key else None


# --- provider validation --------------------------------------------------------------------------------------


def _provider_snapshot(provider: Provider) -> dict[str, Any]:
    return {
        "name": provider.name,
        "kind": provider.kind,
        "base_url": provider.base_url,
        "is_simulator": provider.is_simulator,
        "extra_headers": dict(provider.extra_headers or {}),
        "api_version": provider.api_version,
        "region": provider.region,
        "aws_access_key_id": provider.aws_access_key_id,
        "use_ambient_credentials": provider.use_ambient_credentials,
    }


@transaction.atomic
def provider_create(
    *,
    actor: Actor,
    organization: Organization,
    name: str,
    kind: str,
    base_url: str = "",
    api_key: str = "",
    is_simulator: bool = False,
    extra_headers: dict[str, str] | None = None,
    api_version: str = "",
    region: str = "",
    aws_access_key_id: str = "",
    use_ambient_credentials: bool = False,
) -> Provider:
    """Add an LLM endpoint to an organization; the key is stored encrypted and only its last 4 chars shown."""
    require_actor_permission(actor, organization, "provider.manage")
    clean_name = validate_provider_name(organization=organization, name=name)
    kind = validate_kind(kind)
    clean_url = clean_base_url(kind, base_url)
    key = validate_api_key(api_key or "")
    headers = validate_extra_headers(keep_stored_headers(extra_headers, stored={}))
    clean_version = clean_text(api_version, field="api_version", limit=40)
    clean_region = clean_text(region, field="region", limit=40)
    clean_key_id = clean_text(aws_access_key_id, field="aws_access_key_id", limit=128)
    validate_provider_config(
        kind=kind,
        base_url=clean_url,
        has_api_key=bool(key),
        api_version=clean_version,
        region=clean_region,
        aws_access_key_id=clean_key_id,
        use_ambient_credentials=bool(use_ambient_credentials),
    )
    provider = Provider(
        organization=organization,
        name=clean_name,
        kind=kind,
        base_url=clean_url,
        api_key_encrypted=encrypt_secret(key) if key else "",
        api_key_hint=secret_hint(key) if key else "",
        is_simulator=bool(is_simulator),
        extra_headers=headers,
        api_version=clean_version,
        region=clean_region,
        aws_access_key_id=clean_key_id,
        use_ambient_credentials=bool(use_ambient_credentials),
    )
    try:
        with transaction.atomic():
            provider.save(force_insert=True)
    except IntegrityError:
        raise ValidationError(
            {"name": f"{organization.slug} already has a provider named {clean_name!r}: pick another."}
        ) from None
    data: dict[str, Any] = {
        "name": provider.name,
        "kind": provider.kind,
        "base_url": provider.base_url,
        "is_simulator": provider.is_simulator,
    }
    for field in ("extra_headers", "api_version", "region", "aws_access_key_id", "use_ambient_credentials"):
        value = getattr(provider, field)
        if value:
            data[field] = audited_headers(value) if field == "extra_headers" else value
    if key:
        data["api_key_hint"] = masked_secret(key)
    audit.record(action="provider.created", actor=actor, organization=organization, target=provider, data=data)
    return provider


@transaction.atomic
def provider_update(*, actor: Actor, provider: Provider, **changes: Any) -> Provider:
    """Change a provider; a new `api_key` replaces the stored one (audited as provider.key_rotated).

    Changes among: name, base_url, api_key (None or empty: unchanged), clear_api_key, extra_headers,
    api_version, region, aws_access_key_id, use_ambient_credentials, is_simulator.
    """
    reject_unknown_names(set(changes), PROVIDER_CHANGES, "provider")
    organization = provider.organization
    require_actor_permission(actor, organization, "provider.manage")
    provider = Provider.objects.select_for_update().get(pk=provider.pk)
    before = _provider_snapshot(provider)
    after = dict(before)
    if changes.get("name") is not None:
        after["name"] = validate_provider_name(organization=organization, name=changes["name"], exclude_pk=provider.pk)
    if changes.get("base_url") is not None:
        after["base_url"] = clean_base_url(provider.kind, changes["base_url"])
    if changes.get("extra_headers") is not None:
        headers = keep_stored_headers(changes["extra_headers"], stored=provider.extra_headers)
        after["extra_headers"] = validate_extra_headers(headers)
    for field, limit in (("api_version", 40), ("region", 40), ("aws_access_key_id", 128)):
        if changes.get(field) is not None:
            after[field] = clean_text(changes[field], field=field, limit=limit)
    for field in ("use_ambient_credentials", "is_simulator"):
        if changes.get(field) is not None:
            after[field] = bool(changes[field])
    new_key = validate_api_key(changes["api_key"]) if changes.get("api_key") else ""
    clear_key = bool(changes.get("clear_api_key")) and not new_key
    has_key = bool(new_key) or (provider.has_api_key and not clear_key)
    validate_provider_config(
        kind=provider.kind,
        base_url=after["base_url"],
        has_api_key=has_key,
        api_version=after["api_version"],
        region=after["region"],
        aws_access_key_id=after["aws_access_key_id"],
        use_ambient_credentials=after["use_ambient_credentials"],
    )
    diff = {field: {"before": before[field], "after": after[field]} for field in after if after[field] != before[field]}
    key_change: dict[str, Any] | None = None
    if new_key:
        key_change = {"before": _stored_key_mask(provider), "after": masked_secret(new_key)}
        provider.api_key_encrypted = encrypt_secret(new_key)
        provider.api_key_hint = secret_hint(new_key)
    elif clear_key and provider.has_api_key:
        key_change = {"before": _stored_key_mask(provider), "after": None}
        provider.api_key_encrypted = ""
        provider.api_key_hint = ""
    if not diff and key_change is None:
        return provider
    for field, change in diff.items():
        setattr(provider, field, change["after"])
    try:
        with transaction.atomic():
            provider.save()
    except IntegrityError:
        raise ValidationError(
            {"name": f"{organization.slug} already has a provider named {provider.name!r}."}
        ) from None
    if diff:
        if "extra_headers" in diff:  # credential values only as masked hints
            diff["extra_headers"] = {
                moment: audited_headers(diff["extra_headers"][moment]) for moment in ("before", "after")
            }
        audit.record(
            action="provider.updated", actor=actor, organization=organization, target=provider, data={"changes": diff}
        )
    if key_change is not None:
        audit.record(
            action="provider.key_rotated", actor=actor, organization=organization, target=provider, data=key_change
        )
    return provider


@transaction.atomic
def provider_delete(*, actor: Actor, provider: Provider) -> None:
    """Remove a provider that no model uses any more; its stored key goes with it."""
    organization = provider.organization
    require_actor_permission(actor, organization, "provider.manage")
    provider = Provider.objects.select_for_update().get(pk=provider.pk)
    used_by = list(provider.models.order_by("display_name").values_list("display_name", flat=True)[:5])
    if used_by:
        raise ValidationError(
            {"provider": f"Models still use {provider.name!r} ({', '.join(used_by)}): delete or move them first."}
        )
    snapshot = _provider_snapshot(provider)
    snapshot["extra_headers"] = audited_headers(snapshot["extra_headers"])
    snapshot["api_key_hint"] = _stored_key_mask(provider)
    target_pk = provider.pk
    try:
        provider.delete()
    except ProtectedError:
        raise ValidationError({"provider": f"Models still use {provider.name!r}: delete or move them first."}) from None
    provider.pk = target_pk  # so that the audit row names what was deleted
    audit.record(
        action="provider.deleted", actor=actor, organization=organization, target=provider, data={"before": snapshot}
    )


# --- model validation ----------------------------------------------------------------------------------------


def _audit_value(field: str, value: Any) -> Any:
    if field == "fallback":
        return _model_ref(value)
    if isinstance(value, Decimal):
        return str(value)
    return value


def _lock_defaults(organization: Organization) -> LanguageModel | None:
    """Serialize default changes in an organization (lock its row); return the current default."""
    Organization.objects.select_for_update().filter(pk=organization.pk).first()
    return LanguageModel.objects.filter(organization=organization, is_default=True).first()


def _model_ref(model: LanguageModel | None) -> dict[str, Any] | None:
    if model is None:
        return None
    return {"id": model.pk, "identifier": model.identifier, "display_name": model.display_name}


@transaction.atomic
def model_create(
    *,
    actor: Actor,
    organization: Organization,
    provider: Provider,
    identifier: str,
    display_name: str,
    context_limit: int,
    is_default: bool = False,
    **fields: Any,
) -> LanguageModel:
    """Offer a provider's model to an organization; the first enabled model (or `is_default`) becomes the default.

    Fields among: is_enabled, compaction_threshold_percent, max_output_tokens, options, the four prices,
    restricted_access, fallback.
    """
    reject_unknown_names(set(fields), MODEL_FIELDS, "model")
    require_actor_permission(actor, organization, "model.manage")
    if not isinstance(provider, Provider) or provider.organization_id != organization.pk:
        raise ValidationError({"provider": f"No such provider in {organization.slug}: pick one of its providers."})
    clean_identifier = validate_model_identifier(provider=provider, identifier=identifier)
    clean_display = clean_display_name(display_name, clean_identifier)
    limit = validate_context_limit(context_limit)
    clean = clean_model_fields(fields, organization=organization, model=None, context_limit=limit)
    enabled = clean.get("is_enabled", True)
    if is_default and not enabled:
        raise ValidationError({"is_default": "A disabled model cannot be the default: enable it or do not star it."})
    previous = _lock_defaults(organization)
    make_default = bool(is_default) or (previous is None and enabled)
    if make_default and previous is not None:
        LanguageModel.objects.filter(pk=previous.pk).update(is_default=False)
    model = LanguageModel(
        organization=organization,
        provider=provider,
        identifier=clean_identifier,
        display_name=clean_display,
        context_limit=limit,
        is_default=make_default,
        **clean,
    )
    try:
        with transaction.atomic():
            model.save(force_insert=True)
    except IntegrityError:
        raise ValidationError({"identifier": duplicate_identifier(provider, clean_identifier)}) from None
    data: dict[str, Any] = {
        "identifier": model.identifier,
        "display_name": model.display_name,
        "provider": provider.name,
        "provider_id": provider.pk,
        "context_limit": model.context_limit,
        "is_default": model.is_default,
    }
    data.update({field: _audit_value(field, value) for field, value in clean.items()})
    if make_default and previous is not None:
        data["previous_default"] = _model_ref(previous)
    audit.record(action="model.created", actor=actor, organization=organization, target=model, data=data)
    return model


@transaction.atomic
def model_update(*, actor: Actor, model: LanguageModel, **fields: Any) -> LanguageModel:
    """Change a model's settings (the default is changed with model_set_default); audits each change."""
    reject_unknown_names(set(fields), MODEL_UPDATE_FIELDS, "model")
    organization = model.organization
    require_actor_permission(actor, organization, "model.manage")
    model = (
        LanguageModel.objects.select_for_update(of=("self",)).select_related("provider", "fallback").get(pk=model.pk)
    )
    after: dict[str, Any] = {}
    if fields.get("identifier") is not None:
        after["identifier"] = validate_model_identifier(
            provider=model.provider, identifier=fields["identifier"], exclude_pk=model.pk
        )
    if fields.get("display_name") is not None:
        after["display_name"] = clean_display_name(fields["display_name"], after.get("identifier", model.identifier))
    if fields.get("context_limit") is not None:
        after["context_limit"] = validate_context_limit(fields["context_limit"])
    limit = after.get("context_limit", model.context_limit)
    optional = {name: value for name, value in fields.items() if name in MODEL_FIELDS}
    after.update(clean_model_fields(optional, organization=organization, model=model, context_limit=limit))
    if "max_output_tokens" not in after and model.max_output_tokens and model.max_output_tokens >= limit:
        raise ValidationError(
            {"context_limit": f"The context limit must stay above max_output_tokens ({model.max_output_tokens})."}
        )
    if after.get("is_enabled") is False and model.is_default:
        raise ValidationError(
            {"is_enabled": "This is the organization's default model: make another model the default first."}
        )
    changes: dict[str, dict[str, Any]] = {}
    for field, value in after.items():
        current = getattr(model, field)
        if field == "fallback":
            if (current.pk if current else None) == (value.pk if value else None):
                continue
        elif current == value:
            continue
        changes[field] = {"before": _audit_value(field, current), "after": _audit_value(field, value)}
        setattr(model, field, value)
    if not changes:
        return model
    try:
        with transaction.atomic():
            model.save(update_fields=list(changes))
    except IntegrityError:
        raise ValidationError({"identifier": duplicate_identifier(model.provider, model.identifier)}) from None
    audit.record(
        action="model.updated", actor=actor, organization=organization, target=model, data={"changes": changes}
    )
    return model


@transaction.atomic
def model_delete(*, actor: Actor, model: LanguageModel) -> None:
    """Remove a model no session refers to; refused otherwise (disable it instead, the history stays)."""
    organization = model.organization
    require_actor_permission(actor, organization, "model.manage")
    model = LanguageModel.objects.select_for_update().get(pk=model.pk)
    refusal = f"Sessions use {model.display_name!r}: disable it instead (is_enabled false), so their history stays."
    sessions = getattr(model, "sessions", None)
    if sessions is not None and sessions.exists():
        raise ValidationError({"model": refusal})
    if model.is_default and LanguageModel.objects.filter(organization=organization).exclude(pk=model.pk).exists():
        raise ValidationError(
            {"model": "This is the organization's default model: make another model the default first."}
        )
    snapshot = {
        "identifier": model.identifier,
        "display_name": model.display_name,
        "provider_id": model.provider_id,
        "context_limit": model.context_limit,
        "is_default": model.is_default,
        "is_enabled": model.is_enabled,
    }
    from guardian.models import GroupObjectPermission, UserObjectPermission

    target_pk = model.pk
    for table in (UserObjectPermission, GroupObjectPermission):
        table.objects.filter(
            content_type__app_label="providers", content_type__model="languagemodel", object_pk=str(target_pk)
        ).delete()
    try:
        with transaction.atomic():
            model.delete()
    except ProtectedError:
        raise ValidationError({"model": refusal}) from None
    model.pk = target_pk
    audit.record(
        action="model.deleted", actor=actor, organization=organization, target=model, data={"before": snapshot}
    )


@transaction.atomic
def model_set_default(*, actor: Actor, model: LanguageModel) -> LanguageModel:
    """Make a model its organization's default (one per organization); the previous default is unset."""
    organization = model.organization
    require_actor_permission(actor, organization, "model.manage")
    previous = _lock_defaults(organization)
    if previous is not None and previous.pk == model.pk:
        model.is_default = True
        return model
    if not LanguageModel.objects.filter(pk=model.pk, is_enabled=True).exists():
        raise ValidationError({"is_default": f"{model.display_name!r} is disabled: enable it before starring it."})
    if previous is not None:
        LanguageModel.objects.filter(pk=previous.pk).update(is_default=False)
    LanguageModel.objects.filter(pk=model.pk).update(is_default=True)
    model.is_default = True
    audit.record(
        action="model.default_changed",
        actor=actor,
        organization=organization,
        target=model,
        data={"before": _model_ref(previous), "after": _model_ref(model)},
    )
    return model


def _grantee(
    *, model: LanguageModel, user: AbstractBaseUser | None, group: Group | None, members_only: bool = True
) -> tuple[Any, dict[str, str]]:
    """The user or group an access change is about, checked; and how the audit row names it.

    Grants go to members only; a revoke also reaches a grant its holder kept after leaving the organization.
    """
    if (user is None) == (group is None):
        raise ValidationError({"__all__": "Name exactly one user or one group."})
    if user is not None:
        if not isinstance(user, get_user_model()) or (
            members_only
            and not Membership.objects.filter(user_id=user.pk, organization_id=model.organization_id).exists()
        ):
            raise ValidationError(
                {"user": f"That user is not a member of {model.organization.slug}: invite them first."}
            )
        return user, {"user": user.get_username(), "user_id": str(user.pk)}
    if not isinstance(group, Group) or (
        members_only and not grantable_groups(organization=model.organization).filter(pk=group.pk).exists()
    ):
        slug = model.organization.slug
        raise ValidationError({"group": f"That group has no members in {slug}: pick one of its groups."})
    return group, {"group": group.name, "group_id": str(group.pk)}


@transaction.atomic
def model_grant_access(
    *, actor: Actor, model: LanguageModel, user: AbstractBaseUser | None = None, group: Group | None = None
) -> None:
    """Let a user or group use a model whose access is restricted (guardian `use_languagemodel`)."""
    from guardian.shortcuts import assign_perm

    organization = model.organization
    require_actor_permission(actor, organization, "model.manage")
    grantee, who = _grantee(model=model, user=user, group=group)
    if _holds_directly(user, model) if user is not None else _group_holds(group, model):
        return
    assign_perm(USE_PERMISSION, grantee, model)
    audit.record(
        action="model.access_granted",
        actor=actor,
        organization=organization,
        target=model,
        data={**who, "restricted_access": model.restricted_access},
    )


@transaction.atomic
def model_revoke_access(
    *, actor: Actor, model: LanguageModel, user: AbstractBaseUser | None = None, group: Group | None = None
) -> None:
    """Take back a user's or group's grant on a model (grants through other groups stay)."""
    from guardian.shortcuts import remove_perm

    organization = model.organization
    require_actor_permission(actor, organization, "model.manage")
    grantee, who = _grantee(model=model, user=user, group=group, members_only=False)
    if user is not None and not _holds_directly(user, model):
        return
    if group is not None and not _group_holds(group, model):
        return
    remove_perm(USE_PERMISSION, grantee, model)
    audit.record(
        action="model.access_revoked",
        actor=actor,
        organization=organization,
        target=model,
        data={**who, "restricted_access": model.restricted_access},
    )


def _holds_directly(user: AbstractBaseUser | None, model: LanguageModel) -> bool:
    from guardian.models import UserObjectPermission

    return UserObjectPermission.objects.filter(
        user_id=getattr(user, "pk", None),
        permission__codename="use_languagemodel",
        permission__content_type__app_label="providers",
        object_pk=str(model.pk),
    ).exists()


def _group_holds(group: Group, model: LanguageModel) -> bool:
    from guardian.models import GroupObjectPermission

    return GroupObjectPermission.objects.filter(
        group_id=group.pk,
        permission__codename="use_languagemodel",
        permission__content_type__app_label="providers",
        object_pk=str(model.pk),
    ).exists()


@transaction.atomic
def secrets_rotate(*, actor: Actor) -> dict[str, int]:
    """Re-encrypt every stored secret (provider keys, audit destination secrets) under the first key; each audited.

    Returns counts: {"provider_keys": n, "destination_secrets": m, "organizations": k}. Nothing is changed when
    any secret cannot be decrypted (ValidationError naming it).
    """
    from cryptography.fernet import InvalidToken

    from audit.models import AuditDestination
    from portal.crypto import rotate_secret

    reason = "re-encrypted under the first key of AIRLOCK_ENCRYPTION_KEYS"
    organizations: set[int] = set()

    def rotated(token: str, what: str) -> str:
        try:
            return rotate_secret(token)
        except InvalidToken:
            raise ValidationError(
                {
                    "secret": f"{what}: its secret cannot be decrypted with any key in AIRLOCK_ENCRYPTION_KEYS "
                    "(was a key removed?). Put the old key back at the end of the list and rotate again, "
                    "or enter that secret again. Nothing was changed."
                }
            ) from None

    providers = list(
        Provider.objects.select_for_update().select_related("organization").exclude(api_key_encrypted="").order_by("pk")
    )
    destinations = list(
        AuditDestination.objects.select_for_update()
        .select_related("organization")
        .exclude(secret_encrypted="")
        .order_by("pk")
    )
    for provider in providers:
        provider.api_key_encrypted = rotated(
            provider.api_key_encrypted, f"Provider {provider.organization.slug}/{provider.name}"
        )
        provider.save(update_fields=["api_key_encrypted"])
        mask = _stored_key_mask(provider)
        audit.record(
            action="provider.key_rotated",
            actor=actor,
            organization=provider.organization,
            target=provider,
            data={"before": mask, "after": mask, "reason": reason},
        )
        organizations.add(provider.organization_id)
    for destination in destinations:
        destination.secret_encrypted = rotated(
            destination.secret_encrypted, f"Audit destination {destination.organization.slug}/{destination.name}"
        )
        destination.save(update_fields=["secret_encrypted"])
        mask = "****" + destination.secret_hint if destination.secret_hint else "****"
        audit.record(
            action="destination.key_rotated",
            actor=actor,
            organization=destination.organization,
            target=destination,
            data={"before": mask, "after": mask, "reason": reason},
        )
        organizations.add(destination.organization_id)
    return {
        "provider_keys": len(providers),
        "destination_secrets": len(destinations),
        "organizations": len(organizations),
    }
