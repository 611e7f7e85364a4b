"""The batch submitter actor: groups batch-tier requests into batches and creates them upstream.

Requests arrive from the job keeper (``ToBatch``) and wait in a group per (provider, endpoint,
model). A group is sent when it reaches ``[batch] max_lines`` or ``max_bytes`` (or the provider's
own limits, its ``BatchCapabilities``: lines, bytes, embeddings inputs), when its oldest request
has waited ``max_age``, or when a request's deadline allows no more waiting (the planner's latest
batch submit); a large group is split.

Each batch goes through recorded steps, so that a crash between any two of them never creates
a second batch upstream:

1. *intent*: a batch row is written and the lines are assigned to it, in one transaction;
   the JSONL input file is written to the state directory (whole or absent);
2. for a provider that takes its input as a file (``uploads_input``): the file is uploaded as
   ``llmspool-<intent>.jsonl``; its id recorded: *uploaded* (a provider that takes the
   requests with the create call goes to *uploaded* with no file id);
3. the batch is created carrying the intent (how is the plugin's business: OpenAI's metadata,
   Anthropic's ``custom_id``); its id recorded: *submitted*, and the batch poller takes it over.

After a restart, a batch found in *intent* is first looked for upstream by file name, and one
found in *uploaded* with the provider's ``find_batch``; only what is not found is done again.

Budgets: before a batch is made, its lines are reserved against the caps with the ledger (at
batch prices, each line's worst case); the lines a cap refuses are stored as failed results
(``budget_*``) and never uploaded. A batch's answers settle the reservations when mapped.

The enqueued-token cap: the provider limits the prompt tokens waiting in unfinished batches per
model. The submitter keeps a batch back while it would exceed the limit (configured, or learned
from a ``token_limit_exceeded`` failure), and hands its requests back to the job keeper when
their deadline no longer allows waiting.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field

import anyio
import orjson
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from llmspool.batches.context import BatchContext
from llmspool.core.calls import Endpoint, Tier
from llmspool.core.errors import ApiError, UpstreamError, UpstreamUnreachable
from llmspool.core.provider import BatchCapabilities, BatchProvider, BatchSubmission
from llmspool.core.states import BatchState, RequestState
from llmspool.core.tracing import active, links_from
from llmspool.messages import (
    BatchClosed,
    BatchLinesDone,
    BatchOpened,
    LineReservation,
    NewPrices,
    ReleaseLines,
    ReserveLines,
    StatusQuery,
    SubmitterStatus,
    ToBatch,
)
from llmspool.policy.reservations import Reserver
from llmspool.store import batches as batch_sql
from llmspool.store.batch_files import batch_files, upload_name, write_input_file
from llmspool.store.records import BatchCandidate, JobResult, LineOutcome, RequeuedLine

log = logging.getLogger(__name__)

LINE_OVERHEAD = 80  # bytes each input line adds around its body
RETRY_MIN, RETRY_MAX = 2.0, 120.0  # backoff of a failed upload or create
GroupKey = tuple[str, Endpoint, str]
SubmitterMessage = ToBatch | BatchClosed | NewPrices | StatusQuery[SubmitterStatus]


@dataclass
class _Group:
    """Requests waiting to be batched together."""

    candidates: list[BatchCandidate] = field(default_factory=list)
    bytes: int = 0
    inputs: int = 0
    oldest_at: float = math.inf
    latest_submit: float = math.inf
    traceparents: set[str] = field(default_factory=set)
    held: str | None = None  # why it waits beyond its flush time (the enqueued-token cap)


class BatchSubmitter:
    def __init__(
        self,
        inbox: MemoryObjectReceiveStream[SubmitterMessage],
        poller: MemoryObjectSendStream[BatchOpened],
        keeper: MemoryObjectSendStream[BatchLinesDone],
        ledger: MemoryObjectSendStream[ReserveLines | ReleaseLines],
        *,
        context: BatchContext,
        reserver: Reserver,
        meter: metrics.Meter | None = None,
    ) -> None:
        self._ledger = ledger
        self._reserver = reserver
        self._ready = context.ready
        self._inbox = inbox
        self._poller = poller
        self._keeper = keeper
        self._providers = context.providers
        self._database_path = context.database_path
        self._folder = context.state_dir / "batches"
        self._state_dir = context.state_dir
        self._planner = context.planner
        self._clock = context.planner.clock
        self._config = context.config
        self._tracer = context.tracer
        self._crash = context.crash
        self._groups: dict[GroupKey, _Group] = {}
        self._learned_limits: dict[tuple[str, str], int] = {}
        self._wake = anyio.Event()
        self._submitted = 0
        self._given_back = 0
        (meter or active().meter).create_observable_gauge(  # without one given, the daemon's
            "llmspool.batch.requests_waiting", [self._observe_waiting], "{request}",
            "job requests waiting to be put into a batch, by provider")

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        await anyio.Path(self._folder).mkdir(parents=True, exist_ok=True)
        self._store = await batch_sql.ThreadedConnection.open(self._database_path)
        try:
            unfinished = [b for b in await self._store.run(batch_sql.open_batches)
                          if b.state in (BatchState.INTENT, BatchState.UPLOADED)]
            async with self._poller, self._keeper, self._ledger, \
                    anyio.create_task_group() as group:
                group.start_soon(self._flusher, unfinished)
                task_status.started()
                async with self._inbox:
                    async for message in self._inbox:
                        self._handle(message)
                group.cancel_scope.cancel()
        finally:
            await self._store.close()

    def _handle(self, message: SubmitterMessage) -> None:
        if isinstance(message, ToBatch):
            now = self._clock.now()
            for candidate in message.candidates:
                key = (candidate.provider, candidate.endpoint, candidate.model)
                group = self._groups.setdefault(key, _Group())
                group.candidates.append(candidate)
                group.bytes += candidate.size + LINE_OVERHEAD
                group.inputs += candidate.inputs
                group.oldest_at = min(group.oldest_at, now)
                group.latest_submit = min(group.latest_submit, self._planner.latest_batch_submit(
                    candidate.provider, candidate.model, candidate.deadline_at))
            for key in {(c.provider, c.endpoint, c.model) for c in message.candidates}:
                self._groups[key].traceparents.update(message.traceparents)
            self._wake.set()
        elif isinstance(message, BatchClosed):
            if message.token_limit_hit:
                model_key = (message.provider, message.model)
                learned = max(1, message.enqueued_at_failure)
                self._learned_limits[model_key] = min(
                    self._learned_limits.get(model_key, learned), learned)
                log.warning("batch: %s %s hit the enqueued-token cap; keeping batches under "
                            "%d tokens", message.provider, message.model, learned)
            for group in self._groups.values():
                group.held = None
            self._wake.set()
        elif isinstance(message, NewPrices):
            self._reserver.set_prices(message.prices)  # lines are reserved at the new prices
        else:
            message.reply.send_nowait(self._snapshot())

    # --- flushing -------------------------------------------------------------------------

    async def _flusher(self, unfinished: list[batch_sql.BatchRow]) -> None:
        await self._ready.wait()
        for batch in unfinished:
            log.info("batch %s: resuming from %s after a restart", batch.intent, batch.state)
            await self._advance(batch, resumed=True)
        while True:
            now = self._clock.now()
            for key in list(self._groups):
                group = self._groups[key]
                if group.held is None and self._due(group, now):
                    await self._flush(key, now)
                elif group.held is not None and now >= group.latest_submit:
                    await self._give_back(self._groups.pop(key).candidates,
                                          f"could not be batched in time ({group.held})")
            wake_at = min((self._next_due(g) for g in self._groups.values()), default=math.inf)
            await self._clock.wait(self._wake, max(wake_at, self._clock.now() + 0.05))
            self._wake = anyio.Event()

    def _limits(self, provider: str) -> tuple[int, int, float]:
        """(lines, bytes, embeddings inputs) one batch of ``provider`` may hold: its own
        limits, within ``[batch] max_lines`` and ``max_bytes``."""
        capabilities: BatchCapabilities = self._providers[provider].batch_capabilities
        inputs = capabilities.max_embedding_inputs
        return (min(self._config.max_lines, capabilities.max_lines),
                min(self._config.max_bytes, capabilities.max_bytes),
                math.inf if inputs is None else inputs)

    def _due(self, group: _Group, now: float) -> bool:
        max_lines, max_bytes, max_inputs = self._limits(group.candidates[0].provider)
        return (len(group.candidates) >= max_lines
                or group.bytes >= max_bytes
                or group.inputs >= max_inputs
                or now >= self._next_due(group))

    def _next_due(self, group: _Group) -> float:
        if group.held is not None:
            return group.latest_submit
        return min(group.oldest_at + self._config.max_age, group.latest_submit)

    async def _flush(self, key: GroupKey, now: float) -> None:
        group = self._groups.pop(key)
        provider_name, _endpoint, model = key
        limit = self._token_limit(provider_name, model)
        chunks = self._split(group.candidates, limit)
        for index, chunk in enumerate(chunks):
            tokens = sum(c.size for c in chunk) // 4
            if limit:
                enqueued = await self._store.run(batch_sql.enqueued_tokens, provider_name, model)
                if enqueued and enqueued + tokens > limit:
                    # Keep the rest back until a batch of this model finishes (BatchClosed).
                    rest = [c for later in chunks[index:] for c in later]
                    held = _Group(held=f"enqueued-token cap: {enqueued} of {limit} in use",
                                  traceparents=group.traceparents)
                    for candidate in rest:
                        held.candidates.append(candidate)
                        held.bytes += candidate.size + LINE_OVERHEAD
                        held.inputs += candidate.inputs
                    held.oldest_at = group.oldest_at
                    held.latest_submit = group.latest_submit
                    self._groups[key] = held
                    log.info("batch: holding %d %s requests: %s", len(rest), model, held.held)
                    return
            admitted = await self._reserve(chunk)
            if not admitted:
                continue
            intent = f"{int(now)}-{secrets.token_hex(6)}"
            batch = await self._store.run(batch_sql.open_batch, intent, admitted,
                                   sorted(group.traceparents), now)
            if batch is None:  # their jobs were cancelled meanwhile
                await self._ledger.send(ReleaseLines([c.request_id for c in admitted]))
            self._crash.reach("batch.after_intent")
            if batch is not None:
                await self._advance(batch, resumed=False)

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
        reply_in, reply_out = anyio.create_memory_object_stream[list[JobResult]](1)
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

    def _split(self, candidates: list[BatchCandidate], token_limit: int
               ) -> list[list[BatchCandidate]]:
        """Cut into batches within the line, byte and embeddings-input limits, and within
        the enqueued-token limit when one is known."""
        max_lines, max_bytes, max_inputs = self._limits(candidates[0].provider)
        if token_limit:
            max_bytes = min(max_bytes, token_limit * 4)
        chunks: list[list[BatchCandidate]] = [[]]
        size = inputs = 0
        for candidate in sorted(candidates, key=lambda c: c.request_id):
            line_bytes = candidate.size + LINE_OVERHEAD
            current = chunks[-1]
            if current and (len(current) >= max_lines or size + line_bytes > max_bytes
                            or inputs + candidate.inputs > max_inputs):
                chunks.append([])
                size = inputs = 0
            chunks[-1].append(candidate)
            size += line_bytes
            inputs += candidate.inputs
        return [chunk for chunk in chunks if chunk]

    def _token_limit(self, provider: str, model: str) -> int:
        configured = self._config.max_enqueued_tokens
        learned = self._learned_limits.get((provider, model), 0)
        return min(x for x in (configured, learned) if x) if configured or learned else 0

    # --- the recorded steps ---------------------------------------------------------------

    async def _advance(self, batch: batch_sql.BatchRow, *, resumed: bool) -> None:
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
        self._submitted += 1
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
        self._given_back += len(requeued)
        await self._keeper.send(BatchLinesDone(requeued=requeued, batch_again=False))

    async def _give_back(self, candidates: list[BatchCandidate], why: str) -> None:
        log.warning("batch: %d requests go back to be sent directly: %s", len(candidates), why)
        self._given_back += len(candidates)
        await self._keeper.send(BatchLinesDone(
            requeued=[RequeuedLine(c.deadline_at, c.request_id, c.job_id) for c in candidates],
            batch_again=False,
        ))

    def _observe_waiting(self, _options: CallbackOptions) -> Iterable[Observation]:
        """Read by the metric reader's thread (the list copies the groups at once)."""
        by_provider: dict[str, int] = {}
        for (provider, _endpoint, _model), group in list(self._groups.items()):
            by_provider[provider] = by_provider.get(provider, 0) + len(group.candidates)
        return [Observation(count, {"llmspool.provider": provider})
                for provider, count in by_provider.items()] or [Observation(0)]

    def _snapshot(self) -> SubmitterStatus:
        now = self._clock.now()
        return {
            "waiting": [
                {"provider": p, "endpoint": e.value, "model": m, "requests": len(g.candidates),
                 "oldest_s": round(now - g.oldest_at, 1), "held": g.held}
                for (p, e, m), g in self._groups.items()
            ],
            "submitted": self._submitted,
            "given_back": self._given_back,
        }
