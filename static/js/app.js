// Small progressive enhancements; every page works without them.
(function () {
  "use strict";
  // Confirm destructive plain-form submits: <button data-confirm="...">.
  document.addEventListener("click", function (event) {
    const button = event.target.closest("[data-confirm]");
    if (button && !window.confirm(button.dataset.confirm)) {
      event.preventDefault();
    }
  });
  // Server errors and lost connections: say so instead of failing silently.
  function flash(text) {
    const box = document.getElementById("messages");
    if (!box) return;
    const div = document.createElement("div");
    div.className = "message error";
    div.setAttribute("role", "alert");
    div.textContent = text;
    box.appendChild(div);
  }
  document.addEventListener("htmx:responseError", function (event) {
    const status = event.detail.xhr.status;
    if (status === 403) flash("You do not have permission to do that.");
    else if (status === 404) flash("That no longer exists.");
    else if (status >= 500) flash("The server failed to handle that request (" + status + ").");
  });
  document.addEventListener("htmx:sendError", function () {
    flash("Could not reach the server. Check your connection and try again.");
  });
})();
