"""The job keeper's parts (the actor itself is ``llmspool.actors.job_keeper``), each a plain
object (or, for a start, functions) the keeper makes once and owns, in the order a line goes
through them:

- ``jobs``: ``JobState``, one job's counts as status answers show them, mirroring the store;
- ``routing``: where each line goes (a batch, the cache, an identical batched line, or the
  heap of lines sent from here), the job's plan, and the lines batches give back;
- ``lines``: that heap, a few bytes a line (ids in arrays, a run per job and page), so a
  million queued lines cost megabytes, not hundreds of them;
- ``sending``: the heap's pump: at most ``[jobs] max_in_flight`` lines sent at a time, each
  as a ``Call`` through the request queue (or the cache actor), retried with backoff;
- ``results``: each line's result (or failure line), stored in group commits by the ledger
  and counted in its job;
- ``waiting``: who waits for a job to finish, and the answers to askers;
- ``recovery``: what a restart resumes, and forgetting jobs past ``[jobs] retention``;
- ``sharing``: in a store several daemons share, the claims on queued lines, the helper that
  sends other daemons' lines, the counts of jobs they help with, and their jobs' views.
"""
