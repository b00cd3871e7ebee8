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
        #: Depth bounds set at run time (admin API), by queue: (max_depth, warning fraction);
        #: they take precedence over settings.max_depth.
        self.depth_bounds: dict[str, tuple[int, float]] = {}

    def depth_bound(self, queue: str) -> tuple[int, float]:
        """(max_depth, warning threshold) of `queue`: set at run time, else by settings."""
        return self.depth_bounds.get(queue) or (self._settings.max_depth_for(queue), 0.8)

    async def pressure_headers(self, queue: str) -> list[tuple[str, str]]:
        """ojs-backpressure §7.3: on a push to a bounded queue past its warning threshold,
        its depth, bound and pressure (depth / bound); none otherwise."""
        bound, warning = self.depth_bound(queue)
        if bound <= 0:
            return []
        depth = await self.depths.depth(queue)
        if depth < warning * bound:
            return []
        return [("X-OJS-Queue-Depth", str(depth)), ("X-OJS-Queue-Bound", str(bound)),
                ("X-OJS-Queue-Pressure", f"{min(1.0, depth / bound):.2f}")]  # fmt: skip

    async def admit(self, queue: str) -> None:
        """Backpressure (max_depth): refuse a push to a queue holding its bound of open jobs."""
        bound = self.depth_bound(queue)[0]
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
