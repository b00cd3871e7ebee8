"""Interoperability with plain pika clients written from the binding's §15 examples
(tests/interop/pika_clients.py): what they do is checked over HTTP and the INFO RPC."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import pytest

from tests.daemon import AMQP_URL, Daemon, request
from tests.interop.checks import http_push, new_queue, wait_states
from tests.interop.pika_clients import PikaClient, PikaWorker

pytestmark = pytest.mark.integration


def test_a_pika_producer_and_worker_from_the_binding_examples_complete_jobs(
    interop_daemon: Daemon,
) -> None:
    queue = new_queue("pika-pika")
    with PikaClient(AMQP_URL, interop_daemon.prefix) as producer:
        # §15.1: the producer declares the topology itself (with the documented arguments,
        # which RabbitMQ accepts as the daemon's own: no 406), says hello, and pushes
        producer.declare_queue(queue)
        ids = [producer.push(queue, "math.add", [n, 10]) for n in range(3)]
        # Until a worker reports, the daemon has not seen binding PUSHes
        assert producer.control("ojs.control.info", {"job_id": ids[0]})["error"]["code"] == (
            "not_found"
        )

        def add(job: dict[str, Any], attempt: int) -> dict[str, Any]:
            return {"sum": sum(job["args"]), "by": "pika", "attempt": attempt}

        # §15.2: the worker consumes, reports, acks
        with PikaWorker(AMQP_URL, interop_daemon.prefix, queue, add, worker_id="pika-1"):
            jobs = wait_states(interop_daemon, ids, "completed")
        for n, job_id in enumerate(ids):
            job = jobs[job_id]
            assert job["result"] == {"sum": n + 10, "by": "pika", "attempt": 1}
            assert job["attempt"] == 1 and job["type"] == "math.add" and job["queue"] == queue
            assert job["worker_id"] == "pika-1"
            # and the INFO RPC answers the same as HTTP
            info = producer.info(job_id)
            assert info["state"] == "completed" and info["result"] == job["result"]


def test_a_pika_worker_and_an_http_worker_share_a_queue_and_each_job_runs_once(
    interop_daemon: Daemon,
) -> None:
    queue = new_queue("pika-http")
    url = interop_daemon.url
    http_runs: list[str] = []  # job ids the HTTP worker ran; the pika worker keeps its own

    def run(job: dict[str, Any], _: int) -> dict[str, str]:
        return {"by": "pika"}

    with (
        PikaClient(AMQP_URL, interop_daemon.prefix) as producer,
        PikaWorker(
            AMQP_URL, interop_daemon.prefix, queue, run, worker_id="pika-2", prefetch=2
        ) as pika_worker,
    ):
        # An HTTP worker's first fetch makes the daemon consume the queue too
        status, body = request("POST", f"{url}/ojs/v1/workers/fetch", {"queues": [queue]})
        assert status == 200 and body["jobs"] == [], body
        # Jobs from both kinds of producer: binding PUSH from pika, and HTTP
        ids = [producer.push(queue, "shared.job", [n]) for n in range(20)]
        ids += [http_push(interop_daemon, queue, "shared.job", [n]) for n in range(20, 40)]
        # The HTTP worker fetches and acks until the two workers have run as many jobs (an
        # empty fetch waits for a job itself, up to the daemon's --fetch-wait-ms)
        deadline = time.monotonic() + 20
        while len(http_runs) + len(pika_worker.executions) < len(ids):
            assert time.monotonic() < deadline, "not every job ran"
            status, body = request(
                "POST", f"{url}/ojs/v1/workers/fetch",
                {"queues": [queue], "count": 5, "worker_id": "http-1"},
            )  # fmt: skip
            assert status == 200, body
            for job in body["jobs"]:
                http_runs.append(job["id"])
                status, acked = request(
                    "POST", f"{url}/ojs/v1/workers/ack",
                    {"job_id": job["id"], "result": {"by": "http"}, "worker_id": "http-1"},
                )  # fmt: skip
                assert status == 200, acked
        jobs = wait_states(interop_daemon, ids, "completed")
    # The ledger: every job ran exactly once, each worker ran some
    pika_runs = [e.job_id for e in pika_worker.executions]
    ledger = Counter(http_runs + pika_runs)
    assert set(ledger) == set(ids) and set(ledger.values()) == {1}, ledger.most_common(3)
    assert pika_runs and http_runs, (len(pika_runs), len(http_runs))
    # and the daemon recorded each job completed once, with the result of the worker that ran it
    for job_id, job in jobs.items():
        assert job["result"] == {"by": "http" if job_id in http_runs else "pika"}, job
        assert job["attempt"] == 1, job
