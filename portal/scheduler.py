"""The embedded scheduler: Celery beat's schedule, run in the web process when there is no broker.

The embedded default (`make run`: one daphne process, SQLite, no Redis) has no Celery worker or beat, yet its
audit log still needs its signed checkpoints, its retention purge and the catch-up sweeps of SIEM forwarding
and batched chaining. With `EMBEDDED_SCHEDULER` on (the default when `AGENT_RUNNER` is `inline`), the ASGI
application starts one daemon thread that runs every task of `CELERY_BEAT_SCHEDULE` in-process: once shortly
after start-up (so a SIEM backlog left by the last run, or pending events, are taken up at once, and a restart
never postpones the daily checkpoint by another day), then every `schedule` seconds. A failing task is logged
and tried again at its next turn; it never stops the others, and the forwarding sweep only wakes the delivery
threads, so a slow SIEM does not hold the thread. On PostgreSQL several web processes may each run the thread:
an advisory lock per job keeps them from running a job at the same moment (each may still run it once per
interval; every job is safe to repeat). With the `celery` runner (the default when REDIS_URL is set) the
thread is off and `celery beat` runs the schedule; with `AIRLOCK_EMBEDDED_SCHEDULER=1` beside `celery beat`
both would run it.
"""

from __future__ import annotations

import datetime as dt
import functools
import heapq
import logging
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

from django.conf import settings
from django.db import close_old_connections, connection

logger = logging.getLogger(__name__)

STARTUP_DELAY_SECONDS = 2.0
# First half of the advisory lock keys of scheduled jobs ("SCHD"), apart from other advisory locks.
_LOCK_NAMESPACE = 0x53434844

_started = threading.Event()


def _task(name: str) -> Callable[[], object]:
    """The registered Celery task `name`, called in this thread (a task called directly runs synchronously)."""
    from portal.celery import app

    _import_tasks()
    return app.tasks[name]


@functools.cache
def _import_tasks() -> None:
    """Celery's autodiscovery, once per process: the apps' jobs modules register their tasks."""
    from portal.celery import app

    app.loader.import_default_modules()


def _interval(schedule: object) -> float | None:
    """An entry's interval in seconds (a number or a timedelta); None for what only Celery beat understands."""
    if isinstance(schedule, dt.timedelta):
        return schedule.total_seconds()
    if isinstance(schedule, int | float) and schedule > 0:
        return float(schedule)
    return None


def due_order(schedule: Mapping[str, Mapping[str, object]], now: float) -> list[tuple[float, str, float]]:
    """A heap of (next run, entry name, interval) for every entry: each runs first at start-up, in name order.

    An entry whose schedule is not an interval (a crontab) is left to Celery beat, with a warning.
    """
    heap = []
    for name, entry in sorted(schedule.items()):
        interval = _interval(entry.get("schedule"))
        if interval is None:
            logger.warning("embedded scheduler: %s has a schedule it cannot run (%r); skipped", name, entry["schedule"])
            continue
        heap.append((now + STARTUP_DELAY_SECONDS, name, interval))
    heapq.heapify(heap)
    return heap


@contextmanager
def _exclusive(name: str) -> Iterator[bool]:
    """Whether this process may run the entry now: on PostgreSQL, one process at a time (an advisory lock), so
    several web processes of one deployment do not each run every job; elsewhere always."""
    if connection.vendor != "postgresql":
        yield True
        return
    key = (_LOCK_NAMESPACE << 32) | zlib.crc32(name.encode())
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [key])
        acquired = bool(cursor.fetchone()[0])
    try:
        yield acquired
    finally:
        if acquired:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s)", [key])


def run_entry(name: str, task_name: str) -> bool:
    """Run one schedule entry's task now, unless another process is running it; False (logged) when it failed."""
    try:
        with _exclusive(name) as acquired:
            if acquired:
                _task(task_name)()
        return True
    except Exception:
        logger.exception("embedded scheduler: %s (%s) failed; it runs again at its next turn", name, task_name)
        return False
    finally:
        close_old_connections()


def _loop(schedule: Mapping[str, Mapping[str, object]], stop: threading.Event) -> None:
    heap = due_order(schedule, time.monotonic())
    while heap and not stop.is_set():
        due, name, interval = heap[0]
        if stop.wait(max(0.0, due - time.monotonic())):
            return
        heapq.heapreplace(heap, (time.monotonic() + interval, name, interval))
        run_entry(name, str(schedule[name]["task"]))


def start_embedded_scheduler(stop: threading.Event | None = None) -> threading.Thread | None:
    """Start the scheduler thread once per process when `EMBEDDED_SCHEDULER` is on; the thread, or None."""
    if not getattr(settings, "EMBEDDED_SCHEDULER", False) or _started.is_set():
        return None
    schedule = dict(getattr(settings, "CELERY_BEAT_SCHEDULE", {}))
    if not schedule:
        return None
    _started.set()
    thread = threading.Thread(
        target=_loop, args=(schedule, stop or threading.Event()), name="airlock-embedded-scheduler", daemon=True
    )
    thread.start()
    logger.info("embedded scheduler started: %s", ", ".join(sorted(schedule)))
    return thread
