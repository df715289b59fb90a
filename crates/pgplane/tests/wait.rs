//! End-to-end tests of `pgplane wait`: the real binary against real PostgreSQL servers.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{psql, temp_home, with_db, Run, BIN, T};

fn run(cmd: &mut Command) -> Run {
    let out = cmd.output().expect("run pgplane");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `pgplane wait ARGS` in the test's folder, without DATABASE_URL from the caller.
fn wait_cmd(t: &T, args: &[&str]) -> Command {
    let mut c = t.cmd();
    c.env_remove("DATABASE_URL").arg("wait").args(args);
    c
}

fn wait(t: &T, args: &[&str]) -> Run {
    run(&mut wait_cmd(t, args))
}

fn spawn(mut cmd: Command) -> Child {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn pgplane wait")
}

fn finish(child: Child) -> Run {
    let out = child.wait_with_output().expect("wait for pgplane");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn all_conditions_true_exit_zero_at_once() {
    let t = T::new("wok");
    t.sql("postgres", "CREATE ROLE wok_login LOGIN");
    t.sql("postgres", "CREATE DATABASE wok_db");
    let started = Instant::now();
    let run = wait(
        &t,
        &[
            "--url",
            &t.server.url,
            "--for",
            "server",
            "--for",
            "database:wok_db",
            "--for",
            "role:wok_login",
            "--for",
            "sql:SELECT '1'::int = 1",
        ],
    )
    .ok();
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{}", run.stdout);
    for (line, cond) in lines.iter().zip(["server", "database:wok_db", "role:wok_login", "sql:SELECT '1'::int = 1"]) {
        assert!(line.starts_with("ok ") && line.contains(cond) && line.contains(" after "), "{line}");
    }
    let doc = wait(&t, &["--url", &t.server.url, "--for", "database:wok_db", "--json"]).ok().json();
    assert_eq!(doc["ok"], true);
    assert_eq!(doc["conditions"][0]["ok"], true);
    assert!(doc["conditions"][0]["since_ms"].is_u64(), "{doc}");
}

#[test]
fn a_database_created_later_is_seen_within_an_interval() {
    let t = T::new("wlater");
    let child = spawn(wait_cmd(
        &t,
        &["--url", &t.server.url, "--for", "database:wlater_db", "--interval", "250ms", "--timeout", "60s"],
    ));
    std::thread::sleep(Duration::from_secs(1));
    t.sql("postgres", "CREATE DATABASE wlater_db");
    // psql returned, so the CREATE DATABASE committed before this instant.
    let created = Instant::now();
    let run = finish(child).ok();
    let lag = created.elapsed();
    assert!(lag < Duration::from_millis(250 + 1500), "wait ended {lag:?} after the database appeared");
    assert!(run.stdout.starts_with("ok  "), "{}", run.stdout);
}

#[test]
fn a_timeout_reports_what_was_last_observed() {
    let t = T::new("wto");
    t.sql("postgres", "CREATE DATABASE wto_closed ALLOW_CONNECTIONS false");
    t.sql("postgres", "CREATE ROLE wto_nologin NOLOGIN; CREATE ROLE wto_expired LOGIN VALID UNTIL '2001-01-01'");
    let args = [
        "--url",
        &t.server.url,
        "--for",
        "server",
        "--for",
        "database:wto_missing",
        "--for",
        "database:wto_closed",
        "--for",
        "role:wto_missing",
        "--for",
        "role:wto_nologin",
        "--for",
        "role:wto_expired",
        "--for",
        "sql:SELECT 0",
        "--for",
        "sql:SELECT NULL",
        "--timeout",
        "1s",
    ];
    let started = Instant::now();
    let run = wait(&t, &args).fails();
    assert!(started.elapsed() < Duration::from_secs(6), "took {:?}", started.elapsed());
    for want in [
        "ok    server ",
        "FAIL  database:wto_missing  database wto_missing does not exist",
        "database wto_closed exists but does not allow connections",
        "role wto_missing does not exist",
        "role wto_nologin exists but cannot log in",
        "role wto_expired exists but its password has expired",
        "returned NULL",
    ] {
        assert!(run.stdout.contains(want), "want {want:?} in\n{}", run.stdout);
    }
    assert!(
        run.stdout.lines().any(|l| l.starts_with("FAIL  sql:SELECT 0 ") && l.ends_with("  returned 0")),
        "{}",
        run.stdout
    );
    assert!(run.stderr.contains("pgplane: timed out after 1s"), "{}", run.stderr);
    assert!(run.stderr.contains("database:wto_missing"), "{}", run.stderr);

    let mut json_args = args.to_vec();
    json_args.push("--json");
    let run = wait(&t, &json_args).fails();
    let doc = run.json();
    assert_eq!(doc["ok"], false);
    assert!(doc["elapsed_ms"].as_u64().unwrap() >= 1000, "{doc}");
    assert_eq!(doc["diagnostics"], serde_json::json!([]));
    let conditions = doc["conditions"].as_array().unwrap();
    assert_eq!(conditions.len(), 8);
    assert_eq!(conditions[0]["condition"], "server");
    assert_eq!(conditions[0]["ok"], true);
    assert!(conditions[0]["since_ms"].is_u64());
    assert_eq!(
        conditions[1],
        serde_json::json!({"condition": "database:wto_missing", "ok": false,
            "observed": "database wto_missing does not exist", "since_ms": null})
    );
    assert_eq!(conditions[6]["observed"], "returned 0");
}

#[test]
fn a_failing_query_reports_the_postgresql_error() {
    let t = T::new("wsqlerr");
    let run =
        wait(&t, &["--url", &t.server.url, "--for", "sql:SELECT * FROM wsqlerr_nope", "--timeout", "500ms"]).fails();
    assert!(run.stdout.contains("ERROR: relation \"wsqlerr_nope\" does not exist (SQLSTATE 42P01)"), "{}", run.stdout);
}

#[test]
fn diagnostics_run_at_timeout() {
    let t = T::new("wdiag");
    let args = [
        "--url",
        &t.server.url,
        "--for",
        "database:wdiag_missing",
        "--timeout",
        "500ms",
        "--diagnose-sql",
        "SELECT 'marker_' || 42 AS label, NULL::text AS nothing",
        "--diagnose-sql",
        "SELECT wdiag_no_column",
    ];
    let run = wait(&t, &args).fails();
    assert!(run.stdout.contains("diagnostic: SELECT 'marker_' || 42"), "{}", run.stdout);
    assert!(run.stdout.contains("  label     | nothing\n"), "{}", run.stdout);
    assert!(run.stdout.contains("  marker_42 | NULL\n"), "{}", run.stdout);
    assert!(run.stdout.contains("column \"wdiag_no_column\" does not exist"), "{}", run.stdout);

    let mut json_args = args.to_vec();
    json_args.push("--json");
    let doc = wait(&t, &json_args).fails().json();
    let d = &doc["diagnostics"];
    assert_eq!(d[0]["sql"], "SELECT 'marker_' || 42 AS label, NULL::text AS nothing");
    assert_eq!(d[0]["rows"], serde_json::json!([["marker_42", null]]));
    assert_eq!(d[0]["error"], serde_json::Value::Null);
    assert!(d[1]["error"].as_str().unwrap().contains("wdiag_no_column"), "{d}");
}

#[test]
fn the_password_and_url_are_never_printed() {
    let t = T::new("wpw");
    let port = common::free_port();
    let url = format!("postgresql://someone:Pw_wpw_S3cret@127.0.0.1:{port}/appdb");
    for extra in [&[][..], &["--json"][..], &["-vv"][..]] {
        let mut args = vec!["--url", &url, "--for", "server", "--for", "sql:SELECT 1", "--timeout", "600ms"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--diagnose-sql", "SELECT 1"]);
        let run = wait(&t, &args).fails();
        let all = format!("{}{}", run.stdout, run.stderr);
        assert!(!all.contains("Pw_wpw_S3cret"), "password printed:\n{all}");
        assert!(!all.contains(&url) && !all.contains("postgresql://"), "URL printed:\n{all}");
        assert!(all.contains(&format!("connection refused at 127.0.0.1:{port}/appdb")), "{all}");
    }
    // Also when the URL comes from DATABASE_URL.
    let run = run(t.cmd().env("DATABASE_URL", &url).args(["wait", "--for", "server", "--timeout", "300ms"])).fails();
    assert!(!run.stdout.contains("Pw_wpw_S3cret") && !run.stderr.contains("Pw_wpw_S3cret"));
}

#[test]
fn bad_invocations_say_how_to_fix_them() {
    let t = T::new("wbad");
    let run = wait(&t, &["--for", "server"]).fails();
    assert!(run.stderr.contains("pass --url URL (or set DATABASE_URL), or -f"), "{}", run.stderr);
    let run = wait(&t, &["--url", &t.server.url, "--for", "datbase:x"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("server, database:NAME, role:NAME, sql:QUERY, migrated:MODULE, branch:ID"));
    let run = wait(&t, &["--url", &t.server.url, "--for", "migrated:registry", "--timeout", "300ms"]).fails();
    assert!(run.stdout.contains("migrated:registry needs the manifest: pass -f FILE"), "{}", run.stdout);
}

#[test]
fn with_a_manifest_the_module_database_is_the_target() {
    let t = T::new("wman");
    let f = t.manifest(
        "modules:\n  - name: app\n    storage: database\n  - name: users\n    storage: schema-per-tenant\n\
         tenants:\n  - name: acme\n    modules: [users]\n",
    );
    let f = f.to_str().unwrap();
    // Before the apply: the server is up, the module's database is not.
    let run =
        wait(&t, &["-f", f, "--module", "app", "--for", "server", "--for", "database:wman_app", "--timeout", "500ms"])
            .fails();
    assert!(run.stdout.contains("ok    server"), "checked through the admin database: {}", run.stdout);
    assert!(run.stdout.contains("database wman_app does not exist"), "{}", run.stdout);

    t.pgplane(&["apply", "-f", f, "--yes"]).ok();
    let run = wait(
        &t,
        &[
            "-f",
            f,
            "--module",
            "app",
            "--for",
            "server",
            "--for",
            "database:wman_app",
            "--for",
            "role:wman_app",
            "--for",
            "sql:SELECT current_database() = 'wman_app'",
        ],
    )
    .ok();
    assert_eq!(run.stdout.lines().filter(|l| l.starts_with("ok ")).count(), 4, "{}", run.stdout);
    // schema-per-tenant: the module's shared database.
    wait(&t, &["-f", f, "--module", "users", "--for", "sql:SELECT current_database() = 'wman_users'"]).ok();
    // Without --module: the admin database of the first server.
    wait(&t, &["-f", f, "--for", "sql:SELECT current_database() = 'postgres'"]).ok();
    let run = wait(&t, &["-f", f, "--module", "nope", "--for", "server"]).fails();
    assert!(run.stderr.contains("module \"nope\" is not in") && run.stderr.contains("app, users"), "{}", run.stderr);
}

/// A server of this test's own, stopped when dropped.
struct OwnServer {
    home: std::path::PathBuf,
}

impl OwnServer {
    fn pgplane(&self, args: &[&str]) -> Run {
        run(Command::new(BIN)
            .args(args)
            .env("PGPLANE_HOME", &self.home)
            .env("PGPLANE_LOCAL_OPTIONS", "-c fsync=off")
            .env_remove("PGPLANE_LOCAL_PORT"))
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        let _ = self.pgplane(&["local", "stop"]);
    }
}

#[test]
fn wait_reconnects_after_a_server_restart() {
    let t = T::new("wrestart");
    let own = OwnServer { home: temp_home("wrestart-server").join("home") };
    own.pgplane(&["local", "start"]).ok();
    let url = own.pgplane(&["local", "url"]).ok().stdout.trim().to_string();
    let child = spawn(wait_cmd(
        &t,
        &[
            "--url",
            &url,
            "--for",
            "sql:SELECT count(*) > 0 FROM pg_database WHERE datname = 'ready'",
            "--timeout",
            "90s",
            "-v",
        ],
    ));
    // Wait until it is connected and polling.
    let polling = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgplane-wait'";
    let until = Instant::now() + Duration::from_secs(20);
    while psql(&url, polling).unwrap() != "1" {
        assert!(Instant::now() < until, "pgplane wait never connected");
        std::thread::sleep(Duration::from_millis(100));
    }
    own.pgplane(&["local", "stop"]).ok();
    std::thread::sleep(Duration::from_millis(600));
    own.pgplane(&["local", "start"]).ok();
    psql(&with_db(&url, "postgres"), "CREATE DATABASE ready").unwrap();
    let run = finish(child).ok();
    assert!(run.stdout.starts_with("ok  "), "{}", run.stdout);
    assert!(run.stderr.contains("connection lost; reconnecting"), "{}", run.stderr);
}

#[test]
fn waiting_holds_no_connection_to_the_databases_it_checks() {
    // An idle connection would make a plain DROP DATABASE fail while wait runs.
    let t = T::new("wdrop");
    t.sql("postgres", "CREATE DATABASE wdrop_db");
    let child = spawn(wait_cmd(
        &t,
        &["--url", &t.server.url, "--for", "database:wdrop_db", "--for", "sql:SELECT false", "--timeout", "4s"],
    ));
    let polling = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgplane-wait'";
    let until = Instant::now() + Duration::from_secs(10);
    while t.sql("postgres", polling) == "0" {
        assert!(Instant::now() < until, "pgplane wait never connected");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(600));
    t.sql("postgres", "DROP DATABASE wdrop_db");
    let run = finish(child).fails();
    assert!(run.stdout.contains("database wdrop_db does not exist"), "{}", run.stdout);
}
