"""Writes of the agents app: starting a session, adding a prompt, the state changes of a turn."""

from __future__ import annotations

import uuid
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.db.models import Max

import audit
from agents.models import AgentSession, Message, MessageRole, SessionEvent, SessionStatus
from agents.stream import next_seq, publish_now
from audit.models import Outcome
from audit.services import AgentActor
from organizations.models import Organization
from organizations.permissions import require_permission
from providers.models import LanguageModel
from providers.selectors import models_for_user
from workspaces.backends import ExecutionError
from workspaces.models import Workspace, WorkspaceTemplate
from workspaces.services import workspace_create, workspace_stop

MAX_PROMPT_CHARS = 100_000


def _clean_prompt(prompt: str) -> str:
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValidationError({"prompt": "Write a prompt: it cannot be empty."})
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ValidationError({"prompt": f"The prompt has {len(prompt)} characters; the limit is {MAX_PROMPT_CHARS}."})
    return prompt


def _resolve_model(*, user: AbstractBaseUser, organization: Organization, model_id: int | None) -> LanguageModel:
    usable = models_for_user(user=user, organization=organization)
    if model_id is None:
        model = usable.filter(is_default=True).first()
        if model is None:
            raise ValidationError({"model": "This organization has no default model: pick one, or ask an owner."})
        return model
    model = usable.filter(pk=model_id).first()
    if model is None:
        raise ValidationError({"model": f"No model with id {model_id} is available to you in {organization.slug}."})
    return model


def _start_turn_after_commit(session: AgentSession, events: list[SessionEvent]) -> None:
    from agents.runners import start_turn

    wire = [event.as_wire() for event in events]
    session_id = session.pk
    transaction.on_commit(lambda: publish_now(session_id, wire))
    transaction.on_commit(lambda: start_turn(session_id))


@transaction.atomic
def session_start(
    *, user: AbstractBaseUser, organization: Organization, prompt: str, model_id: int | None = None
) -> AgentSession:
    """Open a session with a first prompt and queue the agent's turn; audits the prompt in full."""
    require_permission(user, organization, "session.create")
    prompt = _clean_prompt(prompt)
    model = _resolve_model(user=user, organization=organization, model_id=model_id)
    title = " ".join(prompt.split())[:80]
    session = AgentSession.objects.create(organization=organization, created_by=user, model=model, title=title)
    Message.objects.create(session=session, position=0, role=MessageRole.USER, content=prompt)
    events = [
        SessionEvent.objects.create(
            session=session, seq=1, type="prompt", payload={"text": prompt, "user": user.get_username()}
        ),
        SessionEvent.objects.create(session=session, seq=2, type="status", payload={"status": SessionStatus.QUEUED}),
    ]
    audit.record(
        action="session.created",
        actor=user,
        organization=organization,
        target=session,
        session_id=session.pk,
        data={"model": model.identifier, "title": title},
    )
    audit.record(
        action="prompt.submitted",
        actor=user,
        organization=organization,
        target=session,
        session_id=session.pk,
        data={"text": prompt, "model": model.identifier, "provider": model.provider.name},
    )
    _start_turn_after_commit(session, events)
    return session


@transaction.atomic
def session_add_prompt(*, user: AbstractBaseUser, session: AgentSession, prompt: str) -> AgentSession:
    """Add a follow-up prompt to an idle session and queue the next turn."""
    session = AgentSession.objects.select_for_update().get(pk=session.pk)
    require_permission(user, session.organization, "session.create")
    if session.created_by_id != user.pk:
        raise ValidationError({"session": "Only the person who opened this session can prompt in it."})
    if session.status in (SessionStatus.QUEUED, SessionStatus.RUNNING):
        raise ValidationError({"session": "The agent is still working on the previous prompt: wait until it is idle."})
    prompt = _clean_prompt(prompt)
    position = (session.messages.aggregate(last=Max("position"))["last"] or 0) + 1
    Message.objects.create(session=session, position=position, role=MessageRole.USER, content=prompt)
    seq = next_seq(session.pk)
    events = [
        SessionEvent.objects.create(
            session=session, seq=seq, type="prompt", payload={"text": prompt, "user": user.get_username()}
        ),
        SessionEvent.objects.create(
            session=session, seq=seq + 1, type="status", payload={"status": SessionStatus.QUEUED}
        ),
    ]
    session.status = SessionStatus.QUEUED
    session.error = ""
    session.save(update_fields=["status", "error", "updated_at"])
    audit.record(
        action="prompt.submitted",
        actor=user,
        organization=session.organization,
        target=session,
        session_id=session.pk,
        data={"text": prompt, "model": session.model.identifier},
    )
    _start_turn_after_commit(session, events)
    return session


def session_workspace_create(
    *, session: AgentSession, actor: AgentActor, template: WorkspaceTemplate | None = None
) -> Workspace:
    """Give a session its workspace, from a template the agent chose or (with none) the deployment's default;
    audited as workspace.created in the session. A later start replaces the session's workspace, which stops
    (`workspace.stopped`; its files stay). A start that fails is audited too, as a failed (or denied)
    `workspace.created`, and the error raised again."""
    try:
        return _session_workspace_replace(session=session, actor=actor, template=template)
    except (ExecutionError, PermissionDenied, ValidationError) as exc:
        reason = "; ".join(exc.messages) if isinstance(exc, ValidationError) else str(exc) or type(exc).__name__
        with transaction.atomic():
            audit.record(
                action="workspace.created",
                actor=actor,
                organization=session.organization,
                target=session,
                session_id=session.pk,
                outcome=Outcome.DENIED if isinstance(exc, PermissionDenied) else Outcome.FAILURE,
                error=reason,
                data={"template": template.name if template is not None else None},
            )
        raise


@transaction.atomic
def _session_workspace_replace(
    *, session: AgentSession, actor: AgentActor, template: WorkspaceTemplate | None
) -> Workspace:
    name = f"session-{session.pk}" if template is None else f"session-{session.pk}-{template.name}"
    workspace = workspace_create(
        actor=actor, organization=session.organization, owner=session.created_by, name=name, template=template
    )
    previous_id = AgentSession.objects.filter(pk=session.pk).values_list("workspace_id", flat=True).first()
    AgentSession.objects.filter(pk=session.pk).update(workspace=workspace)
    if previous_id is not None:  # stopped unless it already is
        workspace_stop(
            actor=actor, workspace=Workspace(pk=previous_id), reason="replaced", replaced_by=str(workspace.pk)
        )
    return workspace


def session_set_status(*, session_id: uuid.UUID, status: str, error: str = "") -> None:
    """Record where a turn stands (called by the agent loop).

    Not audited itself: the turn's audited events (prompt.submitted, model.call, workspace.command,
    session.failed) already say what happened; the status is the page's view of it.
    """
    AgentSession.objects.filter(pk=session_id).update(status=status, error=error[:4000])


def message_append(*, session_id: uuid.UUID, role: str, content: str, **fields: Any) -> Message:
    """Append a message to the conversation the model sees."""
    with transaction.atomic():
        last = Message.objects.filter(session_id=session_id).aggregate(last=Max("position"))["last"]
        return Message.objects.create(
            session_id=session_id, position=(last if last is not None else -1) + 1, role=role, content=content, **fields
        )
