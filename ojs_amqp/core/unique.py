"""Unique jobs (ojs-unique-jobs): the policy, the fingerprint and the conflict decision.

Pure rules only; where they run (one store transaction per check-and-insert, an outcomes
listener for releases) is docs/adr/0010-level-4.md. A claim is never a record of its own: it
is the holder job's row (its fingerprint, state and `created_at`), so it survives restarts
and can only disagree with the job by being the job.

Dialects accepted besides the spec's: the core examples' `key: [...]` (args keys; `[]` means
the type alone) and OpenAPI's `on_conflict: "use_existing"` (= `ignore`). `period` is an ISO
8601 duration (the core's `"3600s"` is read too); bare numbers are refused, since the spec
does not say whether they would be seconds or milliseconds.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from ojs_amqp.core.canonical import canonical_bytes, sha256_hex
from ojs_amqp.core.durations import parse_duration_ms
from ojs_amqp.core.job import Job, JobState, evolve
from ojs_amqp.errors import Duplicate, InvalidRequest


class OnConflict(StrEnum):
    REJECT = "reject"
    IGNORE = "ignore"
    REPLACE = "replace"
    REPLACE_EXCEPT_SCHEDULE = "replace_except_schedule"


#: Dimension order of the canonical object does not matter (JCS sorts keys); this is the
#: order `keys` is normalised to, so equal policies compare equal.
DIMENSIONS = ("type", "queue", "args", "meta")
DEFAULT_STATES = frozenset(
    {JobState.AVAILABLE, JobState.ACTIVE, JobState.SCHEDULED, JobState.RETRYABLE,
     JobState.PENDING}
)  # fmt: skip
_CONFLICT_ALIASES = {"use_existing": OnConflict.IGNORE}
_FIELDS = frozenset({"keys", "key", "args_keys", "meta_keys", "period", "states", "on_conflict"})
#: How long a claim that includes a terminal state outlives its job when `period` is not
#: set: the retention pruner keeps such rows this long (a claim "forever" would mean never
#: pruning the row).
TERMINAL_CLAIM_CAP_MS = 30 * 86_400_000


@dataclass(frozen=True, slots=True)
class UniquePolicy:
    #: Dimensions in DIMENSIONS order; always starts with "type" (§2.2).
    keys: tuple[str, ...] = ("type",)
    args_keys: tuple[str, ...] | None = None
    meta_keys: tuple[str, ...] | None = None
    period_ms: int | None = None
    states: frozenset[JobState] = DEFAULT_STATES
    on_conflict: OnConflict = OnConflict.REJECT

    def holds_in(self, state: JobState) -> bool:
        """Whether a job in `state` holds the claim (for the outcomes listener: a move to
        a state outside `states` releases it; retries are not re-checked, §9.2)."""
        return state in self.states

    @property
    def outlives_terminal_move(self) -> bool:
        return any(state.terminal for state in self.states)


def parse_unique_policy(raw: Any, field: str = "unique") -> UniquePolicy:
    """Validate a `unique` object; InvalidRequest (400 invalid_request) naming the field,
    as §2.2 requires for every invalid policy."""
    if not isinstance(raw, dict):
        raise _bad(field, "must be an object")
    unknown = sorted(set(raw) - _FIELDS)
    if unknown:
        raise _bad(f"{field}.{unknown[0]}", f"is not a unique policy field ({_list(_FIELDS)})")
    keys, args_keys = _keys(raw, field)
    meta_keys = _names(raw.get("meta_keys"), f"{field}.meta_keys")
    if args_keys is not None and "args" not in keys:
        raise _bad(f"{field}.args_keys", "is given but keys does not include 'args'")
    if meta_keys is not None and "meta" not in keys:
        raise _bad(f"{field}.meta_keys", "is given but keys does not include 'meta'")
    if "meta" in keys and not meta_keys:
        raise _bad(f"{field}.meta_keys", "must list at least one key when keys has 'meta'")
    return UniquePolicy(
        keys=keys,
        args_keys=args_keys,
        meta_keys=meta_keys,
        period_ms=_period(raw.get("period"), f"{field}.period"),
        states=_states(raw.get("states"), f"{field}.states"),
        on_conflict=_on_conflict(raw.get("on_conflict"), f"{field}.on_conflict"),
    )


def _keys(raw: dict[str, Any], field: str) -> tuple[tuple[str, ...], tuple[str, ...] | None]:
    if "key" in raw and ("keys" in raw or "args_keys" in raw):
        raise _bad(f"{field}.key", "is the core dialect of keys/args_keys; give one or the other")
    if "key" in raw:
        legacy = _names(raw["key"], f"{field}.key")
        return (("type", "args"), legacy) if legacy else (("type",), None)
    given = _names(raw.get("keys"), f"{field}.keys")
    for name in given or ():
        if name not in DIMENSIONS:
            raise _bad(f"{field}.keys", f"has {name!r}; dimensions are {', '.join(DIMENSIONS)}")
    chosen = {"type", *(given or ())}
    args_keys = _names(raw.get("args_keys"), f"{field}.args_keys")
    return tuple(d for d in DIMENSIONS if d in chosen), args_keys


def _names(value: Any, field: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise _bad(field, "must be an array of non-empty strings")
    if len(set(value)) != len(value):
        raise _bad(field, "must not repeat a name")
    return tuple(value)


def _period(value: Any, field: str) -> int | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise _bad(field, "must be an ISO 8601 duration string such as 'PT1H'")
    try:
        ms = parse_duration_ms(value)
    except ValueError as exc:
        raise _bad(field, f"{exc}; use an ISO 8601 duration such as 'PT1H'") from None
    if ms <= 0:
        raise _bad(field, "must be longer than zero")
    return ms


def _states(value: Any, field: str) -> frozenset[JobState]:
    names = _names(value, field)
    if names is None:
        return DEFAULT_STATES
    if not names:
        raise _bad(field, "must list at least one state (omit it for the default)")
    valid = {s.value: s for s in JobState}
    for name in names:
        if name not in valid:
            raise _bad(field, f"has {name!r}, which is no job state ({_list(valid)})")
    return frozenset(valid[n] for n in names)


def _on_conflict(value: Any, field: str) -> OnConflict:
    if value is None:
        return OnConflict.REJECT
    if isinstance(value, str) and value in _CONFLICT_ALIASES:
        return _CONFLICT_ALIASES[value]
    try:
        return OnConflict(value)
    except ValueError:
        raise _bad(field, f"must be one of {', '.join(OnConflict)}") from None


def _list(names: Iterable[str]) -> str:
    return ", ".join(sorted(names))


def _bad(field: str, problem: str) -> InvalidRequest:
    return InvalidRequest(f"{field} {problem}", details={"field": field})


# --- the fingerprint -----------------------------------------------------------------------


def fingerprint(
    policy: UniquePolicy, job_type: str, queue: str, args: Any, meta: dict[str, Any] | None
) -> str:
    """Lower-case hex SHA-256 of the RFC 8785 form of the selected dimensions (§4.1)."""
    dimensions: dict[str, Any] = {"type": job_type}
    if "queue" in policy.keys:
        dimensions["queue"] = queue
    if "args" in policy.keys:
        dimensions["args"] = args if policy.args_keys is None else _args_subset(policy, args)
    if "meta" in policy.keys:
        given = meta or {}
        dimensions["meta"] = {k: given[k] for k in policy.meta_keys or () if k in given}
    return sha256_hex(canonical_bytes(dimensions, "unique fingerprint of the job"))


def job_fingerprint(policy: UniquePolicy, job: Job) -> str:
    return fingerprint(policy, job.type, job.queue, job.args, job.meta)


def _args_subset(policy: UniquePolicy, args: Any) -> dict[str, Any]:
    """`args_keys` picked from the job's args. OJS args are an array, so each key is taken
    from the first object element that has it (`[{"user_id": 42, ...}]` gives the spec's
    example `{"user_id": 42}`); a key no element has is refused (§2.2)."""
    holders = [args] if isinstance(args, dict) else [a for a in args if isinstance(a, dict)]
    picked: dict[str, Any] = {}
    for key in policy.args_keys or ():
        for holder in holders:
            if key in holder:
                picked[key] = holder[key]
                break
        else:
            raise InvalidRequest(
                f"unique.args_keys names {key!r}, which no object in args has",
                details={"field": "unique.args_keys", "missing": key},
            )
    return picked


# --- the conflict decision -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Holder:
    """An existing job with the same fingerprint, as the store reads it."""

    job_id: str
    state: JobState
    created_at_ms: int
    scheduled_at_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Admit:
    """No live claim: insert the new job."""


@dataclass(frozen=True, slots=True)
class Reject:
    holder: Holder


@dataclass(frozen=True, slots=True)
class Ignore:
    holder: Holder


@dataclass(frozen=True, slots=True)
class Replace:
    """Cancel every holder, then insert the new job, in one commit (§5.2). `keep_scheduled_at_ms`
    is the holder's schedule to give the new job (replace_except_schedule, §5.3)."""

    holders: tuple[Holder, ...]
    keep_scheduled_at_ms: int | None = None


