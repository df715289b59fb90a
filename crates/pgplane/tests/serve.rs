//! End-to-end: `pgplane serve`, its REST API, auth, operations and shutdown, against a real
//! server, with the catalog checked afterwards.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Response, Serve, MASTER, T};

const READ: &str = "read-token-0123456789abcdef";
const ADMIN: &str = "admin-token-0123456789abcdef";

const CANDIDATE: &str = "\
databaseChangeLog:
  - changeSet:
      id: c1
      author: bob
      changes:
        - createTable:
            tableName: auditors
            columns:
              - column: {name: id, type: int}
";

const BROKEN: &str = "\
databaseChangeLog:
  - changeSet:
      id: c2
      author: bob
      changes:
        - sql:
            sql: INSERT INTO missing_table VALUES (1)
";

const BRIEF: &str = "\
databaseChangeLog:
  - changeSet:
      id: b1
      author: bob
      changes:
        - sql:
            sql: SELECT pg_sleep(2)
";

const SLOW: &str = "\
databaseChangeLog:
  - changeSet:
      id: s1
      author: bob
      changes:
        - sql:
            sql: SELECT pg_sleep(60)
";

/// A manifest with a module and its template, applied and built; returns the manifest path.
fn world(env: &str) -> (T, String) {
    let t = T::new(env);
    t.write("model/master/changelog.yaml", MASTER);
    t.write("model/cand/changelog.yaml", CANDIDATE);
    t.write("model/broken/changelog.yaml", BROKEN);
    t.write("model/slow/changelog.yaml", SLOW);
    t.write("model/brief/changelog.yaml", BRIEF);
    let f = t.manifest(&format!(
        "modules:
  - name: registry
    storage: database
templates:
  - name: {env}_tpl
    module: registry
    sources: [model/master/changelog.yaml]
branches:
  database: \"{{template}}_{{branch}}\"
"
    ));
    let f = f.to_str().unwrap().to_string();
    t.pgplane(&["apply", "-f", &f, "--yes"]).ok();
    t.pgplane(&["template", "build", &format!("{env}_tpl"), "-f", &f]).ok();
    (t, f)
}

