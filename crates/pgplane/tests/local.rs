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
