-- Several daemons share this database (issue 20): one ledger, one set of budgets, and leases.
-- Paired with sqlite/0011_fleet.sql, which adds the same two columns.

-- Which daemon ([store] name) made each ledger entry's call, and holds each reservation.
ALTER TABLE ledger_entries ADD COLUMN daemon TEXT;
ALTER TABLE reservations ADD COLUMN daemon TEXT;
-- The daemon that accepted a job, and that made a batch: in a shared store each daemon works
-- its own deferred work (NULL: made before daemons had names, or on SQLite: the one daemon's).
ALTER TABLE jobs ADD COLUMN daemon TEXT;
ALTER TABLE batches ADD COLUMN daemon TEXT;
CREATE INDEX reservations_daemon ON reservations (daemon);

-- The daemons of the fleet: each renews its lease ([store] lease) while it runs. A daemon
-- whose lease has run out is dead: another settles the calls it had in flight.
-- Times are the database server's clock (seconds since the epoch), the one every host shares.
CREATE TABLE daemons (
    name            TEXT    PRIMARY KEY,
    host            TEXT    NOT NULL,
    pid             BIGINT  NOT NULL,
    version         TEXT    NOT NULL,
    started_at      DOUBLE PRECISION NOT NULL,
    renewed_at      DOUBLE PRECISION NOT NULL,
    lease_until     DOUBLE PRECISION NOT NULL
);

-- Spent and reserved picodollars by budget scope, across the fleet: what admissions check
-- caps against. ``period`` is the UTC day for the daily scopes (day, operation, user,
-- provider) and '' for a session. Kept by the triggers below in the same transaction as every
-- reservation and ledger entry, whoever writes them, so it can never drift from the ledger.
CREATE TABLE budget_usage (
    period          TEXT    NOT NULL,
    kind            TEXT    NOT NULL,   -- day, operation, user, provider, session
    key             TEXT    NOT NULL,   -- '' for day; the operation ('' none), uid ('None'), ...
    spent           BIGINT  NOT NULL DEFAULT 0,
    reserved        BIGINT  NOT NULL DEFAULT 0,
    PRIMARY KEY (period, kind, key)
);

-- Every money write of every daemon takes this transaction lock first, so two daemons never
-- decide against the same budget row at once and never lock budget rows in opposite orders.
CREATE FUNCTION llmspool_money_lock() RETURNS void LANGUAGE sql AS $$
    SELECT pg_advisory_xact_lock(7020725431020725431)
$$;

CREATE FUNCTION llmspool_utc_day(seconds DOUBLE PRECISION) RETURNS TEXT LANGUAGE sql
IMMUTABLE PARALLEL SAFE AS $$
    SELECT to_char(to_timestamp(seconds) AT TIME ZONE 'UTC', 'YYYY-MM-DD')
$$;

-- Add to the usage of every scope a call counts in (as the ledger's Budgets key them).
-- PL/pgSQL, whose plans are kept for the session (a SQL function's are made on every call).
CREATE FUNCTION llmspool_budget_add(day TEXT, operation TEXT, uid BIGINT, provider TEXT,
                                    session TEXT, spent_delta BIGINT, reserved_delta BIGINT)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(7020725431020725431);  -- llmspool_money_lock()
    INSERT INTO budget_usage AS u (period, kind, key, spent, reserved)
    VALUES (day, 'day', '', spent_delta, reserved_delta),
           (day, 'operation', COALESCE(operation, ''), spent_delta, reserved_delta),
           (day, 'provider', provider, spent_delta, reserved_delta),
           (day, 'user', COALESCE(uid::TEXT, 'None'), spent_delta, reserved_delta)
    ON CONFLICT (period, kind, key) DO UPDATE
        SET spent = u.spent + excluded.spent, reserved = u.reserved + excluded.reserved;
    IF session IS NOT NULL THEN
        INSERT INTO budget_usage AS u (period, kind, key, spent, reserved)
        VALUES ('', 'session', session, spent_delta, reserved_delta)
        ON CONFLICT (period, kind, key) DO UPDATE
            SET spent = u.spent + excluded.spent, reserved = u.reserved + excluded.reserved;
    END IF;
END;
$$;

CREATE FUNCTION llmspool_reservation_usage() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('DELETE', 'UPDATE') THEN
        PERFORM llmspool_budget_add(llmspool_utc_day(OLD.reserved_at), OLD.operation, OLD.uid,
                                    OLD.provider, OLD.session, 0, -OLD.estimate_picodollars);
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        PERFORM llmspool_budget_add(llmspool_utc_day(NEW.reserved_at), NEW.operation, NEW.uid,
                                    NEW.provider, NEW.session, 0, NEW.estimate_picodollars);
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER reservations_usage AFTER INSERT OR UPDATE OR DELETE ON reservations
FOR EACH ROW EXECUTE FUNCTION llmspool_reservation_usage();

CREATE FUNCTION llmspool_entry_usage() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM llmspool_budget_add(NEW.day, NEW.operation, NEW.uid, NEW.provider, NEW.session,
                                COALESCE(NEW.cost_picodollars, 0), 0);
    RETURN NULL;
END;
$$;

CREATE TRIGGER ledger_entries_usage AFTER INSERT ON ledger_entries
FOR EACH ROW EXECUTE FUNCTION llmspool_entry_usage();
