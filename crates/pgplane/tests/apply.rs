//! End-to-end: the real `pgplane` binary against a real PostgreSQL, checking the catalog.

#![allow(clippy::unwrap_used)]

mod common;

use common::{psql, T};

const PLATFORM: &str = "\
modules:
  - name: registry
    storage: database
    extensions: [pg_trgm]
    connection_limit: 40
    readonly_role: true
  - name: payments
    storage: database
  - name: users
    storage: schema-per-tenant
    readonly_role: true
  - name: files
    storage: database-per-tenant
tenants:
  - name: acme
    modules: [users, files]
  - name: globex
    modules: [users]
";

#[test]
fn apply_provisions_then_changes_nothing() {
    let t = T::new("idem");
    let f = t.manifest(PLATFORM);
    let f = f.to_str().unwrap();

    let plan = t.pgplane(&["plan", "-f", f, "--detailed-exitcode"]);
    assert_eq!(plan.code, 2, "changes pending: {}", plan.stderr);
    assert!(
        plan.stdout.contains("CREATE DATABASE \"idem_registry\" OWNER \"idem_registry\" CONNECTION LIMIT 40"),
        "{}",
        plan.stdout
    );

    let applied = t.pgplane(&["apply", "-f", f, "--yes", "--json"]).ok().json();
    assert!(applied["applied"].as_u64().unwrap() > 20);

    // Second apply: nothing to do.
    let again = t.pgplane(&["apply", "-f", f, "--yes", "--json"]).ok().json();
    assert_eq!(again["changes"], 0, "{again}");
    assert_eq!(t.pgplane(&["plan", "-f", f, "--detailed-exitcode"]).code, 0);

    // The catalog holds what the manifest says.
    assert_eq!(
        t.sql(
            "postgres",
            "SELECT pg_get_userbyid(datdba), datconnlimit FROM pg_database WHERE datname = 'idem_registry'"
        ),
        "idem_registry|40"
    );
    assert_eq!(t.sql("idem_registry", "SELECT count(*) FROM pg_extension WHERE extname = 'pg_trgm'"), "1");
    for db in ["idem_registry", "idem_payments", "idem_users", "idem_acme_files"] {
        assert_eq!(
            t.sql("postgres", &format!("SELECT has_database_privilege('public', '{db}', 'CONNECT')")),
            "f",
            "PUBLIC must not connect to {db}"
        );
    }
    assert_eq!(
        t.sql(
            "postgres",
            "SELECT rolcanlogin, rolsuper, rolcreatedb FROM pg_roles WHERE rolname = 'idem_registry_readonly'"
        ),
        "t|f|f"
    );
    assert_eq!(
        t.sql(
            "idem_users",
            "SELECT nspname, pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname LIKE '%\\_users' ORDER BY 1"
        ),
        "acme_users|idem_acme_users\nglobex_users|idem_globex_users"
    );
    assert_eq!(
        t.sql("postgres", "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'idem_acme_files'"),
        "idem_acme_files"
    );
    // Every object is recorded as managed.
    assert!(t.records("database").contains(&"idem_acme_files".to_string()));
    assert_eq!(t.records("schema"), vec!["acme_users", "globex_users"]);
}

#[test]
fn plan_json_has_the_documented_shape_and_changes_nothing() {
    let t = T::new("pjson");
    let f = t.manifest("modules:\n  - name: app\n    storage: database\n");
    let run = t.pgplane(&["plan", "-f", f.to_str().unwrap(), "--json"]).ok();
    let doc = run.json();
    assert_eq!(doc["changes"].as_u64(), Some(doc["actions"].as_array().unwrap().len() as u64));
    let create = &doc["actions"][0];
    assert_eq!(create["kind"], "create_role");
    assert_eq!(create["target"], "role pjson_app");
    assert!(create["sql"].as_str().unwrap().ends_with("PASSWORD '********'"), "{create}");
    assert!(!run.stdout.contains("SCRAM-SHA-256"));
    // plan created nothing.
    assert_eq!(t.catalog_names(), (vec![], vec![]));
}

#[test]
fn passwords_never_reach_output_or_the_server_log() {
    let t = T::new("secret");
    let f = t.manifest("modules:\n  - name: app\n    storage: database\n    readonly_role: true\n");
    let f = f.to_str().unwrap();
    let applied = t.pgplane(&["apply", "-f", f, "--yes", "-vv"]).ok();
    let json = t.credentials(&["app", "-f", f, "--format", "json"]);
    let doc: serde_json::Value = serde_json::from_str(&json).unwrap();
    let password = doc["password"].as_str().unwrap().to_string();
    assert!(password.len() >= 40, "strong password");
    assert!(!applied.stdout.contains(&password) && !applied.stderr.contains(&password));
    let rotated = t.pgplane(&["credentials", "app", "-f", f, "--rotate"]).ok();
    let new_password = rotated.stdout.trim().rsplit_once(':').unwrap().1.split('@').next().unwrap().to_string();
    let log = t.server.log();
    assert!(log.contains("CREATE ROLE \"secret_app\""), "statement log is on");
    assert!(!log.contains(&password), "password in the server log");
    assert!(!log.contains(&new_password), "rotated password in the server log");
    assert!(!rotated.stderr.contains(&new_password));
    // Not in the control database either, in any table.
    for table in ["objects", "role_secrets", "jobs", "observations", "installation"] {
        let dump = t.sql("pgplane", &format!("SELECT COALESCE(string_agg(t::text, ' '), '') FROM pgplane.{table} t"));
        assert!(!dump.contains(&password) && !dump.contains(&new_password), "password in pgplane.{table}");
    }
}

