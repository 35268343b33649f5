"""A loopback Gemini API: `POST /{version}/models/{model}:streamGenerateContent?alt=sse`, as google-genai calls it.

Answers with Server-Sent Events of GenerateContentResponse JSON chunks (text parts, thought parts, whole
functionCall parts with a thoughtSignature, usageMetadata and finishReason on the last chunk), and with
Google's error JSON `{"error": {"code", "message", "status", "details"}}` for scripted errors. With `api_key`
set it checks `x-goog-api-key` the way the real service does (400 API_KEY_INVALID for a wrong key).

Thought signatures are checked as Gemini 3 checks them: in the current turn (the contents after the last user
content with text), the first functionCall part of every model step must carry a signature this fake issued (or
one of the placeholders Google documents for history it did not produce), and any signature sent back must be
one it issued; otherwise 400 INVALID_ARGUMENT. Extra turn keys: `thought_signature` (the base64 signature the
turn issues instead of FAKE_THOUGHT_SIGNATURE), `text_signature` ("last": the last text part carries the
signature; "separate": an empty part after it does).
"""

from __future__ import annotations

import base64
import hmac
import json
import re
import time
import uuid
from typing import Any

from tests.fakes import ScriptedHandler, ScriptedServer, text_pieces, turn_usage

STREAM_PATH = re.compile(r"^/(?P<version>v1(?:beta|alpha)?)/models/(?P<model>[^/:]+):streamGenerateContent$")
MODELS_PATH = re.compile(r"^/(?P<version>v1(?:beta|alpha)?)/models(?:/(?P<model>[^/:]+))?$")

GOOGLE_STATUS: dict[int, str] = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
DEFAULT_MESSAGES: dict[int, str] = {
    400: "Request contains an invalid argument.",
    404: "models/unknown is not found for API version v1, or is not supported for generateContent.",
    429: "Resource has been exhausted (e.g. check quota).",
    500: "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting",
    503: "The model is overloaded. Please try again later.",
}
FAKE_THOUGHT_SIGNATURE = base64.b64encode(b"airlock-fake-thought-signature").decode()
# Signatures Gemini accepts without having issued them (documented for history another model produced).
PLACEHOLDER_SIGNATURES = (b"skip_thought_signature_validator", b"context_engineering_is_the_way_to_go")
# The signatures issued so far, by every fake in the process: they all stand for one vendor.
_issued_signatures: set[bytes] = {base64.b64decode(FAKE_THOUGHT_SIGNATURE)}
MISSING_SIGNATURE_MESSAGE = (
    "Function call is missing a thought_signature in functionCall parts. This is required for tools to work "
    "correctly, and missing thought_signature may lead to degraded model performance. Additional data, function "
    "call `default_api:{name}` , position {position}. Please refer to "
    "https://ai.google.dev/gemini-api/docs/thought-signatures for more details."
)


def signature_bytes(signature: Any) -> bytes | None:
    """A thoughtSignature as sent (standard or URL-safe base64) back to its bytes; None when it is not base64."""
    if not isinstance(signature, str):
        return None
    try:
        return base64.urlsafe_b64decode(signature.replace("+", "-").replace("/", "_"))
    except (ValueError, TypeError):
        return None


def _signature_accepted(signature: Any) -> bool:
    raw = signature_bytes(signature)
    if raw is None:
        return False
    if raw in _issued_signatures:
        return True
    # The placeholders are sent as their literal text, which decodes to these bytes.
    return any(raw == base64.urlsafe_b64decode(text) for text in PLACEHOLDER_SIGNATURES)


def thought_signature_error(body: dict[str, Any]) -> str | None:
    """Why Gemini 3 would refuse this request's thought signatures (None when it would accept them)."""
    contents = [c for c in body.get("contents") or [] if isinstance(c, dict)]
    turn_start = 0
    for position, content in enumerate(contents):
        parts = [p for p in content.get("parts") or [] if isinstance(p, dict)]
        if content.get("role", "user") == "user" and any("text" in p for p in parts):
            turn_start = position
        for part in parts:
            if "thoughtSignature" in part and not _signature_accepted(part["thoughtSignature"]):
                return "Thought signature is not valid."
    for position, content in enumerate(contents[turn_start:], start=turn_start):
        if content.get("role") != "model":
            continue
        calls = [p for p in content.get("parts") or [] if isinstance(p, dict) and "functionCall" in p]
        if calls and "thoughtSignature" not in calls[0]:
            name = (calls[0]["functionCall"] or {}).get("name", "")
            return MISSING_SIGNATURE_MESSAGE.format(name=name, position=position + 1)
    return None


