"""The dashboard's login: an admin token typed into the page becomes an HttpOnly,
SameSite=Strict session cookie that the daemon accepts for the API, other tokens are
refused, and logging out ends the session."""

from __future__ import annotations

import urllib.request
from collections.abc import Callable
from pathlib import Path

from playwright.sync_api import expect

from tests.browser.conftest import Watched, api
from tests.browser.jobs import Jobs
from tests.daemon import Daemon

ADMIN = "admin-token-0123456789abcdef"
PRODUCER = "producer-token-0123456789abcdef"
READER = "reader-token-0123456789abcdef"
#: Every control of the dashboard that changes something.
CHANGES = ", ".join(("#retry", "#cancel", "#copy-args", "#enqueue-copy", "#purge", "#pause",
                     "#resume", "#retry-selected", "#delete-selected", "#retry-matching",
                     "input.select-row", "input.select-all"))  # fmt: skip


def _with_cookie(method: str, url: str, cookie: str, content_type: str) -> int:
    req = urllib.request.Request(url, data=b"{}" if method != "GET" else None, method=method)
    req.add_header("Cookie", cookie)
    req.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


def test_login_exchanges_an_admin_token_for_a_strict_httponly_cookie(
    make_node_daemon: Callable[..., Daemon], open_page: Callable[..., Watched], tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"admin:{ADMIN}\nproducer:{PRODUCER}\n")
    daemon = make_node_daemon("--auth-tokens-file", str(tokens))
    jobs = Jobs(daemon.url, token=ADMIN)
    queue = "dash-login"
    job = jobs.push("report.build", [{"month": 11}], queue)
    w = open_page(daemon.url)
    # the two refusals below are answered 401 and 403, which the browser logs
    w.expected += ["status of 401", "status of 403"]

    w.open("/")
    token = w.page.get_by_label("Admin token")
    expect(token).to_be_focused()
    token.fill("not-a-token-of-this-daemon")
    w.page.keyboard.press("Enter")
    expect(w.page.locator(".login [role=alert]")).to_have_text("the token is not valid")
    token.fill(PRODUCER)
    w.page.get_by_role("button", name="Log in").click()
    expect(w.page.locator(".login [role=alert]")).to_contain_text("use an admin token")
    w.shot("login-refused")
    token.fill(ADMIN)
    w.page.get_by_role("button", name="Log in").click()
    expect(w.page.locator("main h1")).to_have_text("Overview")
    expect(w.page.locator("#identity")).to_contain_text("admin session")
    w.shot("logged-in")

    cookies = [c for c in w.page.context.cookies() if c["name"] == "ojs_admin_session"]
    assert len(cookies) == 1, cookies
    cookie = cookies[0]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/ojs"
    assert ADMIN not in cookie["value"]
    assert "ojs_admin_session" not in w.page.evaluate("document.cookie")  # scripts cannot read it
    header = f"ojs_admin_session={cookie['value']}"

    # the daemon takes the cookie for the API: reads, and changes sent as JSON only
    dead_letters = f"{daemon.url}/ojs/v1/dead-letter"
    assert _with_cookie("GET", dead_letters, header, "application/json") == 200
    assert _with_cookie("GET", dead_letters, "ojs_admin_session=forged", "application/json") == 401
    assert api("GET", dead_letters)[0] == 401
    cancel = f"{daemon.url}/ojs/v1/jobs/{job['id']}"
    assert _with_cookie("DELETE", cancel, header, "application/x-www-form-urlencoded") == 401
    assert jobs.get(job["id"])["state"] == "available"

    # a change made in the page goes through with the cookie alone
    w.open(f"/job/{job['id']}")
    w.page.get_by_role("button", name="Cancel", exact=True).click()
    expect(w.page.locator("#job-state")).to_have_text("cancelled")
    assert jobs.get(job["id"])["state"] == "cancelled"

    w.page.get_by_role("button", name="Log out").click()
    expect(w.page.get_by_label("Admin token")).to_be_visible()
    assert _with_cookie("GET", dead_letters, header, "application/json") == 401


def test_the_flag_turns_the_dashboard_off(make_node_daemon: Callable[..., Daemon]) -> None:
    daemon = make_node_daemon("--dashboard", "off")
    status, body = api("GET", f"{daemon.url}/ojs/admin/")
    assert status == 404 and body["error"]["code"] == "not_found"
    assert api("GET", f"{daemon.url}/ojs/v1/health")[0] == 200


def test_a_read_only_token_sees_no_button_that_changes_anything(
    make_node_daemon: Callable[..., Daemon], open_page: Callable[..., Watched], tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"admin:{ADMIN}\nadmin-read:{READER}\n")
    daemon = make_node_daemon("--auth-tokens-file", str(tokens))
    jobs = Jobs(daemon.url, token=ADMIN)
    queue = "dash-readonly"
    dead = jobs.dead_letter(queue, "sms.send", [{"to": "+1"}], "carrier down")
    waiting = jobs.push("sms.send", [{"to": "+2"}], queue)
    w = open_page(daemon.url)
    w.open("/")
    w.page.get_by_label("Admin token").fill(READER)
    w.page.keyboard.press("Enter")
    expect(w.page.locator("#identity")).to_contain_text("read-only")
    views = {
        f"/job/{dead['id']}": ("#envelope", "sms.send"),
        f"/job/{waiting['id']}": ("#envelope", "sms.send"),
        "/dead": ("#dead-letters", dead["id"]),
        f"/queue/{queue}": ("#jobs", dead["id"]),
    }
    for route, (ready, text) in views.items():
        w.open(route)
        expect(w.page.locator(ready)).to_contain_text(text)
        w.page.wait_for_load_state("networkidle")
        assert w.page.locator(CHANGES).count() == 0, route
    w.shot("read-only-dead-letters")
    # and the API refuses the reader's session a change, whatever the page shows
    cookie = next(c for c in w.page.context.cookies() if c["name"] == "ojs_admin_session")
    header = f"ojs_admin_session={cookie['value']}"
    retry = f"{daemon.url}/ojs/v1/admin/dead-letter/{dead['id']}/retry"
    assert _with_cookie("POST", retry, header, "application/json") == 403
    assert jobs.get(dead["id"])["state"] == "discarded"
