"""How many open jobs a queue holds, cheaply enough to ask on every push (max_depth).

The store's count is exact but costs an index scan, so it is re-read at most once a second;
pushes since then are added on top. Completions since then are not subtracted, so the bound
can refuse a push up to a second early, and never admits one beyond it.
"""

from __future__ import annotations

import time

from ojs_amqp.engine.ports import QueueRecords

REFRESH_S = 1.0


class DepthCache:
    def __init__(self, store: QueueRecords) -> None:
        self._store = store
        self._counts: dict[str, tuple[float, int]] = {}

    async def depth(self, queue: str) -> int:
        now = time.monotonic()
        cached = self._counts.get(queue)
        if cached is not None and now - cached[0] < REFRESH_S:
            return cached[1]
        count = await self._store.open_jobs(queue)
        self._counts[queue] = (now, count)
        return count

    def pushed(self, queue: str) -> None:
        cached = self._counts.get(queue)
        if cached is not None:
            self._counts[queue] = (cached[0], cached[1] + 1)

    def clear(self) -> None:
        self._counts.clear()
