"""What the daemon knows of a batch upstream, whatever the provider: ``RemoteBatch``.

A provider plugin reads its API's batch objects into ``RemoteBatch`` at its boundary (the OpenAI
plugin in ``llmspool_openai.batch_objects``, the Anthropic plugin in
``llmspool_anthropic.batches``), refusing a malformed one there (``BadUpstreamAnswer``, naming
the field) instead of letting it surface later as a ``KeyError`` in an actor.

Statuses are the daemon's vocabulary (``llmspool.core.states.BatchStatus``; ``STATUSES`` as plain
strings); they happen to be the names OpenAI's Batch API uses, and a plugin maps its API's onto
them (Anthropic's ``ended`` is ``completed``, or ``cancelled`` when a cancel was asked for
first).
"""

from __future__ import annotations

from dataclasses import dataclass

from llmspool.core.states import BATCH_STATUS_TERMINAL, BatchStatus

# Plain strings, not the enum's members: plugins check a provider's status against these and
# name them, sorted, in their errors, which must read "['cancelled', ...]".
STATUSES = frozenset(status.value for status in BatchStatus)
TERMINAL = frozenset(status.value for status in BATCH_STATUS_TERMINAL)
TOKEN_LIMIT_EXCEEDED = "token_limit_exceeded"
"""The error code of a batch refused because its model's enqueued-token limit is full: the
submitter learns the limit from it and holds batches back instead of failing them."""


@dataclass(frozen=True, slots=True)
class BatchError:
    """Why (part of) a batch failed."""

    code: str
    message: str
    line: int | None = None  # 1-based line of the daemon's input file, when about one line
    param: str | None = None


@dataclass(frozen=True, slots=True)
class RemoteBatch:
    """A batch as its provider reports it.

    ``intent`` is the daemon's intent id when the provider can say it from the batch object
    (OpenAI: its metadata); a provider that cannot (Anthropic) leaves it None. The file ids
    are the plugin's own business (the core hands the ``RemoteBatch`` back to the plugin to
    download or clean up): OpenAI's input, output and error files; Anthropic has no input
    file and gives its results URL as ``output_file_id``.
    """

    id: str
    status: str
    created_at: float
    endpoint: str = ""
    input_file_id: str | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    total: int = 0
    completed: int = 0
    failed: int = 0
    errors: tuple[BatchError, ...] = ()
    intent: str | None = None

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"batch status {self.status!r} is not one of {sorted(STATUSES)}")

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL
