//! End-to-end: `pgplane migrate` and apply's migrations, real binary against a real server.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{lines, T};

fn url_args<'a>(url: &'a str, source: &'a str) -> Vec<&'a str> {
    vec!["--url", url, "--source", source]
}

fn migrate(t: &T, verb: &str, rest: &[&str]) -> common::Run {
    let mut args = vec!["migrate", verb];
    args.extend_from_slice(rest);
    t.pgplane(&args)
}

#[test]
fn sql_folder_applies_in_version_order_once() {
    let t = T::new("mig_sql");
    let url = t.database("mig_sql_db");
    t.write("db/V10__ten.sql", "ALTER TABLE person ADD COLUMN ten int;\n");
    t.write("db/V2__email.sql", "ALTER TABLE person ADD COLUMN email text;\n");
    t.write("db/V1__init.sql", "CREATE TABLE person (id int PRIMARY KEY, name text);\n");
    t.write("db/R__view.sql", "CREATE OR REPLACE VIEW person_v AS SELECT id, name FROM person;\n");
    let args = url_args(&url, "db");

    let status = migrate(&t, "status", &[&args[..], &["--json"]].concat()).ok().json();
    let target = &status["modules"][0]["targets"][0];
    assert_eq!(target["pending"], 4, "{status}");
    let names: Vec<&str> =
        target["migrations"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["V1__init.sql", "V2__email.sql", "V10__ten.sql", "R__view.sql"]);
    // status changed nothing, not even the ledger.
    assert_eq!(t.sql("mig_sql_db", "SELECT to_regclass('public.pgplane_schema_history') IS NULL"), "t");

    let up = migrate(&t, "up", &args).ok();
    assert!(up.stdout.contains("applied   V10__ten.sql"), "{}", up.stdout);
    assert_eq!(
        t.sql("mig_sql_db", "SELECT string_agg(column_name, ',' ORDER BY ordinal_position) FROM information_schema.columns WHERE table_name = 'person'"),
        "id,name,email,ten"
    );
    assert_eq!(
        lines(&t.sql(
            "mig_sql_db",
            "SELECT coalesce(version, '-') || ' ' || description || ' ' || success FROM pgplane_schema_history ORDER BY installed_rank"
        )),
        ["1 init true", "2 email true", "10 ten true", "- view true"]
    );

    // Again: nothing runs.
    let again = migrate(&t, "up", &[&args[..], &["--json"]].concat()).ok().json();
    assert_eq!(again["modules"][0]["targets"][0]["applied"], serde_json::json!([]));
    assert_eq!(t.sql("mig_sql_db", "SELECT count(*) FROM pgplane_schema_history"), "4");

    // A changed repeatable runs again; validate is happy before and after.
    migrate(&t, "validate", &args).ok();
    t.write("db/R__view.sql", "CREATE OR REPLACE VIEW person_v AS SELECT id, name, email FROM person;\n");
    let st = migrate(&t, "status", &[&args[..], &["--json"]].concat()).ok().json();
    assert_eq!(st["modules"][0]["targets"][0]["migrations"][3]["state"], "changed");
    migrate(&t, "up", &args).ok();
    assert_eq!(
        t.sql("mig_sql_db", "SELECT count(*) FROM information_schema.columns WHERE table_name = 'person_v'"),
        "3"
    );
}

#[test]
fn a_file_off_the_naming_scheme_is_an_error_and_nothing_runs() {
    let t = T::new("mig_badname");
    let url = t.database("mig_badname_db");
    t.write("db/V1__init.sql", "CREATE TABLE a (id int);\n");
    t.write("db/2_second.sql", "CREATE TABLE b (id int);\n");
    let r = migrate(&t, "up", &url_args(&url, "db")).fails();
    assert!(r.stderr.contains("db/2_second.sql") && r.stderr.contains("V<version>__<description>.sql"), "{}", r.stderr);
    assert_eq!(t.sql("mig_badname_db", "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"), "0");
}

