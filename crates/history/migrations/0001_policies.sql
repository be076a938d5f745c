-- regrelay schema 1: projects, webhook policies, settings and the change generation.
--
-- Applied once, in one transaction, by `Database::migrate` (see src/migrate.rs). Never edit a
-- migration that has shipped: add the next numbered file instead.
--
-- Room is left for the history issue's tables (executions, tasks, task logs, SPEC §5). They come in
-- the next migration; `executions.vendor_id` will reference notification_policies(id)
-- ON DELETE CASCADE, and tasks/logs will cascade from executions, so deleting a policy deletes its
-- whole history in the same statement.

-- A project is named by the namespace of the events; its id is stable once assigned.
CREATE TABLE projects (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name          TEXT NOT NULL,
    creation_time TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT projects_name_key UNIQUE (name)
);

-- Webhook policies (Harbor's notification_policy). project_id NULL: a system-wide policy that
-- matches every project.
--
-- `targets` is the JSON of Vec<policy::Target>. It holds credentials (auth_header, the signing
-- secret, custom header values) as given, in plain text: the consumer must send them. At-rest
-- encryption of these fields is a later concern; until then, protect the database and its backups.
CREATE TABLE notification_policies (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    project_id    BIGINT REFERENCES projects (id) ON DELETE CASCADE,
    name          TEXT NOT NULL,
    description   TEXT NOT NULL DEFAULT '',
    targets       JSONB NOT NULL,
    -- EventType::as_str() names, e.g. {PUSH_ARTIFACT,PULL_ARTIFACT}.
    event_types   TEXT[] NOT NULL,
    -- The JSON of policy::Filters.
    filters       JSONB NOT NULL DEFAULT '{}',
    creator       TEXT NOT NULL DEFAULT '',
    enabled       BOOLEAN NOT NULL DEFAULT TRUE,
    creation_time TIMESTAMPTZ NOT NULL DEFAULT now(),
    update_time   TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- A name is unique within its project, and among the system-wide policies (project id 0 never
-- exists: identities start at 1).
CREATE UNIQUE INDEX notification_policies_scope_name_key
    ON notification_policies ((COALESCE(project_id, 0)), name);

-- The consumer loads the enabled policies on every generation change.
CREATE INDEX notification_policies_enabled_idx ON notification_policies (enabled);

-- System-wide settings: exactly one row.
CREATE TABLE settings (
    id                   BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (id),
    -- Harbor's notification_enable ("Webhooks enabled"): off pauses every delivery.
    notification_enabled BOOLEAN NOT NULL DEFAULT TRUE
);
INSERT INTO settings (id) VALUES (TRUE);

-- The change generation: exactly one row, bumped in the same transaction as every write to
-- notification_policies or settings. Consumers read it every second and reload when it moved.
CREATE TABLE store_generation (
    id         BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (id),
    generation BIGINT NOT NULL DEFAULT 0
);
INSERT INTO store_generation (id) VALUES (TRUE);
