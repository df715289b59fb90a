//! Issue 11, class 2: migrations run with exactly their owner's rights. Module, tenant,
//! template and branch migrations (SQL files, Liquibase `sqlFile`, a `sqlCheck`
//! precondition) try every way back to the admin that a session which logged in as the
//! admin and `SET ROLE` to the owner would offer: `RESET ROLE`, `SET SESSION AUTHORIZATION
//! DEFAULT`, `SET ROLE postgres`, a function whose `SET role` clause switches to the admin,
//! a `SECURITY DEFINER` function. Each attempt is recorded with its outcome in the target;
//! none may escalate, and `current_user` and `session_user` inside are the owner.

#![allow(clippy::unwrap_used)]

mod common;

use common::{lines, T};

/// The admin the harness logs in as.
const ADMIN: &str = "postgres";

/// A migration that tries each way up and records how it went in `attempts` (created in
/// the migration's schema), plus who it ran as.
fn attempts(label: &str, owner: &str) -> String {
    let tries = [
        ("RESET ROLE", "RESET ROLE;".to_string()),
        ("SET SESSION AUTHORIZATION DEFAULT", "SET SESSION AUTHORIZATION DEFAULT;".to_string()),
        ("SET ROLE admin", format!("SET ROLE \"{ADMIN}\";")),
        (
            "SET role clause",
            format!(
                "EXECUTE $c$CREATE OR REPLACE FUNCTION as_admin() RETURNS void LANGUAGE plpgsql SET role = '{ADMIN}'
                   AS $f$ BEGIN EXECUTE 'ALTER ROLE \"{owner}\" SUPERUSER'; END $f$$c$;
                 PERFORM as_admin();"
            ),
        ),
        ("SECURITY DEFINER", "PERFORM definer();".to_string()),
    ];
    let mut body = String::new();
    for (how, step) in tries {
        body.push_str(&format!(
            "BEGIN
               {step}
               EXECUTE 'ALTER ROLE \"{owner}\" SUPERUSER';
               INSERT INTO attempts VALUES ('{label}: {how}', 'ESCALATED', current_user, session_user);
             EXCEPTION WHEN OTHERS THEN
               INSERT INTO attempts VALUES ('{label}: {how}', SQLSTATE, current_user, session_user);
             END;\n"
        ));
    }
    format!(
        "CREATE TABLE IF NOT EXISTS attempts (how text, outcome text, cu name, su name);
         CREATE OR REPLACE FUNCTION definer() RETURNS void LANGUAGE plpgsql SECURITY DEFINER
           AS $f$ BEGIN EXECUTE 'ALTER ROLE \"{owner}\" SUPERUSER'; END $f$;
         INSERT INTO attempts VALUES ('{label}: whoami', 'ok', current_user, session_user);
         DO $d$ BEGIN
         {body}
         END $d$;
"
    )
}

/// The plain form, no exception handling: must fail as the owner.
fn raw(owner: &str) -> String {
    format!("RESET ROLE;\nSET SESSION AUTHORIZATION DEFAULT;\nALTER ROLE \"{owner}\" SUPERUSER;\n")
}

/// A Liquibase changelog: the attempts through `sqlFile`, a `sqlCheck` precondition that
/// tries the plain form, then the plain form as a change (which must fail).
fn changelog(owner: &str) -> String {
    format!(
        "databaseChangeLog:
  - changeSet:
      id: attempts
      author: eve
      changes:
        - sqlFile:
            path: attempts.sql
            relativeToChangelogFile: true
            splitStatements: false
  - changeSet:
      id: precondition
      author: eve
      preConditions:
        - onFail: MARK_RAN
        - onError: MARK_RAN
        - sqlCheck:
            expectedResult: 1
            sql: RESET ROLE; SET SESSION AUTHORIZATION DEFAULT; ALTER ROLE \"{owner}\" SUPERUSER; SELECT 1
      changes:
        - sql:
            sql: INSERT INTO attempts VALUES ('precondition passed', 'ESCALATED', current_user, session_user)
  - changeSet:
      id: plain
      author: eve
      changes:
        - sql:
            sql: RESET ROLE; ALTER ROLE \"{owner}\" SUPERUSER
"
    )
}

fn superuser(t: &T, role: &str) -> String {
    t.sql("postgres", &format!("SELECT rolsuper FROM pg_authid WHERE rolname = '{role}'"))
}

/// Every recorded attempt failed with "insufficient privilege" (or "permission denied to
/// set role"), and the session was the owner's throughout.
#[track_caller]
fn held(t: &T, db: &str, table: &str, owner: &str, expected: usize) {
    let rows =
        lines(&t.sql(db, &format!("SELECT how || '|' || outcome || '|' || cu || '|' || su FROM {table} ORDER BY how")));
    assert_eq!(rows.len(), expected, "{rows:#?}");
    for row in &rows {
        let f: Vec<&str> = row.split('|').collect();
        assert_eq!(
            (f[2], f[3]),
            (owner, owner),
            "the migration ran as {}/{} (current/session user): {row}",
            f[2],
            f[3]
        );
        if f[0].ends_with("whoami") {
            continue;
        }
        assert_eq!(f[1], "42501", "an attempt did not fail with insufficient_privilege: {row}");
    }
    assert_eq!(superuser(t, owner), "f", "{owner} became SUPERUSER");
}

