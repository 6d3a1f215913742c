/* DeskPilot in-app contact form. No dependencies, no third-party code.
 *
 *   <div id="deskpilot-support"></div>
 *   <script src="https://support.example.com/widget.js" async
 *           data-email="ada@example.com" data-name="Ada Lovelace"
 *           data-signature="HMAC-SHA256(DESKPILOT_WIDGET_SECRET, lower-cased email), hex, from your backend"
 *           data-target="#deskpilot-support"></script>
 *
 * Renders a question form and the customer's in-app thread (their questions and the replies), refreshed every
 * data-poll seconds (default 10) while the page is visible. Text is only ever set as text, never as HTML.
 */
(function () {
  "use strict";
  var script = document.currentScript;
  if (!script) { return; }
  var data = script.dataset;
  var base = new URL(script.src, document.baseURI).origin;
  var email = data.email || "";
  var signature = data.signature || "";
  var pollSeconds = Math.max(3, parseInt(data.poll || "10", 10) || 10);

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) { node.className = className; }
    if (text !== undefined) { node.textContent = text; }
    return node;
  }

  function uuid4() {
    if (window.crypto && window.crypto.randomUUID) { return window.crypto.randomUUID(); }
    var bytes = new Uint8Array(16);
    window.crypto.getRandomValues(bytes);
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    var hex = Array.prototype.map.call(bytes, function (b) { return ("0" + b.toString(16)).slice(-2); }).join("");
    return hex.slice(0, 8) + "-" + hex.slice(8, 12) + "-" + hex.slice(12, 16) + "-" + hex.slice(16, 20) + "-" + hex.slice(20);
  }

  function call(path, body) {
    return fetch(base + path, {
      method: "POST",
      mode: "cors",
      credentials: "omit",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body)
    }).then(function (response) {
      return response.json().catch(function () { return {}; }).then(function (json) {
        if (!response.ok) {
          var error = new Error(json.detail || ("HTTP " + response.status));
          error.status = response.status;
          throw error;
        }
        return json;
      });
    });
  }

  var style = el("style", null,
    ".deskpilot-widget{font:14px/1.4 system-ui,sans-serif;max-width:420px;border:1px solid #d0d4da;border-radius:8px;padding:12px;background:#fff;color:#1d2430}" +
    ".deskpilot-widget h2{font-size:16px;margin:0 0 8px}" +
    ".deskpilot-thread{list-style:none;margin:0 0 10px;padding:0;max-height:320px;overflow:auto}" +
    ".deskpilot-message{margin:6px 0;padding:8px 10px;border-radius:8px;white-space:pre-wrap;word-wrap:break-word}" +
    ".deskpilot-from-you{background:#e8f0fe;margin-left:40px}" +
    ".deskpilot-from-support{background:#f1f3f4;margin-right:40px}" +
    ".deskpilot-widget textarea{width:100%;box-sizing:border-box;min-height:72px;font:inherit}" +
    ".deskpilot-widget button{margin-top:6px;font:inherit}" +
    ".deskpilot-status{font-size:12px;color:#5f6b7a;min-height:1em;margin-top:4px}");

  var root = el("section", "deskpilot-widget");
  root.setAttribute("aria-label", "Contact support");
  root.appendChild(el("h2", null, data.title || "Contact support"));
  var thread = el("ol", "deskpilot-thread");
  thread.setAttribute("aria-live", "polite");
  var form = el("form", "deskpilot-form");
  var textarea = el("textarea");
  textarea.name = "body";
  textarea.required = true;
  textarea.maxLength = 20000;
  textarea.placeholder = data.placeholder || "How can we help?";
  textarea.setAttribute("aria-label", "Your question");
  var button = el("button", null, "Send");
  button.type = "submit";
  var status = el("div", "deskpilot-status");
  status.setAttribute("role", "status");
  form.appendChild(textarea);
  form.appendChild(button);
  form.appendChild(status);
  root.appendChild(thread);
  root.appendChild(form);

  var shown = {};
  function render(messages) {
    messages.forEach(function (message) {
      if (shown[message.id]) { return; }
      shown[message.id] = true;
      var item = el("li", "deskpilot-message deskpilot-from-" + (message.from === "you" ? "you" : "support"));
      item.dataset.from = message.from;
      item.appendChild(el("div", "deskpilot-body", message.body));
      thread.appendChild(item);
      thread.scrollTop = thread.scrollHeight;
    });
  }

  function refresh() {
    if (!email || !signature) { return Promise.resolve(); }
    return call("/api/widget/thread", { email: email, signature: signature })
      .then(function (json) { render(json.messages || []); })
      .catch(function (error) { status.textContent = "Could not load your conversation: " + error.message; });
  }

  var pending = null;  // the id of a question not yet accepted: a retry sends the same one
  form.addEventListener("submit", function (event) {
    event.preventDefault();
    var body = textarea.value.trim();
    if (!body) { return; }
    pending = pending || uuid4();
    button.disabled = true;
    status.textContent = "Sending…";
    call("/api/widget/messages", {
      email: email,
      signature: signature,
      name: data.name || null,
      body: body,
      client_message_id: pending,
      page: String(window.location.href).slice(0, 2000)
    }).then(function () {
      pending = null;
      textarea.value = "";
      status.textContent = "Sent. We will answer here.";
      return refresh();
    }).catch(function (error) {
      status.textContent = "Not sent: " + error.message;
    }).then(function () { button.disabled = false; });
  });

  function mount() {
    var target = data.target ? document.querySelector(data.target) : null;
    document.head.appendChild(style);
    if (target) { target.appendChild(root); } else { script.parentNode.insertBefore(root, script.nextSibling); }
    if (!email || !signature) {
      status.textContent = "The support form is missing the customer's email or signature.";
      button.disabled = true;
      return;
    }
    refresh();
    window.setInterval(function () {
      if (document.visibilityState !== "hidden") { refresh(); }
    }, pollSeconds * 1000);
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", mount);
  } else {
    mount();
  }
})();
