"""Connectivity check of a provider: DNS, TCP, TLS, then one authenticated call, each step said in words.

The check answers the question owners ask most ("why can't Airlock reach the model?") one step at a time,
and stops at the first failing step with what to do about it:

1. credentials  the stored key decrypts (shown as ****abcd, never more)
2. dns          the endpoint's host resolves from the control plane (5 s)
3. tcp          a TCP connection opens to host:port (5 s); through HTTPS_PROXY/HTTP_PROXY when one applies
4. tls          for https: the handshake succeeds and the certificate is trusted (5 s)
5. api          the vendor's cheapest authenticated call (10 s, no retries):
                openai / openai-compatible  GET {base}/models
                azure-openai                GET /openai/models?api-version=...
                anthropic                   GET /v1/models?limit=1
                google                      models.list (page of 1)
                bedrock                     a Converse call with maxTokens=1 on the model when one is checked
                                            (it costs a few tokens, and it exercises the runtime endpoint the
                                            agent uses): the step passes once AWS has verified the signature;
                                            else ListFoundationModels on the control-plane host (bedrock.REGION
                                            beside bedrock-runtime.REGION, or the base URL of a gateway)
6. model        (when a model is checked) the endpoint serves it: in the /models list (OpenAI-compatible,
                OpenAI), models.retrieve (Anthropic), models.get (Google), a 1-token chat completion on the
                deployment (Azure), the outcome of the Converse call (Bedrock)

No detail ever contains the key: messages are written here, and the vendor's own message is appended only
after secret masking, and only when no piece of the key appears in it.
"""

from __future__ import annotations

import concurrent.futures
import errno
import re
import socket
import ssl
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

from django.core.exceptions import ImproperlyConfigured, ValidationError
from django.db import transaction

import audit
from audit.models import Outcome
from audit.secrets import mask_secrets_in_text
from audit.services import Actor
from organizations.permissions import require_actor_permission
from portal.crypto import decrypt_secret
from providers.clients.base import endpoint_host, provider_headers
from providers.clients.bedrock import REJECTED_CREDENTIALS
from providers.models import LanguageModel, Provider, ProviderKind

NETWORK_TIMEOUT_SECONDS = 5.0
API_TIMEOUT_SECONDS = 10.0
VENDOR_MESSAGE_CHARS = 200
NO_KEY = "not-needed"

DEFAULT_ENDPOINTS: dict[str, str] = {
    ProviderKind.OPENAI: "https://api.openai.com/v1",
    ProviderKind.ANTHROPIC: "https://api.anthropic.com",
    ProviderKind.GOOGLE: "https://generativelanguage.googleapis.com",
}

# OpenSSL verify codes that mean "the certificate is not trusted here".
UNTRUSTED_CODES = {18, 19, 20, 21, 2}

# What to fix when an endpoint answers 404 to the API call itself (not to a model).
BASE_URL_HINTS: dict[str, str] = {
    ProviderKind.GOOGLE: (
        "check the base URL: it is the API's root (e.g. https://generativelanguage.googleapis.com), without a "
        "version path such as /v1beta, and the API version, when one is set, is one the endpoint serves (v1, v1beta)"
    ),
    ProviderKind.AZURE_OPENAI: (
        "check the base URL: it is the resource's endpoint (e.g. https://<resource>.openai.azure.com), without "
        "/openai, and the API version is one Azure serves (e.g. 2024-10-21)"
    ),
}
DEFAULT_BASE_URL_HINT = "check the base URL (OpenAI-compatible servers end in /v1)"

# Bedrock error codes AWS only answers after it has authenticated the request (the signature was right).
AWS_AFTER_AUTHENTICATION = frozenset(
    {
        "AccessDeniedException",
        "ValidationException",
        "ResourceNotFoundException",
        "ThrottlingException",
        "ServiceQuotaExceededException",
        "ModelNotReadyException",
        "ModelTimeoutException",
        "ModelErrorException",
    }
)
AWS_RUNTIME_HOST = re.compile(r"^bedrock-runtime(?P<fips>-fips)?\.(?P<rest>[a-z0-9-]+\.amazonaws\.com(?:\.cn)?)$")


@dataclass(frozen=True)
class CheckStep:
    """One step of a check: its name, whether it passed, what happened in words, and how long it took."""

    name: str
    ok: bool
    detail: str
    duration_ms: int


