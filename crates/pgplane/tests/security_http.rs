//! Issue 11, classes 4–6, end to end against a real `pgplane serve` and a real server:
//! no cross-site or DNS-rebinding path to `serve` (class 4), concurrency without stalls
//! (class 5), and error codes under races and odd input (class 6). Every test checks the
//! catalog or the operations journal afterwards, not only the status codes.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::{Barrier, RwLock};
use std::time::{Duration, Instant};

use common::{http, http_raw, Response, Serve, MASTER, T};

const READ: &str = "read-token-security-0123456789";
const ADMIN: &str = "admin-token-security-0123456789";
const EVIL: &str = "http://evil.example";

/// The readiness test locks a table of the shared control database for a moment, the
/// backlog test counts its sessions: they hold this exclusively, the others shared.
static CONTROL_DB: RwLock<()> = RwLock::new(());

fn shared() -> std::sync::RwLockReadGuard<'static, ()> {
    CONTROL_DB.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn exclusive() -> std::sync::RwLockWriteGuard<'static, ()> {
    CONTROL_DB.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Two modules (`registry` with a template, `extra`), applied, the template built.
fn world(env: &str) -> (T, String) {
    let t = T::new(env);
    t.write("model/master/changelog.yaml", MASTER);
    let f = t.manifest(&format!(
        "modules:
  - name: registry
    storage: database
  - name: extra
    storage: database
templates:
  - name: {env}_tpl
    module: registry
    sources: [model/master/changelog.yaml]
branches:
  database: \"{{template}}_{{branch}}\"
  max_per_template: 500
"
    ));
    let f = f.to_str().unwrap().to_string();
    t.pgplane(&["apply", "-f", &f, "--yes"]).ok();
    t.pgplane(&["template", "build", &format!("{env}_tpl"), "-f", &f]).ok();
    (t, f)
}

fn with_tokens(t: &T, f: &str, extra: &[&str]) -> Serve {
    t.serve(f, extra, &[("PGPLANE_TOKENS", &format!("read:{READ},admin:{ADMIN}"))])
}

/// `base` without `http://`: the address the server listens on.
fn addr(s: &Serve) -> String {
    s.base.trim_start_matches("http://").to_string()
}

fn send(s: &Serve, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Response {
    http(method, &format!("{}{path}", s.base), headers, body.as_bytes())
}

fn count(t: &T, db: &str, sql: &str) -> i64 {
    t.sql(db, sql).parse().unwrap()
}

fn operations_of(t: &T) -> i64 {
    count(t, "pgplane", &format!("SELECT count(*) FROM pgplane.jobs WHERE env = '{}'", t.env))
}

fn database_exists(t: &T, name: &str) -> bool {
    count(t, "postgres", &format!("SELECT count(*) FROM pg_database WHERE datname = '{name}'")) == 1
}

/// Polls an operation until it is no longer running or queued.
#[track_caller]
fn finished(s: &Serve, token: Option<&str>, id: i64) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let op = s.req("GET", &format!("/api/v1/operations/{id}"), token, None);
        assert_eq!(op.status, 200, "{}", op.body);
        let op = op.json();
        if op["status"] != "running" && op["status"] != "queued" {
            return op;
        }
        assert!(Instant::now() < deadline, "operation {id} still not finished: {op}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A psql session that runs `sql` and then sleeps until dropped (its backend terminated).
struct Holder<'t> {
    t: &'t T,
    db: String,
    child: std::process::Child,
}

impl<'t> Holder<'t> {
    fn new(t: &'t T, db: &str, sql: &str, granted: &str) -> Self {
        let child = std::process::Command::new("psql")
            .args([&common::with_db(&t.server.url, db), "-X", "-q", "-c", &format!("{sql}; SELECT pg_sleep(120);")])
            .env("PGAPPNAME", "pgplane-test-holder")
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        t.wait_for_sql(db, granted, "1", "the holder never got its lock");
        Holder { t, db: db.to_string(), child }
    }
}

impl Drop for Holder<'_> {
    fn drop(&mut self) {
        let _ = self.t.sql_try(
            "postgres",
            &format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{}' AND application_name = 'pgplane-test-holder'",
                self.db
            ),
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A session holding branch `key`'s advisory lock (as a running `branch reset` would).
fn hold_branch_lock<'t>(t: &'t T, key: &str) -> Holder<'t> {
    Holder::new(
        t,
        "pgplane",
        &format!("SELECT pg_advisory_lock(x'70676272'::int, hashtext('{key}'))"),
        &format!(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND classid = x'70676272'::int::oid
                AND objid = hashtext('{key}')::oid AND objsubid = 2"
        ),
    )
}

