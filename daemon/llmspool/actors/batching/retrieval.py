"""Collecting a finished batch's results.

For ``completed``, ``expired`` and ``cancelled``, the provider writes the results as the
daemon's result lines (``llmspool.core.batch_lines``; each file whole or not at all), and every
line is mapped back by ``custom_id``: answers are stored and billed at batch prices (by the
ledger, a chunk at a time, each with its entries in one transaction), retryable line errors go
back to the job keeper (bounded attempts), expired or cancelled lines go back to be sent
otherwise. For ``failed``: ``token_limit_exceeded`` gives the lines back to be batched again
once the model's enqueued tokens have room (the submitter hears how many fit); validation
errors naming a line fail that line, and the other lines are sent again.
"""

from __future__ import annotations

import logging
from pathlib import Path

import anyio

from llmspool.batches.context import BatchContext
from llmspool.core.errors import ApiError
from llmspool.core.remote_batch import TOKEN_LIMIT_EXCEEDED, RemoteBatch
from llmspool.core.states import BatchStatus
from llmspool.core.streams import MemorySendStream, create_memory_stream
from llmspool.core.tracing import links_from
from llmspool.messages import BatchClosed, ReleaseLines, StoreBatchChunk
from llmspool.policy.billing import PriceBook
from llmspool.store import batches as batch_sql
from llmspool.store.batch_files import batch_files, input_line_ids, remove_files
from llmspool.store.batch_results import MapReport, ResultMapper
from llmspool.store.records import BatchChunk, BatchChunkStored

log = logging.getLogger(__name__)


class Retrieval:
    """Downloads and maps a finished batch's results; ``prices`` are those it bills at."""

    def __init__(
        self,
        store: batch_sql.ThreadedConnection,
        context: BatchContext,
        prices: PriceBook,
        submitter: MemorySendStream[BatchClosed],
        ledger: MemorySendStream[StoreBatchChunk | ReleaseLines],
    ) -> None:
        self._store = store
        self.prices = prices
        self._submitter = submitter
        self._ledger = ledger
        self._providers = context.providers
        self._state_dir = context.state_dir
        self._clock = context.planner.clock
        self._config = context.config
        self._tracer = context.tracer
        self._crash = context.crash

    async def collect(self, batch: batch_sql.BatchRow, remote: RemoteBatch
                      ) -> tuple[MapReport, str]:
        """Store what the batch answered; returns what became of its lines and a note for
        the log (its status, or why it failed). An ``ApiError`` means: try again later."""
        provider = self._providers[batch.provider]
        files = batch_files(self._state_dir, batch.intent)
        with self._tracer.start_as_current_span(
            "batch retrieve", links=links_from(batch.traceparents),
            attributes={"llmspool.batch.id": remote.id,
                        "llmspool.batch.status": remote.status,
                        "llmspool.batch.lines": batch.lines},
        ) as span:
            if remote.status == BatchStatus.FAILED:
                report, note = await self._failed(batch, remote, files.input)
            else:
                if await provider.download_results(remote, files):
                    self._crash.reach("batch.after_download")
                report = await anyio.to_thread.run_sync(
                    self._map_files, batch, files.output, files.errors)
                note = remote.status
            span.set_attributes({"llmspool.batch.succeeded": report.succeeded,
                                 "llmspool.batch.failed": report.failed,
                                 "llmspool.batch.requeued": len(report.requeued)})
        return report, note

    async def _store_chunk(self, chunk: BatchChunk) -> BatchChunkStored:
        """The ledger stores a chunk of results with their entries, in one transaction."""
        reply_in, reply_out = create_memory_stream[
            BatchChunkStored | BaseException](1)
        with reply_in, reply_out:
            await self._ledger.send(StoreBatchChunk(chunk, reply_in))
            answer = await reply_out.receive()
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def _commit_from_thread(self, chunk: BatchChunk) -> BatchChunkStored:
        return anyio.from_thread.run(self._store_chunk, chunk)

    def _map_files(self, batch: batch_sql.BatchRow, *paths: Path) -> MapReport:
        mapper = ResultMapper(self._store.connection, batch, self.prices, self._clock.now(),
                              after_first_chunk=lambda: self._crash.reach(
                                  "batch.mid_mapping"),
                              commit=self._commit_from_thread)
        for path in paths:
            if path.exists():
                mapper.feed(path)
        return mapper.finish(batch.remote_status or "")

    async def _failed(self, batch: batch_sql.BatchRow, remote: RemoteBatch,
                      input_path: Path) -> tuple[MapReport, str]:
        codes = {error.code for error in remote.errors}
        summary = "; ".join(f"{e.code}: {e.message}" for e in remote.errors[:3]) or "no reason"
        log.warning("batch %s failed: %s", remote.id, summary)
        if TOKEN_LIMIT_EXCEEDED in codes:
            enqueued = await self._store.run(batch_sql.enqueued_tokens, batch.provider, batch.model)
            # The failed batch no longer counts as enqueued: what the others hold is what fits.
            # Alone over the cap, it was too big: half of it is the new guess. Each failure
            # costs the lines an attempt, so this ends even if the guesses stay too high.
            fits = enqueued if enqueued else batch.tokens // 2
            await self._submitter.send(BatchClosed(batch.provider, batch.model, True, fits))
            report = MapReport()
            report.requeued = await self._store.run(batch_sql.release_lines, batch, None,
                                                    self._clock.now(), charge_attempt=True)
            await self._store.run(batch_sql.finish_batch, batch, {},
                                  "failed: token_limit_exceeded", self._clock.now())
            return report, TOKEN_LIMIT_EXCEEDED
        numbered = {e.line: e for e in remote.errors if e.line is not None}

        def fail_and_finish() -> MapReport:
            ids = input_line_ids(input_path, set(numbered))
            mapper = ResultMapper(self._store.connection, batch, self.prices, self._clock.now(),
                                  commit=self._commit_from_thread)
            mapper.fail_lines({ids[n]: (e.code, e.message) for n, e in numbered.items()
                               if n in ids})
            if not numbered:  # the whole batch was refused: each line loses an attempt
                mapper.requeue.update(dict.fromkeys(mapper.line_ids(), True))
            return mapper.finish(f"failed: {summary}")

        return await anyio.to_thread.run_sync(fail_and_finish), BatchStatus.FAILED

    async def clean_up(self, batch: batch_sql.BatchRow, remote: RemoteBatch) -> None:
        """Remove the batch's files here, and upstream when ``[batch] delete_files``."""
        await anyio.to_thread.run_sync(remove_files, batch_files(self._state_dir, batch.intent))
        if not self._config.delete_files:
            return
        try:
            await self._providers[batch.provider].delete_batch_files(remote)
        except ApiError as error:  # housekeeping: the results are already stored
            log.info("batch %s: could not delete its files upstream: %s", remote.id,
                     error.message)
