"""Every write to organizations, memberships and roles; each one audits in its own transaction.

The actor is a user (checked against the `members.manage` permission) or an operator's
`SystemActor` (the CLI: shell access to the deployment already implies full control, so no
check). Role edits go through `plan_role_change`, the same pure function the CLI uses to show
a diff, so what is shown is exactly what is applied.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from dataclasses import replace as dataclass_replace

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.validators import validate_email, validate_slug
from django.db import IntegrityError, transaction

import audit
from audit.models import AuditChainHead
from audit.services import AgentActor, SystemActor
from organizations.models import Membership, MembershipRole, Organization, Role
from organizations.permissions import require_permission
from organizations.selectors import memberships_with_roles

Actor = AbstractBaseUser | SystemActor

VALID_ROLES: tuple[str, ...] = tuple(Role.values)


# --- the plan: pure, shared by services and the CLI ------------------------------------------------


@dataclass(frozen=True)
class RoleChange:
    """What a role edit does to one membership: the roles before and after, and the difference."""

    before: tuple[str, ...]
    after: tuple[str, ...]
    added: tuple[str, ...]
    revoked: tuple[str, ...]
    username: str = field(default="", compare=False)

    @property
    def changed(self) -> bool:
        """Whether the edit adds or revokes anything."""
        return bool(self.added or self.revoked)


def _as_tuple(roles: Iterable[str]) -> tuple[str, ...]:
    """Roles as a tuple of plain strings (a lone string is one role, not a sequence of letters)."""
    if isinstance(roles, str):
        return (str(roles),)
    return tuple(str(role) for role in roles)


def validate_roles(roles: Iterable[str]) -> frozenset[str]:
    """The roles as a set; ValidationError naming the unknown role and listing the valid ones."""
    wanted = _as_tuple(roles)
    unknown = [role for role in wanted if role not in VALID_ROLES]
    if unknown:
        names = ", ".join(repr(role) for role in dict.fromkeys(unknown))
        noun = "role" if len(unknown) == 1 else "roles"
        raise ValidationError({"roles": f"unknown {noun} {names}; valid roles: {', '.join(VALID_ROLES)}"})
    return frozenset(wanted)


def plan_role_change(
    current: Iterable[str],
    *,
    add: Iterable[str] = (),
    remove: Iterable[str] = (),
    replace: Iterable[str] | None = None,
) -> RoleChange:
    """Compute the roles after adding/removing (or replacing with) the given ones; touches nothing.

    `replace` is exclusive with `add`/`remove`. Unknown roles raise ValidationError.
    """
    before = frozenset(_as_tuple(current))
    add, remove = _as_tuple(add), _as_tuple(remove)
    if replace is not None:
        if add or remove:
            raise ValueError("plan_role_change: give either replace or add/remove, not both")
        after = validate_roles(replace)
    else:
        to_add, to_remove = validate_roles(add), validate_roles(remove)
        both = to_add & to_remove
        if both:
            raise ValidationError({"roles": f"role {sorted(both)[0]!r} is both added and removed; pick one"})
        after = (before | to_add) - to_remove
    return RoleChange(
        before=tuple(sorted(before)),
        after=tuple(sorted(after)),
        added=tuple(sorted(after - before)),
        revoked=tuple(sorted(before - after)),
    )


# --- helpers ---------------------------------------------------------------------------------------


def _require_manage(actor: Actor, organization: Organization) -> None:
    """Operators (SystemActor) pass; users need `members.manage`; agents never manage members."""
    if isinstance(actor, SystemActor):
        return
    if isinstance(actor, AgentActor) or actor is None:
        raise PermissionDenied("Only a person or the operator may manage members and roles.")
    require_permission(actor, organization, "members.manage")


def _lock_organization(organization: Organization) -> None:
    """Serialize membership and role changes of one organization (keeps the last-owner guard race-free)."""
    list(Organization.objects.select_for_update().filter(pk=organization.pk).values_list("pk", flat=True))


def _current_roles(membership: Membership) -> set[str]:
    """The membership's roles as stored now (ignores any prefetched, possibly stale, copy)."""
    rows = list(Membership.objects.filter(pk=membership.pk).values_list("role_grants__role", flat=True))
    if not rows:
        raise ValidationError(f"{membership.user.get_username()} is no longer a member of {membership.organization}")
    return {role for role in rows if role is not None}


