"""`python manage.py audit SUBCOMMAND ...`: audit log tools (one module per subcommand in audit/cli/)."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

import audit.cli


def _subcommands() -> dict[str, Any]:
    modules = {}
    for info in sorted(pkgutil.iter_modules(audit.cli.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"audit.cli.{info.name}")
        if hasattr(module, "register") and hasattr(module, "handle"):
            modules[info.name] = module
    return modules


class Command(BaseCommand):
    """Dispatch to the subcommand modules of audit/cli/ (verify, export, checkpoint, purge, ...)."""

    help = "Audit log tools: verify, export, checkpoint, purge and more; `audit SUBCOMMAND --help` for each."

    def add_arguments(self, parser: CommandParser) -> None:
        self.modules = _subcommands()
        subparsers = parser.add_subparsers(dest="subcommand", metavar="{" + ",".join(self.modules) + "}", required=True)
        for name, module in self.modules.items():
            module.register(subparsers.add_parser(name, help=module.HELP, description=module.HELP))

    def handle(self, *args: Any, **options: Any) -> None:
        self.modules[options["subcommand"]].handle(self, options)
