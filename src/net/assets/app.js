/*
  Sparky's chat page: plain JavaScript, nothing to build, served from /assets/ under a
  Content-Security-Policy that allows no inline script.

  It speaks PROTOCOL.md (version 3): the WebSocket at /ws for live turns, and the conversation
  API under /api/ for the list, the history, renames, deletions and memories.

  - The open conversation is named by the URL's fragment (#<id>), so a bookmark or a second tab
    opens the same one; without one, the page reopens the last conversation it showed.
  - A conversation is a tree of turns (each user_message names its parent); the page shows one
    path through it, from the start to the leaf that the server names (ready.leaf, a branch
    event, or a new turn, which makes itself the leaf). Editing a message or asking for another
    answer makes a sibling turn; arrows on a turn with siblings send `switch`, and the view
    follows the `branch` event that the server logs, so every device shows the same path.
  - Opening a conversation fetches the seq of its newest event, the tree (the turns API), and
    the events of the newest turns of the current path, one turn at a time (events?turn_id=T);
    then it connects with last_seq set to that newest seq: the server sends what came after,
    then live events. Scrolling up fetches the path's older turns the same way, so other
    branches' events are never fetched to show this one. Events are applied at most once (by
    seq) and placed by turn_id, so replayed, fetched and live events land in the same turn.
  - Every message, edit and regenerate carries a fresh client_id and waits in an outbox until
    the server echoes it (or says it is a duplicate); after a reconnect the page sends what is
    still there again, with the same client_id, so that it runs once.
  - "New chat" is a draft: nothing is created on the server until the first message, which goes
    with the persona chosen for it (connect.personality).
  - Answers are rendered as markdown by markdown-it (raw HTML off) and then sanitized by
    DOMPurify with a short allow-list; links open in a new tab with rel=noopener, and images are
    shown as links, never fetched. Every other text from the server is set with textContent.
  - What the page suggests depends on the model: the slash commands (/help, /calc, /remember)
    belong to the built-in offline model, so only a conversation with that model is told
    about them.
  - Errors are said in words a person understands, by their code; the server's own text is
    kept in a "Details" disclosure under them.
  - Files: each file chosen with the paperclip, dropped on the chat or pasted is uploaded at
    once (POST /api/files, the raw bytes, by XMLHttpRequest for its progress) and shown as a
    chip above the box; Send waits for the uploads, and the message names the stored files by
    id. A turn shows its files under its message (a tool's under its result): thumbnails for
    PNG, JPEG, GIF and WebP (the types the server checked by their bytes), a chip with a
    download link for anything else. File bytes are fetched with the page's credentials and
    shown from blob: URLs; a download's blob is typed application/octet-stream, so that nothing
    a user uploaded (an HTML page, an SVG with a script) is ever rendered in the page's origin.
    Names are text, never HTML. An edit keeps its turn's files (the editor can drop some); the
    Files panel lists the conversation's files, to download or delete.
*/
"use strict";
(() => {
  const KEY_SESSION = "sparky.session_id";
  const KEY_TOKEN = "sparky.token";
  const KEY_CSRF = "sparky.csrf"; // the sign-in's CSRF token (the cookie itself is HttpOnly)
  const KEY_PERSONAS = "sparky.personas";
  const KEY_MODELS = "sparky.models"; // the models the server offered last (ready.models)
  const FIRST_BACKOFF_MS = 500;
  const MAX_BACKOFF_MS = 15000;
  const PAGE_TURNS = 20;        // turns of the current path fetched per page of history
  const TURN_FETCHES = 4;       // turns fetched at once (each is one request)
  const EXPORT_PAGE = 1000;     // the API's largest page
  const CLIENT_ID_BYTES = 16;   // a client_id is this many random bytes, in hex
  const KEPT_PERSONAS = 500;    // conversations whose persona this browser remembers
  const ID_PATTERN = /^[0-9a-f]{32,64}$/;
  const BUILTIN_MODEL = "offline"; // the built-in model's name; the slash commands are its own
  const MAX_ATTACHMENTS = 16;   // files one message may carry (PROTOCOL.md section 3)
  // The types the page shows as images: the server decided them by the bytes.
  const INLINE_IMAGES = new Set(["image/png", "image/jpeg", "image/gif", "image/webp"]);

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
  const mainEl = $("main"), attachmentsEl = $("attachments"), fileInput = $("file-input");

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
  let pendingFiles = [];     // the files that message carries ({id, name, content_type, size})
  let streamSeq = 0;         // the WebSocket has delivered every event up to this seq
  const seen = new Set();    // the seq of every event applied to the view (fetched or live)
  let loadingOlder = false;
  let pagedToStart = false;  // scrolling up has reached the conversation's first turn
  let conversations = [];    // the list as last fetched
  let readyModel = null;     // the open conversation's model, as its last `ready` named it
  let defaultModel = null;   // a new chat's model when no `ready` has named one (GET /healthz)
  const turns = new Map();   // turn_id -> the turn's view (on the path shown or not)
  const openTurns = new Set();

  // The conversation's tree of turns: the turns API's skeleton plus every user_message seen.
  const tree = new Map();    // turn_id -> { id, parent, clientId }
  let leaf = 0;              // the last turn of the current path (0: no turn yet)
  let path = [];             // the current path's turn ids, from the start to the leaf
  let shownFrom = 0;         // path[shownFrom..] is what the view shows; older ones page in
  const turnLoads = new Map(); // turn_id -> the fetch of its events, while it runs

  // Sends that start a turn, until the server echoes their client_id (or calls it a duplicate).
  const outbox = [];         // { clientId, type, data, files, sentOn: the socket generation, or 0 }

  // The composer's files: uploading, uploaded (meta set) or refused (error set).
  const uploads = [];        // { file, name, size, el, bar, why, xhr, meta, error, removed }
  const fileBlobs = new Map(); // file id -> a promise of a blob: URL of the image (thumbnails)

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

  // A size in bytes as a person reads it: 812 B, 14.2 KB, 3.1 MB.
  function formatBytes(n) {
    let value = Math.max(0, Number(n) || 0);
    if (value < 1024) return value + " B";
    for (const unit of ["KB", "MB", "GB"]) {
      value /= 1024;
      if (value < 1024 || unit === "GB") return (value < 10 ? value.toFixed(1) : Math.round(value)) + " " + unit;
    }
    return value + " B";
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
    const csrf = store.get(KEY_CSRF);
    if (csrf && method !== "GET") headers["X-Sparky-CSRF"] = csrf;
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
      // A refusal of a request sent before the current token was entered (or with an older
      // one) says nothing about the current token: only a refusal of it asks again.
      if ((token || null) === store.get(KEY_TOKEN)) onUnauthorized();
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
        data.last_seq = streamSeq;
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

  // ---- the outbox: sends that start a turn ----

  // A fresh client_id: random hex (crypto.randomUUID needs a secure context; this does not).
  function newClientId() {
    const bytes = new Uint8Array(CLIENT_ID_BYTES);
    crypto.getRandomValues(bytes);
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  // Sends a `message`, `edit` or `regenerate` with a fresh client_id. It stays in the outbox
  // until the server echoes it, so that a reconnect sends it again, under the same client_id.
  // `files` are the attachments the frame names, kept to put back in the composer if the
  // server refuses the message.
  function sendTurn(type, data, files) {
    const clientId = newClientId();
    outbox.push({ clientId, type, data: { ...data, client_id: clientId }, files: files || [], sentOn: 0 });
    flushOutbox();
  }

  // The `data` of a message (or an edit) with `files`: the text may be empty when files go.
  function withFiles(data, files) {
    const out = { ...data };
    if (files.length > 0) {
      out.attachments = files.map((file) => file.id);
      if (!out.text.trim()) out.text = "";
    }
    return out;
  }

  // Sends what the current socket has not sent yet (all of it, after a reconnect).
  function flushOutbox() {
    if (!ws || !ready) return;
    for (const entry of outbox) {
      if (entry.sentOn === generation) continue;
      ws.send(JSON.stringify({ type: entry.type, data: entry.data }));
      entry.sentOn = generation;
    }
  }

  // The server has the turn that `clientId` started: nothing to send again.
  function acknowledge(clientId) {
    const at = outbox.findIndex((entry) => entry.clientId === clientId);
    if (at >= 0) outbox.splice(at, 1);
    return at >= 0;
  }

  // The oldest send of the current socket that has no answer yet: the one an answer without a
  // client_id (an error, or a duplicate whose turn this page never saw) is about.
  function oldestSent() {
    const at = outbox.findIndex((entry) => entry.sentOn === generation);
    return at >= 0 ? outbox.splice(at, 1)[0] : null;
  }

  // ---- frames ----

  function onFrame(raw) {
    let frame;
    try { frame = JSON.parse(raw); } catch (_) { return; }
    if (!frame || typeof frame !== "object") return;
    const data = frame.data && typeof frame.data === "object" ? frame.data : {};
    if (typeof frame.seq === "number") {
      // The stream is ordered: a reconnect resumes after this seq, even when the event was
      // already applied (fetched with its turn) and is skipped here.
      streamSeq = Math.max(streamSeq, frame.seq);
      if (seen.has(frame.seq)) return;
      seen.add(frame.seq);
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
    "message_delta", "message", "elicitation_request", "sampling_request",
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
        readyModel = typeof data.model === "string" ? data.model : null;
        updateHints();
        ready = true;
        everReady = true;
        backoff = FIRST_BACKOFF_MS;
        setConn("connected", "connected");
        if (Number.isInteger(data.leaf)) moveLeaf(data.leaf);
        if (pendingText !== null) {
          const text = pendingText, files = pendingFiles;
          pendingText = null;
          pendingFiles = [];
          sendTurn("message", withFiles({ text }, files), files);
        }
        flushOutbox();
        return;
      case "user_message": return userMessage(data, live);
      case "branch":
        if (live && Number.isInteger(data.leaf)) moveLeaf(data.leaf);
        return;
      case "thought": return addThought(turnView(data.turn_id), String(data.text ?? ""));
      case "tool_use": return toolUse(turnView(data.turn_id), data);
      case "tool_result": return toolResult(turnView(data.turn_id), data);
      case "approval_request": return approvalRequest(turnView(data.turn_id), data);
      case "elicitation_request": return elicitationRequest(turnView(data.turn_id), data);
      case "sampling_request": return samplingRequest(turnView(data.turn_id), data);
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
        if (live) turnEnded();
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
    if (code === "duplicate") return onDuplicate(data);
    const message = String(data.message ?? "");
    const turn = Number.isInteger(data.turn_id) ? turnView(data.turn_id) : null;
    switch (code) {
      case "cancelled":
        if (turn && !turn.closed) {
          keepAnswerSoFar(turn, data);
          turn.el.classList.add("cancelled");
          mark(turn, "cancelled", "\u25A0 Stopped");
          closeTurn(turn, "cancelled");
          if (live) turnEnded();
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
        const text = "The model refused the conversation so far, so this message was answered " +
          "without the earlier turns.";
        if (turn) addDetail(mark(turn, "info", text), message); else note(text, undefined, message);
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
    const detail = message ? code + ": " + message : code;
    if (Number.isInteger(data.turn_id)) {
      const turn = turnView(data.turn_id);
      if (turn.closed) return;
      keepAnswerSoFar(turn, data);
      turn.el.classList.add("failed");
      const node = mark(turn, "error", "\u26A0 " + explainError(code, message));
      addDetail(node, detail);
      closeTurn(turn, "error");
      if (live) turnEnded();
      return;
    }
    if (code === "unauthorized") {
      halted = "token";
      onUnauthorized();
      return;
    }
    if (pendingText !== null && !ready) {
      // The new chat could not start: its message goes back into the box, with its files.
      restoreText(pendingText);
      restoreFiles(pendingFiles);
      pendingText = null;
      pendingFiles = [];
    } else if (REFUSED_SENDS.has(code)) {
      // The send this answers started nothing: a message goes back into the box.
      const refused = oldestSent();
      if (refused && refused.type === "message") {
        restoreText(refused.data.text);
        restoreFiles(refused.files);
      }
    }
    note(explainError(code, message), "error", detail);
  }

  // What an error code means, in words a person understands; the server's own text goes in a
  // disclosure beside it (addDetail). `message` tells a model server that could not be reached
  // from one that failed while answering.
  function explainError(code, message) {
    switch (code) {
      case "model_error":
        return UNREACHABLE.test(message)
          ? "The model server could not be reached, so there is no answer. Try again in a " +
            "moment; if it keeps happening, whoever runs this server should check the model server."
          : "The model server failed while answering. Try again, or ask in another way.";
      case "step_limit":
        return "The answer took more steps (model calls and tools) than this server allows, so " +
          "it was stopped. Try asking for less at once.";
      case "internal":
        return "Something went wrong inside the server, so the answer stopped. Try again.";
      case "storage":
        return "The server could not save this conversation: its storage is full or unavailable. " +
          "Nothing was started; try again later.";
      case "server_busy":
        return "The server is too busy to answer right now. Try again in a minute.";
      case "rate_limited":
        return "You are sending faster than this server allows. Wait a moment, then try again.";
      case "too_large":
        return "That message is longer than this server accepts. Shorten it and try again.";
      case "invalid_message":
        return "The server could not accept that request.";
      case "quota":
        // The server's words say which limit, and when it starts again: they are shown.
        if (!message) return "You have used up your daily quota on this server.";
        return message.charAt(0).toUpperCase() + message.slice(1) + (/[.!]$/.test(message) ? "" : ".");
      case "not_waiting":
        return "That tool call is no longer waiting for an answer (it was answered elsewhere, " +
          "or it timed out).";
      default:
        return "Something went wrong.";
    }
  }

  // How the model client words a server it could not connect to (refused, no route, no name,
  // a connect that timed out).
  const UNREACHABLE = /connection refused|os error 111|could not connect|unreachable|no route|dns|resolve|failed to lookup|connect.*timed? ?out|timeout.*connect/i;

  // What an API error means, by its HTTP status; its text goes in the disclosure.
  function explainApiError(error) {
    const status = Number(error && error.status) || 0;
    if (status === 0) return "The server cannot be reached. Check the connection and try again.";
    if (status === 404) return "It is no longer on the server.";
    if (status === 413) return "That is more than the server accepts.";
    if (status === 429) return "Too many requests at once. Wait a moment, then try again.";
    if (status === 503 || status === 507) {
      return "The server cannot store anything right now (its storage is full or unavailable). Try again later.";
    }
    if (status >= 500) return "Something went wrong on the server. Try again later.";
    return "The server refused it.";
  }

  // A "Details" disclosure under `node` with the server's own words.
  function addDetail(node, detail) {
    if (!detail) return node;
    const more = el("details", "detail");
    more.append(el("summary", undefined, "Details"), el("code", undefined, detail));
    node.append(more);
    return node;
  }

  // A problem with an API request, as a note in the conversation.
  function apiNote(what, error) {
    const detail = error && error.message ? String(error.message) : "";
    return note(what + " " + explainApiError(error), "error", detail);
  }

  // Codes of an `error` frame that refuse a message, edit or regenerate (it started nothing).
  // Such a frame names no client_id: it answers the oldest send of this socket not yet
  // answered (a `switch` refused at the same moment would be taken for it; the page sends
  // none to a turn the server does not have).
  const REFUSED_SENDS = new Set(["invalid_message", "too_large", "rate_limited", "storage", "server_busy", "quota"]);

  function restoreText(text) {
    input.value = text + (input.value ? "\n" + input.value : "");
    autosize();
  }

  // A send that had already happened (sent again after a reconnect): the turn it names is the
  // one it started, so nothing is shown. The turn's user_message names its client_id, when the
  // page has seen it; otherwise this answers the oldest send of this socket.
  function onDuplicate(data) {
    const node = Number.isInteger(data.turn_id) ? tree.get(data.turn_id) : null;
    if (node && node.clientId) acknowledge(node.clientId);
    else oldestSent();
  }

  // A closing `error` or `status cancelled` may carry the answer streamed so far: it is kept.
  function keepAnswerSoFar(turn, data) {
    if (typeof data.text === "string" && data.text && !turn.text) turn.streamed = data.text;
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
    streamSeq = 0;
    seen.clear();
    tree.clear();
    leaf = 0;
    path = [];
    shownFrom = 0;
    turnLoads.clear();
    outbox.length = 0;
    loadingOlder = false;
    pagedToStart = false;
    readyModel = null;
    forgetFileBlobs();
    updateUsageTotal();
  }

  // The view of a turn, created on first sight. It is in the page only while its turn is on
  // the shown part of the current path (placeTurns); a turn of another branch keeps its view,
  // out of the page, for when the path comes back to it.
  function turnView(rawId) {
    const id = Number(rawId);
    const existing = turns.get(id);
    if (existing) return existing;
    const section = el("section", "turn");
    section.dataset.turnId = String(id);
    const user = el("div", "bubble user");
    user.hidden = true;
    const files = el("div", "attachments user-files");
    files.hidden = true;
    const steps = el("div", "steps");
    const answer = el("div", "bubble answer md");
    answer.hidden = true;
    const turn = {
      id, el: section, user, files, attachments: [], steps, answer, tools: new Map(), streamed: "", text: "",
      closed: false, usage: null, renderQueued: false,
      loaded: false,  // every event of the turn is applied, or will arrive on the WebSocket
      editor: null,   // the inline editor of its message, while open
    };
    addTurnBars(turn);
    section.append(user, files, turn.userBar, steps, answer, turn.answerBar);
    turns.set(id, turn);
    emptyEl.hidden = true;
    return turn;
  }

  // ---- branches: the tree of turns and the current path ----

  // A turn opens: its place in the tree and its user bubble. A live one (from the WebSocket)
  // becomes the leaf, as the protocol says every new turn does, and its events all follow it
  // on the stream; one fetched with its turn changes no path.
  function userMessage(data, live) {
    const clientId = typeof data.client_id === "string" ? data.client_id : null;
    addToTree(data.turn_id, data.parent, clientId);
    const turn = turnView(data.turn_id);
    const text = String(data.text ?? "");
    turn.user.textContent = text;
    turn.user.classList.toggle("empty", text === "");
    turn.user.hidden = false;
    turn.attachments = attachmentsOf(data);
    turn.files.replaceChildren(...turn.attachments.map(attachmentItem));
    turn.files.hidden = turn.attachments.length === 0 || turn.editor !== null;
    if (!turn.closed) openTurns.add(turn.id);
    if (titleEl.dataset.fromList !== "true" && turn.id === 1) setTitle(String(data.text ?? ""), false);
    if (clientId) acknowledge(clientId);
    if (live) {
      turn.loaded = true;
      moveLeaf(turn.id);
    }
  }

  // A turn's place in the tree; an event without `parent` (written before branches existed)
  // follows the turn before it.
  function addToTree(id, parent, clientId) {
    const known = tree.get(id);
    if (known) {
      if (clientId) known.clientId = clientId;
      return;
    }
    const parentId = Number.isInteger(parent) ? parent : Math.max(0, id - 1);
    tree.set(id, { id, parent: parentId, clientId });
  }

  function moveLeaf(id) {
    leaf = id;
    showPath();
  }

  // The turn ids from the start to `id`; null while `id` is not in the tree yet (ready.leaf
  // names a turn whose user_message is still on its way in the replay).
  function pathTo(id) {
    if (id === 0) return [];
    if (!tree.has(id)) return null;
    const ids = [];
    for (let at = id; at !== 0 && tree.has(at) && ids.length <= tree.size; at = tree.get(at).parent) {
      ids.push(at);
    }
    return ids.reverse();
  }

  // How many turns two paths share from the start.
  function sharedStart(a, b) {
    let n = 0;
    while (n < a.length && n < b.length && a[n] === b[n]) n++;
    return n;
  }

  // Shows the path to the leaf. Where it leaves the old path inside what the view shows (an
  // arrow or an edit there), the view keeps its place and shows the new turns below it; where
  // it leaves it above (another device switched there), the view shows the newest page.
  function showPath() {
    const next = pathTo(leaf);
    if (next === null) return;
    const shared = sharedStart(path, next);
    path = next;
    if (shared < shownFrom) shownFrom = Math.max(0, path.length - PAGE_TURNS);
    shownFrom = Math.min(shownFrom, path.length);
    placeTurns();
    loadShown();
  }

  // Puts in the page the loaded turns of the path's shown part, in order, and takes out every
  // other turn; refreshes each shown turn's buttons and arrows.
  function placeTurns() {
    const shown = new Set(path.slice(shownFrom));
    const siblings = siblingsByParent();
    for (const turn of turns.values()) {
      if (!shown.has(turn.id) || !turn.loaded) {
        if (turn.el.isConnected) turn.el.remove();
        continue;
      }
      if (!turn.el.isConnected) attach(turn);
      updateBars(turn, siblings);
    }
    if (!loadingOlder) {
      olderEl.hidden = shownFrom === 0 && !pagedToStart;
      olderEl.textContent = shownFrom > 0 ? "Scroll up for older messages" : "The beginning of this conversation";
    }
    updateUsageTotal();
  }

  // A section goes before the first shown turn with a larger id: along a path, ids grow.
  function attach(turn) {
    let before = null;
    for (const other of logEl.querySelectorAll(":scope > .turn")) {
      if (Number(other.dataset.turnId) > turn.id) {
        before = other;
        break;
      }
    }
    logEl.insertBefore(turn.el, before);
  }

  // parent -> its children's ids, oldest first: the siblings a turn's arrows step through.
  function siblingsByParent() {
    const byParent = new Map();
    for (const node of tree.values()) {
      if (!byParent.has(node.parent)) byParent.set(node.parent, []);
      byParent.get(node.parent).push(node.id);
    }
    for (const ids of byParent.values()) ids.sort((a, b) => a - b);
    return byParent;
  }

  // ---- a turn's buttons: edit, the sibling arrows, regenerate, retry ----

  function addTurnBars(turn) {
    turn.userBar = el("div", "turn-bar user-bar");
    turn.pager = el("span", "pager");
    turn.prev = button("prev", "\u2039", "Previous version");
    turn.count = el("span", "count");
    turn.next = button("next", "\u203A", "Next version");
    turn.pager.append(turn.prev, turn.count, turn.next);
    turn.edit = button("edit", "\u270E", "Edit this message");
    turn.userBar.append(turn.pager, turn.edit);
    turn.answerBar = el("div", "turn-bar answer-bar");
    turn.regenerate = button("regenerate", "\u21BB", "Another answer");
    turn.retry = button("retry", "\u21BB Retry", "Try this message again");
    turn.answerBar.append(turn.regenerate, turn.retry);
    turn.userBar.hidden = true;
    turn.answerBar.hidden = true;

    turn.prev.addEventListener("click", () => switchSibling(turn, -1));
    turn.next.addEventListener("click", () => switchSibling(turn, 1));
    turn.edit.addEventListener("click", () => startEdit(turn));
    const again = () => sendTurn("regenerate", { turn_id: turn.id });
    turn.regenerate.addEventListener("click", again);
    turn.retry.addEventListener("click", again);
  }

  // Shows what a turn offers now: arrows when it has siblings, the pencil on its message, and
  // under the answer "another answer" (when it ended well) or Retry (when it failed or stopped).
  function updateBars(turn, siblings) {
    const node = tree.get(turn.id);
    const byParent = siblings || siblingsByParent();
    const versions = (node && byParent.get(node.parent)) || [turn.id];
    const at = versions.indexOf(turn.id);
    turn.pager.hidden = versions.length < 2;
    turn.count.textContent = (at + 1) + "/" + versions.length;
    turn.prev.disabled = at <= 0;
    turn.next.disabled = at >= versions.length - 1;
    turn.userBar.hidden = turn.user.hidden || turn.editor !== null;
    const outcome = turn.el.dataset.outcome;
    turn.regenerate.hidden = !(turn.closed && outcome === "done");
    turn.retry.hidden = !(turn.closed && (outcome === "error" || outcome === "cancelled"));
    turn.answerBar.hidden = turn.regenerate.hidden && turn.retry.hidden;
  }

  // An arrow asks the server to make the sibling's branch current; the view changes when the
  // server's `branch` event comes back, as it does on every other device.
  function switchSibling(turn, step) {
    const node = tree.get(turn.id);
    const versions = (node && siblingsByParent().get(node.parent)) || [];
    const target = versions[versions.indexOf(turn.id) + step];
    if (target === undefined) return;
    if (!send({ type: "switch", data: { turn_id: target } })) {
      note("Not connected: try again once reconnected.", "error");
    }
  }

  // The inline editor of a user message: Enter sends an `edit` (a new turn beside this one;
  // the server stops a running turn first), Shift+Enter adds a line, Escape puts it back. The
  // turn's files go with the edit; × on one leaves it out.
  function startEdit(turn) {
    if (turn.editor) {
      turn.editor.querySelector("textarea").focus();
      return;
    }
    const box = el("div", "editor");
    const field = el("textarea");
    field.value = turn.user.textContent;
    field.rows = Math.min(8, field.value.split("\n").length + 1);
    field.setAttribute("aria-label", "Edit your message");
    const cancel = button("cancel", "Cancel");
    const save = button("primary save", "Send");
    const row = el("div", "buttons");
    row.append(cancel, save);
    let kept = turn.attachments.slice();
    const files = el("div", "attachments editor-files");
    for (const file of kept) {
      const item = attachmentItem(file);
      const drop = button("remove", "\u2715", "Leave out " + String(file.name ?? "this file"));
      drop.addEventListener("click", () => {
        kept = kept.filter((other) => other !== file);
        item.remove();
        files.hidden = kept.length === 0;
      });
      item.append(drop);
      files.append(item);
    }
    files.hidden = kept.length === 0;
    box.append(field, files, row);
    turn.user.after(box);
    turn.editor = box;
    turn.user.hidden = true;
    turn.files.hidden = true;
    updateBars(turn);

    const close = () => {
      box.remove();
      turn.editor = null;
      turn.user.hidden = false;
      turn.files.hidden = turn.attachments.length === 0;
      updateBars(turn);
    };
    const submitEdit = () => {
      const text = field.value;
      if (!text.trim() && kept.length === 0) return;
      close();
      sendTurn("edit", withFiles({ turn_id: turn.id, text }, kept), kept);
    };
    field.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        submitEdit();
      } else if (event.key === "Escape") {
        event.preventDefault();
        event.stopPropagation();
        close();
      }
    });
    cancel.addEventListener("click", close);
    save.addEventListener("click", submitEdit);
    field.focus();
    field.setSelectionRange(field.value.length, field.value.length);
  }

  // ---- loading the path's turns ----

  // Fetches the shown turns that the page does not have yet, then shows them.
  async function loadShown() {
    const missing = path.slice(shownFrom).filter((id) => !isLoaded(id));
    if (missing.length === 0) return;
    const mine = view;
    try {
      await loadTurns(missing);
    } catch (error) {
      if (mine === view) apiNote("Part of this conversation could not be loaded.", error);
      return;
    }
    if (mine !== view) return;
    const stick = nearBottom();
    placeTurns();
    if (stick) scrollToBottom();
  }

  function isLoaded(id) {
    const turn = turns.get(id);
    return Boolean(turn && turn.loaded);
  }

  // Fetches the events of `ids`, a few turns at a time.
  async function loadTurns(ids) {
    const queue = ids.slice();
    const worker = async () => {
      while (queue.length > 0) await loadTurn(queue.shift());
    };
    const workers = Array.from({ length: Math.min(TURN_FETCHES, queue.length) }, worker);
    await Promise.all(workers);
  }

  // True for the event that ends a turn.
  function closesTurn(event) {
    const code = event.data && event.data.code;
    return event.type === "message" || event.type === "error" ||
      (event.type === "status" && code === "cancelled");
  }

  // One turn's events (events?turn_id=T), applied once; one fetch per turn at a time. A turn
  // of large events comes in several pages: the next one starts after the last event seen.
  function loadTurn(id) {
    if (isLoaded(id)) return Promise.resolve();
    const running = turnLoads.get(id);
    if (running) return running;
    const mine = view;
    const base = "/api/conversations/" + encodeURIComponent(sessionId) + "/events?turn_id=" + id;
    const load = (async () => {
      let after = 0;
      for (;;) {
        const data = await api("GET", base + (after > 0 ? "&after_seq=" + after : ""));
        if (mine !== view) return;
        const events = Array.isArray(data && data.events) ? data.events : [];
        for (const event of events) applyStored(event);
        const last = events[events.length - 1];
        if (!last || typeof last.seq !== "number" || last.seq <= after || closesTurn(last)) break;
        after = last.seq;
      }
      turnView(id).loaded = true;
    })().finally(() => {
      if (turnLoads.get(id) === load) turnLoads.delete(id);
    });
    turnLoads.set(id, load);
    return load;
  }

  // An event fetched from the API (not live): applied unless the view already has it.
  function applyStored(event) {
    if (!event || typeof event !== "object" || typeof event.seq !== "number") return;
    if (seen.has(event.seq)) return;
    seen.add(event.seq);
    const data = event.data && typeof event.data === "object" ? event.data : {};
    apply(event.type, data, false);
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
      approval: null, progress: null, bar: null, progressLabel: null, images: null, files: null,
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
    const files = attachmentsOf(data);
    if (files.length > 0 && !tool.files) {
      tool.files = el("div", "attachments tool-files");
      tool.files.append(...files.map(attachmentItem));
      tool.box.append(tool.files);
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
      // Allowed, the call runs now: the card says so (its result replaces it). Denied, the
      // result saying so follows at once.
      endApproval(tool);
      tool.state.textContent = ok ? "running…" : "denied";
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

  // ---- What an MCP server asks in the middle of a call (elicitation_request, sampling_request).
  // Each is a card on the call's box, in the place of an approval (a call asks one thing at a
  // time, so a newer request replaces the card); its result, a newer request or the turn's
  // end removes it. Built from text nodes only: nothing the server sent becomes markup.

  // The card for a request of the call `data.call_id`, or null when that call or turn is over.
  function askCard(turn, data, title) {
    const callId = String(data.call_id ?? "");
    const tool = turn.tools.get(callId) || toolBox(turn, callId, "tool");
    if (tool.done || turn.closed) return null;
    endApproval(tool);
    tool.box.classList.add("asking");
    const card = el("div", "approval ask-card");
    card.append(el("div", "ask", title));
    tool.box.insertBefore(card, tool.result);
    tool.approval = card;
    return { tool, card };
  }

  // Sends an answer from a card; false (with a note) when not connected.
  function sendAsk(frame, buttons) {
    if (!send(frame)) {
      note("Not connected: the answer was not sent. Try again once reconnected.", "error");
      return false;
    }
    for (const node of buttons) node.disabled = true;
    return true;
  }

  // A form (or, in URL mode, an address shown, never opened) with Accept, Decline and Cancel.
  function elicitationRequest(turn, data) {
    const requestId = String(data.request_id ?? "");
    const server = String(data.server ?? "an MCP server");
    const shown = askCard(turn, data, `${server} asks: ${String(data.message ?? "")}`);
    if (!shown) return;
    const { tool, card } = shown;
    tool.state.textContent = "waiting for your answer";
    let collect = () => null;
    if (data.mode === "url") {
      card.append(
        el("div", "ask-note", "It wants you to visit this address. Open it yourself only if you trust it:"),
        el("code", "ask-url", String(data.url ?? "")),
      );
    } else {
      const form = elicitForm(data.schema);
      card.append(form.node);
      collect = form.collect;
    }
    const row = el("div", "ask-buttons");
    const accept = button("allow", "Accept", "Send this answer");
    const decline = button("deny", "Decline", "Decline to answer");
    const cancel = button("cancel", "Cancel", "Dismiss without answering");
    const buttons = [accept, decline, cancel];
    const answer = (action, content) => {
      const frame = { request_id: requestId, action };
      if (content) frame.content = content;
      const said = { accept: "answered", decline: "declined", cancel: "dismissed" };
      if (sendAsk({ type: "elicit", data: frame }, buttons)) tool.state.textContent = said[action];
    };
    accept.addEventListener("click", () => {
      const content = collect();
      if (content !== undefined) answer("accept", content);
    });
    decline.addEventListener("click", () => answer("decline"));
    cancel.addEventListener("click", () => answer("cancel"));
    row.append(...buttons);
    card.append(row);
  }

  // The fields of an elicitation's schema as inputs; `collect` returns the content, or
  // undefined (with the wrong fields marked) when it does not fit.
  function elicitForm(schema) {
    const node = el("div", "ask-form");
    const properties = schema && typeof schema.properties === "object" ? schema.properties : {};
    const required = new Set(Array.isArray(schema?.required) ? schema.required : []);
    const readers = [];
    for (const [name, property] of Object.entries(properties)) {
      if (!property || typeof property !== "object") continue;
      const field = el("label", "ask-field");
      field.dataset.name = name;
      const title = String(property.title ?? name) + (required.has(name) ? " *" : "");
      field.append(el("span", "ask-label", title));
      if (typeof property.description === "string") field.append(el("small", "ask-help", property.description));
      const read = elicitInput(field, property);
      field.append(el("small", "ask-error"));
      node.append(field);
      readers.push({ name, field, read, required: required.has(name) });
    }
    const collect = () => {
      const content = {};
      let ok = true;
      for (const { name, field, read, required: needed } of readers) {
        const error = field.querySelector(".ask-error");
        let value;
        try {
          value = read();
        } catch (e) {
          error.textContent = String(e.message || e);
          ok = false;
          continue;
        }
        if (value === undefined && needed) {
          error.textContent = "required";
          ok = false;
          continue;
        }
        error.textContent = "";
        if (value !== undefined) content[name] = value;
      }
      return ok ? content : undefined;
    };
    return { node, collect };
  }

  // The options of an enum property: [{value, label}], or null.
  function elicitOptions(property) {
    if (Array.isArray(property.enum)) {
      const names = Array.isArray(property.enumNames) ? property.enumNames : [];
      return property.enum.map((value, i) => ({ value: String(value), label: String(names[i] ?? value) }));
    }
    const listed = Array.isArray(property.oneOf) ? property.oneOf : Array.isArray(property.anyOf) ? property.anyOf : null;
    if (!listed) return null;
    return listed.filter((o) => o && o.const !== undefined)
      .map((o) => ({ value: String(o.const), label: String(o.title ?? o.const) }));
  }

  // Adds the input for one property to `field`; returns its reader (undefined: left empty).
  function elicitInput(field, property) {
    const type = property.type;
    if (type === "boolean") {
      const box = el("input");
      box.type = "checkbox";
      box.checked = property.default === true;
      field.append(box);
      return () => box.checked;
    }
    if (type === "array") {
      const options = elicitOptions(property.items || {}) || [];
      const chosen = new Set(Array.isArray(property.default) ? property.default.map(String) : []);
      const group = el("span", "ask-choices");
      const boxes = options.map((option) => {
        const item = el("label", "ask-choice");
        const box = el("input");
        box.type = "checkbox";
        box.value = option.value;
        box.checked = chosen.has(option.value);
        item.append(box, el("span", null, option.label));
        group.append(item);
        return box;
      });
      field.append(group);
      return () => {
        const values = boxes.filter((b) => b.checked).map((b) => b.value);
        if (values.length === 0) return undefined;
        if (Number.isInteger(property.minItems) && values.length < property.minItems) throw new Error(`choose at least ${property.minItems}`);
        if (Number.isInteger(property.maxItems) && values.length > property.maxItems) throw new Error(`choose at most ${property.maxItems}`);
        return values;
      };
    }
    const options = type === "string" ? elicitOptions(property) : null;
    if (options) {
      const select = el("select");
      select.append(el("option", null, ""));
      for (const option of options) {
        const item = el("option", null, option.label);
        item.value = option.value;
        select.append(item);
      }
      if (property.default !== undefined) select.value = String(property.default);
      field.append(select);
      return () => (select.value === "" ? undefined : select.value);
    }
    const input = el("input");
    if (type === "number" || type === "integer") {
      input.type = "number";
      input.step = type === "integer" ? "1" : "any";
      if (Number.isFinite(property.minimum)) input.min = String(property.minimum);
      if (Number.isFinite(property.maximum)) input.max = String(property.maximum);
    } else {
      const formats = { email: "email", uri: "url", date: "date", "date-time": "datetime-local" };
      input.type = formats[property.format] || "text";
      if (Number.isInteger(property.maxLength)) input.maxLength = property.maxLength;
    }
    if (property.default !== undefined) input.value = String(property.default);
    field.append(input);
    return () => {
      const text = input.value.trim();
      if (text === "") return undefined;
      if (type === "number" || type === "integer") {
        const number = Number(text);
        if (!Number.isFinite(number)) throw new Error("a number");
        if (type === "integer" && !Number.isInteger(number)) throw new Error("a whole number");
        if (Number.isFinite(property.minimum) && number < property.minimum) throw new Error(`at least ${property.minimum}`);
        if (Number.isFinite(property.maximum) && number > property.maximum) throw new Error(`at most ${property.maximum}`);
        return number;
      }
      if (Number.isInteger(property.minLength) && [...text].length < property.minLength) throw new Error(`at least ${property.minLength} characters`);
      return text;
    };
  }

  // The messages an MCP server wants the conversation's model to answer, with Allow, Always
  // allow (this server, for the rest of the conversation) and Deny.
  function samplingRequest(turn, data) {
    const requestId = String(data.request_id ?? "");
    const server = String(data.server ?? "an MCP server");
    const limit = Number.isInteger(data.max_tokens) ? ` (at most ${data.max_tokens} tokens)` : "";
    const shown = askCard(turn, data, `${server} asks the model for an answer${limit}`);
    if (!shown) return;
    const { tool, card } = shown;
    tool.state.textContent = "waiting for approval";
    if (typeof data.system_prompt === "string") card.append(el("pre", "ask-message", `system: ${data.system_prompt}`));
    for (const message of Array.isArray(data.messages) ? data.messages : []) {
      card.append(el("pre", "ask-message", `${String(message?.role ?? "user")}: ${String(message?.text ?? "")}`));
    }
    const row = el("div", "ask-buttons");
    const allow = button("allow", "Allow", "Let the model answer this request");
    const always = button("allow", `Always allow ${server}`, "Allow this server's requests for the rest of the conversation");
    const deny = button("deny", "Deny", "Refuse this request");
    const buttons = [allow, always, deny];
    const answer = (ok, forGood) => {
      const frame = { call_id: requestId, allow: ok };
      if (forGood) frame.always = true;
      if (sendAsk({ type: "approve", data: frame }, buttons)) tool.state.textContent = ok ? "running…" : "denied";
    };
    allow.addEventListener("click", () => answer(true, false));
    always.addEventListener("click", () => answer(true, true));
    deny.addEventListener("click", () => answer(false, false));
    row.append(...buttons);
    card.append(row);
  }

  // How far a running call has come: a progress bar (indeterminate without a total) and the
  // tool's words. Not an event: it is never replayed.
  function toolProgress(turn, data) {
    const tool = turn.tools.get(String(data.call_id ?? ""));
    if (!tool || tool.done || turn.closed) return;
    if (tool.approval) {
      // Someone allowed it elsewhere (another tab or device): it runs.
      endApproval(tool);
      tool.state.textContent = "running…";
    }
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
    turn.el.insertBefore(node, turn.answerBar);
    return node;
  }

  function closeTurn(turn, outcome) {
    turn.closed = true;
    turn.el.dataset.outcome = outcome;
    turn.answer.classList.remove("streaming");
    if (outcome !== "done" && turn.streamed && !turn.text) renderMarkdown(turn.answer, turn.streamed);
    turn.answer.hidden = turn.answer.textContent === "";
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
    if (turn.el.isConnected) updateBars(turn); // placeTurns does it for a turn it shows later
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

  // The total over the answers of the current path that the page shows; "≥" while older
  // turns are not loaded yet.
  function updateUsageTotal() {
    let total = 0, counted = 0;
    const hasOlder = shownFrom > 0;
    for (const id of path.slice(shownFrom)) {
      const turn = turns.get(id);
      if (turn && turn.usage) {
        total += turn.usage.prompt + turn.usage.completion;
        counted++;
      }
    }
    usageTotalEl.hidden = counted === 0;
    usageTotalEl.textContent = (hasOlder ? "\u2265 " : "") + formatCount(total) + " tokens in all";
    usageTotalEl.title = "Tokens of " + counted + " answer" + (counted === 1 ? "" : "s") +
      (hasOlder ? " loaded so far; scroll up for older ones" : "");
  }

  // A line in the conversation that belongs to no turn, with the server's own words under
  // "Details" when given. The same line twice in a row (a server that stays busy across
  // reconnections) is shown once.
  function note(text, kind, detail) {
    const last = logEl.lastElementChild;
    if (last && last.classList.contains("note") && last.dataset.text === text) return last;
    const node = el("div", "note" + (kind ? " " + kind : ""));
    node.dataset.text = text;
    node.append(el("span", "text", text));
    addDetail(node, detail);
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
    const waiting = !stop && uploading();
    sendBtn.title = stop ? "Stop the answer (your text stays in the box)"
      : waiting ? "Waiting for the files to upload" : "Send (Enter)";
    if (stop) sendBtn.disabled = !ready;
    else sendBtn.disabled = halted === "token" || waiting || (sessionId !== null ? !ready : pendingText !== null);
    exportMenu.dataset.disabled = sessionId === null ? "true" : "false";
    $("share-chat").disabled = sessionId === null;
    if (sessionId === null) exportMenu.open = false;
    $("forget-token").hidden = store.get(KEY_TOKEN) === null;
    $("sign-out").hidden = store.get(KEY_CSRF) === null;
    showAccount();
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
    updateHints();
  }
  modelSelect.addEventListener("change", updateHints);

  // The model the view talks to: the open conversation's (its `ready`, else its entry in the
  // list), or the one a new chat would get (the menu's choice, which holds the server's
  // default when there is no choice, else what /healthz named). Null while unknown.
  function modelInView() {
    if (sessionId !== null) {
      if (readyModel !== null) return readyModel;
      const known = conversations.find((c) => c.id === sessionId);
      return known && typeof known.model === "string" ? known.model : null;
    }
    return modelSelect.value || defaultModel;
  }

  // The empty chat's hints and the memories panel name the slash commands only for the
  // built-in model, whose commands they are; any other model gets plain-language hints (none
  // while the model is not known yet).
  function updateHints() {
    const model = modelInView();
    const builtin = model === BUILTIN_MODEL;
    $("hints-offline").hidden = !builtin;
    $("hints-model").hidden = model === null || builtin;
    $("remember-hint").hidden = !builtin;
  }

  // A browser that never had a `ready` from this server does not know which model a new chat
  // gets: /healthz names it (to a caller that may see the server's figures).
  async function learnDefaultModel() {
    if (modelSelect.value) return;
    const headers = {};
    const token = store.get(KEY_TOKEN);
    if (token) headers.Authorization = "Bearer " + token;
    try {
      const response = await fetch("/healthz", { headers, cache: "no-store" });
      const data = await response.json();
      const name = data && data.model && data.model.name;
      if (typeof name === "string" && name) {
        defaultModel = name;
        updateHints();
      }
    } catch (_) {
      // Unknown: the hints stay neutral.
    }
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
    updateHints();
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
    updateHints();
    listChanged();
    setConn("connecting", "loading…");
    try {
      await loadNewest(id, mine);
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
      // Otherwise the WebSocket replays everything from the start, every branch included.
      resetView();
    }
    if (mine !== view) return;
    placeTurns();
    scrollToBottom();
    connect();
    fillScreen();
  }

  // What a conversation shows first: the tree and its leaf (the turns API), and the events of
  // the newest turns of the current path. The newest event's seq, asked for first, is where
  // the WebSocket takes over: whatever happens after it comes live, or in its replay.
  async function loadNewest(id, mine) {
    const base = "/api/conversations/" + encodeURIComponent(id);
    const newest = (await api("GET", base + "/events?limit=1")).events || [];
    const skeleton = await api("GET", base + "/turns");
    if (mine !== view) return;
    const listed = Array.isArray(skeleton && skeleton.turns) ? skeleton.turns : [];
    for (const turn of listed) {
      if (Number.isInteger(turn.turn_id)) addToTree(turn.turn_id, turn.parent, null);
    }
    leaf = skeleton && Number.isInteger(skeleton.leaf) ? skeleton.leaf : Math.max(0, ...tree.keys());
    path = pathTo(leaf) || [];
    shownFrom = Math.max(0, path.length - PAGE_TURNS);
    if (path.length > 0) emptyEl.hidden = true;
    await loadTurns(path.slice(shownFrom));
    const last = newest[newest.length - 1];
    streamSeq = last && typeof last.seq === "number" ? last.seq : 0;
  }

  // Scrolling up: the page of the path's turns before the oldest one shown.
  async function loadOlder() {
    if (shownFrom === 0 || loadingOlder || !sessionId) return;
    loadingOlder = true;
    const mine = view;
    olderEl.textContent = "Loading older messages…";
    const from = Math.max(0, shownFrom - PAGE_TURNS);
    try {
      await loadTurns(path.slice(from, shownFrom));
    } catch (_) {
      if (mine === view) {
        loadingOlder = false;
        olderEl.textContent = "Older messages could not be loaded; scroll up to try again";
      }
      return;
    }
    if (mine !== view) return;
    loadingOlder = false;
    const fromBottom = logEl.scrollHeight - logEl.scrollTop;
    shownFrom = Math.min(shownFrom, from);
    pagedToStart = shownFrom === 0;
    placeTurns();
    logEl.scrollTop = logEl.scrollHeight - fromBottom;
    loadShown(); // the path may have moved meanwhile
    fillScreen();
  }

  // Loads older pages until the view can scroll (or there is nothing older).
  function fillScreen() {
    if (shownFrom > 0 && logEl.scrollHeight <= logEl.clientHeight + 200) loadOlder();
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
    updateHints();
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
          apiNote("The conversation could not be renamed.", error);
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

  // The confirm box: `question` as its title, `text` under it, and `ok` (a danger button)
  // that runs `action`; Cancel (or Escape) runs nothing.
  function askFirst(question, text, ok, action) {
    $("confirm-title").textContent = question;
    $("confirm-text").textContent = text;
    $("confirm-ok").textContent = ok;
    const box = $("confirm-box");
    box.hidden = false;
    $("confirm-cancel").focus();
    const close = () => {
      box.hidden = true;
      $("confirm-ok").onclick = null;
      $("confirm-cancel").onclick = null;
    };
    $("confirm-cancel").onclick = close;
    $("confirm-ok").onclick = () => {
      close();
      action();
    };
  }

  // Delete asks first; it works while a turn runs (the server stops it).
  function askDelete(id, title) {
    const text = "\u201C" + title + "\u201D and everything in it will be removed from the " +
      "server. This cannot be undone.";
    askFirst("Delete this conversation?", text, "Delete", async () => {
      const current = id === sessionId;
      if (current) {
        halted = "deleted";
        closeSocket();
      }
      try {
        await api("DELETE", "/api/conversations/" + encodeURIComponent(id));
      } catch (error) {
        if (error.status !== 404) {
          apiNote("The conversation could not be deleted.", error);
          if (current) reconnectNow();
          return;
        }
      }
      forgetConversation(id);
      if (current) startDraft();
      conversations = conversations.filter((c) => c.id !== id);
      renderList(searchEl.value.trim());
      listChanged();
    });
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
  // The panel lists the caller's facts (newest first, or those a search finds), adds one by
  // hand (POST /api/memories: whatever the model, a person can say what to remember), edits
  // one in place (PATCH) and deletes one (DELETE).

  let memoryTimer = null;

  // The line under the list: a plain note, or a problem with the server's words in "Details".
  function memoryNote(text, detail) {
    listLine($("memory-note"), text, detail);
  }

  function memoryProblem(what, error) {
    memoryNote(what + " " + explainApiError(error), (error && error.message) || String(error));
  }

  const memoryList = panelList("memory-list", "memories", "Memories could not be loaded.", memoryProblem);

  function loadMemories() {
    const q = $("memory-search").value.trim();
    return memoryList("/api/memories" + (q ? "?q=" + encodeURIComponent(q) : ""), (list, memories) => {
      list.replaceChildren(...memories.map(memoryItem));
      memoryNote(memories.length ? "" : q ? "No memory matches." : "Nothing remembered.");
    });
  }

  // One memory in the list: its text and age, Edit and Delete.
  function memoryItem(memory) {
    const item = el("li", "memory");
    const id = String(memory.id ?? "");
    item.dataset.id = id;
    const content = el("div", "content");
    const text = el("span", "text", String(memory.content ?? ""));
    content.append(text, el("span", "when", ago(memory.created_at)));
    const edit = button("edit", "Edit", "Edit this memory");
    const forget = button("forget", "Delete", "Delete this memory");
    const actions = el("div", "actions");
    actions.append(edit, forget);
    edit.addEventListener("click", () => editMemory(item, id, text));
    forget.addEventListener("click", async () => {
      forget.disabled = true;
      try {
        await api("DELETE", "/api/memories/" + encodeURIComponent(id));
      } catch (error) {
        if (error.status !== 404) {
          forget.disabled = false;
          memoryProblem("That memory could not be deleted.", error);
          return;
        }
      }
      item.remove();
      memoryNote($("memory-list").children.length === 0 ? "Nothing remembered." : "");
    });
    item.append(content, actions);
    return item;
  }

  // Edits a memory in place: Enter or Save keeps the change, Shift+Enter adds a line, Escape or
  // Cancel puts the text back. An empty text is not saved (Delete removes a memory).
  function editMemory(item, id, text) {
    const open = item.querySelector(".memory-editor");
    if (open) {
      open.querySelector("textarea").focus();
      return;
    }
    const editor = el("div", "memory-editor");
    const field = el("textarea");
    field.value = text.textContent;
    field.rows = Math.min(6, field.value.split("\n").length + 1);
    field.setAttribute("aria-label", "Edit this memory");
    const cancel = button("cancel", "Cancel");
    const save = button("primary save", "Save");
    const row = el("div", "buttons");
    row.append(cancel, save);
    editor.append(field, row);
    item.classList.add("editing");
    item.append(editor);
    field.focus();
    field.setSelectionRange(field.value.length, field.value.length);

    const close = () => {
      editor.remove();
      item.classList.remove("editing");
    };
    const busy = (on) => { field.disabled = save.disabled = cancel.disabled = on; };
    const commit = async () => {
      const wanted = field.value.trim();
      if (!wanted || save.disabled) return;
      if (wanted === text.textContent) {
        close();
        return;
      }
      busy(true);
      try {
        const changed = await api("PATCH", "/api/memories/" + encodeURIComponent(id), { content: wanted });
        text.textContent = String((changed && changed.content) ?? wanted);
        close();
        memoryNote("");
      } catch (error) {
        busy(false);
        field.focus();
        if (error.status === 409) {
          memoryNote("Another memory says exactly that already.", error.message);
        } else {
          memoryProblem("That memory could not be changed.", error);
        }
      }
    };
    field.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        commit();
      } else if (event.key === "Escape") {
        // Closes the editor only, not the panel.
        event.preventDefault();
        event.stopPropagation();
        close();
      }
    });
    cancel.addEventListener("click", close);
    save.addEventListener("click", commit);
  }

  // The Add box: the new memory joins the list (the search is cleared so that it shows).
  async function addMemory() {
    const field = $("memory-new"), add = $("memory-add-button");
    const content = field.value.trim();
    if (!content || add.disabled) return;
    add.disabled = true;
    try {
      await api("POST", "/api/memories", { content });
    } catch (error) {
      memoryProblem("That memory could not be added.", error);
      return;
    } finally {
      add.disabled = false;
    }
    field.value = "";
    $("memory-search").value = "";
    await loadMemories();
    field.focus();
  }

  $("memory-add").addEventListener("submit", (event) => {
    event.preventDefault();
    addMemory();
  });
  $("memory-new").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      addMemory();
    }
  });

  $("open-memories").addEventListener("click", () => {
    closeSidebar();
    updateHints();
    $("memories-box").hidden = false;
    $("memory-search").value = "";
    $("memory-new").focus();
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
    $("files-box").hidden = true;
    $("shares-box").hidden = true;
    $("account-box").hidden = true;
    $("users-box").hidden = true;
    $("tools-box").hidden = true;
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
    store.remove(KEY_CSRF);
    forgetAccount();
    closeSocket();
    setConn("needs-token", "needs a token");
    $("token-note").textContent = rejected
      ? "That token was not accepted. Enter the access token you were given."
      : "Enter the access token you were given. It is kept in this browser.";
    $("token-box").hidden = false;
    $("token").value = "";
    $("token").focus();
  }

  // In with a token or a sign-in: the list and the conversation come back.
  function admitted() {
    $("token-box").hidden = true;
    askedForToken = false;
    halted = null;
    refreshList();
    if (sessionId) openConversation(sessionId);
    else if (pendingText !== null) reconnectNow();
    else setConn("idle", "new chat");
  }

  // POST /api/login: the server sets its HttpOnly cookie (which the WebSocket and every API
  // request then carry) and answers the CSRF token that changes must send.
  $("signin-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const name = $("signin-name").value.trim();
    const password = $("signin-password").value;
    if (!name || !password) return;
    let response = null;
    try {
      response = await fetch("/api/login", {
        method: "POST", cache: "no-store",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ name, password }),
      });
    } catch (_) {
      $("signin-note").textContent = "The server cannot be reached.";
      return;
    }
    $("signin-password").value = "";
    if (response.status === 429) {
      $("signin-note").textContent = "Too many failed sign-ins. Wait a minute and try again.";
      return;
    }
    let data = null;
    try { data = await response.json(); } catch (_) { data = null; }
    if (!response.ok || !data || typeof data.csrf !== "string") {
      $("signin-note").textContent = "Wrong name or password.";
      return;
    }
    store.remove(KEY_TOKEN);
    store.set(KEY_CSRF, data.csrf);
    rememberAccount({ name: data.name, admin: data.admin, kind: "user" });
    admitted();
    updateControls();
    loadUsage();
  });

  $("sign-out").addEventListener("click", async () => {
    try { await api("POST", "/api/logout"); } catch (_) { /* signed out or not, forget it */ }
    store.remove(KEY_CSRF);
    forgetAccount();
    // Whoever signs in next on this browser starts on a new chat, not on this one.
    startDraft();
    conversations = [];
    listEl.replaceChildren();
    updateControls();
    // Ask the server again: it brings the form back.
    refreshList();
  });

  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const token = $("token").value.trim();
    if (!token) return;
    store.set(KEY_TOKEN, token);
    forgetAccount();
    loadMe();
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
    forgetAccount();
    loadMe();
    closeSocket();
    conversations = [];
    listEl.replaceChildren();
    updateControls();
    // Ask the server again: one that needs a token brings the form back.
    refreshList();
    if (sessionId) openConversation(sessionId);
  });

  // ---- the account ----
  // Who the page speaks for comes from the server: GET /api/me ({name, admin, kind}) on load and
  // whenever a token is entered or forgotten, and the answer of a sign-in (POST /api/login),
  // so that a user's API token brings their account as a sign-in does. For an account (kind
  // "user") the page shows the name, today's use (GET
  // /api/usage, on a server that counts it: one that answers 404 is not asked again),
  // "Account" with the person's API tokens (GET, POST and DELETE /api/tokens: a new secret is
  // shown once) and, for an admin, "Users" (GET, POST, PATCH and DELETE /api/users: counts and
  // limits, never anyone's content).

  let caller = null;         // GET /api/me's answer, or null before it and after a sign-out
  let meRequest = 0;
  let usageKnown = true;     // false once the server said it has no /api/usage (404)
  let usageTimer = null;
  let usageRequest = 0;      // bumped per fetch; an older answer is dropped

  // The account the page speaks for ({name, admin}), or null for a caller with none: the
  // local user, a configured token, or nobody yet.
  function account() {
    if (!caller || caller.kind !== "user") return null;
    return { name: String(caller.name ?? ""), admin: caller.admin === true };
  }

  // The caller: a sign-in's answer ({name, admin}: an account's) or GET /api/me's.
  function rememberAccount(data) {
    caller = { name: data.name ?? null, admin: data.admin === true, kind: String(data.kind ?? "user") };
    usageKnown = true;
    updateControls();
  }

  // GET /api/me: who the current token, cookie or neither stands for. A 401 brings the token
  // form (api does that); any other failure leaves the account unknown.
  async function loadMe() {
    const mine = ++meRequest;
    let data;
    try {
      data = await api("GET", "/api/me");
    } catch (_) {
      return;
    }
    if (mine !== meRequest || !data || typeof data !== "object") return;
    rememberAccount(data);
    loadUsage();
  }

  function forgetAccount() {
    caller = null;
    meRequest++;
    $("account-box").hidden = true;
    $("users-box").hidden = true;
    $("usage-today").hidden = true;
  }

  function showAccount() {
    const me = account();
    $("account-line").hidden = me === null;
    $("open-account").hidden = me === null;
    $("open-users").hidden = !(me && me.admin);
    $("account-name").textContent = me === null ? "" : me.name ? "Signed in as " + me.name : "Signed in";
    $("account-user").textContent = me ? me.name || "your account" : "";
    $("account-admin").hidden = !(me && me.admin);
  }

  function plural(n, word) {
    return formatCount(n) + " " + word + (n === 1 ? "" : "s");
  }

  // " (of 100)" for a limit, nothing for none (null).
  function ofLimit(limit) {
    return typeof limit === "number" ? " (of " + formatCount(limit) + ")" : "";
  }

  // "Today: 3 turns, 1,234 tokens (of 50,000)", from GET /api/usage.
  function usageText(data) {
    if (!data || typeof data !== "object") return "";
    const turns = Number(data.turns) || 0, tokens = Number(data.tokens) || 0;
    return "Today: " + plural(turns, "turn") + ofLimit(data.daily_turns) + ", " +
      plural(tokens, "token") + ofLimit(data.daily_tokens);
  }

  // Today's use changed (a turn ended): fetch it again, soon.
  function usageChanged() {
    if (usageTimer === null) usageTimer = setTimeout(loadUsage, 200);
  }

  async function loadUsage() {
    clearTimeout(usageTimer);
    usageTimer = null;
    const line = $("usage-today"), full = $("account-usage");
    if (account() === null || !usageKnown) {
      line.hidden = full.hidden = true;
      return;
    }
    const mine = ++usageRequest;
    let data;
    try {
      data = await api("GET", "/api/usage");
    } catch (error) {
      if (mine !== usageRequest) return;
      if (error.status === 404) usageKnown = false;
      line.hidden = full.hidden = true;
      return;
    }
    if (mine !== usageRequest) return;
    const text = usageText(data);
    const over = data && ((typeof data.daily_turns === "number" && Number(data.turns) >= data.daily_turns) ||
      (typeof data.daily_tokens === "number" && Number(data.tokens) >= data.daily_tokens));
    for (const node of [line, full]) {
      node.textContent = text;
      node.hidden = text === "";
      node.classList.toggle("over", Boolean(over));
    }
  }

  // A live turn ended: the list and today's use change.
  function turnEnded() {
    listChanged();
    usageChanged();
  }

  // A secret shown once: in its box, selected, with a Copy button beside it.
  function showSecret(box, field, value) {
    field.value = value;
    box.hidden = false;
    field.focus();
    field.select();
  }

  function copyField(field, copy) {
    field.select();
    copyText(field.value).then((ok) => {
      copy.textContent = ok ? "Copied" : "Copy";
      setTimeout(() => { copy.textContent = "Copy"; }, 1500);
    });
  }

  // ---- API tokens ----

  function tokenProblem(what, error) {
    listLine($("apitoken-note"), what + " " + explainApiError(error), (error && error.message) || String(error));
  }

  const tokenList = panelList("apitoken-list", "tokens", "The tokens could not be loaded.", tokenProblem);

  function loadTokens() {
    return tokenList("/api/tokens", (list, tokens) => {
      list.replaceChildren(...tokens.map(tokenItem));
      listLine($("apitoken-note"), tokens.length ? "" : "No API tokens yet.");
    });
  }

  // One token: its name, when it was made and last used, and Revoke (asked first).
  function tokenItem(token) {
    const id = String(token.id ?? "");
    const name = String(token.name ?? "") || "Unnamed";
    const item = el("li", "entry apitoken");
    item.dataset.id = id;
    const content = el("div", "content");
    const used = token.last_used ? "last used " + ago(token.last_used) : "never used";
    content.append(el("span", "name", name), el("span", "meta", "made " + ago(token.created_at) + " · " + used));
    const revoke = button("danger revoke", "Revoke", "Revoke the token " + name);
    revoke.addEventListener("click", () => {
      askFirst("Revoke this token?", "\u201C" + name + "\u201D stops working at once, for " +
        "whatever uses it. This cannot be undone.", "Revoke", async () => {
        revoke.disabled = true;
        try {
          await api("DELETE", "/api/tokens/" + encodeURIComponent(id));
        } catch (error) {
          if (error.status !== 404) {
            revoke.disabled = false;
            tokenProblem("That token could not be revoked.", error);
            return;
          }
        }
        item.remove();
        if ($("apitoken-list").children.length === 0) listLine($("apitoken-note"), "No API tokens yet.");
      });
    });
    const actions = el("div", "actions");
    actions.append(revoke);
    item.append(content, actions);
    return item;
  }

  $("apitoken-add").addEventListener("submit", async (event) => {
    event.preventDefault();
    const field = $("apitoken-name"), create = $("apitoken-create");
    const name = field.value.trim();
    if (!name || create.disabled) return;
    create.disabled = true;
    let made;
    try {
      made = await api("POST", "/api/tokens", { name });
    } catch (error) {
      tokenProblem("The token could not be made.", error);
      return;
    } finally {
      create.disabled = false;
    }
    field.value = "";
    showSecret($("apitoken-new"), $("apitoken-secret"), String((made && made.token) ?? ""));
    loadTokens();
  });
  $("apitoken-copy").addEventListener("click", () => copyField($("apitoken-secret"), $("apitoken-copy")));

  $("open-account").addEventListener("click", () => {
    closeSidebar();
    showAccount();
    $("apitoken-new").hidden = true;
    $("apitoken-secret").value = "";
    $("account-box").hidden = false;
    $("apitoken-name").focus();
    loadTokens();
    loadUsage();
  });
  $("account-close").addEventListener("click", () => {
    $("account-box").hidden = true;
    $("apitoken-secret").value = "";
  });

  // ---- users (an admin's) ----

  function userProblem(what, error) {
    const why = error && error.status === 403 ? "Only an admin manages accounts." : explainApiError(error);
    listLine($("user-note"), what + " " + why, (error && error.message) || String(error));
  }

  // "100 turns" for a limit, "unlimited turns" for none.
  function limitText(limit, unit) {
    return typeof limit === "number" ? plural(limit, unit) : "unlimited " + unit + "s";
  }

  const userList = panelList("user-list", "users", "The users could not be loaded.", userProblem);

  function loadUsers() {
    return userList("/api/users", showUsers);
  }

  function showUsers(list, users, data) {
    // Limits are offered by a server that says what its defaults are.
    const defaults = data && data.defaults && typeof data.defaults === "object" ? data.defaults : null;
    const line = $("users-defaults");
    line.hidden = defaults === null;
    line.textContent = defaults === null ? "" : "Daily limits unless set for a user: " +
      limitText(defaults.daily_turns, "turn") + ", " + limitText(defaults.daily_tokens, "token") + ".";
    list.replaceChildren(...users.map((user) => userItem(user, defaults)));
    listLine($("user-note"), users.length ? "" : "No accounts yet.");
  }

  // One account: its name, what it has and used (never its content), its limits when the
  // server has them, and Remove (asked first; not for the admin's own account).
  function userItem(user, defaults) {
    const name = String(user.name ?? "");
    const me = account();
    const item = el("li", "entry user");
    item.dataset.name = name;
    const content = el("div", "content");
    const head = el("span", "name", name);
    if (user.admin === true) head.append(el("span", "badge", "admin"));
    if (me && me.name === name) head.append(el("span", "badge", "you"));
    const facts = [];
    if (user.conversations != null) facts.push(plural(Number(user.conversations) || 0, "conversation"));
    facts.push(plural(Number(user.tokens) || 0, "API token") +
      (user.token_last_used ? ", last used " + ago(user.token_last_used) : ""));
    if (user.tokens_used != null) facts.push(plural(Number(user.tokens_used) || 0, "model token") + " in all");
    if (user.created_at) facts.push("added " + ago(user.created_at));
    content.append(head, el("span", "meta facts", facts.join(" · ")));
    if (user.today && typeof user.today === "object") {
      // A limit of null is the server's default.
      const limit = (key) => typeof user[key] === "number" ? user[key] : defaults && defaults[key];
      const today = "Today: " + plural(Number(user.today.turns) || 0, "turn") + ofLimit(limit("daily_turns")) +
        ", " + plural(Number(user.today.tokens) || 0, "token") + ofLimit(limit("daily_tokens"));
      content.append(el("span", "meta today", today));
    }
    if (defaults !== null) content.append(limitsForm(name, user, defaults));
    item.append(content);
    if (!(me && me.name === name)) {
      const remove = button("danger remove", "Remove", "Remove the account " + name);
      remove.addEventListener("click", () => askRemoveUser(name, remove));
      const actions = el("div", "actions");
      actions.append(remove);
      item.append(actions);
    }
    return item;
  }

  // The daily limits of one account: a number, or empty for the server's default.
  function limitsForm(name, user, defaults) {
    const form = el("form", "limits");
    form.autocomplete = "off";
    const fields = {};
    for (const [key, label, unit] of [["daily_turns", "Daily turns", "turn"], ["daily_tokens", "Daily tokens", "token"]]) {
      const wrap = el("label", "limit", label + " ");
      const field = el("input");
      field.type = "number";
      field.min = "0";
      field.step = "1";
      field.name = key;
      field.placeholder = "default (" + (typeof defaults[key] === "number" ? formatCount(defaults[key]) : "none") + ")";
      field.title = "Empty: the server's default, " + limitText(defaults[key], unit) + " a day";
      field.value = typeof user[key] === "number" ? String(user[key]) : "";
      wrap.append(field);
      form.append(wrap);
      fields[key] = field;
    }
    const save = el("button", "save", "Set limits");
    save.type = "submit";
    form.append(save);
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const limits = {};
      for (const [key, field] of Object.entries(fields)) {
        const text = field.value.trim();
        const value = Number(text);
        if (text !== "" && !(Number.isInteger(value) && value >= 0)) {
          listLine($("user-note"), "A limit is a whole number (or empty, for the default).");
          field.focus();
          return;
        }
        limits[key] = text === "" ? null : value;
      }
      save.disabled = true;
      try {
        await api("PATCH", "/api/users/" + encodeURIComponent(name), limits);
      } catch (error) {
        save.disabled = false;
        userProblem("The limits of " + name + " could not be set.", error);
        return;
      }
      await loadUsers();
      listLine($("user-note"), "The limits of " + name + " are set.");
    });
    return form;
  }

  function askRemoveUser(name, remove) {
    askFirst("Remove " + name + "?", "The account " + name + ", its sign-ins and its API tokens " +
      "stop working at once, connections already open included. This cannot be undone.", "Remove", async () => {
      remove.disabled = true;
      try {
        await api("DELETE", "/api/users/" + encodeURIComponent(name));
      } catch (error) {
        if (error.status !== 404) {
          remove.disabled = false;
          userProblem(name + " could not be removed.", error);
          return;
        }
      }
      await loadUsers();
      listLine($("user-note"), name + " was removed.");
    });
  }

  $("user-add").addEventListener("submit", async (event) => {
    event.preventDefault();
    const nameField = $("user-new-name"), passwordField = $("user-new-password");
    const add = $("user-add-button");
    const name = nameField.value.trim();
    if (!name || add.disabled) return;
    const body = { name, admin: $("user-new-admin").checked };
    if (passwordField.value) body.password = passwordField.value;
    add.disabled = true;
    let made;
    try {
      made = await api("POST", "/api/users", body);
    } catch (error) {
      if (error.status === 409) {
        listLine($("user-note"), "There is already a user named " + name + ".", error.message);
      } else if (error.status === 400) {
        listLine($("user-note"), "The server refused that account: " + error.message);
      } else {
        userProblem("The account could not be added.", error);
      }
      return;
    } finally {
      add.disabled = false;
    }
    nameField.value = "";
    passwordField.value = "";
    $("user-new-admin").checked = false;
    const password = made && typeof made.password === "string" ? made.password : "";
    $("user-made").hidden = true;
    await loadUsers();
    if (password) {
      $("user-made-text").textContent = "The password of " + name + ": give it to them now, it " +
        "will not be shown again.";
      showSecret($("user-made"), $("user-made-password"), password);
    } else {
      listLine($("user-note"), name + " was added, with the password you typed.");
    }
  });
  $("user-made-copy").addEventListener("click", () => copyField($("user-made-password"), $("user-made-copy")));

  $("open-users").addEventListener("click", () => {
    closeSidebar();
    $("user-made").hidden = true;
    $("user-made-password").value = "";
    $("users-box").hidden = false;
    $("user-new-name").focus();
    loadUsers();
  });
  $("users-close").addEventListener("click", () => {
    $("users-box").hidden = true;
    $("user-made-password").value = "";
  });

  // ---- tools: MCP servers and their sign-ins ----
  // GET /api/mcp lists each server's state; one that needs a sign-in gets Connect for whoever
  // may manage tools (`can_connect`): POST /api/mcp/{name}/connect answers the authorization
  // URL, opened in a tab made on the click (so that no popup blocker stops it); the server's
  // callback finishes there, and the list is looked at again every two seconds while open.

  let toolTimer = null;

  const TOOL_STATES = {
    up: "running",
    starting: "starting",
    needs_sign_in: "needs a sign-in",
  };

  const toolList = panelList("tool-server-list", "servers", "The tools could not be loaded.",
    (what, error) => listLine($("tool-server-note"), what + " " + explainApiError(error),
      (error && error.message) || String(error)));

  function loadToolServers() {
    return toolList("/api/mcp", (list, servers, data) => {
      const canConnect = data && data.can_connect === true;
      list.replaceChildren(...servers.map((server) => toolServerItem(server, canConnect)));
      listLine($("tool-server-note"), servers.length ? "" : "This server uses no MCP servers.");
    });
  }

  function toolServerItem(server, canConnect) {
    const name = String(server.name ?? "");
    const item = el("li", "entry tool-server");
    item.dataset.name = name;
    const content = el("div", "content");
    content.append(el("span", "name", name));
    let state = TOOL_STATES[server.state] || String(server.state ?? "");
    if (server.auth === "signed_in") state += ", signed in";
    if (server.reason) state += " (" + String(server.reason) + ")";
    content.append(el("span", "meta", state));
    item.append(content);
    if (server.auth === "needs_sign_in" && canConnect) {
      const connect = el("button", "primary", "Connect");
      connect.type = "button";
      connect.addEventListener("click", () => connectToolServer(name, connect));
      item.append(connect);
    }
    return item;
  }

  async function connectToolServer(name, button) {
    const tab = window.open("", "_blank");
    button.disabled = true;
    try {
      const data = await api("POST", "/api/mcp/" + encodeURIComponent(name) + "/connect");
      const url = String((data && data.authorize_url) || "");
      // Only a web address is opened: never a script the metadata might name.
      if (!/^https?:\/\//i.test(url)) throw new ApiError(502, "the sign-in address is not a web address");
      if (tab) tab.location.href = url;
      else window.location.href = url;
    } catch (error) {
      if (tab) tab.close();
      const why = error && error.status === 403 ? "Only an admin manages tools." : explainApiError(error);
      listLine($("tool-server-note"), "The sign-in could not start. " + why,
        (error && error.message) || String(error));
    } finally {
      button.disabled = false;
    }
  }

  $("open-tools").addEventListener("click", () => {
    closeSidebar();
    $("tools-box").hidden = false;
    loadToolServers();
    clearInterval(toolTimer);
    toolTimer = setInterval(() => {
      if ($("tools-box").hidden) { clearInterval(toolTimer); return; }
      loadToolServers();
    }, 2000);
  });
  $("tools-close").addEventListener("click", () => {
    $("tools-box").hidden = true;
    clearInterval(toolTimer);
  });

  // ---- files in the conversation ----

  function fileUrl(id) {
    return "/api/files/" + encodeURIComponent(id);
  }

  // The well-formed entries of a frame's `attachments` ({id, name, content_type, size}).
  function attachmentsOf(data) {
    const list = Array.isArray(data.attachments) ? data.attachments : [];
    return list
      .filter((file) => file && typeof file === "object" && typeof file.id === "string" && file.id)
      .map((file) => ({
        id: file.id,
        name: String(file.name ?? "") || "file",
        content_type: String(file.content_type ?? ""),
        size: Number(file.size) || 0,
      }));
  }

  // A file's badge: its extension (PDF, TXT, …), or FILE.
  function kindOf(name) {
    const extension = /\.([A-Za-z0-9]{1,4})$/.exec(name);
    return extension ? extension[1].toUpperCase() : "FILE";
  }

  // A file's bytes, fetched with the page's credentials (an <img> or a link cannot send them).
  async function fetchFile(id) {
    const token = store.get(KEY_TOKEN);
    const headers = {};
    if (token) headers.Authorization = "Bearer " + token;
    let response;
    try {
      response = await fetch(fileUrl(id), { headers });
    } catch (_) {
      throw new ApiError(0, "the server cannot be reached");
    }
    if (response.status === 401) {
      if ((token || null) === store.get(KEY_TOKEN)) onUnauthorized();
      throw new ApiError(401, "a token is required");
    }
    if (!response.ok) throw new ApiError(response.status, response.statusText);
    return response.blob();
  }

  // A blob: URL of an image file, fetched once per view. The blob takes the checked image type
  // whatever the server's answer said, so it can only ever be shown as an image.
  function imageUrl(file) {
    let url = fileBlobs.get(file.id);
    if (!url) {
      url = fetchFile(file.id).then((blob) => URL.createObjectURL(new Blob([blob], { type: file.content_type })));
      url.catch(() => fileBlobs.delete(file.id));
      fileBlobs.set(file.id, url);
    }
    return url;
  }

  function forgetFileBlobs() {
    for (const url of fileBlobs.values()) url.then((u) => URL.revokeObjectURL(u), () => {});
    fileBlobs.clear();
  }

  // Saves a file: its bytes as application/octet-stream, under its name. The blob is never
  // opened as a page, whatever the file holds.
  async function downloadFile(file, node) {
    let blob;
    try {
      blob = await fetchFile(file.id);
    } catch (error) {
      if (error.status === 404) markFileGone(file.id);
      else if (node) addDetail(node, "download: " + (error.message || String(error)));
      return;
    }
    const url = URL.createObjectURL(new Blob([blob], { type: "application/octet-stream" }));
    const link = el("a");
    link.href = url;
    link.download = file.name;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
  }

  // A link that downloads `file` (its href names the file; a click fetches it with the
  // page's credentials).
  function downloadLink(file) {
    const link = el("a", "download", "Download");
    link.href = fileUrl(file.id);
    link.download = file.name;
    link.title = "Download " + file.name;
    link.addEventListener("click", (event) => {
      event.preventDefault();
      downloadFile(file, link.closest(".file"));
    });
    return link;
  }

  // One file of a turn: a thumbnail for an image of a checked type, else a chip; each with its
  // name, size and a download link.
  function attachmentItem(file) {
    const image = INLINE_IMAGES.has(file.content_type);
    const item = el("div", "file " + (image ? "file-image" : "file-chip"));
    item.dataset.fileId = file.id;
    item.title = file.name + " (" + (file.content_type || "unknown type") + ", " + formatBytes(file.size) + ")";
    if (image) {
      const img = el("img");
      img.alt = file.name;
      img.addEventListener("click", () => item.classList.toggle("large"));
      imageUrl(file).then((url) => { img.src = url; }, (error) => {
        if (error.status === 404) markFileGone(file.id);
        else item.classList.add("broken");
      });
      item.append(img);
    } else {
      item.append(el("span", "icon", kindOf(file.name)));
    }
    const caption = el("span", "caption");
    caption.append(el("span", "name", file.name), el("span", "size", formatBytes(file.size)), downloadLink(file));
    item.append(caption);
    return item;
  }

  // A file deleted from the server: every place that shows it says so.
  function markFileGone(id) {
    for (const item of document.querySelectorAll(".file[data-file-id]")) {
      if (item.dataset.fileId !== id || item.classList.contains("gone")) continue;
      item.classList.add("gone");
      const img = item.querySelector("img");
      if (img) img.remove();
      const link = item.querySelector(".download");
      if (link) link.replaceWith(el("span", "deleted", "deleted"));
    }
  }

  // ---- files: uploads from the composer ----

  function uploading() {
    return uploads.some((upload) => !upload.meta && !upload.error);
  }

  function uploadedFiles() {
    return uploads.filter((upload) => upload.meta).map((upload) => upload.meta);
  }

  // A pasted image may come without a name.
  function nameOf(file) {
    if (file.name) return file.name;
    const extension = /^image\/(png|jpeg|gif|webp)$/.exec(file.type || "");
    return "pasted" + (extension ? "." + extension[1].replace("jpeg", "jpg") : "");
  }

  // Files chosen, dropped or pasted: each gets its chip and starts uploading at once; past
  // MAX_ATTACHMENTS a chip says so instead.
  function addFiles(files) {
    for (const file of Array.from(files || [])) {
      if (!(file instanceof Blob)) continue;
      const upload = {
        file, name: nameOf(file), size: file.size, el: null, bar: null, why: null, xhr: null,
        meta: null, error: null, removed: false,
      };
      const counted = uploads.filter((other) => !other.error).length;
      uploadChip(upload);
      uploads.push(upload);
      if (counted >= MAX_ATTACHMENTS) {
        failUpload(upload, "A message carries at most " + MAX_ATTACHMENTS + " files.");
      } else {
        startUpload(upload);
      }
    }
    showUploads();
  }

  function uploadChip(upload) {
    const chip = el("div", "file-chip upload");
    chip.dataset.state = "uploading";
    chip.title = upload.name;
    const bar = el("progress");
    bar.max = 100;
    bar.value = 0;
    const why = el("span", "why");
    why.hidden = true;
    const remove = button("remove", "\u2715", "Remove " + upload.name);
    remove.addEventListener("click", () => removeUpload(upload));
    chip.append(el("span", "icon", kindOf(upload.name)), el("span", "name", upload.name),
      el("span", "size", formatBytes(upload.size)), bar, why, remove);
    upload.el = chip;
    upload.bar = bar;
    upload.why = why;
    attachmentsEl.append(chip);
  }

  // POST /api/files?name=…: the raw bytes, with the file's type; the bar follows the upload.
  function startUpload(upload) {
    const token = store.get(KEY_TOKEN);
    const xhr = new XMLHttpRequest();
    upload.xhr = xhr;
    xhr.open("POST", "/api/files?name=" + encodeURIComponent(upload.name));
    if (token) xhr.setRequestHeader("Authorization", "Bearer " + token);
    const csrf = store.get(KEY_CSRF);
    if (csrf) xhr.setRequestHeader("X-Sparky-CSRF", csrf);
    xhr.setRequestHeader("Content-Type", upload.file.type || "application/octet-stream");
    xhr.upload.onprogress = (event) => {
      // The last percent waits for the server's answer: only then is the file stored.
      if (event.lengthComputable && event.total > 0) upload.bar.value = Math.min(99, (100 * event.loaded) / event.total);
    };
    xhr.onload = () => {
      upload.xhr = null;
      if (upload.removed) return;
      if (xhr.status === 201 || xhr.status === 200) {
        let stored = null;
        try { stored = JSON.parse(xhr.responseText); } catch (_) { stored = null; }
        const files = stored ? attachmentsOf({ attachments: [stored] }) : [];
        if (files.length === 1) finishUpload(upload, files[0]);
        else failUpload(upload, "The server's answer could not be read.", xhr.responseText.slice(0, 300));
        return;
      }
      if (xhr.status === 401 && (token || null) === store.get(KEY_TOKEN)) onUnauthorized();
      failUpload(upload, explainUpload(xhr.status), serverWords(xhr));
    };
    xhr.onerror = () => {
      upload.xhr = null;
      if (upload.removed) return;
      failUpload(upload, "The upload failed: the server cannot be reached, or it stopped the " +
        "upload (a file larger than it accepts).");
    };
    xhr.send(upload.file);
  }

  // What an upload's refusal means, by its HTTP status.
  function explainUpload(status) {
    if (status === 413) return "This file is larger than the server accepts.";
    if (status === 507) return "Your storage on this server is full: delete files you no longer need (Files), then try again.";
    if (status === 401) return "A token is required.";
    if (status === 400 || status === 415) return "The server refused this file.";
    return explainApiError({ status });
  }

  // The server's own words about a refused upload: its JSON `error`, or its text.
  function serverWords(xhr) {
    const text = String(xhr.responseText || "");
    let words = text;
    try {
      const body = JSON.parse(text);
      if (body && typeof body.error === "string") words = body.error;
    } catch (_) { /* plain text */ }
    words = words.trim().slice(0, 300);
    return words ? xhr.status + ": " + words : String(xhr.status);
  }

  function finishUpload(upload, meta) {
    upload.meta = meta;
    upload.bar.value = 100;
    upload.el.dataset.state = "done";
    upload.el.dataset.fileId = meta.id;
    upload.el.title = meta.name + " (" + (meta.content_type || "unknown type") + ", " + formatBytes(meta.size) + ")";
    upload.el.querySelector(".name").textContent = meta.name;
    upload.el.querySelector(".size").textContent = formatBytes(meta.size);
    showUploads();
  }

  function failUpload(upload, text, detail) {
    upload.error = text;
    upload.el.dataset.state = "error";
    upload.el.classList.add("error");
    upload.bar.hidden = true;
    upload.why.hidden = false;
    upload.why.textContent = text;
    if (detail) addDetail(upload.why, detail);
    showUploads();
  }

  function removeUpload(upload) {
    upload.removed = true;
    if (upload.xhr) upload.xhr.abort();
    upload.el.remove();
    const at = uploads.indexOf(upload);
    if (at >= 0) uploads.splice(at, 1);
    showUploads();
  }

  // Takes every chip away (the message went): uploads still running are stopped.
  function clearUploads() {
    for (const upload of uploads.slice()) removeUpload(upload);
  }

  // A refused message's files come back as uploaded chips.
  function restoreFiles(files) {
    for (const meta of files || []) {
      const upload = {
        file: null, name: meta.name, size: meta.size, el: null, bar: null, why: null, xhr: null,
        meta: null, error: null, removed: false,
      };
      uploadChip(upload);
      uploads.push(upload);
      finishUpload(upload, meta);
    }
    showUploads();
  }

  function showUploads() {
    attachmentsEl.hidden = uploads.length === 0;
    updateControls();
  }

  $("attach").addEventListener("click", () => fileInput.click());
  fileInput.addEventListener("change", () => {
    addFiles(fileInput.files);
    fileInput.value = "";
    input.focus();
  });

  // Files dragged over the chat: it says it takes them; dropped, they are attached. A file
  // dropped anywhere else on the page is not opened in its place.
  let dragDepth = 0;
  const carriesFiles = (event) =>
    Boolean(event.dataTransfer) && Array.from(event.dataTransfer.types || []).includes("Files");
  mainEl.addEventListener("dragenter", (event) => {
    if (!carriesFiles(event)) return;
    event.preventDefault();
    dragDepth++;
    mainEl.classList.add("dropping");
  });
  mainEl.addEventListener("dragover", (event) => {
    if (!carriesFiles(event)) return;
    event.preventDefault();
    event.dataTransfer.dropEffect = "copy";
  });
  mainEl.addEventListener("dragleave", (event) => {
    if (!carriesFiles(event)) return;
    dragDepth = Math.max(0, dragDepth - 1);
    if (dragDepth === 0) mainEl.classList.remove("dropping");
  });
  mainEl.addEventListener("drop", (event) => {
    if (!carriesFiles(event)) return;
    event.preventDefault();
    dragDepth = 0;
    mainEl.classList.remove("dropping");
    addFiles(event.dataTransfer.files);
    input.focus();
  });
  for (const type of ["dragover", "drop"]) {
    window.addEventListener(type, (event) => { if (carriesFiles(event)) event.preventDefault(); });
  }

  // Pasting an image (a screenshot) attaches it; text pasted with it still goes in the box.
  input.addEventListener("paste", (event) => {
    const items = event.clipboardData ? Array.from(event.clipboardData.items || []) : [];
    const files = items.filter((item) => item.kind === "file").map((item) => item.getAsFile()).filter(Boolean);
    if (files.length === 0) return;
    if (!items.some((item) => item.kind === "string" && item.type === "text/plain")) event.preventDefault();
    addFiles(files);
  });

  // ---- the files panel ----
  // The open conversation's files (its messages' attachments and its tools' results), or all
  // of the caller's: each to download or delete (DELETE /api/files/{id}).

  // A panel's list, asked for again whenever the panel opens or changes: `load(path, show)`
  // GETs `path`, and unless a later load of the same list began meanwhile (then this answer
  // is stale and dropped), hands `show` the list element, the answer's array `key` ([] when
  // it has none) and the whole answer; a failure empties the list and says `failed` through
  // `problem(failed, error)`.
  function panelList(listId, key, failed, problem) {
    let latest = 0;
    return async function load(path, show) {
      const mine = ++latest;
      const list = $(listId);
      let data;
      try {
        data = await api("GET", path);
      } catch (error) {
        if (mine !== latest) return;
        list.replaceChildren();
        problem(failed, error);
        return;
      }
      if (mine !== latest) return;
      show(list, Array.isArray(data && data[key]) ? data[key] : [], data);
    };
  }

  // A list's line under it: a plain note, or a problem with the server's words in "Details".
  function listLine(line, text, detail) {
    line.replaceChildren();
    line.classList.toggle("error", Boolean(detail));
    if (text) line.append(el("span", "text", text));
    addDetail(line, detail);
  }

  function fileProblem(what, error) {
    listLine($("file-note"), what + " " + explainApiError(error), (error && error.message) || String(error));
  }

  function filesShowAll() {
    return sessionId === null || $("files-all").checked;
  }

  const fileList = panelList("file-list", "files", "Files could not be loaded.", fileProblem);

  function loadFiles() {
    const all = filesShowAll();
    return fileList("/api/files" + (all ? "" : "?conversation=" + encodeURIComponent(sessionId)), (list, files) => {
      list.replaceChildren(...files.filter((f) => f && typeof f.id === "string").map(fileEntry));
      listLine($("file-note"), files.length ? "" : all ? "You have no files on this server." : "No files in this conversation yet.");
    });
  }

  // One file in the panel: its name, type, size and age; Download and Delete.
  function fileEntry(entry) {
    const file = attachmentsOf({ attachments: [entry] })[0];
    const item = el("li", "file file-entry");
    item.dataset.fileId = file.id;
    const content = el("div", "content");
    content.append(el("span", "name", file.name),
      el("span", "when", [file.content_type || "unknown type", formatBytes(file.size), ago(entry.created_at)]
        .filter(Boolean).join(" \u00B7 ")));
    const actions = el("div", "actions");
    const save = button("save", "Download", "Download " + file.name);
    save.addEventListener("click", () => downloadFile(file, item));
    const forget = button("forget", "Delete", "Delete " + file.name);
    forget.addEventListener("click", async () => {
      forget.disabled = true;
      try {
        await api("DELETE", fileUrl(file.id));
      } catch (error) {
        if (error.status !== 404) {
          forget.disabled = false;
          fileProblem("That file could not be deleted.", error);
          return;
        }
      }
      item.remove();
      markFileGone(file.id);
      if ($("file-list").children.length === 0) loadFiles();
    });
    actions.append(save, forget);
    item.append(content, actions);
    return item;
  }

  $("open-files").addEventListener("click", () => {
    closeSidebar();
    $("files-all").checked = sessionId === null;
    $("files-all").disabled = sessionId === null;
    $("files-box").hidden = false;
    $("files-close").focus();
    loadFiles();
  });
  $("files-close").addEventListener("click", () => { $("files-box").hidden = true; });
  $("files-all").addEventListener("change", loadFiles);

  // ---- share links ----
  // "Share" makes a read-only link to the conversation as it is now (POST
  // /api/conversations/{id}/share) and shows it, copied when the browser lets the page; the
  // "Shares" box lists the person's links, each with Revoke (DELETE /api/shares/{id}).

  function shareAddress(url) {
    return new URL(url, location.href).href;
  }

  async function loadShares() {
    const list = $("share-list");
    const noteEl = $("share-note");
    noteEl.textContent = "Loading...";
    let data;
    try {
      data = await api("GET", "/api/shares");
    } catch (error) {
      noteEl.textContent = "The links could not be loaded: " + explainApiError(error);
      return;
    }
    list.replaceChildren(...data.shares.map(shareItem));
    noteEl.textContent = data.shares.length ? "" : "No share links yet.";
  }

  function shareItem(share) {
    const item = el("li", "share");
    item.dataset.shareId = share.share_id;
    const content = el("div", "content");
    const link = el("a", "share-link", share.title || "Untitled");
    link.href = shareAddress(share.url);
    link.target = "_blank";
    link.rel = "noopener noreferrer";
    content.append(link, el("div", "meta", new Date(share.created_at).toLocaleString()));
    const revoke = el("button", "danger revoke", "Revoke");
    revoke.type = "button";
    revoke.addEventListener("click", async () => {
      revoke.disabled = true;
      try {
        await api("DELETE", "/api/shares/" + encodeURIComponent(share.share_id));
      } catch (error) {
        if (error.status !== 404) {
          revoke.disabled = false;
          $("share-note").textContent = "That link could not be revoked: " + explainApiError(error);
          return;
        }
      }
      item.remove();
      if ($("share-url").value === link.href) $("share-new").hidden = true;
      if ($("share-list").children.length === 0) $("share-note").textContent = "No share links yet.";
    });
    item.append(content, revoke);
    return item;
  }

  function openShares() {
    closeSidebar();
    $("shares-box").hidden = false;
    $("shares-close").focus();
    loadShares();
  }

  $("share-chat").addEventListener("click", async () => {
    if (sessionId === null) return;
    let made;
    try {
      made = await api("POST", "/api/conversations/" + encodeURIComponent(sessionId) + "/share");
    } catch (error) {
      apiNote("The conversation could not be shared.", error);
      return;
    }
    const address = shareAddress(made.url);
    $("share-url").value = address;
    $("share-new").hidden = false;
    openShares();
    $("share-url").select();
    try { await navigator.clipboard.writeText(address); } catch (_) { /* shown, to copy by hand */ }
  });
  $("share-copy").addEventListener("click", async () => {
    $("share-url").select();
    try { await navigator.clipboard.writeText($("share-url").value); } catch (_) { /* selected */ }
  });
  $("open-shares").addEventListener("click", () => {
    $("share-new").hidden = true;
    openShares();
  });
  $("shares-close").addEventListener("click", () => { $("shares-box").hidden = true; });

  // ---- export ----

  async function allEvents(id) {
    let events = [];
    let before = null;
    for (;;) {
      const path = "/api/conversations/" + encodeURIComponent(id) + "/events?limit=" + EXPORT_PAGE +
        (before !== null ? "&before_seq=" + before : "");
      const page = (await api("GET", path)).events || [];
      events = page.concat(events);
      // A page of large events holds fewer than asked: only an empty one, or the first
      // event, ends the conversation.
      if (page.length === 0 || page[0].seq <= 1) return events;
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

  // A readable transcript of the current path (the JSON export keeps every branch).
  function toMarkdown(meta, events) {
    const lines = ["# " + meta.title, ""];
    lines.push("Exported from Sparky on " + new Date().toISOString() + " (conversation `" + meta.id + "`).");
    if (meta.persona) lines.push("", "Persona: " + meta.persona.name + ": " + meta.persona.text);
    let total = 0;
    const results = new Map();
    for (const event of events) {
      if (event.type === "tool_result") results.set(String(event.data.call_id), event.data);
    }
    const onPath = new Set(path);
    for (const event of events) {
      const data = event.data || {};
      if (Number.isInteger(data.turn_id) && !onPath.has(data.turn_id)) continue; // another branch
      switch (event.type) {
        case "user_message":
          lines.push("", "## You", "", String(data.text ?? ""));
          for (const file of attachmentsOf(data)) {
            lines.push("", "*Attached: " + file.name + " (" + formatBytes(file.size) + ", `" + file.id + "`)*");
          }
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
          // The answer the model had streamed before the turn failed is kept, then the error.
          if (data.text) lines.push("", "## Sparky", "", String(data.text));
          lines.push("", "*Error (" + String(data.code ?? "") + "): " + String(data.message ?? "") + "*");
          break;
        case "status":
          if (data.code === "cancelled") {
            if (data.text) lines.push("", "## Sparky", "", String(data.text));
            lines.push("", "*Stopped.*");
          }
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
      apiNote("The conversation could not be exported.", error);
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

  // The server's own export: every branch of the conversation, which Import reads back.
  async function exportWhole() {
    exportMenu.open = false;
    const id = sessionId;
    if (!id) return;
    const headers = {};
    const token = store.get(KEY_TOKEN);
    if (token) headers.Authorization = "Bearer " + token;
    let text;
    try {
      const response = await fetch("/api/conversations/" + encodeURIComponent(id) + "/export",
        { headers, cache: "no-store" });
      text = await response.text();
      if (!response.ok) {
        let message = response.statusText;
        try { message = JSON.parse(text).error || message; } catch (_) { /* not JSON */ }
        throw new ApiError(response.status, message);
      }
    } catch (error) {
      apiNote("The conversation could not be exported.", error instanceof ApiError ? error : new ApiError(0, "the server cannot be reached"));
      return;
    }
    const known = conversations.find((c) => c.id === id);
    const title = (known && known.title) || titleEl.textContent || "Conversation";
    download(fileName(title, "json"), "application/json", text);
  }

  // Import: a file picked here is sent as it is; the server says what it made of it.
  async function importFile(file) {
    const headers = { "Content-Type": "application/json" };
    const token = store.get(KEY_TOKEN);
    if (token) headers.Authorization = "Bearer " + token;
    let response;
    let data = null;
    try {
      response = await fetch("/api/import", { method: "POST", headers, cache: "no-store", body: file });
      try { data = await response.json(); } catch (_) { data = null; }
    } catch (_) {
      apiNote("Nothing was imported.", new ApiError(0, "the server cannot be reached"));
      return;
    }
    if (!response.ok) {
      if (response.status === 401) onUnauthorized();
      apiNote("Nothing was imported.", new ApiError(response.status, (data && data.error) || response.statusText));
      return;
    }
    const count = Array.isArray(data && data.imported) ? data.imported.length : 0;
    note(count === 1 ? "One conversation was imported." : count + " conversations were imported.");
    refreshList();
  }

  $("export-sparky").addEventListener("click", () => exportWhole());
  $("import").addEventListener("click", () => $("import-file").click());
  $("import-file").addEventListener("change", (event) => {
    const file = event.target.files && event.target.files[0];
    event.target.value = "";
    if (file) importFile(file);
  });
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
    const files = uploadedFiles();
    if (!text.trim() && files.length === 0) return;
    if (uploading()) return; // Send waits until every file is uploaded
    if (sessionId === null) {
      // A new chat: the conversation is made with its persona, then the message goes.
      if (pendingText !== null || halted === "token") return;
      pendingText = text;
      pendingFiles = files;
      $("persona-picker").hidden = true;
      emptyEl.hidden = true;
      connect();
    } else {
      if (running()) return; // the box keeps the text until the answer ends or is stopped
      if (!ready) return; // not connected: the text stays in the box
      sendTurn("message", withFiles({ text }, files), files);
    }
    clearUploads();
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
    learnDefaultModel();
    const fromHash = location.hash.slice(1);
    const stored = store.get(KEY_SESSION);
    refreshList();
    loadMe();
    if (ID_PATTERN.test(fromHash)) openConversation(fromHash);
    else if (stored && ID_PATTERN.test(stored)) openConversation(stored);
    else startDraft();
  }

  start();
})();
