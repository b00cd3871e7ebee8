"""Names of the native AMQP protocol's control messages (docs/amqp-protocol.md).

Shared by the daemon and the Python SDK so the two cannot drift apart. A control message says
what it is in the AMQP `type` property; its body is a small JSON object.
"""

from __future__ import annotations

#: Cancel a job by id (AMQP-019); also broadcast to native workers on ojs.exchange.workers.
CANCEL = "ojs.control.cancel"
#: A native worker is still on a job (AMQP-020); the first one marks the job active.
HEARTBEAT = "ojs.control.heartbeat"
#: Look a job up (AMQP-021): an RPC, answered to `reply_to` with `correlation_id`.
INFO = "ojs.control.info"
#: A native worker's progress on a job (ojs-progress): `progress` (0.0-1.0), `message`,
#: `data`; it counts as a heartbeat too.
PROGRESS = "ojs.control.progress"
#: A client announces the queues it uses, so the daemon declares and watches them.
HELLO = "ojs.control.hello"
#: A native worker finished a job (optionally with a result).
COMPLETED = "ojs.report.completed"
#: A native worker's attempt failed; the daemon applies the job's retry policy.
FAILED = "ojs.report.failed"
#: Several completed/failed reports in one message (`{"reports": [...]}`, each with its own
#: `type`): one persistent publish and one confirm for many jobs.
BATCH = "ojs.report.batch"
#: The `type` of every answer the daemon sends to a `reply_to`.
REPLY = "ojs.reply"

REPORT_TYPES = frozenset({COMPLETED, FAILED})
CONTROL_TYPES = frozenset({CANCEL, HEARTBEAT, INFO, HELLO, COMPLETED, FAILED, BATCH, PROGRESS})
#: Reports one batch may carry.
MAX_BATCH = 1000

#: Headers the daemon sets on what it moves to ojs.rejected.
H_ERROR_CODE = "x-ojs-error-code"
H_ERROR_MESSAGE = "x-ojs-error-message"
H_REJECTED_FROM = "x-ojs-rejected-from"

#: Routing key prefix on ojs.exchange.workers for cancellations: `cancel.{queue}`.
WORKER_CANCEL_PREFIX = "cancel."
