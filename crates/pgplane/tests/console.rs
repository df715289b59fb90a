//! End-to-end: the web console of `pgplane serve`, first over plain HTTP (sign-in,
//! redirects, escaping), then in a real browser: Debian's chromium driven by Playwright
//! (`tests/console/console.mjs`, installed by `scripts/test` through `ensure_playwright`).

#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{http, Response, Serve, T};

const READ: &str = "read-token-console-0123456789";
const ADMIN: &str = "admin-token-console-0123456789";

const HOSTILE: &str = "<script>alert('owned')</script> Registry entries";

/// A module whose migrations give a table a hostile comment, a template of it, and a
/// candidate (a new table and column) and a broken candidate (fails in its second file).
fn world(env: &str) -> (T, String) {
    let t = T::new(env);
    t.write(
        "db/V1__model.sql",
        &format!(
            "CREATE TABLE entries (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name text NOT NULL DEFAULT 'x');
             COMMENT ON TABLE entries IS '{}';
             COMMENT ON COLUMN entries.name IS 'what it is called';\n",
            HOSTILE.replace('\'', "''")
        ),
    );
    t.write(
        "cand/V2__reviews.sql",
        "ALTER TABLE entries ADD COLUMN email text;
         CREATE TABLE reviews (id int PRIMARY KEY, entry_id bigint NOT NULL REFERENCES entries (id), body text);
         COMMENT ON TABLE reviews IS 'Reviews of entries';\n",
    );
    t.write("broken/V2__ok.sql", "CREATE TABLE drafts (id int);\n");
    t.write("broken/V3__broken.sql", "INSERT INTO missing_table VALUES (1);\n");
    let f = t.manifest(&format!(
        "modules:
  - name: registry
    storage: database
    migrations: db
templates:
  - name: {env}_tpl
    module: registry
    sources: [db]
branches:
  database: \"{{template}}_{{branch}}\"
"
    ));
    let f = f.to_str().unwrap().to_string();
    t.pgplane(&["apply", "-f", &f, "--yes"]).ok();
    t.pgplane(&["template", "build", &format!("{env}_tpl"), "-f", &f]).ok();
    (t, f)
}

fn serve_with_tokens(t: &T, f: &str) -> Serve {
    t.serve(f, &[], &[("PGPLANE_TOKENS", &format!("read:{READ},admin:{ADMIN}"))])
}

fn get(s: &Serve, path: &str, cookie: Option<&str>) -> Response {
    let cookie = cookie.map(|c| format!("pgplane_token={c}"));
    let headers: Vec<(&str, &str)> = cookie.as_deref().map(|c| vec![("Cookie", c)]).unwrap_or_default();
    http("GET", &format!("{}{path}", s.base), &headers, b"")
}

fn sign_in(s: &Serve, token: &str, next: &str, origin: Option<&str>) -> Response {
    let body = format!("token={}&next={}", form_encode(token), form_encode(next));
    let mut headers = vec![("Content-Type", "application/x-www-form-urlencoded")];
    if let Some(o) = origin {
        headers.push(("Origin", o));
    }
    http("POST", &format!("{}/sign-in", s.base), &headers, body.as_bytes())
}

fn form_encode(s: &str) -> String {
    s.bytes().map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") }).collect()
}

/// The value of the `pgplane_token` cookie a response sets.
fn cookie_of(r: &Response) -> String {
    let set = r.header("set-cookie").unwrap_or_else(|| panic!("no Set-Cookie: {r:?}"));
    set.split(';').next().unwrap().strip_prefix("pgplane_token=").unwrap().to_string()
}

