"""`manage.py providers add|list|check|rotate-keys`: configure LLM providers from a shell (scripted, air-gapped).

- `providers add --org SLUG --name NAME --kind KIND [--base-url URL] [--api-key-stdin] [--api-version V]
  [--region R] [--aws-access-key-id ID] [--ambient-credentials] [--header 'Name: value' ...]`
  The key is read from standard input (never from the command line, where `ps` and shell history see it).
- `providers list --org SLUG`: one line per provider, the key shown as ****abcd at most.
- `providers check [--org SLUG] [NAME] [--model IDENTIFIER]`: the connectivity check of every provider of the
  organization (of every organization without --org), each step printed; exit status 1 when any fails.
- `providers rotate-keys`: re-encrypt every stored secret under the first key of AIRLOCK_ENCRYPTION_KEYS.
"""

from __future__ import annotations

import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from organizations.management.cli import command_errors, format_table, operator_actor, organization_by_slug
from providers.checks import CheckResult, provider_check
from providers.models import Provider, ProviderKind
from providers.services import provider_create, secrets_rotate


def parse_headers(values: list[str]) -> dict[str, str]:
    """'Name: value' strings as a dict; CommandError naming --header for a malformed one."""
    headers: dict[str, str] = {}
    for value in values:
        name, colon, rest = value.partition(":")
        if not colon or not name.strip():
            raise CommandError(f"--header {value!r} is not 'Name: value' (e.g. --header 'X-Team: ml').")
        headers[name.strip()] = rest.strip()
    return headers


def print_result(stdout: Any, label: str, result: CheckResult) -> None:
    """The check of one provider: a heading, one line per step, the outcome."""
    stdout.write(label)
    for step in result.steps:
        mark = "ok  " if step.ok else "FAIL"
        stdout.write(f"  {mark} {step.name:<11} {step.detail} ({step.duration_ms} ms)")
    stdout.write(f"  => {'OK' if result.ok else 'FAILED'}: {result.summary}")


