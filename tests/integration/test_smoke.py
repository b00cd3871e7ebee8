from collections.abc import Callable

from tests.daemon import Daemon, request


def test_pushed_job_is_fetched_acked_and_reads_back_completed(
    make_daemon: Callable[..., Daemon],
) -> None:
    # a daemon as deployed: no --test-mode, so no reset route (its own prefix keeps it apart)
    daemon = make_daemon(test_mode=False)
    assert request("POST", f"{daemon.url}/ojs/v1/admin/reset")[0] == 404
    status, body = request("POST", f"{daemon.url}/ojs/v1/jobs", {"type": "smoke.test", "args": [1]})
    assert status == 201
    job_id = body["job"]["id"]

    status, body = request("POST", f"{daemon.url}/ojs/v1/workers/fetch", {"queues": ["default"]})
    assert status == 200 and body["jobs"][0]["id"] == job_id

    status, body = request(
        "POST", f"{daemon.url}/ojs/v1/workers/ack", {"job_id": job_id, "result": 7}
    )
    assert status == 200 and body["state"] == "completed"

    status, body = request("GET", f"{daemon.url}/ojs/v1/jobs/{job_id}")
    assert body["job"]["state"] == "completed" and body["job"]["result"] == 7