#[test]
fn a_changed_applied_migration_is_refused_by_name() {
    let t = T::new("mig_changed");
    let url = t.database("mig_changed_db");
    t.write("db/V1__init.sql", "CREATE TABLE a (id int);\n");
    migrate(&t, "up", &url_args(&url, "db")).ok();
    t.write("db/V1__init.sql", "CREATE TABLE a (id bigint);\n");
    t.write("db/V2__more.sql", "CREATE TABLE b (id int);\n");
    let v = migrate(&t, "validate", &url_args(&url, "db")).fails();
    assert!(v.stdout.contains("V1__init.sql was changed after it was applied"), "{}", v.stdout);
    let up = migrate(&t, "up", &[&url_args(&url, "db")[..], &["--json"]].concat()).fails().json();
    let target = &up["modules"][0]["targets"][0];
    assert!(target["problems"][0].as_str().unwrap().contains("V1__init.sql"), "{up}");
    // Nothing ran: V2 is not applied.
    assert_eq!(t.sql("mig_changed_db", "SELECT to_regclass('public.b') IS NULL"), "t");
}

#[test]
fn a_failed_migration_is_recorded_rolled_back_and_retried_after_a_fix() {
    let t = T::new("mig_fail");
    let url = t.database("mig_fail_db");
    t.write("db/V1__init.sql", "CREATE TABLE a (id int);\n");
    t.write("db/V2__broken.sql", "CREATE TABLE b (id int);\n\nINSERT INTO b VALUES (1);\nSELEC 1;\n");
    t.write("db/V3__after.sql", "CREATE TABLE c (id int);\n");
    let up = migrate(&t, "up", &url_args(&url, "db")).fails();
    assert!(up.stdout.contains("V2__broken.sql failed: syntax error"), "{}", up.stdout);
    assert!(up.stdout.contains("db/V2__broken.sql:4"), "the line of the error: {}", up.stdout);
    // V1 stayed, V2 rolled back entirely, V3 did not run; the ledger says so.
    assert_eq!(
        t.sql("mig_fail_db", "SELECT to_regclass('a') IS NOT NULL, to_regclass('b') IS NULL, to_regclass('c') IS NULL"),
        "t|t|t"
    );
    assert_eq!(
        lines(&t.sql(
            "mig_fail_db",
            "SELECT version || ' ' || success FROM pgplane_schema_history ORDER BY installed_rank"
        )),
        ["1 true", "2 false"]
    );
    let st = migrate(&t, "status", &url_args(&url, "db")).ok();
    assert!(st.stdout.contains("retry     V2__broken.sql") && st.stdout.contains("syntax error"), "{}", st.stdout);

    t.write("db/V2__broken.sql", "CREATE TABLE b (id int);\n\nINSERT INTO b VALUES (1);\nSELECT 1;\n");
    migrate(&t, "up", &url_args(&url, "db")).ok();
    assert_eq!(t.sql("mig_fail_db", "SELECT count(*) FROM b"), "1");
    assert_eq!(t.sql("mig_fail_db", "SELECT to_regclass('c') IS NOT NULL"), "t");
}

#[test]
fn no_transaction_migrations_run_statement_by_statement() {
    let t = T::new("mig_notx");
    let url = t.database("mig_notx_db");
    t.write("db/V1__init.sql", "CREATE TABLE a (id int, v text);\n");
    t.write(
        "db/V2__index.sql",
        "-- pgplane: no-transaction\nCREATE INDEX CONCURRENTLY a_v ON a (v);\nCREATE INDEX CONCURRENTLY a_id ON a (id);\n",
    );
    migrate(&t, "up", &url_args(&url, "db")).ok();
    assert_eq!(t.sql("mig_notx_db", "SELECT count(*) FROM pg_indexes WHERE tablename = 'a'"), "2");
    assert_eq!(t.sql("mig_notx_db", "SELECT transactional FROM pgplane_schema_history WHERE version = '2'"), "f");

    // A failure outside a transaction blocks the next run until the user says so.
    t.write("db/V3__half.sql", "-- pgplane: no-transaction\nCREATE TABLE half (id int);\nSELEC 1;\n");
    migrate(&t, "up", &url_args(&url, "db")).fails();
    assert_eq!(t.sql("mig_notx_db", "SELECT to_regclass('half') IS NOT NULL"), "t", "the first statement stayed");
    t.write("db/V3__half.sql", "-- pgplane: no-transaction\nCREATE TABLE IF NOT EXISTS half (id int);\nSELECT 1;\n");
    let blocked = migrate(&t, "up", &url_args(&url, "db")).fails();
    assert!(blocked.stdout.contains("--retry-failed"), "{}", blocked.stdout);
    migrate(&t, "up", &[&url_args(&url, "db")[..], &["--retry-failed"]].concat()).ok();
}

