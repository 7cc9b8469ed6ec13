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
})();