@dataclass(frozen=True)
class CheckResult:
    """The outcome of a check: every step that ran (it stops at the first failure) and a one-line summary."""

    ok: bool
    steps: list[CheckStep] = field(default_factory=list)
    summary: str = ""

    def as_dict(self) -> dict[str, Any]:
        """The result as JSON-ready data (for the API and the audit row)."""
        return {"ok": self.ok, "summary": self.summary, "steps": [asdict(step) for step in self.steps]}


class StepFailed(Exception):
    """A step failed; the message is what the operator should read."""


def endpoint_url(provider: Provider) -> str:
    """The URL the provider's calls go to: its base URL, else the vendor's public endpoint."""
    if provider.base_url:
        return provider.base_url
    if provider.kind == ProviderKind.BEDROCK:
        return f"https://bedrock-runtime.{provider.region or 'us-east-1'}.amazonaws.com"
    return DEFAULT_ENDPOINTS.get(provider.kind, "")


class _Scrubber:
    """Removes secrets from vendor text: masks known secret shapes, drops text that holds any piece of a key."""

    def __init__(self, secrets: list[str]) -> None:
        self.pieces = {s[i : i + 8] for s in secrets if s for i in range(max(1, len(s) - 7))}
        self.secrets = [s for s in secrets if s]

    def clean(self, text: str) -> str:
        """The text if it is safe to show, masked and shortened; else an empty string."""
        text = " ".join(str(text or "").split())
        for secret in self.secrets:
            text = text.replace(secret, "****")
        if any(piece in text for piece in self.pieces):
            return ""
        text = mask_secrets_in_text(text)
        return text[:VENDOR_MESSAGE_CHARS]

    def suffix(self, text: str) -> str:
        """` (the endpoint said: ...)` when there is something safe to show."""
        clean = self.clean(text)
        return f" (the endpoint said: {clean})" if clean else ""


def _timed(steps: list[CheckStep], name: str, run: Callable[[], str]) -> None:
    """Run a step, record it; re-raise StepFailed so the check stops there."""
    started = time.monotonic()
    try:
        detail = run()
    except StepFailed as exc:
        steps.append(CheckStep(name, False, str(exc), int((time.monotonic() - started) * 1000)))
        raise
    steps.append(CheckStep(name, True, detail, int((time.monotonic() - started) * 1000)))


def _proxy_for(url: str) -> str | None:
    """The proxy the SDKs will use for this URL (from HTTPS_PROXY / HTTP_PROXY / NO_PROXY), if any."""
    parts = urlsplit(url)
    if urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    return urllib.request.getproxies().get(parts.scheme)


def _resolve(host: str, port: int) -> list[tuple[Any, ...]]:
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        future = pool.submit(socket.getaddrinfo, host, port, 0, socket.SOCK_STREAM)
        return future.result(timeout=NETWORK_TIMEOUT_SECONDS)
    except concurrent.futures.TimeoutError:
        raise StepFailed(
            f"DNS lookup of {host} timed out after {NETWORK_TIMEOUT_SECONDS:g} s: the control plane's DNS server "
            "does not answer. Check the resolver configuration (in Kubernetes: CoreDNS and any egress policy "
            "that blocks DNS)."
        ) from None
    except UnicodeError:
        raise StepFailed(
            f"{host!r} is not a valid host name (an empty label, or one longer than 63 characters): "
            "fix the host in the base URL."
        ) from None
    except socket.gaierror as exc:
        raise StepFailed(
            f"DNS lookup of {host} failed ({exc.strerror or exc}): the name does not resolve from the control plane. "
            "Check the host name in the base URL for typos, and that the control plane's DNS knows internal names "
            "(in Kubernetes: the service name and namespace, e.g. vllm.models.svc.cluster.local)."
        ) from None
    finally:
        pool.shutdown(wait=False)


