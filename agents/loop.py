"""The agent loop: stream the model's answer, run the tools it asks for, feed results back, repeat."""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import close_old_connections, transaction

import audit
from agents.models import AgentSession, Message, MessageRole, SessionStatus
from agents.services import message_append, session_set_status, session_workspace_create
from agents.stream import SessionStream, next_seq
from audit.chain import canonical_json
from audit.services import AgentActor
from providers.clients import (
    CallSummary,
    ModelCallError,
    ReasoningDelta,
    ReasoningState,
    TextDelta,
    ToolCallRequest,
    ToolSpec,
    TurnEnd,
    Usage,
    stream_turn,
)
from providers.usage import model_call_record
from workspaces.backends import ExecutionError
from workspaces.models import CommandRun, Workspace, WorkspaceStatus, WorkspaceTemplate
from workspaces.selectors import organization_templates
from workspaces.services import command_execute

logger = logging.getLogger(__name__)

SYSTEM_PROMPT = (
    "You are Airlock's coding agent, working for a member of an organization that keeps its code on its own "
    "servers. Answer questions directly. When the work needs code or a shell, call the `execute` tool: it runs "
    "one shell command in your private workspace directory and returns its output and exit code. Keep commands "
    "non-interactive. Everything you do is recorded in an audit log."
)

EXECUTE_TOOL = ToolSpec(
    name="execute",
    description="Run a shell command in the session's workspace and return its output and exit code.",
    parameters={
        "type": "object",
        "properties": {"command": {"type": "string", "description": "The shell command to run."}},
        "required": ["command"],
    },
)

START_WORKSPACE_TOOL_NAME = "start_workspace"


def _start_workspace_tool(templates: list[WorkspaceTemplate]) -> ToolSpec:
    """The tool that starts a workspace from one of the organization's templates (listed in the system prompt)."""
    return ToolSpec(
        name=START_WORKSPACE_TOOL_NAME,
        description=(
            "Start the workspace your commands run in, from one of the organization's workspace templates: pick "
            "the one whose description fits the work. Starting another template later moves your commands there."
        ),
        parameters={
            "type": "object",
            "properties": {
                "template": {
                    "type": "string",
                    "enum": [template.name for template in templates],
                    "description": "The name of the template to start.",
                }
            },
            "required": ["template"],
        },
    )


def system_prompt(templates: list[WorkspaceTemplate]) -> str:
    """The system prompt of a turn: the base prompt, plus the templates the agent may start, if any."""
    if not templates:
        return SYSTEM_PROMPT
    listing = "\n".join(f"- {template.name}: {template.description}" for template in templates)
    return (
        f"{SYSTEM_PROMPT} Before your first command, call `{START_WORKSPACE_TOOL_NAME}` with the template that fits "
        f"the work. The organization's workspace templates:\n{listing}"
    )


# How much of a command's output goes back to the model (the rest is counted, hashed and audited).
TOOL_RESULT_CHARS = 16_000


@dataclass
class StepResult:
    """What one model call produced."""

    text: str = ""
    reasoning: str = ""
    reasoning_state: ReasoningState | None = None
    tool_calls: list[ToolCallRequest] = field(default_factory=list)
    usage: Usage | None = None
    summary: CallSummary | None = None
    stop_reason: str = ""
    request_digest: str = ""
    # What the model was offered: the tools, and the workspace templates listed in the system prompt.
    tools_offered: list[str] = field(default_factory=list)
    templates_offered: list[str] = field(default_factory=list)


def _load_session(session_id: uuid.UUID) -> AgentSession:
    return AgentSession.objects.select_related(
        "organization", "created_by", "model__provider", "model__fallback__provider", "workspace"
    ).get(pk=session_id)


def _conversation(session_id: uuid.UUID) -> list[dict[str, Any]]:
    messages = []
    for message in Message.objects.filter(session_id=session_id).order_by("position"):
        item: dict[str, Any] = {"role": message.role, "content": message.content}
        if message.tool_calls:
            item["tool_calls"] = message.tool_calls
        if message.reasoning:
            item["reasoning"] = message.reasoning
        if message.tool_call_id:
            item["tool_call_id"] = message.tool_call_id
        messages.append(item)
    return messages


