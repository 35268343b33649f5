"""Reads of the audit log, scoped to the requesting user.

Only owners and auditors (permission action "audit.view") may read an organization's log; anyone else
gets PermissionDenied rather than an empty list, so that "no events" never hides "not allowed".
API views resolve the organization first (a non-member gets 404 there, like for a missing organization),
so a PermissionDenied here means a member without the role: answer 403.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.core.exceptions import ValidationError
from django.db import connection
from django.db.models import CharField, F, Func, Q, QuerySet, TextField
from django.db.models.functions import Cast

from audit.chain import PG_TIME_FORMAT
from audit.models import ActorType, AuditChainHead, AuditEvent, AuditRetentionFloor, AuditSettings, Outcome
from organizations.models import Organization
from organizations.permissions import require_permission

VIEW_ACTION = "audit.view"


def with_time_text(
    events: QuerySet[AuditEvent], columns: tuple[str, ...]
) -> tuple[QuerySet[AuditEvent], tuple[str, ...]]:
    """On PostgreSQL, `events` with `occurred_at_text` (the time as `audit.chain.format_time`'s text, written by the
    database with PG_TIME_FORMAT) and `columns` reading it in place of `occurred_at`; elsewhere both unchanged.

    Bulk readers (exports, verification) then neither parse a timestamp nor format it again, as the chainer does.
    """
    if connection.vendor != "postgresql":
        return events, columns
    text = Func(
        F("occurred_at"),
        template=f"to_char(%(expressions)s AT TIME ZONE 'UTC', '{PG_TIME_FORMAT}')",
        output_field=CharField(),
    )
    return (
        events.annotate(occurred_at_text=text),
        tuple("occurred_at_text" if name == "occurred_at" else name for name in columns),
    )


def events_for_user(*, user: AbstractBaseUser | AnonymousUser, organization: Organization) -> QuerySet[AuditEvent]:
    """The organization's events, oldest first; raises PermissionDenied unless the user may view the audit log."""
    require_permission(user, organization, VIEW_ACTION)
    return AuditEvent.objects.filter(organization_id=organization.pk).order_by("sequence")


def session_timeline(
    *, user: AbstractBaseUser | AnonymousUser, organization: Organization, session_id: str | uuid.UUID
) -> QuerySet[AuditEvent]:
    """Every event of one agent session in the order it happened; same permission as `events_for_user`."""
    events = events_for_user(user=user, organization=organization)
    session = str(session_id)
    if "\x00" in session or len(session) > 64:  # no event has such an id (and PostgreSQL refuses NUL in text)
        return events.none()
    return events.filter(session_id=session)


# --- browsing: filters, one event, a page of events ---------------------------------------------------------

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
DEFAULT_TIMELINE_SIZE = 500
MAX_TIMELINE_SIZE = 5000
FILTER_NAMES = ("since", "until", "actor", "action", "outcome", "session", "q")
_AGENT_PREFIX = "agent acting for "


@dataclass(frozen=True)
class EventFilters:
    """What a reader of the log asked for; every field optional."""

    since: dt.datetime | None = None
    until: dt.datetime | None = None
    actor: str = ""
    action: str = ""
    outcome: str = ""
    session: str = ""
    q: str = ""

    def used(self) -> dict[str, str]:
        """The filters that were set, as text (what an `audit.viewed` event records)."""
        values = {name: getattr(self, name) for name in FILTER_NAMES}
        return {
            name: value.isoformat() if isinstance(value, dt.datetime) else value
            for name, value in values.items()
            if value
        }


@dataclass(frozen=True)
class EventPage:
    """A page of events, newest first, and the cursor of the next (older) page if there is one."""

    events: list[AuditEvent]
    next_cursor: int | None
    cursor: int | None
    limit: int


