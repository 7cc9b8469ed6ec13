// CXR Serve page behaviour. Everything here is an enhancement: each page works without it.
// No inline handlers and no eval, so the pages run under a strict Content-Security-Policy.
(function () {
  "use strict";

  function progressFor(elt) {
    var form = elt && elt.closest ? elt.closest("form") : null;
    return form ? form.querySelector("progress.upload-progress") : null;
  }

  // Upload progress: htmx forwards the XHR's upload progress events.
  document.addEventListener("htmx:xhr:progress", function (event) {
    var bar = progressFor(event.target);
    if (!bar || !event.detail.lengthComputable) return;
    bar.hidden = false;
    bar.value = Math.round((event.detail.loaded / event.detail.total) * 100);
  });

  document.addEventListener("htmx:beforeRequest", function (event) {
    var bar = progressFor(event.target);
    if (bar) { bar.value = 0; }
    var result = document.getElementById("result");
    if (result && event.target.id === "prediction-form") { result.setAttribute("aria-busy", "true"); }
  });

  document.addEventListener("htmx:afterRequest", function (event) {
    var bar = progressFor(event.target);
    if (bar) { bar.hidden = true; }
    var result = document.getElementById("result");
    if (result) { result.setAttribute("aria-busy", "false"); }
  });

  // Fields whose error message is non-empty are marked invalid, for assistive technology.
  document.addEventListener("htmx:afterSettle", function () {
    ["patient_id", "image"].forEach(function (name) {
      var input = document.getElementById(name);
      var error = document.getElementById(name + "-error");
      if (!input || !error) return;
      if (error.textContent.trim()) { input.setAttribute("aria-invalid", "true"); }
      else { input.removeAttribute("aria-invalid"); }
    });
  });

  // No response at all (network down, proxy gone): say so instead of doing nothing.
  function showFailure(event, message) {
    var target = event.detail && event.detail.target;
    if (!target) return;
    target.innerHTML = "";
    var box = document.createElement("div");
    box.className = "error-summary";
    box.setAttribute("role", "alert");
    var text = document.createElement("p");
    text.textContent = message;
    box.appendChild(text);
    target.appendChild(box);
  }
  document.addEventListener("htmx:sendError", function (event) {
    showFailure(event, "The service could not be reached. Check the connection and try again.");
  });
  document.addEventListener("htmx:timeout", function (event) {
    showFailure(event, "The service took too long to answer. Try again.");
  });
  // Worklist: j / k move between studies (not while typing), Enter opens the focused one.
  function worklistLinks() {
    return Array.prototype.slice.call(document.querySelectorAll("#worklist a.worklist-open"));
  }
  document.addEventListener("keydown", function (event) {
    if ((event.key !== "j" && event.key !== "k") || event.ctrlKey || event.metaKey || event.altKey) return;
    var here = event.target;
    if (here && (/^(INPUT|SELECT|TEXTAREA)$/.test(here.tagName) || here.isContentEditable)) return;
    var links = worklistLinks();
    if (!links.length) return;
    var row = document.activeElement && document.activeElement.closest ? document.activeElement.closest("tr") : null;
    var index = -1;
    links.forEach(function (link, i) { if (row && row.contains(link)) { index = i; } });
    var next = event.key === "j" ? Math.min(index + 1, links.length - 1) : Math.max(index - 1, 0);
    links[next].focus();
    links[next].scrollIntoView({ block: "nearest" });
    event.preventDefault();
  });

  // The worklist refreshes itself: keep the reader's focus on the same study (or the same place in
  // the list, if that study left it), and announce only a change in the count.
  var kept = null;
  document.addEventListener("htmx:beforeSwap", function (event) {
    var target = event.detail.target;
    if (!target || target.id !== "worklist") return;
    var active = document.activeElement;
    kept = null;
    if (active && target.contains(active)) {
      var links = worklistLinks();
      var row = active.closest("tr");
      kept = { id: active.id, index: links.findIndex(function (l) { return row && row.contains(l); }) };
    }
  });
  document.addEventListener("htmx:afterSwap", function (event) {
    var target = event.detail.target;
    if (!target || target.id !== "worklist") return;
    if (kept) {
      var again = kept.id ? document.getElementById(kept.id) : null;
      var links = worklistLinks();
      again = again || links[Math.min(Math.max(kept.index, 0), links.length - 1)] || target;
      if (again === target) { target.setAttribute("tabindex", "-1"); }
      again.focus({ preventScroll: true });
    }
    var count = target.querySelector("[data-total]");
    var status = document.getElementById("worklist-status");
    if (count && status) {
      if (status.dataset.total !== undefined && status.dataset.total !== count.dataset.total) {
        status.textContent = count.textContent.replace(/\s+/g, " ").trim();
      }
      status.dataset.total = count.dataset.total;
    }
  });
})();
