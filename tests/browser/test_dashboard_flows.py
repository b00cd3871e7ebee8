"""The dashboard in a real browser against a real daemon with real jobs: every view loads,
a dead letter retried from the page moves, a job is followed through its states live, a
search by an arg finds its job, a running job is cancelled, a copy with edited args is
enqueued; each click is checked through the API afterwards."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable

from playwright.sync_api import expect

from tests.browser.conftest import Watched, api
from tests.browser.jobs import Jobs
from tests.daemon import Daemon

LIVE_S = 15_000  # ms: the page's live updates (event stream, 3-5 s polls) arrive within this


def _queue(tag: str) -> str:
    return f"dash-{tag}-{uuid.uuid4().hex[:6]}"


def test_every_view_loads_with_real_jobs(
    make_node_daemon: Callable[..., Daemon], open_page: Callable[..., Watched]
) -> None:
    daemon = make_node_daemon()
    jobs = Jobs(daemon.url)
    mail, reports = _queue("mail"), _queue("reports")
    dead = jobs.dead_letter(mail, "email.send", [{"to": "bounce@example.org"}], "mailbox full")
    waiting = [jobs.push("email.send", [{"to": f"user{i}@example.org"}], mail) for i in range(3)]
    done = jobs.complete(reports, "report.build", [{"month": "2026-11"}], {"rows": 42})
    held = jobs.push("report.build", [{"month": "2026-12"}], reports)
    assert jobs.fetch(reports)["id"] == held["id"]  # leased to browser-test-worker
    jobs.call("POST", "/cron", {"name": f"nightly-{mail}", "expression": "0 3 * * *",
                                "job_template": {"type": "report.build", "args": [],
                                                 "options": {"queue": reports}}})  # fmt: skip
    w = open_page(daemon.url)

    w.open("/")
    row = w.page.locator("#queues tr", has=w.page.get_by_role("link", name=mail, exact=True))
    expect(row).to_contain_text("3")  # available
    expect(w.page.locator("#broker")).to_contain_text("ok")
    expect(w.page.locator("#store")).to_contain_text("ok")
    expect(w.page.locator("#throughput canvas")).to_have_count(1)
    w.shot("overview")

    w.page.get_by_role("link", name=mail, exact=True).click()
    expect(w.page.locator("h1")).to_have_text(f"Queue {mail}")
    expect(w.page.locator(".tabs")).to_contain_text("available 3")
    expect(w.page.locator(".tabs")).to_contain_text("discarded 1")
    listed = w.page.locator("#jobs tbody tr")
    expect(listed).to_have_count(4)
    w.shot("queue")
    w.page.locator(".tabs").get_by_role("link", name="available 3").click()
    expect(listed).to_have_count(3)
    for job in waiting:
        expect(w.page.locator("#jobs")).to_contain_text(job["id"])
    w.page.locator(".tabs").get_by_role("link", name="discarded 1").click()
    expect(listed).to_have_count(1)
    expect(listed).to_contain_text(dead["id"])
    expect(w.page.locator("#pause")).to_have_count(0)  # pause/resume is not built (issue #17)

    w.open(f"/job/{done['id']}")
    expect(w.page.locator("#job-state")).to_have_text("completed")
    expect(w.page.locator("#result")).to_contain_text('"rows": 42')
    expect(w.page.locator("#history")).to_contain_text("completed")
    w.shot("job-completed")

    w.open(f"/job/{dead['id']}")
    expect(w.page.locator("#job-state")).to_have_text("discarded")
    expect(w.page.locator("#errors")).to_contain_text("mailbox full")
    expect(w.page.locator("#errors")).to_contain_text("attempt 1")

    w.open("/dead")
    expect(w.page.locator("#dead-letters")).to_contain_text(dead["id"])
    w.shot("dead-letters")

    w.open("/workers")
    row = w.page.locator("#workers tr", has_text="browser-test-worker")
    expect(row).to_contain_text("http")
    expect(row).to_contain_text(held["id"])  # the job it holds
    w.shot("workers")

    w.open("/cron")
    expect(w.page.locator("#crons")).to_contain_text(f"nightly-{mail}")
    expect(w.page.locator("#crons")).to_contain_text("0 3 * * *")
    w.shot("cron")

    w.open("/timings")
    expect(w.page.locator("#timings")).to_contain_text("report.build")
    w.shot("timings")

    w.open(f"/search?q={waiting[1]['id']}")
    expect(w.page.locator("#by-id")).to_contain_text(waiting[1]["id"])


def test_search_by_an_arg_finds_its_job(
    make_node_daemon: Callable[..., Daemon], open_page: Callable[..., Watched]
) -> None:
    daemon = make_node_daemon()
    jobs = Jobs(daemon.url)
    queue = _queue("search")
    needle = f"order-{uuid.uuid4().hex[:8]}"
    for i in range(5):
        jobs.push("order.ship", [{"order": f"other-{i}"}], queue)
    wanted = jobs.push("order.ship", [{"order": needle}], queue, meta={"tenant": "acme"})
    w = open_page(daemon.url)
    w.open("/")
    w.page.get_by_role("searchbox", name="Search jobs").fill(needle)
    w.page.keyboard.press("Enter")  # the header's search form, from the keyboard
    results = w.page.locator("#by-content tbody tr")
    expect(results).to_have_count(1)
    expect(results).to_contain_text(wanted["id"])
    w.shot("search-args")
    w.page.locator("#search-text").fill("acme")
    w.page.locator("#search-in").select_option("meta")
    w.page.get_by_role("button", name="Search", exact=True).last.click()
    expect(results).to_have_count(1)
    expect(results).to_contain_text(wanted["id"])
    results.get_by_role("link", name=wanted["id"]).click()
    expect(w.page.locator("#envelope")).to_contain_text(needle)


def test_retrying_dead_letters_moves_them(
    make_node_daemon: Callable[..., Daemon], open_page: Callable[..., Watched]
) -> None:
    daemon = make_node_daemon()
    jobs = Jobs(daemon.url)
    queue = _queue("dlq")
    first = jobs.dead_letter(queue, "invoice.send", [{"invoice": 1}], "gateway timeout")
    second = jobs.dead_letter(queue, "invoice.send", [{"invoice": 2}], "gateway timeout")
    kept = jobs.dead_letter(queue, "invoice.send", [{"invoice": 3}], "bad address")
    single = jobs.dead_letter(queue, "invoice.send", [{"invoice": 4}], "bad address")
    w = open_page(daemon.url)
    w.open(f"/job/{single['id']}")  # one, from its own page
    w.page.locator("#retry").click()
    expect(w.page.locator("#job-state")).to_have_text("available", timeout=LIVE_S)
    assert jobs.get(single["id"])["state"] == "available"
    w.open(f"/dead?queue={queue}")
    table = w.page.locator("#dead-letters")
    for job in (first, second, kept):
        expect(table).to_contain_text(job["id"])
    w.page.get_by_label(f"select job {first['id']}").check()
    w.page.get_by_label(f"select job {second['id']}").check()
    w.page.locator("#retry-selected").click()
    expect(w.page.locator("#confirm")).to_contain_text("Retry 2 dead letters?")
    w.shot("retry-confirm")
    w.page.locator("#confirm-ok").click()
    expect(table.locator("tbody tr")).to_have_count(1)
    expect(table).to_contain_text(kept["id"])
    w.shot("retried")
    for job in (first, second):
        state = jobs.get(job["id"])
        assert state["state"] == "available", state
        assert not state.get("dead_letter")
    assert jobs.get(kept["id"])["state"] == "discarded"
    listed = jobs.call("GET", f"/dead-letter?queue={queue}")
    assert [j["id"] for j in listed["jobs"]] == [kept["id"]]
    # and deleting one, with its confirmation
    w.page.get_by_label(f"select job {kept['id']}").check()
    w.page.locator("#delete-selected").click()
    w.page.locator("#confirm-ok").click()
    expect(w.page.locator("#dead-letters")).to_contain_text("No dead letters.")
    assert jobs.call("GET", f"/dead-letter?queue={queue}")["jobs"] == []


def test_a_job_is_followed_live_through_its_states(
    make_node_daemon: Callable[..., Daemon], open_page: Callable[..., Watched]
) -> None:
    daemon = make_node_daemon()
    jobs = Jobs(daemon.url)
    queue = _queue("live")
    job = jobs.push("video.encode", [{"file": "a.mp4"}], queue)
    w = open_page(daemon.url)
    w.open(f"/job/{job['id']}")
    state = w.page.locator("#job-state")
    expect(state).to_have_text("available")
    jobs.fetch(queue)
    expect(state).to_have_text("active", timeout=LIVE_S)
    jobs.progress(job["id"], 40, "encoding")
    expect(w.page.locator("#progress")).to_contain_text("encoding", timeout=LIVE_S)
    w.shot("active-with-progress")
    jobs.ack(job["id"], {"bytes": 1234})
    expect(state).to_have_text("completed", timeout=LIVE_S)
    expect(w.page.locator("#result")).to_contain_text("1234")
    history = w.page.locator("#history")
    for step in ("enqueued", "started", "completed"):
        expect(history).to_contain_text(re.compile(step))
    w.shot("completed-live")


def test_cancel_a_running_job_and_enqueue_an_edited_copy(
    make_node_daemon: Callable[..., Daemon], open_page: Callable[..., Watched]
) -> None:
    daemon = make_node_daemon()
    jobs = Jobs(daemon.url)
    queue = _queue("cancel")
    job = jobs.push("import.csv", [{"file": "big.csv"}], queue)
    jobs.fetch(queue)
    assert jobs.get(job["id"])["state"] == "active"
    w = open_page(daemon.url)
    w.open(f"/job/{job['id']}")
    expect(w.page.locator("#job-state")).to_have_text("active")
    w.page.get_by_role("button", name="Cancel (running)").click()
    expect(w.page.locator("#job-state")).to_have_text("cancelled", timeout=LIVE_S)
    assert jobs.get(job["id"])["state"] == "cancelled"
    expect(w.page.locator("#retry")).to_have_count(0)  # nothing leaves `cancelled`: copy it

    w.page.get_by_text("Enqueue a copy with edited args").click()
    w.page.locator("#copy-args").fill('[{"file": "small.csv"}]')
    w.page.locator("#enqueue-copy").click()
    expect(w.page.locator("#job-state")).to_have_text("available", timeout=LIVE_S)
    copy_id = w.page.locator("h1 code").inner_text()
    assert copy_id != job["id"]
    copy = jobs.get(copy_id)
    assert copy["args"] == [{"file": "small.csv"}]
    assert copy["type"] == "import.csv" and copy["queue"] == queue
    assert copy["meta"]["copied_from"] == job["id"]


def test_phone_width_and_keyboard(
    make_node_daemon: Callable[..., Daemon], open_page: Callable[..., Watched]
) -> None:
    daemon = make_node_daemon()
    jobs = Jobs(daemon.url)
    queue = _queue("phone")
    jobs.dead_letter(queue, "sms.send", [{"to": "+100"}], "carrier refused")
    w = open_page(daemon.url, viewport={"width": 390, "height": 844}, is_mobile=True)
    for route in ("/", f"/queue/{queue}", "/dead", "/cron", "/timings", "/workers"):
        w.open(route)
        expect(w.page.locator("main h1")).to_be_visible()
        w.page.wait_for_load_state("networkidle")
        overflow = w.page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{route} is {overflow} px wider than a phone"
    w.shot("phone-dead-letters")
    # keyboard: Tab reaches the views' links from the top, Enter follows one
    w.open("/")
    expect(w.page.locator("main h1")).to_have_text("Overview")
    w.page.keyboard.press("Tab")  # skip link
    w.page.keyboard.press("Tab")  # brand
    for _ in range(2):
        w.page.keyboard.press("Tab")
    focused = w.page.evaluate("document.activeElement.textContent")
    assert focused == "Dead letters"
    w.page.keyboard.press("Enter")
    expect(w.page.locator("main h1")).to_have_text("Dead letters")


def test_purge_a_queue_after_confirming(
    make_node_daemon: Callable[..., Daemon], open_page: Callable[..., Watched]
) -> None:
    daemon = make_node_daemon()
    jobs = Jobs(daemon.url)
    queue = _queue("purge")
    finished = [jobs.complete(queue, "log.rotate", [i], "ok") for i in range(3)]
    waiting = jobs.push("log.rotate", [9], queue)
    w = open_page(daemon.url)
    w.open(f"/queue/{queue}")
    expect(w.page.locator(".tabs")).to_contain_text("completed 3")
    w.page.locator("#purge").click()
    dialog = w.page.locator("#confirm")
    expect(dialog).to_contain_text(f"Delete the jobs of queue {queue}")
    w.page.get_by_role("button", name="Cancel", exact=True).click()  # asked, and declined
    assert jobs.call("GET", f"/admin/queues/{queue}")["counts"]["completed"] == 3
    w.page.locator("#purge").click()
    w.shot("purge-confirm")
    w.page.locator("#confirm-ok").click()
    expect(w.page.locator(".tabs")).to_contain_text("completed 0", timeout=LIVE_S)
    counts = jobs.call("GET", f"/admin/queues/{queue}")["counts"]
    assert counts["completed"] == 0 and counts["available"] == 1
    for job in finished:
        status, _ = api("GET", f"{daemon.url}/ojs/v1/jobs/{job['id']}")
        assert status == 404
    assert jobs.get(waiting["id"])["state"] == "available"


def test_retry_every_dead_letter_a_filter_matches(
    make_node_daemon: Callable[..., Daemon], open_page: Callable[..., Watched]
) -> None:
    daemon = make_node_daemon()
    jobs = Jobs(daemon.url)
    queue = _queue("bulk")
    matching = [jobs.dead_letter(queue, "pdf.render", [i], "font missing") for i in range(3)]
    other = jobs.dead_letter(queue, "pdf.merge", [9], "disk full")
    w = open_page(daemon.url)
    w.open("/dead")
    w.page.locator("#dl-queue").fill(queue)
    w.page.locator("#dl-type").fill("pdf.render")
    w.page.locator("#dl-type").press("Enter")
    expect(w.page.locator("#dead-letters tbody tr")).to_have_count(3)
    w.page.locator("#retry-matching").click()
    expect(w.page.locator("#confirm")).to_contain_text("(3)")
    w.page.locator("#confirm-ok").click()
    expect(w.page.locator("#dead-letters")).to_contain_text("No dead letters.", timeout=LIVE_S)
    for job in matching:
        assert jobs.get(job["id"])["state"] == "available"
    assert jobs.get(other["id"])["state"] == "discarded"