#[test]
fn concurrent_ups_serialize_and_apply_nothing_twice() {
    let t = T::new("mig_conc");
    let url = t.database("mig_conc_db");
    t.write("db/V1__slow.sql", "CREATE TABLE a (id int); SELECT pg_sleep(1);\n");
    t.write("db/V2__count.sql", "CREATE TABLE runs (n int); INSERT INTO runs VALUES (1);\n");
    let spawn = || t.cmd().args(["migrate", "up", "--url", &url, "--source", "db", "--json"]).output().unwrap();
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(spawn);
        let b = s.spawn(spawn);
        (a.join().unwrap(), b.join().unwrap())
    });
    assert!(
        a.status.success() && b.status.success(),
        "{}{}",
        String::from_utf8_lossy(&a.stderr),
        String::from_utf8_lossy(&b.stderr)
    );
    let applied = |o: &std::process::Output| {
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["modules"][0]["targets"][0]["applied"].as_array().unwrap().len()
    };
    assert_eq!(applied(&a) + applied(&b), 2, "each migration applied by exactly one of them");
    assert_eq!(t.sql("mig_conc_db", "SELECT count(*) FROM runs"), "1");
    assert_eq!(t.sql("mig_conc_db", "SELECT count(*) FROM pgplane_schema_history"), "2");
}

#[test]
fn the_lock_dies_with_a_killed_process() {
    let t = T::new("mig_kill");
    let url = t.database("mig_kill_db");
    t.write("db/V1__slow.sql", "CREATE TABLE a (id int); SELECT pg_sleep(60);\n");
    let mut child = t.cmd().args(["migrate", "up", "--url", &url, "--source", "db"]).spawn().unwrap();
    // Wait until the migration is running (it holds the lock), then kill -9.
    t.wait_for_sql("postgres", "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(60)%' AND application_name = 'pgplane-migrate'", "1", "the migration never started");
    child.kill().unwrap();
    child.wait().unwrap();
    t.write("db/V1__slow.sql", "CREATE TABLE a (id int);\n");
    let started = Instant::now();
    migrate(&t, "up", &[&url_args(&url, "db")[..], &["--lock-timeout", "20s"]].concat()).ok();
    assert!(started.elapsed() < Duration::from_secs(15), "the dead process's lock was released");
    assert_eq!(t.sql("mig_kill_db", "SELECT count(*) FROM pgplane_schema_history WHERE success"), "1");
}

const TENANTS: &str = "\
modules:
  - name: shop
    storage: database
    migrations: shop-db
  - name: users
    storage: schema-per-tenant
    migrations:
      path: users-db
tenants:
  - {name: acme, modules: [users]}
  - {name: globex, modules: [users]}
  - {name: initech, modules: [users]}
";

