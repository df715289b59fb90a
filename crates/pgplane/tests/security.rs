//! Issue 11, classes 3, 7, 8, 9 and 10, end to end: the real binary against a real server,
//! each test named after its class and written the way an attacker would try it.
//!
//! - class 3: files stay inside their root (symlinks in SQL folders, includes, sqlFile,
//!   linked folders; on the command line, over HTTP, and when a job reads them later).
//! - class 7: identity, not names: objects dropped and re-created by someone else under a
//!   managed name are never dropped or altered.
//! - class 8: password drift is seen and repaired; a wrong secret key is named.
//! - class 9: literals under `standard_conforming_strings = off`, NUL bytes, `pg_` names.
//! - class 10: control characters in output, `| head -1`, deep nesting, a private home.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{psql, with_db, Run, BIN, MASTER, T};

/// A folder next to the test's own (outside its manifest's folder), with `files`.
fn outside(t: &T, name: &str, files: &[(&str, &str)]) -> PathBuf {
    let dir = t.server.root.join(format!("{}-outside-{name}", t.env));
    std::fs::create_dir_all(&dir).unwrap();
    for (f, text) in files {
        std::fs::write(dir.join(f), text).unwrap();
    }
    dir
}

const LEAK: &str = "CREATE TABLE leaked (secret text)";

const LEAK_CHANGELOG: &str = "\
databaseChangeLog:
  - changeSet:
      id: evil
      author: mallory
      changes:
        - sql:
            sql: CREATE TABLE leaked (secret text)
";

fn table_exists(t: &T, db: &str, table: &str) -> bool {
    t.sql(db, &format!("SELECT count(*) FROM pg_class WHERE relname = '{table}'")) != "0"
}

// ----- class 3: sources stay inside their root ---------------------------------------

#[test]
fn class3_a_symlinked_file_in_a_sql_folder_is_refused_before_anything_runs() {
    let t = T::new("sec3file");
    let out = outside(&t, "f", &[("evil.sql", LEAK)]);
    t.write("db/V1__fine.sql", "CREATE TABLE fine (x int)");
    symlink(out.join("evil.sql"), t.dir.join("db/V2__evil.sql")).unwrap();
    let f = t.manifest("modules:\n  - name: app\n    storage: database\n    migrations: db\n");
    let r = t.pgplane(&["apply", "-f", f.to_str().unwrap(), "--yes"]).fails();
    assert!(r.stderr.contains("V2__evil.sql") && r.stderr.contains("outside"), "{}", r.stderr);
    assert!(!table_exists(&t, "sec3file_app", "leaked"), "the file outside ran");
    assert!(!table_exists(&t, "sec3file_app", "fine"), "something ran before the refusal");
    // On the command line, a --source folder is its own root: the same link is refused.
    let url = with_db(&t.server.url, "sec3file_app");
    let r = t.pgplane(&["migrate", "up", "--url", &url, "--source", "db"]).fails();
    assert!(r.stderr.contains("outside"), "{}", r.stderr);
    assert!(!table_exists(&t, "sec3file_app", "leaked"));
}

#[test]
fn class3_an_include_through_a_linked_folder_and_a_sql_file_link_are_refused() {
    let t = T::new("sec3incl");
    let out = outside(&t, "i", &[("evil.yaml", LEAK_CHANGELOG), ("evil.sql", LEAK)]);
    t.write(
        "db/changelog.yaml",
        "databaseChangeLog:\n  - include:\n      file: shared/evil.yaml\n      relativeToChangelogFile: true\n",
    );
    symlink(&out, t.dir.join("db/shared")).unwrap();
    t.write(
        "files/changelog.yaml",
        "databaseChangeLog:\n  - changeSet:\n      id: f1\n      author: mallory\n      changes:\n        - sqlFile:\n            path: evil.sql\n            relativeToChangelogFile: true\n",
    );
    symlink(out.join("evil.sql"), t.dir.join("files/evil.sql")).unwrap();
    let f = t.manifest(
        "modules:\n  - name: app\n    storage: database\n    migrations: db/changelog.yaml\n  - name: other\n    storage: database\n",
    );
    let f = f.to_str().unwrap();
    t.pgplane(&["apply", "-f", f, "--yes", "--skip-migrations"]).ok();
    for (module, needle) in [("app", "shared/evil.yaml"), ("other", "evil.sql")] {
        let source = if module == "app" { "db/changelog.yaml" } else { "files/changelog.yaml" };
        let r = t.pgplane(&["migrate", "up", "-f", f, "--module", module, "--source", source]).fails();
        assert!(r.stderr.contains(needle) && r.stderr.contains("outside"), "{module}: {}", r.stderr);
        assert!(!table_exists(&t, &format!("sec3incl_{module}"), "leaked"), "{module}: the file outside ran");
    }
    let r = t.pgplane(&["migrate", "up", "-f", f, "--module", "app"]).fails();
    assert!(r.stderr.contains("outside"), "{}", r.stderr);
}