// ----- class 4: no cross-site or DNS-rebinding path -----------------------------------

/// A request a page could try: method, path, headers, body.
type Attempt = (&'static str, &'static str, Vec<(&'static str, &'static str)>, &'static str);

/// A web page in the same browser can send "simple" requests (text/plain, form posts, no
/// body) to `serve` without a preflight: none of them may start an apply, a prune, a
/// reset, a create or a delete, with or without tokens.
#[test]
fn cross_site_posts_start_nothing() {
    let _g = shared();
    let (t, f) = world("sh_csrf");
    t.pgplane(&["branch", "create", "MR-1", "--template", "sh_csrf_tpl", "-f", &f]).ok();
    // A mark a reset would wipe (the branch is stamped again from the template).
    t.sql("sh_csrf_tpl_mr_1", "CREATE TABLE kept (i int)");
    // The manifest now drops `extra` and adds `later`: an apply would create `later`, a
    // prune would also drop `extra`.
    let text = std::fs::read_to_string(&f).unwrap();
    std::fs::write(&f, text.replace("  - name: extra\n", "  - name: later\n")).unwrap();
    let before = operations_of(&t);

    // Without tokens (loopback) nothing but these checks stands between a page and apply.
    let open = t.serve(&f, &[], &[]);
    let attempts: Vec<Attempt> = vec![
        ("POST", "/api/v1/apply", vec![("Content-Type", "text/plain"), ("Origin", EVIL)], "{\"prune\": true}"),
        ("POST", "/api/v1/apply", vec![("Content-Type", "text/plain")], "{\"prune\": true}"),
        ("POST", "/api/v1/apply", vec![("Content-Type", "text/plain;charset=UTF-8")], ""),
        ("POST", "/api/v1/apply", vec![("Content-Type", "application/x-www-form-urlencoded")], "prune=true"),
        ("POST", "/api/v1/apply", vec![("Content-Type", "multipart/form-data; boundary=x")], "--x--\r\n"),
        ("POST", "/api/v1/apply", vec![], ""),
        ("POST", "/api/v1/apply", vec![("Origin", EVIL)], ""),
        ("POST", "/api/v1/apply", vec![("Content-Type", "application/json"), ("Origin", EVIL)], "{\"prune\": true}"),
        ("POST", "/api/v1/apply", vec![("Content-Type", "application/json"), ("Origin", "null")], "{}"),
        ("POST", "/api/v1/apply", vec![("Content-Type", "application/json"), ("Sec-Fetch-Site", "cross-site")], "{}"),
        (
            "POST",
            "/api/v1/apply",
            // Another site on the same host (a dev server on another port) is another origin.
            vec![("Content-Type", "application/json"), ("Origin", "http://127.0.0.1:1")],
            "{}",
        ),
        ("POST", "/api/v1/plan", vec![("Content-Type", "text/plain")], "{\"prune\": true}"),
        ("POST", "/api/v1/branches/MR-1/reset", vec![("Content-Type", "text/plain")], ""),
        ("POST", "/api/v1/branches/MR-1/reset", vec![("Content-Type", "application/x-www-form-urlencoded")], "a=b"),
        (
            "POST",
            "/api/v1/branches",
            vec![("Content-Type", "text/plain")],
            "{\"id\": \"MR-2\", \"template\": \"sh_csrf_tpl\"}",
        ),
        ("DELETE", "/api/v1/branches/MR-1", vec![("Origin", EVIL)], ""),
        ("DELETE", "/api/v1/branches/MR-1", vec![("Content-Type", "text/plain")], "x"),
    ];
    for (method, path, headers, body) in &attempts {
        let r = send(&open, method, path, headers, body);
        assert!(matches!(r.status, 403 | 415), "{method} {path} {headers:?}: {} {}", r.status, r.body);
        let code = r.error_code();
        assert_eq!(code, if r.status == 403 { "forbidden" } else { "unsupported_media_type" }, "{}", r.body);
    }
    // With tokens the same, even with a valid admin token (a browser extension, a proxy
    // that adds it, a token in a bookmarklet).
    let tokened = with_tokens(&t, &f, &[]);
    let bearer = format!("Bearer {ADMIN}");
    for (method, path, headers, body) in &attempts {
        let mut headers = headers.clone();
        headers.push(("Authorization", &bearer));
        let r = send(&tokened, method, path, &headers, body);
        assert!(matches!(r.status, 403 | 415), "{method} {path} {headers:?}: {} {}", r.status, r.body);
        r.error_code();
    }
    // Nothing happened: no operation, `later` not created, `extra` not dropped, the
    // branch not reset, not deleted, MR-2 not created.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(operations_of(&t), before, "an operation was started");
    assert!(!database_exists(&t, "sh_csrf_later"));
    assert!(database_exists(&t, "sh_csrf_extra"));
    assert_eq!(t.sql("sh_csrf_tpl_mr_1", "SELECT to_regclass('public.kept') IS NOT NULL"), "t");
    assert!(!database_exists(&t, "sh_csrf_tpl_mr_2"));
    assert_eq!(count(&t, "pgplane", "SELECT count(*) FROM pgplane.branches WHERE env = 'sh_csrf'"), 1);

    // The console's sign-in form keeps working from its own origin, not from another.
    let form = format!("token={ADMIN}&next=%2F");
    let r = send(
        &tokened,
        "POST",
        "/sign-in",
        &[("Content-Type", "application/x-www-form-urlencoded"), ("Origin", &tokened.base)],
        &form,
    );
    assert_eq!(r.status, 303, "{}", r.body);
    assert!(r.header("set-cookie").is_some_and(|c| c.starts_with("pgplane_token=")), "{:?}", r.headers);
    let r = send(
        &tokened,
        "POST",
        "/sign-in",
        &[("Content-Type", "application/x-www-form-urlencoded"), ("Origin", EVIL)],
        &form,
    );
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.header("set-cookie").is_none(), "{:?}", r.headers);

    // The API's own clients still work: JSON from no browser, and JSON from this origin.
    let r = send(&open, "POST", "/api/v1/apply", &[("Content-Type", "application/json"), ("Origin", &open.base)], "");
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(finished(&open, None, r.json()["id"].as_i64().unwrap())["status"], "succeeded");
    assert!(database_exists(&t, "sh_csrf_later"));
    assert!(database_exists(&t, "sh_csrf_extra"), "no prune was asked for");
    let r = send(&open, "POST", "/api/v1/plan", &[("Content-Type", "application/json; charset=utf-8")], "");
    assert_eq!(r.status, 200, "{}", r.body);
}

