"""A real browser signs in, picks the model, sends a prompt and watches the answer and the command stream in."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

from tests.livesrv import LivePortal
from workspaces.services import template_create

pytestmark = pytest.mark.timeout(120)

AGENT_TIMEOUT_MS = 45_000
CHAT_SCREENSHOT = "/tmp/airlock-chat.png"
LOGIN_SCREENSHOT = "/tmp/airlock-login.png"

# Collect every websocket the page opens, so a test can drop one like a flaky network would.
TRACK_SOCKETS = """
(() => {
  const Native = window.WebSocket;
  window.__airlockSockets = [];
  window.WebSocket = function (...args) {
    const socket = new Native(...args);
    window.__airlockSockets.push(socket);
    return socket;
  };
  window.WebSocket.prototype = Native.prototype;
  Object.assign(window.WebSocket, { CONNECTING: 0, OPEN: 1, CLOSING: 2, CLOSED: 3 });
})();
"""


def sign_in(page: Page, portal: LivePortal, *, screenshot: str | None = None) -> None:
    """Sign in through the login form as the portal's user."""
    page.goto(f"{portal.url}/")
    expect(page).to_have_url(re.compile(r"/accounts/login/"))
    expect(page.get_by_role("heading", name="Sign in to Airlock")).to_be_visible()
    if screenshot:
        page.screenshot(path=screenshot, full_page=True)
    page.get_by_label("Username").fill("alice")
    page.get_by_label("Password").fill("pw-alice")
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(f"{portal.url}/orgs/acme/chat/")


def send(page: Page, prompt: str) -> None:
    """Type a prompt and press Send."""
    page.get_by_label("Prompt").fill(prompt)
    page.get_by_role("button", name="Send").click()


def test_user_signs_in_sends_a_prompt_and_watches_the_command_and_answer_stream_in(
    live_portal: LivePortal, browser_page: Page
) -> None:
    page = browser_page
    model_id = str(live_portal.model.pk)
    live_portal.simulator.enqueue(
        {"text": "Let me check.", "tool_calls": [{"name": "execute", "arguments": {"command": "echo hello"}}]},
        {"text": "The command printed hello.", "chunk_chars": 3, "chunk_delay": 0.08},
    )

    sign_in(page, live_portal, screenshot=LOGIN_SCREENSHOT)
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()

    # Given the simulator model is picked, the page says plainly that it is not a real model.
    page.get_by_label("Model").select_option(model_id)
    expect(page.get_by_label("Model")).to_have_value(model_id)
    expect(page.get_by_text("Offline simulator — not a real model")).to_be_visible()

    send(page, "Say hello from the shell")

    conversation = page.locator("#conversation")
    expect(conversation.locator(".msg-user")).to_have_text(re.compile("Say hello from the shell"))
    expect(page).to_have_url(re.compile(r"/orgs/acme/chat/[0-9a-f-]{36}/$"))
    expect(conversation.get_by_text("Let me check.")).to_be_visible(timeout=AGENT_TIMEOUT_MS)

    command = conversation.locator(".command")
    expect(command.locator(".command-text")).to_have_text("echo hello", timeout=AGENT_TIMEOUT_MS)
    expect(command.locator(".command-output")).to_have_text("hello", timeout=AGENT_TIMEOUT_MS)
    expect(command.locator(".command-state")).to_have_text(re.compile(r"^exit 0 · \d"), timeout=AGENT_TIMEOUT_MS)

    # The final answer arrives piece by piece: the page shows a partial answer before the whole one.
    page.wait_for_function(
        """() => [...document.querySelectorAll('#conversation .msg-assistant .msg-text')].some((node) => {
             const text = node.textContent;
             return text.length > 0 && text.length < 'The command printed hello.'.length
               && 'The command printed hello.'.startsWith(text);
           })""",
        timeout=AGENT_TIMEOUT_MS,
        polling=10,
    )
    expect(conversation.get_by_text("The command printed hello.")).to_be_visible(timeout=AGENT_TIMEOUT_MS)
    expect(page.locator("#status")).to_have_text("Waiting for a prompt", timeout=AGENT_TIMEOUT_MS)
    expect(page.get_by_role("button", name="Send")).to_be_enabled()
    expect(page.locator("#session-list")).to_contain_text("Say hello from the shell")
    page.screenshot(path=CHAT_SCREENSHOT, full_page=True)

    # Reloading replays the stored stream: the same conversation, each part exactly once.
    page.reload()
    expect(conversation.get_by_text("The command printed hello.")).to_be_visible(timeout=AGENT_TIMEOUT_MS)
    expect(conversation.locator(".msg-user")).to_have_count(1)
    expect(conversation.locator(".command")).to_have_count(1)
    expect(conversation.locator(".command-output")).to_have_text("hello")
    expect(conversation.locator(".msg-assistant")).to_have_count(2)
    expect(page.get_by_label("Model")).to_be_disabled()


