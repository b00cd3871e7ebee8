"""The private-node harness for either broker series (no node is started here)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.rabbit_node import CHROOT_SBIN, SBIN, RabbitNode, new_node


def _chroot_node(tmp_path: Path) -> RabbitNode:
    base = tmp_path / "tmp" / "ojsfault-x"
    base.mkdir(parents=True)
    return RabbitNode(base=base, root=tmp_path, epmd_port=4999)


def test_a_chroot_node_sees_its_files_under_the_roots_tmp(tmp_path: Path) -> None:
    node = _chroot_node(tmp_path)
    env = node.env()
    assert env["HOME"] == "/tmp/ojsfault-x/home"
    assert env["RABBITMQ_CONFIG_FILE"] == "/tmp/ojsfault-x/rabbitmq.conf"
    assert env["RABBITMQ_PID_FILE"] == "/tmp/ojsfault-x/node.pid"
    assert env["ERL_EPMD_PORT"] == "4999"  # its own epmd, not the host's 4369
    assert node.command("rabbitmqctl", "status") == [
        "chroot", str(tmp_path), f"{CHROOT_SBIN}/rabbitmqctl", "status",
    ]  # fmt: skip


def test_a_host_node_keeps_host_paths_and_the_hosts_epmd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ERL_EPMD_PORT", "1234")  # a caller's setting never leaks into a node
    node = RabbitNode(base=tmp_path)
    env = node.env()
    assert env["HOME"] == str(tmp_path / "home")
    assert "ERL_EPMD_PORT" not in env
    assert node.command("rabbitmq-server", "-detached") == [
        str(SBIN / "rabbitmq-server"), "-detached",
    ]  # fmt: skip


def test_the_ctl_script_reaches_only_its_node(tmp_path: Path) -> None:
    node = _chroot_node(tmp_path)
    script = tmp_path / "ctl"
    node.write_ctl_script(script)
    # run it with `echo` in place of chroot's target: what it would execute, argument by argument
    text = script.read_text().replace(" chroot ", " echo chroot ")
    script.write_text(text)
    out = subprocess.run(
        [str(script), "-q", "list_queues"], capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == [
        "chroot", str(tmp_path), f"{CHROOT_SBIN}/rabbitmqctl", "-n", node.name,
        "-q", "list_queues",
    ]  # fmt: skip
    assert "ERL_EPMD_PORT=4999" in text and "HOME=/tmp/ojsfault-x/home" in text


def test_an_unknown_broker_series_is_refused() -> None:
    with pytest.raises(RuntimeError, match=r"expected one of 3\.10, 4\.0"):
        new_node("3.13")
