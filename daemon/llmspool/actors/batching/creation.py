"""Making a batch upstream, in recorded steps, so that a crash between any two of them never
creates a second batch upstream:

0. the lines are reserved against the caps with the ledger (at batch prices, each line's worst
   case); the lines a cap refuses are stored as failed results (``budget_*``) and never
   uploaded. A batch's answers settle the reservations when mapped;
1. *intent*: a batch row is written and the lines are assigned to it, in one transaction;
   the JSONL input file is written to the state directory (whole or absent);
2. for a provider that takes its input as a file (``uploads_input``): the file is uploaded as
   ``llmspool-<intent>.jsonl``; its id recorded: *uploaded* (a provider that takes the
   requests with the create call goes to *uploaded* with no file id);
3. the batch is created carrying the intent (how is the plugin's business: OpenAI's metadata,
   Anthropic's ``custom_id``); its id recorded: *submitted*, and the batch poller takes it over.

After a restart, a batch found in *intent* is first looked for upstream by file name, and one
found in *uploaded* with the provider's ``find_batch``; only what is not found is done again.
A batch that cannot be made in time gives its lines back to the job keeper, to be sent directly.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import secrets
from collections.abc import Iterable

import anyio
import orjson

from llmspool.batches.context import BatchContext
from llmspool.core.calls import Tier
from llmspool.core.errors import ApiError, UpstreamError, UpstreamUnreachable
from llmspool.core.provider import BatchProvider, BatchSubmission
from llmspool.core.states import BatchState, RequestState
from llmspool.core.streams import MemorySendStream, create_memory_stream
from llmspool.core.tracing import links_from
from llmspool.messages import (
    BatchLinesDone,
    BatchOpened,
    LineReservation,
    ReleaseLines,
    ReserveLines,
)
from llmspool.policy.reservations import Reserver
from llmspool.store import batches as batch_sql
from llmspool.store.batch_files import batch_files, upload_name, write_input_file
from llmspool.store.records import BatchCandidate, JobResult, LineOutcome, RequeuedLine

log = logging.getLogger(__name__)

RETRY_MIN, RETRY_MAX = 2.0, 120.0  # backoff of a failed upload or create


class BatchMaker:
    """Takes batches through their recorded steps; counts those ``submitted`` and the lines
    ``given_back``."""

    def __init__(
        self,
        store: batch_sql.ThreadedConnection,
        context: BatchContext,
        reserver: Reserver,
        poller: MemorySendStream[BatchOpened],
        keeper: MemorySendStream[BatchLinesDone],
        ledger: MemorySendStream[ReserveLines | ReleaseLines],
    ) -> None:
        self._store = store
        self._reserver = reserver  # the submitter's: it changes its prices
        self._poller = poller
        self._keeper = keeper
        self._ledger = ledger
        self._providers = context.providers
        self._state_dir = context.state_dir
        self._planner = context.planner
        self._clock = context.planner.clock
        self._tracer = context.tracer
        self._crash = context.crash
        self._daemon = context.daemon
        self.submitted = 0
        self.given_back = 0

    async def make(self, chunk: list[BatchCandidate], traceparents: Iterable[str],
                   now: float) -> None:
        """Reserve ``chunk``, record the intent of a batch of what the caps admit, and make
        it upstream."""
        admitted = await self._reserve(chunk)
        if not admitted:
            return
        intent = f"{int(now)}-{secrets.token_hex(6)}"
        batch = await self._store.run(batch_sql.open_batch, intent, admitted,
                                      sorted(traceparents), now, self._daemon)
        if batch is None:  # their jobs were cancelled meanwhile
            await self._ledger.send(ReleaseLines([c.request_id for c in admitted]))
        self._crash.reach("batch.after_intent")
        if batch is not None:
            await self.advance(batch, resumed=False)

    async def _reserve(self, chunk: list[BatchCandidate]) -> list[BatchCandidate]:
        """Reserve the lines' worst-case cost with the ledger (durably, before the batch
        exists); the lines a cap refuses are stored as failed results by the ledger, told to
        the job keeper, and left out of the batch. Returns the lines admitted."""
        rows = await self._store.run(batch_sql.lines_to_reserve, [c.request_id for c in chunk])
        first = chunk[0]
        lines = []
        for line_id, job_id, custom_id, body, operation, uid in rows:
            cost = self._reserver.for_body(first.endpoint, first.provider, first.model, body,
                                           operation, [Tier.BATCH]).picodollars
            lines.append(LineReservation(line_id, job_id, custom_id, first.provider,
                                         first.model, first.endpoint, operation, uid, cost))
        reply_in, reply_out = create_memory_stream[list[JobResult]](1)
        with reply_in, reply_out:
            await self._ledger.send(ReserveLines(lines, reply_in))
            refused = await reply_out.receive()
        if refused:
            log.warning("batch: %d %s requests refused by a budget cap (%s); they are not "
                        "sent", len(refused), first.model,
                        orjson.loads(refused[0].result)["error"]["message"])
            await self._keeper.send(BatchLinesDone(outcomes=[
                LineOutcome(r.request_id, r.job_id, RequestState.FAILED, None, None, True)
                for r in refused]))
        admitted = {line.line_id for line in lines} - {r.request_id for r in refused}
        return [c for c in chunk if c.request_id in admitted]

    async def advance(self, batch: batch_sql.BatchRow, *, resumed: bool) -> None:
        """Take ``batch`` from where it stands to created upstream, retrying failed calls
        until its deadline leaves no time; then its lines go back to the job keeper."""
        provider = self._providers[batch.provider]
        delay = RETRY_MIN
        while True:
            try:
                with self._tracer.start_as_current_span(
                    "batch submit", links=links_from(batch.traceparents),
                    attributes={"llmspool.batch.intent": batch.intent,
                                "llmspool.batch.lines": batch.lines,
                                "llmspool.provider": batch.provider,
                                "gen_ai.request.model": batch.model},
                ) as span:
                    await self._steps(provider, batch, resumed=resumed)
                    span.set_attribute("llmspool.batch.id", batch.remote_id or "")
                break
            except (UpstreamError, UpstreamUnreachable) as error:
                retryable = not isinstance(error, UpstreamError) or error.status >= 500 \
                    or error.status == 429
                late = self._clock.now() + delay > self._planner.latest_batch_submit(
                    batch.provider, batch.model, batch.deadline_at)
                if not retryable or late:
                    await self._abandon(batch, f"{error.message} ({error.status})")
                    return
                log.warning("batch %s: %s; trying again in %.0f s", batch.intent,
                            error.message, delay)
                await anyio.sleep(delay)
                delay = min(RETRY_MAX, delay * 2)
                resumed = True  # the failed call may have happened upstream: look first
            except ApiError as error:  # an answer we cannot read
                await self._abandon(batch, error.message)
                return
        self.submitted += 1
        # A copy: from here on the poller owns its row.
        await self._poller.send(BatchOpened(copy.copy(batch)))

    async def _steps(self, provider: BatchProvider, batch: batch_sql.BatchRow, *,
                     resumed: bool) -> None:
        input_path = batch_files(self._state_dir, batch.intent).input
        name = upload_name(batch.intent)
        if batch.state == BatchState.INTENT:
            if not await anyio.Path(input_path).exists():
                lines = await self._store.run(write_input_file, batch, input_path)
                if lines == 0:
                    await self._store.run(batch_sql.drop_empty_batch, batch,
                                   "nothing left to send", self._clock.now())
                    return
            file_id: str | None = None
            if provider.batch_capabilities.uploads_input:
                file_id = await provider.find_batch_file(name) if resumed else None
                if file_id is None:
                    file_id = await provider.upload_batch_file(input_path, name)
                    log.info("batch %s: uploaded %d requests (%d bytes) as %s", batch.intent,
                             batch.lines, batch.bytes, file_id)
                self._crash.reach("batch.after_upload")
            await self._store.run(batch_sql.mark_uploaded, batch, file_id)
        if batch.state == BatchState.UPLOADED:
            # An hour's leeway for the provider's clock against ours.
            since = batch.created_at - 3600
            submission = BatchSubmission(
                batch.intent, batch.endpoint, batch.model, batch.lines, input_path,
                batch.input_file_id, submitted_after=since)
            remote = None
            if resumed:
                known = await self._store.run(batch_sql.remote_ids_since, batch.provider, since)
                remote = await provider.find_batch(dataclasses.replace(submission, known=known))
            if remote is None:
                remote = await provider.create_batch(submission)
                log.info("batch %s: created %s with %d requests for %s", batch.intent,
                         remote.id, batch.lines, batch.model)
            else:
                log.info("batch %s: found %s upstream after a restart", batch.intent, remote.id)
            self._crash.reach("batch.after_create")
            await self._store.run(batch_sql.mark_submitted, batch, remote.id, remote.status,
                           self._clock.now())

    async def _abandon(self, batch: batch_sql.BatchRow, why: str) -> None:
        log.error("batch %s: giving its %d requests back to be sent directly: %s",
                  batch.intent, batch.lines, why)
        requeued = await self._store.run(batch_sql.finish_batch, batch, {}, f"not submitted: {why}",
                                  self._clock.now())
        await self._ledger.send(ReleaseLines([line.request_id for line in requeued]))
        self.given_back += len(requeued)
        await self._keeper.send(BatchLinesDone(requeued=requeued, batch_again=False))

    async def give_back(self, candidates: list[BatchCandidate], why: str) -> None:
        """Requests that could not be batched in time go back to the job keeper."""
        log.warning("batch: %d requests go back to be sent directly: %s", len(candidates), why)
        self.given_back += len(candidates)
        await self._keeper.send(BatchLinesDone(
            requeued=[RequeuedLine(c.deadline_at, c.request_id, c.job_id) for c in candidates],
            batch_again=False,
        ))
