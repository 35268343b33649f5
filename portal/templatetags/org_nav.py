"""The organization's navigation in the header: Chat, Providers, Models, Templates, Audit, as the roles allow."""

from __future__ import annotations

from typing import Any

from django import template

from organizations.models import Organization
from organizations.permissions import has_permission

register = template.Library()


@register.inclusion_tag("portal/_org_nav.html", takes_context=True)
def org_nav(context: dict[str, Any], organization: Organization, current: str = "") -> dict[str, Any]:
    """Links to the organization's pages that the signed-in user may open; `current` marks the open one."""
    user = context["request"].user
    return {
        "organization": organization,
        "current": current,
        "can_view_settings": has_permission(user, organization, "provider.view"),
        "can_view_audit": has_permission(user, organization, "audit.view"),
        "can_manage_templates": has_permission(user, organization, "template.manage"),
    }
