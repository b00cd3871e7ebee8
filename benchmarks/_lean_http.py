"""A minimal keep-alive HTTP/1.1 client: the load generator of the HTTP benchmarks.

aiohttp's client spends ~150 µs of CPU per request on this machine; at the rates the targets
ask for, that alone would take most of a core on the 2-core box the daemon and the broker
share, and the benchmark would measure its own client. This one writes a pre-built request
and reads the status line, Content-Length and body: ~10 µs per request. It understands only
what the daemon sends (Content-Length bodies, no chunked encoding) and says so when that
does not hold.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import orjson


class LeanHttpError(RuntimeError):
    pass


class _Connection(asyncio.Protocol):
    """One keep-alive connection carrying one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._waiter: asyncio.Future[tuple[int, bytes]] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(LeanHttpError(f"connection closed ({exc!r})"))

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self._buffer[:end]).lower()
        at = head.find(b"\r\ncontent-length:")
        if at < 0:
            waiter.set_exception(LeanHttpError(f"response without Content-Length: {head!r}"))
            return
        line_end = head.find(b"\r\n", at + 2)
        length = int(head[at + 17 : line_end if line_end > 0 else None])
        if len(self._buffer) < end + 4 + length:
            return
        body = bytes(self._buffer[end + 4 : end + 4 + length])
        del self._buffer[: end + 4 + length]
        waiter.set_result((int(head[9:12]), body))

    async def send(self, request: bytes) -> tuple[int, bytes]:
        assert self.transport is not None
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        try:
            return await self._waiter
        finally:
            self._waiter = None


class LeanSession:
    """A pool of connections to one host; `post_json` takes a free one (or opens one)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._idle: list[_Connection] = []
        self._all: list[_Connection] = []

    async def _connection(self) -> _Connection:
        if self._idle:
            return self._idle.pop()
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(_Connection, self.host, self.port)
        self._all.append(conn)
        return conn

    async def post_json(self, path: str, body: Any, expect: int) -> Any:
        data = orjson.dumps(body)
        request = (
            b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (path.encode(), self.host.encode(), len(data), data)
        )
        conn = await self._connection()
        status, raw = await conn.send(request)
        self._idle.append(conn)
        if status != expect:
            raise LeanHttpError(f"POST {path} answered {status}: {raw[:300]!r}")
        return orjson.loads(raw)

    async def close(self) -> None:
        for conn in self._all:
            if conn.transport is not None:
                conn.transport.close()
        self._all.clear()
        self._idle.clear()
