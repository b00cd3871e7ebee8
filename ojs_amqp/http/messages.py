"""What the HTTP edge hands the app and gets back: a parsed request, a response, a stream.

They live apart from the server so that route modules need not import the connection
machinery (`server.py`, `connection.py`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from urllib.parse import parse_qs


class Request:
    """One parsed request. Header names are lower case; a repeated header's values are
    joined by ", " (RFC 9110 §5.3). `params` holds the path parameters the router matched."""

    __slots__ = ("_query", "body", "headers", "method", "params", "path", "query_string")

    def __init__(
        self, method: str, path: str, query_string: str, headers: dict[str, str], body: bytes
    ) -> None:
        self.method = method
        self.path = path
        self.query_string = query_string
        self.headers = headers
        self.body = body
        self.params: dict[str, str] = {}
        self._query: dict[str, list[str]] | None = None

    @property
    def query(self) -> dict[str, list[str]]:
        if self._query is None:
            self._query = parse_qs(self.query_string, keep_blank_values=True)
        return self._query

    def query_value(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else default


class Response:
    __slots__ = ("body", "headers", "status")

    def __init__(
        self, body: bytes, status: int = 200, headers: list[tuple[str, str]] | None = None
    ) -> None:
        self.body = body
        self.status = status
        self.headers = headers if headers is not None else []


class Stream:
    """A response whose body is produced over time (sent chunked); the server stops the
    producer when the client goes away or the server closes."""

    __slots__ = ("chunks", "headers", "status")

    def __init__(
        self, chunks: AsyncIterator[bytes], headers: list[tuple[str, str]], status: int = 200
    ) -> None:
        self.chunks = chunks
        self.headers = headers
        self.status = status


Handler = Callable[[Request], Awaitable[Response | Stream]]
#: The response for a request the server refuses itself (malformed, too large): status and
#: message in, the app's error response out.
ErrorResponder = Callable[[int, str], Response]