class Command(BaseCommand):
    """Add, list and check an organization's LLM providers; re-encrypt stored secrets."""

    help = (
        "Manage LLM providers: providers add --org SLUG --name NAME --kind KIND [...] | providers list --org SLUG | "
        "providers check [--org SLUG] [NAME] | providers rotate-keys. "
        f"Kinds: {', '.join(ProviderKind.values)}."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        subcommands = parser.add_subparsers(dest="subcommand", required=True, metavar="{add,list,check,rotate-keys}")

        add = subcommands.add_parser("add", help="Add a provider (the key is read from standard input).")
        add.add_argument("--org", required=True, metavar="SLUG")
        add.add_argument("--name", required=True)
        add.add_argument("--kind", required=True, metavar="KIND", help=", ".join(ProviderKind.values))
        add.add_argument("--base-url", default="", metavar="URL")
        add.add_argument(
            "--api-key-stdin",
            action="store_true",
            help="Read the API key (Bedrock: the AWS secret access key) from standard input.",
        )
        add.add_argument("--api-version", default="", metavar="V", help="Azure OpenAI API version.")
        add.add_argument("--region", default="", metavar="R", help="AWS region (Bedrock).")
        add.add_argument("--aws-access-key-id", default="", metavar="ID")
        add.add_argument("--ambient-credentials", action="store_true", help="Bedrock: use the server's own AWS role.")
        add.add_argument("--simulator", action="store_true", help="Mark it as the offline simulator.")
        add.add_argument(
            "--header", action="append", default=[], metavar="'Name: value'", help="Extra header (repeatable)."
        )

        listing = subcommands.add_parser("list", help="List an organization's providers.")
        listing.add_argument("--org", required=True, metavar="SLUG")

        check = subcommands.add_parser("check", help="Check DNS, TCP, TLS and the key of providers.")
        check.add_argument("--org", metavar="SLUG", help="Only this organization (default: every organization).")
        check.add_argument("name", nargs="?", metavar="NAME", help="Only the provider with this name.")
        check.add_argument("--model", metavar="IDENTIFIER", help="Also check that this model is served.")

        subcommands.add_parser("rotate-keys", help="Re-encrypt every stored secret under the first key.")

    def handle(self, *args: Any, **options: Any) -> None:
        with command_errors():
            {"add": self.add, "list": self.list_providers, "check": self.check, "rotate-keys": self.rotate}[
                options["subcommand"]
            ](options)

    def add(self, options: dict[str, Any]) -> None:
        """Create the provider through the audited service and print it (never the key)."""
        organization = organization_by_slug(options["org"])
        api_key = ""
        if options["api_key_stdin"]:
            api_key = sys.stdin.readline().strip()
            if not api_key:
                raise CommandError(
                    '--api-key-stdin: standard input was empty; pipe the key in (printf %s "$KEY" | ...).'
                )
        provider = provider_create(
            actor=operator_actor(),
            organization=organization,
            name=options["name"],
            kind=options["kind"],
            base_url=options["base_url"],
            api_key=api_key,
            is_simulator=options["simulator"],
            extra_headers=parse_headers(options["header"]),
            api_version=options["api_version"],
            region=options["region"],
            aws_access_key_id=options["aws_access_key_id"],
            use_ambient_credentials=options["ambient_credentials"],
        )
        key = f", key ****{provider.api_key_hint}" if provider.has_api_key else ", no key"
        self.stdout.write(f"added provider {provider.name!r} ({provider.kind}{key}) to {organization.slug}")

    def list_providers(self, options: dict[str, Any]) -> None:
        """A table of the organization's providers."""
        organization = organization_by_slug(options["org"])
        providers = list(Provider.objects.filter(organization=organization).order_by("name"))
        if not providers:
            self.stdout.write(f"{organization.slug} has no providers")
            return
        rows = [
            [
                p.name,
                p.kind,
                p.base_url or "-",
                (f"****{p.api_key_hint}" if p.api_key_hint else "stored") if p.has_api_key else "-",
                p.region or p.api_version or "-",
            ]
            for p in providers
        ]
        self.stdout.write(format_table(["NAME", "KIND", "BASE URL", "KEY", "REGION/VERSION"], rows))

    def check(self, options: dict[str, Any]) -> None:
        """Check the chosen providers, print every step, fail when any check fails."""
        providers = Provider.objects.select_related("organization").order_by("organization__slug", "name")
        if options["org"]:
            providers = providers.filter(organization=organization_by_slug(options["org"]))
        if options["name"]:
            providers = providers.filter(name=options["name"])
        chosen = list(providers)
        if not chosen:
            where = f" in {options['org']}" if options["org"] else ""
            what = f"named {options['name']!r}" if options["name"] else "configured"
            raise CommandError(f"No provider {what}{where}: see `manage.py providers list --org SLUG`.")
        failed = 0
        for provider in chosen:
            model = None
            if options["model"]:
                model = provider.models.filter(identifier=options["model"]).first()
                if model is None:
                    raise CommandError(
                        f"{provider.organization.slug}/{provider.name} has no model {options['model']!r}: "
                        "see `manage.py models list --org SLUG`."
                    )
            result = provider_check(actor=operator_actor(), provider=provider, model=model)
            endpoint = provider.base_url or "vendor default"
            label = f"{provider.organization.slug}/{provider.name} ({provider.kind}, {endpoint})"
            print_result(self.stdout, label, result)
            failed += not result.ok
        if failed:
            raise CommandError(f"{failed} of {len(chosen)} provider check(s) failed.")
        self.stdout.write(f"{len(chosen)} provider check(s) passed")

    def rotate(self, options: dict[str, Any]) -> None:
        """Re-encrypt every stored secret under the first key and print the counts."""
        counts = secrets_rotate(actor=operator_actor())
        self.stdout.write(
            f"re-encrypted {counts['provider_keys']} provider key(s) and {counts['destination_secrets']} "
            f"audit destination secret(s) in {counts['organizations']} organization(s) under the first key of "
            "AIRLOCK_ENCRYPTION_KEYS"
        )
