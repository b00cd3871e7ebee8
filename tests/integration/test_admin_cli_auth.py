"""The operator CLI against a daemon that wants bearer tokens: it sends the one it is given
(OJS_TOKEN or --token-file), and says how to give one when it has none."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.daemon import Daemon

pytestmark = pytest.mark.integration

ADMIN, PRODUCER = "a" * 24, "p" * 24


def cli(daemon: Daemon, *argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("OJS_TOKEN", "OJS_TOKEN_FILE")}
    return subprocess.run(
        [sys.executable, "-m", "ojs_amqp", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env={**base, "OJS_URL": daemon.url, **env},
        check=False,
    )


@pytest.fixture
def guarded(make_daemon: Callable[..., Daemon], tmp_path: Path) -> Daemon:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"admin:{ADMIN}\nproducer:{PRODUCER}\n")
    return make_daemon("--auth-tokens-file", str(tokens), test_mode=False)


def test_without_a_token_the_cli_is_refused_and_told_how_to_send_one(guarded: Daemon) -> None:
    done = cli(guarded, "queues")
    assert done.returncode == 1
    assert "error: unauthenticated:" in done.stderr
    assert "OJS_TOKEN" in done.stderr and "--token-file" in done.stderr


def test_the_token_in_ojs_token_is_sent_and_its_scope_applies(guarded: Daemon) -> None:
    queue = f"cli-auth-{uuid.uuid4().hex[:6]}"
    # Given a producer token: a push is allowed ...
    pushed = cli(guarded, "push", "a.job", "[1]", "--queue", queue, "--json", OJS_TOKEN=PRODUCER)
    assert pushed.returncode == 0, pushed.stderr
    job_id = json.loads(pushed.stdout)["job"]["id"]
    shown = cli(guarded, "job", "show", job_id, "--json", OJS_TOKEN=PRODUCER)
    assert shown.returncode == 0 and json.loads(shown.stdout)["job"]["id"] == job_id
    # ... and dead letters, an admin's business, are forbidden
    refused = cli(guarded, "dead-letters", "list", OJS_TOKEN=PRODUCER)
    assert refused.returncode == 1 and "error: forbidden:" in refused.stderr
    # With the admin token the queue listing (which also reads /metrics) works
    listed = cli(guarded, "queues", "--json", OJS_TOKEN=ADMIN)
    assert listed.returncode == 0, listed.stderr
    assert queue in [q["name"] for q in json.loads(listed.stdout)["queues"]]


def test_a_token_file_wins_over_the_environment(guarded: Daemon, tmp_path: Path) -> None:
    secret = tmp_path / "admin-token"
    secret.write_text(ADMIN + "\n")
    done = cli(guarded, "dead-letters", "list", "--token-file", str(secret), OJS_TOKEN="x" * 24)
    assert done.returncode == 0, done.stderr
    by_env = cli(guarded, "dead-letters", "list", OJS_TOKEN_FILE=str(secret))
    assert by_env.returncode == 0, by_env.stderr
    wrong = cli(guarded, "health", OJS_TOKEN="x" * 24)  # health stays open to probes
    assert wrong.returncode == 0, wrong.stderr


def test_an_unreadable_token_file_is_a_usage_error(guarded: Daemon, tmp_path: Path) -> None:
    done = cli(guarded, "queues", "--token-file", str(tmp_path / "missing"))
    assert done.returncode == 2
    assert "cannot read --token-file" in done.stderr