def _connect(host: str, port: int, addresses: list[tuple[Any, ...]], via: str) -> socket.socket:
    last: OSError | None = None
    for family, kind, proto, _name, address in addresses:
        sock = socket.socket(family, kind, proto)
        sock.settimeout(NETWORK_TIMEOUT_SECONDS)
        try:
            sock.connect(address)
            return sock
        except OSError as exc:
            sock.close()
            last = exc
    target = f"{host}:{port}{via}"
    if isinstance(last, TimeoutError):
        raise StepFailed(
            f"TCP connect to {target} timed out after {NETWORK_TIMEOUT_SECONDS:g} s: egress from the control plane "
            "is blocked, check the NetworkPolicy / firewall (or set HTTPS_PROXY if your network requires a proxy)."
        )
    if isinstance(last, ConnectionRefusedError):
        raise StepFailed(
            f"TCP connect to {target} was refused: nothing listens on that port. Check the port in the base URL "
            "and that the model server is running and listening on an address the control plane can reach."
        )
    if last is not None and last.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
        raise StepFailed(
            f"TCP connect to {target} failed: no route to the host. Check the network routes and the firewall / "
            "NetworkPolicy between the control plane and the model server."
        )
    raise StepFailed(f"TCP connect to {target} failed ({getattr(last, 'strerror', None) or last}).")


def _tls(sock: socket.socket, host: str, port: int) -> str:
    context = ssl.create_default_context()
    try:
        with context.wrap_socket(sock, server_hostname=host) as tls:
            version = tls.version() or "TLS"
    except ssl.SSLCertVerificationError as exc:
        code = getattr(exc, "verify_code", None)
        reason = getattr(exc, "verify_message", None) or exc.reason or "verification failed"
        if code == 10:
            raise StepFailed(
                f"TLS to {host}:{port}: the server's certificate has expired ({reason}): renew it on the server."
            ) from None
        if code == 62 or "hostname" in str(reason).lower() or "ip address mismatch" in str(reason).lower():
            raise StepFailed(
                f"TLS to {host}:{port}: the certificate is not valid for the name {host} ({reason}): use the host "
                "name the certificate was issued for in the base URL, or reissue the certificate."
            ) from None
        if code in UNTRUSTED_CODES or "self" in str(reason).lower() or "issuer" in str(reason).lower():
            raise StepFailed(
                f"TLS to {host}:{port}: the server's certificate is not trusted ({reason}). If your organization "
                "issued it, add your CA certificate to the control plane's trust store (e.g. SSL_CERT_FILE); "
                "otherwise the server needs a certificate from a public CA."
            ) from None
        raise StepFailed(f"TLS to {host}:{port}: the certificate was refused ({reason}).") from None
    except TimeoutError:
        raise StepFailed(
            f"TLS handshake with {host}:{port} timed out: something between the control plane and the server "
            "(a proxy or a firewall inspecting TLS) holds the connection."
        ) from None
    except ssl.SSLError as exc:
        raise StepFailed(
            f"TLS handshake with {host}:{port} failed ({exc.reason or exc.__class__.__name__}): is this port "
            "speaking https? If the server speaks plain HTTP, write http:// in the base URL."
        ) from None
    except OSError as exc:
        raise StepFailed(
            f"TLS handshake with {host}:{port} failed: the server closed the connection ({exc.strerror or exc})."
        ) from None
    return f"{version} with {host}:{port}, certificate trusted"


# --- the authenticated call, per vendor -------------------------------------------------------------------------


def _http_status_detail(
    status: int, *, what: str, model: str | None, scrub: _Scrubber, vendor: str, kind: str = ""
) -> str:
    said = scrub.suffix(vendor)
    if status == 401:
        if kind == ProviderKind.AZURE_OPENAI:
            return (
                "401: the API key was rejected. Enter the current key of this Azure resource again (a key works "
                f"only with the endpoint of its own resource){said}."
            )
        return f"401: the API key was rejected. Enter the current key for this endpoint again{said}."
    if status == 403:
        return (
            f"403: the key was accepted but may not {what} (check the key's project, organization or permissions, "
            f"or a proxy that blocks the request){said}."
        )
    if status == 404:
        if model:
            return f"404: model {model} is not served by this endpoint: check the model identifier{said}."
        return f"404: the endpoint has no such API: {BASE_URL_HINTS.get(kind, DEFAULT_BASE_URL_HINT)}{said}."
    if status == 429:
        return f"429: the endpoint is rate limiting or the account is out of quota; try again later{said}."
    if status >= 500:
        return f"{status}: the endpoint has a problem of its own; try again later or check its logs{said}."
    return f"{status}: the endpoint refused the request{said}."


