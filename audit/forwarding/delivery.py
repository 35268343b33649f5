"""Delivery: read a destination's events after its cursor, in order, send them, advance only on acknowledgement.

At least once, in order: the cursor (`AuditDestination.delivered_sequence`) moves past a batch only after the
receiver acknowledged the whole batch, so a failure mid-batch sends that batch again (receivers de-duplicate
by event id). One deliverer per destination at a time: on PostgreSQL the destination row is locked with
`SELECT ... FOR UPDATE SKIP LOCKED` for each batch (a second worker skips it); in one process a lock per
destination does the same (SQLite, where a write transaction would block every audit writer, takes only that).
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connection, transaction
from django.db.models import F, QuerySet
from django.db.models.functions import Greatest

from audit.forwarding.senders import DeliveryError, Sender, build_sender, scrub
from audit.models import AuditChainHead, AuditDestination, AuditEvent
from portal.crypto import decrypt_secret

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 500

_process_locks: dict[str, threading.Lock] = {}
_process_locks_guard = threading.Lock()


@dataclass
class DeliveryResult:
    """What one delivery run did for one destination."""

    destination_id: uuid.UUID | str
    delivered: int = 0
    batches: int = 0
    delivered_sequence: int = 0
    head_sequence: int = 0
    error: str = ""
    skipped: str = ""  # "missing", "disabled", "not due", "busy" when nothing was attempted

    @property
    def lag(self) -> int:
        """Events written but not yet acknowledged by the destination."""
        return max(self.head_sequence - self.delivered_sequence, 0)

    @property
    def ok(self) -> bool:
        """Whether the run ended without a delivery error."""
        return not self.error


def backoff_seconds(failures: int) -> float:
    """Exponential backoff with jitter after `failures` consecutive failures, capped (5 minutes by default)."""
    base = float(getattr(settings, "AUDIT_FORWARDING_BACKOFF_BASE_SECONDS", 2.0))
    cap = float(getattr(settings, "AUDIT_FORWARDING_BACKOFF_MAX_SECONDS", 300.0))
    # The exponent is bounded before it is used: days of failures must not overflow a float.
    delay = min(cap, base * 2.0 ** min(max(failures - 1, 0), 64))
    return delay / 2 + random.uniform(0, delay / 2)


def head_sequence(organization_id: int) -> int:
    """The organization's latest sequence number (0 before its first event)."""
    value = AuditChainHead.objects.filter(organization_id=organization_id).values_list("sequence", flat=True).first()
    return int(value or 0)


@contextmanager
def _process_lock(destination_id: str) -> Iterator[bool]:
    with _process_locks_guard:
        lock = _process_locks.setdefault(destination_id, threading.Lock())
    acquired = lock.acquire(blocking=False)
    try:
        yield acquired
    finally:
        if acquired:
            lock.release()


@contextmanager
def _claimed(destination_id: str) -> Iterator[AuditDestination | None]:
    """The destination row, locked for this batch on PostgreSQL (None if another worker holds it or it is gone)."""
    if connection.vendor == "postgresql":
        with transaction.atomic():
            yield (
                AuditDestination.objects.select_for_update(skip_locked=True, of=("self",))
                .select_related("organization")
                .filter(pk=destination_id)
                .first()
            )
    else:
        yield AuditDestination.objects.select_related("organization").filter(pk=destination_id).first()


def _decrypted(token: str) -> str:
    if not token:
        return ""
    try:
        return decrypt_secret(token)
    except ImproperlyConfigured as exc:
        raise DeliveryError(str(exc)) from None


def destination_secret(destination: AuditDestination) -> str:
    """The destination's decrypted secret ("" without one); DeliveryError when no configured key opens it."""
    return _decrypted(destination.secret_encrypted)


def destination_client_key(destination: AuditDestination) -> str:
    """The decrypted private key of the destination's client certificate ("" without one); DeliveryError likewise."""
    return _decrypted(destination.client_key_encrypted)


def destination_sender(destination: AuditDestination) -> tuple[Sender, str]:
    """The destination's sender, its secrets decrypted, and the secret to scrub from error messages."""
    secret = destination_secret(destination)
    return build_sender(destination, secret, client_key=destination_client_key(destination)), secret


def _record_failure(destination: AuditDestination, message: str) -> None:
    now = dt.datetime.now(dt.UTC)
    failures = destination.consecutive_failures + 1
    AuditDestination.objects.filter(pk=destination.pk).update(
        last_error=message,
        last_error_at=now,
        consecutive_failures=F("consecutive_failures") + 1,
        next_attempt_at=now + dt.timedelta(seconds=backoff_seconds(failures)),
    )


