//! The tenant lifecycle end to end (issue 14): `pgplane tenant add|upgrade|disable|enable|
//! remove|list|show|gc` and `/api/v1/tenants`, against a real server, with the catalog and
//! the ledgers checked afterwards.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{lines, psql, T};

/// A SQL folder module with two versions (`target:` cuts one folder) and a parameter that
/// loads reference data from a subfolder.
fn users_module(t: &T, extra_v2: &str) -> String {
    t.write(
        "db/users/V1__users.sql",
        "CREATE TABLE users (id int PRIMARY KEY, name text);\nINSERT INTO users VALUES (1, 'first');\n",
    );
    t.write("db/users/V2__email.sql", &format!("{extra_v2}ALTER TABLE users ADD COLUMN email text;\n"));
    t.write("db/users/V3__index.sql", "CREATE INDEX users_email ON users (email);\n");
    t.write(
        "db/users/reference/R__countries.sql",
        "CREATE TABLE IF NOT EXISTS countries (code text PRIMARY KEY);\nINSERT INTO countries VALUES ('fr') ON CONFLICT DO NOTHING;\n",
    );
    "modules:\n  - name: users\n    storage: schema-per-tenant\n    migrations: db/users\n    versions:\n      - {version: \"1.0\", target: \"1\"}\n      - {version: \"2.0\", target: \"3\"}\n    parameters:\n      loadReference: {folder: reference}\n".to_string()
}

fn control(t: &T, sql: &str) -> String {
    t.sql("pgplane", sql)
}

fn version(t: &T, tenant: &str, module: &str) -> String {
    control(
        t,
        &format!(
            "SELECT coalesce(version, '-') || '/' || state || '/' || status FROM pgplane.tenant_modules \
             WHERE env = '{}' AND tenant = '{tenant}' AND module = '{module}'",
            t.env
        ),
    )
}

fn exists(t: &T, db: &str, sql: &str) -> bool {
    t.sql(db, &format!("SELECT EXISTS ({sql})")) == "t"
}