def _openai_errors(exc: Exception, *, what: str, model: str | None, scrub: _Scrubber, kind: str = "") -> StepFailed:
    import anthropic
    import openai

    if isinstance(exc, openai.APITimeoutError | anthropic.APITimeoutError):
        return StepFailed(
            f"The endpoint accepted the connection but did not answer within {API_TIMEOUT_SECONDS:g} s: the server is "
            "overloaded, or a proxy in between holds the request."
        )
    if isinstance(exc, openai.APIConnectionError | anthropic.APIConnectionError):
        return StepFailed(
            "The API call could not connect although TCP did: check the proxy settings (HTTPS_PROXY / NO_PROXY) "
            "and the certificate trust of the control plane."
        )
    if isinstance(exc, openai.APIStatusError | anthropic.APIStatusError):
        vendor = getattr(exc, "message", "") or ""
        return StepFailed(
            _http_status_detail(exc.status_code, what=what, model=model, scrub=scrub, vendor=vendor, kind=kind)
        )
    return StepFailed(f"The API call failed ({exc.__class__.__name__}).")


def _openai_like(provider: Provider, key: str, model: LanguageModel | None, scrub: _Scrubber) -> list[tuple[str, Any]]:
    import openai

    options: dict[str, Any] = {
        "api_key": key or NO_KEY,
        "max_retries": 0,
        "timeout": API_TIMEOUT_SECONDS,
        "default_headers": provider_headers(provider),
    }
    if provider.kind == ProviderKind.AZURE_OPENAI:
        if not provider.api_version:
            raise StepFailed("Azure OpenAI needs an API version: set the provider's API version (e.g. 2024-10-21).")
        client: Any = openai.AzureOpenAI(azure_endpoint=provider.base_url, api_version=provider.api_version, **options)
    else:
        client = openai.OpenAI(base_url=endpoint_url(provider), **options)
    served: list[str] = []

    def api() -> str:
        try:
            page = client.models.list()
            served.extend(item.id for item in page.data)
        except Exception as exc:  # noqa: BLE001 - every SDK error becomes words
            raise _openai_errors(exc, what="list models", model=None, scrub=scrub, kind=provider.kind) from None
        return f"the key was accepted; the endpoint lists {len(served)} model(s)"

    def check_model() -> str:
        assert model is not None
        if provider.kind == ProviderKind.AZURE_OPENAI:
            try:
                # max_completion_tokens, as the agent's own calls send it: reasoning deployments (o-series, gpt-5)
                # refuse max_tokens.
                client.chat.completions.create(
                    model=model.identifier, max_completion_tokens=1, messages=[{"role": "user", "content": "ping"}]
                )
            except Exception as exc:  # noqa: BLE001
                if getattr(exc, "status_code", None) == 404:
                    said = scrub.suffix(getattr(exc, "message", "") or "")
                    return _fail(
                        f"404: deployment {model.identifier} is not served by this endpoint: the model identifier "
                        f"must be the Azure deployment name{said}."
                    )
                raise _openai_errors(
                    exc, what="call the deployment", model=model.identifier, scrub=scrub, kind=provider.kind
                ) from None
            return f"deployment {model.identifier} answered"
        if model.identifier not in served:
            listed = ", ".join(served[:8]) + (" ..." if len(served) > 8 else "")
            return _fail(
                f"404: model {model.identifier} is not served by this endpoint (it serves: {listed or 'nothing'}): "
                "check the model identifier."
            )
        return f"model {model.identifier} is served"

    steps: list[tuple[str, Any]] = [("api", api)]
    if model is not None:
        steps.append(("model", check_model))
    return steps


def _fail(message: str) -> str:
    raise StepFailed(message)


def _anthropic(provider: Provider, key: str, model: LanguageModel | None, scrub: _Scrubber) -> list[tuple[str, Any]]:
    import anthropic

    client = anthropic.Anthropic(
        api_key=key,
        base_url=provider.base_url or None,
        max_retries=0,
        timeout=API_TIMEOUT_SECONDS,
        default_headers=provider_headers(provider),
    )

    def api() -> str:
        try:
            client.models.list(limit=1)
        except Exception as exc:  # noqa: BLE001
            raise _openai_errors(exc, what="list models", model=None, scrub=scrub) from None
        return "the key was accepted (models list)"

    def check_model() -> str:
        assert model is not None
        try:
            client.models.retrieve(model.identifier)
        except Exception as exc:  # noqa: BLE001
            raise _openai_errors(exc, what="read this model", model=model.identifier, scrub=scrub) from None
        return f"model {model.identifier} is served"

    return [("api", api)] + ([("model", check_model)] if model is not None else [])


