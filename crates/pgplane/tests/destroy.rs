//! `pgplane destroy` end to end: an environment with modules, tenants (schema and database
//! per tenant), read-only roles, an extension, a template and branches is destroyed in one
//! step; the catalog and the control database keep nothing of it, objects re-created
//! outside pgplane under its names are left alone, and another environment on the same
//! server is untouched.

#![allow(clippy::unwrap_used)]

mod common;

use common::{lines, MASTER, T};

fn modules(extra: &str) -> String {
    format!(
        "modules:
  - name: registry
    storage: database
    readonly_role: true
    extensions: [pg_trgm]
  - name: users
    storage: schema-per-tenant
    readonly_role: true
  - name: files
    storage: database-per-tenant
tenants:
  - name: acme
    modules: [users, files]
  - name: globex
    modules: [users, files]
{extra}"
    )
}

/// Control-database rows that still mention `env`, table by table (empty: none).
fn control_rows(t: &T, env: &str) -> Vec<String> {
    let q = format!(
        "SELECT 'objects ' || count(*) FROM pgplane.objects WHERE env = '{env}' HAVING count(*) > 0
         UNION ALL SELECT 'branches ' || count(*) FROM pgplane.branches WHERE env = '{env}' HAVING count(*) > 0
         UNION ALL SELECT 'templates ' || count(*) FROM pgplane.templates WHERE env = '{env}' HAVING count(*) > 0
         UNION ALL SELECT 'observations ' || count(*) FROM pgplane.observations WHERE database LIKE '{env}\\_%' HAVING count(*) > 0
         UNION ALL SELECT 'role_secrets ' || count(*) FROM pgplane.role_secrets WHERE role LIKE '{env}\\_%' HAVING count(*) > 0
         UNION ALL SELECT 'unfinished jobs ' || count(*) FROM pgplane.jobs WHERE env = '{env}' AND status IN ('queued', 'running') HAVING count(*) > 0"
    );
    lines(&t.sql("pgplane", &q))
}

#[test]
fn destroy_drops_the_whole_environment_and_nothing_else() {
    let t = T::new("dsa");
    t.write("model/master/changelog.yaml", MASTER);
    let a = t.manifest_named(
        "a.yaml",
        &modules(
            "templates:\n  - name: dsa_tpl\n    module: registry\n    sources: [model/master/changelog.yaml]\n\
             branches:\n  database: \"{template}_{branch}\"\n  readonly_role: dsa_reader\n",
        ),
    );
    let a = a.to_str().unwrap();
    // Another environment on the same server, from the same modules.
    let b = t.manifest_named("b.yaml", &modules(""));
    let b = b.to_str().unwrap();
    t.pgplane(&["apply", "-f", a, "--yes"]).ok();
    t.pgplane(&["apply", "-f", b, "--env", "dsb", "--yes"]).ok();
    t.pgplane(&["template", "build", "dsa_tpl", "-f", a]).ok();
    t.pgplane(&["branch", "create", "mr-1", "--template", "dsa_tpl", "-f", a]).ok();
    t.pgplane(&["branch", "create", "mr-2", "--template", "dsa_tpl", "-f", a]).ok();
    t.sql("dsa_acme_files", "CREATE TABLE blobs (b bytea)");
    // Re-created outside pgplane under managed names: not pgplane's any more.
    t.sql("postgres", "DROP DATABASE dsa_globex_files WITH (FORCE)");
    t.sql("postgres", "CREATE DATABASE dsa_globex_files");
    t.sql("dsa_registry", "DROP OWNED BY dsa_registry_readonly");
    t.sql(
        "postgres",
        "DROP OWNED BY dsa_registry_readonly; DROP ROLE dsa_registry_readonly; CREATE ROLE dsa_registry_readonly",
    );
    t.sql("postgres", "DROP DATABASE dsa_tpl_mr_2 WITH (FORCE)");
    t.sql("postgres", "CREATE DATABASE dsa_tpl_mr_2");
    let before_b = t.sql(
        "postgres",
        "SELECT string_agg(datname || ':' || oid, ',' ORDER BY datname) FROM pg_database WHERE datname LIKE 'dsb\\_%'",
    );
    let roles_b = t.sql(
        "postgres",
        "SELECT string_agg(rolname || ':' || oid, ',' ORDER BY rolname) FROM pg_roles WHERE rolname LIKE 'dsb\\_%'",
    );

    // Destructive: refused without --yes when stdin is not a terminal; nothing changes.
    let run = t.pgplane(&["destroy", "--env", "dsa", "-f", a]).fails();
    assert!(
        run.stderr.contains("refusing to destroy without confirmation") && run.stderr.contains("--yes"),
        "{}",
        run.stderr
    );
    // --dry-run shows the plan and changes nothing.
    let dry = t.pgplane(&["destroy", "--env", "dsa", "-f", a, "--dry-run"]).ok();
    for want in [
        "drop template dsa_tpl (database dsa_tpl)",
        "drop branch mr-1 (database dsa_tpl_mr_1)",
        "forget branch mr-2 (database dsa_tpl_mr_2)",
        "drop_database database dsa_registry",
        "drop_role role dsa_acme_users",
        "drop_role role dsa_reader",
        "forget extension dsa_registry.pg_trgm  [main]  (its database was dropped)",
        "database dsa_globex_files is not the one pgplane created",
        "role dsa_registry_readonly is not the one pgplane created",
    ] {
        assert!(dry.stdout.contains(want), "missing {want:?} in:\n{}", dry.stdout);
    }
    assert_eq!(t.catalog_names().1.len(), 7, "{:?}", t.catalog_names());

    let run = t.pgplane(&["destroy", "--env", "dsa", "-f", a, "--yes", "--json"]).ok();
    let doc = run.json();
    assert!(doc["applied"].as_u64().unwrap() > 20, "{doc}");
    assert_eq!(doc["remaining"], serde_json::json!([]), "{doc}");
    let job = doc["job"].as_i64().unwrap();
    assert_eq!(
        t.sql("pgplane", &format!("SELECT kind || ' ' || status || ' ' || env FROM pgplane.jobs WHERE id = {job}")),
        "destroy succeeded dsa"
    );

    // The catalog: only the two objects re-created outside pgplane are left, as they were.
    let (roles, dbs) = t.catalog_names();
    assert_eq!(roles, vec!["dsa_registry_readonly"]);
    assert_eq!(dbs, vec!["dsa_globex_files", "dsa_tpl_mr_2"]);
    assert_eq!(t.sql("postgres", "SELECT count(*) FROM pg_roles WHERE rolname = 'dsa_reader'"), "0");
    // The control database: no record of the environment.
    assert_eq!(control_rows(&t, "dsa"), Vec::<String>::new());
    // The other environment: untouched, same OIDs, nothing for apply to do.
    assert_eq!(
        t.sql("postgres", "SELECT string_agg(datname || ':' || oid, ',' ORDER BY datname) FROM pg_database WHERE datname LIKE 'dsb\\_%'"),
        before_b
    );
    assert_eq!(
        t.sql(
            "postgres",
            "SELECT string_agg(rolname || ':' || oid, ',' ORDER BY rolname) FROM pg_roles WHERE rolname LIKE 'dsb\\_%'"
        ),
        roles_b
    );
    assert!(t.sql("pgplane", "SELECT count(*) FROM pgplane.objects WHERE env = 'dsb'").parse::<i32>().unwrap() > 10);
    let plan = t.pgplane(&["plan", "-f", b, "--env", "dsb", "--deep"]).ok();
    assert!(plan.stdout.contains("No changes (env dsb)"), "{}", plan.stdout);

    // Again: nothing left to do.
    let again = t.pgplane(&["destroy", "--env", "dsa", "-f", a, "--yes"]).ok();
    assert!(again.stdout.contains("Nothing to destroy"), "{}", again.stdout);
    // And the environment can be provisioned anew.
    for sql in ["DROP DATABASE dsa_globex_files", "DROP DATABASE dsa_tpl_mr_2", "DROP ROLE dsa_registry_readonly"] {
        t.sql("postgres", sql);
    }
    t.pgplane(&["apply", "-f", a, "--yes"]).ok();
    assert_eq!(t.catalog_names().1.len(), 4);
}

