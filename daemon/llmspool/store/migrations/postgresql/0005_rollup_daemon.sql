-- The daemon is a rollup dimension, so `llmspool costs --by daemon` shows what each daemon of
-- the fleet spent (paired with sqlite/0013_rollup_daemon.sql). Rows written before this
-- migration have no daemon ('').
ALTER TABLE ledger_rollup ADD COLUMN daemon TEXT NOT NULL DEFAULT '';
ALTER TABLE ledger_rollup DROP CONSTRAINT ledger_rollup_pkey;
ALTER TABLE ledger_rollup ADD PRIMARY KEY
    (day, provider, model, tier, operation, uid, saving_source, deadline, daemon);

CREATE OR REPLACE FUNCTION ledger_rollup_after_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO ledger_rollup AS r VALUES (
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
        CASE WHEN NEW.cost_picodollars IS NULL THEN 1 ELSE 0 END,
        CASE WHEN NEW.usage_estimated <> 0 OR NEW.flag IS NOT NULL THEN 1 ELSE 0 END,
        NEW.late,
        COALESCE(NEW.daemon, '')
    )
    ON CONFLICT (day, provider, model, tier, operation, uid, saving_source, deadline, daemon)
    DO UPDATE SET
        calls = r.calls + 1,
        input_tokens = r.input_tokens + excluded.input_tokens,
        cached_input_tokens = r.cached_input_tokens + excluded.cached_input_tokens,
        output_tokens = r.output_tokens + excluded.output_tokens,
        cost_picodollars = r.cost_picodollars + excluded.cost_picodollars,
        standard_cost_picodollars = r.standard_cost_picodollars + excluded.standard_cost_picodollars,
        unpriced_calls = r.unpriced_calls + excluded.unpriced_calls,
        estimated_calls = r.estimated_calls + excluded.estimated_calls,
        late_calls = r.late_calls + excluded.late_calls;
    RETURN NULL;
END;
$$;
