"""Creating a workspace gives it a private directory and an audit event."""

from __future__ import annotations

import os
import stat

import pytest
from django.core.exceptions import PermissionDenied, ValidationError

from audit.models import AuditEvent
from audit.services import AgentActor
from workspaces.models import Workspace
from workspaces.services import workspace_create


def test_created_workspace_has_a_private_directory_under_the_root(org, owner, workspaces_root):
    workspace = workspace_create(actor=owner, organization=org, owner=owner, name="  scratch  ")

    assert workspace.name == "scratch"
    assert workspace.directory == str(workspaces_root.absolute() / str(org.pk) / str(workspace.id))
    assert os.path.isdir(workspace.directory)
    assert stat.S_IMODE(os.stat(workspace.directory).st_mode) == 0o700
    assert Workspace.objects.get(pk=workspace.pk).directory == workspace.directory


def test_creation_is_audited_with_name_backend_and_directory(org, owner):
    workspace = workspace_create(actor=owner, organization=org, owner=owner, name="scratch")

    event = AuditEvent.objects.get(action="workspace.created")
    assert event.organization_id == org.pk
    assert event.actor_id == str(owner.pk)
    assert event.target_id == str(workspace.id)
    assert event.workspace_id == str(workspace.id)
    assert event.data == {
        "name": "scratch",
        "backend": "local",
        "directory": workspace.directory,
        "owner_id": owner.pk,
        "template": None,
        "command_timeout_seconds": None,
        "output_cap_bytes": None,
        "memory_limit_mb": None,
    }


def test_agent_may_create_a_workspace_for_the_user_it_acts_for(org, agents_user):
    workspace = workspace_create(
        actor=AgentActor(user=agents_user, session_id="s-1"), organization=org, owner=agents_user, name="agent work"
    )

    event = AuditEvent.objects.get(action="workspace.created")
    assert workspace.owner == agents_user
    assert event.actor_type == "agent"
    assert event.session_id == "s-1"


def test_member_who_may_not_run_agents_gets_no_workspace(org, plain_member):
    with pytest.raises(PermissionDenied, match="agents-user"):
        workspace_create(actor=plain_member, organization=org, owner=plain_member, name="nope")

    assert not Workspace.objects.exists()
    assert not AuditEvent.objects.filter(action="workspace.created").exists()


def test_user_of_another_organization_cannot_create_a_workspace_there(org, outsider):
    with pytest.raises(PermissionDenied):
        workspace_create(actor=outsider, organization=org, owner=outsider, name="intruder")

    assert not Workspace.objects.exists()


def test_agents_user_cannot_create_a_workspace_owned_by_someone_else(org, agents_user, owner):
    with pytest.raises(PermissionDenied):
        workspace_create(actor=agents_user, organization=org, owner=owner, name="not mine")


@pytest.mark.parametrize("name", ["", "   "])
def test_empty_name_is_refused(org, owner, name):
    with pytest.raises(ValidationError, match="Give the workspace a name"):
        workspace_create(actor=owner, organization=org, owner=owner, name=name)


def test_overlong_name_is_refused(org, owner):
    with pytest.raises(ValidationError, match="at most 200 characters"):
        workspace_create(actor=owner, organization=org, owner=owner, name="x" * 201)
