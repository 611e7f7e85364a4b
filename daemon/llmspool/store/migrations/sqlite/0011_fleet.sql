-- Several daemons may share one PostgreSQL store (issue 20); each names itself ([store] name).
-- A ledger entry says which daemon made its call, and a reservation which daemon holds it, so
-- that a daemon restarting settles only its own leftovers. SQLite serves one daemon, but has
-- the same columns, so the ledger's SQL is one text for both backends.
ALTER TABLE ledger_entries ADD COLUMN daemon TEXT;
ALTER TABLE reservations ADD COLUMN daemon TEXT;
-- The daemon that accepted a job, and that made a batch: in a shared store each daemon works
-- its own deferred work (NULL: made before daemons had names, or on SQLite: the one daemon's).
ALTER TABLE jobs ADD COLUMN daemon TEXT;
ALTER TABLE batches ADD COLUMN daemon TEXT;
