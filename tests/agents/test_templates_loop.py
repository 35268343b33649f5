"""The agent chooses a workspace template by its name and description, starts it and runs commands in it."""

from __future__ import annotations

import asyncio

import pytest
from asgiref.sync import sync_to_async

from agents.models import AgentSession, SessionEvent
from agents.services import session_add_prompt, session_start
from audit.models import AuditEvent
from organizations.models import Role
from tests.agents.conftest import start_and_run, wait_for_turn
from tests.factories import LanguageModelFactory, OrganizationFactory, UserFactory, make_member
from tests.sandbox import let_sandbox_reach
from workspaces.models import Workspace, WorkspaceTemplate
from workspaces.services import template_create, workspace_stop

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.timeout(60),
    pytest.mark.usefixtures("close_async_orm_connections"),
]

SANDBOX = "Debian tools in a bubblewrap sandbox, no network: for building and testing code."


@pytest.fixture
def setup(simulator, settings, tmp_path):
    settings.WORKSPACES_ROOT = let_sandbox_reach(tmp_path)
    settings.WORKSPACE_BACKENDS = ["bubblewrap", "local"]
    org = OrganizationFactory(slug="acme")
    user = UserFactory(username="alice")
    make_member(org, user, Role.AGENTS_USER)
    LanguageModelFactory(provider__organization=org, provider__base_url=simulator.base_url, is_default=True)
    template_create(actor=None, organization=org, name="sandbox", description=SANDBOX, memory_limit_mb=512)
    template_create(
        actor=None, organization=org, name="host-shell", description="The host's shell, unsandboxed.", backend="local"
    )
    template_create(
        actor=None, organization=org, name="retired", description="An old image nobody should use.", is_enabled=False
    )
    return org, user


@pytest.fixture
def plain(simulator, settings, tmp_path):
    """An organization without templates (plain), its agents user bob and a default model."""
    settings.WORKSPACES_ROOT = tmp_path
    org = OrganizationFactory(slug="plain")
    user = UserFactory(username="bob")
    make_member(org, user, Role.AGENTS_USER)
    LanguageModelFactory(provider__organization=org, provider__base_url=simulator.base_url, is_default=True)
    return org, user


def start(template: str) -> dict:
    return {"tool_calls": [{"name": "start_workspace", "arguments": {"template": template}}]}


def execute(command: str) -> dict:
    return {"tool_calls": [{"name": "execute", "arguments": {"command": command}}]}


async def test_the_model_sees_the_enabled_templates_and_runs_commands_in_the_one_it_starts(setup, simulator):
    org, user = setup
    simulator.enqueue(start("sandbox"), execute("id -u; pwd; echo $HOME"), {"text": "Done."})

    session, events = await start_and_run(user, org, "build it")

    assert session.status == "idle", session.error
    first = simulator.requests[0]
    offered = {tool["function"]["name"]: tool["function"] for tool in first["tools"]}
    assert set(offered) == {"start_workspace", "execute"}
    assert offered["start_workspace"]["parameters"]["properties"]["template"]["enum"] == ["host-shell", "sandbox"]
    system = first["messages"][0]["content"]
    assert f"- sandbox: {SANDBOX}" in system and "retired" not in system

    output = [e["line"] for e in events if e["type"] == "command.output"]
    assert output == ["1000", "/workspace", "/workspace"]
    started = next(e for e in events if e["type"] == "workspace.started")
    workspace = await Workspace.objects.select_related("template").aget(pk=started["workspace_id"])
    assert (workspace.backend, workspace.template.name, workspace.memory_limit_mb) == ("bubblewrap", "sandbox", 512)
    assert session.workspace_id == workspace.pk
    created = await AuditEvent.objects.aget(action="workspace.created")
    assert created.session_id == str(session.pk) and created.data["template"]["name"] == "sandbox"
    command = await AuditEvent.objects.aget(action="workspace.command")
    assert command.workspace_id == str(workspace.pk) and command.outcome == "success"


async def test_a_command_before_any_workspace_is_refused_and_the_model_told_how_to_start_one(setup, simulator):
    org, user = setup
    simulator.enqueue(execute("ls"), {"text": "I will start one first."})

    session, _ = await start_and_run(user, org, "list files")

    told = simulator.requests[-1]["messages"][-1]
    assert told["role"] == "tool" and "call `start_workspace` first" in told["content"]
    assert "host-shell, sandbox" in told["content"]
    assert not await Workspace.objects.aexists()
    refused = await AuditEvent.objects.aget(action="tool.call")
    assert refused.outcome == "failure"


