"""Rate-limit decisions: a pure function of (policy, key state, now).

Pacing (`rate`, `throttle`, `max_per_second`) is GCRA, the token bucket written as one
number: the key's theoretical arrival time `tat`. With interval T = period/limit and burst
B, a start at `now` is admitted when max(tat, now) - now <= (B - 1) * T, and then
tat' = max(tat, now) + T. Over any span of length w it admits at most B + w/T starts: the
stated slack is B - 1 beyond the pace, so `max_per_second: 5` (B = 1, T = 200 ms) admits at
most 6 in any second, and `rate {limit L, period P}` (B = L) at most 2L in any P. T is
rounded up to whole milliseconds, so the pace is never faster than asked.

Concurrency is a count of the key's active jobs: admitted while active < limit.

Because a key's whole state is (active, rate_tat, throttle_tat), one conditional store
update applies a decision atomically (docs/adr/0010-level-4.md, "Rate limits"): the
`WHERE` repeats the admission test, so two daemons cannot both take the last token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from ojs_amqp.core.rate_policy import OnLimit, Pace, RatePolicy
from ojs_amqp.core.times import format_ms


@dataclass(frozen=True, slots=True)
class KeyState:
    active: int = 0
    rate_tat_ms: int = 0
    throttle_tat_ms: int = 0


class Verdict(StrEnum):
    ADMIT = "admit"  # hand the job out; store `Decision.state`
    WAIT = "wait"  # skip it, it stays available; retry_at_ms says when (None: on a release)
    RESCHEDULE = "reschedule"  # move it to scheduled at retry_at_ms
    DROP = "drop"  # discard it (error code rate_limited)


@dataclass(frozen=True, slots=True)
class Headers:
    """X-RateLimit-* of the binding limit (§10.4): burst size, tokens left, and the Unix
    second when one more start is allowed (None when only a release can free one)."""

    limit: int
    remaining: int
    reset_s: int | None

    def to_http(self) -> dict[str, str]:
        out = {"X-RateLimit-Limit": str(self.limit), "X-RateLimit-Remaining": str(self.remaining)}
        if self.reset_s is not None:
            out["X-RateLimit-Reset"] = str(self.reset_s)
        return out


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    #: The key's state after the decision (changed only when admitted).
    state: KeyState
    retry_at_ms: int | None = None
    #: "concurrency", "rate" or "throttle" when not admitted.
    blocked_by: str | None = None
    headers: Headers | None = None


# --- GCRA ----------------------------------------------------------------------------------


def _start(pace: Pace, tat: int, now: int) -> int:
    return max(tat, now)


def _pace_allows(pace: Pace, tat: int, now: int) -> bool:
    return _start(pace, tat, now) - now <= (pace.burst - 1) * pace.interval_ms


def _pace_next(pace: Pace, tat: int, now: int) -> int:
    return _start(pace, tat, now) + pace.interval_ms


def _pace_retry_at(pace: Pace, tat: int, now: int) -> int:
    """The first instant the pace admits a start."""
    return max(now, _start(pace, tat, now) - (pace.burst - 1) * pace.interval_ms)


def _pace_remaining(pace: Pace, tat: int, now: int) -> int:
    debt = _start(pace, tat, now) - now
    return max(0, min(pace.burst, (pace.burst * pace.interval_ms - debt) // pace.interval_ms))


# --- the decision --------------------------------------------------------------------------


def _paces(policy: RatePolicy, state: KeyState) -> list[tuple[str, Pace, int]]:
    out = []
    if policy.rate is not None:
        out.append(("rate", policy.rate, state.rate_tat_ms))
    if policy.throttle is not None:
        out.append(("throttle", policy.throttle, state.throttle_tat_ms))
    return out


def headers(policy: RatePolicy, state: KeyState, now_ms: int) -> Headers:
    """The headers for `state` as it is (a push answers with these without using a
    token); the limit with the fewest starts left binds."""
    candidates: list[tuple[int, int, int | None]] = []
    if policy.concurrency is not None:
        left = max(0, policy.concurrency - state.active)
        candidates.append((left, policy.concurrency, None if left == 0 else _seconds(now_ms)))
    for _, pace, tat in _paces(policy, state):
        left = _pace_remaining(pace, tat, now_ms)
        candidates.append((left, pace.burst, _seconds(_pace_retry_at(pace, tat, now_ms))))
    left, limit, reset = min(candidates, key=lambda c: (c[0], -(c[2] or 0)))
    return Headers(limit=limit, remaining=left, reset_s=reset)


def decide(policy: RatePolicy, state: KeyState, now_ms: int) -> Decision:
    """Whether a job under `policy` may start now; all of its limits must allow it (§6.2)."""
    if policy.concurrency is not None and state.active >= policy.concurrency:
        return _blocked(policy, state, now_ms, "concurrency", None)
    for name, pace, tat in _paces(policy, state):
        if not _pace_allows(pace, tat, now_ms):
            return _blocked(policy, state, now_ms, name, _pace_retry_at(pace, tat, now_ms))
    after = state
    if policy.concurrency is not None:
        after = replace(after, active=after.active + 1)
    if policy.rate is not None:
        after = replace(after, rate_tat_ms=_pace_next(policy.rate, state.rate_tat_ms, now_ms))
    if policy.throttle is not None:
        after = replace(
            after, throttle_tat_ms=_pace_next(policy.throttle, state.throttle_tat_ms, now_ms)
        )
    return Decision(Verdict.ADMIT, after, headers=headers(policy, after, now_ms))


def _blocked(
    policy: RatePolicy, state: KeyState, now_ms: int, by: str, retry_at: int | None
) -> Decision:
    verdict = {
        OnLimit.WAIT: Verdict.WAIT,
        OnLimit.RESCHEDULE: Verdict.RESCHEDULE,
        OnLimit.DROP: Verdict.DROP,
    }[policy.on_limit]
    if verdict is Verdict.RESCHEDULE and retry_at is None:
        # No clock tells when a concurrency slot frees: the job waits, available, for the
        # release instead of being parked on a guess.
        verdict = Verdict.WAIT
    return Decision(verdict, state, retry_at, by, headers(policy, state, now_ms))


def rebased(policy: RatePolicy, state: KeyState, now_ms: int) -> KeyState:
    """The key's state when its policy changes live: a debt the new policy could not have
    built (a slower pace before) is cut to the most it allows, so the new pace applies at
    once instead of after the old, longer wait. Apply it with the policy's upsert."""

    def cut(pace: Pace | None, tat: int) -> int:
        return tat if pace is None else min(tat, now_ms + pace.burst * pace.interval_ms)

    return replace(
        state,
        rate_tat_ms=cut(policy.rate, state.rate_tat_ms),
        throttle_tat_ms=cut(policy.throttle, state.throttle_tat_ms),
    )


