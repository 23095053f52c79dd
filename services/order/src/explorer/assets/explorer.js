// The saga explorer's only script. Pages are complete without it; it keeps them current:
// the server renders every fragment (escaped) and sends it over server-sent events named after
// the element it replaces (`data-live-target`), and `end` when nothing more will change.
(() => {
  "use strict";
  const url = document.body.dataset.live;
  const badge = document.getElementById("connection");
  const show = (text, state) => {
    if (badge) {
      badge.textContent = text;
      badge.dataset.state = state;
    }
  };
  if (url) {
    const source = new EventSource(url);
    for (const target of document.querySelectorAll("[data-live-target]")) {
      source.addEventListener(target.id, (event) => {
        target.innerHTML = event.data;
        document.body.dataset.updates = String(Number(document.body.dataset.updates || 0) + 1);
      });
    }
    source.addEventListener("end", () => {
      source.close();
      show("final", "final");
    });
    source.addEventListener("open", () => show("live", "live"));
    source.addEventListener("error", () => {
      if (source.readyState !== EventSource.CLOSED) show("reconnecting…", "retrying");
    });
  }
  // Copy buttons (the `ordermesh dlq redrive` commands).
  document.addEventListener("click", (event) => {
    const button = event.target.closest("button[data-copy]");
    if (!button) return;
    const text = button.dataset.copy;
    const done = () => {
      button.textContent = "copied";
      setTimeout(() => (button.textContent = "copy"), 1500);
    };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(done, () => {});
    } else {
      const code = button.previousElementSibling;
      if (code) window.getSelection().selectAllChildren(code);
    }
  });
})();
