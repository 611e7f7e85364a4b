-- Deferred work: jobs and their requests. A request's result is written once, guarded by its
-- state (UPDATE ... WHERE id = ? AND state = 'queued'), so a call repeated after a crash can
-- never store a second result.
CREATE TABLE jobs (
    id              TEXT    PRIMARY KEY,
    created_at      REAL    NOT NULL,
    deadline_at     REAL    NOT NULL,
    operation       TEXT,
    tags            TEXT    NOT NULL DEFAULT '{}',      -- JSON object
    uid             INTEGER,
    status          TEXT    NOT NULL,                   -- in_progress, completed, cancelled
    total           INTEGER NOT NULL,
    finished_at     REAL
);
CREATE INDEX jobs_created ON jobs (created_at);

CREATE TABLE job_requests (
    id                          INTEGER PRIMARY KEY,
    job_id                      TEXT    NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    line                        INTEGER NOT NULL,       -- position in the job, from 1
    custom_id                   TEXT    NOT NULL,
    endpoint                    TEXT    NOT NULL,
    provider                    TEXT    NOT NULL,
    model                       TEXT    NOT NULL,
    body                        BLOB    NOT NULL,       -- the JSON to send upstream
    deadline_at                 REAL    NOT NULL,
    state                       TEXT    NOT NULL,       -- queued, succeeded, failed, cancelled
    tier                        TEXT,                   -- the tier that served it
    attempts                    INTEGER NOT NULL DEFAULT 0,
    cost_picodollars            INTEGER,
    standard_cost_picodollars   INTEGER,
    result                      BLOB,                   -- its line in the Batch output format
    finished_at                 REAL,
    UNIQUE (job_id, custom_id)
);
CREATE INDEX job_requests_queued ON job_requests (deadline_at) WHERE state = 'queued';
CREATE INDEX job_requests_job_line ON job_requests (job_id, line);
CREATE INDEX job_requests_job_state ON job_requests (job_id, state);
