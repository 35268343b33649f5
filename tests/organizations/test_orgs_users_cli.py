"""`manage.py users create` and `manage.py orgs create|add-member|list`."""

from __future__ import annotations

import io

import pytest
from django.contrib.auth import authenticate, get_user_model

from audit.models import AuditChainHead, AuditEvent
from organizations.models import Membership, Organization
from tests.factories import UserFactory
from tests.organizations.helpers import assert_chain_intact, events, roles_of, run, run_fails

pytestmark = pytest.mark.django_db

User = get_user_model()
STRONG = "correct-horse-battery-staple-42"


@pytest.fixture
def stdin(monkeypatch):
    """Feed text to the command's standard input."""

    def feed(text: str) -> None:
        monkeypatch.setattr("sys.stdin", io.StringIO(text))

    return feed


# --- users create -----------------------------------------------------------------------------------


def test_users_create_with_password_stdin_makes_a_user_who_can_log_in(stdin):
    stdin(STRONG + "\n")

    result = run("users", "create", "bob", "--email", "bob@example.test", "--password-stdin")

    assert result.lines == ["created user bob <bob@example.test>"]
    assert STRONG not in result.stdout + result.stderr
    assert authenticate(username="bob", password=STRONG) == User.objects.get(username="bob")


def test_users_create_refuses_a_weak_password_and_creates_nobody(stdin):
    stdin("zq7\n")

    message = run_fails("users", "create", "bob", "--email", "bob@example.test", "--password-stdin")

    assert "password refused" in message and "too short" in message
    assert "zq7" not in message
    assert not User.objects.filter(username="bob").exists()


def test_users_create_refuses_an_existing_username_in_any_case(stdin, owner):
    stdin(STRONG + "\n")

    message = run_fails("users", "create", "Olivia", "--email", "o2@example.test", "--password-stdin")

    assert "a user named 'olivia' already exists" in message
    assert User.objects.filter(username__iexact="olivia").count() == 1


def test_users_create_refuses_a_bad_email(stdin):
    stdin(STRONG + "\n")

    message = run_fails("users", "create", "bob", "--email", "not-an-address", "--password-stdin")

    assert "email 'not-an-address' is not a valid address" in message


def test_users_create_dry_run_checks_and_creates_nobody(stdin):
    stdin(STRONG + "\n")

    result = run("users", "create", "bob", "--email", "bob@example.test", "--password-stdin", "--dry-run")

    assert result.lines == ["would create user bob <bob@example.test>", "dry run: nothing written"]
    assert not User.objects.filter(username="bob").exists()


def test_users_create_with_empty_stdin_fails_clearly(stdin):
    stdin("")

    message = run_fails("users", "create", "bob", "--email", "bob@example.test", "--password-stdin")

    assert "no password on standard input" in message


def test_users_create_without_a_terminal_asks_for_password_stdin(stdin):
    stdin(STRONG + "\n")  # not a terminal: there is nobody to prompt

    message = run_fails("users", "create", "bob", "--email", "bob@example.test")

    assert "--password-stdin" in message
    assert not User.objects.filter(username="bob").exists()


# --- orgs create ------------------------------------------------------------------------------------


def test_orgs_create_makes_the_org_its_owner_and_a_verifiable_chain():
    UserFactory(username="olivia")

    result = run("orgs", "create", "initech", "--name", "Initech", "--owner", "olivia")

    assert result.lines == ["created organization initech (Initech)", "olivia: + owner"]
    organization = Organization.objects.get(slug="initech")
    assert organization.name == "Initech"
    assert roles_of(organization, "olivia") == ["owner"]
    assert AuditChainHead.objects.filter(organization=organization).exists()
    assert [event.action for event in events(organization)] == ["org.created", "member.added", "role.granted"]
    assert events(organization, "role.granted")[0].data == {
        "user": "olivia",
        "added": ["owner"],
        "before": [],
        "after": ["owner"],
    }
    assert_chain_intact(organization)


def test_orgs_create_dry_run_writes_nothing():
    UserFactory(username="olivia")

    result = run("orgs", "create", "initech", "--name", "Initech", "--owner", "olivia", "--dry-run")

    assert result.lines == [
        "would create organization initech (Initech)",
        "olivia: + owner",
        "dry run: nothing written",
    ]
    assert not Organization.objects.filter(slug="initech").exists()
    assert not AuditEvent.objects.exists() and not AuditChainHead.objects.exists()


@pytest.mark.parametrize(
    ("slug", "named"),
    [
        ("acme", "slug 'acme' is already taken"),
        ("Acme", "slug 'Acme' is not valid"),
        ("two words", "slug 'two words' is not valid"),
        ("x" * 65, "is longer than 64 characters"),
    ],
)
def test_orgs_create_refuses_a_taken_or_invalid_slug_naming_it(org, owner, slug, named):
    message = run_fails("orgs", "create", slug, "--name", "Another", "--owner", "olivia")

    assert named in message
    assert Organization.objects.count() == 1


def test_orgs_create_with_an_unknown_owner_names_them():
    message = run_fails("orgs", "create", "initech", "--name", "Initech", "--owner", "ghost")

    assert "no user named 'ghost'" in message
    assert not Organization.objects.exists()


# --- orgs add-member --------------------------------------------------------------------------------


def test_orgs_add_member_gives_the_member_role_by_default(org, owner):
    UserFactory(username="bob")

    result = run("orgs", "add-member", "acme", "bob")

    assert result.lines == ["added bob to acme", "bob: + member"]
    assert roles_of(org, "bob") == ["member"]
    assert [event.action for event in events(org)] == ["member.added", "role.granted"]
    assert_chain_intact(org)


def test_orgs_add_member_with_roles_gives_exactly_those(org, owner):
    UserFactory(username="bob")

    result = run("orgs", "add-member", "acme", "bob", "--role", "agents-user", "--role", "auditor")

    assert result.lines == ["added bob to acme", "bob: + agents-user", "bob: + auditor"]
    assert roles_of(org, "bob") == ["agents-user", "auditor"]


def test_orgs_add_member_dry_run_writes_nothing(org, owner):
    UserFactory(username="bob")

    result = run("orgs", "add-member", "acme", "bob", "--dry-run")

    assert result.lines == ["would add bob to acme", "bob: + member", "dry run: nothing written"]
    assert not Membership.objects.filter(user__username="bob").exists()
    assert events(org) == []


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (("orgs", "add-member", "acme", "alice"), "alice is already a member of acme"),
        (("orgs", "add-member", "nope", "bob"), "no organization with slug 'nope'"),
        (("orgs", "add-member", "acme", "ghost"), "no user named 'ghost'"),
        (("orgs", "add-member", "acme", "bob", "--role", "root"), "unknown role 'root'"),
    ],
)
def test_orgs_add_member_refusals_name_the_bad_value(org, owner, agents_user, args, named):
    UserFactory(username="bob")

    message = run_fails(*args)

    assert named in message
    assert events(org) == []


# --- orgs list --------------------------------------------------------------------------------------


def test_orgs_list_shows_each_org_with_member_count_and_owners(org, owner, agents_user, outsider):
    result = run("orgs", "list")

    assert [line.split() for line in result.lines] == [
        ["SLUG", "NAME", "MEMBERS", "OWNERS"],
        ["acme", "Acme", "2", "olivia"],
        ["globex", "Globex", "1", "oscar"],
    ]


def test_orgs_list_without_orgs_says_how_to_create_one():
    assert "orgs create" in run("orgs", "list").stdout