#[test]
fn pages_need_a_signed_in_token_and_sign_in_comes_back_to_the_page() {
    let (t, f) = world("con_auth");
    let s = serve_with_tokens(&t, &f);
    let db = "con_auth_registry";

    // No cookie, or a cookie with a wrong token: 303 to the sign-in page, which brings you back.
    let r = get(&s, &format!("/databases/{db}?x=1"), None);
    assert_eq!(r.status, 303, "{r:?}");
    assert_eq!(r.header("location"), Some(format!("/sign-in?next=%2Fdatabases%2F{db}%3Fx%3D1").as_str()));
    let wrong = "77726f6e672d746f6b656e2d77726f6e672d746f6b656e"; // hex of a wrong token
    for path in ["/", "/branches", "/operations", "/branches/nope"] {
        assert_eq!(get(&s, path, Some(wrong)).status, 303, "{path}");
    }
    // Public: the sign-in form and the stylesheet.
    let form = get(&s, &format!("/sign-in?next=%2Fdatabases%2F{db}"), None);
    assert_eq!(form.status, 200);
    assert!(form.body.contains(&format!("name=\"next\" value=\"/databases/{db}\"")), "{}", form.body);
    let css = get(&s, "/console.css", None);
    assert_eq!((css.status, css.header("content-type")), (200, Some("text/css; charset=utf-8")));

    // A wrong token: 401, said so, and never echoed; no cookie.
    let bad = sign_in(&s, "not-the-token-at-all-xx", "/", None);
    assert_eq!(bad.status, 401);
    assert!(bad.body.contains("id=\"sign-in-error\"") && !bad.body.contains("not-the-token-at-all-xx"), "{}", bad.body);
    assert!(bad.header("set-cookie").is_none());
    // A post from another site is refused.
    assert_eq!(sign_in(&s, READ, "/", Some("http://evil.example")).status, 403);
    // Another site as `next` is not followed.
    assert_eq!(sign_in(&s, READ, "//evil.example/", None).header("location"), Some("/"));

    // The read token: HttpOnly, SameSite=Strict cookie, back to the page asked for.
    let ok = sign_in(&s, READ, &format!("/databases/{db}"), Some(&s.base));
    assert_eq!(ok.status, 303, "{ok:?}");
    assert_eq!(ok.header("location"), Some(format!("/databases/{db}").as_str()));
    let set = ok.header("set-cookie").unwrap();
    assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict") && set.contains("Path=/"), "{set}");
    assert!(!set.contains(READ), "the cookie is not the token: {set}");
    let cookie = cookie_of(&ok);
    let page = get(&s, &format!("/databases/{db}"), Some(&cookie));
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("public.entries") && page.body.contains("Sign out"), "{}", page.body);
    assert!(!page.body.contains(READ) && !page.body.contains(&cookie), "the token is never rendered");
    let csp = page.header("content-security-policy").unwrap();
    assert!(csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(page.header("cache-control"), Some("no-store"));
    // The admin token works the same way.
    let admin = cookie_of(&sign_in(&s, ADMIN, "/", None));
    assert_eq!(get(&s, "/operations", Some(&admin)).status, 200);
    // The cookie is a console session: it is not the token hex-encoded, and the API does
    // not take it as a bearer token.
    assert!(!admin.contains(&ADMIN.bytes().map(|b| format!("{b:02x}")).collect::<String>()), "{admin}");
    assert_eq!(s.req("GET", "/api/v1/branches", Some(&admin), None).status, 401);

    // Errors are pages with the right status; unknown paths are 404 pages.
    let missing = get(&s, "/databases/no_such_db", Some(&cookie));
    assert_eq!(missing.status, 404);
    assert!(missing.body.contains("no database &quot;no_such_db&quot;"), "{}", missing.body);
    assert_eq!(get(&s, "/branches/no-such-branch", Some(&cookie)).status, 404);
    let unknown = get(&s, "/no/such/page", None);
    assert_eq!(unknown.status, 404);
    assert!(unknown.header("content-type").unwrap().starts_with("text/html"));

    // Signing out clears the cookie.
    let out = get(&s, "/sign-out", Some(&cookie));
    assert_eq!((out.status, out.header("location")), (303, Some("/sign-in")));
    assert!(out.header("set-cookie").unwrap().contains("Max-Age=0"));
    // The API does not take the cookie: it wants a bearer token.
    assert_eq!(get(&s, "/api/v1/databases", Some(&cookie)).status, 401);
}

