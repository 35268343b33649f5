"""Writes to SIEM destinations: owners only, validated per kind, secrets encrypted and write-only, audited.

A new destination starts at the organization's current head (it receives events from now on) unless
`options={"replay_from": N}` asks for history: delivery then starts at sequence N (0 or 1: the whole log,
as far as retention kept it). `replay_from` is an instruction, not stored in `options`.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import ssl
from dataclasses import dataclass
from functools import partial
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

import audit
from audit.forwarding import egress, forget_destinations, schedule_forwarding
from audit.forwarding.delivery import destination_client_key, destination_sender, head_sequence
from audit.forwarding.senders import (
    SYSLOG_MIN_MESSAGE_BYTES,
    DeliveryError,
    TlsSettings,
    probe_row,
    scrub,
    tls_context,
)
from audit.models import AuditDestination, DestinationKind, Outcome
from audit.services import Actor
from organizations.models import Organization
from organizations.permissions import require_actor_permission
from portal.crypto import encrypt_secret, secret_hint

MANAGE_ACTION = "org.manage"  # owners (and superusers)
MAX_SECRET_LENGTH = 4096
MAX_CA_LENGTH = 200_000
KNOWN_OPTIONS = {
    DestinationKind.SPLUNK_HEC: {"index", "hostname"},
    DestinationKind.WEBHOOK: set(),
    DestinationKind.SYSLOG: {"facility", "hostname", "max_message_bytes", "sd_id"},
}
SECRET_NAME = {DestinationKind.SPLUNK_HEC: "HEC token", DestinationKind.WEBHOOK: "HMAC secret"}


def _validate_name(organization: Organization, name: str, exclude_pk: Any = None) -> str:
    clean = (name or "").strip()
    if not clean:
        raise ValidationError({"name": "Give the destination a name (e.g. splunk-prod)."})
    if len(clean) > 100:
        raise ValidationError({"name": "The name is longer than 100 characters."})
    taken = AuditDestination.objects.filter(organization=organization, name=clean)
    if exclude_pk is not None:
        taken = taken.exclude(pk=exclude_pk)
    if taken.exists():
        raise ValidationError({"name": f"{organization.slug} already has a destination named {clean!r}: pick another."})
    return clean


def _validate_url(url: str, kind: str) -> str:
    clean = (url or "").strip()
    example = (
        "e.g. https://splunk.internal:8088"
        if kind == DestinationKind.SPLUNK_HEC
        else "e.g. https://siem.internal/hooks"
    )
    if not clean:
        raise ValidationError({"url": f"Give the receiver's URL ({example})."})
    if len(clean) > 500:
        raise ValidationError({"url": "The URL is longer than 500 characters."})
    if any(ch.isspace() for ch in clean):
        raise ValidationError({"url": f"The URL contains spaces ({example})."})
    try:
        parts = urlsplit(clean)
        if parts.port == 0:
            raise ValueError("port 0")
    except ValueError:
        raise ValidationError({"url": f"The URL has an invalid port ({example})."}) from None
    if parts.scheme not in ("http", "https"):
        raise ValidationError({"url": f"The URL must start with https:// ({example})."})
    if not parts.hostname:
        raise ValidationError({"url": f"The URL has no host name ({example})."})
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise ValidationError(
            {
                "url": f"Use https:// ({example}): the audit trail and the secret must not cross a network in clear. "
                "Plain http:// is accepted only for this machine (a local forwarder on 127.0.0.1)."
            }
        )
    if parts.username or parts.password:
        raise ValidationError({"url": "Remove the user name / password from the URL: give the secret as `secret`."})
    if parts.query:
        raise ValidationError(
            {
                "url": "Remove the ?query from the URL: the URL is shown to owners and auditors and written to the "
                "audit log, so a credential must go in `secret`, which is encrypted and never shown."
            }
        )
    if parts.fragment:
        raise ValidationError({"url": "Remove the #fragment from the URL."})
    _refuse_blocked_host(parts.hostname, field="url")
    return clean


def _refuse_blocked_host(host: str, *, field: str) -> None:
    """ValidationError on `field` when `host` is an address (or a name for loopback) in a blocked network.

    Other names are checked when a delivery resolves them (`egress.create_connection`): DNS seen from here now may
    not be DNS seen by the worker later.
    """
    address = "127.0.0.1" if host.lower().rstrip(".") == "localhost" else host
    try:
        network = egress.blocking_network(address)
    except ValueError:
        try:  # the shorthand forms resolvers accept: 2852039166, 0xa9fea9fe, 169.254.43518, 0251.0376.0251.0376
            address = socket.inet_ntoa(socket.inet_aton(host))
        except OSError:
            return
        network = egress.blocking_network(address)
    if network is not None:
        raise ValidationError({field: egress.refusal(host, network) + "."})


def _is_loopback(hostname: str) -> bool:
    """Whether a URL's host is this machine (localhost or a loopback address)."""
    if hostname.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?$")


