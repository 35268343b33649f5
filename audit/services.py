"""The only writer of audit events."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from functools import cached_property, partial
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import connections, models, router, transaction
from django.db.models.base import ModelState

from audit import context as audit_context
from audit.chain import chain_hash, clean_text, event_document, normalize
from audit.chaining import chainer_kind, chaining_mode, wake_chainer
from audit.forwarding import schedule_forwarding
from audit.models import ActorType, AuditChainHead, AuditEvent, AuditPendingEvent, Outcome
from audit.policy import prepare_event_data, prepare_event_json, prepare_event_text
from organizations.models import Organization
from portal.db import driver_cursor


@dataclass(frozen=True)
class AgentActor:
    """The agent acting for a user in a session."""

    user: AbstractBaseUser
    session_id: str

    @cached_property
    def audit_fields(self) -> dict[str, str]:
        """The actor columns of this actor's events (built once: an agent's turn writes many)."""
        display = _text(f"agent acting for {self.user.get_username()} in session {self.session_id}", 200)
        return {"actor_type": ActorType.AGENT.value, "actor_id": str(self.user.pk), "actor_display": display}


@dataclass(frozen=True)
class SystemActor:
    """Airlock itself (a scheduled job, a bootstrap step, an operator's CLI without a user)."""

    name: str = "system"


Actor = AbstractBaseUser | AgentActor | SystemActor | None

# Plain strings for the stored outcome, whichever way the caller gave it (an `Outcome` member or its value).
_OUTCOME_VALUES = {value: value for value in Outcome.values}
_NO_TARGET = {"target_type": "", "target_id": "", "target_display": ""}
_SYSTEM_ACTOR = {"actor_type": ActorType.SYSTEM.value, "actor_id": "", "actor_display": "system"}


def _text(value: object, limit: int) -> str:
    """A storable string for a free-text column, cut to the column's length."""
    return clean_text(str(value))[:limit]


def _actor_fields(actor: Actor) -> dict[str, str]:
    if actor is None:
        return _SYSTEM_ACTOR
    if isinstance(actor, AgentActor):
        return actor.audit_fields
    if isinstance(actor, SystemActor):
        return {"actor_type": ActorType.SYSTEM.value, "actor_id": "", "actor_display": _text(actor.name, 200)}
    display = _text(actor.get_username(), 200)
    return {"actor_type": ActorType.USER.value, "actor_id": str(actor.pk), "actor_display": display}


def _target_fields(target: models.Model | None, *, organization_id: int) -> dict[str, str]:
    if target is None:
        return _NO_TARGET
    return {
        "target_type": target._meta.label_lower,
        "target_id": str(target.pk),
        # A session's title is the start of its prompt: mask it like any other free text.
        "target_display": _text(prepare_event_text(organization_id=organization_id, text=str(target)), 300),
    }


def _correlation_id(name: str, value: object) -> str:
    """A correlation id as stored (empty when not given); ValueError past the column's 64 characters."""
    text = str(value) if value else ""
    if len(text) > 64:
        raise ValueError(f"Audit {name} must be at most 64 characters, got {text[:80]!r}")
    return text


def record(
    *,
    action: str,
    actor: Actor,
    organization: Organization,
    target: models.Model | None = None,
    outcome: str = Outcome.SUCCESS,
    error: str = "",
    data: dict[str, Any] | None = None,
    session_id: str | uuid.UUID | None = None,
    workspace_id: str | uuid.UUID | int | None = None,
    model_call_id: str | uuid.UUID | None = None,
    immediate: bool = False,
) -> AuditEvent | AuditPendingEvent:
    """Append one event to the organization's chain, inside the caller's transaction.

    Immediate chaining (the default, `AUDIT_CHAINING = "immediate"`): the chain head row is locked for the
    append, so concurrent writers queue and sequence numbers stay gapless; the returned `AuditEvent` has its
    sequence and hash. If the caller's transaction rolls back, the event goes with it.

    Batched chaining (`AUDIT_CHAINING = "batched"`, see `audit.chaining`): the event is written as an
    `AuditPendingEvent` in the caller's transaction (no chain-head lock) and chained after commit; the pending
    row is returned: it has no sequence or hash yet, and its `event_id` is the id the chained `AuditEvent` will
    have. If the caller's transaction rolls back, the pending row goes with it, so no event is ever chained.

    `immediate=True` chains the event at once whatever the mode, for the rare caller that needs its sequence
    (a streamed export's upper bound, a purge's result); both kinds of writer lock the same chain head.
    """
    stored_outcome = _OUTCOME_VALUES.get(outcome)
    if stored_outcome is None:
        raise ValueError(f"Unknown audit outcome {outcome!r}")
    if not action or len(action) > 100:
        raise ValueError(f"Audit action must be a dotted name of 1 to 100 characters, got {action!r}")
    request = audit_context.current()  # its fields are already cleaned and cut to their columns
    if isinstance(actor, AgentActor) and session_id is None:
        session_id = actor.session_id
    organization_id = organization.pk
    # Everything that does not depend on the chain is prepared before the head is locked: the lock is held
    # only for the hash and the write, so writers of one organization queue for as short a time as possible.
    fields = {
        "action": action,
        "outcome": stored_outcome,
        "error": _text(prepare_event_text(organization_id=organization_id, text=str(error)), 4000) if error else "",
        "auth_method": "" if isinstance(actor, AgentActor | SystemActor) else request.auth_method,
        "source_ip": request.source_ip,
        "user_agent": request.user_agent,
        "request_id": request.request_id,
        "session_id": _correlation_id("session_id", session_id),
        "workspace_id": _correlation_id("workspace_id", workspace_id),
        "model_call_id": _correlation_id("model_call_id", model_call_id),
        **_actor_fields(actor),
        **_target_fields(target, organization_id=organization_id),
    }
    if not immediate and chaining_mode() == "batched":
        return _record_pending(organization_id, fields, action=action, data=data or {})
    fields["data"] = normalize(prepare_event_data(organization_id=organization_id, action=action, data=data or {}))
    event = AuditEvent(id=uuid.uuid4(), organization_id=organization_id, **fields)
    with transaction.atomic():
        head_sequence, head_hash = _lock_chain_head(organization_id)
        event.sequence = head_sequence + 1
        event.occurred_at = dt.datetime.now(dt.UTC)  # taken under the lock: time follows the sequence
        event.prev_hash = head_hash
        event.hash = chain_hash(head_hash, event_document(event))
        _append(event)
        transaction.on_commit(partial(schedule_forwarding, organization_id))
    return event


_APPEND_SQL: dict[str, str] = {}


def _record_pending(
    organization_id: int, fields: dict[str, Any], *, action: str, data: dict[str, Any]
) -> AuditPendingEvent:
    """Batched mode: write the prepared event as a pending row and wake the chainer once the caller commits.

    No chain-head lock: concurrent writers of one organization only share the table. The row's `event_id` is
    the id its `AuditEvent` will have. The chainer hashes the data as the database gives it back, so on
    PostgreSQL it is sent as JSON text prepared in one pass (`prepare_event_json`).
    """
    fields.update(event_id=uuid.uuid4(), organization_id=organization_id, occurred_at=dt.datetime.now(dt.UTC))
    connection = connections[router.db_for_write(AuditPendingEvent)]
    if connection.vendor == "postgresql":
        fields["data"], data_json = prepare_event_json(organization_id=organization_id, action=action, data=data)
        fields["id"] = _insert_pending_postgresql(connection, fields, data_json=data_json)
        pending = _loaded_pending(connection.alias, fields)
    else:
        fields["data"] = normalize(prepare_event_data(organization_id=organization_id, action=action, data=data))
        pending = AuditPendingEvent(**fields)
        pending.save(force_insert=True)
    if chainer_kind() != "process":  # a dedicated chainer process polls: nothing to wake
        transaction.on_commit(partial(wake_chainer, organization_id))
    return pending


def _loaded_pending(alias: str, values: dict[str, Any]) -> AuditPendingEvent:
    """The pending row just written as a model instance, from its column values by attribute name.

    Built the way unpickling builds one (`Model.__reduce__`): without `__init__`, whose per-field work costs a
    batched writer more than everything else it does in Python for an event. `values` must hold every
    concrete field's attname.
    """
    instance = AuditPendingEvent.__new__(AuditPendingEvent)
    instance.__dict__.update(values)
    instance._state = ModelState()
    instance._state.adding = False
    instance._state.db = alias
    return instance


# The inserted fields (all but the id).
_PENDING_FIELDS = [field for field in AuditPendingEvent._meta.concrete_fields if not field.primary_key]
_PENDING_ATTNAMES = [field.attname for field in _PENDING_FIELDS]


def _insert_pending_postgresql(connection: Any, fields: dict[str, Any], *, data_json: str) -> int:
    """Insert one pending row on the driver's own cursor; returns its id.

    Ingest pays this for every event: `portal.db.driver_cursor` runs it on the same connection, inside the
    caller's transaction, with the parameters bound server-side (unprepared, so transaction-pooling proxies
    keep working) and database errors raised as Django's. The data goes as the
    JSON text given (the column casts it), as Django's own JSONField adapter would send it.
    """
    sql = _APPEND_SQL.get("pending")
    if sql is None:
        columns = ", ".join(connection.ops.quote_name(field.column) for field in _PENDING_FIELDS)
        placeholders = ", ".join(["%s"] * len(_PENDING_FIELDS))
        # Table and column names come from the model; every value is a parameter.
        sql = _APPEND_SQL["pending"] = (
            f"INSERT INTO {AuditPendingEvent._meta.db_table} ({columns}) VALUES ({placeholders}) RETURNING id"  # noqa: S608
        )
    values = [fields[name] for name in _PENDING_ATTNAMES]
    values[_DATA_INDEX] = data_json
    cursor = driver_cursor(connection)
    with connection.wrap_database_errors:
        cursor.execute(sql, values, prepare=False)
        return cursor.fetchone()[0]


_DATA_INDEX = _PENDING_ATTNAMES.index("data")


def _lock_chain_head(organization_id: int) -> tuple[int, str]:
    """Lock the organization's chain head (created on first use) and return its sequence and hash."""
    heads = AuditChainHead.objects.select_for_update().filter(organization_id=organization_id)
    row = heads.values_list("sequence", "hash").first()
    if row is None:
        AuditChainHead.objects.get_or_create(organization_id=organization_id)
        row = heads.values_list("sequence", "hash").first()
    return row


def _append(event: AuditEvent) -> None:
    """Insert the event and move the chain head: one statement on PostgreSQL, two elsewhere."""
    connection = connections[router.db_for_write(AuditEvent)]
    if connection.vendor != "postgresql":
        event.save(force_insert=True)
        AuditChainHead.objects.filter(organization_id=event.organization_id).update(
            sequence=event.sequence, hash=event.hash
        )
        return
    fields = AuditEvent._meta.concrete_fields
    sql = _APPEND_SQL.get("postgresql")
    if sql is None:
        columns = ", ".join(connection.ops.quote_name(field.column) for field in fields)
        placeholders = ", ".join(["%s"] * len(fields))
        # Table and column names come from the models; every value is a parameter.
        event_table = connection.ops.quote_name(AuditEvent._meta.db_table)
        head_table = connection.ops.quote_name(AuditChainHead._meta.db_table)
        sql = _APPEND_SQL["postgresql"] = (
            f"WITH appended AS (INSERT INTO {event_table} ({columns}) VALUES ({placeholders})) "  # noqa: S608
            f"UPDATE {head_table} SET sequence = %s, hash = %s WHERE organization_id = %s"
        )
    values = [field.get_db_prep_save(getattr(event, field.attname), connection) for field in fields]
    with connection.cursor() as cursor:
        cursor.execute(sql, [*values, event.sequence, event.hash, event.organization_id])
    event._state.adding = False
    event._state.db = connection.alias
