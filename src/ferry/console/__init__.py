"""The web console at /console: server-rendered pages over the same service functions the OMS API calls.

Conventions for every page module (ferry.console.routes.*):
- A module exports `router` (an APIRouter, paths relative to /console) and is listed in app.ROUTERS.
- Every page takes `session: CurrentProject` (ferry.console.session): it redirects to the sign-in page when
  there is no valid session, and carries the project id every service call is scoped to — a page never takes a
  project id from the URL or a form.
- Every state-changing route is a POST that takes `form: CheckedForm`: the body is read as a URL-encoded form and
  refused (403) unless it carries the session's CSRF token (field `csrf_token`, or header X-CSRF-Token for htmx
  calls; base.html sets that header on every htmx request). app.create_console refuses to build when a POST
  route lacks it.
- Pages render with `render(request, session, "name.html", **values)` (ferry.console.render); templates extend
  base.html and get `session`, `csrf_token` and `static(path)`. Service refusals (TaskError, UsageError...) are
  shown with `flash_error`, in the page, with the API's own message — never a second copy of a rule.
- No secret is ever rendered: forms that take keys leave their fields empty when shown again.
"""
