//! End-to-end: templates and branch databases, real binary against a real server.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{lines, psql, with_db, MASTER, T};

const CANDIDATE: &str = "\
databaseChangeLog:
  - changeSet:
      id: c1
      author: bob
      changes:
        - addColumn:
            tableName: entries
            columns:
              - column: {name: email, type: varchar(200)}
";

const BROKEN: &str = "\
databaseChangeLog:
  - changeSet:
      id: c1
      author: bob
      changes:
        - addColumn:
            tableName: entries
            columns:
              - column: {name: email, type: varchar(200)}
  - changeSet:
      id: c2
      author: bob
      changes:
        - sql:
            sql: INSERT INTO missing_table VALUES (1)
";

/// The manifest body: two modules, a template of `registry`, a branch policy; `extra`
/// goes under `branches:`.
fn body(env: &str, extra: &str) -> String {
    format!(
        "modules:
  - name: registry
    storage: database
  - name: payments
    storage: database
templates:
  - name: {env}_tpl
    module: registry
    sources: [model/master/changelog.yaml]
branches:
  database: \"{{template}}_{{branch}}\"
  readonly_role: {env}_reader
  settings: {{search_path: '\"$user\", public', statement_timeout: 60000}}
{extra}"
    )
}

/// Applies the manifest and builds the template.
fn world(env: &str, extra: &str) -> (T, String) {
    let t = T::new(env);
    t.write("model/master/changelog.yaml", MASTER);
    t.write("model/cand/changelog.yaml", CANDIDATE);
    t.write("model/broken/changelog.yaml", BROKEN);
    let f = t.manifest(&body(env, extra));
    let f = f.to_str().unwrap().to_string();
    t.pgplane(&["apply", "-f", &f, "--yes"]).ok();
    t.pgplane(&["template", "build", &format!("{env}_tpl"), "-f", &f]).ok();
    (t, f)
}

fn branch(t: &T, f: &str, args: &[&str]) -> common::Run {
    let mut all = vec!["branch"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["-f", f]);
    t.pgplane(&all)
}

fn url_as(t: &T, f: &str, module: &str, db: &str) -> String {
    with_db(&t.credentials(&[module, "-f", f]), db)
}

#[test]
fn create_stamps_migrates_and_closes_the_branch() {
    let (t, f) = world("br_create", "");
    let tpl = "br_create_tpl";
    // The template: marked as a template, owned by the admin, closed to module roles.
    assert_eq!(
        t.sql(
            "postgres",
            &format!(
                "SELECT datistemplate, pg_get_userbyid(datdba) = current_user FROM pg_database WHERE datname = '{tpl}'"
            )
        ),
        "t|t"
    );
    let out = branch(
        &t,
        &f,
        &[
            "create",
            "feature/ABC-12",
            "--template",
            tpl,
            "--source",
            "model/cand/changelog.yaml",
            "--label",
            "mr=12",
            "--json",
        ],
    )
    .ok()
    .json();
    let db = "br_create_tpl_feature_abc_12";
    assert_eq!(out["status"], "SUCCESS", "{out}");
    assert_eq!(out["database"], db);
    assert_eq!(out["labels"]["mr"], "12");
    // Stamped from the template (its row is there), then migrated (the candidate's column).
    assert_eq!(t.sql(db, "SELECT name FROM entries"), "from the template");
    assert_eq!(
        t.sql(
            db,
            "SELECT count(*) FROM information_schema.columns WHERE table_name = 'entries' AND column_name = 'email'"
        ),
        "1"
    );
    assert_eq!(t.sql(db, "SELECT string_agg(id, ',' ORDER BY orderexecuted) FROM databasechangelog"), "m1,c1");
    // Owned by the module's owner, settings applied, PUBLIC revoked.
    assert_eq!(
        t.sql(
            "postgres",
            &format!("SELECT pg_get_userbyid(datdba), datistemplate FROM pg_database WHERE datname = '{db}'")
        ),
        "br_create_registry|f"
    );
    let settings = t.sql("postgres", &format!("SELECT array_to_string(setconfig, ';') FROM pg_db_role_setting WHERE setdatabase = (SELECT oid FROM pg_database WHERE datname = '{db}') AND setrole = 0"));
    assert!(
        settings.contains("statement_timeout=60000") && settings.contains("search_path=\"$user\", public"),
        "{settings}"
    );
    // The module's owner works in it; another module's role cannot connect.
    psql(&url_as(&t, &f, "registry", db), "INSERT INTO entries (name) VALUES ('owner writes')").unwrap();
    let denied = psql(&url_as(&t, &f, "payments", db), "SELECT 1").unwrap_err();
    assert!(denied.contains("permission denied for database"), "{denied}");
    let denied = psql(&url_as(&t, &f, "registry", tpl), "SELECT 1").unwrap_err();
    assert!(denied.contains("permission denied for database"), "the template refuses module roles: {denied}");
    // The show/list views agree; a second create of the same id is refused.
    let listed = branch(&t, &f, &["list", "--json"]).ok().json();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    let again = branch(&t, &f, &["create", "feature/ABC-12", "--template", tpl]).fails();
    assert!(again.stderr.contains("already exists") && again.stderr.contains("branch reset"), "{}", again.stderr);
}

