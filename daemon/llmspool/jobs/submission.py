"""Handing checked lines to the job keeper as a job: the one path of ``POST /v1/jobs`` and of
``POST /v1/batches`` (a Batch API batch is a job), so both get the same deadline rules, plan
and acknowledgement.

- ``intake`` checks an upload's lines (see ``jobs/intake.py``);
- ``new_job`` turns the valid lines into a job with a deadline, refusing one no tier can be
  expected to meet unless asked to run it as best effort;
- ``submit`` makes it durable through the keeper and returns the keeper's acknowledgement (the
  job and its tier plan), in a ``job submit`` span (a child of the caller's ``traceparent``
  when it sent one): the job stores that span's ``traceparent``, so every request the job
  sends later, and every batch that carries its lines, links to it.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import anyio
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from llmspool.core.calls import Endpoint
from llmspool.core.errors import ApiError, InvalidRequest, ServiceUnavailable
from llmspool.core.streams import MemoryReceiveStream, MemorySendStream, create_memory_stream
from llmspool.core.tracing import active, context_from_traceparent, traceparent_of
from llmspool.jobs.intake import Intake
from llmspool.jobs.spool import LineSpool
from llmspool.messages import (
    CancelJob,
    JobList,
    JobListQuery,
    JobQuery,
    JobView,
    SubmitJob,
    WaitForJob,
)
from llmspool.policy.cache_keys import CacheRules
from llmspool.policy.deadlines import parse_deadline
from llmspool.policy.model_choice import ModelChooser
from llmspool.policy.planner import Planner
from llmspool.policy.routing import ModelRouter
from llmspool.store.records import JobLines, NewJob, Viewer

# What the front door and the Batch API ask the job keeper (its inbox takes these and its
# status question: a send stream takes what is a part of its type).
KeeperQuestion = SubmitJob | CancelJob | WaitForJob | JobQuery | JobListQuery
KeeperInbox = MemorySendStream[KeeperQuestion]
Answer = TypeVar("Answer")
SHORT_DEADLINE_MODES = ("refuse", "best_effort")


@dataclass(frozen=True, slots=True)
class JobRequest:
    """What a caller asks of a job besides its lines."""

    uid: int | None
    operation: str | None = None
    tags: dict[str, str] | None = None
    deadline: str | float | None = None  # "6h", an ISO time, seconds; None: the default
    on_short_deadline: str | None = None  # None: [jobs] on_short_deadline
    traceparent: str | None = None


@dataclass(frozen=True, slots=True)
class Submitted:
    """The keeper's acknowledgement, and the warning when the deadline is best effort."""

    answer: JobView
    job: NewJob
    best_effort_warning: str | None


