"""Who waits for a job to finish, and the job keeper's answers to askers.

``WaitForJob`` on a job in progress is kept here until the job completes or is cancelled; an
asker that gave up (its stream closed) is skipped without fuss.
"""

from __future__ import annotations

import contextlib

from llmspool.actors.keeping.jobs import JobState
from llmspool.core.errors import ApiError, NotFound
from llmspool.core.streams import MemorySendStream
from llmspool.messages import GONE, JobView

JobReply = MemorySendStream[JobView | ApiError]


class Waiters:
    """The replies waiting for each job in progress, answered when it finishes."""

    def __init__(self) -> None:
        self._waiters: dict[str, list[JobReply]] = {}

    def add(self, job_id: str, reply: JobReply) -> None:
        self._waiters.setdefault(job_id, []).append(reply)

    def job_finished(self, job: JobState) -> None:
        for waiter in self._waiters.pop(job.id, []):
            with contextlib.suppress(*GONE):  # a waiter that gave up
                waiter.send_nowait(job.to_json())


def no_such_job(job_id: str) -> NotFound:
    return NotFound(f"no job {job_id!r} (unknown, or deleted after [jobs] retention)",
                    code="job_not_found", param="id")


async def reply_to(reply: JobReply, what: JobView | ApiError) -> None:
    with contextlib.suppress(*GONE):  # the asker gave up
        reply.send_nowait(what)