#[test]
fn destroy_refuses_while_jobs_of_the_env_are_unfinished() {
    let t = T::new("dsj");
    let m = t.manifest("modules:\n  - name: app\n    storage: database\n");
    let m = m.to_str().unwrap();
    t.pgplane(&["apply", "-f", m, "--yes"]).ok();
    // A job of the environment still queued (as serve would leave one).
    let id = t.sql(
        "pgplane",
        "INSERT INTO pgplane.jobs (kind, env, resource, request, status) VALUES ('apply', 'dsj', NULL, '{}', 'queued') RETURNING id",
    );
    let id = lines(&id)[0].clone();
    // A `running` job whose process died (nobody holds its lock) blocks nothing.
    let dead = t.sql(
        "pgplane",
        "INSERT INTO pgplane.jobs (kind, env, request, status, attempts, worker, lease_until) \
         VALUES ('apply', 'dsj', '{}', 'running', 1, 'cli@gone:1', now()) RETURNING id",
    );
    let dead = lines(&dead)[0].clone();
    let run = t.pgplane(&["destroy", "--env", "dsj", "-f", m, "--yes"]).fails();
    assert!(!run.stderr.contains(&format!("apply {dead} ")), "{}", run.stderr);
    t.sql("pgplane", &format!("DELETE FROM pgplane.jobs WHERE id = {dead}"));
    assert!(
        run.stderr.contains(&format!("environment dsj has unfinished jobs: apply {id} (queued)"))
            && run.stderr.contains("pgplane job cancel"),
        "{}",
        run.stderr
    );
    assert_eq!(t.catalog_names().1, vec!["dsj_app"]);
    t.pgplane(&["job", "cancel", &id, "-f", m]).ok();
    t.pgplane(&["destroy", "--env", "dsj", "-f", m, "--yes"]).ok();
    assert_eq!(t.catalog_names(), (vec![], vec![]));
    assert_eq!(control_rows(&t, "dsj"), Vec::<String>::new());
    // The refused destroy is a job too, recorded as failed.
    let failed_destroy = t.sql(
        "pgplane",
        "SELECT count(*) FROM pgplane.jobs WHERE env = 'dsj' AND kind = 'destroy' AND status = 'failed'",
    );
    assert_eq!(failed_destroy, "1", "the refused destroy is recorded as a failed job");
}
