"""Tenant-scoped querysets: every read of tenant-owned rows goes through `for_user`."""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db import models

from organizations.models import Organization
from organizations.permissions import orgs_where_allowed


class TenantQuerySet(models.QuerySet):
    """Rows that belong to an organization, restricted by the user's roles in one query."""

    view_action = "org.view"

    def for_user(self, user: AbstractBaseUser | AnonymousUser, action: str | None = None) -> TenantQuerySet:
        """Only the rows in organizations where the user may perform `action` (default: view)."""
        allowed_orgs = Organization.objects.filter(orgs_where_allowed(user, action or self.view_action))
        return self.filter(organization__in=allowed_orgs.values("pk"))

    def in_organization(self, organization: Organization) -> TenantQuerySet:
        """Only the rows of one organization."""
        return self.filter(organization=organization)


def organizations_for_user(user: AbstractBaseUser | AnonymousUser, action: str = "org.view") -> models.QuerySet:
    """Organizations where the user may perform an action."""
    return Organization.objects.filter(orgs_where_allowed(user, action))
