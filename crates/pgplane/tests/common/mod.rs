//! Test harness: one real PostgreSQL per test binary, started through `pgplane local start`
//! (so the embedded-server code is exercised too) in a temp folder, and stopped by a small
//! watchdog process when the test binary exits. Each test uses its own environment name
//! and home folder, so tests run in parallel on the shared server.

#![allow(clippy::unwrap_used, dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

pub const BIN: &str = env!("CARGO_BIN_EXE_pgplane");

/// The secret key of every pgplane the tests run against the shared server: they share
/// its control database, and pgplane refuses a key the control database was not used with.
pub const TEST_SECRET_KEY: &str = "pgplane-tests-share-this-secret-key-0123456789";

pub struct Server {
    pub home: PathBuf,
    pub url: String,
    pub root: PathBuf,
}

impl Server {
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.home.join("local/server.log")).unwrap_or_default()
    }
}

static SERVER: OnceLock<Server> = OnceLock::new();
static SECOND: OnceLock<Server> = OnceLock::new();

fn test_root() -> PathBuf {
    let root = std::env::temp_dir().join(format!("pgplane-test-{}", std::process::id()));
    std::fs::create_dir_all(&root).expect("create test root");
    root
}

/// The shared server of this test binary.
pub fn server() -> &'static Server {
    SERVER.get_or_init(|| start_server("server-home", true))
}

/// A second server of this test binary (for placement over several servers): another
/// `pgplane local start` with a home of its own, stopped by the first one's watchdog.
pub fn second_server() -> &'static Server {
    server();
    SECOND.get_or_init(|| start_server("second-home", false))
}

