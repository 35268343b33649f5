"""`audit checkpoint [--org SLUG]`: sign the chain head of one organization, or of every one that moved."""

from __future__ import annotations

import argparse
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError

from audit.checkpoints import checkpoint_write, organizations_needing_checkpoint
from audit.models import AuditCheckpoint
from organizations.management.cli import operator_actor
from organizations.models import Organization

HELP = (
    "Write a signed checkpoint (Ed25519 over the chain head) for one organization, "
    "or for every organization whose chain moved since its last checkpoint."
)


def register(parser: argparse.ArgumentParser) -> None:
    """Arguments of `audit checkpoint`."""
    parser.add_argument(
        "--org", metavar="SLUG", help="only this organization (always writes one); default: every one that moved"
    )


def _describe(checkpoint: AuditCheckpoint, slug: str) -> str:
    signed_at = checkpoint.signed_at.strftime("%Y-%m-%d %H:%M:%S UTC")
    return (
        f"{slug}: checkpoint #{checkpoint.sequence} {checkpoint.hash[:12]} signed at {signed_at} "
        f"by key {checkpoint.key_id[:16]}"
    )


def handle(command: BaseCommand, options: dict[str, Any]) -> None:
    """Write the checkpoints and print each one."""
    actor = operator_actor()
    slug = options.get("org")
    organization = Organization.objects.filter(slug=slug).first() if slug else None
    if slug and organization is None:
        raise CommandError(f"No organization with slug {slug!r}; pass the slug shown in the organization's URL.")
    try:
        organizations = [organization] if organization else list(organizations_needing_checkpoint())
        for organization in organizations:
            checkpoint = checkpoint_write(organization=organization, actor=actor)
            command.stdout.write(_describe(checkpoint, organization.slug))
    except ImproperlyConfigured as exc:
        raise CommandError(str(exc)) from exc
    if not organizations:
        command.stdout.write("No organization's chain moved since its last checkpoint; nothing written.")
