"""Broker loss in the middle of a mixed workload: the network to the broker is cut (a proxy
resets every connection and refuses new ones), or the broker application restarts
(`rabbitmqctl stop_app` / `start_app` on the private node).

While the broker is away, GET /ojs/v1/health answers 503 `unhealthy` and pushes answer 503
at once; afterwards the daemon has reconnected by itself (counted in
`ojs_amqp_reconnections_total`) and every accepted job ends in the one terminal state its
kind requires.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from tests.daemon import Daemon
from tests.faults.proxy import TcpProxy
from tests.faults.scenario import (
    PUBLISHES,
    SIZES,
    STALL_S,
    Outage,
    Size,
    check_outages,
    ride_out,
    seeded,
    summary,
    workload,
)
from tests.rabbit_node import RabbitNode
from tests.workload import Workload, metric


@pytest.fixture
def proxy(rabbit_node: RabbitNode) -> Iterator[TcpProxy]:
    proxy = TcpProxy("127.0.0.1", rabbit_node.port).start()
    yield proxy
    proxy.close()


def _with_outages(
    scenario: str,
    daemon: Daemon,
    size: Size,
    take_down: Callable[[], None],
    bring_back: Callable[[], None],
) -> None:
    rng = seeded(scenario)
    run: Workload = workload(daemon.url, size, rng).start()
    started = time.monotonic()
    outages: list[Outage] = []
    for n in range(size.faults):
        # at a random moment while pushes are still coming in
        target = int(size.jobs * 0.8 * (n + rng.uniform(0.25, 0.75)) / size.faults)
        run.wait_for(f"{target} accepted pushes", lambda t=target: run.pushed() >= t)
        outages.append(ride_out(daemon.url, take_down, bring_back, size.outage_s))
    ledger = run.finish(size.deadline_s, STALL_S)
    reconnections = metric(daemon.url, "ojs_amqp_reconnections_total")
    print(
        ledger.line(
            f"{scenario} [{size.name}]",
            time.monotonic() - started,
            outages=f"{len(outages)} of {size.outage_s:.0f}s",
            reconnections=int(reconnections),
            clients_saw=summary(outages),
        )
    )
    check_outages(daemon.url, outages)
    assert reconnections >= size.faults
    ledger.check(unavailable_ok=PUBLISHES)


@SIZES
def test_network_cut_to_the_broker_loses_no_job(
    size: Size, rabbit_node: RabbitNode, proxy: TcpProxy, make_node_daemon: Callable[..., Daemon]
) -> None:
    daemon = make_node_daemon(amqp=proxy.url(rabbit_node.amqp_url))
    _with_outages("network cut", daemon, size, proxy.cut, proxy.restore)


@SIZES
def test_broker_restart_loses_no_job(
    size: Size, rabbit_node: RabbitNode, make_node_daemon: Callable[..., Daemon]
) -> None:
    daemon = make_node_daemon()
    _with_outages("broker restart", daemon, size, rabbit_node.stop_app, rabbit_node.start_app)
