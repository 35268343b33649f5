"""The connectivity check: each step (DNS, TCP, TLS, key, model) fails in words an operator can act on."""

from __future__ import annotations

import datetime as dt
import json
import socket
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from django.core.exceptions import PermissionDenied

from audit.models import AuditEvent
from providers.checks import provider_check
from providers.models import Provider
from providers.services import model_create, provider_create
from providers.simulator import ModelSimulator
from tests.providers.conftest import SECRET_KEY

WRONG_KEY = "sk-wrong-AIRLOCKCANARY-0000"


def make(org, **fields) -> Provider:
    defaults = {"name": "P", "kind": "openai-compatible", "api_key": ""}
    return provider_create(actor=None, organization=org, **{**defaults, **fields})


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def self_signed_server(tmp_path) -> Iterator[int]:
    """A TLS server on loopback whose certificate nobody trusts."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(5)
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            try:
                with context.wrap_socket(conn, server_side=True):
                    pass
            except (ssl.SSLError, OSError):
                conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join(2)
    listener.close()


class _Anthropic401(BaseHTTPRequestHandler):
    """Answers every request like Anthropic does for a bad key, echoing the key it was sent (a careless server)."""

    def do_GET(self) -> None:  # noqa: N802
        body = json.dumps(
            {
                "type": "error",
                "error": {
                    "type": "authentication_error",
                    "message": f"invalid x-api-key {self.headers.get('x-api-key')}",
                },
            }
        ).encode()
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def anthropic_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Anthropic401)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def failed_step(result):
    return next(step for step in result.steps if not step.ok)


def test_a_working_endpoint_passes_every_step_and_the_model_is_served(org, owner):
    with ModelSimulator(api_key=SECRET_KEY) as sim:
        provider = make(org, base_url=sim.base_url, api_key=SECRET_KEY)
        model = model_create(
            actor=None,
            organization=org,
            provider=provider,
            identifier="airlock-simulator",
            display_name="Sim",
            context_limit=8000,
        )
        result = provider_check(actor=owner, provider=provider, model=model)

    assert result.ok, result.summary
    assert [step.name for step in result.steps] == ["credentials", "dns", "tcp", "api", "model"]
    assert result.steps[0].detail == "key ****7890 decrypted"
    event = AuditEvent.objects.get(action="provider.checked")
    assert event.outcome == "success" and event.data["steps"][4]["name"] == "model"


def test_an_unresolvable_host_fails_at_dns_saying_to_check_the_name(org, owner):
    result = provider_check(actor=owner, provider=make(org, base_url="http://nonexistent.invalid/v1"))

    step = failed_step(result)
    assert step.name == "dns" and "DNS lookup of nonexistent.invalid failed" in step.detail
    assert "host name in the base URL" in step.detail
    assert not result.ok and "dns step failed" in result.summary


def test_a_closed_port_fails_at_tcp_saying_nothing_listens(org, owner):
    port = closed_port()

    result = provider_check(actor=owner, provider=make(org, base_url=f"http://127.0.0.1:{port}/v1"))

    step = failed_step(result)
    assert step.name == "tcp" and f"TCP connect to 127.0.0.1:{port} was refused" in step.detail
    assert AuditEvent.objects.get(action="provider.checked").outcome == "failure"


def test_a_self_signed_certificate_fails_at_tls_in_words(org, owner, self_signed_server):
    provider = make(org, base_url=f"https://localhost:{self_signed_server}/v1")

    result = provider_check(actor=owner, provider=provider)

    step = failed_step(result)
    assert step.name == "tls", result.steps
    assert "not trusted" in step.detail and "self-signed" in step.detail and "trust store" in step.detail


def test_a_rejected_key_fails_with_401_and_never_shows_the_key(org, owner):
    with ModelSimulator(api_key=SECRET_KEY) as sim:
        provider = make(org, base_url=sim.base_url, api_key=WRONG_KEY)
        result = provider_check(actor=owner, provider=provider)

    step = failed_step(result)
    assert step.name == "api" and step.detail.startswith("401: the API key was rejected")
    dumped = json.dumps([s.__dict__ for s in result.steps]) + result.summary
    assert "AIRLOCKCANARY" not in dumped
    assert "AIRLOCKCANARY" not in json.dumps(list(AuditEvent.objects.values("data", "error")), default=str)


def test_a_model_the_endpoint_does_not_serve_fails_with_404_naming_it(org, owner):
    with ModelSimulator() as sim:
        provider = make(org, base_url=sim.base_url)
        model = model_create(
            actor=None, organization=org, provider=provider, identifier="gpt-17", display_name="G", context_limit=8000
        )
        result = provider_check(actor=owner, provider=provider, model=model)

    step = failed_step(result)
    assert step.name == "model" and "404: model gpt-17 is not served by this endpoint" in step.detail


def test_a_wrong_base_path_fails_with_404_pointing_at_the_base_url(org, owner):
    with ModelSimulator() as sim:
        provider = make(org, base_url=sim.base_url.removesuffix("/v1") + "/api")
        result = provider_check(actor=owner, provider=provider)

    step = failed_step(result)
    assert step.name == "api" and "check the base URL" in step.detail


def test_anthropic_key_rejection_is_reported_without_the_echoed_key(org, owner, anthropic_server):
    provider = make(org, kind="anthropic", base_url=anthropic_server, api_key=WRONG_KEY)

    result = provider_check(actor=owner, provider=provider)

    step = failed_step(result)
    assert step.name == "api" and step.detail.startswith("401: the API key was rejected")
    assert "AIRLOCKCANARY" not in step.detail and WRONG_KEY not in result.summary


def test_only_owners_may_run_the_check(org, auditor):
    with pytest.raises(PermissionDenied):
        provider_check(actor=auditor, provider=make(org, base_url="http://127.0.0.1:9/v1"))
