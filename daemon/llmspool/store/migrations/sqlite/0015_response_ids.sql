-- Which ledger entry answered with a response id (POST /v1/feedback names an answer by it),
-- kept apart from `ledger_entries` and filled after the group commits, not in them
-- (`store/response_ids.py`). OpenAI's ids are random, so an index on them takes each new
-- entry to a random page of the index: on a ledger of a million entries that made a group
-- commit on the event loop about twice as dear (358 against 183 µs for 15 entries,
-- tests/bench/bench_ledger_commit.py). Filled in a worker thread instead: moving
-- `response_ids_indexed.entry_id` (the last entry covered) forward indexes the entries it
-- passes, in the trigger below, so a batch is one statement that SQLite runs without taking
-- the interpreter lock back between steps. A lookup reads the entries past it directly.
-- SQLite only: PostgreSQL keeps its index on `ledger_entries (response_id)`, maintained in
-- the server, off the daemon's event loop.
CREATE TABLE response_ids (
    response_id TEXT    NOT NULL,
    entry_id    INTEGER NOT NULL,
    PRIMARY KEY (response_id, entry_id)
) WITHOUT ROWID;

CREATE TABLE response_ids_indexed (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    entry_id    INTEGER NOT NULL
);

-- In the old index's order: the rows go in as appends.
INSERT INTO response_ids (response_id, entry_id)
SELECT response_id, id FROM ledger_entries WHERE response_id IS NOT NULL
ORDER BY response_id, id;
INSERT INTO response_ids_indexed (id, entry_id)
VALUES (1, (SELECT COALESCE(MAX(id), 0) FROM ledger_entries));

DROP INDEX ledger_entries_response_id;

CREATE TRIGGER response_ids_indexed_moved AFTER UPDATE OF entry_id ON response_ids_indexed
BEGIN
    INSERT INTO response_ids (response_id, entry_id)
    SELECT response_id, id FROM ledger_entries
    WHERE id > OLD.entry_id AND id <= NEW.entry_id AND response_id IS NOT NULL
    ORDER BY response_id
    ON CONFLICT DO NOTHING;
END;
