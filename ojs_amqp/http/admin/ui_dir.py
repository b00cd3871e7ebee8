"""`--admin-ui-dir DIR`: a directory of static files (a built single-page app, such as the
official OJS admin UI) served under `/ojs/admin/`, with the fallback such an app needs:
`/ojs/admin` redirects to `/ojs/admin/`, a path naming no file answers `index.html` (the
app's own router reads the path), and `<anything>/assets/<file>` finds `assets/<file>`
(relative asset paths from a deep link). Nothing outside DIR is ever read."""

from __future__ import annotations

import mimetypes
from pathlib import Path

from ojs_amqp.errors import NotFound
from ojs_amqp.http.server import Request, Response

PREFIX = "/ojs/admin"
#: Path parameters per depth: the router matches one segment per parameter.
MAX_DEPTH = 6
_TYPES = {
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".css": "text/css",
    ".html": "text/html; charset=utf-8",
    ".svg": "image/svg+xml",
    ".json": "application/json",
    ".woff2": "font/woff2",
    ".map": "application/json",
}


class StaticDir:
    def __init__(self, root: str) -> None:
        self.root = Path(root).resolve()
        if not (self.root / "index.html").is_file():
            raise ValueError(f"--admin-ui-dir {root}: no index.html in it")

    def routes(self) -> list[tuple[str, str, object]]:
        out: list[tuple[str, str, object]] = [("GET", PREFIX, self.redirect),
                                              ("GET", f"{PREFIX}/", self.serve)]  # fmt: skip
        path = PREFIX
        for depth in range(MAX_DEPTH):
            path += f"/{{p{chr(ord('a') + depth)}}}"
            out.append(("GET", path, self.serve))
        return out

    async def redirect(self, request: Request) -> Response:
        return Response(b"", 308, [("Location", f"{PREFIX}/")])

    async def serve(self, request: Request) -> Response:
        relative = request.path[len(PREFIX) :].lstrip("/")
        file = self._file(relative)
        rooted = f"/{relative}"
        if file is None and "/assets/" in rooted:
            file = self._file("assets/" + rooted.rsplit("/assets/", 1)[1])
        if file is None:
            if relative.startswith("assets/") or Path(relative).suffix in _TYPES:
                raise NotFound(f"no file {relative!r} in the admin UI directory",
                               details={"path": request.path})  # fmt: skip
            file = self.root / "index.html"  # a client-side route
        kind = _TYPES.get(file.suffix) or mimetypes.guess_type(file.name)[0]
        cache = "no-cache" if file.name == "index.html" else "public, max-age=3600"
        headers = [("Content-Type", kind or "application/octet-stream"), ("Cache-Control", cache)]
        return Response(file.read_bytes(), 200, headers)

    def _file(self, relative: str) -> Path | None:
        if not relative:
            return None
        candidate = (self.root / relative).resolve()
        if not candidate.is_relative_to(self.root) or not candidate.is_file():
            return None
        return candidate
