"""Celery task: the sweep of batched chaining (see audit/chaining.py).

Retry policy: none (`max_retries=0`); the task runs every 5 s from Celery beat
(CELERY_BEAT_SCHEDULE["audit-chain-pending-all"]), so a failed run is retried by the next one. Chaining is
idempotent: a pending row is chained and deleted in one transaction, under the organization's lock.
In immediate mode the table is empty and the sweep is one cheap query.
"""

from __future__ import annotations

from celery import shared_task

__all__ = ["chain_pending_all"]


@shared_task(name="audit.chain_pending_all", max_retries=0, ignore_result=True)
def chain_pending_all() -> int:
    """Chain every organization's pending events that no in-process chainer has taken yet."""
    from audit.chaining import chain_all_pending

    return chain_all_pending()
