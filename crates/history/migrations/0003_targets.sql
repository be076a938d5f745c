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

-- 3. Receiver health per policy target (module `target_health`): updated by every history batch
--    from the attempts it records (no extra round trip), read by the health API and the circuit
--    breaker. `success_rate` is an exponentially weighted average over attempts (weight 0.1 for
--    the newest). The circuit is open while `circuit_opened_at` is set; `next_probe_at` is when
--    the next single probe attempt may be made, claimed by one consumer at a time.
CREATE TABLE target_health (
    policy_id            BIGINT NOT NULL REFERENCES notification_policies (id) ON DELETE CASCADE,
    target_fingerprint   TEXT NOT NULL,
    target_type          TEXT NOT NULL,
    -- The target's address with its credentials redacted, as the policy API shows it.
    target_address       TEXT NOT NULL,
    attempts             BIGINT NOT NULL DEFAULT 0,
    successes            BIGINT NOT NULL DEFAULT 0,
    success_rate         DOUBLE PRECISION NOT NULL DEFAULT 1,
    consecutive_failures INT NOT NULL DEFAULT 0,
    last_success_at      TIMESTAMPTZ,
    last_failure_at      TIMESTAMPTZ,
    last_failure         TEXT,
    circuit_opened_at    TIMESTAMPTZ,
    next_probe_at        TIMESTAMPTZ,
    failed_probes        INT NOT NULL DEFAULT 0,
    updated_at           TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (policy_id, target_fingerprint)
);
CREATE INDEX target_health_open ON target_health (policy_id) WHERE circuit_opened_at IS NOT NULL;
