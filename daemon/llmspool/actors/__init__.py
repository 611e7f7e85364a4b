"""The daemon's actors: each an anyio task that owns its state and talks only by messages.

- ``request_queue``: admits calls, bounds what is in flight, hands the most urgent first;
- ``response_cache``: answers from the cache, shares identical calls in flight (single flight)
  (its parts are in ``caching``: ``counts``, ``replies``, ``write_behind``, ``flights``,
  ``batch_twins``, ``near_duplicates``, and ``fleet``: the answers and calls in flight the
  daemons of a shared store share);
- ``dispatcher``: runs calls against provider plugins and reads usage and tier from answers
  (its parts, each owning one step of a call, are in ``dispatch``: ``flex``, ``attempts``,
  ``targets``, ``relay``, ``accounts``, and ``stream_clock``, the time limits of a relayed
  stream);
- ``ledger``: the one owner of money. It is the only writer of money rows in
  ``llmspool.sqlite3``: reservations, ledger entries, and the results stored with their entries
  (job results, batch results), each in one transaction with its entry (its parts are in
  ``accounting``: ``caps``, ``budgets``, ``commits``, ``status``);
- ``job_keeper``: deferred jobs (writes jobs and their requests' routing; results through the
  ledger; its parts are in ``keeping``: ``jobs``, ``routing``, ``lines``, ``sending``,
  ``results``, ``waiting``, ``recovery``, and ``sharing``: claiming queued requests with the
  other daemons of a shared store);
- ``batch_submitter`` and ``batch_poller``: the Batch API pipeline (write batch bookkeeping:
  intents, assignments, polls; lines are reserved, and results stored, through the ledger;
  their parts are in ``batching``: ``groups`` and ``creation`` for the submitter,
  ``escalation`` and ``retrieval`` for the poller).

Each sub-package's docstring says what each of its modules does. Every actor answers a
``StatusQuery`` with its snapshot (a ``TypedDict`` of ``llmspool.messages``), and its inbox
type (``QueueMessage``, ``CacheMessage``, ``DispatcherMessage``, ``LedgerMessage``,
``KeeperMessage``, ``SubmitterMessage``, ``PollerMessage``) lists what it may be sent.

Who writes what in ``llmspool.sqlite3``: the ledger (its own ``sqlite3`` connection) writes
``reservations``, ``ledger_entries`` (and the rollup its trigger keeps), and result columns of
``job_requests``; the job keeper writes ``jobs`` and new ``job_requests``, cancels and deletes;
the batch actors write ``batches`` and the ``batch_id`` of the lines they carry. Beside the
actors, the Batch API service (``llmspool.batch_api``) writes ``api_files`` and ``api_batches``,
the OpenAI-shaped objects over jobs. Reports, the front door's job reads and the cache's reads
use read-only connections; the response cache keeps its own ``cache.sqlite3`` (and, in a
shared store, writes ``cache_entries`` and ``cache_flights``; the job keeper and its helper
claim ``job_requests`` for the fleet).
``docs/architecture.md`` draws the same map with the messages between the actors.

Each actor is a class with ``async def run(self, *, task_status)``, started in order by
``llmspool.app`` with ``task_group.start()``; it ends when its inbox is closed and drained,
closing the streams it sends on, so shutting down cascades from the front door inward.
"""
