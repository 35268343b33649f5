"""`audit purge --org SLUG [--dry-run]`: remove events past the organization's retention (the audited path)."""

from __future__ import annotations

import argparse
from typing import Any

from django.core.exceptions import PermissionDenied, ValidationError
from django.core.management.base import BaseCommand, CommandError

from audit.retention import audit_purge
from organizations.management.cli import operator_actor, validation_message
from organizations.models import Organization

HELP = (
    "Purge an organization's events older than its retention (never under legal hold, never undelivered "
    "events, the newest checkpoint's event or the last event); re-anchors the chain and records audit.purged."
)


def register(parser: argparse.ArgumentParser) -> None:
    """Arguments of `audit purge`."""
    parser.add_argument("--org", required=True, metavar="SLUG", help="the organization's slug")
    parser.add_argument("--dry-run", action="store_true", help="show what would be purged; write nothing")


def handle(command: BaseCommand, options: dict[str, Any]) -> None:
    """Purge (or show what a purge would do) and print the result."""
    slug = options["org"]
    organization = Organization.objects.filter(slug=slug).first()
    if organization is None:
        raise CommandError(f"No organization with slug {slug!r}; pass the slug shown in the organization's URL.")
    try:
        result = audit_purge(organization=organization, actor=operator_actor(), dry_run=options.get("dry_run", False))
    except ValidationError as exc:
        raise CommandError(validation_message(exc)) from exc
    except PermissionDenied as exc:
        raise CommandError(str(exc)) from exc
    command.stdout.write(("dry run: nothing written\n" if result.dry_run else "") + result.summary())
