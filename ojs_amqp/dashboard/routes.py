"""The dashboard's routes: its static files under /ojs/admin/, and the session endpoints
(`POST /ojs/admin/session` logs in with an admin token, `GET` says who is logged in and
whether they may change things, `DELETE` logs out)."""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from importlib import resources

from ojs_amqp.errors import Forbidden, InvalidRequest, NotFound, Unauthenticated
from ojs_amqp.http.auth import required_scopes, scope_of
from ojs_amqp.http.responses import json_response, read_object
from ojs_amqp.http.server import Request, Response, Stream
from ojs_amqp.settings import Settings

from .search import PATH as SEARCH_PATH
from .search import JobSearch
from .sessions import COOKIE, SESSION_TTL_S, SessionStore, cookie_value

ROOT = "/ojs/admin"
Route = Callable[[Request], Awaitable[Response | Stream]]
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".txt": "text/plain; charset=utf-8",
}
#: Everything the page loads or calls comes from the daemon itself; nothing may be framed.
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
#: A scope may read the admin API / change things through it when it may call these.
_READ_PROBE = ("GET", "/ojs/v1/admin/queues")
_WRITE_PROBE = ("POST", "/ojs/v1/admin/jobs/x/retry")


def enabled(settings: Settings) -> bool:
    """`auto` serves the dashboard only when the API listens on loopback alone; a directory
    served in its place (--admin-ui-dir, such as the official admin UI) takes /ojs/admin/."""
    if settings.admin_ui_dir:
        return False
    if settings.dashboard == "auto":
        return settings.listens_on_loopback_only
    return settings.dashboard == "on"


def serve(settings: Settings, engine: object) -> Dashboard | None:
    """The dashboard of an API with these settings, or None when it is not served."""
    return Dashboard(settings, engine) if enabled(settings) else None


class StaticFiles:
    """The package's static files, read once; answered with an ETag so reloads are cheap."""

    def __init__(self) -> None:
        self.files: dict[str, tuple[bytes, str, str]] = {}
        folder = resources.files("ojs_amqp.dashboard") / "static"
        for entry in folder.iterdir():
            suffix = entry.name[entry.name.rfind(".") :]
            if entry.is_file() and suffix in _TYPES:
                body = entry.read_bytes()
                etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
                self.files[entry.name] = (body, _TYPES[suffix], etag)

    def response(self, name: str, request: Request) -> Response:
        found = self.files.get(name)
        if found is None and "." in name:
            raise NotFound(f"the dashboard has no file {name!r}", details={"path": request.path})
        if found is None:  # any other path is a client route of the page: its index
            found = self.files["index.html"]
        body, content_type, etag = found
        headers = [("Content-Type", content_type), ("Cache-Control", "no-cache"), ("ETag", etag),
                   ("Content-Security-Policy", _CSP), ("X-Content-Type-Options", "nosniff"),
                   ("Referrer-Policy", "no-referrer")]  # fmt: skip
        if request.headers.get("if-none-match") == etag:
            return Response(b"", 304, headers)
        return Response(body, 200, headers)


class Dashboard:
    """The page and its login; `authorization` lets a session cookie stand for its token."""

    def __init__(self, settings: Settings, engine: object) -> None:
        self.settings = settings
        self.sessions = SessionStore()
        self.static = StaticFiles()
        self.search = JobSearch(lambda: getattr(engine, "store", None))

    def routes(self) -> list[tuple[str, str, Route]]:
        return [
            ("GET", ROOT, self.redirect),
            ("GET", f"{ROOT}/", self.index),
            ("GET", f"{ROOT}/{{name}}", self.file),
            ("GET", f"{ROOT}/session", self.whoami),
            ("POST", f"{ROOT}/session", self.login),
            ("DELETE", f"{ROOT}/session", self.logout),
            ("GET", SEARCH_PATH, self.search.handle),
        ]

    def authorization(self, request: Request) -> str:
        """`Bearer <token>` for a request carrying a live session cookie, else "".

        A change (anything but GET/HEAD) counts only with a JSON body type: a form another
        site posts cannot carry it, on top of SameSite=Strict."""
        session_id = cookie_value(request.headers.get("cookie", ""))
        session = self.sessions.get(session_id) if session_id else None
        if session is None:
            return ""
        if request.method not in ("GET", "HEAD"):
            media = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if media not in ("application/json", "application/openjobspec+json"):
                return ""
        return f"Bearer {session.token}"

    async def redirect(self, request: Request) -> Response:
        return Response(b"", 308, [("Location", f"{ROOT}/")])

    async def index(self, request: Request) -> Response:
        return self.static.response("index.html", request)

    async def file(self, request: Request) -> Response:
        return self.static.response(request.params["name"], request)

    async def whoami(self, request: Request) -> Response:
        if not self.settings.auth_tokens:
            return json_response(_identity("admin", login_required=False))
        session_id = cookie_value(request.headers.get("cookie", ""))
        session = self.sessions.get(session_id) if session_id else None
        if session is None:  # not an error: the page asks this before it shows the login
            return json_response({"authenticated": False, "login_required": True})
        return json_response(_identity(session.scope, login_required=True))

    async def login(self, request: Request) -> Response:
        token = read_object(request).get("token")
        if not isinstance(token, str) or not token.strip():
            raise InvalidRequest("token must be a non-empty string", details={"field": "token"})
        if not self.settings.auth_tokens:
            return json_response(_identity("admin", login_required=False))
        scope = scope_of(self.settings.auth_tokens, token.strip())
        if scope is None:
            raise Unauthenticated("the token is not valid")
        if scope not in required_scopes(*_READ_PROBE):
            raise Forbidden(f"a {scope} token cannot use the dashboard; use an admin token")
        session_id = self.sessions.open(token.strip(), scope)
        secure = "; Secure" if self.settings.tls_cert_file else ""
        cookie = (f"{COOKIE}={session_id}; Path=/ojs; HttpOnly; SameSite=Strict; "
                  f"Max-Age={SESSION_TTL_S}{secure}")  # fmt: skip
        return json_response(_identity(scope, login_required=True), 200, [("Set-Cookie", cookie)])

    async def logout(self, request: Request) -> Response:
        session_id = cookie_value(request.headers.get("cookie", ""))
        if session_id:
            self.sessions.close(session_id)
        cookie = f"{COOKIE}=; Path=/ojs; HttpOnly; SameSite=Strict; Max-Age=0"
        return json_response({"logged_out": True}, 200, [("Set-Cookie", cookie)])


def _identity(scope: str, *, login_required: bool) -> dict[str, object]:
    return {
        "authenticated": True,
        "scope": scope,
        "can_write": scope in required_scopes(*_WRITE_PROBE),
        "login_required": login_required,
    }
