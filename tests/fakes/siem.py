"""Loopback SIEM receivers: Splunk HEC / webhook over HTTP, syslog over TCP or TLS (octet counting).

Each receiver records what it got, can answer errors, can fail in the middle of a batch (it keeps what it
read, as a real indexer would, but never acknowledges), and can be stopped and restarted on the same port.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import json
import re
import socket
import socketserver
import ssl
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.02) -> bool:
    """Poll until the predicate holds; False on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def self_signed_certificate(hostname: str = "localhost", ip: str = "127.0.0.1", key: Any = None) -> tuple[str, str]:
    """A fresh self-signed certificate (PEM) and its private key (PEM) for a loopback TLS server.

    `key`: the private key to certify (a new P-256 key by default).
    """
    key = key if key is not None else ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(hostname), x509.IPAddress(ipaddress.ip_address(ip))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = certificate.public_bytes(serialization.Encoding.PEM).decode()
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return cert_pem, key_pem


def _reset(sock: socket.socket) -> None:
    """Close a connection with a TCP reset, as a crashed receiver would."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


@dataclass
class HttpRequest:
    """One request as the HTTP receiver got it."""

    path: str
    headers: dict[str, str]
    body: bytes
    acknowledged: bool


class _HttpHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HttpServer

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""

    def do_POST(self) -> None:
        receiver = self.server.receiver
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {name.lower(): value for name, value in self.headers.items()}
        status, answer = receiver.answer_for(self.path, headers, body)
        if status is None:  # crash after reading: no answer, connection reset
            self.close_connection = True
            _reset(self.connection)
            return
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], receiver: HttpReceiver) -> None:
        self.receiver = receiver
        super().__init__(address, _HttpHandler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients hanging up are expected."""


