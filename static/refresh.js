// Reloads pages that ask for it (data-refresh, in seconds) unless the user
// is typing in a form. The dashboard works without it.
(function () {
  var seconds = Number(document.body.getAttribute("data-refresh"));
  if (!seconds) return;
  setInterval(function () {
    var active = document.activeElement;
    if (active && (active.tagName === "INPUT" || active.tagName === "SELECT")) return;
    window.location.reload();
  }, seconds * 1000);
})();
