"""Workspace templates: who may change them, what a bad value answers, and the audit trail of every change."""

from __future__ import annotations

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.management import call_command
from django.core.management.base import CommandError

from audit.models import AuditEvent
from audit.services import AgentActor
from organizations.models import Role
from tests.api import api
from tests.factories import UserFactory, make_member
from workspaces.models import WorkspaceTemplate
from workspaces.services import template_create, template_delete, template_update, workspace_create

TEMPLATES = "/api/v1/orgs/acme/templates/"
PYTHON = "Python 3.11 with pytest and the project's linters; no network."


@pytest.fixture
def template(org, owner) -> WorkspaceTemplate:
    return template_create(actor=owner, organization=org, name="python", description=PYTHON, memory_limit_mb=512)


@pytest.fixture
def template_admin(org):
    user = UserFactory(username="tamsin")
    make_member(org, user, Role.TEMPLATE_ADMIN)
    return user


def test_creation_is_audited_with_every_value(template, owner):
    event = AuditEvent.objects.get(action="template.created")
    assert event.actor_id == str(owner.pk)
    assert event.target_id == str(template.pk)
    assert event.data == {
        "backend": "bubblewrap",
        "command_timeout_seconds": None,
        "description": PYTHON,
        "is_enabled": True,
        "memory_limit_mb": 512,
        "name": "python",
        "output_cap_bytes": None,
    }


def test_an_update_audits_only_what_changed_before_and_after(template, owner):
    template_update(actor=owner, template=template, memory_limit_mb=1024, description=PYTHON)

    event = AuditEvent.objects.get(action="template.updated")
    assert event.data == {"changes": {"memory_limit_mb": {"before": 512, "after": 1024}}}
    template_update(actor=owner, template=template, memory_limit_mb=1024)
    assert AuditEvent.objects.filter(action="template.updated").count() == 1  # nothing changed: nothing recorded


def test_deleting_a_template_keeps_its_workspaces_and_their_limits(template, org, owner):
    workspace = workspace_create(actor=owner, organization=org, owner=owner, name="w", template=template)

    template_delete(actor=owner, template=template)

    workspace.refresh_from_db()
    assert workspace.template is None and workspace.memory_limit_mb == 512
    assert AuditEvent.objects.get(action="template.deleted").data["before"]["name"] == "python"


def test_a_workspace_copies_the_template_limits_and_a_later_edit_leaves_it_alone(template, org, owner):
    workspace = workspace_create(actor=owner, organization=org, owner=owner, name="w", template=template)
    template_update(actor=owner, template=template, memory_limit_mb=2048, command_timeout_seconds=5)

    workspace.refresh_from_db()
    assert (workspace.backend, workspace.memory_limit_mb, workspace.command_timeout_seconds) == (
        "bubblewrap",
        512,
        None,
    )
    created = AuditEvent.objects.get(action="workspace.created")
    assert created.data["template"] == {"id": template.pk, "name": "python"}
    assert created.data["memory_limit_mb"] == 512


def test_a_disabled_or_foreign_template_cannot_start_a_workspace(template, org, owner, other_org, outsider):
    foreign = template_create(actor=None, organization=other_org, name="python", description=PYTHON)
    with pytest.raises(ValidationError, match="No enabled template 'python' in acme"):
        workspace_create(actor=owner, organization=org, owner=owner, name="w", template=foreign)
    template_update(actor=owner, template=template, is_enabled=False)
    with pytest.raises(ValidationError, match="No enabled template"):
        workspace_create(actor=owner, organization=org, owner=owner, name="w", template=template)


@pytest.mark.parametrize(
    ("fields", "field", "says"),
    [
        ({"name": "Python 3"}, "name", "lower-case letters"),
        ({"name": "-python"}, "name", "starting and ending with a letter"),
        ({"name": "x" * 64}, "name", "1 to 63"),
        ({"description": "python"}, "description", "at least 10 characters"),
        ({"description": "x" * 2001}, "description", "under 2000"),
        ({"description": "valid text\x00here"}, "description", "NUL"),
        ({"backend": "docker"}, "backend", "use one of local, bubblewrap"),
        ({"memory_limit_mb": 1}, "memory_limit_mb", "from 64"),
        ({"command_timeout_seconds": 0}, "command_timeout_seconds", "from 1"),
        ({"output_cap_bytes": 10**12}, "output_cap_bytes", "to 67,108,864"),
        ({"memory_limit_mb": True}, "memory_limit_mb", "whole number"),
        ({"colour": "blue"}, "colour", "Unknown template field"),
    ],
)
def test_bad_values_are_refused_naming_the_field(org, owner, fields, field, says):
    values = {"name": "python", "description": PYTHON, **fields}
    with pytest.raises(ValidationError) as refused:
        template_create(actor=owner, organization=org, **values)
    assert says in " ".join(refused.value.message_dict[field])
    assert not WorkspaceTemplate.objects.exists()
    assert not AuditEvent.objects.filter(action="template.created").exists()


