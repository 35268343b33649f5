"""The embedded scheduler: Celery beat's schedule, run in the web process when there is no broker.

The embedded default (`make run`: one daphne process, SQLite, no Redis) has no Celery worker or beat, yet its
audit log still needs its signed checkpoints, its retention purge and the catch-up sweeps of SIEM forwarding
and batched chaining. With `EMBEDDED_SCHEDULER` on (the default when `AGENT_RUNNER` is `inline`), the ASGI
application starts one daemon thread that runs every task of `CELERY_BEAT_SCHEDULE` in-process: once shortly
after start-up (so a SIEM backlog left by the last run, or pending events, are taken up at once, and a restart
never postpones the daily checkpoint by another day), then every `schedule` seconds. A failing task is logged
and tried again at its next turn; it never stops the others. Deployments with a broker run `celery beat`
instead, and the thread is not started.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections.abc import Callable, Mapping

from django.conf import settings
from django.db import close_old_connections

logger = logging.getLogger(__name__)

STARTUP_DELAY_SECONDS = 2.0

_started = threading.Event()


def _task(name: str) -> Callable[[], object]:
    """The registered Celery task `name`, called in this thread (a task called directly runs synchronously)."""
    from portal.celery import app

    app.loader.import_default_modules()  # autodiscovery: the apps' jobs modules register their tasks
    return app.tasks[name]


def due_order(schedule: Mapping[str, Mapping[str, object]], now: float) -> list[tuple[float, str, float]]:
    """A heap of (next run, entry name, interval) for every entry: each runs first at start-up, in name order."""
    heap = [
        (now + STARTUP_DELAY_SECONDS, name, float(entry["schedule"]))  # type: ignore[arg-type]
        for name, entry in sorted(schedule.items())
    ]
    heapq.heapify(heap)
    return heap


def run_entry(name: str, task_name: str) -> bool:
    """Run one schedule entry's task now; False (logged) when it failed."""
    try:
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
