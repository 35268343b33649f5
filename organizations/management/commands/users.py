"""`manage.py users create USERNAME --email EMAIL [--password-stdin] [--dry-run]`: create a login."""

from __future__ import annotations

import getpass
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from organizations.management.cli import DRY_RUN_NOTE, command_errors, run_write
from organizations.services import user_create


class Command(BaseCommand):
    """Create users (the password is read from standard input or prompted for, never from an argument)."""

    help = "Manage user accounts: users create USERNAME --email EMAIL [--password-stdin] [--dry-run]."

    def add_arguments(self, parser: CommandParser) -> None:
        subcommands = parser.add_subparsers(dest="subcommand", required=True, metavar="{create}")
        create = subcommands.add_parser("create", help="Create a user who can log in.")
        create.add_argument("username", metavar="USERNAME")
        create.add_argument("--email", required=True, metavar="EMAIL")
        create.add_argument(
            "--password-stdin",
            action="store_true",
            help="Read the password from the first line of standard input instead of prompting.",
        )
        create.add_argument("--dry-run", action="store_true", help="Check everything, print, write nothing.")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["subcommand"] == "create":
            self.create(options)

    def create(self, options: dict[str, Any]) -> None:
        """Validate and create the user; the password never appears in any output."""
        password = self.read_password(from_stdin=options["password_stdin"])
        with command_errors():
            user = run_write(
                lambda: user_create(username=options["username"], email=options["email"], password=password),
                dry_run=options["dry_run"],
            )
        verb = "would create" if options["dry_run"] else "created"
        self.stdout.write(f"{verb} user {user.get_username()} <{user.email}>")
        if options["dry_run"]:
            self.stdout.write(DRY_RUN_NOTE)

    def read_password(self, *, from_stdin: bool) -> str:
        """The first line of standard input, or a password typed twice at a prompt that does not echo."""
        if from_stdin:
            password = sys.stdin.readline().rstrip("\r\n")
            if not password:
                raise CommandError("no password on standard input (--password-stdin reads its first line)")
            return password
        if not sys.stdin.isatty():
            raise CommandError("standard input is not a terminal: pass --password-stdin and pipe the password in")
        try:
            first = getpass.getpass("Password: ")
            second = getpass.getpass("Password (again): ")
        except (EOFError, KeyboardInterrupt) as exc:
            raise CommandError("no password given; nothing created") from exc
        if first != second:
            raise CommandError("the two passwords differ; nothing created")
        if not first:
            raise CommandError("the password must not be empty; nothing created")
        return first
