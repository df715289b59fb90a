//! Liquibase changelogs against real Liquibase 4.28: every fixture changeset's filename,
//! checksum and description must equal what Liquibase wrote to DATABASECHANGELOG
//! (`expected.tsv`, produced by `scripts/liquibase-oracle`), and the SQL pgplane generates
//! is snapshotted beside Liquibase's own `update-sql` output (`liquibase-update.sql`) for
//! review. Update snapshots with `UPDATE_EXPECT=1 cargo test -p pgplane-core --test liquibase`.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use expect_test::{expect, expect_file, Expect};
use pgplane_core::liquibase::{self, ChangeSet, FsLoader, Loader};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/liquibase").join(name)
}

fn root_changelog(dir: &Path) -> String {
    ["changelog.xml", "changelog.yaml", "changelog.json", "changelog.sql"]
        .into_iter()
        .find(|f| dir.join(f).exists())
        .unwrap()
        .to_string()
}

fn load(name: &str) -> Vec<ChangeSet> {
    let dir = fixture(name);
    let loader = FsLoader { root: dir.clone() };
    match liquibase::load(&root_changelog(&dir), &loader) {
        Ok(c) => c.changesets,
        Err(e) => panic!("{name}: {e}"),
    }
}

/// Compares with the oracle's rows; returns how many changesets matched.
fn check_oracle(name: &str) -> usize {
    let sets = load(name);
    let expected = std::fs::read_to_string(fixture(name).join("expected.tsv")).unwrap();
    let ran: Vec<&ChangeSet> = sets.iter().filter(|c| c.applies_to_postgresql()).collect();
    let mut problems = Vec::new();
    let rows: Vec<Vec<&str>> = expected.lines().map(|l| l.split('\t').collect()).collect();
    if rows.len() != ran.len() {
        problems.push(format!("{} changesets for PostgreSQL, Liquibase ran {}", ran.len(), rows.len()));
    }
    for (cs, row) in ran.iter().zip(&rows) {
        let got = [cs.filename.as_str(), &cs.id, &cs.author, &cs.checksum, &cs.description()];
        for (what, (g, e)) in ["filename", "id", "author", "md5sum", "description"].iter().zip(got.iter().zip(row)) {
            if g != e {
                problems.push(format!("{}::{}: {what}: pgplane {g:?}, Liquibase {e:?}", cs.filename, cs.id));
            }
        }
    }
    assert!(problems.is_empty(), "{name}:\n{}", problems.join("\n"));
    rows.len()
}

#[test]
fn checksums_filenames_and_descriptions_equal_liquibase() {
    let total: usize = ["yaml", "xml", "json", "sql", "mixed", "edge"].iter().map(|f| check_oracle(f)).sum();
    assert_eq!(total, 41);
}

fn sql_text(name: &str, schema: Option<&str>) -> String {
    let mut out = String::new();
    for cs in load(name) {
        out.push_str(&format!("-- Changeset {}::{}::{}\n", cs.filename, cs.id, cs.author));
        if !cs.applies_to_postgresql() {
            out.push_str("-- (dbms excludes postgresql: skipped)\n\n");
            continue;
        }
        for s in cs.sql(schema) {
            out.push_str(&s.sql);
            out.push_str(";\n");
        }
        out.push('\n');
    }
    out
}

#[test]
fn generated_sql_snapshots() {
    for f in ["yaml", "xml", "json", "sql", "mixed", "edge"] {
        expect_file![fixture(f).join("pgplane.sql")].assert_eq(&sql_text(f, Some("public")));
    }
}

struct Mem(Vec<(&'static str, &'static str)>);

impl Loader for Mem {
    fn read(&self, path: &str) -> std::io::Result<String> {
        self.0.iter().find(|(p, _)| *p == path).map(|(_, s)| s.to_string()).ok_or(std::io::ErrorKind::NotFound.into())
    }
    fn list(&self, dir: &str) -> std::io::Result<Vec<String>> {
        Ok(self.0.iter().filter(|(p, _)| p.starts_with(&format!("{dir}/"))).map(|(p, _)| p.to_string()).collect())
    }
}

fn error(files: Vec<(&'static str, &'static str)>, expect: Expect) {
    let root = files[0].0;
    let e = liquibase::load(root, &Mem(files)).unwrap_err();
    expect.assert_eq(&e.to_string());
}

