"""Workspace writes: create a workspace and run a command in it, each audited in the same transaction."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Callable
from typing import Any, TypeVar

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import close_old_connections, transaction
from django.utils import timezone

import audit
from audit.models import Outcome
from audit.services import Actor, AgentActor, SystemActor
from organizations.models import Organization
from organizations.permissions import has_permission, require_permission, roles_for
from workspaces.backends import ExecutionError, ExecutionResult, OutputCallback, get_backend
from workspaces.models import CommandRun, Workspace, WorkspaceStatus, WorkspaceTemplate
from workspaces.services.templates import LIMITS, backend_refusal

NAME_MAX_LENGTH = Workspace._meta.get_field("name").max_length

T = TypeVar("T")


async def _in_db_thread(function: Callable[..., T], **kwargs: Any) -> T:
    """Run a sync database function from async code, closing stale connections around it (as Channels does)."""

    def call() -> T:
        close_old_connections()
        try:
            return function(**kwargs)
        finally:
            close_old_connections()

    return await sync_to_async(call)()


def _person(actor: Actor) -> AbstractBaseUser | None:
    """The user behind an actor (the user an agent acts for); None for Airlock itself."""
    if actor is None or isinstance(actor, SystemActor):
        return None
    if isinstance(actor, AgentActor):
        return actor.user
    return actor


@transaction.atomic
def workspace_create(
    *,
    actor: Actor,
    organization: Organization,
    owner: AbstractBaseUser,
    name: str,
    template: WorkspaceTemplate | None = None,
) -> Workspace:
    """Create a workspace for `owner` (who must be allowed to run agents) with its own directory.

    From a template: its backend, with its limits copied in; without one: the deployment's default backend
    (`WORKSPACE_DEFAULT_BACKEND`) and default limits.
    """
    name = (name or "").strip()
    template_name = template.name if template is not None else ""
    if not name:
        raise ValidationError({"name": "Give the workspace a name."})
    if len(name) > NAME_MAX_LENGTH:
        raise ValidationError({"name": f"Use at most {NAME_MAX_LENGTH} characters for the workspace name."})
    if not has_permission(owner, organization, "session.create"):
        raise PermissionDenied(
            f"{owner.get_username()} may not run agents in {organization.slug}, so cannot own a workspace there: "
            f"grant one of the roles {sorted(str(role) for role in roles_for('session.create'))} first."
        )
    person = _person(actor)
    if person is not None and person.pk != owner.pk:
        require_permission(person, organization, "org.manage")

    if template is not None:
        # As stored now: the caller's copy may predate an owner disabling or changing it.
        current = WorkspaceTemplate.objects.filter(pk=template.pk, organization_id=organization.pk, is_enabled=True)
        template = current.first()
        if template is None:
            raise ValidationError({"template": f"No enabled template {template_name!r} in {organization.slug}."})
        refusal = backend_refusal(template.backend)
        if refusal:
            raise ValidationError({"template": f"Template {template.name!r} cannot start: {refusal}"})
    backend = get_backend(template.backend if template is not None else settings.WORKSPACE_DEFAULT_BACKEND)
    workspace = Workspace(organization=organization, owner=owner, name=name, backend=backend.name, template=template)
    if template is not None:
        for field in LIMITS:
            setattr(workspace, field, getattr(template, field))
    workspace.directory = backend.directory_for(workspace)
    workspace.save(force_insert=True)
    try:
        # Local and fast, so done here: if it fails, the row rolls back with the transaction.
        backend.prepare(workspace)
    except OSError as exc:
        raise ExecutionError(
            f"Could not create the directory of workspace {name!r} ({workspace.directory}): {exc.strerror or exc}."
        ) from exc
    audit.record(
        action="workspace.created",
        actor=actor,
        organization=organization,
        target=workspace,
        workspace_id=workspace.id,
        data={
            "name": name,
            "backend": workspace.backend,
            "directory": workspace.directory,
            "owner_id": owner.pk,
            "template": {"id": template.pk, "name": template.name} if template is not None else None,
            **{field: getattr(workspace, field) for field in LIMITS},
        },
    )
    return workspace


def _validated_command(command: str) -> str:
    if not isinstance(command, str) or not command.strip():
        raise ValidationError({"command": "Give a command to run: it is empty."})
    if "\x00" in command:
        raise ValidationError({"command": "Remove the NUL character from the command: a shell cannot run it."})
    return command


def _may_run_commands(person: AbstractBaseUser, workspace: Workspace) -> bool:
    """The workspace's owner while allowed to run agents, or an organization owner."""
    organization = workspace.organization
    if person.pk == workspace.owner_id and has_permission(person, organization, "session.create"):
        return True
    return has_permission(person, organization, "org.manage")


@transaction.atomic
def _command_record_unfinished(
    *, workspace: Workspace, command: str, actor: Actor, outcome: str, error: str, data: dict[str, Any]
) -> None:
    """Audit a command that did not run to the end: refused (denied) or not runnable by the backend (failure)."""
    audit.record(
        action="workspace.command",
        actor=actor,
        organization=workspace.organization,
        target=workspace,
        workspace_id=workspace.id,
        outcome=outcome,
        error=error,
        data={"command": command, **data},
    )


def _command_deny(*, workspace: Workspace, command: str, actor: Actor, directory: str, message: str) -> None:
    """Audit a refused command (outcome denied) in its own transaction, then refuse it."""
    _command_record_unfinished(
        workspace=workspace,
        command=command,
        actor=actor,
        outcome=Outcome.DENIED,
        error=message,
        data={"working_directory": directory},
    )
    raise PermissionDenied(message)


