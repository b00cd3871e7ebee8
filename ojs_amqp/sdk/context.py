"""What a handler receives: the delivered job, and a flag to notice cancellation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True, eq=False)
class JobContext:
    id: str
    type: str
    queue: str
    args: list[Any]
    #: The attempt this delivery is, from 1 (the `x-ojs-attempt` header).
    attempt: int
    worker_id: str
    #: The OJS envelope exactly as delivered (meta, priority, retry policy, ...).
    envelope: dict[str, Any] = field(repr=False)
    #: Set when the job is cancelled while it runs. Async handlers are interrupted
    #: (CancelledError at their next await); threaded ones cannot be, and may poll this.
    cancel_requested: bool = False

    @property
    def meta(self) -> dict[str, Any]:
        meta = self.envelope.get("meta")
        return meta if isinstance(meta, dict) else {}
