"""`audit chainer`: the dedicated chainer process of batched chaining (AIRLOCK_AUDIT_CHAINER=process)."""

from __future__ import annotations

import argparse
import signal
import threading
from typing import Any

from django.core.management.base import BaseCommand

from audit.chaining import BUSY_ROUND_EVENTS, run_chainer

HELP = (
    "Move pending audit events into their organizations' hash chains until stopped (SIGTERM or Ctrl-C); run one "
    "per deployment with AIRLOCK_AUDIT_CHAINING=batched and AIRLOCK_AUDIT_CHAINER=process."
)


def register(parser: argparse.ArgumentParser) -> None:
    """Arguments of `audit chainer`."""
    parser.add_argument(
        "--idle-seconds",
        type=float,
        default=None,
        metavar="S",
        help=(
            f"pause after a round of fewer than {BUSY_ROUND_EVENTS:,} events "
            "(default: AIRLOCK_AUDIT_CHAINER_DEBOUNCE_SECONDS, 0.05)"
        ),
    )


def handle(command: BaseCommand, options: dict[str, Any]) -> None:
    """Chain until SIGTERM/SIGINT, then report how many events were chained."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    command.stdout.write("audit chainer running (SIGTERM or Ctrl-C stops it)")
    command.stdout.flush()
    chained = run_chainer(stop=stop, idle_seconds=options["idle_seconds"])
    command.stdout.write(f"audit chainer stopped after chaining {chained} events")