def parse_moment(name: str, raw: str) -> dt.datetime:
    """A user's ISO 8601 date or time (`2025-01-31`, `2025-01-31T12:00:00Z`, with any offset) in UTC.

    A time without an offset is UTC. ValidationError naming `name` for anything else, including a time that
    falls outside years 1 to 9999 once moved to UTC.
    """
    text = str(raw).strip()
    if text.endswith("z"):  # fromisoformat takes "Z" only
        text = text[:-1] + "Z"
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValidationError(
            {name: f"{name} must be an ISO 8601 date or time (like 2025-01-31T12:00:00Z), got {str(raw)[:100]!r}."}
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    try:
        return moment.astimezone(dt.UTC)
    except OverflowError:
        raise ValidationError(
            {name: f"{name} {str(raw)[:100]!r} is out of range: give a time from year 1 to 9999 in UTC."}
        ) from None


def parse_page_number(
    name: str, raw: str | None, *, default: int | None, minimum: int, maximum: int | None = None
) -> int | None:
    """A whole-number query parameter within bounds; ValidationError naming the parameter otherwise."""
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValidationError({name: f"{name} must be a whole number, got {raw!r}."}) from None
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
        raise ValidationError({name: f"{name} must be {bound}, got {value}."})
    return value


def parse_event_filters(params: Mapping[str, Any]) -> EventFilters:
    """Filters from query parameters; a bad value raises ValidationError naming the parameter."""
    raw = {name: str(params.get(name) or "").strip() for name in FILTER_NAMES}
    for name, value in raw.items():
        if len(value) > 200:
            raise ValidationError({name: f"{name} is longer than 200 characters."})
        if "\x00" in value:
            raise ValidationError({name: f"{name} contains a NUL character."})
    since = parse_moment("since", raw["since"]) if raw["since"] else None
    until = parse_moment("until", raw["until"]) if raw["until"] else None
    if since and until and since > until:
        raise ValidationError({"until": "until must not be before since."})
    if raw["outcome"] and raw["outcome"] not in Outcome.values:
        raise ValidationError(
            {"outcome": f"outcome must be one of {', '.join(Outcome.values)}, got {raw['outcome']!r}."}
        )
    if raw["session"] and len(raw["session"]) > 64:
        raise ValidationError({"session": "session must be at most 64 characters."})
    return EventFilters(
        since=since,
        until=until,
        actor=raw["actor"],
        action=raw["action"],
        outcome=raw["outcome"],
        session=raw["session"],
        q=raw["q"],
    )


def _json_text(text: str) -> str:
    """How a string appears inside the stored JSON text of `data` on this database."""
    return json.dumps(text, ensure_ascii=connection.vendor != "postgresql")[1:-1]


def filter_events(queryset: QuerySet[AuditEvent], filters: EventFilters) -> QuerySet[AuditEvent]:
    """Narrow a queryset of events by the filters (no query is run)."""
    if filters.since:
        queryset = queryset.filter(occurred_at__gte=filters.since)
    if filters.until:
        queryset = queryset.filter(occurred_at__lte=filters.until)
    if filters.actor:
        actor = filters.actor
        queryset = queryset.filter(
            Q(actor_id=actor)
            | Q(actor_display=actor)
            | Q(actor_type=ActorType.AGENT, actor_display__startswith=f"{_AGENT_PREFIX}{actor} in session ")
        )
    if filters.action:
        action = filters.action
        if action.endswith("*"):
            queryset = queryset.filter(action__startswith=action[:-1])
        elif action.endswith("."):
            queryset = queryset.filter(action__startswith=action)
        else:
            queryset = queryset.filter(action=action)
    if filters.outcome:
        queryset = queryset.filter(outcome=filters.outcome)
    if filters.session:
        queryset = queryset.filter(session_id=filters.session)
    if filters.q:
        text = filters.q
        queryset = queryset.annotate(data_text=Cast("data", TextField())).filter(
            Q(action__icontains=text)
            | Q(target_display__icontains=text)
            | Q(actor_display__icontains=text)
            | Q(error__icontains=text)
            | Q(data_text__icontains=_json_text(text))
        )
    return queryset


def events_page(
    *,
    user: AbstractBaseUser | AnonymousUser,
    organization: Organization,
    filters: EventFilters,
    cursor: int | None = None,
    limit: int = DEFAULT_PAGE_SIZE,
) -> EventPage:
    """One page of the filtered events, newest first (one query); `cursor` is the sequence to start below."""
    queryset = filter_events(events_for_user(user=user, organization=organization), filters)
    if cursor is not None:
        queryset = queryset.filter(sequence__lt=cursor)
    rows = list(queryset.order_by("-sequence")[: limit + 1])
    more = len(rows) > limit
    rows = rows[:limit]
    return EventPage(events=rows, next_cursor=rows[-1].sequence if more else None, cursor=cursor, limit=limit)


def event_for_user(
    *, user: AbstractBaseUser | AnonymousUser, organization: Organization, event_id: uuid.UUID | str
) -> AuditEvent:
    """One event of the organization; AuditEvent.DoesNotExist for a missing or another organization's event."""
    return events_for_user(user=user, organization=organization).get(pk=event_id)


def event_neighbours(*, event: AuditEvent) -> dict[str, Any]:
    """The events just before and after one event in its chain, and the chain's head sequence (one query each)."""
    around = {
        row.sequence: row
        for row in AuditEvent.objects.filter(
            organization_id=event.organization_id, sequence__in=[event.sequence - 1, event.sequence + 1]
        ).only("id", "sequence", "action")
    }
    head = (
        AuditChainHead.objects.filter(organization_id=event.organization_id).values_list("sequence", flat=True).first()
    )
    return {"previous": around.get(event.sequence - 1), "next": around.get(event.sequence + 1), "head_sequence": head}


def session_timeline_page(
    *,
    user: AbstractBaseUser | AnonymousUser,
    organization: Organization,
    session_id: str,
    after: int = 0,
    limit: int = DEFAULT_TIMELINE_SIZE,
) -> list[AuditEvent]:
    """Up to `limit` events of a session with a sequence above `after`, oldest first (one query)."""
    queryset = session_timeline(user=user, organization=organization, session_id=session_id)
    return list(queryset.filter(sequence__gt=after).order_by("sequence")[:limit])


# --- settings page ------------------------------------------------------------------------------------------


def audit_settings_for_user(*, user: AbstractBaseUser | AnonymousUser, organization: Organization) -> AuditSettings:
    """The organization's audit settings (an unsaved default row if it never changed them); owners and auditors."""
    require_permission(user, organization, VIEW_ACTION)
    row = AuditSettings.objects.filter(organization_id=organization.pk).first()
    return row if row is not None else AuditSettings(organization=organization)


def retention_floor_days() -> int | None:
    """The operator's minimum retention in days for the whole deployment, or None where none is set."""
    return AuditRetentionFloor.objects.filter(pk=1).values_list("minimum_days", flat=True).first()


def organizations_under_retention_floor(minimum_days: int | None) -> list[str]:
    """Slugs of the organizations whose retention is under `minimum_days` (their purges are skipped)."""
    if minimum_days is None:
        return []
    rows = AuditSettings.objects.filter(retention_days__lt=minimum_days).order_by("organization__slug")
    return list(rows.values_list("organization__slug", flat=True))
