"""Workspace template writes: create, change and delete, each audited with its values in the same transaction.

Owners and template admins manage templates; the agent acting for a user never does. The agent picks a
template by its name and description, so both are required and checked for what a model can use.
"""

from __future__ import annotations

import re
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

import audit
from audit.services import Actor
from organizations.models import Organization
from organizations.permissions import require_actor_permission
from workspaces.models import WorkspaceBackend, WorkspaceTemplate

NAME_MAX_CHARS = WorkspaceTemplate._meta.get_field("name").max_length
NAME_PATTERN = re.compile(r"[a-z0-9](?:[a-z0-9._-]{0,61}[a-z0-9])?")
DESCRIPTION_MIN_CHARS = 10
DESCRIPTION_MAX_CHARS = 2000
# field -> (smallest, largest, unit) of the limits a template may set; None leaves the deployment's default.
LIMITS: dict[str, tuple[int, int, str]] = {
    "command_timeout_seconds": (1, 24 * 60 * 60, "seconds"),
    "output_cap_bytes": (1024, 64 * 1024 * 1024, "bytes"),
    "memory_limit_mb": (64, 1024 * 1024, "MB"),
}
# Every field a template's owner sets, in the order forms and the API show them.
TEMPLATE_FIELD_ORDER = ("name", "description", "backend", *LIMITS, "is_enabled")
TEMPLATE_FIELDS = frozenset(TEMPLATE_FIELD_ORDER)


def _clean_name(name: Any) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name.strip()):
        raise ValidationError(
            {
                "name": "Use 1 to 63 lower-case letters, digits, '.', '_' or '-', starting and ending with a letter "
                "or digit (e.g. python-3-12): the agent names the template it starts by it."
            }
        )
    return name.strip()


def _clean_description(description: Any) -> str:
    text = description.strip() if isinstance(description, str) else ""
    if "\x00" in text:
        raise ValidationError({"description": "Remove the NUL character from the description."})
    if len(text) < DESCRIPTION_MIN_CHARS:
        raise ValidationError(
            {
                "description": f"Describe what the workspace is for in at least {DESCRIPTION_MIN_CHARS} characters "
                "(its tools, languages, what it can reach): the agent chooses a template by its description."
            }
        )
    if len(text) > DESCRIPTION_MAX_CHARS:
        raise ValidationError({"description": f"Keep the description under {DESCRIPTION_MAX_CHARS} characters."})
    return text


def _clean_backend(backend: Any) -> str:
    if backend not in WorkspaceBackend.values:
        raise ValidationError(
            {"backend": f"Unknown backend {backend!r}: use one of {', '.join(WorkspaceBackend.values)}."}
        )
    refusal = backend_refusal(str(backend))
    if refusal:
        raise ValidationError({"backend": refusal})
    return str(backend)


def backend_refusal(backend: str) -> str | None:
    """Why this deployment does not let templates use `backend` (`WORKSPACE_BACKENDS`); None when it does."""
    if backend in settings.WORKSPACE_BACKENDS:
        return None
    allowed = ", ".join(settings.WORKSPACE_BACKENDS) or "none"
    return (
        f"This deployment does not let templates use the {backend} backend (allowed: {allowed}); its operator "
        "decides that in AIRLOCK_WORKSPACE_BACKENDS."
    )


def _clean_limit(field: str, value: Any) -> int | None:
    if value is None:
        return None
    smallest, largest, unit = LIMITS[field]
    if isinstance(value, bool) or not isinstance(value, int) or not smallest <= value <= largest:
        raise ValidationError(
            {field: f"Use a whole number from {smallest:,} to {largest:,} {unit}, or null for the default."}
        )
    return value


def clean_template_field(field: str, value: Any) -> Any:
    """One template field's value as stored, or a ValidationError naming the field and what to send."""
    if field == "name":
        return _clean_name(value)
    if field == "description":
        return _clean_description(value)
    if field == "backend":
        return _clean_backend(value)
    if field == "is_enabled":
        if not isinstance(value, bool):
            raise ValidationError({"is_enabled": "Use true or false."})
        return value
    return _clean_limit(field, value)


def _snapshot(template: WorkspaceTemplate) -> dict[str, Any]:
    return {field: getattr(template, field) for field in sorted(TEMPLATE_FIELDS)}


def _duplicate(organization: Organization, name: str) -> ValidationError:
    return ValidationError({"name": f"{organization.slug} already has a template named {name!r}: pick another name."})


def template_name_check(*, organization: Organization, name: str, exclude_pk: int | None = None) -> None:
    """Refuse a name another template of the organization already has (forms check it before saving)."""
    if WorkspaceTemplate.objects.filter(organization_id=organization.pk, name=name).exclude(pk=exclude_pk).exists():
        raise _duplicate(organization, name)


def _save(template: WorkspaceTemplate, **kwargs: Any) -> None:
    try:
        with transaction.atomic():
            template.save(**kwargs)
    except IntegrityError:
        raise _duplicate(template.organization, template.name) from None


@transaction.atomic
def template_create(
    *,
    actor: Actor,
    organization: Organization,
    name: str,
    description: str,
    backend: str = WorkspaceBackend.BUBBLEWRAP,
    **fields: Any,
) -> WorkspaceTemplate:
    """Add a template the organization's agents may start (owners, template admins).

    Fields among: is_enabled and the limits command_timeout_seconds, output_cap_bytes, memory_limit_mb.
    """
    unknown = set(fields) - (TEMPLATE_FIELDS - {"name", "description", "backend"})
    if unknown:
        raise ValidationError({field: "Unknown template field." for field in sorted(unknown)})
    require_actor_permission(actor, organization, "template.manage")
    values = {field: clean_template_field(field, value) for field, value in fields.items()}
    template = WorkspaceTemplate(
        organization=organization,
        name=_clean_name(name),
        description=_clean_description(description),
        backend=_clean_backend(backend),
        **values,
    )
    _save(template, force_insert=True)
    audit.record(
        action="template.created", actor=actor, organization=organization, target=template, data=_snapshot(template)
    )
    return template


@transaction.atomic
def template_update(*, actor: Actor, template: WorkspaceTemplate, **changes: Any) -> WorkspaceTemplate:
    """Change a template; audits each changed field's before and after. Running workspaces keep their limits."""
    unknown = set(changes) - TEMPLATE_FIELDS
    if unknown:
        raise ValidationError({field: "Unknown template field." for field in sorted(unknown)})
    organization = template.organization
    require_actor_permission(actor, organization, "template.manage")
    template = WorkspaceTemplate.objects.select_for_update().select_related("organization").get(pk=template.pk)
    diff: dict[str, dict[str, Any]] = {}
    for field, value in changes.items():
        clean = clean_template_field(field, value)
        if getattr(template, field) != clean:
            diff[field] = {"before": getattr(template, field), "after": clean}
            setattr(template, field, clean)
    if not diff:
        return template
    _save(template, update_fields=[*diff, "updated_at"])
    audit.record(
        action="template.updated", actor=actor, organization=organization, target=template, data={"changes": diff}
    )
    return template


@transaction.atomic
def template_delete(*, actor: Actor, template: WorkspaceTemplate) -> None:
    """Remove a template; workspaces started from it keep running with the limits they were given."""
    organization = template.organization
    require_actor_permission(actor, organization, "template.manage")
    snapshot = _snapshot(template)
    audit.record(
        action="template.deleted", actor=actor, organization=organization, target=template, data={"before": snapshot}
    )
    template.delete()
