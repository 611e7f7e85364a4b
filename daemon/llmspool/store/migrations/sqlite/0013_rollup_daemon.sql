-- The daemon is a rollup dimension (issue 20), so `llmspool costs --by daemon` shows what each
-- daemon of a fleet spent; on SQLite (one daemon) it is always ''. Appended last, as
-- PostgreSQL's ALTER TABLE puts it (postgresql/0005_rollup_daemon.sql); rows written before
-- this migration have no daemon ('').
CREATE TABLE ledger_rollup_v3 (
    day                         TEXT    NOT NULL,
    provider                    TEXT    NOT NULL,
    model                       TEXT    NOT NULL,
    tier                        TEXT    NOT NULL,
    operation                   TEXT    NOT NULL,   -- '' when none
    uid                         INTEGER NOT NULL,   -- -1 when unknown
    saving_source               TEXT    NOT NULL,   -- '' when none
    deadline                    TEXT    NOT NULL,   -- none, <=1m, <=15m, <=2h, <=24h, >24h; ''
    calls                       INTEGER NOT NULL,
    input_tokens                INTEGER NOT NULL,
    cached_input_tokens         INTEGER NOT NULL,
    output_tokens               INTEGER NOT NULL,
    cost_picodollars            INTEGER NOT NULL,
    standard_cost_picodollars   INTEGER NOT NULL,
    unpriced_calls              INTEGER NOT NULL,
    estimated_calls             INTEGER NOT NULL,
    late_calls                  INTEGER NOT NULL,
    daemon                      TEXT    NOT NULL DEFAULT '',  -- [store] name; '' when none
    PRIMARY KEY (day, provider, model, tier, operation, uid, saving_source, deadline, daemon)
) WITHOUT ROWID;

INSERT INTO ledger_rollup_v3
SELECT day, provider, model, tier, operation, uid, saving_source, deadline, calls,
       input_tokens, cached_input_tokens, output_tokens, cost_picodollars,
       standard_cost_picodollars, unpriced_calls, estimated_calls, late_calls, ''
FROM ledger_rollup;

DROP TRIGGER ledger_rollup_after_insert;
DROP TABLE ledger_rollup;
ALTER TABLE ledger_rollup_v3 RENAME TO ledger_rollup;

CREATE TRIGGER ledger_rollup_after_insert AFTER INSERT ON ledger_entries
BEGIN
    INSERT INTO ledger_rollup VALUES (
        NEW.day, NEW.provider, NEW.model, NEW.tier, COALESCE(NEW.operation, ''),
        COALESCE(NEW.uid, -1), COALESCE(NEW.saving_source, ''),
        CASE WHEN NEW.deadline_window IS NULL THEN 'none'
             WHEN NEW.deadline_window <= 60 THEN '<=1m'
             WHEN NEW.deadline_window <= 900 THEN '<=15m'
             WHEN NEW.deadline_window <= 7200 THEN '<=2h'
             WHEN NEW.deadline_window <= 86400 THEN '<=24h'
             ELSE '>24h' END,
        1, NEW.input_tokens, NEW.cached_input_tokens, NEW.output_tokens,
        COALESCE(NEW.cost_picodollars, 0),
        CASE WHEN NEW.cost_picodollars IS NULL THEN 0
             ELSE COALESCE(NEW.standard_cost_picodollars, NEW.cost_picodollars) END,
        NEW.cost_picodollars IS NULL,
        NEW.usage_estimated OR NEW.flag IS NOT NULL,
        NEW.late,
        COALESCE(NEW.daemon, '')
    )
    ON CONFLICT DO UPDATE SET
        calls = calls + 1,
        input_tokens = input_tokens + excluded.input_tokens,
        cached_input_tokens = cached_input_tokens + excluded.cached_input_tokens,
        output_tokens = output_tokens + excluded.output_tokens,
        cost_picodollars = cost_picodollars + excluded.cost_picodollars,
        standard_cost_picodollars = standard_cost_picodollars + excluded.standard_cost_picodollars,
        unpriced_calls = unpriced_calls + excluded.unpriced_calls,
        estimated_calls = estimated_calls + excluded.estimated_calls,
        late_calls = late_calls + excluded.late_calls;
END;
