"""Celery tasks: daily signed checkpoints and the nightly retention purge (both run by Celery beat).

Each task walks the organizations that need it and calls the service once per organization, each in its own
transaction, so that one organization's failure neither undoes nor blocks the others; failures are logged and
the task then fails naming them. A database that is briefly unreachable is retried with backoff.
"""

from __future__ import annotations

import logging

from celery import shared_task
from django.db import InterfaceError, OperationalError

logger = logging.getLogger(__name__)

RETRY = {
    "autoretry_for": (OperationalError, InterfaceError),
    "retry_backoff": 30,
    "retry_backoff_max": 600,
    "max_retries": 5,
    "ignore_result": True,
}


class AuditJobError(RuntimeError):
    """Some organizations could not be handled by a scheduled audit job (each one is logged)."""


@shared_task(name="audit.write_checkpoints", **RETRY)
def write_checkpoints() -> int:
    """Sign a checkpoint for every organization whose chain moved since its last one; returns how many."""
    from audit.checkpoints import checkpoint_write, organizations_needing_checkpoint
    from audit.services import SystemActor

    written, failed = 0, []
    for organization in list(organizations_needing_checkpoint()):
        try:
            checkpoint = checkpoint_write(organization=organization, actor=SystemActor("audit-checkpoint"))
        except (OperationalError, InterfaceError):
            raise
        except Exception:
            logger.exception("audit checkpoint failed for organization %s", organization.slug)
            failed.append(organization.slug)
            continue
        written += 1
        logger.info("audit checkpoint #%s written for %s", checkpoint.sequence, organization.slug)
    if failed:
        raise AuditJobError(f"audit checkpoint failed for: {', '.join(failed)} ({written} written)")
    return written


@shared_task(name="audit.purge_expired", **RETRY)
def purge_expired() -> int:
    """Run the retention purge for every organization with a retention set; returns how many events went."""
    from audit.retention import audit_purge, organizations_with_retention
    from audit.services import SystemActor

    purged, failed = 0, []
    for organization in organizations_with_retention():
        try:
            result = audit_purge(organization=organization, actor=SystemActor("audit-retention"))
        except (OperationalError, InterfaceError):
            raise
        except Exception:
            logger.exception("audit purge failed for organization %s", organization.slug)
            failed.append(organization.slug)
            continue
        purged += result.purged
        logger.info("%s", result.summary())
    if failed:
        raise AuditJobError(f"audit purge failed for: {', '.join(failed)} ({purged} events purged)")
    return purged


__all__: list[str] = ["AuditJobError", "purge_expired", "write_checkpoints"]
