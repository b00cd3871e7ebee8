"""What the SDK raises, and the one mapping from the daemon's `{"error": {...}}` replies to
the project's OjsError classes, so an RPC fails exactly as the same HTTP call would."""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from ojs_amqp.errors import (
    BackendUnavailable,
    Conflict,
    Duplicate,
    Forbidden,
    InvalidPayload,
    InvalidRequest,
    NotFound,
    OjsError,
    PayloadTooLarge,
    Unauthenticated,
    Unsupported,
    ValidationFailed,
)
from ojs_amqp.errors import BrokerStalled as BrokerStalled  # re-exported: SDK errors
from ojs_amqp.errors import PublishRejected as PublishRejected
from ojs_amqp.errors import Unroutable as Unroutable

_KNOWN: tuple[type[OjsError], ...] = (
    Unauthenticated, Forbidden, InvalidRequest, InvalidPayload, ValidationFailed, NotFound,
    Conflict, Duplicate, PayloadTooLarge, Unsupported, BackendUnavailable,
)  # fmt: skip
_BY_CODE: dict[str, type[OjsError]] = {cls.code: cls for cls in _KNOWN}


class ReplyTimeout(BackendUnavailable):
    """The daemon did not answer an RPC in time (not running, or overloaded)."""

    hint = "Check that the daemon is running with the same --prefix."


class BatchPushError(BackendUnavailable):
    """Some publishes of a batch failed; the others were confirmed and are pushed."""

    def __init__(self, message: str, *, pushed: list[Any], failures: dict[int, OjsError]) -> None:
        super().__init__(message, details={"failed_indexes": sorted(failures)})
        #: The jobs whose publish was confirmed, in request order.
        self.pushed = pushed
        #: Request index -> why that job was not pushed.
        self.failures = failures


class JobError(Exception):
    """Raise from a handler to choose the reported error's code, retryability and details.

    Any other exception is reported with code `handler_error`; the daemon matches both the
    code and the exception class name against the job's `non_retryable_errors`.
    """

    def __init__(
        self,
        message: str,
        *,
        code: str = "handler_error",
        retryable: bool | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.retryable = retryable
        self.details = dict(details or {})


@lru_cache(maxsize=64)
def _unknown(code: str) -> type[OjsError]:
    """A class for a code this SDK does not know, so `err.code` still says what it was."""
    return type("RemoteError", (OjsError,), {"code": code, "__module__": __name__})


def error_from_reply(error: Any) -> OjsError:
    """The OjsError for the `error` object of a daemon reply (HTTP error shape)."""
    if not isinstance(error, Mapping):
        return OjsError(f"the daemon answered with a malformed error: {error!r}"[:500])
    code = error.get("code")
    message = error.get("message")
    details = error.get("details")
    cls = _BY_CODE.get(code) if isinstance(code, str) else None
    if cls is None:
        cls = _unknown(code) if isinstance(code, str) and code else OjsError
    return cls(
        message if isinstance(message, str) else str(code),
        details=dict(details) if isinstance(details, Mapping) else None,
    )
