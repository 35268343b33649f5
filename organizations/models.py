"""Organizations (tenants), memberships and the roles a membership holds."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class Role(models.TextChoices):
    """Roles a membership can hold; owners hold every permission."""

    OWNER = "owner", "Owner"
    AGENTS_USER = "agents-user", "Coder Agents User"
    AUDITOR = "auditor", "Auditor"
    TEMPLATE_ADMIN = "template-admin", "Template admin"
    MEMBER = "member", "Member"


class Organization(models.Model):
    """A tenant: every tenant-owned row points at one."""

    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.slug


class MembershipQuerySet(models.QuerySet):
    """Memberships with their roles loaded in the same round trip."""

    def with_roles(self) -> MembershipQuerySet:
        """Prefetch the role grants so that `.roles` costs no extra query per row."""
        return self.prefetch_related("role_grants")


class Membership(models.Model):
    """A user's place in an organization; roles live in MembershipRole rows."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="memberships")
    created_at = models.DateTimeField(auto_now_add=True)

    objects = MembershipQuerySet.as_manager()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "organization"], name="membership_unique_user_org")]
        ordering = ["organization_id", "user_id"]

    def __str__(self) -> str:
        return f"{self.user} in {self.organization}"

    @property
    def roles(self) -> list[str]:
        """The roles this membership holds, sorted."""
        return sorted(grant.role for grant in self.role_grants.all())


class MembershipRole(models.Model):
    """One role held by one membership (a row per role keeps role checks a plain indexed join)."""

    membership = models.ForeignKey(Membership, on_delete=models.CASCADE, related_name="role_grants")
    role = models.CharField(max_length=32, choices=Role.choices)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["membership", "role"], name="membership_role_unique")]

    def __str__(self) -> str:
        return f"{self.membership}: {self.role}"
