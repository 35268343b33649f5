"""`audit retention_floor [--days N | --clear]`: show or set the deployment's minimum audit retention (run with
the database owner's credentials on PostgreSQL)."""

from __future__ import annotations

import argparse
from typing import Any

from django.core.exceptions import PermissionDenied, ValidationError
from django.core.management.base import BaseCommand, CommandError

from audit.cli.retention import _days
from audit.retention_floor import audit_retention_floor_set
from audit.selectors import organizations_under_retention_floor, retention_floor_days
from organizations.management.cli import operator_actor, validation_message

HELP = (
    "Show or set the deployment's minimum audit retention, under which no organization may set its retention and "
    "no purge runs (PostgreSQL: run with the owner's credentials; the services' role can only read it)."
)


def register(parser: argparse.ArgumentParser) -> None:
    """Arguments of `audit retention_floor`."""
    change = parser.add_mutually_exclusive_group()
    change.add_argument("--days", type=_days, metavar="N", help="keep every organization's events at least N days")
    change.add_argument("--clear", action="store_true", help="remove the minimum")


def handle(command: BaseCommand, options: dict[str, Any]) -> None:
    """Apply the change, if any, then print the minimum and the organizations under it."""
    if options.get("days") is not None or options.get("clear"):
        try:
            under = audit_retention_floor_set(actor=operator_actor(), minimum_days=options.get("days"))
        except ValidationError as exc:
            raise CommandError(validation_message(exc)) from exc
        except PermissionDenied as exc:
            raise CommandError(str(exc)) from exc
        floor = options.get("days")
    else:
        floor = retention_floor_days()
        under = organizations_under_retention_floor(floor)
    command.stdout.write("minimum retention: " + ("none" if floor is None else f"{floor} days"))
    if under:
        command.stdout.write(
            f"under it (their purges are skipped until an owner raises the retention): {', '.join(under)}"
        )
