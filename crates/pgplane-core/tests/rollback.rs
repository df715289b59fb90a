//! Rollback, the pure part: which changesets a rollback undoes (`plan_rollback`), where
//! `up --to-tag/--target` stops (`stop_at`), and the SQL that undoes each changeset (its
//! `<rollback>` or Liquibase's automatic inverses). Snapshots; update them with
//! `UPDATE_EXPECT=1 cargo test -p pgplane-core --test rollback`. The end-to-end tests
//! (`crates/pgplane/tests/rollback.rs`) check the same fixture against real Liquibase.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use expect_test::{expect, expect_file, Expect};
use pgplane_core::liquibase::{self, ChangeSet, Loader};
use pgplane_core::migrate::{
    parse_date, plan, plan_rollback, stop_at, Applied, PlanOptions, Ran, RollbackTo, Unit, UpTo, Version,
};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/liquibase/rollback")
}

/// The changeset's rollback as text: its statements, or why there is none.
fn rollback_text(cs: &ChangeSet) -> String {
    match cs.rollback_statements(Some("public")) {
        Ok(s) if s.is_empty() => "  (nothing to run; only the ledger row goes)\n".to_string(),
        Ok(s) => s.iter().map(|s| format!("  {};\n", s.sql)).collect(),
        Err(e) => format!("  REFUSED: {e}\n"),
    }
}

#[test]
fn the_fixture_s_rollback_sql() {
    let loader = liquibase::FsLoader { root: fixture(), allowed: Some(fixture()) };
    let log = liquibase::load("changelog.xml", &loader).unwrap();
    let mut out = String::new();
    for cs in log.changesets.iter().rev() {
        let _ = writeln!(out, "-- {}::{}::{} ({})", cs.filename, cs.id, cs.author, cs.location);
        out.push_str(&rollback_text(cs));
    }
    expect_file!["fixtures/liquibase/rollback/pgplane-rollback.sql"].assert_eq(&out);
}

/// Changelogs in memory.
struct Mem(BTreeMap<String, String>);

impl Loader for Mem {
    fn read(&self, path: &str) -> std::io::Result<String> {
        self.0.get(path).cloned().ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, path.to_string()))
    }
    fn list(&self, _dir: &str) -> std::io::Result<Vec<String>> {
        Ok(Vec::new())
    }
}

