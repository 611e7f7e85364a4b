"""The sync client, for scripts without an event loop: ``SyncSpool``, ``SyncJobHandle`` and
``SyncResults``, the async client's names without ``await`` (see ``llmspool.client.aio``).

Only the I/O is here, over httpx2's sync client; what to send, what answers mean and how to wait
come from ``protocol`` and ``plans``, as for the async client. It is no wrapper of the async
client on a private event loop: that would cost a thread per client, or refuse to run where a
loop is already running.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from types import TracebackType
from typing import Any, TypeVar

import httpx2

from llmspool.client import plans, protocol, transport
from llmspool.client.errors import Json
from llmspool.client.protocol import Deadline, OnError, StatusCallback

T = TypeVar("T")


class SyncResults(transport.ResultsStream):
    """An open results stream (sync): the job's status when the daemon answered, then lines."""

    def iter_bytes(self) -> Iterator[bytes]:
        """The JSONL body as it arrives, for copying to a file without parsing."""
        yield from self._response.iter_bytes()

    def iter_lines(self) -> Iterator[Json]:
        """The Batch output lines, parsed, one at a time."""
        for text in self._response.iter_lines():
            line = protocol.parse_result_line(text)
            if line is not None:
                yield line


class SyncSpool(transport.Endpoint):
    """The sync client, for scripts without an event loop; the same names as ``Spool``."""

    def __init__(
        self, socket: str | None = None, *, timeout: float = 60, config: str | None = None
    ) -> None:
        super().__init__(socket, timeout, config)
        self._http = httpx2.Client(
            transport=httpx2.HTTPTransport(uds=self.socket),
            base_url=transport.BASE_URL,
            timeout=transport.client_timeout(self.timeout),
        )

    def __enter__(self) -> SyncSpool:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def submit(
        self,
        request_or_requests: Mapping[str, Any] | Iterable[Mapping[str, Any]],
        *,
        deadline: Deadline | None = None,
        operation: str | None = None,
        tags: Mapping[str, str] | None = None,
        endpoint: str = protocol.DEFAULT_ENDPOINT,
        on_error: OnError = "reject",
        best_effort: bool = False,
    ) -> SyncJobHandle:
        """As ``Spool.submit``: one request or many; the job's handle."""
        submission = protocol.build_requests(request_or_requests, endpoint)
        call = protocol.submit_call(submission, deadline=deadline, operation=operation, tags=tags,
                                    on_error=on_error, best_effort=best_effort)
        job = self._call(call)
        return SyncJobHandle(self, job, single=submission.single)

    def submit_jsonl(
        self,
        source: bytes | os.PathLike[str] | Iterable[bytes],
        *,
        deadline: Deadline | None = None,
        operation: str | None = None,
        tags: Mapping[str, str] | None = None,
        on_error: OnError = "reject",
        size: int | None = None,
        best_effort: bool = False,
    ) -> SyncJobHandle:
        """As ``Spool.submit_jsonl``: a Batch input file as it is (bytes, path or chunks)."""
        call = protocol.jsonl_call(source, size, _read_file, deadline=deadline, operation=operation,
                                   tags=tags, on_error=on_error, best_effort=best_effort)
        job = self._call(call)
        return SyncJobHandle(self, job, single=None)

    def job(self, job_id: str) -> SyncJobHandle:
        """A handle on a job submitted earlier, by its id (nothing is asked of the daemon yet)."""
        return SyncJobHandle(self, {"id": job_id}, single=None)

    def jobs(self, limit: int = 20) -> list[Json]:
        """The most recent jobs, newest first."""
        return list(self._call(protocol.jobs_call(limit)).get("data", []))

    def _call(self, call: protocol.Call) -> Json:
        with transport.transport_errors(self.socket):
            response = self._http.request(call.method, call.url, content=call.content,
                                          headers=call.headers, params=call.params)
        return transport.json_or_error(response)

    @contextmanager
    def _results(self, job_id: str, wait: float | None) -> Iterator[SyncResults]:
        url, timeout = self._results_request(job_id, wait)
        with (
            transport.transport_errors(self.socket),
            self._http.stream("GET", url, timeout=timeout) as response,
        ):
            if response.status_code >= 400:
                response.read()
                raise transport.response_error(response)
            yield SyncResults(response)

    def _run(self, plan: plans.Plan[T]) -> T:
        """Carry out a plan's steps, one after the other; what the plan comes to."""
        step = plans.advance(plan, None)
        while not isinstance(step, plans.Done):
            step = plans.advance(plan, self._step(step))
        return step.value

    def _step(self, step: plans.Step) -> Any:
        if isinstance(step, plans.Sleep):
            time.sleep(step.seconds)
            return None
        if isinstance(step, plans.Fetch):
            with self._results(step.job_id, step.wait) as results:
                return list(results.iter_lines()) if step.read else None
        return self._call(step)


def _read_file(path: os.PathLike[str]) -> Iterator[bytes]:
    with open(path, "rb") as handle:
        while chunk := handle.read(protocol.UPLOAD_CHUNK):
            yield chunk


class SyncJobHandle(protocol.SubmittedJob):
    """A submitted job (sync); the same attributes and methods as ``JobHandle``."""

    def __init__(self, spool: SyncSpool, submitted: Json, *, single: bool | None) -> None:
        super().__init__(submitted, single=single)
        self._spool = spool

    def status(self) -> Json:
        """The job object now: status, counts by state and tier, cost and savings so far."""
        return self._spool._call(protocol.status_call(self.id))

    def wait(
        self,
        timeout: float | None = None,
        *,
        on_status: StatusCallback | None = None,
        poll_every: float = protocol.MAX_LONG_POLL,
    ) -> Json:
        """As ``JobHandle.wait``: until the job is final; ``TimeoutError`` after ``timeout``."""
        return self._spool._run(plans.wait_plan(self.id, timeout, on_status, poll_every))

    def open_results(self, wait: float | None = None) -> AbstractContextManager[SyncResults]:
        """``with handle.open_results() as results``: a ``SyncResults`` stream.

        With ``wait``, the daemon first waits up to that many seconds for the job to finish;
        ``results.complete`` says whether it had.
        """
        return self._spool._results(self.id, wait)

    def iter_results(self, *, wait: float | None = None) -> Iterator[Json]:
        """The Batch output lines finished so far, in input order, streamed."""
        with self._spool._results(self.id, wait) as results:
            yield from results.iter_lines()

    def results(self, *, wait: float | None = None) -> list[Json]:
        """All the Batch output lines finished so far, in input order."""
        return list(self.iter_results(wait=wait))

    def result(self, timeout: float | None = None) -> Any:
        """As ``JobHandle.result``: the response body for a one-request job, else all output
        lines; ``RequestFailed`` when a one-request job's request failed."""
        return self._spool._run(plans.result_plan(self.id, self._single, timeout))

    def cancel(self) -> Json:
        """Cancel what has not run yet; the job object (a finished job is left as it is, with a
        ``message`` saying so)."""
        return self._spool._call(protocol.cancel_call(self.id))