def test_a_duplicate_name_is_refused_but_another_org_may_use_it(template, org, owner, other_org):
    with pytest.raises(ValidationError, match="already has a template named 'python'"):
        template_create(actor=owner, organization=org, name="python", description="Another python box here.")
    template_create(actor=None, organization=other_org, name="python", description=PYTHON)
    other = template_create(actor=owner, organization=org, name="node", description="Node.js 20 with npm.")
    with pytest.raises(ValidationError, match="already has a template named 'python'"):
        template_update(actor=owner, template=other, name="python")


def test_template_admins_and_owners_manage_templates_others_and_the_agent_may_not(
    org, owner, template_admin, agents_user, auditor
):
    template = template_create(actor=template_admin, organization=org, name="node", description="Node.js 20 with npm.")
    for user in (agents_user, auditor):
        with pytest.raises(PermissionDenied):
            template_update(actor=user, template=template, is_enabled=False)
    with pytest.raises(PermissionDenied, match="agent acting for a user"):
        template_delete(actor=AgentActor(user=owner, session_id="s"), template=template)
    template_delete(actor=owner, template=template)


def test_api_members_list_templates_and_template_admins_create_change_and_delete(template, template_admin, agents_user):
    listed = api(agents_user).get(TEMPLATES)
    assert listed.status_code == 200
    assert [row["name"] for row in listed.json()["results"]] == ["python"]

    client = api(template_admin)
    created = client.post(
        TEMPLATES,
        {"name": "node", "description": "Node.js 20 with npm; no network.", "memory_limit_mb": 256},
        format="json",
    )
    assert created.status_code == 201, created.content
    assert created.json()["backend"] == "bubblewrap" and created.json()["memory_limit_mb"] == 256
    url = f"{TEMPLATES}{created.json()['id']}/"
    changed = client.patch(url, {"is_enabled": False, "memory_limit_mb": None}, format="json")
    assert changed.status_code == 200 and changed.json()["is_enabled"] is False
    assert changed.json()["memory_limit_mb"] is None
    assert client.delete(url).status_code == 204
    assert [e.action for e in AuditEvent.objects.filter(action__startswith="template.").order_by("sequence")] == [
        "template.created",
        "template.created",
        "template.updated",
        "template.deleted",
    ]


def test_api_refuses_writes_without_the_role_naming_the_roles(template, agents_user, auditor):
    for user in (agents_user, auditor):
        answer = api(user).post(TEMPLATES, {"name": "x1", "description": PYTHON}, format="json")
        assert answer.status_code == 403
        assert "owner, template-admin" in answer.json()["detail"]
        assert api(user).delete(f"{TEMPLATES}{template.pk}/").status_code == 403
    assert WorkspaceTemplate.objects.count() == 1


def test_api_bad_input_answers_400_naming_the_field(owner):
    client = api(owner)
    answer = client.post(TEMPLATES, {"name": "Bad Name", "description": PYTHON}, format="json")
    assert answer.status_code == 400 and "name" in answer.json()
    answer = client.post(TEMPLATES, {"name": "ok"}, format="json")
    assert answer.status_code == 400 and "description" in answer.json()
    answer = client.post(TEMPLATES, {"name": "ok", "description": PYTHON, "backend": "vm"}, format="json")
    assert answer.status_code == 400 and "backend" in answer.json()
    answer = client.post(TEMPLATES, {"name": "ok", "description": PYTHON, "memory_limit_mb": "lots"}, format="json")
    assert answer.status_code == 400 and "memory_limit_mb" in answer.json()


def test_api_another_organizations_template_answers_404(template, owner, outsider, other_org):
    foreign = template_create(actor=None, organization=other_org, name="globex-box", description=PYTHON)
    assert api(outsider).get(TEMPLATES).status_code == 404
    owner_client = api(owner)
    assert owner_client.get(f"{TEMPLATES}{foreign.pk}/").status_code == 404
    assert owner_client.patch(f"{TEMPLATES}{foreign.pk}/", {"is_enabled": False}, format="json").status_code == 404
    assert owner_client.delete(f"{TEMPLATES}{foreign.pk}/").status_code == 404
    foreign.refresh_from_db()
    assert foreign.is_enabled


