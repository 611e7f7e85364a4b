"""The ledger's parts (the actor itself is ``llmspool.actors.ledger``), each a plain object
(or functions) the ledger makes once and owns:

- ``caps``: ``Cap`` and ``Caps``, the configured caps compiled once (per request; per day
  overall, per operation, user and provider; per session): which apply to a call;
- ``budgets``: ``Budgets``, the money counted in memory (spent and reserved by scope, the
  reservations held, today's counts), admission decisions against the caps, budget warnings
  and the metrics of every entry;
- ``commits``: ``GroupCommit``, the group commit of entries, reservations and their ends, and
  the stores of deferred results (job results, batch lines and chunks) with their entries;
- ``status``: the answers to ``StatusQuery`` and ``LedgerEntriesQuery``, the ledger's status
  snapshot and recent entries.
"""
