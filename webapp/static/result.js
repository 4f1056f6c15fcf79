// Polls the result's JSON until it is final, then shows the image and the details.
// Only textContent is set: the prompt and every value are shown as text, never HTML.
"use strict";
(function () {
  const root = document.getElementById("result");
  if (!root) return;
  const url = root.dataset.url;
  const final = root.dataset.final.split(",");
  const $ = (id) => document.getElementById(id);
  const fmt = (v) => {
    if (v === null || v === undefined) return "-";
    if (v === "inf") return "∞";
    if (v === "-inf") return "-∞";
    if (typeof v === "number") return Number(v.toPrecision(3)).toString();
    return String(v);
  };
  function show(q) {
    $("status").textContent = q.status;
    $("route").textContent = q.route;
    $("models").textContent = q.models.map((m) => m.name).join(" → ") || "-";
    $("served").textContent = q.served_model ? q.served_model.name : "-";
    for (const k of ["hardness", "theta", "quality", "light_quality", "tau", "clip"]) {
      $(k).textContent = fmt(q[k]);
    }
    $("latency").textContent = fmt(q.timings.latency_s);
    $("slo").textContent = fmt(q.slo_s);
    $("reason").textContent = q.reason || "-";
    const lat = q.timings.latency_s;
    if (lat !== null) {
      const late = q.timings.finished_at > q.timings.deadline;
      $("deadline-verdict").textContent = late ? "(missed the deadline)" : "(within the deadline)";
      $("deadline-verdict").className = late ? "late" : "ok";
    }
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
