"""Anthropic's Message Batches, simulated on the OpenAI batches' lifecycle (``batches``).

A ``MessageBatchRegistry`` is a ``BatchRegistry``: the same clock, the same ``/_sim/batch``
settings (each batch keeps those in force when it was created, scaled by the sim's speed), the
same seeded turnaround draws, cancel delay, expiry and partial expiry, the same stats
(``batches.created``, ``batches.cancel_requests``, ``batches.by_status`` in the registry's
statuses, ``lines_processed``, ``tokens``) and the same request-log entries for answered lines
(``request_id`` the ``custom_id``, endpoint ``/v1/messages``, tier ``batch``). What differs:

- ``POST /v1/messages/batches`` takes the requests inline, ``{"requests": [{"custom_id",
  "params"}]}``, and keeps them in memory. It refuses (400 ``invalid_request_error``) a body
  with other keys, no or an empty ``requests``, more than ``MAX_REQUESTS``, a ``custom_id``
  not matching ``CUSTOM_ID`` or used twice, ``params`` that is not an object or asks
  ``stream: true`` (those checks are ``anthropic_batch_request``'s), and every batch while
  ``fail_validation`` is set; a body over ``MAX_BATCH_BYTES`` is 413 ``request_too_large``.
  Bad ``params`` otherwise do not refuse the batch: that request's result is ``errored``
  (``invalid_request_error``, or ``not_found_error`` for a model not served), as with
  Anthropic.
- ``batches.intents`` counts, per batch, each distinct ``custom_id`` prefix once: the part
  before the last ``_`` (the daemon names lines ``<intent>_r<request id>``); a ``custom_id``
  without ``_`` has no prefix and counts nothing.
- The registry's statuses show as ``processing_status``: ``in_progress`` (validating, in
  progress, finalizing), ``canceling``, ``ended`` (completed, expired, cancelled). Requests
  count as ``processing`` until the batch ends; then as ``succeeded``, ``errored``,
  ``canceled`` or ``expired`` (zero before, as Anthropic reports them).
- Lines ``error_custom_ids`` names (the whole ``custom_id``, or its part after the last
  ``_``) and those ``line_error_rate`` / ``line_failure_rate`` hit are ``errored`` with an
  ``api_error`` (a server error: retrying may succeed).
- When it ends, a batch's results are written once, in request order (Anthropic promises no
  order): the first ``done`` requests as answered (``succeeded`` with the ``message``, whose
  ``usage.service_tier`` is ``batch``, or ``errored``), the others ``canceled`` (cancel) or
  ``expired`` (expiry). ``GET …/results`` before then is 400 ``invalid_request_error``.
- Cancelling an ended batch is 400; cancelling a cancelling one answers it unchanged.
  ``DELETE`` removes an ended batch (400 while it is still processing); afterwards it is 404.
- ``GET /v1/messages/batches`` lists newest first, ``limit`` 1 to 1000 (default 20), with
  ``after_id`` (older than that batch) or ``before_id`` (newer), answering ``data``,
  ``has_more``, ``first_id`` and ``last_id``.

Times are RFC 3339 (``created_at``, ``expires_at`` = creation + ``expire_after``,
``cancel_initiated_at``, ``ended_at``; ``archived_at`` is always null); ``results_url`` is the
absolute URL of the results route, on the host the request was sent to.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson

from llmspool.sim.anthropic import MESSAGES_PATH, MessagesApi, rfc3339
from llmspool.sim.anthropic_batch_request import message_batch_requests
from llmspool.sim.anthropic_errors import AnthropicError, error_type_of, invalid
from llmspool.sim.batch_config import turnaround_draw
from llmspool.sim.batch_lines import plan_lines
from llmspool.sim.batch_state import ENDED, SimBatch, Status
from llmspool.sim.batches import BatchRegistry

DEFAULT_LIST_LIMIT = 20
MAX_LIST_LIMIT = 1000
BATCHES_PREFIX = MESSAGES_PATH + "/batches/"
_SERVER_ERROR = {"type": "api_error", "message": "Internal server error"}


@dataclass(slots=True)
class MessageBatch(SimBatch):
    """A Message Batch: a ``SimBatch`` whose requests came inline, and its results."""

    requests: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    """``(custom_id, params)`` of each request, until the batch ends."""
    size: int = 0
    results: bytes | None = None
    """The results JSONL, once the batch has ended."""
    outcomes: Counter[str] = field(default_factory=Counter)
    """Results by type (``succeeded``, ``errored``, ``canceled``, ``expired``), once ended."""
    ended_at: float | None = None

    @property
    def processing_status(self) -> str:
        if self.status in ENDED:
            return "ended"
        return "canceling" if self.status is Status.CANCELLING else "in_progress"

    def to_message_batch(self, base_url: str) -> dict[str, Any]:
        """The ``message_batch`` object."""
        ended = self.ended_at is not None
        outcomes = self.outcomes
        return {
            "id": self.id,
            "type": "message_batch",
            "processing_status": self.processing_status,
            "request_counts": {
                "processing": 0 if ended else self.size,
                "succeeded": outcomes["succeeded"],
                "errored": outcomes["errored"],
                "canceled": outcomes["canceled"],
                "expired": outcomes["expired"],
            },
            "ended_at": _time(self.ended_at),
            "created_at": rfc3339(self.created),
            "expires_at": rfc3339(self.expires_at),
            "archived_at": None,
            "cancel_initiated_at": _time(self.cancelling_at),
            "results_url": f"{base_url}{BATCHES_PREFIX}{self.id}/results" if ended else None,
        }


def _time(moment: float | None) -> str | None:
    return None if moment is None else rfc3339(moment)


class MessageBatchRegistry(BatchRegistry):
    """Every Message Batch of the simulator, on ``BatchRegistry``'s clock and settings."""

    def __init__(self, *, messages: MessagesApi, **options: Any) -> None:
        """``messages`` answers the lines (sharing the prompt cache with direct calls);
        ``options`` are ``BatchRegistry``'s."""
        super().__init__(**options)
        self._messages = messages

    # -- the API -----------------------------------------------------------------------------

    def create_message_batch(self, payload: dict[str, Any], base_url: str) -> dict[str, Any]:
        """``POST /v1/messages/batches``: a new batch, or a 400 for a bad request."""
        now = self.advance()
        requests = message_batch_requests(payload)
        code = self.settings.fail_validation
        if code:
            raise AnthropicError(
                f"The Message Batch failed validation with {code!r} (the simulator's "
                "fail_validation).",
                status=400,
            )
        settings = self.settings.scaled(self._speed)
        order = len(self._batches)
        batch = MessageBatch(
            id=self._makers.ids.make("msgbatch_"),
            endpoint=MESSAGES_PATH,
            input_file_id="",
            metadata=None,
            created=now,
            settings=settings,
            turnaround=turnaround_draw(
                self._seed, order, settings.turnaround, settings.turnaround_p99
            ),
            content=None,
            requests=requests,
            size=len(requests),
        )
        self._batches[batch.id] = batch
        self._live[batch.id] = batch
        counters = self._stats.batches
        counters.created += 1
        prefixes = {cid.rpartition("_")[0] for cid, _ in requests if "_" in cid}
        counters.intents.update(prefixes)
        return batch.to_message_batch(base_url)

    def retrieve_message_batch(self, batch_id: str, base_url: str) -> dict[str, Any]:
        self.advance()
        return self._message_batch(batch_id).to_message_batch(base_url)

    def cancel_message_batch(self, batch_id: str, base_url: str) -> dict[str, Any]:
        """``POST …/cancel``: start cancelling; repeating it changes nothing."""
        now = self.advance()
        batch = self._message_batch(batch_id)
        self._stats.batches.cancel_requests += 1
        if batch.status in ENDED:
            raise AnthropicError(
                f"Message Batch {batch_id} has already ended and cannot be canceled.",
                status=400,
            )
        if batch.status is not Status.CANCELLING:
            # Lines already finished stay finished; the others will never run.
            batch.done_at_cancel = batch.lines_done(now)
            batch.status = Status.CANCELLING
            batch.cancelling_at = now
        return batch.to_message_batch(base_url)

    def list_message_batches(
        self,
        *,
        limit: int,
        after_id: str | None,
        before_id: str | None,
        base_url: str,
    ) -> dict[str, Any]:
        """``GET /v1/messages/batches``: a page, newest first."""
        self.advance()
        newest_first = [b for b in reversed(self._batches.values()) if isinstance(b, MessageBatch)]
        ids = [batch.id for batch in newest_first]
        if after_id is not None:
            start = _position(ids, after_id, "after_id") + 1
            chosen = newest_first[start : start + limit]
            has_more = start + limit < len(ids)
        elif before_id is not None:
            end = _position(ids, before_id, "before_id")
            chosen = newest_first[max(0, end - limit) : end]
            has_more = end - limit > 0
        else:
            chosen = newest_first[:limit]
            has_more = limit < len(ids)
        return {
            "data": [batch.to_message_batch(base_url) for batch in chosen],
            "has_more": has_more,
            "first_id": chosen[0].id if chosen else None,
            "last_id": chosen[-1].id if chosen else None,
        }

    def results(self, batch_id: str) -> bytes:
        """``GET …/results``: the results JSONL of an ended batch."""
        self.advance()
        batch = self._message_batch(batch_id)
        if batch.results is None:
            raise AnthropicError(
                f"Message Batch {batch_id} has not yet ended (processing_status: "
                f"{batch.processing_status}); its results are available once it has.",
                status=400,
            )
        return batch.results

    def delete(self, batch_id: str) -> dict[str, Any]:
        """``DELETE /v1/messages/batches/{id}``: forget an ended batch."""
        self.advance()
        batch = self._message_batch(batch_id)
        if batch.status not in ENDED:
            raise AnthropicError(
                f"Message Batch {batch_id} cannot be deleted while it is processing "
                f"(processing_status: {batch.processing_status}); cancel it first.",
                status=400,
            )
        del self._batches[batch_id]
        return {"id": batch_id, "type": "message_batch_deleted"}

    # -- the lifecycle's steps ---------------------------------------------------------------

    def _validate(self, batch: SimBatch, moment: float) -> None:
        """Leaving ``validating``: every request answered (bad ones as errors), in progress."""
        assert isinstance(batch, MessageBatch)
        ids = frozenset(batch.settings.error_custom_ids)

        def is_error_id(custom_id: str) -> bool:
            return custom_id in ids or custom_id.rpartition("_")[2] in ids

        plan = plan_lines(
            batch.requests,
            MESSAGES_PATH,
            self._makers,
            batch.settings,
            self._seed,
            parse=self._messages.parse_batch_line,
            is_error_id=is_error_id,
        )
        batch.plan = plan
        batch.total = len(plan.lines)
        batch.status = Status.IN_PROGRESS
        batch.in_progress_at = moment

    def _end(
        self,
        batch: SimBatch,
        moment: float,
        status: Status,
        done: int,
        unfinished: tuple[str, str],
    ) -> None:
        """End ``batch``: write its results (the first ``done`` requests as answered, the
        others expired or canceled) and log its answered lines."""
        assert isinstance(batch, MessageBatch)
        batch.status = status
        batch.ended_at = moment
        del self._live[batch.id]
        fate = b'{"type":"expired"}' if status is Status.EXPIRED else b'{"type":"canceled"}'
        fate_name = "expired" if status is Status.EXPIRED else "canceled"
        lines: list[bytes] = []
        outcomes = batch.outcomes
        plan = batch.plan
        batch.plan = None
        if plan is None:  # cancelled before it started: nothing ran
            for custom_id, _ in batch.requests:
                lines.append(_result(custom_id, fate))
            outcomes[fate_name] += len(batch.requests)
        else:
            input_tokens = output_tokens = 0
            for line in plan.lines[:done]:
                answer = line.answer
                if answer is None:
                    error = _line_error(line.status, line.error_body)
                    lines.append(
                        _result(line.custom_id, b'{"type":"errored","error":' + error + b"}")
                    )
                    outcomes["errored"] += 1
                    continue
                outcomes["succeeded"] += 1
                input_tokens += answer.input_tokens
                output_tokens += answer.billed_output_tokens
                message = b'{"type":"succeeded","message":' + answer.body() + b"}"
                lines.append(_result(line.custom_id, message))
                self.log.add(
                    request_id=line.custom_id,
                    endpoint=MESSAGES_PATH,
                    model=answer.model,
                    tier="batch",
                    stream=False,
                    input_tokens=answer.input_tokens,
                    output_tokens=answer.billed_output_tokens,
                    complete=True,
                    batch_id=batch.id,
                    at=moment,
                )
            lines.extend(_result(line.custom_id, fate) for line in plan.lines[done:])
            outcomes[fate_name] += len(plan.lines) - done
            batch.input_tokens = input_tokens
            batch.output_tokens = output_tokens
            counters = self._stats.batches
            counters.lines_processed += done
            counters.input_tokens += input_tokens
            counters.output_tokens += output_tokens
        batch.completed = outcomes["succeeded"]
        batch.failed = outcomes["errored"]
        batch.requests = []
        batch.results = b"".join(lines)

    def _message_batch(self, batch_id: str) -> MessageBatch:
        batch = self._batches.get(batch_id)
        if not isinstance(batch, MessageBatch):
            raise AnthropicError(f"Message Batch {batch_id} not found.", status=404)
        return batch


def _position(ids: list[str], cursor: str, name: str) -> int:
    try:
        return ids.index(cursor)
    except ValueError:
        raise invalid(name, f"No Message Batch with id {cursor!r} to page from.") from None


def _result(custom_id: str, result: bytes) -> bytes:
    return b'{"custom_id":' + orjson.dumps(custom_id) + b',"result":' + result + b"}\n"


def _line_error(status: int, body: bytes | None) -> bytes:
    """The ``error`` of an errored result: Anthropic's error response for the line's HTTP
    error (the parser's own, or a simulated server error)."""
    error: dict[str, Any] = _SERVER_ERROR
    if status and status != 500 and body is not None:
        parsed = orjson.loads(body)
        inner = parsed.get("error") if isinstance(parsed, dict) else None
        if isinstance(inner, dict):
            message = str(inner.get("message") or "")
            kind = inner.get("type") if parsed.get("type") == "error" else None
            error = {"type": kind or error_type_of(status), "message": message}
    return orjson.dumps({"type": "error", "error": error})
