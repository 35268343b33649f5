"""Reads of organizations, users and memberships, each scoped to one organization (or one name)."""

from __future__ import annotations

from collections import defaultdict

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Count, QuerySet

from organizations.models import Membership, MembershipRole, Organization, Role


def organization_get(*, slug: str) -> Organization:
    """The organization with this slug; Organization.DoesNotExist names the slug when there is none."""
    organization = Organization.objects.filter(slug=slug).first()
    if organization is None:
        raise Organization.DoesNotExist(f"no organization with slug {slug!r}")
    return organization


def user_get(*, username: str) -> AbstractBaseUser:
    """The user with this username; User.DoesNotExist names the username when there is none."""
    user_model = get_user_model()
    user = user_model._default_manager.filter(**{user_model.USERNAME_FIELD: username}).first()
    if user is None:
        raise user_model.DoesNotExist(f"no user named {username!r}")
    return user


def membership_get(*, organization: Organization, username: str) -> Membership:
    """A member's membership (roles prefetched); DoesNotExist says whether the user or the membership is missing."""
    membership = (
        Membership.objects.filter(organization=organization, user__username=username)
        .select_related("user", "organization")
        .with_roles()
        .first()
    )
    if membership is None:
        user_get(username=username)  # an unknown user is reported as such
        raise Membership.DoesNotExist(f"{username} is not a member of {organization.slug}")
    return membership


def memberships_with_roles(*, organization: Organization) -> QuerySet[Membership]:
    """Every membership of the organization, by username, with user and roles loaded (a fixed number of queries)."""
    return (
        Membership.objects.filter(organization=organization)
        .select_related("user", "organization")
        .with_roles()
        .order_by("user__username")
    )


def organizations_with_member_counts() -> QuerySet[Organization]:
    """All organizations by slug, each annotated with `member_count` (operator view, not tenant-scoped)."""
    return Organization.objects.annotate(member_count=Count("memberships")).order_by("slug")


def owner_usernames_by_organization() -> dict[int, list[str]]:
    """Organization id -> sorted usernames of its owners, in one query."""
    owners: dict[int, list[str]] = defaultdict(list)
    grants = MembershipRole.objects.filter(role=Role.OWNER).values_list(
        "membership__organization_id", "membership__user__username"
    )
    for organization_id, username in grants.order_by("membership__user__username"):
        owners[organization_id].append(username)
    return dict(owners)
