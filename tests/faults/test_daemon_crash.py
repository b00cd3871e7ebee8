"""The daemon is SIGKILLed at random moments of a mixed workload and started again on the same
store, port and topology; clients ride the outages out. No accepted job is lost, each ends in
the one terminal state its kind requires, duplicates are counted.

tests/integration/test_crash_recovery.py is the single-kill acceptance test on the shared
broker; this one repeats kills at random moments (seeded: OJS_FAULT_SEED) over every job kind,
including scheduled, retried, cancelled and abandoned jobs.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from tests.daemon import Daemon
from tests.faults.scenario import SIZES, STALL_S, Size, seeded, workload


@SIZES
def test_sigkill_at_random_moments_loses_no_job(
    size: Size, make_node_daemon: Callable[..., Daemon]
) -> None:
    rng = seeded("daemon SIGKILL")
    daemon = make_node_daemon()
    run = workload(daemon.url, size, rng).start()
    started = time.monotonic()
    kills = size.faults + 1
    downtime: list[float] = []
    for n in range(kills):
        # a random moment: a random share of the pushes in, plus up to half a second
        target = int(size.jobs * 0.9 * (n + rng.random()) / kills)
        run.wait_for(f"{target} accepted pushes", lambda t=target: run.pushed() >= t)
        time.sleep(rng.uniform(0.0, 0.5))
        daemon.kill()
        killed_at = time.monotonic()
        daemon.start()
        downtime.append(time.monotonic() - killed_at)
    ledger = run.finish(size.deadline_s, STALL_S)
    print(
        ledger.line(
            f"daemon SIGKILL [{size.name}]",
            time.monotonic() - started,
            kills=kills,
            longest_downtime=f"{max(downtime):.1f}s",
            transport_errors=run.transport_errors,
        )
    )
    ledger.check()
