"""Method + path -> handler, with `{name}` path parameters; 404 and 405 as OJS errors.

Also what a route table is: an object whose `routes()` lists (method, path, handler) rows,
which the app factory (`app.py`) mounts."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable
from typing import Generic, Protocol, TypeVar

from ojs_amqp.errors import MethodNotAllowed, NoSuchEndpoint
from ojs_amqp.http.messages import Request, Response, Stream

#: The prefix of the OJS HTTP binding's paths.
BASE = "/ojs/v1"
H = TypeVar("H", bound=Callable[..., Awaitable[object]])
_PARAM = re.compile(r"\{([a-z_]+)\}")

Route = Callable[[Request], Awaitable[Response | Stream]]
#: (method, path, handler); a path may hold `{name}` parameters, found in `request.params`.
RouteRow = tuple[str, str, Route]


class RouteTable(Protocol):
    """A module's endpoints; `HttpApi.mount` adds them to the router."""

    def routes(self) -> Iterable[RouteRow]: ...


class Router(Generic[H]):
    """Static paths are one dict lookup; paths with parameters are tried in order."""

    def __init__(self) -> None:
        self._static: dict[str, dict[str, H]] = {}
        self._patterns: list[tuple[re.Pattern[str], dict[str, H]]] = []

    def add(self, method: str, path: str, handler: H) -> None:
        methods = self._methods_of(path)
        methods[method] = handler
        if method == "GET":
            methods.setdefault("HEAD", handler)

    def _methods_of(self, path: str) -> dict[str, H]:
        if "{" not in path:
            return self._static.setdefault(path, {})
        parts = _PARAM.split(path)  # literal, name, literal, name, ..., literal
        regex = "".join(
            f"(?P<{part}>[^/]+)" if i % 2 else re.escape(part) for i, part in enumerate(parts)
        )
        pattern = re.compile(f"^{regex}$")
        for known, methods in self._patterns:
            if known.pattern == pattern.pattern:
                return methods
        fresh: dict[str, H] = {}
        self._patterns.append((pattern, fresh))
        return fresh

    def resolve(self, method: str, path: str) -> tuple[H, dict[str, str]]:
        """The handler and path parameters; NoSuchEndpoint or MethodNotAllowed (with Allow).

        Several patterns can match one path (`/jobs/{id}` and a static `/jobs/batch`, or
        routes added with different parameter names): the first that has the method wins, and
        405 lists the methods of all of them."""
        static = self._static.get(path)
        if static is not None and method in static:
            return static[method], {}  # the usual case: one dict lookup
        matched = [] if static is None else [static]
        for pattern, methods in self._patterns:
            match = pattern.match(path)
            if match is not None:
                if method in methods:
                    return methods[method], match.groupdict()
                matched.append(methods)
        if not matched:
            raise NoSuchEndpoint(f"no such endpoint: {path}", details={"path": path})
        allowed = sorted({m for methods in matched for m in methods})
        raise MethodNotAllowed(
            f"{method} is not allowed on {path}; use {', '.join(allowed)}",
            details={"path": path, "allowed": allowed},
            headers={"Allow": ", ".join(allowed)},
        )
