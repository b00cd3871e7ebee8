"""What a handler receives: the delivered job, a flag to notice cancellation, and a way to
report progress."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ojs_amqp.core.progress import parse_update


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
    #: The latest progress report not sent yet (set by `progress`, taken by the worker).
    pending_progress: dict[str, Any] | None = field(default=None, repr=False)

    def progress(
        self,
        value: float | None = None,
        message: str | None = None,
        data: dict[str, Any] | None = None,
    ) -> None:
        """Report how far the job is (`value` from 0.0 to 1.0, clamped), with an optional
        message and JSON `data`. Never blocks and never fails the job (bad arguments raise
        InvalidRequest at once): the worker sends the latest report at most once a second,
        as a control message that also counts as a heartbeat. Safe from threaded handlers."""
        report: dict[str, Any] = {}
        if value is not None:
            report["progress"] = value
        if message is not None:
            report["message"] = message
        if data is not None:
            report["data"] = data
        parse_update(report)  # refuse what the daemon would refuse, in the handler
        # Folded into a report not sent yet, as the daemon folds reports: the newest number,
        # and the newest message and data given.
        self.pending_progress = {**(self.pending_progress or {}), **report}

    @property
    def meta(self) -> dict[str, Any]:
        meta = self.envelope.get("meta")
        return meta if isinstance(meta, dict) else {}
