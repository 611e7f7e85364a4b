"""``Daemon``: one running daemon, from its start to its exit.

``run`` loads the price book and the providers (``llmspool.app.providers``), opens the socket
and the store, has every part built (``llmspool.app.wiring``) and starts them in order, each
actor only once the one it sends to is running; systemd hears READY only when all have started.
It handles the signals (SIGTERM and SIGINT stop, SIGHUP reloads), closes the front door on a
stop so that the actors end one after the other, and cleans up (store, socket file, tracing).
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import socket
from collections.abc import Iterable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import TaskStatus

from llmspool.actors.batch_poller import BatchPoller
from llmspool.actors.batch_submitter import BatchSubmitter
from llmspool.actors.job_keeper import JobKeeper
from llmspool.app.providers import build_model_chooser, build_providers
from llmspool.app.wiring import build_parts
from llmspool.core import systemd
from llmspool.core.clock import SYSTEM_CLOCK, Clock
from llmspool.core.config.sections import Config
from llmspool.core.config_load import load_config
from llmspool.core.errors import ConfigError
from llmspool.core.provider import Provider
from llmspool.core.streams import MemorySendStream
from llmspool.core.tracing import Tracing, build_tracing
from llmspool.messages import NewPrices
from llmspool.policy.billing import PriceBook, load_price_book
from llmspool.policy.estimate import TokenEstimator
from llmspool.policy.model_choice import check_routed_models
from llmspool.policy.routing import ModelRouter
from llmspool.server.forwarding import Forwarder
from llmspool.server.listener import bind_unix_socket, remove_socket_file
from llmspool.server.uvicorn_server import EmbeddedServer
from llmspool.store.backend import StoreLocation
from llmspool.store.connect import connect_async
from llmspool.store.connections import AsyncConnection
from llmspool.store.database import close_shielded, ensure_state_directory
from llmspool.store.ledger import LedgerConnection
from llmspool.store.schema import migrate_store, schema_state

log = logging.getLogger(__name__)
ACTOR_EXTRA_GRACE = 3.0  # seconds the actors get after the front door's grace, to store results


@dataclass(frozen=True, slots=True)
class Listener:
    """The socket the front door serves, and the file to remove at exit (None: systemd's)."""

    socket: socket.socket
    path: Path | None


class Daemon:
    """One running daemon; ``run`` returns when it has shut down."""

    def __init__(
        self,
        config: Config,
        *,
        config_path: str | None = None,
        environ: Mapping[str, str] | None = None,
        extra_plugins: Iterable[object] = (),
        owns_process: bool = True,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        """``owns_process=False`` runs the daemon as a guest of another program (the in-process
        test harness, ``llmspool.testing``): it then takes no signals, no socket from systemd
        and leaves the garbage collector alone; the host stops it with ``stop()``. ``clock``
        is the daemon's calendar (``llmspool.core.clock``): a test may pass one it moves."""
        self.config = config
        self._clock = clock
        self._owns_process = owns_process
        self._config_path = config_path
        self._environ = dict(os.environ if environ is None else environ)
        self._extra_plugins = tuple(extra_plugins)
        self._server: EmbeddedServer | None = None
        self._forwarder: Forwarder | None = None
        self._stop_deadline: float | None = None  # anyio time at which the stop's grace ends
        self._listener: Listener | None = None
        # The dispatcher's, the batch poller's and the batch submitter's inboxes, for reloads.
        self._controls: tuple[MemorySendStream[Any], ...] = ()

    async def run(self) -> None:
        config = self.config
        prices = load_price_book(config.pricing.file)
        router = ModelRouter.build(config.providers, prices.table)
        check_routed_models(config, router)
        providers = build_providers(config, self._environ, self._extra_plugins)
        tracing = build_tracing(config.tracing, self._environ)
        notifier = systemd.Notifier.from_env(self._environ)
        listener = self._listener = self._listen()
        try:
            async with AsyncExitStack() as stack:
                # The store's schema brought up to date, then the job keeper's connection
                # and the ledger's: the one writer of money rows (ledger entries,
                # reservations, and results stored with their entries). SQLite serialises
                # their commits (WAL keeps readers unblocked); PostgreSQL locks rows.
                store = StoreLocation.of(config)
                await ensure_state_directory(config.state_path)
                await _migrated(store, notifier)
                log.info("store: %s %s", store.backend.value, store.shown())
                jobs_database = await connect_async(store)
                stack.push_async_callback(close_shielded, jobs_database)
                ledger_database = LedgerConnection.open(store, config.store.sync_interval)
                stack.callback(ledger_database.close)
                for provider in providers.values():
                    await stack.enter_async_context(provider)
                await self._run_actors((ledger_database, jobs_database), providers, prices,
                                       router, tracing, notifier)
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(tracing.shutdown)
            listener.socket.close()
            if listener.path is not None:
                remove_socket_file(listener.path, listener.socket)
        log.info("llmspool stopped")

    def _listen(self) -> Listener:
        passed = systemd.listen_fds() if self._owns_process else []
        if passed:
            for extra in passed[1:]:
                extra.close()
            passed[0].setblocking(False)
            log.info("serving the socket systemd passed")
            return Listener(passed[0], None)
        path = Path(self.config.daemon.socket)
        return Listener(bind_unix_socket(path, self.config.daemon.socket_mode), path)

    async def _run_actors(
        self,
        databases: tuple[LedgerConnection, AsyncConnection],
        providers: Mapping[str, Provider],
        prices: PriceBook,
        router: ModelRouter,
        tracing: Tracing,
        notifier: systemd.Notifier,
    ) -> None:
        config = self.config
        parts = await build_parts(config, databases, providers, prices, router, tracing,
                                  self._clock, self._environ,
                                  build_model_chooser(config, self._extra_plugins))
        self._forwarder = parts.forwarder
        self._controls = parts.controls
        self._server = parts.server

        async with AsyncExitStack() as cleanup, anyio.create_task_group() as services:
            cleanup.callback(parts.cache_front.close)
            cleanup.callback(parts.side_writer.close)
            if self._owns_process:
                services.start_soon(self._handle_signals, notifier)
            # Files and batch objects; its watchers wait on the keeper until the very end.
            await services.start(parts.batch_api.run)
            await services.start(parts.capturer.run)
            async with anyio.create_task_group() as actors:
                await actors.start(parts.ledger.run)
                await actors.start(parts.dispatcher.run)
                await actors.start(parts.queue.run)
                await actors.start(parts.cache.run)
                await actors.start(self._run_batches, parts.submitter, parts.poller,
                                   parts.keeper, parts.batches_ready)
                await actors.start(
                    self._serve_front_door, parts.server, actors.cancel_scope,
                    parts.door_senders,
                )
                notifier.ready(f"serving {config.daemon.socket}")
                log.info("llmspool ready on %s", config.daemon.socket)
                if self._owns_process:
                    _settle_garbage_collector()
                await services.start(systemd.run_watchdog, notifier)
                # The exact tokenizer calibrates estimates; loading it takes ~0.5 s of CPU, so
                # it happens in a thread once the daemon is already serving.
                services.start_soon(_load_tokenizer, parts.estimator)
            services.cancel_scope.cancel()

    async def _run_batches(
        self, submitter: BatchSubmitter, poller: BatchPoller, keeper: JobKeeper,
        ready: anyio.Event, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """The job keeper and the two batch actors, which live exactly as long as the keeper.

        The batch actors start first (the keeper hands them work while it recovers) but touch
        no line until the keeper has recovered (``ready``): a line is either the keeper's to
        route or a batch's, never both. They keep nothing in memory that the store does not
        have, so when the keeper is done they are simply cancelled; a worker thread that is
        inside a transaction finishes it first.
        """
        async with anyio.create_task_group() as batch_actors:
            await batch_actors.start(submitter.run)
            await batch_actors.start(poller.run)
            async with anyio.create_task_group() as keeper_group:
                await keeper_group.start(keeper.run)
                ready.set()
                task_status.started()
            batch_actors.cancel_scope.cancel()

    async def _serve_front_door(
        self,
        server: EmbeddedServer,
        actors_scope: anyio.CancelScope,
        senders: tuple[anyio.abc.ObjectSendStream[object], ...],
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        assert self._listener is not None
        listener_socket = self._listener.socket
        async with anyio.create_task_group() as group:
            group.start_soon(server.serve, [listener_socket])
            while not server.started:
                if server.should_exit:
                    break
                await anyio.sleep(0.005)
            task_status.started()
        # uvicorn has stopped and drained its connections: close the door behind it. Work
        # still inside the actors gets the grace period again, then is cancelled.
        for sender in senders:
            await sender.aclose()
        # The whole stop takes the grace and a little more: deferred calls still running then
        # are cancelled and stay queued (sent again at the next start).
        stop_at = self._stop_deadline if self._stop_deadline is not None else \
            anyio.current_time() + self.config.daemon.shutdown_grace
        actors_scope.deadline = max(anyio.current_time() + 1.0, stop_at + ACTOR_EXTRA_GRACE)

    async def _handle_signals(self, notifier: systemd.Notifier) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    notifier.reloading()
                    reloaded = self._reload()
                    notifier.ready("reloaded" if reloaded else "reload refused; see the log")
                    continue
                log.info("received %s; finishing requests in flight, then stopping",
                         signal.Signals(signum).name)
                notifier.stopping()
                self.stop()

    def stop(self) -> None:
        """Stop as SIGTERM does: stop accepting, let requests in flight finish within the
        grace, then end. Call it from the daemon's own event loop."""
        # Calls still waiting at the end of the grace get 503 daemon_stopping; the actors get
        # a few seconds more, then stop (deferred work stays queued).
        self._stop_deadline = anyio.current_time() + self.config.daemon.shutdown_grace
        if self._forwarder is not None:
            self._forwarder.stop_clock.stop_at(self._stop_deadline)
        if self._server is not None:
            self._server.stop()

    def _reload(self) -> bool:
        """Re-read what can change without a restart: log level and prices (the dispatcher,
        the planner, the batch submitter and the batch poller all use the new price book from
        now on)."""
        try:
            config = load_config(self._config_path, environ=self._environ)
            prices = load_price_book(config.pricing.file)
        except ConfigError as exc:
            log.error("reload refused, keeping the running config: %s", exc)
            return False
        logging.getLogger("llmspool").setLevel(config.daemon.log_level.upper())
        for name, control in zip(("dispatcher", "batch poller", "batch submitter"),
                                 self._controls, strict=False):
            try:
                control.send_nowait(NewPrices(prices))
            except (anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
                log.error("reload: the %s is busy or stopping; prices not reloaded", name)
                return False
        # Which models route where is fixed at start: a newly priced model needs a restart.
        log.info("reloaded the log level and the price book (%s)", prices.version)
        return True


MIGRATION_EXTEND_SECONDS = 30.0
"""Start-up time asked of systemd at a time while migrations run, again each third of it."""


async def _migrated(store: StoreLocation, notifier: systemd.Notifier) -> None:
    """Bring the store's schema up to date. While migrations run, systemd hears why the start
    is slow and is asked for more time, again and again: a migration that rewrites a table
    of the ledger takes about 1.5 s a million entries here (0016 on 1.12 million: 1.6 s), and
    a busy daemon's ledger can hold tens of millions, past systemd's 90 s to start."""
    pending = (await schema_state(store)).pending
    if not pending:
        await migrate_store(store)  # which refuses a store a newer llmspool has migrated
        return
    log.info("store: applying %d migration(s): %s", len(pending), ", ".join(pending))
    notifier.status(f"migrating the store ({len(pending)} migration(s): {pending[-1]}); "
                    f"this can take a while on a big ledger")

    async def keep_asking() -> None:
        while True:
            notifier.extend_timeout(MIGRATION_EXTEND_SECONDS)
            await anyio.sleep(MIGRATION_EXTEND_SECONDS / 3)

    async with anyio.create_task_group() as group:
        group.start_soon(keep_asking)
        await migrate_store(store)
        group.cancel_scope.cancel()


async def _load_tokenizer(estimator: TokenEstimator) -> None:
    loaded = await anyio.to_thread.run_sync(estimator.load_tokenizer)
    log.info("token estimates %s", "calibrate on the exact tokenizer" if loaded
             else "use the characters-per-token ratio (no tokenizer installed)")


GC_YOUNG_THRESHOLD = 20_000
"""Allocations between two collections of the youngest generation (CPython's default: 700)."""


def _settle_garbage_collector() -> None:
    """Once started, move everything built so far (modules, config, price book, actors) out of
    the collector's sight, and collect the young generation less often.

    Each request allocates a few thousand short-lived objects (headers, JSON, spans, task
    frames) that reference counting frees at once; with CPython's default threshold the cyclic
    collector still ran every few requests and walked the long-lived heap on its older passes.
    ``gc.freeze`` keeps the start-up heap out of every later pass; the higher threshold makes
    young collections rare. Cycles are still collected, later.
    """
    gc.freeze()
    _young, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)
