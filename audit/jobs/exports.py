"""Celery tasks: exports."""

from __future__ import annotations

import uuid

from celery import shared_task

__all__: list[str] = ["run_audit_export"]


@shared_task(name="audit.run_export", acks_late=False, max_retries=0, ignore_result=True)
def run_audit_export(export_id: str) -> None:
    """Write a requested export's file and signed manifest.

    Not retried: a failure is recorded on the export row (status failed, with the reason) and audited;
    the user requests a new export. Not acknowledged late, so a lost worker does not run it twice.
    """
    from audit.export_services import export_run

    export_run(export_id=uuid.UUID(export_id))
