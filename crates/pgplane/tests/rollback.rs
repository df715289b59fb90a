//! `pgplane migrate rollback` and `migrate up --to-tag/--target`, end to end. Rollbacks and
//! updates to a tag are checked against real Liquibase 4.28 (`rollback-count`, `rollback
//! --tag`, `rollback-to-date`, `update-to-tag`): the same changelog, one database per tool,
//! the same schema, data and ledger afterwards; each tool continues the other's database.
//! Every refusal is checked to change nothing.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{lines, liquibase_bin, T};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../pgplane-core/tests/fixtures/liquibase/rollback")
}

/// Runs real Liquibase on `db` with `changelog` (relative to `search_path`); `Err(output)`
/// when it fails.
fn liquibase_try(t: &T, search_path: &Path, changelog: &str, db: &str, args: &[&str]) -> Result<String, String> {
    let rest = t.server.url.strip_prefix("postgresql://").unwrap();
    let (auth, hostpart) = rest.split_once('@').unwrap();
    let (user, password) = auth.split_once(':').unwrap();
    let host = hostpart.split('/').next().unwrap();
    let out = Command::new(liquibase_bin())
        .args([
            "--show-banner=false",
            "--log-level=off",
            &format!("--search-path={}", search_path.display()),
            &format!("--changelog-file={changelog}"),
            &format!("--url=jdbc:postgresql://{host}/{db}"),
            &format!("--username={user}"),
            &format!("--password={password}"),
        ])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run liquibase");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

fn liquibase(t: &T, search_path: &Path, changelog: &str, db: &str, args: &[&str]) -> String {
    liquibase_try(t, search_path, changelog, db, args)
        .unwrap_or_else(|e| panic!("liquibase {args:?} failed on {db}:\n{e}"))
}

const LEDGER_TABLES: [&str; 3] = ["databasechangelog", "databasechangeloglock", "pgplane_changelog_failures"];

/// `pg_dump` of a database without the ledger tables: schema, then data.
fn dump(t: &T, db: &str) -> String {
    let mut args = vec![common::with_db(&t.server.url, db), "--no-owner".into(), "--no-privileges".into()];
    for table in LEDGER_TABLES {
        args.push(format!("--exclude-table=*.{table}"));
    }
    let run = |extra: &str| {
        let out = Command::new("pg_dump").args(&args).arg(extra).output().expect("run pg_dump");
        assert!(out.status.success(), "pg_dump: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| {
                !l.starts_with("--")
                    && !l.trim().is_empty()
                    && !l.starts_with("\\restrict")
                    && !l.starts_with("\\unrestrict")
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    format!("{}\n-- data --\n{}", run("--schema-only"), run("--data-only"))
}

/// The ledger as both tools must agree on it (times, deployment ids and tool versions aside).
fn ledger(t: &T, db: &str) -> Vec<String> {
    lines(&t.sql(
        db,
        "SELECT concat_ws(' | ', orderexecuted, filename, id, author, md5sum, description, comments, exectype, contexts, labels, tag)
           FROM databasechangelog ORDER BY orderexecuted",
    ))
}

fn ids(t: &T, db: &str) -> String {
    t.sql(db, "SELECT coalesce(string_agg(id, ',' ORDER BY orderexecuted), '') FROM databasechangelog")
}

/// Both databases hold the same schema, data and ledger.
fn same(t: &T, a: &str, b: &str, when: &str) {
    assert_eq!(dump(t, b), dump(t, a), "{when}: pg_dump differs ({a} by Liquibase, {b} by pgplane)");
    assert_eq!(ledger(t, b), ledger(t, a), "{when}: ledger rows differ");
}

fn pgplane_rollback(t: &T, url: &str, source: &str, how: &[&str]) -> common::Run {
    let mut args = vec!["migrate", "rollback", "--url", url, "--source", source];
    args.extend_from_slice(how);
    t.pgplane(&args)
}

/// Liquibase's rollback-count and rollback --tag against pgplane's, on the fixture with
/// every kind of rollback, step by step back to nothing.
#[test]
fn rollback_matches_liquibase() {
    let t = T::new("rb_lb");
    let dir = fixture();
    let root = "changelog.xml";
    let source = dir.join(root);
    let source = source.to_str().unwrap();
    let (a, b) = ("rb_lb_liquibase", "rb_lb_pgplane");
    t.database(a);
    let b_url = t.database(b);
    let lb = |db: &str, args: &[&str]| liquibase(&t, &dir, root, db, args);

    lb(a, &["update"]);
    t.pgplane(&["migrate", "up", "--url", &b_url, "--source", source]).ok();
    same(&t, a, b, "after update");

    // The last three: a tag, a reference to another changeset, an empty rollback.
    lb(a, &["rollback-count", "--count", "3"]);
    let r = pgplane_rollback(&t, &b_url, source, &["--count", "3"]).ok();
    assert!(r.stdout.contains("rolled back formatted.sql::sql-5::rb"), "{}", r.stdout);
    assert!(r.stdout.contains("rolled back 3"), "{}", r.stdout);
    same(&t, a, b, "after rollback-count 3");
    assert!(!ids(&t, b).contains("sql-4"), "{}", ids(&t, b));

    // To tag v2, which only tags: its own changeset goes too, as in Liquibase.
    lb(a, &["rollback", "--tag", "v2"]);
    pgplane_rollback(&t, &b_url, source, &["--to-tag", "v2"]).ok();
    same(&t, a, b, "after rollback --tag v2");
    assert!(ids(&t, b).ends_with("json-4"), "{}", ids(&t, b));

    // To v2-mixed, carried by a changeset that also inserts: nothing lies after it.
    lb(a, &["rollback", "--tag", "v2-mixed"]);
    let r = pgplane_rollback(&t, &b_url, source, &["--to-tag", "v2-mixed"]).ok();
    assert!(r.stdout.contains("nothing to roll back"), "{}", r.stdout);
    same(&t, a, b, "after rollback --tag v2-mixed");

    // To v1: the explicit XML and JSON rollbacks, the reference, the empty ones.
    lb(a, &["rollback", "--tag", "v1"]);
    pgplane_rollback(&t, &b_url, source, &["--to-tag", "v1"]).ok();
    same(&t, a, b, "after rollback --tag v1");
    assert_eq!(ids(&t, b), "auto-1,auto-2,auto-3,auto-4,auto-5,auto-6");

    // Everything: the automatic inverses, the nameless primary key's lookup included.
    lb(a, &["rollback-count", "--count", "100"]);
    pgplane_rollback(&t, &b_url, source, &["--count", "100"]).ok();
    same(&t, a, b, "after rolling everything back");
    assert_eq!(ids(&t, b), "");
    assert_eq!(t.sql(b, "SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace"), "3");
}

/// update-to-tag against pgplane's `up --to-tag`, each tool continuing and rolling back the
/// other's database.
#[test]
fn update_to_tag_matches_liquibase_and_each_tool_continues_the_other() {
    let t = T::new("rb_tag");
    let dir = fixture();
    let root = "changelog.xml";
    let source = dir.join(root);
    let source = source.to_str().unwrap();
    let (a, b) = ("rb_tag_liquibase", "rb_tag_pgplane");
    let a_url = t.database(a);
    let b_url = t.database(b);
    let lb = |db: &str, args: &[&str]| liquibase(&t, &dir, root, db, args);

    // update-to-tag v1 ...
    lb(a, &["update-to-tag", "--tag", "v1"]);
    let up = t.pgplane(&["migrate", "up", "--url", &b_url, "--source", source, "--to-tag", "v1", "--json"]).ok().json();
    assert_eq!(up["modules"][0]["targets"][0]["applied"].as_array().unwrap().len(), 7, "{up}");
    same(&t, a, b, "after update-to-tag v1");
    // ... then to v2, each tool on the other's database ...
    t.pgplane(&["migrate", "up", "--url", &a_url, "--source", source, "--to-tag", "v2"]).ok();
    lb(b, &["update-to-tag", "--tag", "v2"]);
    same(&t, a, b, "after update-to-tag v2 on each other's database");
    // ... an update-to-tag behind the ledger runs nothing and says so ...
    let back = t.pgplane(&["migrate", "up", "--url", &b_url, "--source", source, "--to-tag", "v1"]).ok();
    assert!(back.stdout.contains("the ledger is already past tag v1"), "{}", back.stdout);
    // ... and the rest.
    t.pgplane(&["migrate", "up", "--url", &a_url, "--source", source]).ok();
    lb(b, &["update"]);
    same(&t, a, b, "after update on each other's database");
    assert_eq!(ids(&t, a).split(',').count(), 25);
    // Each tool rolls back what the other applied.
    lb(b, &["rollback-count", "--count", "4"]);
    pgplane_rollback(&t, &a_url, source, &["--count", "4"]).ok();
    same(&t, a, b, "after rolling back the other's changesets");
    t.pgplane(&["migrate", "validate", "--url", &a_url, "--source", source]).ok();
}

/// rollback-to-date: everything applied after the instant goes.
#[test]
fn rollback_to_date_matches_liquibase() {
    let t = T::new("rb_date");
    let dir = fixture();
    let root = "changelog.xml";
    let source = dir.join(root);
    let source = source.to_str().unwrap();
    let (a, b) = ("rb_date_liquibase", "rb_date_pgplane");
    t.database(a);
    let b_url = t.database(b);
    liquibase(&t, &dir, root, a, &["update-to-tag", "--tag", "v1"]);
    t.pgplane(&["migrate", "up", "--url", &b_url, "--source", source, "--to-tag", "v1"]).ok();
    // An instant between the two runs, in the server's clock (DATEEXECUTED is its now()).
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let instant = t.sql(a, "SELECT to_char(now(), 'YYYY-MM-DD HH24:MI:SS')");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    liquibase(&t, &dir, root, a, &["update"]);
    t.pgplane(&["migrate", "up", "--url", &b_url, "--source", source]).ok();
    same(&t, a, b, "after update");

    liquibase(&t, &dir, root, a, &["rollback-to-date", "--date", &instant]);
    let dry = pgplane_rollback(&t, &b_url, source, &["--to-date", &instant, "--dry-run"]).ok();
    assert!(dry.stdout.contains("would roll back 18"), "{}", dry.stdout);
    assert!(dry.stdout.contains("DROP FUNCTION ledger_sum()"), "{}", dry.stdout);
    assert_eq!(t.sql(b, "SELECT count(*) FROM databasechangelog"), "25", "--dry-run changed the ledger");
    pgplane_rollback(&t, &b_url, source, &["--to-date", &instant.replace(' ', "T")]).ok();
    same(&t, a, b, "after rollback-to-date");
    assert_eq!(ids(&t, b), "auto-1,auto-2,auto-3,auto-4,auto-5,auto-6,tag-v1");
}

const MIXED: &str = "databaseChangeLog:
  - changeSet:
      id: 1
      author: ann
      changes:
        - createTable: {tableName: a, columns: [{column: {name: id, type: int}}]}
  - changeSet:
      id: 2
      author: ann
      changes:
        - sql: {sql: CREATE TABLE b (id int)}
  - changeSet:
      id: 3
      author: ann
      changes:
        - insert: {tableName: a, columns: [{column: {name: id, valueNumeric: 1}}]}
  - changeSet:
      id: 4
      author: ann
      changes:
        - createIndex: {tableName: a, indexName: a_id, columns: [{column: {name: id}}]}
";

/// A changeset with neither a rollback nor an automatic inverse stops the whole rollback
/// before anything runs, naming each such changeset and its line.
#[test]
fn a_changeset_without_rollback_refuses_the_whole_rollback() {
    let t = T::new("rb_refuse");
    let url = t.database("rb_refuse_db");
    t.write("model/changelog.yaml", MIXED);
    let src = "model/changelog.yaml";
    t.pgplane(&["migrate", "up", "--url", &url, "--source", src]).ok();
    let before = (dump(&t, "rb_refuse_db"), ledger(&t, "rb_refuse_db"));

    let r = pgplane_rollback(&t, &url, src, &["--count", "4"]).fails();
    assert!(
        r.stdout.contains("model/changelog.yaml:7: changeset changelog.yaml::2::ann cannot be rolled back"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("model/changelog.yaml:12: changeset changelog.yaml::3::ann cannot be rolled back"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("Liquibase has no automatic rollback for insert"), "{}", r.stdout);
    assert!(r.stdout.contains("nothing was rolled back") && r.stdout.contains("<rollback>"), "{}", r.stdout);
    assert_eq!((dump(&t, "rb_refuse_db"), ledger(&t, "rb_refuse_db")), before, "a refused rollback changed something");
    // --json says the same.
    let j = pgplane_rollback(&t, &url, src, &["--count", "4", "--json"]).fails().json();
    assert_eq!(j["modules"][0]["targets"][0]["refused"].as_array().unwrap().len(), 2, "{j}");

    // What can be undone can still be undone.
    pgplane_rollback(&t, &url, src, &["--count", "1"]).ok();
    assert_eq!(t.sql("rb_refuse_db", "SELECT to_regclass('a_id') IS NULL"), "t");
    assert_eq!(ids(&t, "rb_refuse_db"), "1,2,3");
}

/// A change the run may not do inside a `<rollback>` (an `executeCommand` without
/// permission) never blocks `update`; only a rollback that would run it is refused, and
/// with the permission it runs.
#[test]
fn an_unsupported_change_in_a_rollback_blocks_only_that_rollback() {
    let t = T::new("rb_unsup");
    let dir = t.dir.join("model");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("changelog.xml"),
        r#"<?xml version="1.0" encoding="UTF-8"?>
<databaseChangeLog xmlns="http://www.liquibase.org/xml/ns/dbchangelog"
    xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
    xsi:schemaLocation="http://www.liquibase.org/xml/ns/dbchangelog http://www.liquibase.org/xml/ns/dbchangelog/dbchangelog-4.28.xsd">
    <changeSet id="1" author="ann">
        <createTable tableName="a"><column name="id" type="int"/></createTable>
        <rollback>
            <executeCommand executable="/bin/true"/>
            <dropTable tableName="a"/>
        </rollback>
    </changeSet>
    <changeSet id="2" author="ann">
        <createTable tableName="b"><column name="id" type="int"/></createTable>
    </changeSet>
</databaseChangeLog>
"#,
    )
    .unwrap();
    let url = t.database("rb_unsup_db");
    t.database("rb_unsup_lb");
    let src = dir.join("changelog.xml");
    let src = src.to_str().unwrap();
    // Both tools update with it.
    t.pgplane(&["migrate", "up", "--url", &url, "--source", src]).ok();
    liquibase(&t, &dir, "changelog.xml", "rb_unsup_lb", &["update"]);
    assert_eq!(ledger(&t, "rb_unsup_db"), ledger(&t, "rb_unsup_lb"));
    // Rolling back the other changeset is fine; this one is refused by file and line.
    pgplane_rollback(&t, &url, src, &["--count", "1"]).ok();
    let r = pgplane_rollback(&t, &url, src, &["--count", "1"]).fails();
    assert!(
        r.stdout.contains("changelog.xml:5: changeset changelog.xml::1::ann cannot be rolled back here"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("executeCommand") && r.stdout.contains("--allow-execute-command"), "{}", r.stdout);
    assert_eq!(ids(&t, "rb_unsup_db"), "1");
    assert_eq!(t.sql("rb_unsup_db", "SELECT to_regclass('a') IS NOT NULL"), "t");
    // Allowed, the program runs in its turn and the rest of the rollback with it.
    pgplane_rollback(&t, &url, src, &["--count", "1", "--allow-execute-command"]).ok();
    assert_eq!(ids(&t, "rb_unsup_db"), "");
    assert_eq!(t.sql("rb_unsup_db", "SELECT to_regclass('a') IS NULL"), "t");
}

/// A rollback statement that fails keeps the changesets rolled back before it; its own
/// transaction is undone; the report and `migrate status` say exactly that.
#[test]
fn a_failing_rollback_keeps_what_it_did_and_status_tells() {
    let t = T::new("rb_fail");
    let url = t.database("rb_fail_db");
    t.write(
        "model/changelog.sql",
        "--liquibase formatted sql\n\n--changeset ann:1\nCREATE TABLE a (id int);\n--rollback DROP TABLE a;\n\n\
         --changeset ann:2\nCREATE TABLE b (id int);\n--rollback DROP TABLE b;\n--rollback DROP TABLE not_there;\n\n\
         --changeset ann:3\nCREATE TABLE c (id int);\n--rollback DROP TABLE c;\n",
    );
    let src = ["--url", url.as_str(), "--source", "model/changelog.sql"];
    t.pgplane(&["migrate", "up", src[0], src[1], src[2], src[3]]).ok();
    let r = pgplane_rollback(&t, &url, "model/changelog.sql", &["--count", "3"]).fails();
    assert!(r.stdout.contains("rolled back      changelog.sql::3::ann"), "{}", r.stdout);
    assert!(r.stdout.contains("not rolled back  changelog.sql::2::ann"), "{}", r.stdout);
    assert!(r.stdout.contains("table \"not_there\" does not exist"), "{}", r.stdout);
    assert!(r.stdout.contains("changelog.sql:7 (rollback statement 2 of the changeset"), "{}", r.stdout);
    assert!(r.stdout.contains("FAILED after rolling back 1"), "{}", r.stdout);
    // b's DROP was undone with the failing statement; c is gone, its row too.
    assert_eq!(
        t.sql(
            "rb_fail_db",
            "SELECT to_regclass('a') IS NOT NULL, to_regclass('b') IS NOT NULL, to_regclass('c') IS NULL"
        ),
        "t|t|t"
    );
    assert_eq!(ids(&t, "rb_fail_db"), "1,2");
    let st = t.pgplane(&["migrate", "status", src[0], src[1], src[2], src[3], "--json"]).ok().json();
    let states: Vec<&str> = st["modules"][0]["targets"][0]["migrations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["applied", "applied", "pending"], "{st}");
}

/// Every refusal of the command line changes nothing and says what to do.
#[test]
fn bad_rollback_and_up_to_requests_are_refused_and_change_nothing() {
    let t = T::new("rb_bad");
    let url = t.database("rb_bad_db");
    t.write("model/changelog.yaml", MIXED);
    t.write("db/V1__x.sql", "CREATE TABLE x (id int);\n");
    let lb = "model/changelog.yaml";
    // Exit 1 for a refused request, 2 for a command line clap rejects.
    let refused = |args: &[&str], needle: &str| {
        let r = t.pgplane(args);
        let text = format!("{}{}", r.stdout, r.stderr);
        assert!(r.code == 1 || r.code == 2, "{args:?} exited {}: {text}", r.code);
        assert!(text.contains(needle), "{args:?}: {text}");
    };
    refused(
        &["migrate", "up", "--url", &url, "--source", lb, "--to-tag", "nope"],
        "tag \"nope\" is not in the changelog",
    );
    assert_eq!(t.sql("rb_bad_db", "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"), "0");
    refused(&["migrate", "up", "--url", &url, "--source", lb, "--target", "2"], "use --to-tag TAG");
    refused(&["migrate", "up", "--url", &url, "--source", "db", "--to-tag", "v1"], "SQL folder, which has no tags");
    refused(&["migrate", "up", "--url", &url, "--source", "db", "--target", "7"], "no migration has version 7");
    refused(&["migrate", "up", "--url", &url, "--source", "db", "--target", "x"], "--target: version \"x\"");
    assert_eq!(t.sql("rb_bad_db", "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"), "0");

    refused(
        &["migrate", "rollback", "--url", &url, "--source", lb, "--to-tag", "v1"],
        "tag \"v1\" is not in the ledger",
    );
    t.pgplane(&["migrate", "rollback", "--url", &url, "--source", lb, "--count", "3"]).ok();
    assert_eq!(t.sql("rb_bad_db", "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"), "0");
    t.pgplane(&["migrate", "up", "--url", &url, "--source", lb]).ok();
    t.pgplane(&["migrate", "up", "--url", &url, "--source", "db", "--history-table", "h"]).ok();
    let before = (dump(&t, "rb_bad_db"), ledger(&t, "rb_bad_db"));
    refused(
        &["migrate", "rollback", "--url", &url, "--source", lb, "--to-tag", "nope"],
        "tag \"nope\" is not in the ledger",
    );
    refused(
        &["migrate", "rollback", "--url", &url, "--source", lb, "--to-date", "yesterday"],
        "--to-date: \"yesterday\" is not a date",
    );
    refused(&["migrate", "rollback", "--url", &url, "--source", lb], "--count <N>");
    refused(
        &["migrate", "rollback", "--url", &url, "--source", lb, "--count", "1", "--to-tag", "x"],
        "cannot be used with",
    );
    refused(
        &["migrate", "rollback", "--url", &url, "--source", "db", "--history-table", "h", "--count", "1"],
        "SQL folders have no down migrations",
    );
    let f = t.manifest("modules:\n  - name: shop\n    migrations: model/changelog.yaml\n");
    refused(&["migrate", "rollback", "-f", f.to_str().unwrap(), "--count", "1"], "needs --module M");
    assert_eq!((dump(&t, "rb_bad_db"), ledger(&t, "rb_bad_db")), before, "a refused request changed something");
}

/// SQL folders: `up --target VERSION` applies up to and including VERSION.
#[test]
fn sql_folder_up_to_a_target_version() {
    let t = T::new("rb_target");
    let url = t.database("rb_target_db");
    t.write("db/V1__a.sql", "CREATE TABLE a (id int);\n");
    t.write("db/V2__b.sql", "CREATE TABLE b (id int);\n");
    t.write("db/V2.1__c.sql", "CREATE TABLE c (id int);\n");
    t.write("db/V3__d.sql", "CREATE TABLE d (id int);\n");
    t.write("db/R__v.sql", "CREATE OR REPLACE VIEW v AS SELECT id FROM a;\n");
    let up = |extra: &[&str]| {
        let mut args = vec!["migrate", "up", "--url", url.as_str(), "--source", "db", "--json"];
        args.extend_from_slice(extra);
        t.pgplane(&args).ok().json()
    };
    let r = up(&["--target", "2.0"]);
    let target = &r["modules"][0]["targets"][0];
    assert_eq!(target["applied"], serde_json::json!(["V1__a.sql", "V2__b.sql", "R__v.sql"]), "{r}");
    let states: Vec<&str> =
        target["migrations"].as_array().unwrap().iter().map(|m| m["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["pending", "pending", "after_target", "after_target", "pending"]);
    assert_eq!(
        t.sql(
            "rb_target_db",
            "SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_tables WHERE schemaname = 'public'"
        ),
        "a,b,pgplane_schema_history"
    );
    let st = t.pgplane(&["migrate", "status", "--url", &url, "--source", "db"]).ok();
    assert!(st.stdout.contains("pending   V3__d.sql") && st.stdout.contains("2 pending"), "{}", st.stdout);
    // Behind the ledger: nothing runs, and a note says so.
    let r = t.pgplane(&["migrate", "up", "--url", &url, "--source", "db", "--target", "1"]).ok();
    assert!(r.stdout.contains("the ledger is already past version 1: 1 applied"), "{}", r.stdout);
    assert!(r.stdout.contains("up to date"), "{}", r.stdout);
    let r = up(&[]);
    assert_eq!(r["modules"][0]["targets"][0]["applied"], serde_json::json!(["V2.1__c.sql", "V3__d.sql"]));
}

/// A module of the manifest, per tenant, rolled back as the tenant's owner role in its schema.
#[test]
fn a_module_is_rolled_back_per_tenant_as_its_owner() {
    let t = T::new("rb_mod");
    t.write(
        "model/changelog.yaml",
        "databaseChangeLog:
  - changeSet:
      id: 1
      author: ann
      changes:
        - createTable: {tableName: item, columns: [{column: {name: id, type: int}}]}
  - changeSet:
      id: 2
      author: ann
      changes:
        - tagDatabase: {tag: v1}
  - changeSet:
      id: 3
      author: ann
      changes:
        - addColumn: {tableName: item, columns: [{column: {name: price, type: 'numeric(10,2)', defaultValueNumeric: 0}}]}
        - createIndex: {tableName: item, indexName: item_price, columns: [{column: {name: price}}]}
",
    );
    let f = t.manifest(
        "modules:\n  - name: shop\n    storage: schema-per-tenant\n    migrations: model/changelog.yaml\ntenants:\n  - {name: acme, modules: [shop]}\n  - {name: globex, modules: [shop]}\n",
    );
    let f = f.to_str().unwrap();
    t.pgplane(&["apply", "-f", f, "--yes"]).ok();
    let columns = |schema: &str| {
        t.sql(
            "rb_mod_shop",
            &format!(
                "SELECT string_agg(column_name, ',' ORDER BY ordinal_position) FROM information_schema.columns
                  WHERE table_schema = '{schema}' AND table_name = 'item'"
            ),
        )
    };
    assert_eq!(columns("acme_shop"), "id,price");

    let r = t.pgplane(&["migrate", "rollback", "-f", f, "--module", "shop", "--tenant", "acme", "--to-tag", "v1"]).ok();
    assert!(r.stdout.contains("shop/acme") && r.stdout.contains("rolled back 2"), "{}", r.stdout);
    assert_eq!(columns("acme_shop"), "id");
    assert_eq!(columns("globex_shop"), "id,price");
    assert_eq!(
        t.sql("rb_mod_shop", "SELECT string_agg(id, ',' ORDER BY orderexecuted) FROM acme_shop.databasechangelog"),
        "1"
    );
    // Every tenant, at once; then forward again to the tag.
    t.pgplane(&["migrate", "rollback", "-f", f, "--module", "shop", "--count", "1"]).ok();
    assert_eq!(t.sql("rb_mod_shop", "SELECT count(*) FROM pg_tables WHERE tablename = 'item'"), "1");
    t.pgplane(&["migrate", "up", "-f", f, "--module", "shop", "--to-tag", "v1"]).ok();
    assert_eq!(
        t.sql("rb_mod_shop", "SELECT string_agg(schemaname || '.' || tableowner, ',' ORDER BY 1) FROM pg_tables WHERE tablename = 'item'"),
        "acme_shop.rb_mod_acme_shop,globex_shop.rb_mod_globex_shop"
    );
    assert_eq!(columns("globex_shop"), "id");
}

/// After a failed `up`, its own report and `migrate status` show what did apply.
#[test]
fn after_a_failed_up_the_reports_show_what_applied() {
    let t = T::new("rb_honest");
    let url = t.database("rb_honest_db");
    t.write(
        "model/changelog.sql",
        "--liquibase formatted sql\n\n--changeset ann:1\nCREATE TABLE a (id int);\n\n--changeset ann:2\nCREATE TABLE b (id int);\n\n\
         --changeset ann:3\nINSERT INTO nowhere VALUES (1);\n\n--changeset ann:4\nCREATE TABLE d (id int);\n",
    );
    let src = ["--url", url.as_str(), "--source", "model/changelog.sql"];
    let states = |j: &serde_json::Value| -> Vec<String> {
        j["modules"][0]["targets"][0]["migrations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["state"].as_str().unwrap().to_string())
            .collect()
    };
    // The failing run's own report: what it applied before the failure is `applied`.
    let j = t.pgplane(&["migrate", "up", src[0], src[1], src[2], src[3], "--json"]).fails().json();
    assert_eq!(states(&j), ["applied", "applied", "pending", "pending"], "{j}");
    assert_eq!(j["modules"][0]["targets"][0]["migrations"][0]["note"], "applied by this run", "{j}");
    // Text: the report's lines (not only the live lines) say so too.
    let up = t.pgplane(&["migrate", "up", src[0], src[1], src[2], src[3]]).fails();
    assert!(up.stdout.contains("  retry     changelog.sql::3::ann"), "{}", up.stdout);
    assert!(up.stdout.contains("FAILED after applying 0"), "{}", up.stdout);
    // Formatted SQL without --rollback cannot be rolled back; status is unchanged.
    t.pgplane(&["migrate", "rollback", src[0], src[1], src[2], src[3], "--count", "1"]).fails();
    let st = t.pgplane(&["migrate", "status", src[0], src[1], src[2], src[3]]).ok();
    for line in [
        "applied   changelog.sql::1::ann",
        "applied   changelog.sql::2::ann",
        "retry     changelog.sql::3::ann",
        "pending   changelog.sql::4::ann",
    ] {
        assert!(st.stdout.contains(line), "{line}: {}", st.stdout);
    }
}

/// A changeset its precondition marked ran is rolled back all the same, as Liquibase does
/// (its inverse drops a table the changeset never created); the report says so.
#[test]
fn a_mark_ran_changeset_is_rolled_back_like_liquibase_does() {
    let t = T::new("rb_markran");
    let dir = t.dir.join("model");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("changelog.yaml"),
        "databaseChangeLog:
  - changeSet:
      id: 1
      author: ann
      preConditions:
        - onFail: MARK_RAN
        - not:
            - tableExists: {tableName: legacy}
      changes:
        - createTable: {tableName: legacy, columns: [{column: {name: id, type: int}}]}
  - changeSet:
      id: 2
      author: ann
      changes:
        - createTable: {tableName: fresh, columns: [{column: {name: id, type: int}}]}
",
    )
    .unwrap();
    let (a, b) = ("rb_markran_liquibase", "rb_markran_pgplane");
    t.database(a);
    let b_url = t.database(b);
    let src = dir.join("changelog.yaml");
    let src = src.to_str().unwrap();
    for db in [a, b] {
        t.sql(db, "CREATE TABLE legacy (id int, note text)");
    }
    liquibase(&t, &dir, "changelog.yaml", a, &["update"]);
    t.pgplane(&["migrate", "up", "--url", &b_url, "--source", src]).ok();
    assert_eq!(
        t.sql(b, "SELECT string_agg(exectype, ',' ORDER BY orderexecuted) FROM databasechangelog"),
        "MARK_RAN,EXECUTED"
    );
    liquibase(&t, &dir, "changelog.yaml", a, &["rollback-count", "--count", "2"]);
    let r = pgplane_rollback(&t, &b_url, src, &["--count", "2"]).ok();
    assert!(r.stdout.contains("changelog.yaml::1::ann was marked ran"), "{}", r.stdout);
    same(&t, a, b, "after rolling back a MARK_RAN changeset");
    assert_eq!(t.sql(b, "SELECT to_regclass('legacy') IS NULL"), "t");
}