class JobSubmission:
    """Makes jobs from uploads and hands them to the job keeper."""

    def __init__(self, keeper: KeeperInbox, router: ModelRouter, planner: Planner, *,
                 max_line_size: int, max_json_values: int,
                 cache_rules: CacheRules | None = None,
                 on_short_deadline: str = "refuse", tracer: trace.Tracer | None = None,
                 chooser: ModelChooser | None = None,
                 spool_directory: Path | None = None) -> None:
        self.keeper = keeper
        self._spool_directory = spool_directory  # where checked lines wait to be stored
        self._chooser = chooser  # the operations' route rules, applied to each line
        # Without one given, the daemon's (see ``tracing.active``).
        self._tracer = tracer or active().tracer
        self._router = router
        self._planner = planner
        self._max_line_size = max_line_size
        self.max_json_values = max_json_values  # in a JSON job's body, and a JSONL line
        self._cache_rules = cache_rules
        self._on_short_deadline = on_short_deadline

    def intake(self, request: JobRequest, endpoint: Endpoint | None = None) -> Intake:
        # The cache key of each line depends on the job's operation and its caller.
        return Intake(self._router, max_line_size=self._max_line_size,
                      max_json_values=self.max_json_values,
                      cache_rules=self._cache_rules, operation=request.operation,
                      uid=request.uid, endpoint=endpoint, chooser=self._chooser,
                      spool_directory=self._spool_directory)

    def new_job(self, intake: Intake, request: JobRequest) -> tuple[NewJob, str | None]:
        """The job of the valid lines, and the best-effort warning if its deadline is short.

        Raises a 400 for an unreadable deadline, for a job with no valid line, and for a
        deadline no tier can be expected to meet (unless ``on_short_deadline`` is
        ``best_effort``)."""
        if not intake.lines:
            raise InvalidRequest("the job has no valid requests", code="empty_job")
        now = self._planner.clock.now()
        deadline = request.deadline
        try:
            deadline_at = (
                now + self._planner.operation_deadline(request.operation) if deadline is None
                else parse_deadline(str(deadline), now)
            )
        except ValueError as exc:
            raise InvalidRequest(str(exc), param="deadline", code="invalid_deadline") from None
        job = NewJob(
            id=f"job_{secrets.token_hex(12)}",
            created_at=now,
            deadline_at=deadline_at,
            operation=request.operation,
            tags=request.tags or {},
            uid=request.uid,
            lines=intake.lines,
            traceparent=request.traceparent,
        )
        mode = request.on_short_deadline or self._on_short_deadline
        return job, self._short_deadline(job, mode)

    async def submit(self, job: NewJob) -> JobView:
        """The job made durable by the keeper; its acknowledgement (job JSON and plan)."""
        models = sorted({model for _provider, model in targets(job.lines)})
        attributes: dict[str, Any] = {
            "llmspool.job.id": job.id,
            "llmspool.job.requests": len(job.lines),
            "llmspool.job.deadline_s": round(job.deadline_at - job.created_at, 3),
            "llmspool.job.models": models,
        }
        if job.operation is not None:
            attributes["llmspool.operation"] = job.operation
        if len(models) == 1:
            attributes["gen_ai.request.model"] = models[0]
        # A producer span: the requests it makes run later, each in a trace of its own that
        # links back to it (as consumers link to the message that made them).
        with self._tracer.start_as_current_span(
            "job submit", context=context_from_traceparent(job.traceparent),
            kind=SpanKind.PRODUCER, attributes=attributes,
            record_exception=False, set_status_on_exception=False,
        ) as span:
            job = dataclasses.replace(job, traceparent=traceparent_of(span) or job.traceparent)
            try:
                answer = await ask(self.keeper, lambda reply: SubmitJob(job, reply))
            except ApiError as error:
                span.set_status(Status(StatusCode.ERROR, error.message))
                span.set_attribute("error.type", error.code or type(error).__name__)
                raise
            span.set_attribute("llmspool.job.plan", [
                f"{group['tier']} {group['model']}: {group['requests']}"
                for group in answer.get("plan", [])])
        return answer

    def _short_deadline(self, job: NewJob, mode: str) -> str | None:
        """Refuse a job whose deadline no tier can be expected to meet (the fastest tier's
        typical time for one of its models is longer); with ``best_effort``, the warning to
        answer with."""
        if mode not in SHORT_DEADLINE_MODES:
            raise InvalidRequest("on_short_deadline must be 'refuse' or 'best_effort'",
                                 param="on_short_deadline")
        room = job.deadline_at - job.created_at
        slowest = max(targets(job.lines),
                      key=lambda target: self._planner.fastest_expected(*target))
        needed = self._planner.fastest_expected(*slowest)
        if room >= needed:
            return None
        message = (f"the deadline leaves {room:.1f} s, but a {slowest[1]} request typically "
                   f"takes {needed:.1f} s on the fastest tier allowed")
        if mode == "best_effort":
            return f"{message}; run as soon as possible, results may be flagged late"
        raise InvalidRequest(
            f"{message}, so no tier can be expected to meet it; give a longer deadline, set "
            "[planner] allow_priority = true if the model has a priority price, or pass "
            "on_short_deadline=best_effort (llmspool submit --best-effort) to run it anyway",
            param="deadline", code="deadline_too_short",
        )


def targets(lines: JobLines) -> set[tuple[str, str]]:
    """The (provider, model) pairs of a job's lines; a spool knows them without reading its
    lines back."""
    if isinstance(lines, LineSpool):
        return lines.targets
    return {(line.provider, line.model) for line in lines}


async def ask(keeper: KeeperInbox,
              make: Callable[[MemorySendStream[JobView | ApiError]], KeeperQuestion],
              ) -> JobView:
    """Send the keeper ``make(reply)`` and wait for the job it answers; its ``ApiError`` (a
    ``NotFound`` for a job the asker may not see) is raised."""
    reply_in, reply_out = create_memory_stream[JobView | ApiError](1)
    with reply_in, reply_out:
        return await _exchange(keeper, make(reply_in), reply_out)


async def list_jobs(keeper: KeeperInbox, limit: int, viewer: Viewer) -> JobList:
    """The newest ``limit`` jobs ``viewer`` may see."""
    reply_in, reply_out = create_memory_stream[JobList | ApiError](1)
    with reply_in, reply_out:
        return await _exchange(keeper, JobListQuery(limit, viewer, reply_in), reply_out)


async def _exchange(keeper: KeeperInbox, question: KeeperQuestion,
                    answers: MemoryReceiveStream[Answer | ApiError]) -> Answer:
    try:
        await keeper.send(question)
    except (anyio.BrokenResourceError, anyio.ClosedResourceError):
        raise ServiceUnavailable("llmspool is shutting down", code="shutting_down") from None
    answer = await answers.receive()
    if isinstance(answer, ApiError):
        raise answer
    return answer
