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
    let loader = FsLoader { root: dir.clone(), allowed: None };
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
/// `scripts/liquibase-metadata`): the PostgreSQL type, the loadData type, or the error.
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

struct Files(Vec<(String, String)>);

impl Loader for Files {
    fn read(&self, path: &str) -> std::io::Result<String> {
        self.0.iter().find(|(p, _)| p == path).map(|(_, s)| s.clone()).ok_or(std::io::ErrorKind::NotFound.into())
    }
    fn list(&self, dir: &str) -> std::io::Result<Vec<String>> {
        Ok(self.0.iter().filter(|(p, _)| p.starts_with(&format!("{dir}/"))).map(|(p, _)| p.clone()).collect())
    }
}

/// A change of type `ty` with what it needs: (attributes, inner XML).
fn minimal_change(ty: &str) -> (&'static str, &'static str) {
    match ty {
        "addAutoIncrement" => (r#"tableName="t" columnName="id" columnDataType="int""#, ""),
        "addColumn" => (r#"tableName="t""#, r#"<column name="c" type="int"/>"#),
        "addDefaultValue" => (r#"tableName="t" columnName="c" defaultValue="x""#, ""),
        "addForeignKeyConstraint" => (
            r#"baseTableName="t" baseColumnNames="a" referencedTableName="r" referencedColumnNames="id" constraintName="fk""#,
            "",
        ),
        "addLookupTable" => (
            r#"existingTableName="t" existingColumnName="c" newTableName="l" newColumnName="c" newColumnDataType="varchar(10)""#,
            "",
        ),
        "addNotNullConstraint" | "dropNotNullConstraint" | "dropDefaultValue" | "dropColumn" => {
            (r#"tableName="t" columnName="c""#, "")
        }
        "addPrimaryKey" => (r#"tableName="t" columnNames="id" constraintName="pk""#, ""),
        "addUniqueConstraint" => (r#"tableName="t" columnNames="c" constraintName="uq""#, ""),
        "alterSequence" | "createSequence" | "dropSequence" => (r#"sequenceName="s""#, ""),
        "createIndex" => (r#"tableName="t" indexName="i""#, r#"<column name="c"/>"#),
        "createProcedure" => (r#"procedureName="p""#, "CREATE PROCEDURE p() LANGUAGE sql AS $$ SELECT 1 $$"),
        "createTable" => (r#"tableName="t""#, r#"<column name="id" type="int"/>"#),
        "createView" => (r#"viewName="v""#, "SELECT 1 AS one"),
        "delete" | "dropPrimaryKey" | "dropTable" => (r#"tableName="t""#, ""),
        "dropAllForeignKeyConstraints" => (r#"baseTableName="t""#, ""),
        "dropForeignKeyConstraint" => (r#"baseTableName="t" constraintName="fk""#, ""),
        "dropIndex" => (r#"tableName="t" indexName="i""#, ""),
        "dropProcedure" => (r#"procedureName="p""#, ""),
        "dropUniqueConstraint" => (r#"tableName="t" constraintName="uq""#, ""),
        "dropView" => (r#"viewName="v""#, ""),
        "empty" | "stop" => ("", ""),
        "executeCommand" => (r#"executable="/bin/true""#, ""),
        "insert" | "update" => (r#"tableName="t""#, r#"<column name="c" value="x"/>"#),
        "loadData" => (r#"tableName="t" file="d.csv""#, ""),
        "loadUpdateData" => (r#"tableName="t" file="d.csv" primaryKey="id""#, ""),
        "mergeColumns" => (
            r#"tableName="t" column1Name="a" column2Name="b" finalColumnName="f" finalColumnType="varchar(10)" joinString=" ""#,
            "",
        ),
        "modifyDataType" => (r#"tableName="t" columnName="c" newDataType="bigint""#, ""),
        "output" => ("", "hello"),
        "renameColumn" => (r#"tableName="t" oldColumnName="a" newColumnName="b""#, ""),
        "renameSequence" => (r#"oldSequenceName="a" newSequenceName="b""#, ""),
        "renameTable" => (r#"oldTableName="a" newTableName="b""#, ""),
        "renameView" => (r#"oldViewName="a" newViewName="b""#, ""),
        "setColumnRemarks" => (r#"tableName="t" columnName="c" remarks="r""#, ""),
        "setTableRemarks" => (r#"tableName="t" remarks="r""#, ""),
        "sql" => ("", "SELECT 1"),
        "sqlFile" => (r#"path="f.sql""#, ""),
        "tagDatabase" => (r#"tag="v1""#, ""),
        other => panic!("no minimal change for {other}: add one"),
    }
}

/// A value of `attribute` that the change takes.
fn sample(attribute: &str, kind: &str) -> &'static str {
    match (attribute, kind) {
        (_, "boolean") => "true",
        (_, "integer") => "5",
        ("onDelete" | "onUpdate", _) => "CASCADE",
        ("generationType", _) => "ALWAYS",
        ("target", _) => "STDOUT",
        ("type", _) => "int",
        ("columnDataType" | "newDataType" | "finalColumnType" | "newColumnDataType" | "dataType", _) => "bigint",
        ("defaultValueDate" | "valueDate", _) => "2020-01-31",
        ("defaultValueNumeric" | "valueNumeric", _) => "7",
        ("defaultValueBoolean" | "valueBoolean", _) => "true",
        ("defaultValueComputed" | "valueComputed", _) => "now()",
        ("defaultValueSequenceNext" | "valueSequenceNext" | "valueSequenceCurrent", _) => "s",
        ("file", _) => "d.csv",
        ("path" | "valueBlobFile" | "valueClobFile", _) => "f.sql",
        ("encoding", _) => "UTF-8",
        ("separator", _) => ";",
        ("quotchar", _) => "'",
        ("commentLineStartsWith", _) => "#",
        ("references", _) => "r(id)",
        ("primaryKey" | "columnNames" | "baseColumnNames" | "referencedColumnNames" | "uniqueColumns", _) => "id",
        ("executable", _) => "/bin/true",
        ("timeout", _) => "10s",
        ("os", _) => "Linux",
        ("tableType", _) => "UNLOGGED",
        ("tablespace" | "primaryKeyTablespace", _) => "pg_default",
        ("procedureText" | "selectQuery" | "sql", _) => "SELECT 1",
        ("dbms", _) => "postgresql",
        ("where", _) => "1 = 1",
        ("header", _) => "c",
        (_, _) => "x",
    }
}

/// Every attribute of every change type pgplane runs, as the attribute table says pgplane
/// handles it: refused ones stop the load naming the attribute, ignored ones leave the SQL
/// as it is without them, honoured ones load. And the table lists every parameter real
/// Liquibase 4.28 defines for those types (`tests/fixtures/liquibase-changes.tsv`, written by
/// `scripts/liquibase-metadata`): nothing is dropped silently.
#[test]
fn every_attribute_is_honoured_ignored_or_refused() {
    let table = liquibase::attribute_table();
    let listed = |ch: &str, a: &str| table.iter().any(|r| r.change == ch && r.attribute == a);
    // Liquibase's parameters, per change type.
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/liquibase-changes.tsv");
    let mut missing = Vec::new();
    let mut types = std::collections::BTreeSet::new();
    for line in std::fs::read_to_string(path).unwrap().lines() {
        let f: Vec<&str> = line.split('\t').collect();
        let (ty, param) = (f[0], f[2]);
        types.insert(ty.to_string());
        if liquibase::PRO.contains(&ty) || ty == "customChange" {
            continue;
        }
        // Collections of columns, and the DIRECT_VALUE texts, are read as elements.
        if param.is_empty() || ["columns", "column", "whereParams", "args"].contains(&param) {
            continue;
        }
        if !listed(ty, param) {
            missing.push(format!("{ty}.{param}"));
        }
    }
    for ty in liquibase::SUPPORTED {
        assert!(types.contains(*ty), "{ty} is not a Liquibase 4.28 change type");
    }
    for ty in &types {
        assert!(
            liquibase::SUPPORTED.contains(&ty.as_str())
                || liquibase::PRO.contains(&ty.as_str())
                || ty == "customChange",
            "Liquibase's change type {ty} is neither run nor refused by name"
        );
    }
    assert!(missing.is_empty(), "Liquibase parameters the attribute table does not list: {missing:?}");

    let files = |changelog: String| {
        Files(vec![
            ("c.xml".to_string(), changelog),
            ("d.csv".to_string(), "id,c\n1,x\n".to_string()),
            ("f.sql".to_string(), "SELECT 1;\n".to_string()),
        ])
    };
    let change_xml = |ty: &str, extra: &str, column_extra: &str, constraint: &str| {
        let (attrs, inner) = minimal_change(ty);
        let mut inner = inner.to_string();
        if !column_extra.is_empty() || !constraint.is_empty() {
            let body = if constraint.is_empty() { String::new() } else { format!("<constraints {constraint}/>") };
            inner = match ty {
                "createIndex" => format!(r#"<column name="c" {column_extra}/>"#),
                "loadData" => format!(r#"<column name="c" type="STRING" {column_extra}/>"#),
                _ => {
                    let name = if column_extra.starts_with("name=") { "" } else { r#"name="c""# };
                    let ty = if column_extra.starts_with("type=") { "" } else { r#"type="int""# };
                    format!(r#"<column {name} {ty} {column_extra}>{body}</column>"#)
                }
            };
        }
        // A given attribute replaces the template's.
        let mut attrs = attrs.to_string();
        if let Some((k, _)) = extra.split_once('=') {
            if let Some(at) = attrs.find(&format!("{k}=\"")) {
                let end = attrs[at + k.len() + 2..].find('"').unwrap() + at + k.len() + 3;
                attrs.replace_range(at..end, "");
            }
        }
        format!(
            "<databaseChangeLog>\n<changeSet id=\"1\" author=\"a\">\n<{ty} {attrs} {extra}>{inner}</{ty}>\n</changeSet>\n</databaseChangeLog>"
        )
    };
    let sql_of = |xml: String| -> Result<String, String> {
        let c = liquibase::load("c.xml", &files(xml)).map_err(|e| e.to_string())?;
        Ok(c.changesets[0].sql(Some("public")).iter().map(|s| s.sql.clone()).collect::<Vec<_>>().join("\n"))
    };
    let mut problems = Vec::new();
    for row in &table {
        let value = sample(row.attribute, row.kind);
        let attr = format!("{}=\"{}\"", row.attribute, value.replace('"', "&quot;"));
        let (ty, with, without) = match row.change {
            "column" => {
                let ty = match row.attribute {
                    "computed" | "descending" => "createIndex",
                    "index" | "header" | "allowUpdate" => "loadData",
                    _ => "addColumn",
                };
                (ty, change_xml(ty, "", &attr, ""), change_xml(ty, "", " ", ""))
            }
            "constraints" => {
                ("createTable", change_xml("createTable", "", " ", &attr), change_xml("createTable", "", " ", " "))
            }
            ty => (ty, change_xml(ty, &attr, "", ""), change_xml(ty, "", "", "")),
        };
        let what = format!("{}.{} = {value:?} ({ty})", row.change, row.attribute);
        match (row.handling, sql_of(with)) {
            (liquibase::AttrHandling::Refused(_), Ok(_)) => problems.push(format!("{what}: refused, but it loads")),
            (liquibase::AttrHandling::Refused(_), Err(e)) if !e.contains(row.attribute) => {
                problems.push(format!("{what}: refused without naming it: {e}"))
            }
            (liquibase::AttrHandling::Refused(_), Err(_)) => {}
            (_, Err(e)) => problems.push(format!("{what}: does not load: {e}")),
            (liquibase::AttrHandling::Ignored(_), Ok(sql)) => match sql_of(without) {
                Ok(base) if base == sql => {}
                Ok(base) => problems.push(format!("{what}: ignored, but it changes the SQL:\n  {base}\n  {sql}")),
                Err(e) => problems.push(format!("{what}: the change without it does not load: {e}")),
            },
            (liquibase::AttrHandling::Honoured, Ok(_)) => {}
        }
    }
    assert!(problems.is_empty(), "{} of {} attributes:\n{}", problems.len(), table.len(), problems.join("\n"));
}
