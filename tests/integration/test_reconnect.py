import time

from tests.daemon import Daemon, close_connections, request


def _close_daemon_connections(prefix: str) -> int:
    return close_connections(f"ojs-amqp/{prefix}-")


def _wait_healthy(daemon: Daemon, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if request("GET", f"{daemon.url}/ojs/v1/health", timeout=5)[0] == 200:
                return True
        except OSError:
            pass
        time.sleep(0.2)
    return False


def test_daemon_reconnects_after_the_broker_drops_it_and_keeps_every_job(daemon: Daemon) -> None:
    url = daemon.url + "/ojs/v1"
    # Given one job leased to a worker and one job waiting in its queue
    held = request("POST", f"{url}/jobs", {"type": "r.held", "args": []})[1]["job"]["id"]
    queued = request("POST", f"{url}/jobs", {"type": "r.queued", "args": []})[1]["job"]["id"]
    fetched = request("POST", f"{url}/workers/fetch", {"queues": ["default"]})[1]
    assert fetched["jobs"][0]["id"] == held

    # When the broker closes both of the daemon's connections
    assert _close_daemon_connections(daemon.prefix) == 2

    # Then the daemon comes back by itself; the worker's ack of the held job still lands,
    # and the queued job is fetched and completed as usual
    assert _wait_healthy(daemon, 20)
    assert request("POST", f"{url}/workers/ack", {"job_id": held})[0] == 200
    deadline = time.monotonic() + 20
    got: list[str] = []
    while not got and time.monotonic() < deadline:
        got = [
            j["id"]
            for j in request("POST", f"{url}/workers/fetch", {"queues": ["default"]})[1]["jobs"]
        ]
    assert got == [queued]
    assert request("POST", f"{url}/workers/ack", {"job_id": queued})[0] == 200
    for job_id in (held, queued):
        assert request("GET", f"{url}/jobs/{job_id}")[1]["job"]["state"] == "completed"
