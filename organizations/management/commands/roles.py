"""`manage.py roles list|add|remove|set`: a member's roles, edited additively unless replacement is explicit.

- `roles add` only adds and `roles remove` only removes; both accept `--user USERNAME` or `--all-members`.
- `roles set` replaces a member's roles. It prints what would be added and revoked and changes
  nothing unless `--yes` is given; without `--yes` it exits 0 after saying
  "nothing changed: re-run with --yes to apply" (showing the diff is a successful outcome).
- `--dry-run` on add/remove/set runs the real service in a transaction that is rolled back, so
  it reports the same diff and the same refusals as the real run and writes nothing.
- Output is one line per change: "alice: + agents-user", "alice: - auditor", "alice: no change".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from organizations.management.cli import (
    DRY_RUN_NOTE,
    change_lines,
    command_errors,
    format_table,
    operator_actor,
    run_write,
)
from organizations.models import Role
from organizations.selectors import membership_get, memberships_with_roles, organization_get
from organizations.services import (
    RoleChange,
    membership_grant_roles,
    membership_replace_roles,
    membership_revoke_roles,
    memberships_grant_roles_bulk,
    memberships_revoke_roles_bulk,
    plan_role_change,
)

CONFIRM_NOTE = "nothing changed: re-run with --yes to apply"


class Command(BaseCommand):
    """List and edit members' roles in an organization."""

    help = (
        "Manage roles: roles list --org SLUG [--user USERNAME] | "
        "roles add|remove --org SLUG (--user USERNAME | --all-members) ROLE... | "
        "roles set --org SLUG --user USERNAME ROLE... [--yes]. "
        f"Roles: {', '.join(Role.values)}."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        subcommands = parser.add_subparsers(dest="subcommand", required=True, metavar="{list,add,remove,set}")

        listing = subcommands.add_parser("list", help="Show members and their roles.")
        listing.add_argument("--org", required=True, metavar="SLUG")
        listing.add_argument("--user", metavar="USERNAME", help="Only this member.")

        for name, text in (("add", "Add roles (never removes any)."), ("remove", "Remove roles.")):
            edit = subcommands.add_parser(name, help=text)
            edit.add_argument("--org", required=True, metavar="SLUG")
            who = edit.add_mutually_exclusive_group(required=True)
            who.add_argument("--user", metavar="USERNAME")
            who.add_argument("--all-members", action="store_true", help="Every member of the organization.")
            edit.add_argument("roles", nargs="+", metavar="ROLE")
            edit.add_argument("--dry-run", action="store_true", help="Print the diff, write nothing.")

        replace = subcommands.add_parser(
            "set", help="Replace a member's roles with exactly these (shows what is revoked; needs --yes)."
        )
        replace.add_argument("--org", required=True, metavar="SLUG")
        replace.add_argument("--user", required=True, metavar="USERNAME")
        replace.add_argument("roles", nargs="+", metavar="ROLE")
        replace.add_argument("--yes", action="store_true", help="Apply the replacement (otherwise only show it).")
        replace.add_argument("--dry-run", action="store_true", help="Print the diff, write nothing.")

    def handle(self, *args: Any, **options: Any) -> None:
        with command_errors():
            {"list": self.list_roles, "add": self.add, "remove": self.remove, "set": self.replace}[
                options["subcommand"]
            ](options)

    def list_roles(self, options: dict[str, Any]) -> None:
        """A table of members and their roles."""
        organization = organization_get(slug=options["org"])
        if options["user"]:
            memberships = [membership_get(organization=organization, username=options["user"])]
        else:
            memberships = list(memberships_with_roles(organization=organization))
        rows = [[m.user.get_username(), ",".join(m.roles) or "-"] for m in memberships]
        if not rows:
            self.stdout.write(f"{organization.slug} has no members")
            return
        self.stdout.write(format_table(["USER", "ROLES"], rows))

    def add(self, options: dict[str, Any]) -> None:
        """Add roles to one member or to all; existing roles stay."""
        plan_role_change((), add=options["roles"])  # unknown roles first, before any lookup
        self.edit(options, single=membership_grant_roles, bulk=memberships_grant_roles_bulk)

    def remove(self, options: dict[str, Any]) -> None:
        """Remove roles from one member or from all."""
        plan_role_change((), remove=options["roles"])
        self.edit(options, single=membership_revoke_roles, bulk=memberships_revoke_roles_bulk)

    def edit(
        self,
        options: dict[str, Any],
        *,
        single: Callable[..., RoleChange],
        bulk: Callable[..., list[RoleChange]],
    ) -> None:
        """Run an additive or subtractive edit for --user or --all-members and print its diff."""
        organization = organization_get(slug=options["org"])
        actor, roles, dry_run = operator_actor(), options["roles"], options["dry_run"]
        if options["all_members"]:
            changes = run_write(lambda: bulk(actor=actor, organization=organization, roles=roles), dry_run=dry_run)
        else:
            membership = membership_get(organization=organization, username=options["user"])
            changes = [run_write(lambda: single(actor=actor, membership=membership, roles=roles), dry_run=dry_run)]
        self.report(changes, dry_run=dry_run)

    def replace(self, options: dict[str, Any]) -> None:
        """Show the replacement; apply it only with --yes (and never on --dry-run)."""
        plan_role_change((), replace=options["roles"])
        organization = organization_get(slug=options["org"])
        membership = membership_get(organization=organization, username=options["user"])
        apply = options["yes"] and not options["dry_run"]
        change = run_write(
            lambda: membership_replace_roles(actor=operator_actor(), membership=membership, roles=options["roles"]),
            dry_run=not apply,
        )
        self.report([change], dry_run=options["dry_run"])
        if change.changed and not apply and not options["dry_run"]:
            self.stdout.write(CONFIRM_NOTE)

    def report(self, changes: list[RoleChange], *, dry_run: bool) -> None:
        """One line per added/revoked role per member, then a count."""
        if not changes:
            self.stdout.write("no memberships: nothing to change")
        for change in changes:
            for line in change_lines(change):
                self.stdout.write(line)
        if len(changes) > 1:
            changed = sum(1 for change in changes if change.changed)
            verb = "would change" if dry_run else "changed"
            self.stdout.write(f"{changed} of {len(changes)} memberships {verb}")
        if dry_run:
            self.stdout.write(DRY_RUN_NOTE)
