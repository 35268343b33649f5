"""Who sees which workspaces and command runs."""

from __future__ import annotations

from django.contrib.auth.models import AnonymousUser
from django.utils import timezone

from workspaces.models import CommandRun
from workspaces.selectors import command_runs_for_user, workspaces_for_user
from workspaces.services import workspace_create


def make_workspaces(org, owner, agents_user):
    mine = workspace_create(actor=agents_user, organization=org, owner=agents_user, name="alice's")
    theirs = workspace_create(actor=owner, organization=org, owner=owner, name="olivia's")
    return mine, theirs


def test_agents_user_sees_only_their_own_workspaces(org, owner, agents_user):
    mine, _ = make_workspaces(org, owner, agents_user)

    assert list(workspaces_for_user(user=agents_user, organization=org)) == [mine]


def test_owner_and_auditor_see_every_workspace_of_the_organization(org, owner, agents_user, auditor):
    mine, theirs = make_workspaces(org, owner, agents_user)

    for user in (owner, auditor):
        assert set(workspaces_for_user(user=user, organization=org)) == {mine, theirs}


def test_member_without_agent_role_sees_none(org, owner, agents_user, plain_member):
    make_workspaces(org, owner, agents_user)

    assert not workspaces_for_user(user=plain_member, organization=org).exists()


def test_another_organization_and_anonymous_see_none(org, owner, agents_user, outsider):
    make_workspaces(org, owner, agents_user)

    assert not workspaces_for_user(user=outsider, organization=org).exists()
    assert not workspaces_for_user(user=AnonymousUser(), organization=org).exists()


def test_workspaces_list_is_one_query(org, owner, agents_user, django_assert_num_queries):
    make_workspaces(org, owner, agents_user)

    with django_assert_num_queries(1):
        list(workspaces_for_user(user=agents_user, organization=org))


def test_command_runs_follow_workspace_visibility(org, owner, agents_user):
    mine, theirs = make_workspaces(org, owner, agents_user)
    for workspace in (mine, theirs):
        CommandRun.objects.create(
            organization=org,
            workspace=workspace,
            command=f"echo {workspace.name}",
            working_directory=workspace.directory,
            started_at=timezone.now(),
        )

    assert [run.workspace for run in command_runs_for_user(user=agents_user, organization=org)] == [mine]
    assert command_runs_for_user(user=owner, organization=org).count() == 2
    assert command_runs_for_user(user=owner, organization=org, workspace=theirs).get().workspace == theirs