def _google(provider: Provider, key: str, model: LanguageModel | None, scrub: _Scrubber) -> list[tuple[str, Any]]:
    import httpx2
    from google import genai
    from google.genai import errors, types

    if not key:
        # Without a key the SDK would quietly use GOOGLE_API_KEY / GEMINI_API_KEY from the server's environment.
        raise StepFailed("No API key is stored, and the Gemini API needs one: enter the provider's Gemini API key.")
    options = types.HttpOptions(
        base_url=provider.base_url or None,
        api_version=provider.api_version or None,
        timeout=int(API_TIMEOUT_SECONDS * 1000),
        headers=provider_headers(provider) or None,
    )
    # vertexai=False: the google kind is the Gemini API, whatever GOOGLE_GENAI_USE_VERTEXAI says on the server.
    client = genai.Client(vertexai=False, api_key=key, http_options=options)

    def words(exc: Exception, model_id: str | None) -> StepFailed:
        if isinstance(exc, errors.APIError):
            vendor = str(getattr(exc, "message", "") or getattr(exc, "status", "") or "")
            code = int(getattr(exc, "code", 0) or 0)
            said = scrub.suffix(vendor)
            reasons = _google_reasons(getattr(exc, "details", None))
            if code == 401 or "API_KEY_INVALID" in reasons or (code == 400 and "api key" in vendor.lower()):
                return StepFailed(f"{code}: the API key was rejected. Enter the current Gemini API key again{said}.")
            if code == 403:
                return StepFailed(
                    "403: the API key was refused for the Gemini API: check that the key's project has the "
                    "Generative Language API enabled and that the key's restrictions (APIs, IP addresses) allow the "
                    f"control plane; a key reported as leaked must be replaced{said}."
                )
            return StepFailed(
                _http_status_detail(
                    code, what="use this API", model=model_id, scrub=scrub, vendor=vendor, kind=provider.kind
                )
            )
        if isinstance(exc, httpx2.TimeoutException):
            return StepFailed(
                f"The endpoint accepted the connection but did not answer within {API_TIMEOUT_SECONDS:g} s: the "
                "server is overloaded, or a proxy in between holds the request."
            )
        if isinstance(exc, ValueError):
            return StepFailed(
                "The endpoint's answer is not the Gemini API's: check the base URL (e.g. "
                "https://generativelanguage.googleapis.com)."
            )
        return StepFailed(
            f"The API call failed ({exc.__class__.__name__}): check the proxy settings (HTTPS_PROXY / NO_PROXY) and "
            "the certificate trust of the control plane."
        )

    def api() -> str:
        try:
            next(iter(client.models.list(config={"page_size": 1})), None)
        except Exception as exc:  # noqa: BLE001 - every SDK error becomes words
            raise words(exc, None) from None
        return "the key was accepted (models list)"

    def check_model() -> str:
        assert model is not None
        try:
            client.models.get(model=model.identifier)
        except Exception as exc:  # noqa: BLE001
            raise words(exc, model.identifier) from None
        return f"model {model.identifier} is served"

    return [("api", api)] + ([("model", check_model)] if model is not None else [])


def _google_reasons(details: Any) -> set[str]:
    """The `reason` values in a Google error body's details (e.g. API_KEY_INVALID)."""
    error = details.get("error", details) if isinstance(details, dict) else {}
    items = error.get("details") if isinstance(error, dict) else None
    return {str(item.get("reason")) for item in items or [] if isinstance(item, dict) and item.get("reason")}


def bedrock_control_endpoint(provider: Provider) -> str | None:
    """Where ListFoundationModels goes: None for AWS's own control-plane host, else the gateway's base URL."""
    if not provider.base_url:
        return None
    parts = urlsplit(provider.base_url)
    host = (parts.hostname or "").lower()
    runtime = AWS_RUNTIME_HOST.match(host)
    if runtime is not None:
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme or 'https'}://bedrock{runtime['fips'] or ''}.{runtime['rest']}{port}"
    if host.endswith((".amazonaws.com", ".amazonaws.com.cn")):
        return None  # e.g. a VPC endpoint of the runtime: the control plane answers on its public host
    return provider.base_url  # a gateway or a local stand-in serves both APIs on its own URL


