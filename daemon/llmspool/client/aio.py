"""The async client: ``Spool``, its ``JobHandle``s and their ``AsyncResults`` streams.

Only the I/O is here, over httpx2's async client: requests come from ``protocol``, multi-step
operations (waiting, ``result()``) are ``plans`` carried out by ``Spool._run``.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from types import TracebackType
from typing import Any, TypeVar

import anyio
import httpx2

from llmspool.client import plans, protocol, transport
from llmspool.client.errors import Json
from llmspool.client.protocol import Deadline, OnError, StatusCallback

T = TypeVar("T")


class AsyncResults(transport.ResultsStream):
    """An open results stream: the job's status when the daemon answered, then the lines."""

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        """The JSONL body as it arrives, for copying to a file without parsing."""
        async for chunk in self._response.aiter_bytes():
            yield chunk

    async def aiter_lines(self) -> AsyncIterator[Json]:
        """The Batch output lines, parsed, one at a time."""
        async for text in self._response.aiter_lines():
            line = protocol.parse_result_line(text)
            if line is not None:
                yield line


class Spool(transport.Endpoint):
    """The async client: one pooled HTTP connection pool on the daemon's Unix socket.

    ``socket`` defaults to what the CLI uses: ``LLMSPOOL_SOCKET``, else the config's (``config``
    or ``LLMSPOOL_CONFIG``) ``[daemon] socket``. ``timeout`` bounds each ordinary request;
    waiting for a job is bounded by ``wait(timeout=...)`` instead.
    """

    def __init__(
        self, socket: str | None = None, *, timeout: float = 60, config: str | None = None
    ) -> None:
        super().__init__(socket, timeout, config)
        self._http = httpx2.AsyncClient(
            transport=httpx2.AsyncHTTPTransport(uds=self.socket),
            base_url=transport.BASE_URL,
            timeout=transport.client_timeout(self.timeout),
        )

    async def __aenter__(self) -> Spool:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def submit(
        self,
        request_or_requests: Mapping[str, Any] | Iterable[Mapping[str, Any]],
        *,
        deadline: Deadline | None = None,
        operation: str | None = None,
        tags: Mapping[str, str] | None = None,
        endpoint: str = protocol.DEFAULT_ENDPOINT,
        on_error: OnError = "reject",
        best_effort: bool = False,
    ) -> JobHandle:
        """Hand over one request (a body, or a Batch item) or many; the job's handle.
        ``best_effort``: run it even if its deadline is shorter than any tier can meet."""
        submission = protocol.build_requests(request_or_requests, endpoint)
        call = protocol.submit_call(submission, deadline=deadline, operation=operation, tags=tags,
                                    on_error=on_error, best_effort=best_effort)
        job = await self._call(call)
        return JobHandle(self, job, single=submission.single)

    async def submit_jsonl(
        self,
        source: bytes | os.PathLike[str] | AsyncIterable[bytes],
        *,
        deadline: Deadline | None = None,
        operation: str | None = None,
        tags: Mapping[str, str] | None = None,
        on_error: OnError = "reject",
        size: int | None = None,
        best_effort: bool = False,
    ) -> JobHandle:
        """Hand over a Batch input file as it is: its bytes, its path, or its chunks.

        A path or bytes are sent with their length; chunks of unknown ``size`` are sent chunked.
        """
        call = protocol.jsonl_call(source, size, _read_file, deadline=deadline, operation=operation,
                                   tags=tags, on_error=on_error, best_effort=best_effort)
        job = await self._call(call)
        return JobHandle(self, job, single=None)

    def job(self, job_id: str) -> JobHandle:
        """A handle on a job submitted earlier, by its id (nothing is asked of the daemon yet)."""
        return JobHandle(self, {"id": job_id}, single=None)

    async def jobs(self, limit: int = 20) -> list[Json]:
        """The most recent jobs, newest first."""
        return list((await self._call(protocol.jobs_call(limit))).get("data", []))

    async def _call(self, call: protocol.Call) -> Json:
        with transport.transport_errors(self.socket):
            response = await self._http.request(call.method, call.url, content=call.content,
                                                headers=call.headers, params=call.params)
        return transport.json_or_error(response)

    @asynccontextmanager
    async def _results(self, job_id: str, wait: float | None) -> AsyncIterator[AsyncResults]:
        url, timeout = self._results_request(job_id, wait)
        with transport.transport_errors(self.socket):
            async with self._http.stream("GET", url, timeout=timeout) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise transport.response_error(response)
                yield AsyncResults(response)

    async def _run(self, plan: plans.Plan[T]) -> T:
        """Carry out a plan's steps, one after the other; what the plan comes to."""
        step = plans.advance(plan, None)
        while not isinstance(step, plans.Done):
            step = plans.advance(plan, await self._step(step))
        return step.value

    async def _step(self, step: plans.Step) -> Any:
        if isinstance(step, plans.Sleep):
            await anyio.sleep(step.seconds)
            return None
        if isinstance(step, plans.Fetch):
            async with self._results(step.job_id, step.wait) as results:
                return [line async for line in results.aiter_lines()] if step.read else None
        return await self._call(step)


