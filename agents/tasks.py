"""Celery tasks of the agents app."""

from __future__ import annotations

import asyncio
import uuid

from celery import shared_task


# No automatic retry and no late ack: a turn runs commands, which must not run twice on redelivery.
@shared_task(name="agents.run_agent_turn", acks_late=False, max_retries=0, ignore_result=True)
def run_agent_turn(session_id: str) -> None:
    """Run one queued turn of an agent session on this worker."""
    from agents.loop import run_turn

    asyncio.run(run_turn(uuid.UUID(session_id)))
