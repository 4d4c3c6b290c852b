// Run page: keep the live log scrolled to the end while the reader is at the end.
(function () {
  const log = document.getElementById("run-log");
  if (!log) return;
  let following = true;
  log.addEventListener("scroll", function () {
    following = log.scrollTop + log.clientHeight >= log.scrollHeight - 24;
  });
  document.body.addEventListener("htmx:oobAfterSwap", function () {
    if (following) log.scrollTop = log.scrollHeight;
  });
})();
