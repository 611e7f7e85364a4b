-- Live daemons sharing one PostgreSQL store work each other's queued requests (issue 20): a
-- request names the daemon that claimed it, which alone sends it. SQLite serves one daemon and
-- never sets it, but has the column, so the store's SQL is one text for both backends.
ALTER TABLE job_requests ADD COLUMN claimed_by TEXT;