Conflict = Admit | Reject | Ignore | Replace


def claims(policy: UniquePolicy, holder: Holder, now_ms: int) -> bool:
    """§7.4: the holder's state is in the new job's `states`, and its `created_at + period`
    has not passed (or there is no period)."""
    if holder.state not in policy.states:
        return False
    return policy.period_ms is None or now_ms < holder.created_at_ms + policy.period_ms


def decide(policy: UniquePolicy, holders: Sequence[Holder], now_ms: int) -> Conflict:
    """What a push with `policy` does, given the jobs that share its fingerprint."""
    live = sorted(
        (h for h in holders if claims(policy, h, now_ms)),
        key=lambda h: (h.created_at_ms, h.job_id),
        reverse=True,
    )
    if not live:
        return Admit()
    newest = live[0]
    if policy.on_conflict is OnConflict.REJECT:
        return Reject(newest)
    if policy.on_conflict is OnConflict.IGNORE:
        return Ignore(newest)
    keep = None
    if policy.on_conflict is OnConflict.REPLACE_EXCEPT_SCHEDULE and (
        newest.state is JobState.SCHEDULED
    ):
        keep = newest.scheduled_at_ms
    return Replace(tuple(live), keep)


def with_kept_schedule(job: Job, scheduled_at_ms: int, now_ms: int) -> Job:
    """The new job of a replace_except_schedule, due when the job it replaces was."""
    if scheduled_at_ms > now_ms:
        return evolve(job, state=JobState.SCHEDULED, scheduled_at_ms=scheduled_at_ms,
                      enqueued_at_ms=None, client_times={})  # fmt: skip
    return evolve(job, state=JobState.AVAILABLE, scheduled_at_ms=scheduled_at_ms,
                  enqueued_at_ms=now_ms, client_times={})  # fmt: skip


def claim_kept_until_ms(policy: UniquePolicy, created_at_ms: int) -> int | None:
    """Until when the retention pruner must keep a finished job's row because its claim
    may still be live; None when its terminal move released the claim already."""
    if not policy.outlives_terminal_move:
        return None
    return created_at_ms + (policy.period_ms or TERMINAL_CLAIM_CAP_MS)


class UniqueConflict(Duplicate):
    """409 duplicate: a job with the same uniqueness key holds the claim (§5.1)."""

    hint = (
        "A job with the same uniqueness key exists (details.existing_job_id); wait for it to "
        "finish, or use on_conflict 'ignore' or 'replace'."
    )


def rejection(reject: Reject, key: str) -> UniqueConflict:
    holder = reject.holder
    return UniqueConflict(
        f"a job with the same uniqueness key exists: {holder.job_id} ({holder.state.value})",
        details={
            "existing_job_id": holder.job_id,
            "existing_job_state": holder.state.value,
            "uniqueness_key": key,
        },
    )
