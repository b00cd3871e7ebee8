"""aiormq's private state is touched in one module only, and the fast path that relies on it
is on at the aiormq version pyproject.toml pins."""

from __future__ import annotations

import ast
import importlib.metadata
import re
from pathlib import Path

import aiormq.connection
import pytest

from ojs_amqp.amqp import _aiormq, frames
from ojs_amqp.metrics import Metrics

PACKAGE = Path(__file__).resolve().parents[2] / "ojs_amqp"
ALLOWED = PACKAGE / "amqp" / "_aiormq.py"
#: What aiormq keeps for itself: the confirm bookkeeping of a channel, a connection's write
#: queue, channel table, reader task and name-mangled state, and the frame reader class.
INTERNAL = {
    "confirmations", "message_id_delivery_tag", "write_queue", "channels", "FrameReceiver",
    "_reader_task",
}  # fmt: skip
MANGLED = re.compile(r"^_(Connection|Channel)__")
#: Counted up only by the confirm bookkeeping (Basic.Deliver has a public one, read freely).
WRITTEN = {"delivery_tag"}


def _touches(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        name = None
        if isinstance(node, ast.Attribute):
            if node.attr in INTERNAL or MANGLED.match(node.attr):
                name = node.attr
        elif isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Attribute):
            if node.target.attr in WRITTEN:
                name = f"{node.target.attr} (counted up)"
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if node.value in INTERNAL or MANGLED.match(node.value):
                name = f"{node.value!r} (as a string)"
        elif isinstance(node, ast.Import | ast.ImportFrom):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                modules.append(node.module or "")
            if any(m.startswith("aiormq.connection") for m in modules):
                name = "import of aiormq.connection"
        if name is not None:
            found.append(f"line {getattr(node, 'lineno', '?')}: {name}")
    return found


def test_only_the_aiormq_module_touches_aiormq_internals() -> None:
    offenders = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == ALLOWED:
            continue
        hits = _touches(ast.parse(path.read_text(), str(path)))
        if hits:
            offenders[str(path.relative_to(PACKAGE))] = hits
    assert not offenders, f"aiormq internals outside amqp/_aiormq.py: {offenders}"


def test_the_check_itself_sees_an_internal_being_touched() -> None:
    tree = ast.parse("def f(ch, conn):\n    ch.delivery_tag += 1\n    conn.write_queue.put(1)\n")
    assert len(_touches(tree)) == 2


def test_the_fast_path_is_on_at_the_pinned_aiormq() -> None:
    found = _aiormq.check()
    assert found.version == importlib.metadata.version("aiormq")
    assert found.available, f"aiormq {found.version} lacks {found.missing}"
    metrics = Metrics()
    assert _aiormq.report_at_start(metrics.fast_path) is True
    assert b"ojs_amqp_fast_path 1.0" in metrics.render()


def test_the_pin_is_the_range_this_test_ran_in() -> None:
    pyproject = (PACKAGE.parent / "pyproject.toml").read_text()
    (pin,) = re.findall(r'"aiormq>=([\d.]+),<([\d.]+)"', pyproject)
    version = tuple(int(p) for p in importlib.metadata.version("aiormq").split(".")[:3])
    low = tuple(int(p) for p in pin[0].split("."))
    high = tuple(int(p) for p in pin[1].split("."))
    assert low <= version < high


def test_a_missing_internal_turns_the_fast_path_off_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _aiormq.check.cache_clear()
    monkeypatch.setattr(_aiormq, "_CHANNEL_NEEDS", (*_aiormq._CHANNEL_NEEDS, "gone_in_aiormq_8"))
    monkeypatch.setattr(_aiormq.report_at_start, "warned", False, raising=False)
    try:
        metrics = Metrics()
        assert _aiormq.report_at_start(metrics.fast_path) is False
        assert "Channel.gone_in_aiormq_8" in caplog.text and "public API" in caplog.text
        assert b"ojs_amqp_fast_path 0.0" in metrics.render()
    finally:
        _aiormq.check.cache_clear()


def test_importing_the_sdk_leaves_aiormqs_frame_reader_alone() -> None:
    import subprocess
    import sys

    code = (
        "import aiormq.connection as c; before = c.FrameReceiver\n"
        "import ojs_amqp.sdk, ojs_amqp.sdk.worker, ojs_amqp.sdk.client\n"
        "assert c.FrameReceiver is before, c.FrameReceiver\n"
        "ojs_amqp.sdk.use_fast_frame_reader()\n"
        "from ojs_amqp.amqp.frames import BufferedFrameReceiver\n"
        "assert c.FrameReceiver is BufferedFrameReceiver\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_the_frame_reader_can_be_given_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aiormq.connection, "FrameReceiver", frames.AIORMQ_RECEIVER)
    assert frames.install() is True
    assert _aiormq.frame_reader() is frames.BufferedFrameReceiver
    _aiormq.uninstall_frame_reader()
    assert aiormq.connection.FrameReceiver is frames.AIORMQ_RECEIVER


@pytest.mark.parametrize(
    ("sends", "expected"),
    [
        (b"", "accepted the connection but did not answer the AMQP handshake"),
        (b"\x01\x00", "began the AMQP handshake but did not finish it"),
    ],
)
def test_without_the_fast_reader_a_stalled_handshake_still_says_how_far_it_got(
    monkeypatch: pytest.MonkeyPatch, sends: bytes, expected: str
) -> None:
    """The SDK no longer installs the frame reader; its connect watches the handshake
    through aiormq's public transport factory instead."""
    import asyncio

    from ojs_amqp.errors import BrokerStalled
    from ojs_amqp.sdk.transport import connect

    monkeypatch.setattr(aiormq.connection, "FrameReceiver", frames.AIORMQ_RECEIVER)

    async def scenario() -> BrokerStalled:
        held: list[asyncio.StreamWriter] = []

        async def answer(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            held.append(writer)
            if sends:
                writer.write(sends)  # half a frame, then nothing
                await writer.drain()

        server = await asyncio.start_server(answer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            with pytest.raises(BrokerStalled) as caught:
                await connect(
                    f"amqp://guest:guest@127.0.0.1:{port}/", name="t", attempts=1,
                    attempt_timeout_s=0.5,
                )  # fmt: skip
            return caught.value
        finally:
            for writer in held:
                writer.close()
            server.close()
            await server.wait_closed()

    error = asyncio.run(scenario())
    assert aiormq.connection.FrameReceiver is frames.AIORMQ_RECEIVER
    assert expected in error.message
