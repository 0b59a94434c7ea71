// A share link's page (share.html, served at /s/{share_id}): reads the frozen copy from
// GET /api/shares/{share_id}, which needs no token, and shows it read-only. What people wrote is
// shown as text; answers are rendered as markdown by markdown-it (raw HTML off) and sanitized by
// DOMPurify with the chat page's allow-list (app.js), so that an answer can run nothing. Files the
// copy lists are links to /api/shares/{share_id}/files/{file_id}.
"use strict";

(() => {
  const log = document.getElementById("log");
  const shareId = decodeURIComponent(location.pathname.split("/").filter(Boolean).pop() || "");

  const PURIFY = {
    ALLOWED_TAGS: ["a", "blockquote", "br", "code", "del", "em", "h1", "h2", "h3", "h4", "h5",
      "h6", "hr", "li", "ol", "p", "pre", "s", "strong", "table", "tbody", "td", "th", "thead",
      "tr", "ul"],
    ALLOWED_ATTR: ["href", "title", "class", "start"],
    ALLOWED_URI_REGEXP: /^(?:https?:|mailto:)/i,
    ALLOW_DATA_ATTR: false,
    RETURN_DOM_FRAGMENT: true,
  };

  const markdown = typeof window.markdownit === "function" && window.DOMPurify && window.DOMPurify.isSupported
    ? makeMarkdown()
    : null;

  function makeMarkdown() {
    const md = window.markdownit({ html: false, linkify: true, typographer: false });
    // Images are never fetched: an image becomes a link to it.
    md.renderer.rules.image = (tokens, index, options, env, self) => {
      const token = tokens[index];
      const src = token.attrGet("src") || "";
      const alt = self.renderInlineAsText(token.children || [], options, env) || "image";
      return '<a class="image-link" href="' + md.utils.escapeHtml(src) + '">' +
        md.utils.escapeHtml(alt) + "</a>";
    };
    window.DOMPurify.addHook("afterSanitizeAttributes", (node) => {
      if (node.tagName === "A" && node.hasAttribute("href")) {
        node.setAttribute("target", "_blank");
        node.setAttribute("rel", "noopener noreferrer");
      }
    });
    return md;
  }

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function renderMarkdown(target, text) {
    if (!markdown) {
      target.textContent = text;
      return;
    }
    target.replaceChildren(window.DOMPurify.sanitize(markdown.render(text), PURIFY));
  }

  function fileLinks(files) {
    const list = el("div", "attachments");
    for (const file of files) {
      const link = el("a", "attachment", file.name);
      link.href = "/api/shares/" + encodeURIComponent(shareId) + "/files/" + encodeURIComponent(file.id);
      link.rel = "noopener noreferrer";
      list.append(link);
    }
    return list;
  }

  function renderTurn(turn) {
    const box = el("section", "turn");
    if (turn.closing === "error") box.classList.add("failed");
    if (turn.closing === "cancelled") box.classList.add("cancelled");
    const user = el("div", "bubble user", turn.text);
    box.append(user);
    if (turn.attachments && turn.attachments.length) box.append(fileLinks(turn.attachments));
    if (turn.files && turn.files.length) box.append(fileLinks(turn.files));
    if (turn.answer) {
      const answer = el("div", "bubble answer md");
      renderMarkdown(answer, turn.answer);
      box.append(answer);
    }
    if (turn.error) box.append(el("div", "bubble answer error", "Error: " + turn.error));
    if (turn.closing === "cancelled") box.append(el("div", "usage", "stopped"));
    if (!turn.closing) box.append(el("div", "usage", "still answering when it was shared"));
    return box;
  }

  async function load() {
    let answer;
    try {
      answer = await fetch("/api/shares/" + encodeURIComponent(shareId), { credentials: "omit" });
    } catch (e) {
      log.replaceChildren(el("p", "empty", "The copy could not be loaded."));
      return;
    }
    if (!answer.ok) {
      log.replaceChildren(el("p", "empty", answer.status === 404
        ? "This link does not exist, or it was revoked."
        : "The copy could not be loaded (" + answer.status + ")."));
      return;
    }
    const copy = await answer.json();
    const title = copy.title || "Shared conversation";
    document.getElementById("title").textContent = title;
    document.title = title + " - Sparky";
    log.replaceChildren(...copy.turns.map(renderTurn));
    document.body.dataset.loaded = "true";
  }

  load();
})();
