"""The HTTP/1.1 server over real sockets: framing, keep-alive, pipelining, limits, streams,
and closing. The handler is a small stand-in app; the daemon's routes are tested elsewhere."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from ojs_amqp.errors import MethodNotAllowed, NotFound
from ojs_amqp.http.routing import Router
from ojs_amqp.http.server import HttpServer, Request, Response, Stream

LIMIT = 1000


class App:
    def __init__(self) -> None:
        self.seen: list[Request] = []
        self.stream_closed = asyncio.Event()
        self.release = asyncio.Event()
        self.waiting = asyncio.Event()

    async def handle(self, request: Request) -> Response | Stream:
        self.seen.append(request)
        if request.path == "/slow":
            await asyncio.sleep(0.2)
        if request.path == "/wait":
            self.waiting.set()
            await self.release.wait()
        if request.path == "/boom":
            raise RuntimeError("handler bug")
        if request.path == "/stream":
            return Stream(self._chunks(), [("Content-Type", "text/event-stream")])
        body = b"%s %s %s" % (request.method.encode(), request.path.encode(), request.body)
        return Response(
            body, 200, [("Content-Type", "text/plain"), ("X-Query", request.query_string)]
        )

    async def _chunks(self) -> AsyncIterator[bytes]:
        try:
            yield b"one"
            yield b"two"
            if self.release.is_set():
                return
            await asyncio.Event().wait()  # until the client goes or the server closes
            yield b"never"
        finally:
            self.stream_closed.set()


def _refused(status: int, message: str) -> Response:
    return Response(f"refused {status}: {message}".encode(), status, [("X-Refused", "1")])


@contextlib.asynccontextmanager
async def serving(**options: Any) -> AsyncIterator[tuple[App, HttpServer]]:
    app = App()
    server = HttpServer(app.handle, max_body_bytes=LIMIT, error_response=_refused, **options)
    await server.start("127.0.0.1", 0)
    try:
        yield app, server
    finally:
        await server.close(grace_s=1.0)


async def _connect(server: HttpServer) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", server.port)


async def _response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One response; a chunked body is returned de-chunked."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v for k, _, v in (line.partition(": ") for line in lines[1:] if line)}
    if headers.get("transfer-encoding") == "chunked":
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                return status, headers, body
            body += chunk[:-2]
    length = int(headers.get("content-length", "0"))
    return status, headers, await reader.readexactly(length)


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


def _post(path: str, body: bytes, extra: str = "") -> bytes:
    return b"POST %s HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n%s\r\n%s" % (
        path.encode(), len(body), extra.encode(), body
    )  # fmt: skip


async def test_a_keep_alive_connection_carries_several_requests() -> None:
    async with serving() as (app, server):
        reader, writer = await _connect(server)
        for body in (b"a", b"bb"):
            writer.write(_post("/x", body))
            status, headers, answer = await _response(reader)
            assert (status, answer) == (200, b"POST /x " + body)
            assert headers["content-type"] == "text/plain" and "date" in headers
        assert len(app.seen) == 2
        await _close(writer)


async def test_pipelined_requests_are_answered_in_order_even_when_the_first_is_slower() -> None:
    async with serving() as (_, server):
        reader, writer = await _connect(server)
        writer.write(_post("/slow", b"1") + _post("/fast", b"2"))
        first, second = await _response(reader), await _response(reader)
        assert first[2] == b"POST /slow 1" and second[2] == b"POST /fast 2"
        await _close(writer)


async def test_expect_100_continue_gets_the_interim_answer_before_the_body_is_sent() -> None:
    async with serving() as (_, server):
        reader, writer = await _connect(server)
        writer.write(
            b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n"
        )
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert interim.startswith(b"HTTP/1.1 100 Continue")
        writer.write(b"abc")
        assert (await _response(reader))[2] == b"POST /x abc"
        await _close(writer)


async def test_a_chunked_request_body_is_reassembled() -> None:
    async with serving() as (_, server):
        reader, writer = await _connect(server)
        writer.write(b"POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")  # fmt: skip
        assert (await _response(reader))[2] == b"POST /x abcde"
        await _close(writer)


@pytest.mark.parametrize("chunked", [False, True])
async def test_a_body_over_the_limit_is_refused_with_413_and_the_connection_closed(
    chunked: bool,
) -> None:
    async with serving() as (app, server):
        reader, writer = await _connect(server)
        body = b"x" * (LIMIT + 1)
        if chunked:
            writer.write(b"POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                         b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))  # fmt: skip
        else:
            writer.write(_post("/x", body))
        status, headers, answer = await _response(reader)
        assert status == 413 and headers["x-refused"] == "1" and b"limit" in answer
        assert headers["connection"] == "close"
        assert await asyncio.wait_for(reader.read(), 5) == b""
        assert app.seen == []  # the app never saw it
        await _close(writer)


async def test_a_declared_length_over_the_limit_is_refused_before_the_body_arrives() -> None:
    async with serving() as (_, server):
        reader, writer = await _connect(server)
        writer.write(b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 99999999\r\n\r\n")
        assert (await _response(reader))[0] == 413
        await _close(writer)


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"NOT HTTP AT ALL\r\n\r\n", 400),
        (b"GET /x HTTP/1.1\r\nHost: t\r\nContent-Length: abc\r\n\r\n", 400),
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: t\r\n\r\n", 414),
        (b"GET /x HTTP/1.1\r\n" + b"X-Big: " + b"b" * 70_000 + b"\r\n\r\n", 431),
    ],
    ids=["garbage", "bad-length", "long-url", "big-headers"],
)
async def test_malformed_or_oversized_requests_are_refused_and_the_connection_closed(
    raw: bytes, status: int
) -> None:
    async with serving() as (app, server):
        reader, writer = await _connect(server)
        writer.write(raw)
        answer = await _response(reader)
        assert answer[0] == status and answer[1]["x-refused"] == "1"
        assert await asyncio.wait_for(reader.read(), 5) == b""
        assert app.seen == []
        await _close(writer)


async def test_an_upgrade_request_is_answered_over_http_and_the_connection_closed() -> None:
    async with serving() as (app, server):
        reader, writer = await _connect(server)
        writer.write(b"GET /x HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
                     b"\x00\x01binary follows")  # fmt: skip
        status, headers, body = await _response(reader)
        assert (status, body) == (200, b"GET /x ") and headers["connection"] == "close"
        assert await asyncio.wait_for(reader.read(), 5) == b""
        assert len(app.seen) == 1
        await _close(writer)


async def test_head_answers_the_headers_and_length_without_a_body() -> None:
    async with serving() as (_, server):
        reader, writer = await _connect(server)
        writer.write(b"HEAD /x HTTP/1.1\r\nHost: t\r\n\r\nGET /y HTTP/1.1\r\nHost: t\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert b"Content-Length: 8\r\n" in head  # len(b"HEAD /x ")
        # the next bytes are the second response, not a body
        assert (await _response(reader))[2] == b"GET /y "
        await _close(writer)


@pytest.mark.parametrize(
    "raw",
    [b"GET /x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n", b"GET /x HTTP/1.0\r\n\r\n"],
    ids=["connection-close", "http-1.0"],
)
async def test_a_client_that_does_not_keep_alive_gets_connection_close(raw: bytes) -> None:
    async with serving() as (_, server):
        reader, writer = await _connect(server)
        writer.write(raw)
        status, headers, _ = await _response(reader)
        assert status == 200 and headers["connection"] == "close"
        assert await asyncio.wait_for(reader.read(), 5) == b""
        await _close(writer)


async def test_query_strings_and_percent_encoded_paths_reach_the_handler() -> None:
    async with serving() as (app, server):
        reader, writer = await _connect(server)
        writer.write(b"GET /jobs/a%20b?limit=5&x=&x=2 HTTP/1.1\r\nHost: t\r\n\r\n")
        status, headers, _ = await _response(reader)
        request = app.seen[0]
        assert status == 200 and request.path == "/jobs/a b"
        assert headers["x-query"] == "limit=5&x=&x=2"
        assert request.query == {"limit": ["5"], "x": ["", "2"]}
        assert request.query_value("x") == "2" and request.query_value("none", "d") == "d"
        await _close(writer)


async def test_a_handler_that_raises_gets_a_500_and_the_connection_stays_usable() -> None:
    async with serving() as (_, server):
        reader, writer = await _connect(server)
        writer.write(_post("/boom", b"") + _post("/x", b"ok"))
        assert (await _response(reader))[0] == 500
        assert (await _response(reader))[2] == b"POST /x ok"
        await _close(writer)


async def test_a_stream_is_sent_chunked_and_stopped_when_the_client_goes() -> None:
    async with serving() as (app, server):
        reader, writer = await _connect(server)
        writer.write(b"GET /stream HTTP/1.1\r\nHost: t\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert b"Transfer-Encoding: chunked" in head
        assert await asyncio.wait_for(reader.readexactly(8), 5) == b"3\r\none\r\n"
        await _close(writer)
        await asyncio.wait_for(app.stream_closed.wait(), 5)


async def test_a_stream_that_ends_sends_the_last_chunk() -> None:
    async with serving() as (app, server):
        app.release.set()
        reader, writer = await _connect(server)
        writer.write(b"GET /stream HTTP/1.1\r\nHost: t\r\n\r\n")
        assert (await _response(reader))[2] == b"onetwo"
        await _close(writer)


async def test_close_lets_a_request_in_progress_finish_and_ends_streams() -> None:
    app = App()
    server = HttpServer(app.handle, max_body_bytes=LIMIT, error_response=_refused)
    await server.start("127.0.0.1", 0)
    slow_reader, slow_writer = await _connect(server)
    slow_writer.write(b"GET /wait HTTP/1.1\r\nHost: t\r\n\r\n")
    stream_reader, stream_writer = await _connect(server)
    stream_writer.write(b"GET /stream HTTP/1.1\r\nHost: t\r\n\r\n")
    await asyncio.wait_for(stream_reader.readuntil(b"\r\n\r\n"), 5)
    await asyncio.wait_for(app.waiting.wait(), 5)
    port = server.port
    closing = asyncio.create_task(server.close(grace_s=5.0))
    await asyncio.sleep(0.1)
    app.release.set()
    status, headers, body = await _response(slow_reader)
    assert status == 200 and body == b"GET /wait " and headers["connection"] == "close"
    await asyncio.wait_for(closing, 5)
    assert app.stream_closed.is_set()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)
    await _close(slow_writer)
    await _close(stream_writer)


async def test_idle_keep_alive_connections_are_closed_after_the_timeout() -> None:
    async with serving(keepalive_timeout_s=0.2) as (_, server):
        reader, writer = await _connect(server)
        writer.write(_post("/x", b""))
        await _response(reader)
        assert await asyncio.wait_for(reader.read(), 5) == b""
        await _close(writer)


async def test_a_request_trickled_in_slower_than_the_deadline_gets_408_and_a_close() -> None:
    async with serving(request_timeout_s=0.3, keepalive_timeout_s=60) as (app, server):
        reader, writer = await _connect(server)

        async def trickle() -> None:  # one byte every 50 ms: never idle, never complete
            for byte in _post("/x", b"abc")[:-1]:
                writer.write(bytes([byte]))
                await asyncio.sleep(0.05)

        trickling = asyncio.create_task(trickle())
        status, headers, answer = await _response(reader)
        trickling.cancel()
        assert status == 408 and headers["connection"] == "close"
        assert b"did not arrive within 0.3 s" in answer
        assert await asyncio.wait_for(reader.read(), 5) == b""
        assert app.seen == []
        await _close(writer)


async def test_a_slow_handler_is_not_taken_for_a_slow_request() -> None:
    async with serving(request_timeout_s=0.1) as (app, server):
        reader, writer = await _connect(server)
        writer.write(_post("/wait", b""))
        await asyncio.wait_for(app.waiting.wait(), 5)
        await asyncio.sleep(0.4)  # several sweeps while the handler holds the request
        app.release.set()
        status, _, answer = await _response(reader)
        assert (status, answer) == (200, b"POST /wait ")
        await _close(writer)


async def test_connections_beyond_the_cap_are_answered_503_and_closed() -> None:
    async with serving(max_connections=2) as (_, server):
        kept = [await _connect(server) for _ in range(2)]
        for reader, writer in kept:  # both are served
            writer.write(_post("/x", b""))
            assert (await _response(reader))[0] == 200
        reader, writer = await _connect(server)
        status, headers, answer = await _response(reader)
        assert status == 503 and headers["connection"] == "close"
        assert b"too many open connections" in answer
        assert await asyncio.wait_for(reader.read(), 5) == b""
        await _close(writer)
        await _close(kept[0][1])
        await asyncio.sleep(0.05)  # the server sees the close and has room again
        reader, writer = await _connect(server)
        writer.write(_post("/x", b""))
        assert (await _response(reader))[0] == 200
        for _, w in (*kept[1:], (reader, writer)):
            await _close(w)


def test_the_router_matches_static_paths_and_parameters_and_says_what_is_allowed() -> None:
    router: Router[Any] = Router()
    router.add("GET", "/jobs/{id}", "get")
    router.add("DELETE", "/jobs/{id}", "delete")
    router.add("POST", "/jobs/{id}/activate", "activate")
    router.add("POST", "/jobs", "push")
    assert router.resolve("GET", "/jobs/j-1") == ("get", {"id": "j-1"})
    assert router.resolve("HEAD", "/jobs/j-1") == ("get", {"id": "j-1"})
    assert router.resolve("POST", "/jobs/j-1/activate") == ("activate", {"id": "j-1"})
    assert router.resolve("POST", "/jobs") == ("push", {})
    with pytest.raises(NotFound):
        router.resolve("GET", "/jobs/a/b")
    with pytest.raises(MethodNotAllowed) as refused:
        router.resolve("PUT", "/jobs/j-1")
    assert refused.value.headers == {"Allow": "DELETE, GET, HEAD"}