class HttpReceiver:
    """A Splunk HEC (`kind="hec"`) or signed-webhook (`kind="webhook"`) receiver on 127.0.0.1.

    `mode`: "ok", "503" (HEC: server busy, code 9), "bad-code" (HEC: HTTP 200 with code 6), "crash"
    (read the body, keep it, reset the connection). `crash_after_events=N`: acknowledge until N events
    were received, then crash on the request that crosses N (keeping its events) and stop listening.
    """

    def __init__(
        self, kind: str, *, token: str = "", echo_token_in_errors: bool = False, indexer_acknowledgement: bool = False
    ) -> None:
        self.kind = kind
        self.token = token
        self.echo_token_in_errors = echo_token_in_errors
        # A HEC token with indexer acknowledgement on: a request without a channel is refused, as Splunk does.
        self.indexer_acknowledgement = indexer_acknowledgement
        self.mode = "ok"
        self.crash_after_events: int | None = None
        self.requests: list[HttpRequest] = []
        self.port = 0
        self._lock = threading.Lock()
        self._server: _HttpServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The base URL of the receiver."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Self:
        """Listen (on the same port as before, after a stop)."""
        self._server = _HttpServer(("127.0.0.1", self.port), self)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening; connections are refused until start()."""
        server, self._server = self._server, None
        if server is None:
            return
        threading.Thread(target=server.shutdown, daemon=True).start()
        server.server_close()

    def events_in(self, body: bytes) -> list[dict[str, Any]]:
        """The events a request body carried."""
        if self.kind == "hec":
            return [json.loads(line)["event"] for line in body.split(b"\n") if line.strip()]
        return json.loads(body)["events"]

    @property
    def events(self) -> list[dict[str, Any]]:
        """Every event received, acknowledged or not, in arrival order (duplicates included)."""
        with self._lock:
            return [event for request in self.requests for event in self.events_in(request.body)]

    @property
    def acknowledged_events(self) -> list[dict[str, Any]]:
        """Events of acknowledged requests only."""
        with self._lock:
            return [
                event for request in self.requests if request.acknowledged for event in self.events_in(request.body)
            ]

    def answer_for(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int | None, bytes]:
        """Decide the answer to a request and record it."""
        with self._lock:
            received = sum(len(self.events_in(r.body)) for r in self.requests)
            mode = self.mode
            if self.crash_after_events is not None and received + len(self.events_in(body)) > self.crash_after_events:
                mode = "crash"
            status, answer = self._answer(mode, headers)
            self.requests.append(HttpRequest(path, headers, body, acknowledged=status is not None and status < 300))
        if mode == "crash" and self.crash_after_events is not None:
            self.crash_after_events = None
            self.stop()
        return status, answer

    def _answer(self, mode: str, headers: dict[str, str]) -> tuple[int | None, bytes]:
        if mode == "crash":
            return None, b""
        if self.kind == "hec":
            if self.token and headers.get("authorization") != f"Splunk {self.token}":
                text = "Invalid token" + (f" {headers.get('authorization')}" if self.echo_token_in_errors else "")
                return 403, json.dumps({"text": text, "code": 4}).encode()
            if self.indexer_acknowledgement and not headers.get("x-splunk-request-channel"):
                return 400, b'{"text":"Data channel is missing","code":10}'
            if mode == "503":
                return 503, b'{"text":"Server is busy","code":9}'
            if mode == "bad-code":
                return 200, b'{"text":"Incorrect index","code":7}'
            return 200, b'{"text":"Success","code":0}'
        if mode == "503":
            return 503, b'{"error":"unavailable"}'
        return 200, b'{"ok":true}'


SYSLOG_LINE = re.compile(
    r"^<(?P<pri>\d{1,3})>1 (?P<timestamp>\S+) (?P<hostname>\S+) (?P<app>\S+) (?P<procid>\S+) (?P<msgid>\S+) "
    r"(?P<sd>\[(?:[^\]\\]|\\.)*\]) (?P<msg>.*)$",
    re.DOTALL,
)


@dataclass
class SyslogMessage:
    """One parsed RFC 5424 message."""

    raw: bytes
    pri: int
    timestamp: str
    hostname: str
    app_name: str
    procid: str
    msgid: str
    structured_data: str
    params: dict[str, str] = field(default_factory=dict)
    event: dict[str, Any] = field(default_factory=dict)


def parse_syslog(raw: bytes) -> SyslogMessage:
    """Parse one RFC 5424 message as the receiver framed it; ValueError when it is not one."""
    match = SYSLOG_LINE.match(raw.decode("utf-8"))
    if match is None:
        raise ValueError(f"not an RFC 5424 message: {raw[:120]!r}")
    if not match["msg"].startswith("\ufeff"):
        raise ValueError(f"a UTF-8 MSG must start with a byte order mark (RFC 5424 6.4): {raw[:120]!r}")
    sd = match["sd"]
    params = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', sd))
    return SyslogMessage(
        raw=raw,
        pri=int(match["pri"]),
        timestamp=match["timestamp"],
        hostname=match["hostname"],
        app_name=match["app"],
        procid=match["procid"],
        msgid=match["msgid"],
        structured_data=sd,
        params=params,
        event=json.loads(match["msg"].removeprefix("\ufeff")),
    )


class _SyslogHandler(socketserver.BaseRequestHandler):
    server: _SyslogServer

    def handle(self) -> None:
        receiver = self.server.receiver
        sock: socket.socket = self.request
        if receiver.tls_context is not None:
            try:
                sock = receiver.tls_context.wrap_socket(sock, server_side=True)
            except (ssl.SSLError, OSError) as exc:
                receiver.handshake_errors.append(str(exc))
                return
            peer = sock.getpeercert() or {}
            for field in peer.get("subject", ()):
                receiver.client_subjects += [value for name, value in field if name == "commonName"]
        stream = sock.makefile("rb")
        try:
            while True:
                length = b""
                while True:
                    char = stream.read(1)
                    if not char:
                        if length:
                            receiver.framing_errors.append(f"EOF inside a length: {length!r}")
                        return  # EOF: everything read; the server closes its side
                    if char == b" ":
                        break
                    if not char.isdigit() or len(length) > 9:
                        receiver.framing_errors.append(f"bad octet count {length + char!r}")
                        return
                    length += char
                message = stream.read(int(length))
                if len(message) != int(length):
                    receiver.framing_errors.append("EOF inside a message")
                    return
                if not receiver.accept(message):
                    stream.close()
                    _reset(sock)
                    return
        except OSError:
            return


class _SyslogServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], receiver: SyslogReceiver) -> None:
        self.receiver = receiver
        super().__init__(address, _SyslogHandler)


class SyslogReceiver:
    """An RFC 5424 receiver over TCP (or TLS with `certificate`/`key`), octet-counted frames (RFC 6587).

    It closes its side once the sender closed (after reading everything). `crash_after_messages=N`: after
    the N-th message it resets the connection and stops listening.
    """

    def __init__(self, *, certificate: str = "", key: str = "", tmp_path: Any = None, client_ca: str = "") -> None:
        self.messages: list[bytes] = []
        self.client_subjects: list[str] = []  # the common name of each client certificate presented
        self.framing_errors: list[str] = []
        self.handshake_errors: list[str] = []
        self.crash_after_messages: int | None = None
        self.port = 0
        self.tls_context: ssl.SSLContext | None = None
        if certificate:
            cert_file = tmp_path / "syslog-cert.pem"
            key_file = tmp_path / "syslog-key.pem"
            cert_file.write_text(certificate)
            key_file.write_text(key)
            self.tls_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self.tls_context.load_cert_chain(cert_file, key_file)
            if client_ca:  # mutual TLS (RFC 5425): only clients with a certificate this CA signed get in
                self.tls_context.verify_mode = ssl.CERT_REQUIRED
                self.tls_context.load_verify_locations(cadata=client_ca)
        self._lock = threading.Lock()
        self._server: _SyslogServer | None = None

    def start(self) -> Self:
        """Listen (on the same port as before, after a stop)."""
        self._server = _SyslogServer(("127.0.0.1", self.port), self)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop listening; connections are refused until start()."""
        server, self._server = self._server, None
        if server is None:
            return
        threading.Thread(target=server.shutdown, daemon=True).start()
        server.server_close()

    def accept(self, message: bytes) -> bool:
        """Keep a message; False when the receiver is to crash now."""
        with self._lock:
            self.messages.append(message)
            crash = self.crash_after_messages is not None and len(self.messages) >= self.crash_after_messages
            if crash:
                self.crash_after_messages = None
        if crash:
            self.stop()
        return not crash

    @property
    def parsed(self) -> list[SyslogMessage]:
        """Every message received, parsed, in arrival order (duplicates included)."""
        with self._lock:
            return [parse_syslog(raw) for raw in self.messages]

    @property
    def events(self) -> list[dict[str, Any]]:
        """The events the messages carried."""
        return [message.event for message in self.parsed]
