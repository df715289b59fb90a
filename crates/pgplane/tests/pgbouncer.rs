//! `pgplane pgbouncer` end to end: the generated files start Debian's real PgBouncer (run
//! as the `postgres` OS user: it refuses root), and two tenants — one with a schema in a
//! shared database, one with a database of its own — log in through it with their own
//! credentials and reach only their own storage. Also the budget refusal and the checks on
//! the verifiers. `scripts/test` installs PgBouncer (`ensure_pgbouncer` in scripts/lib.sh);
//! without it this test fails and says so.

#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, psql, T};

const MODULES: &str = "\
modules:
  - name: users
    storage: schema-per-tenant
    pool_size: 2
    max_db_connections: 4
  - name: files
    storage: database-per-tenant
    pool_size: 1
tenants:
  - name: acme
    modules: [users, files]
  - name: globex
    modules: [users, files]
";

fn pgbouncer_binary() -> PathBuf {
    for p in ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!("pgbouncer is not installed: run `source scripts/lib.sh; ensure_pgbouncer` (scripts/test does)");
}

/// uid and gid of the `postgres` OS user.
fn postgres_user() -> (u32, u32) {
    let id = |flag: &str| {
        let out = Command::new("id").args([flag, "postgres"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse::<u32>().expect("a postgres OS user")
    };
    (id("-u"), id("-g"))
}

/// A PgBouncer process, killed when dropped.
struct Bouncer {
    child: Child,
    log: PathBuf,
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Bouncer {
    /// Starts PgBouncer with `dir/pgbouncer.ini` as the `postgres` OS user (the folder and
    /// its files become that user's) and waits until it accepts connections on `port`.
    fn start(dir: &Path, port: u16) -> Bouncer {
        let (uid, gid) = postgres_user();
        for entry in
            std::iter::once(dir.to_path_buf()).chain(std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()))
        {
            std::os::unix::fs::chown(&entry, Some(uid), Some(gid)).unwrap();
        }
        let log = dir.join("pgbouncer.log");
        let mut child = {
            use std::os::unix::process::CommandExt;
            Command::new(pgbouncer_binary())
                .arg(dir.join("pgbouncer.ini"))
                .current_dir(dir)
                .uid(uid)
                .gid(gid)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .expect("start pgbouncer")
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("pgbouncer exited ({status}):\n{}", std::fs::read_to_string(&log).unwrap_or_default());
            }
            assert!(Instant::now() < deadline, "pgbouncer did not listen on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Bouncer { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// The tenant's connection URL from `pgplane credentials`, pointed at PgBouncer.
fn through(t: &T, module: &str, tenant: &str, port: u16) -> String {
    let url = t.credentials(&[module, "--tenant", tenant, "--format", "url"]);
    let (head, rest) = url.split_once('@').unwrap();
    let path = &rest[rest.find('/').unwrap()..];
    format!("{head}@127.0.0.1:{port}{path}")
}

fn with_db(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b.to_string(), format!("?{q}")),
        None => (url.to_string(), String::new()),
    };
    format!("{}/{db}{query}", &base[..base.rfind('/').unwrap()])
}

#[test]
fn two_tenants_through_pgbouncer_reach_only_their_own_storage() {
    let t = T::new("pgb");
    let manifest = t.manifest(MODULES);
    let m = manifest.to_str().unwrap();
    t.pgplane(&["apply", "-f", m, "--yes"]).ok();

    let port = free_port();
    let dir = t.dir.join("bouncer");
    let listen = format!("127.0.0.1:{port}");
    let run = t.pgplane(&["pgbouncer", "-f", m, "--out", dir.to_str().unwrap(), "--listen", &listen]).ok();
    assert!(run.stdout.contains("pgb_users") || run.stdout.contains("Wrote"), "{}", run.stdout);

    // The userlist: private, the server's own verifiers, no password.
    let userlist_path = dir.join("userlist.txt");
    assert_eq!(std::fs::metadata(&userlist_path).unwrap().permissions().mode() & 0o777, 0o600);
    let userlist = std::fs::read_to_string(&userlist_path).unwrap();
    for role in ["pgb_users", "pgb_acme_users", "pgb_globex_users", "pgb_acme_files", "pgb_globex_files"] {
        let verifier = t.sql("postgres", &format!("SELECT rolpassword FROM pg_authid WHERE rolname = '{role}'"));
        assert!(verifier.starts_with("SCRAM-SHA-256$"), "{role}: {verifier}");
        assert!(userlist.contains(&format!("\"{role}\" \"{verifier}\"\n")), "{role} missing:\n{userlist}");
    }
    let acme_users = through(&t, "users", "acme", port);
    let password = acme_users.split_once("://").unwrap().1.split_once('@').unwrap().0.split_once(':').unwrap().1;
    assert!(!userlist.contains(password), "a password in the userlist");
    let ini = std::fs::read_to_string(dir.join("pgbouncer.ini")).unwrap();
    assert!(
        ini.contains("pgb_users = host=127.0.0.1 port=") && ini.contains("pool_size=2 max_db_connections=4"),
        "{ini}"
    );
    assert!(ini.contains("pgb_acme_files = host=127.0.0.1") && ini.contains(&format!("listen_port = {port}")), "{ini}");
    assert!(!ini.contains("SCRAM"), "{ini}");

    let bouncer = Bouncer::start(&dir, port);
    let globex_users = through(&t, "users", "globex", port);
    let acme_files = through(&t, "files", "acme", port);
    let globex_files = through(&t, "files", "globex", port);
    let ok = |url: &str, sql: &str| {
        psql(url, sql)
            .unwrap_or_else(|e| panic!("through pgbouncer: {e}\nSQL: {sql}\npgbouncer log:\n{}", bouncer.log()))
    };

    // Schema per tenant: each tenant works in its own schema of the shared database.
    ok(&acme_users, "CREATE TABLE notes (x text); INSERT INTO notes VALUES ('acme')");
    assert_eq!(ok(&acme_users, "SELECT current_user || ' ' || current_schema()"), "pgb_acme_users acme_users");
    ok(&globex_users, "CREATE TABLE notes (x text); INSERT INTO notes VALUES ('globex')");
    assert_eq!(ok(&acme_users, "SELECT string_agg(x, ',') FROM notes"), "acme");
    assert_eq!(ok(&globex_users, "SELECT string_agg(x, ',') FROM notes"), "globex");
    let err = psql(&acme_users, "SELECT * FROM globex_users.notes").unwrap_err();
    assert!(err.contains("permission denied for schema globex_users"), "{err}");
    // Database per tenant: its own database, through its own pool.
    ok(&acme_files, "CREATE TABLE blobs (b bytea)");
    assert_eq!(ok(&acme_files, "SELECT current_user || ' ' || current_database()"), "pgb_acme_files pgb_acme_files");
    ok(&globex_files, "CREATE TABLE blobs (b bytea)");
    // The third attempt: tenant A's credentials to tenant B's database.
    let err = psql(&with_db(&acme_files, "pgb_globex_files"), "SELECT 1").unwrap_err();
    assert!(err.contains("permission denied for database"), "{err}");
    let err = psql(&with_db(&acme_users, "pgb_globex_files"), "SELECT 1").unwrap_err();
    assert!(err.contains("permission denied for database"), "{err}");
    // The server saw those sessions come from PgBouncer, logged in as the tenants.
    let seen = t.sql(
        "postgres",
        "SELECT count(*) FROM pg_stat_activity WHERE usename IN ('pgb_acme_users', 'pgb_globex_users', 'pgb_acme_files')",
    );
    assert!(seen.parse::<i32>().unwrap() >= 1, "pooled server sessions: {seen}");
    drop(bouncer);
}

#[test]
fn pools_past_the_servers_connections_are_refused_and_nothing_is_written() {
    let t = T::new("pgbbudget");
    // The test server has max_connections = 300 (3 reserved): 3 users x 200 > 297.
    let manifest = t.manifest(
        "modules:\n  - name: users\n    storage: schema-per-tenant\n    pool_size: 200\ntenants:\n  - name: a\n    modules: [users]\n  - name: b\n    modules: [users]\n",
    );
    let m = manifest.to_str().unwrap();
    t.pgplane(&["apply", "-f", m, "--yes"]).ok();
    let dir = t.dir.join("out");
    let run = t.pgplane(&["pgbouncer", "-f", m, "--out", dir.to_str().unwrap()]).fails();
    assert!(
        run.stderr.contains("server main: pools hold up to 600 of 297 server connections")
            && run.stderr.contains("303 over")
            && run.stderr.contains("pgbbudget_users (module users) 600 (3 users x pool_size 200 = 600)"),
        "{}",
        run.stderr
    );
    assert!(!dir.exists(), "nothing may be written");
    // With max_db_connections the same pools fit; stdout gets pgbouncer.ini, never verifiers.
    let manifest = t.manifest(
        "modules:\n  - name: users\n    storage: schema-per-tenant\n    pool_size: 200\n    max_db_connections: 250\ntenants:\n  - name: a\n    modules: [users]\n  - name: b\n    modules: [users]\n",
    );
    let run = t.pgplane(&["pgbouncer", "-f", manifest.to_str().unwrap()]).ok();
    assert!(run.stdout.contains("pgbbudget_users = host=127.0.0.1"), "{}", run.stdout);
    assert!(run.stdout.contains("pools hold up to 250 of 297"), "{}", run.stdout);
    assert!(!run.stdout.contains("SCRAM"), "{}", run.stdout);
    // --reserve keeps connections for direct clients: 250 > 297 - 50.
    let run = t.pgplane(&["pgbouncer", "-f", manifest.to_str().unwrap(), "--reserve", "50"]).fails();
    assert!(run.stderr.contains("pools hold up to 250 of 247") && run.stderr.contains("3 over"), "{}", run.stderr);
}

#[test]
fn a_password_changed_outside_pgplane_is_not_handed_to_pgbouncer() {
    let t = T::new("pgbdrift");
    let manifest = t.manifest("modules:\n  - name: app\n    storage: database\n    readonly_role: true\n");
    let m = manifest.to_str().unwrap();
    t.pgplane(&["apply", "-f", m, "--yes"]).ok();
    t.sql("postgres", "ALTER ROLE pgbdrift_app_readonly PASSWORD 'set-by-hand'");
    let dir = t.dir.join("out");
    let run = t.pgplane(&["pgbouncer", "-f", m, "--out", dir.to_str().unwrap()]).fails();
    assert!(
        run.stderr.contains("role pgbdrift_app_readonly on server main does not have the password pgplane set")
            && run.stderr.contains("pgplane apply"),
        "{}",
        run.stderr
    );
    assert!(!dir.exists());
    // apply sets it again; then the files are written, the userlist owned by whoever ran it.
    t.pgplane(&["apply", "-f", m, "--yes"]).ok();
    let run = t.pgplane(&["pgbouncer", "-f", m, "--out", dir.to_str().unwrap(), "--json"]).ok();
    let doc = run.json();
    assert_eq!(doc["users"], serde_json::json!(["pgbdrift_app", "pgbdrift_app_readonly"]));
    assert_eq!(doc["servers"][0]["needed"], 40);
    assert_eq!(std::fs::metadata(dir.join("userlist.txt")).unwrap().uid(), std::fs::metadata(&t.dir).unwrap().uid());
}