def test_dropped_stream_reconnects_from_the_last_event_without_duplicates(
    live_portal: LivePortal, browser_page: Page
) -> None:
    page = browser_page
    page.add_init_script(TRACK_SOCKETS)
    opened: list[str] = []
    page.on("websocket", lambda ws: opened.append(ws.url))
    live_portal.simulator.enqueue(
        {"text": "First answer."},
        {"text": "Second answer.", "tool_calls": [{"name": "execute", "arguments": {"command": "echo again"}}]},
        {"text": "Done again."},
    )
    sign_in(page, live_portal)
    conversation = page.locator("#conversation")

    send(page, "First question")
    expect(conversation.get_by_text("First answer.")).to_be_visible(timeout=AGENT_TIMEOUT_MS)
    expect(page.locator("#status")).to_have_text("Waiting for a prompt", timeout=AGENT_TIMEOUT_MS)
    assert opened and opened[0].endswith("?after=0")

    # When the connection drops, the page reconnects by itself and asks only for what it has not seen.
    page.evaluate("window.__airlockSockets.at(-1).close()")
    page.wait_for_function("window.__airlockSockets.length === 2 && window.__airlockSockets[1].readyState === 1")
    after = int(opened[-1].rsplit("after=", 1)[1])
    assert after >= 4, opened

    send(page, "Second question")
    expect(conversation.get_by_text("Done again.")).to_be_visible(timeout=AGENT_TIMEOUT_MS)
    expect(conversation.locator(".command-output")).to_have_text("again")
    expect(conversation.locator(".msg-user")).to_have_count(2)
    expect(conversation.get_by_text("First answer.")).to_have_count(1)
    expect(conversation.get_by_text("Second answer.")).to_have_count(1)
    expect(conversation.locator(".command")).to_have_count(1)


STORED_EVENTS = [
    ("prompt", {"text": "Show me <b>bold</b> output", "user": "alice"}),
    ("status", {"status": "queued"}),
    ("status", {"status": "running"}),
    ("assistant.delta", {"text": "Running <b>it</b>", "step": 1}),
    ("assistant.message", {"text": "Running <b>it</b> now.", "step": 1}),
    ("tool.call", {"id": "call_1", "name": "execute", "arguments": {"command": "printf '<i>x</i>'"}}),
    ("command.started", {"id": "call_1", "command": "printf '<i>x</i>'"}),
    ("command.output", {"id": "call_1", "line": '<img src=x onerror="window.__airlockPwned=1">'}),
    ("command.output", {"id": "call_1", "line": "second line"}),
    (
        "command.finished",
        {"id": "call_1", "exit_code": 2, "duration_ms": 1500, "timed_out": False, "truncated": True},
    ),
    ("assistant.message", {"text": "It exited with 2.", "step": 2}),
    ("status", {"status": "idle"}),
    ("prompt", {"text": "Try again", "user": "alice"}),
    ("status", {"status": "queued"}),
    ("error", {"message": "The model call failed: HTTP 503 from the provider."}),
    ("status", {"status": "failed", "error": "The model call failed: HTTP 503 from the provider."}),
]


