-- Quality next to cost, and fine-tuning data (issue 21).
--
-- Each ledger entry now says the id of the answer it billed (a chat completion's or a
-- response's `id`), so that POST /v1/feedback can name an answer the way its caller knows it,
-- and find who owns it and which operation and model produced it.
ALTER TABLE ledger_entries ADD COLUMN response_id TEXT;
CREATE INDEX ledger_entries_response_id ON ledger_entries (response_id)
    WHERE response_id IS NOT NULL;

-- A score for one answer (the last one given counts). ``answer_key`` is the response id, or
-- 'job:<job>:<custom_id>' for a job line whose result has none. The answer's owner, day,
-- provider, model, tier and operation are copied from its ledger entry or job line, so the
-- costs report groups scores by the same dimensions as spend without a join.
CREATE TABLE feedback (
    answer_key      TEXT    PRIMARY KEY,
    response_id     TEXT,
    job_id          TEXT,
    custom_id       TEXT,
    uid             INTEGER NOT NULL,   -- the answer's owner; -1 when unknown
    scorer_uid      INTEGER,
    day             TEXT    NOT NULL,   -- the answer's UTC day, as its ledger entry's
    provider        TEXT    NOT NULL,
    model           TEXT    NOT NULL,
    tier            TEXT    NOT NULL,
    operation       TEXT    NOT NULL,   -- '' when none
    score           REAL    NOT NULL CHECK (score >= 0 AND score <= 1),
    label           TEXT,
    comment         TEXT,
    created_at      REAL    NOT NULL
) WITHOUT ROWID;
CREATE INDEX feedback_response_id ON feedback (response_id) WHERE response_id IS NOT NULL;

-- Request/answer pairs of the successful chat calls of operations with
-- [operations.NAME] capture = true: only what a fine-tuning example needs (the request's
-- messages and tools, the answer's assistant message), deleted at expires_at.
CREATE TABLE captures (
    response_id     TEXT    PRIMARY KEY,
    uid             INTEGER,
    operation       TEXT    NOT NULL,
    provider        TEXT    NOT NULL,
    model           TEXT    NOT NULL,
    messages        TEXT    NOT NULL,   -- JSON array: the request's messages
    tools           TEXT,               -- JSON array: the request's tools, if any
    answer          TEXT    NOT NULL,   -- JSON object: the assistant message
    created_at      REAL    NOT NULL,
    expires_at      REAL    NOT NULL,
    job_id          TEXT,               -- set for a job line
    custom_id       TEXT
) WITHOUT ROWID;
CREATE INDEX captures_operation ON captures (operation, created_at);
CREATE INDEX captures_expires_at ON captures (expires_at);

-- The operations that capture, and for how long, as the daemon's config says at start.
CREATE TABLE capture_operations (
    operation       TEXT    PRIMARY KEY,
    retention       REAL    NOT NULL    -- seconds
) WITHOUT ROWID;

-- A job line's pair is captured when its result is stored (by whichever writer stores it:
-- the ledger for direct calls and batch results), in the same transaction.
CREATE TRIGGER captures_after_job_result AFTER UPDATE OF state ON job_requests
WHEN NEW.state = 'succeeded' AND OLD.state <> 'succeeded'
     AND NEW.endpoint = '/v1/chat/completions' AND NEW.result IS NOT NULL
BEGIN
    INSERT OR IGNORE INTO captures
    SELECT json_extract(CAST(NEW.result AS TEXT), '$.response.body.id'), j.uid, j.operation,
           NEW.provider, NEW.model,
           json_extract(CAST(NEW.body AS TEXT), '$.messages'),
           json_extract(CAST(NEW.body AS TEXT), '$.tools'),
           json_extract(CAST(NEW.result AS TEXT), '$.response.body.choices[0].message'),
           COALESCE(NEW.finished_at, j.created_at),
           COALESCE(NEW.finished_at, j.created_at) + c.retention,
           NEW.job_id, NEW.custom_id
    FROM jobs j JOIN capture_operations c ON c.operation = j.operation
    WHERE j.id = NEW.job_id
      AND json_extract(CAST(NEW.result AS TEXT), '$.response.status_code') = 200
      AND json_type(CAST(NEW.result AS TEXT), '$.response.body.id') = 'text'
      AND json_type(CAST(NEW.body AS TEXT), '$.messages') = 'array'
      AND json_type(CAST(NEW.result AS TEXT), '$.response.body.choices[0].message') = 'object';
END;
