"""Admission: the checks a push passes before anything is stored (max depth today; unique
keys and rate limits are checks of their own here later)."""

from __future__ import annotations

from ojs_amqp.engine.backpressure import DepthCache
from ojs_amqp.engine.ports import QueueRecords
from ojs_amqp.errors import QueueFull
from ojs_amqp.settings import Settings


class Admission:
    def __init__(self, settings: Settings, store: QueueRecords) -> None:
        self._settings = settings
        self.depths = DepthCache(store)

    async def admit(self, queue: str) -> None:
        """Backpressure (max_depth): refuse a push to a queue holding its bound of open jobs."""
        bound = self._settings.max_depth_for(queue)
        if bound <= 0:
            return
        depth = await self.depths.depth(queue)
        if depth >= bound:
            raise QueueFull(
                f"queue {queue!r} holds {depth} open jobs, its bound is {bound}",
                details={"queue": queue, "depth": depth, "max_depth": bound},
                headers={"X-OJS-Queue-Depth": str(depth), "X-OJS-Queue-Bound": str(bound)},
            )

    def admitted(self, queue: str) -> None:
        self.depths.pushed(queue)

    def reset(self) -> None:
        self.depths.clear()