def _validate_host(host: str) -> str:
    clean = (host or "").strip().strip("[]")
    if not clean:
        raise ValidationError({"host": "Give the syslog receiver's host name or IP address (e.g. siem.internal)."})
    try:
        ipaddress.ip_address(clean)
    except ValueError:
        if not _HOSTNAME.match(clean) or all(label.isdigit() for label in clean.rstrip(".").split(".")):
            raise ValidationError(
                {
                    "host": f"{clean[:80]!r} is not a host name or IP address: "
                    "give only the host (the port goes in port)."
                }
            ) from None
    _refuse_blocked_host(clean, field="host")
    return clean


def _validate_port(port: Any) -> int:
    try:
        value = int(port)
    except (TypeError, ValueError):
        value = 0
    if isinstance(port, bool) or not 1 <= value <= 65535:
        raise ValidationError({"port": "Give the syslog receiver's TCP port, 1 to 65535 (often 514, or 6514 for TLS)."})
    return value


def validate_ca_certificate(pem: str) -> str:
    """A PEM bundle of one or more X.509 certificates, stripped; else ValidationError on `ca_certificate`."""
    clean = (pem or "").strip()
    if not clean:
        return ""
    if len(clean) > MAX_CA_LENGTH:
        raise ValidationError({"ca_certificate": "The CA bundle is larger than 200 kB."})
    if "PRIVATE KEY" in clean:
        raise ValidationError(
            {"ca_certificate": "This holds a private key: give only the CA certificate(s), BEGIN CERTIFICATE."}
        )
    try:
        certificates = x509.load_pem_x509_certificates(clean.encode("utf-8"))
    except ValueError:
        certificates = []
    if not certificates:
        raise ValidationError(
            {"ca_certificate": "Not a PEM certificate bundle: paste the CA certificate(s), BEGIN CERTIFICATE."}
        )
    return clean + "\n"


