"""An offline model that speaks the OpenAI Chat Completions, Azure OpenAI and Anthropic Messages wire protocols.

Tests script it turn by turn; with no script it answers on its own, so that a person can try Airlock
without any model (`make run` offers it as the "Offline simulator" provider). Standard library only:
it runs without Django and without network access.

Endpoints (one script drives them all, so a test writes its turns once):
    POST /v1/chat/completions                                        OpenAI (Authorization: Bearer KEY)
    POST /openai/deployments/<deployment>/chat/completions?api-version=V   Azure OpenAI (api-key: KEY)
    POST /v1/messages                                                Anthropic (x-api-key: KEY, or Bearer)
    GET  /v1/models, /openai/models                                  model lists (Anthropic's shape when the
                                                                     request carries anthropic-version)
Base URLs: `simulator.base_url` (OpenAI, ends in /v1); `simulator.root_url` (Anthropic, Azure endpoint).

    python -m providers.simulator --host 127.0.0.1 --port 8765 [--script FILE.json]

A turn is a dict; every key is optional:
    text            the assistant's text, streamed in pieces of `chunk_chars` characters
    thinking        reasoning streamed before the text (Anthropic: a thinking block; OpenAI: reasoning_content)
    redacted_thinking  Anthropic only: a label; the answer gets a redacted_thinking block whose `data` hides it
    tool_calls      [{"name": "execute", "arguments": {"command": "ls"}, "id": "call_1"}]; arguments may be a
                    dict (sent as JSON) or a string (sent as is, e.g. to simulate broken JSON)
    error           {"status": 429, "message": "...", "retry_after": 1, "type": "...", "code": "..."}
    delay           seconds to wait before the first byte
    chunk_chars     characters of text per delta (default 4)
    chunk_delay     seconds to wait between chunks (default 0)
    usage           {"prompt_tokens": 10, "completion_tokens": 5, "cache_read_tokens": 0, "cache_write_tokens": 0}
                    (default: estimated from the characters); prompt_tokens counts the input not read from or
                    written to the cache (OpenAI's wire prompt_tokens adds the cache reads back, as OpenAI does)
    finish_reason   overrides "stop" / "tool_calls" (e.g. "length", "content_filter"); Anthropic gets the
                    matching stop_reason ("end_turn", "tool_use", "max_tokens", "refusal"), or the value as is
    drop_after_chunks  close the connection after this many SSE events, mid-stream

Anthropic extended thinking is checked as the API checks it: thinking blocks carry a `signature` (and
redacted_thinking blocks `data`) that only this simulator can issue, a thinking or redacted_thinking block sent
back with a wrong one is refused, and with `thinking` enabled a request answering an assistant turn's tool calls
(the last message holds only tool_result blocks) is refused with a 400 invalid_request_error unless that
assistant turn starts with its thinking blocks.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import re
import secrets
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Self

DEFAULT_MODEL_ID = "airlock-simulator"
DEFAULT_CHUNK_CHARS = 4
DEFAULT_RESPONDER_CHUNK_CHARS = 12
# The CLI (what a person watches through `make run`) paces the default responder so the stream is visible;
# in-process simulators (tests) do not wait.
CLI_CHUNK_DELAY = 0.02
SUMMARY_LINES = 10
MAX_BODY_BYTES = 32 * 1024 * 1024

_ERROR_DEFAULTS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "The request was invalid."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: ("invalid_request_error", "unsupported_country_region_territory", "Access denied."),
    404: ("invalid_request_error", "model_not_found", "The model does not exist or you do not have access to it."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached. Please try again later."),
    500: ("server_error", None, "The server had an error while processing your request. Sorry about that!"),
    503: ("server_error", None, "The engine is currently overloaded, please try again later."),
}


_ANTHROPIC_ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}

_ANTHROPIC_STOP_REASONS: dict[str, str] = {
    "stop": "end_turn",
    "tool_calls": "tool_use",
    "length": "max_tokens",
    "content_filter": "refusal",
}

OPENAI, AZURE, ANTHROPIC = "openai", "azure", "anthropic"
_AZURE_CHAT_PATH = re.compile(r"^/openai/deployments/([^/]+)/chat/completions$")

# The key thinking signatures are made with: one per process, so that every simulator (every "Anthropic endpoint")
# accepts what another one signed, as Anthropic's API does, and nothing else can make one.
_THINKING_KEY = secrets.token_bytes(32)
THINKING_BLOCK_TYPES = ("thinking", "redacted_thinking")
MISSING_THINKING_MESSAGE = (
    "messages.{position}.content.0.type: Expected `thinking` or `redacted_thinking`, but found `{found}`. When "
    "`thinking` is enabled, a final `assistant` message must start with a thinking block (preceeding the lastmost "
    "set of `tool_use` and `tool_result` blocks). We recommend you include thinking blocks from previous turns. To "
    "avoid this requirement, disable `thinking`. Please consult our documentation at "
    "https://docs.claude.com/en/docs/build-with-claude/extended-thinking"
)


def thinking_signature(thinking: str) -> str:
    """The signature this simulator gives a thinking block (it covers the block's text)."""
    mac = hmac.new(_THINKING_KEY, b"thinking\0" + thinking.encode(), hashlib.sha256).digest()
    return base64.b64encode(b"airlock-sim-thinking:" + mac).decode()


def redacted_thinking_data(label: str) -> str:
    """The encrypted-looking `data` of a redacted_thinking block that hides `label`."""
    payload = label.encode()
    mac = hmac.new(_THINKING_KEY, b"redacted\0" + payload, hashlib.sha256).digest()
    return base64.b64encode(payload + mac).decode()


def _redacted_data_valid(data: Any) -> bool:
    try:
        raw = base64.b64decode(data, validate=True) if isinstance(data, str) else b""
    except (binascii.Error, ValueError):
        return False
    payload, mac = raw[:-32], raw[-32:]
    expected = hmac.new(_THINKING_KEY, b"redacted\0" + payload, hashlib.sha256).digest()
    return len(raw) > 32 and hmac.compare_digest(mac, expected)


def anthropic_thinking_error(body: dict[str, Any]) -> str | None:
    """Why the Messages API would refuse this request's thinking blocks (None when it would accept them)."""
    messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
    for position, message in enumerate(messages):
        content = message.get("content")
        if message.get("role") != "assistant" or not isinstance(content, list):
            continue
        for index, block in enumerate(content):
            if not isinstance(block, dict):
                continue
            if block.get("type") == "thinking":
                signature = block.get("signature")
                expected = thinking_signature(str(block.get("thinking") or ""))
                if not isinstance(signature, str) or not hmac.compare_digest(signature, expected):
                    return f"messages.{position}.content.{index}: Invalid `signature` in `thinking` block"
            elif block.get("type") == "redacted_thinking" and not _redacted_data_valid(block.get("data")):
                return f"messages.{position}.content.{index}: Invalid `data` in `redacted_thinking` block"
    if (body.get("thinking") or {}).get("type") != "enabled" or len(messages) < 2:
        return None
    last, previous = messages[-1], messages[-2]
    results, content = last.get("content"), previous.get("content")
    answers_tools = (
        last.get("role") == "user"
        and isinstance(results, list)
        and bool(results)
        and all(isinstance(b, dict) and b.get("type") == "tool_result" for b in results)
    )
    if not answers_tools or previous.get("role") != "assistant" or not isinstance(content, list):
        return None
    if not any(isinstance(b, dict) and b.get("type") == "tool_use" for b in content):
        return None
    found = content[0].get("type") if content and isinstance(content[0], dict) else "nothing"
    if found in THINKING_BLOCK_TYPES:
        return None
    return MISSING_THINKING_MESSAGE.format(position=len(messages) - 2, found=found)


def _anthropic_error_body(status: int, message: str | None = None, *, type_: str | None = None) -> dict:
    """Anthropic's JSON error body for a status."""
    default_type = _ANTHROPIC_ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    return {"type": "error", "error": {"type": type_ or default_type, "message": message or phrase}}


def _error_body(status: int, message: str | None = None, *, type_: str | None = None, code: str | None = None) -> dict:
    """OpenAI's JSON error body for a status."""
    default_type, default_code, default_message = _ERROR_DEFAULTS.get(
        status, ("server_error" if status >= 500 else "invalid_request_error", None, HTTPStatus(status).phrase)
    )
    return {
        "error": {
            "message": message or default_message,
            "type": type_ or default_type,
            "param": None,
            "code": code if code is not None else default_code,
        }
    }


def _mask(secret: str) -> str:
    """What may be shown of a presented key: its last four characters."""
    return "****" + secret[-4:] if len(secret) >= 12 else "****"


def _content_text(content: Any) -> str:
    """The text of a message's content, whether a string or a list of parts (text, tool_result, tool_use)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict):
                continue
            if part.get("type") == "tool_result":
                texts.append(_content_text(part.get("content")))
            elif part.get("type") == "tool_use":
                texts.append(json.dumps(part.get("input") or {}))
            else:
                texts.append(part.get("text", ""))
        return "".join(texts)
    return ""


def _estimate_tokens(text: str) -> int:
    """A rough token count (four characters a token), at least one for non-empty text."""
    return max(1, round(len(text) / 4)) if text else 0


_BACKTICK_COMMAND = re.compile(r"`{1,3}(?:(?:sh|bash|shell)\n)?([^`]+?)`{1,3}")


def command_in_prompt(prompt: str) -> str | None:
    """The shell command a prompt asks for: "run `ls -la`", "run: ls", "$ ls"; else None."""
    stripped = prompt.strip()
    lowered = stripped.lower()
    if lowered.startswith("run:"):
        return stripped[4:].strip() or None
    if stripped.startswith("$ "):
        return stripped[2:].strip() or None
    match = _BACKTICK_COMMAND.search(stripped)
    if match and match.group(1).strip():
        return match.group(1).strip()
    return None


def default_turn(body: dict[str, Any], *, chunk_delay: float = 0.0) -> dict[str, Any]:
    """What the simulator answers when no turn is scripted: summarize, run a command, or explain itself."""
    messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
    tool_names = {
        (tool.get("function") or {}).get("name")
        for tool in body.get("tools") or []
        if isinstance(tool, dict) and tool.get("type", "function") == "function"
    }
    pace = {"chunk_chars": DEFAULT_RESPONDER_CHUNK_CHARS, "chunk_delay": chunk_delay}
    if messages and messages[-1].get("role") == "tool":
        return {"text": _summarize_tool_result(messages), **pace}
    prompt = ""
    for message in reversed(messages):
        if message.get("role") == "user":
            prompt = _content_text(message.get("content"))
            break
    command = command_in_prompt(prompt)
    if command and "execute" in tool_names:
        calls = [{"name": "execute", "arguments": {"command": command}}]
        template = _template_to_start(body, messages)
        if template is not None:
            calls.insert(0, {"name": "start_workspace", "arguments": {"template": template}})
        where = f"a workspace from the {template!r} template" if template is not None else "the workspace"
        return {"text": f"I'll run `{command}` in {where}.", "tool_calls": calls, **pace}
    return {"text": _help_text(prompt, offers_execute="execute" in tool_names, command=command), **pace}


def _template_to_start(body: dict[str, Any], messages: list[dict[str, Any]]) -> str | None:
    """The first template `start_workspace` offers, when the conversation has not started a workspace yet."""
    started = any(
        (call.get("function") or {}).get("name") == "start_workspace"
        for message in messages
        for call in message.get("tool_calls") or []
        if isinstance(call, dict)
    )
    for tool in body.get("tools") or []:
        function = tool.get("function") if isinstance(tool, dict) else None
        if not started and isinstance(function, dict) and function.get("name") == "start_workspace":
            choices = (((function.get("parameters") or {}).get("properties") or {}).get("template") or {}).get("enum")
            if isinstance(choices, list) and choices:
                return str(choices[0])
    return None


def openai_view(body: dict[str, Any]) -> dict[str, Any]:
    """An Anthropic Messages request in the Chat Completions shape, so that the default responder reads both."""
    messages: list[dict[str, Any]] = []
    for message in body.get("messages") or []:
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        parts = content if isinstance(content, list) else [{"type": "text", "text": content or ""}]
        parts = [part for part in parts if isinstance(part, dict)]
        results = [part for part in parts if part.get("type") == "tool_result"]
        calls = [part for part in parts if part.get("type") == "tool_use"]
        for result in results:
            messages.append(
                {
                    "role": "tool",
                    "tool_call_id": result.get("tool_use_id"),
                    "content": _content_text(result.get("content")),
                }
            )
        text = "".join(part.get("text", "") for part in parts if part.get("type") == "text")
        if message.get("role") == "assistant":
            item: dict[str, Any] = {"role": "assistant", "content": text}
            if calls:
                item["tool_calls"] = [
                    {
                        "id": call.get("id"),
                        "type": "function",
                        "function": {"name": call.get("name"), "arguments": json.dumps(call.get("input") or {})},
                    }
                    for call in calls
                ]
            messages.append(item)
        elif text or not results:
            messages.append({"role": "user", "content": text})
    tools = [
        {"type": "function", "function": {"name": tool.get("name"), "parameters": tool.get("input_schema") or {}}}
        for tool in body.get("tools") or []
        if isinstance(tool, dict)
    ]
    return {"model": body.get("model"), "messages": messages, "tools": tools}


def _summarize_tool_result(messages: list[dict[str, Any]]) -> str:
    output = _content_text(messages[-1].get("content"))
    call_id = messages[-1].get("tool_call_id")
    command = None
    for message in reversed(messages[:-1]):
        for call in message.get("tool_calls") or []:
            if call.get("id") == call_id:
                try:
                    command = json.loads((call.get("function") or {}).get("arguments") or "{}").get("command")
                except (ValueError, AttributeError):
                    command = None
        if command:
            break
    ran = f"I ran `{command}`." if command else "The command finished."
    lines = output.rstrip("\n").splitlines()
    if not lines:
        return f"{ran} It printed nothing."
    shown = "\n".join(lines[:SUMMARY_LINES])
    more = f"\n\n({len(lines) - SUMMARY_LINES} more lines not shown.)" if len(lines) > SUMMARY_LINES else ""
    noun = "line" if len(lines) == 1 else "lines"
    return f"{ran} It printed {len(lines)} {noun}; the first ones are:\n\n```\n{shown}\n```{more}"


def _help_text(prompt: str, *, offers_execute: bool, command: str | None) -> str:
    echoed = prompt.strip() or "(an empty message)"
    if len(echoed) > 500:
        echoed = echoed[:500] + "..."
    intro = (
        "Hello! I am Airlock's offline simulator: a stand-in model that runs on this machine, so nothing you "
        "type leaves it. I do not understand language; I follow a few simple rules.\n\n"
        f"You wrote: {echoed}\n\n"
    )
    if offers_execute:
        how = (
            "To see the agent work, ask me to run a shell command: put it in backticks (run `ls -la`), or start "
            "your message with `run:` or `$ ` (for example `$ echo hello`). I will call the execute tool, the "
            "command runs in your workspace, and I will summarize what it printed. Configure a real model "
            "provider to get real answers."
        )
    elif command:
        how = f"I would run `{command}`, but this request offers no `execute` tool, so I can only answer in text."
    else:
        how = "This request offers no `execute` tool, so I can only answer in text."
    return intro + how


class LoopbackServer(ThreadingHTTPServer):
    """A threading HTTP server on loopback whose handlers reach the scripted object through `self.owner`.

    Shared by the simulator and the tests' vendor fakes: it tracks open connections so that stop() can
    end kept-alive handler threads, and treats a client hanging up as normal.
    """

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], owner: Any) -> None:
        self.owner = owner
        self.open_sockets: set[socket.socket] = set()
        self.sockets_lock = threading.Lock()
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        """Remember the connection (so stop() can close it), then serve it in a thread."""
        with self.sockets_lock:
            self.open_sockets.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        """Forget a connection that has ended."""
        with self.sockets_lock:
            self.open_sockets.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client hanging up is normal (keep-alive, stop()); anything else is a bug worth printing."""
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)

    def close_open_connections(self) -> None:
        """Close kept-alive client connections so that their handler threads end."""
        with self.sockets_lock:
            sockets = list(self.open_sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class ConnectionDropped(Exception):
    """The script asked to drop the connection mid-stream."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # each SSE event leaves at once, as a real streaming server sends it
    server: LoopbackServer
    server_version = "AirlockSimulator/1.0"

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: tests and `make run` read stdout."""

    # -- routing -----------------------------------------------------------------------------------------

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        """Serve the model list and the recorded requests."""
        path = self.path.split("?", 1)[0].rstrip("/")
        if path == "/v1/models" and self.headers.get("anthropic-version"):
            if self._authorized(ANTHROPIC):
                self._send_json(200, self.server.owner.models_payload(ANTHROPIC))
        elif path == "/v1/models":
            if self._authorized(OPENAI):
                self._send_json(200, self.server.owner.models_payload())
        elif path == "/openai/models":
            if self._authorized(AZURE):
                self._send_json(200, self.server.owner.models_payload())
        elif path == "/_simulator/requests":
            self._send_json(200, {"requests": self.server.owner.request_log})
        else:
            self._send_json(404, _error_body(404, f"Unknown path {path or '/'}", code="unknown_url"))

    def do_POST(self) -> None:  # noqa: N802 - http.server naming
        """Serve chat completions and the control endpoints."""
        path = self.path.split("?", 1)[0].rstrip("/")
        body = self._read_json()
        if body is None:
            return
        simulator = self.server.owner
        if path == "/v1/chat/completions":
            if not self._authorized(OPENAI):
                return
            simulator._record(body, self)
            self._chat_completion(body, simulator._next_turn(body))
        elif _AZURE_CHAT_PATH.match(path):
            if not self._authorized(AZURE) or not self._azure_api_version():
                return
            simulator._record(body, self)
            self._chat_completion(body, simulator._next_turn(body))
        elif path == "/v1/messages":
            if not self._authorized(ANTHROPIC):
                return
            simulator._record(body, self)
            refusal = anthropic_thinking_error(body)
            if refusal is not None:  # refused before the model runs: the scripted turn is left for the next request
                self._send_error_turn({"status": 400, "message": refusal}, ANTHROPIC)
                return
            self._anthropic_message(body, simulator._next_turn(openai_view(body)))
        elif path == "/_simulator/script":
            turns = body.get("turns") if isinstance(body, dict) else None
            if not isinstance(turns, list) or not all(isinstance(t, dict) for t in turns):
                self._send_json(400, _error_body(400, 'Send {"turns": [ {...}, ... ]}: a list of turn objects.'))
                return
            simulator.enqueue(*turns)
            self._send_json(200, {"queued": simulator.pending_turns})
        elif path == "/_simulator/reset":
            simulator.reset()
            self._send_json(200, {"queued": 0})
        else:
            self._send_json(404, _error_body(404, f"Unknown path {path or '/'}", code="unknown_url"))

    # -- helpers -----------------------------------------------------------------------------------------

    def _read_json(self) -> Any:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY_BYTES:
            self._send_json(400, _error_body(400, "Send a JSON body with a valid Content-Length."))
            return None
        raw = self.rfile.read(length) if length else b"{}"
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            self._send_json(400, _error_body(400, "The request body is not valid JSON."))
            return None
        if not isinstance(body, dict):
            self._send_json(400, _error_body(400, "The request body must be a JSON object."))
            return None
        return body

    def _azure_api_version(self) -> bool:
        query = self.path.partition("?")[2]
        if re.search(r"(^|&)api-version=[^&]+", query):
            return True
        self._send_json(
            404,
            {"error": {"code": "404", "message": "Resource not found: the api-version query parameter is missing."}},
        )
        return False

    def _authorized(self, protocol: str = OPENAI) -> bool:
        expected = self.server.owner.api_key
        if expected is None:
            return True
        if protocol == AZURE:
            return self._key_matches(self.headers.get("api-key") or "", protocol)
        if protocol == ANTHROPIC and self.headers.get("x-api-key"):
            return self._key_matches(self.headers.get("x-api-key") or "", protocol)
        header = self.headers.get("Authorization") or ""
        if protocol != OPENAI:
            return self._key_matches(header[7:].strip() if header.startswith("Bearer ") else "", protocol)
        if not header.startswith("Bearer ") or not header[7:].strip():
            self._send_json(
                401,
                _error_body(
                    401,
                    "You didn't provide an API key. You need to provide your API key in an Authorization header "
                    "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                    code=None,
                ),
            )
            return False
        presented = header[7:].strip()
        if not hmac.compare_digest(presented.encode(), expected.encode()):
            self._send_json(401, _error_body(401, f"Incorrect API key provided: {_mask(presented)}."))
            return False
        return True

    def _key_matches(self, presented: str, protocol: str) -> bool:
        """Azure and Anthropic key checks, answered in the vendor's error shape."""
        expected = self.server.owner.api_key or ""
        if presented and hmac.compare_digest(presented.encode(), expected.encode()):
            return True
        if protocol == ANTHROPIC:
            self._send_json(401, _anthropic_error_body(401, "invalid x-api-key"))
        else:
            message = (
                "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid "
                "key for an active subscription and use a correct regional API endpoint for your resource."
            )
            self._send_json(401, {"error": {"code": "401", "message": message}})
        return False

    def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _chat_completion(self, body: dict[str, Any], turn: dict[str, Any]) -> None:
        if turn.get("delay"):
            time.sleep(float(turn["delay"]))
        error = turn.get("error")
        if error:
            self._send_error_turn(error)
            return
        completion = _Completion(body, turn)
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            self._stream(completion.chunks(include_usage=include_usage), turn)
        else:
            self._send_json(200, completion.message())

    def _send_error_turn(self, error: dict[str, Any], protocol: str = OPENAI) -> None:
        status = int(error.get("status", 500))
        headers = {}
        if error.get("retry_after") is not None:
            headers["Retry-After"] = str(error["retry_after"])
        if protocol == ANTHROPIC:
            body = _anthropic_error_body(status, error.get("message"), type_=error.get("type"))
            headers["request-id"] = f"req_sim{uuid.uuid4().hex[:20]}"
        else:
            body = _error_body(status, error.get("message"), type_=error.get("type"), code=error.get("code"))
        self._send_json(status, body, headers)

    def _anthropic_message(self, body: dict[str, Any], turn: dict[str, Any]) -> None:
        if turn.get("delay"):
            time.sleep(float(turn["delay"]))
        error = turn.get("error")
        if error:
            self._send_error_turn(error, ANTHROPIC)
            return
        message = _AnthropicMessage(body, turn)
        if body.get("stream"):
            self._stream(message.events(), turn, done_marker=False)
        else:
            self._send_json(200, message.message())

    def _stream(
        self,
        chunks: Iterator[dict[str, Any] | tuple[str, dict[str, Any]]],
        turn: dict[str, Any],
        *,
        done_marker: bool = True,
    ) -> None:
        """Send server-sent events: dicts as `data:` lines, (name, dict) pairs with an `event:` line too."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        drop_after = turn.get("drop_after_chunks")
        chunk_delay = float(turn.get("chunk_delay") or 0)
        sent = 0
        try:
            for chunk in chunks:
                if drop_after is not None and sent >= int(drop_after):
                    raise ConnectionDropped
                if isinstance(chunk, tuple):
                    self._write_event(json.dumps(chunk[1]), event=chunk[0])
                else:
                    self._write_event(json.dumps(chunk))
                sent += 1
                if chunk_delay:
                    time.sleep(chunk_delay)
            if drop_after is not None and sent >= int(drop_after):
                raise ConnectionDropped
            if done_marker:
                self._write_event("[DONE]")
            self.wfile.write(b"0\r\n\r\n")
        except ConnectionDropped:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _write_event(self, data: str, event: str | None = None) -> None:
        payload = (f"event: {event}\n" if event else "").encode() + f"data: {data}\n\n".encode()
        self.wfile.write(f"{len(payload):x}\r\n".encode() + payload + b"\r\n")


class _Completion:
    """One scripted answer, rendered as a chat.completion or as chat.completion.chunk events."""

    def __init__(self, body: dict[str, Any], turn: dict[str, Any]) -> None:
        self.id = f"chatcmpl-sim{uuid.uuid4().hex[:20]}"
        self.created = int(time.time())
        self.model = str(body.get("model") or DEFAULT_MODEL_ID)
        self.text = str(turn.get("text") or "")
        self.thinking = str(turn.get("thinking") or "")
        self.chunk_chars = max(1, int(turn.get("chunk_chars") or DEFAULT_CHUNK_CHARS))
        self.tool_calls = [self._tool_call(call) for call in turn.get("tool_calls") or []]
        self.finish_reason = turn.get("finish_reason") or ("tool_calls" if self.tool_calls else "stop")
        tokens = _turn_tokens(
            body, turn, self.thinking + self.text + "".join(c["function"]["arguments"] for c in self.tool_calls)
        )
        # OpenAI's prompt_tokens includes the cached part, which prompt_tokens_details.cached_tokens names.
        prompt_tokens = tokens["input"] + tokens["cache_read"] + tokens["cache_write"]
        self.usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": tokens["output"],
            "total_tokens": prompt_tokens + tokens["output"],
        }
        if tokens["cache_read"] or tokens["cache_write"]:
            self.usage["prompt_tokens_details"] = {"cached_tokens": tokens["cache_read"]}

    @staticmethod
    def _tool_call(call: dict[str, Any]) -> dict[str, Any]:
        arguments = call.get("arguments", {})
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments)
        return {
            "id": call.get("id") or f"call_{uuid.uuid4().hex[:24]}",
            "type": "function",
            "function": {"name": call.get("name", "execute"), "arguments": arguments},
        }

    def message(self) -> dict[str, Any]:
        """The non-streaming chat.completion object."""
        message: dict[str, Any] = {"role": "assistant", "content": self.text or None, "refusal": None}
        if self.tool_calls:
            message["tool_calls"] = self.tool_calls
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": "fp_airlock_simulator",
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": self.finish_reason}],
            "usage": self.usage,
        }

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None, *, include_usage: bool) -> dict:
        chunk: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": "fp_airlock_simulator",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        }
        if include_usage:
            chunk["usage"] = None
        return chunk

    def chunks(self, *, include_usage: bool) -> Iterator[dict[str, Any]]:
        """The chat.completion.chunk events, as OpenAI streams them."""
        first: dict[str, Any] = {"role": "assistant", "content": "" if not self.tool_calls or self.text else None}
        if not self.tool_calls:
            first["refusal"] = None
        yield self._chunk(first, include_usage=include_usage)
        for start in range(0, len(self.thinking), self.chunk_chars):
            piece = self.thinking[start : start + self.chunk_chars]
            yield self._chunk({"reasoning_content": piece}, include_usage=include_usage)
        for start in range(0, len(self.text), self.chunk_chars):
            piece = self.text[start : start + self.chunk_chars]
            yield self._chunk({"content": piece}, include_usage=include_usage)
        for index, call in enumerate(self.tool_calls):
            opening = {
                "index": index,
                "id": call["id"],
                "type": "function",
                "function": {"name": call["function"]["name"], "arguments": ""},
            }
            yield self._chunk({"tool_calls": [opening]}, include_usage=include_usage)
            arguments = call["function"]["arguments"]
            step = max(1, -(-len(arguments) // 3))  # three fragments (fewer for very short arguments)
            for start in range(0, len(arguments), step):
                fragment = {"index": index, "function": {"arguments": arguments[start : start + step]}}
                yield self._chunk({"tool_calls": [fragment]}, include_usage=include_usage)
        yield self._chunk({}, self.finish_reason, include_usage=include_usage)
        if include_usage:
            yield {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "system_fingerprint": "fp_airlock_simulator",
                "choices": [],
                "usage": self.usage,
            }


def _turn_tokens(body: dict[str, Any], turn: dict[str, Any], output_text: str) -> dict[str, int]:
    """Input (uncached), output and cache tokens of a turn: scripted, else estimated from the characters."""
    prompt_text = _content_text(body.get("system")) + "".join(
        _content_text(m.get("content")) for m in body.get("messages") or [] if isinstance(m, dict)
    )
    usage = turn.get("usage") or {}
    return {
        "input": int(usage.get("prompt_tokens", _estimate_tokens(prompt_text))),
        "output": int(usage.get("completion_tokens", _estimate_tokens(output_text))),
        "cache_read": int(usage.get("cache_read_tokens", 0)),
        "cache_write": int(usage.get("cache_write_tokens", 0)),
    }


def _pieces(text: str, size: int) -> list[str]:
    return [text[start : start + size] for start in range(0, len(text), size)]


class _AnthropicMessage:
    """One scripted answer, rendered as an Anthropic message or as its stream of server-sent events."""

    def __init__(self, body: dict[str, Any], turn: dict[str, Any]) -> None:
        self.id = f"msg_sim{uuid.uuid4().hex[:20]}"
        self.model = str(body.get("model") or DEFAULT_MODEL_ID)
        self.text = str(turn.get("text") or "")
        self.thinking = str(turn.get("thinking") or "")
        self.redacted = str(turn.get("redacted_thinking") or "")
        self.chunk_chars = max(1, int(turn.get("chunk_chars") or DEFAULT_CHUNK_CHARS))
        self.tool_calls = []
        for call in turn.get("tool_calls") or []:
            arguments = call.get("arguments", {})
            self.tool_calls.append(
                {
                    "id": call.get("id") or f"toolu_{uuid.uuid4().hex[:24]}",
                    "name": call.get("name", "execute"),
                    "json": arguments if isinstance(arguments, str) else json.dumps(arguments),
                }
            )
        finish = turn.get("finish_reason") or ("tool_calls" if self.tool_calls else "stop")
        self.stop_reason = _ANTHROPIC_STOP_REASONS.get(finish, finish)
        self.tokens = _turn_tokens(body, turn, self.thinking + self.text + "".join(c["json"] for c in self.tool_calls))

    def _usage(self, output_tokens: int) -> dict[str, Any]:
        return {
            "input_tokens": self.tokens["input"],
            "cache_creation_input_tokens": self.tokens["cache_write"],
            "cache_read_input_tokens": self.tokens["cache_read"],
            "output_tokens": output_tokens,
        }

    def _blocks(self) -> list[dict[str, Any]]:
        blocks: list[dict[str, Any]] = []
        if self.thinking:
            signature = thinking_signature(self.thinking)
            blocks.append({"type": "thinking", "thinking": self.thinking, "signature": signature})
        if self.redacted:
            blocks.append({"type": "redacted_thinking", "data": redacted_thinking_data(self.redacted)})
        if self.text:
            blocks.append({"type": "text", "text": self.text})
        for call in self.tool_calls:
            try:
                parsed = json.loads(call["json"])
            except ValueError:
                parsed = {}
            blocks.append({"type": "tool_use", "id": call["id"], "name": call["name"], "input": parsed})
        return blocks

    def message(self) -> dict[str, Any]:
        """The non-streaming message object."""
        return {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": self._blocks(),
            "stop_reason": self.stop_reason,
            "stop_sequence": None,
            "usage": self._usage(self.tokens["output"]),
        }

    def events(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """The server-sent events of the Messages API, in Anthropic's order."""
        start = {**self.message(), "content": [], "stop_reason": None, "usage": self._usage(1)}
        yield "message_start", {"type": "message_start", "message": start}
        yield "ping", {"type": "ping"}
        index = 0
        if self.thinking:
            yield (
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": index,
                    "content_block": {"type": "thinking", "thinking": "", "signature": ""},
                },
            )
            for piece in _pieces(self.thinking, self.chunk_chars):
                delta = {"type": "thinking_delta", "thinking": piece}
                yield "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}
            delta = {"type": "signature_delta", "signature": thinking_signature(self.thinking)}
            yield "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}
            yield "content_block_stop", {"type": "content_block_stop", "index": index}
            index += 1
        if self.redacted:
            block = {"type": "redacted_thinking", "data": redacted_thinking_data(self.redacted)}
            yield (
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": block},
            )
            yield "content_block_stop", {"type": "content_block_stop", "index": index}
            index += 1
        if self.text:
            yield (
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": index,
                    "content_block": {"type": "text", "text": ""},
                },
            )
            for piece in _pieces(self.text, self.chunk_chars):
                delta = {"type": "text_delta", "text": piece}
                yield "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}
            yield "content_block_stop", {"type": "content_block_stop", "index": index}
            index += 1
        for call in self.tool_calls:
            yield (
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": index,
                    "content_block": {"type": "tool_use", "id": call["id"], "name": call["name"], "input": {}},
                },
            )
            arguments = call["json"]
            step = max(1, -(-len(arguments) // 3))  # three fragments (fewer for very short arguments)
            for piece in _pieces(arguments, step):
                delta = {"type": "input_json_delta", "partial_json": piece}
                yield "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}
            yield "content_block_stop", {"type": "content_block_stop", "index": index}
            index += 1
        yield (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": self.stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": self.tokens["output"]},
            },
        )
        yield "message_stop", {"type": "message_stop"}


