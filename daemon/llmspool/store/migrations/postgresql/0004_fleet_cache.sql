-- The response cache the daemons of one store share (issue 20). Each daemon keeps its own
-- cache file in its state directory (read in microseconds on every call); on a miss there it
-- asks this table before calling upstream, and it publishes here every answer it caches, so
-- that an answer paid for by one daemon serves the whole fleet. No SQLite twin: SQLite serves
-- one daemon, whose cache file is all there is.
CREATE TABLE cache_entries (
    key                 BYTEA   PRIMARY KEY,        -- policy/cache_keys.py: scope and request
    stream              INTEGER NOT NULL,           -- 1: server-sent events, 0: one JSON body
    body                BYTEA   NOT NULL,
    provider            TEXT    NOT NULL,
    model               TEXT    NOT NULL,
    endpoint            TEXT    NOT NULL,
    tier                TEXT    NOT NULL,           -- the tier that served the original
    input_tokens        BIGINT  NOT NULL,
    cached_input_tokens BIGINT  NOT NULL,
    output_tokens       BIGINT  NOT NULL,
    reasoning_tokens    BIGINT  NOT NULL,
    created_at          DOUBLE PRECISION NOT NULL,
    expires_at          DOUBLE PRECISION NOT NULL,
    daemon              TEXT    NOT NULL            -- the daemon whose call it was
);
CREATE INDEX cache_entries_expiry ON cache_entries (expires_at);

-- Single flight across the fleet: the daemon calling upstream for a key, until it publishes
-- the answer (or gives up). Another daemon with the same call waits for the answer rather
-- than pay for it twice, within its call's deadline and at most until ``until``; a dead
-- daemon's flights are deleted when it is taken over.
CREATE TABLE cache_flights (
    key                 BYTEA   PRIMARY KEY,
    daemon              TEXT    NOT NULL,
    started_at          DOUBLE PRECISION NOT NULL,
    until               DOUBLE PRECISION NOT NULL
);
CREATE INDEX cache_flights_daemon ON cache_flights (daemon);
