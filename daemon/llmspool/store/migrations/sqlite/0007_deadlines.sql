-- Deadlines in the ledger: each entry says how long its caller gave it (from submission to
-- deadline: a job's from the job's creation; NULL: no deadline) and whether it finished late,
-- so that `llmspool costs --by deadline` shows spend and late requests per deadline class.
ALTER TABLE ledger_entries ADD COLUMN deadline_window REAL;
ALTER TABLE ledger_entries ADD COLUMN late INTEGER NOT NULL DEFAULT 0;

-- The rollup gains the deadline class as a dimension and counts late calls. Rows written
-- before this migration have an unknown class ('').
CREATE TABLE ledger_rollup_v2 (
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
    PRIMARY KEY (day, provider, model, tier, operation, uid, saving_source, deadline)
) WITHOUT ROWID;

INSERT INTO ledger_rollup_v2
SELECT day, provider, model, tier, operation, uid, saving_source, '', calls, input_tokens,
       cached_input_tokens, output_tokens, cost_picodollars, standard_cost_picodollars,
       unpriced_calls, estimated_calls, 0
FROM ledger_rollup;

DROP TRIGGER ledger_rollup_after_insert;
DROP TABLE ledger_rollup;
ALTER TABLE ledger_rollup_v2 RENAME TO ledger_rollup;

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
        NEW.late
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
