// Markdown for answers still streaming, rendered as the server renders them when they are done
// (chat/markdown.py): markdown-it (the original of markdown-it-py) with raw HTML disabled, then DOMPurify with the
// server's allow-list, read from the page (#markdown-config, chat.markdown.client_config). Loaded after the
// vendored libraries; `window.chatMarkdown` is null when they or the config did not load, and chat.js then
// streams plain text.
window.chatMarkdown = (() => {
  // Attributes whose value is a URL: only these are held to the allowed schemes (as nh3 does).
  const URL_ATTRIBUTES = ["href", "src", "cite", "action", "formaction", "poster", "background", "longdesc"];

  function own(object, key) {
    return object && Object.hasOwn(object, key) ? object[key] : undefined;
  }

  function markdownRenderer() {
    const data = document.getElementById("markdown-config");
    if (!data || !window.markdownit || !window.DOMPurify) return null;
    const config = JSON.parse(data.textContent);
    const rules = config.sanitize;
    const md = window.markdownit("commonmark", { html: false }).enable(["table", "strikethrough"]);
    const escape = md.utils.escapeHtml;
    const languagePattern = new RegExp(`^(?:${config.language_pattern})$`);

    function language(info) {
      const word = info.trim().split(/\s+/)[0];
      return languagePattern.test(word) ? word.toLowerCase() : config.plain_language;
    }
    // Pygments' frame (it strips the code's outer newlines and ends it with one) without its colors, which are
    // all the final render adds: nothing moves when it replaces this one.
    function codeblock(code, lang) {
      const label = escape(lang);
      return `<div class="codeblock" data-lang="${label}"><div class="codeblock-bar"><span>${label}</span>`
        + `<button type="button" class="copy-code" data-copy-code>${escape(config.copy_label)}</button></div>`
        + `<div class="highlight"><pre><span></span>${escape(code.replace(/^\n+|\n+$/g, ""))}\n</pre></div>\n</div>\n`;
    }
    function cellOpen(tokens, idx, options, env, self) {
      const token = tokens[idx];
      const align = (token.attrGet("style") || "").split(":").pop().trim();
      token.attrs = (token.attrs || []).filter(([name]) => name !== "style");
      if (own(config.align_classes, align)) token.attrSet("class", config.align_classes[align]);
      return self.renderToken(tokens, idx, options);
    }
    md.renderer.rules.fence = (tokens, idx) => codeblock(tokens[idx].content, language(tokens[idx].info));
    md.renderer.rules.code_block = (tokens, idx) => codeblock(tokens[idx].content, config.plain_language);
    md.renderer.rules.image = (tokens, idx, options, env, self) => {
      const token = tokens[idx];
      const src = token.attrGet("src") || "";
      const alt = self.renderInlineAsText(token.children || [], options, env) || src;
      if (!config.link_schemes.some((scheme) => src.toLowerCase().startsWith(scheme))) return escape(alt);
      return `<a href="${escape(src)}">${escape(alt)}</a>`;
    };
    md.renderer.rules.th_open = cellOpen;
    md.renderer.rules.td_open = cellOpen;

    const purify = window.DOMPurify(window);  // an instance of our own: its hooks touch no one else's
    const names = new Set([...Object.values(rules.attributes).flat(),
                           ...Object.values(rules.attribute_values).flatMap(Object.keys)]);
    purify.addHook("uponSanitizeAttribute", (node, event) => {
      const tag = node.nodeName.toLowerCase();
      if (event.attrName === "class") {
        const allowed = own(rules.classes, tag) || [];
        event.attrValue = event.attrValue.split(/\s+/).filter((name) => allowed.includes(name)).join(" ");
        event.keepAttr = event.attrValue !== "";
        return;
      }
      const values = own(own(rules.attribute_values, tag), event.attrName);
      event.keepAttr = values ? values.includes(event.attrValue)
        : (own(rules.attributes, tag) || []).includes(event.attrName);
    });
    purify.addHook("afterSanitizeAttributes", (node) => {
      const tag = node.nodeName.toLowerCase();
      Object.entries(own(rules.set_attributes, tag) || {}).forEach(([name, value]) => node.setAttribute(name, value));
      if (tag === "a") node.setAttribute("rel", rules.link_rel);
    });
    const options = {
      ALLOWED_TAGS: rules.tags,
      ALLOWED_ATTR: [...names, "class"],
      ADD_URI_SAFE_ATTR: [...names].filter((name) => !URL_ATTRIBUTES.includes(name)),
      ALLOWED_URI_REGEXP: new RegExp(`^(?:${rules.url_schemes.join("|")}):`, "i"),
      FORBID_CONTENTS: rules.clean_content_tags,
      ALLOW_DATA_ATTR: false,
      ALLOW_ARIA_ATTR: false,
      RETURN_DOM_FRAGMENT: true,
    };
    const sanitize = (html) => purify.sanitize(html, options);
    return { render: (text) => sanitize(md.render(text)), sanitize };
  }

  try {
    return markdownRenderer();
  } catch (_error) {
    return null;
  }
})();
