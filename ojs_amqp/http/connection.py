"""One client connection: httptools parsing, pipelined requests answered in order, streams
with write flow control, and the limits that keep one client from holding the daemon (URL,
headers, pipelining, linger after a refusal). The server (`server.py`) owns the set of them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import TYPE_CHECKING, cast
from urllib.parse import unquote

import httptools

from ojs_amqp.http.messages import Request, Response, Stream
from ojs_amqp.http.wire import header_block, status_line

if TYPE_CHECKING:
    from ojs_amqp.http.server import HttpServer

log = logging.getLogger("ojs_amqp.http")

MAX_URL_BYTES = 8 * 1024
MAX_HEADER_BYTES = 64 * 1024
#: Requests a client may pipeline ahead of the one being answered before we stop reading.
MAX_PIPELINED = 32
#: How long a refused request's sender may go on sending (dropped) before the close.
LINGER_S = 2.0


class _Incoming:
    """A request being received."""

    __slots__ = ("body", "body_size", "header_bytes", "headers", "refused", "url")

    def __init__(self) -> None:
        self.url = b""
        self.headers: dict[str, str] = {}
        self.header_bytes = 0
        self.body: list[bytes] = []
        self.body_size = 0
        #: (status, message) once the server has decided to refuse it (too large, ...).
        self.refused: tuple[int, str] | None = None


#: A queued answer: the request (or the refusal when None) and whether to keep alive.
_Queued = tuple[Request | None, tuple[int, str], bool]


class Connection(asyncio.Protocol):
    def __init__(self, server: HttpServer) -> None:
        self._server = server
        self._loop = server.loop
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._incoming = _Incoming()
        self._queue: deque[_Queued] = deque()
        self._busy: asyncio.Task[None] | None = None
        #: The answer in progress is a stream: cancelled when the client goes away.
        self.streaming = False
        self._closing = False
        self._refused = False
        self._reading = True
        self._writable: asyncio.Event | None = None
        self.last_active = self._loop.time()
        #: When the request being received began (None between requests): a client that
        #: trickles one in byte by byte must not hold the connection open for ever.
        self.receiving_since: float | None = None

    @property
    def idle(self) -> bool:
        return self._busy is None and not self._queue

    # --- transport events ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        server = self._server
        if len(server.connections) >= server.max_connections:
            # Answer before closing, so a client sees why rather than a bare reset.
            self._refused = True
            self._send(server.error_response(503, "too many open connections"), False, False)
            self._close_after_refusal()
            return
        server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.connections.discard(self)
        self._closing = True
        self._queue.clear()
        if self.streaming and self._busy is not None:
            self._busy.cancel()
        if self._writable is not None:
            self._writable.set()  # a stream waiting for the socket to drain sees the close

    def pause_writing(self) -> None:
        self._writable = asyncio.Event()

    def resume_writing(self) -> None:
        if self._writable is not None:
            self._writable.set()
            self._writable = None

    def data_received(self, data: bytes) -> None:
        if self._closing or self._refused:
            return
        self.last_active = self._loop.time()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # What follows the request is another protocol: answer it, then close.
            self._refused = True
            self._pause_reading()
            if self._queue:
                request, refusal, _ = self._queue.pop()
                self._queue.append((request, refusal, False))
            elif self._busy is None:
                self.close()
        except httptools.HttpParserError as exc:
            self._refuse(400, f"malformed HTTP request: {exc}")

    # --- parser callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._incoming = _Incoming()
        self.receiving_since = self._loop.time()

    def on_url(self, url: bytes) -> None:
        incoming = self._incoming
        incoming.url += url
        if len(incoming.url) > MAX_URL_BYTES and incoming.refused is None:
            incoming.refused = (414, f"the request URL exceeds {MAX_URL_BYTES} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        incoming = self._incoming
        incoming.header_bytes += len(name) + len(value)
        if incoming.header_bytes > MAX_HEADER_BYTES:
            if incoming.refused is None:
                incoming.refused = (431, f"the request headers exceed {MAX_HEADER_BYTES} bytes")
            return
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        previous = incoming.headers.get(key)
        incoming.headers[key] = text if previous is None else f"{previous}, {text}"

    def on_headers_complete(self) -> None:
        if self._refused:
            return  # a request pipelined behind one already refused: never answered
        incoming = self._incoming
        limit = self._server.max_body_bytes
        declared = incoming.headers.get("content-length", "")
        if incoming.refused is None and declared.isdigit() and int(declared) > limit:
            incoming.refused = (413, f"request body exceeds the limit of {limit} bytes")
        if incoming.refused is not None:
            self._refuse(*incoming.refused)  # the body is never going to be read
        elif incoming.headers.get("expect", "").lower() == "100-continue" and self.idle:
            self._write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        incoming = self._incoming
        if self._refused:
            return
        incoming.body_size += len(body)
        if incoming.body_size > self._server.max_body_bytes:
            limit = self._server.max_body_bytes
            self._refuse(413, f"request body exceeds the limit of {limit} bytes")
            return
        incoming.body.append(body)

    def on_message_complete(self) -> None:
        self.receiving_since = None
        if self._refused:
            return
        incoming = self._incoming
        try:
            url = httptools.parse_url(incoming.url)
        except httptools.HttpParserInvalidURLError:
            self._refuse(400, "the request URL cannot be parsed")
            return
        path = (url.path or b"/").decode("latin-1")
        if "%" in path:
            path = unquote(path)
        query = url.query.decode("latin-1") if url.query else ""
        chunks = incoming.body
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        method = self._parser.get_method().decode("latin-1")
        request = Request(method, path, query, incoming.headers, body)
        keep_alive = self._parser.should_keep_alive() and not self._server.closing
        self._enqueue((request, (0, ""), keep_alive))

    # --- answering -------------------------------------------------------------------------

    def refuse_slow_request(self, now: float, timeout_s: float) -> None:
        """408 for a request still arriving `timeout_s` after it began. Time spent with
        reading paused (the client pipelined ahead of us) is ours, not the client's."""
        since = self.receiving_since
        if since is None or self._refused or self._closing:
            return
        if not self._reading:
            self.receiving_since = now
        elif now - since > timeout_s:
            self._refuse(408, f"the request did not arrive within {timeout_s:g} s")

    def _refuse(self, status: int, message: str) -> None:
        """Answer `status` after what is queued, read nothing more, then close."""
        self._refused = True
        self._pause_reading()
        self._enqueue((None, (status, message), False))

    def _enqueue(self, queued: _Queued) -> None:
        self._queue.append(queued)
        if len(self._queue) > MAX_PIPELINED:
            self._pause_reading()
        if self._busy is None:
            self._busy = self._loop.create_task(self._answer_queue())

    async def _answer_queue(self) -> None:
        try:
            while self._queue and not self._closing:
                request, (status, message), keep_alive = self._queue.popleft()
                if request is None:
                    self._send(self._server.error_response(status, message), False, False)
                elif not await self._answer(request, keep_alive):
                    keep_alive = False
                if not keep_alive:
                    if request is None:
                        self._close_after_refusal()
                    else:
                        self.close()
                    return
                if not self._reading and len(self._queue) <= MAX_PIPELINED // 2:
                    self._resume_reading()
        finally:
            self._busy = None
            self.last_active = self._loop.time()
            if self._server.closing and not self._queue:
                self.close()

    async def _answer(self, request: Request, keep_alive: bool) -> bool:
        """Answer one request; False when the connection must close after it."""
        try:
            response = await self._server.handler(request)
        except Exception:  # the app maps its own errors; this is the last resort
            log.exception("unhandled error on %s %s", request.method, request.path)
            response = self._server.error_response(500, "internal error")
        if isinstance(response, Stream):
            await self._stream(response, request.method == "HEAD")
            return False
        keep_alive = keep_alive and not self._server.closing
        self._send(response, keep_alive, request.method == "HEAD")
        return keep_alive

    def _send(self, response: Response, keep_alive: bool, head_only: bool) -> None:
        body = response.body
        head = b"".join((
            status_line(response.status),
            self._server.clock.date_line(),
            header_block(response.headers),
            b"Content-Length: %d\r\n" % len(body),
            b"\r\n" if keep_alive else b"Connection: close\r\n\r\n",
        ))  # fmt: skip
        self._write(head if head_only else head + body)

    async def _stream(self, stream: Stream, head_only: bool) -> None:
        self._write(b"".join((
            status_line(stream.status),
            self._server.clock.date_line(),
            header_block(stream.headers),
            b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        )))  # fmt: skip
        if head_only:
            return
        self.streaming = True
        chunks = stream.chunks
        try:
            async for chunk in chunks:
                if self._closing:
                    break
                if chunk:
                    self._write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                if self._writable is not None:
                    await self._writable.wait()
            self._write(b"0\r\n\r\n")
        finally:
            self.streaming = False
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()

    # --- connection management -------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        transport = self._transport
        if transport is not None and not self._closing:
            transport.write(data)

    def _pause_reading(self) -> None:
        if self._reading and self._transport is not None:
            self._reading = False
            with contextlib.suppress(RuntimeError):
                self._transport.pause_reading()

    def _resume_reading(self) -> None:
        if not self._reading and self._transport is not None and not self._closing:
            self._reading = True
            with contextlib.suppress(RuntimeError):
                self._transport.resume_reading()

    def end_stream(self) -> None:
        if self.streaming and self._busy is not None:
            self._busy.cancel()

    def _close_after_refusal(self) -> None:
        """Close gently after refusing a request the client may still be sending: a socket
        closed with unread data answers with a reset, which can destroy the refusal before
        the client reads it. So half-close, read and drop what still comes, then close."""
        transport = self._transport
        if transport is None or transport.is_closing() or not transport.can_write_eof():
            self.close()
            return
        transport.write_eof()  # when the client closes too, the transport closes (eof_received)
        self._resume_reading()  # data_received drops everything once refused
        self._loop.call_later(LINGER_S, self.close)

    def close(self) -> None:
        self._closing = True
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()