#[test]
fn tenant_lifecycle_add_upgrade_disable_enable_purge() {
    let t = T::new("tlife");
    let body = users_module(&t, "");
    let f = t.manifest(&body);
    let f = f.to_str().unwrap();
    let db = "tlife_users";

    // add: two tenants, one with reference data.
    let out =
        t.pgplane(&["tenant", "add", "acme", "--module", "users@1.0", "--param", "loadReference=true", "-f", f]).ok();
    assert!(out.stdout.contains("create_schema schema tlife_users.acme_users"), "{}", out.stdout);
    t.pgplane(&["tenant", "add", "globex", "--module", "users", "-f", f]).ok();
    assert_eq!(version(&t, "acme", "users"), "1.0/enabled/ready");
    assert_eq!(version(&t, "globex", "users"), "2.0/enabled/ready", "@VERSION omitted: the newest");
    assert_eq!(t.sql(db, "SELECT string_agg(version, ',' ORDER BY installed_rank) FROM acme_users.pgplane_schema_history WHERE version IS NOT NULL"), "1");
    assert!(exists(&t, db, "SELECT 1 FROM pg_tables WHERE schemaname = 'acme_users' AND tablename = 'countries'"));
    assert!(
        !exists(&t, db, "SELECT 1 FROM pg_tables WHERE schemaname = 'globex_users' AND tablename = 'countries'"),
        "parameter off: no reference data"
    );
    assert!(!exists(
        &t,
        db,
        "SELECT 1 FROM information_schema.columns WHERE table_schema = 'acme_users' AND column_name = 'email'"
    ));

    // Registered tenants are desired state: plan and apply --prune leave them alone.
    let plan = t.pgplane(&["plan", "-f", f, "--prune"]).ok();
    assert!(plan.stdout.contains("No changes"), "{}", plan.stdout);
    t.pgplane(&["apply", "-f", f, "--prune", "--yes"]).ok();
    assert_eq!(
        lines(&t.sql("postgres", "SELECT rolname FROM pg_roles WHERE rolname LIKE 'tlife\\_%' ORDER BY 1")),
        ["tlife_acme_users", "tlife_globex_users", "tlife_users"]
    );

    // Isolation: each tenant's role reaches its own schema only.
    let acme = t.credentials(&["users", "-f", f, "--tenant", "acme"]);
    let globex = t.credentials(&["users", "-f", f, "--tenant", "globex"]);
    assert_eq!(psql(&acme, "SELECT name FROM users").unwrap(), "first");
    let denied = psql(&globex, "SELECT * FROM acme_users.users").unwrap_err();
    assert!(denied.contains("permission denied for schema acme_users"), "{denied}");

    // upgrade --dry-run: the plan and the migrations that would run; nothing changes.
    let dry = t.pgplane(&["tenant", "upgrade", "acme", "--module", "users@2.0", "--dry-run", "-f", f]).ok();
    assert!(
        dry.stdout.contains("would apply V2__email.sql") && dry.stdout.contains("would apply V3__index.sql"),
        "{}",
        dry.stdout
    );
    assert!(
        !dry.stdout.contains("would apply V1__users.sql"),
        "an upgrade runs only what the version adds: {}",
        dry.stdout
    );
    assert_eq!(version(&t, "acme", "users"), "1.0/enabled/ready");
    // upgrade: V2 and V3 run once, as the tenant's role.
    t.pgplane(&["tenant", "upgrade", "acme", "--module", "users@2.0", "-f", f]).ok();
    assert_eq!(version(&t, "acme", "users"), "2.0/enabled/ready");
    assert_eq!(
        t.sql(db, "SELECT string_agg(version || ':' || installed_by, ',' ORDER BY installed_rank) FROM acme_users.pgplane_schema_history WHERE version IS NOT NULL"),
        "1:tlife_acme_users,2:tlife_acme_users,3:tlife_acme_users"
    );
    assert_eq!(psql(&acme, "SELECT count(*) FROM users WHERE email IS NULL").unwrap(), "1", "data kept");
    assert!(
        psql(&globex, "SELECT * FROM acme_users.users").unwrap_err().contains("permission denied"),
        "isolation after upgrade"
    );
    // Downgrades are refused, naming the flag; nothing runs.
    let down = t.pgplane(&["tenant", "upgrade", "acme", "--module", "users@1.0", "-f", f]).fails();
    assert!(down.stderr.contains("--allow-downgrade"), "{}", down.stderr);
    let down = t.pgplane(&["tenant", "upgrade", "acme", "--module", "users@1.0", "--allow-downgrade", "-f", f]).fails();
    // A SQL folder has no rollbacks: refused even with the flag, naming why.
    assert!(down.stderr.contains("only versions that are tags (`to_tag`)"), "{}", down.stderr);
    assert_eq!(version(&t, "acme", "users"), "2.0/enabled/ready");

    // disable: asks first (refused without a terminal), then roles lose LOGIN and CONNECT.
    let refused = t.pgplane(&["tenant", "disable", "acme", "-f", f]).fails();
    assert!(refused.stderr.contains("--yes"), "{}", refused.stderr);
    assert_eq!(t.sql("postgres", "SELECT rolcanlogin FROM pg_roles WHERE rolname = 'tlife_acme_users'"), "t");
    t.pgplane(&["tenant", "disable", "acme", "--yes", "-f", f]).ok();
    assert_eq!(version(&t, "acme", "users"), "2.0/disabled/disabled");
    assert_eq!(t.sql("postgres", "SELECT rolcanlogin FROM pg_roles WHERE rolname = 'tlife_acme_users'"), "f");
    assert_eq!(t.sql("postgres", "SELECT has_database_privilege('tlife_acme_users', 'tlife_users', 'CONNECT')"), "f");
    let no_login = psql(&acme, "SELECT 1").unwrap_err();
    assert!(no_login.contains("not permitted to log in"), "{no_login}");
    assert_eq!(t.sql(db, "SELECT count(*) FROM acme_users.users"), "1", "a disabled tenant keeps its data");
    assert!(t.pgplane(&["plan", "-f", f, "--prune"]).ok().stdout.contains("No changes"));
    // enable: back.
    t.pgplane(&["tenant", "enable", "acme", "-f", f]).ok();
    assert_eq!(psql(&acme, "SELECT count(*) FROM users").unwrap(), "1");
    assert_eq!(version(&t, "acme", "users"), "2.0/enabled/ready");

    // list and show.
    let list = t.pgplane(&["tenant", "list", "--json", "-f", f]).ok().json();
    let names: Vec<&str> = list.as_array().unwrap().iter().map(|v| v["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["acme", "globex"]);
    let acme_view = &list[0];
    assert_eq!(acme_view["modules"][0]["version"], "2.0");
    assert_eq!(acme_view["modules"][0]["schema"], "acme_users");
    assert_eq!(acme_view["modules"][0]["parameters"]["loadReference"], true);
    assert_eq!(acme_view["modules"][0]["last_job"]["kind"], "tenant_enable");
    assert_eq!(acme_view["modules"][0]["last_job"]["status"], "succeeded");
    let show = t.pgplane(&["tenant", "show", "globex", "-f", f]).ok();
    assert!(show.stdout.contains("module users: version 2.0, enabled (ready)"), "{}", show.stdout);
    // Every change was a job.
    let jobs = t.pgplane(&["job", "list", "--json", "-f", f]).ok().json();
    let kinds: Vec<&str> = jobs.as_array().unwrap().iter().map(|j| j["kind"].as_str().unwrap()).collect();
    for k in ["tenant_add", "tenant_upgrade", "tenant_disable", "tenant_enable"] {
        assert!(kinds.contains(&k), "{k} in {kinds:?}");
    }

    // remove without --purge disables; with --purge nothing of the tenant is left.
    t.pgplane(&["tenant", "remove", "globex", "--yes", "-f", f]).ok();
    assert_eq!(version(&t, "globex", "users"), "2.0/disabled/disabled");
    let dry = t.pgplane(&["tenant", "remove", "acme", "--purge", "--dry-run", "-f", f]).ok();
    assert!(
        dry.stdout.contains("drop_schema schema tlife_users.acme_users") && dry.stdout.contains("(purge requested)"),
        "{}",
        dry.stdout
    );
    assert!(!dry.stdout.contains("globex"), "a purge drops only the purged tenant's objects: {}", dry.stdout);
    t.pgplane(&["tenant", "remove", "acme", "--purge", "--yes", "-f", f]).ok();
    assert!(!exists(&t, "postgres", "SELECT 1 FROM pg_roles WHERE rolname = 'tlife_acme_users'"));
    assert!(!exists(&t, db, "SELECT 1 FROM pg_namespace WHERE nspname = 'acme_users'"));
    assert!(exists(&t, db, "SELECT 1 FROM pg_namespace WHERE nspname = 'globex_users'"), "the other tenant stays");
    assert_eq!(control(&t, "SELECT count(*) FROM pgplane.tenants WHERE env = 'tlife' AND name = 'acme'"), "0");
    assert_eq!(control(&t, "SELECT count(*) FROM pgplane.objects WHERE env = 'tlife' AND tenant = 'acme'"), "0");
    assert!(t.pgplane(&["plan", "-f", f, "--prune"]).ok().stdout.contains("No changes"));
}

#[test]
fn database_per_tenant_versions_by_tag_labels_and_purge_leaves_no_object() {
    let t = T::new("tdpt");
    t.write(
        "db/files.yaml",
        "databaseChangeLog:
  - changeSet:
      id: f1
      author: ann
      changes:
        - createTable:
            tableName: files
            columns:
              - column: {name: id, type: int}
  - changeSet:
      id: sample
      author: ann
      labels: sample
      changes:
        - insert:
            tableName: files
            columns:
              - column: {name: id, value: 42}
  - changeSet:
      id: t1
      author: ann
      changes:
        - tagDatabase: {tag: v1}
  - changeSet:
      id: f2
      author: ann
      changes:
        - addColumn:
            tableName: files
            columns:
              - column: {name: path, type: text}
        - tagDatabase: {tag: v2}
",
    );
    let f = t.manifest(
        "modules:\n  - name: files\n    storage: database-per-tenant\n    migrations: db/files.yaml\n    versions:\n      - {version: \"1\", to_tag: v1}\n      - {version: \"2\", to_tag: v2}\n    parameters:\n      loadSample: {label: sample}\n",
    );
    let f = f.to_str().unwrap();
    t.pgplane(&["tenant", "add", "one", "--module", "files@1", "-f", f]).ok();
    t.pgplane(&["tenant", "add", "two", "--module", "files@1", "--param", "loadSample=yes", "-f", f]).ok();
    let ids = |db: &str| t.sql(db, "SELECT string_agg(id, ',' ORDER BY orderexecuted) FROM public.databasechangelog");
    assert_eq!(ids("tdpt_one_files"), "f1,t1", "version 1 stops at its tag; the sample stays off");
    assert_eq!(ids("tdpt_two_files"), "f1,sample,t1");
    assert_eq!(t.sql("tdpt_two_files", "SELECT count(*) FROM files"), "1");
    // Another tenant's database refuses the connection.
    let one = t.credentials(&["files", "-f", f, "--tenant", "one"]);
    let refused = psql(&common::with_db(&one, "tdpt_two_files"), "SELECT 1").unwrap_err();
    assert!(refused.contains("permission denied for database"), "{refused}");
    // upgrade: only what version 2 adds.
    t.pgplane(&["tenant", "upgrade", "one", "--all-modules", "-f", f]).ok();
    assert_eq!(ids("tdpt_one_files"), "f1,t1,f2");
    assert_eq!(version(&t, "one", "files"), "2/enabled/ready");
    // Downgrade: refused without --allow-downgrade; with it, what version 2 added is rolled
    // back (the ledger and the column), as the tenant's role, and the tenant runs 1 again.
    let refused = t.pgplane(&["tenant", "upgrade", "one", "--module", "files@1", "-f", f]).fails().stderr;
    assert!(refused.contains("--allow-downgrade"), "{refused}");
    assert_eq!(ids("tdpt_one_files"), "f1,t1,f2", "nothing ran");
    t.pgplane(&["tenant", "upgrade", "one", "--module", "files@1", "--allow-downgrade", "-f", f]).ok();
    assert_eq!(ids("tdpt_one_files"), "f1,t1");
    assert_eq!(
        t.sql(
            "tdpt_one_files",
            "SELECT count(*) FROM information_schema.columns WHERE table_name = 'files' AND column_name = 'path'"
        ),
        "0"
    );
    assert_eq!(version(&t, "one", "files"), "1/enabled/ready");
    t.pgplane(&["tenant", "upgrade", "one", "--module", "files@2", "-f", f]).ok();
    assert_eq!(ids("tdpt_one_files"), "f1,t1,f2", "and up again");
    // Disabled database-per-tenant: the owner loses CONNECT and LOGIN.
    t.pgplane(&["tenant", "disable", "one", "--yes", "-f", f]).ok();
    assert_eq!(t.sql("postgres", "SELECT has_database_privilege('tdpt_one_files', 'tdpt_one_files', 'CONNECT')"), "f");
    assert!(psql(&one, "SELECT 1").is_err());
    // Purge: nothing of the tenant is left on the server.
    t.pgplane(&["tenant", "remove", "one", "--purge", "--yes", "-f", f]).ok();
    t.pgplane(&["tenant", "remove", "two", "--purge", "--yes", "-f", f]).ok();
    assert_eq!(t.sql("postgres", "SELECT count(*) FROM pg_database WHERE datname LIKE 'tdpt\\_%'"), "0");
    assert_eq!(t.sql("postgres", "SELECT count(*) FROM pg_roles WHERE rolname LIKE 'tdpt\\_%'"), "0");
    assert_eq!(control(&t, "SELECT count(*) FROM pgplane.objects WHERE env = 'tdpt'"), "0");
    assert_eq!(control(&t, "SELECT count(*) FROM pgplane.tenant_modules WHERE env = 'tdpt'"), "0");
}

#[test]
fn bad_requests_name_the_fix_and_run_nothing() {
    let t = T::new("tbad");
    let body = users_module(&t, "");
    let f = t.manifest(&format!(
        "{body}  - name: shared\n    storage: database\ntenants:\n  - name: listed\n    modules: [users]\n"
    ));
    let f = f.to_str().unwrap();
    let cases: [(&[&str], &str); 7] = [
        (&["tenant", "add", "acme", "--module", "nope"], "module \"nope\" is not in"),
        (
            &["tenant", "add", "acme", "--module", "users@9.9"],
            "module users has no version \"9.9\" (versions: 1.0, 2.0)",
        ),
        (
            &["tenant", "add", "acme", "--module", "users", "--param", "loadSample=true"],
            "unknown parameter \"loadSample\"; the modules given know: loadReference (users)",
        ),
        (&["tenant", "add", "acme", "--module", "users", "--param", "loadReference=maybe"], "must be true or false"),
        (&["tenant", "add", "acme", "--module", "shared"], "storage: database"),
        (&["tenant", "add", "Acme", "--module", "users"], "must start with a lowercase letter"),
        (&["tenant", "add", "listed", "--module", "users"], "is listed in"),
    ];
    for (args, want) in cases {
        let mut all = args.to_vec();
        all.extend(["-f", f]);
        let r = t.pgplane(&all).fails();
        assert!(r.stderr.contains(want), "{args:?}: {}", r.stderr);
    }
    for args in [&["tenant", "disable", "ghost", "--yes"][..], &["tenant", "upgrade", "ghost", "--module", "users"]] {
        let mut all = args.to_vec();
        all.extend(["-f", f]);
        assert!(t.pgplane(&all).fails().stderr.contains("tenant \"ghost\" is not registered"));
    }
    // Nothing ran: no role, no schema, no tenant row (the manifest's tenant was never applied).
    assert_eq!(t.sql("postgres", "SELECT count(*) FROM pg_roles WHERE rolname LIKE 'tbad\\_%'"), "0");
    if t.sql("postgres", "SELECT count(*) FROM pg_database WHERE datname = 'pgplane'") == "1" {
        assert_eq!(control(&t, "SELECT count(*) FROM pgplane.tenants WHERE env = 'tbad'"), "0");
        // Refused before a job was recorded, except for what needs the registry (the ghost).
        assert_eq!(
            control(&t, "SELECT string_agg(DISTINCT kind, ',' ORDER BY kind) FROM pgplane.jobs WHERE env = 'tbad'"),
            "tenant_disable,tenant_upgrade"
        );
    }
    // Manifest errors name the file and line.
    let bad = t.manifest_named("bad.yaml", "modules:\n  - name: users\n    storage: schema-per-tenant\n    versions:\n      - {version: \"1.0\", to_tag: v1}\n");
    let r = t.pgplane(&["tenant", "add", "acme", "--module", "users", "-f", bad.to_str().unwrap()]).fails();
    assert!(
        r.stderr.contains("bad.yaml:10:") && r.stderr.contains("add `migrations: PATH` to the module"),
        "{}",
        r.stderr
    );
}

/// Tenants in a fan-out take their turn; a not-yet-upgraded one keeps working meanwhile.
#[test]
fn fan_out_upgrade_killed_then_resumed_upgrades_each_tenant_once() {
    let t = T::new("tfan");
    // Version 2's first migration takes a while, so the kill lands in the middle.
    let body = users_module(&t, "SELECT pg_sleep(0.6);\n");
    let f = t.manifest(&body);
    let f = f.to_str().unwrap();
    let names: Vec<String> = (1..=6).map(|i| format!("t{i}")).collect();
    for n in &names {
        t.pgplane(&["tenant", "add", n, "--module", "users@1.0", "-f", f]).ok();
    }
    let at = |v: &str| {
        control(&t, &format!("SELECT count(*) FROM pgplane.tenant_modules WHERE env = 'tfan' AND version = '{v}'"))
            .parse::<usize>()
            .unwrap()
    };
    let mut child = t
        .cmd()
        .args(["tenant", "upgrade", "--all", "--module", "users@2.0", "--jobs", "1", "--canary", "1", "-f", f])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while at("2.0") < 2 {
        assert!(Instant::now() < deadline, "the fan-out did not get going");
        std::thread::sleep(Duration::from_millis(50));
    }
    // No downtime: a tenant not yet upgraded keeps working on the old version.
    let last = t.credentials(&["users", "-f", f, "--tenant", "t6"]);
    assert_eq!(psql(&last, "SELECT name FROM users").unwrap(), "first");
    assert_eq!(version(&t, "t6", "users"), "1.0/enabled/ready");
    child.kill().unwrap();
    child.wait().unwrap();
    let upgraded = at("2.0");
    assert!(upgraded < names.len(), "killed in the middle ({upgraded} done)");
    // The job of the killed run reads as failed (interrupted), never as running.
    let jobs = t.pgplane(&["job", "list", "--json", "--kind", "tenant_upgrade", "-f", f]).ok().json();
    assert_eq!(jobs[0]["status"], "failed", "{jobs}");
    // Resume: the rest, each once.
    let out =
        t.pgplane(&["tenant", "upgrade", "--all", "--module", "users@2.0", "--jobs", "3", "--json", "-f", f]).ok();
    let report = out.json();
    assert_eq!(report["tenants"].as_array().unwrap().len(), names.len() - upgraded, "done ones are not taken again");
    assert_eq!(report["failed"], 0);
    assert_eq!(at("2.0"), names.len());
    for n in &names {
        let rows = t.sql(
            "tfan_users",
            &format!("SELECT string_agg(version, ',' ORDER BY installed_rank) FROM {n}_users.pgplane_schema_history WHERE version IS NOT NULL"),
        );
        assert_eq!(rows, "1,2,3", "tenant {n}: each migration exactly once");
    }
    assert_eq!(
        control(
            &t,
            "SELECT count(*) FROM pgplane.tenant_upgrades WHERE env = 'tfan' AND to_version = '2.0' AND stage = 'done'"
        ),
        names.len().to_string()
    );
    // The finished job shows a stage per tenant.
    let jobs = t.pgplane(&["job", "list", "--json", "--kind", "tenant_upgrade", "-f", f]).ok().json();
    let stages: Vec<String> = jobs[0]["stages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["name"].as_str().unwrap().starts_with("item:"))
        .map(|s| format!("{}={}", s["name"].as_str().unwrap(), s["status"].as_str().unwrap()))
        .collect();
    assert_eq!(stages.len(), names.len() - upgraded, "{stages:?}");
    assert!(stages.iter().all(|s| s.ends_with("=done")), "{stages:?}");
}

#[test]
fn a_failing_canary_stops_the_fan_out() {
    let t = T::new("tcan");
    let body = users_module(&t, "");
    let f = t.manifest(&body);
    let f = f.to_str().unwrap();
    for n in ["a1", "b1", "c1"] {
        t.pgplane(&["tenant", "add", n, "--module", "users@1.0", "-f", f]).ok();
    }
    // a1 (the canary: first by name) has a column in the way of V2.
    t.sql("tcan_users", "ALTER TABLE a1_users.users ADD COLUMN email int");
    let r = t.pgplane(&["tenant", "upgrade", "--all", "--module", "users@2.0", "--canary", "1", "--json", "-f", f]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let report = r.json();
    assert_eq!(report["failed"], 1);
    assert_eq!(report["not_started"], 2);
    assert!(report["stopped"].as_str().unwrap().contains("canary a1 failed"), "{report}");
    assert_eq!(version(&t, "b1", "users"), "1.0/enabled/ready", "the rest were not touched");
    assert!(version(&t, "a1", "users").ends_with("/failed"));
    // show exits 1 for a tenant with a failed module.
    let show = t.pgplane(&["tenant", "show", "a1", "--json", "-f", f]).fails().json();
    assert!(show["modules"][0]["error"].as_str().unwrap().contains("already exists"), "{show}");
}

#[test]
fn server_auto_places_tenant_databases_and_keeps_them() {
    let second = common::second_server();
    let t = T::new("tplace");
    let manifest = |main_capacity: u32| {
        t.write(
            "pgplane.yaml",
            &format!(
                "version: 1\nenvironment: tplace\nservers:\n  - name: main\n    url: ${{TEST_PG_URL}}\n    capacity: {{databases: {main_capacity}}}\n  - name: second\n    url: ${{TEST_PG_URL2}}\n    capacity: {{databases: 2}}\nmodules:\n  - name: files\n    storage: database-per-tenant\n    server: auto\n"
            ),
        )
    };
    // The shared server is full (capacity 1, and it holds at least this database): both go
    // to the second one.
    t.database("filler_for_tplace");
    let f = manifest(1);
    let f = f.to_str().unwrap();
    t.pgplane(&["tenant", "add", "p1", "--module", "files", "-f", f]).ok();
    t.pgplane(&["tenant", "add", "p2", "--module", "files", "-f", f]).ok();
    let on_second = psql(
        &second.url,
        "SELECT string_agg(datname, ',' ORDER BY datname) FROM pg_database WHERE datname LIKE 'tplace\\_%'",
    )
    .unwrap();
    assert_eq!(on_second, "tplace_p1_files,tplace_p2_files");
    assert_eq!(t.sql("postgres", "SELECT count(*) FROM pg_database WHERE datname LIKE 'tplace\\_%'"), "0");
    // Out of room everywhere: an error before anything runs.
    let full = t.pgplane(&["tenant", "add", "p3", "--module", "files", "-f", f]).fails();
    assert!(full.stderr.contains("no server has room"), "{}", full.stderr);
    assert_eq!(psql(&second.url, "SELECT count(*) FROM pg_roles WHERE rolname = 'tplace_p3_files'").unwrap(), "0");
    assert_eq!(t.sql("postgres", "SELECT count(*) FROM pg_roles WHERE rolname = 'tplace_p3_files'"), "0");
    assert_eq!(control(&t, "SELECT count(*) FROM pgplane.tenants WHERE env = 'tplace' AND name = 'p3'"), "0");
    // Room on main: the next one goes there; the first two stay where they were placed.
    let f = manifest(1_000_000);
    let f = f.to_str().unwrap();
    t.pgplane(&["tenant", "add", "p3", "--module", "files", "-f", f]).ok();
    let list = t.pgplane(&["tenant", "list", "--json", "-f", f]).ok().json();
    let placed: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|v| format!("{}@{}", v["name"].as_str().unwrap(), v["modules"][0]["server"].as_str().unwrap()))
        .collect();
    assert_eq!(placed, ["p1@second", "p2@second", "p3@main"]);
    assert_eq!(t.sql("postgres", "SELECT count(*) FROM pg_database WHERE datname = 'tplace_p3_files'"), "1");
    assert!(t.pgplane(&["plan", "-f", f, "--prune"]).ok().stdout.contains("No changes"));
    // Each tenant's role reaches its own database on its own server.
    let p1 = t.credentials(&["files", "-f", f, "--tenant", "p1"]);
    assert!(psql(&p1, "CREATE TABLE f (id int)").is_ok());
    assert!(psql(&common::with_db(&p1, "tplace_p2_files"), "SELECT 1").unwrap_err().contains("permission denied"));
    for n in ["p1", "p2", "p3"] {
        t.pgplane(&["tenant", "remove", n, "--purge", "--yes", "-f", f]).ok();
    }
    assert_eq!(psql(&second.url, "SELECT count(*) FROM pg_database WHERE datname LIKE 'tplace\\_%'").unwrap(), "0");
    assert_eq!(psql(&second.url, "SELECT count(*) FROM pg_roles WHERE rolname LIKE 'tplace\\_%'").unwrap(), "0");
}

#[test]
fn previews_expire_and_gc_purges_those_not_in_the_live_list() {
    let t = T::new("tprev");
    let body = users_module(&t, "");
    let f = t.manifest(&body);
    let f = f.to_str().unwrap();
    t.pgplane(&["tenant", "add", "pr1", "--module", "users", "--ttl", "2s", "--label", "pr=1", "-f", f]).ok();
    t.pgplane(&["tenant", "add", "pr2", "--module", "users", "--label", "pr=2", "-f", f]).ok();
    t.pgplane(&["tenant", "add", "pr3", "--module", "users", "--label", "pr=3", "-f", f]).ok();
    t.pgplane(&["tenant", "add", "stable", "--module", "users", "-f", f]).ok();
    let list = t.pgplane(&["tenant", "list", "--json", "-f", f]).ok().json();
    assert_eq!(list[0]["preview"], true);
    assert!(list[0]["expires_at"].as_str().unwrap().ends_with('Z'));
    // The leader's reconciler purges the expired one.
    let mut worker = t
        .cmd()
        .args(["worker", "-f", f, "--workers", "1", "--reconcile-interval", "1s"])
        .env("PGPLANE_JOB_POLL_MS", "100")
        .env("PGPLANE_LEADER_TICK_MS", "200")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    t.wait_for_sql(
        "pgplane",
        "SELECT coalesce((SELECT status FROM pgplane.jobs WHERE env = 'tprev' AND kind = 'tenant_gc' ORDER BY id DESC LIMIT 1), 'none')",
        "succeeded",
        "the reconciler did not purge the expired preview",
    );
    let _ = worker.kill();
    let _ = worker.wait();
    assert_eq!(t.sql("tprev_users", "SELECT count(*) FROM pg_namespace WHERE nspname = 'pr1_users'"), "0");
    assert_eq!(t.sql("postgres", "SELECT count(*) FROM pg_roles WHERE rolname = 'tprev_pr1_users'"), "0");
    assert_eq!(control(&t, "SELECT count(*) FROM pgplane.tenants WHERE env = 'tprev' AND name = 'pr1'"), "0");
    // gc against a live list: pr=3 is open, pr2 is not; stable is no preview.
    t.write("live.txt", "# open pull requests\npr=3\n");
    let dry = t.pgplane(&["tenant", "gc", "--keep-file", "live.txt", "--dry-run", "-f", f]).ok();
    assert!(dry.stdout.contains("would purge  pr2"), "{}", dry.stdout);
    assert!(!dry.stdout.contains("stable") && !dry.stdout.contains("pr3"), "{}", dry.stdout);
    assert_eq!(t.sql("tprev_users", "SELECT count(*) FROM pg_namespace WHERE nspname = 'pr2_users'"), "1");
    t.pgplane(&["tenant", "gc", "--keep-file", "live.txt", "-f", f]).ok();
    let left = t.sql(
        "tprev_users",
        "SELECT string_agg(nspname, ',' ORDER BY nspname) FROM pg_namespace WHERE nspname LIKE '%\\_users'",
    );
    assert_eq!(left, "pr3_users,stable_users");
    let empty = t.write("empty.txt", "");
    let r = t.pgplane(&["tenant", "gc", "--keep-file", empty.to_str().unwrap(), "-f", f]).fails();
    assert!(r.stderr.contains("--allow-empty"), "{}", r.stderr);
}

#[test]
fn the_api_adds_installs_and_simulates() {
    let t = T::new("tapi");
    let body = users_module(&t, "");
    let f = t.manifest(&format!("{body}tenants:\n  - name: listed\n    modules: [users]\n"));
    let f = f.to_str().unwrap();
    t.pgplane(&["apply", "-f", f, "--yes"]).ok();
    let s = t.serve(f, &["--workers", "1"], &[("PGPLANE_JOB_POLL_MS", "100")]);
    let wait_job = |id: i64| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let op = s.req("GET", &format!("/api/v1/operations/{id}"), None, None).json();
            if op["status"] == "succeeded" || op["status"] == "failed" {
                return op;
            }
            assert!(Instant::now() < deadline, "operation {id} did not end: {op}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    // The event's shape: modules with versions, parameters as strings.
    let r = s.req(
        "POST",
        "/api/v1/tenants",
        None,
        Some(r#"{"tenant": "acme", "modules": ["users@1.0"], "parameters": {"loadReference": "true"}, "labels": {"pr": "7"}}"#),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(r.json()["kind"], "tenant_add");
    let op = wait_job(r.json()["id"].as_i64().unwrap());
    assert_eq!(op["status"], "succeeded", "{op}");
    let v = s.req("GET", "/api/v1/tenants/acme", None, None).json();
    assert_eq!(v["modules"][0]["version"], "1.0");
    assert_eq!(v["modules"][0]["status"], "ready");
    assert_eq!(v["labels"]["pr"], "7");
    assert_eq!(v["preview"], true);
    let all = s.req("GET", "/api/v1/tenants", None, None).json();
    assert_eq!(all.as_array().unwrap().len(), 2, "the manifest's tenant too: {all}");
    // Simulate: the plan and the migrations; nothing changes.
    let sim = s.req(
        "POST",
        "/api/v1/tenants/acme/install?simulate=true",
        None,
        Some(r#"[{"module": "users", "version": "2.0", "action": "upgrade"}]"#),
    );
    assert_eq!(sim.status, 200, "{}", sim.body);
    let pending = sim.json()["pending"][0]["migrations"].clone();
    assert_eq!(pending, serde_json::json!(["V2__email.sql", "V3__index.sql"]));
    assert_eq!(version(&t, "acme", "users"), "1.0/enabled/ready");
    // Install: upgrade.
    let r = s.req(
        "POST",
        "/api/v1/tenants/acme/install",
        None,
        Some(r#"[{"module": "users", "version": "2.0", "action": "upgrade"}]"#),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(wait_job(r.json()["id"].as_i64().unwrap())["status"], "succeeded");
    assert_eq!(version(&t, "acme", "users"), "2.0/enabled/ready");
    // Install: disable, then purge.
    let r = s.req("POST", "/api/v1/tenants/acme/install", None, Some(r#"[{"module": "users", "action": "disable"}]"#));
    assert_eq!(wait_job(r.json()["id"].as_i64().unwrap())["status"], "succeeded");
    assert_eq!(t.sql("postgres", "SELECT rolcanlogin FROM pg_roles WHERE rolname = 'tapi_acme_users'"), "f");
    let r = s.req("POST", "/api/v1/tenants/acme/install", None, Some(r#"[{"module": "users", "action": "purge"}]"#));
    let op = wait_job(r.json()["id"].as_i64().unwrap());
    assert_eq!(op["status"], "succeeded", "{op}");
    assert_eq!(t.sql("postgres", "SELECT count(*) FROM pg_roles WHERE rolname = 'tapi_acme_users'"), "0");
    assert_eq!(s.req("GET", "/api/v1/tenants/acme", None, None).status, 404);
    // Bad requests: 422 with the known ones, 409 for the manifest's tenant; nothing queued.
    let r = s.req(
        "POST",
        "/api/v1/tenants",
        None,
        Some(r#"{"tenant": "b", "modules": ["users"], "parameters": {"nope": true}}"#),
    );
    assert_eq!((r.status, r.error_code()), (422, "invalid".to_string()));
    assert!(r.body.contains("loadReference (users)"), "{}", r.body);
    let r = s.req("POST", "/api/v1/tenants", None, Some(r#"{"tenant": "b", "modules": ["users@7"]}"#));
    assert_eq!(r.status, 422, "{}", r.body);
    let r = s.req("POST", "/api/v1/tenants", None, Some(r#"{"tenant": "listed", "modules": ["users"]}"#));
    assert_eq!(r.status, 409, "{}", r.body);
    let r = s.req("POST", "/api/v1/tenants/acme/install", None, Some(r#"[{"module": "users", "action": "explode"}]"#));
    assert_eq!(r.status, 422, "{}", r.body);
    // A failed job's error reaches the tenant view: install on a purged tenant.
    let r = s.req("POST", "/api/v1/tenants/ghost/install", None, Some(r#"[{"module": "users", "action": "disable"}]"#));
    let op = wait_job(r.json()["id"].as_i64().unwrap());
    assert_eq!((op["status"].as_str(), op["error_code"].as_str()), (Some("failed"), Some("not_found")), "{op}");
    // The console's tenants page.
    t.pgplane(&["tenant", "add", "zed", "--module", "users@1.0", "-f", f]).ok();
    let page = s.req("GET", "/tenants", None, None);
    assert_eq!(page.status, 200);
    assert!(page.body.contains("data-tenant=\"zed\"") && page.body.contains("tenant_add"), "{}", page.body);
    assert!(page.body.contains("listed <span class=\"muted\">(manifest)</span>"), "{}", page.body);
}
