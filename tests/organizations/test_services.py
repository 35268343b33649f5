"""The organizations services called with a user as actor: permissions, guards, audit and the plan."""

from __future__ import annotations

import threading

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import connection

from audit.services import AgentActor, SystemActor
from organizations.models import Membership, Organization, Role
from organizations.selectors import membership_get, memberships_with_roles, organization_get
from organizations.services import (
    membership_add,
    membership_grant_roles,
    membership_remove,
    membership_replace_roles,
    membership_revoke_roles,
    memberships_grant_roles_bulk,
    memberships_revoke_roles_bulk,
    organization_create,
    plan_role_change,
)
from tests.factories import UserFactory, make_member
from tests.organizations.helpers import assert_chain_intact, events, roles_of

pytestmark = pytest.mark.django_db


def membership(org: Organization, username: str) -> Membership:
    return membership_get(organization=org, username=username)


# --- permissions -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "attempt",
    [
        lambda actor, org: membership_grant_roles(actor=actor, membership=membership(org, "mallory"), roles=["owner"]),
        lambda actor, org: membership_revoke_roles(actor=actor, membership=membership(org, "olivia"), roles=["owner"]),
        lambda actor, org: membership_replace_roles(actor=actor, membership=membership(org, "alice"), roles=["member"]),
        lambda actor, org: membership_remove(actor=actor, membership=membership(org, "alice")),
        lambda actor, org: membership_add(actor=actor, organization=org, user=UserFactory(username="bob")),
        lambda actor, org: memberships_grant_roles_bulk(actor=actor, organization=org, roles=["auditor"]),
        lambda actor, org: memberships_revoke_roles_bulk(actor=actor, organization=org, roles=["member"]),
    ],
    ids=["grant", "revoke", "replace", "remove", "add", "grant-all", "revoke-all"],
)
def test_member_without_owner_role_gets_permission_denied_and_nothing_changes(
    org, owner, agents_user, auditor, plain_member, attempt
):
    with pytest.raises(PermissionDenied):
        attempt(plain_member, org)
    with pytest.raises(PermissionDenied):
        attempt(auditor, org)

    assert roles_of(org, "mallory") == ["member"]
    assert roles_of(org, "alice") == ["agents-user"]
    assert events(org) == []


def test_owner_of_another_org_gets_permission_denied(org, agents_user, outsider):
    with pytest.raises(PermissionDenied):
        membership_grant_roles(actor=outsider, membership=membership(org, "alice"), roles=["owner"])


def test_agent_acting_for_an_owner_may_not_change_roles(org, owner, agents_user):
    with pytest.raises(PermissionDenied):
        membership_grant_roles(
            actor=AgentActor(user=owner, session_id="s1"), membership=membership(org, "alice"), roles=["owner"]
        )


def test_owner_grants_a_role_and_the_event_names_the_owner(org, owner, agents_user):
    change = membership_grant_roles(actor=owner, membership=membership(org, "alice"), roles=["auditor"])

    assert (change.added, change.revoked, change.changed) == (("auditor",), (), True)
    (granted,) = events(org)
    assert (granted.actor_type, granted.actor_display, granted.target_display) == ("user", "olivia", "alice in acme")


def test_grant_refreshes_roles_already_loaded_on_the_membership(org, owner, agents_user):
    alice = next(m for m in memberships_with_roles(organization=org) if m.user.username == "alice")
    assert alice.roles == ["agents-user"]

    membership_grant_roles(actor=owner, membership=alice, roles=[Role.AUDITOR])

    assert alice.roles == ["agents-user", "auditor"]


def test_unknown_role_is_refused_naming_it_and_listing_valid_roles(org, owner, agents_user):
    with pytest.raises(ValidationError) as refused:
        membership_grant_roles(actor=owner, membership=membership(org, "alice"), roles=["auditor", "superhero"])

    assert "unknown role 'superhero'" in refused.value.messages[0]
    assert "valid roles: owner, agents-user, auditor, template-admin, member" in refused.value.messages[0]
    assert roles_of(org, "alice") == ["agents-user"]


# --- last owner --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "attempt",
    [
        lambda actor, m: membership_revoke_roles(actor=actor, membership=m, roles=["owner"]),
        lambda actor, m: membership_replace_roles(actor=actor, membership=m, roles=["member"]),
        lambda actor, m: membership_remove(actor=actor, membership=m),
    ],
    ids=["revoke", "replace", "remove"],
)
def test_last_owner_keeps_ownership_whoever_asks(org, owner, attempt):
    for actor in (owner, SystemActor(name="cli:test")):
        with pytest.raises(ValidationError) as refused:
            attempt(actor, membership(org, "olivia"))
        assert "olivia is the last owner of acme" in " ".join(refused.value.messages)

    assert roles_of(org, "olivia") == ["owner"]
    assert events(org) == []