def error_body(status: int, message: str | None = None, details: list[dict[str, Any]] | None = None) -> dict:
    """Google's JSON error body for a status."""
    return {
        "error": {
            "code": status,
            "message": message or DEFAULT_MESSAGES.get(status, "The request failed."),
            "status": GOOGLE_STATUS.get(status, "UNKNOWN"),
            "details": details or [],
        }
    }


def _prompt_text(body: dict[str, Any]) -> str:
    texts = []
    for content in [body.get("systemInstruction") or {}, *(body.get("contents") or [])]:
        for part in content.get("parts") or [] if isinstance(content, dict) else []:
            if isinstance(part, dict):
                texts.append(str(part.get("text") or ""))
                for key in ("functionCall", "functionResponse"):
                    if part.get(key):
                        texts.append(json.dumps(part[key]))
    return "".join(texts)


class GeminiHandler(ScriptedHandler):
    """Routes Gemini API requests."""

    server_version = "AirlockFakeGemini/1.0"

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        """The model list and single-model lookups (what a connectivity check calls)."""
        path = self.path.split("?", 1)[0]
        match = MODELS_PATH.match(path)
        fake: FakeGemini = self.server.owner  # type: ignore[assignment]
        fake.record(self, None, accepted=False)
        if match is None:
            self._send_error(404, f"Unknown path {path}.")
            return
        if not self._authorized():
            return
        if self._answer_check_switches(match):
            return
        model = match.group("model")
        if model:
            self._send_json(200, {"name": f"models/{model}", "displayName": model})
        else:
            self._send_json(200, {"models": [{"name": f"models/{name}"} for name in fake.models_seen()]})

    def do_POST(self) -> None:  # noqa: N802 - http.server naming
        """Stream a scripted turn for streamGenerateContent."""
        raw = self.read_body()
        if raw is None:
            return
        fake: FakeGemini = self.server.owner  # type: ignore[assignment]
        path = self.path.split("?", 1)[0]
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            fake.record(self, raw.decode(errors="replace"), accepted=False)
            self._send_error(400, "Invalid JSON payload received.")
            return
        match = STREAM_PATH.match(path)
        if match is None or "alt=sse" not in self.path:
            fake.record(self, body, accepted=False)
            self._send_error(404, f"Unknown path {self.path} (this fake serves :streamGenerateContent?alt=sse).")
            return
        if not self._authorized():
            fake.record(self, body, accepted=False)
            return
        refusal = thought_signature_error(body)
        if refusal is not None:  # refused before the model runs: the scripted turn is left for the next request
            fake.record(self, body, accepted=False)
            self._send_error(400, refusal)
            return
        fake.record(self, body, accepted=True)
        turn = fake.next_turn()
        if turn.get("delay"):
            time.sleep(float(turn["delay"]))
        error = turn.get("error")
        if error:
            status = int(error.get("status", 500))
            details = []
            if error.get("retry_after") is not None:
                details.append(
                    {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{error['retry_after']}s"}
                )
            self._send_error(status, error.get("message"), details)
            return
        frames = [f"data: {json.dumps(chunk)}\r\n\r\n".encode() for chunk in _chunks(match.group("model"), body, turn)]
        self.stream_chunks(frames, turn, "text/event-stream")

    def _authorized(self) -> bool:
        expected = self.server.owner.api_key  # type: ignore[attr-defined]
        if expected is None:
            return True
        presented = self.headers.get("x-goog-api-key") or ""
        if not presented:
            self._send_error(
                403,
                "Method doesn't allow unregistered callers (callers without established identity). Please use API "
                "Key or other form of API consumer identity to call this API.",
            )
            return False
        if not hmac.compare_digest(presented.encode(), expected.encode()):
            self._send_error(
                400,
                "API key not valid. Please pass a valid API key.",
                [
                    {
                        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                        "reason": "API_KEY_INVALID",
                        "domain": "googleapis.com",
                        "metadata": {"service": "generativelanguage.googleapis.com"},
                    }
                ],
            )
            return False
        return True

    def _answer_check_switches(self, match: re.Match[str]) -> bool:
        """Answer a models GET as the fake's `get_error` / `served_models` switches say; True when answered."""
        fake: FakeGemini = self.server.owner  # type: ignore[assignment]
        error = fake.get_error
        if error:
            presented = self.headers.get("x-goog-api-key") or ""
            message = str(error.get("message") or "").replace("{key}", presented) or None
            details = None
            if error.get("reason"):
                details = [
                    {
                        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                        "reason": error["reason"],
                        "domain": "googleapis.com",
                        "metadata": {"service": "generativelanguage.googleapis.com"},
                    }
                ]
            self._send_error(int(error.get("status", 403)), message, details)
            return True
        served = fake.served_models
        if served is None:
            return False
        model = match.group("model")
        if model is None:
            self._send_json(200, {"models": [{"name": f"models/{name}"} for name in sorted(served)]})
            return True
        if model in served:
            return False
        self._send_error(
            404,
            f"models/{model} is not found for API version {match.group('version')}, or is not supported for "
            "generateContent. Call ListModels to see the list of available models and their supported methods.",
        )
        return True

    def _send_json(self, status: int, payload: Any) -> None:
        self.send_bytes(status, json.dumps(payload).encode(), "application/json; charset=UTF-8")

    def _send_error(self, status: int, message: str | None = None, details: list[dict[str, Any]] | None = None) -> None:
        self._send_json(status, error_body(status, message, details))


def _chunks(model: str, body: dict[str, Any], turn: dict[str, Any]) -> list[dict[str, Any]]:
    """The GenerateContentResponse chunks of one scripted turn."""
    response_id = uuid.uuid4().hex[:20]
    calls = turn.get("tool_calls") or []
    output = str(turn.get("text") or "") + str(turn.get("reasoning") or "") + json.dumps(calls)
    usage = turn_usage(turn, prompt_text=_prompt_text(body), output_text=output)
    prompt_tokens = usage["input_tokens"] + usage["cache_read_tokens"]

    def chunk(parts: list[dict[str, Any]], finish_reason: str | None = None) -> dict[str, Any]:
        candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}, "index": 0}
        metadata: dict[str, Any] = {"promptTokenCount": prompt_tokens, "totalTokenCount": prompt_tokens}
        if finish_reason:
            candidate["finishReason"] = finish_reason
            metadata = {
                "promptTokenCount": prompt_tokens,
                "candidatesTokenCount": usage["output_tokens"],
                "totalTokenCount": prompt_tokens + usage["output_tokens"],
            }
            if usage["cache_read_tokens"]:
                metadata["cachedContentTokenCount"] = usage["cache_read_tokens"]
        return {"candidates": [candidate], "usageMetadata": metadata, "modelVersion": model, "responseId": response_id}

    signature = str(turn.get("thought_signature") or FAKE_THOUGHT_SIGNATURE)
    raw_signature = signature_bytes(signature)
    if raw_signature is not None:
        _issued_signatures.add(raw_signature)
    chunks = [chunk([{"text": piece, "thought": True}]) for piece in text_pieces(turn, "reasoning")]
    chunks += [chunk([{"text": piece}]) for piece in text_pieces(turn)]
    if turn.get("text_signature") == "last" and chunks and not calls:
        chunks[-1]["candidates"][0]["content"]["parts"][-1]["thoughtSignature"] = signature
    elif turn.get("text_signature") == "separate" and not calls:
        chunks.append(chunk([{"text": "", "thoughtSignature": signature}]))
    call_parts = []
    for position, call in enumerate(calls):
        arguments = call.get("arguments", {})
        function_call: dict[str, Any] = {"name": call.get("name", "execute"), "args": arguments}
        if call.get("id"):
            function_call["id"] = call["id"]
        part: dict[str, Any] = {"functionCall": function_call}
        if position == 0:
            part["thoughtSignature"] = signature
        call_parts.append(part)
    finish_reason = turn.get("finish_reason") or "STOP"
    if call_parts:
        chunks.append(chunk(call_parts, finish_reason))
    elif chunks:
        last = chunks[-1]
        chunks[-1] = chunk(last["candidates"][0]["content"]["parts"], finish_reason)
    else:
        chunks.append(chunk([{"text": ""}], finish_reason))
    return chunks


class FakeGemini(ScriptedServer):
    """A scripted Gemini API on loopback; `base_url` is what `HttpOptions(base_url=...)` takes."""

    handler_class = GeminiHandler
    thread_name = "fake-gemini"
    # Connectivity-check switches, set on an instance. served_models: the models that exist (None: any model; the
    # list then shows the ones asked for). get_error: what every authenticated models GET answers, e.g.
    # {"status": 403, "message": "...", "reason": "API_KEY_SERVICE_BLOCKED"}; "{key}" in the message becomes the
    # key the request presented, as a careless proxy would echo it.
    served_models: set[str] | None = None
    get_error: dict[str, Any] | None = None

    def __init__(
        self, script: list[dict[str, Any]] | None = None, *, api_key: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(script, **kwargs)
        self.api_key = api_key

    def models_seen(self) -> list[str]:
        """The models clients have asked for, for the model list."""
        names = {
            re.sub(r":.*", "", entry["path"].split("/models/", 1)[-1])
            for entry in self.request_log
            if "/models/" in entry["path"]
        }
        return sorted(names) or ["gemini-2.5-flash"]