class ScriptedLoopback:
    """A scripted server on loopback: lifecycle, the script of turns and the record of requests.

    The simulator and the tests' vendor fakes share it; subclasses set `handler_class` and `thread_name`.
    """

    handler_class: type[BaseHTTPRequestHandler]
    thread_name = "scripted-loopback"

    def __init__(self, script: list[dict[str, Any]] | None = None, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self._lock = threading.Lock()
        self._turns: list[dict[str, Any]] = [dict(turn) for turn in script or []]
        self._requests: list[dict[str, Any]] = []
        self._request_log: list[dict[str, Any]] = []
        self._server: LoopbackServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> Self:
        """Bind the port and serve in a background thread."""
        if self._server is not None:
            return self
        self._server = LoopbackServer((self.host, self.port), self.handler_class, self)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name=self.thread_name, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close every open connection."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.close_open_connections()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def root_url(self) -> str:
        """Scheme, host and port of the server."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def enqueue(self, *turns: dict[str, Any]) -> None:
        """Append turns to the script; each model request consumes the first one."""
        with self._lock:
            self._turns.extend(dict(turn) for turn in turns)

    @property
    def pending_turns(self) -> int:
        """How many scripted turns are left."""
        with self._lock:
            return len(self._turns)

    @property
    def requests(self) -> list[dict[str, Any]]:
        """The JSON bodies of the model requests received (after authentication), oldest first."""
        with self._lock:
            return json.loads(json.dumps(self._requests))

    @property
    def request_log(self) -> list[dict[str, Any]]:
        """Each model request's path, headers (secrets masked) and body, rejected ones included."""
        with self._lock:
            return json.loads(json.dumps(self._request_log))


class ModelSimulator(ScriptedLoopback):
    """A scripted model server on loopback (OpenAI, Azure OpenAI, Anthropic); each chat request consumes a turn."""

    handler_class = _Handler
    thread_name = "model-simulator"

    def __init__(
        self,
        script: list[dict[str, Any]] | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | None = None,
        default_chunk_delay: float = 0.0,
    ) -> None:
        super().__init__(script, host=host, port=port)
        self.api_key = api_key
        self.default_chunk_delay = default_chunk_delay

    @property
    def base_url(self) -> str:
        """The OpenAI base URL clients use, ending in /v1."""
        return f"{self.root_url}/v1"

    def reset(self) -> None:
        """Forget the script and the recorded requests."""
        with self._lock:
            self._turns.clear()
            self._requests.clear()
            self._request_log.clear()

    def models_payload(self, protocol: str = OPENAI) -> dict[str, Any]:
        """The GET /v1/models answer: the simulator's model plus any model a client asked for."""
        with self._lock:
            names = [DEFAULT_MODEL_ID] + sorted(
                {str(b.get("model")) for b in self._requests if b.get("model")} - {DEFAULT_MODEL_ID}
            )
        created = int(time.time())
        if protocol == ANTHROPIC:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created))
            data = [{"type": "model", "id": n, "display_name": n, "created_at": stamp} for n in names]
            return {"data": data, "has_more": False, "first_id": names[0], "last_id": names[-1]}
        return {
            "object": "list",
            "data": [{"id": name, "object": "model", "created": created, "owned_by": "airlock"} for name in names],
        }

    def _record(self, body: dict[str, Any], handler: BaseHTTPRequestHandler) -> None:
        headers = {}
        for name, value in handler.headers.items():
            if name.lower() == "authorization":
                scheme, _, secret = value.partition(" ")
                value = f"{scheme} {_mask(secret.strip())}"
            elif name.lower() in ("x-api-key", "api-key"):
                value = _mask(value.strip())
            headers[name.lower()] = value
        entry = {
            "path": handler.path,
            "headers": headers,
            "client_port": handler.client_address[1],
            "received_at": time.monotonic(),
            "body": body,
        }
        with self._lock:
            self._requests.append(body)
            self._request_log.append(entry)

    def _next_turn(self, body: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            if self._turns:
                return self._turns.pop(0)
        return default_turn(body, chunk_delay=self.default_chunk_delay)


def _load_script(path: str) -> list[dict[str, Any]]:
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise SystemExit(f"Cannot read the script {path}: {exc.strerror}.") from None
    except ValueError as exc:
        raise SystemExit(f"The script {path} is not valid JSON: {exc}.") from None
    if isinstance(data, dict):
        data = data.get("turns")
    if not isinstance(data, list) or not all(isinstance(turn, dict) for turn in data):
        raise SystemExit(f'The script {path} must hold a list of turn objects (or {{"turns": [...]}}).')
    return data


def main(argv: list[str] | None = None) -> int:
    """Run the simulator until interrupted, printing one line with its base URL."""
    parser = argparse.ArgumentParser(
        prog="python -m providers.simulator", description="Airlock's offline OpenAI-compatible model simulator."
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8765, help="port to listen on; 0 picks a free one (default 8765)")
    parser.add_argument("--script", help="JSON file with a list of turns to answer before the default responder")
    parser.add_argument(
        "--chunk-delay",
        type=float,
        default=CLI_CHUNK_DELAY,
        help=f"seconds between streamed chunks of unscripted answers (default {CLI_CHUNK_DELAY})",
    )
    args = parser.parse_args(argv)
    script = _load_script(args.script) if args.script else None
    simulator = ModelSimulator(script, host=args.host, port=args.port, default_chunk_delay=max(0.0, args.chunk_delay))
    try:
        simulator.start()
    except OSError as exc:
        print(f"Cannot listen on {args.host}:{args.port}: {exc.strerror}. Pick another --port.", file=sys.stderr)
        return 2
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    print(f"Airlock offline model simulator listening at {simulator.base_url}", flush=True)
    try:
        stopped.wait()
    except KeyboardInterrupt:
        pass
    finally:
        simulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
