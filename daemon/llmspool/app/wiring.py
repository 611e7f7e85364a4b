"""The daemon's parts, built from the config: the actors' inboxes (bounded streams, with the
clones each sender holds), the actors themselves, and the front door that sends to them.

Nothing here runs: ``llmspool.app.daemon`` starts what ``build_parts`` returns, in order.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import anyio
from anyio.abc import ObjectSendStream

from llmspool import __version__
from llmspool.actors.batch_poller import BatchPoller, PollerMessage
from llmspool.actors.batch_submitter import BatchSubmitter, SubmitterMessage
from llmspool.actors.caching.fleet import FleetCache
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
from llmspool.cache.presence import KeyPresence
from llmspool.cache.store import CachedKeys
from llmspool.cache.unwritten import UnwrittenKeys
from llmspool.core.clock import Clock
from llmspool.core.config.sections import Config
from llmspool.core.crashpoints import CrashPoints
from llmspool.core.provider import BatchProvider, Provider
from llmspool.core.streams import MemorySendStream, create_memory_stream
from llmspool.core.tracing import Tracing
from llmspool.jobs.submission import JobSubmission
from llmspool.messages import AdoptWork, BatchLinesDone, SlotFreed
from llmspool.policy.billing import PriceBook
from llmspool.policy.cache_keys import CacheRules
from llmspool.policy.estimate import TokenEstimator
from llmspool.policy.model_choice import ModelChooser
from llmspool.policy.planner import LatencyBook, Planner, default_latencies
from llmspool.policy.reservations import Reserver
from llmspool.policy.routing import ModelRouter
from llmspool.resilience.key_limits import LimitSettings
from llmspool.resilience.limits import RateLimits
from llmspool.resilience.retry import Retrier
from llmspool.server.access import Access
from llmspool.server.batch_api_routes import batch_api_routes
from llmspool.server.body_budget import BodyBudget
from llmspool.server.capture import Capturer
from llmspool.server.export_routes import export_routes
from llmspool.server.feedback_routes import feedback_routes
from llmspool.server.forwarding import Forwarder
from llmspool.server.jobs_routes import job_routes
from llmspool.server.ledger_routes import ledger_routes
from llmspool.server.routes import build_app
from llmspool.server.uvicorn_server import (
    ConnectionLimits,
    EmbeddedServer,
    build_server,
    connection_cap,
)
from llmspool.store.backend import Backend, StoreLocation, daemon_name
from llmspool.store.batches import batch_turnarounds
from llmspool.store.connections import AsyncConnection
from llmspool.store.fleet import Member
from llmspool.store.ledger import LedgerConnection, recent_latencies
from llmspool.store.writer import SideWriter

QUEUE_BUFFER = 256
LEDGER_BUFFER = 4096


@dataclass(frozen=True, slots=True)
class Parts:
    """Every part of a running daemon, built and not yet started.

    ``door_senders`` are the streams the front door closes when it stops, so that each actor's
    inbox closes once every sender is done; ``controls`` are the daemon's own clones of the
    inboxes that take ``NewPrices`` on a reload (dispatcher, batch poller, batch submitter).
    """

    ledger: Ledger
    dispatcher: Dispatcher
    queue: RequestQueue
    cache: ResponseCache
    submitter: BatchSubmitter
    poller: BatchPoller
    keeper: JobKeeper
    batches_ready: anyio.Event
    batch_api: BatchApi
    cache_front: CacheFront
    side_writer: SideWriter
    capturer: Capturer
    forwarder: Forwarder
    server: EmbeddedServer
    estimator: TokenEstimator
    controls: tuple[MemorySendStream[DispatcherMessage],
                    MemorySendStream[PollerMessage],
                    MemorySendStream[SubmitterMessage]]
    door_senders: tuple[ObjectSendStream[Any], ...]


async def build_parts(
    config: Config,
    databases: tuple[LedgerConnection, AsyncConnection],
    providers: Mapping[str, Provider],
    prices: PriceBook,
    router: ModelRouter,
    tracing: Tracing,
    clock: Clock,
    environ: Mapping[str, str],
    chooser: ModelChooser | None = None,
) -> Parts:
    ledger_database, jobs_database = databases
    slots = config.daemon.max_in_flight
    queue_in, queue_out = create_memory_stream[QueueMessage](QUEUE_BUFFER)
    dispatch_in, dispatch_out = create_memory_stream[DispatcherMessage](
        slots + 16
    )
    freed_in, freed_out = create_memory_stream[SlotFreed](slots)
    ledger_in, ledger_out = create_memory_stream[LedgerMessage](LEDGER_BUFFER)
    keeper_in, keeper_out = create_memory_stream[KeeperMessage](QUEUE_BUFFER)
    submitter_in, submitter_out = create_memory_stream[SubmitterMessage](
        QUEUE_BUFFER)
    poller_in, poller_out = create_memory_stream[PollerMessage](QUEUE_BUFFER)
    results_in, results_out = create_memory_stream[BatchLinesDone](
        QUEUE_BUFFER)
    cache_in, cache_out = create_memory_stream[CacheMessage](QUEUE_BUFFER)
    # The front door asks the dispatcher and the ledger for status through clones, so
    # that each actor's inbox closes only when every sender is done.
    dispatch_status = dispatch_in.clone()
    ledger_status = ledger_in.clone()
    dispatch_control = dispatch_in.clone()

    estimator = TokenEstimator()
    book = LatencyBook(default_latencies(config))
    book.observe_many(await recent_latencies(jobs_database))
    book.observe_many(await batch_turnarounds(jobs_database))
    planner = Planner(config, prices, book, clock)
    # This daemon as a shared store's fleet knows it (its name is on its entries anywhere);
    # in a shared store, the owner of the deferred work it accepts (None: the one daemon).
    store = StoreLocation.of(config)
    member = Member(daemon_name(config), socket.gethostname(), os.getpid(), __version__,
                    config.store.lease)
    owner = member.name if store.backend is Backend.POSTGRESQL else None
    # Deferred work the ledger takes over from dead daemons (a shared store), to the keeper.
    adopt_in, adopt_out = create_memory_stream[AdoptWork](QUEUE_BUFFER)
    ledger = Ledger(ledger_out, ledger_database, budgets=config.budgets, tracer=tracing.tracer,
                    meter=tracing.meter, clock=clock.now, member=member, adopt=adopt_in)
    queue = RequestQueue(queue_out, freed_out, dispatch_in, slots=slots, max_waiting=slots,
                         meter=tracing.meter, clock=clock)
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
        histograms=tracing.histograms,
        retrier=Retrier(config.retry, config.retry_providers, calendar=clock.now),
        breaker=config.breaker,
        failover=config.failover,
        admit_now=ledger.admit_now,
        settle_now=ledger.settle_now,
        free_slot=queue.free_slot,
        limits=RateLimits({
            (provider, model): LimitSettings(limit.rpm, limit.tpm, limit.concurrency)
            for provider, models in config.limits.items()
            for model, limit in models.items()
        }),
    )
    cache_rules = CacheRules(config.cache, config.operations)
    # Which keys the cache file holds: kept by the cache actor, read by the front door too.
    cache_keys = KeyPresence(config.cache.max_entries)
    # And which it is about to write: kept by the cache actor, read by the job keeper.
    unwritten = UnwrittenKeys()
    cache = ResponseCache(cache_out, queue_in.clone(), ledger_in.clone(), config=config.cache,
                          state_dir=config.state_path, planner=planner,
                          batches=PendingBatches(store, planner),
                          near=NearDuplicates(config.cache)
                          if any(op.similar for op in config.operations.values()) else None,
                          # A fleet's daemons share their answers and calls in flight.
                          fleet=None if owner is None else FleetCache(store, owner, planner),
                          presence=cache_keys, unwritten=unwritten,
                          queue_take_now=queue.take_now)
    batch_providers = {name: provider for name, provider in providers.items()
                       if isinstance(provider, BatchProvider)}
    crash = CrashPoints(environ)
    batches_ready = anyio.Event()
    batch_context = BatchContext(
        batch_providers, store, config.state_path, planner,
        config.batch, tracing.tracer, crash, batches_ready, owner,
    )
    submitter = BatchSubmitter(submitter_out, poller_in.clone(), results_in.clone(),
                               ledger_in.clone(), context=batch_context,
                               reserver=Reserver(prices, config.budgets, estimator),
                               meter=tracing.meter)
    poller = BatchPoller(poller_out, results_in.clone(), submitter_in.clone(),
                         ledger_in.clone(), context=batch_context, prices=prices,
                         cache=cache_in.clone(),
                         meter=tracing.meter)
    poller_control = poller_in.clone()
    submitter_control = submitter_in.clone()
    keeper = JobKeeper(
        keeper_out, queue_in.clone(), ledger_in.clone(), jobs_database, planner, config.jobs,
        batches=submitter_in.clone() if _batch_tier_on(config, batch_providers) else None,
        batch_results=results_out, batch_providers=frozenset(batch_providers),
        batch_config=config.batch,
        cache=cache_in.clone(), cache_rules=cache_rules,
        cached=CachedKeys(config.state_path, cache_keys, unwritten), meter=tracing.meter,
        owner=owner, adoptions=adopt_out,
    )
    # The front door answers hits itself: it tells the cache actor and the ledger through
    # clones of their inboxes, closed with the door like the others.
    cache_used_in, ledger_hits_in = cache_in.clone(), ledger_in.clone()
    cache_front = CacheFront(config.state_path, cache_used_in, ledger_hits_in, planner,
                             cache_keys)
    # Who may see which jobs and costs: their owners, and [daemon] admins.
    access = Access(config.daemon.admins)
    # Feedback and captured answers are the front door's own small writes.
    side_writer = SideWriter(store)
    capturer = Capturer(config.operations, config.jobs.retention, side_writer, clock)
    forwarder = Forwarder(queue_in, router, planner, tracing.tracer,
                          max_body_size=config.daemon.max_body_size,
                          max_json_values=config.daemon.max_json_values,
                          cache=cache_in, cache_rules=cache_rules, cache_front=cache_front,
                          chooser=chooser, capturer=capturer, take_now=queue.take_now,
                          cache_take_now=cache.take_now)
    # POST /v1/jobs and POST /v1/batches make jobs the same way.
    submission = JobSubmission(keeper_in, router, planner,
                               max_line_size=config.jobs.max_line_size,
                               max_json_values=config.daemon.max_json_values,
                               cache_rules=cache_rules,
                               on_short_deadline=config.jobs.on_short_deadline,
                               tracer=tracing.tracer, chooser=chooser,
                               spool_directory=config.state_path)
    batch_api = BatchApi(config.state_path, store, submission, config.files,
                         clock)
    app = build_app(
        forwarder, router,
        {"queue": queue_in, "dispatcher": dispatch_status, "ledger": ledger_status,
         "cache": cache_in, "jobs": keeper_in, "batch_submitter": submitter_in,
         "batches": poller_in},
        started_at=time.time(),
        bodies=BodyBudget(config.daemon.max_bodies_in_memory, config.daemon.bodies_wait),
        extra_routes=[
            *job_routes(submission, store, max_upload_size=config.jobs.max_upload_size,
                        access=access, spool_directory=config.state_path),
            *batch_api_routes(batch_api, access),
            *ledger_routes(ledger_status, store, access=access,
                           clock=clock.now),
            *feedback_routes(ledger_status, side_writer, access, clock=clock.now),
            *export_routes(ledger_status, store, access,
                           clock=clock.now),
        ],
    )
    daemon_config = config.daemon
    server = build_server(
        app, graceful_shutdown=daemon_config.shutdown_grace,
        limits=ConnectionLimits(daemon_config.header_timeout, daemon_config.max_headers,
                                daemon_config.max_header_size,
                                connection_cap(daemon_config.max_connections)),
        keepalive_timeout=daemon_config.keepalive_timeout)
    return Parts(
        ledger, dispatcher, queue, cache, submitter, poller, keeper, batches_ready, batch_api,
        cache_front, side_writer, capturer, forwarder, server, estimator,
        controls=(dispatch_control, poller_control, submitter_control),
        door_senders=(queue_in, cache_in, cache_used_in, ledger_hits_in, dispatch_status,
                      ledger_status, dispatch_control, poller_control, submitter_control,
                      keeper_in, submitter_in, poller_in, results_in),
    )


def _batch_tier_on(config: Config, batch_providers: Mapping[str, BatchProvider]) -> bool:
    # With caps set too: batch lines are reserved against the caps when they are batched.
    return config.batch.enabled and bool(batch_providers)
