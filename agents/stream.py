"""A session's event stream: stored for replay, then published to the session's group in batches."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from typing import Any

from asgiref.sync import async_to_sync, sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.db.models import Max

from agents.models import SessionEvent

# Event types that may be coalesced and flushed on a timer; every other type flushes at once.
BATCHED_TYPES = frozenset({"assistant.delta", "assistant.reasoning", "command.output"})


def group_name(session_id: uuid.UUID | str) -> str:
    """The channel-layer group that a session's live events go to."""
    return f"session.{session_id}"


def next_seq(session_id: uuid.UUID | str) -> int:
    """The sequence number the next stored event of a session gets."""
    last = SessionEvent.objects.filter(session_id=session_id).aggregate(last=Max("seq"))["last"]
    return (last or 0) + 1


def publish_now(session_id: uuid.UUID | str, events: list[dict[str, Any]]) -> None:
    """Send already-stored events to the session's live listeners (from sync code, after commit)."""
    async_to_sync(get_channel_layer().group_send)(group_name(session_id), {"type": "session.events", "events": events})


class SessionStream:
    """Writes a running turn's events: one writer per session, so sequence numbers are allocated here.

    Text deltas are coalesced and command output lines are grouped; a batch is stored with one
    INSERT and published with one group message, so a fast token stream costs few round trips.
    """

    def __init__(self, session_id: uuid.UUID, first_seq: int) -> None:
        self.session_id = session_id
        self._seq = first_seq
        self._pending: list[SessionEvent] = []
        self._last_flush = time.monotonic()
        self._flush_interval = settings.AGENT_DELTA_FLUSH_MS / 1000
        self._lock = asyncio.Lock()
        self._timer: asyncio.Task | None = None

    async def emit(self, type_: str, **payload: Any) -> None:
        """Queue an event; flush now unless it is a delta or an output line within the flush interval."""
        last = self._pending[-1] if self._pending else None
        if (
            type_ == "assistant.delta"
            and last is not None
            and last.type == type_
            and last.payload.get("step") == payload.get("step")
        ):
            last.payload["text"] += payload["text"]
        else:
            self._pending.append(SessionEvent(session_id=self.session_id, seq=self._seq, type=type_, payload=payload))
            self._seq += 1
        if type_ not in BATCHED_TYPES or time.monotonic() - self._last_flush >= self._flush_interval:
            await self.flush()
        elif self._timer is None:
            # A model that pauses mid-answer must not hold back the text it already sent.
            self._timer = asyncio.create_task(self._flush_later())

    async def _flush_later(self) -> None:
        await asyncio.sleep(self._flush_interval)
        self._timer = None
        await self.flush()

    async def close(self) -> None:
        """Flush what is pending and stop the timer."""
        if self._timer is not None:
            self._timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._timer
            self._timer = None
        await self.flush()

    async def flush(self) -> None:
        """Store the pending events in one statement, then publish them in one group message."""
        async with self._lock:
            if not self._pending:
                return
            batch, self._pending = self._pending, []
            self._last_flush = time.monotonic()
            await sync_to_async(SessionEvent.objects.bulk_create)(batch)
            await get_channel_layer().group_send(
                group_name(self.session_id), {"type": "session.events", "events": [event.as_wire() for event in batch]}
            )
