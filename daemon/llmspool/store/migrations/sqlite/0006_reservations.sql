-- Reservations: the worst-case cost of every call the ledger admitted, written (group commit)
-- before the call is sent and deleted in the same transaction as the call's ledger entry. A
-- row left after a crash is a call whose outcome nobody can know: at start-up it becomes a
-- ledger entry flagged 'unknown_outcome' at its reserved cost, so spend never restarts low.
-- A batch line is reserved ('line') when it is put into a batch, and settled from the batch's
-- output; its reservation outlives a crash because the batch does.
CREATE TABLE reservations (
    request_id              TEXT    PRIMARY KEY,   -- the call's ledger request id; 'line:<id>'
    kind                    TEXT    NOT NULL CHECK (kind IN ('call', 'line')),
    reserved_at             REAL    NOT NULL,
    provider                TEXT    NOT NULL,
    model                   TEXT    NOT NULL,
    endpoint                TEXT    NOT NULL,
    tier                    TEXT    NOT NULL,
    operation               TEXT,
    uid                     INTEGER,
    session                 TEXT,
    estimate_picodollars    INTEGER NOT NULL,
    line_id                 INTEGER             -- job_requests.id of a batch line
) WITHOUT ROWID;

-- Usage the provider reports beyond input and output, and the price book each entry used.
ALTER TABLE ledger_entries ADD COLUMN cache_write_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE ledger_entries ADD COLUMN price_version TEXT;
CREATE INDEX ledger_entries_flag ON ledger_entries (flag, day) WHERE flag IS NOT NULL;
