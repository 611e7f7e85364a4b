-- Live daemons work each other's queued requests. A request names the daemon that claimed it,
-- which alone sends it: its job's owner, for the lines it batches or is sending, or another
-- daemon that took it with SELECT … FOR UPDATE SKIP LOCKED. NULL: offered to the fleet (a line
-- its owner will send when it gets to it, unless another daemon claims it first).
ALTER TABLE job_requests ADD COLUMN claimed_by TEXT;