def test_cli_adds_and_lists_templates(org, capsys):
    call_command("templates", "add", "--org", "acme", "--name", "python", "--description", PYTHON, "--memory-mb", "512")
    call_command("templates", "list", "--org", "acme")
    out = capsys.readouterr().out
    assert "added template 'python' (bubblewrap) to acme" in out
    assert "python" in out.splitlines()[-1] and "512" in out.splitlines()[-1]
    assert AuditEvent.objects.get(action="template.created").actor_type == "system"
    with pytest.raises(CommandError, match="--memory-mb takes a whole number"):
        call_command("templates", "add", "--org", "acme", "--name", "x1", "--description", PYTHON, "--memory-mb", "a")
    with pytest.raises(CommandError, match="lower-case letters"):
        call_command("templates", "add", "--org", "acme", "--name", "X", "--description", PYTHON)


def test_lint_passes_sandboxed_templates_and_fails_on_twins(org, owner, capsys):
    template_create(actor=owner, organization=org, name="python", description=PYTHON)
    call_command("templates", "lint", "--org", "acme")
    assert "1 organization(s): 0 error(s), 0 warning(s)" in capsys.readouterr().out

    template_create(
        actor=owner,
        organization=org,
        name="python-2",
        description="  python 3.11 WITH pytest and the project's linters; no network. ",
    )
    with pytest.raises(CommandError, match="1 error"):
        call_command("templates", "lint", "--org", "acme")
    assert "acme/python-2: error: has the same description as 'python'" in capsys.readouterr().out


def test_lint_warns_of_the_local_backend_and_of_an_org_without_templates(org, owner, other_org, capsys, settings):
    settings.WORKSPACE_BACKENDS = ["bubblewrap", "local"]
    template_create(actor=owner, organization=org, name="host", description="Runs on the host itself.", backend="local")
    call_command("templates", "lint")
    out = capsys.readouterr().out
    assert "acme/host: warning: the local backend is not a sandbox" in out
    assert "globex: warning: no enabled template" in out
    with pytest.raises(CommandError, match="0 error"):
        call_command("templates", "lint", "--strict")


def test_lint_fails_when_this_host_cannot_start_a_sandbox(org, owner, monkeypatch, capsys):
    import workspaces.backends.bubblewrap as bubblewrap

    template_create(actor=owner, organization=org, name="python", description=PYTHON)
    monkeypatch.setattr(bubblewrap, "_bwrap_path", lambda: None)
    with pytest.raises(CommandError, match="1 error"):
        call_command("templates", "lint", "--org", "acme")
    assert "acme/python: error: bubblewrap is not installed on this host" in capsys.readouterr().out


def test_only_the_operator_lets_templates_run_outside_the_sandbox(org, owner, settings):
    with pytest.raises(ValidationError, match="does not let templates use the local backend") as refused:
        template_create(
            actor=owner, organization=org, name="host", description="The host's own shell.", backend="local"
        )
    assert "AIRLOCK_WORKSPACE_BACKENDS" in refused.value.message_dict["backend"][0]
    answer = api(owner).post(
        TEMPLATES, {"name": "host", "description": "The host's own shell.", "backend": "local"}, format="json"
    )
    assert answer.status_code == 400 and "AIRLOCK_WORKSPACE_BACKENDS" in answer.json()["backend"][0]

    settings.WORKSPACE_BACKENDS = ["bubblewrap", "local"]
    host = template_create(
        actor=owner, organization=org, name="host", description="The host's own shell.", backend="local"
    )
    settings.WORKSPACE_BACKENDS = ["bubblewrap"]  # the operator takes it back: the template no longer starts
    with pytest.raises(ValidationError, match="Template 'host' cannot start: This deployment does not let"):
        workspace_create(actor=owner, organization=org, owner=owner, name="w", template=host)


def test_the_templates_list_costs_the_same_queries_for_one_or_many(template, agents_user, django_assert_num_queries):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    client = api(agents_user)
    with CaptureQueriesContext(connection) as one:
        client.get(TEMPLATES)
    for n in range(5):
        template_create(actor=None, organization=template.organization, name=f"extra-{n}", description=PYTHON)
    with django_assert_num_queries(len(one.captured_queries)):
        response = client.get(TEMPLATES)
    assert len(response.json()["results"]) == 6
