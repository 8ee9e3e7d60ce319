// Create forms: show only the inputs that apply — those of the chosen task type (data-only-for) and those another
// input calls for (data-shown-name/-values: the KMS key while the encryption is KMS, the Azure connection string
// while the cloud is Azure). Hidden inputs are disabled, so the browser neither checks nor sends them; the server
// validates whatever arrives with the API's own model. No inline scripts: the page's CSP forbids them.
(function () {
  "use strict";
  function lower(s) { return (s || "").toLowerCase(); }

  function apply(form) {
    var name = form.getAttribute("data-switch");
    var chooser = name && form.querySelector("[name='" + name + "']");
    var value = chooser ? lower(chooser.value) : "";
    form.querySelectorAll(".field").forEach(function (field) {
      var shown = true;
      var only = field.getAttribute("data-only-for");
      if (only) { shown = lower(only).split(" ").indexOf(value) >= 0; }
      var other = field.getAttribute("data-shown-name");
      if (shown && other && !field.classList.contains("has-error")) {
        var input = form.querySelector("[name='" + other + "']");
        var wanted = lower(field.getAttribute("data-shown-values")).split(" ");
        shown = !!input && !input.disabled && wanted.indexOf(lower(input.value)) >= 0;
      }
      field.hidden = !shown;
      field.querySelectorAll("input, select, textarea").forEach(function (el) { el.disabled = !shown; });
    });
  }

  function init() {
    document.querySelectorAll("form.oms-form").forEach(function (form) {
      apply(form);
      form.addEventListener("change", function (ev) {
        if (ev.target && ev.target.tagName === "SELECT") { apply(form); }
      });
    });
  }
  if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", init); } else { init(); }
})();
