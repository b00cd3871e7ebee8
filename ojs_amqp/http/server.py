"""A small HTTP/1.1 server on httptools (llhttp, the parser Node.js uses): the HTTP edge.

Why not aiohttp's server: the HTTP binding is CPU-bound in one process, and aiohttp spends
~40 µs of CPU on a request to a trivial handler on the reference machine and ~100 µs on one
of ours (request and multidict objects, the middleware chain, response preparation); this one
spends ~12 µs (ADR 0002). It does what the binding needs and no more: keep-alive, pipelined
requests answered in order, `Expect: 100-continue`, chunked request bodies, size limits (413
before the body is read), HEAD, streamed responses (Server-Sent Events) with write flow
control, an idle timeout, a deadline for receiving a request (slow clients get 408), a cap on
open connections, TLS, and a close that lets requests in progress finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time

from ojs_amqp.http.connection import Connection
from ojs_amqp.http.messages import ErrorResponder, Handler, Request, Response, Stream
from ojs_amqp.http.wire import DateClock

#: Request, Response and Stream are defined in messages.py; imported from here too.
__all__ = [
    "ErrorResponder",
    "Handler",
    "HttpServer",
    "Request",
    "Response",
    "Stream",
]

KEEPALIVE_TIMEOUT_S = 75.0
#: A request's headers and body must arrive within this long of its first byte.
REQUEST_TIMEOUT_S = 30.0
MAX_CONNECTIONS = 4096


class HttpServer:
    """Serves `handler` on host:port; `close()` stops listening, ends streams, and lets
    requests in progress finish (up to `grace_s`)."""

    def __init__(
        self,
        handler: Handler,
        *,
        max_body_bytes: int,
        error_response: ErrorResponder,
        keepalive_timeout_s: float = KEEPALIVE_TIMEOUT_S,
        request_timeout_s: float = REQUEST_TIMEOUT_S,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.handler = handler
        self.max_body_bytes = max_body_bytes
        self.error_response = error_response
        self.keepalive_timeout_s = keepalive_timeout_s
        self.request_timeout_s = request_timeout_s
        self.max_connections = max_connections
        self.clock = DateClock()
        self.connections: set[Connection] = set()
        self.closing = False
        self._server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweeper: asyncio.Task[None] | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None, "the server is not started"
        return self._loop

    @property
    def port(self) -> int:
        assert self._server is not None, "the server is not started"
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self, host: str, port: int, ssl_context: ssl.SSLContext | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        self._server = await self._loop.create_server(
            lambda: Connection(self), host, port, ssl=ssl_context, reuse_address=True
        )
        self._sweeper = asyncio.create_task(self._sweep_idle(), name="http-idle")

    async def _sweep_idle(self) -> None:
        """Close keep-alive connections idle longer than the timeout and refuse requests
        that take too long to arrive: one timer for all of them, rather than one re-armed
        per request."""
        shortest = min(self.keepalive_timeout_s, self.request_timeout_s)
        period = max(0.05, min(1.0, shortest / 4))
        while True:
            await asyncio.sleep(period)
            now = self.loop.time()
            cutoff = now - self.keepalive_timeout_s
            for conn in list(self.connections):
                conn.refuse_slow_request(now, self.request_timeout_s)
                if conn.idle and conn.receiving_since is None and conn.last_active < cutoff:
                    conn.close()

    async def close(self, grace_s: float = 10.0) -> None:
        self.closing = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._server is not None:
            self._server.close()
        deadline = time.monotonic() + grace_s
        while self.connections and time.monotonic() < deadline:
            for conn in list(self.connections):
                conn.end_stream()
                if conn.idle:
                    conn.close()
            await asyncio.sleep(0.01)
        for conn in list(self.connections):
            conn.close()
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