#[test]
fn errors_name_the_file_line_and_fix() {
    error(
        vec![(
            "c.xml",
            r#"<databaseChangeLog>
  <changeSet id="1" author="a">
    <createTrigger triggerName="t" tableName="x"/>
  </changeSet>
</databaseChangeLog>"#,
        )],
        expect!["c.xml:3: changeset 1 (author a): createTrigger is a Liquibase Pro change type; pgplane runs what open-source Liquibase runs (write it as an sql change)"],
    );
    error(
        vec![(
            "c.xml",
            r#"<databaseChangeLog>
  <changeSet id="1" author="a">
    <customChange class="com.example.Fix"/>
  </changeSet>
</databaseChangeLog>"#,
        )],
        expect!["c.xml:3: changeset 1 (author a): customChange runs the Java class com.example.Fix, which pgplane cannot run; write what it does as an sql change"],
    );
    error(
        vec![(
            "c.xml",
            "<databaseChangeLog>\n  <changeSet id=\"1\" author=\"a\">\n    <dropTable tableName=\"t\" purge=\"true\"/>\n  </changeSet>\n</databaseChangeLog>",
        )],
        expect!["c.xml:3: changeset 1 (author a): dropTable: attribute purge is not supported; remove it"],
    );
    error(
        vec![("c.sql", "--liquibase formatted sql\n\n--changeset a:1 runWith:psql\nSELECT 1;\n")],
        expect!["c.sql:3: changeset 1 (author a): runWith:psql hands the SQL to another program; pgplane runs SQL itself (remove runWith)"],
    );
    error(
        vec![("c.xml", "<databaseChangeLog>\n  <include file=\"missing.xml\"/>\n</databaseChangeLog>")],
        expect!["c.xml:2: cannot read missing.xml: entity not found; paths are relative to the search path"],
    );
    error(
        vec![(
            "c.xml",
            r#"<databaseChangeLog>
  <changeSet id="1" author="a">
    <alterSequence sequenceName="s" ordered="true"/>
  </changeSet>
</databaseChangeLog>"#,
        )],
        expect!["c.xml:3: changeset 1 (author a): alterSequence: attribute ordered: Liquibase writes ORDER/NOORDER, which PostgreSQL rejects"],
    );
}

/// YAML and JSON keys Liquibase ignores are ignored too, with a warning (nothing silently).
#[test]
fn unknown_yaml_keys_are_warned_about() {
    let files = vec![(
        "c.yaml",
        "databaseChangeLog:\n  - changeSet:\n      id: one\n      author: a\n      changes:\n        - dropTable:\n            tableName: t\n            purge: true\n",
    )];
    let c = liquibase::load("c.yaml", &Mem(files)).unwrap();
    assert_eq!(c.changesets.len(), 1);
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    assert!(c.warnings[0].contains("purge"), "{:?}", c.warnings);
}

#[test]
fn selection_and_checksum_acceptance() {
    let sets = load("xml");
    let shop3 = sets.iter().find(|c| c.id == "shop-3").unwrap();
    assert!(shop3.selected(&[], None));
    assert!(shop3.selected(&["test".into()], None));
    assert!(!shop3.selected(&["prod".into()], None));
    assert_eq!(shop3.contexts_column().as_deref(), Some("(dev, test)"));
    let shop4 = sets.iter().find(|c| c.id == "shop-4").unwrap();
    assert!(shop4.accepts_checksum("9:00000000000000000000000000000000"));
    assert!(shop4.accepts_checksum("9:ffffffffffffffffffffffffffffffff"), "ANY is listed");
    let shop1 = sets.iter().find(|c| c.id == "shop-1").unwrap();
    assert!(shop1.accepts_checksum(&shop1.checksum));
    assert!(!shop1.accepts_checksum("9:00000000000000000000000000000000"));
    assert!(shop1.selected(&[], Some("shop")));
    assert!(!shop1.selected(&[], Some("!shop")));
    let shop7 = sets.iter().find(|c| c.id == "shop-7").unwrap();
    assert_eq!(shop7.tag(), Some("v1.0"));
}

#[test]
fn default_schema_qualifies_unqualified_names_only() {
    let sets = load("json");
    let blog1 = &sets[0];
    let tenant: Vec<String> = blog1.sql(Some("tenant_a")).into_iter().map(|s| s.sql).collect();
    assert!(tenant[0].starts_with("CREATE TABLE tenant_a.post ("), "{}", tenant[0]);
    assert!(tenant[1].contains("REFERENCES tenant_a.post(id)"), "{}", tenant[1]);
    let bare: Vec<String> = blog1.sql(None).into_iter().map(|s| s.sql).collect();
    assert!(bare[0].starts_with("CREATE TABLE post ("), "{}", bare[0]);
    assert_eq!(blog1.sql(None).iter().map(|s| s.change_index).collect::<Vec<_>>(), vec![0, 1]);
}

/// Every type name Liquibase 4.28 knows (its registry, as written, in upper case, with one
/// and two parameters) and more written in the wild, against what real Liquibase makes of
/// them on PostgreSQL (`tests/fixtures/liquibase-types/expected.tsv`, written by
/// `scripts/liquibase-types`): the PostgreSQL type, the loadData type, or the error.
#[test]
fn types_map_as_liquibase_maps_them() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/liquibase-types/expected.tsv");
    let text = std::fs::read_to_string(path).unwrap();
    let mut wrong = Vec::new();
    let mut rows = 0;
    for line in text.lines() {
        let mut f = line.split('\t');
        let (input, want_sql, want_load) = (f.next().unwrap(), f.next().unwrap(), f.next().unwrap_or(""));
        rows += 1;
        let got = match liquibase::types::resolve(input) {
            Ok(t) => (t.sql, format!("{:?}", t.load).to_uppercase()),
            Err(e) => (format!("ERROR {}", e.0), String::new()),
        };
        let sql_ok = if let Some(kind) = want_sql.strip_prefix("ERROR ") {
            got.0.starts_with("ERROR") && !kind.is_empty()
        } else {
            got.0 == want_sql
        };
        if !sql_ok || (!want_sql.starts_with("ERROR") && got.1 != want_load) {
            wrong.push(format!("{input:?}: Liquibase {want_sql} / {want_load}, pgplane {} / {}", got.0, got.1));
        }
    }
    assert!(rows > 500, "the expected types are missing");
    assert!(wrong.is_empty(), "{} of {rows} types differ:\n{}", wrong.len(), wrong.join("\n"));
}