def _other_owner_exists(organization: Organization, *, excluding: Iterable[int]) -> bool:
    """Whether an owner remains once the given memberships lose the owner role."""
    return (
        MembershipRole.objects.filter(membership__organization_id=organization.pk, role=Role.OWNER)
        .exclude(membership_id__in=list(excluding))
        .exists()
    )


def _guard_last_owner(membership: Membership, change: RoleChange) -> None:
    """Refuse to take the owner role from the organization's last owner."""
    if Role.OWNER in change.revoked and not _other_owner_exists(membership.organization, excluding=[membership.pk]):
        username = membership.user.get_username()
        raise ValidationError(
            {
                "roles": f"cannot remove owner from {username}: {username} is the last owner of "
                f"{membership.organization.slug}; make another member an owner first"
            }
        )


def _apply(membership: Membership, change: RoleChange) -> None:
    """Write the role rows of one planned change."""
    if change.added:
        MembershipRole.objects.bulk_create([MembershipRole(membership=membership, role=role) for role in change.added])
    if change.revoked:
        MembershipRole.objects.filter(membership=membership, role__in=change.revoked).delete()


def _role_event_data(username: str, change: RoleChange, key: str, roles: tuple[str, ...]) -> dict[str, object]:
    return {"user": username, key: list(roles), "before": list(change.before), "after": list(change.after)}


def _audit_change(*, actor: Actor, membership: Membership, change: RoleChange, operation: str = "") -> None:
    """Write `role.granted` for added roles and `role.revoked` for revoked ones (none when nothing changed)."""
    username = membership.user.get_username()
    extra = {"operation": operation} if operation else {}
    if change.added and change.revoked:
        # A replacement: record it as two steps so each event's before/after is exact.
        middle = tuple(sorted(set(change.before) | set(change.added)))
        grant = RoleChange(before=change.before, after=middle, added=change.added, revoked=())
        revoke = RoleChange(before=middle, after=change.after, added=(), revoked=change.revoked)
    else:
        grant = revoke = change
    if change.added:
        audit.record(
            action="role.granted",
            actor=actor,
            organization=membership.organization,
            target=membership,
            data=_role_event_data(username, grant, "added", change.added) | extra,
        )
    if change.revoked:
        audit.record(
            action="role.revoked",
            actor=actor,
            organization=membership.organization,
            target=membership,
            data=_role_event_data(username, revoke, "revoked", change.revoked) | extra,
        )


# --- users -----------------------------------------------------------------------------------------


def _username_problem(user_model: type[AbstractBaseUser], username: str) -> str:
    """Why a username cannot be used, or "" when it can."""
    if not username:
        return "username must not be empty"
    if len(username) > 150:
        return f"username {username!r} is longer than 150 characters"
    try:
        user_model.username_validator(username)
    except ValidationError:
        return f"username {username!r} is not valid: use letters, digits and @ . + - _ only"
    existing = user_model._default_manager.filter(username__iexact=username).first()
    if existing is not None:
        return f"a user named {existing.get_username()!r} already exists"
    return ""


@transaction.atomic
def user_create(*, username: str, email: str, password: str) -> AbstractBaseUser:
    """Create a login after Django's username, email and password validators accept it.

    Not audited: audit chains are per organization and a new user belongs to none yet; the
    `member.added` event records them when they join one.
    """
    user_model = get_user_model()
    username = user_model.normalize_username(username.strip())
    errors: dict[str, list[str]] = {}
    username_error = _username_problem(user_model, username)
    if username_error:
        errors["username"] = [username_error]
    try:
        validate_email(email)
    except ValidationError:
        errors["email"] = [f"email {email!r} is not a valid address"]
    candidate = user_model(username=username, email=email)
    try:
        validate_password(password, user=candidate)
    except ValidationError as exc:
        errors["password"] = [f"password refused: {message}" for message in exc.messages]
    if errors:
        raise ValidationError(errors)
    user = user_model._default_manager.create_user(username=username, email=email, password=password)
    return user


# --- organizations and memberships -----------------------------------------------------------------


