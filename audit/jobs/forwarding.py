"""Celery tasks: forwarding audit events to SIEM destinations.

Retry policy: the tasks themselves never retry (`max_retries=0`). A failed delivery records the error and
sets the destination's `next_attempt_at` (exponential backoff with jitter, capped at 5 minutes); the periodic
`audit.forward_all_due` sweep delivers it again once it is due. Late acknowledgement is safe here (delivery is
at least once and receivers de-duplicate by event id), so a worker lost mid-batch only causes a resend.

Beat schedule (settings): CELERY_BEAT_SCHEDULE = {"audit-forward-all-due": {"task": "audit.forward_all_due",
"schedule": 15.0}}.
"""

from __future__ import annotations

from celery import shared_task

__all__ = ["forward_all_due", "forward_destination"]

FORWARD_SWEEP_SECONDS = 15.0


@shared_task(name="audit.forward_destination", max_retries=0, ignore_result=True)
def forward_destination(destination_id: str) -> None:
    """Deliver one destination's pending events now, unless it is disabled, backing off or busy elsewhere."""
    from audit.forwarding.delivery import deliver_destination

    deliver_destination(destination_id)


@shared_task(name="audit.forward_all_due", max_retries=0, ignore_result=True)
def forward_all_due() -> None:
    """The sweep: deliver every enabled destination that has lag and is not backing off.

    With a broker, one `audit.forward_destination` task each; without one (the embedded scheduler runs this),
    this process's delivery threads are woken for the organizations concerned.
    """
    from audit.forwarding import forwarding_runner, wake_due_inline
    from audit.forwarding.delivery import due_destination_ids

    if forwarding_runner() != "celery":
        wake_due_inline()
        return

    for destination_id in due_destination_ids():
        forward_destination.apply_async(args=[destination_id], retry=False)
