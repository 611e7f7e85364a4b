"""The daemon: builds every part from the config and runs the actors in one task group.

Start-up, in order: price book, plugins and providers, tracing, the listening socket, the
store; the Batch API service (``batch_api.service``: files and batch objects); then the actors
with ``task_group.start()``, each only once the one it sends to is running: the ledger
(``actors.ledger``), the dispatcher (``actors.dispatcher``), the request queue
(``actors.request_queue``), the response cache (``actors.response_cache``), the batch submitter
and poller (``actors.batch_submitter``, ``actors.batch_poller``) with the job keeper
(``actors.job_keeper``), and last the front door (``server.routes`` with ``server.forwarding``,
``server.jobs_routes``, ``server.batch_api_routes`` and ``server.ledger_routes``; the cache
front, ``cache.front``, and the job intake, ``jobs.submission``). systemd hears READY only when
all have started. The ledger starts by reconciling what a crash
left: unsettled reservations become unknown-outcome entries before any call is admitted.

Who writes the database: the ledger (money rows: reservations, entries, results stored with
their entries), the job keeper (jobs), the batch actors (batch bookkeeping), the Batch API
service (its files and batch objects); see ``llmspool.actors`` and ``docs/architecture.md``.

Shutdown (SIGTERM or SIGINT): the front door stops accepting and lets requests in flight finish
within ``[daemon] shutdown_grace``; closing its stream ends the request queue, whose end ends
the dispatcher, whose end ends the ledger after its last commit. The store is closed, the
socket file removed, and the process exits 0. SIGHUP re-reads the price book and log level.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import socket
import time
from collections.abc import Iterable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite
import anyio
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectSendStream

from llmspool.actors.batch_poller import BatchPoller, PollerMessage
from llmspool.actors.batch_submitter import BatchSubmitter, SubmitterMessage
from llmspool.actors.dispatcher import Dispatcher, DispatcherMessage
from llmspool.actors.job_keeper import JobKeeper, KeeperMessage
from llmspool.actors.ledger import Ledger, LedgerMessage
from llmspool.actors.request_queue import QueueMessage, RequestQueue
from llmspool.actors.response_cache import CacheMessage, ResponseCache
from llmspool.batch_api.service import BatchApi
from llmspool.batches.context import BatchContext
from llmspool.cache.front import CacheFront
from llmspool.cache.nearby import NearDuplicates
from llmspool.cache.pending import PendingBatches
from llmspool.cache.store import CachedKeys
from llmspool.core import systemd
from llmspool.core.clock import SYSTEM_CLOCK, Clock
from llmspool.core.config.sections import Config, ProviderConfig
from llmspool.core.config_load import load_config
from llmspool.core.crashpoints import CrashPoints
from llmspool.core.errors import ConfigError
from llmspool.core.plugins import load_provider_kinds
from llmspool.core.provider import BatchProvider, Provider, ProviderSettings
from llmspool.core.tracing import Tracing, build_tracing
from llmspool.jobs.submission import JobSubmission
from llmspool.messages import BatchLinesDone, NewPrices, SlotFreed
from llmspool.policy.billing import PriceBook, load_price_book
from llmspool.policy.cache_keys import CacheRules
from llmspool.policy.estimate import TokenEstimator
from llmspool.policy.planner import LatencyBook, Planner, default_latencies
from llmspool.policy.reservations import Reserver
from llmspool.policy.routing import ModelRouter
from llmspool.resilience.key_limits import LimitSettings
from llmspool.resilience.limits import RateLimits
from llmspool.resilience.retry import Retrier
from llmspool.server.access import Access
from llmspool.server.batch_api_routes import batch_api_routes
from llmspool.server.capture import Capturer
from llmspool.server.export_routes import export_routes
from llmspool.server.feedback_routes import feedback_routes
from llmspool.server.forwarding import Forwarder
from llmspool.server.jobs_routes import job_routes
from llmspool.server.ledger_routes import ledger_routes
from llmspool.server.listener import bind_unix_socket, remove_socket_file
from llmspool.server.routes import build_app
from llmspool.server.uvicorn_server import (
    ConnectionLimits,
    EmbeddedServer,
    build_server,
    connection_cap,
)
from llmspool.store.batches import batch_turnarounds
from llmspool.store.database import DATABASE_NAME, close_shielded, open_database
from llmspool.store.ledger import LedgerConnection, recent_latencies
from llmspool.store.writer import SideWriter

log = logging.getLogger(__name__)
ACTOR_EXTRA_GRACE = 3.0  # seconds the actors get after the front door's grace, to store results

QUEUE_BUFFER = 256
LEDGER_BUFFER = 4096


@dataclass(frozen=True, slots=True)
class Listener:
    """The socket the front door serves, and the file to remove at exit (None: systemd's)."""

    socket: socket.socket
    path: Path | None


def resolve_api_key(provider: ProviderConfig, environ: Mapping[str, str]) -> str:
    """The provider's API key: a systemd credential file first, then the environment."""
    credentials = environ.get("CREDENTIALS_DIRECTORY")
    if credentials and provider.api_key_credential:
        path = Path(credentials) / provider.api_key_credential
        if path.is_file():
            return path.read_text(encoding="utf-8").strip()
    return environ.get(provider.api_key_env, "") if provider.api_key_env else ""


def build_providers(
    config: Config, environ: Mapping[str, str], extra_plugins: Iterable[object] = ()
) -> dict[str, Provider]:
    kinds = load_provider_kinds(extra_plugins)
    providers: dict[str, Provider] = {}
    for name, provider_config in config.providers.items():
        factory = kinds.get(provider_config.plugin)
        if factory is None:
            known = ", ".join(sorted(kinds)) or "none installed"
            raise ConfigError(
                f"providers.{name}.plugin",
                f"no plugin provides {provider_config.plugin!r} (installed: {known})",
            )
        api_key = resolve_api_key(provider_config, environ)
        if not api_key and provider_config.api_key_env:
            log.warning(
                "provider %s has no API key (set %s, or the systemd credential %s); "
                "its upstream will refuse calls",
                name, provider_config.api_key_env, provider_config.api_key_credential,
            )
        providers[name] = factory(ProviderSettings(name, provider_config, api_key))
    return providers


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
        self._dispatch_control: MemoryObjectSendStream[DispatcherMessage] | None = None
        self._poller_control: MemoryObjectSendStream[PollerMessage] | None = None
        self._submitter_control: MemoryObjectSendStream[SubmitterMessage] | None = None

    async def run(self) -> None:
        config = self.config
        prices = load_price_book(config.pricing.file)
        router = ModelRouter.build(config.providers, prices.table)
        providers = build_providers(config, self._environ, self._extra_plugins)
        tracing = build_tracing(config.tracing, self._environ)
        notifier = systemd.Notifier.from_env(self._environ)
        listener = self._listener = self._listen()
        try:
            async with AsyncExitStack() as stack:
                # The job keeper's connection (opening it migrates the schema), and the
                # ledger's: the one writer of money rows (ledger entries, reservations, and
                # results stored with their entries). SQLite serialises their commits; WAL
                # keeps readers unblocked.
                jobs_database = await open_database(config.state_path)
                stack.push_async_callback(close_shielded, jobs_database)
                ledger_database = LedgerConnection.open(config.state_path / DATABASE_NAME)
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
        databases: tuple[LedgerConnection, aiosqlite.Connection],
        providers: Mapping[str, Provider],
        prices: PriceBook,
        router: ModelRouter,
        tracing: Tracing,
        notifier: systemd.Notifier,
    ) -> None:
        config = self.config
        ledger_database, jobs_database = databases
        slots = config.daemon.max_in_flight
        queue_in, queue_out = anyio.create_memory_object_stream[QueueMessage](QUEUE_BUFFER)
        dispatch_in, dispatch_out = anyio.create_memory_object_stream[DispatcherMessage](
            slots + 16
        )
        freed_in, freed_out = anyio.create_memory_object_stream[SlotFreed](slots)
        ledger_in, ledger_out = anyio.create_memory_object_stream[LedgerMessage](LEDGER_BUFFER)
        keeper_in, keeper_out = anyio.create_memory_object_stream[KeeperMessage](QUEUE_BUFFER)
        submitter_in, submitter_out = anyio.create_memory_object_stream[SubmitterMessage](
            QUEUE_BUFFER)
        poller_in, poller_out = anyio.create_memory_object_stream[PollerMessage](QUEUE_BUFFER)
        results_in, results_out = anyio.create_memory_object_stream[BatchLinesDone](
            QUEUE_BUFFER)
        cache_in, cache_out = anyio.create_memory_object_stream[CacheMessage](QUEUE_BUFFER)
        # The front door asks the dispatcher and the ledger for status through clones, so
        # that each actor's inbox closes only when every sender is done.
        dispatch_status = dispatch_in.clone()
        ledger_status = ledger_in.clone()
        self._dispatch_control = dispatch_in.clone()

        estimator = TokenEstimator()
        book = LatencyBook(default_latencies(config))
        book.observe_many(await recent_latencies(jobs_database))
        book.observe_many(await batch_turnarounds(jobs_database))
        planner = Planner(config, prices, book, self._clock)
        ledger = Ledger(ledger_out, ledger_database, budgets=config.budgets, tracer=tracing.tracer,
                        meter=tracing.meter, clock=self._clock.now)
        dispatcher = Dispatcher(
            dispatch_out, freed_in, ledger_in,
            providers=providers,
            provider_kinds={n: c.plugin for n, c in config.providers.items()},
            timeouts={n: c.timeout for n, c in config.providers.items()},
            stream_idle_timeouts={n: c.stream_idle_timeout for n, c in config.providers.items()},
            prices=prices,
            planner=planner,
            flex=config.flex,
            budgets=config.budgets,
            estimator=estimator,
            tracer=tracing.tracer,
            meter=tracing.meter,
            retrier=Retrier(config.retry, config.retry_providers, calendar=self._clock.now),
            breaker=config.breaker,
            failover=config.failover,
            limits=RateLimits({
                (provider, model): LimitSettings(limit.rpm, limit.tpm, limit.concurrency)
                for provider, models in config.limits.items()
                for model, limit in models.items()
            }),
        )
        queue = RequestQueue(queue_out, freed_out, dispatch_in, slots=slots, max_waiting=slots,
                             meter=tracing.meter, clock=self._clock)
        cache_rules = CacheRules(config.cache, config.operations)
        cache = ResponseCache(cache_out, queue_in.clone(), ledger_in.clone(), config=config.cache,
                              state_dir=config.state_path, planner=planner,
                              batches=PendingBatches(config.state_path, planner),
                              near=NearDuplicates(config.cache)
                              if any(op.similar for op in config.operations.values()) else None)
        batch_providers = {name: provider for name, provider in providers.items()
                           if isinstance(provider, BatchProvider)}
        crash = CrashPoints(self._environ)
        batches_ready = anyio.Event()
        batch_context = BatchContext(
            batch_providers, config.state_path / DATABASE_NAME, config.state_path, planner,
            config.batch, tracing.tracer, crash, batches_ready,
        )
        submitter = BatchSubmitter(submitter_out, poller_in.clone(), results_in.clone(),
                                   ledger_in.clone(), context=batch_context,
                                   reserver=Reserver(prices, config.budgets, estimator),
                                   meter=tracing.meter)
        poller = BatchPoller(poller_out, results_in.clone(), submitter_in.clone(),
                             ledger_in.clone(), context=batch_context, prices=prices,
                             cache=cache_in.clone(),
                             meter=tracing.meter)
        self._poller_control = poller_in.clone()
        self._submitter_control = submitter_in.clone()
        keeper = JobKeeper(
            keeper_out, queue_in.clone(), ledger_in.clone(), jobs_database, planner, config.jobs,
            batches=submitter_in.clone() if _batch_tier_on(config, batch_providers) else None,
            batch_results=results_out, batch_providers=frozenset(batch_providers),
            batch_config=config.batch,
            cache=cache_in.clone(), cache_rules=cache_rules,
            cached=CachedKeys(config.state_path), meter=tracing.meter,
        )
        # The front door answers hits itself: it tells the cache actor and the ledger through
        # clones of their inboxes, closed with the door like the others.
        cache_used_in, ledger_hits_in = cache_in.clone(), ledger_in.clone()
        cache_front = CacheFront(config.state_path, cache_used_in, ledger_hits_in, planner)
        # Who may see which jobs and costs: their owners, and [daemon] admins.
        access = Access(config.daemon.admins)
        # Feedback and captured answers are the front door's own small writes.
        side_writer = SideWriter(config.state_path / DATABASE_NAME)
        capturer = Capturer(config.operations, config.jobs.retention, side_writer, self._clock)
        forwarder = self._forwarder = Forwarder(queue_in, router, planner, tracing.tracer,
                              max_body_size=config.daemon.max_body_size,
                              cache=cache_in, cache_rules=cache_rules, cache_front=cache_front,
                              capturer=capturer)
        # POST /v1/jobs and POST /v1/batches make jobs the same way.
        submission = JobSubmission(keeper_in, router, planner,
                                   max_line_size=config.jobs.max_line_size,
                                   cache_rules=cache_rules,
                                   on_short_deadline=config.jobs.on_short_deadline,
                                   tracer=tracing.tracer)
        batch_api = BatchApi(config.state_path, submission, config.files, self._clock)
        app = build_app(
            forwarder, router,
            {"queue": queue_in, "dispatcher": dispatch_status, "ledger": ledger_status,
             "cache": cache_in, "jobs": keeper_in, "batch_submitter": submitter_in,
             "batches": poller_in},
            started_at=time.time(),
            extra_routes=[
                *job_routes(submission, config.state_path / DATABASE_NAME,
                            max_upload_size=config.jobs.max_upload_size, access=access),
                *batch_api_routes(batch_api, access),
                *ledger_routes(ledger_status, config.state_path / DATABASE_NAME, access=access,
                               clock=self._clock.now),
                *feedback_routes(ledger_status, side_writer, access, clock=self._clock.now),
                *export_routes(ledger_status, config.state_path / DATABASE_NAME, access,
                               clock=self._clock.now),
            ],
        )
        daemon_config = config.daemon
        server = build_server(
            app, graceful_shutdown=daemon_config.shutdown_grace,
            limits=ConnectionLimits(daemon_config.header_timeout, daemon_config.max_headers,
                                    daemon_config.max_header_size,
                                    connection_cap(daemon_config.max_connections)),
            keepalive_timeout=daemon_config.keepalive_timeout)
        self._server = server

        async with AsyncExitStack() as cleanup, anyio.create_task_group() as services:
            cleanup.callback(cache_front.close)
            cleanup.callback(side_writer.close)
            if self._owns_process:
                services.start_soon(self._handle_signals, notifier)
            # Files and batch objects; its watchers wait on the keeper until the very end.
            await services.start(batch_api.run)
            await services.start(capturer.run)
            async with anyio.create_task_group() as actors:
                await actors.start(ledger.run)
                await actors.start(dispatcher.run)
                await actors.start(queue.run)
                await actors.start(cache.run)
                await actors.start(self._run_batches, submitter, poller, keeper, batches_ready)
                await actors.start(
                    self._serve_front_door, server, actors.cancel_scope,
                    (queue_in, cache_in, cache_used_in, ledger_hits_in, dispatch_status,
                     ledger_status, self._dispatch_control, self._poller_control,
                     self._submitter_control,
                     keeper_in, submitter_in, poller_in, results_in),
                )
                notifier.ready(f"serving {config.daemon.socket}")
                log.info("llmspool ready on %s", config.daemon.socket)
                if self._owns_process:
                    _settle_garbage_collector()
                await services.start(systemd.run_watchdog, notifier)
                # The exact tokenizer calibrates estimates; loading it takes ~0.5 s of CPU, so
                # it happens in a thread once the daemon is already serving.
                services.start_soon(_load_tokenizer, estimator)
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
            self._server.should_exit = True

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
        controls: tuple[tuple[str, MemoryObjectSendStream[Any] | None], ...] = (
            ("dispatcher", self._dispatch_control), ("batch poller", self._poller_control),
            ("batch submitter", self._submitter_control))
        for name, control in controls:
            if control is None:
                continue
            try:
                control.send_nowait(NewPrices(prices))
            except (anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
                log.error("reload: the %s is busy or stopping; prices not reloaded", name)
                return False
        # Which models route where is fixed at start: a newly priced model needs a restart.
        log.info("reloaded the log level and the price book (%s)", prices.version)
        return True


def _batch_tier_on(config: Config, batch_providers: Mapping[str, BatchProvider]) -> bool:
    # With caps set too: batch lines are reserved against the caps when they are batched.
    return config.batch.enabled and bool(batch_providers)


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
