/* Airlock chat page: send prompts over the REST API, render the session's event stream from the websocket.
 *
 * Plain JavaScript, no build step. Model output is always rendered with textContent / text nodes, never innerHTML.
 * Every stream event carries a monotonically increasing `seq`; the page remembers the last one it rendered,
 * ignores anything at or below it, and reconnects with `?after=<last seq>` so nothing is shown twice or missed.
 */
(function () {
  "use strict";

  const root = document.getElementById("chat");
  if (!root) return;

  const el = {
    conversation: document.getElementById("conversation"),
    empty: document.getElementById("conversation-empty"),
    form: document.getElementById("composer"),
    prompt: document.getElementById("prompt"),
    send: document.getElementById("send"),
    error: document.getElementById("composer-error"),
    model: document.getElementById("model-select"),
    simBadge: document.getElementById("simulator-badge"),
    status: document.getElementById("status"),
    connection: document.getElementById("connection"),
    sessions: document.getElementById("session-list"),
    commandTemplate: document.getElementById("tpl-command"),
  };

  const STATUS_LABELS = {
    queued: "Queued",
    running: "Running",
    idle: "Waiting for a prompt",
    failed: "Failed",
  };
  const BUSY_STATUSES = new Set(["queued", "running"]);
  // Close codes after which reconnecting cannot help.
  const FINAL_CLOSE = {
    4400: "The address of this session's stream is not valid.",
    4401: "You are signed out. Sign in again to follow this session.",
    4403: "You are not allowed to follow this session.",
    4404: "This session does not exist or is not yours.",
  };
  const MAX_BACKOFF_MS = 15000;

  const state = {
    apiBase: root.dataset.apiBase,
    chatBase: root.dataset.chatBase,
    wsBase: root.dataset.wsBase || "/ws/sessions/",
    canPrompt: root.dataset.canPrompt === "true",
    sessionId: root.dataset.sessionId || null,
    streamPath: null,
    status: root.dataset.sessionStatus || "",
    lastSeq: 0,
    statusSeq: 0,
    lastError: null,
    socket: null,
    attempt: 0,
    reconnectTimer: null,
    stopped: false,
    sending: false,
    turn: 0,
    assistant: new Map(), // "<turn>:<step>" -> {node, text}
    commands: new Map(), // tool call / command id -> command block
  };

  // ---- small helpers -------------------------------------------------------------------------------------

  function csrfToken() {
    const input = el.form && el.form.querySelector("input[name=csrfmiddlewaretoken]");
    return input ? input.value : "";
  }

  function make(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function isPinnedToBottom() {
    const c = el.conversation;
    return c.scrollHeight - c.scrollTop - c.clientHeight < 120;
  }

  function append(node) {
    const pinned = isPinnedToBottom();
    if (el.empty) el.empty.hidden = true;
    el.conversation.appendChild(node);
    if (pinned) el.conversation.scrollTop = el.conversation.scrollHeight;
    return node;
  }

  function keepScrolled(fn) {
    const pinned = isPinnedToBottom();
    fn();
    if (pinned) el.conversation.scrollTop = el.conversation.scrollHeight;
  }

  function formatDuration(ms) {
    if (typeof ms !== "number") return "";
    if (ms < 1000) return ms + " ms";
    return (ms / 1000).toFixed(ms < 10000 ? 2 : 1) + " s";
  }

  function parseArguments(args) {
    if (args && typeof args === "object") return args;
    if (typeof args === "string") {
      try {
        const parsed = JSON.parse(args);
        return parsed && typeof parsed === "object" ? parsed : { value: parsed };
      } catch (_err) {
        return { value: args };
      }
    }
    return {};
  }

  // ---- status and composer -------------------------------------------------------------------------------

  function setStatus(status) {
    if (!status) return;
    state.status = status;
    el.status.textContent = STATUS_LABELS[status] || status;
    el.status.className = "status status-" + status;
    const item = state.sessionId && sidebarItem(state.sessionId);
    if (item) {
      const badge = item.querySelector(".session-status");
      if (badge) {
        badge.textContent = STATUS_LABELS[status] || status;
        badge.className = "session-status status-" + status;
      }
    }
    updateComposer();
  }

  function updateComposer() {
    if (!el.send) return;
    const hasModel = !el.model || el.model.options.length > 0;
    const busy = state.sending || BUSY_STATUSES.has(state.status);
    el.send.disabled = !state.canPrompt || !hasModel || busy || state.stopped;
    el.send.textContent = state.sending ? "Sending…" : BUSY_STATUSES.has(state.status) ? "Working…" : "Send";
    if (el.prompt) el.prompt.disabled = !state.canPrompt || !hasModel || state.stopped;
  }

  function showComposerError(message) {
    if (!el.error) return;
    el.error.textContent = message || "";
    el.error.hidden = !message;
  }

  function setConnection(text, problem) {
    el.connection.textContent = text || "";
    el.connection.classList.toggle("connection-problem", Boolean(problem));
  }

  function updateSimulatorBadge() {
    if (!el.model || !el.simBadge) return;
    const option = el.model.options[el.model.selectedIndex];
    el.simBadge.hidden = !(option && option.dataset.simulator === "true");
  }

  // ---- sidebar -------------------------------------------------------------------------------------------

  function sidebarItem(id) {
    if (!el.sessions) return null;
    for (const li of el.sessions.querySelectorAll("li[data-session-id]")) {
      if (li.dataset.sessionId === String(id)) return li;
    }
    return null;
  }

  function addToSidebar(session) {
    if (!el.sessions || sidebarItem(session.id)) return;
    const placeholder = document.getElementById("no-sessions");
    if (placeholder) placeholder.remove();
    for (const li of el.sessions.querySelectorAll("li.active")) li.classList.remove("active");
    const li = make("li", "active");
    li.dataset.sessionId = session.id;
    const link = make("a");
    link.href = state.chatBase + session.id + "/";
    link.appendChild(make("span", "session-title", session.title || "New session"));
    const status = session.status || "queued";
    link.appendChild(make("span", "session-status status-" + status, STATUS_LABELS[status] || status));
    li.appendChild(link);
    el.sessions.insertBefore(li, el.sessions.firstChild);
  }

  // ---- rendering of stream events ------------------------------------------------------------------------

  function renderPrompt(ev) {
    state.turn += 1;
    const box = make("div", "msg msg-user");
    box.appendChild(make("div", "turn-label", ev.user || "You"));
    box.appendChild(make("div", "msg-text", ev.text));
    append(box);
  }

  function assistantBlock(step, create) {
    const key = state.turn + ":" + (step === undefined || step === null ? "" : step);
    let block = state.assistant.get(key);
    if (!block && create) {
      const node = make("div", "msg msg-assistant streaming");
      node.appendChild(make("div", "turn-label", "Agent"));
      const textBox = make("div", "msg-text");
      const text = document.createTextNode("");
      textBox.appendChild(text);
      node.appendChild(textBox);
      append(node);
      block = { node: node, text: text };
      state.assistant.set(key, block);
    }
    return block;
  }

  function renderDelta(ev) {
    if (!ev.text) return;
    const block = assistantBlock(ev.step, true);
    keepScrolled(function () {
      block.text.appendData(ev.text);
    });
  }

  function renderAssistantMessage(ev) {
    const block = assistantBlock(ev.step, Boolean(ev.text));
    if (!block) return;
    keepScrolled(function () {
      block.text.data = ev.text || block.text.data;
      block.node.classList.remove("streaming");
    });
    if (!block.text.data) block.node.remove();
  }

  function commandBlock(id, toolName) {
    const fragment = el.commandTemplate.content.cloneNode(true);
    const node = fragment.querySelector(".command");
    if (toolName) node.querySelector(".command-head").appendChild(make("span", "command-tool", toolName));
    const output = node.querySelector(".command-output");
    const block = {
      id: id,
      node: node,
      commandText: node.querySelector(".command-text"),
      output: output,
      state: node.querySelector(".command-state"),
      foot: node.querySelector(".command-foot"),
      started: false,
      command: "",
    };
    append(node);
    if (id !== undefined && id !== null) state.commands.set(String(id), block);
    return block;
  }

  function renderToolCall(ev) {
    // The step that asked for the tool has finished streaming its text.
    for (const block of state.assistant.values()) block.node.classList.remove("streaming");
    const args = parseArguments(ev.arguments);
    const block = commandBlock(ev.id, ev.name && ev.name !== "execute" ? ev.name : "");
    if (typeof args.command === "string") {
      block.command = args.command;
      block.commandText.textContent = args.command;
    } else {
      block.node.querySelector(".command-label").textContent = ev.name || "tool";
      block.commandText.textContent = JSON.stringify(args);
    }
    block.state.textContent = "requested…";
  }

  function findCommand(ev) {
    const byId = ev.id !== undefined && ev.id !== null ? state.commands.get(String(ev.id)) : null;
    if (byId) return byId;
    // A command whose id differs from its tool call: attach it to the newest tool call with the same command.
    const blocks = Array.from(state.commands.values()).reverse();
    const match = blocks.find(function (b) {
      return !b.started && (!ev.command || b.command === ev.command);
    });
    if (match && ev.id !== undefined && ev.id !== null) state.commands.set(String(ev.id), match);
    return match || null;
  }

  function renderCommandStarted(ev) {
    const block = findCommand(ev) || commandBlock(ev.id, "");
    block.started = true;
    if (ev.command) {
      block.command = ev.command;
      block.commandText.textContent = ev.command;
      block.node.querySelector(".command-label").textContent = "$";
    }
    block.state.textContent = "running…";
  }

  function renderCommandOutput(ev) {
    const block = findCommand(ev) || commandBlock(ev.id, "");
    const line = ev.line === undefined || ev.line === null ? "" : String(ev.line);
    keepScrolled(function () {
      const pinnedOutput = block.output.scrollHeight - block.output.scrollTop - block.output.clientHeight < 40;
      block.output.appendChild(document.createTextNode(line.endsWith("\n") ? line : line + "\n"));
      if (pinnedOutput) block.output.scrollTop = block.output.scrollHeight;
    });
  }

  function renderCommandFinished(ev) {
    const block = findCommand(ev) || commandBlock(ev.id, "");
    block.started = true;
    const ok = ev.exit_code === 0 && !ev.timed_out;
    block.node.classList.add(ok ? "ok" : "failed");
    const parts = [];
    parts.push(ev.exit_code === null || ev.exit_code === undefined ? "no exit code" : "exit " + ev.exit_code);
    const duration = formatDuration(ev.duration_ms);
    if (duration) parts.push(duration);
    block.state.textContent = parts.join(" · ");
    if (ev.timed_out) block.foot.appendChild(make("span", "command-flag", "timed out"));
    if (ev.truncated) block.foot.appendChild(make("span", "command-flag", "output truncated"));
  }

  function renderWorkspaceStarted(ev) {
    const text = "workspace started from template " + (ev.template || "(none)");
    const block = findCommand(ev);
    if (!block) {
      append(make("div", "notice", text));
      return;
    }
    block.started = true;
    block.node.classList.add("ok");
    block.state.textContent = text;
  }

  function renderStatus(ev) {
    state.statusSeq = ev.seq;
    setStatus(ev.status);
    if (ev.status === "failed" && ev.error !== state.lastError) {
      // The loop usually reports the reason as an `error` event first; do not show it twice.
      append(make("div", "notice notice-error", "The agent stopped: " + (ev.error || "unknown error")));
    }
    if (ev.status !== "failed") state.lastError = null;
    if (ev.status === "idle" || ev.status === "failed") {
      for (const block of state.assistant.values()) block.node.classList.remove("streaming");
    }
  }

  function renderError(ev) {
    const block = ev.tool_call_id !== undefined ? state.commands.get(String(ev.tool_call_id)) : null;
    if (block) {
      // A tool call the agent could not run: say why inside its block.
      block.node.classList.add("failed");
      block.state.textContent = "not run: " + (ev.message || "rejected");
      block.started = true;
      return;
    }
    state.lastError = ev.message || null;
    append(make("div", "notice notice-error", ev.message || "Something went wrong."));
  }

  const HANDLERS = {
    prompt: renderPrompt,
    status: renderStatus,
    "assistant.delta": renderDelta,
    "assistant.message": renderAssistantMessage,
    "tool.call": renderToolCall,
    "command.started": renderCommandStarted,
    "command.output": renderCommandOutput,
    "command.finished": renderCommandFinished,
    "workspace.started": renderWorkspaceStarted,
    error: renderError,
  };

  function handleEvent(ev) {
    if (!ev || typeof ev !== "object") return;
    if (Array.isArray(ev.events)) {
      ev.events.forEach(handleEvent); // a snapshot that batches events
      return;
    }
    if (typeof ev.seq !== "number") {
      if (ev.type === "error") renderError(ev);
      return;
    }
    if (ev.seq <= state.lastSeq) return; // already rendered
    state.lastSeq = ev.seq;
    const handler = HANDLERS[ev.type];
    if (handler) handler(ev);
  }

  // ---- websocket -----------------------------------------------------------------------------------------

  function streamUrl() {
    const path = state.streamPath || state.wsBase + encodeURIComponent(state.sessionId) + "/";
    const scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
    return scheme + "//" + window.location.host + path + "?after=" + state.lastSeq;
  }

  function connect() {
    if (!state.sessionId || state.stopped || state.socket) return;
    clearTimeout(state.reconnectTimer);
    state.reconnectTimer = null;
    setConnection(state.attempt ? "Reconnecting…" : "Connecting…", state.attempt > 0);
    let socket;
    try {
      socket = new WebSocket(streamUrl());
    } catch (_err) {
      scheduleReconnect();
      return;
    }
    state.socket = socket;
    socket.addEventListener("open", function () {
      state.attempt = 0;
      setConnection("Live", false);
    });
    socket.addEventListener("message", function (message) {
      let data;
      try {
        data = JSON.parse(message.data);
      } catch (_err) {
        return;
      }
      if (Array.isArray(data)) data.forEach(handleEvent);
      else handleEvent(data);
    });
    socket.addEventListener("close", function (closeEvent) {
      if (state.socket !== socket) return;
      state.socket = null;
      const final = FINAL_CLOSE[closeEvent.code];
      if (final) {
        state.stopped = true;
        setConnection("Disconnected", true);
        const notice = make("div", "notice notice-error", final + " ");
        if (closeEvent.code === 4401) {
          const link = make("a", "", "Sign in");
          link.href = "/accounts/login/?next=" + encodeURIComponent(window.location.pathname);
          notice.appendChild(link);
        }
        append(notice);
        updateComposer();
        return;
      }
      scheduleReconnect();
    });
  }

  function scheduleReconnect() {
    if (state.stopped || state.reconnectTimer) return;
    const base = Math.min(MAX_BACKOFF_MS, 500 * Math.pow(2, state.attempt));
    const delay = Math.round(base * (0.75 + Math.random() * 0.5));
    state.attempt += 1;
    setConnection("Connection lost; retrying in " + Math.max(1, Math.round(delay / 1000)) + " s…", true);
    state.reconnectTimer = setTimeout(function () {
      state.reconnectTimer = null;
      connect();
    }, delay);
  }

  window.addEventListener("online", function () {
    if (!state.socket && state.sessionId && !state.stopped) {
      clearTimeout(state.reconnectTimer);
      state.reconnectTimer = null;
      connect();
    }
  });

  // ---- REST API ------------------------------------------------------------------------------------------

  function describeError(status, data) {
    if (status === 401 || status === 403) {
      if (data && typeof data.detail === "string") return data.detail;
      return "You are not allowed to do this (are you still signed in?).";
    }
    if (data && typeof data === "object") {
      if (typeof data.detail === "string") return data.detail;
      const parts = [];
      for (const [field, value] of Object.entries(data)) {
        const text = Array.isArray(value) ? value.join(" ") : typeof value === "string" ? value : JSON.stringify(value);
        parts.push(field === "non_field_errors" || field === "detail" ? text : field + ": " + text);
      }
      if (parts.length) return parts.join(" ");
    }
    return "The server answered " + status + ". Try again in a moment.";
  }

  async function api(method, path, body) {
    let response;
    try {
      response = await fetch(state.apiBase + path, {
        method: method,
        credentials: "same-origin",
        headers: {
          Accept: "application/json",
          "Content-Type": "application/json",
          "X-CSRFToken": csrfToken(),
        },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (_err) {
      throw new Error("Could not reach the server. Check your connection and try again.");
    }
    let data = null;
    try {
      data = await response.json();
    } catch (_err) {
      data = null;
    }
    if (!response.ok) throw new Error(describeError(response.status, data));
    return data;
  }

  function selectedModel() {
    if (!el.model || !el.model.value) return undefined;
    return /^\d+$/.test(el.model.value) ? Number(el.model.value) : el.model.value;
  }

  async function submitPrompt() {
    const text = el.prompt.value.trim();
    if (!text) {
      showComposerError("Write a prompt first.");
      el.prompt.focus();
      return;
    }
    showComposerError("");
    state.sending = true;
    updateComposer();
    try {
      if (!state.sessionId) {
        const body = { prompt: text };
        const model = selectedModel();
        if (model !== undefined) body.model = model;
        const session = await api("POST", "sessions/", body);
        state.sessionId = String(session.id);
        state.streamPath = session.stream_url || null;
        root.dataset.sessionId = state.sessionId;
        if (el.model) el.model.disabled = true;
        window.history.pushState({ sessionId: state.sessionId }, "", state.chatBase + state.sessionId + "/");
        if (session.title) document.title = session.title + " · Airlock";
        addToSidebar(session);
        el.prompt.value = "";
        state.sending = false;
        setStatus(session.status || "queued");
        connect();
      } else {
        const statusSeqBefore = state.statusSeq;
        await api("POST", "sessions/" + encodeURIComponent(state.sessionId) + "/prompts/", { prompt: text });
        el.prompt.value = "";
        state.sending = false;
        // The stream may already have reported the new turn (even its end); never overwrite a newer status.
        if (state.statusSeq === statusSeqBefore) setStatus("queued");
        else updateComposer();
        if (!state.socket) connect();
      }
    } catch (err) {
      state.sending = false;
      showComposerError(err.message);
      updateComposer();
    }
  }

  // ---- wiring --------------------------------------------------------------------------------------------

  if (el.form) {
    el.form.addEventListener("submit", function (event) {
      event.preventDefault();
      if (!el.send.disabled) submitPrompt();
    });
  }
  if (el.prompt) {
    el.prompt.addEventListener("keydown", function (event) {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        if (!el.send.disabled) submitPrompt();
      }
    });
  }
  if (el.model) el.model.addEventListener("change", updateSimulatorBadge);
  // Back/forward between "new chat" and a session: load that page for real.
  window.addEventListener("popstate", function () {
    window.location.reload();
  });

  updateSimulatorBadge();
  if (state.status) setStatus(state.status);
  updateComposer();
  if (state.sessionId) connect();
})();