fn load(files: &[(&str, &str)]) -> Vec<ChangeSet> {
    let mem = Mem(files.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
    liquibase::load(files[0].0, &mem).unwrap_or_else(|e| panic!("{e}")).changesets
}

fn check_rollbacks(files: &[(&str, &str)], expect: Expect) {
    let mut out = String::new();
    for cs in load(files) {
        let _ = writeln!(out, "{}:", cs.id);
        out.push_str(&rollback_text(&cs));
    }
    expect.assert_eq(&out);
}

#[test]
fn what_update_never_runs_never_blocks_it() {
    // An unsupported change, a missing reference and a bad attribute inside rollbacks: the
    // changelog loads (update runs it); only rolling those changesets back is refused.
    check_rollbacks(
        &[(
            "c.xml",
            r#"<databaseChangeLog>
  <changeSet id="1" author="a">
    <createTable tableName="t"><column name="id" type="int"/></createTable>
    <rollback>
      <dropTable tableName="t"/>
      <customChange class="com.example.Undo"/>
    </rollback>
  </changeSet>
  <changeSet id="2" author="a">
    <createTable tableName="u"><column name="id" type="int"/></createTable>
    <rollback changeSetId="nope" changeSetAuthor="a"/>
  </changeSet>
  <changeSet id="3" author="a">
    <createTable tableName="v"><column name="id" type="int"/></createTable>
    <rollback><dropTable tableName="v" bogus="1"/></rollback>
  </changeSet>
</databaseChangeLog>"#,
        )],
        expect![[r#"
            1:
              REFUSED: c.xml:6: changeset c.xml::1::a cannot be rolled back: its rollback cannot run: changeset 1 (author a): customChange runs the Java class com.example.Undo, which pgplane cannot run; write what it does as an sql change
            2:
              REFUSED: c.xml:11: changeset c.xml::2::a cannot be rolled back: its rollback cannot run: changeset 2 (author a): its rollback refers to changeset c.xml::nope::a, which is not defined before it; give the id, author and path of an earlier changeset
            3:
              REFUSED: c.xml:15: changeset c.xml::3::a cannot be rolled back: its rollback cannot run: changeset 3 (author a): dropTable: attribute bogus is not supported; remove it
        "#]],
    );
}

#[test]
fn yaml_and_json_rollback_forms() {
    check_rollbacks(
        &[(
            "c.yaml",
            "databaseChangeLog:
  - changeSet:
      id: null-is-empty
      author: a
      changes:
        - sql: {sql: SELECT 1}
      rollback:
  - changeSet:
      id: empty-list
      author: a
      changes:
        - sql: {sql: SELECT 1}
      rollback: []
  - changeSet:
      id: text
      author: a
      changes:
        - sql: {sql: SELECT 1}
      rollback: DROP TABLE a; DROP TABLE b
  - changeSet:
      id: word-empty
      author: a
      changes:
        - sql: {sql: SELECT 1}
      rollback: empty
  - changeSet:
      id: sql-mapping
      author: a
      changes:
        - sql: {sql: SELECT 1}
      rollback: {sql: DROP VIEW v}
  - changeSet:
      id: changes
      author: a
      changes:
        - sql: {sql: SELECT 1}
      rollback:
        - dropTable: {tableName: a}
        - sql: {sql: SELECT 2, dbms: h2}
  - changeSet:
      id: reference
      author: a
      changes:
        - dropTable: {tableName: a}
      rollback: {changeSetId: changes, changeSetAuthor: A}
  - changeSet:
      id: no-rollback
      author: a
      changes:
        - sql: {sql: SELECT 1}
",
        )],
        expect![[r#"
            null-is-empty:
              (nothing to run; only the ledger row goes)
            empty-list:
              (nothing to run; only the ledger row goes)
            text:
              DROP TABLE a;
              DROP TABLE b;
            word-empty:
              (nothing to run; only the ledger row goes)
            sql-mapping:
              DROP VIEW v;
            changes:
              DROP TABLE public.a;
            reference:
              SELECT 1;
            no-rollback:
              REFUSED: c.yaml:46: changeset c.yaml::no-rollback::a cannot be rolled back: it has no rollback of its own, and Liquibase has no automatic rollback for sql
        "#]],
    );
}

#[test]
fn formatted_sql_rollback_forms() {
    check_rollbacks(
        &[(
            "c.sql",
            "--liquibase formatted sql
--changeset a:lines rollbackSplitStatements:false rollbackEndDelimiter:GO
CREATE TABLE a (id int);
--rollback DROP TABLE a;
--rollback DROP TABLE b;
--changeset a:block
CREATE TABLE b (id int);
/* liquibase rollback
DROP TABLE b;
DROP TABLE c;
*/
--changeset a:not-required
SELECT 1;
--rollback not required
--changeset a:empty
SELECT 1;
-- rollback empty
--changeset a:reference
DROP TABLE b;
--rollback changesetId:block changesetAuthor:a
--changeset a:reference-without-author
DROP TABLE b;
--rollback changesetId:block
--changeset a:none
SELECT 1;
",
        )],
        expect![[r#"
            lines:
              DROP TABLE a;
            DROP TABLE b;;
            block:
              DROP TABLE b;
              DROP TABLE c;
            not-required:
              (nothing to run; only the ledger row goes)
            empty:
              (nothing to run; only the ledger row goes)
            reference:
              CREATE TABLE b (id int);
            reference-without-author:
              REFUSED: c.sql:21: changeset c.sql::reference-without-author::a cannot be rolled back: its rollback cannot run: changeset reference-without-author (author a): a --rollback naming changesetId: needs changesetAuthor: too
            none:
              REFUSED: c.sql:24: changeset c.sql::none::a cannot be rolled back: it has no rollback of its own, and Liquibase has no automatic rollback for sql
        "#]],
    );
    let e = liquibase::load(
        "c.sql",
        &Mem([(
            "c.sql".to_string(),
            "--liquibase formatted sql\n--changeset a:1\nSELECT 1;\n/* liquibase rollback\nDROP TABLE x;\n".to_string(),
        )]
        .into()),
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "c.sql:4: changeset 1 (author a): its `/* liquibase rollback` comment is not closed; end it with `*/`"
    );
}

// ---- which changesets: plan_rollback ----

fn unit(key: &str) -> Unit {
    Unit {
        key: key.into(),
        name: key.into(),
        checksum: "9:x".into(),
        valid_checksums: vec![],
        rerun_on_change: false,
        run_always: false,
        version: None,
        selected: true,
        transactional: true,
        tag: None,
    }
}

/// Ledger rows `key@second[#tag][!tagDatabase]`, in the order given as ORDEREXECUTED.
fn ledger(rows: &[&str]) -> Vec<Ran> {
    rows.iter()
        .enumerate()
        .map(|(i, r)| {
            let (r, only_tags) = match r.strip_suffix('!') {
                Some(r) => (r, true),
                None => (*r, false),
            };
            let (r, tag) = match r.split_once('#') {
                Some((r, t)) => (r, Some(t.to_string())),
                None => (r, None),
            };
            let (key, sec) = r.split_once('@').unwrap();
            Ran {
                key: key.into(),
                executed_at: format!("2024-05-01 10:00:{sec:0>2}.000000"),
                order: i as i64 + 1,
                tag,
                description: Some(if only_tags { "tagDatabase".into() } else { "createTable tableName=t".into() }),
            }
        })
        .collect()
}

fn check_plan(units: &[Unit], ledger: &[Ran], to: RollbackTo, expect: Expect) {
    let text = match plan_rollback(units, ledger, &to) {
        Ok(p) => {
            let keys: Vec<&str> = p.units.iter().map(|&i| units[i].key.as_str()).collect();
            format!("roll back: {}\nstays: {}", keys.join(" "), p.skipped.join(" "))
        }
        Err(e) => format!("error: {e}"),
    };
    expect.assert_eq(&text);
}

#[test]
fn rollback_count_goes_newest_first_and_passes_over_what_is_not_selected() {
    let mut units: Vec<Unit> = ["a", "b", "c", "d"].into_iter().map(unit).collect();
    units[2].selected = false; // contexts exclude c
                               // DATEEXECUTED first, ORDEREXECUTED second: d ran before b here.
    let l = ledger(&["a@1", "d@2", "b@3", "c@4", "other@5"]);
    check_plan(
        &units,
        &l,
        RollbackTo::Count(2),
        expect![[r#"
        roll back: b d
        stays: other c"#]],
    );
    check_plan(
        &units,
        &l,
        RollbackTo::Count(0),
        expect![[r#"
        roll back: 
        stays: "#]],
    );
    check_plan(
        &units,
        &l,
        RollbackTo::Count(99),
        expect![[r#"
        roll back: b d a
        stays: other c"#]],
    );
}

#[test]
fn rollback_to_tag_follows_liquibase_s_oldest_tag_rule() {
    let units: Vec<Unit> = ["a", "t1", "b", "t2", "c", "d"].into_iter().map(unit).collect();
    // t1 only tags: it goes too. b carries a tag but changes something: it stays.
    let l = ledger(&["a@1", "t1@2#v1!", "b@3#v2", "c@4", "t2@5#V1!", "d@6"]);
    check_plan(
        &units,
        &l,
        RollbackTo::Tag("v1".into()),
        expect![[r#"
        roll back: d t2 c b t1
        stays: "#]],
    );
    check_plan(
        &units,
        &l,
        RollbackTo::Tag("v2".into()),
        expect![[r#"
        roll back: d t2 c
        stays: "#]],
    );
    check_plan(
        &units,
        &l,
        RollbackTo::Tag("v9".into()),
        expect![[r#"error: tag "v9" is not in the ledger; `pgplane migrate status` lists what is applied"#]],
    );
}

#[test]
fn rollback_to_date_takes_what_ran_after_the_instant() {
    let units: Vec<Unit> = ["a", "b", "c"].into_iter().map(unit).collect();
    let l = ledger(&["a@1", "b@5", "gone@6", "c@7"]);
    let at = |s: &str| RollbackTo::Date(parse_date(s).unwrap());
    check_plan(
        &units,
        &l,
        at("2024-05-01 10:00:05"),
        expect![[r#"
        roll back: c
        stays: gone"#]],
    );
    check_plan(
        &units,
        &l,
        at("2024-05-01T10:00:04.5"),
        expect![[r#"
        roll back: c b
        stays: gone"#]],
    );
    check_plan(
        &units,
        &l,
        at("2024-05-01"),
        expect![[r#"
        roll back: c b a
        stays: gone"#]],
    );
}

#[test]
fn dates_are_read_strictly() {
    for (s, want) in [
        ("2024-05-01", "2024-05-01 00:00:00.000000"),
        ("2024-05-01 10:11", "2024-05-01 10:11:00.000000"),
        ("2024-05-01T10:11:12", "2024-05-01 10:11:12.000000"),
        ("2024-05-01 10:11:12.5", "2024-05-01 10:11:12.500000"),
    ] {
        assert_eq!(parse_date(s).unwrap(), want, "{s}");
    }
    for bad in ["yesterday", "2024-5-1", "2024-13-01", "2024-05-01 25:00", "2024-05-01 10", "2024-05-01 10:11:12.", ""]
    {
        assert!(parse_date(bad).unwrap_err().contains("is not a date"), "{bad}");
    }
}

// ---- where up stops: stop_at ----

fn applied(key: &str, tag: Option<&str>) -> Applied {
    Applied {
        key: key.into(),
        checksum: Some("9:x".into()),
        success: true,
        rolled_back: false,
        applied_at: "t".into(),
        execution_ms: None,
        error: None,
        tag: tag.map(str::to_string),
    }
}

fn check_stop(units: &[Unit], ledger: &[Applied], up_to: UpTo, expect: Expect) {
    let mut p = plan(units, ledger, PlanOptions::default());
    let text = match stop_at(&mut p, units, ledger, &up_to) {
        Ok(()) => {
            let states: Vec<String> = p.steps.iter().map(|s| format!("{}={:?}", units[s.unit].key, s.state)).collect();
            format!("{} (applied beyond: {})", states.join(" "), p.applied_beyond_target)
        }
        Err(e) => format!("error: {e}"),
    };
    expect.assert_eq(&text);
}

#[test]
fn up_to_tag_stops_after_the_changeset_that_carries_it() {
    let mut units: Vec<Unit> = ["a", "t1", "b", "t2", "c"].into_iter().map(unit).collect();
    units[1].tag = Some("v1".into());
    units[3].tag = Some("v2".into());
    check_stop(
        &units,
        &[],
        UpTo::Tag("v1".into()),
        expect!["a=Pending t1=Pending b=AfterTarget t2=AfterTarget c=AfterTarget (applied beyond: 0)"],
    );
    // The ledger's tag wins (any case), e.g. one set by `liquibase tag` on b.
    check_stop(
        &units,
        &[applied("a", None), applied("t1", Some("v1")), applied("b", Some("REL"))],
        UpTo::Tag("rel".into()),
        expect!["a=Applied t1=Applied b=Applied t2=AfterTarget c=AfterTarget (applied beyond: 0)"],
    );
    // Behind the ledger: nothing runs, and the plan says how far past it is.
    check_stop(
        &units,
        &[applied("a", None), applied("t1", Some("v1")), applied("b", None)],
        UpTo::Tag("v1".into()),
        expect!["a=Applied t1=Applied b=Applied t2=AfterTarget c=AfterTarget (applied beyond: 1)"],
    );
    // A tag only a filtered-out changeset carries is not reachable.
    units[3].selected = false;
    check_stop(
        &units,
        &[],
        UpTo::Tag("v2".into()),
        expect![[
            r#"error: tag "v2" is not in the changelog: its changeset t2 is excluded by contexts, labels or dbms; nothing was run (Liquibase's update-to-tag would run everything)"#
        ]],
    );
    check_stop(
        &units,
        &[],
        UpTo::Tag("V1".into()),
        expect![[
            r#"error: tag "V1" is not in the changelog: no changeset has a tagDatabase with it and the ledger has no row tagged so; nothing was run (Liquibase's update-to-tag would run everything)"#
        ]],
    );
}

#[test]
fn up_to_version_holds_back_later_versions_but_not_repeatables() {
    let mut units: Vec<Unit> = ["1", "2", "2.1", "3", "R:v"].into_iter().map(unit).collect();
    for u in &mut units[..4] {
        u.version = Some(Version::parse(&u.key).unwrap());
    }
    check_stop(
        &units,
        &[applied("1", None)],
        UpTo::Version(Version::parse("2.0").unwrap()),
        expect!["1=Applied 2=Pending 2.1=AfterTarget 3=AfterTarget R:v=Pending (applied beyond: 0)"],
    );
    check_stop(
        &units,
        &[],
        UpTo::Version(Version::parse("4").unwrap()),
        expect!["error: no migration has version 4; the versions are: 1, 2, 2.1, 3"],
    );
}
