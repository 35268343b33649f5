"""Running a command through the service stores the run and writes exactly one audit event."""

from __future__ import annotations

import asyncio
import shutil

import pytest
from asgiref.sync import sync_to_async
from django.core.exceptions import PermissionDenied, ValidationError

from audit.chain import chain_hash, event_document
from audit.models import AuditEvent
from audit.services import AgentActor
from tests.workspaces.conftest import Lines, child_pid, wait_until_gone
from workspaces.backends import ExecutionError
from workspaces.models import CommandRun
from workspaces.services import command_execute, workspace_create

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("close_async_orm_connections")]


async def command_events(workspace) -> list[AuditEvent]:
    """The workspace.command events of a workspace, oldest first."""
    query = AuditEvent.objects.filter(action="workspace.command", workspace_id=str(workspace.id)).order_by("sequence")
    return [event async for event in query]


async def test_each_command_writes_one_audit_event_with_command_exit_code_and_duration(workspace, owner, lines):
    run = await command_execute(workspace=workspace, command="echo hello", actor=owner, on_line=lines)

    assert lines.lines == ["hello"]
    assert run.exit_code == 0
    assert run.result.output == "hello\n"
    [event] = await command_events(workspace)
    assert event.outcome == "success"
    assert event.actor_type == "user"
    assert event.actor_id == str(owner.pk)
    assert event.target_id == str(workspace.id)
    assert event.data["command"] == "echo hello"
    assert event.data["exit_code"] == 0
    assert event.data["timed_out"] is False
    assert event.data["working_directory"] == workspace.directory
    assert event.data["duration_ms"] == run.duration_ms
    assert event.data["output_bytes"] == 6
    assert event.data["output_head"] == "hello\n"
    assert event.data["output_tail"] == "hello\n"
    assert event.data["output_sha256"] == run.output_sha256
    assert event.data["command_run_id"] == str(run.id)
    assert await CommandRun.objects.filter(workspace=workspace).acount() == 1


async def test_second_command_adds_exactly_one_more_event(workspace, owner, lines):
    await command_execute(workspace=workspace, command="true", actor=owner, on_line=lines)
    await command_execute(workspace=workspace, command="echo again", actor=owner, on_line=lines)

    events = await command_events(workspace)
    assert [event.data["command"] for event in events] == ["true", "echo again"]


async def test_non_zero_exit_is_kept_and_audited_as_failure(workspace, owner, lines):
    run = await command_execute(workspace=workspace, command="ls /no/such/path", actor=owner, on_line=lines)

    assert run.exit_code not in (0, None)
    [event] = await command_events(workspace)
    assert event.outcome == "failure"
    assert event.data["exit_code"] == run.exit_code
    assert f"exited with status {run.exit_code}" in event.error
    assert "No such file" in event.data["output_head"]


async def test_command_past_the_timeout_is_killed_and_audited_as_timed_out(workspace, owner, lines):
    run = await command_execute(
        workspace=workspace, command="sleep 30 & echo child=$!; wait", actor=owner, on_line=lines, timeout=1
    )

    assert run.timed_out
    assert wait_until_gone(child_pid(lines.lines))
    [event] = await command_events(workspace)
    assert event.outcome == "failure"
    assert event.data["timed_out"] is True
    assert "longer than 1 s" in event.error


async def test_agent_actor_is_recorded_with_its_session(workspace, owner, lines):
    actor = AgentActor(user=owner, session_id="3f6d1c1e-session")

    await command_execute(workspace=workspace, command="echo hi", actor=actor, on_line=lines)

    [event] = await command_events(workspace)
    assert event.actor_type == "agent"
    assert event.session_id == "3f6d1c1e-session"


@pytest.mark.parametrize("command", ["", "   ", "\n\t"])
async def test_empty_command_is_refused_without_running_or_auditing(workspace, owner, lines, command):
    with pytest.raises(ValidationError, match="Give a command to run"):
        await command_execute(workspace=workspace, command=command, actor=owner, on_line=lines)

    assert await command_events(workspace) == []
    assert await CommandRun.objects.acount() == 0


async def test_vanished_directory_is_audited_as_failure_and_raises(workspace, owner, lines):
    shutil.rmtree(workspace.directory)

    with pytest.raises(ExecutionError, match="is missing"):
        await command_execute(workspace=workspace, command="echo hi", actor=owner, on_line=lines)

    [event] = await command_events(workspace)
    assert event.outcome == "failure"
    assert event.data["command"] == "echo hi"
    assert "is missing" in event.error
    assert await CommandRun.objects.acount() == 0