async def _read_file(path: os.PathLike[str]) -> AsyncIterator[bytes]:
    async with await anyio.Path(path).open("rb") as handle:
        while chunk := await handle.read(protocol.UPLOAD_CHUNK):
            yield chunk


class JobHandle(protocol.SubmittedJob):
    """A submitted job. ``submitted`` is the job object the daemon answered at submission
    (``rejected`` lists the lines ``on_error="skip"`` dropped, ``plan`` how many requests
    go to which tier and by when they are expected, ``warnings`` e.g. a best-effort deadline)."""

    def __init__(self, spool: Spool, submitted: Json, *, single: bool | None) -> None:
        super().__init__(submitted, single=single)
        self._spool = spool

    async def status(self) -> Json:
        """The job object now: status, counts by state and tier, cost and savings so far."""
        return await self._spool._call(protocol.status_call(self.id))

    # The timeout is a parameter (ASYNC109) so that the async and sync handles read alike and
    # the TimeoutError can say how far the job got; anyio.fail_after around it works as well.
    async def wait(
        self,
        timeout: float | None = None,  # noqa: ASYNC109
        *,
        on_status: StatusCallback | None = None,
        poll_every: float = protocol.MAX_LONG_POLL,
    ) -> Json:
        """Wait until the job is completed or cancelled; its final job object.

        ``on_status`` sees the job object each round, at least every ``poll_every`` seconds,
        e.g. to draw progress (below 5 s the client polls the status rather than long-polling).
        Raises ``TimeoutError`` after ``timeout`` seconds.
        """
        return await self._spool._run(plans.wait_plan(self.id, timeout, on_status, poll_every))

    def open_results(self, wait: float | None = None) -> AbstractAsyncContextManager[AsyncResults]:
        """``async with handle.open_results() as results``: an ``AsyncResults`` stream.

        With ``wait``, the daemon first waits up to that many seconds for the job to finish;
        ``results.complete`` says whether it had.
        """
        return self._spool._results(self.id, wait)

    async def iter_results(self, *, wait: float | None = None) -> AsyncIterator[Json]:
        """The Batch output lines finished so far, in input order, streamed.

        Wrap in ``contextlib.aclosing`` when stopping early, so the stream closes at once.
        """
        async with self._spool._results(self.id, wait) as results:
            async for line in results.aiter_lines():
                yield line

    async def results(self, *, wait: float | None = None) -> list[Json]:
        """All the Batch output lines finished so far, in input order."""
        return [line async for line in self.iter_results(wait=wait)]

    async def result(self, timeout: float | None = None) -> Any:  # noqa: ASYNC109
        """Wait for the job; the response body for a one-request job, else all output lines.

        A one-request job whose request failed raises ``RequestFailed``.
        """
        return await self._spool._run(plans.result_plan(self.id, self._single, timeout))

    async def cancel(self) -> Json:
        """Cancel what has not run yet; the job object (a finished job is left as it is, with a
        ``message`` saying so)."""
        return await self._spool._call(protocol.cancel_call(self.id))
