"""The response cache's parts (the actor itself is ``llmspool.actors.response_cache``), each a
plain object the cache makes once and owns, sharing its state by reference:

- ``counts``: ``CacheCounts``, the counters, and the status snapshot ``/v1/status`` shows;
- ``replies``: answering a call from a cached (or shared) answer, with its ledger entry;
- ``write_behind``: entries, hits and drops collected and committed together in a worker
  thread, and answers served from memory until their entry is in the file;
- ``flights``: single flight: a leader's call upstream (its replies relayed to its client),
  its followers, and what they get when it lands;
- ``batch_twins``: waiting for the identical request in a pending batch;
- ``near_duplicates``: sharing a call in flight, or a cached answer, worded alike;
- ``fleet``: in a store several daemons share, their cached answers and calls in flight.
"""
