"""Handlers by job type: registered by decorator or from a dict, async or plain functions.

Whether a handler is a coroutine function is decided once, at registration: async handlers
run on the event loop, plain functions in the worker's thread pool.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from ojs_amqp.core.envelope import validate_type
from ojs_amqp.sdk.context import JobContext

Handler = Callable[[JobContext], Any]
H = TypeVar("H", bound=Handler)


def is_async(fn: Callable[..., Any]) -> bool:
    """Coroutine functions, partials of them, and objects with an async `__call__`."""
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - an async __call__ is what we look for
    )


@dataclass(frozen=True, slots=True)
class Registered:
    fn: Handler
    is_async: bool


class HandlerRegistry(Mapping[str, Handler]):
    def __init__(self, handlers: Mapping[str, Handler] | None = None) -> None:
        self._by_type: dict[str, Registered] = {}
        for job_type, fn in (handlers or {}).items():
            self.register(job_type, fn)

    def register(self, job_type: str, fn: Handler) -> None:
        """Handle `job_type` with `fn(ctx)`; its return value becomes the job's result."""
        validate_type(job_type)
        if not callable(fn):
            raise TypeError(f"the handler for {job_type!r} is not callable: {fn!r}")
        self._by_type[job_type] = Registered(fn, is_async(fn))

    def handler(self, job_type: str) -> Callable[[H], H]:
        """Decorator form of `register`."""

        def decorate(fn: H) -> H:
            self.register(job_type, fn)
            return fn

        return decorate

    def lookup(self, job_type: str) -> Registered | None:
        return self._by_type.get(job_type)

    @property
    def has_sync(self) -> bool:
        return any(not r.is_async for r in self._by_type.values())

    def __getitem__(self, job_type: str) -> Handler:
        return self._by_type[job_type].fn

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_type)

    def __len__(self) -> int:
        return len(self._by_type)
