"""Coalescing background threads: one per key (an organization), woken after commits, a round per burst.

Audit chaining and SIEM delivery both need the same in-process shape: a wake-up starts a daemon thread for the
key, or marks the running one dirty; the thread waits the debounce (so a burst shares one round), runs the
round, and stops once no wake-up arrived during its last round. A round may ask to run again (the work could
not be done yet). A crashed round is logged and ends the thread; the next wake-up starts a new one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from django.db import connections

logger = logging.getLogger(__name__)


class CoalescingWorkers:
    """A registry of per-key worker threads running `work(key)` after `debounce()` seconds, once per burst.

    `work` returns True when it must run again after another debounce (e.g. another process held a lock).
    """

    def __init__(self, name: str, work: Callable[[int], bool], debounce: Callable[[], float]) -> None:
        self.name = name
        self.work = work
        self.debounce = debounce
        self._guard = threading.Lock()
        self._threads: dict[int, threading.Thread] = {}
        self._dirty: dict[int, bool] = {}

    def wake(self, key: int) -> None:
        """Make sure the key's thread runs (once more after what it is doing now)."""
        with self._guard:
            self._dirty[key] = True
            if key in self._threads:
                return
            thread = threading.Thread(target=self._run, args=(key,), daemon=True, name=f"{self.name}-{key}")
            self._threads[key] = thread
        try:
            thread.start()
        except BaseException:  # e.g. no more threads: forget it, so that the next wake-up tries again
            with self._guard:
                self._threads.pop(key, None)
            raise

    def _run(self, key: int) -> None:
        try:
            while True:
                with self._guard:
                    if not self._dirty.get(key):
                        self._threads.pop(key, None)
                        return
                    self._dirty[key] = False
                time.sleep(self.debounce())  # let a burst gather: one round serves all of it
                if self.work(key):
                    with self._guard:
                        self._dirty[key] = True
        except Exception:
            logger.exception("%s worker for %s crashed", self.name, key)
            with self._guard:
                self._threads.pop(key, None)
        finally:
            connections.close_all()

    def running(self) -> bool:
        """Whether any worker thread is alive."""
        with self._guard:
            return bool(self._threads)

    def wait_until_idle(self, timeout: float = 10.0) -> bool:
        """Wait for every worker thread to finish (tests, benchmarks, shutdown); False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._guard:
                threads = list(self._threads.values())
            if not threads:
                return True
            for thread in threads:
                thread.join(max(deadline - time.monotonic(), 0.0))
        return not self.running()
