"""One sender per destination kind: Splunk HEC, signed HTTPS webhook, syslog (RFC 5424 over TCP or TLS).

A sender's `send(rows)` returns only once the receiver acknowledged every event of the batch, and raises
`DeliveryError` otherwise (the caller then keeps its cursor where it was: the whole batch is sent again).
Only the standard library is used (http.client, socket, ssl).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import hmac
import http.client
import json
import os
import re
import socket
import ssl
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

from django.conf import settings

from audit.chain import format_time
from audit.forwarding import egress
from audit.forwarding.events import event_as_json
from audit.models import AuditDestination, DestinationKind, Outcome
from audit.secrets import without_secrets

HEC_PATH = "/services/collector/event"
HEC_SOURCE = "airlock"
HEC_SOURCETYPE = "airlock:audit"
SYSLOG_APP_NAME = "airlock"
# RFC 5424 SD-ID: a name and an IANA enterprise number. 32473 is the number RFC 5612 sets aside for examples:
# an organization with its own number sets it in the destination's `sd_id` option.
SYSLOG_SD_ID = "airlock@32473"
SYSLOG_DEFAULT_FACILITY = 13  # "log audit"
# Severity by outcome: success = informational, failure = notice, denied = warning.
SYSLOG_SEVERITY = {Outcome.SUCCESS: 6, Outcome.FAILURE: 5, Outcome.DENIED: 4}
SYSLOG_BOM = b"\xef\xbb\xbf"
# Longest message sent whole (syslog-ng's default limit; rsyslog's is 8 KiB): `max_message_bytes` option.
SYSLOG_MAX_MESSAGE_BYTES = 64 * 1024
SYSLOG_MIN_MESSAGE_BYTES = 2048  # what RFC 5425 says every receiver must accept
# What a message cut to its limit still says of the event (with its size and sha256).
SYSLOG_STAND_IN_FIELDS = ("id", "organization", "sequence", "occurred_at", "action", "outcome", "hash")
MAX_RESPONSE_BYTES = 64 * 1024
USER_AGENT = "airlock-audit-forwarder"


class DeliveryError(Exception):
    """The receiver did not acknowledge a batch; the message never holds a secret."""


class Sender(Protocol):
    """Sends a batch of events to one destination."""

    def send(self, rows: Sequence[Any]) -> None:
        """Deliver every row or raise DeliveryError."""


def _timeout() -> float:
    return float(getattr(settings, "AUDIT_FORWARDING_TIMEOUT_SECONDS", 10))


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str).encode("utf-8")


@dataclass(frozen=True)
class TlsSettings:
    """How a sender speaks TLS: the CA bundle it trusts (empty: the system's) and its client identity, if any."""

    ca_certificate: str = ""
    client_certificate: str = ""
    client_key: str = ""


def tls_context(tls: TlsSettings) -> ssl.SSLContext:
    """A client TLS context that trusts the given PEM bundle (or the system's CAs) and presents the client
    certificate when one is set (mutual TLS)."""
    context = ssl.create_default_context(cadata=tls.ca_certificate or None)
    if tls.client_certificate:
        _load_client_identity(context, tls.client_certificate, tls.client_key)
    return context


def _load_client_identity(context: ssl.SSLContext, certificate: str, key: str) -> None:
    """ssl loads a certificate and key only from a file: an anonymous in-memory file (memfd, never on disk)
    where the system has one, else a private temporary file removed at once."""
    identity = (certificate.strip() + "\n" + key.strip() + "\n").encode("utf-8")
    descriptor = -1
    if hasattr(os, "memfd_create"):
        with contextlib.suppress(OSError):  # a kernel or sandbox that refuses it: the temporary file below
            descriptor = os.memfd_create("airlock-client-identity", os.MFD_CLOEXEC)
    if descriptor >= 0:
        try:
            view = memoryview(identity)
            while view:
                view = view[os.write(descriptor, view) :]
            context.load_cert_chain(f"/proc/self/fd/{descriptor}")
        finally:
            os.close(descriptor)
        return
    with tempfile.TemporaryDirectory() as folder:  # created 0700
        path = os.path.join(folder, "identity.pem")
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as file:
            file.write(identity)
        context.load_cert_chain(path)


def hec_endpoint(url: str) -> str:
    """The HEC event endpoint for a URL given as a base (`https://splunk:8088`) or as the full endpoint."""
    parts = urlsplit(url)
    path = parts.path.rstrip("/")
    if path.endswith("/services/collector"):
        path += "/event"
    elif not path.endswith("/services/collector/event") and not path.endswith("/services/collector/event/1.0"):
        path = path + HEC_PATH
    return parts._replace(path=path).geturl()


def _describe_os_error(exc: BaseException, where: str) -> str:
    reason = getattr(exc, "strerror", None) or exc.__class__.__name__
    if isinstance(exc, ssl.SSLError):
        reason = getattr(exc, "reason", None) or str(exc)
    elif isinstance(exc, TimeoutError | socket.timeout):
        reason = "timed out"
    return f"cannot deliver to {where}: {reason}"


def _post(url: str, body: bytes, headers: dict[str, str], tls: TlsSettings) -> tuple[int, bytes]:
    """POST a body and return (status, first bytes of the answer); DeliveryError when nothing usable came back."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    where = f"{host}:{parts.port}" if parts.port else host
    timeout = _timeout()
    try:
        if parts.scheme == "https":
            connection: http.client.HTTPConnection = http.client.HTTPSConnection(
                host, parts.port, timeout=timeout, context=tls_context(tls)
            )
        else:
            connection = http.client.HTTPConnection(host, parts.port, timeout=timeout)
    except OSError as exc:  # ssl.SSLError too: the CA bundle or client certificate OpenSSL will not load
        raise DeliveryError(_describe_os_error(exc, where)) from None
    connection._create_connection = egress.create_connection  # type: ignore[attr-defined]  # the blocked networks
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    try:
        connection.request(
            "POST",
            target,
            body=body,
            headers={"User-Agent": USER_AGENT, "Content-Length": str(len(body)), **headers},
        )
        response = connection.getresponse()
        answer = response.read(MAX_RESPONSE_BYTES)
        return response.status, answer
    except ssl.SSLError as exc:
        raise DeliveryError(_describe_os_error(exc, where)) from None
    except http.client.HTTPException as exc:
        raise DeliveryError(
            f"cannot deliver to {where}: the receiver closed the connection without an answer "
            f"({exc.__class__.__name__})"
        ) from None
    except OSError as exc:
        raise DeliveryError(_describe_os_error(exc, where)) from None
    finally:
        connection.close()


def _answer_excerpt(answer: bytes) -> str:
    text = answer.decode("utf-8", "replace").strip().replace("\n", " ")
    return text[:200]


@dataclass
class SplunkHecSender:
    """Splunk HTTP Event Collector: one POST per batch, newline-separated event objects, `{"code": 0}` is success."""

    url: str
    token: str
    tls: TlsSettings = TlsSettings()
    index: str = ""
    hostname: str = ""
    organization_slug: str = ""
    # A GUID per destination: HEC requires a request channel when the token has indexer acknowledgement on,
    # and ignores it otherwise.
    channel: str = ""

    def body(self, rows: Sequence[Any]) -> bytes:
        """The HEC payload: one JSON object per event, separated by newlines."""
        lines = []
        for row in rows:
            item: dict[str, Any] = {
                "time": round(row.occurred_at.timestamp(), 6),
                "host": self.hostname,
                "source": HEC_SOURCE,
                "sourcetype": HEC_SOURCETYPE,
                "event": event_as_json(row, organization_slug=self.organization_slug),
            }
            if self.index:
                item["index"] = self.index
            lines.append(_json_bytes(item))
        return b"\n".join(lines)

    def send(self, rows: Sequence[Any]) -> None:
        """POST the batch; success only on HTTP 200 with `{"code": 0}`."""
        endpoint = hec_endpoint(self.url)
        status, answer = _post(
            endpoint,
            self.body(rows),
            {
                "Authorization": f"Splunk {self.token}",
                "Content-Type": "application/json",
                **({"X-Splunk-Request-Channel": self.channel} if self.channel else {}),
            },
            self.tls,
        )
        try:
            parsed = json.loads(answer or b"null")
        except ValueError:
            parsed = None
        code = parsed.get("code") if isinstance(parsed, dict) else None
        if status == 200 and code == 0:
            return
        text = parsed.get("text") if isinstance(parsed, dict) else _answer_excerpt(answer)
        detail = f"{text} (code {code})" if code is not None else (text or "no HEC answer")
        raise DeliveryError(f"Splunk HEC answered HTTP {status}: {detail}")


def webhook_signature(secret: str, timestamp: str, body: bytes) -> str:
    """The X-Airlock-Signature header value: `sha256=` and the hex HMAC-SHA256 of `<timestamp>.<raw body>`.

    The timestamp (X-Airlock-Timestamp, Unix seconds) is signed with the body, so that a receiver that rejects
    old timestamps also rejects a captured request sent again.
    """
    message = timestamp.encode("ascii") + b"." + body
    return "sha256=" + hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


# Namespace of the X-Airlock-Delivery ids (uuid5 of the destination and the batch's sequence range).
_DELIVERY_NAMESPACE = uuid.UUID("6f1d7c3e-8a52-4d0b-9c1e-5b7f2a4e9d13")


@dataclass
class WebhookSender:
    """A JSON POST `{"events": [...]}` signed with HMAC-SHA256; any 2xx is success."""

    url: str
    secret: str
    tls: TlsSettings = TlsSettings()
    organization_slug: str = ""
    destination_id: str = ""

    def send(self, rows: Sequence[Any]) -> None:
        """POST the batch with its signature, timestamp and delivery id.

        The delivery id is the same whenever the same events are sent again (a retry after a lost answer), so
        a receiver can drop a repeated batch whole; each event also carries its own id.
        """
        slug = self.organization_slug
        body = _json_bytes({"events": [event_as_json(row, organization_slug=slug) for row in rows]})
        timestamp = str(int(time.time()))
        batch = f"{self.destination_id}:{rows[0].id}:{rows[-1].id}:{len(rows)}" if rows else str(uuid.uuid4())
        headers = {
            "Content-Type": "application/json",
            "X-Airlock-Signature": webhook_signature(self.secret, timestamp, body),
            "X-Airlock-Timestamp": timestamp,
            "X-Airlock-Delivery": str(uuid.uuid5(_DELIVERY_NAMESPACE, batch)),
        }
        status, answer = _post(self.url, body, headers, self.tls)
        if 200 <= status < 300:
            return
        excerpt = _answer_excerpt(answer)
        raise DeliveryError(f"webhook answered HTTP {status}" + (f": {excerpt}" if excerpt else ""))


_NOT_PRINTUSASCII = re.compile(r"[^\x21-\x7e]")


def _syslog_token(text: str, limit: int) -> str:
    """An RFC 5424 header field: printable US-ASCII without spaces, cut to its limit, `-` when empty."""
    clean = _NOT_PRINTUSASCII.sub("_", text)[:limit]
    return clean or "-"


def _sd_value(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def syslog_message(
    row: Any,
    *,
    hostname: str,
    facility: int = SYSLOG_DEFAULT_FACILITY,
    organization_slug: str = "",
    max_bytes: int = SYSLOG_MAX_MESSAGE_BYTES,
    sd_id: str = SYSLOG_SD_ID,
) -> bytes:
    """One RFC 5424 message: `<PRI>1 TIMESTAMP HOSTNAME airlock - ACTION [airlock@32473 seq id] BOM JSON`.

    The MSG is UTF-8 and so starts with a byte order mark (RFC 5424 section 6.4). A message longer than
    `max_bytes` (receivers cut or drop what passes their limit, silently) carries a stand-in instead of the
    event: its id, sequence, action, outcome and time, `"truncated": true`, and the size and sha256 of the
    event's JSON, to be fetched whole from Airlock's log.
    """
    severity = SYSLOG_SEVERITY.get(row.outcome, 5)
    header = " ".join(
        [
            f"<{facility * 8 + severity}>1",
            format_time(row.occurred_at),
            _syslog_token(hostname, 255),
            SYSLOG_APP_NAME,
            "-",
            _syslog_token(row.action, 32),
        ]
    )
    structured = (
        f'[{sd_id} seq="{row.sequence}" id="{_sd_value(str(row.id))}" '
        f'org="{row.organization_id}" outcome="{_sd_value(str(row.outcome))}"]'
    )
    prefix = f"{header} {structured} ".encode() + SYSLOG_BOM
    event = event_as_json(row, organization_slug=organization_slug)
    body = _json_bytes(event)
    if len(prefix) + len(body) > max_bytes:
        stand_in = {name: event.get(name) for name in SYSLOG_STAND_IN_FIELDS}
        stand_in.update(truncated=True, bytes=len(body), sha256=hashlib.sha256(body).hexdigest())
        body = _json_bytes(stand_in)
    return prefix + body


def octet_frame(message: bytes) -> bytes:
    """RFC 6587 octet counting: `MSG-LEN SP SYSLOG-MSG`."""
    return str(len(message)).encode("ascii") + b" " + message


@dataclass
class SyslogSender:
    """RFC 5424 over TCP or TLS, octet-counted (RFC 6587), one message per event, one connection per batch.

    Syslog has no application-level acknowledgement: after writing the batch the sender half-closes the
    connection (over TLS: sends close_notify) and waits for the receiver to close its side, which it does only
    after reading everything. A reset, a TLS alert or a timeout instead means the batch was not (entirely)
    received. Over TLS the sender presents its client certificate when the destination has one (RFC 5425).
    """

    host: str
    port: int
    use_tls: bool = False
    tls: TlsSettings = TlsSettings()
    hostname: str = ""
    facility: int = SYSLOG_DEFAULT_FACILITY
    organization_slug: str = ""
    max_message_bytes: int = SYSLOG_MAX_MESSAGE_BYTES
    sd_id: str = SYSLOG_SD_ID

    def send(self, rows: Sequence[Any]) -> None:
        """Write the framed messages, half-close, and wait for the receiver's close."""
        payload = b"".join(
            octet_frame(
                syslog_message(
                    row,
                    hostname=self.hostname,
                    facility=self.facility,
                    organization_slug=self.organization_slug,
                    max_bytes=self.max_message_bytes,
                    sd_id=self.sd_id,
                )
            )
            for row in rows
        )
        where = f"{self.host}:{self.port}"
        timeout = _timeout()
        try:
            raw = egress.create_connection((self.host, self.port), timeout=timeout)
        except OSError as exc:
            raise DeliveryError(_describe_os_error(exc, where)) from None
        sock: socket.socket = raw
        try:
            if self.use_tls:
                sock = tls_context(self.tls).wrap_socket(raw, server_hostname=self.host)
            sock.sendall(payload)
            if isinstance(sock, ssl.SSLSocket):
                # TLS ends with close_notify (RFC 5425), sent after the data. A receiver that read it all answers
                # with its own close_notify, or closes: either is its acknowledgement. One that refused us (under
                # TLS 1.3 a refused client certificate is only said after the handshake) answers with an alert
                # or a reset, which raise here.
                try:
                    sock = sock.unwrap()
                except ssl.SSLEOFError:
                    return
            sock.shutdown(socket.SHUT_WR)
            while True:
                chunk = sock.recv(4096)
                if not chunk:
                    return
        except ssl.SSLError as exc:
            raise DeliveryError(_describe_os_error(exc, where)) from None
        except OSError as exc:
            raise DeliveryError(_describe_os_error(exc, where)) from None
        finally:
            sock.close()
            raw.close()


def build_sender(destination: AuditDestination, secret: str, *, client_key: str = "") -> Sender:
    """The sender for a destination, given its decrypted secret and client key."""
    options = destination.options or {}
    tls = TlsSettings(
        ca_certificate=destination.ca_certificate,
        client_certificate=destination.client_certificate,
        client_key=client_key,
    )
    hostname = str(options.get("hostname") or socket.gethostname())
    slug = destination.organization.slug
    if destination.kind == DestinationKind.SPLUNK_HEC:
        return SplunkHecSender(
            url=destination.url,
            token=secret,
            tls=tls,
            index=str(options.get("index") or ""),
            hostname=hostname,
            organization_slug=slug,
            channel=str(uuid.uuid5(_DELIVERY_NAMESPACE, f"hec-channel:{destination.pk}")),
        )
    if destination.kind == DestinationKind.WEBHOOK:
        return WebhookSender(
            url=destination.url,
            secret=secret,
            tls=tls,
            organization_slug=slug,
            destination_id=str(destination.pk),
        )
    if destination.kind == DestinationKind.SYSLOG:
        return SyslogSender(
            host=destination.host,
            port=int(destination.port or 0),
            use_tls=destination.use_tls,
            tls=tls,
            hostname=hostname,
            facility=int(options.get("facility", SYSLOG_DEFAULT_FACILITY)),
            organization_slug=slug,
            max_message_bytes=int(options.get("max_message_bytes", SYSLOG_MAX_MESSAGE_BYTES)),
            sd_id=str(options.get("sd_id") or SYSLOG_SD_ID),
        )
    raise DeliveryError(f"unknown destination kind {destination.kind!r}")


def scrub(message: str, secret: str) -> str:
    """An error message without the secret in it (receivers sometimes echo what they were sent), cut short."""
    return without_secrets(message, secret)[:1000]


def probe_row(destination: AuditDestination) -> Any:
    """A synthetic event (sequence 0, never stored) that `destinations test` sends."""
    from audit.models import ActorType, AuditEvent

    return AuditEvent(
        id=uuid.uuid4(),
        organization_id=destination.organization_id,
        sequence=0,
        occurred_at=dt.datetime.now(dt.UTC),
        action="audit.destination_test",
        outcome=Outcome.SUCCESS,
        actor_type=ActorType.SYSTEM,
        actor_display="airlock",
        target_type="audit.auditdestination",
        target_id=str(destination.pk),
        target_display=destination.name,
        data={"message": "Test message from Airlock: this destination receives the audit trail."},
        prev_hash="0" * 64,
        hash="0" * 64,
    )