def _bedrock(provider: Provider, key: str, model: LanguageModel | None, scrub: _Scrubber) -> list[tuple[str, Any]]:
    import boto3
    from botocore.config import Config
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
        NoRegionError,
        PartialCredentialsError,
        ReadTimeoutError,
    )

    if not provider.region:
        raise StepFailed("The provider has no AWS region: set the region of the models (e.g. us-east-1).")
    config = Config(
        connect_timeout=NETWORK_TIMEOUT_SECONDS,
        read_timeout=API_TIMEOUT_SECONDS,
        retries={"total_max_attempts": 1, "mode": "standard"},  # one attempt: max_attempts counts retries
    )
    credentials: dict[str, str] = {}
    if not provider.use_ambient_credentials:
        credentials = {"aws_access_key_id": provider.aws_access_key_id, "aws_secret_access_key": key}
    session = boto3.session.Session(region_name=provider.region, **credentials)
    headers = provider_headers(provider)
    how = "the server's ambient AWS credentials (IAM role)" if provider.use_ambient_credentials else "the stored key"
    outcome: dict[str, Exception | None] = {}

    def client(service: str, endpoint: str | None) -> Any:
        made = session.client(service, endpoint_url=endpoint, config=config)

        def add_headers(request: Any, **kwargs: Any) -> None:
            for name, value in headers.items():
                request.headers[name] = value

        if headers:  # gateways may need them, as the agent's own calls send them
            made.meta.events.register(f"before-sign.{made.meta.service_model.endpoint_prefix}", add_headers)
        return made

    def status_of(exc: ClientError) -> int:
        return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)

    def transport_words(exc: Exception, host: str) -> StepFailed | None:
        if isinstance(exc, NoCredentialsError | PartialCredentialsError):
            return StepFailed(
                "No AWS credentials were found on the server: attach an IAM role to the control plane (IRSA, instance "
                "profile) or store an access key and secret on the provider."
            )
        if isinstance(exc, ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            explanation = REJECTED_CREDENTIALS.get(code.lower())
            if explanation is not None:
                said = scrub.suffix(str(exc.response.get("Error", {}).get("Message", "")))
                fix = (
                    "Check the IAM role the control plane runs with"
                    if provider.use_ambient_credentials
                    else "Check the access key id and enter the secret access key again"
                )
                return StepFailed(f"{status_of(exc) or 403} {code}: AWS rejected {how}: {explanation}. {fix}{said}.")
            return None
        if isinstance(exc, ConnectTimeoutError):
            return StepFailed(
                f"TCP connect to {host} timed out: egress from the control plane is blocked, check the NetworkPolicy "
                "/ firewall (or the VPC endpoint for Bedrock)."
            )
        if isinstance(exc, ReadTimeoutError):
            return StepFailed(
                f"{host} accepted the connection but did not answer within {API_TIMEOUT_SECONDS:g} s: the service is "
                "overloaded, or a proxy in between holds the request."
            )
        if isinstance(exc, EndpointConnectionError):
            return StepFailed(
                f"Cannot connect to {host}: check egress from the control plane to it and the proxy settings "
                "(HTTPS_PROXY / NO_PROXY)."
            )
        if isinstance(exc, NoRegionError):
            return StepFailed("The provider has no AWS region: set the region of the models (e.g. us-east-1).")
        if isinstance(exc, BotoCoreError):
            return StepFailed(
                f"The Bedrock call to {host} failed ({exc.__class__.__name__}): check egress to the AWS endpoint "
                "and the proxy settings."
            )
        return None

    def list_models() -> str:
        made = None
        try:
            made = client("bedrock", bedrock_control_endpoint(provider))
            page = made.list_foundation_models(byOutputModality="TEXT")
        except Exception as exc:  # noqa: BLE001 - every SDK error becomes words
            host = endpoint_host(made.meta.endpoint_url) if made is not None else "the Bedrock control plane"
            failed = transport_words(exc, host)
            if failed is not None:
                if isinstance(exc, EndpointConnectionError | ConnectTimeoutError):
                    failed = StepFailed(
                        f"{failed} ListFoundationModels goes to the control-plane host; check a model of this "
                        "provider to test the runtime endpoint the agent uses."
                    )
                raise failed from None
            raise bedrock_refused(exc, what="bedrock:ListFoundationModels") from None
        listed = len(page.get("modelSummaries") or [])
        return f"the credentials were accepted; ListFoundationModels lists {listed} text model(s)"

    def bedrock_refused(exc: Exception, *, what: str) -> StepFailed:
        if not isinstance(exc, ClientError):
            return StepFailed(f"The Bedrock call failed ({exc.__class__.__name__}).")
        code = str(exc.response.get("Error", {}).get("Code", ""))
        said = scrub.suffix(str(exc.response.get("Error", {}).get("Message", "")))
        status = status_of(exc)
        if code == "AccessDeniedException":
            enabled = (
                f", or model access to {model.identifier} is not enabled for the account in {provider.region}"
                if model is not None
                else ""
            )
            return StepFailed(
                f"403 AccessDeniedException: the credentials are valid, but the IAM policy of {how} does not allow "
                f"{what}{enabled}{said}."
            )
        if code in ("ResourceNotFoundException", "ValidationException") and model is not None:
            return StepFailed(
                f"{status or 404} {code}: model {model.identifier} is not served by Bedrock in {provider.region}: "
                f"check the model id (or inference profile) and the region{said}."
            )
        if status == 404:
            return StepFailed(
                f"404 {code}: the endpoint has no such API: check the base URL (e.g. "
                f"https://bedrock-runtime.{provider.region}.amazonaws.com, or your gateway's Bedrock URL){said}."
            )
        if code in ("ThrottlingException", "ServiceQuotaExceededException") or status == 429:
            return StepFailed(f"429 {code}: Bedrock is throttling the account; try again later{said}.")
        if status >= 500:
            return StepFailed(f"{status} {code}: Bedrock has a problem of its own; try again later{said}.")
        return StepFailed(f"{status} {code}: Bedrock refused the request{said}.")

    def converse() -> str:
        assert model is not None
        made = None
        try:
            made = client("bedrock-runtime", provider.base_url or None)
            made.converse(
                modelId=model.identifier,
                messages=[{"role": "user", "content": [{"text": "ping"}]}],
                inferenceConfig={"maxTokens": 1},
            )
        except Exception as exc:  # noqa: BLE001
            failed = transport_words(
                exc, endpoint_host(made.meta.endpoint_url) if made is not None else "the Bedrock endpoint"
            )
            if failed is not None:
                raise failed from None
            code = str(exc.response.get("Error", {}).get("Code", "")) if isinstance(exc, ClientError) else ""
            if code not in AWS_AFTER_AUTHENTICATION:
                raise bedrock_refused(exc, what="bedrock:InvokeModel") from None
            outcome["error"] = exc  # AWS authenticated the request before refusing it: the model step says why
            return f"the credentials were accepted (AWS answered {code} about the model)"
        outcome["error"] = None
        return "the credentials were accepted"

    def check_model() -> str:
        assert model is not None
        error = outcome.get("error")
        if error is not None:
            raise bedrock_refused(error, what=f"bedrock:InvokeModel on {model.identifier}")
        return f"model {model.identifier} answered (Converse)"

    if model is None:
        return [("api", list_models)]
    return [("api", converse), ("model", check_model)]


def _vendor_steps(provider: Provider, key: str, model: LanguageModel | None, scrub: _Scrubber) -> list[tuple[str, Any]]:
    """The vendor's steps; a set-up that fails (a missing setting, an SDK refusing it) becomes a failing api step."""
    build = VENDOR_STEPS.get(provider.kind)
    if build is None:
        return [("api", lambda: _fail(f"Airlock cannot call providers of kind {provider.kind!r}."))]
    try:
        return build(provider, key, model, scrub)
    except StepFailed as exc:
        message = str(exc)
    except Exception as exc:  # noqa: BLE001 - an SDK that refuses the settings: say so in words
        said = scrub.suffix(str(exc))
        message = f"The {provider.kind} client cannot be set up with the provider's settings ({exc.__class__.__name__})"
        message += f"{said}: check the base URL, API version and region."
    return [("api", lambda: _fail(message))]


VENDOR_STEPS: dict[str, Callable[..., list[tuple[str, Any]]]] = {
    ProviderKind.OPENAI_COMPATIBLE: _openai_like,
    ProviderKind.OPENAI: _openai_like,
    ProviderKind.AZURE_OPENAI: _openai_like,
    ProviderKind.ANTHROPIC: _anthropic,
    ProviderKind.GOOGLE: _google,
    ProviderKind.BEDROCK: _bedrock,
}


def run_check(provider: Provider, model: LanguageModel | None = None) -> CheckResult:
    """Run the steps against the network (no database write); stop at the first failing step."""
    steps: list[CheckStep] = []
    key = ""
    scrub = _Scrubber([])
    url = endpoint_url(provider)
    parts = urlsplit(url)
    scheme = parts.scheme or "https"
    host = parts.hostname or ""
    port = parts.port or (443 if scheme == "https" else 80)
    state: dict[str, Any] = {}

    def credentials() -> str:
        nonlocal key, scrub
        if provider.kind == ProviderKind.BEDROCK and provider.use_ambient_credentials:
            return "the server's ambient AWS credentials (IAM role)"
        if provider.kind == ProviderKind.BEDROCK and not (provider.aws_access_key_id and provider.has_api_key):
            raise StepFailed(
                "No AWS access key is stored: give the access key id and the secret access key, or turn on ambient "
                "credentials to use the server's own AWS role."
            )
        if not provider.has_api_key:
            return "no key stored (the endpoint must not need one)"
        try:
            key = decrypt_secret(provider.api_key_encrypted)
        except ImproperlyConfigured:
            raise StepFailed(
                "The stored key cannot be decrypted with AIRLOCK_ENCRYPTION_KEYS (was a key removed from the list?): "
                "enter the API key again."
            ) from None
        scrub = _Scrubber([key])
        return f"key ****{provider.api_key_hint} decrypted" if provider.api_key_hint else "key decrypted"

    def dns() -> str:
        proxy = _proxy_for(url)
        if proxy:
            proxy_parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
            state["via"] = f" (through the proxy {proxy_parts.hostname}:{proxy_parts.port or 80})"
            state["target"] = (proxy_parts.hostname or "", proxy_parts.port or 80)
        else:
            state["via"] = ""
            state["target"] = (host, port)
        target_host, target_port = state["target"]
        if not target_host:
            raise StepFailed("The provider has no endpoint host: set its base URL.")
        state["addresses"] = _resolve(target_host, target_port)
        first = state["addresses"][0][4][0]
        return f"{target_host} resolves to {first}{state['via']}"

    def tcp() -> str:
        target_host, target_port = state["target"]
        state["socket"] = _connect(target_host, target_port, state["addresses"], state["via"])
        return f"connected to {target_host}:{target_port}{state['via']}"

    def tls() -> str:
        return _tls(state.pop("socket"), host, port)

    network: list[tuple[str, Any]] = [("credentials", credentials), ("dns", dns), ("tcp", tcp)]
    try:
        for name, run in network:
            _timed(steps, name, run)
        if scheme == "https" and not state.get("via"):
            _timed(steps, "tls", tls)
        for name, run in _vendor_steps(provider, key, model, scrub):
            _timed(steps, name, run)
    except StepFailed:
        pass
    finally:
        leftover = state.pop("socket", None)
        if leftover is not None:
            leftover.close()
    ok = bool(steps) and all(step.ok for step in steps)
    if ok:
        what = f"model {model.identifier} answered" if model is not None else "the endpoint accepted the credentials"
        summary = f"{provider.name}: OK, {what}."
    else:
        failed = next(step for step in steps if not step.ok)
        summary = f"{provider.name}: the {failed.name} step failed: {failed.detail}"
    return CheckResult(ok=ok, steps=steps, summary=summary)


def provider_check(*, actor: Actor, provider: Provider, model: LanguageModel | None = None) -> CheckResult:
    """Check that Airlock can reach and use a provider (and a model of it); audited as provider.checked."""
    organization = provider.organization
    require_actor_permission(actor, organization, "provider.manage")
    if model is not None and model.provider_id != provider.pk:
        raise ValidationError({"model": f"{model.display_name!r} is not a model of {provider.name!r}."})
    result = run_check(provider, model)  # network first: no transaction is held open while waiting on it
    with transaction.atomic():
        audit.record(
            action="provider.checked",
            actor=actor,
            organization=organization,
            target=provider,
            outcome=Outcome.SUCCESS if result.ok else Outcome.FAILURE,
            error="" if result.ok else result.summary,
            data={
                "endpoint": _endpoint_label(provider),
                "model": model.identifier if model is not None else None,
                **result.as_dict(),
            },
        )
    return result


def _endpoint_label(provider: Provider) -> str:
    parts = urlsplit(endpoint_url(provider))
    return f"{parts.scheme}://{parts.hostname}:{parts.port}" if parts.port else f"{parts.scheme}://{parts.hostname}"