def _record_model_call(
    *,
    session: AgentSession,
    actor: AgentActor,
    result: StepResult,
    latency_ms: int,
    step: int,
    error: ModelCallError | None = None,
) -> None:
    """Store the call's usage and cost (ModelCall) and audit it as `model.call`, in one transaction."""
    model = session.model
    usage = result.usage
    with transaction.atomic():
        call = model_call_record(
            model=model,
            user_id=session.created_by_id,
            session_id=str(session.pk),
            status="failure" if error else "success",
            usage=usage,
            latency_ms=latency_ms,
            summary=result.summary,
            stop_reason=result.stop_reason,
            error=str(error or ""),
        )
        data = {
            "provider": call.provider_name,
            "provider_kind": model.provider.kind,
            "model": call.model_identifier,
            "fell_back_from": call.fell_back_from,
            "attempts": error.attempts if error else call.attempts,
            "step": step,
            "latency_ms": latency_ms,
            "time_to_first_token_ms": call.time_to_first_token_ms,
            "input_tokens": usage.input_tokens if usage else None,
            "output_tokens": usage.output_tokens if usage else None,
            "cache_read_tokens": usage.cache_read_tokens if usage else None,
            "cache_write_tokens": usage.cache_write_tokens if usage else None,
            "cost": str(call.cost),
            "stop_reason": result.stop_reason,
            "request_messages_sha256": result.request_digest,
            "response_text": result.text,
            "reasoning_text": result.reasoning,
            "tool_calls": [{"id": c.id, "name": c.name, "arguments": c.arguments} for c in result.tool_calls],
            "tools_offered": result.tools_offered,
            "templates_offered": result.templates_offered,
        }
        audit.record(
            action="model.call",
            actor=actor,
            organization=session.organization,
            target=model,
            session_id=session.pk,
            model_call_id=call.pk,
            outcome="failure" if error else "success",
            error=str(error or ""),
            data=data,
        )


