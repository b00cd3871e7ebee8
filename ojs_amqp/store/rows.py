"""What every store derives from a Job for its indexed columns (one definition, so the stores
cannot disagree on which jobs are finished, dead letters or due to expire)."""

from __future__ import annotations

from ojs_amqp.core.job import Job, JobState


def finished_at(job: Job) -> int | None:
    """When a terminal job finished (retention counts from it); None while it is not."""
    if not job.state.terminal:
        return None
    return job.completed_at_ms or job.discarded_at_ms or job.cancelled_at_ms or job.created_at_ms


def is_dead_letter(job: Job) -> bool:
    """Only a discarded job counts as a dead letter, whatever its flag says in other states."""
    return job.dead_letter and job.state is JobState.DISCARDED
