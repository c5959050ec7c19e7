// Aegis console: live updates without a reload (plain fetch, no library). Every
// data-live seconds the page's own URL is fetched again and <main> is replaced by the new
// one; not while the tab is hidden, nor while the operator is in a form field or has typed
// into a form that posts (a reason for an approval), so nothing typed is lost.
(function () {
  "use strict";
  var main = document.querySelector("main[data-live]");
  if (!main) {
    return;
  }
  var every = Number(main.getAttribute("data-live")) * 1000;
  if (!(every > 0)) {
    return;
  }
  function busy() {
    var active = document.activeElement;
    if (active && /^(INPUT|TEXTAREA|SELECT)$/.test(active.tagName) && active.type !== "hidden") {
      return true;
    }
    var typed = document.querySelectorAll(
      "main form[method=post] input:not([type=hidden]):not([type=submit]), main form[method=post] textarea");
    for (var i = 0; i < typed.length; i++) {
      if (typed[i].value) {
        return true;
      }
    }
    return false;
  }
  function schedule() {
    window.setTimeout(refresh, every);
  }
  function refresh() {
    if (document.hidden || busy()) {
      schedule();
      return;
    }
    fetch(window.location.href, {headers: {"Accept": "text/html"}, cache: "no-store",
                                 credentials: "same-origin"})
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (!html || busy()) {
          return;
        }
        var next = new DOMParser().parseFromString(html, "text/html").querySelector("main");
        if (next) {
          next.setAttribute("data-updated", String(Date.now()));
          main.replaceWith(next);
          main = next;
        }
      })
      .catch(function () { /* the next round tries again */ })
      .then(schedule);
  }
  schedule();
}());
