"""SQL of the Files and Batches API objects (``api_files``, ``api_batches``).

Their only writer is the batch API service (``llmspool.batch_api.service``), on a connection of
its own; no money is written here. A batch object's live counts come from its job (the job
keeper); what outlives the job is copied here when the job ends.

Pages of files and batches follow the order they were made in: SQLite's ``rowid``; the
PostgreSQL tables have no such hidden counter (their key is a random id), so there the order is
``(created_at, id)``, the same order unless two were made in the same instant. Two statements
read JSON inside a job's results, which the backends do differently (SQLite's ``json_*``
functions, PostgreSQL's ``jsonb``); the rest of the SQL is one text.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson

from llmspool.core.states import BatchStatus
from llmspool.store.connections import AsyncConnection, is_sqlite
from llmspool.store.records import Viewer

RESULT_CHUNK = 2000
_OWNER = "(? = 1 OR uid IS NOT DISTINCT FROM ?)"  # (admin, uid): an admin sees every row


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


@dataclass(frozen=True, slots=True)
class _OrderKey:
    column: str  # what a page's ``after`` compares (a row value on PostgreSQL)
    select: str  # the same, of the ``after`` row, as its subquery selects it
    order: str  # the ORDER BY


def _order_key(connection: AsyncConnection, direction: str) -> _OrderKey:
    """The order files and batches were made in (see the module's docstring)."""
    if is_sqlite(connection):
        return _OrderKey("rowid", "rowid", f"rowid {direction}")
    return _OrderKey("(created_at, id)", "created_at, id",
                     f"created_at {direction}, id {direction}")


# --- files -------------------------------------------------------------------------------


async def insert_file(connection: AsyncConnection, file: FileRow) -> None:
    await connection.execute(
        f"INSERT INTO api_files ({_FILE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (file.id, file.uid, file.filename, file.purpose, file.bytes, file.created_at,
         file.expires_at),
    )


async def get_file(connection: AsyncConnection, file_id: str, viewer: Viewer
                   ) -> FileRow | None:
    rows = await connection.execute_fetchall(
        f"SELECT {_FILE_COLUMNS} FROM api_files WHERE id = ? AND {_OWNER}",
        (file_id, viewer.admin, viewer.uid),
    )
    return FileRow(*next(iter(rows))) if rows else None


async def list_files(
    connection: AsyncConnection, viewer: Viewer, *, purpose: str | None, limit: int,
    ascending: bool, after: str | None,
) -> list[FileRow]:
    """A page of files, ``limit + 1`` at most (the extra one says there are more)."""
    order = "ASC" if ascending else "DESC"
    conditions = [_OWNER]
    params: list[Any] = [viewer.admin, viewer.uid]
    if purpose is not None:
        conditions.append("purpose = ?")
        params.append(purpose)
    key = _order_key(connection, order)
    if after is not None:
        conditions.append(f"{key.column} {'>' if ascending else '<'} "
                          f"(SELECT {key.select} FROM api_files WHERE id = ?)")
        params.append(after)
    rows = await connection.execute_fetchall(
        f"SELECT {_FILE_COLUMNS} FROM api_files WHERE {' AND '.join(conditions)} "
        f"ORDER BY {key.order} LIMIT ?",
        (*params, limit + 1),
    )
    return [FileRow(*row) for row in rows]


async def delete_file(connection: AsyncConnection, file_id: str) -> None:
    await connection.execute("DELETE FROM api_files WHERE id = ?", (file_id,))


async def expired_files(connection: AsyncConnection, now: float) -> list[str]:
    rows = await connection.execute_fetchall(
        "SELECT id FROM api_files WHERE expires_at < ?", (now,))
    return [str(row[0]) for row in rows]


async def all_file_ids(connection: AsyncConnection) -> set[str]:
    rows = await connection.execute_fetchall("SELECT id FROM api_files")
    return {str(row[0]) for row in rows}


# --- batches -----------------------------------------------------------------------------


async def insert_batch(connection: AsyncConnection, batch: BatchRow) -> None:
    await connection.execute(
        f"INSERT INTO api_batches ({_BATCH_COLUMNS}) VALUES "
        "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (batch.id, batch.uid, batch.job_id, batch.input_file_id, batch.endpoint,
         batch.completion_window, _json(batch.metadata), batch.created_at, batch.expires_at,
         batch.deadline_at, batch.failed_at, _json(batch.errors), batch.cancelling_at,
         batch.finished_at, batch.final_status, batch.output_file_id, batch.error_file_id,
         _json(batch.request_counts), _json(batch.usage)),
    )


async def get_batch(connection: AsyncConnection, batch_id: str, viewer: Viewer
                    ) -> BatchRow | None:
    rows = await connection.execute_fetchall(
        f"SELECT {_BATCH_COLUMNS} FROM api_batches WHERE id = ? AND {_OWNER}",
        (batch_id, viewer.admin, viewer.uid),
    )
    return _batch(next(iter(rows))) if rows else None


async def list_batches(connection: AsyncConnection, viewer: Viewer, *, limit: int,
                       after: str | None) -> list[BatchRow]:
    """A page of batches, newest first, ``limit + 1`` at most."""
    key = _order_key(connection, "DESC")
    condition = ""
    params: tuple[str, ...] = ()
    if after is not None:
        condition = f"AND {key.column} < (SELECT {key.select} FROM api_batches WHERE id = ?)"
        params = (after,)
    rows = await connection.execute_fetchall(
        f"SELECT {_BATCH_COLUMNS} FROM api_batches WHERE {_OWNER} {condition} "
        f"ORDER BY {key.order} LIMIT ?",
        (viewer.admin, viewer.uid, *params, limit + 1),
    )
    return [_batch(row) for row in rows]