#[test]
fn apply_migrates_modules_and_every_tenant_schema_as_its_owner() {
    let t = T::new("mig_apply");
    t.write("shop-db/V1__orders.sql", "CREATE TABLE orders (id int PRIMARY KEY);\n");
    t.write("users-db/V1__users.sql", "CREATE TABLE users (id int PRIMARY KEY, name text);\n");
    let f = t.manifest(TENANTS);
    let f = f.to_str().unwrap();
    let out = t.pgplane(&["apply", "-f", f, "--yes", "--json"]).ok().json();
    assert_eq!(out["migrations"]["ok"], true, "{out}");
    assert_eq!(
        t.sql("mig_apply_shop", "SELECT tableowner FROM pg_tables WHERE tablename = 'orders'"),
        "mig_apply_shop"
    );
    assert_eq!(
        lines(&t.sql(
            "mig_apply_users",
            "SELECT schemaname || ' ' || tableowner FROM pg_tables WHERE tablename = 'users' ORDER BY 1"
        )),
        [
            "acme_users mig_apply_acme_users",
            "globex_users mig_apply_globex_users",
            "initech_users mig_apply_initech_users"
        ]
    );
    // Each tenant's ledger is in its own schema.
    assert_eq!(t.sql("mig_apply_users", "SELECT count(*) FROM acme_users.pgplane_schema_history"), "1");
    // Nothing pending afterwards; apply again changes and migrates nothing.
    let again = t.pgplane(&["apply", "-f", f, "--yes", "--json"]).ok().json();
    assert_eq!(again["changes"], 0);
    let st = migrate(&t, "status", &["-f", f, "--json"]).ok().json();
    for m in st["modules"].as_array().unwrap() {
        for target in m["targets"].as_array().unwrap() {
            assert_eq!(target["pending"], 0, "{st}");
        }
    }
}

#[test]
fn one_tenant_failing_does_not_stop_the_others() {
    let t = T::new("mig_tenants");
    t.write("shop-db/V1__orders.sql", "CREATE TABLE orders (id int PRIMARY KEY);\n");
    t.write("users-db/V1__users.sql", "CREATE TABLE users (id int PRIMARY KEY, name text);\n");
    let f = t.manifest(TENANTS);
    let f = f.to_str().unwrap();
    t.pgplane(&["apply", "-f", f, "--yes", "--skip-migrations"]).ok();
    // globex already has a `users` table of its own: V1 fails there.
    t.sql(
        "mig_tenants_users",
        "CREATE TABLE globex_users.users (x int); ALTER TABLE globex_users.users OWNER TO mig_tenants_globex_users",
    );
    let r = migrate(&t, "up", &["-f", f, "--module", "users", "--jobs", "2", "--json"]).fails().json();
    let targets = r["modules"][0]["targets"].as_array().unwrap();
    let by_tenant = |n: &str| targets.iter().find(|x| x["tenant"] == n).unwrap();
    assert_eq!(by_tenant("acme")["ok"], true);
    assert_eq!(by_tenant("initech")["ok"], true);
    assert_eq!(by_tenant("globex")["ok"], false);
    assert!(by_tenant("globex")["failure"]["message"].as_str().unwrap().contains("already exists"), "{r}");
    assert_eq!(t.sql("mig_tenants_users", "SELECT count(*) FROM pg_tables WHERE tablename = 'users'"), "3");
    // --tenant narrows to one; the text output names the tenant.
    let one = migrate(&t, "status", &["-f", f, "--module", "users", "--tenant", "acme"]).ok();
    assert!(one.stdout.contains("users/acme") && !one.stdout.contains("globex"), "{}", one.stdout);
    // The shop module was not touched by a users-only run.
    assert_eq!(t.sql("mig_tenants_shop", "SELECT to_regclass('orders') IS NULL"), "t");
}

#[test]
fn manifest_errors_name_the_module_and_fix() {
    let t = T::new("mig_errs");
    let f = t.manifest("modules:\n  - name: a\n    storage: database\n    migrations: nowhere\n");
    let f = f.to_str().unwrap();
    let r = migrate(&t, "status", &["-f", f]).fails();
    assert!(r.stderr.contains("module a") && r.stderr.contains("nowhere"), "{}", r.stderr);
    let f2 = t.manifest_named("b.yaml", "modules:\n  - name: a\n    storage: database\n");
    let r = migrate(&t, "up", &["-f", f2.to_str().unwrap()]).fails();
    assert!(r.stderr.contains("no module") && r.stderr.contains("migrations: PATH"), "{}", r.stderr);
}