class AgentTurn:
    """One turn of a session: from the queued prompt until the model stops asking for tools."""

    def __init__(
        self, session: AgentSession, stream: SessionStream, templates: list[WorkspaceTemplate] | None = None
    ) -> None:
        self.session = session
        self.stream = stream
        self.actor = AgentActor(user=session.created_by, session_id=str(session.pk))
        # Enabled templates are offered; an organization with only disabled ones gets no default workspace.
        self.templates_configured = bool(templates)
        self.templates = [template for template in templates or [] if template.is_enabled]
        self.system = system_prompt(self.templates)
        self.tools = [_start_workspace_tool(self.templates), EXECUTE_TOOL] if self.templates else [EXECUTE_TOOL]

    async def run(self) -> None:
        """Loop model call -> tools until the model ends its turn, the step limit, or an error."""
        await self._set_status(SessionStatus.RUNNING)
        for step in range(1, settings.AGENT_MAX_STEPS + 1):
            messages = await sync_to_async(_conversation)(self.session.pk)
            started = time.monotonic()
            result = StepResult()
            try:
                await self._call_model(step, messages, result)
            except ModelCallError as exc:
                latency_ms = int((time.monotonic() - started) * 1000)
                await self.stream.flush()
                await sync_to_async(_record_model_call)(
                    session=self.session, actor=self.actor, result=result, latency_ms=latency_ms, step=step, error=exc
                )
                await self._fail(f"The model call failed: {exc}")
                return
            latency_ms = int((time.monotonic() - started) * 1000)
            await self.stream.flush()
            await sync_to_async(_record_model_call)(
                session=self.session, actor=self.actor, result=result, latency_ms=latency_ms, step=step
            )
            await sync_to_async(message_append)(
                session_id=self.session.pk,
                role=MessageRole.ASSISTANT,
                content=result.text,
                tool_calls=[{"id": c.id, "name": c.name, "arguments": c.arguments} for c in result.tool_calls],
                reasoning=result.reasoning_state.as_message_field() if result.reasoning_state else {},
            )
            await self.stream.emit("assistant.message", text=result.text, step=step)
            if not result.tool_calls:
                await self._set_status(SessionStatus.IDLE)
                return
            for call in result.tool_calls:
                output = await self._run_tool(call)
                await sync_to_async(message_append)(
                    session_id=self.session.pk, role=MessageRole.TOOL, content=output, tool_call_id=call.id
                )
        await self._fail(f"The agent stopped after {settings.AGENT_MAX_STEPS} steps without finishing.")

    async def _call_model(self, step: int, messages: list[dict[str, Any]], result: StepResult) -> None:
        correlation = {"session_id": str(self.session.pk), "user_id": str(self.session.created_by_id)}
        result.request_digest = hashlib.sha256(canonical_json([self.system, messages]).encode()).hexdigest()
        result.tools_offered = [tool.name for tool in self.tools]
        result.templates_offered = [template.name for template in self.templates]
        async for event in stream_turn(
            model=self.session.model,
            system=self.system,
            messages=messages,
            tools=self.tools,
            correlation=correlation,
        ):
            if isinstance(event, TextDelta):
                result.text += event.text
                await self.stream.emit("assistant.delta", text=event.text, step=step)
            elif isinstance(event, ReasoningDelta):
                result.reasoning += event.text
                await self.stream.emit("assistant.reasoning", text=event.text, step=step)
            elif isinstance(event, CallSummary):
                result.summary = event
            elif isinstance(event, ToolCallRequest):
                result.tool_calls.append(event)
            elif isinstance(event, Usage):
                result.usage = event
            elif isinstance(event, ReasoningState):
                result.reasoning_state = event
            elif isinstance(event, TurnEnd):
                result.stop_reason = event.stop_reason

    async def _run_tool(self, call: ToolCallRequest) -> str:
        await self.stream.emit("tool.call", id=call.id, name=call.name, arguments=call.arguments)
        arguments = call.arguments if isinstance(call.arguments, dict) else {}
        command = arguments.get("command")
        names = [tool.name for tool in self.tools]
        error = ""
        if call.name not in names:
            error = f"Unknown tool {call.name!r}: use one of {', '.join(f'`{name}`' for name in names)}."
        elif call.name == START_WORKSPACE_TOOL_NAME:
            if self._template(arguments.get("template")) is None:
                error = f"Start one of the templates {', '.join(t.name for t in self.templates)}: pass its name."
        elif not isinstance(command, str) or not command.strip():
            error = "The execute tool needs a non-empty string argument `command`."
        elif not self._workspace_ready() and self.templates:
            error = (
                f"No workspace is running: call `{START_WORKSPACE_TOOL_NAME}` first with one of the templates "
                f"{', '.join(t.name for t in self.templates)}."
            )
        elif not self._workspace_ready() and self.templates_configured:
            error = (
                f"No workspace template of {self.session.organization.slug} is enabled, so no command can run: an "
                "owner or template admin must enable one first."
            )
        await sync_to_async(self._audit_tool_call)(call, error)
        if error:
            await self.stream.emit("error", message=error, tool_call_id=call.id)
            return error
        if call.name == START_WORKSPACE_TOOL_NAME:
            return await self._start_workspace(call, self._template(arguments["template"]))
        await self.stream.emit("command.started", id=call.id, command=command)

        lines: list[str] = []

        async def on_line(line: str) -> None:
            lines.append(line)
            await self.stream.emit("command.output", id=call.id, line=line)

        try:
            workspace = await self._workspace()
            run = await command_execute(workspace=workspace, command=command, actor=self.actor, on_line=on_line)
        except (ExecutionError, PermissionDenied, ValidationError) as exc:
            # Already audited by command_execute; the model hears why, and may try something else. A workspace
            # that stopped meanwhile is seen as stopped from now on: the next command gets (or asks for) a new one.
            if self.session.workspace is not None:
                await sync_to_async(self.session.workspace.refresh_from_db)(fields=["status"])
            message = f"The command could not run: {_reason(exc)}"
            await self.stream.emit(
                "command.finished",
                id=call.id,
                exit_code=None,
                duration_ms=0,
                timed_out=False,
                truncated=False,
                error=message,
            )
            return message
        await self.stream.emit(
            "command.finished",
            id=call.id,
            exit_code=run.exit_code,
            duration_ms=run.duration_ms,
            timed_out=run.timed_out,
            truncated=run.output_truncated,
        )
        return _tool_result_text(run, lines)

    def _template(self, name: object) -> WorkspaceTemplate | None:
        return next((template for template in self.templates if template.name == name), None)

    async def _start_workspace(self, call: ToolCallRequest, template: WorkspaceTemplate | None) -> str:
        try:
            workspace = await sync_to_async(session_workspace_create)(
                session=self.session, actor=self.actor, template=template
            )
        except (ExecutionError, PermissionDenied, ValidationError) as exc:
            message = f"The workspace could not start: {_reason(exc)}"
            await self.stream.emit("error", message=message, tool_call_id=call.id)
            return message
        self.session.workspace = workspace
        await self.stream.emit(
            "workspace.started",
            id=call.id,
            workspace_id=str(workspace.pk),
            template=template.name if template else None,
        )
        return (
            f"Workspace {workspace.name!r} started from template {template.name!r} ({workspace.backend}); "
            "your commands run there, in its working directory."
        )

    def _audit_tool_call(self, call: ToolCallRequest, error: str) -> None:
        with transaction.atomic():
            audit.record(
                action="tool.call",
                actor=self.actor,
                organization=self.session.organization,
                target=self.session,
                session_id=self.session.pk,
                outcome="failure" if error else "success",
                error=error,
                data={"tool_call_id": call.id, "name": call.name, "arguments": call.arguments},
            )

    def _workspace_ready(self) -> bool:
        """Whether the session has a workspace commands may run in (not one stopped, e.g. as idle, since)."""
        return self.session.workspace is not None and self.session.workspace.status == WorkspaceStatus.READY

    async def _workspace(self) -> Workspace:
        if not self._workspace_ready():
            create = sync_to_async(session_workspace_create)
            self.session.workspace = await create(session=self.session, actor=self.actor)
        return self.session.workspace

    async def _set_status(self, status: str, error: str = "") -> None:
        await sync_to_async(session_set_status)(session_id=self.session.pk, status=status, error=error)
        payload = {"status": status, "error": error} if error else {"status": status}
        await self.stream.emit("status", **payload)

    async def _fail(self, message: str) -> None:
        await self.stream.emit("error", message=message)
        await self._set_status(SessionStatus.FAILED, message)
        await sync_to_async(self._audit_failure)(message)

    def _audit_failure(self, message: str) -> None:
        with transaction.atomic():
            audit.record(
                action="session.failed",
                actor=self.actor,
                organization=self.session.organization,
                target=self.session,
                session_id=self.session.pk,
                outcome="failure",
                error=message,
            )


