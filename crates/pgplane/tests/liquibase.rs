//! Interoperability with real Liquibase (4.28, the npm package `liquibase`; `scripts/test`
//! installs it and sets LIQUIBASE). The same changelogs applied by Liquibase into one
//! database and by pgplane into another give the same schema and data; each tool then
//! continues the other's database without error and without running anything again.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{lines, liquibase_bin, T};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../pgplane-core/tests/fixtures/liquibase")
}

/// Runs real Liquibase on `db` with `changelog` (relative to `search_path`).
fn liquibase(t: &T, search_path: &Path, changelog: &str, db: &str, args: &[&str]) -> String {
    let url = &t.server.url; // postgresql://user:password@host:port/db
    let rest = url.strip_prefix("postgresql://").unwrap();
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
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "liquibase {args:?} failed on {db}:\nstdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

const LEDGER_TABLES: [&str; 3] = ["databasechangelog", "databasechangeloglock", "pgplane_changelog_failures"];

/// `pg_dump` of a database without the ledger tables: schema, then data.
fn dump(t: &T, db: &str) -> String {
    let mut args = vec![common::with_db(&t.server.url, db), "--no-owner".into(), "--no-privileges".into()];
    for table in LEDGER_TABLES {
        args.push(format!("--exclude-table=public.{table}"));
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
    format!("{}\n-- data --\n{}", run("--schema-only"), mask_now(&run("--data-only")))
}

/// The ledger as both tools must agree on it (times and deployment ids aside).
fn ledger(t: &T, db: &str) -> Vec<String> {
    lines(&t.sql(
        db,
        "SELECT concat_ws(' | ', orderexecuted, filename, id, author, md5sum, description, comments, exectype, contexts, labels, tag)
           FROM databasechangelog ORDER BY orderexecuted",
    ))
}

/// Changesets `liquibase status --verbose` lists as not applied (`file::id::author`).
fn not_applied(status: &str) -> Vec<String> {
    let mut v: Vec<String> =
        status.lines().map(str::trim).filter(|l| l.contains("::") && !l.contains(' ')).map(str::to_string).collect();
    v.sort();
    v
}

/// runAlways changesets per pgplane's status: they are "pending" for Liquibase forever.
fn always_names(t: &T, url: &str, source: &str, extra: &[&str]) -> Vec<String> {
    let mut args = vec!["migrate", "status", "--url", url, "--source", source, "--json"];
    args.extend_from_slice(extra);
    let st = t.pgplane(&args).ok().json();
    let mut v: Vec<String> = st["modules"][0]["targets"][0]["migrations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["state"] == "always")
        .map(|m| m["name"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

/// Masks timestamps with fractional seconds (values of now() at run time).
fn mask_now(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        // YYYY-MM-DD HH:MM:SS.f+
        let looks = i + 20 < b.len()
            && b[i..i + 4].iter().all(u8::is_ascii_digit)
            && b[i + 4] == b'-'
            && b[i + 10] == b' '
            && b[i + 13] == b':'
            && b[i + 19] == b'.';
        if looks {
            out.push_str("<now>");
            i += 20;
            while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'+') {
                i += 1;
            }
        } else {
            let ch = text[i..].chars().next().unwrap();
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

fn root_changelog(dir: &Path) -> String {
    ["changelog.xml", "changelog.yaml", "changelog.yml", "changelog.json", "changelog.sql"]
        .into_iter()
        .find(|f| dir.join(f).exists())
        .unwrap_or_else(|| panic!("no changelog in {}", dir.display()))
        .to_string()
}

fn both_ways(name: &str) {
    let t = T::new(&format!("lb_{name}"));
    let dir = fixtures().join(name);
    let root = root_changelog(&dir);
    let by_lb = format!("lb_{name}_liquibase");
    let by_pg = format!("lb_{name}_pgplane");
    t.database(&by_lb);
    let pg_url = t.database(&by_pg);
    let source = dir.join(&root);
    let source = source.to_str().unwrap();

    liquibase(&t, &dir, &root, &by_lb, &["update"]);
    t.pgplane(&["migrate", "up", "--url", &pg_url, "--source", source]).ok();

    // Same schema and data; same ledger rows.
    assert_eq!(dump(&t, &by_pg), dump(&t, &by_lb), "{name}: pg_dump of pgplane's database differs from Liquibase's");
    assert_eq!(ledger(&t, &by_pg), ledger(&t, &by_lb), "{name}: ledger rows differ");
    let rows = ledger(&t, &by_pg);
    assert!(!rows.is_empty());

    // Liquibase continues pgplane's database: validate and status accept it, update runs nothing.
    liquibase(&t, &dir, &root, &by_pg, &["validate"]);
    let status = liquibase(&t, &dir, &root, &by_pg, &["status", "--verbose"]);
    assert_eq!(
        not_applied(&status),
        always_names(&t, &pg_url, source, &[]),
        "{name}: liquibase status on pgplane's database lists more than the runAlways changesets: {status}"
    );
    let identities = |db: &str| {
        // DISTINCT: Liquibase itself adds a MARK_RAN row each time a runAlways changeset's
        // precondition marks it ran.
        lines(&t.sql(
            db,
            "SELECT DISTINCT concat_ws(' | ', filename, id, author, md5sum) FROM databasechangelog ORDER BY 1",
        ))
    };
    let before = identities(&by_pg);
    let reran_before = t.sql(&by_pg, "SELECT count(*) FROM databasechangelog WHERE exectype = 'RERAN'");
    liquibase(&t, &dir, &root, &by_pg, &["update"]);
    // Only runAlways changesets run again.
    assert_eq!(identities(&by_pg), before, "{name}: Liquibase added or changed ledger rows of pgplane's run");
    let always_count = always_names(&t, &pg_url, source, &[]).len();
    let reran_after: usize =
        t.sql(&by_pg, "SELECT count(*) FROM databasechangelog WHERE exectype = 'RERAN'").parse().unwrap();
    assert!(
        reran_after <= always_count.max(reran_before.parse().unwrap()),
        "{name}: Liquibase re-ran more than the runAlways changesets"
    );

    // pgplane continues Liquibase's database: valid, nothing pending, up applies nothing.
    let lb_url = common::with_db(&t.server.url, &by_lb);
    t.pgplane(&["migrate", "validate", "--url", &lb_url, "--source", source]).ok();
    let up = t.pgplane(&["migrate", "up", "--url", &lb_url, "--source", source, "--json"]).ok().json();
    let target = &up["modules"][0]["targets"][0];
    let ran: Vec<&str> = target["applied"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    // runAlways changesets run on every update, by either tool.
    let always: Vec<&str> = target["migrations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["state"] == "always")
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(ran, always, "{name}: pgplane re-ran changesets Liquibase had run");
}

#[test]
fn yaml_changelog_both_ways() {
    both_ways("yaml");
}

#[test]
fn xml_changelog_both_ways() {
    both_ways("xml");
}

#[test]
fn json_changelog_both_ways() {
    both_ways("json");
}

#[test]
fn formatted_sql_changelog_both_ways() {
    both_ways("sql");
}

#[test]
fn mixed_includes_both_ways() {
    both_ways("mixed");
}

/// A changelog that grows: part 1 by one tool, part 2 by the other, both orders.
#[test]
fn each_tool_continues_a_changelog_the_other_started() {
    let t = T::new("lb_cont");
    let dir = t.dir.join("model");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("part1.yaml"),
        "databaseChangeLog:
  - changeSet:
      id: 1
      author: ann
      changes:
        - createTable:
            tableName: account
            columns:
              - column: {name: id, type: bigint, autoIncrement: true, constraints: {primaryKey: true}}
              - column: {name: email, type: varchar(200), constraints: {nullable: false, unique: true}}
  - changeSet:
      id: 2
      author: ann
      changes:
        - addColumn:
            tableName: account
            columns:
              - column: {name: created_at, type: timestamp, defaultValueComputed: now()}
",
    )
    .unwrap();
    std::fs::write(
        dir.join("part2.yaml"),
        "databaseChangeLog:
  - changeSet:
      id: 3
      author: bob
      changes:
        - createIndex:
            tableName: account
            indexName: account_created_idx
            columns:
              - column: {name: created_at}
        - setTableRemarks: {tableName: account, remarks: People who sign in}
",
    )
    .unwrap();
    let write_root = |parts: &[&str]| {
        let mut s = String::from("databaseChangeLog:\n");
        for p in parts {
            s.push_str(&format!("  - include: {{file: {p}, relativeToChangelogFile: true}}\n"));
        }
        std::fs::write(dir.join("changelog.yaml"), s).unwrap();
    };
    let source = dir.join("changelog.yaml");
    let source = source.to_str().unwrap();

    // Liquibase first, pgplane second.
    let a = "lb_cont_lb_first";
    let a_url = t.database(a);
    write_root(&["part1.yaml"]);
    liquibase(&t, &dir, "changelog.yaml", a, &["update"]);
    write_root(&["part1.yaml", "part2.yaml"]);
    let up = t.pgplane(&["migrate", "up", "--url", &a_url, "--source", source, "--json"]).ok().json();
    assert_eq!(up["modules"][0]["targets"][0]["applied"].as_array().unwrap().len(), 1, "{up}");

    // pgplane first, Liquibase second.
    let b = "lb_cont_pg_first";
    let b_url = t.database(b);
    write_root(&["part1.yaml"]);
    t.pgplane(&["migrate", "up", "--url", &b_url, "--source", source]).ok();
    write_root(&["part1.yaml", "part2.yaml"]);
    liquibase(&t, &dir, "changelog.yaml", b, &["validate"]);
    liquibase(&t, &dir, "changelog.yaml", b, &["update"]);
    assert_eq!(t.sql(b, "SELECT count(*) FROM databasechangelog"), "3");

    assert_eq!(dump(&t, a), dump(&t, b));
    assert_eq!(ledger(&t, a), ledger(&t, b));
}

/// A database whose ledger tables were renamed (e.g. ddm_db_changelog) works with both.
#[test]
fn renamed_ledger_tables_are_shared_with_liquibase() {
    let t = T::new("lb_renamed");
    let dir = fixtures().join("yaml");
    let root = root_changelog(&dir);
    let db = "lb_renamed_db";
    let url = t.database(db);
    let source = dir.join(&root);
    t.pgplane(&[
        "migrate",
        "up",
        "--url",
        &url,
        "--source",
        source.to_str().unwrap(),
        "--changelog-table",
        "ddm_db_changelog",
        "--changelog-lock-table",
        "ddm_db_changelog_lock",
    ])
    .ok();
    assert_eq!(
        t.sql(db, "SELECT to_regclass('databasechangelog') IS NULL, to_regclass('ddm_db_changelog') IS NOT NULL"),
        "t|t"
    );
    let status = liquibase(
        &t,
        &dir,
        &root,
        db,
        &[
            "--database-changelog-table-name=ddm_db_changelog",
            "--database-changelog-lock-table-name=ddm_db_changelog_lock",
            "status",
            "--verbose",
        ],
    );
    let always = always_names(&t, &url, source.to_str().unwrap(), &["--changelog-table", "ddm_db_changelog"]);
    assert_eq!(not_applied(&status), always, "{status}");
    // pgplane released its lock row; Liquibase took and released it again.
    assert_eq!(t.sql(db, "SELECT locked FROM ddm_db_changelog_lock WHERE id = 1"), "f");
}

#[test]
fn edge_cases_both_ways() {
    both_ways("edge");
}

/// A loadData whose second INSERT of rows fails: its INSERTs go out pipelined, yet the
/// failure names the INSERT that failed (not the last one sent), the changeset's
/// transaction leaves no row, and the ledger keeps only what applied.
#[test]
fn a_failing_load_data_statement_is_named_and_rolls_its_changeset_back() {
    let t = T::new("lb_load_fail");
    let mut csv = String::from("id,name\n");
    for i in 1..=160 {
        // Row 80 repeats id 5: the second INSERT (of rows in fifties) fails.
        let id = if i == 80 { 5 } else { i };
        csv.push_str(&format!("{id},row-{i:03}\n"));
    }
    std::fs::write(t.dir.join("items.csv"), csv).unwrap();
    std::fs::write(
        t.dir.join("changelog.yaml"),
        "databaseChangeLog:
  - changeSet:
      id: c1
      author: t
      changes:
        - createTable:
            tableName: items
            columns:
              - column: {name: id, type: int, constraints: {primaryKey: true}}
              - column: {name: name, type: varchar(20)}
  - changeSet:
      id: c2
      author: t
      changes:
        - loadData:
            tableName: items
            file: items.csv
            relativeToChangelogFile: true
",
    )
    .unwrap();
    let url = t.database("lb_load_fail");
    let source = t.dir.join("changelog.yaml");
    let run = t.pgplane(&["migrate", "up", "--url", &url, "--source", source.to_str().unwrap(), "--json"]);
    assert_ne!(run.code, 0, "{run:?}");
    let v = run.json();
    let failure = &v["modules"][0]["targets"][0]["failure"];
    assert_eq!(failure["migration"], "changelog.yaml::c2::t", "{failure}");
    assert_eq!(failure["sqlstate"], "23505", "{failure}");
    assert!(failure["position"].as_str().unwrap().contains("statement 2 of the changeset"), "{failure}");
    let statement = failure["statement"].as_str().unwrap();
    assert!(
        statement.starts_with("INSERT INTO public.items")
            && !statement.contains("row-001")
            && !statement.contains("row-15"),
        "the failing INSERT, not the first or the last one sent: {statement}"
    );
    assert_eq!(t.sql("lb_load_fail", "SELECT count(*) FROM items"), "0");
    assert_eq!(t.sql("lb_load_fail", "SELECT string_agg(id, ',' ORDER BY orderexecuted) FROM databasechangelog"), "c1");
}