def test_with_two_owners_one_can_give_up_ownership(org, owner):
    make_member(org, UserFactory(username="oona"), Role.OWNER, Role.MEMBER)

    change = membership_revoke_roles(actor=owner, membership=membership(org, "oona"), roles=["owner"])

    assert change.revoked == ("owner",)
    assert roles_of(org, "oona") == ["member"]
    (revoked,) = events(org)
    assert revoked.data == {"user": "oona", "revoked": ["owner"], "before": ["member", "owner"], "after": ["member"]}


# --- membership add / remove -------------------------------------------------------------------------


def test_membership_add_refuses_a_current_member(org, owner, agents_user):
    with pytest.raises(ValidationError, match="alice is already a member of acme"):
        membership_add(actor=owner, organization=org, user=agents_user)


def test_member_may_leave_without_the_manage_permission(org, owner, agents_user):
    membership_remove(actor=agents_user, membership=membership(org, "alice"))

    assert not Membership.objects.filter(organization=org, user=agents_user).exists()
    (removed,) = events(org)
    assert (removed.action, removed.data) == (
        "member.removed",
        {"user": "alice", "roles": ["agents-user"], "left": True},
    )


def test_owner_removes_a_member_and_the_chain_stays_intact(org, owner, agents_user):
    membership_add(actor=owner, organization=org, user=UserFactory(username="bob"), roles=["auditor"])
    membership_remove(actor=owner, membership=membership(org, "bob"))

    assert [event.action for event in events(org)] == ["member.added", "role.granted", "member.removed"]
    assert_chain_intact(org)


# --- organizations -----------------------------------------------------------------------------------


def test_a_user_who_is_not_a_superuser_cannot_create_organizations(owner):
    with pytest.raises(PermissionDenied):
        organization_create(actor=owner, slug="initech", name="Initech", owner=owner)
    assert not Organization.objects.filter(slug="initech").exists()


def test_a_superuser_creates_an_organization_for_someone_else(db):
    admin = UserFactory(username="root", is_superuser=True, is_staff=True)
    olivia = UserFactory(username="olivia")

    created = organization_create(actor=admin, slug="initech", name="Initech", owner=olivia)

    assert roles_of(created, "olivia") == ["owner"]
    assert {event.actor_display for event in events(created)} == {"root"}
    assert_chain_intact(created)


def test_organization_create_names_the_slug_when_it_is_bad(db):
    olivia = UserFactory(username="olivia")

    with pytest.raises(ValidationError) as refused:
        organization_create(actor=SystemActor(name="cli:test"), slug="no spaces", name="X", owner=olivia)

    assert "slug" in refused.value.message_dict


# --- selectors ---------------------------------------------------------------------------------------


def test_selectors_say_what_is_missing(org, outsider):
    with pytest.raises(Organization.DoesNotExist, match="no organization with slug 'nope'"):
        organization_get(slug="nope")
    with pytest.raises(Exception, match="no user named 'ghost'"):
        membership_get(organization=org, username="ghost")
    with pytest.raises(Membership.DoesNotExist, match="oscar is not a member of acme"):
        membership_get(organization=org, username="oscar")


# --- the plan ----------------------------------------------------------------------------------------


def test_plan_adds_without_removing():
    change = plan_role_change(["agents-user"], add=["auditor", "agents-user"])

    assert (change.before, change.after) == (("agents-user",), ("agents-user", "auditor"))
    assert (change.added, change.revoked) == (("auditor",), ())


def test_plan_replacement_lists_what_is_revoked():
    change = plan_role_change(["owner", "auditor"], replace=["member", "auditor"])

    assert (change.added, change.revoked, change.after) == (("member",), ("owner",), ("auditor", "member"))


def test_plan_without_difference_is_unchanged():
    assert not plan_role_change(["member"], add=["member"], remove=["auditor"]).changed


def test_plan_refuses_adding_and_removing_the_same_role():
    with pytest.raises(ValidationError, match="both added and removed"):
        plan_role_change([], add=["auditor"], remove=["auditor"])


def test_plan_treats_a_single_string_as_one_role():
    assert plan_role_change([], add="template-admin").added == ("template-admin",)


# --- concurrency -------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_two_owners_removing_each_other_at_once_leave_one_owner(org, owner):
    """Each owner revokes the other's ownership at the same moment: one wins, the other is refused."""
    make_member(org, UserFactory(username="oona"), Role.OWNER)
    start = threading.Barrier(2)
    outcomes: dict[str, str] = {}

    def revoke(username: str) -> None:
        try:
            target = membership(org, username)
            start.wait(timeout=10)
            membership_revoke_roles(actor=SystemActor(name=f"cli:{username}"), membership=target, roles=["owner"])
            outcomes[username] = "revoked"
        except ValidationError as exc:
            outcomes[username] = " ".join(exc.messages)
        finally:
            connection.close()

    threads = [threading.Thread(target=revoke, args=(name,)) for name in ("olivia", "oona")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert sorted(outcome == "revoked" for outcome in outcomes.values()) == [False, True]
    assert any("last owner of acme" in outcome for outcome in outcomes.values())
    owners = Membership.objects.filter(organization=org, role_grants__role=Role.OWNER)
    assert owners.count() == 1
    assert_chain_intact(org)
