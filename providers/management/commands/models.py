"""`manage.py models add|list`: offer a provider's models to an organization from a shell.

- `models add --org SLUG --provider NAME --identifier ID --display-name TEXT --context-limit N [--default]
  [--max-output-tokens N] [--input-price X --output-price Y]` (prices per million tokens)
- `models list --org SLUG`: one line per model, the default starred.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from organizations.management.cli import command_errors, format_table, operator_actor, organization_by_slug
from providers.models import LanguageModel, Provider
from providers.services import model_create


class Command(BaseCommand):
    """Add and list an organization's models."""

    help = (
        "Manage models: models add --org SLUG --provider NAME --identifier ID --display-name TEXT "
        "--context-limit N [--default] [--max-output-tokens N] [--input-price X --output-price Y] | "
        "models list --org SLUG."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        subcommands = parser.add_subparsers(dest="subcommand", required=True, metavar="{add,list}")

        add = subcommands.add_parser("add", help="Offer a provider's model to the organization.")
        add.add_argument("--org", required=True, metavar="SLUG")
        add.add_argument("--provider", required=True, metavar="NAME", help="The provider's name in the organization.")
        add.add_argument("--identifier", required=True, metavar="ID", help="The model name the provider expects.")
        add.add_argument("--display-name", default="", metavar="TEXT")
        add.add_argument("--context-limit", required=True, metavar="N", help="Context window in tokens.")
        add.add_argument("--default", action="store_true", help="Make it the organization's default model.")
        add.add_argument("--max-output-tokens", metavar="N")
        add.add_argument("--input-price", metavar="X", help="Price per million input tokens.")
        add.add_argument("--output-price", metavar="Y", help="Price per million output tokens.")
        add.add_argument("--disabled", action="store_true", help="Add it disabled (not offered for new sessions).")

        listing = subcommands.add_parser("list", help="List the organization's models.")
        listing.add_argument("--org", required=True, metavar="SLUG")

    def handle(self, *args: Any, **options: Any) -> None:
        with command_errors():
            {"add": self.add, "list": self.list_models}[options["subcommand"]](options)

    def add(self, options: dict[str, Any]) -> None:
        """Create the model through the audited service."""
        organization = organization_by_slug(options["org"])
        provider = Provider.objects.filter(organization=organization, name=options["provider"]).first()
        if provider is None:
            raise CommandError(
                f"{organization.slug} has no provider named {options['provider']!r}: "
                "see `manage.py providers list --org SLUG`."
            )
        fields: dict[str, Any] = {}
        if options["max_output_tokens"] is not None:
            fields["max_output_tokens"] = options["max_output_tokens"]
        if options["input_price"] is not None:
            fields["input_price_per_mtok"] = options["input_price"]
        if options["output_price"] is not None:
            fields["output_price_per_mtok"] = options["output_price"]
        if options["disabled"]:
            fields["is_enabled"] = False
        model = model_create(
            actor=operator_actor(),
            organization=organization,
            provider=provider,
            identifier=options["identifier"],
            display_name=options["display_name"],
            context_limit=options["context_limit"],
            is_default=options["default"],
            **fields,
        )
        star = " (default)" if model.is_default else ""
        self.stdout.write(f"added model {model.identifier!r} on {provider.name!r} to {organization.slug}{star}")

    def list_models(self, options: dict[str, Any]) -> None:
        """A table of the organization's models."""
        organization = organization_by_slug(options["org"])
        models = list(
            LanguageModel.objects.filter(organization=organization)
            .select_related("provider")
            .order_by("provider__name", "display_name")
        )
        if not models:
            self.stdout.write(f"{organization.slug} has no models")
            return
        rows = [
            [
                "*" if m.is_default else "",
                m.identifier,
                m.display_name,
                m.provider.name,
                str(m.context_limit),
                "yes" if m.is_enabled else "no",
                "restricted" if m.restricted_access else "all",
                f"{m.input_price_per_mtok.normalize()}/{m.output_price_per_mtok.normalize()}",
            ]
            for m in models
        ]
        self.stdout.write(
            format_table(["", "IDENTIFIER", "NAME", "PROVIDER", "CONTEXT", "ENABLED", "ACCESS", "PRICE IN/OUT"], rows)
        )
