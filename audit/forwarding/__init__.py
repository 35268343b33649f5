"""Forwarding to SIEM destinations (Splunk HEC, signed webhook, syslog), at least once, in order.

The append-only log is the outbox: an event is pending for every enabled destination whose cursor
(`delivered_sequence`) is below its sequence, from the moment the transaction that appended it commits.
`audit.record()` calls `schedule_forwarding(org_id)` after each commit; this module only wakes delivery:

- no enabled destination (the usual case): a dict lookup, the answer being cached per process for
  `AUDIT_FORWARDING_CACHE_SECONDS` (5 s), so ingest pays nothing measurable;
- runner `celery`: queues `audit.forward_destination` for each due destination, at most once per
  `AUDIT_FORWARDING_DEBOUNCE_SECONDS` (0.5 s) per organization and process, with that countdown so one task
  carries the whole burst; the `audit.forward_all_due` sweep (Celery beat) catches up whatever a lost wake-up
  or a backoff left behind;
- runner `inline` (no broker): one background thread per organization delivers, coalescing wake-ups that
  arrive while it works, and re-arms itself with a timer after a failure for the backoff delay.

The delivery itself is in `audit.forwarding.delivery`; destinations are managed by `audit.forwarding.services`.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time

from django.conf import settings

from portal.background import CoalescingWorkers

logger = logging.getLogger(__name__)

_guard = threading.Lock()
# organization id -> (monotonic expiry, ((destination id, next attempt as a POSIX time or None), ...))
_targets: dict[int, tuple[float, tuple[tuple[str, float | None], ...]]] = {}
_celery_pending_until: dict[int, float] = {}
_retry_timers: dict[int, threading.Timer] = {}


def _setting(name: str, default: float) -> float:
    return float(getattr(settings, name, default))


def forwarding_runner() -> str:
    """`celery` (tasks on the broker) or `inline` (threads in this process): AUDIT_FORWARDING_RUNNER or AGENT_RUNNER."""
    return str(getattr(settings, "AUDIT_FORWARDING_RUNNER", "") or getattr(settings, "AGENT_RUNNER", "inline"))


def forget_destinations(organization_id: int | None = None) -> None:
    """Drop this process's cached list of an organization's enabled destinations (all of them if None)."""
    with _guard:
        if organization_id is None:
            _targets.clear()
        else:
            _targets.pop(organization_id, None)


def _load_targets(organization_id: int, now: float) -> tuple[tuple[str, float | None], ...]:
    from audit.models import AuditDestination

    rows = AuditDestination.objects.filter(organization_id=organization_id, enabled=True).values_list(
        "pk", "next_attempt_at"
    )
    targets = tuple((str(pk), at.timestamp() if at else None) for pk, at in rows)
    with _guard:
        _targets[organization_id] = (now + _setting("AUDIT_FORWARDING_CACHE_SECONDS", 5.0), targets)
    return targets


def schedule_forwarding(organization_id: int) -> None:
    """After an event commits: wake delivery for the organization's enabled destinations, if it has any."""
    try:
        now = time.monotonic()
        entry = _targets.get(organization_id)
        targets = entry[1] if entry is not None and entry[0] > now else _load_targets(organization_id, now)
        if not targets:
            return
        if forwarding_runner() == "celery":
            _wake_celery(organization_id, targets, now)
        else:
            _wake_inline(organization_id)
    except Exception:  # the event is committed; a failed wake-up is caught up by the next one or the sweep
        logger.exception("could not schedule audit forwarding for organization %s", organization_id)


def wake_due_inline() -> int:
    """The sweep without a broker: wake this process's delivery thread of each organization with a due destination.

    The threads deliver (one per organization, each destination under its own lock), so a slow SIEM never holds
    up the caller. Returns how many organizations were woken.
    """
    from audit.forwarding.delivery import due_destinations

    organization_ids = set(due_destinations().values_list("organization_id", flat=True))
    for organization_id in organization_ids:
        _wake_inline(organization_id)
    return len(organization_ids)


def _wake_celery(organization_id: int, targets: tuple[tuple[str, float | None], ...], now: float) -> None:
    debounce = _setting("AUDIT_FORWARDING_DEBOUNCE_SECONDS", 0.5)
    with _guard:
        if _celery_pending_until.get(organization_id, 0.0) > now:
            return
        _celery_pending_until[organization_id] = now + debounce
    from audit.jobs.forwarding import forward_destination

    wall = time.time()
    for destination_id, next_attempt in targets:
        if next_attempt is not None and next_attempt > wall + debounce:
            continue  # backing off: the sweep picks it up when it is due
        forward_destination.apply_async(args=[destination_id], countdown=debounce, retry=False)


def _deliver_round(organization_id: int) -> bool:
    """One round of an organization's delivery thread; after a failure, a timer wakes it when the backoff ends."""
    from audit.forwarding.delivery import deliver_destination, due_destination_ids
    from audit.models import AuditDestination

    retry_at: dt.datetime | None = None
    for destination_id in due_destination_ids(organization_id):
        result = deliver_destination(destination_id)
        if result.error:
            at = AuditDestination.objects.filter(pk=destination_id).values_list("next_attempt_at", flat=True).first()
            if at is not None and (retry_at is None or at < retry_at):
                retry_at = at
    if retry_at is not None:
        _arm_retry(organization_id, max((retry_at - dt.datetime.now(dt.UTC)).total_seconds(), 0.0))
    return False


_inline_workers = CoalescingWorkers(
    "audit-forwarding", _deliver_round, lambda: _setting("AUDIT_FORWARDING_DEBOUNCE_SECONDS", 0.5)
)


def _wake_inline(organization_id: int) -> None:
    _inline_workers.wake(organization_id)


def _arm_retry(organization_id: int, delay: float) -> None:
    timer = threading.Timer(delay, _retry_fired, args=[organization_id])
    timer.daemon = True
    with _guard:
        previous = _retry_timers.pop(organization_id, None)
        _retry_timers[organization_id] = timer
    if previous is not None:
        previous.cancel()
    timer.start()


def _retry_fired(organization_id: int) -> None:
    with _guard:
        _retry_timers.pop(organization_id, None)
    forget_destinations(organization_id)
    schedule_forwarding(organization_id)


def wait_until_idle(timeout: float = 10.0) -> bool:
    """Wait for this process's inline delivery threads to finish (tests, shutdown); False on timeout."""
    return _inline_workers.wait_until_idle(timeout)


def cancel_retries() -> None:
    """Cancel this process's pending inline retry timers (tests, shutdown)."""
    with _guard:
        timers = list(_retry_timers.values())
        _retry_timers.clear()
    for timer in timers:
        timer.cancel()
