"""`manage.py orgs create|add-member|list`: organizations and their members, for the operator."""

from __future__ import annotations

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
from organizations.selectors import (
    organization_get,
    organizations_with_member_counts,
    owner_usernames_by_organization,
    user_get,
)
from organizations.services import membership_add, organization_create, plan_role_change


class Command(BaseCommand):
    """Create organizations, add members and list organizations."""

    help = (
        "Manage organizations: orgs create SLUG --name NAME --owner USERNAME | "
        "orgs add-member SLUG USERNAME [--role ROLE ...] | orgs list. Changing commands accept --dry-run."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        subcommands = parser.add_subparsers(dest="subcommand", required=True, metavar="{create,add-member,list}")

        create = subcommands.add_parser("create", help="Create an organization with its first owner.")
        create.add_argument("slug", metavar="SLUG")
        create.add_argument("--name", required=True, metavar="NAME")
        create.add_argument("--owner", required=True, metavar="USERNAME")
        create.add_argument("--dry-run", action="store_true", help="Check everything, print, write nothing.")

        add_member = subcommands.add_parser("add-member", help="Add a user to an organization.")
        add_member.add_argument("slug", metavar="SLUG")
        add_member.add_argument("username", metavar="USERNAME")
        add_member.add_argument(
            "--role",
            action="append",
            dest="roles",
            metavar="ROLE",
            help=f"A role to give (repeatable; default: member). Roles: {', '.join(Role.values)}.",
        )
        add_member.add_argument("--dry-run", action="store_true", help="Check everything, print, write nothing.")

        subcommands.add_parser("list", help="List organizations with member counts and owners.")

    def handle(self, *args: Any, **options: Any) -> None:
        with command_errors():
            handlers = {"create": self.create, "add-member": self.add_member, "list": self.list_organizations}
            handlers[options["subcommand"]](options)

    def create(self, options: dict[str, Any]) -> None:
        """Create the organization, its audit chain and the owner's membership."""
        owner = user_get(username=options["owner"])
        organization = run_write(
            lambda: organization_create(
                actor=operator_actor(), slug=options["slug"], name=options["name"], owner=owner
            ),
            dry_run=options["dry_run"],
        )
        verb = "would create" if options["dry_run"] else "created"
        self.stdout.write(f"{verb} organization {organization.slug} ({organization.name})")
        for line in change_lines(plan_role_change((), add=[Role.OWNER]), username=owner.get_username()):
            self.stdout.write(line)
        if options["dry_run"]:
            self.stdout.write(DRY_RUN_NOTE)

    def add_member(self, options: dict[str, Any]) -> None:
        """Make a user a member with the given roles."""
        roles = options["roles"] or [Role.MEMBER]
        change = plan_role_change((), add=roles)  # unknown roles are reported before unknown names
        organization = organization_get(slug=options["slug"])
        user = user_get(username=options["username"])
        run_write(
            lambda: membership_add(actor=operator_actor(), organization=organization, user=user, roles=roles),
            dry_run=options["dry_run"],
        )
        verb = "would add" if options["dry_run"] else "added"
        self.stdout.write(f"{verb} {user.get_username()} to {organization.slug}")
        for line in change_lines(change, username=user.get_username()):
            self.stdout.write(line)
        if options["dry_run"]:
            self.stdout.write(DRY_RUN_NOTE)

    def list_organizations(self, options: dict[str, Any]) -> None:
        """A table of organizations: slug, name, member count, owners."""
        owners = owner_usernames_by_organization()
        rows = [
            [org.slug, org.name, str(org.member_count), ",".join(owners.get(org.pk, [])) or "-"]
            for org in organizations_with_member_counts()
        ]
        if not rows:
            self.stdout.write("no organizations (create one with: manage.py orgs create SLUG --name NAME --owner USER)")
            return
        self.stdout.write(format_table(["SLUG", "NAME", "MEMBERS", "OWNERS"], rows))
