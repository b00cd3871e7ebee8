"""A bounded set of recently seen ids (the worker's memory of cancelled jobs).

A cancel broadcast may arrive long before a queued copy of the job is delivered, so the
worker remembers cancelled ids; bounded, because a long-running worker sees unboundedly many.
Forgetting the oldest is safe: the daemon still drops a cancelled job's report, only the
handler runs once more than it needed to.
"""

from __future__ import annotations

from collections import OrderedDict


class RecentIds:
    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()

    def add(self, item: str) -> None:
        """Remember `item` (as the newest); forget the oldest beyond capacity."""
        self._ids[item] = None
        self._ids.move_to_end(item)
        while len(self._ids) > self.capacity:
            self._ids.popitem(last=False)

    def __contains__(self, item: object) -> bool:
        return item in self._ids

    def __len__(self) -> int:
        return len(self._ids)
