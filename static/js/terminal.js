// The session's shared terminal: xterm.js on the session socket (notebook.js).
// Protocol: agentide/sessions/consumers.py. Writers type; reviewers watch (no input is sent).
(function () {
  "use strict";
  const panel = document.getElementById("terminal-panel");
  const screen = document.getElementById("terminal-screen");
  if (!panel || !screen || !window.Terminal) return;
  const canWrite = panel.dataset.canWrite === "1";
  const openButton = document.getElementById("terminal-open");
  const closeButton = document.getElementById("terminal-close");
  const typing = document.getElementById("terminal-typing");

  // The CSP refuses <style> elements; xterm.js keeps its dynamic rules (cell size, colours,
  // scrollbar) in some it creates with document.createElement("style"). On this page such
  // calls (only xterm.js makes them) get an inert <xterm-style> element instead (hidden by
  // notebook.css), whose text is mirrored into a constructed stylesheet, which the CSP allows.
  const createElement = document.createElement;
  document.createElement = function (tag, options) {
    if (String(tag).toLowerCase() === "style") return createElement.call(document, "xterm-style");
    return createElement.call(document, tag, options);
  };
  const mirrored = new Map();
  function mirror() {
    document.querySelectorAll("xterm-style").forEach(function (style) {
      let sheet = mirrored.get(style);
      if (!sheet) {
        sheet = new CSSStyleSheet();
        mirrored.set(style, sheet);
        document.adoptedStyleSheets = document.adoptedStyleSheets.concat([sheet]);
        new MutationObserver(function () { sheet.replaceSync(style.textContent || ""); })
          .observe(style, { childList: true, characterData: true, subtree: true });
      }
      sheet.replaceSync(style.textContent || "");
    });
  }
  new MutationObserver(mirror).observe(screen, { childList: true, subtree: true });
  new MutationObserver(mirror).observe(document.head, { childList: true });

  const term = new window.Terminal({
    fontSize: 13, scrollback: 5000, disableStdin: !canWrite, cursorBlink: canWrite,
  });
  const fit = new window.FitAddon.FitAddon();
  term.loadAddon(fit);
  term.open(screen);
  window.notebookTerminal = term; // for the browser tests and the bench
  mirror();
  try { fit.fit(); } catch (e) { /* hidden panel: keep the default size */ }

  let end = 0;       // offset of the next byte this page expects
  let running = false;

  function send(message) { return window.notebookSocketSend && window.notebookSocketSend(message); }
  function bytesOf(b64) {
    const text = atob(b64);
    const out = new Uint8Array(text.length);
    for (let i = 0; i < text.length; i++) out[i] = text.charCodeAt(i);
    return out;
  }
  function b64Of(text) {
    const bytes = new TextEncoder().encode(text);
    let s = "";
    for (let i = 0; i < bytes.length; i += 0x8000) {
      s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
    }
    return btoa(s);
  }
  function write(bytes, upTo) {
    // Ack once xterm has taken the bytes: the server's flow control counts on it.
    term.write(bytes, function () { send({ type: "term.ack", offset: upTo }); });
  }
  function setRunning(value) {
    running = value;
    panel.dataset.running = value ? "1" : "0";
    if (openButton) openButton.hidden = value;
    if (closeButton) closeButton.hidden = !value;
  }
  function size() { return { rows: term.rows, cols: term.cols }; }

  let typingTimer = 0;
  document.addEventListener("notebook-term", function (event) {
    const frame = event.detail;
    if (frame.type === "term.reset") {
      // A reset replaces the screen; live bytes below its end are already in it.
      term.reset();
      end = frame.end;
      write(bytesOf(frame.data), end);
      setRunning(!!frame.running);
    } else if (frame.type === "term.output") {
      let bytes = bytesOf(frame.data);
      const start = frame.start;
      if (start + bytes.length <= end || start > end) return; // seen, or a gap (a reset follows)
      if (start < end) bytes = bytes.subarray(end - start);
      end += bytes.length;
      write(bytes, end);
    } else if (frame.type === "term.state") {
      setRunning(!!frame.running);
    } else if (frame.type === "term.typing") {
      typing.textContent = frame.name + " is typing";
      window.clearTimeout(typingTimer);
      typingTimer = window.setTimeout(function () { typing.textContent = ""; }, 2000);
    } else if (frame.type === "term.error") {
      typing.textContent = frame.message;
    }
  });

  if (canWrite) {
    term.onData(function (data) {
      if (running) send({ type: "term.input", data: b64Of(data) });
    });
    if (openButton) {
      openButton.addEventListener("click", function () {
        try { fit.fit(); } catch (e) { /* keep the size */ }
        send(Object.assign({ type: "term.open" }, size()));
        term.focus();
      });
    }
    if (closeButton) {
      closeButton.addEventListener("click", function () { send({ type: "term.close" }); });
    }
    let resizeTimer = 0;
    window.addEventListener("resize", function () {
      window.clearTimeout(resizeTimer);
      resizeTimer = window.setTimeout(function () {
        try { fit.fit(); } catch (e) { return; }
        if (running) send(Object.assign({ type: "term.resize" }, size()));
      }, 200);
    });
  }
})();
