// Keeps the dashboard live without reloading it: every few seconds (data-refresh-ms; the
// page's ?refresh=N sets N seconds, 0 turns it off) it fetches /ui/dashboard.json, the same
// strings and plot geometry the server rendered, and writes them in place. Only
// textContent and SVG attributes are set: every value is shown as text, never as HTML.
"use strict";
(function () {
  const root = document.getElementById("dashboard");
  if (!root) return;
  const every = Number(root.dataset.refreshMs || 0);
  if (!(every > 0)) return;
  const SVG = "http://www.w3.org/2000/svg";
  const $ = (id) => document.getElementById(id);
  const NUM_HISTORY = [4, 5, 7, 8]; // numeric columns of the plan history (0-based)

  function cell(tag, text, cls) {
    const el = document.createElement(tag);
    el.textContent = text;
    if (cls) el.className = cls;
    return el;
  }
  function fillRows(tbody, rows, numeric) {
    tbody.replaceChildren(...rows.map((cells) => {
      const tr = document.createElement("tr");
      cells.forEach((c, i) => tr.appendChild(cell("td", c, numeric.includes(i) ? "num" : "")));
      return tr;
    }));
  }
  function plot(p) {
    const svg = $(p.id);
    if (!svg) return;
    svg.querySelector(".line").setAttribute("points", p.points);
    svg.querySelector(".dots").replaceChildren(...p.dots.map(([x, y]) => {
      const c = document.createElementNS(SVG, "circle");
      c.setAttribute("cx", x);
      c.setAttribute("cy", y);
      c.setAttribute("r", "2.5");
      return c;
    }));
    svg.querySelector(".ymin").textContent = p.ymin;
    svg.querySelector(".ymax").textContent = p.ymax;
    svg.querySelector(".empty").setAttribute("display", p.dots.length ? "none" : "inline");
  }
  function show(d) {
    for (const [id, text] of Object.entries(d.text)) {
      const el = $(id);
      if (el) el.textContent = text;
    }
    for (const [id, hidden] of Object.entries(d.hidden)) {
      const el = $(id);
      if (el) el.hidden = hidden;
    }
    $("errors").replaceChildren(...d.errors.map((e) => cell("p", e, "error")));
    fillRows($("queues-body"), d.queues, [1]);
    fillRows($("models-body"), d.models, []);
    fillRows($("history-body"), d.history, NUM_HISTORY);
    d.plots.forEach(plot);
    for (const el of document.querySelectorAll("[data-row].active")) {
      el.classList.remove("active");
    }
    if (d.active_row) {
      for (const el of document.querySelectorAll(`[data-row="${CSS.escape(d.active_row)}"]`)) {
        el.classList.add("active");
      }
    }
    $("live-status").textContent = "";
    root.dataset.updates = String(Number(root.dataset.updates || 0) + 1);
  }
  let busy = false;
  function tick() {
    if (busy || document.visibilityState !== "visible") return;
    busy = true;
    fetch(root.dataset.url, { headers: { Accept: "application/json" }, cache: "no-store" })
      .then((r) => (r.ok ? r.json() : Promise.reject(new Error("HTTP " + r.status))))
      .then(show)
      .catch((e) => {
        $("live-status").textContent = "(live updates paused: " + e.message + ")";
      })
      .finally(() => {
        busy = false;
      });
  }
  setInterval(tick, every);
})();
