"""The web dashboard the daemon serves at /ojs/admin/: static files (plain ES modules, no
build step) over the OJS admin API, and the login that turns an admin token into a session
cookie (docs/dashboard.md)."""
