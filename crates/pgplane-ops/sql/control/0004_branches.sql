-- Template databases and branch databases (issue 4). A row exists before its database
-- does (claim before create) and is deleted only after the database is dropped, so no
-- database with a branch's name is ever left unmanaged.
CREATE TABLE pgplane.templates (
    env        text        NOT NULL,
    name       text        NOT NULL,
    server     text        NOT NULL,
    module     text        NOT NULL,
    -- The database being built while a (re)build runs: dropped by the next build if left over.
    building   text,
    sources    jsonb       NOT NULL DEFAULT '[]',
    built_at   timestamptz,
    PRIMARY KEY (env, name)
);

CREATE TABLE pgplane.branches (
    env          text        NOT NULL,
    id           text        NOT NULL,
    database     text        NOT NULL,
    server       text        NOT NULL,
    template     text        NOT NULL,
    labels       jsonb       NOT NULL DEFAULT '{}',
    sources      jsonb       NOT NULL DEFAULT '[]',
    contexts     jsonb       NOT NULL DEFAULT '[]',
    status       text        NOT NULL CHECK (status IN ('RUNNING', 'SUCCESS', 'FAILED')),
    error        text,
    failure      jsonb,
    operation_id bigint,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz,
    PRIMARY KEY (env, id),
    UNIQUE (server, database)
);
CREATE INDEX branches_template ON pgplane.branches (env, template);