@pytest.mark.parametrize("name", ["retired", "docker", None])
async def test_an_unknown_or_disabled_template_is_refused_naming_the_ones_there_are(setup, simulator, name):
    org, user = setup
    simulator.enqueue(start(name), {"text": "ok"})

    await start_and_run(user, org, "start something")

    told = simulator.requests[-1]["messages"][-1]["content"]
    assert "Start one of the templates host-shell, sandbox" in told
    assert not await Workspace.objects.aexists()


async def test_a_template_disabled_during_the_turn_does_not_start(setup, simulator):
    org, user = setup
    simulator.enqueue({"delay": 1.0, **start("sandbox")}, {"text": "ok"})
    session = await sync_to_async(session_start)(user=user, organization=org, prompt="go")
    for _ in range(500):  # until the turn has read the templates and the model is thinking
        if simulator.requests:
            break
        await asyncio.sleep(0.02)
    await WorkspaceTemplate.objects.filter(name="sandbox").aupdate(is_enabled=False)
    await wait_for_turn(session)

    told = simulator.requests[-1]["messages"][-1]["content"]
    assert "The workspace could not start: No enabled template 'sandbox' in acme." in told
    assert not await Workspace.objects.aexists()


async def test_without_templates_the_agent_has_only_execute_and_the_default_workspace(plain, simulator):
    org, user = plain
    simulator.enqueue(execute("echo hi"), {"text": "ok"})

    session, events = await start_and_run(user, org, "say hi")

    assert [tool["function"]["name"] for tool in simulator.requests[0]["tools"]] == ["execute"]
    assert [e["line"] for e in events if e["type"] == "command.output"] == ["hi"]
    workspace = await Workspace.objects.aget(pk=session.workspace_id)
    assert workspace.backend == "local" and workspace.template_id is None


async def test_the_simulators_default_responder_starts_the_first_template_once_then_runs_commands(setup, simulator):
    org, user = setup

    session, events = await start_and_run(user, org, "run `echo first`")
    await sync_to_async(session_add_prompt)(user=user, session=session, prompt="$ echo second")
    await wait_for_turn(session)
    events = [e.as_wire() async for e in SessionEvent.objects.filter(session=session).order_by("seq")]

    assert [e["template"] for e in events if e["type"] == "workspace.started"] == ["host-shell"]
    assert [e["line"] for e in events if e["type"] == "command.output"] == ["first", "second"]
    answers = [e["text"] for e in events if e["type"] == "assistant.message" and e["text"].startswith("I ran")]
    assert [answer.split(".")[0] for answer in answers] == ["I ran `echo first`", "I ran `echo second`"]


async def test_with_every_template_disabled_the_agent_gets_no_unsandboxed_fallback(setup, simulator):
    org, user = setup
    await WorkspaceTemplate.objects.filter(organization=org).aupdate(is_enabled=False)
    simulator.enqueue(execute("id -u"), {"text": "ok"})

    await start_and_run(user, org, "who am I")

    told = simulator.requests[-1]["messages"][-1]
    assert told["role"] == "tool" and "No workspace template of acme is enabled" in told["content"]
    assert [tool["function"]["name"] for tool in simulator.requests[0]["tools"]] == ["execute"]
    assert not await Workspace.objects.aexists()


async def test_a_start_that_fails_is_audited_as_a_failed_workspace_creation(setup, simulator, settings):
    org, user = setup
    settings.WORKSPACE_BACKENDS = ["bubblewrap"]  # the operator withdrew the local backend after the template was made
    simulator.enqueue(start("host-shell"), {"text": "ok"})

    session, _ = await start_and_run(user, org, "start the host shell")

    failed = await AuditEvent.objects.aget(action="workspace.created")
    assert failed.outcome == "failure" and failed.session_id == str(session.pk)
    assert "Template 'host-shell' cannot start" in failed.error and failed.data == {"template": "host-shell"}
    assert "The workspace could not start" in simulator.requests[-1]["messages"][-1]["content"]


