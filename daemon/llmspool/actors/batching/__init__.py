"""The batch actors' parts (the actors themselves are ``llmspool.actors.batch_submitter`` and
``llmspool.actors.batch_poller``), each a plain object its actor makes once and owns:

- ``groups``: the submitter's waiting requests, a group per (provider, endpoint, model): when
  each is due, the limits of one batch, and how a group is cut into batches;
- ``creation``: the recorded steps of making a batch upstream (reserve, intent, upload,
  create), resumed after a crash, and the lines given back when a batch cannot be made;
- ``escalation``: the poller's cancelling of an open batch that will not finish before its
  deadline, or straggles, and the lines it gives back when the deadline wins;
- ``retrieval``: a finished batch's results downloaded and mapped back to its lines (stored
  with their entries by the ledger), and its files removed.
"""