#[test]
fn the_readonly_role_reads_every_branch_and_the_template_and_writes_nothing() {
    let (t, f) = world("br_ro", "");
    branch(&t, &f, &["create", "1", "--template", "br_ro_tpl", "--source", "model/cand/changelog.yaml"]).ok();
    let reader = t.credentials(&["--branch-readonly", "-f", &f]);
    for db in ["br_ro_tpl_1", "br_ro_tpl"] {
        assert_eq!(psql(&with_db(&reader, db), "SELECT count(*) FROM entries").unwrap(), "1", "{db}");
        let denied = psql(&with_db(&reader, db), "INSERT INTO entries (name) VALUES ('x')").unwrap_err();
        assert!(denied.contains("permission denied for table entries"), "{db}: {denied}");
    }
}

#[test]
fn a_failing_candidate_is_failed_with_the_changeset_and_message_then_reset_fixes_it() {
    let (t, f) = world("br_fail", "");
    let run = branch(
        &t,
        &f,
        &["create", "7", "--template", "br_fail_tpl", "--source", "model/broken/changelog.yaml", "--json"],
    );
    assert_eq!(run.code, 1, "{run:?}");
    let v = run.json();
    assert_eq!(v["status"], "FAILED");
    let error = v["error"].as_str().unwrap();
    assert!(
        error.contains("changelog.yaml::c2::bob") && error.contains("relation \"missing_table\" does not exist"),
        "{error}"
    );
    assert_eq!(v["failure"]["sqlstate"], "42P01");
    assert!(v["failure"]["statement"].as_str().unwrap().contains("missing_table"));
    // show reports the same; text output names the error.
    let shown = branch(&t, &f, &["show", "7"]);
    assert_eq!(shown.code, 1);
    assert!(shown.stdout.contains("FAILED") && shown.stdout.contains("missing_table"), "{}", shown.stdout);
    // A new patch set: reset drops, re-stamps and deploys again.
    let fixed = branch(&t, &f, &["reset", "7", "--source", "model/cand/changelog.yaml", "--json"]).ok().json();
    assert_eq!(fixed["status"], "SUCCESS");
    assert_eq!(
        t.sql("br_fail_tpl_7", "SELECT string_agg(id, ',' ORDER BY orderexecuted) FROM databasechangelog"),
        "m1,c1"
    );
}

#[test]
fn concurrent_resets_of_one_branch_serialize() {
    let (t, f) = world("br_conc", "");
    branch(&t, &f, &["create", "5", "--template", "br_conc_tpl"]).ok();
    t.write(
        "model/slow/changelog.yaml",
        "databaseChangeLog:\n  - changeSet:\n      id: s1\n      author: c\n      changes:\n        - sql: {sql: SELECT pg_sleep(1)}\n        - createTable: {tableName: marker, columns: [{column: {name: id, type: int}}]}\n",
    );
    let spawn = || {
        t.cmd()
            .args(["branch", "reset", "5", "--source", "model/slow/changelog.yaml", "-f", &f, "--json"])
            .output()
            .unwrap()
    };
    let started = Instant::now();
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
    assert!(started.elapsed() >= Duration::from_secs(2), "one after the other, each with its 1 s changeset");
    assert_eq!(t.sql("br_conc_tpl_5", "SELECT count(*) FROM marker"), "0");
    let ops = t.sql(
        "pgplane",
        "SELECT count(*) FROM pgplane.jobs WHERE env = 'br_conc' AND kind = 'branch_reset' AND status = 'succeeded'",
    );
    assert_eq!(ops, "2");
}

