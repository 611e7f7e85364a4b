"""The batch actors' parts (the actors themselves are ``llmspool.actors.batch_submitter`` and
``llmspool.actors.batch_poller``), each a plain object its actor makes once and owns:

- ``groups``: the submitter's waiting requests, a group per (provider, endpoint, model): when
  each is due, the limits of one batch, and how a group is cut into batches;
- ``creation``: the recorded steps of making a batch upstream (reserve, intent, upload,
  create), resumed after a crash, and the lines given back when a batch cannot be made.
"""
