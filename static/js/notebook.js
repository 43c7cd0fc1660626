// The live notebook: one websocket per tab, applying the server's hx-swap-oob fragments.
//
// The page is rendered as of event `data-last-seq`. The socket asks for everything after
// the last seq this tab applied (on first connect and after every reconnect), and drops any
// frame it has already applied, so output is complete and never shown twice.
(function () {
  "use strict";
  const root = document.getElementById("notebook");
  if (!root || !window.htmx) return;

  let lastSeq = parseInt(root.dataset.lastSeq || "0", 10);
  let socket = null;
  let attempt = 0;
  let pingTimer = null;
  let stopped = false;
  let reconnectTimer = 0;
  const conn = document.getElementById("connection");
  const main = document.getElementById("nb-main");
  const jump = document.getElementById("jump-latest");

  function setConnection(state, text) {
    if (!conn) return;
    conn.dataset.state = state;
    conn.textContent = text;
    root.dataset.connection = state;
  }

  // --- autoscroll: follow new output unless the user scrolled up ------------------------
  let follow = true;
  let ownScrollY = -1;
  function atBottom() {
    return window.innerHeight + window.scrollY >= document.body.scrollHeight - 40;
  }
  function scrollToEnd() {
    window.scrollTo(0, document.body.scrollHeight);
    ownScrollY = window.scrollY;
  }
  window.addEventListener("scroll", function () {
    // Our own scrolling can land short of an end that moved meanwhile: only the user's
    // scrolling (anywhere else) decides whether to follow.
    if (Math.abs(window.scrollY - ownScrollY) < 2) return;
    ownScrollY = -1;
    follow = atBottom();
    if (follow && jump) jump.hidden = true;
  }, { passive: true });
  if (jump) {
    jump.addEventListener("click", function () {
      follow = true;
      jump.hidden = true;
      scrollToEnd();
    });
  }
  // Pages also change height outside the socket (the composer's errors, the file panel).
  document.addEventListener("htmx:afterSettle", function () {
    if (atBottom()) {
      follow = true;
      if (jump) jump.hidden = true;
    }
  });
  function afterOutput() {
    const scrollable = document.body.scrollHeight > window.innerHeight + 40;
    if (!scrollable) {
      follow = true;
      if (jump) jump.hidden = true;
    } else if (follow) {
      if (jump) jump.hidden = true;
      scrollToEnd();
    } else if (jump) {
      jump.hidden = false;
    }
  }

  // --- terminal output: collapse carriage returns, cap the DOM ---------------------------
  // Every output box (a shell cell's, an agent command's) is a pre.output with data-cap; only
  // those are collapsed and capped, never the containers that hold blocks.
  function eraseLineBefore(marker) {
    let node = marker.previousSibling;
    while (node) {
      const prev = node.previousSibling;
      if (node.nodeType === 1 && node.classList.contains("cr")) {
        node.remove();
      } else {
        const text = node.textContent;
        const nl = text.lastIndexOf("\n");
        if (nl >= 0) {
          node.textContent = text.slice(0, nl + 1);
          return;
        }
        node.remove();
      }
      node = prev;
    }
  }
  function collapseCarriageReturns(pre) {
    const markers = pre.querySelectorAll("span.cr");
    markers.forEach(function (marker) {
      let next = marker.nextSibling;
      while (next && next.textContent === "" && !(next.nodeType === 1 && next.classList.contains("cr"))) {
        next = next.nextSibling;
      }
      if (!next) return; // nothing after it yet: wait for the next chunk
      if (next.nodeType === 1 && next.classList.contains("cr")) { marker.remove(); return; }
      if (!next.textContent.startsWith("\n")) eraseLineBefore(marker);
      marker.remove();
    });
  }
  function capOutput(pre) {
    const cap = parseInt(pre.dataset.cap || "100000", 10);
    let length = pre.textContent.length;
    if (length <= cap) return;
    while (length > cap && pre.firstChild) {
      length -= pre.firstChild.textContent.length;
      pre.firstChild.remove();
    }
    const note = document.getElementById(pre.dataset.clipped || pre.id.replace(/-output$/, "-clipped"));
    if (note) note.hidden = false;
  }

  function apply(html) {
    const touched = new Set();
    const probe = document.createElement("template");
    probe.innerHTML = html;
    let appended = false;
    probe.content.querySelectorAll("[hx-swap-oob^='beforeend:#']").forEach(function (el) {
      const id = el.getAttribute("hx-swap-oob").slice("beforeend:#".length);
      const target = document.getElementById(id);
      appended = true;
      if (target && target.matches("pre.output")) touched.add(id);
    });
    // An output box scrolled to its end keeps following its output.
    const pinned = new Set();
    touched.forEach(function (id) {
      const pre = document.getElementById(id);
      if (pre && pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 20) pinned.add(id);
    });
    htmx.swap(document.body, html, { swapStyle: "none" });
    touched.forEach(function (id) {
      const pre = document.getElementById(id);
      if (!pre) return;
      collapseCarriageReturns(pre);
      capOutput(pre);
      if (pinned.has(id)) pre.scrollTop = pre.scrollHeight;
    });
    if (appended) afterOutput();
  }

  function applyEvents(frame) {
    if (frame.last <= lastSeq) return; // already applied (replay overlap)
    apply(frame.html);
    lastSeq = frame.last;
    root.dataset.lastSeq = String(lastSeq);
    // Let other parts of the page react: the file panel refreshes when a cell ends.
    (frame.types || []).forEach(function (type) {
      document.body.dispatchEvent(new CustomEvent("notebook-" + type.replace(/\./g, "-")));
    });
  }

  // --- older cells, a page at a time as the reader scrolls up ----------------------------
  // The page is asked for as of the seq this tab has applied; frames arriving meanwhile are
  // held and applied once it is in, so its cells miss no event and get none twice.
  let held = null;
  let olderRequest = null;
  function release() {
    const frames = held || [];
    held = null;
    frames.forEach(applyEvents);
  }
  document.addEventListener("htmx:configRequest", function (event) {
    if (event.detail.elt.id === "cells-older") event.detail.parameters.up_to = String(lastSeq);
  });
  document.addEventListener("htmx:beforeRequest", function (event) {
    if (event.detail.elt.id !== "cells-older") return;
    olderRequest = event.detail.xhr;
    held = held || [];
  });
  // After the swap (which htmx does at once), or after a failure. The sentinel is gone from
  // the page by then: the event comes again from #cells, with the same request.
  document.addEventListener("htmx:afterRequest", function (event) {
    if (!olderRequest || event.detail.xhr !== olderRequest) return;
    olderRequest = null;
    release();
  });

  // Polling (the sandbox stats) pauses while the socket is down: the server is likely away.
  document.addEventListener("htmx:beforeRequest", function (event) {
    if (event.detail.elt.hasAttribute("data-poll") && root.dataset.connection !== "live") {
      event.preventDefault();
    }
  });

  // Validation errors of the notebook's forms come back as 422 (413 for an upload over the
  // limit) with a fragment to show.
  document.addEventListener("htmx:beforeSwap", function (event) {
    const status = event.detail.xhr.status;
    if ((status === 422 || status === 413) && root.contains(event.detail.elt)) {
      event.detail.shouldSwap = true;
      event.detail.isError = false;
    }
  });

  // --- the socket ------------------------------------------------------------------------
  // The terminal panel sends its messages over this tab's socket.
  window.notebookSocketSend = function (message) {
    if (!socket || socket.readyState !== WebSocket.OPEN) return false;
    socket.send(JSON.stringify(message));
    return true;
  };

  function connect() {
    window.clearTimeout(reconnectTimer);
    if (socket) return; // one socket per tab
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    const url = scheme + location.host + root.dataset.wsPath + "?last_seq=" + lastSeq;
    setConnection(attempt ? "reconnecting" : "connecting", attempt ? "Reconnecting…" : "Connecting…");
    socket = new WebSocket(url);
    socket.addEventListener("open", function () {
      attempt = 0;
      setConnection("live", "Live");
      pingTimer = window.setInterval(function () {
        if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify({ type: "ping" }));
      }, 15000);
    });
    socket.addEventListener("message", function (event) {
      let frame;
      try { frame = JSON.parse(event.data); } catch (e) { return; }
      if (frame.type === "events") {
        if (held) held.push(frame); else applyEvents(frame);
      } else if (frame.type === "html") {
        htmx.swap(document.body, frame.html, { swapStyle: "none" });
      } else if (frame.type === "error") {
        showError(frame.message);
      } else if (typeof frame.type === "string" && frame.type.indexOf("term.") === 0) {
        // The terminal panel (terminal.js) handles its own frames.
        document.dispatchEvent(new CustomEvent("notebook-term", { detail: frame }));
      }
    });
    socket.addEventListener("close", function (event) {
      window.clearInterval(pingTimer);
      socket = null;
      if (stopped) return;
      if (event.code === 4404) {
        setConnection("gone", "Not available");
        return;
      }
      if (event.code === 4403 || event.code === 4409) {
        // Access ended or changed (removed, deactivated, new password, new role): the server
        // decides what this page may show now, so ask it again.
        setConnection("gone", "Access changed");
        window.location.reload();
        return;
      }
      attempt += 1;
      const delay = Math.min(10000, 250 * Math.pow(2, Math.min(attempt, 6))) * (0.75 + Math.random() / 2);
      setConnection("reconnecting", "Reconnecting…");
      reconnectTimer = window.setTimeout(connect, delay);
    });
  }
  window.addEventListener("beforeunload", function () { stopped = true; });
  window.addEventListener("online", function () {
    attempt = 0;
    connect();
  });

  function showError(text) {
    const box = document.getElementById("composer-errors");
    if (box) {
      box.textContent = "";
      const p = document.createElement("p");
      p.textContent = text;
      box.appendChild(p);
    }
  }

  // --- the composer: Ctrl+Enter, history ------------------------------------------------
  const composer = document.getElementById("composer");
  const source = document.getElementById("composer-source");
  // ↑/↓ walk through the session's shell commands, starting with the ones already on the page.
  const history = Array.prototype.map.call(
    document.querySelectorAll("#cells .cell-shell pre.source"),
    function (pre) { return pre.textContent; }
  );
  let historyIndex = history.length;
  let draft = "";
  if (composer && source) {
    composer.addEventListener("keydown", function (event) {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
        event.preventDefault();
        composer.requestSubmit();
      }
    });
    source.addEventListener("keydown", function (event) {
      if (event.ctrlKey || event.metaKey || event.altKey || !history.length) return;
      const before = source.value.slice(0, source.selectionStart);
      const after = source.value.slice(source.selectionEnd);
      if (event.key === "ArrowUp" && before.indexOf("\n") < 0 && historyIndex > 0) {
        if (historyIndex === history.length) draft = source.value;
        historyIndex -= 1;
        source.value = history[historyIndex];
        event.preventDefault();
      } else if (event.key === "ArrowDown" && after.indexOf("\n") < 0 && historyIndex < history.length) {
        historyIndex += 1;
        source.value = historyIndex === history.length ? draft : history[historyIndex];
        event.preventDefault();
      }
    });
    composer.addEventListener("change", function (event) {
      if (event.target.name !== "kind") return;
      const hints = {
        shell: "A shell command — Ctrl+Enter to run, ↑/↓ for history",
        prompt: "Ask the agent — Ctrl+Enter to send",
        note: "A Markdown note — Ctrl+Enter to add",
      };
      source.placeholder = hints[event.target.value] || "";
    });
    document.body.addEventListener("cell-submitted", function () {
      const value = source.value;
      if (value.trim() && history[history.length - 1] !== value) history.push(value);
      historyIndex = history.length;
      draft = "";
      source.value = "";
      follow = true;
    });
  }

  // --- copy buttons ----------------------------------------------------------------------
  document.addEventListener("click", function (event) {
    const button = event.target.closest("[data-copy]");
    if (!button) return;
    const el = document.querySelector(button.dataset.copy);
    if (!el) return;
    const text = el.tagName === "TEMPLATE" ? el.content.textContent : el.textContent;
    const done = function () {
      button.textContent = "Copied";
      window.setTimeout(function () { button.textContent = "Copy"; }, 1200);
    };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(done, function () {});
    } else {
      const area = document.createElement("textarea");
      area.value = text;
      document.body.appendChild(area);
      area.select();
      try { document.execCommand("copy"); done(); } catch (e) { /* nothing to do */ }
      area.remove();
    }
  });

  // Pages restored from the back/forward cache carry an old DOM: reconnect from its seq.
  window.addEventListener("pageshow", function (event) {
    if (event.persisted) { stopped = false; connect(); }
  });

  if (main) scrollToEnd();
  connect();
})();
