-- regrelay schema 3: regrelay's chat and template target types (docs/targets.md).
--
-- Applied once, in one transaction, by `Database::migrate` (see src/migrate.rs). Never edit a
-- migration that has shipped: add the next numbered file instead.
--
-- 1. Executions of the new types keep their type's upper-case name as Harbor's vendor_type.
-- 2. The shared per-target rate state every consumer process reads and writes (module
--    `target_rates`): one row per (target key, limit), holding the limit's theoretical arrival time
--    (GCRA). The key is `<type>:<hash>` of the chat or webhook the limit counts (never a credential).

ALTER TABLE executions DROP CONSTRAINT IF EXISTS executions_vendor_type_check;
ALTER TABLE executions ADD CONSTRAINT executions_vendor_type_check CHECK (vendor_type IN
    ('WEBHOOK', 'SLACK', 'TELEGRAM', 'TEAMS', 'DISCORD', 'DINGTALK', 'FEISHU', 'WECOM', 'TEMPLATE'));

CREATE TABLE target_rate_limits (
    target_key TEXT NOT NULL,
    -- The limit as configured (`20/min`, `1/s`), or `pause` for a wait the vendor asked for.
    rate_limit TEXT NOT NULL,
    -- The theoretical arrival time: the next request conforms from tat - tolerance on.
    tat        TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (target_key, rate_limit)
);