#[test]
fn wait_for_migrated_holds_once_every_tenant_is_migrated() {
    let t = T::new("mig_wait");
    t.write("shop-db/V1__orders.sql", "CREATE TABLE orders (id int PRIMARY KEY);\n");
    t.write("users-db/V1__users.sql", "CREATE TABLE users (id int PRIMARY KEY, name text);\n");
    let f = t.manifest(TENANTS);
    let f = f.to_str().unwrap();
    t.pgplane(&["apply", "-f", f, "--yes", "--skip-migrations"]).ok();
    let r = t.pgplane(&["wait", "-f", f, "--for", "migrated:users", "--timeout", "500ms"]).fails();
    assert!(
        r.stdout.contains("3 of 3 target(s) not migrated") && r.stdout.contains("users/acme: 1 pending"),
        "{}",
        r.stdout
    );
    // Migrate one tenant only: still not all.
    migrate(&t, "up", &["-f", f, "--module", "users", "--tenant", "acme"]).ok();
    let r = t.pgplane(&["wait", "-f", f, "--for", "migrated:users", "--timeout", "500ms"]).fails();
    assert!(r.stdout.contains("2 of 3 target(s)"), "{}", r.stdout);
    // A waiter started now returns soon after the rest is migrated.
    let waiter = t
        .cmd()
        .args(["wait", "-f", f, "--for", "migrated:users", "--timeout", "60s", "--interval", "200ms"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    migrate(&t, "up", &["-f", f, "--module", "users"]).ok();
    let done = Instant::now();
    let out = waiter.wait_with_output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok    migrated:users"));
    assert!(done.elapsed() < Duration::from_secs(5), "the waiter noticed within a few intervals");
}

const CHANGELOG: &str = "\
databaseChangeLog:
  - changeSet:
      id: 1
      author: ann
      changes:
        - createTable:
            tableName: item
            remarks: Things we sell
            columns:
              - column: {name: id, type: bigint, autoIncrement: true, constraints: {primaryKey: true}}
              - column: {name: name, type: varchar(100), constraints: {nullable: false}}
  - changeSet:
      id: 2
      author: ann
      context: dev
      changes:
        - insert:
            tableName: item
            columns:
              - column: {name: name, value: sample}
  - changeSet:
      id: 3
      author: bob
      labels: v2
      changes:
        - addColumn:
            tableName: item
            columns:
              - column: {name: price, type: 'numeric(10,2)'}
";

#[test]
fn liquibase_changelog_with_contexts_labels_and_a_changed_changeset() {
    let t = T::new("mig_lb");
    let url = t.database("mig_lb_db");
    t.write("model/changelog.yaml", CHANGELOG);
    let src = ["--url", &url, "--source", "model/changelog.yaml"];

    // Context prod and labels !v2: only changeset 1 runs; 2 and 3 are filtered.
    let up = migrate(&t, "up", &[&src[..], &["--contexts", "prod", "--labels", "!v2", "--json"]].concat()).ok().json();
    let target = &up["modules"][0]["targets"][0];
    let states: Vec<&str> =
        target["migrations"].as_array().unwrap().iter().map(|m| m["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["pending", "filtered", "filtered"], "{up}");
    assert_eq!(t.sql("mig_lb_db", "SELECT count(*) FROM item"), "0");
    assert_eq!(
        t.sql("mig_lb_db", "SELECT id || ' ' || author || ' ' || filename || ' ' || exectype FROM databasechangelog"),
        "1 ann changelog.yaml EXECUTED"
    );
    assert_eq!(t.sql("mig_lb_db", "SELECT obj_description('item'::regclass)"), "Things we sell");
    // pgplane released Liquibase's lock row.
    assert_eq!(t.sql("mig_lb_db", "SELECT locked FROM databasechangeloglock"), "f");

    // Without filters the rest runs.
    migrate(&t, "up", &src).ok();
    assert_eq!(t.sql("mig_lb_db", "SELECT count(*) FROM databasechangelog"), "3");
    assert_eq!(t.sql("mig_lb_db", "SELECT name FROM item"), "sample");

    // Editing an applied changeset is refused by name; validCheckSum accepts the edit.
    let edited = CHANGELOG.replace("varchar(100)", "varchar(200)");
    t.write("model/changelog.yaml", &edited);
    let v = migrate(&t, "validate", &src).fails();
    assert!(v.stdout.contains("changelog.yaml::1::ann was changed after it was applied"), "{}", v.stdout);
    let stored = t.sql("mig_lb_db", "SELECT md5sum FROM databasechangelog WHERE id = '1'");
    t.write(
        "model/changelog.yaml",
        &edited.replacen("      author: ann\n", &format!("      author: ann\n      validCheckSum: {stored}\n"), 1),
    );
    migrate(&t, "validate", &src).ok();
}

#[test]
fn a_failed_changeset_names_file_and_error_and_is_retried() {
    let t = T::new("mig_lbfail");
    let url = t.database("mig_lbfail_db");
    let bad = "--liquibase formatted sql\n\n--changeset ann:1\nCREATE TABLE a (id int);\n\n--changeset ann:2\nCREATE TABLE b (id int);\nINSERT INTO nowhere VALUES (1);\n\n--changeset ann:3\nCREATE TABLE c (id int);\n";
    t.write("model/changelog.sql", bad);
    let src = ["--url", &url, "--source", "model/changelog.sql"];
    let up = migrate(&t, "up", &src).fails();
    assert!(up.stdout.contains("changelog.sql::2::ann failed: relation \"nowhere\" does not exist"), "{}", up.stdout);
    assert!(up.stdout.contains("changelog.sql:6"), "the changeset's line: {}", up.stdout);
    assert_eq!(
        t.sql(
            "mig_lbfail_db",
            "SELECT to_regclass('a') IS NOT NULL, to_regclass('b') IS NULL, to_regclass('c') IS NULL"
        ),
        "t|t|t"
    );
    // Liquibase's ledger holds the success only; the failure is pgplane's record.
    assert_eq!(t.sql("mig_lbfail_db", "SELECT string_agg(id, ',') FROM databasechangelog"), "1");
    assert!(t.sql("mig_lbfail_db", "SELECT error FROM pgplane_changelog_failures WHERE id = '2'").contains("nowhere"));
    let st = migrate(&t, "status", &src).ok();
    assert!(st.stdout.contains("retry") && st.stdout.contains("nowhere"), "{}", st.stdout);

    t.write("model/changelog.sql", &bad.replace("INSERT INTO nowhere VALUES (1);", "INSERT INTO b VALUES (1);"));
    migrate(&t, "up", &src).ok();
    assert_eq!(t.sql("mig_lbfail_db", "SELECT count(*) FROM databasechangelog"), "3");
    assert_eq!(t.sql("mig_lbfail_db", "SELECT count(*) FROM pgplane_changelog_failures"), "0");
}

#[test]
fn an_unsupported_change_type_is_an_error_before_anything_runs() {
    let t = T::new("mig_lbbad");
    let url = t.database("mig_lbbad_db");
    t.write(
        "model/changelog.yaml",
        "databaseChangeLog:\n  - changeSet:\n      id: 1\n      author: ann\n      changes:\n        - createTable: {tableName: a, columns: [{column: {name: id, type: int}}]}\n  - changeSet:\n      id: 2\n      author: ann\n      changes:\n        - mergeColumns: {tableName: a}\n",
    );
    let r = migrate(&t, "up", &["--url", &url, "--source", "model/changelog.yaml"]).fails();
    assert!(r.stderr.contains("mergeColumns") && r.stderr.contains("model/changelog.yaml:11:"), "{}", r.stderr);
    assert_eq!(t.sql("mig_lbbad_db", "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"), "0");
}

#[test]
fn a_liquibase_module_is_migrated_inside_each_tenant_schema() {
    let t = T::new("mig_lbten");
    t.write("model/changelog.yaml", CHANGELOG);
    let f = t.manifest(
        "modules:\n  - name: shop\n    storage: schema-per-tenant\n    migrations:\n      path: model/changelog.yaml\n      changelog_table: ddm_db_changelog\n      changelog_lock_table: ddm_db_changelog_lock\ntenants:\n  - {name: acme, modules: [shop]}\n  - {name: globex, modules: [shop]}\n",
    );
    t.pgplane(&["apply", "-f", f.to_str().unwrap(), "--yes"]).ok();
    assert_eq!(
        lines(&t.sql(
            "mig_lbten_shop",
            "SELECT schemaname || ' ' || tableowner FROM pg_tables WHERE tablename = 'item' ORDER BY 1"
        )),
        ["acme_shop mig_lbten_acme_shop", "globex_shop mig_lbten_globex_shop"]
    );
    assert_eq!(t.sql("mig_lbten_shop", "SELECT count(*) FROM acme_shop.ddm_db_changelog"), "3");
    assert_eq!(t.sql("mig_lbten_shop", "SELECT to_regclass('public.item') IS NULL"), "t");
}

#[test]
fn liquibase_edge_semantics_fail_on_error_run_always_and_cleared_checksums() {
    let t = T::new("mig_lbsem");
    let url = t.database("mig_lbsem_db");
    t.write(
        "model/changelog.sql",
        "--liquibase formatted sql\n\n--changeset ann:1\nCREATE TABLE a (id int);\n\n--changeset ann:2 failOnError:false\nINSERT INTO nowhere VALUES (1);\n\n--changeset ann:3 runAlways:true\nINSERT INTO a VALUES (3);\n\n--changeset ann:4\nCREATE TABLE d (id int);\n",
    );
    let src = ["--url", &url, "--source", "model/changelog.sql"];
    // failOnError:false: the failure is reported, the run goes on and succeeds.
    let up = migrate(&t, "up", &src).ok();
    assert!(
        up.stdout.contains("skipped   changelog.sql::2::ann") && up.stdout.contains("failOnError"),
        "{}",
        up.stdout
    );
    // Like Liquibase: no ledger row for it, so the next update tries it again.
    assert_eq!(
        t.sql("mig_lbsem_db", "SELECT string_agg(id, ',' ORDER BY orderexecuted) FROM databasechangelog"),
        "1,3,4"
    );
    let st = migrate(&t, "status", &[&src[..], &["--json"]].concat()).ok().json();
    let target = &st["modules"][0]["targets"][0];
    // Only the failed one is pending; the runAlways changeset is not "missing".
    assert_eq!(target["pending"], 1, "{st}");
    assert_eq!(target["migrations"][2]["state"], "always");
    // A second up re-runs the runAlways changeset (RERAN, one row) and retries 2.
    migrate(&t, "up", &src).ok();
    assert_eq!(t.sql("mig_lbsem_db", "SELECT exectype FROM databasechangelog WHERE id = '3'"), "RERAN");
    assert_eq!(t.sql("mig_lbsem_db", "SELECT count(*) FROM a"), "2");
    // After `liquibase clear-checksums` (MD5SUM NULL), up fills them in again.
    t.sql("mig_lbsem_db", "UPDATE databasechangelog SET md5sum = NULL");
    migrate(&t, "validate", &src).ok();
    migrate(&t, "up", &src).ok();
    assert_eq!(t.sql("mig_lbsem_db", "SELECT count(*) FROM databasechangelog WHERE md5sum LIKE '9:%'"), "3");
}

#[test]
fn sigterm_cancels_the_running_changeset_and_releases_liquibase_lock() {
    let t = T::new("mig_sigterm");
    let url = t.database("mig_sigterm_db");
    t.write(
        "model/changelog.sql",
        "--liquibase formatted sql\n\n--changeset ann:1\nCREATE TABLE a (id int);\nSELECT pg_sleep(60);\n",
    );
    let child = t
        .cmd()
        .args(["migrate", "up", "--url", &url, "--source", "model/changelog.sql"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    t.wait_for_sql("postgres", "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(60)%' AND application_name = 'pgplane-migrate'", "1", "the changeset never started");
    assert_eq!(t.sql("mig_sigterm_db", "SELECT locked FROM databasechangeloglock"), "t");
    let killed = Instant::now();
    std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(killed.elapsed() < Duration::from_secs(10), "pgplane stopped promptly");
    assert_eq!(out.status.code(), Some(1));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("interrupted by SIGTERM"), "{text}");
    // Rolled back, nothing recorded, Liquibase's lock row released.
    assert_eq!(t.sql("mig_sigterm_db", "SELECT to_regclass('a') IS NULL, (SELECT count(*) FROM databasechangelog), (SELECT locked FROM databasechangeloglock)"), "t|0|f");
}
