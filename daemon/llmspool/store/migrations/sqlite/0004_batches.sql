-- The Batch API pipeline. A batch row is written (with its lines assigned to it) before any
-- remote call, and each remote step is recorded as it completes, so after a crash the daemon
-- knows what may exist upstream and finds it (by file name, by metadata) instead of repeating it.
CREATE TABLE batches (
    id                  INTEGER PRIMARY KEY,
    intent              TEXT    NOT NULL UNIQUE,    -- stamped in the upload's name and metadata
    provider            TEXT    NOT NULL,
    endpoint            TEXT    NOT NULL,
    model               TEXT    NOT NULL,
    state               TEXT    NOT NULL,           -- intent, uploaded, submitted, finished
    lines               INTEGER NOT NULL,
    bytes               INTEGER NOT NULL,
    tokens              INTEGER NOT NULL,           -- estimated prompt tokens (enqueued-token cap)
    deadline_at         REAL    NOT NULL,           -- the earliest deadline of its lines
    created_at          REAL    NOT NULL,
    input_file_id       TEXT,
    remote_id           TEXT,
    remote_status       TEXT,                       -- the provider's status, last seen
    completed           INTEGER NOT NULL DEFAULT 0,
    failed              INTEGER NOT NULL DEFAULT 0,
    submitted_at        REAL,
    polled_at           REAL,
    cancel_requested_at REAL,
    escalated_at        REAL,
    finished_at         REAL,
    note                TEXT                        -- how it ended, for status and logs
);
CREATE INDEX batches_open ON batches (state) WHERE state != 'finished';

-- A queued request carried by a batch (or NULL: the job keeper sends it itself).
ALTER TABLE job_requests ADD COLUMN batch_id INTEGER REFERENCES batches (id);
CREATE INDEX job_requests_batch ON job_requests (batch_id) WHERE batch_id IS NOT NULL;

-- The W3C traceparent of the request that submitted the job, so the spans of the batches
-- that carry its lines can link to it.
ALTER TABLE jobs ADD COLUMN traceparent TEXT;