#[test]
fn class3_a_source_folder_that_is_a_link_out_of_the_manifest_folder_is_refused() {
    let t = T::new("sec3dir");
    let out = outside(&t, "d", &[("V1__evil.sql", LEAK)]);
    symlink(&out, t.dir.join("db")).unwrap();
    let f = t.manifest("modules:\n  - name: app\n    storage: database\n    migrations: db\n");
    let r = t.pgplane(&["apply", "-f", f.to_str().unwrap(), "--yes"]).fails();
    assert!(r.stderr.contains("db leads to") && r.stderr.contains("sec3dir-outside-d"), "{}", r.stderr);
    assert!(!table_exists(&t, "sec3dir_app", "leaked"));
}

/// The registry module and its template, applied and built (see tests/branch.rs).
fn branch_world(env: &str, policy: &str) -> (T, String) {
    let t = T::new(env);
    t.write("model/master/changelog.yaml", MASTER);
    let f = t.manifest(&format!(
        "modules:
  - name: registry
    storage: database
templates:
  - name: {env}_tpl
    module: registry
    sources: [model/master/changelog.yaml]
branches:
  database: \"{policy}\"
"
    ));
    let f = f.to_str().unwrap().to_string();
    t.pgplane(&["apply", "-f", &f, "--yes"]).ok();
    t.pgplane(&["template", "build", &format!("{env}_tpl"), "-f", &f]).ok();
    (t, f)
}

