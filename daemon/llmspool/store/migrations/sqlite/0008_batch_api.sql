-- OpenAI's Files and Batches API on the socket (llmspool/batch_api): uploaded files and the
-- batch objects made from them. A file's bytes live in the state directory (files/<id>); its
-- row says who owns it and when it expires. A batch object is a view of one job: its row keeps
-- what the job does not (endpoint, metadata, validation errors) and, once the job has ended,
-- its output and error files, counts and usage, which outlive the job's [jobs] retention.
CREATE TABLE api_files (
    id TEXT PRIMARY KEY,
    uid INTEGER,
    filename TEXT NOT NULL,
    purpose TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX api_files_uid ON api_files (uid);
CREATE INDEX api_files_expires_at ON api_files (expires_at);

CREATE TABLE api_batches (
    id TEXT PRIMARY KEY,
    uid INTEGER,
    job_id TEXT,                 -- NULL when the input failed validation
    input_file_id TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    completion_window TEXT NOT NULL,
    metadata TEXT,               -- JSON object, or NULL
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,    -- created_at + the completion window
    deadline_at REAL,            -- the job's deadline
    failed_at REAL,
    errors TEXT,                 -- JSON list of {code, message, param, line}
    cancelling_at REAL,
    finished_at REAL,            -- the job's end: completed_at or cancelled_at
    final_status TEXT,           -- completed | cancelled | expired, once the files are written
    output_file_id TEXT,
    error_file_id TEXT,
    request_counts TEXT,         -- JSON {total, completed, failed}, once final
    usage TEXT                   -- JSON usage object, once final
);
CREATE INDEX api_batches_uid ON api_batches (uid);
CREATE INDEX api_batches_open ON api_batches (job_id) WHERE final_status IS NULL;
