// Ferry console behaviour: confirmations and the live task page. No inline scripts (the page's CSP forbids them).
(function () {
  "use strict";
  // <form data-confirm="..."> asks before it is sent.
  document.addEventListener("submit", function (ev) {
    var form = ev.target;
    var question = form && form.getAttribute && form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) { ev.preventDefault(); }
  }, true);
})();
