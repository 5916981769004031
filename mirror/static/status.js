// Keeps the status page current: re-fetch the page itself and swap the live part in place.
// The server renders every number, so this file holds no formatting logic of its own, and
// the page reads the same with JavaScript off (a <noscript> meta refresh takes over there).
(function () {
  "use strict";
  var seconds = Number(document.body.dataset.refresh) || 5;
  var refreshes = 0;

  function refresh() {
    fetch(window.location.pathname, { cache: "no-store", headers: { Accept: "text/html" } })
      .then(function (resp) {
        if (!resp.ok) { throw new Error("HTTP " + resp.status); }
        return resp.text();
      })
      .then(function (text) {
        var fresh = new DOMParser().parseFromString(text, "text/html").getElementById("live");
        var live = document.getElementById("live");
        if (!fresh || !live) { throw new Error("no live section"); }
        live.replaceWith(document.importNode(fresh, true));
        document.title = new DOMParser().parseFromString(text, "text/html").title;
        refreshes += 1;
        document.body.dataset.refreshes = String(refreshes);
        document.body.classList.remove("unreachable");
      })
      .catch(function () {
        // Keep the last numbers on screen, greyed out, until the mirror answers again.
        document.body.classList.add("unreachable");
      })
      .finally(function () { window.setTimeout(refresh, seconds * 1000); });
  }

  window.setTimeout(refresh, seconds * 1000);
})();
