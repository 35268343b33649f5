"""`audit verify --org SLUG [--since SEQ]`: check an organization's hash chain."""

from __future__ import annotations

import argparse
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from audit.services import SystemActor
from audit.verify import verify_chain_recorded
from organizations.models import Organization

HELP = "Recompute an organization's hash chain and report the first altered, missing or reordered event."


def _positive_int(text: str) -> int:
    """argparse type for a sequence number (1 or more)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a sequence number of 1 or more, got {text!r}")
    return value


def register(parser: argparse.ArgumentParser) -> None:
    """Arguments of `audit verify`."""
    parser.add_argument("--org", required=True, metavar="SLUG", help="the organization's slug")
    parser.add_argument(
        "--since",
        type=_positive_int,
        metavar="SEQ",
        help="verify from this sequence number on, trusting the stored hash of the event before it",
    )


def handle(command: BaseCommand, options: dict[str, Any]) -> None:
    """Verify (recorded as `audit.verified`) and print OK, or fail naming the first bad sequence number."""
    slug = options["org"]
    organization = Organization.objects.filter(slug=slug).first()
    if organization is None:
        raise CommandError(f"No organization with slug {slug!r}; pass the slug shown in the organization's URL.")
    try:
        result = verify_chain_recorded(
            organization=organization, actor=SystemActor("cli:audit verify"), since_sequence=options.get("since")
        )
    except ValueError as exc:
        raise CommandError(str(exc)) from exc
    if not result.ok:
        raise CommandError(f"FAILED at #{result.first_bad_sequence}: {result.reason}")
    command.stdout.write(
        f"OK: {result.events_checked} events verified, head #{result.head_sequence} {result.head_hash[:12]}"
    )
    if result.checkpoint_sequence is not None:
        command.stdout.write(
            f"checkpoint #{result.checkpoint_sequence} signed at {result.checkpoint_signed_at:%Y-%m-%d %H:%M:%S} UTC "
            f"by key {result.checkpoint_key_id[:16]}: verified"
        )