async def test_starting_another_template_stops_the_first_workspace_and_says_so_in_the_audit_log(setup, simulator):
    org, user = setup
    simulator.enqueue(start("sandbox"), start("host-shell"), execute("echo moved"), {"text": "ok"})

    session, events = await start_and_run(user, org, "switch")

    started = [e["workspace_id"] for e in events if e["type"] == "workspace.started"]
    first, second = [await Workspace.objects.aget(pk=pk) for pk in started]
    assert (first.status, second.status) == ("stopped", "ready")
    assert session.workspace_id == second.pk
    stopped = await AuditEvent.objects.aget(action="workspace.stopped")
    assert stopped.workspace_id == str(first.pk) and stopped.data == {
        "reason": "replaced",
        "replaced_by": str(second.pk),
    }
    command = await AuditEvent.objects.aget(action="workspace.command")
    assert command.workspace_id == str(second.pk)


async def test_each_model_call_records_the_tools_and_templates_it_was_offered(setup, simulator):
    org, user = setup
    simulator.enqueue({"text": "Nothing to run."})

    await start_and_run(user, org, "hello")

    call = await AuditEvent.objects.aget(action="model.call")
    assert call.data["tools_offered"] == ["start_workspace", "execute"]
    assert call.data["templates_offered"] == ["host-shell", "sandbox"]


async def test_after_its_workspace_was_stopped_as_idle_the_agent_is_told_to_start_another(setup, simulator):
    org, user = setup
    simulator.enqueue(start("sandbox"), execute("echo one"), {"text": "ok"})
    session, _ = await start_and_run(user, org, "first")
    await sync_to_async(workspace_stop)(
        actor=None, workspace=await Workspace.objects.aget(pk=session.workspace_id), reason="idle"
    )

    simulator.enqueue(execute("echo two"), start("sandbox"), execute("echo three"), {"text": "done"})
    await sync_to_async(session_add_prompt)(user=user, session=session, prompt="again")
    await wait_for_turn(session)

    told = [m["content"] for m in simulator.requests[-3]["messages"] if m["role"] == "tool"][-1]
    assert "No workspace is running: call `start_workspace` first" in told
    workspaces = [w async for w in Workspace.objects.order_by("created_at")]
    assert [w.status for w in workspaces] == ["stopped", "ready"]
    assert await AuditEvent.objects.filter(action="workspace.command", outcome="success").acount() == 2


async def test_without_templates_a_stopped_workspace_is_replaced_on_the_next_command(plain, simulator):
    org, user = plain
    simulator.enqueue(execute("echo one"), {"text": "ok"})
    session, _ = await start_and_run(user, org, "first")
    first = await Workspace.objects.aget(pk=session.workspace_id)
    await sync_to_async(workspace_stop)(actor=None, workspace=first, reason="idle")

    simulator.enqueue(execute("echo two"), {"text": "ok"})
    await sync_to_async(session_add_prompt)(user=user, session=session, prompt="again")
    await wait_for_turn(session)

    session = await AgentSession.objects.aget(pk=session.pk)
    assert session.workspace_id != first.pk
    assert (await Workspace.objects.aget(pk=session.workspace_id)).status == "ready"
    assert await AuditEvent.objects.filter(action="workspace.command", outcome="success").acount() == 2


async def test_a_workspace_stopped_during_the_turn_runs_nothing_more_and_the_agent_starts_another(setup, simulator):
    org, user = setup
    simulator.enqueue(start("sandbox"), {"delay": 1.0, **execute("echo late")}, start("sandbox"), execute("echo new"))
    simulator.enqueue({"text": "done"})
    session = await sync_to_async(session_start)(user=user, organization=org, prompt="go")
    for _ in range(500):  # until the workspace exists and the model is thinking about its command
        if await Workspace.objects.aexists():
            break
        await asyncio.sleep(0.02)
    first = await Workspace.objects.aget()
    await sync_to_async(workspace_stop)(actor=None, workspace=first, reason="idle")
    await wait_for_turn(session)

    commands = [e async for e in AuditEvent.objects.filter(action="workspace.command").order_by("sequence")]
    assert [e.workspace_id for e in commands if e.outcome == "success"] == [
        str((await Workspace.objects.exclude(pk=first.pk).aget()).pk)
    ]
    told = [m["content"] for m in simulator.requests[2]["messages"] if m["role"] == "tool"][-1]
    assert "is stopped" in told
