-- Durable jobs (issue 13): every long operation is a row here, claimed by one worker at a
-- time under a lease. Replaces the operations journal; its rows are kept with their ids.
CREATE TABLE pgplane.jobs (
    id               bigserial   PRIMARY KEY,
    -- `apply`, `migrate`, `template_build`, `branch_create`, `branch_reset`, …
    kind             text        NOT NULL,
    env              text,
    -- What it works on, for people and filters: a branch id, a template, a tenant.
    resource         text,
    -- Jobs with the same key run one at a time, in id order.
    key              text,
    -- The typed request (never a secret).
    request          jsonb       NOT NULL DEFAULT '{}',
    -- Which workers may run it: those serving this manifest digest (NULL: any).
    fingerprint      text,
    status           text        NOT NULL DEFAULT 'queued'
                     CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    attempts         integer     NOT NULL DEFAULT 0,
    max_attempts     integer     NOT NULL DEFAULT 3 CHECK (max_attempts >= 1),
    -- The worker running the current attempt and until when its lease holds; the worker
    -- also holds the advisory lock (OP class, id) on the connection that claimed it.
    worker           text,
    lease_until      timestamptz,
    cancel_requested boolean     NOT NULL DEFAULT false,
    run_after        timestamptz NOT NULL DEFAULT now(),
    stages           jsonb       NOT NULL DEFAULT '[]',
    result           jsonb,
    changes          integer     NOT NULL DEFAULT 0,
    error            text,
    error_code       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    claimed_at       timestamptz,
    finished_at      timestamptz
);
CREATE INDEX jobs_queued ON pgplane.jobs (id) WHERE status = 'queued';
CREATE INDEX jobs_running ON pgplane.jobs (lease_until) WHERE status = 'running';
CREATE INDEX jobs_key ON pgplane.jobs (key, id) WHERE key IS NOT NULL AND status IN ('queued', 'running');
CREATE INDEX jobs_env ON pgplane.jobs (env, id);

INSERT INTO pgplane.jobs (id, kind, env, status, attempts, max_attempts, changes, error,
                          created_at, claimed_at, finished_at)
SELECT id, kind, env,
       CASE WHEN status = 'running' THEN 'failed' ELSE status END,
       1, 1, changes,
       CASE WHEN status = 'running'
            THEN 'interrupted: the pgplane process running this operation stopped before it finished'
            ELSE error END,
       started_at, started_at, COALESCE(finished_at, now())
  FROM pgplane.operations;
SELECT pg_catalog.setval(pg_catalog.pg_get_serial_sequence('pgplane.jobs', 'id'),
                         COALESCE((SELECT max(id) FROM pgplane.jobs), 0) + 1, false);
DROP TABLE pgplane.operations;
