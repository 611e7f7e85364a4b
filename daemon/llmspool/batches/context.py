"""What both batch actors are built from: providers, store, planner, config, tracing."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import anyio
from opentelemetry import trace

from llmspool.core.config.sections import BatchConfig
from llmspool.core.crashpoints import CrashPoints
from llmspool.core.provider import BatchProvider
from llmspool.policy.planner import Planner
from llmspool.store.backend import StoreLocation


@dataclass(frozen=True, slots=True)
class BatchContext:
    """Shared, read-only parts of the batch submitter and the batch poller.

    ``ready`` is set once the job keeper has recovered its queued requests: until then the
    batch actors touch no line, so a line is always either the keeper's or a batch's.
    """

    providers: Mapping[str, BatchProvider]
    store_location: StoreLocation  # the store the batch rows and their lines are kept in
    state_dir: Path
    planner: Planner
    config: BatchConfig
    tracer: trace.Tracer
    crash: CrashPoints
    ready: anyio.Event
    # In a store several daemons share: this daemon's name, whose batches these actors make
    # and work (the others' are theirs). None: the one daemon of the store.
    daemon: str | None = None
