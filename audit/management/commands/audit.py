"""`python manage.py audit verify --org SLUG [--since SEQ]`: check an organization's audit chain."""

from __future__ import annotations

import argparse
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from audit.verify import verify_chain
from organizations.models import Organization


def _positive_int(text: str) -> int:
    """argparse type for a sequence number (1 or more)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a sequence number of 1 or more, got {text!r}")
    return value


class Command(BaseCommand):
    """Audit log tools: `verify` (more subcommands, such as `export`, hang off the same parser)."""

    help = "Audit log tools. `audit verify --org SLUG [--since SEQ]` checks an organization's hash chain."

    def add_arguments(self, parser: CommandParser) -> None:
        subcommands = parser.add_subparsers(dest="subcommand", metavar="{verify}", required=True)
        verify = subcommands.add_parser(
            "verify",
            help="Recompute an organization's hash chain and report the first altered, missing or reordered event.",
        )
        verify.add_argument("--org", required=True, metavar="SLUG", help="the organization's slug")
        verify.add_argument(
            "--since",
            type=_positive_int,
            metavar="SEQ",
            help="verify from this sequence number on, trusting the stored hash of the event before it",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["subcommand"] == "verify":
            self._verify(slug=options["org"], since=options.get("since"))

    def _verify(self, *, slug: str, since: int | None) -> None:
        organization = Organization.objects.filter(slug=slug).first()
        if organization is None:
            raise CommandError(f"No organization with slug {slug!r}; pass the slug shown in the organization's URL.")
        try:
            result = verify_chain(organization=organization, since_sequence=since)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        if not result.ok:
            raise CommandError(f"FAILED at #{result.first_bad_sequence}: {result.reason}")
        self.stdout.write(
            f"OK: {result.events_checked} events verified, head #{result.head_sequence} {result.head_hash[:12]}"
        )
