"""How many attempts a delivered job has had, as the worker judges it before running it.

Pure functions of the delivery's headers and envelope (unit-tested without a broker).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ojs_amqp.core.times import parse_rfc3339_ms


def expired(envelope: Mapping[str, Any], now: int) -> bool:
    """The envelope's `expires_at` has passed (an unreadable one counts as not set)."""
    text = envelope.get("expires_at")
    if not isinstance(text, str):
        return False
    try:
        return parse_rfc3339_ms(text) <= now
    except ValueError:
        return False


def attempt_of(headers: Mapping[str, Any], envelope: Mapping[str, Any]) -> int:
    """The attempt this delivery is: `x-ojs-attempt`, else the envelope's attempt + 1."""
    value = headers.get("x-ojs-attempt")
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    attempt = envelope.get("attempt")
    return attempt + 1 if isinstance(attempt, int) and not isinstance(attempt, bool) else 1


def lost_deliveries(headers: Mapping[str, Any]) -> int:
    """How often this copy went back to its queue unfinished: the quorum queue's
    `x-delivery-count` (RabbitMQ 3.10 and 4.0 count every return: a worker that died or was
    stopped, a reject or nack with requeue). 0 when absent (a first delivery)."""
    value = headers.get("x-delivery-count")
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return 0


def max_attempts_of(headers: Mapping[str, Any], envelope: Mapping[str, Any]) -> int | None:
    """The job's `max_attempts`: `x-ojs-max-attempts`, else the envelope's retry policy;
    None when neither says (a third-party message: then it is not judged here)."""
    candidates = [headers.get("x-ojs-max-attempts"), envelope.get("max_attempts")]
    retry = envelope.get("retry")
    if isinstance(retry, Mapping):
        candidates.insert(1, retry.get("max_attempts"))
    for value in candidates:
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    return None


def attempts_spent(headers: Mapping[str, Any], envelope: Mapping[str, Any]) -> tuple[int, int]:
    """(attempts spent before this delivery, max_attempts), counting each return of this copy
    to its queue as an attempt lost with its worker (ojs-retry §9.2); max_attempts -1 when not
    known."""
    spent = attempt_of(headers, envelope) - 1 + lost_deliveries(headers)
    limit = max_attempts_of(headers, envelope)
    return spent, -1 if limit is None else max(1, limit)
