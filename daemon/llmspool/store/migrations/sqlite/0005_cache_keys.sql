-- The response cache (cache.sqlite3) keys a request's answer by its scope and canonical body
-- (cache/keys.py). A queued request that the cache may answer records its key and how long its
-- answer is kept, so that a batch's answers fill the cache, and a new identical request can
-- wait for one still in a pending batch instead of paying again.
ALTER TABLE job_requests ADD COLUMN cache_key BLOB;
ALTER TABLE job_requests ADD COLUMN cache_ttl REAL;
CREATE INDEX job_requests_cache_key ON job_requests (cache_key)
    WHERE cache_key IS NOT NULL AND state = 'queued';
