"""Simulated batches: the Batch API's objects and their life, driven by the clock.

A batch keeps the ``[sim.batch]`` settings in force when it was created, divided by the sim's
speed (real time, see ``llmspool.sim.speed``), and draws its own turnaround from them: exactly
``turnaround``, or with ``turnaround_p99`` set a log-normal draw seeded with the sim's seed and
its creation order (``batch_config.turnaround_draw``). From its creation time ``c`` it moves
through OpenAI's statuses:

- ``validating`` until ``c + validating``; then the input file is checked (``batch_lines``)
  and the batch is ``failed`` (``errors.data`` with line numbers; also ``fail_validation``,
  and ``token_limit_exceeded`` when its prompt tokens plus those of the same model's batches
  in progress, finalizing or cancelling pass ``enqueued_token_limit``), or every request is
  answered and it goes ``in_progress``;
- ``in_progress`` for its turnaround: line ``i`` of ``n`` finishes at ``(i + 1) / n`` of it,
  and ``request_counts`` grow accordingly; then ``finalizing`` for ``finalizing``, then
  ``completed``;
- ``expired`` instead, at ``c + expire_after`` (its ``expires_at``) if still in progress: the
  first ``expire_partial`` of the lines are answered, the others are ``batch_expired`` errors;
- after a cancel, ``cancelling`` for ``cancel_delay``, then ``cancelled``: the lines finished
  when the cancel arrived are answered, the others are ``batch_cancelled`` errors (the same rule
  as expiry, so every ``custom_id`` is in exactly one file; a batch cancelled while validating
  has no lines and no files).

Nothing runs in the background: every API call first ``advance``s all unfinished batches to
the present, event by event in time order, so a batch's story is the same however often (or
rarely) it is polled. The result files are written once, when a batch ends; an empty one is
not created (its id is ``null``). ``request_counts.failed`` counts every line in the error
file, and ``usage`` sums the answered (status 200) lines once the batch has ended. Those lines
(the output file's) also go to the request log (``request_log``) when the batch ends, each
under its ``custom_id`` with tier ``batch``: whether it completed, expired or was cancelled,
they are what the provider bills.

A batch's own state (its statuses and times, and its ``Batch`` object) is ``batch_state``'s;
the checks of a create body are ``batch_request``'s.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from llmspool.core.errors import InvalidRequest, NotFound
from llmspool.sim import validate
from llmspool.sim.answer import Makers
from llmspool.sim.batch_config import BatchSettings, turnaround_draw
from llmspool.sim.batch_lines import LineError, Plan, check_input, plan_lines, render
from llmspool.sim.batch_request import create_request
from llmspool.sim.batch_state import ENDED, SimBatch, Status
from llmspool.sim.files import BATCH_OUTPUT, FileStore, StoredFile, page_json
from llmspool.sim.request_log import DEFAULT_SIZE, RequestLog
from llmspool.sim.speed import DEFAULT_SPEED
from llmspool.sim.stats import SimStats

MAX_LIST_LIMIT = 100
DEFAULT_LIST_LIMIT = 20
ORGANIZATION = "org-sim"
EXPIRED = (
    "batch_expired",
    "This request could not be executed before the completion window expired.",
)
CANCELLED = ("batch_cancelled", "This request was cancelled.")
_ENQUEUED = frozenset({Status.IN_PROGRESS, Status.FINALIZING, Status.CANCELLING})

INTENT_KEY = "llmspool_intent"
"""The metadata key the daemon's OpenAI plugin puts its intent id under: the simulator counts
batches per intent by it, so a test can see that no intent made two batches."""


def token_limit_message(model: str, limit: int) -> str:
    """OpenAI's message when a batch would pass the model's enqueued-token cap."""
    return (
        f"Enqueued token limit reached for {model} in organization {ORGANIZATION}. "
        f"Limit: {limit} enqueued tokens. Please try again once some in_progress batches have "
        "been completed."
    )


class BatchRegistry:
    """Every batch of the simulator, and the settings new batches get."""

    def __init__(
        self,
        *,
        files: FileStore,
        makers: Makers,
        stats: SimStats,
        settings: BatchSettings,
        seed: int,
        speed: float = DEFAULT_SPEED,
        log: RequestLog | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``settings``: in rehearsal time, as configured and as ``/_sim/batch`` shows them;
        ``speed``: how much faster than real time they run; ``log``: where answered lines go
        when their batch ends (default: a log of its own)."""
        self.files = files
        self.log = log if log is not None else RequestLog(DEFAULT_SIZE)
        self.configured = settings
        self.settings = settings
        self._makers = makers
        self._stats = stats
        self._seed = seed
        self._speed = speed
        self._clock = clock
        self._batches: dict[str, SimBatch] = {}
        self._live: dict[str, SimBatch] = {}

    # -- the API -----------------------------------------------------------------------------

    def create(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """``POST /v1/batches``: a new batch (``validating``), or a 400/404 for a bad request."""
        now = self.advance()
        file_id, endpoint, metadata = create_request(payload)
        stored = self._input_file(file_id)
        settings = self.settings.scaled(self._speed)
        order = len(self._batches)
        batch = SimBatch(
            id=self._makers.ids.make("batch_"),
            endpoint=endpoint,
            input_file_id=file_id,
            metadata=metadata,
            created=now,
            settings=settings,
            turnaround=turnaround_draw(
                self._seed, order, settings.turnaround, settings.turnaround_p99
            ),
            content=stored.content,
        )
        self._batches[batch.id] = batch
        self._live[batch.id] = batch
        counters = self._stats.batches
        counters.created += 1
        if metadata is not None and INTENT_KEY in metadata:
            counters.intents[metadata[INTENT_KEY]] += 1
        return batch.to_json(now)

    def retrieve(self, batch_id: str) -> dict[str, Any]:
        now = self.advance()
        return self._get(batch_id).to_json(now)

    def cancel(self, batch_id: str) -> dict[str, Any]:
        """``POST /v1/batches/{id}/cancel``: start cancelling; repeating it changes nothing."""
        now = self.advance()
        batch = self._get(batch_id)
        self._stats.batches.cancel_requests += 1
        if batch.status in (Status.CANCELLING, Status.CANCELLED):
            return batch.to_json(now)
        if batch.status in ENDED:
            raise InvalidRequest(
                f"Cannot cancel a batch with status '{batch.status.value}'.",
                param="batch_id",
                code="invalid_batch_status",
            )
        # Lines already finished stay finished; the others will never run.
        batch.done_at_cancel = batch.lines_done(now)
        if batch.status is Status.VALIDATING:
            batch.content = None
        batch.status = Status.CANCELLING
        batch.cancelling_at = now
        return batch.to_json(now)

    def list_json(self, *, after: str | None, limit: int) -> dict[str, Any]:
        """``GET /v1/batches``: a ``ListBatchesResponse`` page, newest first."""
        now = self.advance()
        newest_first = list(reversed(self._batches.values()))
        return page_json(newest_first, after, limit, lambda batch: batch.to_json(now))

    def by_status(self) -> dict[str, int]:
        """How many batches are in each status now."""
        self.advance()
        counts: dict[str, int] = {}
        for batch in self._batches.values():
            counts[batch.status.value] = counts.get(batch.status.value, 0) + 1
        return counts

    # -- the clock ---------------------------------------------------------------------------

    def advance(self) -> float:
        """Play every status change due by now, in time order; the time it is now."""
        now = self._clock()
        while True:
            due: SimBatch | None = None
            due_at = now
            # Batches are in creation order, so among equal times the older one goes first.
            for batch in self._live.values():
                moment = batch.next_event()
                if moment is not None and moment <= due_at and (due is None or moment < due_at):
                    due, due_at = batch, moment
            if due is None:
                return now
            self._step(due, due_at)

    def _step(self, batch: SimBatch, moment: float) -> None:
        status = batch.status
        if status is Status.VALIDATING:
            self._validate(batch, moment)
        elif status is Status.IN_PROGRESS:
            if batch.expiry() is not None:
                done = min(batch.total, int(batch.total * batch.settings.expire_partial))
                self._end(batch, moment, Status.EXPIRED, done, EXPIRED)
                batch.expired_at = moment
            else:
                batch.status = Status.FINALIZING
                batch.finalizing_at = moment
        elif status is Status.FINALIZING:
            # Every line is done: nothing is left for the "unfinished" error.
            self._end(batch, moment, Status.COMPLETED, batch.total, EXPIRED)
            batch.completed_at = moment
        elif status is Status.CANCELLING:
            self._end(batch, moment, Status.CANCELLED, batch.done_at_cancel, CANCELLED)
            batch.cancelled_at = moment

    def _validate(self, batch: SimBatch, moment: float) -> None:
        content = batch.content
        batch.content = None
        assert content is not None
        settings = batch.settings
        checked = check_input(content, batch.endpoint)
        batch.model = checked.model
        errors = checked.errors
        if settings.fail_validation:
            errors = [_forced_error(settings, checked.model)]
        plan: Plan | None = None
        if not errors:
            plan = plan_lines(checked.requests, batch.endpoint, self._makers, settings, self._seed)
            limit = settings.enqueued_token_limit
            if limit and self._enqueued(batch) + plan.prompt_tokens > limit:
                assert checked.model is not None
                errors = [
                    LineError("token_limit_exceeded", token_limit_message(checked.model, limit))
                ]
        if errors:
            batch.status = Status.FAILED
            batch.failed_at = moment
            batch.errors = errors
            del self._live[batch.id]
            return
        assert plan is not None
        batch.plan = plan
        batch.total = len(plan.lines)
        batch.status = Status.IN_PROGRESS
        batch.in_progress_at = moment

    def _enqueued(self, batch: SimBatch) -> int:
        """Prompt tokens of the other batches for the same model that hold their place: in
        progress, finalizing or cancelling. (Batches still validating do not: of two batches
        the one validated first gets through, as in a queue.)"""
        return sum(
            other.plan.prompt_tokens
            for other in self._live.values()
            if other is not batch
            and other.plan is not None
            and other.model == batch.model
            and other.status in _ENQUEUED
        )

    def _end(
        self,
        batch: SimBatch,
        moment: float,
        status: Status,
        done: int,
        unfinished: tuple[str, str],
    ) -> None:
        """End ``batch``: write its files (from its plan, if it got one) and free the plan."""
        batch.status = status
        del self._live[batch.id]
        plan = batch.plan
        if plan is None:
            return
        batch.plan = None
        rendered = render(plan, done, unfinished, self._makers.ids.make)
        for line in plan.lines[:done]:
            answer = line.answer
            if answer is not None:
                self.log.add(
                    request_id=line.custom_id,
                    endpoint=batch.endpoint,
                    model=answer.model,
                    tier="batch",
                    stream=False,
                    input_tokens=answer.input_tokens,
                    output_tokens=answer.billed_output_tokens,
                    complete=True,
                    batch_id=batch.id,
                    at=moment,
                )
        batch.completed = rendered.completed
        batch.failed = rendered.failed
        batch.input_tokens = rendered.input_tokens
        batch.output_tokens = rendered.output_tokens
        created = int(moment)
        if rendered.output:
            batch.output_file_id = self._result_file(batch, "output", rendered.output, created)
        if rendered.errors:
            batch.error_file_id = self._result_file(batch, "error", rendered.errors, created)
        counters = self._stats.batches
        counters.lines_processed += done
        counters.input_tokens += rendered.input_tokens
        counters.output_tokens += rendered.output_tokens

    def _result_file(self, batch: SimBatch, kind: str, content: bytes, created: int) -> str:
        stored = StoredFile(
            id=self._makers.ids.make("file-"),
            filename=f"{batch.id}_{kind}.jsonl",
            purpose=BATCH_OUTPUT,
            created_at=created,
            content=content,
        )
        return self.files.add(stored).id

    def _input_file(self, file_id: str) -> StoredFile:
        stored = self.files.get(file_id, param="input_file_id")
        if stored.purpose != "batch":
            raise validate.invalid(
                "input_file_id",
                f"The file {file_id} has purpose '{stored.purpose}'; a batch input file must "
                "be uploaded with purpose 'batch'.",
            )
        return stored

    def _get(self, batch_id: str) -> SimBatch:
        batch = self._batches.get(batch_id)
        if batch is None:
            raise _not_found(batch_id)
        return batch


def _not_found(batch_id: str) -> NotFound:
    return NotFound(f"No batch found with id '{batch_id}'.", code="batch_not_found")


def _forced_error(settings: BatchSettings, model: str | None) -> LineError:
    code = settings.fail_validation
    if code == "token_limit_exceeded":
        limit = settings.enqueued_token_limit
        return LineError(code, token_limit_message(model or "unknown", limit))
    return LineError(
        code, f"The batch failed validation with {code!r} (the simulator's fail_validation)."
    )
