"""`audit destinations [list|add|remove|enable|disable|deliver|test] --org SLUG`: SIEM forwarding destinations.

    audit destinations --org acme                          list, with lag and last error
    audit destinations add --org acme --name splunk --kind splunk-hec --url https://splunk:8088 --secret-env HEC
    audit destinations add --org acme --name siem --kind syslog --host siem.internal --port 6514 --tls --ca-file ca.pem
    audit destinations deliver --org acme [--name splunk]  deliver now (ignores backoff), print what happened
    audit destinations test --org acme --name splunk       send one test message

A new destination receives events from now on; `--from-start` sends the whole history first. Secrets are
read from an environment variable (`--secret-env`) or a file (`--secret-file`), never from the command line.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from audit.forwarding.delivery import deliver_destination
from audit.forwarding.selectors import destinations_of
from audit.forwarding.services import destination_create, destination_delete, destination_set_enabled, destination_test
from audit.models import AuditDestination, DestinationKind
from organizations.management.cli import command_errors, operator_actor
from organizations.models import Organization

HELP = "SIEM destinations: list (with lag and last error), add, remove, enable, disable, deliver now, test."

ACTIONS = ("list", "add", "remove", "enable", "disable", "deliver", "test")


def _org_argument(parser: argparse.ArgumentParser, *, top: bool) -> None:
    parser.add_argument(
        "--org",
        metavar="SLUG",
        help="the organization's slug",
        **({} if top else {"default": argparse.SUPPRESS}),
    )


def register(parser: argparse.ArgumentParser) -> None:
    """Arguments of `audit destinations`."""
    _org_argument(parser, top=True)
    actions = parser.add_subparsers(dest="destinations_action", metavar="{" + ",".join(ACTIONS) + "}")
    listing = actions.add_parser("list", help="list destinations with lag and last error (the default)")
    _org_argument(listing, top=False)

    add = actions.add_parser("add", help="add a destination")
    _org_argument(add, top=False)
    add.add_argument("--name", required=True)
    add.add_argument("--kind", required=True, choices=DestinationKind.values)
    add.add_argument("--url", default="", help="splunk-hec / webhook: the receiver's URL")
    add.add_argument("--host", default="", help="syslog: the receiver's host")
    add.add_argument("--port", type=int, default=None, help="syslog: the receiver's TCP port")
    add.add_argument("--tls", action="store_true", help="syslog: connect over TLS")
    add.add_argument("--ca-file", type=Path, help="PEM bundle of the CA(s) to trust over TLS")
    add.add_argument(
        "--client-cert-file", type=Path, help="PEM certificate Airlock presents over TLS (mutual TLS, RFC 5425)"
    )
    add.add_argument("--client-key-file", type=Path, help="its unencrypted PEM private key (stored encrypted)")
    add.add_argument("--secret-env", metavar="VAR", help="environment variable holding the HEC token / HMAC secret")
    add.add_argument("--secret-file", type=Path, help="file holding the HEC token / HMAC secret")
    add.add_argument("--index", default="", help="splunk-hec: the index to write to")
    add.add_argument("--facility", type=int, default=None, help="syslog: facility number (default 13, log audit)")
    add.add_argument("--from-start", action="store_true", help="send the whole history first (default: from now on)")
    add.add_argument("--disabled", action="store_true", help="add it paused")

    for name, text in (
        ("remove", "remove a destination"),
        ("enable", "resume forwarding to a destination"),
        ("disable", "pause forwarding to a destination (it keeps its place)"),
        ("test", "send one test message"),
    ):
        sub = actions.add_parser(name, help=text)
        _org_argument(sub, top=False)
        sub.add_argument("--name", required=True)

    deliver = actions.add_parser("deliver", help="deliver pending events now, synchronously, and print the results")
    _org_argument(deliver, top=False)
    deliver.add_argument("--name", help="only this destination (default: every enabled one)")
    deliver.add_argument("--batch-size", type=int, default=None)


def _organization(slug: str | None) -> Organization:
    if not slug:
        raise CommandError("Give --org SLUG: the organization whose destinations to manage.")
    organization = Organization.objects.filter(slug=slug).first()
    if organization is None:
        raise CommandError(f"No organization with slug {slug!r}; pass the slug shown in the organization's URL.")
    return organization


def _destination(organization: Organization, name: str) -> AuditDestination:
    destination = AuditDestination.objects.filter(organization=organization, name=name).first()
    if destination is None:
        names = ", ".join(AuditDestination.objects.filter(organization=organization).values_list("name", flat=True))
        raise CommandError(f"{organization.slug} has no destination named {name!r} (it has: {names or 'none'}).")
    return destination


def _secret(options: dict[str, Any]) -> str:
    if options.get("secret_env"):
        value = os.environ.get(options["secret_env"])
        if value is None:
            raise CommandError(f"The environment variable {options['secret_env']} is not set.")
        return value.strip()
    return _read_option_file(options, "secret_file").strip()


def _where(destination: AuditDestination) -> str:
    if destination.kind == DestinationKind.SYSLOG:
        return f"{'tls' if destination.use_tls else 'tcp'}://{destination.host}:{destination.port}"
    return destination.url


def _list(command: BaseCommand, organization: Organization) -> None:
    destinations = list(destinations_of(organization=organization))
    if not destinations:
        command.stdout.write(f"{organization.slug} has no SIEM destination; add one with `audit destinations add`.")
        return
    for d in destinations:
        state = "enabled" if d.enabled else "disabled"
        command.stdout.write(
            f"{d.name}\t{d.kind}\t{_where(d)}\t{state}\tdelivered #{d.delivered_sequence} of #{d.head_sequence}"
            f"\tlag {d.lag}\tlast error: {d.last_error or '-'}"
        )


def _read_option_file(options: dict[str, Any], name: str) -> str:
    """The text of the file an option names ("" when the option is not given); CommandError naming it."""
    path = options.get(name)
    if not path:
        return ""
    try:
        return Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or "not text"
        raise CommandError(f"Cannot read --{name.replace('_', '-')} {path}: {reason}") from None


def _add(command: BaseCommand, organization: Organization, options: dict[str, Any]) -> None:
    ca = _read_option_file(options, "ca_file")
    extra: dict[str, Any] = {}
    if options.get("index"):
        extra["index"] = options["index"]
    if options.get("facility") is not None:
        extra["facility"] = options["facility"]
    if options.get("from_start"):
        extra["replay_from"] = 0
    destination = destination_create(
        actor=operator_actor(),
        organization=organization,
        name=options["name"],
        kind=options["kind"],
        url=options.get("url") or "",
        host=options.get("host") or "",
        port=options.get("port"),
        use_tls=bool(options.get("tls")),
        ca_certificate=ca,
        secret=_secret(options),
        client_certificate=_read_option_file(options, "client_cert_file"),
        client_key=_read_option_file(options, "client_key_file"),
        options=extra,
        enabled=not options.get("disabled"),
    )
    start = "the whole history" if options.get("from_start") else f"events after #{destination.delivered_sequence}"
    command.stdout.write(f"Added {destination.name} ({destination.kind}, {_where(destination)}): sends {start}.")


def _deliver(command: BaseCommand, organization: Organization, options: dict[str, Any]) -> None:
    if options.get("name"):
        destinations = [_destination(organization, options["name"])]
    else:
        destinations = list(AuditDestination.objects.filter(organization=organization, enabled=True))
    if not destinations:
        command.stdout.write(f"{organization.slug} has no enabled destination.")
        return
    failed = []
    for destination in destinations:
        result = deliver_destination(destination.pk, batch_size=options.get("batch_size"), force=True)
        line = (
            f"{destination.name}: sent {result.delivered} event(s) in {result.batches} batch(es), "
            f"delivered #{result.delivered_sequence} of #{result.head_sequence}, lag {result.lag}"
        )
        if result.skipped:
            line += f" (skipped: {result.skipped})"
        if result.error:
            failed.append(destination.name)
            line += f"; FAILED: {result.error}"
        command.stdout.write(line)
    if failed:
        raise CommandError(f"Delivery failed for {', '.join(failed)}; events stay queued and are retried.")


def handle(command: BaseCommand, options: dict[str, Any]) -> None:
    """Run one destinations action."""
    organization = _organization(options.get("org"))
    action = options.get("destinations_action") or "list"
    with command_errors():
        if action == "list":
            _list(command, organization)
        elif action == "add":
            _add(command, organization, options)
        elif action == "deliver":
            _deliver(command, organization, options)
        else:
            destination = _destination(organization, options["name"])
            if action == "remove":
                destination_delete(actor=operator_actor(), destination=destination)
                command.stdout.write(f"Removed {destination.name}.")
            elif action in ("enable", "disable"):
                destination_set_enabled(actor=operator_actor(), destination=destination, enabled=action == "enable")
                command.stdout.write(f"{destination.name} {action}d.")
            elif action == "test":
                result = destination_test(actor=operator_actor(), destination=destination)
                if not result.ok:
                    raise CommandError(f"Test message to {destination.name} failed: {result.error}")
                command.stdout.write(f"Test message to {destination.name} acknowledged.")