def _record_success(destination: AuditDestination, last_sequence: int | None) -> None:
    fields: dict[str, object] = {
        "last_success_at": dt.datetime.now(dt.UTC),
        "last_error": "",
        "last_error_at": None,
        "consecutive_failures": 0,
        "next_attempt_at": None,
    }
    if last_sequence is not None:
        fields["delivered_sequence"] = Greatest(F("delivered_sequence"), last_sequence)
    AuditDestination.objects.filter(pk=destination.pk).update(**fields)


def _one_batch(destination_id: str, *, batch_size: int, force: bool, result: DeliveryResult) -> bool:
    """Send the next batch; True when there may be more to send right away."""
    with _claimed(destination_id) as destination:
        if destination is None:
            exists = AuditDestination.objects.filter(pk=destination_id).exists()
            result.skipped = result.skipped or ("busy" if exists else "missing")
            return False
        result.delivered_sequence = destination.delivered_sequence
        if not destination.enabled:
            result.skipped = result.skipped or "disabled"
            return False
        now = dt.datetime.now(dt.UTC)
        if not force and destination.next_attempt_at is not None and destination.next_attempt_at > now:
            result.skipped = result.skipped or "not due"
            return False
        rows = list(
            AuditEvent.objects.filter(
                organization_id=destination.organization_id, sequence__gt=destination.delivered_sequence
            ).order_by("sequence")[:batch_size]
        )
        if not rows:
            return False
        secret = ""
        try:
            sender, secret = destination_sender(destination)
            sender.send(rows)
        except DeliveryError as exc:
            message = scrub(str(exc), secret)
            _record_failure(destination, message)
            result.error = message
            logger.warning("audit forwarding to %s (%s) failed: %s", destination.name, destination.pk, message)
            return False
        except Exception as exc:  # a bug in a sender must not leave the destination silently stuck
            message = scrub(f"unexpected error: {exc.__class__.__name__}: {exc}", secret)
            _record_failure(destination, message)
            result.error = message
            # The scrubbed message only: a traceback's exception text could hold the destination's secret.
            logger.error("audit forwarding to %s (%s) crashed: %s", destination.name, destination.pk, message)
            return False
        last = rows[-1].sequence
        _record_success(destination, last)
        result.delivered += len(rows)
        result.batches += 1
        result.delivered_sequence = max(result.delivered_sequence, last)
        return len(rows) == batch_size


def deliver_destination(
    destination_id: uuid.UUID | str,
    *,
    batch_size: int | None = None,
    time_budget: float | None = None,
    force: bool = False,
) -> DeliveryResult:
    """Deliver a destination's pending events in order, batch by batch, until caught up, failed or out of time.

    `force` ignores the backoff (`next_attempt_at`), as an operator's "deliver now" does.
    """
    key = str(destination_id)
    size = batch_size or int(getattr(settings, "AUDIT_FORWARDING_BATCH_SIZE", DEFAULT_BATCH_SIZE))
    budget = time_budget if time_budget is not None else getattr(settings, "AUDIT_FORWARDING_TIME_BUDGET_SECONDS", 30)
    result = DeliveryResult(destination_id=key)
    with _process_lock(key) as acquired:
        if not acquired:
            result.skipped = "busy"
        else:
            deadline = time.monotonic() + float(budget)
            while _one_batch(key, batch_size=size, force=force, result=result) and time.monotonic() < deadline:
                pass
    organization_id = AuditDestination.objects.filter(pk=key).values_list("organization_id", flat=True).first()
    if organization_id is not None:
        result.head_sequence = head_sequence(organization_id)
        if result.skipped == "busy":
            result.delivered_sequence = (
                AuditDestination.objects.filter(pk=key).values_list("delivered_sequence", flat=True).first() or 0
            )
    return result


def due_destination_ids(organization_id: int | None = None) -> list[str]:
    """Enabled destinations that have events to send and are not backing off (one query)."""
    return [str(pk) for pk in due_destinations(organization_id).values_list("pk", flat=True)]


def due_destinations(organization_id: int | None = None) -> QuerySet[AuditDestination]:
    """The queryset of enabled destinations that have events to send and are not backing off."""
    from django.db.models import OuterRef, Q, Subquery

    now = dt.datetime.now(dt.UTC)
    head = AuditChainHead.objects.filter(organization_id=OuterRef("organization_id")).values("sequence")[:1]
    queryset = (
        AuditDestination.objects.filter(enabled=True)
        .filter(Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now))
        .annotate(head=Subquery(head))
        .filter(head__gt=F("delivered_sequence"))
    )
    if organization_id is not None:
        queryset = queryset.filter(organization_id=organization_id)
    return queryset


def deliver_all_due(*, time_budget: float | None = None) -> list[DeliveryResult]:
    """Deliver every due destination once, one after the other (the periodic sweep)."""
    return [deliver_destination(pk, time_budget=time_budget) for pk in due_destination_ids()]