def validate_client_identity(certificate: str, key: str) -> tuple[str, str]:
    """(certificate PEM, private key PEM) Airlock presents for mutual TLS: both or neither, and a matching pair.

    RFC 5425 (syslog over TLS) has both ends authenticate with certificates; HTTPS receivers may ask for it too.
    ValidationError names the field to fix.
    """
    certificate, key = (certificate or "").strip(), (key or "").strip()
    if not certificate and not key:
        return "", ""
    if not certificate:
        raise ValidationError({"client_certificate": "Give the client certificate (PEM) that goes with this key."})
    if not key:
        raise ValidationError({"client_key": "Give the client certificate's private key (PEM, not encrypted)."})
    if len(certificate) > MAX_CA_LENGTH:
        raise ValidationError({"client_certificate": "The client certificate is larger than 200 kB."})
    if len(key) > MAX_SECRET_LENGTH * 4:
        raise ValidationError({"client_key": "The private key is larger than 16 kB."})
    if "PRIVATE KEY" in certificate:
        raise ValidationError({"client_certificate": "This holds a private key: the key goes in client_key."})
    try:
        chain = x509.load_pem_x509_certificates(certificate.encode("utf-8"))
    except ValueError:
        chain = []
    if not chain:
        raise ValidationError({"client_certificate": "Not a PEM certificate: paste it from BEGIN CERTIFICATE on."})
    try:
        private_key = serialization.load_pem_private_key(key.encode("utf-8"), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        message = "Not an unencrypted PEM private key: paste it from BEGIN PRIVATE KEY on, with no passphrase."
        raise ValidationError({"client_key": message}) from None
    if _public_der(private_key.public_key()) != _public_der(chain[0].public_key()):
        raise ValidationError(
            {"client_key": "This key does not belong to the client certificate (the first one given)."}
        )
    try:  # what OpenSSL will load when it sends: it refuses more than parsing does (keys that are too small)
        tls_context(TlsSettings(client_certificate=certificate, client_key=key))
    except (ssl.SSLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)
        raise ValidationError({"client_certificate": f"TLS will not use this certificate and key: {reason}."}) from None
    return certificate + "\n", key + "\n"


def _public_der(public_key: Any) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _certificate_fingerprint(certificate: str) -> str:
    """`sha256:` and the hex SHA-256 of the first certificate's DER (what audit rows show), or ""."""
    if not certificate:
        return ""
    leaf = x509.load_pem_x509_certificates(certificate.encode("utf-8"))[0]
    return "sha256:" + leaf.fingerprint(hashes.SHA256()).hex()


def _validate_secret(secret: str, kind: str) -> str:
    clean = (secret or "").strip()
    if any(ch.isspace() or ord(ch) < 32 for ch in clean):
        raise ValidationError({"secret": "The secret contains spaces or line breaks: paste only the token itself."})
    if len(clean) > MAX_SECRET_LENGTH:
        raise ValidationError({"secret": "The secret is longer than 4096 characters."})
    if kind == DestinationKind.WEBHOOK and clean and len(clean) < 16:
        raise ValidationError({"secret": "An HMAC secret needs at least 16 characters (32 random bytes are best)."})
    return clean


_OPTION_WORD = re.compile(r"[\x21-\x7e]{0,255}")
# RFC 5424 SD-ID with an enterprise number: printable ASCII but space, =, ] and ", at most 32 characters.
_SD_ID = re.compile(r'(?=.{3,32}$)[^\x00-\x20\x7f-\U0010ffff=\]"@]+@[0-9]+')


def _validate_options(options: Any, kind: str) -> dict[str, Any]:
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise ValidationError({"options": 'Options must be a JSON object, e.g. {"index": "airlock"}.'})
    allowed = KNOWN_OPTIONS.get(kind, set())
    unknown = sorted(set(options) - allowed)
    if unknown:
        known = ", ".join(sorted(allowed)) or "none"
        raise ValidationError({"options": f"Unknown option(s) {', '.join(unknown)} for {kind}; known: {known}."})
    clean: dict[str, Any] = {}
    for key, value in options.items():
        if key == "facility":
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 23:
                raise ValidationError(
                    {"options": "facility must be a syslog facility number, 0 to 23 (13: log audit)."}
                )
            clean[key] = value
        elif key == "sd_id":
            if not isinstance(value, str) or not _SD_ID.fullmatch(value):
                raise ValidationError(
                    {
                        "options": "sd_id must be NAME@ENTERPRISE-NUMBER (RFC 5424), e.g. airlock@12345: at most 32 "
                        "printable ASCII characters, without spaces, =, ] or quotes."
                    }
                )
            clean[key] = value
        elif key == "max_message_bytes":
            low, high = SYSLOG_MIN_MESSAGE_BYTES, 1024 * 1024
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValidationError(
                    {"options": f"max_message_bytes must be a number of bytes, {low} to {high} (the receiver's limit)."}
                )
            clean[key] = value
        else:
            if not isinstance(value, str) or not _OPTION_WORD.fullmatch(value):
                raise ValidationError(
                    {"options": f"{key} must be a word of at most 255 printable ASCII characters, without spaces."}
                )
            if value:
                clean[key] = value
    return clean


def _validate_replay_from(value: Any, organization: Organization) -> int:
    """The cursor a replay starts after: replay_from N sends events from sequence N on."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValidationError({"options": "replay_from must be a sequence number, 0 or more (0: the whole history)."})
    head = head_sequence(organization.pk)
    if value > head + 1:
        raise ValidationError({"options": f"replay_from {value} is past the log's head (#{head})."})
    return max(value - 1, 0)


def _check_complete(destination: AuditDestination, *, has_secret: bool, check_url: bool = True) -> None:
    """Per kind: the fields a destination needs to deliver.

    `check_url=False` (an update that leaves the URL alone) keeps a URL saved under older rules changeable in
    every other respect: above all, it can be paused.
    """
    kind = destination.kind
    if kind in (DestinationKind.SPLUNK_HEC, DestinationKind.WEBHOOK):
        if check_url or not destination.url:
            destination.url = _validate_url(destination.url, kind)
        if not has_secret:
            raise ValidationError({"secret": f"Give the {SECRET_NAME[kind]}: it is required for {kind}."})
        if destination.host or destination.port:
            raise ValidationError({"host": f"{kind} is reached by url; host and port are for syslog."})
    else:
        destination.host = _validate_host(destination.host)
        destination.port = _validate_port(destination.port)
        if destination.url:
            raise ValidationError({"url": "syslog is reached by host and port; url is for splunk-hec and webhook."})
        if has_secret:
            raise ValidationError(
                {"secret": "syslog takes no secret: authenticate the receiver with use_tls and ca_certificate."}
            )
    over_tls = destination.use_tls or destination.url.startswith("https://")
    if destination.ca_certificate and not over_tls:
        raise ValidationError(
            {"ca_certificate": "A CA bundle only applies over TLS: set use_tls or use an https:// URL."}
        )
    if destination.client_certificate and not over_tls:
        raise ValidationError(
            {"client_certificate": "A client certificate only applies over TLS: set use_tls or use an https:// URL."}
        )


def _public_fields(destination: AuditDestination) -> dict[str, Any]:
    """The destination's settings as audit rows show them (the secret only masked)."""
    return {
        "name": destination.name,
        "kind": destination.kind,
        "url": destination.url,
        "host": destination.host,
        "port": destination.port,
        "use_tls": destination.use_tls,
        "ca_certificate": "present" if destination.ca_certificate else "",
        "secret_hint": ("****" + destination.secret_hint) if destination.secret_encrypted else "",
        "client_certificate": _certificate_fingerprint(destination.client_certificate),
        "options": dict(destination.options or {}),
        "enabled": destination.enabled,
    }


def _after_commit(organization_id: int) -> None:
    forget_destinations(organization_id)
    schedule_forwarding(organization_id)


@transaction.atomic
def destination_create(
    *,
    actor: Actor,
    organization: Organization,
    name: str,
    kind: str,
    url: str = "",
    host: str = "",
    port: int | None = None,
    use_tls: bool = False,
    ca_certificate: str = "",
    secret: str = "",
    client_certificate: str = "",
    client_key: str = "",
    options: dict[str, Any] | None = None,
    enabled: bool = True,
) -> AuditDestination:
    """Add a SIEM destination; it receives events from the current head on unless options ask for `replay_from`.

    `client_certificate` / `client_key` (PEM, both or neither) identify Airlock to a receiver asking for mutual
    TLS; the key is stored encrypted and never shown again.
    """
    require_actor_permission(actor, organization, MANAGE_ACTION)
    if kind not in DestinationKind.values:
        raise ValidationError({"kind": f"Unknown kind {kind!r}: use one of {', '.join(DestinationKind.values)}."})
    options = dict(options or {}) if isinstance(options, dict) else options
    replay = options.pop("replay_from", None) if isinstance(options, dict) else None
    clean_secret = _validate_secret(secret, kind)
    certificate, key = validate_client_identity(client_certificate, client_key)
    destination = AuditDestination(
        organization=organization,
        name=_validate_name(organization, name),
        kind=kind,
        url=(url or "").strip(),
        host=(host or "").strip(),
        port=port,
        use_tls=bool(use_tls),
        ca_certificate=validate_ca_certificate(ca_certificate),
        secret_encrypted=encrypt_secret(clean_secret) if clean_secret else "",
        secret_hint=secret_hint(clean_secret) if clean_secret else "",
        client_certificate=certificate,
        client_key_encrypted=encrypt_secret(key) if key else "",
        options=_validate_options(options, kind),
        enabled=bool(enabled),
    )
    _check_complete(destination, has_secret=bool(clean_secret))
    # Lock the chain head so that no event slips between reading the head and the destination's first cursor.
    from audit.models import AuditChainHead

    head, _ = AuditChainHead.objects.select_for_update().get_or_create(organization_id=organization.pk)
    destination.delivered_sequence = head.sequence if replay is None else _validate_replay_from(replay, organization)
    try:
        with transaction.atomic():
            destination.save(force_insert=True)
    except IntegrityError:
        raise ValidationError(
            {"name": f"{organization.slug} already has a destination named {destination.name!r}: pick another."}
        ) from None
    data = _public_fields(destination)
    data["starts_after_sequence"] = destination.delivered_sequence
    audit.record(
        action="audit.destination_created", actor=actor, organization=organization, target=destination, data=data
    )
    transaction.on_commit(partial(_after_commit, organization.pk))
    return destination


_UNSET: Any = object()


@transaction.atomic
def destination_update(
    *,
    actor: Actor,
    destination: AuditDestination,
    name: str | None = None,
    url: str | None = None,
    host: str | None = None,
    port: int | None = _UNSET,
    use_tls: bool | None = None,
    ca_certificate: str | None = None,
    secret: str | None = None,
    client_certificate: str | None = None,
    client_key: str | None = None,
    options: dict[str, Any] | None = None,
    enabled: bool | None = None,
) -> AuditDestination:
    """Change a destination's settings; a non-empty `secret` replaces the stored one (the kind never changes).

    A new client certificate comes with its key (or matches the stored one); an empty `client_certificate`
    removes the client identity, key included.
    """
    organization = destination.organization
    require_actor_permission(actor, organization, MANAGE_ACTION)
    destination = AuditDestination.objects.select_for_update().get(pk=destination.pk)
    before = _public_fields(destination)
    stored_url = destination.url
    if name is not None:
        destination.name = _validate_name(organization, name, exclude_pk=destination.pk)
    if url is not None:
        destination.url = url.strip()
    if host is not None:
        destination.host = host.strip()
    if port is not _UNSET:
        destination.port = port
    if use_tls is not None:
        destination.use_tls = bool(use_tls)
    if ca_certificate is not None:
        destination.ca_certificate = validate_ca_certificate(ca_certificate)
    if options is not None:
        if isinstance(options, dict) and "replay_from" in options:
            raise ValidationError({"options": "replay_from applies when a destination is created."})
        destination.options = _validate_options(options, destination.kind)
    if enabled is not None:
        destination.enabled = bool(enabled)
    if client_certificate is not None or client_key:
        _change_client_identity(destination, client_certificate, client_key)
    new_secret = _validate_secret(secret, destination.kind) if secret else ""
    if new_secret:
        destination.secret_encrypted = encrypt_secret(new_secret)
        destination.secret_hint = secret_hint(new_secret)
    # A URL saved under older rules is checked again when it changes, and before a new secret goes to it or
    # it is resumed: anything else (pausing it, above all) stays possible.
    check_url = destination.url != stored_url or bool(new_secret) or (destination.enabled and not before["enabled"])
    _check_complete(destination, has_secret=bool(destination.secret_encrypted), check_url=check_url)
    after = _public_fields(destination)
    changes = {key: {"before": before[key], "after": after[key]} for key in after if before[key] != after[key]}
    if new_secret and "secret_hint" not in changes:
        changes["secret_hint"] = {"before": before["secret_hint"], "after": after["secret_hint"]}
    if not changes:
        return destination
    if new_secret:
        changes["secret_hint"]["rotated"] = True
    # A failing destination that was reconfigured is worth trying again at once.
    destination.next_attempt_at = None
    try:
        with transaction.atomic():
            destination.save()
    except IntegrityError:
        raise ValidationError(
            {"name": f"{organization.slug} already has a destination named {destination.name!r}."}
        ) from None
    audit.record(
        action="audit.destination_updated",
        actor=actor,
        organization=organization,
        target=destination,
        data={"changes": changes},
    )
    transaction.on_commit(partial(_after_commit, organization.pk))
    return destination


def _change_client_identity(destination: AuditDestination, certificate: str | None, key: str | None) -> None:
    """Set, replace or (with an empty certificate) remove the client identity; the stored key serves a new
    certificate given without one, when it matches."""
    if certificate is not None and not certificate.strip():
        if key:
            raise ValidationError({"client_key": "A client key needs its certificate: give client_certificate too."})
        destination.client_certificate, destination.client_key_encrypted = "", ""
        return
    if not key and destination.client_key_encrypted:
        try:
            key = destination_client_key(destination)
        except DeliveryError:
            raise ValidationError(
                {"client_key": "The stored key cannot be decrypted: give client_key again."}
            ) from None
    certificate, key = validate_client_identity(
        destination.client_certificate if certificate is None else certificate, key or ""
    )
    destination.client_certificate, destination.client_key_encrypted = certificate, encrypt_secret(key)


@transaction.atomic
def destination_set_enabled(*, actor: Actor, destination: AuditDestination, enabled: bool) -> AuditDestination:
    """Pause or resume forwarding; a paused destination keeps its cursor and catches up when resumed."""
    organization = destination.organization
    require_actor_permission(actor, organization, MANAGE_ACTION)
    destination = AuditDestination.objects.select_for_update().get(pk=destination.pk)
    if destination.enabled == bool(enabled):
        return destination
    if enabled and destination.kind in (DestinationKind.SPLUNK_HEC, DestinationKind.WEBHOOK):
        _validate_url(destination.url, destination.kind)  # one saved under older rules must be fixed first
    destination.enabled = bool(enabled)
    destination.next_attempt_at = None
    destination.save(update_fields=["enabled", "next_attempt_at"])
    audit.record(
        action="audit.destination_enabled" if enabled else "audit.destination_disabled",
        actor=actor,
        organization=organization,
        target=destination,
        data={"enabled": {"before": not destination.enabled, "after": destination.enabled}},
    )
    transaction.on_commit(partial(_after_commit, organization.pk))
    return destination


@transaction.atomic
def destination_delete(*, actor: Actor, destination: AuditDestination) -> None:
    """Remove a destination; events already sent stay sent, nothing more is forwarded to it."""
    organization = destination.organization
    require_actor_permission(actor, organization, MANAGE_ACTION)
    destination = AuditDestination.objects.select_for_update().get(pk=destination.pk)
    data = _public_fields(destination)
    data["delivered_sequence"] = destination.delivered_sequence
    audit.record(
        action="audit.destination_deleted", actor=actor, organization=organization, target=destination, data=data
    )
    destination.delete()
    transaction.on_commit(partial(forget_destinations, organization.pk))


@dataclass(frozen=True)
class ProbeResult:
    """What a test message to a destination did."""

    ok: bool
    error: str = ""


def destination_test(*, actor: Actor, destination: AuditDestination) -> ProbeResult:
    """Send one synthetic event (sequence 0, never stored) to the destination; audited, cursor untouched."""
    organization = destination.organization
    require_actor_permission(actor, organization, MANAGE_ACTION)
    secret = ""
    try:
        sender, secret = destination_sender(destination)
        sender.send([probe_row(destination)])
        result = ProbeResult(ok=True)
    except DeliveryError as exc:
        result = ProbeResult(ok=False, error=scrub(str(exc), secret))
    with transaction.atomic():
        audit.record(
            action="audit.destination_tested",
            actor=actor,
            organization=organization,
            target=destination,
            outcome=Outcome.SUCCESS if result.ok else Outcome.FAILURE,
            error=result.error,
            data={"kind": destination.kind},
        )
    return result
