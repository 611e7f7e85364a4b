-- Budgets and reports. Each ledger entry now says its session (x-llmspool-session), a flag
-- for entries billed on a guess (unknown_tier: billed at the highest known price; unpriced: no
-- price at all), and where its saving came from (tier, cache, dedup, routing).
ALTER TABLE ledger_entries ADD COLUMN session TEXT;
ALTER TABLE ledger_entries ADD COLUMN flag TEXT;
ALTER TABLE ledger_entries ADD COLUMN saving_source TEXT;
CREATE INDEX ledger_entries_session ON ledger_entries (session) WHERE session IS NOT NULL;

-- Daily totals per (day, provider, model, tier, operation, uid, saving source), kept by a
-- trigger in the same transaction as each entry, so reports over millions of entries read a
-- few thousand rows, and a repeated entry (INSERT OR IGNORE) is never counted twice.
CREATE TABLE ledger_rollup (
    day                         TEXT    NOT NULL,
    provider                    TEXT    NOT NULL,
    model                       TEXT    NOT NULL,
    tier                        TEXT    NOT NULL,
    operation                   TEXT    NOT NULL,   -- '' when none
    uid                         INTEGER NOT NULL,   -- -1 when unknown
    saving_source               TEXT    NOT NULL,   -- '' when none
    calls                       INTEGER NOT NULL,
    input_tokens                INTEGER NOT NULL,
    cached_input_tokens         INTEGER NOT NULL,
    output_tokens               INTEGER NOT NULL,
    cost_picodollars            INTEGER NOT NULL,   -- priced entries only
    standard_cost_picodollars   INTEGER NOT NULL,   -- what the priced entries cost at list price
    unpriced_calls              INTEGER NOT NULL,
    estimated_calls             INTEGER NOT NULL,   -- usage estimated, or flagged
    PRIMARY KEY (day, provider, model, tier, operation, uid, saving_source)
) WITHOUT ROWID;

CREATE TRIGGER ledger_rollup_after_insert AFTER INSERT ON ledger_entries
BEGIN
    INSERT INTO ledger_rollup VALUES (
        NEW.day, NEW.provider, NEW.model, NEW.tier, COALESCE(NEW.operation, ''),
        COALESCE(NEW.uid, -1), COALESCE(NEW.saving_source, ''),
        1, NEW.input_tokens, NEW.cached_input_tokens, NEW.output_tokens,
        COALESCE(NEW.cost_picodollars, 0),
        CASE WHEN NEW.cost_picodollars IS NULL THEN 0
             ELSE COALESCE(NEW.standard_cost_picodollars, NEW.cost_picodollars) END,
        NEW.cost_picodollars IS NULL,
        NEW.usage_estimated OR NEW.flag IS NOT NULL
    )
    ON CONFLICT DO UPDATE SET
        calls = calls + 1,
        input_tokens = input_tokens + excluded.input_tokens,
        cached_input_tokens = cached_input_tokens + excluded.cached_input_tokens,
        output_tokens = output_tokens + excluded.output_tokens,
        cost_picodollars = cost_picodollars + excluded.cost_picodollars,
        standard_cost_picodollars = standard_cost_picodollars + excluded.standard_cost_picodollars,
        unpriced_calls = unpriced_calls + excluded.unpriced_calls,
        estimated_calls = estimated_calls + excluded.estimated_calls;
END;

-- Entries written before this migration, into the rollup.
INSERT INTO ledger_rollup
SELECT day, provider, model, tier, COALESCE(operation, ''), COALESCE(uid, -1), '',
       COUNT(*), SUM(input_tokens), SUM(cached_input_tokens), SUM(output_tokens),
       COALESCE(SUM(cost_picodollars), 0),
       COALESCE(SUM(CASE WHEN cost_picodollars IS NULL THEN 0
                         ELSE COALESCE(standard_cost_picodollars, cost_picodollars) END), 0),
       SUM(cost_picodollars IS NULL), SUM(usage_estimated)
FROM ledger_entries GROUP BY 1, 2, 3, 4, 5, 6, 7;
