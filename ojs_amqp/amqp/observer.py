"""What the broker reports as it works, as protocols its observer implements (the daemon's
Metrics does; tests pass their own)."""

from __future__ import annotations

from typing import Protocol, runtime_checkable


class BrokerObserver(Protocol):
    """What the broker reports as it works (the daemon's Metrics implements this)."""

    def published(self, exchange_kind: str, confirm_seconds: float) -> None: ...

    def returned(self) -> None: ...

    def reconnected(self) -> None: ...

    def consumed(self, queue_kind: str) -> None: ...


@runtime_checkable
class SupervisionObserver(Protocol):
    """An observer that also counts background failures and shows whether the aiormq fast
    path is on (the daemon's Metrics does; the four methods above suffice otherwise)."""

    def background_failed(self, task: str) -> None: ...

    def fast_path(self, available: bool) -> None: ...


class _NoObserver:
    def published(self, exchange_kind: str, confirm_seconds: float) -> None:
        pass

    def returned(self) -> None:
        pass

    def reconnected(self) -> None:
        pass

    def consumed(self, queue_kind: str) -> None:
        pass
