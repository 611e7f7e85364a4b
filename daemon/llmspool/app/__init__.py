"""The daemon: builds every part from the config and runs the actors in one task group.

Its modules: ``daemon`` (``Daemon``: start, signals, stop, reload), ``wiring`` (every part
built from the config, with the streams between them) and ``providers`` (the provider plugins
and their API keys).

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

from llmspool.app.daemon import Daemon

__all__ = ["Daemon"]
