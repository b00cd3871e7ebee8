"""What the dashboard adds to the HTTP API, called without a browser: the content search
(bad input is a 400 naming the field, admin scopes only) and the session endpoints'
answers; and the session store's expiry and bound, as units."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from ojs_amqp.dashboard import sessions
from ojs_amqp.dashboard.sessions import SessionStore, cookie_value
from tests.browser.conftest import api
from tests.browser.jobs import Jobs
from tests.daemon import Daemon

ADMIN = "admin-token-0123456789abcdef"
PRODUCER = "producer-token-0123456789abcdef"
READER = "reader-token-0123456789abcdef"


def test_search_finds_by_args_and_meta_and_refuses_bad_input(
    make_node_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"admin:{ADMIN}\nproducer:{PRODUCER}\nadmin-read:{READER}\n")
    daemon = make_node_daemon("--auth-tokens-file", str(tokens))
    jobs = Jobs(daemon.url, token=ADMIN)
    one = jobs.push("user.sync", [{"email": "Ada@Example.org"}], "dash-api", meta={"tenant": "t-9"})
    jobs.push("user.sync", [{"email": "bob@example.org"}], "dash-api")
    jobs.push("user.sync", [{"email": "ada@example.org"}], "dash-other")
    search = f"{daemon.url}/ojs/v1/admin/search"

    status, body = api("GET", f"{search}?q=ada@example", token=READER)
    assert status == 200, body
    assert {j["queue"] for j in body["items"]} == {"dash-api", "dash-other"}  # any case
    status, body = api("GET", f"{search}?q=ada@example&queue=dash-api", token=ADMIN)
    assert [j["id"] for j in body["items"]] == [one["id"]]
    status, body = api("GET", f"{search}?q=t-9&in=meta", token=ADMIN)
    assert [j["id"] for j in body["items"]] == [one["id"]]
    assert body["searched"] == {"field": "meta", "text": "t-9", "newest": 100_000}
    status, body = api("GET", f"{search}?q=nobody&in=args&per_page=1", token=ADMIN)
    assert status == 200 and body["items"] == []

    for query, field in (("", "q"), ("?q=x&in=result", "in"), ("?q=x&per_page=0", "per_page"),
                         ("?q=x&per_page=ten", "per_page")):  # fmt: skip
        status, body = api("GET", search + query, token=ADMIN)
        assert status == 400, (query, body)
        assert body["error"]["code"] == "invalid_request"
        assert body["error"]["details"]["field"] == field
    assert api("GET", f"{search}?q=ada", token=PRODUCER)[0] == 403
    assert api("GET", f"{search}?q=ada")[0] == 401

    # the session endpoints: who is logged in (nobody, without a cookie), and the login's refusals
    session = f"{daemon.url}/ojs/admin/session"
    assert api("GET", session) == (200, {"authenticated": False, "login_required": True})
    status, body = api("POST", session, {"token": 42})
    assert status == 400 and body["error"]["details"]["field"] == "token"
    assert api("POST", session, {"token": "wrong-token-0123456789"})[0] == 401
    assert api("POST", session, {"token": PRODUCER})[0] == 403
    status, body = api("POST", session, {"token": READER})
    assert status == 200
    assert body == {"authenticated": True, "scope": "admin-read", "can_write": False,
                    "login_required": True}  # fmt: skip


def test_without_tokens_the_page_needs_no_login(make_node_daemon: Callable[..., Daemon]) -> None:
    daemon = make_node_daemon()
    status, body = api("GET", f"{daemon.url}/ojs/admin/session")
    assert status == 200 and body["authenticated"] and body["can_write"]
    assert not body["login_required"]
    status, body = api("GET", f"{daemon.url}/ojs/admin/queues")
    assert status == 200 and b"<title>ojs-amqp dashboard</title>" in body  # a page route
    status, body = api("GET", f"{daemon.url}/ojs/admin/no-such-file.js")
    assert status == 404 and body["error"]["code"] == "not_found"
    status, body = api("GET", f"{daemon.url}/ojs/admin/app.js")
    assert status == 200 and b"import" in body


def test_sessions_expire_and_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    store = SessionStore(ttl_s=0.05)
    sid = store.open("secret", "admin")
    assert store.get(sid) is not None and store.get(sid).scope == "admin"  # type: ignore[union-attr]
    time.sleep(0.06)
    assert store.get(sid) is None
    monkeypatch.setattr(sessions, "MAX_SESSIONS", 3)
    store = SessionStore()
    ids = [store.open(f"t{i}", "admin") for i in range(5)]
    assert [store.get(i) is not None for i in ids] == [False, False, True, True, True]
    store.close(ids[-1])
    assert store.get(ids[-1]) is None
    assert cookie_value(f"a=1; ojs_admin_session={ids[2]}; b=2") == ids[2]
    assert cookie_value("ojs_admin_sessionx=1; other=2") is None