@transaction.atomic
def organization_create(*, actor: Actor, slug: str, name: str, owner: AbstractBaseUser) -> Organization:
    """Create an organization, its audit chain and its first owner; only operators and superusers may.

    Audits `org.created`, `member.added` and `role.granted` (the owner role), in that order.
    """
    if not isinstance(actor, SystemActor) and not getattr(actor, "is_superuser", False):
        raise PermissionDenied("Only a site superuser or the operator may create organizations.")
    slug, name = slug.strip(), name.strip()
    errors: dict[str, str] = {}
    try:
        validate_slug(slug)
        if slug != slug.lower():
            raise ValidationError("uppercase")
    except ValidationError:
        errors["slug"] = f"slug {slug!r} is not valid: use lowercase letters, digits, hyphens and underscores"
    else:
        if len(slug) > Organization._meta.get_field("slug").max_length:
            errors["slug"] = f"slug {slug!r} is longer than 64 characters"
        elif Organization.objects.filter(slug__iexact=slug).exists():
            errors["slug"] = f"slug {slug!r} is already taken by another organization"
    if not name:
        errors["name"] = "name must not be empty"
    elif len(name) > Organization._meta.get_field("name").max_length:
        errors["name"] = "name is longer than 200 characters"
    if errors:
        raise ValidationError(errors)
    try:
        with transaction.atomic():
            organization = Organization.objects.create(slug=slug, name=name)
    except IntegrityError as exc:  # a concurrent create won the race for the slug
        raise ValidationError({"slug": f"slug {slug!r} is already taken by another organization"}) from exc
    AuditChainHead.objects.create(organization=organization)
    audit.record(
        action="org.created",
        actor=actor,
        organization=organization,
        target=organization,
        data={"slug": slug, "name": name, "owner": owner.get_username()},
    )
    _membership_create(actor=actor, organization=organization, user=owner, roles=(Role.OWNER,))
    return organization


def _membership_create(
    *, actor: Actor, organization: Organization, user: AbstractBaseUser, roles: Iterable[str]
) -> tuple[Membership, RoleChange]:
    """Insert a membership with roles and audit `member.added` then `role.granted`."""
    change = dataclass_replace(plan_role_change((), add=roles), username=user.get_username())
    membership = Membership.objects.create(organization=organization, user=user)
    audit.record(
        action="member.added",
        actor=actor,
        organization=organization,
        target=membership,
        data={"user": user.get_username(), "roles": list(change.after)},
    )
    _apply(membership, change)
    _audit_change(actor=actor, membership=membership, change=change)
    return membership, change


@transaction.atomic
def membership_add(
    *,
    actor: Actor,
    organization: Organization,
    user: AbstractBaseUser,
    roles: Iterable[str] = (Role.MEMBER,),
) -> Membership:
    """Make a user a member with the given roles (default: member); a current member is refused.

    Audits `member.added` and `role.granted`.
    """
    roles = validate_roles(roles)
    if not roles:
        raise ValidationError({"roles": f"give at least one role; valid roles: {', '.join(VALID_ROLES)}"})
    _require_manage(actor, organization)
    _lock_organization(organization)
    if Membership.objects.filter(organization=organization, user=user).exists():
        raise ValidationError({"user": f"{user.get_username()} is already a member of {organization.slug}"})
    membership, _ = _membership_create(actor=actor, organization=organization, user=user, roles=roles)
    return membership


@transaction.atomic
def membership_grant_roles(*, actor: Actor, membership: Membership, roles: Iterable[str]) -> RoleChange:
    """Add roles to a membership; never removes any. Audits `role.granted` only when something was added."""
    return _change_roles(actor=actor, membership=membership, add=roles)


@transaction.atomic
def membership_revoke_roles(*, actor: Actor, membership: Membership, roles: Iterable[str]) -> RoleChange:
    """Remove roles from a membership (never the last owner's `owner`). Audits `role.revoked` when any went."""
    return _change_roles(actor=actor, membership=membership, remove=roles)


@transaction.atomic
def membership_replace_roles(*, actor: Actor, membership: Membership, roles: Iterable[str]) -> RoleChange:
    """Replace a membership's roles with exactly `roles` (never the last owner's `owner`).

    Audited as ordinary grant/revoke events so that a search for `role.granted` or `role.revoked`
    finds replacements too: `role.granted` for the added roles, then `role.revoked` for the revoked
    ones, each with `"operation": "replace"` and its own exact before/after; nothing when unchanged.
    """
    roles = validate_roles(roles)
    if not roles:
        raise ValidationError({"roles": f"give at least one role; valid roles: {', '.join(VALID_ROLES)}"})
    return _change_roles(actor=actor, membership=membership, replace=roles)