def _reason(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(exc.messages)
    return str(exc) or type(exc).__name__


def _tool_result_text(run: CommandRun, lines: list[str]) -> str:
    output = "\n".join(lines)
    if len(output) > TOOL_RESULT_CHARS:
        half = TOOL_RESULT_CHARS // 2
        output = output[:half] + "\n[... output shortened ...]\n" + output[-half:]
    status = "timed out" if run.timed_out else f"exit code {run.exit_code}"
    return f"{output}\n[{status}, {run.duration_ms} ms]"


async def run_turn(session_id: uuid.UUID) -> None:
    """Run one queued turn of a session to the end; never raises (failures land in the stream)."""
    session = await sync_to_async(_load_session)(session_id)
    templates = await sync_to_async(organization_templates)(organization=session.organization)
    stream = SessionStream(session.pk, await sync_to_async(next_seq)(session.pk))
    turn = AgentTurn(session, stream, templates)
    try:
        await turn.run()
    except Exception as exc:
        logger.exception("agent turn of session %s failed", session_id)
        await turn._fail(f"Internal error while running the agent ({type(exc).__name__}); see the server log.")
    finally:
        await stream.close()
        # As at the end of a request: a worker or thread does not keep the turn's connection open.
        await sync_to_async(close_old_connections)()
