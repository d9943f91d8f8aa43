// Live power on the household page: fetch /home/live.json every few seconds and
// update the elements marked data-live="key" (no inline script: the CSP forbids it).
(function () {
  var root = document.querySelector("[data-live-url]");
  if (!root) return;
  var url = root.getAttribute("data-live-url");
  var every = parseInt(root.getAttribute("data-live-every") || "5", 10) * 1000;
  function tick() {
    fetch(url, {credentials: "same-origin", cache: "no-store"})
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (data) {
        if (!data) return;
        Object.keys(data).forEach(function (k) {
          document.querySelectorAll('[data-live="' + k + '"]').forEach(function (el) {
            el.textContent = data[k];
          });
        });
      })
      .catch(function () {})
      .then(function () { setTimeout(tick, every); });
  }
  setTimeout(tick, every);
})();