fn start_server(name: &str, watchdog: bool) -> Server {
    {
        let root = test_root();
        let home = root.join(name);
        let out = Command::new(BIN)
            .args(["local", "start"])
            .env("PGPLANE_HOME", &home)
            .env(
                "PGPLANE_LOCAL_OPTIONS",
                "-c fsync=off -c full_page_writes=off -c log_statement=all -c max_connections=300",
            )
            .output()
            .expect("run pgplane local start");
        assert!(out.status.success(), "local start failed: {}", String::from_utf8_lossy(&out.stderr));
        let url = run_ok(Command::new(BIN).args(["local", "url"]).env("PGPLANE_HOME", &home)).trim().to_string();
        if !watchdog {
            return Server { home, url, root };
        }
        // Watchdog: stop the servers (this one and a second one, if started) and clean up
        // when this test process is gone.
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; for h in '{root}'/*-home; do PGPLANE_HOME=\"$h\" '{bin}' local stop >/dev/null 2>&1; done; rm -rf '{root}'",
            pid = std::process::id(),
            bin = BIN,
            root = root.display()
        );
        // The watchdog outlives this process on purpose; nobody waits for it.
        #[allow(clippy::zombie_processes)]
        let _watchdog = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn watchdog");
        Server { home, url, root }
    }
}

pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run command");
    assert!(
        out.status.success(),
        "command failed ({:?}):\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The outcome of one `pgplane` run.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(out: Output) -> Run {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    #[track_caller]
    pub fn ok(self) -> Run {
        assert_eq!(self.code, 0, "expected success:\nstdout: {}\nstderr: {}", self.stdout, self.stderr);
        self
    }

    #[track_caller]
    pub fn fails(self) -> Run {
        assert_eq!(self.code, 1, "expected exit 1:\nstdout: {}\nstderr: {}", self.stdout, self.stderr);
        self
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }
}

/// One test's world: an environment name, a folder with its manifest, its own home.
pub struct T {
    pub env: String,
    pub dir: PathBuf,
    pub server: &'static Server,
}

impl T {
    pub fn new(env: &str) -> T {
        let server = server();
        let dir = server.root.join(env);
        std::fs::create_dir_all(&dir).expect("create test dir");
        T { env: env.to_string(), dir, server }
    }

    /// Writes `pgplane.yaml` for this test's env on the shared server; returns its path.
    pub fn manifest(&self, body: &str) -> PathBuf {
        self.manifest_named("pgplane.yaml", body)
    }

    pub fn manifest_named(&self, name: &str, body: &str) -> PathBuf {
        let text = format!(
            "version: 1\nenvironment: {}\nservers:\n  - name: main\n    url: ${{TEST_PG_URL}}\n{body}",
            self.env
        );
        let path = self.dir.join(name);
        std::fs::write(&path, text).expect("write manifest");
        path
    }

    /// Writes a file under this test's folder (creating folders); returns its path.
    pub fn write(&self, rel: &str, text: &str) -> PathBuf {
        let path = self.dir.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).expect("create folder");
        std::fs::write(&path, text).expect("write file");
        path
    }

    /// A fresh database on the shared server; returns its URL (admin user).
    pub fn database(&self, name: &str) -> String {
        self.sql("postgres", &format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"));
        self.sql("postgres", &format!("CREATE DATABASE \"{name}\""));
        with_db(&self.server.url, name)
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(BIN);
        c.current_dir(&self.dir)
            .env("PGPLANE_HOME", self.dir.join("home"))
            .env("PGPLANE_SECRET_KEY", TEST_SECRET_KEY)
            .env("TEST_PG_URL", &self.server.url)
            .env(
                "TEST_PG_URL2",
                SECOND.get().map(|s| s.url.as_str()).unwrap_or("postgresql://no-second-server/postgres"),
            )
            .env_remove("PGPLANE_ENV")
            .stdin(Stdio::null());
        c
    }

    pub fn pgplane(&self, args: &[&str]) -> Run {
        Run::from(self.cmd().args(args).output().expect("run pgplane"))
    }

    /// Runs SQL as the admin in `db`; panics on error.
    pub fn sql(&self, db: &str, sql: &str) -> String {
        psql(&with_db(&self.server.url, db), sql).unwrap_or_else(|e| panic!("psql failed in {db}: {e}\nSQL: {sql}"))
    }

    /// Polls `sql` in `db` every 50 ms until it returns `want`; panics after 20 s saying `what`.
    pub fn wait_for_sql(&self, db: &str, sql: &str, want: &str, what: &str) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while self.sql(db, sql) != want {
            assert!(std::time::Instant::now() < deadline, "{what}");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    pub fn sql_try(&self, db: &str, sql: &str) -> Result<String, String> {
        psql(&with_db(&self.server.url, db), sql)
    }

    /// Roles and databases on the server whose name starts with this test's env.
    pub fn catalog_names(&self) -> (Vec<String>, Vec<String>) {
        let pat = format!("{}\\_%", self.env);
        let roles =
            self.sql("postgres", &format!("SELECT rolname FROM pg_roles WHERE rolname LIKE '{pat}' ORDER BY 1"));
        let dbs =
            self.sql("postgres", &format!("SELECT datname FROM pg_database WHERE datname LIKE '{pat}' ORDER BY 1"));
        (lines(&roles), lines(&dbs))
    }

    /// Names recorded as managed for this env (none while no control database exists).
    pub fn records(&self, kind: &str) -> Vec<String> {
        if self.sql("postgres", "SELECT count(*) FROM pg_database WHERE datname = 'pgplane'") == "0" {
            return Vec::new();
        }
        let out = self.sql(
            "pgplane",
            &format!("SELECT name FROM pgplane.objects WHERE env = '{}' AND kind = '{kind}' ORDER BY 1", self.env),
        );
        lines(&out)
    }

    pub fn credentials(&self, args: &[&str]) -> String {
        let mut all = vec!["credentials"];
        all.extend_from_slice(args);
        self.pgplane(&all).ok().stdout.trim().to_string()
    }
}

pub fn lines(s: &str) -> Vec<String> {
    s.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_string).collect()
}

pub fn with_db(url: &str, db: &str) -> String {
    match url.rfind('/') {
        Some(i) => format!("{}/{db}", &url[..i]),
        None => url.to_string(),
    }
}

/// Runs SQL through psql; Ok(stdout) or Err(stderr).
pub fn psql(url: &str, sql: &str) -> Result<String, String> {
    let out = Command::new("psql")
        .args([url, "-X", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .stdin(Stdio::null())
        .output()
        .expect("run psql");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind(("127.0.0.1", 0)).expect("bind").local_addr().expect("addr").port()
}

pub fn temp_home(name: &str) -> PathBuf {
    let p = test_root().join(name);
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).expect("create home");
    p
}

/// A `pgplane serve` process of a test; killed when dropped.
pub struct Serve {
    pub child: std::process::Child,
    /// `http://127.0.0.1:PORT`
    pub base: String,
    /// Everything the process wrote on stderr so far (read by a thread).
    pub log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl T {
    /// Starts `pgplane serve -f MANIFEST --listen 127.0.0.1:0 EXTRA…` with `envs`, and waits
    /// for its "serving … on http://ADDR/" line.
    pub fn serve(&self, manifest: &str, extra: &[&str], envs: &[(&str, &str)]) -> Serve {
        use std::io::BufRead;
        let mut cmd = self.cmd();
        cmd.args(["serve", "-f", manifest, "--listen", "127.0.0.1:0"]).args(extra).stderr(Stdio::piped());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn pgplane serve");
        let stderr = child.stderr.take().expect("stderr");
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split(" on http://").nth(1) {
                    let _ = tx.send(format!("http://{}", rest.split('/').next().unwrap_or_default()));
                }
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let base = match rx.recv_timeout(std::time::Duration::from_secs(60)) {
            Ok(b) => b,
            Err(_) => {
                let _ = child.kill();
                panic!("pgplane serve did not start:\n{}", log.lock().unwrap());
            }
        };
        Serve { child, base, log }
    }
}

impl Serve {
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// A request to this server; see [`http`].
    pub fn req(&self, method: &str, path: &str, token: Option<&str>, body: Option<&str>) -> Response {
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut headers: Vec<(&str, &str)> = Vec::new();
        if let Some(a) = &auth {
            headers.push(("Authorization", a));
        }
        // As a well-behaved client: every POST says it sends JSON (an empty body is the defaults).
        if body.is_some() || method == "POST" {
            headers.push(("Content-Type", "application/json"));
        }
        http(method, &format!("{}{path}", self.base), &headers, body.unwrap_or("").as_bytes())
    }

    /// Sends SIGTERM and waits for the process; returns its exit code.
    pub fn terminate(mut self, timeout: std::time::Duration) -> Option<i32> {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            if std::time::Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP response as tests see it.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}), status {}: {}", self.status, self.body))
    }

    /// The API's error code, asserting the one error shape `{"error": {"code", "message"}}`.
    #[track_caller]
    pub fn error_code(&self) -> String {
        let v = self.json();
        let e = &v["error"];
        assert!(e["message"].is_string() && v.as_object().unwrap().len() == 1, "not the error shape: {}", self.body);
        e["code"].as_str().unwrap_or_else(|| panic!("no code: {}", self.body)).to_string()
    }
}

/// A minimal HTTP/1.1 client (one request per connection), enough for tests without
/// another dependency: `Content-Length` and chunked bodies. A `Host` among `headers`
/// replaces the URL's.
pub fn http(method: &str, url: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
    let rest = url.strip_prefix("http://").expect("http:// URL");
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let mut req = format!("{method} {path} HTTP/1.1\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: {host}\r\n"));
    }
    req.push_str(&format!("Connection: close\r\nContent-Length: {}\r\n", body.len()));
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut raw = req.into_bytes();
    raw.extend_from_slice(body);
    http_raw(host, &raw)
}

/// Sends `request` as it is (e.g. without a `Host`) to `addr` and reads the response.
pub fn http_raw(addr: &str, request: &[u8]) -> Response {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to pgplane serve");
    stream.set_read_timeout(Some(std::time::Duration::from_secs(120))).unwrap();
    stream.write_all(request).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read response");
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("end of headers");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut payload = raw[split + 4..].to_vec();
    let mut lines = head.lines();
    let status: u16 = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok()).expect("status line");
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':').map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))).collect();
    if headers.iter().any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked")) {
        let mut out = Vec::new();
        let mut rest = &payload[..];
        while let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") {
            let size = usize::from_str_radix(String::from_utf8_lossy(&rest[..eol]).trim(), 16).unwrap_or(0);
            if size == 0 {
                break;
            }
            out.extend_from_slice(&rest[eol + 2..eol + 2 + size]);
            rest = &rest[eol + 2 + size + 2..];
        }
        payload = out;
    }
    Response { status, headers, body: String::from_utf8_lossy(&payload).into_owned() }
}

/// The registry module's master changelog of the branch and serve tests: `entries`
/// (commented, with an identity key) and one row.
pub const MASTER: &str = "\
databaseChangeLog:
  - changeSet:
      id: m1
      author: ann
      changes:
        - createTable:
            tableName: entries
            remarks: Registry entries
            columns:
              - column: {name: id, type: bigint, autoIncrement: true, constraints: {primaryKey: true}}
              - column: {name: name, type: varchar(100)}
        - insert:
            tableName: entries
            columns:
              - column: {name: name, value: from the template}
";

/// Real Liquibase's launcher: `$LIQUIBASE`, or where `scripts/test` installs it.
pub fn liquibase_bin() -> String {
    if let Ok(bin) = std::env::var("LIQUIBASE") {
        return bin;
    }
    let default = "/var/tmp/pgplane-tools/liquibase-4.28.1/node_modules/liquibase/dist/liquibase/liquibase";
    assert!(
        std::path::Path::new(default).exists(),
        "real Liquibase is needed: run ./scripts/test (it installs it), or set LIQUIBASE to the liquibase launcher"
    );
    default.to_string()
}
