"""`manage.py workspaces prune --idle-days N [--dry-run]`: stop idle workspaces, delete long-stopped ones' files."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from organizations.management.cli import command_errors, operator_actor
from workspaces.services import workspaces_prune


class Command(BaseCommand):
    """Workspace housekeeping from a shell."""

    help = (
        "workspaces prune --idle-days N [--dry-run]: stop every workspace with no command in N days and delete the "
        "files of workspaces stopped more than N days ago (each audited)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        subcommands = parser.add_subparsers(dest="subcommand", required=True, metavar="{prune}")
        prune = subcommands.add_parser("prune", help="Stop idle workspaces and delete long-stopped ones' files.")
        prune.add_argument("--idle-days", type=int, required=True, metavar="N")
        prune.add_argument("--dry-run", action="store_true", help="Say what would happen; change nothing.")

    def handle(self, *args: Any, **options: Any) -> None:
        with command_errors():
            result = workspaces_prune(
                actor=operator_actor(), idle_days=options["idle_days"], dry_run=options["dry_run"]
            )
        verb = (
            ("would stop", "would delete the files of") if options["dry_run"] else ("stopped", "deleted the files of")
        )
        self.stdout.write(f"{verb[0]} {len(result.stopped)}: {', '.join(result.stopped) or '-'}")
        self.stdout.write(f"{verb[1]} {len(result.deleted)}: {', '.join(result.deleted) or '-'}")
        if result.failed:
            self.stderr.write(f"could not delete the files of {', '.join(result.failed)} (see the log); kept stopped")
