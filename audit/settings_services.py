"""Writes of an organization's audit content policy (retention and legal hold have their own service)."""

from __future__ import annotations

from functools import partial

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import transaction

from audit.models import AuditSettings, ContentPolicy
from audit.policy import invalidate_policy, validate_redaction_patterns
from audit.services import record
from organizations.models import Organization
from organizations.permissions import require_permission


def _policy_view(settings_row: AuditSettings) -> dict[str, object]:
    return {"content_policy": settings_row.content_policy, "redaction_patterns": list(settings_row.redaction_patterns)}


@transaction.atomic
def audit_settings_update(
    *,
    actor: AbstractBaseUser,
    organization: Organization,
    content_policy: str | None = None,
    redaction_patterns: list[str] | None = None,
) -> AuditSettings:
    """Change what the organization's audit events keep (content policy, redaction patterns); owners only."""
    require_permission(actor, organization, "org.manage")
    errors: dict[str, str] = {}
    if content_policy is not None and content_policy not in ContentPolicy.values:
        errors["content_policy"] = f"Choose one of {', '.join(ContentPolicy.values)}; got {content_policy!r}."
    if redaction_patterns is not None:
        try:
            redaction_patterns = validate_redaction_patterns(redaction_patterns)
        except ValueError as exc:
            errors["redaction_patterns"] = str(exc)
    if errors:
        raise ValidationError(errors)
    settings_row, _ = AuditSettings.objects.select_for_update().get_or_create(organization=organization)
    before = _policy_view(settings_row)
    update_fields = ["updated_at"]
    if content_policy is not None:
        settings_row.content_policy = content_policy
        update_fields.append("content_policy")
    if redaction_patterns is not None:
        settings_row.redaction_patterns = redaction_patterns
        update_fields.append("redaction_patterns")
    after = _policy_view(settings_row)
    if after == before:
        return settings_row
    settings_row.save(update_fields=update_fields)
    invalidate_policy(organization.pk)
    record(
        action="audit.settings_changed",
        actor=actor,
        organization=organization,
        target=organization,
        data={"before": before, "after": after},
    )
    transaction.on_commit(partial(invalidate_policy, organization.pk))
    return settings_row