/// A page on a name the attacker controls, re-pointed at 127.0.0.1 (DNS rebinding), is
/// same-origin with itself: only the `Host` header tells. Every route but the health
/// checks refuses a host that is not the listen address or an `--allowed-host`.
#[test]
fn dns_rebinding_hosts_are_refused() {
    let _g = shared();
    let (t, f) = world("sh_host");
    let s = t.serve(&f, &["--allowed-host", "pgplane.example.com", "--allowed-host", "portal.example:8443"], &[]);
    let port = addr(&s).rsplit(':').next().unwrap().to_string();
    let before = operations_of(&t);
    let rebound = format!("evil.example:{port}");
    let get = |path: &str, host: &str| send(&s, "GET", path, &[("Host", host)], "");
    for path in ["/api/v1/databases", "/api/v1/branches", "/api/v1/openapi.json", "/metrics", "/", "/branches", "/nope"]
    {
        for host in
            [rebound.as_str(), "evil.example", "127.0.0.1.evil.example", "localhost.evil.example", "portal.example:80"]
        {
            let r = get(path, host);
            assert_eq!(r.status, 421, "GET {path} Host {host}: {}", r.body);
            assert_eq!(r.error_code(), "misdirected");
        }
    }
    let r = send(&s, "POST", "/api/v1/apply", &[("Host", &rebound), ("Content-Type", "application/json")], "{}");
    assert_eq!((r.status, r.error_code().as_str()), (421, "misdirected"), "{}", r.body);
    let r = send(&s, "DELETE", "/api/v1/branches/x", &[("Host", &rebound)], "");
    assert_eq!(r.status, 421, "{}", r.body);
    // No Host at all (HTTP/1.0), and an absolute request target naming another host.
    let r = http_raw(&addr(&s), b"GET /api/v1/databases HTTP/1.0\r\n\r\n");
    assert_eq!(r.status, 421, "{}", r.body);
    let r = http_raw(
        &addr(&s),
        format!(
            "GET http://{rebound}/api/v1/databases HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    );
    assert_eq!(r.status, 421, "{}", r.body);
    assert_eq!(operations_of(&t), before);

    // The listen address, localhost on loopback, and the configured names are fine.
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("LocalHost:{port}"),
        "pgplane.example.com".into(),
        "pgplane.example.com:443".into(),
        "portal.example:8443".into(),
    ] {
        assert_eq!(get("/api/v1/databases", &host).status, 200, "{host}");
        assert_eq!(get("/", &host).status, 200, "{host}");
    }
    // Health checks answer whatever the Host (kubelets probe with the pod's IP; they tell
    // nothing and change nothing).
    assert_eq!(get("/healthz", &rebound).status, 200);
    assert_eq!(get("/readyz", &rebound).status, 200);
    // A configured name is also an origin of its own (a TLS proxy in front).
    let r = send(
        &s,
        "POST",
        "/api/v1/plan",
        &[
            ("Host", "pgplane.example.com"),
            ("Origin", "https://pgplane.example.com"),
            ("Content-Type", "application/json"),
        ],
        "",
    );
    assert_eq!(r.status, 200, "{}", r.body);
}

// ----- class 5: concurrency without stalls --------------------------------------------

/// `n` creates at once, mixed with reads; returns each create's id, status and time.
fn burst(s: &Serve, tpl: &str, prefix: &str, n: usize) -> Vec<(String, Response, Duration)> {
    let reads = ["/api/v1/branches", "/api/v1/operations", "/readyz", "/healthz", "/metrics", "/api/v1/databases"];
    let readers = n / 4 + reads.len();
    let barrier = Barrier::new(n + readers);
    let (creates, others) = std::thread::scope(|scope| {
        let creates: Vec<_> = (0..n)
            .map(|i| {
                let barrier = &barrier;
                scope.spawn(move || {
                    let id = format!("{prefix}-{i}");
                    let body = format!("{{\"id\": \"{id}\", \"template\": \"{tpl}\"}}");
                    barrier.wait();
                    let started = Instant::now();
                    let r = s.req("POST", "/api/v1/branches", None, Some(&body));
                    (id, r, started.elapsed())
                })
            })
            .collect();
        let others: Vec<_> = (0..readers)
            .map(|i| {
                let barrier = &barrier;
                scope.spawn(move || {
                    let path = reads[i % reads.len()];
                    barrier.wait();
                    let started = Instant::now();
                    let r = s.req("GET", path, None, None);
                    (path, r, started.elapsed())
                })
            })
            .collect();
        let creates: Vec<_> = creates.into_iter().map(|h| h.join().unwrap()).collect();
        let others: Vec<_> = others.into_iter().map(|h| h.join().unwrap()).collect();
        (creates, others)
    });
    for (path, r, took) in &others {
        assert_eq!(r.status, 200, "GET {path}: {}", r.body);
        assert!(*took < Duration::from_secs(1), "GET {path} took {took:?} among {n} creates");
    }
    let mut times: Vec<Duration> = creates.iter().map(|c| c.2).collect();
    times.sort();
    eprintln!(
        "{n} concurrent creates: p50 {:?}, p90 {:?}, max {:?}; 202: {}, 429: {}",
        times[n / 2],
        times[n * 9 / 10],
        times[n - 1],
        creates.iter().filter(|c| c.1.status == 202).count(),
        creates.iter().filter(|c| c.1.status == 429).count()
    );
    for (id, r, took) in &creates {
        assert!(matches!(r.status, 202 | 429), "POST {id}: {} {}", r.status, r.body);
        assert!(*took < Duration::from_secs(1), "POST {id} took {took:?} ({} of {n} at once)", r.status);
        if r.status == 429 {
            assert_eq!(r.error_code(), "too_many_requests");
            let retry: u64 =
                r.header("retry-after").unwrap_or_else(|| panic!("no Retry-After: {:?}", r.headers)).parse().unwrap();
            assert!((1..=60).contains(&retry), "{retry}");
        }
    }
    creates
}

/// Each accepted create succeeded and left its database; each refused one left nothing.
fn settled(t: &T, s: &Serve, tpl: &str, creates: &[(String, Response, Duration)]) {
    for (id, r, _) in creates {
        let db = format!("{tpl}_{}", id.replace('-', "_"));
        if r.status == 202 {
            let op = finished(s, None, r.json()["id"].as_i64().unwrap());
            assert_eq!(op["status"], "succeeded", "{id}: {op}\n{}", s.log());
            assert!(database_exists(t, &db), "{db}");
        } else {
            assert!(!database_exists(t, &db), "{db} exists, yet its create was refused");
            assert_eq!(s.req("GET", &format!("/api/v1/branches/{id}"), None, None).status, 404);
        }
    }
}

#[test]
fn concurrent_creates_are_each_answered_within_a_second() {
    let _g = shared();
    let (t, f) = world("sh_many");
    let s = t.serve(&f, &[], &[]);
    let tpl = "sh_many_tpl";
    // 16 at once: within the backlog, every one accepted.
    let first = burst(&s, tpl, "a", 16);
    assert!(first.iter().all(|c| c.1.status == 202));
    settled(&t, &s, tpl, &first);
    // 64 at once: the backlog (32 by default) accepts up to its limit, the rest are 429s
    // telling when to come back, none times out.
    let second = burst(&s, tpl, "b", 64);
    let accepted = second.iter().filter(|c| c.1.status == 202).count();
    assert!((32..64).contains(&accepted), "{accepted} of 64 accepted with a backlog of 32");
    settled(&t, &s, tpl, &second);
    // Nothing is left queued or running, and the metrics say so.
    let m = s.req("GET", "/metrics", None, None).body;
    assert!(m.contains("pgplane_running_jobs 0") && m.contains("pgplane_job_queue_depth 0"), "{m}");
    assert!(
        m.contains("pgplane_http_requests_total{method=\"POST\",route=\"/api/v1/branches\",status=\"429\"}"),
        "{m}"
    );
    assert!(!s.log().contains("panicked"), "{}", s.log());
}

/// The backlog is a documented limit (`--backlog`: jobs waiting for a worker), visible in
/// the operations list and the metrics; beyond it every queueing route answers 429 with
/// Retry-After.
#[test]
fn the_backlog_is_bounded_and_visible() {
    // Alone: it counts the control database's sessions.
    let _exclusive = exclusive();
    let (t, f) = world("sh_backlog");
    let s = t.serve(&f, &["--workers", "1", "--backlog", "1"], &[]);
    let holder = hold_branch_lock(&t, "sh_backlog/mr_1");
    let create = |id: &str| {
        s.req(
            "POST",
            "/api/v1/branches",
            None,
            Some(&format!("{{\"id\": \"{id}\", \"template\": \"sh_backlog_tpl\"}}")),
        )
    };
    let r1 = create("MR-1");
    assert_eq!(r1.status, 202, "{}", r1.body);
    let op1 = r1.json()["id"].as_i64().unwrap();
    // MR-1 runs (waiting for its lock); MR-2 waits for the one slot.
    t.wait_for_sql(
        "postgres",
        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_advisory_lock%' AND wait_event_type = 'Lock' AND application_name LIKE 'pgplane%'",
        "1",
        "MR-1 never waited for its lock",
    );
    // Connections of pgplane in the control database other than the request pool's.
    let others = "SELECT count(*) FROM pg_stat_activity WHERE datname = 'pgplane' AND pid <> pg_backend_pid()
                    AND application_name NOT IN ('pgplane-serve', 'pgplane-test-holder', 'psql')";
    let before = count(&t, "postgres", others);
    let r2 = create("MR-2");
    assert_eq!(r2.status, 202, "{}", r2.body);
    let op2 = r2.json()["id"].as_i64().unwrap();
    assert_eq!(r2.json()["status"], "queued", "{}", r2.body);
    let ops = s.req("GET", "/api/v1/operations", None, None).json();
    let status = |id: i64| ops.as_array().unwrap().iter().find(|o| o["id"] == id).map(|o| o["status"].clone());
    assert_eq!(status(op1), Some("running".into()), "{ops}");
    assert_eq!(status(op2), Some("queued".into()), "{ops}");
    assert_eq!(s.req("GET", &format!("/api/v1/operations/{op2}"), None, None).json()["status"], "queued");
    let m = s.req("GET", "/metrics", None, None).body;
    assert!(m.contains("pgplane_running_jobs 1") && m.contains("pgplane_job_queue_depth 1"), "{m}");
    assert!(m.contains("pgplane_job_backlog_limit 1"), "{m}");
    // Full: creates, resets and applies are refused at once, and change nothing.
    for (path, body) in
        [("/api/v1/branches", "{\"id\": \"MR-3\", \"template\": \"sh_backlog_tpl\"}"), ("/api/v1/apply", "{}")]
    {
        let started = Instant::now();
        let r = s.req("POST", path, None, Some(body));
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!((r.status, r.error_code().as_str()), (429, "too_many_requests"), "{path}: {}", r.body);
        assert!(r.body.contains("--backlog"), "{}", r.body);
        assert!(r.header("retry-after").is_some(), "{:?}", r.headers);
    }
    assert_eq!(s.req("GET", "/api/v1/branches/MR-3", None, None).status, 404);
    // The queued operation holds no connection of its own while it waits.
    assert_eq!(count(&t, "postgres", others), before, "the queued operation holds a connection");
    drop(holder);
    assert_eq!(finished(&s, None, op1)["status"], "succeeded");
    assert_eq!(finished(&s, None, op2)["status"], "succeeded");
    let r3 = create("MR-3");
    assert_eq!(r3.status, 202, "{}", r3.body);
    assert_eq!(finished(&s, None, r3.json()["id"].as_i64().unwrap())["status"], "succeeded");
    assert!(database_exists(&t, "sh_backlog_tpl_mr_3"));
}

/// `/healthz` and `/readyz` answer at once while every pooled connection of the control
/// database waits behind a lock.
#[test]
fn health_checks_never_wait_behind_requests() {
    let _exclusive = exclusive();
    let (t, f) = world("sh_ready");
    let s = t.serve(&f, &[], &[]);
    let holder = Holder::new(
        &t,
        "pgplane",
        "BEGIN; LOCK TABLE pgplane.branches IN ACCESS EXCLUSIVE MODE",
        "SELECT count(*) FROM pg_locks WHERE relation = 'pgplane.branches'::regclass AND mode = 'AccessExclusiveLock' AND granted",
    );
    std::thread::scope(|scope| {
        let stuck: Vec<_> = (0..12).map(|_| scope.spawn(|| s.req("GET", "/api/v1/branches", None, None))).collect();
        t.wait_for_sql(
            "pgplane",
            "SELECT (count(*) >= 8)::int FROM pg_stat_activity WHERE application_name = 'pgplane-serve' AND wait_event_type = 'Lock'",
            "1",
            "the requests never waited for the lock",
        );
        for path in ["/readyz", "/healthz", "/readyz"] {
            let started = Instant::now();
            let r = s.req("GET", path, None, None);
            assert_eq!(r.status, 200, "{path}: {}", r.body);
            assert!(started.elapsed() < Duration::from_secs(1), "{path} took {:?}", started.elapsed());
        }
        drop(holder);
        for h in stuck {
            let r = h.join().unwrap();
            assert_eq!(r.status, 200, "{}", r.body);
        }
    });
}

// ----- class 6: error codes under races and odd input ---------------------------------

#[test]
fn concurrent_deletes_of_one_branch_are_one_200_and_no_500() {
    let _g = shared();
    let (t, f) = world("sh_del");
    let s = with_tokens(&t, &f, &[]);
    for round in 0..3 {
        let id = format!("MR-{round}");
        t.pgplane(&["branch", "create", &id, "--template", "sh_del_tpl", "-f", &f]).ok();
        let barrier = Barrier::new(8);
        let answers: Vec<Response> = std::thread::scope(|scope| {
            let hs: Vec<_> = (0..8)
                .map(|_| {
                    scope.spawn(|| {
                        barrier.wait();
                        s.req("DELETE", &format!("/api/v1/branches/{id}"), Some(ADMIN), None)
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let ok = answers.iter().filter(|r| r.status == 200).count();
        assert_eq!(ok, 1, "{:?}", answers.iter().map(|r| (r.status, &r.body)).collect::<Vec<_>>());
        for r in answers.iter().filter(|r| r.status != 200) {
            assert!(matches!(r.status, 404 | 409), "{} {}", r.status, r.body);
            r.error_code();
        }
        assert!(!database_exists(&t, &format!("sh_del_tpl_mr_{round}")));
        assert_eq!(count(&t, "pgplane", "SELECT count(*) FROM pgplane.branches WHERE env = 'sh_del'"), 0);
    }
}

#[test]
fn over_long_ids_and_out_of_range_ttls_are_422() {
    let _g = shared();
    let (t, f) = world("sh_odd");
    let s = with_tokens(&t, &f, &[]);
    let long = "a".repeat(256);
    let huge = "b".repeat(20_000);
    for id in [&long, &huge] {
        let body = format!("{{\"id\": \"{id}\", \"template\": \"sh_odd_tpl\"}}");
        let r = s.req("POST", "/api/v1/branches", Some(ADMIN), Some(&body));
        assert_eq!((r.status, r.error_code().as_str()), (422, "invalid"), "{}", r.body);
        assert!(r.body.contains("255"), "{}", r.body);
        for (m, p) in [
            ("GET", format!("/api/v1/branches/{id}")),
            ("GET", format!("/api/v1/branches/{id}/tables")),
            ("GET", format!("/api/v1/branches/{id}/diff")),
            ("POST", format!("/api/v1/branches/{id}/reset")),
            ("DELETE", format!("/api/v1/branches/{id}")),
        ] {
            let r = s.req(m, &p, Some(ADMIN), None);
            assert!(matches!(r.status, 414 | 422), "{m} …: {} {}", r.status, r.body);
            r.error_code();
        }
    }
    // 255 bytes is still an id.
    let ok = "c".repeat(255);
    let r = s.req(
        "POST",
        "/api/v1/branches",
        Some(ADMIN),
        Some(&format!("{{\"id\": \"{ok}\", \"template\": \"sh_odd_tpl\"}}")),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(finished(&s, Some(READ), r.json()["id"].as_i64().unwrap())["status"], "succeeded");

    t.pgplane(&["branch", "create", "MR-1", "--template", "sh_odd_tpl", "-f", &f]).ok();
    let before = operations_of(&t);
    for ttl in
        ["0s", "0", "59s", "30000ms", "3651d", "1000000h", "18446744073709551615d", "99999999999999999999999h", "-1h"]
    {
        let body = format!("{{\"id\": \"MR-2\", \"template\": \"sh_odd_tpl\", \"ttl\": \"{ttl}\"}}");
        let r = s.req("POST", "/api/v1/branches", Some(ADMIN), Some(&body));
        assert_eq!((r.status, r.error_code().as_str()), (422, "invalid"), "ttl {ttl}: {}", r.body);
        assert!(r.body.contains("ttl"), "{}", r.body);
        let r = s.req("POST", "/api/v1/branches/MR-1/reset", Some(ADMIN), Some(&format!("{{\"ttl\": \"{ttl}\"}}")));
        assert_eq!((r.status, r.error_code().as_str()), (422, "invalid"), "reset ttl {ttl}: {}", r.body);
    }
    assert_eq!(operations_of(&t), before, "a refused request started an operation");
    assert!(!database_exists(&t, "sh_odd_tpl_mr_2"));
    // The edges of the range are fine.
    for (id, ttl) in [("MR-3", "1m"), ("MR-4", "3650d")] {
        let body = format!("{{\"id\": \"{id}\", \"template\": \"sh_odd_tpl\", \"ttl\": \"{ttl}\"}}");
        let r = s.req("POST", "/api/v1/branches", Some(ADMIN), Some(&body));
        assert_eq!(r.status, 202, "{ttl}: {}", r.body);
        assert_eq!(finished(&s, Some(READ), r.json()["id"].as_i64().unwrap())["status"], "succeeded", "{ttl}");
    }
    assert!(!s.log().contains("panicked"), "{}", s.log());
}

/// A server of this test's own, stopped when dropped.
struct OwnServer {
    home: std::path::PathBuf,
}

impl OwnServer {
    fn pgplane(&self, args: &[&str]) -> String {
        common::run_ok(
            std::process::Command::new(common::BIN)
                .args(args)
                .env("PGPLANE_HOME", &self.home)
                .env("PGPLANE_LOCAL_OPTIONS", "-c fsync=off")
                .env_remove("PGPLANE_LOCAL_PORT"),
        )
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        let _ =
            std::process::Command::new(common::BIN).args(["local", "stop"]).env("PGPLANE_HOME", &self.home).output();
    }
}

/// With its database server down, every route that needs it answers 503 in the error
/// shape (the console with a 503 page), quickly; health stays 200; when the server is
/// back, so is the service.
#[test]
fn a_database_that_is_down_is_503_on_every_route_that_needs_it() {
    let t = T::new("sh_down");
    let own = OwnServer { home: common::temp_home("sh-down-server").join("home") };
    own.pgplane(&["local", "start"]);
    let url = own.pgplane(&["local", "url"]).trim().to_string();
    t.write("model/master/changelog.yaml", MASTER);
    let f = t
        .manifest(
            "modules:
  - name: registry
    storage: database
templates:
  - name: sh_down_tpl
    module: registry
    sources: [model/master/changelog.yaml]
",
        )
        .to_str()
        .unwrap()
        .to_string();
    common::run_ok(t.cmd().args(["apply", "-f", &f, "--yes"]).env("TEST_PG_URL", &url));
    common::run_ok(t.cmd().args(["template", "build", "sh_down_tpl", "-f", &f]).env("TEST_PG_URL", &url));
    common::run_ok(
        t.cmd().args(["branch", "create", "MR-1", "--template", "sh_down_tpl", "-f", &f]).env("TEST_PG_URL", &url),
    );
    let s = t.serve(&f, &[], &[("TEST_PG_URL", &url)]);
    assert_eq!(s.req("GET", "/readyz", None, None).status, 200);
    assert_eq!(s.req("GET", "/api/v1/branches/MR-1", None, None).status, 200);
    // Its server is known now (a database whose server is down is not "gone").
    assert_eq!(s.req("GET", "/api/v1/databases/sh_down_registry/tables", None, None).status, 200);
    own.pgplane(&["local", "stop"]);

    let routes: Vec<(&str, &str, Option<&str>)> = vec![
        ("GET", "/readyz", None),
        ("GET", "/metrics", None),
        ("GET", "/api/v1/databases", None),
        ("GET", "/api/v1/databases/sh_down_registry/tables", None),
        ("GET", "/api/v1/databases/sh_down_registry/tables/entries", None),
        ("GET", "/api/v1/branches", None),
        ("GET", "/api/v1/branches/MR-1", None),
        ("GET", "/api/v1/branches/MR-1/tables", None),
        ("GET", "/api/v1/branches/MR-1/diff", None),
        ("POST", "/api/v1/branches", Some("{\"id\": \"MR-2\", \"template\": \"sh_down_tpl\"}")),
        ("POST", "/api/v1/branches/MR-1/reset", None),
        ("DELETE", "/api/v1/branches/MR-1", None),
        ("POST", "/api/v1/plan", None),
        ("POST", "/api/v1/apply", None),
        ("GET", "/api/v1/operations", None),
        ("GET", "/api/v1/operations/1", None),
    ];
    for (m, p, body) in &routes {
        let started = Instant::now();
        let r = s.req(m, p, None, *body);
        assert_eq!(r.status, 503, "{m} {p}: {}", r.body);
        assert_eq!(r.error_code(), "unavailable", "{m} {p}");
        assert!(started.elapsed() < Duration::from_secs(15), "{m} {p} took {:?}", started.elapsed());
    }
    for page in ["/", "/branches", "/operations", "/branches/MR-1"] {
        let r = s.req("GET", page, None, None);
        assert_eq!(r.status, 503, "{page}: {}", r.body);
    }
    assert_eq!(s.req("GET", "/healthz", None, None).status, 200);
    // Back: the same process serves again.
    own.pgplane(&["local", "start"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while s.req("GET", "/api/v1/branches/MR-1", None, None).status != 200 {
        assert!(Instant::now() < deadline, "still failing after the server came back");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(s.req("GET", "/readyz", None, None).status, 200);
    assert!(!s.log().contains("panicked"), "{}", s.log());
}
