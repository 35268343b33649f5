"""The websocket stream of a session: stored events after `after`, then live ones, each with its `seq`."""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import parse_qs

from asgiref.sync import sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from agents.selectors import session_events_after, session_for_user
from agents.stream import group_name

CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_NOT_FOUND = 4404
CLOSE_BAD_REQUEST = 4400
REPLAY_CHUNK = 500


class SessionStreamConsumer(AsyncJsonWebsocketConsumer):
    """Streams one agent session to a member allowed to see it; no gap and no duplicate on reconnect."""

    session_id: uuid.UUID | None = None
    last_seq: int = 0

    async def connect(self) -> None:
        """Authorize, join the live group, then replay what is stored after `after`."""
        user = self.scope.get("user")
        await self.accept()
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        try:
            self.last_seq = _parse_after(self.scope.get("query_string", b""))
            session_id = uuid.UUID(str(self.scope["url_route"]["kwargs"]["session_id"]))
        except ValueError:
            await self.close(code=CLOSE_BAD_REQUEST)
            return
        session = await sync_to_async(session_for_user)(user=user, session_id=session_id)
        if session is None:
            await self.close(code=CLOSE_NOT_FOUND)
            return
        self.session_id = session.pk
        # Join before reading the store: an event is then either read or delivered live (or both: dropped by seq).
        await self.channel_layer.group_add(group_name(self.session_id), self.channel_name)
        await self._send_stored(after=self.last_seq)

    async def disconnect(self, code: int) -> None:
        """Leave the live group."""
        if self.session_id is not None:
            await self.channel_layer.group_discard(group_name(self.session_id), self.channel_name)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        """Clients only listen; prompts go through the REST API."""
        await self.send_json(
            {
                "type": "error",
                "seq": self.last_seq,
                "message": "This stream is read-only: send prompts with the REST API.",
            }
        )

    async def session_events(self, message: dict[str, Any]) -> None:
        """Forward a batch of live events, filling any gap from the store first."""
        for event in message["events"]:
            if event["seq"] <= self.last_seq:
                continue
            if event["seq"] > self.last_seq + 1:
                await self._send_stored(after=self.last_seq, until=event["seq"] - 1)
            await self.send_json(event)
            self.last_seq = event["seq"]

    async def _send_stored(self, *, after: int, until: int | None = None) -> None:
        while True:
            chunk = await sync_to_async(session_events_after)(
                session_id=self.session_id, after=after, until=until, limit=REPLAY_CHUNK
            )
            for event in chunk:
                await self.send_json(event)
                self.last_seq = event["seq"]
            if len(chunk) < REPLAY_CHUNK:
                return
            after = self.last_seq


def _parse_after(query_string: bytes) -> int:
    values = parse_qs(query_string.decode("latin-1")).get("after")
    if not values:
        return 0
    after = int(values[0])
    if after < 0:
        raise ValueError("after must be >= 0")
    return after
