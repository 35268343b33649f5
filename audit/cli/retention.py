"""`audit retention --org SLUG [--days N | --forever] [--legal-hold on|off --reason TEXT]`: show or change it."""

from __future__ import annotations

import argparse
from typing import Any

from django.core.exceptions import PermissionDenied, ValidationError
from django.core.management.base import BaseCommand, CommandError

from audit.models import AuditSettings
from audit.retention import MAX_RETENTION_DAYS, audit_retention_update
from organizations.management.cli import operator_actor, validation_message
from organizations.models import Organization

HELP = "Show or change an organization's audit retention (days, or forever) and legal hold (on needs --reason)."


def _days(text: str) -> int:
    """argparse type for a retention in days."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_RETENTION_DAYS:
        raise argparse.ArgumentTypeError(f"must be a number of days from 1 to {MAX_RETENTION_DAYS}, got {text!r}")
    return value


def register(parser: argparse.ArgumentParser) -> None:
    """Arguments of `audit retention`."""
    parser.add_argument("--org", required=True, metavar="SLUG", help="the organization's slug")
    days = parser.add_mutually_exclusive_group()
    days.add_argument("--days", type=_days, metavar="N", help="purge events older than N days")
    days.add_argument("--forever", action="store_true", help="keep events forever (no purge)")
    parser.add_argument("--legal-hold", choices=["on", "off"], help="stop (on) or allow (off) every purge")
    parser.add_argument("--reason", metavar="TEXT", help="why the legal hold is on (required with --legal-hold on)")


def _describe(row: AuditSettings | None, slug: str) -> str:
    days = row.retention_days if row else None
    retention = "forever" if days is None else f"{days} days"
    hold = f"on ({row.legal_hold_reason})" if row and row.legal_hold else "off"
    return f"{slug}: retention {retention}; legal hold {hold}"


def handle(command: BaseCommand, options: dict[str, Any]) -> None:
    """Apply the requested changes (if any) and print the settings."""
    slug = options["org"]
    organization = Organization.objects.filter(slug=slug).first()
    if organization is None:
        raise CommandError(f"No organization with slug {slug!r}; pass the slug shown in the organization's URL.")
    changes: dict[str, Any] = {}
    if options.get("forever"):
        changes["retention_days"] = None
    elif options.get("days") is not None:
        changes["retention_days"] = options["days"]
    if options.get("legal_hold"):
        changes["legal_hold"] = options["legal_hold"] == "on"
    if options.get("reason") is not None:
        if not options.get("legal_hold"):
            raise CommandError("--reason goes with --legal-hold on (why the hold is placed) or off (why it is lifted).")
        changes["legal_hold_reason"] = options["reason"]
    if changes:
        try:
            row = audit_retention_update(actor=operator_actor(), organization=organization, **changes)
        except ValidationError as exc:
            raise CommandError(validation_message(exc)) from exc
        except PermissionDenied as exc:
            raise CommandError(str(exc)) from exc
    else:
        row = AuditSettings.objects.filter(organization_id=organization.pk).first()
    command.stdout.write(_describe(row, slug))
