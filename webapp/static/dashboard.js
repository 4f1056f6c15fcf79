// Keeps the dashboard live: reloads it every 10 s while the tab is visible
// (add ?refresh=0 to the address to stop).
"use strict";
(function () {
  if (new URLSearchParams(location.search).get("refresh") === "0") return;
  setInterval(() => {
    if (document.visibilityState === "visible") location.reload();
  }, 10000);
})();
