// Polls the result's JSON until it is final, then shows the image and the details.
// Only textContent is set: the prompt and every value are shown as text, never HTML.
"use strict";
(function () {
  const root = document.getElementById("result");
  if (!root) return;
  const url = root.dataset.url;
  const final = root.dataset.final.split(",");
  const $ = (id) => document.getElementById(id);
  function show(q) {
    // the server formats every number (q.display) and the deadline verdict, as the page did
    $("status").textContent = q.status;
    $("route").textContent = q.route;
    $("models").textContent = q.models.map((m) => m.name).join(" → ") || "-";
    $("served").textContent = q.served_model ? q.served_model.name : "-";
    for (const k of ["hardness", "theta", "quality", "light_quality", "tau", "clip",
      "latency", "slo"]) {
      $(k).textContent = q.display[k];
    }
    $("reason").textContent = q.reason || "-";
    $("deadline-verdict").textContent = q.verdict.text ? "(" + q.verdict.text + ")" : "";
    $("deadline-verdict").className = q.verdict.kind;
    if (q.image_url) {
      $("image").src = q.image_url;
      $("image").hidden = false;
    }
  }
  let delay = 300;
  function poll() {
    fetch(url, { headers: { Accept: "application/json" } })
      .then((r) => (r.ok ? r.json() : Promise.reject(new Error("HTTP " + r.status))))
      .then((q) => {
        show(q);
        if (final.includes(q.status)) {
          $("progress").textContent = "";
          document.body.dataset.final = q.status;
        } else {
          delay = Math.min(delay * 1.5, 3000);
          setTimeout(poll, delay);
        }
      })
      .catch((e) => {
        $("progress").textContent = "(retrying: " + e.message + ")";
        setTimeout(poll, 3000);
      });
  }
  poll();
})();
