"""The ``Batch`` object of OpenAI's API, made from a batch row and (while it runs) its job.

Statuses, honestly mapped from the job:

- ``failed``: the input file failed validation (``errors`` lists each bad line); no job.
- ``in_progress``: the job runs (``cancelling`` once a cancel was asked).
- ``finalizing``: the job has ended and its output and error files are being written.
- ``completed`` / ``cancelled``: the files are written; counts and usage are final.
- ``expired``: never: a request not done by the completion window is still done (and flagged
  late in the job), because the spooler escalates before a deadline instead of giving up.

Timestamps the spec types as integers are left out while they have no value (the spec has no
``null`` for them).
"""

from __future__ import annotations

from typing import Any

from llmspool.core.states import BatchStatus, JobStatus
from llmspool.messages import JobView
from llmspool.store.api_files import BatchRow


def batch_object(row: BatchRow, job: JobView | None) -> dict[str, Any]:
    """The Batch object of ``row``; ``job`` is its job's JSON while the batch is open."""
    document: dict[str, Any] = {
        "id": row.id,
        "object": "batch",
        "endpoint": row.endpoint,
        "input_file_id": row.input_file_id,
        "completion_window": row.completion_window,
        "status": _status(row, job),
        "created_at": int(row.created_at),
        "expires_at": int(row.expires_at),
        "metadata": row.metadata,
    }
    if row.errors:
        document["errors"] = {"object": "list", "data": row.errors}
    if row.failed_at is not None:
        document["failed_at"] = int(row.failed_at)
        document["request_counts"] = {"total": 0, "completed": 0, "failed": 0}
        return document
    document["in_progress_at"] = int(row.created_at)  # validated before it was answered
    if row.cancelling_at is not None:
        document["cancelling_at"] = int(row.cancelling_at)
    finished_at = row.finished_at if row.final_status else \
        (job["finished_at"] if job is not None else None)
    if finished_at is not None:
        document["finalizing_at"] = int(finished_at)
    if row.final_status is not None:
        assert finished_at is not None
        document[f"{row.final_status}_at"] = int(finished_at)
        document["request_counts"] = row.request_counts
        if row.usage is not None:
            document["usage"] = row.usage
        for key in ("output_file_id", "error_file_id"):
            if getattr(row, key) is not None:
                document[key] = getattr(row, key)
    elif job is not None:
        document["request_counts"] = request_counts(job)
    return document


def request_counts(job: JobView) -> dict[str, int]:
    """``{total, completed, failed}`` of a job's counts (cancelled requests count as failed:
    they are in the error file)."""
    counts = job["counts"]
    return {"total": counts["total"], "completed": counts["succeeded"],
            "failed": counts["failed"] + counts["cancelled"]}


def _status(row: BatchRow, job: JobView | None) -> BatchStatus:
    if row.failed_at is not None:
        return BatchStatus.FAILED
    if row.final_status is not None:
        return row.final_status
    if row.cancelling_at is not None:
        return BatchStatus.CANCELLING
    if job is not None and job["status"] != JobStatus.IN_PROGRESS:
        return BatchStatus.FINALIZING
    return BatchStatus.IN_PROGRESS