#[test]
fn bad_manifests_name_file_line_and_run_nothing() {
    let t = T::new("badman");
    let cases = [
        (
            "modules:\n  - name: app\n    storage: database\n    conection_limit: 3\n",
            ":9:5: ",
            "unknown field `conection_limit`",
        ),
        ("modules:\n  - name: app\n    storage: database\n    connection_limit: many\n", ":9:", "invalid type"),
        ("modules:\n  - name: app\n", ":7:", "missing field `storage`"),
        ("modules:\n  - name: App-1\n    storage: database\n", ":7:11: ", "must start with a lowercase letter"),
        ("modules:\n  - name: app\n    storage: tablespace\n", ":8:", "schema-per-tenant"),
        (
            "modules:\n  - name: app\n    storage: database\ntenants:\n  - name: t\n    modules: [nope]\n",
            ":11:",
            "not defined",
        ),
    ];
    for (body, place, message) in cases {
        let f = t.manifest(body);
        for cmd in ["plan", "apply"] {
            let mut args = vec![cmd, "-f", f.to_str().unwrap()];
            if cmd == "apply" {
                args.push("--yes");
            }
            let run = t.pgplane(&args).fails();
            assert!(run.stderr.contains(&format!("pgplane.yaml{place}")), "{cmd}: want {place} in {}", run.stderr);
            assert!(run.stderr.contains(message), "{cmd}: want {message} in {}", run.stderr);
            assert!(run.stderr.starts_with("pgplane: "), "errors go to stderr with a prefix");
        }
    }
    assert_eq!(t.catalog_names(), (vec![], vec![]));
}

#[test]
fn names_that_clash_across_environments_are_rejected() {
    // env `clash_a` + module `b` and env `clash` + module `a_b` both give `clash_a_b`.
    let a = T::new("clash_a");
    let fa = a.manifest("modules:\n  - name: b\n    storage: database\n");
    a.pgplane(&["apply", "-f", fa.to_str().unwrap(), "--yes"]).ok();

    let b = T::new("clash");
    let fb = b.manifest("modules:\n  - name: a_b\n    storage: database\n  - name: other\n    storage: database\n");
    for cmd in ["plan", "apply"] {
        let mut args = vec![cmd, "-f", fb.to_str().unwrap()];
        if cmd == "apply" {
            args.push("--yes");
        }
        let run = b.pgplane(&args).fails();
        assert!(
            run.stderr
                .contains("name clash: database clash_a_b is already managed by pgplane for env clash_a module b"),
            "{}",
            run.stderr
        );
    }
    // Nothing of the second manifest ran, not even the module that did not clash.
    assert_eq!(b.sql("postgres", "SELECT count(*) FROM pg_database WHERE datname = 'clash_other'"), "0");
}

#[test]
fn names_that_clash_within_one_manifest_are_rejected() {
    let t = T::new("inner");
    let f = t.manifest(
        "modules:\n  - name: y_z\n    storage: database-per-tenant\n  - name: z\n    storage: database-per-tenant\n\
         tenants:\n  - name: x\n    modules: [y_z]\n  - name: x_y\n    modules: [z]\n",
    );
    let run = t.pgplane(&["plan", "-f", f.to_str().unwrap()]).fails();
    assert!(run.stderr.contains("name clash: database inner_x_y_z is wanted by"), "{}", run.stderr);
    assert_eq!(t.catalog_names(), (vec![], vec![]));
}

#[test]
fn long_names_are_shortened_deterministically() {
    let t = T::new("longn");
    let m1 = format!("m{}", "x".repeat(60));
    let m2 = format!("m{}y", "x".repeat(59));
    let f = t
        .manifest(&format!("modules:\n  - name: {m1}\n    storage: database\n  - name: {m2}\n    storage: database\n"));
    let f = f.to_str().unwrap();
    let plan = t.pgplane(&["plan", "-f", f]).ok();
    assert!(plan.stdout.contains("is longer than 63 bytes"), "{}", plan.stdout);
    t.pgplane(&["apply", "-f", f, "--yes"]).ok();
    let (_, dbs) = t.catalog_names();
    assert_eq!(dbs.len(), 2, "two distinct databases: {dbs:?}");
    for db in &dbs {
        assert!(db.len() <= 63, "{db}");
    }
    assert_ne!(dbs[0], dbs[1], "same 54-byte prefix, different hash suffix");
    assert_eq!(t.pgplane(&["plan", "-f", f, "--detailed-exitcode"]).code, 0, "stable names: no changes");
}

#[test]
fn unmanaged_objects_are_protected_and_adoptable() {
    let t = T::new("adopt");
    t.sql("postgres", "CREATE ROLE adopt_legacy LOGIN");
    t.sql("postgres", "CREATE DATABASE adopt_legacy OWNER adopt_legacy");
    t.sql("postgres", "CREATE DATABASE adopt_bystander");
    let f = t.manifest("modules:\n  - name: legacy\n    storage: database\n  - name: fresh\n    storage: database\n");
    let f = f.to_str().unwrap();

    let run = t.pgplane(&["apply", "-f", f, "--yes"]).fails();
    assert!(run.stderr.contains("role adopt_legacy already exists and pgplane does not manage it"), "{}", run.stderr);
    assert!(run.stderr.contains("pgplane adopt"), "says how to fix: {}", run.stderr);
    assert_eq!(t.sql("postgres", "SELECT count(*) FROM pg_database WHERE datname = 'adopt_fresh'"), "0", "nothing ran");

    t.pgplane(&["adopt", "-f", f, "--yes"]).ok();
    assert_eq!(t.records("database"), vec!["adopt_legacy"]);
    t.pgplane(&["apply", "-f", f, "--yes"]).ok();
    assert_eq!(t.pgplane(&["plan", "-f", f, "--detailed-exitcode"]).code, 0);
    // Adopted role got a password pgplane can hand out.
    let url = t.credentials(&["legacy", "-f", f]);
    assert_eq!(psql(&url, "SELECT current_user").unwrap(), "adopt_legacy");

    // Prune drops managed objects only: the bystander survives whatever the flags.
    let f2 = t.manifest("modules:\n  - name: fresh\n    storage: database\n");
    t.pgplane(&["apply", "-f", f2.to_str().unwrap(), "--yes", "--prune"]).ok();
    assert_eq!(t.catalog_names().1, vec!["adopt_bystander", "adopt_fresh"]);
    assert_eq!(t.sql("postgres", "SELECT count(*) FROM pg_roles WHERE rolname = 'adopt_legacy'"), "0");
}

