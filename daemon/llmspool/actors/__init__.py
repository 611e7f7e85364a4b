"""The daemon's actors: each an anyio task that owns its state and talks only by messages.

- ``request_queue``: admits calls, bounds what is in flight, hands the most urgent first;
- ``dispatcher``: runs calls against provider plugins and reads usage and tier from answers;
- ``ledger``: the single writer of money; records every settled call with group commits.

Each actor is a class with ``async def run(self, *, task_status)``, started in order by
``llmspool.app`` with ``task_group.start()``; it ends when its inbox is closed and drained,
closing the streams it sends on, so shutting down cascades from the front door inward.
"""
