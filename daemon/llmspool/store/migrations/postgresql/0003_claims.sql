-- Live daemons work each other's queued requests. A request names the daemon that claimed it,
-- which alone sends it: its job's owner, for the lines it batches or is sending, or another
-- daemon that took it with SELECT … FOR UPDATE SKIP LOCKED. NULL: offered to the fleet (a line
-- its owner will send when it gets to it, unless another daemon claims it first).
ALTER TABLE job_requests ADD COLUMN claimed_by TEXT;
-- The lines on offer, most urgent first: what a daemon with room to spare claims from. Apart
-- from the queued lines its owner keeps (a million waiting for a batch would otherwise be
-- walked past on every look).
CREATE INDEX job_requests_offered ON job_requests (deadline_at, id)
    WHERE state = 'queued' AND claimed_by IS NULL AND batch_id IS NULL;
