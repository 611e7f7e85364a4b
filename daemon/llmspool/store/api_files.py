"""SQL of the Files and Batches API objects (``api_files``, ``api_batches``).

Their only writer is the batch API service (``llmspool.batch_api.service``), on a connection of
its own; no money is written here. A batch object's live counts come from its job (the job
keeper); what outlives the job is copied here when the job ends.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiosqlite
import orjson

from llmspool.core.states import BatchStatus
from llmspool.store.records import Viewer

RESULT_CHUNK = 2000
_OWNER = "(? OR uid IS ?)"  # (admin, uid): an admin sees every row


@dataclass(frozen=True, slots=True)
class FileRow:
    id: str
    uid: int | None
    filename: str
    purpose: str
    bytes: int
    created_at: float
    expires_at: float


@dataclass(frozen=True, slots=True)
class BatchRow:
    id: str
    uid: int | None
    job_id: str | None
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None
    created_at: float
    expires_at: float
    deadline_at: float | None
    failed_at: float | None
    errors: list[dict[str, Any]] | None
    cancelling_at: float | None
    finished_at: float | None
    final_status: BatchStatus | None
    output_file_id: str | None
    error_file_id: str | None
    request_counts: dict[str, int] | None
    usage: dict[str, Any] | None


_FILE_COLUMNS = "id, uid, filename, purpose, bytes, created_at, expires_at"
_BATCH_COLUMNS = (
    "id, uid, job_id, input_file_id, endpoint, completion_window, metadata, created_at, "
    "expires_at, deadline_at, failed_at, errors, cancelling_at, finished_at, final_status, "
    "output_file_id, error_file_id, request_counts, usage"
)
_BATCH_JSON = (6, 11, 17, 18)  # metadata, errors, request_counts, usage
_BATCH_FINAL_STATUS = 14


def _batch(row: Any) -> BatchRow:
    values = list(row)
    for index in _BATCH_JSON:
        if values[index] is not None:
            values[index] = orjson.loads(values[index])
    if values[_BATCH_FINAL_STATUS] is not None:
        values[_BATCH_FINAL_STATUS] = BatchStatus(values[_BATCH_FINAL_STATUS])
    return BatchRow(*values)


def _json(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


# --- files -------------------------------------------------------------------------------


async def insert_file(connection: aiosqlite.Connection, file: FileRow) -> None:
    await connection.execute(
        f"INSERT INTO api_files ({_FILE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (file.id, file.uid, file.filename, file.purpose, file.bytes, file.created_at,
         file.expires_at),
    )


async def get_file(connection: aiosqlite.Connection, file_id: str, viewer: Viewer
                   ) -> FileRow | None:
    rows = await connection.execute_fetchall(
        f"SELECT {_FILE_COLUMNS} FROM api_files WHERE id = ? AND {_OWNER}",
        (file_id, viewer.admin, viewer.uid),
    )
    return FileRow(*next(iter(rows))) if rows else None


async def list_files(
    connection: aiosqlite.Connection, viewer: Viewer, *, purpose: str | None, limit: int,
    ascending: bool, after: str | None,
) -> list[FileRow]:
    """A page of files, ``limit + 1`` at most (the extra one says there are more)."""
    order = "ASC" if ascending else "DESC"
    conditions = [_OWNER]
    params: list[Any] = [viewer.admin, viewer.uid]
    if purpose is not None:
        conditions.append("purpose = ?")
        params.append(purpose)
    if after is not None:
        conditions.append(f"rowid {'>' if ascending else '<'} "
                          "(SELECT rowid FROM api_files WHERE id = ?)")
        params.append(after)
    rows = await connection.execute_fetchall(
        f"SELECT {_FILE_COLUMNS} FROM api_files WHERE {' AND '.join(conditions)} "
        f"ORDER BY rowid {order} LIMIT ?",
        (*params, limit + 1),
    )
    return [FileRow(*row) for row in rows]


async def delete_file(connection: aiosqlite.Connection, file_id: str) -> None:
    await connection.execute("DELETE FROM api_files WHERE id = ?", (file_id,))


async def expired_files(connection: aiosqlite.Connection, now: float) -> list[str]:
    rows = await connection.execute_fetchall(
        "SELECT id FROM api_files WHERE expires_at < ?", (now,))
    return [str(row[0]) for row in rows]


async def all_file_ids(connection: aiosqlite.Connection) -> set[str]:
    rows = await connection.execute_fetchall("SELECT id FROM api_files")
    return {str(row[0]) for row in rows}


# --- batches -----------------------------------------------------------------------------


async def insert_batch(connection: aiosqlite.Connection, batch: BatchRow) -> None:
    await connection.execute(
        f"INSERT INTO api_batches ({_BATCH_COLUMNS}) VALUES "
        "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (batch.id, batch.uid, batch.job_id, batch.input_file_id, batch.endpoint,
         batch.completion_window, _json(batch.metadata), batch.created_at, batch.expires_at,
         batch.deadline_at, batch.failed_at, _json(batch.errors), batch.cancelling_at,
         batch.finished_at, batch.final_status, batch.output_file_id, batch.error_file_id,
         _json(batch.request_counts), _json(batch.usage)),
    )


async def get_batch(connection: aiosqlite.Connection, batch_id: str, viewer: Viewer
                    ) -> BatchRow | None:
    rows = await connection.execute_fetchall(
        f"SELECT {_BATCH_COLUMNS} FROM api_batches WHERE id = ? AND {_OWNER}",
        (batch_id, viewer.admin, viewer.uid),
    )
    return _batch(next(iter(rows))) if rows else None


async def list_batches(connection: aiosqlite.Connection, viewer: Viewer, *, limit: int,
                       after: str | None) -> list[BatchRow]:
    """A page of batches, newest first, ``limit + 1`` at most."""
    condition = ""
    params: tuple[str, ...] = ()
    if after is not None:
        condition = "AND rowid < (SELECT rowid FROM api_batches WHERE id = ?)"
        params = (after,)
    rows = await connection.execute_fetchall(
        f"SELECT {_BATCH_COLUMNS} FROM api_batches WHERE {_OWNER} {condition} "
        "ORDER BY rowid DESC LIMIT ?",
        (viewer.admin, viewer.uid, *params, limit + 1),
    )
    return [_batch(row) for row in rows]


async def open_batches(connection: aiosqlite.Connection) -> list[BatchRow]:
    """Batches whose job has not been finalized into output files yet."""
    rows = await connection.execute_fetchall(
        f"SELECT {_BATCH_COLUMNS} FROM api_batches "
        "WHERE job_id IS NOT NULL AND final_status IS NULL ORDER BY rowid")
    return [_batch(row) for row in rows]


async def set_cancelling(connection: aiosqlite.Connection, batch_id: str, now: float) -> None:
    await connection.execute(
        "UPDATE api_batches SET cancelling_at = COALESCE(cancelling_at, ?) WHERE id = ?",
        (now, batch_id))


async def finalize_batch(
    connection: aiosqlite.Connection, batch_id: str, *, status: BatchStatus, finished_at: float,
    output: FileRow | None, error: FileRow | None, counts: dict[str, int],
    usage: dict[str, Any],
) -> None:
    """The batch's end and its output and error files, in one transaction."""
    await connection.execute("BEGIN IMMEDIATE")
    try:
        for file in (output, error):
            if file is not None:
                await insert_file(connection, file)
        await connection.execute(
            "UPDATE api_batches SET final_status = ?, finished_at = ?, output_file_id = ?, "
            "error_file_id = ?, request_counts = ?, usage = ? WHERE id = ?",
            (status, finished_at, output.id if output else None, error.id if error else None,
             _json(counts), _json(usage), batch_id))
    except BaseException:
        await connection.execute("ROLLBACK")
        raise
    await connection.execute("COMMIT")


