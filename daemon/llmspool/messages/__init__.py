"""Every message the actors send each other: frozen dataclasses, one package, one picture.

Flow of an interactive call::

    front door --Call--> request queue --Call--> dispatcher --Reply--> front door (call.reply)
                                ^                    |
                                +----SlotFreed-------+---Settled--> ledger

Each message carries its request id, and a ``Call`` carries the OpenTelemetry context of the
span that made it, because contextvars do not cross memory streams.

A question to an actor is a message of its own with typed fields (``StatusQuery``,
``LedgerEntriesQuery``, ``JobQuery``, ``JobListQuery``), and its answer a typed value: each
actor's status snapshot is a ``TypedDict`` whose keys are exactly what ``/v1/status`` serves
(the CLI reads them), and a job is a ``JobView``. An actor's inbox type lists the questions it
answers, so mypy refuses a question sent to an actor that does not answer it.

The modules, by who talks: ``calls`` (the interactive path and the cache), ``accounting`` (to
the ledger), ``jobs`` (the job keeper and the Batch API pipeline), ``questions`` (status and
job views), and ``Settled``, a record of the store that is also a message to the ledger.
Import the messages from here.
"""

from llmspool.messages.accounting import (
    NOT_NOW,
    Admit,
    AdmitNow,
    LineReservation,
    NewPrices,
    NotNow,
    Release,
    ReleaseLines,
    ReserveLines,
    SettleNow,
    StoreJobResults,
)
from llmspool.messages.calls import (
    Abort,
    Answer,
    CacheFill,
    CacheUsed,
    Call,
    Failure,
    Missed,
    Reply,
    ReplySink,
    SlotFreed,
    StreamChunk,
    StreamEnd,
    StreamStart,
)
from llmspool.messages.jobs import (
    AdoptBatches,
    AdoptWork,
    BatchClosed,
    BatchLinesDone,
    BatchOpened,
    CancelJob,
    StoreBatchChunk,
    SubmitJob,
    ToBatch,
    WaitForJob,
)
from llmspool.messages.questions import (
    GONE,
    BudgetStatus,
    CacheStatus,
    DispatcherStatus,
    FlexStatus,
    JobCounts,
    JobList,
    JobListQuery,
    JobQuery,
    JobView,
    KeeperStatus,
    LedgerEntries,
    LedgerEntriesQuery,
    LedgerStatus,
    NearDuplicateStatus,
    PlanGroupView,
    PollerStatus,
    QueueStatus,
    Snapshot,
    StatusQuery,
    SubmitterStatus,
    WaitingGroupStatus,
    answer,
)

# A call's ledger entry is a record the store keeps and a message the ledger takes.
from llmspool.store.records import Settled

__all__ = [
    "GONE",
    "Settled",
    "answer",
    "Abort",
    "Admit",
    "AdmitNow",
    "Answer",
    "BatchClosed",
    "BatchLinesDone",
    "AdoptBatches",
    "AdoptWork",
    "BatchOpened",
    "BudgetStatus",
    "CacheFill",
    "CacheStatus",
    "CacheUsed",
    "Call",
    "CancelJob",
    "DispatcherStatus",
    "Failure",
    "FlexStatus",
    "JobCounts",
    "JobList",
    "JobListQuery",
    "JobQuery",
    "JobView",
    "KeeperStatus",
    "LedgerEntries",
    "LedgerEntriesQuery",
    "LedgerStatus",
    "LineReservation",
    "Missed",
    "NearDuplicateStatus",
    "NewPrices",
    "NotNow",
    "NOT_NOW",
    "PlanGroupView",
    "PollerStatus",
    "QueueStatus",
    "Release",
    "ReleaseLines",
    "Reply",
    "ReplySink",
    "ReserveLines",
    "SettleNow",
    "SlotFreed",
    "Snapshot",
    "StatusQuery",
    "StoreBatchChunk",
    "StoreJobResults",
    "StreamChunk",
    "StreamEnd",
    "StreamStart",
    "SubmitJob",
    "SubmitterStatus",
    "ToBatch",
    "WaitForJob",
    "WaitingGroupStatus",
]
