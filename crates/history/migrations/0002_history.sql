-- regrelay schema 2: delivery history in Harbor's shape (SPEC §5): executions, tasks, task logs.
--
-- Applied once, in one transaction, by `Database::migrate` (see src/migrate.rs). Never edit a
-- migration that has shipped: add the next numbered file instead.
--
-- One execution and one task per delivery (event × policy × target), keyed by the delivery's
-- history key; every attempt adds one task_logs row. Deleting a policy deletes its executions,
-- which delete their tasks, which delete their log lines, all in the policy's DELETE statement.
--
-- Statuses are Harbor's names (Pending, Scheduled, Running, Stopped, Error, Success); triggers are
-- EVENT, MANUAL (test deliveries) and RETRY (replays). Both are checked here so a bug cannot store a
-- value the API would then fail to decode.

CREATE TABLE executions (
    id             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    vendor_type    TEXT NOT NULL CHECK (vendor_type IN ('WEBHOOK', 'SLACK')),
    -- The policy id (Harbor's name for it).
    vendor_id      BIGINT NOT NULL REFERENCES notification_policies (id) ON DELETE CASCADE,
    status         TEXT NOT NULL
        CHECK (status IN ('Pending', 'Scheduled', 'Running', 'Stopped', 'Error', 'Success')),
    status_message TEXT NOT NULL DEFAULT '',
    trigger        TEXT NOT NULL CHECK (trigger IN ('EVENT', 'MANUAL', 'RETRY')),
    event_type     TEXT NOT NULL,
    -- {"event_type": ..., "payload": <the exact body sent, as a JSON string>}; no "payload" key
    -- before the first attempt.
    extra_attrs    JSONB NOT NULL DEFAULT '{}',
    -- The delivery's stable key: a redelivered record finds its execution by it.
    history_key    UUID NOT NULL,
    event_id       UUID NOT NULL,
    start_time     TIMESTAMPTZ NOT NULL,
    -- NULL while the execution is unfinished.
    end_time       TIMESTAMPTZ,
    CONSTRAINT executions_history_key_key UNIQUE (history_key)
);

-- The API's list: a policy's executions, newest first.
CREATE INDEX executions_vendor_id_idx ON executions (vendor_id, id DESC);
-- The list's filters (`q=status=Error`, `q=event_type=PUSH_ARTIFACT`), and lasttrigger's newest
-- execution per (policy, event type).
CREATE INDEX executions_vendor_status_idx ON executions (vendor_id, status, id DESC);
CREATE INDEX executions_vendor_event_type_idx ON executions (vendor_id, event_type, id DESC);
-- Retention by age: a policy's finished executions by end time.
CREATE INDEX executions_vendor_end_time_idx ON executions (vendor_id, end_time)
    WHERE end_time IS NOT NULL;

CREATE TABLE tasks (
    id             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    execution_id   BIGINT NOT NULL REFERENCES executions (id) ON DELETE CASCADE,
    status         TEXT NOT NULL
        CHECK (status IN ('Pending', 'Scheduled', 'Running', 'Stopped', 'Error', 'Success')),
    status_message TEXT NOT NULL DEFAULT '',
    -- Attempts made so far. A record with a lower run_count than the stored one is stale.
    run_count      INTEGER NOT NULL DEFAULT 0,
    extra_attrs    JSONB NOT NULL DEFAULT '{}',
    creation_time  TIMESTAMPTZ NOT NULL,
    update_time    TIMESTAMPTZ NOT NULL,
    start_time     TIMESTAMPTZ NOT NULL,
    -- NULL while the task is unfinished.
    end_time       TIMESTAMPTZ
);

-- An execution's tasks, and the cascade from executions (PostgreSQL does not index foreign keys).
CREATE INDEX tasks_execution_id_idx ON tasks (execution_id, id DESC);

CREATE TABLE task_logs (
    id               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task_id          BIGINT NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    -- 1 for the first attempt.
    attempt          INTEGER NOT NULL,
    time             TIMESTAMPTZ NOT NULL,
    -- NULL when no response came (timeout, refused, blocked address, ...).
    status_code      INTEGER,
    error            TEXT,
    duration_ms      BIGINT NOT NULL,
    -- The start of the receiver's answer, credentials already blanked by the consumer.
    response_snippet TEXT,
    -- One line per attempt: a redelivered record adds nothing. Also the index of a task's log.
    CONSTRAINT task_logs_task_attempt_key UNIQUE (task_id, attempt)
);
