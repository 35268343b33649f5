"""What each role may do, and the checks services and selectors use."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.core.exceptions import PermissionDenied
from django.db.models import Q

from organizations.models import Membership, MembershipRole, Organization, Role

if TYPE_CHECKING:
    from audit.services import Actor

ALL_ROLES = frozenset(Role.values)

# action -> roles that allow it (owners are added everywhere below).
ACTION_ROLES: dict[str, frozenset[str]] = {
    "org.view": ALL_ROLES,
    "org.manage": frozenset({Role.OWNER}),
    "members.manage": frozenset({Role.OWNER}),
    "session.create": frozenset({Role.AGENTS_USER}),
    "session.view_all": frozenset({Role.AUDITOR}),
    "audit.view": frozenset({Role.AUDITOR}),
    "provider.view": frozenset({Role.AUDITOR}),
    "provider.manage": frozenset(),
    "model.use": frozenset({Role.AGENTS_USER}),
    "model.view": ALL_ROLES,
    "model.manage": frozenset(),
    "template.manage": frozenset({Role.TEMPLATE_ADMIN}),
}


def roles_for(action: str) -> frozenset[str]:
    """Roles that allow an action; unknown actions are a programming error."""
    try:
        return ACTION_ROLES[action] | {Role.OWNER}
    except KeyError as exc:
        raise ValueError(f"Unknown permission action {action!r}") from exc


def role_names(action: str) -> str:
    """The roles that allow an action, as a reader would type them: "agents-user, owner"."""
    return ", ".join(sorted(str(role) for role in roles_for(action)))


def orgs_where_allowed(user: AbstractBaseUser | AnonymousUser, action: str) -> Q:
    """A filter on organization ids where the user may perform the action (one subquery, no loop)."""
    if not user.is_authenticated:
        return Q(pk__in=[])
    if user.is_superuser:
        return Q()
    org_ids = MembershipRole.objects.filter(membership__user_id=user.pk, role__in=roles_for(action)).values(
        "membership__organization_id"
    )
    return Q(pk__in=org_ids)


def has_permission(user: AbstractBaseUser | AnonymousUser, organization: Organization, action: str) -> bool:
    """Whether the user may perform the action in the organization."""
    if not user.is_authenticated:
        return False
    if user.is_superuser:
        return True
    return MembershipRole.objects.filter(
        membership__user_id=user.pk, membership__organization_id=organization.pk, role__in=roles_for(action)
    ).exists()


def require_permission(user: AbstractBaseUser | AnonymousUser, organization: Organization, action: str) -> None:
    """Raise PermissionDenied unless the user may perform the action in the organization."""
    if not has_permission(user, organization, action):
        needed = " or ".join(sorted(str(role.value if isinstance(role, Role) else role) for role in roles_for(action)))
        raise PermissionDenied(f"You need the role {needed} in the organization {organization.slug}.")


def is_member(user: AbstractBaseUser | AnonymousUser, organization: Organization) -> bool:
    """Whether the user belongs to the organization (superusers count as members everywhere)."""
    if not user.is_authenticated:
        return False
    return user.is_superuser or Membership.objects.filter(user_id=user.pk, organization_id=organization.pk).exists()


def require_actor_permission(actor: Actor, organization: Organization, action: str) -> None:
    """`require_permission` for a service's actor: Airlock itself (None, a SystemActor: the CLI, a bootstrap) is
    trusted, the agent acting for a user may never change settings, a user needs a role for the action."""
    from audit.services import AgentActor, SystemActor

    if actor is None or isinstance(actor, SystemActor):
        return
    if isinstance(actor, AgentActor):
        raise PermissionDenied(f"The agent acting for a user may not do this ({action}).")
    require_permission(actor, organization, action)
