"""Celery tasks of workspaces: the daily prune of idle workspaces (Celery beat, or the embedded scheduler)."""

from __future__ import annotations

import logging

from celery import shared_task
from django.conf import settings
from django.db import InterfaceError, OperationalError

logger = logging.getLogger(__name__)


@shared_task(
    name="workspaces.prune",
    autoretry_for=(OperationalError, InterfaceError),
    retry_backoff=30,
    max_retries=5,
    ignore_result=True,
)
def prune() -> int:
    """Stop workspaces idle for `WORKSPACE_IDLE_DAYS` and delete long-stopped ones' files; how many changed."""
    from audit.services import SystemActor
    from workspaces.services import workspaces_prune

    if not settings.WORKSPACE_IDLE_DAYS:
        return 0
    result = workspaces_prune(actor=SystemActor("workspace-prune"), idle_days=settings.WORKSPACE_IDLE_DAYS)
    if result.stopped or result.deleted:
        logger.info("workspaces pruned: %d stopped, %d deleted", len(result.stopped), len(result.deleted))
    return len(result.stopped) + len(result.deleted)