#[test]
fn drift_is_shown_and_repaired() {
    let t = T::new("drift");
    let f = t
        .manifest("modules:\n  - name: app\n    storage: database\n    connection_limit: 7\n    readonly_role: true\n");
    let f = f.to_str().unwrap();
    t.pgplane(&["apply", "-f", f, "--yes"]).ok();
    t.sql("postgres", "GRANT CONNECT ON DATABASE drift_app TO PUBLIC");
    t.sql("postgres", "ALTER DATABASE drift_app OWNER TO postgres");
    t.sql("postgres", "ALTER DATABASE drift_app CONNECTION LIMIT 99");
    t.sql("postgres", "REVOKE CONNECT ON DATABASE drift_app FROM drift_app_readonly");
    t.sql("postgres", "ALTER ROLE drift_app_readonly CREATEDB");
    t.sql(
        "drift_app",
        "ALTER DEFAULT PRIVILEGES FOR ROLE drift_app IN SCHEMA public REVOKE SELECT ON TABLES FROM drift_app_readonly",
    );

    let plan = t.pgplane(&["plan", "-f", f, "--json"]).ok().json();
    assert_eq!(
        t.sql("postgres", "SELECT has_database_privilege('public', 'drift_app', 'CONNECT')"),
        "t",
        "plan repaired nothing"
    );
    let kinds: Vec<&str> = plan["actions"].as_array().unwrap().iter().map(|a| a["kind"].as_str().unwrap()).collect();
    for k in [
        "alter_role",
        "alter_database_owner",
        "alter_database_connection_limit",
        "revoke_public",
        "grant_connect",
        "default_privileges",
    ] {
        assert!(kinds.contains(&k), "missing repair {k} in {kinds:?}");
    }
    let status = t.pgplane(&["status", "-f", f, "--env", "drift", "--json"]).ok().json();
    let db = status["environments"][0]["objects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == "drift_app" && o["kind"] == "database")
        .cloned()
        .unwrap();
    assert!(db["drift"].as_array().unwrap().len() >= 3, "{db}");

    t.pgplane(&["apply", "-f", f, "--yes"]).ok();
    assert_eq!(t.pgplane(&["plan", "-f", f, "--detailed-exitcode"]).code, 0);
    assert_eq!(
        t.sql("postgres", "SELECT pg_get_userbyid(datdba), datconnlimit, has_database_privilege('public', 'drift_app', 'CONNECT') FROM pg_database WHERE datname = 'drift_app'"),
        "drift_app|7|f"
    );
    assert_eq!(t.sql("postgres", "SELECT rolcreatedb FROM pg_roles WHERE rolname = 'drift_app_readonly'"), "f");
    assert_eq!(t.sql("postgres", "SELECT has_database_privilege('drift_app_readonly', 'drift_app', 'CONNECT')"), "t");
    let default_select = "SELECT count(*) FROM pg_default_acl d, aclexplode(d.defaclacl) a \
         WHERE pg_get_userbyid(d.defaclrole) = 'drift_app' AND a.grantee = 'drift_app_readonly'::regrole \
         AND a.privilege_type = 'SELECT'";
    assert_eq!(t.sql("drift_app", default_select), "1");
}

#[test]
fn removed_objects_are_orphaned_and_dropped_only_with_prune() {
    let t = T::new("prune");
    let f = t.manifest(
        "modules:\n  - name: keep\n    storage: database\n  - name: gone\n    storage: schema-per-tenant\n    readonly_role: true\n\
         tenants:\n  - name: acme\n    modules: [gone]\n",
    );
    t.pgplane(&["apply", "-f", f.to_str().unwrap(), "--yes"]).ok();
    t.sql("postgres", "CREATE ROLE prune_unmanaged");
    let f = t.manifest("modules:\n  - name: keep\n    storage: database\n");
    let f = f.to_str().unwrap();

    let plan = t.pgplane(&["plan", "-f", f, "--json", "--detailed-exitcode"]);
    assert_eq!(plan.code, 0, "orphans alone are not changes");
    let orphans: Vec<String> =
        plan.json()["orphans"].as_array().unwrap().iter().map(|o| o["name"].as_str().unwrap().to_string()).collect();
    assert!(
        orphans.contains(&"prune_gone".to_string()) && orphans.contains(&"prune_acme_gone".to_string()),
        "{orphans:?}"
    );
    assert!(t.pgplane(&["plan", "-f", f]).stdout.contains("orphaned"));

    t.pgplane(&["apply", "-f", f, "--yes"]).ok();
    assert!(t.catalog_names().1.contains(&"prune_gone".to_string()), "no prune: kept");

    let pruned = t.pgplane(&["plan", "-f", f, "--prune", "--json"]).ok().json();
    assert!(pruned["actions"].as_array().unwrap().iter().any(|a| a["kind"] == "drop_database"));
    t.pgplane(&["apply", "-f", f, "--yes", "--prune"]).ok();
    let (roles, dbs) = t.catalog_names();
    assert_eq!(dbs, vec!["prune_keep"]);
    assert_eq!(roles, vec!["prune_keep", "prune_unmanaged"], "unmanaged role untouched");
    assert_eq!(t.records("role"), vec!["prune_keep"]);
    assert_eq!(t.pgplane(&["plan", "-f", f, "--prune", "--detailed-exitcode"]).code, 0);
}

#[test]
fn tenants_cannot_reach_each_other() {
    let t = T::new("iso");
    let f = t.manifest(
        "modules:\n  - name: users\n    storage: schema-per-tenant\n  - name: files\n    storage: database-per-tenant\n\
         tenants:\n  - name: acme\n    modules: [users, files]\n  - name: globex\n    modules: [users, files]\n",
    );
    let f = f.to_str().unwrap();
    t.pgplane(&["apply", "-f", f, "--yes"]).ok();
    let acme = t.credentials(&["users", "-f", f, "--tenant", "acme"]);
    let globex = t.credentials(&["users", "-f", f, "--tenant", "globex"]);
    // search_path puts each tenant in its own schema.
    psql(&acme, "CREATE TABLE secrets (v text); INSERT INTO secrets VALUES ('acme only')").unwrap();
    assert_eq!(psql(&acme, "SELECT v FROM acme_users.secrets").unwrap(), "acme only");
    let denied = psql(&globex, "SELECT v FROM acme_users.secrets").unwrap_err();
    assert!(denied.contains("permission denied for schema acme_users"), "{denied}");
    let no_create = psql(&globex, "CREATE TABLE public.x (v int)").unwrap_err();
    assert!(no_create.contains("permission denied for schema public"), "{no_create}");
    // Database per tenant: another tenant's database refuses the connection.
    let acme_files = t.credentials(&["files", "-f", f, "--tenant", "acme"]);
    let globex_files = t.credentials(&["files", "-f", f, "--tenant", "globex"]);
    assert!(psql(&acme_files, "SELECT 1").is_ok());
    let other = common::with_db(&globex_files, "iso_acme_files");
    let refused = psql(&other, "SELECT 1").unwrap_err();
    assert!(refused.contains("permission denied for database"), "{refused}");
}

#[test]
fn readonly_role_reads_and_cannot_write() {
    let t = T::new("ro");
    let f = t.manifest("modules:\n  - name: app\n    storage: database\n    readonly_role: true\n");
    let f = f.to_str().unwrap();
    t.pgplane(&["apply", "-f", f, "--yes"]).ok();
    let owner = t.credentials(&["app", "-f", f]);
    let reader = t.credentials(&["app", "-f", f, "--role", "readonly"]);
    // A table created after apply is readable through default privileges.
    psql(&owner, "CREATE TABLE items (id int); INSERT INTO items VALUES (1), (2)").unwrap();
    assert_eq!(psql(&reader, "SELECT count(*) FROM items").unwrap(), "2");
    assert!(psql(&reader, "INSERT INTO items VALUES (3)").unwrap_err().contains("permission denied"));
    assert!(psql(&reader, "CREATE TABLE mine (id int)").unwrap_err().contains("permission denied"));
    assert!(psql(&reader, "DELETE FROM items").unwrap_err().contains("permission denied"));
    // A table created by hand without default privileges (another owner) shows as drift.
    t.sql("ro_app", "CREATE TABLE admin_made (id int); ALTER TABLE admin_made OWNER TO ro_app");
    let plan = t.pgplane(&["plan", "-f", f, "--json"]).ok().json();
    assert_eq!(plan["actions"][0]["kind"], "grant_select", "{plan}");
    t.pgplane(&["apply", "-f", f, "--yes"]).ok();
    assert_eq!(psql(&reader, "SELECT count(*) FROM admin_made").unwrap(), "0");
}

#[test]
fn credentials_formats_and_rotation() {
    let t = T::new("cred");
    let f = t.manifest(
        "modules:\n  - name: app\n    storage: database\n  - name: users\n    storage: schema-per-tenant\n\
         tenants:\n  - name: acme\n    modules: [users]\n",
    );
    let f = f.to_str().unwrap();
    let before = t.pgplane(&["credentials", "app", "-f", f]).fails();
    assert!(before.stderr.contains("run `pgplane apply` first"), "{}", before.stderr);
    t.pgplane(&["apply", "-f", f, "--yes"]).ok();

    let url = t.credentials(&["app", "-f", f, "--format", "url"]);
    assert!(url.starts_with("postgresql://cred_app:"));
    assert_eq!(psql(&url, "SELECT current_user || '@' || current_database()").unwrap(), "cred_app@cred_app");

    let env = t.credentials(&["users", "-f", f, "--tenant", "acme", "--format", "env"]);
    let keys: Vec<&str> = env.lines().map(|l| l.split('=').next().unwrap()).collect();
    assert_eq!(
        keys,
        ["PGHOST", "PGPORT", "PGDATABASE", "PGUSER", "PGPASSWORD", "PGOPTIONS", "DATABASE_SCHEMA", "DATABASE_URL"]
    );
    // The env file works with libpq's variables as is.
    let mut cmd = std::process::Command::new("psql");
    cmd.args(["-X", "-At", "-c", "SELECT current_user, current_schema()"]);
    for l in env.lines() {
        let (k, v) = l.split_once('=').unwrap();
        cmd.env(k, v);
    }
    let out = common::run_ok(&mut cmd);
    assert_eq!(out.trim(), "cred_acme_users|acme_users");

    let json: serde_json::Value = serde_json::from_str(&t.credentials(&["app", "-f", f, "--format", "json"])).unwrap();
    for k in ["host", "port", "database", "user", "password", "url"] {
        assert!(!json[k].is_null(), "json has {k}");
    }
    let k8s = t.credentials(&["app", "-f", f, "--format", "k8s-secret", "--k8s-namespace", "platform"]);
    assert!(k8s.starts_with("apiVersion: v1\nkind: Secret\n"));
    assert!(
        k8s.contains("name: \"cred-app-db\"")
            && k8s.contains("namespace: \"platform\"")
            && k8s.contains("DATABASE_URL: \"postgresql://")
    );

    let missing = t.pgplane(&["credentials", "users", "-f", f]).fails();
    assert!(missing.stderr.contains("pass --tenant"), "{}", missing.stderr);

    let rotated = t.pgplane(&["credentials", "app", "-f", f, "--rotate"]).ok().stdout.trim().to_string();
    assert_ne!(rotated, url);
    assert!(psql(&url, "SELECT 1").unwrap_err().contains("password authentication failed"));
    assert_eq!(psql(&rotated, "SELECT 1").unwrap(), "1");
    assert_eq!(t.credentials(&["app", "-f", f]), rotated, "credentials hands out the rotated password");
    assert_eq!(t.pgplane(&["plan", "-f", f, "--detailed-exitcode"]).code, 0);
}

#[test]
fn apply_refuses_without_yes_when_not_on_a_terminal() {
    let t = T::new("noyes");
    let f = t.manifest("modules:\n  - name: app\n    storage: database\n");
    let run = t.pgplane(&["apply", "-f", f.to_str().unwrap()]).fails();
    assert!(run.stderr.contains("pass --yes"), "{}", run.stderr);
    assert_eq!(t.catalog_names(), (vec![], vec![]));
}

#[test]
fn concurrent_applies_serialize() {
    let t = T::new("conc");
    let f1 = t.manifest_named("one.yaml", &modules("conc_one", 8));
    let f2 = t.manifest_named("two.yaml", &modules("conc_two", 8));
    let spawn = |f: &std::path::Path| {
        t.cmd()
            .args(["apply", "-f", f.to_str().unwrap(), "--yes"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    // Two applies of the same manifest and one of another, all at once.
    let children = vec![spawn(&f1), spawn(&f1), spawn(&f2)];
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    for f in [&f1, &f2] {
        assert_eq!(t.pgplane(&["plan", "-f", f.to_str().unwrap(), "--detailed-exitcode"]).code, 0);
    }
    assert_eq!(t.catalog_names().1.len(), 16);
}

/// A manifest body with `n` database modules named `{prefix}_mNN`.
fn modules(prefix: &str, n: usize) -> String {
    let _ = prefix;
    let mut s = String::from("modules:\n");
    for i in 0..n {
        s.push_str(&format!("  - name: {prefix}_m{i:02}\n    storage: database\n    readonly_role: true\n"));
    }
    s
}

#[test]
fn apply_killed_at_any_moment_converges() {
    let t = T::new("kill");
    let f = t.manifest(&modules("k", 25));
    let f = f.to_str().unwrap();
    let mut partial = 0;
    for delay_ms in [0u64, 40, 120, 300, 600] {
        // Its output would only flood the test log (it is killed mid-way on purpose).
        let mut child = t
            .cmd()
            .args(["apply", "-f", f, "--yes"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Kill only once it is creating things: before that it may be waiting for another
        // test's apply to release the lock, and a kill there would prove nothing.
        let started = "SELECT count(*) > 0 FROM pg_roles WHERE rolname LIKE 'kill\\_k\\_m%'";
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while t.sql("postgres", started) != "t"
            && std::time::Instant::now() < deadline
            && child.try_wait().unwrap().is_none()
        {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        // Whatever exists is known: no role or database with our prefix lacks a record.
        let (roles, dbs) = t.catalog_names();
        let made = dbs.iter().filter(|d| d.starts_with("kill_k_m")).count();
        if made < 25 && (made > 0 || !roles.is_empty()) {
            partial += 1;
        }
        let (known_roles, known_dbs) = (t.records("role"), t.records("database"));
        for r in &roles {
            assert!(known_roles.contains(r), "after kill at {delay_ms}ms: role {r} exists but is not recorded");
        }
        for d in &dbs {
            assert!(known_dbs.contains(d), "after kill at {delay_ms}ms: database {d} exists but is not recorded");
        }
        t.pgplane(&["apply", "-f", f, "--yes"]).ok();
        assert_eq!(t.pgplane(&["plan", "-f", f, "--detailed-exitcode"]).code, 0);
        assert_eq!(t.catalog_names().1.iter().filter(|d| d.starts_with("kill_k_m")).count(), 25);
        // Start over for the next delay.
        let empty = t.manifest_named("empty.yaml", "modules:\n  - name: k_placeholder\n    storage: database\n");
        t.pgplane(&["apply", "-f", empty.to_str().unwrap(), "--yes", "--prune"]).ok();
    }
    assert!(partial > 0, "no kill landed in the middle of an apply: the test proved nothing");
}

#[test]
fn status_lists_managed_objects_per_environment() {
    let t = T::new("stat");
    let f = t.manifest("modules:\n  - name: app\n    storage: database\n");
    let f = f.to_str().unwrap();
    let before = t.pgplane(&["status", "-f", f, "--env", "stat"]).ok();
    assert!(before.stdout.contains("manages nothing yet"), "{}", before.stdout);
    t.pgplane(&["apply", "-f", f, "--yes"]).ok();
    let text = t.pgplane(&["status", "-f", f, "--env", "stat"]).ok().stdout;
    assert!(text.contains("env stat (2 objects, 0 with drift)"), "{text}");
    t.sql("postgres", "DROP DATABASE stat_app");
    let doc = t.pgplane(&["status", "-f", f, "--env", "stat", "--json"]).ok().json();
    let db = doc["environments"][0]["objects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["kind"] == "database")
        .cloned()
        .unwrap();
    assert_eq!(db["exists"], false);
    // A missing managed database is re-created.
    t.pgplane(&["apply", "-f", f, "--yes"]).ok();
    assert_eq!(t.catalog_names().1, vec!["stat_app"]);
}

#[test]
fn plan_reuses_apply_observations_until_a_database_changes() {
    let t = T::new("cache");
    let f = t.manifest("modules:\n  - name: app\n    storage: database\n    readonly_role: true\n");
    let f = f.to_str().unwrap();
    t.pgplane(&["apply", "-f", f, "--yes"]).ok();
    assert_eq!(t.sql("pgplane", "SELECT count(*) FROM pgplane.observations WHERE database = 'cache_app'"), "1");
    let mut cmd = t.cmd();
    let run = cmd.args(["plan", "-f", f, "--detailed-exitcode"]).env("PGPLANE_LOG", "debug").output().unwrap();
    assert_eq!(run.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&run.stderr).contains("reused=1 read=0"),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );

    // A change to grants or owners inside the database changes its pg_shdepend fingerprint.
    t.sql(
        "cache_app",
        "ALTER DEFAULT PRIVILEGES FOR ROLE cache_app IN SCHEMA public REVOKE SELECT ON TABLES FROM cache_app_readonly",
    );
    let plan = t.pgplane(&["plan", "-f", f, "--json"]).ok().json();
    assert_eq!(plan["actions"][0]["kind"], "default_privileges", "{plan}");
    t.pgplane(&["apply", "-f", f, "--yes"]).ok();

    // Privileges of PUBLIC are not in pg_shdepend: the cached plan cannot see them, --deep
    // does, and apply (which always reads deeply) repairs them.
    t.sql("cache_app", "GRANT CREATE ON SCHEMA public TO PUBLIC");
    assert_eq!(t.pgplane(&["plan", "-f", f, "--detailed-exitcode"]).code, 0);
    let deep = t.pgplane(&["plan", "-f", f, "--deep", "--json"]).ok().json();
    assert_eq!(deep["actions"][0]["kind"], "revoke_schema", "{deep}");
    t.pgplane(&["apply", "-f", f, "--yes"]).ok();
    assert_eq!(t.pgplane(&["plan", "-f", f, "--deep", "--detailed-exitcode"]).code, 0);

    // A database dropped and re-created by hand under the same name is a new database:
    // not pgplane's (another OID) until adopted, and then read afresh, not from the cache.
    t.sql("postgres", "DROP DATABASE cache_app WITH (FORCE)");
    t.sql("postgres", "CREATE DATABASE cache_app OWNER cache_app");
    let e = t.pgplane(&["plan", "-f", f]).fails();
    assert!(e.stderr.contains("database cache_app is not the one pgplane created"), "{}", e.stderr);
    let plan = t.pgplane(&["plan", "-f", f, "--adopt", "--json"]).ok().json();
    let kinds: Vec<&str> = plan["actions"].as_array().unwrap().iter().map(|a| a["kind"].as_str().unwrap()).collect();
    assert!(kinds.contains(&"revoke_public") && kinds.contains(&"default_privileges"), "{kinds:?}");
}

/// Strings that break naive quoting: quotes, backslashes, comment starts, dollar quotes,
/// statement separators, whitespace and multi-byte characters, plus pseudo-random mixes.
fn nasty_strings() -> Vec<String> {
    let mut out: Vec<String> = [
        "plain",
        "it's",
        "\"quoted\"",
        "a\"\"b",
        "back\\slash",
        "semi;colon",
        "--comment",
        "/*c*/",
        "$$dollar$$",
        "$tag$x$tag$",
        "new\nline",
        "tab\there",
        " lead",
        "trail ",
        "é",
        "日本語",
        "emoji😀",
        "''",
        "\"",
        "\\'",
        "E'x'",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let pool: Vec<char> = "aZ9_ '\"\\;-/*$\n\té日😀".chars().collect();
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..200 {
        let mut s = String::new();
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let len = 1 + (seed >> 33) as usize % 12;
        for _ in 0..len {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            s.push(pool[(seed >> 33) as usize % pool.len()]);
        }
        out.push(s);
    }
    out.sort();
    out.dedup();
    out
}

/// Result rows `N:hex` of a multi-statement psql run (psql also prints command tags).
fn rows(out: &str) -> Vec<String> {
    common::lines(out).into_iter().filter(|l| l.split(':').next().is_some_and(|n| n.parse::<usize>().is_ok())).collect()
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn quoting_round_trips_through_a_real_server() {
    use pgplane_core::ident::{quote_ident, quote_literal};
    let t = T::new("quoting");
    let strings = nasty_strings();

    // Literals: what the server stores is exactly the string.
    let values: Vec<String> = strings.iter().enumerate().map(|(i, s)| format!("({i}, {})", quote_literal(s))).collect();
    let sql = format!(
        "CREATE TEMP TABLE lits (i int, v text); INSERT INTO lits VALUES {}; \
         SELECT i || ':' || encode(convert_to(v, 'UTF8'), 'hex') FROM lits ORDER BY i",
        values.join(", ")
    );
    let got = t.sql("postgres", &sql);
    let want: Vec<String> = strings.iter().enumerate().map(|(i, s)| format!("{i}:{}", hex(s))).collect();
    assert_eq!(rows(&got), want);

    // Identifiers: a schema named by each string exists under exactly that name.
    t.sql("postgres", "CREATE DATABASE quoting_idents");
    let mut sql = String::new();
    for (i, s) in strings.iter().enumerate() {
        sql.push_str(&format!("CREATE SCHEMA {q}; COMMENT ON SCHEMA {q} IS 'n{i}'; ", q = quote_ident(s)));
    }
    sql.push_str(
        "SELECT substr(obj_description(oid, 'pg_namespace'), 2) || ':' || encode(convert_to(nspname, 'UTF8'), 'hex') \
         FROM pg_namespace WHERE obj_description(oid, 'pg_namespace') LIKE 'n%' ORDER BY 1",
    );
    let got = t.sql("quoting_idents", &sql);
    let mut want: Vec<String> = strings.iter().enumerate().map(|(i, s)| format!("{i}:{}", hex(s))).collect();
    want.sort();
    assert_eq!(rows(&got), want);
    t.sql("postgres", "DROP DATABASE quoting_idents");
}

/// Runs pgplane under a pseudo-terminal (util-linux `script`), answering `answer`.
fn on_terminal(t: &T, args: &str, answer: &str) -> common::Run {
    use std::io::Write;
    let mut cmd = std::process::Command::new("script");
    cmd.args(["-qec", &format!("{} {args}", common::BIN), "/dev/null"])
        .current_dir(&t.dir)
        .env("PGPLANE_HOME", t.dir.join("home"))
        .env("PGPLANE_SECRET_KEY", common::TEST_SECRET_KEY)
        .env("TEST_PG_URL", &t.server.url)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    child.stdin.take().unwrap().write_all(answer.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    common::Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn on_a_terminal_apply_shows_the_plan_and_asks() {
    let t = T::new("tty");
    t.manifest("modules:\n  - name: app\n    storage: database\n");
    let no = on_terminal(&t, "apply", "n\n");
    assert_eq!(no.code, 1, "{no:?}");
    assert!(no.stdout.contains("CREATE DATABASE \"tty_app\""), "plan shown: {}", no.stdout);
    assert!(no.stdout.contains("apply these 3 change(s)? [y/N]"), "asks: {}", no.stdout);
    assert!(no.stdout.contains("cancelled; nothing was changed"), "{}", no.stdout);
    assert_eq!(t.catalog_names(), (vec![], vec![]));

    let yes = on_terminal(&t, "apply", "y\n");
    assert_eq!(yes.code, 0, "{yes:?}");
    assert!(yes.stdout.contains("Applied 3 changes (env tty)."), "{}", yes.stdout);
    assert_eq!(t.catalog_names().1, vec!["tty_app"]);
}

#[test]
fn regression_pruning_a_renamed_owner_role_keeps_its_tables() {
    // Review finding: pruning the old owner role ran DROP OWNED BY in the database that
    // stays, which dropped every table the module had created.
    let t = T::new("rename");
    let f = t.manifest("modules:\n  - name: app\n    storage: database\n");
    let f = f.to_str().unwrap();
    t.pgplane(&["apply", "-f", f, "--yes"]).ok();
    let url = t.credentials(&["app", "-f", f]);
    psql(&url, "CREATE TABLE precious (v text); INSERT INTO precious VALUES ('keep me')").unwrap();
    // The old role also owns a table in a database pgplane does not manage.
    t.sql("postgres", "CREATE DATABASE rename_elsewhere");
    t.sql("rename_elsewhere", "CREATE TABLE theirs (v int); ALTER TABLE theirs OWNER TO rename_app");

    let f2 =
        t.manifest("naming:\n  owner_role: \"{env}_{module}_owner\"\nmodules:\n  - name: app\n    storage: database\n");
    let f2 = f2.to_str().unwrap();
    let run = t.pgplane(&["apply", "-f", f2, "--yes", "--prune"]).ok();
    assert!(run.stdout.contains("role rename_app is kept although orphaned"), "{}", run.stdout);
    let owner = "SELECT v || '|' || pg_get_userbyid(relowner) FROM precious, pg_class WHERE relname = 'precious'";
    assert_eq!(t.sql("rename_app", owner), "keep me|rename_app", "kept role, kept table");

    // Once the unmanaged database no longer holds its objects, prune drops the role.
    t.sql("postgres", "DROP DATABASE rename_elsewhere");
    let plan = t.pgplane(&["plan", "-f", f2, "--prune", "--json"]).ok().json();
    let kinds: Vec<&str> = plan["actions"].as_array().unwrap().iter().map(|a| a["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["disable_role", "reassign_owned", "drop_owned", "drop_role"], "{plan}");
    t.pgplane(&["apply", "-f", f2, "--yes", "--prune"]).ok();
    assert_eq!(t.catalog_names().0, vec!["rename_app_owner"]);
    assert_eq!(t.sql("rename_app", owner), "keep me|rename_app_owner", "the table moved to the new owner");
}

#[test]
fn regression_credentials_check_the_environment_not_just_the_name() {
    // Review finding: with a naming template without {env}, `credentials --env other`
    // handed out (and --rotate changed) the password of the env that owns the role.
    let t = T::new("credenv");
    let f = t.manifest("naming:\n  owner_role: \"credenv_{module}\"\n  database: \"credenv_{module}\"\nmodules:\n  - name: app\n    storage: database\n");
    let f = f.to_str().unwrap();
    t.pgplane(&["apply", "-f", f, "--yes"]).ok();
    let run = t.pgplane(&["credentials", "app", "-f", f, "--env", "credenv_other"]).fails();
    assert!(run.stderr.contains("is managed for env credenv module app"), "{}", run.stderr);
    let rotate = t.pgplane(&["credentials", "app", "-f", f, "--env", "credenv_other", "--rotate"]).fails();
    assert!(rotate.stderr.contains("is managed for env credenv"), "{}", rotate.stderr);
    let url = t.credentials(&["app", "-f", f]);
    assert_eq!(psql(&url, "SELECT 1").unwrap(), "1", "the real owner's password still works");
}

#[test]
fn regression_a_failed_create_withdraws_its_claim() {
    // Review finding: a claim stayed recorded when its CREATE failed, so an object created
    // by hand under that name later would have counted as pgplane's (and been prunable).
    let t = T::new("claim");
    let f = t.manifest("modules:\n  - name: app\n    storage: database\n    extensions: [no_such_extension]\n");
    let f = f.to_str().unwrap();
    let run = t.pgplane(&["apply", "-f", f, "--yes"]).fails();
    assert!(run.stderr.contains("create_extension extension claim_app.no_such_extension"), "{}", run.stderr);
    assert!(run.stderr.contains("no_such_extension"), "{}", run.stderr);
    assert_eq!(t.records("extension"), Vec::<String>::new());
    assert_eq!(t.records("database"), vec!["claim_app"], "what succeeded stays recorded");
    let failed = t.sql("pgplane", "SELECT status FROM pgplane.jobs WHERE env = 'claim' ORDER BY id DESC LIMIT 1");
    assert_eq!(failed, "failed", "the operation is journaled as failed");
}

#[test]
fn regression_records_on_a_server_left_out_of_the_manifest_are_kept() {
    // Review finding: a server missing from the manifest read as empty, so prune forgot
    // the records of objects that still exist there.
    let t = T::new("gone");
    let two = "  - name: second\n    url: ${TEST_PG_URL}\nmodules:\n  - name: a\n    storage: database\n  - name: b\n    storage: database\n    server: second\n";
    let f = t.manifest(two);
    t.pgplane(&["apply", "-f", f.to_str().unwrap(), "--yes"]).ok();
    let f = t.manifest("modules:\n  - name: a\n    storage: database\n");
    let f = f.to_str().unwrap();
    let plan = t.pgplane(&["plan", "-f", f, "--prune"]).ok();
    assert!(plan.stdout.contains("server second is not in the manifest"), "{}", plan.stdout);
    t.pgplane(&["apply", "-f", f, "--yes", "--prune"]).ok();
    assert_eq!(t.records("database"), vec!["gone_a", "gone_b"]);
    assert!(t.catalog_names().1.contains(&"gone_b".to_string()));
}

#[test]
fn regression_a_renamed_tenant_role_keeps_its_tables() {
    // Review finding: REASSIGN OWNED went to the database owner (the module), so after a
    // tenant_role rename the tenant lost its own tables.
    let t = T::new("trename");
    let body =
        "modules:\n  - name: users\n    storage: schema-per-tenant\ntenants:\n  - name: acme\n    modules: [users]\n";
    let f = t.manifest(body);
    t.pgplane(&["apply", "-f", f.to_str().unwrap(), "--yes"]).ok();
    let old = t.credentials(&["users", "-f", f.to_str().unwrap(), "--tenant", "acme"]);
    psql(&old, "CREATE TABLE notes (v text); INSERT INTO notes VALUES ('mine')").unwrap();

    let f2 = t.manifest(&format!("naming:\n  tenant_role: \"{{env}}_{{tenant}}_{{module}}_rw\"\n{body}"));
    let f2 = f2.to_str().unwrap();
    t.pgplane(&["apply", "-f", f2, "--yes", "--prune"]).ok();
    let new = t.credentials(&["users", "-f", f2, "--tenant", "acme"]);
    assert_eq!(psql(&new, "SELECT v FROM notes").unwrap(), "mine", "the new tenant role reads its table");
    assert_eq!(
        t.sql("trename_users", "SELECT pg_get_userbyid(relowner) FROM pg_class WHERE relname = 'notes'"),
        "trename_acme_users_rw"
    );
    assert!(psql(&old, "SELECT 1").unwrap_err().contains("password authentication failed"));
    assert_eq!(t.pgplane(&["plan", "-f", f2, "--prune", "--detailed-exitcode"]).code, 0);
}

#[test]
fn statements_left_running_by_a_killed_apply_are_ended_before_the_next_one_plans() {
    let t = T::new("reap");
    let f = t.manifest("modules:\n  - name: app\n    storage: database\n");
    let f = f.to_str().unwrap();
    t.pgplane(&["apply", "-f", f, "--yes"]).ok();
    let sleeper = |app: &str| {
        std::process::Command::new("psql")
            .args([common::with_db(&t.server.url, "postgres").as_str(), "-X", "-c", "SELECT pg_sleep(120)"])
            .env("PGAPPNAME", app)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    // A busy session named like a dead apply of this installation, and one of another.
    let id = t.sql("pgplane", "SELECT left(id, 16) FROM pgplane.installation");
    let leftover = sleeper(&format!("pgplane-apply/{id}/deadbeef"));
    let mut bystander = sleeper("pgplane-apply/otherinstall/cafe");
    let busy =
        "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'pgplane-apply/%' AND state = 'active'";
    for _ in 0..100 {
        if t.sql("postgres", busy) == "2" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    t.pgplane(&["apply", "-f", f, "--yes"]).ok();
    let out = leftover.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("terminating connection"), "{stderr}");
    assert!(bystander.try_wait().unwrap().is_none(), "another installation's session survives");
    let _ = bystander.kill();
    t.sql("postgres", "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'pgplane-apply/otherinstall/cafe'");
}

#[test]
fn database_settings_are_applied_and_drift_repaired() {
    let t = T::new("dbset");
    let f = t.manifest(
        "modules:\n  - name: app\n    storage: database\n    settings:\n      search_path: '\"$user\", app, public'\n      statement_timeout: 5s\n\
         \x20 - name: files\n    storage: database-per-tenant\n    settings: {work_mem: 64MB}\n\
         tenants:\n  - name: acme\n    modules: [files]\n",
    );
    let f = f.to_str().unwrap();
    let setconfig = |db: &str| {
        t.sql(
            "postgres",
            &format!(
                "SELECT setconfig FROM pg_db_role_setting \
                 WHERE setdatabase = (SELECT oid FROM pg_database WHERE datname = '{db}') AND setrole = 0"
            ),
        )
    };
    t.pgplane(&["apply", "-f", f, "--yes"]).ok();
    assert_eq!(setconfig("dbset_app"), r#"{"search_path=\"$user\", app, public",statement_timeout=5s}"#);
    assert_eq!(setconfig("dbset_acme_files"), "{work_mem=64MB}");
    // A session of the module's role gets them: the list as three schemas, not one.
    let url = t.credentials(&["app", "-f", f]);
    assert_eq!(psql(&url, "SHOW search_path").unwrap(), "\"$user\", app, public");
    assert_eq!(psql(&url, "SHOW statement_timeout").unwrap(), "5s");
    assert_eq!(t.pgplane(&["plan", "-f", f, "--detailed-exitcode"]).code, 0, "a second plan is empty");

    // Drift by hand; a setting the manifest does not list is not pgplane's and stays.
    t.sql("postgres", "ALTER DATABASE dbset_app SET statement_timeout = 0");
    t.sql("postgres", "ALTER DATABASE dbset_app SET lock_timeout = '3s'");
    let plan = t.pgplane(&["plan", "-f", f, "--json"]).ok().json();
    let actions = plan["actions"].as_array().unwrap();
    assert_eq!(actions.len(), 1, "{plan}");
    assert_eq!(actions[0]["kind"], "set_database_setting");
    assert_eq!(actions[0]["why"], "drift: statement_timeout is 0, want 5s");
    assert_eq!(actions[0]["sql"], "ALTER DATABASE \"dbset_app\" SET \"statement_timeout\" = '5s'");
    let status = t.pgplane(&["status", "-f", f, "--env", "dbset"]).ok().stdout;
    assert!(status.contains("drift: drift: statement_timeout is 0, want 5s"), "{status}");

    t.pgplane(&["apply", "-f", f, "--yes"]).ok();
    assert_eq!(
        setconfig("dbset_app"),
        r#"{"search_path=\"$user\", app, public",statement_timeout=5s,lock_timeout=3s}"#
    );
    assert_eq!(t.pgplane(&["plan", "-f", f, "--detailed-exitcode"]).code, 0);
    assert_eq!(t.pgplane(&["plan", "-f", f, "--deep", "--detailed-exitcode"]).code, 0);
}

#[test]
fn the_branch_readonly_role_is_provisioned_handed_out_and_pruned() {
    let t = T::new("brro");
    let body = "modules:\n  - name: registry\n    storage: database\n\
                templates:\n  - name: brro_registry_template\n    module: registry\n    sources: [db/changelog.yaml]\n";
    let f = t.manifest(&format!("{body}branches:\n  readonly_role: brro_reader\n"));
    let f = f.to_str().unwrap();
    t.pgplane(&["apply", "-f", f, "--yes"]).ok();
    assert_eq!(
        t.sql("postgres", "SELECT rolcanlogin, rolsuper, rolcreatedb FROM pg_roles WHERE rolname = 'brro_reader'"),
        "t|f|f"
    );
    assert_eq!(t.records("role"), vec!["brro_reader", "brro_registry"]);
    assert_eq!(
        t.sql("pgplane", "SELECT module, purpose FROM pgplane.objects WHERE name = 'brro_reader'"),
        "|branch_readonly_role"
    );
    // No database of its own, no grants from apply.
    assert_eq!(t.sql("postgres", "SELECT has_database_privilege('brro_reader', 'brro_registry', 'CONNECT')"), "f");
    assert_eq!(t.pgplane(&["plan", "-f", f, "--detailed-exitcode"]).code, 0);

    // credentials hands it out; the URL names the template (built by `template build`).
    let doc: serde_json::Value =
        serde_json::from_str(&t.credentials(&["--branch-readonly", "-f", f, "--format", "json"])).unwrap();
    assert_eq!((doc["user"].as_str(), doc["database"].as_str()), (Some("brro_reader"), Some("brro_registry_template")));
    let url = doc["url"].as_str().unwrap().replace("/brro_registry_template", "/postgres");
    assert_eq!(psql(&url, "SELECT current_user").unwrap(), "brro_reader");
    let both = t.pgplane(&["credentials", "registry", "--branch-readonly", "-f", f]);
    assert_eq!(both.code, 2, "a module and --branch-readonly conflict: {}", both.stderr);

    // Removed from the manifest: orphaned, dropped only with --prune.
    let f2 = t.manifest_named("without.yaml", body);
    let f2 = f2.to_str().unwrap();
    t.pgplane(&["apply", "-f", f2, "--yes"]).ok();
    assert_eq!(t.sql("postgres", "SELECT count(*) FROM pg_roles WHERE rolname = 'brro_reader'"), "1");
    t.pgplane(&["apply", "-f", f2, "--yes", "--prune"]).ok();
    assert_eq!(t.sql("postgres", "SELECT count(*) FROM pg_roles WHERE rolname = 'brro_reader'"), "0");
    assert_eq!(t.records("role"), vec!["brro_registry"]);
}
