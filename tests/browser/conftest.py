"""Headless Chromium (Debian's `chromium` package, never a browser download) driven by
Playwright against a real daemon: every page records its console errors, uncaught
exceptions, failed requests and any request that leaves the daemon, and a test fails on
any of them unless it names the one it provokes.

The daemons run on the session's private RabbitMQ node (`make_node_daemon`): the page does
not depend on the broker, and the shared broker stays free for the rest of the suite."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Request, sync_playwright

CHROMIUM = os.environ.get("OJS_TEST_CHROMIUM", "/usr/bin/chromium")


@pytest.fixture
def browser() -> Iterator[Browser]:
    """One browser per test, stopped before the test's daemons (Playwright's sync API runs
    an event loop while it is started, and their teardown runs one of its own)."""
    if not os.path.exists(CHROMIUM):
        pytest.fail(
            f"{CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium; "
            ".ci/run does), or point OJS_TEST_CHROMIUM at a Chromium binary"
        )
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield chromium
        chromium.close()


@dataclass
class Watched:
    """A page and what went wrong on it."""

    page: Page
    origin: str
    shots: Path
    problems: list[str] = field(default_factory=list)
    #: Substrings of console errors the test provokes on purpose.
    expected: list[str] = field(default_factory=list)
    shot_count: int = 0

    def open(self, route: str = "/") -> None:
        self.page.goto(f"{self.origin}/ojs/admin/#{route}")

    def shot(self, name: str) -> Path:
        self.shot_count += 1
        path = self.shots / f"{self.shot_count:02d}-{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def check(self) -> None:
        unexpected = [p for p in self.problems if not any(e in p for e in self.expected)]
        assert not unexpected, "the page reported:\n" + "\n".join(unexpected)


def watch(browser: Browser, origin: str, shots: Path, **context: Any) -> Watched:
    ctx = browser.new_context(viewport=context.pop("viewport", {"width": 1280, "height": 900}),
                              **context)  # fmt: skip
    page = ctx.new_page()
    watched = Watched(page, origin, shots)

    def on_console(msg: ConsoleMessage) -> None:
        if msg.type == "error":
            watched.problems.append(f"console error: {msg.text} ({msg.location.get('url')})")

    def on_request(req: Request) -> None:
        if not (req.url.startswith(origin + "/") or req.url.startswith("data:")):
            watched.problems.append(f"request left the daemon: {req.method} {req.url}")

    page.on("console", on_console)
    page.on("pageerror", lambda exc: watched.problems.append(f"uncaught: {exc}"))
    page.on("request", on_request)
    page.on("requestfailed", lambda r: watched.problems.append(
        f"request failed: {r.method} {r.url}: {r.failure}")
        if "/events/stream" not in r.url else None)  # fmt: skip
    return watched


@pytest.fixture
def open_page(browser: Browser, tmp_path: Path) -> Iterator[Callable[..., Watched]]:
    """Pages on a daemon's dashboard; each is checked for problems when the test ends."""
    made: list[Watched] = []
    shots = tmp_path / "screenshots"
    shots.mkdir()

    def factory(origin: str, **context: Any) -> Watched:
        watched = watch(browser, origin, shots, **context)
        made.append(watched)
        return watched

    yield factory
    for watched in made:
        watched.page.context.close()  # closes its event streams first: no error from them
    for watched in made:
        watched.check()


def api(
    method: str, url: str, body: Any = None, token: str | None = None, timeout: float = 30.0
) -> tuple[int, Any]:
    """One JSON call to the daemon (not through the page): to set up and to check."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, _decoded(resp.read())
    except urllib.error.HTTPError as err:
        raw = err.read()
        return err.code, _decoded(raw)


def _decoded(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return raw  # not JSON (the dashboard's own files)