@pytest.fixture
def stored_session(live_portal: LivePortal) -> str:
    """A finished session whose stream is already stored: HTML-looking model output, a failing command, a failure."""
    from agents.models import AgentSession, SessionEvent

    session = AgentSession.objects.create(
        organization=live_portal.org,
        created_by=live_portal.user,
        model=live_portal.model,
        title="Show me bold output",
        status="failed",
        error="The model call failed: HTTP 503 from the provider.",
    )
    SessionEvent.objects.bulk_create(
        SessionEvent(session=session, seq=seq, type=type_, payload=payload)
        for seq, (type_, payload) in enumerate(STORED_EVENTS, start=1)
    )
    return str(session.pk)


def test_opening_a_stored_session_shows_its_history_as_plain_text(
    live_portal: LivePortal, stored_session: str, browser_page: Page
) -> None:
    page = browser_page
    sign_in(page, live_portal)

    page.goto(f"{live_portal.url}/orgs/acme/chat/{stored_session}/")

    conversation = page.locator("#conversation")
    # Model and command output that looks like HTML is shown literally, never interpreted.
    expect(conversation.get_by_text("Show me <b>bold</b> output")).to_be_visible()
    expect(conversation.get_by_text("Running <b>it</b> now.")).to_be_visible()
    command = conversation.locator(".command")
    expect(command.locator(".command-text")).to_have_text("printf '<i>x</i>'")
    expect(command.locator(".command-output")).to_have_text(
        '<img src=x onerror="window.__airlockPwned=1">\nsecond line'
    )
    assert page.evaluate("window.__airlockPwned") is None
    assert conversation.locator("img, b, i").count() == 0
    # A failing command says so, with its duration and that its output was cut.
    expect(command.locator(".command-foot")).to_contain_text("exit 2 · 1.50 s")
    expect(command.locator(".command-foot")).to_contain_text("output truncated")
    expect(conversation.get_by_text("It exited with 2.")).to_be_visible()
    # The failure is reported once, and the status shows it.
    expect(conversation.locator(".notice-error")).to_have_count(1)
    expect(conversation.locator(".notice-error")).to_have_text("The model call failed: HTTP 503 from the provider.")
    expect(page.locator("#status")).to_have_text("Failed")
    expect(page.get_by_role("button", name="Send")).to_be_enabled()
    expect(page.locator("#session-list li.active")).to_contain_text("Show me bold output")


def test_wrong_password_shows_an_error_and_keeps_the_chat_closed(
    live_portal: LivePortal, stored_session: str, browser_page: Page
) -> None:
    page = browser_page
    page.goto(f"{live_portal.url}/accounts/login/")
    page.get_by_label("Username").fill("alice")
    page.get_by_label("Password").fill("wrong password")
    page.get_by_role("button", name="Sign in").click()

    expect(page.get_by_role("alert")).to_contain_text("not correct")
    page.goto(f"{live_portal.url}/orgs/acme/chat/{stored_session}/")
    expect(page).to_have_url(re.compile(r"/accounts/login/\?next="))
    expect(page.get_by_text("Show me <b>bold</b> output")).to_have_count(0)


@pytest.fixture
def sandbox_template(live_portal: LivePortal) -> None:
    """A bubblewrap template in acme (created before the browser's event loop starts in this thread)."""
    template_create(
        actor=None, organization=live_portal.org, name="sandbox", description="Debian tools in a bubblewrap sandbox."
    )


@pytest.mark.usefixtures("sandbox_template")
def test_the_agent_starts_a_sandboxed_workspace_from_a_template_and_the_page_shows_it(
    live_portal: LivePortal, browser_page: Page
) -> None:
    page = browser_page
    live_portal.simulator.enqueue(
        {"tool_calls": [{"name": "start_workspace", "arguments": {"template": "sandbox"}}]},
        {"tool_calls": [{"name": "execute", "arguments": {"command": "id -u"}}]},
        {"text": "I run as 1000 in the sandbox."},
    )

    sign_in(page, live_portal)
    send(page, "Who are you in the workspace?")

    conversation = page.locator("#conversation")
    expect(conversation.get_by_text("I run as 1000 in the sandbox.")).to_be_visible(timeout=AGENT_TIMEOUT_MS)
    started, command = conversation.locator(".command").nth(0), conversation.locator(".command").nth(1)
    expect(started.locator(".command-state")).to_have_text("workspace started from template sandbox")
    expect(command.locator(".command-output")).to_have_text("1000")
