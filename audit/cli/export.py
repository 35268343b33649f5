"""`audit export --org SLUG --format jsonl|csv|ocsf|cef [--since ISO] [--until ISO] -o FILE`: export the log."""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path
from typing import Any

from django.core.exceptions import ImproperlyConfigured, ValidationError
from django.core.management.base import BaseCommand, CommandError

from audit.export_services import export_params_parse, export_to_file, export_to_stream
from audit.exporters import FORMATS
from audit.services import SystemActor
from organizations.models import Organization

HELP = (
    "Export an organization's audit log (JSON Lines, CSV, OCSF or CEF) to a file plus a signed manifest "
    "(FILE.manifest.json), or to stdout with -o -. The export is itself audited."
)


def register(parser: argparse.ArgumentParser) -> None:
    """Arguments of `audit export`."""
    parser.add_argument("--org", required=True, metavar="SLUG", help="the organization's slug")
    parser.add_argument("--format", required=True, choices=list(FORMATS), help="export format")
    parser.add_argument("--since", metavar="ISO", help="from this UTC date or time on (inclusive)")
    parser.add_argument("--until", metavar="ISO", help="before this UTC date or time (exclusive)")
    parser.add_argument(
        "-o", "--output", required=True, metavar="FILE", help="file to write (manifest next to it); - for stdout"
    )


class _TextSink:
    """A binary write/flush onto a text stream (stdout replaced by a StringIO, as in call_command)."""

    def __init__(self, text: Any) -> None:
        self.text = text

    def write(self, data: bytes) -> int:
        return self.text.write(data.decode("utf-8"))

    def flush(self) -> None:
        self.text.flush()


def _actor() -> SystemActor:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return SystemActor(f"cli:{user}")


def handle(command: BaseCommand, options: dict[str, Any]) -> None:
    """Write the export and its manifest, print the row count and sha256."""
    slug = options["org"]
    organization = Organization.objects.filter(slug=slug).first()
    if organization is None:
        raise CommandError(f"No organization with slug {slug!r}; pass the slug shown in the organization's URL.")
    try:
        params = export_params_parse(format=options["format"], since=options.get("since"), until=options.get("until"))
    except ValidationError as exc:
        name, messages = next(iter(exc.message_dict.items()))
        raise CommandError(f"--{name}: {' '.join(messages)}") from exc
    output = options["output"]
    try:
        if output == "-":
            text = getattr(command.stdout, "_out", sys.stdout)
            out = getattr(text, "buffer", None) or _TextSink(text)
            stats = export_to_stream(actor=_actor(), organization=organization, params=params, out=out)
            command.stderr.write(f"Exported {stats.row_count} events, sha256 {stats.sha256}")
            return
        path = Path(output)
        if not path.parent.is_dir():
            raise CommandError(f"-o {output}: the folder {path.parent} does not exist.")
        result = export_to_file(actor=_actor(), organization=organization, params=params, path=path)
    except ImproperlyConfigured as exc:
        raise CommandError(str(exc)) from exc
    except OSError as exc:
        raise CommandError(f"-o {output}: {exc.strerror or exc}") from exc
    stats = result.stats
    command.stdout.write(
        f"Exported {stats.row_count} events to {path} (sha256 {stats.sha256}); "
        f"signed manifest {path}.manifest.json (key {result.manifest['key_id']})"
    )
