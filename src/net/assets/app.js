/*
  Sparky's chat page: plain JavaScript, nothing to build, served from /assets/ under a
  Content-Security-Policy that allows no inline script.

  It speaks PROTOCOL.md (version 2): the WebSocket at /ws for live turns, and the conversation
  API under /api/ for the list, the history, renames, deletions and memories.

  - The open conversation is named by the URL's fragment (#<id>), so a bookmark or a second tab
    opens the same one; without one, the page reopens the last conversation it showed.
  - Opening a conversation fetches its newest events from the API and shows them at once, then
    connects with last_seq set to the newest of them: the server sends what came after, then live
    events. Scrolling up fetches older pages with before_seq. Events are applied at most once (by
    seq) and placed by turn_id, so replayed, paged and live events land in the same turn.
  - "New chat" is a draft: nothing is created on the server until the first message, which goes
    with the persona chosen for it (connect.personality).
  - Answers are rendered as markdown by markdown-it (raw HTML off) and then sanitized by
    DOMPurify with a short allow-list; links open in a new tab with rel=noopener, and images are
    shown as links, never fetched. Every other text from the server is set with textContent.
*/
"use strict";
(() => {
  const KEY_SESSION = "sparky.session_id";
  const KEY_TOKEN = "sparky.token";
  const KEY_PERSONAS = "sparky.personas";
  const KEY_MODELS = "sparky.models"; // the models the server offered last (ready.models)
  const FIRST_BACKOFF_MS = 500;
  const MAX_BACKOFF_MS = 15000;
  const PAGE_EVENTS = 200;      // events fetched per page of history
  const EXPORT_PAGE = 1000;     // the API's largest page
  const KEPT_PERSONAS = 500;    // conversations whose persona this browser remembers
  const ID_PATTERN = /^[0-9a-f]{32,64}$/;

  const PERSONAS = {
    none: { name: "None", text: "" },
    concise: {
      name: "Concise",
      text: "You are Sparky. Answer as briefly as the question allows: no preamble, no " +
        "repetition of the question, bullet points over paragraphs.",
    },
    teacher: {
      name: "Patient teacher",
      text: "You are Sparky, a patient teacher. Explain step by step in plain words, give a " +
        "small example, and end with one question that checks understanding.",
    },
    engineer: {
      name: "Software engineer",
      text: "You are Sparky, a senior software engineer. Prefer working code in fenced blocks " +
        "with the language named, explain trade-offs briefly, and point out bugs and risks.",
    },
  };

  const $ = (id) => document.getElementById(id);
  const logEl = $("log"), emptyEl = $("empty"), olderEl = $("older"), input = $("input");
  const sendBtn = $("send"), connEl = $("conn"), connText = $("conn-text");
  const listEl = $("conversation-list"), listNote = $("list-note"), searchEl = $("search");
  const titleEl = $("title"), personaChip = $("persona-chip"), usageTotalEl = $("usage-total");
  const personaSelect = $("persona-select"), personaText = $("persona-text");
  const modelSelect = $("model-select"), modelLabel = $("model-label");
  const exportMenu = $("export");

  // localStorage can be missing or full (private windows); the page still works without it.
  const store = {
    get(key) { try { return localStorage.getItem(key); } catch (_) { return null; } },
    set(key, value) { try { localStorage.setItem(key, value); } catch (_) { /* not kept */ } },
    remove(key) { try { localStorage.removeItem(key); } catch (_) { /* nothing kept */ } },
  };

  let ws = null;             // the current socket, if any
  let generation = 0;        // bumped per socket; handlers of older sockets do nothing
  let view = 0;              // bumped per opened conversation; older fetches are dropped
  let ready = false;         // `ready` received on the current socket
  let everReady = false;
  let backoff = FIRST_BACKOFF_MS;
  let retryTimer = null;
  let halted = null;         // why the page does not reconnect: "taken_over", "token", "deleted"
  let sessionId = null;      // the open conversation; null for a new chat not yet sent
  let pendingText = null;    // a new chat's first message, sent once its session is ready
  let lastSeq = 0;           // the highest seq applied to the view
  let firstSeq = 0;          // the lowest seq applied (0: none yet)
  let hasOlder = false;      // the server has events older than firstSeq
  let loadingOlder = false;
  let conversations = [];    // the list as last fetched
  const turns = new Map();   // turn_id -> the turn's view
  const openTurns = new Set();

  // ---- helpers ----

  // An element with a class and, optionally, text (always as text, never as HTML).
  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function button(className, text, label) {
    const node = el("button", className, text);
    node.type = "button";
    if (label) { node.setAttribute("aria-label", label); node.title = label; }
    return node;
  }

  function wsUrl() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    return scheme + "//" + location.host + "/ws";
  }

  function formatCount(n) {
    return Number(n).toLocaleString("en-US");
  }

  function ago(iso) {
    const then = Date.parse(iso);
    if (Number.isNaN(then)) return "";
    const seconds = Math.max(0, (Date.now() - then) / 1000);
    if (seconds < 60) return "just now";
    if (seconds < 3600) return Math.floor(seconds / 60) + " min ago";
    if (seconds < 86400) return Math.floor(seconds / 3600) + " h ago";
    if (seconds < 86400 * 30) return Math.floor(seconds / 86400) + " d ago";
    return new Date(then).toLocaleDateString();
  }

  // ---- rendered answers ----

  const markdown = typeof window.markdownit === "function" && window.DOMPurify && window.DOMPurify.isSupported
    ? makeMarkdown()
    : null;

  // What may survive in a rendered answer: markdown-it's own output, minus anything that loads
  // or runs something. Raw HTML is off in markdown-it, so this is a second line of defence.
  const PURIFY = {
    ALLOWED_TAGS: ["a", "blockquote", "br", "code", "del", "em", "h1", "h2", "h3", "h4", "h5",
      "h6", "hr", "li", "ol", "p", "pre", "s", "strong", "table", "tbody", "td", "th", "thead",
      "tr", "ul"],
    ALLOWED_ATTR: ["href", "title", "class", "start"],
    ALLOWED_URI_REGEXP: /^(?:https?:|mailto:)/i,
    ALLOW_DATA_ATTR: false,
    RETURN_DOM_FRAGMENT: true,
  };

  function makeMarkdown() {
    const md = window.markdownit({ html: false, linkify: true, typographer: false });
    // Images are never fetched: an image becomes a link to it, which the person may follow.
    md.renderer.rules.image = (tokens, index, options, env, self) => {
      const token = tokens[index];
      const src = token.attrGet("src") || "";
      const alt = self.renderInlineAsText(token.children || [], options, env) || "image";
      return '<a class="image-link" href="' + md.utils.escapeHtml(src) + '">' +
        md.utils.escapeHtml(alt) + "</a>";
    };
    // Table alignment as a class: the policy forbids inline style attributes.
    for (const rule of ["th_open", "td_open"]) {
      md.renderer.rules[rule] = (tokens, index, options, env, self) => {
        const token = tokens[index];
        const style = token.attrGet("style") || "";
        const align = /text-align:\s*(left|right|center)/.exec(style);
        token.attrs = (token.attrs || []).filter(([name]) => name !== "style");
        if (align) token.attrJoin("class", "align-" + align[1]);
        return self.renderToken(tokens, index, options);
      };
    }
    window.DOMPurify.addHook("afterSanitizeAttributes", (node) => {
      if (node.tagName === "A") {
        if (node.hasAttribute("href")) {
          node.setAttribute("target", "_blank");
          node.setAttribute("rel", "noopener noreferrer");
        }
      }
    });
    return md;
  }

  // Renders `text` as markdown into `target` (as plain text if the libraries did not load).
  function renderMarkdown(target, text) {
    if (!markdown) {
      target.textContent = text;
      return;
    }
    const fragment = window.DOMPurify.sanitize(markdown.render(text), PURIFY);
    for (const pre of Array.from(fragment.querySelectorAll("pre"))) decorateCode(pre);
    target.replaceChildren(fragment);
  }

  // A code block gets a head with its language and a copy button.
  function decorateCode(pre) {
    const box = el("div", "code");
    const head = el("div", "code-head");
    const code = pre.querySelector("code");
    const language = code && /(?:^|\s)language-([\w+#.-]+)/.exec(code.className);
    head.append(el("span", "lang", language ? language[1] : "text"));
    const copy = button("copy", undefined, "Copy code");
    head.append(copy);
    pre.replaceWith(box);
    box.append(head, pre);
  }

  logEl.addEventListener("click", (event) => {
    const copy = event.target.closest(".copy");
    if (!copy) return;
    const pre = copy.closest(".code").querySelector("pre");
    copyText(pre ? pre.textContent : "").then((ok) => {
      if (!ok) return;
      copy.classList.add("copied");
      setTimeout(() => copy.classList.remove("copied"), 1500);
    });
  });

  async function copyText(text) {
    try {
      await navigator.clipboard.writeText(text);
      return true;
    } catch (_) {
      // No clipboard API here (or no permission): copy through a selection.
      const area = el("textarea");
      area.value = text;
      area.setAttribute("readonly", "");
      area.className = "offscreen";
      document.body.append(area);
      area.select();
      let ok = false;
      try { ok = document.execCommand("copy"); } catch (_) { ok = false; }
      area.remove();
      return ok;
    }
  }

  // ---- the API ----

  class ApiError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  async function api(method, path, body) {
    const headers = {};
    const token = store.get(KEY_TOKEN);
    if (token) headers.Authorization = "Bearer " + token;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let response;
    try {
      response = await fetch(path, {
        method, headers, cache: "no-store",
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (_) {
      throw new ApiError(0, "the server cannot be reached");
    }
    if (response.status === 401) {
      onUnauthorized();
      throw new ApiError(401, "a token is required");
    }
    let data = null;
    if (response.status !== 204) {
      try { data = await response.json(); } catch (_) { data = null; }
    }
    if (!response.ok) {
      throw new ApiError(response.status, (data && data.error) || response.statusText);
    }
    return data;
  }

  // ---- connection ----

  function setConn(state, text) {
    connEl.dataset.state = state;
    connText.textContent = text || state;
    updateControls();
  }

  function closeSocket() {
    clearTimeout(retryTimer);
    retryTimer = null;
    generation++;
    ready = false;
    if (ws) {
      const old = ws;
      ws = null;
      try { old.close(1000); } catch (_) { /* already closed */ }
    }
  }

  function connect() {
    clearTimeout(retryTimer);
    retryTimer = null;
    const gen = ++generation;
    ready = false;
    setConn(everReady ? "reconnecting" : "connecting", everReady ? "reconnecting…" : "connecting…");
    let socket;
    try {
      socket = new WebSocket(wsUrl());
    } catch (_) {
      scheduleReconnect();
      return;
    }
    ws = socket;
    socket.onopen = () => {
      if (gen !== generation) return;
      const data = {};
      if (sessionId) {
        data.session_id = sessionId;
        data.last_seq = lastSeq;
      } else {
        const persona = chosenPersona();
        if (persona.text) data.personality = persona.text;
        if (!modelSelect.hidden && modelSelect.value) data.model = modelSelect.value;
      }
      const token = store.get(KEY_TOKEN);
      if (token) data.token = token;
      socket.send(JSON.stringify({ type: "connect", data }));
    };
    socket.onmessage = (event) => {
      if (gen === generation) onFrame(event.data);
    };
    socket.onclose = () => {
      if (gen !== generation) return;
      ws = null;
      ready = false;
      if (halted === "taken_over") setConn("paused", "paused");
      else if (halted === "token") setConn("needs-token", "needs a token");
      else if (halted === "deleted") setConn("idle", "deleted");
      else if (sessionId === null && pendingText === null) setConn("idle", "new chat");
      else scheduleReconnect();
    };
  }

  function scheduleReconnect() {
    clearTimeout(retryTimer);
    const delay = Math.round(backoff * (0.8 + Math.random() * 0.4));
    backoff = Math.min(backoff * 2, MAX_BACKOFF_MS);
    setConn("reconnecting", "reconnecting…");
    retryTimer = setTimeout(connect, delay);
  }

  // Reconnects at once, with a fresh backoff (after a token, "Reconnect here", or the network
  // coming back).
  function reconnectNow() {
    halted = null;
    backoff = FIRST_BACKOFF_MS;
    closeSocket();
    connect();
  }

  window.addEventListener("online", () => {
    if (!ready && !halted && (sessionId || pendingText !== null)) reconnectNow();
  });

  function send(frame) {
    if (!ws || !ready) return false;
    ws.send(JSON.stringify(frame));
    return true;
  }

  // ---- frames ----

  function onFrame(raw) {
    let frame;
    try { frame = JSON.parse(raw); } catch (_) { return; }
    if (!frame || typeof frame !== "object") return;
    const data = frame.data && typeof frame.data === "object" ? frame.data : {};
    if (typeof frame.seq === "number") {
      if (frame.seq <= lastSeq) return; // already applied: a replay overlapping what we have
      lastSeq = frame.seq;
      if (firstSeq === 0) firstSeq = frame.seq;
    }
    const stick = nearBottom();
    try {
      apply(frame.type, data, true);
    } finally {
      if (stick) scrollToBottom();
      updateControls();
    }
  }

  const TURN_EVENTS = new Set([
    "user_message", "thought", "tool_use", "tool_result", "approval_request", "tool_progress",
    "message_delta", "message",
  ]);

  // Applies one frame to the view; `live` is false for events fetched from the API.
  function apply(type, data, live) {
    if (TURN_EVENTS.has(type) && !Number.isInteger(data.turn_id)) return; // malformed: no turn
    switch (type) {
      case "session_info": return onSessionInfo(data);
      case "ready":
        if (Array.isArray(data.models)) {
          store.set(KEY_MODELS, JSON.stringify(data.models));
          showModels();
        }
        ready = true;
        everReady = true;
        backoff = FIRST_BACKOFF_MS;
        setConn("connected", "connected");
        if (pendingText !== null) {
          const text = pendingText;
          pendingText = null;
          if (!send({ type: "message", data: { text } })) pendingText = text;
        }
        return;
      case "user_message": {
        const turn = turnView(data.turn_id);
        turn.user.textContent = String(data.text ?? "");
        turn.user.hidden = false;
        if (!turn.closed) openTurns.add(turn.id);
        if (titleEl.dataset.fromList !== "true" && turn.id === 1) setTitle(String(data.text ?? ""), false);
        return;
      }
      case "thought": return addThought(turnView(data.turn_id), String(data.text ?? ""));
      case "tool_use": return toolUse(turnView(data.turn_id), data);
      case "tool_result": return toolResult(turnView(data.turn_id), data);
      case "approval_request": return approvalRequest(turnView(data.turn_id), data);
      case "tool_progress": return toolProgress(turnView(data.turn_id), data);
      case "message_delta": {
        const turn = turnView(data.turn_id);
        if (turn.closed) return;
        const text = String(data.text ?? "");
        turn.streamed = data.replace === true ? text : turn.streamed + text;
        turn.answer.hidden = false;
        turn.answer.classList.add("streaming");
        scheduleStreamRender(turn);
        return;
      }
      case "message": {
        const turn = turnView(data.turn_id);
        turn.text = String(data.text ?? "");
        renderMarkdown(turn.answer, turn.text);
        turn.answer.hidden = false;
        turn.answer.classList.remove("streaming");
        if (data.usage && typeof data.usage === "object") showUsage(turn, data.usage);
        closeTurn(turn, "done");
        if (live) listChanged();
        return;
      }
      case "status": return onStatus(data, live);
      case "error": return onError(data, live);
      default: return; // a frame type this page does not know
    }
  }

  // Streamed text is rendered at most once a frame, as markdown, so a long answer stays cheap.
  function scheduleStreamRender(turn) {
    if (turn.renderQueued) return;
    turn.renderQueued = true;
    requestAnimationFrame(() => {
      turn.renderQueued = false;
      if (turn.closed) return;
      const stick = nearBottom();
      renderMarkdown(turn.answer, turn.streamed);
      if (stick) scrollToBottom();
    });
  }

  function onSessionInfo(data) {
    const id = String(data.session_id ?? "");
    if (id === sessionId) return;
    if (sessionId === null) {
      // The first message of a new chat created this conversation.
      sessionId = id;
      store.set(KEY_SESSION, id);
      setHash(id);
      rememberPersona(id, chosenPersona());
      showPersona();
      emptyEl.hidden = true;
      listChanged();
      return;
    }
    // A different session: the stored one is no longer on the server.
    resetView();
    sessionId = id;
    store.set(KEY_SESSION, id);
    setHash(id);
    note("The server no longer has that conversation; this is a new chat.");
    listChanged();
  }

  function onStatus(data, live) {
    const code = data.code;
    const message = String(data.message ?? "");
    const turn = Number.isInteger(data.turn_id) ? turnView(data.turn_id) : null;
    switch (code) {
      case "cancelled":
        if (turn && !turn.closed) {
          turn.el.classList.add("cancelled");
          mark(turn, "cancelled", "\u25A0 Stopped");
          closeTurn(turn, "cancelled");
          if (live) listChanged();
        }
        return;
      case "retrying": {
        const secs = data.delay_ms != null ? " in " + (data.delay_ms / 1000).toFixed(1) + " s" : "";
        const attempt = data.attempt != null ? " (attempt " + data.attempt + ")" : "";
        const text = "The model is unavailable; retrying" + secs + attempt + ".";
        if (turn) mark(turn, "info", text); else note(text);
        return;
      }
      case "history_reset": {
        const text = "The conversation history was reset: " + (message || "the model rejected it") + ".";
        if (turn) mark(turn, "info", text); else note(text);
        return;
      }
      case "context_trimmed":
        if (turn) mark(turn, "info", "Older turns were left out of what the model sees.");
        return;
      case "truncated":
        if (turn) mark(turn, "info", "The answer was cut off at the model's length limit.");
        return;
      case "gap": {
        const range = data.from != null && data.to != null ? " (events " + data.from + "–" + data.to + ")" : "";
        note("Earlier parts of this conversation are no longer kept on the server" + range + ".");
        return;
      }
      case "taken_over": {
        halted = "taken_over";
        const box = note("This chat was opened in another window, so this one stopped updating.");
        const again = button("", "Reconnect here");
        again.addEventListener("click", () => { box.remove(); reconnectNow(); });
        box.append(again);
        return;
      }
      case "deleted": {
        if (!live) return;
        halted = "deleted";
        const gone = sessionId;
        forgetConversation(gone);
        startDraft();
        note("That conversation was deleted.");
        listChanged();
        return;
      }
      default:
        return; // unknown status codes are ignored, as the protocol asks
    }
  }

  function onError(data, live) {
    const code = String(data.code ?? "error");
    const message = String(data.message ?? "");
    if (Number.isInteger(data.turn_id)) {
      const turn = turnView(data.turn_id);
      if (turn.closed) return;
      turn.el.classList.add("failed");
      mark(turn, "error", "\u26A0 Error (" + code + "): " + message);
      closeTurn(turn, "error");
      if (live) listChanged();
      return;
    }
    if (code === "unauthorized") {
      halted = "token";
      onUnauthorized();
      return;
    }
    if (pendingText !== null && !ready) {
      // The new chat could not start: its message goes back into the box.
      input.value = pendingText + (input.value ? "\n" + input.value : "");
      pendingText = null;
      autosize();
    }
    note(message ? code + ": " + message : code, "error");
  }

  // ---- view ----

  function nearBottom() {
    return logEl.scrollHeight - logEl.scrollTop - logEl.clientHeight < 120;
  }

  function scrollToBottom() {
    logEl.scrollTop = logEl.scrollHeight;
  }

  function resetView() {
    turns.clear();
    openTurns.clear();
    for (const child of Array.from(logEl.children)) {
      if (child !== emptyEl && child !== olderEl) child.remove();
    }
    emptyEl.hidden = false;
    olderEl.hidden = true;
    lastSeq = 0;
    firstSeq = 0;
    hasOlder = false;
    loadingOlder = false;
    updateUsageTotal();
  }

  // The view of a turn, created on first sight and placed in turn_id order.
  function turnView(rawId) {
    const id = Number(rawId);
    const existing = turns.get(id);
    if (existing) return existing;
    const section = el("section", "turn");
    section.dataset.turnId = String(id);
    const user = el("div", "bubble user");
    user.hidden = true;
    const steps = el("div", "steps");
    const answer = el("div", "bubble answer md");
    answer.hidden = true;
    section.append(user, steps, answer);
    let before = null;
    for (const [otherId, other] of turns) {
      if (otherId > id && (before === null || otherId < Number(before.dataset.turnId))) before = other.el;
    }
    logEl.insertBefore(section, before);
    emptyEl.hidden = true;
    const turn = {
      id, el: section, user, steps, answer, tools: new Map(), streamed: "", text: "",
      closed: false, usage: null, renderQueued: false,
    };
    turns.set(id, turn);
    return turn;
  }

  function addThought(turn, text) {
    const details = el("details", "thought");
    const summary = el("summary");
    summary.append(el("span", "label", "Thought"), el("span", "preview", text.split("\n")[0]));
    details.append(summary, el("div", "text", text));
    turn.steps.append(details);
  }

  function formatArgs(args) {
    let text;
    try { text = JSON.stringify(args ?? {}); } catch (_) { text = String(args); }
    if (text.length > 70) {
      try { text = JSON.stringify(args, null, 2); } catch (_) { /* keep the compact form */ }
    }
    return text;
  }

  function toolBox(turn, callId, name) {
    const existing = turn.tools.get(callId);
    if (existing) return existing;
    const box = el("div", "tool running");
    box.dataset.callId = callId;
    const head = el("div", "head");
    const nameEl = el("span", "name", name);
    const state = el("span", "state", "running…");
    head.append(el("span", "icon", "\u2699"), nameEl, state);
    const args = el("pre", "args");
    args.hidden = true;
    const result = el("pre", "result");
    result.hidden = true;
    box.append(head, args, result);
    turn.steps.append(box);
    const tool = {
      box, nameEl, state, args, result, done: false, name, argsValue: null, resultText: "", ok: true,
      approval: null, progress: null, bar: null, progressLabel: null, images: null,
    };
    turn.tools.set(callId, tool);
    return tool;
  }

  function toolUse(turn, data) {
    const tool = toolBox(turn, String(data.call_id ?? ""), String(data.name ?? "tool"));
    tool.argsValue = data.args;
    tool.args.textContent = formatArgs(data.args);
    tool.args.hidden = false;
  }

  function toolResult(turn, data) {
    const tool = toolBox(turn, String(data.call_id ?? ""), String(data.name ?? "tool"));
    const ok = data.status === "success";
    tool.done = true;
    tool.ok = ok;
    tool.box.classList.remove("running");
    tool.box.classList.add(ok ? "success" : "error");
    tool.state.textContent = ok ? "done" : "error";
    tool.resultText = String(data.result ?? "");
    const { text, images } = splitImages(tool.resultText);
    tool.result.textContent = text;
    tool.result.hidden = false;
    if (images.length > 0 && !tool.images) {
      tool.images = el("div", "images");
      for (const image of images) {
        const img = el("img");
        img.src = image.url;
        img.alt = image.note;
        img.title = image.note;
        tool.images.append(img);
      }
      tool.box.append(tool.images);
    }
    endApproval(tool);
    if (tool.progress) { tool.progress.remove(); tool.progress = null; }
  }

  // An image line of a tool result: its note, then its data: URL (the server checked the type
  // and the base64; this checks them again, so that nothing else becomes an image source).
  const IMAGE_LINE = /^(\[image: (image\/(?:png|jpeg|gif|webp)), [^\]\n]*\]) (data:(image\/(?:png|jpeg|gif|webp));base64,[A-Za-z0-9+/]+={0,2})$/;

  // A result's text without its image lines' data: URLs (their notes stay), and the images.
  function splitImages(result) {
    const images = [];
    const lines = result.split("\n").map((line) => {
      const match = IMAGE_LINE.exec(line);
      if (!match || match[2] !== match[4]) return line;
      images.push({ note: match[1], url: match[3] });
      return match[1];
    });
    return { text: lines.join("\n"), images };
  }

  // A call waiting for a person: Allow and Deny on its card, until its result comes or its turn
  // ends. Any connection of the session may answer; the first answer decides.
  function approvalRequest(turn, data) {
    const callId = String(data.call_id ?? "");
    const tool = toolBox(turn, callId, String(data.name ?? "tool"));
    if (tool.done || turn.closed || tool.approval) return;
    tool.box.classList.add("asking");
    tool.state.textContent = "waiting for approval";
    const row = el("div", "approval");
    const allow = button("allow", "Allow", "Allow this call");
    const deny = button("deny", "Deny", "Deny this call");
    const answer = (ok) => {
      if (!send({ type: "approve", data: { call_id: callId, allow: ok } })) {
        note("Not connected: the answer was not sent. Try again once reconnected.", "error");
        return;
      }
      allow.disabled = true;
      deny.disabled = true;
      tool.state.textContent = ok ? "allowed" : "denied";
    };
    allow.addEventListener("click", () => answer(true));
    deny.addEventListener("click", () => answer(false));
    row.append(el("span", "ask", "Run this tool?"), allow, deny);
    tool.box.insertBefore(row, tool.result);
    tool.approval = row;
  }

  function endApproval(tool) {
    if (!tool.approval) return;
    tool.approval.remove();
    tool.approval = null;
    tool.box.classList.remove("asking");
  }

  // How far a running call has come: a progress bar (indeterminate without a total) and the
  // tool's words. Not an event: it is never replayed.
  function toolProgress(turn, data) {
    const tool = turn.tools.get(String(data.call_id ?? ""));
    if (!tool || tool.done || turn.closed) return;
    const progress = Number(data.progress);
    if (!Number.isFinite(progress)) return;
    if (!tool.progress) {
      const row = el("div", "progress");
      const bar = el("progress");
      const label = el("span", "label");
      row.append(bar, label);
      tool.box.insertBefore(row, tool.result);
      tool.progress = row;
      tool.bar = bar;
      tool.progressLabel = label;
    }
    const total = Number(data.total);
    if (Number.isFinite(total) && total > 0) {
      tool.bar.max = total;
      tool.bar.value = Math.min(progress, total);
    } else {
      tool.bar.removeAttribute("value");
    }
    const words = typeof data.message === "string" ? data.message : "";
    const of = Number.isFinite(total) && total > 0 ? `${progress} of ${total}` : String(progress);
    tool.progressLabel.textContent = words ? `${words} (${of})` : of;
  }

  function mark(turn, kind, text) {
    const node = el("div", "mark " + kind, text);
    turn.el.append(node);
    return node;
  }

  function closeTurn(turn, outcome) {
    turn.closed = true;
    turn.el.dataset.outcome = outcome;
    turn.answer.classList.remove("streaming");
    if (outcome !== "done" && turn.streamed && !turn.text) renderMarkdown(turn.answer, turn.streamed);
    if (turn.answer.textContent === "") turn.answer.hidden = true;
    for (const tool of turn.tools.values()) {
      endApproval(tool);
      if (tool.progress) { tool.progress.remove(); tool.progress = null; }
      if (!tool.done) {
        tool.box.classList.remove("running");
        tool.box.classList.add("stopped");
        tool.state.textContent = "stopped";
      }
    }
    openTurns.delete(turn.id);
  }

  function showUsage(turn, usage) {
    const prompt = Number(usage.prompt_tokens) || 0;
    const completion = Number(usage.completion_tokens) || 0;
    turn.usage = { prompt, completion };
    let line = turn.el.querySelector(".usage");
    if (!line) {
      line = el("div", "usage");
      turn.answer.after(line);
    }
    line.textContent = formatCount(prompt + completion) + " tokens (" + formatCount(prompt) +
      " in, " + formatCount(completion) + " out)";
    updateUsageTotal();
  }

  // The conversation's total over the answers this page has loaded; "≥" while older turns
  // are not loaded yet.
  function updateUsageTotal() {
    let total = 0, counted = 0;
    for (const turn of turns.values()) {
      if (turn.usage) {
        total += turn.usage.prompt + turn.usage.completion;
        counted++;
      }
    }
    usageTotalEl.hidden = counted === 0;
    usageTotalEl.textContent = (hasOlder ? "\u2265 " : "") + formatCount(total) + " tokens in all";
    usageTotalEl.title = "Tokens of " + counted + " answer" + (counted === 1 ? "" : "s") +
      (hasOlder ? " loaded so far; scroll up for older ones" : "");
  }

  // A line in the conversation that belongs to no turn. The same line twice in a row (a server
  // that stays busy across reconnections) is shown once.
  function note(text, kind) {
    const last = logEl.lastElementChild;
    if (last && last.classList.contains("note") && last.textContent === text) return last;
    const node = el("div", "note" + (kind ? " " + kind : ""), text);
    logEl.append(node);
    return node;
  }

  function running() {
    return openTurns.size > 0;
  }

  // Send becomes Stop while a turn runs; what is typed meanwhile stays in the box.
  function updateControls() {
    const stop = running() && sessionId !== null;
    sendBtn.dataset.mode = stop ? "stop" : "send";
    sendBtn.textContent = stop ? "Stop" : "Send";
    sendBtn.className = stop ? "danger" : "primary";
    sendBtn.type = stop ? "button" : "submit";
    sendBtn.title = stop ? "Stop the answer (your text stays in the box)" : "Send (Enter)";
    if (stop) sendBtn.disabled = !ready;
    else sendBtn.disabled = halted === "token" || (sessionId !== null ? !ready : pendingText !== null);
    exportMenu.dataset.disabled = sessionId === null ? "true" : "false";
    if (sessionId === null) exportMenu.open = false;
    $("forget-token").hidden = store.get(KEY_TOKEN) === null;
  }

  function setTitle(text, fromList) {
    const title = text.trim() || (sessionId ? "Untitled" : "New chat");
    titleEl.textContent = title;
    titleEl.title = title;
    titleEl.dataset.fromList = fromList ? "true" : "false";
    document.title = sessionId ? title + " · Sparky" : "Sparky";
  }

  // ---- models ----
  // The new-chat form offers the models of the last `ready` (the server offers the same to
  // every new conversation); the menu shows only when there is a choice.
  function showModels() {
    let models = [];
    try { models = JSON.parse(store.get(KEY_MODELS) || "[]"); } catch (_) { models = []; }
    models = Array.isArray(models) ? models.filter((m) => typeof m === "string") : [];
    const chosen = modelSelect.value;
    modelSelect.replaceChildren(...models.map((name) => {
      const option = document.createElement("option");
      option.value = name;
      option.textContent = name;
      return option;
    }));
    if (models.includes(chosen)) modelSelect.value = chosen;
    modelSelect.hidden = modelLabel.hidden = models.length < 2;
  }
  showModels();

  // ---- personas ----

  function chosenPersona() {
    const key = personaSelect.value;
    if (key === "custom") {
      const text = personaText.value.trim();
      return { name: text ? "Custom" : "None", text };
    }
    return PERSONAS[key] || PERSONAS.none;
  }

  function personas() {
    try {
      const value = JSON.parse(store.get(KEY_PERSONAS) || "{}");
      return value && typeof value === "object" ? value : {};
    } catch (_) {
      return {};
    }
  }

  function rememberPersona(id, persona) {
    if (!persona.text) return;
    const all = personas();
    all[id] = { name: persona.name, text: persona.text, at: Date.now() };
    const ids = Object.keys(all);
    if (ids.length > KEPT_PERSONAS) {
      ids.sort((a, b) => (all[a].at || 0) - (all[b].at || 0));
      for (const old of ids.slice(0, ids.length - KEPT_PERSONAS)) delete all[old];
    }
    store.set(KEY_PERSONAS, JSON.stringify(all));
  }

  function forgetConversation(id) {
    if (!id) return;
    const all = personas();
    if (all[id]) {
      delete all[id];
      store.set(KEY_PERSONAS, JSON.stringify(all));
    }
    if (store.get(KEY_SESSION) === id) store.remove(KEY_SESSION);
  }

  // The persona of the open conversation, as chosen in this browser.
  function showPersona() {
    const persona = sessionId ? personas()[sessionId] : null;
    personaChip.hidden = !persona;
    if (persona) {
      personaChip.textContent = "Persona: " + String(persona.name || "Custom");
      personaChip.title = String(persona.text || "");
    }
  }

  function updatePersonaPicker() {
    const custom = personaSelect.value === "custom";
    personaText.hidden = !custom;
    const persona = chosenPersona();
    $("persona-preview").textContent = custom
      ? "Sent as the system prompt of this chat."
      : persona.text || "Sparky's default behaviour, with no system prompt.";
  }

  personaSelect.addEventListener("change", () => {
    updatePersonaPicker();
    if (personaSelect.value === "custom") personaText.focus();
  });
  personaText.addEventListener("input", updatePersonaPicker);

  // ---- opening conversations ----

  function setHash(id) {
    const wanted = id ? "#" + id : "";
    if (location.hash !== wanted) {
      history.replaceState(null, "", location.pathname + location.search + wanted);
    }
  }

  // A new chat: nothing exists on the server until its first message.
  function startDraft() {
    closeSocket();
    view++;
    resetView();
    sessionId = null;
    pendingText = null;
    halted = null;
    everReady = false;
    store.remove(KEY_SESSION);
    setHash(null);
    setTitle("", false);
    showPersona();
    $("persona-picker").hidden = false;
    personaSelect.value = "none";
    personaText.value = "";
    updatePersonaPicker();
    setConn("idle", "new chat");
    markCurrent();
  }

  async function openConversation(id) {
    closeSocket();
    const mine = ++view;
    resetView();
    sessionId = id;
    pendingText = null;
    halted = null;
    everReady = false;
    store.set(KEY_SESSION, id);
    setHash(id);
    $("persona-picker").hidden = true;
    const known = conversations.find((c) => c.id === id);
    setTitle(known ? String(known.title ?? "") : "", Boolean(known));
    showPersona();
    markCurrent();
    listChanged();
    setConn("connecting", "loading…");
    let events = null;
    try {
      events = await fetchTurnPage(id, null);
    } catch (error) {
      if (mine !== view) return;
      if (error.status === 404) {
        forgetConversation(id);
        startDraft();
        note("That conversation does not exist (or was deleted).");
        listChanged();
        return;
      }
      if (error.status === 401) return; // the token form is up; it reopens this conversation
      // Otherwise the WebSocket replays everything from the start.
    }
    if (mine !== view) return;
    if (events) {
      for (const event of events) applyEvent(event);
      hasOlder = firstSeq > 1;
      olderEl.hidden = !hasOlder;
      olderEl.textContent = "Scroll up for older messages";
      updateUsageTotal();
    }
    scrollToBottom();
    connect();
    fillScreen();
  }

  // One page of events before `before` (the newest when null), cut so that it starts where a
  // turn starts (the rest of that turn comes with the next page); a turn too long for one page
  // is fetched with the largest page the API gives.
  async function fetchTurnPage(id, before) {
    const base = "/api/conversations/" + encodeURIComponent(id) + "/events?";
    const query = (limit) => base + (before !== null ? "before_seq=" + before + "&" : "") + "limit=" + limit;
    let events = (await api("GET", query(PAGE_EVENTS))).events || [];
    let limit = PAGE_EVENTS;
    if (events.length === limit && !events.some((e) => e.type === "user_message")) {
      limit = EXPORT_PAGE;
      events = (await api("GET", query(limit))).events || [];
    }
    if (events.length === limit) {
      const start = events.findIndex((e) => e.type === "user_message");
      if (start > 0) events = events.slice(start);
    }
    return events;
  }

  function applyEvent(event) {
    if (!event || typeof event !== "object" || typeof event.seq !== "number") return;
    if (turns.size > 0 && event.seq >= firstSeq && event.seq <= lastSeq) return;
    const data = event.data && typeof event.data === "object" ? event.data : {};
    lastSeq = Math.max(lastSeq, event.seq);
    firstSeq = firstSeq === 0 ? event.seq : Math.min(firstSeq, event.seq);
    apply(event.type, data, false);
  }

  async function loadOlder() {
    if (!hasOlder || loadingOlder || !sessionId) return;
    loadingOlder = true;
    const mine = view;
    olderEl.textContent = "Loading older messages…";
    let events;
    try {
      events = await fetchTurnPage(sessionId, firstSeq);
    } catch (_) {
      if (mine === view) {
        loadingOlder = false;
        olderEl.textContent = "Older messages could not be loaded; scroll up to try again";
      }
      return;
    }
    if (mine !== view) return;
    const fromBottom = logEl.scrollHeight - logEl.scrollTop;
    const oldFirst = firstSeq;
    for (const event of events) {
      if (event && typeof event.seq === "number" && event.seq < oldFirst) {
        const data = event.data && typeof event.data === "object" ? event.data : {};
        firstSeq = Math.min(firstSeq, event.seq);
        apply(event.type, data, false);
      }
    }
    hasOlder = events.length > 0 && firstSeq > 1 && firstSeq < oldFirst;
    olderEl.hidden = false;
    olderEl.textContent = hasOlder ? "Scroll up for older messages" : "The beginning of this conversation";
    logEl.scrollTop = logEl.scrollHeight - fromBottom;
    updateUsageTotal();
    loadingOlder = false;
    fillScreen();
  }

  // Loads older pages until the view can scroll (or there is nothing older).
  function fillScreen() {
    if (hasOlder && logEl.scrollHeight <= logEl.clientHeight + 200) loadOlder();
  }

  logEl.addEventListener("scroll", () => {
    if (logEl.scrollTop < 300) loadOlder();
  });

  window.addEventListener("hashchange", () => {
    const id = location.hash.slice(1);
    if (ID_PATTERN.test(id) && id !== sessionId) openConversation(id);
  });

  // ---- the conversation list ----

  let listTimer = null;
  let listRequest = 0;

  // Something changed that the list shows: fetch it again, soon (changes come in bursts, and
  // one fetch covers a burst).
  function listChanged() {
    if (listTimer === null) listTimer = setTimeout(refreshList, 150);
  }

  async function refreshList() {
    clearTimeout(listTimer);
    listTimer = null;
    const mine = ++listRequest;
    const q = searchEl.value.trim();
    let data;
    try {
      data = await api("GET", "/api/conversations" + (q ? "?q=" + encodeURIComponent(q) : ""));
    } catch (error) {
      if (mine !== listRequest) return;
      listNote.hidden = false;
      listNote.textContent = error.status === 401 ? "A token is needed to list conversations." : "The list could not be loaded.";
      return;
    }
    if (mine !== listRequest) return;
    conversations = Array.isArray(data && data.conversations) ? data.conversations : [];
    renderList(q);
  }

  function renderList(q) {
    const editing = listEl.querySelector("input.rename");
    if (editing) return; // never pull the box away from someone typing a name
    listEl.replaceChildren();
    for (const conversation of conversations) {
      const id = String(conversation.id ?? "");
      const title = String(conversation.title ?? "") || "Untitled";
      const item = el("li", "conversation");
      item.dataset.id = id;
      const open = button("open");
      open.title = title;
      const name = el("span", "name", title);
      const turnsCount = Number(conversation.turns) || 0;
      const meta = el("span", "meta" + (conversation.running ? " running" : ""),
        ago(conversation.updated_at) + " · " + turnsCount + (turnsCount === 1 ? " turn" : " turns"));
      open.append(name, meta);
      open.addEventListener("click", () => {
        closeSidebar();
        if (id !== sessionId) openConversation(id);
      });
      const rename = button("action rename", "\u270E", "Rename");
      rename.addEventListener("click", () => startRename(item, id, name.textContent));
      const remove = button("action delete", "\u2715", "Delete");
      remove.addEventListener("click", () => askDelete(id, name.textContent));
      item.append(open, rename, remove);
      listEl.append(item);
      if (id === sessionId) setTitle(title, true);
    }
    listNote.hidden = conversations.length > 0;
    listNote.textContent = q ? "No conversation matches." : "No conversations yet.";
    markCurrent();
  }

  function markCurrent() {
    for (const item of listEl.children) {
      if (item.dataset.id === sessionId) item.setAttribute("aria-current", "true");
      else item.removeAttribute("aria-current");
    }
  }

  function startRename(item, id, title) {
    const field = el("input", "rename");
    field.value = title;
    field.setAttribute("aria-label", "New name");
    field.maxLength = 200;
    let done = false;
    const finish = async (save) => {
      if (done) return;
      done = true;
      const wanted = field.value.trim();
      field.remove();
      for (const child of item.children) child.hidden = false;
      if (save && wanted && wanted !== title) {
        item.querySelector(".name").textContent = wanted;
        if (id === sessionId) setTitle(wanted, true);
        try {
          await api("PATCH", "/api/conversations/" + encodeURIComponent(id), { title: wanted });
        } catch (error) {
          note("The conversation could not be renamed: " + error.message + ".", "error");
        }
      }
      listChanged();
    };
    field.addEventListener("keydown", (event) => {
      if (event.key === "Enter") { event.preventDefault(); finish(true); }
      else if (event.key === "Escape") { event.preventDefault(); finish(false); }
    });
    field.addEventListener("blur", () => finish(true));
    for (const child of item.children) child.hidden = true;
    item.append(field);
    field.focus();
    field.select();
  }

  // Delete asks first; it works while a turn runs (the server stops it).
  function askDelete(id, title) {
    $("confirm-text").textContent = "\u201C" + title + "\u201D and everything in it will be " +
      "removed from the server. This cannot be undone.";
    const box = $("confirm-box");
    box.hidden = false;
    $("confirm-cancel").focus();
    const close = () => {
      box.hidden = true;
      $("confirm-ok").onclick = null;
      $("confirm-cancel").onclick = null;
    };
    $("confirm-cancel").onclick = close;
    $("confirm-ok").onclick = async () => {
      close();
      const current = id === sessionId;
      if (current) {
        halted = "deleted";
        closeSocket();
      }
      try {
        await api("DELETE", "/api/conversations/" + encodeURIComponent(id));
      } catch (error) {
        if (error.status !== 404) {
          note("The conversation could not be deleted: " + error.message + ".", "error");
          if (current) reconnectNow();
          return;
        }
      }
      forgetConversation(id);
      if (current) startDraft();
      conversations = conversations.filter((c) => c.id !== id);
      renderList(searchEl.value.trim());
      listChanged();
    };
  }

  let searchTimer = null;
  searchEl.addEventListener("input", () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(refreshList, 250);
  });

  window.addEventListener("focus", () => listChanged());

  // ---- sidebar on a phone ----

  function openSidebar() {
    document.body.classList.add("sidebar-open");
    $("scrim").hidden = false;
    $("toggle-sidebar").setAttribute("aria-expanded", "true");
  }

  function closeSidebar() {
    document.body.classList.remove("sidebar-open");
    $("scrim").hidden = true;
    $("toggle-sidebar").setAttribute("aria-expanded", "false");
  }

  $("toggle-sidebar").addEventListener("click", openSidebar);
  $("close-sidebar").addEventListener("click", closeSidebar);
  $("scrim").addEventListener("click", closeSidebar);

  // ---- memories ----

  let memoryTimer = null;

  async function loadMemories() {
    const q = $("memory-search").value.trim();
    const list = $("memory-list"), memoryNote = $("memory-note");
    let data;
    try {
      data = await api("GET", "/api/memories" + (q ? "?q=" + encodeURIComponent(q) : ""));
    } catch (error) {
      list.replaceChildren();
      memoryNote.textContent = "Memories could not be loaded: " + error.message + ".";
      return;
    }
    const memories = Array.isArray(data && data.memories) ? data.memories : [];
    list.replaceChildren();
    for (const memory of memories) {
      const item = el("li", "memory");
      item.dataset.id = String(memory.id);
      const content = el("div", "content", String(memory.content ?? ""));
      content.append(el("span", "when", ago(memory.created_at)));
      const forget = button("forget", "Delete", "Delete this memory");
      forget.addEventListener("click", async () => {
        forget.disabled = true;
        try {
          await api("DELETE", "/api/memories/" + encodeURIComponent(String(memory.id)));
          item.remove();
          if (list.children.length === 0) memoryNote.textContent = "Nothing remembered.";
        } catch (error) {
          forget.disabled = false;
          memoryNote.textContent = "That memory could not be deleted: " + error.message + ".";
        }
      });
      item.append(content, forget);
      list.append(item);
    }
    memoryNote.textContent = memories.length ? "" : q ? "No memory matches." : "Nothing remembered.";
  }

  $("open-memories").addEventListener("click", () => {
    closeSidebar();
    $("memories-box").hidden = false;
    $("memory-search").value = "";
    $("memory-search").focus();
    loadMemories();
  });
  $("memories-close").addEventListener("click", () => { $("memories-box").hidden = true; });
  $("memory-search").addEventListener("input", () => {
    clearTimeout(memoryTimer);
    memoryTimer = setTimeout(loadMemories, 250);
  });
  document.addEventListener("keydown", (event) => {
    if (event.key !== "Escape") return;
    $("memories-box").hidden = true;
    $("confirm-box").hidden = true;
    exportMenu.open = false;
    closeSidebar();
  });

  // ---- token ----

  let askedForToken = false;

  function onUnauthorized() {
    if (askedForToken) return;
    askedForToken = true;
    halted = "token";
    const rejected = store.get(KEY_TOKEN) !== null;
    store.remove(KEY_TOKEN);
    closeSocket();
    setConn("needs-token", "needs a token");
    $("token-note").textContent = rejected
      ? "That token was not accepted. Enter the access token you were given."
      : "Enter the access token you were given. It is kept in this browser.";
    $("token-box").hidden = false;
    $("token").value = "";
    $("token").focus();
  }

  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const token = $("token").value.trim();
    if (!token) return;
    store.set(KEY_TOKEN, token);
    $("token-box").hidden = true;
    askedForToken = false;
    halted = null;
    refreshList();
    if (sessionId) openConversation(sessionId);
    else if (pendingText !== null) reconnectNow();
    else setConn("idle", "new chat");
  });

  $("forget-token").addEventListener("click", () => {
    store.remove(KEY_TOKEN);
    closeSocket();
    conversations = [];
    listEl.replaceChildren();
    updateControls();
    // Ask the server again: one that needs a token brings the form back.
    refreshList();
    if (sessionId) openConversation(sessionId);
  });

  // ---- export ----

  async function allEvents(id) {
    let events = [];
    let before = null;
    for (;;) {
      const path = "/api/conversations/" + encodeURIComponent(id) + "/events?limit=" + EXPORT_PAGE +
        (before !== null ? "&before_seq=" + before : "");
      const page = (await api("GET", path)).events || [];
      events = page.concat(events);
      if (page.length < EXPORT_PAGE || page[0].seq <= 1) return events;
      before = page[0].seq;
    }
  }

  function download(name, type, text) {
    const url = URL.createObjectURL(new Blob([text], { type }));
    const link = el("a");
    link.href = url;
    link.download = name;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
  }

  function fence(text) {
    const longest = Math.max(2, ...(String(text).match(/`+/g) || []).map((run) => run.length));
    const ticks = "`".repeat(longest + 1);
    return ticks + "\n" + text + "\n" + ticks;
  }

  function toMarkdown(meta, events) {
    const lines = ["# " + meta.title, ""];
    lines.push("Exported from Sparky on " + new Date().toISOString() + " (conversation `" + meta.id + "`).");
    if (meta.persona) lines.push("", "Persona: " + meta.persona.name + ": " + meta.persona.text);
    let total = 0;
    const results = new Map();
    for (const event of events) {
      if (event.type === "tool_result") results.set(String(event.data.call_id), event.data);
    }
    for (const event of events) {
      const data = event.data || {};
      switch (event.type) {
        case "user_message":
          lines.push("", "## You", "", String(data.text ?? ""));
          break;
        case "thought":
          lines.push("", "> *Thought:* " + String(data.text ?? "").replace(/\n/g, "\n> "));
          break;
        case "tool_use": {
          const result = results.get(String(data.call_id));
          lines.push("", "**Tool `" + String(data.name ?? "") + "`** " + JSON.stringify(data.args ?? {}));
          if (result) {
            lines.push("", (result.status === "success" ? "Result:" : "Error:"), "", fence(String(result.result ?? "")));
          }
          break;
        }
        case "message":
          lines.push("", "## Sparky", "", String(data.text ?? ""));
          if (data.usage) {
            const used = (Number(data.usage.prompt_tokens) || 0) + (Number(data.usage.completion_tokens) || 0);
            total += used;
            lines.push("", "*" + formatCount(used) + " tokens*");
          }
          break;
        case "error":
          lines.push("", "*Error (" + String(data.code ?? "") + "): " + String(data.message ?? "") + "*");
          break;
        case "status":
          if (data.code === "cancelled") lines.push("", "*Stopped.*");
          break;
        default:
          break;
      }
    }
    if (total) lines.push("", "---", "", "Tokens in all: " + formatCount(total) + ".");
    return lines.join("\n") + "\n";
  }

  function fileName(title, extension) {
    const base = title.toLowerCase().replace(/[^a-z0-9]+/g, "-").replace(/^-+|-+$/g, "").slice(0, 60);
    return (base || "conversation") + "." + extension;
  }

  async function exportAs(kind) {
    exportMenu.open = false;
    const id = sessionId;
    if (!id) return;
    let events;
    try {
      events = await allEvents(id);
    } catch (error) {
      note("The conversation could not be exported: " + error.message + ".", "error");
      return;
    }
    const known = conversations.find((c) => c.id === id);
    const meta = {
      id,
      title: (known && known.title) || titleEl.textContent || "Conversation",
      persona: personas()[id] || null,
    };
    if (kind === "json") {
      const body = {
        id, title: meta.title, exported_at: new Date().toISOString(),
        persona: meta.persona ? meta.persona.text : null, events,
      };
      download(fileName(meta.title, "json"), "application/json", JSON.stringify(body, null, 2) + "\n");
    } else {
      download(fileName(meta.title, "md"), "text/markdown", toMarkdown(meta, events));
    }
  }

  $("export-markdown").addEventListener("click", () => exportAs("markdown"));
  $("export-json").addEventListener("click", () => exportAs("json"));
  document.addEventListener("click", (event) => {
    if (exportMenu.open && !exportMenu.contains(event.target)) exportMenu.open = false;
  });

  // ---- input ----

  function autosize() {
    input.style.height = "auto";
    input.style.height = Math.min(input.scrollHeight + 2, 160) + "px";
  }

  function submit() {
    const text = input.value;
    if (!text.trim()) return;
    if (sessionId === null) {
      // A new chat: the conversation is made with its persona, then the message goes.
      if (pendingText !== null || halted === "token") return;
      pendingText = text;
      $("persona-picker").hidden = true;
      emptyEl.hidden = true;
      connect();
    } else {
      if (running()) return; // the box keeps the text until the answer ends or is stopped
      if (!send({ type: "message", data: { text } })) return;
    }
    input.value = "";
    autosize();
    scrollToBottom();
    updateControls();
  }

  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    if (sendBtn.dataset.mode === "send") submit();
  });
  sendBtn.addEventListener("click", (event) => {
    if (sendBtn.dataset.mode !== "stop") return;
    event.preventDefault();
    send({ type: "cancel", data: {} });
  });
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      submit();
    }
  });
  input.addEventListener("input", autosize);
  $("new-chat").addEventListener("click", () => {
    closeSidebar();
    startDraft();
    input.focus();
  });

  // ---- start ----

  // The box says how Enter works where there is room for it.
  function placeholder() {
    input.placeholder = window.matchMedia("(max-width: 560px)").matches
      ? "Message Sparky"
      : "Message Sparky (Enter sends, Shift+Enter adds a line)";
  }
  window.matchMedia("(max-width: 560px)").addEventListener("change", placeholder);

  function start() {
    placeholder();
    updatePersonaPicker();
    const fromHash = location.hash.slice(1);
    const stored = store.get(KEY_SESSION);
    refreshList();
    if (ID_PATTERN.test(fromHash)) openConversation(fromHash);
    else if (stored && ID_PATTERN.test(stored)) openConversation(stored);
    else startDraft();
  }

  start();
})();
