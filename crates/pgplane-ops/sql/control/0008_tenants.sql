-- Registered tenants (issue 14): tenants the CLI (`pgplane tenant add`) and the API
-- (`POST /api/v1/tenants`) create. Together with the manifest they are the desired state
-- that plan and apply compute.
CREATE TABLE pgplane.tenants (
    env        text        NOT NULL,
    name       text        NOT NULL,
    -- `{"pr": "123"}`: a tenant with labels or an expiry is a preview.
    labels     jsonb       NOT NULL DEFAULT '{}',
    expires_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (env, name)
);

-- One row per (tenant, module): the version it runs, its parameters, whether it is
-- enabled, where its storage was placed, and how the last operation on it went.
CREATE TABLE pgplane.tenant_modules (
    env            text        NOT NULL,
    tenant         text        NOT NULL,
    module         text        NOT NULL,
    -- The version whose migrations completed (NULL: the module declares no versions).
    version        text,
    -- The version an upgrade under way moves it to.
    target_version text,
    parameters     jsonb       NOT NULL DEFAULT '{}',
    state          text        NOT NULL DEFAULT 'enabled'
                   CHECK (state IN ('enabled', 'disabled', 'purging')),
    -- `server: auto` modules: chosen at first provisioning, then kept.
    server         text,
    status         text        NOT NULL DEFAULT 'pending',
    error          text,
    last_job       bigint,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (env, tenant, module),
    FOREIGN KEY (env, tenant) REFERENCES pgplane.tenants (env, name) ON DELETE CASCADE
);

-- Where manifest tenants of `server: auto` modules were placed (registered tenants keep it
-- in their row).
CREATE TABLE pgplane.tenant_placements (
    env        text        NOT NULL,
    tenant     text        NOT NULL,
    module     text        NOT NULL,
    server     text        NOT NULL,
    placed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (env, tenant, module)
);

-- Progress of upgrades, per (tenant, module, target version): a re-run of a fan-out (or
-- another worker, after a crash) skips what is done and continues with the rest.
CREATE TABLE pgplane.tenant_upgrades (
    env          text        NOT NULL,
    tenant       text        NOT NULL,
    module       text        NOT NULL,
    to_version   text        NOT NULL,
    from_version text,
    -- pending, provision, migrate, done, failed
    stage        text        NOT NULL DEFAULT 'pending'
                 CHECK (stage IN ('pending', 'provision', 'migrate', 'done', 'failed')),
    job          bigint,
    attempts     integer     NOT NULL DEFAULT 0,
    error        text,
    started_at   timestamptz,
    finished_at  timestamptz,
    PRIMARY KEY (env, tenant, module, to_version)
);
