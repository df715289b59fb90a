//! End-to-end tests of the embedded local server: each test owns its home folder and
//! its server, and stops it when done.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use common::{psql, temp_home, BIN};

struct Home {
    path: std::path::PathBuf,
}

impl Home {
    fn new(name: &str) -> Home {
        Home { path: temp_home(name) }
    }

    fn cmd(&self, args: &[&str]) -> common::Run {
        let out = Command::new(BIN)
            .args(args)
            .current_dir(&self.path)
            .env("PGPLANE_HOME", self.path.join("home"))
            .env("PGPLANE_LOCAL_OPTIONS", "-c fsync=off")
            .env_remove("PGPLANE_LOCAL_PORT")
            .output()
            .expect("run pgplane");
        common::Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl Drop for Home {
    fn drop(&mut self) {
        let _ = self.cmd(&["local", "stop"]);
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

#[test]
fn commands_start_the_embedded_server_and_plan_changes_nothing() {
    let h = Home::new("embedded");
    assert_eq!(h.cmd(&["local", "status"]).code, 3, "not initialised yet");
    std::fs::write(
        h.path.join("pgplane.yaml"),
        "version: 1\nenvironment: dev\nmodules:\n  - name: app\n    storage: database\n",
    )
    .unwrap();

    // No servers in the manifest: plan starts the embedded server itself.
    let plan = h.cmd(&["plan", "--json"]).ok();
    assert!(plan.json()["changes"].as_u64().unwrap() > 0);
    let status = h.cmd(&["local", "status", "--json"]).ok().json();
    assert_eq!(status["running"], true);
    assert!(status["data_dir"].as_str().unwrap().ends_with("home/local/data"));

    let url = h.cmd(&["local", "url"]).ok().stdout.trim().to_string();
    assert!(url.starts_with("postgresql://postgres:") && url.contains("@127.0.0.1:"), "{url}");
    // plan created nothing, not even the control database.
    assert_eq!(psql(&url, "SELECT count(*) FROM pg_database WHERE datname IN ('pgplane', 'dev_app')").unwrap(), "0");
    // Loopback only.
    assert_eq!(psql(&url, "SHOW listen_addresses").unwrap(), "127.0.0.1");

    h.cmd(&["apply", "--yes"]).ok();
    assert_eq!(psql(&url, "SELECT count(*) FROM pg_database WHERE datname IN ('pgplane', 'dev_app')").unwrap(), "2");
    let creds = h.cmd(&["credentials", "app"]).ok().stdout.trim().to_string();
    assert_eq!(psql(&creds, "SELECT current_user").unwrap(), "dev_app");

    // Reused, not restarted.
    let pid = status["pid"].clone();
    let again = h.cmd(&["local", "start", "--json"]).ok().json();
    assert_eq!(again["pid"], pid);

    h.cmd(&["local", "stop"]).ok();
    assert_eq!(h.cmd(&["local", "status"]).code, 3);
    // Started again on the same port with the same data.
    h.cmd(&["local", "start"]).ok();
    assert_eq!(psql(&url, "SELECT count(*) FROM pg_database WHERE datname = 'dev_app'").unwrap(), "1");
}

#[test]
fn a_taken_port_is_a_clear_error() {
    let h = Home::new("port");
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let run = h.cmd(&["local", "start", "--port", &port]).fails();
    assert!(run.stderr.contains(&format!("port {port} on 127.0.0.1 is taken")), "{}", run.stderr);
    assert!(run.stderr.contains("--port"), "says how to fix: {}", run.stderr);
}

#[test]
fn a_data_folder_of_another_version_is_a_clear_error() {
    let h = Home::new("version");
    let data = h.path.join("home/local/data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("PG_VERSION"), "11\n").unwrap();
    let run = h.cmd(&["local", "start"]).fails();
    assert!(run.stderr.contains("was initialised by PostgreSQL 11"), "{}", run.stderr);
    assert!(run.stderr.contains("PGPLANE_PG_BINDIR"), "{}", run.stderr);
}

#[test]
fn missing_binaries_name_the_package_to_install() {
    let h = Home::new("nobin");
    let out = Command::new(BIN)
        .args(["local", "start"])
        .env("PGPLANE_HOME", h.path.join("home"))
        .env("PGPLANE_PG_BINDIR", "/nonexistent/bin")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("apt-get install postgresql"), "{stderr}");
}

#[test]
fn url_and_stop_without_a_server_say_so() {
    let h = Home::new("nothing");
    let url = h.cmd(&["local", "url"]).fails();
    assert!(url.stderr.contains("never started; run `pgplane local start`"), "{}", url.stderr);
    let stop = h.cmd(&["local", "stop"]).ok();
    assert!(stop.stdout.contains("was not running"), "{}", stop.stdout);
}

#[test]
fn regression_first_applies_racing_serialize_whatever_their_admin_database() {
    // Review finding: the lock lived in the admin URL's database, so processes whose URLs
    // named different databases did not exclude each other; and on a fresh server they
    // raced to create the control database.
    let h = Home::new("race");
    h.cmd(&["local", "start"]).ok();
    let url = h.cmd(&["local", "url"]).ok().stdout.trim().to_string();
    psql(&url, "CREATE DATABASE otheradmin").unwrap();
    let other = common::with_db(&url, "otheradmin");
    let write = |name: &str, env: &str, url: &str| {
        let body = format!(
            "version: 1\nenvironment: {env}\nservers:\n  - name: main\n    url: {url}\nmodules:\n  - name: m1\n    storage: database\n  - name: m2\n    storage: schema-per-tenant\ntenants:\n  - name: t\n    modules: [m2]\n"
        );
        std::fs::write(h.path.join(name), body).unwrap();
    };
    write("a.yaml", "one", &url);
    write("b.yaml", "two", &other);
    let spawn = |file: &str| {
        Command::new(BIN)
            .args(["apply", "-f", file, "--yes"])
            .current_dir(&h.path)
            .env("PGPLANE_HOME", h.path.join("home"))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let children = [spawn("a.yaml"), spawn("b.yaml"), spawn("a.yaml"), spawn("b.yaml")];
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    for f in ["a.yaml", "b.yaml"] {
        assert_eq!(h.cmd(&["plan", "-f", f, "--detailed-exitcode"]).code, 0);
    }
    assert_eq!(
        psql(&url, "SELECT count(*) FROM pg_database WHERE datname IN ('one_m1', 'one_m2', 'two_m1', 'two_m2')")
            .unwrap(),
        "4"
    );
    let control = common::with_db(&url, "pgplane");
    assert_eq!(psql(&control, "SELECT count(DISTINCT env) FROM pgplane.objects").unwrap(), "2");
    // Each manifest changed things once; its duplicate ran after it and found nothing to do
    // (applies without changes are not journaled).
    assert_eq!(psql(&control, "SELECT count(*) FROM pgplane.jobs").unwrap(), "2");
    assert_eq!(psql(&control, "SELECT count(*) FROM pgplane.jobs WHERE status = 'succeeded'").unwrap(), "2");
}
