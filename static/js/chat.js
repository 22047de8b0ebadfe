// Chat: streams answers over SSE, sends with Enter, stops, copies. Pages work without it
// (forms post and redirect); with it, answers appear as they are written.
(() => {
  const streams = new Map();

  function nearBottom() {
    return window.innerHeight + window.scrollY >= document.body.scrollHeight - 160;
  }

  function follow(stick) {
    if (stick) window.scrollTo(0, document.body.scrollHeight);
  }

  async function replaceWithFinal(article) {
    const response = await fetch(article.dataset.messageUrl, { headers: { "HX-Request": "true" } });
    if (!response.ok) return;
    const holder = document.createElement("div");
    holder.innerHTML = (await response.text()).trim();
    const fresh = holder.firstElementChild;
    if (fresh) {
      article.replaceWith(fresh);
      if (window.htmx) window.htmx.process(fresh);
    }
  }

  // A new conversation is titled just after its first answer ends (chat.titles): show the title
  // without a reload, in the heading, the tab and the sidebar.
  let titleAwaited = false;
  async function titleAwait() {
    const heading = document.querySelector("h1[data-title-url]");
    if (!heading || titleAwaited) return;
    titleAwaited = true;
    for (const delay of [500, 1000, 2000, 4000, 8000]) {
      await new Promise((resolve) => { setTimeout(resolve, delay); });
      const response = await fetch(heading.dataset.titleUrl).catch(() => null);
      const title = response && response.ok ? (await response.text()).trim() : "";
      if (title) {
        heading.textContent = title;
        heading.removeAttribute("data-title-url");
        document.title = `${title} · Prumo`;
        const link = document.querySelector(".thread-list li[aria-current] a");
        if (link) link.textContent = title;
        const rename = document.getElementById("rename-title");
        if (rename && !rename.value) rename.value = title;
        return;
      }
    }
    titleAwaited = false;
  }

  function connect(article) {
    const url = article.dataset.streamUrl;
    if (!url || streams.has(article.id)) return;
    // The stream's text as it came (a fresh stream replays it from the start) and, when markdown can be
    // rendered here, that text rendered, repainted at most once a frame.
    const output = article.querySelector("[data-stream-text]");
    const view = article.querySelector("[data-stream-view]");
    const typing = article.querySelector("[data-typing]");
    let render = view && window.chatMarkdown ? window.chatMarkdown.render : null;
    let frame = 0;
    let nextPaint = 0;
    output.textContent = "";
    if (render) {
      output.hidden = true;
      view.hidden = false;
    }

    // Each paint renders the whole text, which takes a while for a long answer (40 KB: tens of ms): painting
    // takes at most a quarter of the time.
    function paint(now) {
      if (now < nextPaint) {
        frame = requestAnimationFrame(paint);
        return;
      }
      frame = 0;
      const stick = nearBottom();
      const started = performance.now();
      try {
        view.replaceChildren(render(output.textContent));
      } catch (_error) {
        render = null;  // plain text from here on
        view.hidden = true;
        output.hidden = false;
      }
      nextPaint = performance.now() + 3 * (performance.now() - started);
      follow(stick);
    }

    // EventSource resends Last-Event-ID when it reconnects; a fresh page replays from the start.
    const source = new EventSource(url);
    streams.set(article.id, source);
    source.addEventListener("start", (event) => {
      const label = article.querySelector("[data-model]");
      if (label) label.textContent = JSON.parse(event.data).name;
    });
    source.addEventListener("delta", (event) => {
      const stick = nearBottom();
      output.textContent += JSON.parse(event.data).text;
      if (typing) typing.hidden = true;
      if (render) {
        if (!frame) frame = requestAnimationFrame(paint);
      } else {
        follow(stick);
      }
    });
    source.addEventListener("error", () => {
      // Refused outright (a person's open streams are capped: 429) or gone: try again in a while.
      if (source.readyState !== EventSource.CLOSED) return;  // the browser reconnects by itself
      streams.delete(article.id);
      setTimeout(() => connect(article), 5000);
    });
    source.addEventListener("end", () => {
      source.close();
      streams.delete(article.id);
      if (frame) {
        cancelAnimationFrame(frame);
        paint(Infinity);  // the last words, rendered, while the final version loads
      }
      replaceWithFinal(article);
      titleAwait();
    });
  }

  function connectAll(root) {
    root.querySelectorAll("article[data-stream-url]").forEach(connect);
  }

  document.addEventListener("DOMContentLoaded", () => {
    const sidebar = document.querySelector("[data-sidebar]");
    if (sidebar && window.matchMedia("(min-width: 800px)").matches) sidebar.open = true;
    connectAll(document);
    if (document.getElementById("messages")) follow(true);
  });

  // The server was too busy to take the send (503, nothing saved): say so, keep what was typed and
  // attached, and send it again after Retry-After.
  function resendLater(form, xhr) {
    const seconds = Math.max(1, parseInt(xhr.getResponseHeader("Retry-After"), 10) || 5);
    const error = document.getElementById("composer-error");
    if (error) error.textContent = form.dataset.busyText.replace("{seconds}", seconds);
    setTimeout(() => form.requestSubmit(), seconds * 1000);
  }

  document.addEventListener("htmx:beforeSwap", (event) => {
    // A send over the plan's messages a minute answers 429 with the reason for the composer: show it.
    if (event.detail.xhr && event.detail.xhr.status === 429) {
      event.detail.shouldSwap = true;
      event.detail.isError = false;
    }
    const source = event.detail.requestConfig && event.detail.requestConfig.elt;
    if (event.detail.xhr && event.detail.xhr.status === 503 && source && source.matches("[data-composer]")) {
      event.detail.shouldSwap = false;
      event.detail.isError = false;
      resendLater(source, event.detail.xhr);
    }
    // Only the newest exchange offers Regenerate and Edit.
    if (event.detail.target && event.detail.target.id === "messages") {
      event.detail.target.querySelectorAll("[data-last-only]").forEach((node) => node.remove());
    }
  });
  document.addEventListener("htmx:afterSwap", (event) => {
    connectAll(event.detail.target);
    if (event.detail.target.id === "messages") follow(true);
  });

  document.addEventListener("chat-sent", () => {
    const form = document.querySelector("[data-composer]");
    if (!form) return;
    // The next message is another send: a new token (a resend after 503 keeps the same one).
    const token = form.querySelector("[data-send-token]");
    if (token) {
      token.value = Array.from(crypto.getRandomValues(new Uint8Array(16)),
                               (byte) => byte.toString(16).padStart(2, "0")).join("");
    }
    form.querySelector("textarea[name=content]").value = "";
    const files = form.querySelector("input[type=file]");
    if (files) files.value = "";
    const error = document.getElementById("composer-error");
    if (error) error.textContent = "";
  });

  document.addEventListener("keydown", (event) => {
    const area = event.target.closest && event.target.closest("textarea[data-enter-submits]");
    if (!area || event.key !== "Enter" || event.shiftKey || event.isComposing) return;
    event.preventDefault();
    if (area.value.trim()) area.form.requestSubmit();
  });

  async function copy(text, button) {
    try {
      await navigator.clipboard.writeText(text);
      const label = button.textContent;
      button.textContent = "✓";
      setTimeout(() => { button.textContent = label; }, 1200);
    } catch (_error) {
      // Clipboard refused (insecure context): nothing to do.
    }
  }

  document.addEventListener("click", (event) => {
    const codeButton = event.target.closest("[data-copy-code]");
    if (codeButton) {
      const pre = codeButton.closest(".codeblock").querySelector("pre");
      copy(pre ? pre.innerText : "", codeButton);
      return;
    }
    const messageButton = event.target.closest("[data-copy-message]");
    if (messageButton) {
      const source = messageButton.closest("article").querySelector("[data-copy-source]");
      copy(source ? source.innerText : "", messageButton);
    }
  });
})();
