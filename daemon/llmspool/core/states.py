"""The closed sets of states the daemon keeps, each an enum with its terminal states named.

- ``JobStatus``: a job (``jobs.status``, the ``status`` of a job's JSON); ``JOB_TERMINAL``.
- ``RequestState``: one request (line) of a job (``job_requests.state``); ``REQUEST_TERMINAL``.
- ``BatchState``: the daemon's progress sending one batch upstream (``batches.state``);
  ``BATCH_STATE_TERMINAL``.
- ``BatchStatus``: the status vocabulary of OpenAI's Batch API, both what a provider reports of
  a batch upstream (``RemoteBatch.status``, ``batches.remote_status``) and what the daemon's
  own Batch API answers (``api_batches.final_status``, a Batch object's ``status``);
  ``BATCH_STATUS_TERMINAL``.

Members are ``StrEnum``s whose values are the very strings stored in SQLite and sent on the
wire: they compare equal to those strings, hash like them, bind as SQL parameters and serialise
through ``orjson`` as plain strings, so rows and answers are the same as with bare literals.
One exception: ``orjson`` refuses a ``str`` subclass as a dict *key*, so JSON field names that
happen to be state names (a job's ``counts``) stay plain strings.

SQL text keeps its literals (``WHERE state = 'queued'``): a query reads better whole, and the
values cannot drift apart because they are these enums' values, fixed by the stored data.
"""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    """Where a job is; it ends once, and its status never changes after that."""

    IN_PROGRESS = "in_progress"
    """Some of its requests are still queued (waiting, in a batch upstream, or running)."""
    COMPLETED = "completed"
    """Every request has a result, succeeded or failed."""
    CANCELLED = "cancelled"
    """Cancelled by its owner: the requests not yet done were cancelled with it."""


JOB_TERMINAL = frozenset({JobStatus.COMPLETED, JobStatus.CANCELLED})
"""The statuses a job ends in."""


class RequestState(StrEnum):
    """Where one request of a job is. In flight (running, or carried by a batch) is still
    ``QUEUED`` in the store: only a stored result moves it on, exactly once."""

    QUEUED = "queued"
    """No result yet: waiting to be sent, carried by a batch, or running."""
    SUCCEEDED = "succeeded"
    """Answered: its result holds the provider's answer."""
    FAILED = "failed"
    """Gave up on: its result holds the error (refused, out of attempts, past a cap)."""
    CANCELLED = "cancelled"
    """Its job was cancelled before it ran; its result says so."""


REQUEST_TERMINAL = frozenset({RequestState.SUCCEEDED, RequestState.FAILED,
                              RequestState.CANCELLED})
"""The states of a request with its result stored."""


class BatchState(StrEnum):
    """How far the daemon got sending one batch upstream; each step is written before the
    next remote call, so a crash resumes the batch instead of sending it twice."""

    INTENT = "intent"
    """Its requests are assigned to it; the input file may not be written or uploaded yet."""
    UPLOADED = "uploaded"
    """Its input is upstream (or goes with the create call); the batch is not created yet."""
    SUBMITTED = "submitted"
    """Created upstream: the poller watches it until it ends."""
    FINISHED = "finished"
    """Its results are stored and the lines it did not answer given back (or it was dropped,
    empty, before it was sent)."""


BATCH_STATE_TERMINAL = frozenset({BatchState.FINISHED})
"""The states of a batch the daemon is done with."""


class BatchStatus(StrEnum):
    """A batch's status in OpenAI's Batch API vocabulary. Provider plugins map their own onto
    it (Anthropic's ``ended`` is ``COMPLETED``, or ``CANCELLED`` when a cancel came first)."""

    VALIDATING = "validating"
    """The input file is being checked; nothing runs yet."""
    FAILED = "failed"
    """The batch was refused (its input failed validation, or a limit was full)."""
    IN_PROGRESS = "in_progress"
    """Its requests are running."""
    FINALIZING = "finalizing"
    """Its requests are done and its output and error files are being written."""
    COMPLETED = "completed"
    """Done: the output and error files hold every request's result."""
    EXPIRED = "expired"
    """The completion window ran out; the requests not done by then are in the error file."""
    CANCELLING = "cancelling"
    """A cancel was asked for; requests already running may still finish."""
    CANCELLED = "cancelled"
    """Cancelled: the files hold what finished before the cancel took effect."""


BATCH_STATUS_TERMINAL = frozenset({BatchStatus.FAILED, BatchStatus.COMPLETED,
                                   BatchStatus.EXPIRED, BatchStatus.CANCELLED})
"""The statuses of a batch that will not change any more."""
