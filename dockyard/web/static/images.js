// Image page: keep the live build log scrolled to its end while new lines arrive,
// unless the reader has scrolled up to look at something.
(function () {
  document.addEventListener("htmx:beforeSwap", function (event) {
    const log = document.getElementById("build-log");
    if (!log || !log.contains(event.detail.target)) return;
    log.dataset.follow = log.scrollHeight - log.scrollTop - log.clientHeight < 40 ? "1" : "";
  });
  document.addEventListener("htmx:afterSettle", function () {
    const log = document.getElementById("build-log");
    if (log && log.dataset.follow === "1") log.scrollTop = log.scrollHeight;
  });
})();
