"""The Python client of the daemon's jobs API: hand over work with a deadline, get answers later.

A call site changes one line to get deferred pricing::

    from llmspool.client import Spool

    async with Spool() as spool:        # finds the socket as the CLI does
        answer = await (await spool.submit(
            {"model": "gpt-5-mini", "messages": [{"role": "user", "content": "hi"}]},
            deadline="6h",
        )).result()
        print(answer["choices"][0]["message"]["content"])   # the body the API would answer

Many requests make one job, and come back in OpenAI's Batch output format, in input order::

    async with Spool() as spool:
        job = await spool.submit(
            [{"model": "gpt-5-mini", "messages": [...]} for _ in range(1000)],
            deadline="24h", operation="evals", tags={"project": "atlas"},
        )
        await job.wait()
        async for line in job.iter_results():
            print(line["custom_id"], line["response"] or line["error"])

Scripts without an event loop use ``SyncSpool``: the same names, without ``await``::

    with SyncSpool() as spool:
        print(spool.submit(body, deadline="1h").result())

Errors: whatever the daemon refuses becomes ``SpoolError`` (``message``, ``status``, ``code``,
and ``lines`` when a JSONL file had bad lines); ``DaemonNotRunning`` (a ``SpoolError``) when
nothing answers at the socket, naming where it looked; ``RequestFailed`` (a ``SpoolError``) when
``result()`` finds that a one-request job's request failed; ``TimeoutError`` when
``wait(timeout=...)`` runs out.

Modules, one job each; everything public is exported here, so import from ``llmspool.client``:

- ``errors``: ``SpoolError`` and its kinds, and how refusals and silent sockets become them.
- ``protocol``: the jobs API without I/O: building requests, interpreting answers.
- ``plans``: multi-step operations (waiting for a job, ``result()``) as steps without I/O.
- ``transport``: what both clients share about httpx2: timeouts, transport errors, answers.
- ``aio``: the async client (``Spool``, ``JobHandle``, ``AsyncResults``).
- ``sync``: the sync client (``SyncSpool``, ``SyncJobHandle``, ``SyncResults``); like ``aio``, it
  only moves bytes, so the two share every decision and neither copies the other.
"""

from llmspool.client.aio import AsyncResults, JobHandle, Spool
from llmspool.client.errors import DaemonNotRunning, RequestFailed, SpoolError, error_from_response
from llmspool.client.protocol import (
    DEFAULT_ENDPOINT,
    JOB_STATUS_HEADER,
    TERMINAL_STATUSES,
    Submission,
    build_requests,
    deadline_text,
    finished_count,
    is_failed,
    jsonl_query,
    parse_result_line,
    single_result,
    submit_payload,
)
from llmspool.client.sync import SyncJobHandle, SyncResults, SyncSpool

__all__ = [
    "DEFAULT_ENDPOINT",
    "JOB_STATUS_HEADER",
    "TERMINAL_STATUSES",
    "AsyncResults",
    "DaemonNotRunning",
    "JobHandle",
    "RequestFailed",
    "SpoolError",
    "Spool",
    "Submission",
    "SyncJobHandle",
    "SyncResults",
    "SyncSpool",
    "build_requests",
    "deadline_text",
    "error_from_response",
    "finished_count",
    "is_failed",
    "jsonl_query",
    "parse_result_line",
    "single_result",
    "submit_payload",
]