async def open_batches(connection: AsyncConnection) -> list[BatchRow]:
    """Batches whose job has not been finalized into output files yet."""
    rows = await connection.execute_fetchall(
        f"SELECT {_BATCH_COLUMNS} FROM api_batches "
        "WHERE job_id IS NOT NULL AND final_status IS NULL "
        f"ORDER BY {_order_key(connection, 'ASC').order}")
    return [_batch(row) for row in rows]


async def set_cancelling(connection: AsyncConnection, batch_id: str, now: float) -> None:
    await connection.execute(
        "UPDATE api_batches SET cancelling_at = COALESCE(cancelling_at, ?) WHERE id = ?",
        (now, batch_id))


async def finalize_batch(
    connection: AsyncConnection, batch_id: str, *, status: BatchStatus, finished_at: float,
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


async def fail_batch(connection: AsyncConnection, batch_id: str, now: float,
                     errors: list[dict[str, Any]]) -> None:
    await connection.execute(
        "UPDATE api_batches SET failed_at = ?, errors = ? WHERE id = ?",
        (now, _json(errors), batch_id))


async def batches_created_before(connection: AsyncConnection, before: float
                                 ) -> list[BatchRow]:
    rows = await connection.execute_fetchall(
        f"SELECT {_BATCH_COLUMNS} FROM api_batches WHERE created_at < ? AND "
        "(final_status IS NOT NULL OR job_id IS NULL)", (before,))
    return [_batch(row) for row in rows]


async def delete_batch(connection: AsyncConnection, batch_id: str) -> None:
    await connection.execute("DELETE FROM api_batches WHERE id = ?", (batch_id,))


# --- a finished job's results, as output and error file lines ------------------------------

# The Batch API's line has exactly id, custom_id, response and error; the jobs API adds
# ``cache`` and ``late``, which an existing parser of OpenAI's files would not expect.
_JOBS_ONLY_KEYS = ("cache", "late")
_RESULT_LINE_SQLITE = "json_remove(result, '$.cache', '$.late')"


async def iter_result_lines(connection: AsyncConnection, job_id: str
                            ) -> AsyncIterator[tuple[bool, bytes]]:
    """(succeeded, line) of each stored result of the job, in input order, a chunk at a time."""
    sqlite = is_sqlite(connection)
    # SQLite takes the jobs API's keys out itself; PostgreSQL's jsonb would reorder the keys
    # and space the text out, so its lines are rewritten here instead.
    result = _RESULT_LINE_SQLITE if sqlite else "result"
    last_line = 0
    while True:
        rows = list(await connection.execute_fetchall(
            "SELECT line, CASE WHEN state = 'succeeded' THEN 1 ELSE 0 END, "
            f"{result} FROM job_requests "
            "WHERE job_id = ? AND line > ? AND result IS NOT NULL ORDER BY line LIMIT ?",
            (job_id, last_line, RESULT_CHUNK)))
        if not rows:
            return
        last_line = rows[-1][0]
        for _line, succeeded, line in rows:
            text = line.encode() if isinstance(line, str) else bytes(line)
            yield bool(succeeded), text if sqlite else _batch_api_line(text)


def _batch_api_line(result: bytes) -> bytes:
    """A stored result without the jobs API's own keys (as ``json_remove`` gives it)."""
    document = orjson.loads(result)
    if isinstance(document, dict) and any(key in document for key in _JOBS_ONLY_KEYS):
        for key in _JOBS_ONLY_KEYS:
            document.pop(key, None)
        return orjson.dumps(document)
    return result


# The Batch object's usage: (chat completions' and embeddings' name, responses' name) of
# each figure, under the answer's ``usage``.
_USAGE_NAMES = (
    ("prompt_tokens", "input_tokens"),
    ("prompt_tokens_details.cached_tokens", "input_tokens_details.cached_tokens"),
    ("completion_tokens", "output_tokens"),
    ("completion_tokens_details.reasoning_tokens", "output_tokens_details.reasoning_tokens"),
)


def _tokens_sqlite(name: str) -> str:
    return f"json_extract(result, '$.response.body.usage.{name}')"


def _tokens_postgresql(name: str) -> str:
    # A number where the answer has one (json_extract's NULL for anything else).
    path = "{" + name.replace(".", ",") + "}"
    return (f"CASE WHEN jsonb_typeof(usage #> '{path}') = 'number' "
            f"THEN (usage #>> '{path}')::numeric END")


async def job_usage(connection: AsyncConnection, job_id: str) -> dict[str, Any]:
    """The Batch object's ``usage``: tokens of the job's answered requests, from their bodies
    (chat completions and embeddings name them prompt/completion, responses input/output)."""
    if is_sqlite(connection):
        columns = ", ".join(
            f"SUM(COALESCE({_tokens_sqlite(chat)}, {_tokens_sqlite(responses)}, 0))"
            for chat, responses in _USAGE_NAMES)
        sql = f"SELECT {columns} FROM job_requests WHERE job_id = ? AND state = 'succeeded'"
    else:
        columns = ", ".join(
            f"SUM(COALESCE({_tokens_postgresql(chat)}, {_tokens_postgresql(responses)}, 0))"
            for chat, responses in _USAGE_NAMES)
        sql = (f"SELECT {columns} FROM (SELECT convert_from(result, 'UTF8')::jsonb "
               "#> '{response,body,usage}' AS usage FROM job_requests "
               "WHERE job_id = ? AND state = 'succeeded' AND result IS NOT NULL) AS answered")
    rows = list(await connection.execute_fetchall(sql, (job_id,)))
    prompt, cached, output, reasoning = (int(value or 0) for value in rows[0])
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": prompt + output,
    }
