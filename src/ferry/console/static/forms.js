// Create forms: show only the inputs the chosen task type uses. Hidden inputs are disabled, so the browser
// neither checks nor sends them (the server ignores them anyway). No inline scripts: the page's CSP forbids them.
(function () {
  "use strict";
  function apply(form) {
    var name = form.getAttribute("data-switch");
    var chooser = name && form.querySelector("[name='" + name + "']");
    var value = chooser ? chooser.value.toLowerCase() : "";
    form.querySelectorAll("[data-only-for]").forEach(function (field) {
      var wanted = field.getAttribute("data-only-for").toLowerCase().split(" ");
      var shown = wanted.indexOf(value) >= 0;
      field.hidden = !shown;
      field.querySelectorAll("input, select, textarea").forEach(function (el) { el.disabled = !shown; });
    });
  }
  function init() {
    document.querySelectorAll("form[data-switch]").forEach(function (form) {
      apply(form);
      form.addEventListener("change", function (ev) {
        if (ev.target && ev.target.name === form.getAttribute("data-switch")) { apply(form); }
      });
    });
  }
  if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", init); } else { init(); }
})();