async def test_cancelled_command_is_stopped_and_audited(workspace, owner, lines):
    task = asyncio.create_task(
        command_execute(workspace=workspace, command="sleep 30 & echo child=$!; wait", actor=owner, on_line=lines)
    )
    await asyncio.wait_for(lines.seen.wait(), timeout=5)

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert wait_until_gone(child_pid(lines.lines))
    [event] = await command_events(workspace)
    assert event.outcome == "failure"
    assert "cancelled" in event.error


async def test_outsider_may_not_run_commands_and_the_refusal_is_audited(workspace, outsider, lines):
    with pytest.raises(PermissionDenied, match="may not run commands"):
        await command_execute(workspace=workspace, command="touch pwned", actor=outsider, on_line=lines)

    assert lines.lines == []
    [event] = await command_events(workspace)
    assert event.outcome == "denied"
    assert event.data["command"] == "touch pwned"


async def test_file_written_in_one_workspace_is_not_visible_in_another(org, owner, lines):
    first = await sync_to_async(workspace_create)(actor=owner, organization=org, owner=owner, name="first")
    second = await sync_to_async(workspace_create)(actor=owner, organization=org, owner=owner, name="second")

    await command_execute(workspace=first, command="echo private > note.txt", actor=owner, on_line=Lines())
    listing, reading = Lines(), Lines()
    await command_execute(workspace=second, command="ls -A", actor=owner, on_line=listing)
    run = await command_execute(workspace=second, command="cat note.txt", actor=owner, on_line=reading)

    assert first.directory != second.directory
    assert listing.lines == []
    assert run.exit_code != 0
    assert "private" not in " ".join(reading.lines)


async def test_output_cap_from_settings_applies_when_not_given(workspace, owner, lines, settings):
    settings.WORKSPACE_OUTPUT_CAP_BYTES = 100

    run = await command_execute(workspace=workspace, command="yes | head -n 1000", actor=owner, on_line=lines)

    assert run.output_truncated
    assert run.output_bytes == 2000
    assert lines.lines[-1] == "[output truncated at 100 bytes]"
    [event] = await command_events(workspace)
    assert event.data["output_truncated"] is True
    assert event.data["output_bytes"] == 2000


async def test_binary_output_is_stored_in_the_audit_trail_and_the_chain_verifies(workspace, owner, lines):
    await command_execute(workspace=workspace, command="printf 'a\\000b\\377\\n'", actor=owner, on_line=lines)
    await command_execute(workspace=workspace, command="echo 'quotes \" and unicode ✓'", actor=owner, on_line=lines)

    events = [event async for event in AuditEvent.objects.filter(organization_id=workspace.organization_id)]
    assert [event.action for event in events][-2:] == ["workspace.command", "workspace.command"]
    for previous, event in zip(events, events[1:], strict=False):
        assert event.prev_hash == previous.hash
    for event in events:
        assert event.hash == chain_hash(event.prev_hash, event_document(event))
    assert events[-2].data["output_head"] == "a\ufffdb\ufffd\n"


async def test_a_workspace_whose_backend_the_operator_withdrew_runs_nothing_more(workspace, owner, lines, settings):
    assert workspace.backend == "local"  # started when the deployment's default was the local backend
    settings.WORKSPACE_DEFAULT_BACKEND = "bubblewrap"
    settings.WORKSPACE_BACKENDS = ["bubblewrap"]

    with pytest.raises(PermissionDenied, match="no longer allows"):
        await command_execute(workspace=workspace, command="id -u", actor=owner, on_line=lines)

    refused = await AuditEvent.objects.aget(action="workspace.command")
    assert refused.outcome == "denied" and "start a new workspace" in refused.error
    assert lines.lines == []


async def test_a_workspace_stopped_after_it_was_loaded_runs_nothing(workspace, owner, lines):
    from workspaces.models import Workspace

    await Workspace.objects.filter(pk=workspace.pk).aupdate(status="stopped")  # the caller's copy still says ready

    with pytest.raises(ValidationError, match="is stopped"):
        await command_execute(workspace=workspace, command="echo never", actor=owner, on_line=lines)

    assert lines.lines == []
