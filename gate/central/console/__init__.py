"""`gate central console`: the staff's web console over the same stores and query functions as the CLI.

auth: accounts, roles, sessions, CSRF, login rate limit; forms: validated form input; app: routes and pages;
measures: the policy in force and publishing; serve: start-up."""

ROLES = ("tracer", "operator", "supervisor")  # tracing and CSV; fleet and lane commands; measures and audit
