// Cookie-authenticated htmx and fetch calls carry the CSRF token from the page's meta tag.
(function () {
  const meta = document.querySelector('meta[name="csrf-token"]');
  const token = meta ? meta.getAttribute("content") : "";
  document.addEventListener("htmx:configRequest", function (event) {
    event.detail.headers["X-CSRFToken"] = token;
  });
  window.dockyardCsrfToken = token;
})();