def released(state: KeyState) -> KeyState:
    """A job of the key left `active` (ack, fail, lease expiry, cancel)."""
    return replace(state, active=max(0, state.active - 1))


_LOSSLESS_FIRST = (Verdict.WAIT, Verdict.RESCHEDULE, Verdict.DROP)


@dataclass(frozen=True, slots=True)
class Combined:
    verdict: Verdict
    #: key -> state after the decision (for every key checked; changed only on ADMIT).
    states: dict[str, KeyState]
    retry_at_ms: int | None
    headers: Headers | None


def decide_all(checks: Sequence[RatePolicy], states: dict[str, KeyState], now_ms: int) -> Combined:
    """A job under several policies (its own and its queue's, §7.2): admitted only when all
    admit, else nothing is taken. When several block, the least lossy verdict wins and
    the job is retried when the last of them allows it."""
    working = dict(states)
    decisions: list[Decision] = []
    for policy in checks:
        decision = decide(policy, working.get(policy.key, KeyState()), now_ms)
        decisions.append(decision)
        if decision.verdict is Verdict.ADMIT:
            working[policy.key] = decision.state
    blocked = [d for d in decisions if d.verdict is not Verdict.ADMIT]
    shown = [d.headers for d in (blocked or decisions) if d.headers is not None]
    binding = min(shown, key=lambda h: h.remaining) if shown else None
    if not blocked:
        return Combined(Verdict.ADMIT, working, None, binding)
    verdict = min((d.verdict for d in blocked), key=_LOSSLESS_FIRST.index)
    waits = [d.retry_at_ms for d in blocked]
    retry_at = None if None in waits else max(w for w in waits if w is not None)
    unchanged = {p.key: states.get(p.key, KeyState()) for p in checks}
    return Combined(verdict, unchanged, retry_at, binding)


def inspection(
    policy: RatePolicy, state: KeyState, now_ms: int, waiting: int | None = None
) -> dict[str, Any]:
    """GET /ojs/v1/rate-limits/{key} (§10.1)."""
    out: dict[str, Any] = {"key": policy.key, "on_limit": policy.on_limit.value}
    if policy.concurrency is not None:
        out["concurrency"] = {
            "limit": policy.concurrency,
            "active": state.active,
            "available": max(0, policy.concurrency - state.active),
        }
    if policy.rate is not None:
        tat = _start(policy.rate, state.rate_tat_ms, now_ms)
        left = _pace_remaining(policy.rate, state.rate_tat_ms, now_ms)
        out["rate"] = {
            **policy.rate.to_wire(),
            "remaining": left,
            "current_count": policy.rate.burst - left,
            "window_resets_at": format_ms(max(tat, now_ms)),
        }
    if policy.throttle is not None:
        at = _pace_retry_at(policy.throttle, state.throttle_tat_ms, now_ms)
        out["throttle"] = {**policy.throttle.to_wire(), "next_allowed_at": format_ms(at)}
    if waiting is not None:
        out["waiting_count"] = waiting
    return out


def _seconds(ms: int) -> int:
    return -(-ms // 1000)
