"""One error tree for the whole daemon; each error knows its OJS code and HTTP status.

    OjsError
    ├── Unauthenticated       401 unauthenticated   (no or unknown bearer token)
    ├── Forbidden             403 forbidden         (token scope does not allow it)
    ├── InvalidRequest        400 invalid_request   (structurally wrong request)
    │   ├── InvalidPayload    400 invalid_payload   (not JSON, wrong content type, no body)
    │   └── InvalidWorkflow   400 invalid_workflow  (a workflow definition that cannot run)
    ├── ValidationFailed      422 validation_error  (well-formed but semantically invalid)
    ├── NotFound              404 not_found
    │   └── NoSuchEndpoint    404 not_found         (no route has this path)
    ├── MethodNotAllowed      405 method_not_allowed
    ├── Conflict              409 conflict          (invalid state transition, not the owner)
    │   ├── Duplicate         409 duplicate         (a job with this id exists)
    │   └── QueueNotEmpty     409 conflict          (deleting a queue that holds open jobs)
    ├── RequestTimeout        408 timeout           (the request arrived too slowly)
    ├── PayloadTooLarge       413 payload_too_large
    ├── QueueFull             429 queue_full        (backpressure: max_depth or x-max-length)
    ├── Unsupported           422 unsupported
    ├── TopologyMismatch      500 backend_error     (a queue or exchange exists with other
    │                                                arguments; never redeclared by us)
    └── BackendUnavailable    503 backend_error     (the broker or store is gone; retryable)
        ├── Unroutable                              (a mandatory publish came back)
        ├── PublishRejected                         (the broker nacked a publish)
        ├── BrokerStalled                           (a broker wait ran past its timeout)
        └── TooManyConnections                      (the HTTP connection cap is reached)

The core raises these with no knowledge of HTTP; `http/responses.py` is the one place that turns
them into responses.
"""

from __future__ import annotations

from typing import Any, ClassVar


class OjsError(Exception):
    code: ClassVar[str] = "internal_error"
    http_status: ClassVar[int] = 500
    retryable: ClassVar[bool] = False
    hint: ClassVar[str] = "Retry later; if the problem persists, check the daemon's logs."
    #: Seconds a client should wait before retrying (HTTP Retry-After), when it should.
    retry_after_s: ClassVar[int | None] = None

    def __init__(
        self,
        message: str,
        *,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}
        #: Extra HTTP response headers (e.g. X-OJS-Queue-Depth on 429).
        self.headers = headers or {}

    def to_wire(self) -> dict[str, Any]:
        """The OJS error object, as the HTTP and the AMQP edges both send it."""
        error: dict[str, Any] = {
            "code": self.code,
            "type": self.code,
            "message": self.message,
            "retryable": self.retryable,
            "hint": self.hint,
        }
        if self.details:
            error["details"] = self.details
        return error


class Unauthenticated(OjsError):
    code = "unauthenticated"
    http_status = 401
    hint = "Send 'Authorization: Bearer <token>' with a token the daemon was given."


class Forbidden(OjsError):
    code = "forbidden"
    http_status = 403
    hint = "This token's scope does not allow the operation; see docs/security.md."


class InvalidRequest(OjsError):
    code = "invalid_request"
    http_status = 400
    hint = "Fix the request as the message says; see the OJS HTTP binding for the shape."


class InvalidPayload(InvalidRequest):
    code = "invalid_payload"
    hint = "Send a UTF-8 JSON object with Content-Type application/openjobspec+json."


class InvalidWorkflow(InvalidRequest):
    """A workflow definition that cannot run as written (ojs-workflows §11.1): a bad step,
    a cycle, an unknown dependency, nesting deeper than supported."""

    code = "invalid_workflow"
    hint = (
        "Fix the part the message names: a chain lists `steps`, a group or batch `jobs` (a "
        "batch also `callbacks`), the DAG dialect `steps` with `id` and `depends_on`."
    )


class ValidationFailed(OjsError):
    code = "validation_error"
    http_status = 422
    hint = "The request is well-formed but a value is out of its allowed range."


