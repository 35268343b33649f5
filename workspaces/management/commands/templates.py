"""`manage.py templates add|list|lint`: an organization's workspace templates from a shell.

- `templates add --org SLUG --name NAME --description TEXT [--backend bubblewrap|local] [--timeout SECONDS]
  [--output-cap BYTES] [--memory-mb MB] [--disabled]`
- `templates list --org SLUG`: one line per template.
- `templates lint [--org SLUG] [--strict]`: what would stop agents from choosing or starting the templates
  (a backend this host cannot run, descriptions the agent cannot tell apart); exits 1 on an error, or on a
  warning with `--strict`.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from organizations.management.cli import command_errors, format_table, operator_actor, organization_by_slug
from organizations.models import Organization
from workspaces.lint import ERROR, lint_templates
from workspaces.models import WorkspaceBackend
from workspaces.selectors import organization_templates
from workspaces.services import template_create


def _whole_number(option: str, value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise CommandError(f"{option} takes a whole number, not {value!r}.") from None


class Command(BaseCommand):
    """Add, list and lint an organization's workspace templates."""

    help = (
        "Manage workspace templates: templates add --org SLUG --name NAME --description TEXT [--backend B] "
        "[--timeout S] [--output-cap BYTES] [--memory-mb MB] [--disabled] | templates list --org SLUG | "
        "templates lint [--org SLUG] [--strict]."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        subcommands = parser.add_subparsers(dest="subcommand", required=True, metavar="{add,list,lint}")

        add = subcommands.add_parser("add", help="Add a template the organization's agents may start.")
        add.add_argument("--org", required=True, metavar="SLUG")
        add.add_argument("--name", required=True, help="What the agent names it by, e.g. python-3-12.")
        add.add_argument("--description", required=True, metavar="TEXT", help="What the agent chooses it by.")
        add.add_argument("--backend", default=WorkspaceBackend.BUBBLEWRAP, choices=WorkspaceBackend.values)
        add.add_argument("--timeout", metavar="SECONDS", help="Longest a command may run.")
        add.add_argument("--output-cap", metavar="BYTES", help="Output kept per command.")
        add.add_argument("--memory-mb", metavar="MB", help="Address-space limit of each process of a command.")
        add.add_argument("--disabled", action="store_true", help="Add it disabled (agents do not see it).")

        listing = subcommands.add_parser("list", help="List the organization's templates.")
        listing.add_argument("--org", required=True, metavar="SLUG")

        lint = subcommands.add_parser("lint", help="Check that agents can choose and start the templates.")
        lint.add_argument("--org", metavar="SLUG", help="One organization (default: all).")
        lint.add_argument("--strict", action="store_true", help="Fail on warnings too.")

    def handle(self, *args: Any, **options: Any) -> None:
        with command_errors():
            {"add": self.add, "list": self.list_templates, "lint": self.lint}[options["subcommand"]](options)

    def add(self, options: dict[str, Any]) -> None:
        """Create the template through the audited service."""
        organization = organization_by_slug(options["org"])
        limits = {
            "command_timeout_seconds": _whole_number("--timeout", options["timeout"]),
            "output_cap_bytes": _whole_number("--output-cap", options["output_cap"]),
            "memory_limit_mb": _whole_number("--memory-mb", options["memory_mb"]),
        }
        template = template_create(
            actor=operator_actor(),
            organization=organization,
            name=options["name"],
            description=options["description"],
            backend=options["backend"],
            is_enabled=not options["disabled"],
            **{field: value for field, value in limits.items() if value is not None},
        )
        self.stdout.write(f"added template {template.name!r} ({template.backend}) to {organization.slug}")

    def list_templates(self, options: dict[str, Any]) -> None:
        """A table of the organization's templates."""
        organization = organization_by_slug(options["org"])
        templates = organization_templates(organization=organization)
        if not templates:
            self.stdout.write(f"{organization.slug} has no workspace templates")
            return

        def limit(value: int | None) -> str:
            return "default" if value is None else str(value)

        rows = [
            [
                t.name,
                t.backend,
                "yes" if t.is_enabled else "no",
                limit(t.command_timeout_seconds),
                limit(t.output_cap_bytes),
                limit(t.memory_limit_mb),
                t.description if len(t.description) <= 60 else t.description[:57] + "...",
            ]
            for t in templates
        ]
        headers = ["NAME", "BACKEND", "ENABLED", "TIMEOUT S", "OUTPUT CAP", "MEMORY MB", "DESCRIPTION"]
        self.stdout.write(format_table(headers, rows))

    def lint(self, options: dict[str, Any]) -> None:
        """Print every finding; fail on an error (or any finding with --strict)."""
        if options["org"]:
            organizations = [organization_by_slug(options["org"])]
        else:
            organizations = list(Organization.objects.order_by("slug"))
        findings = lint_templates(organizations)
        for finding in findings:
            self.stdout.write(str(finding))
        errors = sum(1 for finding in findings if finding.severity == ERROR)
        warnings = len(findings) - errors
        summary = f"{len(organizations)} organization(s): {errors} error(s), {warnings} warning(s)"
        if errors or (options["strict"] and warnings):
            raise CommandError(summary)
        self.stdout.write(summary)