#[test]
fn module_and_tenant_migrations_run_as_their_owner_role() {
    let env = "smig";
    let t = T::new(env);
    let owner = format!("{env}_app");
    let tenant = format!("{env}_acme_users");
    t.write("migrations/app/V1__attempts.sql", &attempts("module", &owner));
    t.write("migrations/app/V2__plain.sql", &raw(&owner));
    t.write("migrations/users/changelog.yaml", &changelog(&tenant));
    t.write("migrations/users/attempts.sql", &attempts("tenant", &tenant));
    let f = t.manifest(
        "modules:
  - name: app
    storage: database
    migrations: migrations/app
  - name: users
    storage: schema-per-tenant
    migrations: migrations/users/changelog.yaml
tenants:
  - name: acme
    modules: [users]
",
    );
    let f = f.to_str().unwrap();
    let run = t.pgplane(&["apply", "-f", f, "--yes"]);
    assert_eq!(run.code, 1, "the plain migrations must fail: {}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("V2__plain.sql failed: must be superuser to alter superuser roles"), "{}", run.stdout);
    assert!(run.stdout.contains("plain::eve failed: must be superuser to alter superuser roles"), "{}", run.stdout);

    held(&t, &format!("{env}_app"), "public.attempts", &owner, 6);
    held(&t, &format!("{env}_users"), "acme_users.attempts", &tenant, 6);
    // The ledgers say who ran them; the precondition errored and was marked ran.
    assert_eq!(
        t.sql(&format!("{env}_app"), "SELECT string_agg(installed_by || ':' || success, ',' ORDER BY installed_rank) FROM public.pgplane_schema_history"),
        format!("{owner}:true,{owner}:false")
    );
    assert_eq!(
        t.sql(
            &format!("{env}_users"),
            "SELECT string_agg(id || ':' || exectype, ',' ORDER BY orderexecuted) FROM acme_users.databasechangelog"
        ),
        "attempts:EXECUTED,precondition:MARK_RAN"
    );

    // `migrate status`, `validate` and `up` log in as the owners too (the ledger's own
    // rows tell: nothing new ran, nothing escalated).
    let up = t.pgplane(&["migrate", "up", "-f", f]);
    assert_eq!(up.code, 1, "{}{}", up.stdout, up.stderr);
    t.pgplane(&["migrate", "status", "-f", f]).ok();
    assert_eq!(superuser(&t, &owner), "f");
    assert_eq!(superuser(&t, &tenant), "f");
}

#[test]
fn template_and_branch_migrations_run_as_the_module_owner() {
    let env = "smtb";
    let t = T::new(env);
    let owner = format!("{env}_app");
    let tpl = format!("{env}_tpl");
    t.write(
        "model/tpl/changelog.yaml",
        &changelog(&owner)
            .replace("  - changeSet:\n      id: plain", "  - changeSet:\n      id: plain\n      context: never"),
    );
    t.write("model/tpl/attempts.sql", &attempts("template", &owner));
    t.write("model/cand/V1__attempts.sql", &attempts("branch", &owner).replace("attempts", "branch_attempts"));
    t.write("model/cand/V2__plain.sql", &raw(&owner));
    let f = t.manifest(&format!(
        "modules:
  - name: app
    storage: database
templates:
  - name: {tpl}
    module: app
    sources: [model/tpl/changelog.yaml]
    contexts: [build]
branches:
  database: \"{{template}}_{{branch}}\"
"
    ));
    let f = f.to_str().unwrap();
    t.pgplane(&["apply", "-f", f, "--yes"]).ok();
    t.pgplane(&["template", "build", &tpl, "-f", f]).ok();
    held(&t, &tpl, "public.attempts", &owner, 6);
    // The owner could log in to the build database only while it migrated.
    assert_eq!(t.sql("postgres", &format!("SELECT has_database_privilege('{owner}', '{tpl}', 'CONNECT')")), "f");

    let run = t.pgplane(&["branch", "create", "b1", "--template", &tpl, "--source", "model/cand", "-f", f]);
    assert_eq!(run.code, 1, "the plain migration must fail: {}{}", run.stdout, run.stderr);
    let db = format!("{tpl}_b1");
    held(&t, &db, "public.branch_attempts", &owner, 6);
    let show = t.pgplane(&["branch", "show", "b1", "-f", f, "--json"]).json();
    assert_eq!(show["status"], "FAILED", "{show}");
    assert!(show["error"].as_str().unwrap().contains("must be superuser to alter superuser roles"), "{show}");
}
