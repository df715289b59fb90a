-- pgplane's own state. Versioned: see control.rs MIGRATIONS.
CREATE TABLE pgplane.objects (
    server     text        NOT NULL,
    kind       text        NOT NULL CHECK (kind IN ('role', 'database', 'schema', 'extension')),
    database   text        NOT NULL DEFAULT '',
    name       text        NOT NULL,
    env        text        NOT NULL,
    module     text        NOT NULL,
    tenant     text,
    purpose    text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (server, kind, database, name)
);
CREATE INDEX objects_env ON pgplane.objects (env);

-- Password generations: the password itself is derived from the secret key, never stored.
CREATE TABLE pgplane.role_secrets (
    server     text        NOT NULL,
    role       text        NOT NULL,
    generation integer     NOT NULL DEFAULT 1,
    rotated_at timestamptz,
    PRIMARY KEY (server, role)
);

-- Every apply and rotation, with its outcome.
CREATE TABLE pgplane.operations (
    id          bigserial   PRIMARY KEY,
    kind        text        NOT NULL,
    env         text,
    status      text        NOT NULL CHECK (status IN ('running', 'succeeded', 'failed')),
    changes     integer     NOT NULL DEFAULT 0,
    error       text,
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);
