//! Findings of the attacker review of the surfaces merged after issue 11 (tenants, events,
//! stacks, pgbouncer, destroy, Liquibase breadth, durable jobs); see SECURITY.md, "Review".
//! Each test failed on the code before its fix.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::T;

/// A `pgplane consume` that is stopped when dropped.
struct Consumer(Child);

impl Drop for Consumer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn consume(t: &T, f: &str, log: &str) -> Consumer {
    let mut cmd = t.cmd();
    cmd.args(["consume", "-f", f, "--workers", "1", "--grace", "5s"])
        .env("PGPLANE_EVENTS_TICK_MS", "300")
        .env("PGPLANE_JOB_POLL_MS", "200")
        .env("PGPLANE_LEADER_TICK_MS", "300")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(t.dir.join(log)).unwrap());
    Consumer(cmd.spawn().expect("spawn pgplane consume"))
}

fn publish(t: &T, f: &str, id: &str, data: &str) {
    t.pgplane(&["events", "publish", "-f", f, "--type", "apply.requested", "--key", "ops", "--id", id, "--data", data])
        .ok();
}

/// Waits until event `id` of this test's stream (the embedded queue's topic is the
/// environment; tests running side by side reuse ids) has an outcome other than `queued`
/// and its job (if any) ended; returns `outcome|reason|job status`.
fn settled(t: &T, id: &str) -> String {
    let sql = format!(
        "SELECT e.outcome || '|' || COALESCE(e.reason, '') || '|' || COALESCE(j.status, '')
           FROM pgplane.events e LEFT JOIN pgplane.jobs j ON j.id = e.job_id
          WHERE e.event_id = '{id}' AND e.topic = '{env}'",
        env = t.env
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = t.sql_try("pgplane", &sql).unwrap_or_default();
        let done =
            !got.is_empty() && !got.starts_with("queued|") && !got.ends_with("|queued") && !got.ends_with("|running");
        if done {
            return got;
        }
        assert!(Instant::now() < deadline, "event {id} did not settle; last {got:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn database_exists(t: &T, db: &str) -> bool {
    t.sql("postgres", &format!("SELECT count(*) FROM pg_database WHERE datname = '{db}'")) == "1"
}

/// Whoever can produce to the event stream (a Kafka topic's producers, the embedded
/// queue's publishers) is not the operator: an `apply.requested` event must not drop what
/// the manifest stopped listing (`prune`) or take over objects someone else re-created
/// (`adopt`) unless the manifest hands that decision over (`events.allow_prune`,
/// `events.allow_adopt`). Before the fix, `{"prune": true}` dropped the module's database.
#[test]
fn an_event_cannot_prune_or_adopt_unless_the_manifest_allows_it() {
    let env = "rvprune";
    let t = T::new(env);
    let both = "modules:\n  - name: keep\n    storage: database\n  - name: gone\n    storage: database\n";
    let f = t.manifest(both).to_str().unwrap().to_string();
    t.pgplane(&["apply", "-f", &f, "--yes"]).ok();
    let gone = format!("{env}_gone");
    assert!(database_exists(&t, &gone));
    // The operator takes the module out of the manifest and has not decided to prune yet.
    t.manifest("modules:\n  - name: keep\n    storage: database\n");
    {
        let _c = consume(&t, &f, "consume-0.log");
        publish(&t, &f, "prune-1", r#"{"prune": true}"#);
        publish(&t, &f, "adopt-1", r#"{"adopt": true}"#);
        publish(&t, &f, "plain-1", r#"{}"#);
        let pruned = settled(&t, "prune-1");
        assert!(pruned.starts_with("dead_lettered|") && pruned.contains("allow_prune"), "{pruned}");
        let adopted = settled(&t, "adopt-1");
        assert!(adopted.starts_with("dead_lettered|") && adopted.contains("allow_adopt"), "{adopted}");
        // An apply without either still runs (and leaves the orphan alone).
        let plain = settled(&t, "plain-1");
        assert!(plain.ends_with("|succeeded"), "{plain}");
    }
    assert!(database_exists(&t, &gone), "an event pruned the database {gone}");

    // The manifest may hand the decision over.
    t.manifest("modules:\n  - name: keep\n    storage: database\nevents:\n  allow_prune: true\n");
    let _c = consume(&t, &f, "consume-1.log");
    publish(&t, &f, "prune-2", r#"{"prune": true}"#);
    let pruned = settled(&t, "prune-2");
    assert!(pruned.ends_with("|succeeded"), "{pruned}");
    assert!(!database_exists(&t, &gone), "allow_prune: the event's prune ran");
}

/// Names computed for one environment may equal another environment's on the same
/// server (`rvx` + tenant `a` + module `users` and `rvx_a` + module `users` both give the
/// role and database `rvx_a_users`). A tenant added later (by the API or an event) must not
/// take over the other environment's role or database, whichever came first.
#[test]
fn a_tenant_never_takes_over_another_environments_objects() {
    let t = T::new("rvy");
    let u = T::new("rvy_a");
    let g = u.manifest("modules:\n  - name: users\n    storage: database\n").to_str().unwrap().to_string();
    u.pgplane(&["apply", "-f", &g, "--yes"]).ok();
    let other = u.credentials(&["users", "-f", &g]);
    let f = t.manifest("modules:\n  - name: users\n    storage: database-per-tenant\n").to_str().unwrap().to_string();
    t.pgplane(&["apply", "-f", &f, "--yes"]).ok();
    let run = t.pgplane(&["tenant", "add", "a", "--module", "users", "-f", &f]).fails();
    assert!(
        run.stderr.contains("name clash: role rvy_a_users is already managed by pgplane for env rvy_a"),
        "{}",
        run.stderr
    );
    assert_eq!(common::psql(&other, "SELECT current_user").unwrap(), "rvy_a_users", "the other login still works");
    assert_eq!(
        t.sql("postgres", "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'rvy_a_users'"),
        "rvy_a_users"
    );
}

/// A tenant's role reaches its own schema only: not another tenant's, after add,
/// upgrade, disable and enable of either.
#[test]
fn a_tenant_reaches_no_other_tenants_schema_through_its_lifecycle() {
    let env = "rvsch";
    let t = T::new(env);
    t.write(
        "db/users/V1__items.sql",
        "CREATE TABLE items (id int PRIMARY KEY, name text);\nINSERT INTO items VALUES (1, 'x');\n",
    );
    t.write(
        "db/users/V2__more.sql",
        "ALTER TABLE items ADD COLUMN more text;\nCREATE VIEW items_v AS SELECT * FROM items;\n",
    );
    let f = t
        .manifest(
            "modules:\n  - name: users\n    storage: schema-per-tenant\n    migrations: db/users\n    versions:\n      - {version: \"1.0\", target: \"1\"}\n      - {version: \"2.0\", target: \"2\"}\n",
        )
        .to_str()
        .unwrap()
        .to_string();
    t.pgplane(&["apply", "-f", &f, "--yes"]).ok();
    t.pgplane(&["tenant", "add", "acme", "--module", "users@1.0", "-f", &f]).ok();
    t.pgplane(&["tenant", "add", "beta", "--module", "users@1.0", "-f", &f]).ok();
    let acme = t.credentials(&["users", "-f", &f, "--tenant", "acme"]);
    let beta = t.credentials(&["users", "-f", &f, "--tenant", "beta"]);
    let probe = |who: &str, url: &str, schema: &str| {
        for sql in [
            format!("SELECT count(*) FROM {schema}.items"),
            format!("CREATE TABLE {schema}.planted (x int)"),
            format!("SELECT count(*) FROM {schema}.items_v"),
        ] {
            let r = common::psql(url, &sql);
            assert!(
                r.as_ref().is_err_and(|e| e.contains("permission denied") || e.contains("does not exist")),
                "{who}: {sql}: {r:?}"
            );
        }
    };
    let check = |when: &str| {
        probe(&format!("acme {when}"), &acme, "beta_users");
        probe(&format!("beta {when}"), &beta, "acme_users");
    };
    check("after add");
    t.pgplane(&["tenant", "upgrade", "acme", "--module", "users@2.0", "-f", &f]).ok();
    t.pgplane(&["tenant", "upgrade", "--all", "--module", "users@2.0", "-f", &f]).ok();
    check("after upgrade");
    t.pgplane(&["tenant", "disable", "beta", "--yes", "-f", &f]).ok();
    probe("acme while beta is disabled", &acme, "beta_users");
    t.pgplane(&["tenant", "enable", "beta", "-f", &f]).ok();
    check("after enable");
    // Nor can it plant anything another tenant's session would find.
    for (who, url) in [("acme", &acme), ("beta", &beta)] {
        let r = common::psql(url, "CREATE FUNCTION public.lower(text) RETURNS text LANGUAGE sql AS 'SELECT $1'");
        assert!(r.as_ref().is_err_and(|e| e.contains("permission denied")), "{who}: {r:?}");
    }
    // Each still reaches its own.
    assert_eq!(common::psql(&acme, "SELECT count(*) FROM acme_users.items_v").unwrap(), "1");
    assert_eq!(common::psql(&beta, "SELECT count(*) FROM beta_users.items_v").unwrap(), "1");

    // No password and not the secret key anywhere in the control database (job requests
    // and results, events, the outbox, tenant rows), nor in what the commands printed.
    let dump = std::process::Command::new("pg_dump")
        .args(["-a", &common::with_db(&t.server.url, "pgplane")])
        .output()
        .unwrap();
    assert!(dump.status.success(), "{}", String::from_utf8_lossy(&dump.stderr));
    let dump = String::from_utf8_lossy(&dump.stdout);
    assert!(dump.contains("tenant_upgrade"), "the dump holds the jobs");
    let list = t.pgplane(&["tenant", "list", "--json", "-f", &f]).ok();
    for url in [&acme, &beta] {
        let password = url.split_once("://").unwrap().1.split_once('@').unwrap().0.split_once(':').unwrap().1;
        assert!(password.len() >= 16, "{url}");
        assert!(!dump.contains(password), "a password is stored in the control database");
        assert!(!list.stdout.contains(password) && !list.stderr.contains(password));
    }
    assert!(!dump.contains(common::TEST_SECRET_KEY), "the secret key is stored in the control database");
}

/// Liquibase's newer file readers stay inside the root too: `loadData` and
/// `loadUpdateData` CSV files (by a `../` path and by a symlink), property files, and
/// `includeAll` of a linked folder; nothing of the file outside reaches the database.
#[test]
fn load_data_property_files_and_include_all_stay_inside_the_root() {
    let env = "rvload";
    let t = T::new(env);
    let outside = t.dir.parent().unwrap().join("rvload-outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret.csv"), "id,name\n1,outside-secret\n").unwrap();
    std::fs::write(outside.join("secret.properties"), "table.name=leaked\n").unwrap();
    std::fs::write(outside.join("V1__leak.sql"), "CREATE TABLE leaked (x int);\n").unwrap();
    std::fs::create_dir_all(t.dir.join("c")).unwrap();
    std::os::unix::fs::symlink(outside.join("secret.csv"), t.dir.join("c/link.csv")).unwrap();
    std::os::unix::fs::symlink(&outside, t.dir.join("c/linked")).unwrap();
    t.write("init/V1__t.sql", "CREATE TABLE t (id int PRIMARY KEY, name text);\n");
    let load = |kind: &str, file: &str| {
        format!(
            "databaseChangeLog:\n  - changeSet:\n      id: l1\n      author: mallory\n      changes:\n        - {kind}:\n            tableName: t\n            file: {file}\n{}",
            if kind == "loadUpdateData" { "            primaryKey: id\n" } else { "" }
        )
    };
    t.write("c/up.yaml", &load("loadData", "../../rvload-outside/secret.csv"));
    t.write("c/abs.yaml", &load("loadData", &outside.join("secret.csv").display().to_string()));
    t.write("c/link.yaml", &load("loadUpdateData", "link.csv"));
    t.write(
        "c/props.yaml",
        "databaseChangeLog:\n  - property:\n      file: ../../rvload-outside/secret.properties\n  - changeSet:\n      id: p1\n      author: mallory\n      changes:\n        - sql: CREATE TABLE ${table.name} (x int)\n",
    );
    t.write("c/all.yaml", "databaseChangeLog:\n  - includeAll:\n      path: linked/\n");
    let f = t.manifest("modules:\n  - name: app\n    storage: database\n    migrations: init\n");
    let f = f.to_str().unwrap();
    t.pgplane(&["apply", "-f", f, "--yes"]).ok();
    let db = format!("{env}_app");
    for source in ["c/up.yaml", "c/abs.yaml", "c/link.yaml", "c/props.yaml", "c/all.yaml"] {
        let r = t.pgplane(&[
            "migrate",
            "up",
            "-f",
            f,
            "--module",
            "app",
            "--source",
            &format!("{}", t.dir.join(source).display()),
        ]);
        assert_ne!(r.code, 0, "{source}: a file outside the root was read\n{}{}", r.stdout, r.stderr);
        assert!(r.stderr.contains("outside") || r.stderr.contains("No such file"), "{source}: {}", r.stderr);
        assert_eq!(t.sql(&db, "SELECT count(*) FROM t"), "0", "{source}: rows from outside");
        assert_eq!(t.sql(&db, "SELECT count(*) FROM pg_class WHERE relname = 'leaked'"), "0", "{source}");
    }
}

/// The changing routes merged after issue 11 (tenants, tenant installs, event publish,
/// retry and skip) need an admin token, JSON and no foreign origin, like the others; a
/// read token reaches the new read routes and nothing else. Nothing is queued or published.
#[test]
fn new_changing_routes_refuse_read_tokens_cross_site_posts_and_forms() {
    let env = "rvhttp";
    let t = T::new(env);
    let f = t.manifest("modules:\n  - name: users\n    storage: schema-per-tenant\n");
    let f = f.to_str().unwrap();
    t.pgplane(&["apply", "-f", f, "--yes"]).ok();
    let (read, admin) = ("read-token-rv-0123456789abcdef", "admin-token-rv-0123456789abcdef");
    let tokens = format!("read:{read},admin:{admin}");
    let serve = t.serve(f, &[], &[("PGPLANE_TOKENS", tokens.as_str())]);
    let tenant = r#"{"tenant": "acme", "modules": ["users"]}"#;
    let event = r#"{"type": "apply.requested", "key": "k", "data": {"prune": true}}"#;
    let routes: &[(&str, &str)] = &[
        ("/api/v1/tenants", tenant),
        ("/api/v1/tenants/acme/install", r#"[{"module": "users"}]"#),
        ("/api/v1/tenants/acme/install?simulate=true", r#"[{"module": "users"}]"#),
        ("/api/v1/events", event),
        ("/api/v1/events/1/retry", "{}"),
        ("/api/v1/events/1/skip", "{}"),
    ];
    let admin_auth = format!("Bearer {admin}");
    let url = |p: &str| format!("{}{p}", serve.base);
    for (path, body) in routes {
        let r = serve.req("POST", path, Some(read), Some(body));
        assert_eq!(r.status, 403, "read token on POST {path}: {}", r.body);
        let r = common::http(
            "POST",
            &url(path),
            &[("Authorization", &admin_auth), ("Content-Type", "text/plain")],
            body.as_bytes(),
        );
        assert_eq!(r.status, 415, "text/plain POST {path}: {}", r.body);
        let r = common::http(
            "POST",
            &url(path),
            &[("Authorization", &admin_auth), ("Content-Type", "application/x-www-form-urlencoded")],
            b"tenant=acme",
        );
        assert_eq!(r.status, 415, "form POST {path}: {}", r.body);
        let r = common::http(
            "POST",
            &url(path),
            &[("Authorization", &admin_auth), ("Content-Type", "application/json"), ("Origin", "http://evil.example")],
            body.as_bytes(),
        );
        assert_eq!(r.status, 403, "foreign Origin on POST {path}: {}", r.body);
        let r = common::http(
            "POST",
            &url(path),
            &[("Authorization", &admin_auth), ("Content-Type", "application/json"), ("Host", "evil.example")],
            body.as_bytes(),
        );
        assert_eq!(r.status, 421, "rebound Host on POST {path}: {}", r.body);
    }
    for path in
        ["/api/v1/tenants", "/api/v1/events", "/api/v1/events/status", "/api/v1/events/summary", "/api/v1/stacks"]
    {
        let r = serve.req("GET", path, Some(read), None);
        assert_eq!(r.status, 200, "read token on GET {path}: {}", r.body);
    }
    assert_eq!(
        t.sql("pgplane", &format!("SELECT count(*) FROM pgplane.jobs WHERE kind LIKE 'tenant%' AND env = '{env}'")),
        "0"
    );
    assert_eq!(t.sql("pgplane", &format!("SELECT count(*) FROM pgplane.event_log WHERE topic = '{env}'")), "0");
}

/// An event whose data holds a NUL character (`\u0000`, which PostgreSQL's text and jsonb
/// cannot store) is poison like any other. Before the fix, recording its job failed, the
/// consumer dropped its session and read the same event again, forever: every later event
/// of every partition waited behind it.
#[test]
fn an_event_with_a_nul_character_is_poison_and_blocks_nothing() {
    let env = "rvnul";
    let t = T::new(env);
    let f = t.manifest("modules:\n  - name: app\n    storage: database\n").to_str().unwrap().to_string();
    t.pgplane(&["apply", "-f", &f, "--yes"]).ok();
    // Publishing refuses it at once.
    let nul = r#"{"env": "a\u0000b"}"#;
    let r = t
        .pgplane(&[
            "events",
            "publish",
            "-f",
            &f,
            "--type",
            "apply.requested",
            "--key",
            "k",
            "--id",
            "x",
            "--data",
            nul,
        ])
        .fails();
    assert!(r.stderr.contains("NUL"), "{}", r.stderr);
    // A producer that writes to the stream directly (as to a Kafka topic).
    let p = pgplane_core::event::partition_of("k", 16);
    let payload = r#"{"id": "nul-1", "type": "module.requested", "data": {"module": "app", "env": "x\u0000y"}}"#;
    t.sql(
        "pgplane",
        &format!(
            "WITH h AS (INSERT INTO pgplane.event_heads AS h (topic, partition, next_offset) VALUES ('{env}', {p}, 1)
                 ON CONFLICT (topic, partition) DO UPDATE SET next_offset = h.next_offset + 1 RETURNING next_offset - 1 AS o)
             INSERT INTO pgplane.event_log (topic, partition, \"offset\", key, payload)
             SELECT '{env}', {p}, o, 'k', '{payload}' FROM h"
        ),
    );
    publish(&t, &f, "after-1", "{}");
    let _c = consume(&t, &f, "consume-0.log");
    let after = settled(&t, "after-1");
    assert!(after.ends_with("|succeeded"), "{after}");
    // The poison has no id (its envelope was refused): found by its offset, the first.
    let poison = t.sql(
        "pgplane",
        &format!("SELECT outcome || '|' || reason FROM pgplane.events WHERE topic = '{env}' AND partition = {p} AND \"offset\" = 0"),
    );
    assert!(poison.starts_with("dead_lettered|") && poison.contains("NUL"), "{poison}");
}

/// An event whose key (or subject, when it has no key) is too long to index is poison.
/// Before the fix, recording it failed ("index row requires … bytes") and the consumer read
/// it again forever, as with a NUL.
#[test]
fn an_event_with_an_over_long_key_is_poison_and_blocks_nothing() {
    let env = "rvkey";
    let t = T::new(env);
    let f = t.manifest("modules:\n  - name: app\n    storage: database\n").to_str().unwrap().to_string();
    t.pgplane(&["apply", "-f", &f, "--yes"]).ok();
    // Random letters: nothing compresses them under the index's limit.
    let mut x: u64 = 12345;
    let key: String = (0..9000)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (b'a' + ((x >> 33) % 26) as u8) as char
        })
        .collect();
    let r = t
        .pgplane(&[
            "events",
            "publish",
            "-f",
            &f,
            "--type",
            "apply.requested",
            "--key",
            &key,
            "--id",
            "x",
            "--data",
            "{}",
        ])
        .fails();
    assert!(r.stderr.contains("9000 bytes"), "{}", r.stderr);
    // A producer that writes to the stream directly (as to a Kafka topic), with the long
    // key as the message key and as the subject of a keyless message.
    let payload = format!(r#"{{"id": "long-2", "type": "apply.requested", "subject": "{key}", "data": {{}}}}"#);
    for (offset_key, id) in [(Some(key.as_str()), "long-1"), (None, "long-2")] {
        let body = if id == "long-1" {
            r#"{"id": "long-1", "type": "apply.requested", "data": {}}"#.to_string()
        } else {
            payload.clone()
        };
        let p = offset_key.map(|k| pgplane_core::event::partition_of(k, 16)).unwrap_or(0);
        t.sql(
            "pgplane",
            &format!(
                "WITH h AS (INSERT INTO pgplane.event_heads AS h (topic, partition, next_offset) VALUES ('{env}', {p}, 1)
                     ON CONFLICT (topic, partition) DO UPDATE SET next_offset = h.next_offset + 1 RETURNING next_offset - 1 AS o)
                 INSERT INTO pgplane.event_log (topic, partition, \"offset\", key, payload)
                 SELECT '{env}', {p}, o, {}, '{body}' FROM h",
                offset_key.map(|k| format!("'{k}'")).unwrap_or("''".into())
            ),
        );
    }
    publish(&t, &f, "after-1", "{}");
    let _c = consume(&t, &f, "consume-0.log");
    let after = settled(&t, "after-1");
    assert!(after.ends_with("|succeeded"), "{after}");
    for id in ["long-1", "long-2"] {
        let poison = settled(&t, id);
        assert!(poison.starts_with("dead_lettered|") && poison.contains("9000 bytes"), "{id}: {poison}");
    }
}
