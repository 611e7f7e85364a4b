-- The cost ledger: one row per settled call, append-only.
-- Money is integer picodollars (1e-12 USD), so sums are exact.
CREATE TABLE ledger_entries (
    id                          INTEGER PRIMARY KEY,
    request_id                  TEXT    NOT NULL UNIQUE,
    day                         TEXT    NOT NULL,           -- UTC date, YYYY-MM-DD
    started_at                  REAL    NOT NULL,           -- unix seconds
    finished_at                 REAL    NOT NULL,
    provider                    TEXT    NOT NULL,
    model                       TEXT    NOT NULL,
    endpoint                    TEXT    NOT NULL,
    tier                        TEXT    NOT NULL,           -- the tier actually served
    operation                   TEXT,
    uid                         INTEGER,
    status                      INTEGER NOT NULL,           -- HTTP status of the answer
    input_tokens                INTEGER NOT NULL,
    cached_input_tokens         INTEGER NOT NULL,
    output_tokens               INTEGER NOT NULL,
    reasoning_tokens            INTEGER NOT NULL,
    usage_estimated             INTEGER NOT NULL,           -- 1 when the answer gave no usage
    cost_picodollars            INTEGER,                    -- NULL: the model has no price
    standard_cost_picodollars   INTEGER                     -- what it would cost at list price
);
CREATE INDEX ledger_entries_day ON ledger_entries (day);
