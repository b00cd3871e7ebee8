"""Retry policy, backoff math and the decision taken when an attempt fails.

Formulas (n = retry number, 1 = the wait before attempt 2; I = initial interval,
C = coefficient, M = max interval):
    none/constant  I          linear  I*n          exponential  I*C^(n-1)       polynomial  I*n^C
then d = min(raw, M); with jitter d = min(d * U[0.5, 1.5), M).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from ojs_amqp.core.durations import format_duration_ms

BackoffStrategy = Literal["none", "constant", "linear", "exponential", "polynomial"]
Exhaustion = Literal["discard", "dead_letter"]

MAX_DELAY_MS = 10 * 365 * 86_400_000  # ten years: a sane ceiling for float blow-ups
#: x-ojs-max-attempts travels as an int32 AMQP header.
MAX_ATTEMPTS_LIMIT = 2**31 - 1


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 3
    initial_interval_ms: int = 1000
    backoff_coefficient: float = 2.0
    max_interval_ms: int = 300_000
    jitter: bool = True
    non_retryable_errors: tuple[str, ...] = ()
    on_exhaustion: Exhaustion = "discard"
    backoff_strategy: BackoffStrategy = "exponential"

    def problems(self) -> list[str]:
        """Human-readable violations, each naming its field; empty when valid."""
        out = []
        if not 0 <= self.max_attempts <= MAX_ATTEMPTS_LIMIT:
            out.append(f"retry.max_attempts must be between 0 and {MAX_ATTEMPTS_LIMIT}")
        if self.initial_interval_ms <= 0:
            out.append("retry.initial_interval must be > 0")
        if not 1.0 <= self.backoff_coefficient <= 1e6:  # also refuses NaN and infinity
            out.append("retry.backoff_coefficient must be between 1.0 and 1000000")
        if self.max_interval_ms < self.initial_interval_ms:
            out.append("retry.max_interval must be >= retry.initial_interval")
        return out

    def to_wire(self) -> dict[str, Any]:
        return {
            "max_attempts": self.max_attempts,
            "initial_interval": format_duration_ms(self.initial_interval_ms),
            "backoff_coefficient": self.backoff_coefficient,
            "max_interval": format_duration_ms(self.max_interval_ms),
            "jitter": self.jitter,
            "non_retryable_errors": list(self.non_retryable_errors),
            "on_exhaustion": self.on_exhaustion,
            "backoff_strategy": self.backoff_strategy,
        }


def backoff_delay_ms(policy: RetryPolicy, retry_number: int, rng: Callable[[], float]) -> int:
    """Delay before retry `retry_number` (>= 1); `rng` returns a float in [0, 1)."""
    n = max(1, retry_number)
    base = float(policy.initial_interval_ms)
    strategy = policy.backoff_strategy
    if strategy in ("none", "constant"):
        raw = base
    elif strategy == "linear":
        raw = base * n
    else:
        try:
            if strategy == "polynomial":
                raw = base * float(n) ** policy.backoff_coefficient
            else:
                raw = base * policy.backoff_coefficient ** (n - 1)
        except OverflowError:
            raw = float(MAX_DELAY_MS)
    cap = float(policy.max_interval_ms)
    delay = min(raw, cap)
    if policy.jitter:
        delay = min(delay * (0.5 + rng()), cap)
    return int(min(delay, MAX_DELAY_MS))


@dataclass(frozen=True, slots=True)
class FailureReport:
    """What a worker says about a failed attempt (HTTP nack or AMQP report)."""

    code: str = "handler_error"
    message: str = ""
    type: str | None = None
    retryable: bool | None = None
    details: dict[str, Any] = field(default_factory=dict)
    #: Handler codes from ojs-retry: RETRY (default), DISCARD, FAIL, DEAD_LETTER.
    action: str | None = None

    def names(self) -> list[str]:
        """Every name `non_retryable_errors` is matched against."""
        names = [self.code]
        if self.type:
            names.append(self.type)
        error_class = self.details.get("error_class")
        if isinstance(error_class, str):
            names.append(error_class)
        return names


@dataclass(frozen=True, slots=True)
class Retry:
    delay_ms: int


@dataclass(frozen=True, slots=True)
class Discard:
    dead_letter: bool
    reason: str


Decision = Retry | Discard


def matches_non_retryable(patterns: tuple[str, ...], names: list[str]) -> bool:
    """Exact match, or a trailing `.*` prefix match (`auth.*` matches `auth.x`, not `auth`)."""
    for pattern in patterns:
        for name in names:
            if pattern == name:
                return True
            if pattern.endswith(".*") and name.startswith(pattern[:-1]):
                return True
    return False


def decide_failure(
    policy: RetryPolicy, attempt: int, report: FailureReport, rng: Callable[[], float]
) -> Decision:
    """Retry or discard after attempt number `attempt` (1-based) failed."""
    dead_letter = policy.on_exhaustion == "dead_letter"
    action = (report.action or "RETRY").upper()
    if action == "DEAD_LETTER":
        return Discard(dead_letter=True, reason="handler_dead_letter")
    if action in ("DISCARD", "FAIL"):
        return Discard(dead_letter=False, reason="handler_discard")
    if report.retryable is False or matches_non_retryable(
        policy.non_retryable_errors, report.names()
    ):
        return Discard(dead_letter=dead_letter, reason="non_retryable")
    if attempt >= max(1, policy.max_attempts):
        return Discard(dead_letter=dead_letter, reason="exhausted")
    return Retry(delay_ms=backoff_delay_ms(policy, attempt, rng))