def _change_roles(
    *,
    actor: Actor,
    membership: Membership,
    add: Iterable[str] = (),
    remove: Iterable[str] = (),
    replace: Iterable[str] | None = None,
) -> RoleChange:
    """Plan, guard, write and audit one membership's role change (the caller holds the transaction)."""
    organization = membership.organization
    add, remove = _as_tuple(add), _as_tuple(remove)
    replace = None if replace is None else _as_tuple(replace)
    plan_role_change((), add=add, remove=remove, replace=replace)  # unknown roles fail before anything else
    _require_manage(actor, organization)
    _lock_organization(organization)
    change = dataclass_replace(
        plan_role_change(_current_roles(membership), add=add, remove=remove, replace=replace),
        username=membership.user.get_username(),
    )
    if not change.changed:
        return change
    _guard_last_owner(membership, change)
    _apply(membership, change)
    _audit_change(actor=actor, membership=membership, change=change, operation="replace" if replace is not None else "")
    membership.refresh_from_db()  # drop any prefetched roles so `.roles` shows the new ones
    return change


@transaction.atomic
def membership_remove(*, actor: Actor, membership: Membership) -> None:
    """Remove a member (or let a member leave); the last owner can do neither. Audits `member.removed`."""
    organization = membership.organization
    leaving = not isinstance(actor, SystemActor) and getattr(actor, "pk", None) == membership.user_id
    if not leaving:
        _require_manage(actor, organization)
    _lock_organization(organization)
    roles = _current_roles(membership)
    username = membership.user.get_username()
    if Role.OWNER in roles and not _other_owner_exists(organization, excluding=[membership.pk]):
        raise ValidationError(
            f"{username} is the last owner of {organization.slug} and cannot leave or be removed; "
            "make another member an owner first"
        )
    audit.record(
        action="member.removed",
        actor=actor,
        organization=organization,
        target=membership,
        data={"user": username, "roles": sorted(roles), "left": leaving},
    )
    membership.delete()


# --- bulk (--all-members) --------------------------------------------------------------------------


def _change_all(
    *, actor: Actor, organization: Organization, add: Iterable[str] = (), remove: Iterable[str] = ()
) -> list[RoleChange]:
    """Plan every membership's change from one load, guard, write in bulk and audit each changed one."""
    add, remove = _as_tuple(add), _as_tuple(remove)
    plan_role_change((), add=add, remove=remove)
    _require_manage(actor, organization)
    _lock_organization(organization)
    memberships = list(memberships_with_roles(organization=organization))
    planned: list[tuple[Membership, RoleChange]] = []
    for membership in memberships:
        change = plan_role_change(membership.roles, add=add, remove=remove)
        planned.append((membership, dataclass_replace(change, username=membership.user.get_username())))
    losing_owner = [membership.pk for membership, change in planned if Role.OWNER in change.revoked]
    if losing_owner and not _other_owner_exists(organization, excluding=losing_owner):
        raise ValidationError(
            {
                "roles": f"cannot remove owner from every owner of {organization.slug}: "
                "the organization would be left without an owner"
            }
        )
    grants = [
        MembershipRole(membership=membership, role=role) for membership, change in planned for role in change.added
    ]
    if grants:
        MembershipRole.objects.bulk_create(grants)
    revoked_from = [membership.pk for membership, change in planned if change.revoked]
    if revoked_from:
        MembershipRole.objects.filter(membership_id__in=revoked_from, role__in=remove).delete()
    for membership, change in planned:
        if change.changed:
            _audit_change(actor=actor, membership=membership, change=change, operation="all-members")
    return [change for _, change in planned]


@transaction.atomic
def memberships_grant_roles_bulk(*, actor: Actor, organization: Organization, roles: Iterable[str]) -> list[RoleChange]:
    """Add roles to every member, in one transaction; one `role.granted` per membership that changed.

    Returns one RoleChange per member (sorted by username), unchanged ones included.
    """
    return _change_all(actor=actor, organization=organization, add=roles)


@transaction.atomic
def memberships_revoke_roles_bulk(
    *, actor: Actor, organization: Organization, roles: Iterable[str]
) -> list[RoleChange]:
    """Remove roles from every member, in one transaction; one `role.revoked` per membership that changed.

    Refuses to remove `owner` from every owner. Returns one RoleChange per member (sorted by username).
    """
    return _change_all(actor=actor, organization=organization, remove=roles)