#[test]
fn values_from_the_database_are_escaped() {
    let (t, f) = world("con_escape");
    // A hostile branch id cannot exist (ids are sanitised), but labels are free text.
    t.pgplane(&[
        "branch",
        "create",
        "MR-1",
        "--template",
        "con_escape_tpl",
        "--label",
        "title=<img src=x onerror=alert(1)>",
        "-f",
        &f,
    ])
    .ok();
    let s = t.serve(&f, &[], &[]);
    // No tokens (loopback): no sign-in, no sign-out link.
    let db = get(&s, "/databases/con_escape_registry", None);
    assert_eq!(db.status, 200, "{}", db.body);
    assert!(!db.body.contains("<script>alert"), "{}", db.body);
    assert!(db.body.contains("&lt;script&gt;alert(&#39;owned&#39;)&lt;/script&gt; Registry entries"), "{}", db.body);
    assert!(!db.body.contains("Sign out"));
    for path in ["/branches", "/branches/MR-1"] {
        let page = get(&s, path, None);
        assert_eq!(page.status, 200, "{path}: {}", page.body);
        assert!(!page.body.contains("<img"), "{path}: {}", page.body);
        assert!(page.body.contains("title=&lt;img src=x onerror=alert(1)&gt;"), "{path}: {}", page.body);
    }
    // The branch's tables carry the template's comment, escaped too.
    let branch = get(&s, "/branches/MR-1", None);
    assert!(branch.body.contains("&lt;script&gt;alert") && !branch.body.contains("<script>"), "{}", branch.body);
    assert_eq!(get(&s, "/sign-in", None).status, 303, "nothing to sign in to");

    // A table's structure, in the module's database and in the branch, and a diff without changes.
    let entries = get(&s, "/databases/con_escape_registry/tables/public.entries", None);
    assert_eq!(entries.status, 200, "{}", entries.body);
    assert!(entries.body.contains("<tr data-column=\"name\">") && entries.body.contains("what it is called"));
    assert!(!entries.body.contains("<script>"), "{}", entries.body);
    assert_eq!(get(&s, "/branches/MR-1/tables/public.entries", None).status, 200);
    assert_eq!(get(&s, "/branches/MR-1/tables/public.nope", None).status, 404);
    let diff = get(&s, "/branches/MR-1/diff", None);
    assert_eq!(diff.status, 200, "{}", diff.body);
    assert!(diff.body.contains("id=\"no-differences\""), "{}", diff.body);
    // The diff's connection to the template is closed: a rebuild is not held up.
    t.wait_for_sql(
        "postgres",
        "SELECT count(*) FROM pg_stat_activity WHERE datname = 'con_escape_tpl'",
        "0",
        "a session on the template stayed open",
    );
    t.pgplane(&["template", "build", "con_escape_tpl", "-f", &f]).ok();
}

/// The browser test's tools: `PGPLANE_PLAYWRIGHT_DIR` (set by `ensure_playwright` in
/// `scripts/lib.sh`) and Debian's chromium. Missing tools fail the test: it never passes
/// without having run.
fn playwright() -> (PathBuf, PathBuf) {
    let hint = "run ./scripts/test (it installs chromium and playwright-core), or \
                `source scripts/lib.sh && ensure_playwright` and run this test from that shell";
    let dir = std::env::var_os("PGPLANE_PLAYWRIGHT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("PGPLANE_PLAYWRIGHT_DIR is not set: {hint}"));
    assert!(
        dir.join("node_modules/playwright-core/package.json").is_file(),
        "no playwright-core under {}: {hint}",
        dir.display()
    );
    let chromium = PathBuf::from(std::env::var_os("PGPLANE_CHROMIUM").unwrap_or_else(|| "/usr/bin/chromium".into()));
    assert!(chromium.is_file(), "no chromium at {}: {hint}", chromium.display());
    (dir, chromium)
}

#[test]
fn a_browser_signs_in_and_reads_branches_their_errors_tables_and_diff() {
    let (pw_dir, chromium) = playwright();
    let (t, f) = world("con_browser");
    let tpl = "con_browser_tpl";
    t.pgplane(&["branch", "create", "MR-1", "--template", tpl, "--source", "cand", "--label", "mr=1", "-f", &f]).ok();
    let failed = t.pgplane(&["branch", "create", "MR-2", "--template", tpl, "--source", "broken", "-f", &f]);
    assert_eq!(failed.code, 1, "{failed:?}");
    let s = serve_with_tokens(&t, &f);

    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("../console-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let out = Command::new("node")
        .arg(root.join("tests/console/console.mjs"))
        .env("PGPLANE_PLAYWRIGHT_DIR", &pw_dir)
        .env("CHROMIUM", &chromium)
        .env("CONSOLE_URL", &s.base)
        .env("CONSOLE_TOKEN", READ)
        .env("GOOD_BRANCH", "MR-1")
        .env("FAILED_BRANCH", "MR-2")
        .env("SCREENSHOTS", &shots)
        .output()
        .expect("run node (Node.js 18+ is needed for the browser test)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the browser test failed ({:?}):\nstdout:\n{stdout}\nstderr:\n{stderr}\nserver log:\n{}",
        out.status.code(),
        s.log()
    );
    assert!(stdout.contains("console: all checks passed"), "{stdout}");
}