class NotFound(OjsError):
    code = "not_found"
    http_status = 404
    hint = "Check the id; finished jobs are removed after the retention period."


class NoSuchEndpoint(NotFound):
    """The path is no endpoint at all: the hint is about paths, not about job ids."""

    hint = (
        "No endpoint has this path; check it against the OJS HTTP binding (the API is under "
        "/ojs/v1, the manifest at GET /ojs/manifest). Features not built answer 422 unsupported."
    )


class MethodNotAllowed(OjsError):
    code = "method_not_allowed"
    http_status = 405
    hint = "The path exists with other methods; the Allow header lists them."


class Conflict(OjsError):
    code = "conflict"
    http_status = 409
    hint = "The job is not in a state that allows this operation; GET it to see its state."


class Duplicate(Conflict):
    code = "duplicate"
    hint = "A job with this id already exists; use a new id or omit it."


class QueueNotEmpty(Conflict):
    hint = (
        "Wait for the open jobs to finish, cancel them, or delete with force=true (which "
        "cancels them); see docs/operations.md."
    )


class RequestTimeout(OjsError):
    code = "timeout"
    http_status = 408
    retryable = True
    hint = "Send the whole request at once; the daemon waits a bounded time for it."


class PayloadTooLarge(OjsError):
    code = "payload_too_large"
    http_status = 413
    hint = "Shrink the request or raise the daemon's body limit."


class Unsupported(OjsError):
    code = "unsupported"
    http_status = 422
    hint = "This daemon does not implement that feature; see GET /ojs/manifest."


class QueueFull(OjsError):
    """Backpressure: the producer is told to slow down, the job is not accepted."""

    code = "queue_full"
    http_status = 429
    retryable = True
    hint = "Retry after the number of seconds in Retry-After, or add workers to the queue."
    retry_after_s = 1


class TopologyMismatch(OjsError):
    """A queue exists with other arguments (406 PRECONDITION_FAILED); we never redeclare it."""

    code = "backend_error"
    http_status = 500


class BackendUnavailable(OjsError):
    code = "backend_error"
    http_status = 503
    retryable = True
    hint = "The broker or the store is unreachable; retry with backoff."
    retry_after_s = 2


class Unroutable(BackendUnavailable):
    """The broker returned a mandatory publish: nothing is bound where it was sent (a deleted
    queue, or a prefix no daemon uses)."""

    hint = "Check --prefix matches the daemon's, and that the daemon is running."


class PublishRejected(BackendUnavailable):
    """The broker nacked a publish (a full queue with x-overflow=reject-publish, or a broker
    fault): the message was not stored."""

    hint = "The queue may be full; retry later with backoff."


class BrokerStalled(BackendUnavailable):
    """A broker wait (handshake, channel open, declare, confirm, RPC) ran past its timeout:
    the broker may be connected yet not answering (out of file handles, paused, behind a
    load balancer whose node is gone). Whatever was sent may still take effect later."""

    hint = "The broker is not answering in time; retry with backoff (see docs/operations.md)."

    def __init__(self, message: str, *, waited_for: str, timeout_s: float) -> None:
        super().__init__(
            message, details={"waited_for": waited_for, "timeout_ms": round(timeout_s * 1000)}
        )
        self.waited_for = waited_for
        self.timeout_s = timeout_s


class TooManyConnections(BackendUnavailable):
    """The daemon holds as many HTTP connections as it may (--http-max-connections)."""

    hint = "Reuse keep-alive connections, or retry with backoff."


class InvalidTransition(Conflict):
    """A lifecycle move the state table does not allow."""

    def __init__(self, job_id: str, state: str, operation: str) -> None:
        super().__init__(
            f"job {job_id} is {state}; {operation} is not allowed from that state",
            details={"job_id": job_id, "current_state": state, "operation": operation},
        )


def describe(exc: BaseException) -> str:
    """An error as an operator reads it: our own messages as they are, others as their text,
    or their type where they have none."""
    if isinstance(exc, OjsError):
        return exc.message
    return str(exc) or type(exc).__name__
