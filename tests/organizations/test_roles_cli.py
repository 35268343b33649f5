"""`manage.py roles ...`: additive edits, explicit replacement, the last-owner guard and --all-members."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from audit.models import AuditEvent
from organizations.models import Membership, MembershipRole, Role
from tests.factories import UserFactory, make_member
from tests.organizations.helpers import assert_chain_intact, events, roles_of, run, run_fails

pytestmark = pytest.mark.django_db


@pytest.fixture
def team(org, owner, agents_user, auditor, plain_member):
    """acme with olivia (owner), alice (agents-user), audrey (auditor) and mallory (member)."""
    return org


# --- roles add ---------------------------------------------------------------------------------------


def test_roles_add_keeps_existing_roles_and_writes_one_granted_event(org, owner, agents_user):
    result = run("roles", "add", "--org", "acme", "--user", "alice", "auditor")

    assert result.lines == ["alice: + auditor"]
    assert roles_of(org, "alice") == ["agents-user", "auditor"]
    (granted,) = events(org)
    assert granted.action == "role.granted"
    assert granted.data == {
        "user": "alice",
        "added": ["auditor"],
        "before": ["agents-user"],
        "after": ["agents-user", "auditor"],
    }
    assert granted.actor_type == "system" and granted.actor_display.startswith("cli:")
    assert_chain_intact(org)


def test_roles_add_of_a_held_role_says_no_change_and_writes_nothing(org, owner, agents_user):
    result = run("roles", "add", "--org", "acme", "--user", "alice", "agents-user")

    assert result.lines == ["alice: no change"]
    assert roles_of(org, "alice") == ["agents-user"]
    assert events(org) == []


def test_roles_add_dry_run_prints_the_diff_and_writes_nothing(org, owner, agents_user):
    result = run("roles", "add", "--org", "acme", "--user", "alice", "auditor", "--dry-run")

    assert result.lines == ["alice: + auditor", "dry run: nothing written"]
    assert roles_of(org, "alice") == ["agents-user"]
    assert events(org) == []


def test_roles_remove_takes_only_the_named_roles_and_writes_one_revoked_event(org, owner, agents_user):
    make_member(org, agents_user, Role.AUDITOR)

    result = run("roles", "remove", "--org", "acme", "--user", "alice", "auditor")

    assert result.lines == ["alice: - auditor"]
    assert roles_of(org, "alice") == ["agents-user"]
    (revoked,) = events(org)
    assert (revoked.action, revoked.data["revoked"], revoked.data["before"]) == (
        "role.revoked",
        ["auditor"],
        ["agents-user", "auditor"],
    )


# --- roles set ---------------------------------------------------------------------------------------


def test_roles_set_without_yes_shows_added_and_revoked_and_changes_nothing(org, owner, agents_user):
    make_member(org, agents_user, Role.TEMPLATE_ADMIN)

    result = run("roles", "set", "--org", "acme", "--user", "alice", "auditor")

    assert result.lines == [
        "alice: + auditor",
        "alice: - agents-user",
        "alice: - template-admin",
        "nothing changed: re-run with --yes to apply",
    ]
    assert roles_of(org, "alice") == ["agents-user", "template-admin"]
    assert events(org) == []


def test_roles_set_with_yes_applies_exactly_the_diff_it_showed(org, owner, agents_user):
    make_member(org, agents_user, Role.TEMPLATE_ADMIN)
    preview = run("roles", "set", "--org", "acme", "--user", "alice", "auditor", "member")

    applied = run("roles", "set", "--org", "acme", "--user", "alice", "auditor", "member", "--yes")

    assert applied.lines == preview.lines[:-1]
    assert roles_of(org, "alice") == ["auditor", "member"]
    granted, revoked = events(org)
    assert granted.action == "role.granted" and granted.data["added"] == ["auditor", "member"]
    assert revoked.action == "role.revoked" and revoked.data["revoked"] == ["agents-user", "template-admin"]
    assert granted.data["before"] == ["agents-user", "template-admin"]
    assert revoked.data["after"] == ["auditor", "member"]
    assert granted.data["operation"] == revoked.data["operation"] == "replace"
    assert_chain_intact(org)


def test_roles_set_dry_run_with_yes_still_writes_nothing(org, owner, agents_user):
    result = run("roles", "set", "--org", "acme", "--user", "alice", "auditor", "--yes", "--dry-run")

    assert result.lines == ["alice: + auditor", "alice: - agents-user", "dry run: nothing written"]
    assert roles_of(org, "alice") == ["agents-user"]
    assert events(org) == []


def test_roles_set_to_the_same_roles_needs_no_confirmation(org, owner, agents_user):
    result = run("roles", "set", "--org", "acme", "--user", "alice", "agents-user")

    assert result.lines == ["alice: no change"]
    assert events(org) == []


# --- last owner --------------------------------------------------------------------------------------


def test_removing_owner_from_the_only_owner_fails_naming_them(org, owner):
    message = run_fails("roles", "remove", "--org", "acme", "--user", "olivia", "owner")

    assert "olivia is the last owner of acme" in message
    assert roles_of(org, "olivia") == ["owner"]
    assert events(org) == []


def test_replacing_the_only_owners_roles_fails_even_as_a_preview(org, owner):
    message = run_fails("roles", "set", "--org", "acme", "--user", "olivia", "member")

    assert "last owner" in message
    assert roles_of(org, "olivia") == ["owner"]


def test_removing_owner_works_while_another_owner_remains(org, owner):
    make_member(org, UserFactory(username="oona"), Role.OWNER)

    result = run("roles", "remove", "--org", "acme", "--user", "olivia", "owner")

    assert result.lines == ["olivia: - owner"]
    assert roles_of(org, "olivia") == []
    assert roles_of(org, "oona") == ["owner"]
    assert [event.action for event in events(org)] == ["role.revoked"]


# --- --all-members -----------------------------------------------------------------------------------


def test_all_members_dry_run_prints_every_members_diff_and_writes_nothing(team):
    before = sorted(MembershipRole.objects.values_list("membership__user__username", "role"))

    result = run("roles", "add", "--org", "acme", "--all-members", "agents-user", "--dry-run")

    assert result.lines == [
        "alice: no change",
        "audrey: + agents-user",
        "mallory: + agents-user",
        "olivia: + agents-user",
        "3 of 4 memberships would change",
        "dry run: nothing written",
    ]
    assert sorted(MembershipRole.objects.values_list("membership__user__username", "role")) == before
    assert events(team) == []


def test_all_members_add_writes_one_event_per_changed_membership(team):
    result = run("roles", "add", "--org", "acme", "--all-members", "agents-user")

    assert "3 of 4 memberships changed" in result.lines
    for username in ("alice", "audrey", "mallory", "olivia"):
        assert "agents-user" in roles_of(team, username)
    assert roles_of(team, "audrey") == ["agents-user", "auditor"]  # additive: nothing else removed
    granted = events(team)
    assert [(event.action, event.data["user"]) for event in granted] == [
        ("role.granted", "audrey"),
        ("role.granted", "mallory"),
        ("role.granted", "olivia"),
    ]
    assert_chain_intact(team)


def test_all_members_remove_writes_one_revoked_event_per_member_that_held_the_role(team):
    make_member(team, Membership.objects.get(user__username="olivia").user, Role.AUDITOR)

    result = run("roles", "remove", "--org", "acme", "--all-members", "auditor")

    assert result.lines == [
        "alice: no change",
        "audrey: - auditor",
        "mallory: no change",
        "olivia: - auditor",
        "2 of 4 memberships changed",
    ]
    assert not MembershipRole.objects.filter(role=Role.AUDITOR).exists()
    assert [event.data["user"] for event in events(team, "role.revoked")] == ["audrey", "olivia"]


def test_all_members_remove_owner_is_refused_and_nothing_changes(team):
    message = run_fails("roles", "remove", "--org", "acme", "--all-members", "owner", "auditor")

    assert "without an owner" in message
    assert roles_of(team, "olivia") == ["owner"]
    assert roles_of(team, "audrey") == ["auditor"]
    assert events(team) == []


def test_all_members_loads_memberships_in_the_same_number_of_queries_for_any_team_size(org, owner):
    def membership_reads() -> int:
        with CaptureQueriesContext(connection) as queries:
            run("roles", "add", "--org", "acme", "--all-members", "auditor", "--dry-run")
        return sum(1 for query in queries if 'FROM "organizations_membership' in query["sql"])

    make_member(org, UserFactory(username="m1"), Role.MEMBER)
    small = membership_reads()
    for number in range(2, 8):
        make_member(org, UserFactory(username=f"m{number}"), Role.MEMBER)
    large = membership_reads()

    assert 0 < small == large


@pytest.mark.django_db(transaction=True)
def test_all_members_is_all_or_nothing_when_an_audit_row_cannot_be_written(team):
    """The database refuses the third audit insert: no member gets the role and no event stays."""
    inserts = 0

    def refuse_third_audit_insert(execute, sql, params, many, context):
        nonlocal inserts
        if 'INSERT INTO "audit_auditevent"' in sql:  # alone, or inside the append statement on PostgreSQL
            inserts += 1
            if inserts == 3:
                raise RuntimeError("audit storage unavailable")
        return execute(sql, params, many, context)

    with connection.execute_wrapper(refuse_third_audit_insert), pytest.raises(RuntimeError):
        run("roles", "add", "--org", "acme", "--all-members", "agents-user")

    assert inserts == 3
    assert list(
        MembershipRole.objects.filter(role=Role.AGENTS_USER).values_list("membership__user__username", flat=True)
    ) == ["alice"]
    assert AuditEvent.objects.filter(organization=team).count() == 0


# --- bad names ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (("roles", "add", "--org", "nope", "--user", "alice", "auditor"), "'nope'"),
        (("roles", "add", "--org", "acme", "--user", "zed", "auditor"), "no user named 'zed'"),
        (("roles", "add", "--org", "acme", "--user", "alice", "wizard"), "unknown role 'wizard'"),
        (("roles", "remove", "--org", "acme", "--all-members", "wizard"), "unknown role 'wizard'"),
        (("roles", "set", "--org", "acme", "--user", "alice", "wizard", "--yes"), "unknown role 'wizard'"),
        (("roles", "list", "--org", "nope"), "no organization with slug 'nope'"),
        (("roles", "list", "--org", "acme", "--user", "zed"), "no user named 'zed'"),
        (("roles", "add", "--org", "acme", "--user", "oscar", "auditor"), "oscar is not a member of acme"),
    ],
)
def test_unknown_org_user_or_role_exits_non_zero_naming_it(org, owner, agents_user, outsider, args, named):
    message = run_fails(*args)

    assert named in message
    assert events(org) == []


def test_unknown_role_message_lists_the_valid_roles(org, agents_user):
    message = run_fails("roles", "add", "--org", "acme", "--user", "alice", "admin")

    assert "valid roles: owner, agents-user, auditor, template-admin, member" in message


# --- roles list --------------------------------------------------------------------------------------


def test_roles_list_shows_each_member_with_their_roles(team):
    make_member(team, Membership.objects.get(user__username="alice").user, Role.AUDITOR)

    result = run("roles", "list", "--org", "acme")

    assert [line.split() for line in result.lines] == [
        ["USER", "ROLES"],
        ["alice", "agents-user,auditor"],
        ["audrey", "auditor"],
        ["mallory", "member"],
        ["olivia", "owner"],
    ]


def test_roles_list_for_one_user_shows_only_them(team):
    result = run("roles", "list", "--org", "acme", "--user", "audrey")

    assert [line.split() for line in result.lines] == [["USER", "ROLES"], ["audrey", "auditor"]]


def test_all_members_on_an_organization_without_members_says_so(org):
    assert run("roles", "add", "--org", "acme", "--all-members", "auditor").lines == [
        "no memberships: nothing to change"
    ]