#[test]
fn class3_a_job_reads_sources_inside_the_manifest_folder_only_also_later() {
    let (t, f) = branch_world("sec3job", "{template}_{branch}");
    let out = outside(&t, "j", &[("evil.yaml", LEAK_CHANGELOG), ("changelog.yaml", LEAK_CHANGELOG)]);
    // Over HTTP: the named file is inside (so the request passes its check), but what it
    // includes leads out; the job that reads it later refuses it.
    t.write(
        "model/cand/changelog.yaml",
        "databaseChangeLog:\n  - include:\n      file: linked/evil.yaml\n      relativeToChangelogFile: true\n",
    );
    symlink(&out, t.dir.join("model/cand/linked")).unwrap();
    let admin = "admin-token-0123456789abcdef";
    let s = t.serve(&f, &[], &[("PGPLANE_TOKENS", &format!("admin:{admin}"))]);
    let body = r#"{"id": "mr-1", "template": "sec3job_tpl", "sources": ["model/cand/changelog.yaml"]}"#;
    let r = s.req("POST", "/api/v1/branches", Some(admin), Some(body));
    assert_eq!(r.status, 202, "{}", r.body);
    let deadline = Instant::now() + Duration::from_secs(60);
    let b = loop {
        let b = s.req("GET", "/api/v1/branches/mr-1", Some(admin), None).json();
        if b["status"] != "RUNNING" {
            break b;
        }
        assert!(Instant::now() < deadline, "still running: {b}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(b["status"], "FAILED", "{b}");
    assert!(b["error"].as_str().unwrap().contains("outside"), "{b}");
    assert!(!table_exists(&t, "sec3job_tpl_mr_1", "leaked"), "the included file outside ran");
    drop(s);

    // On the command line: a branch's recorded source whose folder is replaced by a link
    // out after it was recorded is not followed by `reset`.
    t.write("model/good/changelog.yaml", "databaseChangeLog:\n  - changeSet:\n      id: g1\n      author: ann\n      changes:\n        - sql:\n            sql: CREATE TABLE good (x int)\n");
    let src = t.dir.join("model/good/changelog.yaml");
    let src = src.to_str().unwrap();
    t.pgplane(&["branch", "create", "mr-2", "--template", "sec3job_tpl", "--source", src, "-f", &f]).ok();
    std::fs::remove_dir_all(t.dir.join("model/good")).unwrap();
    symlink(&out, t.dir.join("model/good")).unwrap();
    let r = t.pgplane(&["branch", "reset", "mr-2", "-f", &f]).fails();
    assert!(r.stderr.contains("now leads to"), "{}", r.stderr);
    assert!(!table_exists(&t, "sec3job_tpl_mr_2", "leaked"));
    t.pgplane(&["branch", "delete", "--all", "-f", &f]).ok();
}

// ----- class 7: identity, not just names ---------------------------------------------

#[test]
fn class7_a_recreated_role_and_database_are_a_conflict_and_survive_prune() {
    let t = T::new("sec7obj");
    let both = t.manifest("modules:\n  - name: keep\n    storage: database\n  - name: gone\n    storage: database\n");
    let both = both.to_str().unwrap().to_string();
    t.pgplane(&["apply", "-f", &both, "--yes"]).ok();
    let recreate = || {
        t.sql("postgres", "DROP DATABASE sec7obj_gone WITH (FORCE)");
        t.sql("postgres", "DROP ROLE sec7obj_gone");
        t.sql("postgres", "CREATE ROLE sec7obj_gone LOGIN");
        t.sql("postgres", "CREATE DATABASE sec7obj_gone OWNER sec7obj_gone");
    };
    recreate();
    // Still wanted: a conflict that names both, and nothing runs.
    let r = t.pgplane(&["plan", "-f", &both]).fails();
    for obj in ["role sec7obj_gone", "database sec7obj_gone"] {
        assert!(r.stderr.contains(&format!("{obj} is not the one pgplane created")), "{}", r.stderr);
    }
    assert!(r.stderr.contains("pgplane adopt"), "{}", r.stderr);
    let status = t.pgplane(&["status", "-f", &both, "--env", "sec7obj", "--json"]).ok().json();
    let replaced: Vec<&serde_json::Value> =
        status["environments"][0]["objects"].as_array().unwrap().iter().filter(|o| !o["replaced"].is_null()).collect();
    assert_eq!(replaced.len(), 2, "{status}");
    // Adopting resolves it: the records now name the new objects.
    t.pgplane(&["adopt", "-f", &both, "--yes"]).ok();
    t.pgplane(&["apply", "-f", &both, "--yes"]).ok();
    assert_eq!(t.pgplane(&["plan", "-f", &both, "--detailed-exitcode"]).code, 0);

    // Pruned after someone re-created them: the records go, the objects stay.
    recreate();
    let keep = t.manifest_named("keep.yaml", "modules:\n  - name: keep\n    storage: database\n");
    let keep = keep.to_str().unwrap();
    let plan = t.pgplane(&["plan", "-f", keep, "--prune"]).ok();
    assert!(plan.stdout.contains("not the one pgplane created"), "{}", plan.stdout);
    assert!(!plan.stdout.contains("DROP"), "{}", plan.stdout);
    t.pgplane(&["apply", "-f", keep, "--prune", "--yes"]).ok();
    let (roles, dbs) = t.catalog_names();
    assert!(roles.contains(&"sec7obj_gone".to_string()), "the re-created role was dropped: {roles:?}");
    assert!(dbs.contains(&"sec7obj_gone".to_string()), "the re-created database was dropped: {dbs:?}");
    assert!(!t.records("role").contains(&"sec7obj_gone".to_string()));
    assert!(!t.records("database").contains(&"sec7obj_gone".to_string()));
    t.sql("postgres", "DROP DATABASE sec7obj_gone WITH (FORCE)");
    t.sql("postgres", "DROP ROLE sec7obj_gone");
}

#[test]
fn class7_recreated_branch_databases_survive_delete_gc_and_delete_all() {
    let (t, f) = branch_world("sec7br", "{template}_{branch}");
    let recreate = |db: &str| {
        t.sql("postgres", &format!("DROP DATABASE {db} WITH (FORCE)"));
        t.sql("postgres", &format!("CREATE DATABASE {db}"));
        t.sql(db, "CREATE TABLE theirs (x int)");
    };
    for id in ["b1", "b2", "b3", "b4"] {
        t.pgplane(&["branch", "create", id, "--template", "sec7br_tpl", "-f", &f]).ok();
    }
    for id in ["b1", "b2", "b3"] {
        recreate(&format!("sec7br_tpl_{id}"));
    }
    // A reset would drop it first: the branch fails instead, saying why.
    let r = t.pgplane(&["branch", "reset", "b1", "-f", &f]).fails();
    assert!(r.stdout.contains("status    FAILED") && r.stdout.contains("not the one pgplane created"), "{}", r.stdout);
    let r = t.pgplane(&["branch", "delete", "b1", "-f", &f]).ok();
    assert!(r.stdout.contains("record only"), "{}", r.stdout);
    let r = t.pgplane(&["branch", "gc", "--keep", "b3", "--keep", "b4", "-f", &f]).ok();
    assert!(r.stdout.contains("dropped branch b2") && r.stdout.contains("record only"), "{}", r.stdout);
    t.pgplane(&["branch", "delete", "--all", "-f", &f]).ok();
    for id in ["b1", "b2", "b3"] {
        let db = format!("sec7br_tpl_{id}");
        assert!(table_exists(&t, &db, "theirs"), "{db} was dropped although it is not pgplane's");
        t.sql("postgres", &format!("DROP DATABASE {db} WITH (FORCE)"));
    }
    // Its own branch database pgplane did drop.
    assert_eq!(t.sql("postgres", "SELECT count(*) FROM pg_database WHERE datname = 'sec7br_tpl_b4'"), "0");
    assert!(t.pgplane(&["branch", "list", "-f", &f]).ok().stdout.contains("no branches"));
}

// ----- class 8: password drift is seen ------------------------------------------------

#[test]
fn class8_a_password_changed_by_hand_is_drift_that_apply_repairs() {
    let t = T::new("sec8pw");
    let f = t.manifest("modules:\n  - name: app\n    storage: database\n");
    let f = f.to_str().unwrap();
    t.pgplane(&["apply", "-f", f, "--yes"]).ok();
    let url = t.credentials(&["app", "-f", f, "--format", "url"]);
    let password = url.split(':').nth(2).unwrap().split('@').next().unwrap().to_string();
    // The derived password set by hand gets a salt of the server's own: still no drift.
    t.sql("postgres", &format!("ALTER ROLE sec8pw_app PASSWORD '{password}'"));
    assert_eq!(t.pgplane(&["plan", "-f", f, "--detailed-exitcode"]).code, 0);

    t.sql("postgres", "ALTER ROLE sec8pw_app PASSWORD 'changed-by-hand'");
    let plan = t.pgplane(&["plan", "-f", f, "--json"]).ok().json();
    let action = &plan["actions"][0];
    assert_eq!(action["kind"], "set_password", "{plan}");
    assert!(action["why"].as_str().unwrap().contains("drift"), "{plan}");
    assert!(!plan.to_string().contains("changed-by-hand"));
    let status = t.pgplane(&["status", "-f", f, "--env", "sec8pw"]).ok();
    assert!(status.stdout.contains("drift: its password is not the one pgplane derives"), "{}", status.stdout);
    // Not handed out while it would fail.
    let r = t.pgplane(&["credentials", "app", "-f", f, "--format", "url"]).fails();
    assert!(r.stderr.contains("is not the one pgplane derives"), "{}", r.stderr);
    assert!(psql(&url, "SELECT 1").is_err());

    t.pgplane(&["apply", "-f", f, "--yes"]).ok();
    assert_eq!(psql(&url, "SELECT current_user").unwrap(), "sec8pw_app");
    assert_eq!(t.pgplane(&["plan", "-f", f, "--detailed-exitcode"]).code, 0);
    t.sql("postgres", "ALTER ROLE sec8pw_app PASSWORD NULL");
    let plan = t.pgplane(&["plan", "-f", f, "--json"]).ok().json();
    assert_eq!(plan["actions"][0]["why"], "drift: it has no password", "{plan}");
}

/// A server of the test's own (so a test may change the key its control database records).
struct OwnServer {
    home: PathBuf,
    url: String,
}

impl OwnServer {
    fn start(name: &str) -> OwnServer {
        let home = common::temp_home(name);
        let run = |args: &[&str]| {
            Command::new(BIN)
                .args(args)
                .env("PGPLANE_HOME", &home)
                .env("PGPLANE_LOCAL_OPTIONS", "-c fsync=off")
                .env_remove("PGPLANE_LOCAL_PORT")
                .env_remove("PGPLANE_SECRET_KEY")
                .output()
                .unwrap()
        };
        let out = run(&["local", "start"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let url = String::from_utf8_lossy(&run(&["local", "url"]).stdout).trim().to_string();
        OwnServer { home, url }
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        let _ = Command::new(BIN).args(["local", "stop"]).env("PGPLANE_HOME", &self.home).output();
    }
}

#[test]
fn class8_a_wrong_secret_key_is_named_and_never_used() {
    let own = OwnServer::start("sec8key-server");
    let t = T::new("sec8key");
    let f = t.manifest("modules:\n  - name: app\n    storage: database\n    readonly_role: true\n");
    let f = f.to_str().unwrap();
    let key_a = "the-first-secret-key-of-this-test-0123456789";
    let key_b = "another-secret-key-not-the-first-0123456789";
    let with = |key: &str, args: &[&str]| -> Run {
        let out = t.cmd().args(args).env("TEST_PG_URL", &own.url).env("PGPLANE_SECRET_KEY", key).output().unwrap();
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into(),
            stderr: String::from_utf8_lossy(&out.stderr).into(),
        }
    };
    assert_eq!(with(key_a, &["apply", "-f", f, "--yes"]).code, 0);
    let url = with(key_a, &["credentials", "app", "-f", f, "--format", "url"]).stdout.trim().to_string();
    assert_eq!(psql(&url, "SELECT current_user").unwrap(), "sec8key_app");

    for args in
        [&["plan", "-f", f][..], &["apply", "-f", f, "--yes"], &["credentials", "app", "-f", f, "--format", "url"]]
    {
        let r = with(key_b, args);
        assert_eq!(r.code, 1, "{args:?}: {}", r.stdout);
        assert!(r.stderr.contains("wrong secret key: PGPLANE_SECRET_KEY has fingerprint"), "{args:?}: {}", r.stderr);
        assert!(!r.stdout.contains("postgresql://"), "a password of the wrong key was handed out");
    }
    let status = with(key_b, &["status", "-f", f]);
    assert!(status.stdout.contains("wrong secret key"), "{}", status.stdout);
    assert_eq!(psql(&url, "SELECT 1").unwrap(), "1", "a refused apply changed a password");

    // A control database of an older pgplane records no key: every managed role differing
    // is named as a wrong key too.
    psql(&with_db(&own.url, "pgplane"), "UPDATE pgplane.installation SET key_fingerprint = NULL").unwrap();
    let r = with(key_b, &["plan", "-f", f]);
    assert!(r.stderr.contains("every managed role's password (2 checked) differs"), "{}", r.stderr);

    // Replaced on purpose: apply --new-secret-key records it and sets every password anew.
    let r = with(key_b, &["apply", "-f", f, "--yes", "--new-secret-key"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(psql(&url, "SELECT 1").is_err(), "the old password still works");
    let url_b = with(key_b, &["credentials", "app", "-f", f, "--format", "url"]).stdout.trim().to_string();
    assert_eq!(psql(&url_b, "SELECT current_user").unwrap(), "sec8key_app");
    assert_eq!(with(key_b, &["plan", "-f", f, "--detailed-exitcode"]).code, 0);
    assert!(with(key_a, &["plan", "-f", f]).stderr.contains("wrong secret key"));
}

// ----- class 9: literals and names ---------------------------------------------------

#[test]
fn class9_literals_stay_exact_with_standard_conforming_strings_off() {
    let t = T::new("sec9scs");
    t.sql("postgres", "DROP ROLE IF EXISTS sec9scs_admin");
    t.sql("postgres", "CREATE ROLE sec9scs_admin SUPERUSER LOGIN PASSWORD 'sec9scs-admin-pw'");
    t.sql("postgres", "ALTER ROLE sec9scs_admin SET standard_conforming_strings = off");
    let at = t.server.url.find('@').unwrap();
    let url = format!("postgresql://sec9scs_admin:sec9scs-admin-pw{}", &t.server.url[at..]);
    assert_eq!(psql(&url, "SHOW standard_conforming_strings").unwrap(), "off");
    let f = t.manifest(
        "modules:\n  - name: app\n    storage: database\n    settings:\n      app.note: 'back\\slash ''quoted'' \\x41 \\'\n",
    );
    let f = f.to_str().unwrap();
    let run = |args: &[&str]| -> Run {
        let out = t.cmd().args(args).env("TEST_PG_URL", &url).output().unwrap();
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into(),
            stderr: String::from_utf8_lossy(&out.stderr).into(),
        }
    };
    let r = run(&["apply", "-f", f, "--yes"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let stored = t.sql(
        "postgres",
        "SELECT array_to_string(setconfig, '|') FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase
          WHERE d.datname = 'sec9scs_app' AND s.setrole = 0",
    );
    assert_eq!(stored, "app.note=back\\slash 'quoted' \\x41 \\");
    assert_eq!(run(&["plan", "-f", f, "--detailed-exitcode"]).code, 0);
}

#[test]
fn class9_nul_bytes_and_pg_names_are_refused_before_anything_runs() {
    let t = T::new("sec9names");
    let f = t.manifest("modules:\n  - name: app\n    storage: database\n    settings:\n      app.x: \"a\\0b\"\n");
    let r = t.pgplane(&["plan", "-f", f.to_str().unwrap()]).fails();
    assert!(r.stderr.contains("pgplane.yaml:10: ") && r.stderr.contains("NUL"), "{}", r.stderr);
    for (body, needle) in [
        ("modules:\n  - name: pg_app\n    storage: database\n", "pgplane.yaml:7:"),
        (
            "modules:\n  - name: app\n    storage: schema-per-tenant\ntenants:\n  - name: pg_acme\n    modules: [app]\n",
            "pgplane.yaml:10:",
        ),
        ("naming:\n  database: \"pg_{module}\"\nmodules:\n  - name: app\n    storage: database\n", "reserved"),
    ] {
        let f = t.manifest(body);
        let r = t.pgplane(&["plan", "-f", f.to_str().unwrap()]).fails();
        assert!(r.stderr.contains(needle), "{body}: {}", r.stderr);
        assert!(r.stderr.contains("pg_"), "{body}: {}", r.stderr);
    }
    let f = t.manifest(
        "modules:\n  - name: registry\n    storage: database\ntemplates:\n  - name: sec9names_tpl\n    module: registry\n    sources: [model/changelog.yaml]\nbranches:\n  database: \"{branch}_{template}\"\n",
    );
    let r = t.pgplane(&["branch", "create", "pg_x", "--template", "sec9names_tpl", "-f", f.to_str().unwrap()]).fails();
    assert!(r.stderr.contains("reserved"), "{}", r.stderr);
    assert_eq!(t.sql("postgres", "SELECT count(*) FROM pg_database WHERE datname LIKE 'pg\\_%'"), "0");
}

// ----- class 10: output and files ----------------------------------------------------

const HOSTILE: &str = "E'evil\\x1b]0;pwned\\x07\\x1b[2J\\r\\u009b31m'";

fn has_controls(s: &str) -> bool {
    s.chars().any(|c| (c.is_control() && c != '\n' && c != '\t') || c == '\u{202e}')
}

#[test]
fn class10_control_characters_from_the_catalog_and_requests_are_escaped() {
    let (t, f) = branch_world("sec10esc", "{template}_{branch}");
    t.database("sec10esc_db");
    t.sql("sec10esc_db", &format!("CREATE TABLE victim (x int); COMMENT ON TABLE victim IS {HOSTILE}"));
    let r = t.pgplane(&["schema", "tables", "--url", &with_db(&t.server.url, "sec10esc_db")]).ok();
    assert!(r.stdout.contains("evil\\u001b]0;pwned\\u0007"), "{}", r.stdout);
    assert!(!has_controls(&r.stdout), "{:?}", r.stdout);
    let json = t.pgplane(&["schema", "tables", "--url", &with_db(&t.server.url, "sec10esc_db"), "--json"]).ok();
    assert!(!has_controls(&json.stdout));
    assert_eq!(json.json()[0]["description"], "evil\u{1b}]0;pwned\u{7}\u{1b}[2J\r\u{9b}31m");

    // A candidate's failure message and a label on the command line.
    t.write(
        "model/evil/changelog.yaml",
        "databaseChangeLog:\n  - changeSet:\n      id: e1\n      author: eve\n      changes:\n        - sql:\n            sql: \"DO $$ BEGIN RAISE EXCEPTION E'boom \\\\x1b[2J\\\\x1b]0;pwned\\\\x07'; END $$\"\n",
    );
    let src = t.dir.join("model/evil/changelog.yaml");
    let r = t.pgplane(&[
        "branch",
        "create",
        "e1",
        "--template",
        "sec10esc_tpl",
        "--source",
        src.to_str().unwrap(),
        "--label",
        "note=\u{1b}[31mred\u{202e}",
        "-f",
        &f,
    ]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let show = t.pgplane(&["branch", "show", "e1", "-f", &f]);
    assert!(show.stdout.contains("boom \\u001b[2J"), "{}", show.stdout);
    assert!(show.stdout.contains("note=\\u001b[31mred\\u202e"), "{}", show.stdout);
    for out in [&r.stdout, &r.stderr, &show.stdout, &show.stderr] {
        assert!(!has_controls(out), "{out:?}");
    }
    t.pgplane(&["branch", "delete", "--all", "-f", &f]).ok();
}

#[test]
fn class10_output_piped_into_head_ends_quietly() {
    let t = T::new("sec10pipe");
    t.database("sec10pipe_db");
    t.sql(
        "sec10pipe_db",
        "DO $$ BEGIN FOR i IN 1..3000 LOOP
           EXECUTE format('CREATE TABLE t%s (x int); COMMENT ON TABLE t%s IS %L', i, i, repeat('c', 80));
         END LOOP; END $$",
    );
    let mut child = t
        .cmd()
        .args(["schema", "tables", "--url", &with_db(&t.server.url, "sec10pipe_db")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // What `| head -1` does: read one line, close the pipe.
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    assert!(first.starts_with("database sec10pipe_db"), "{first}");
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("panicked") && !stderr.contains("Broken pipe") && !stderr.contains("failed printing"),
        "{stderr}"
    );
    assert_eq!(out.status.code(), Some(141), "exits as SIGPIPE would");
}

#[test]
fn class10_deeply_nested_manifests_and_changelogs_are_refused_quickly() {
    let t = T::new("sec10deep");
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let f =
        t.manifest(&format!("modules:\n  - name: app\n    storage: database\n    settings:\n      app.x: {deep}\n"));
    let start = Instant::now();
    let r = t.pgplane(&["plan", "-f", f.to_str().unwrap()]).fails();
    assert!(start.elapsed() < Duration::from_secs(5), "took {:?}", start.elapsed());
    assert!(r.stderr.contains("pgplane.yaml:10:") && r.stderr.contains("recursion limit"), "{}", r.stderr);

    let n = 100_000;
    t.write(
        "deep/changelog.xml",
        &format!("<databaseChangeLog>{}{}</databaseChangeLog>", "<a>".repeat(n), "</a>".repeat(n)),
    );
    let start = Instant::now();
    let r = t.pgplane(&["migrate", "status", "--url", &t.server.url, "--source", "deep/changelog.xml"]).fails();
    assert!(start.elapsed() < Duration::from_secs(30), "took {:?}", start.elapsed());
    assert!(r.stderr.contains("nested more than 128"), "{}", r.stderr);
}

#[test]
fn class10_the_home_folder_is_private_whatever_the_umask() {
    let t = T::new("sec10home");
    let home = t.dir.join("fresh/home");
    let out = Command::new("sh")
        .args(["-c", &format!("umask 000; exec '{BIN}' local url")])
        .env("PGPLANE_HOME", &home)
        .env_remove("PGPLANE_SECRET_KEY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&home), 0o700, "home");
    assert_eq!(mode(&home.join("secret.key")), 0o600, "secret key");
}