def _command_authorize(*, workspace: Workspace, command: str, actor: Actor, directory: str) -> None:
    """Refuse (and audit the refusal of) a command the actor may not run, or one in a workspace whose backend the
    operator withdrew; refuse a stopped workspace."""
    person = _person(actor)
    refusal = ""
    if person is not None and not _may_run_commands(person, workspace):
        refusal = f"{person.get_username()} may not run commands in workspace {workspace.name!r}."
    elif workspace.backend not in {*settings.WORKSPACE_BACKENDS, settings.WORKSPACE_DEFAULT_BACKEND}:
        # Started before the operator withdrew its backend (e.g. `local`, not a sandbox): it runs nothing more.
        refusal = (
            f"Workspace {workspace.name!r} runs on the {workspace.backend} backend, which this deployment no longer "
            "allows (AIRLOCK_WORKSPACE_BACKENDS): start a new workspace."
        )
    if refusal:
        _command_deny(workspace=workspace, command=command, actor=actor, directory=directory, message=refusal)
    # As stored now, not as the caller loaded it (it may have stopped since); the start counts as use at once.
    touched = Workspace.objects.filter(pk=workspace.pk, status=WorkspaceStatus.READY).update(
        last_used_at=timezone.now()
    )
    if not touched:
        status = Workspace.objects.filter(pk=workspace.pk).values_list("status", flat=True).first() or "gone"
        workspace.status = status
        raise ValidationError(f"Workspace {workspace.name!r} is {status}: run the command in a ready one.")


def _command_failure(*, exc: BaseException) -> str:
    if isinstance(exc, ExecutionError):
        return str(exc)
    if isinstance(exc, asyncio.CancelledError):
        return "The command was cancelled before it finished; its processes were stopped."
    return f"The command was stopped because its output could not be handled: {type(exc).__name__}: {exc}"


@transaction.atomic
def _command_run_save(
    *,
    workspace: Workspace,
    command: str,
    actor: Actor,
    directory: str,
    result: ExecutionResult,
    started_at: dt.datetime,
    timeout: float,
) -> CommandRun:
    """Store the run and its audit event together."""
    run = CommandRun.objects.create(
        organization_id=workspace.organization_id,
        workspace=workspace,
        command=command,
        working_directory=directory,
        exit_code=result.exit_code,
        timed_out=result.timed_out,
        output_truncated=result.output_truncated,
        output_bytes=result.output_bytes,
        output_sha256=result.output_sha256,
        duration_ms=result.duration_ms,
        started_at=started_at,
    )
    if result.timed_out:
        error = f"The command ran longer than {timeout:g} s and was stopped."
    elif result.exit_code != 0:
        error = f"The command exited with status {result.exit_code}."
    else:
        error = ""
    data: dict[str, Any] = {
        "command": command,
        "working_directory": directory,
        "exit_code": result.exit_code,
        "timed_out": result.timed_out,
        "timeout_seconds": timeout,
        "duration_ms": result.duration_ms,
        "output_bytes": result.output_bytes,
        "output_sha256": result.output_sha256,
        "output_truncated": result.output_truncated,
        "output_head": result.output_head,
        "output_tail": result.output_tail,
        "command_run_id": str(run.id),
    }
    audit.record(
        action="workspace.command",
        actor=actor,
        organization=workspace.organization,
        target=workspace,
        workspace_id=workspace.id,
        outcome=Outcome.SUCCESS if result.succeeded else Outcome.FAILURE,
        error=error,
        data=data,
    )
    return run


async def command_execute(
    *,
    workspace: Workspace,
    command: str,
    actor: Actor,
    on_line: OutputCallback,
    timeout: float | None = None,  # noqa: ASYNC109 - the command's limit, enforced by the backend
    output_cap: int | None = None,
) -> CommandRun:
    """Run one shell command in a workspace, streaming output lines to `on_line`; store and audit the run.

    A command that exits non-zero or times out is returned (outcome "failure" in the audit trail);
    one the backend cannot run (e.g. the directory vanished) is audited as a failure and raises
    ExecutionError. Empty commands raise ValidationError; actors without access raise PermissionDenied.
    The returned run carries the backend's full result (captured output included) in `run.result`.
    """
    command = _validated_command(command)
    if timeout is None:
        timeout = workspace.command_timeout_seconds or settings.WORKSPACE_COMMAND_TIMEOUT_SECONDS
    if output_cap is None:
        output_cap = workspace.output_cap_bytes or settings.WORKSPACE_OUTPUT_CAP_BYTES
    timeout, output_cap = float(timeout), int(output_cap)
    if timeout <= 0:
        raise ValidationError({"timeout": "Use a timeout of more than 0 seconds."})
    if output_cap <= 0:
        raise ValidationError({"output_cap": "Use an output cap of at least 1 byte."})
    backend = get_backend(workspace.backend)
    directory = workspace.directory or backend.directory_for(workspace)
    await _in_db_thread(_command_authorize, workspace=workspace, command=command, actor=actor, directory=directory)

    started_at = timezone.now()
    clock = time.monotonic()
    try:
        result = await backend.run(
            workspace=workspace, command=command, timeout=timeout, output_cap=output_cap, on_line=on_line
        )
    except (Exception, asyncio.CancelledError) as exc:
        await _in_db_thread(
            _command_record_unfinished,
            workspace=workspace,
            command=command,
            actor=actor,
            outcome=Outcome.FAILURE,
            error=_command_failure(exc=exc),
            data={"working_directory": directory, "duration_ms": int((time.monotonic() - clock) * 1000)},
        )
        raise
    run = await _in_db_thread(
        _command_run_save,
        workspace=workspace,
        command=command,
        actor=actor,
        directory=directory,
        result=result,
        started_at=started_at,
        timeout=timeout,
    )
    run.result = result
    return run