async def fail_batch(connection: aiosqlite.Connection, batch_id: str, now: float,
                     errors: list[dict[str, Any]]) -> None:
    await connection.execute(
        "UPDATE api_batches SET failed_at = ?, errors = ? WHERE id = ?",
        (now, _json(errors), batch_id))


async def batches_created_before(connection: aiosqlite.Connection, before: float
                                 ) -> list[BatchRow]:
    rows = await connection.execute_fetchall(
        f"SELECT {_BATCH_COLUMNS} FROM api_batches WHERE created_at < ? AND "
        "(final_status IS NOT NULL OR job_id IS NULL)", (before,))
    return [_batch(row) for row in rows]


async def delete_batch(connection: aiosqlite.Connection, batch_id: str) -> None:
    await connection.execute("DELETE FROM api_batches WHERE id = ?", (batch_id,))


# --- a finished job's results, as output and error file lines ------------------------------

# The Batch API's line has exactly id, custom_id, response and error; the jobs API adds
# ``cache`` and ``late``, which an existing parser of OpenAI's files would not expect.
_RESULT_LINE = "json_remove(result, '$.cache', '$.late')"


async def iter_result_lines(connection: aiosqlite.Connection, job_id: str
                            ) -> AsyncIterator[tuple[bool, bytes]]:
    """(succeeded, line) of each stored result of the job, in input order, a chunk at a time."""
    last_line = 0
    while True:
        rows = list(await connection.execute_fetchall(
            f"SELECT line, state = 'succeeded', {_RESULT_LINE} FROM job_requests "
            "WHERE job_id = ? AND line > ? AND result IS NOT NULL ORDER BY line LIMIT ?",
            (job_id, last_line, RESULT_CHUNK)))
        if not rows:
            return
        last_line = rows[-1][0]
        for _line, succeeded, line in rows:
            yield bool(succeeded), line.encode() if isinstance(line, str) else bytes(line)


_TOKENS = (
    "COALESCE(json_extract(result, '$.response.body.usage.{chat}'), "
    "json_extract(result, '$.response.body.usage.{responses}'), 0)"
)


async def job_usage(connection: aiosqlite.Connection, job_id: str) -> dict[str, Any]:
    """The Batch object's ``usage``: tokens of the job's answered requests, from their bodies
    (chat completions and embeddings name them prompt/completion, responses input/output)."""
    columns = ", ".join(f"SUM({_TOKENS.format(chat=chat, responses=responses)})" for chat,
                        responses in (
                            ("prompt_tokens", "input_tokens"),
                            ("prompt_tokens_details.cached_tokens",
                             "input_tokens_details.cached_tokens"),
                            ("completion_tokens", "output_tokens"),
                            ("completion_tokens_details.reasoning_tokens",
                             "output_tokens_details.reasoning_tokens")))
    rows = list(await connection.execute_fetchall(
        f"SELECT {columns} FROM job_requests WHERE job_id = ? AND state = 'succeeded'",
        (job_id,)))
    prompt, cached, output, reasoning = (int(value or 0) for value in rows[0])
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": prompt + output,
    }