fn tokens() -> [(&'static str, String); 1] {
    [("PGPLANE_TOKENS", format!("read:{READ},admin:{ADMIN}"))]
}

fn serve(t: &T, f: &str, extra: &[&str]) -> Serve {
    let env = tokens();
    t.serve(f, extra, &[(env[0].0, env[0].1.as_str())])
}

/// Polls an operation until it is no longer running.
#[track_caller]
fn finished(s: &Serve, id: i64) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let op = s.req("GET", &format!("/api/v1/operations/{id}"), Some(READ), None);
        assert_eq!(op.status, 200, "{}", op.body);
        let op = op.json();
        if op["status"] != "running" && op["status"] != "queued" {
            return op;
        }
        assert!(Instant::now() < deadline, "operation {id} still running: {op}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A psql session in `db` that runs `sql` (taking a lock) and then sleeps, until released.
struct Holder<'t> {
    t: &'t T,
    db: String,
    child: std::process::Child,
}

impl<'t> Holder<'t> {
    /// Starts the session and waits until `granted` (SQL run in the control database or
    /// `db`'s server) returns 1.
    fn new(t: &'t T, db: &str, sql: &str, granted: &str) -> Self {
        let child = std::process::Command::new("psql")
            .args([&common::with_db(&t.server.url, db), "-X", "-q", "-c", &format!("{sql}; SELECT pg_sleep(60);")])
            .env("PGAPPNAME", "pgplane-test-holder")
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        t.wait_for_sql(db, granted, "1", "the holder never got its lock");
        Holder { t, db: db.to_string(), child }
    }

    /// Ends the session (killing psql alone would leave the backend asleep, holding on).
    fn release(self) {
        drop(self);
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

#[track_caller]
fn accepted(r: &Response, kind: &str) -> i64 {
    assert_eq!(r.status, 202, "{}", r.body);
    let op = r.json();
    let keys: Vec<&str> = op.as_object().unwrap().keys().map(String::as_str).collect();
    for k in ["id", "kind", "status", "error", "started_at", "finished_at"] {
        assert!(keys.contains(&k), "operation lacks {k}: {op}");
    }
    assert_eq!(op["kind"], kind);
    let id = op["id"].as_i64().unwrap();
    assert_eq!(r.header("location"), Some(format!("/api/v1/operations/{id}").as_str()));
    id
}

#[test]
fn health_metrics_openapi_and_auth() {
    let (t, f) = world("sv_auth");
    let s = serve(&t, &f, &[]);
    // Health and metrics need no token.
    assert_eq!(s.req("GET", "/healthz", None, None).status, 200);
    assert_eq!(s.req("GET", "/readyz", None, None).status, 200);
    // The served document is the committed one.
    let doc = s.req("GET", "/api/v1/openapi.json", None, None);
    assert_eq!(doc.status, 200);
    let committed = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.json")).unwrap();
    assert_eq!(doc.body, committed);
    let paths = doc.json()["paths"].as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert!(paths.contains(&"/api/v1/branches/{id}/reset".to_string()), "{paths:?}");

    // No token, a wrong one, a read token on a read route and on a mutating one.
    let r = s.req("GET", "/api/v1/databases", None, None);
    assert_eq!((r.status, r.error_code().as_str()), (401, "unauthorized"));
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    let r = s.req("GET", "/api/v1/databases", Some("read-token-0123456789abcdeX"), None);
    assert_eq!((r.status, r.error_code().as_str()), (401, "unauthorized"));
    assert_eq!(s.req("GET", "/api/v1/databases", Some(READ), None).status, 200);
    assert_eq!(s.req("GET", "/api/v1/databases", Some(ADMIN), None).status, 200);
    for (method, path) in [
        ("POST", "/api/v1/branches"),
        ("POST", "/api/v1/apply"),
        ("DELETE", "/api/v1/branches/x"),
        ("POST", "/api/v1/branches/x/reset"),
    ] {
        let r = s.req(method, path, Some(READ), Some("{}"));
        assert_eq!((r.status, r.error_code().as_str()), (403, "forbidden"), "{method} {path}");
    }
    // Scopes go by route, not by how the path ends: a branch may be called "plan".
    let r = s.req("DELETE", "/api/v1/branches/plan", Some(READ), None);
    assert_eq!((r.status, r.error_code().as_str()), (403, "forbidden"));
    // The scheme is case-insensitive.
    let r = common::http(
        "GET",
        &format!("{}/api/v1/branches", s.base),
        &[("Authorization", &format!("BEARER {READ}"))],
        b"",
    );
    assert_eq!(r.status, 200);
    // Bad query strings, bad path bytes and oversized bodies answer in the error shape too.
    for (m, p, body) in [
        ("GET", "/api/v1/operations?limit=abc", None),
        ("GET", "/api/v1/branches/%FF", None),
        ("GET", "/api/v1/databases/x/tables?schema=%00", None),
    ] {
        let r = s.req(m, p, Some(READ), body);
        assert!(matches!(r.status, 400 | 404 | 422), "{m} {p}: {} {}", r.status, r.body);
        r.error_code();
    }
    let big = format!("{{\"prune\": false, \"x\": \"{}\"}}", "y".repeat(3 << 20));
    let r = s.req("POST", "/api/v1/plan", Some(READ), Some(&big));
    assert_eq!((r.status, r.error_code().as_str()), (413, "too_large"));
    // Plan changes nothing: a read token may.
    let r = s.req("POST", "/api/v1/plan", Some(READ), None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.json()["actions"].is_array(), "{}", r.body);

    // Unknown routes, wrong methods, malformed JSON: the same error shape.
    let r = s.req("GET", "/api/v1/nope", Some(READ), None);
    assert_eq!((r.status, r.error_code().as_str()), (404, "not_found"));
    assert!(r.body.contains("/api/v1/nope"), "{}", r.body);
    let r = s.req("PUT", "/api/v1/branches", Some(ADMIN), Some("{}"));
    assert_eq!((r.status, r.error_code().as_str()), (405, "method_not_allowed"));
    let r = s.req("POST", "/api/v1/branches", Some(ADMIN), Some("{\"id\": "));
    assert_eq!((r.status, r.error_code().as_str()), (400, "bad_request"));
    let r = s.req("POST", "/api/v1/plan", Some(ADMIN), Some("{\"prune\": "));
    assert_eq!((r.status, r.error_code().as_str()), (400, "bad_request"));
    let r = s.req("POST", "/api/v1/plan", Some(ADMIN), Some("{\"prune\": \"yes\"}"));
    assert_eq!((r.status, r.error_code().as_str()), (422, "invalid"));

    // Metrics count requests by route pattern, and read operations and branches from the control database.
    let m = s.req("GET", "/metrics", None, None);
    assert_eq!(m.status, 200);
    assert!(
        m.body.contains("pgplane_http_requests_total{method=\"GET\",route=\"/api/v1/databases\",status=\"401\"} 2"),
        "{}",
        m.body
    );
    assert!(m.body.contains("pgplane_http_request_duration_seconds_bucket{"), "{}", m.body);
    assert!(m.body.contains("pgplane_operations{kind=\"template_build\",status=\"succeeded\"}"), "{}", m.body);
    // Tokens never reach the log.
    let log = s.log();
    assert!(!log.contains(READ) && !log.contains(ADMIN), "{log}");
}

#[test]
fn databases_and_tables() {
    let (t, f) = world("sv_db");
    t.sql(
        "sv_db_registry",
        "CREATE TABLE notes (id int, gone text, body text); ALTER TABLE notes DROP COLUMN gone;
         COMMENT ON TABLE notes IS 'Free text'; CREATE VIEW v AS SELECT 1 AS one",
    );
    let s = serve(&t, &f, &[]);
    let dbs = s.req("GET", "/api/v1/databases", Some(READ), None).json();
    let db = dbs.as_array().unwrap().iter().find(|d| d["name"] == "sv_db_registry").unwrap_or_else(|| panic!("{dbs}"));
    assert_eq!(db["kind"], "module");
    assert_eq!(db["module"], "registry");
    assert_eq!(db["env"], "sv_db");
    assert!(db["size_bytes"].as_i64().unwrap() > 0);
    assert!(dbs.as_array().unwrap().iter().any(|d| d["name"] == "pgplane" && d["kind"] == "control"));
    // Templates are not listed (they are read through their branches).
    assert!(!dbs.as_array().unwrap().iter().any(|d| d["name"] == "sv_db_tpl"));

    // The same list the CLI prints.
    let r = s.req("GET", "/api/v1/databases/sv_db_registry/tables", Some(READ), None);
    assert_eq!(r.status, 200, "{}", r.body);
    let cli = t.pgplane(&["schema", "tables", "--db", "sv_db_registry", "-f", &f, "--json"]).ok().json();
    assert_eq!(r.json(), cli);
    let notes = r.json().as_array().unwrap().iter().find(|x| x["name"] == "notes").cloned().unwrap();
    assert_eq!(notes["description"], "Free text");
    assert_eq!(notes["columns"], 2, "a dropped column is not counted: {notes}");
    assert_eq!(notes["schema"], "public");
    let only = s.req("GET", "/api/v1/databases/sv_db_registry/tables?schema=nope", Some(READ), None).json();
    assert_eq!(only, serde_json::json!([]));

    // A table's structure, as `schema describe --json` prints it; views with their definition.
    let r = s.req("GET", "/api/v1/databases/sv_db_registry/tables/notes", Some(READ), None);
    assert_eq!(r.status, 200, "{}", r.body);
    let cli = t.pgplane(&["schema", "describe", "notes", "--db", "sv_db_registry", "-f", &f, "--json"]).ok().json();
    assert_eq!(r.json(), cli);
    assert_eq!(r.json()["description"], "Free text");
    assert_eq!(r.json()["columns"][0]["name"], "id");
    let v = s.req("GET", "/api/v1/databases/sv_db_registry/tables/public.v", Some(READ), None).json();
    assert!(v["view_definition"].as_str().unwrap().contains("1 AS one"), "{v}");
    let r = s.req("GET", "/api/v1/databases/sv_db_registry/tables/nope", Some(READ), None);
    assert_eq!((r.status, r.error_code().as_str()), (404, "not_found"));
    t.sql("sv_db_registry", "CREATE SCHEMA a; CREATE SCHEMA b; CREATE TABLE a.dup (i int); CREATE TABLE b.dup (i int)");
    let r = s.req("GET", "/api/v1/databases/sv_db_registry/tables/dup", Some(READ), None);
    assert_eq!((r.status, r.error_code().as_str()), (422, "invalid"), "{}", r.body);
    assert!(r.body.contains("a.dup") && r.body.contains("b.dup"), "{}", r.body);
    let r = s.req("GET", "/api/v1/databases/no_such_db/tables/notes", Some(READ), None);
    assert_eq!((r.status, r.error_code().as_str()), (404, "not_found"));

    let r = s.req("GET", "/api/v1/databases/no_such_db/tables", Some(READ), None);
    assert_eq!((r.status, r.error_code().as_str()), (404, "not_found"));
    let r = s.req("GET", "/api/v1/databases/sv_db_tpl/tables", Some(READ), None);
    assert_eq!(r.status, 404, "templates are not served as databases: {}", r.body);
}

#[test]
fn branch_lifecycle_over_the_api() {
    let (t, f) = world("sv_br");
    let tpl = "sv_br_tpl";
    let s = serve(&t, &f, &[]);
    let body = |id: &str, src: &str| {
        format!("{{\"id\": \"{id}\", \"template\": \"{tpl}\", \"sources\": [\"{src}\"], \"labels\": {{\"mr\": \"42\"}}, \"ttl\": \"72h\"}}")
    };
    // Bad requests change nothing.
    for (b, code) in [
        (format!("{{\"id\": \"MR-1\", \"template\": \"{tpl}\", \"color\": 1}}"), 422),
        (format!("{{\"template\": \"{tpl}\"}}"), 422),
        ("{\"id\": \"MR-1\", \"template\": \"nope\"}".to_string(), 422),
        (format!("{{\"id\": \"\", \"template\": \"{tpl}\"}}"), 422),
        (format!("{{\"id\": \"MR-1\", \"template\": \"{tpl}\", \"ttl\": \"soon\"}}"), 422),
        (body("MR-1", "../outside"), 422),
        (body("MR-1", "/etc"), 422),
        (body("MR-1", "model/../../x"), 422),
        (body("MR-1", "model/missing"), 422),
    ] {
        let r = s.req("POST", "/api/v1/branches", Some(ADMIN), Some(&b));
        assert_eq!(r.status, code, "{b}: {}", r.body);
        assert_eq!(r.error_code(), "invalid");
    }
    // A symlink that leads out of the manifest's folder.
    std::os::unix::fs::symlink("/tmp", t.dir.join("model/out")).unwrap();
    let r = s.req("POST", "/api/v1/branches", Some(ADMIN), Some(&body("MR-1", "model/out")));
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(t.sql("pgplane", "SELECT count(*) FROM pgplane.branches WHERE env = 'sv_br'"), "0");

    // A good candidate: 202 at once, then SUCCESS; the branch reads like `branch show --json`.
    let r = s.req("POST", "/api/v1/branches", Some(ADMIN), Some(&body("MR-42", "model/cand/changelog.yaml")));
    let op = accepted(&r, "branch_create");
    let done = finished(&s, op);
    assert_eq!(done["status"], "succeeded", "{done}");
    assert!(done["error"].is_null() && done["finished_at"].is_string(), "{done}");
    let b = s.req("GET", "/api/v1/branches/MR-42", Some(READ), None).json();
    let cli = t.pgplane(&["branch", "show", "MR-42", "-f", &f, "--json"]).ok().json();
    assert_eq!(b, cli);
    assert_eq!(b["status"], "SUCCESS");
    assert_eq!(b["labels"]["mr"], "42");
    assert_eq!(b["operation_id"], op);
    assert!(b["expires_at"].is_string());
    assert_eq!(t.sql("sv_br_tpl_mr_42", "SELECT to_regclass('public.auditors') IS NOT NULL"), "t");
    let tables = s.req("GET", "/api/v1/branches/MR-42/tables", Some(READ), None).json();
    let names: Vec<&str> = tables.as_array().unwrap().iter().filter_map(|x| x["name"].as_str()).collect();
    assert!(names.contains(&"auditors") && names.contains(&"entries"), "{names:?}");
    // A table of the branch, and what the branch changes compared with its template.
    let a = s.req("GET", "/api/v1/branches/MR-42/tables/auditors", Some(READ), None);
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.json()["columns"][0]["type"], "integer");
    assert_eq!(s.req("GET", "/api/v1/branches/MR-42/tables/nope", Some(READ), None).status, 404);
    let d = s.req("GET", "/api/v1/branches/MR-42/diff", Some(READ), None);
    assert_eq!(d.status, 200, "{}", d.body);
    let d = d.json();
    assert_eq!((d["from"].as_str(), d["to"].as_str()), (Some("template:sv_br_tpl"), Some("branch:MR-42")));
    let cli = t.pgplane(&["schema", "diff", "template:sv_br_tpl", "branch:MR-42", "-f", &f, "--json"]).ok().json();
    assert_eq!(d["changes"], cli["changes"]);
    assert!(
        d["changes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["object"] == "table" && c["change"] == "added" && c["name"] == "public.auditors"),
        "{d}"
    );
    // The same id again is a conflict; an unknown one is 404.
    let r = s.req("POST", "/api/v1/branches", Some(ADMIN), Some(&body("MR-42", "model/cand/changelog.yaml")));
    assert_eq!((r.status, r.error_code().as_str()), (409, "conflict"));
    for (m, p) in [
        ("GET", "/api/v1/branches/MR-0"),
        ("GET", "/api/v1/branches/MR-0/tables"),
        ("GET", "/api/v1/branches/MR-0/diff"),
        ("GET", "/api/v1/branches/MR-0/tables/x"),
        ("DELETE", "/api/v1/branches/MR-0"),
        ("POST", "/api/v1/branches/MR-0/reset"),
    ] {
        let r = s.req(m, p, Some(ADMIN), None);
        assert_eq!((r.status, r.error_code().as_str()), (404, "not_found"), "{m} {p}");
    }

    // A failing candidate: the operation fails, the branch is FAILED with PostgreSQL's message.
    let r = s.req("POST", "/api/v1/branches", Some(ADMIN), Some(&body("MR-43", "model/broken/changelog.yaml")));
    let done = finished(&s, accepted(&r, "branch_create"));
    assert_eq!(done["status"], "failed", "{done}");
    assert!(done["error"].as_str().unwrap().contains("missing_table"), "{done}");
    let b = s.req("GET", "/api/v1/branches/MR-43", Some(READ), None).json();
    assert_eq!(b["status"], "FAILED");
    assert!(b["failure"]["message"].as_str().unwrap().contains("missing_table"), "{b}");
    let list = s.req("GET", "/api/v1/branches", Some(READ), None).json();
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
    let list = s.req("GET", "/api/v1/branches?template=other", Some(READ), None).json();
    assert_eq!(list, serde_json::json!([]));

    // Reset with a fixed source: SUCCESS, same database.
    let r = s.req(
        "POST",
        "/api/v1/branches/MR-43/reset",
        Some(ADMIN),
        Some("{\"sources\": [\"model/cand/changelog.yaml\"]}"),
    );
    let done = finished(&s, accepted(&r, "branch_reset"));
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(s.req("GET", "/api/v1/branches/MR-43", Some(READ), None).json()["status"], "SUCCESS");
    // Reset without a body keeps what the branch has.
    let r = s.req("POST", "/api/v1/branches/MR-43/reset", Some(ADMIN), None);
    assert_eq!(finished(&s, accepted(&r, "branch_reset"))["status"], "succeeded");

    // Delete: the database is gone from the catalog, the branch from the API.
    let r = s.req("DELETE", "/api/v1/branches/MR-42", Some(ADMIN), None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["database"], "sv_br_tpl_mr_42");
    assert_eq!(t.sql("postgres", "SELECT count(*) FROM pg_database WHERE datname = 'sv_br_tpl_mr_42'"), "0");
    assert_eq!(s.req("GET", "/api/v1/branches/MR-42", Some(READ), None).status, 404);

    // Operations: newest first, including the CLI's.
    let ops = s.req("GET", "/api/v1/operations?limit=100", Some(READ), None).json();
    let kinds: Vec<&str> = ops.as_array().unwrap().iter().filter_map(|o| o["kind"].as_str()).collect();
    assert!(kinds.contains(&"branch_reset") && kinds.contains(&"template_build"), "{kinds:?}");
    assert_eq!(s.req("GET", "/api/v1/operations/999999999", Some(READ), None).status, 404);
    assert_eq!(s.req("GET", "/api/v1/operations/abc", Some(READ), None).status, 404);
}

#[test]
fn a_branch_is_running_from_the_moment_it_is_accepted() {
    let (t, f) = world("sv_acc");
    let s = serve(&t, &f, &[]);
    // Another process holds the branch's lock (as a running `branch reset` would): the job
    // waits for it before it claims the branch's row.
    let holder = Holder::new(
        &t,
        "pgplane",
        "SELECT pg_advisory_lock(x'70676272'::int, hashtext('sv_acc/mr_44'))",
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND classid = x'70676272'::int::oid
            AND objid = hashtext('sv_acc/mr_44')::oid AND objsubid = 2",
    );
    let body = "{\"id\": \"MR-44\", \"template\": \"sv_acc_tpl\", \"sources\": [\"model/cand/changelog.yaml\"], \"labels\": {\"mr\": \"44\"}}";
    let op = accepted(&s.req("POST", "/api/v1/branches", Some(ADMIN), Some(body)), "branch_create");
    // Not claimed yet, yet the API shows it: RUNNING, with its database, labels and operation.
    assert_eq!(t.sql("pgplane", "SELECT count(*) FROM pgplane.branches WHERE env = 'sv_acc'"), "0");
    let b = s.req("GET", "/api/v1/branches/MR-44", Some(READ), None);
    assert_eq!(b.status, 200, "{}", b.body);
    let b = b.json();
    assert_eq!(
        (b["status"].as_str(), b["database"].as_str(), b["template"].as_str()),
        (Some("RUNNING"), Some("sv_acc_tpl_mr_44"), Some("sv_acc_tpl"))
    );
    assert_eq!((b["labels"]["mr"].as_str(), b["operation_id"].as_i64()), (Some("44"), Some(op)), "{b}");
    let list = s.req("GET", "/api/v1/branches", Some(READ), None).json();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0], b);
    // Its tables are not there yet; it cannot be created again, reset or deleted meanwhile.
    let r = s.req("GET", "/api/v1/branches/MR-44/tables", Some(READ), None);
    assert_eq!((r.status, r.error_code().as_str()), (404, "not_found"), "{}", r.body);
    assert!(r.body.contains("status RUNNING"), "{}", r.body);
    for (m, p, b) in [
        ("POST", "/api/v1/branches", Some(body)),
        ("POST", "/api/v1/branches/MR-44/reset", None),
        ("DELETE", "/api/v1/branches/MR-44", None),
    ] {
        let r = s.req(m, p, Some(ADMIN), b);
        assert_eq!((r.status, r.error_code().as_str()), (409, "conflict"), "{m} {p}: {}", r.body);
        assert!(r.body.contains("being created"), "{}", r.body);
    }
    assert_eq!(t.sql("postgres", "SELECT count(*) FROM pg_database WHERE datname = 'sv_acc_tpl_mr_44'"), "0");
    // The lock goes: the job claims, stamps and deploys; the branch is the recorded one.
    holder.release();
    assert_eq!(finished(&s, op)["status"], "succeeded");
    let b = s.req("GET", "/api/v1/branches/MR-44", Some(READ), None).json();
    assert_eq!(b, t.pgplane(&["branch", "show", "MR-44", "-f", &f, "--json"]).ok().json());
    assert_eq!((b["status"].as_str(), b["operation_id"].as_i64()), (Some("SUCCESS"), Some(op)));
    assert_eq!(t.sql("sv_acc_tpl_mr_44", "SELECT to_regclass('public.auditors') IS NOT NULL"), "t");
}

#[test]
fn apply_runs_in_the_background_and_reports() {
    let (t, f) = world("sv_apply");
    let s = serve(&t, &f, &[]);
    // The manifest gains a module: plan shows it, apply creates it.
    let text = std::fs::read_to_string(&f).unwrap();
    std::fs::write(&f, text.replace("modules:\n", "modules:\n  - name: extra\n    storage: database\n")).unwrap();
    let plan = s.req("POST", "/api/v1/plan", Some(READ), Some("{\"deep\": true}"));
    assert_eq!(plan.status, 200, "{}", plan.body);
    assert!(plan.body.contains("sv_apply_extra"), "{}", plan.body);
    let r = s.req("POST", "/api/v1/apply", Some(ADMIN), Some("{}"));
    let done = finished(&s, accepted(&r, "apply"));
    assert_eq!(done["status"], "succeeded", "{done}");
    assert!(done["changes"].as_i64().unwrap() > 0, "{done}");
    assert_eq!(t.sql("postgres", "SELECT count(*) FROM pg_database WHERE datname = 'sv_apply_extra'"), "1");
    // A manifest that no longer loads is the request's problem.
    std::fs::write(&f, "version: 1\nmodules: [ {name: 1").unwrap();
    let r = s.req("POST", "/api/v1/plan", Some(READ), None);
    assert_eq!((r.status, r.error_code().as_str()), (422, "invalid"), "{}", r.body);
    let r = s.req("POST", "/api/v1/apply", Some(ADMIN), None);
    assert_eq!((r.status, r.error_code().as_str()), (422, "invalid"), "{}", r.body);
}

#[test]
fn a_catalog_failure_is_a_500_in_the_error_shape() {
    let (t, f) = world("sv_500");
    // An ACCESS EXCLUSIVE lock on a catalog the query reads (comments), held elsewhere, and
    // a lock timeout for the database's sessions: the query fails, and the API says so.
    t.sql("postgres", "ALTER DATABASE sv_500_registry SET lock_timeout = '200ms'");
    let holder = Holder::new(
        &t,
        "sv_500_registry",
        "BEGIN; LOCK TABLE pg_description IN ACCESS EXCLUSIVE MODE",
        "SELECT count(*) FROM pg_locks WHERE relation = 'pg_description'::regclass AND mode = 'AccessExclusiveLock' AND granted",
    );
    let s = serve(&t, &f, &[]);
    let r = s.req("GET", "/api/v1/databases/sv_500_registry/tables", Some(READ), None);
    assert_eq!((r.status, r.error_code().as_str()), (500, "internal"), "{}", r.body);
    assert!(r.body.contains("lock timeout"), "{}", r.body);
    // The server is fine afterwards.
    holder.release();
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.req("GET", "/api/v1/databases/sv_500_registry/tables", Some(READ), None).status != 200 {
        assert!(Instant::now() < deadline, "still failing after the lock was released");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn refuses_to_listen_openly_without_tokens_and_reads_token_files() {
    let (t, f) = world("sv_listen");
    let r = t.pgplane(&["serve", "-f", &f, "--listen", "0.0.0.0:0"]).fails();
    assert!(r.stderr.contains("refusing to listen on 0.0.0.0:0 without tokens"), "{}", r.stderr);
    t.write("tokens", "# portal\nread:short\n");
    let r = t.pgplane(&["serve", "-f", &f, "--tokens-file", "tokens"]).fails();
    assert!(r.stderr.contains("tokens:2") && r.stderr.contains("at least 16"), "{}", r.stderr);
    assert!(!r.stderr.contains("short\n"), "{}", r.stderr);
    t.write("tokens", &format!("# portal\nread:{READ}\n"));
    let s = t.serve(&f, &["--tokens-file", "tokens"], &[]);
    assert_eq!(s.req("GET", "/api/v1/branches", Some(READ), None).status, 200);
    assert_eq!(s.req("GET", "/api/v1/branches", Some(ADMIN), None).status, 401);
    // Without tokens on loopback, no token is needed.
    let open = t.serve(&f, &[], &[]);
    assert_eq!(open.req("GET", "/api/v1/branches", None, None).status, 200);
}

/// Waits until operation `id`, as `s` reports it, has `status`; returns it.
fn until_status(s: &Serve, id: i64, status: &str, within: Duration) -> serde_json::Value {
    let deadline = Instant::now() + within;
    loop {
        let o = s.req("GET", &format!("/api/v1/operations/{id}"), Some(READ), None).json();
        if o["status"] == status {
            return o;
        }
        assert!(Instant::now() < deadline, "operation {id} is not {status}: {o}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn sigterm_hands_jobs_back_and_kill_9_is_taken_over() {
    let (t, f) = world("sv_term");
    // SIGTERM while a 2 s deployment runs: it gets the grace period and finishes.
    let s = serve(&t, &f, &["--grace", "30s"]);
    let brief = "{\"id\": \"brief\", \"template\": \"sv_term_tpl\", \"sources\": [\"model/brief/changelog.yaml\"]}";
    let op = accepted(&s.req("POST", "/api/v1/branches", Some(ADMIN), Some(brief)), "branch_create");
    t.wait_for_sql(
        "postgres",
        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(2)%' AND pid <> pg_backend_pid()",
        "1",
        "the brief changeset never started",
    );
    assert_eq!(s.terminate(Duration::from_secs(30)), Some(0), "serve did not stop on SIGTERM");
    assert_eq!(t.sql("pgplane", &format!("SELECT status FROM pgplane.jobs WHERE id = {op}")), "succeeded");
    assert_eq!(t.sql("pgplane", "SELECT status FROM pgplane.branches WHERE id = 'brief'"), "SUCCESS");

    let slow = "{\"id\": \"slow\", \"template\": \"sv_term_tpl\", \"sources\": [\"model/slow/changelog.yaml\"]}";
    // SIGTERM with a short grace: serve stops within seconds; the running migration is
    // cancelled (rolled back) and the job handed back to the queue, not failed.
    let s = serve(&t, &f, &["--grace", "1s"]);
    let op = accepted(&s.req("POST", "/api/v1/branches", Some(ADMIN), Some(slow)), "branch_create");
    t.wait_for_sql(
        "postgres",
        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(60)%' AND pid <> pg_backend_pid()",
        "1",
        "the slow changeset never started",
    );
    let started = Instant::now();
    let log = s.log.clone();
    assert_eq!(s.terminate(Duration::from_secs(20)), Some(0), "serve did not stop on SIGTERM");
    assert!(started.elapsed() < Duration::from_secs(15), "took {:?}", started.elapsed());
    let log = log.lock().unwrap().clone();
    assert!(log.contains("handed operations"), "{log}");
    let row = t.sql("pgplane", &format!("SELECT status || ' ' || attempts FROM pgplane.jobs WHERE id = {op}"));
    assert_eq!(row, "queued 0", "handed back, the attempt not counted");
    // An API-only replica (no workers) reports it as queued, and the branch as RUNNING.
    let api = serve(&t, &f, &["--workers", "0"]);
    assert_eq!(until_status(&api, op, "queued", Duration::from_secs(5))["attempts"], 0);
    assert_eq!(api.req("GET", "/api/v1/branches/slow", Some(READ), None).json()["status"], "RUNNING");
    // Cancelled before any worker took it: nothing runs it any more.
    let r = api.req("DELETE", &format!("/api/v1/operations/{op}"), Some(ADMIN), None);
    assert_eq!((r.status, r.json()["status"].as_str()), (200, Some("cancelled")), "{}", r.body);
    let r = api.req("DELETE", &format!("/api/v1/operations/{op}"), Some(READ), None);
    assert_eq!(r.status, 403, "cancelling needs an admin token");
    assert_eq!(api.req("GET", "/api/v1/branches/slow", Some(READ), None).json()["status"], "FAILED");

    // kill -9 mid-operation: the job's lock goes with the process; readers see it waiting
    // for a worker at once, and a replica with workers takes it over (attempt 2).
    let w = serve(&t, &f, &[]);
    let op = accepted(&w.req("POST", "/api/v1/branches/slow/reset", Some(ADMIN), None), "branch_reset");
    t.wait_for_sql(
        "postgres",
        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(60)%' AND pid <> pg_backend_pid()",
        "1",
        "the reset never started",
    );
    let mut w = w;
    w.child.kill().unwrap();
    let _ = w.child.wait();
    drop(w);
    let o = until_status(&api, op, "queued", Duration::from_secs(20));
    assert!(o["error"].as_str().is_some_and(|e| e.contains("interrupted")), "{o}");
    // The row may still say running (readers judge by the lock), or the leader may already
    // have requeued it once its lease lapsed (a loaded machine is slow to get here).
    let row = t.sql("pgplane", &format!("SELECT status FROM pgplane.jobs WHERE id = {op}"));
    assert!(row == "running" || row == "queued", "{row}");
    let env = tokens();
    let taker = t.serve(
        &f,
        &[],
        &[(env[0].0, env[0].1.as_str()), ("PGPLANE_LEADER_TICK_MS", "200"), ("PGPLANE_JOB_POLL_MS", "200")],
    );
    let o = until_status(&taker, op, "running", Duration::from_secs(20));
    assert_eq!(o["attempts"], 2, "{o}");
    t.wait_for_sql(
        "postgres",
        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(60)%' AND pid <> pg_backend_pid()",
        "1",
        "the taken-over reset never started",
    );
    // Cancelling a running job stops its migration (rolled back) within seconds.
    let started = Instant::now();
    let r = taker.req("DELETE", &format!("/api/v1/operations/{op}"), Some(ADMIN), None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["cancel_requested"], true);
    let o = until_status(&taker, op, "cancelled", Duration::from_secs(15));
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}: {o}", started.elapsed());
    assert_eq!(o["error_code"], "cancelled", "{o}");
    let r = taker.req("DELETE", &format!("/api/v1/operations/{op}"), Some(ADMIN), None);
    assert_eq!(r.status, 200, "cancelling a cancelled job again is harmless: {}", r.body);
    let later = "{\"id\": \"later\", \"template\": \"sv_term_tpl\", \"sources\": [\"model/brief/changelog.yaml\"]}";
    let done = accepted(&taker.req("POST", "/api/v1/branches", Some(ADMIN), Some(later)), "branch_create");
    assert_eq!(finished(&taker, done)["status"], "succeeded");
    let r = taker.req("DELETE", &format!("/api/v1/operations/{done}"), Some(ADMIN), None);
    assert_eq!((r.status, r.error_code().as_str()), (409, "conflict"), "{}", r.body);
}

/// Random request bodies (bytes, arbitrary JSON, and objects with the real keys holding
/// random values) never make the API answer 500 or panic.
#[test]
fn random_bodies_never_cause_a_500() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    let (t, f) = world("sv_fuzz");
    let s = serve(&t, &f, &[]);
    let json_leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_filter("finite", |x| x.is_finite()).prop_map(serde_json::Value::from),
        ".{0,40}".prop_map(serde_json::Value::from),
        prop_oneof![
            Just("sv_fuzz_tpl"),
            Just("model/cand/changelog.yaml"),
            Just("../x"),
            Just("72h"),
            Just("MR-\u{0}1")
        ]
        .prop_map(serde_json::Value::from),
    ];
    let json = json_leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map(".{0,8}", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    });
    let keys = prop::sample::select(vec![
        "id",
        "template",
        "sources",
        "labels",
        "ttl",
        "contexts",
        "prune",
        "adopt",
        "deep",
        "skip_migrations",
    ]);
    let known = prop::collection::btree_map(keys.prop_map(str::to_string), json.clone(), 0..6)
        .prop_map(|m| serde_json::to_string(&serde_json::Value::Object(m.into_iter().collect())).unwrap());
    let bytes = prop::collection::vec(any::<u8>(), 0..64).prop_map(|b| String::from_utf8_lossy(&b).into_owned());
    let body = prop_oneof![bytes, json.prop_map(|v| v.to_string()), known];
    let route = prop::sample::select(vec![
        "/api/v1/branches",
        "/api/v1/branches/fuzz/reset",
        "/api/v1/branches/%00x/reset",
        "/api/v1/plan",
        "/api/v1/apply",
    ]);
    let mut runner = TestRunner::new(Config { cases: 300, failure_persistence: None, ..Config::default() });
    runner
        .run(&(route, body), |(route, body)| {
            let r = s.req("POST", route, Some(ADMIN), Some(&body));
            prop_assert!(r.status < 500, "POST {route} {body:?} -> {} {}", r.status, r.body);
            if r.status >= 400 {
                r.error_code();
            }
            Ok(())
        })
        .unwrap();
    for path in [
        "/api/v1/branches/%00",
        "/api/v1/databases/%00/tables",
        "/api/v1/operations/-1",
        "/api/v1/branches/%F0%9F%92%A5/tables",
    ] {
        let r = s.req("GET", path, Some(READ), None);
        assert!(r.status < 500, "GET {path} -> {} {}", r.status, r.body);
    }
    assert_eq!(s.req("GET", "/healthz", None, None).status, 200);
    assert!(!s.log().contains("panicked"), "{}", s.log());
}
