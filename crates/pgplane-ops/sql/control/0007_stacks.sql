-- Stack runs (`pgplane stack run`, issue 16): one row per run of a stack in an environment,
-- one row per step with its state. No credentials, commands or environment values are
-- stored here: only names, states, times, exit codes, redacted log tails and the
-- processes of services (pid + start time, so that a recycled pid is never signalled).
-- Numbered 100 to stay clear of other migrations written in parallel; control.rs applies
-- every version missing from schema_version, not only those above the highest.
CREATE TABLE pgplane.stack_runs (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    stack       text        NOT NULL,
    env         text        NOT NULL,
    file        text        NOT NULL,
    -- running while a runner holds the stack's advisory lock; readers report a running
    -- row without a lock holder as interrupted.
    status      text        NOT NULL CHECK (status IN ('running', 'succeeded', 'failed', 'interrupted', 'stopped')),
    host        text        NOT NULL,
    runner_pid  integer,
    options     jsonb       NOT NULL DEFAULT '{}',
    attempts    integer     NOT NULL DEFAULT 1,
    error       text,
    started_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);
CREATE INDEX stack_runs_by_stack ON pgplane.stack_runs (env, stack, id DESC);

CREATE TABLE pgplane.stack_steps (
    run_id      bigint      NOT NULL REFERENCES pgplane.stack_runs (id) ON DELETE CASCADE,
    name        text        NOT NULL,
    position    integer     NOT NULL,
    kind        text        NOT NULL CHECK (kind IN ('command', 'sql', 'wait', 'service')),
    grp         text,
    needs       jsonb       NOT NULL DEFAULT '[]',
    state       text        NOT NULL CHECK (state IN ('pending', 'running', 'waiting', 'starting', 'started',
                                                      'healthy', 'completed', 'failed', 'skipped', 'stopped')),
    -- waiting: the condition's last value; failed: why; skipped: what it needed.
    detail      text,
    exit_code   integer,
    -- the last lines of the step's log (redacted) when it failed
    log_tail    text,
    attempts    integer     NOT NULL DEFAULT 0,
    started_at  timestamptz,
    finished_at timestamptz,
    -- the step's process (a service's supervisor, a command): pid, and its start time
    -- since boot with the boot id, on host
    pid         integer,
    pid_start   text,
    host        text,
    log_path    text,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, name)
);
