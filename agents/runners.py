"""Where an agent turn runs: inline (an asyncio task in the web process) or on a Celery worker."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
import uuid

from django.conf import settings

from portal.runtime import main_loop

logger = logging.getLogger(__name__)

# Strong references to running inline turns, so the event loop does not garbage-collect them.
_inline_turns: set[asyncio.Task] = set()


def start_turn(session_id: uuid.UUID) -> None:
    """Queue the session's next turn on the configured runner (call after the prompt is committed)."""
    if settings.AGENT_RUNNER == "celery":
        from agents.tasks import run_agent_turn

        run_agent_turn.delay(str(session_id))
    elif settings.AGENT_RUNNER == "inline":
        _start_inline(session_id)
    else:
        raise ValueError(f"AIRLOCK_AGENT_RUNNER={settings.AGENT_RUNNER!r}: use 'inline' or 'celery'.")


def _start_inline(session_id: uuid.UUID) -> None:
    from agents.loop import run_turn

    loop = main_loop()
    if loop is None or loop.is_closed():
        # No ASGI server in this process (a CLI or a test): run the turn on a thread of its own.
        thread = threading.Thread(
            target=asyncio.run, args=(run_turn(session_id),), daemon=True, name=f"agent-turn-{session_id}"
        )
        thread.start()
        return
    # A fresh context: the request's context holds asgiref's per-request executor, gone once it answers.
    loop.call_soon_threadsafe(_create_inline_task, session_id, context=contextvars.Context())


def _create_inline_task(session_id: uuid.UUID) -> None:
    from agents.loop import run_turn

    task = asyncio.get_running_loop().create_task(run_turn(session_id))
    _inline_turns.add(task)
    task.add_done_callback(_turn_finished)


def _turn_finished(handle: asyncio.Task) -> None:
    _inline_turns.discard(handle)
    if not handle.cancelled() and handle.exception() is not None:
        logger.error("agent turn crashed", exc_info=handle.exception())