#[test]
fn sessions_on_the_template_are_waited_for_or_terminated() {
    let (t, f) = world("br_sess", "  template_sessions: wait\n");
    // An open session on the template (the admin may connect).
    let mut holder = std::process::Command::new("psql")
        .args([&with_db(&t.server.url, "br_sess_tpl"), "-X", "-q", "-c", "SELECT pg_sleep(30)"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    t.wait_for_sql(
        "postgres",
        "SELECT count(*) > 0 FROM pg_stat_activity WHERE datname = 'br_sess_tpl'",
        "t",
        "the session never connected",
    );
    let waited = branch(&t, &f, &["create", "1", "--template", "br_sess_tpl", "--session-timeout", "1s"]);
    assert_eq!(waited.code, 1);
    let text = format!("{}{}", waited.stdout, waited.stderr);
    assert!(
        text.contains("session(s) on template br_sess_tpl did not end within 1s")
            && text.contains("template_sessions: terminate"),
        "{text}"
    );
    // With terminate, the copy goes ahead and the session is gone.
    let f2 = t.manifest_named("terminate.yaml", &body("br_sess", "  template_sessions: terminate\n"));
    branch(&t, f2.to_str().unwrap(), &["reset", "1"]).ok();
    assert_eq!(branch(&t, &f, &["show", "1", "--json"]).json()["status"], "SUCCESS");
    let _ = holder.wait();
}

#[test]
fn gc_keeps_the_live_list_and_drops_the_rest_and_the_expired() {
    let (t, f) = world("br_gc", "  max_per_template: 4\n");
    for id in ["101", "102", "103"] {
        branch(&t, &f, &["create", id, "--template", "br_gc_tpl"]).ok();
    }
    branch(&t, &f, &["create", "104", "--template", "br_gc_tpl", "--ttl", "1s"]).ok();
    // The cap: a fifth is refused.
    let capped = branch(&t, &f, &["create", "105", "--template", "br_gc_tpl"]).fails();
    assert!(
        capped.stderr.contains("already has 4 branches") && capped.stderr.contains("max_per_template"),
        "{}",
        capped.stderr
    );
    std::thread::sleep(Duration::from_millis(1500));
    // Without a live list only the expired one goes.
    let dry = branch(&t, &f, &["gc", "--dry-run", "--json"]).ok().json();
    assert_eq!(dry["dropped"].as_array().unwrap().len(), 1);
    assert!(dry["dropped"][0]["reason"].as_str().unwrap().starts_with("expired"));
    assert_eq!(
        t.sql("postgres", "SELECT count(*) FROM pg_database WHERE datname = 'br_gc_tpl_104'"),
        "1",
        "dry run drops nothing"
    );
    t.write("empty.txt", "# nothing open\n");
    let refused = branch(&t, &f, &["gc", "--keep-file", "empty.txt"]).fails();
    assert!(refused.stderr.contains("--allow-empty"), "{}", refused.stderr);
    t.write("open-mrs.txt", "# open merge requests\n101\n\n103\n");
    let done = branch(&t, &f, &["gc", "--keep-file", "open-mrs.txt"]).ok();
    assert!(
        done.stdout.contains("dropped branch 102") && done.stdout.contains("not in the live list"),
        "{}",
        done.stdout
    );
    assert_eq!(
        lines(&t.sql("postgres", "SELECT datname FROM pg_database WHERE datname LIKE 'br\\_gc\\_tpl\\_%' ORDER BY 1")),
        ["br_gc_tpl_101", "br_gc_tpl_103"]
    );
    let ids: Vec<String> = branch(&t, &f, &["list", "--json"])
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, ["101", "103"]);
}

#[test]
fn ids_are_sanitised_and_colliding_ids_are_refused() {
    let (t, f) = world("br_ids", "");
    branch(&t, &f, &["create", "Fix Bug!", "--template", "br_ids_tpl"]).ok();
    let clash = branch(&t, &f, &["create", "fix-bug", "--template", "br_ids_tpl"]).fails();
    assert!(
        clash.stderr.contains("\"Fix Bug!\" and \"fix-bug\" both become database br_ids_tpl_fix_bug"),
        "{}",
        clash.stderr
    );
    let long = "x".repeat(90);
    let v = branch(&t, &f, &["create", &long, "--template", "br_ids_tpl", "--json"]).ok().json();
    assert_eq!(v["database"].as_str().unwrap().len(), 63);
    let bad = branch(&t, &f, &["create", "!!!", "--template", "br_ids_tpl"]).fails();
    assert!(bad.stderr.contains("no letters or digits"), "{}", bad.stderr);
}

#[test]
fn delete_all_touches_only_managed_branches() {
    let (t, f) = world("br_del", "");
    branch(&t, &f, &["create", "1", "--template", "br_del_tpl"]).ok();
    branch(&t, &f, &["create", "2", "--template", "br_del_tpl"]).ok();
    // Someone made a database that matches the pattern by hand: not pgplane's.
    t.sql("postgres", "DROP DATABASE IF EXISTS br_del_tpl_handmade");
    t.sql("postgres", "CREATE DATABASE br_del_tpl_handmade");
    let out = branch(&t, &f, &["delete", "--all", "--match", "br_del_tpl_*", "--json"]).ok().json();
    assert_eq!(out["deleted"].as_array().unwrap().len(), 2);
    assert_eq!(
        lines(&t.sql("postgres", "SELECT datname FROM pg_database WHERE datname LIKE 'br\\_del\\_tpl%' ORDER BY 1")),
        ["br_del_tpl", "br_del_tpl_handmade"]
    );
    // A branch name that an unmanaged database already has is refused, not taken over.
    let taken = branch(&t, &f, &["create", "handmade", "--template", "br_del_tpl"]).fails();
    assert!(taken.stderr.contains("not a branch pgplane manages"), "{}", taken.stderr);
    // A branch whose database was dropped by hand is reported, not shown as SUCCESS.
    branch(&t, &f, &["create", "3", "--template", "br_del_tpl"]).ok();
    t.sql("postgres", "DROP DATABASE br_del_tpl_3");
    let gone = branch(&t, &f, &["show", "3", "--json"]);
    assert_eq!(gone.code, 1);
    assert!(gone.json()["error"].as_str().unwrap().contains("is missing"), "{}", gone.stdout);
    branch(&t, &f, &["reset", "3"]).ok();
    let one = branch(&t, &f, &["delete", "nope"]).fails();
    assert!(one.stderr.contains("there is no branch \"nope\""), "{}", one.stderr);
}

#[test]
fn a_killed_deployment_is_reported_honestly_and_cleaned_up() {
    let (t, f) = world("br_kill", "");
    t.write(
        "model/sleepy/changelog.yaml",
        "databaseChangeLog:\n  - changeSet:\n      id: z1\n      author: c\n      changes:\n        - sql: {sql: SELECT pg_sleep(60)}\n",
    );
    let mut child = t
        .cmd()
        .args([
            "branch",
            "create",
            "9",
            "--template",
            "br_kill_tpl",
            "--source",
            "model/sleepy/changelog.yaml",
            "-f",
            &f,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    t.wait_for_sql(
        "postgres",
        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(60)%' AND datname = 'br_kill_tpl_9'",
        "1",
        "the deployment never started",
    );
    child.kill().unwrap();
    child.wait().unwrap();
    // Honest status: not RUNNING forever, but an interrupted (FAILED) deployment.
    let deadline = Instant::now() + Duration::from_secs(10);
    let shown = loop {
        let v = branch(&t, &f, &["show", "9", "--json"]).json();
        if v["status"] == "FAILED" || Instant::now() > deadline {
            break v;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(shown["status"], "FAILED", "{shown}");
    assert!(shown["error"].as_str().unwrap().contains("interrupted"), "{shown}");
    // gc cleans it up; no database with the branch's name is left.
    let gc = branch(&t, &f, &["gc"]).ok();
    assert!(gc.stdout.contains("dropped branch 9"), "{}", gc.stdout);
    assert_eq!(t.sql("postgres", "SELECT count(*) FROM pg_database WHERE datname = 'br_kill_tpl_9'"), "0");
}

#[test]
fn a_failed_rebuild_leaves_the_template_and_branches_keep_working() {
    let (t, f) = world("br_rebuild", "");
    branch(&t, &f, &["create", "1", "--template", "br_rebuild_tpl"]).ok();
    let oid = t.sql("postgres", "SELECT oid FROM pg_database WHERE datname = 'br_rebuild_tpl'");
    // A broken master: the rebuild fails, the old template stays.
    t.write("model/master/changelog.yaml", &format!("{MASTER}  - changeSet:\n      id: m2\n      author: ann\n      changes:\n        - sql: {{sql: SELECT * FROM nowhere}}\n"));
    let failed = t.pgplane(&["template", "build", "br_rebuild_tpl", "-f", &f]).fails();
    assert!(failed.stdout.contains("NOT rebuilt") && failed.stdout.contains("nowhere"), "{}", failed.stdout);
    assert_eq!(t.sql("postgres", "SELECT oid FROM pg_database WHERE datname = 'br_rebuild_tpl'"), oid);
    assert_eq!(t.sql("postgres", "SELECT count(*) FROM pg_database WHERE datname LIKE 'br_rebuild_tpl\\_\\_%'"), "0");
    branch(&t, &f, &["create", "2", "--template", "br_rebuild_tpl"]).ok();
    // A good rebuild swaps in a new template database.
    t.write("model/master/changelog.yaml", &format!("{MASTER}  - changeSet:\n      id: m2\n      author: ann\n      changes:\n        - createTable: {{tableName: extra, columns: [{{column: {{name: id, type: int}}}}]}}\n"));
    t.pgplane(&["template", "build", "br_rebuild_tpl", "-f", &f]).ok();
    assert_ne!(t.sql("postgres", "SELECT oid FROM pg_database WHERE datname = 'br_rebuild_tpl'"), oid);
    branch(&t, &f, &["create", "3", "--template", "br_rebuild_tpl"]).ok();
    assert_eq!(t.sql("br_rebuild_tpl_3", "SELECT to_regclass('extra') IS NOT NULL"), "t");
    // A rebuild that died between its renames (template retired, new one not in yet) and
    // left its build database: the next build recovers and cleans up.
    t.sql("postgres", "ALTER DATABASE br_rebuild_tpl IS_TEMPLATE false");
    t.sql("postgres", "ALTER DATABASE br_rebuild_tpl RENAME TO br_rebuild_tpl__retired");
    t.sql("postgres", "CREATE DATABASE br_rebuild_tpl__build");
    t.pgplane(&["template", "build", "br_rebuild_tpl", "-f", &f]).ok();
    assert_eq!(
        lines(&t.sql("postgres", "SELECT datname || ' ' || datistemplate FROM pg_database WHERE datname LIKE 'br\\_rebuild\\_tpl%' AND datname NOT LIKE '%\\_1' AND datname NOT LIKE '%\\_2' AND datname NOT LIKE '%\\_3' ORDER BY 1")),
        ["br_rebuild_tpl true"]
    );
    assert_eq!(
        t.sql("br_rebuild_tpl_1", "SELECT to_regclass('extra') IS NULL"),
        "t",
        "existing branches are untouched"
    );
}

#[test]
fn wait_for_a_branch_holds_once_it_succeeded() {
    let (t, f) = world("br_wait", "");
    let r = t.pgplane(&["wait", "-f", &f, "--for", "branch:42", "--timeout", "300ms"]).fails();
    assert!(r.stdout.contains("no deployment record"), "{}", r.stdout);
    branch(&t, &f, &["create", "42", "--template", "br_wait_tpl"]).ok();
    let ok = t.pgplane(&["wait", "-f", &f, "--for", "branch:42", "--timeout", "5s"]).ok();
    assert!(ok.stdout.contains("branch:42"), "{}", ok.stdout);
}
