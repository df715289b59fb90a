//! What a Liquibase changelog may ask of a run and pgplane's answer: `executeCommand` only
//! with permission, changelog properties from the CLI and the manifest, the `stop` change
//! and a failed run leaving an honest status, `output`, and refusals before anything runs.

#![allow(clippy::unwrap_used)]

mod common;

use common::{lines, T};

const HEAD: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<databaseChangeLog xmlns="http://www.liquibase.org/xml/ns/dbchangelog">
"#;

fn changelog(body: &str) -> String {
    format!("{HEAD}{body}\n</databaseChangeLog>\n")
}

fn up(t: &T, url: &str, source: &str, extra: &[&str]) -> common::Run {
    let mut args = vec!["migrate", "up", "--url", url, "--source", source];
    args.extend_from_slice(extra);
    t.pgplane(&args)
}

fn tables(t: &T, db: &str) -> Vec<String> {
    lines(&t.sql(db, "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"))
}

#[test]
fn execute_command_runs_only_when_the_run_allows_it() {
    let t = T::new("lbo_exec");
    let url = t.database("lbo_exec");
    let marker = t.dir.join("ran.txt");
    t.write(
        "db/changelog.xml",
        &changelog(&format!(
            r#"<changeSet id="1" author="a"><createTable tableName="before_exec"><column name="id" type="int"/></createTable></changeSet>
<changeSet id="2" author="a">
  <executeCommand executable="sh"><arg value="-c"/><arg value="echo ran &gt; {}"/></executeCommand>
</changeSet>"#,
            marker.display()
        )),
    );
    let source = t.dir.join("db/changelog.xml");
    let source = source.to_str().unwrap();
    // Refused before anything runs: not even changeset 1.
    let r = up(&t, &url, source, &[]).fails();
    let said = format!("{}{}", r.stdout, r.stderr);
    assert!(
        said.contains("executeCommand") && said.contains("allow_execute_command") && said.contains("changelog.xml:4"),
        "{said}"
    );
    assert!(!tables(&t, "lbo_exec").contains(&"before_exec".to_string()), "nothing may run before the refusal");
    assert!(!marker.exists());
    // Allowed on the command line.
    up(&t, &url, source, &["--allow-execute-command"]).ok();
    assert_eq!(std::fs::read_to_string(&marker).unwrap().trim(), "ran");
    assert_eq!(tables(&t, "lbo_exec"), ["before_exec", "databasechangelog", "databasechangeloglock"]);
}

#[test]
fn the_manifest_allows_execute_command_and_sets_properties() {
    let t = T::new("lbo_manifest");
    let marker = t.dir.join("ran-from-manifest.txt");
    t.write(
        "db/changelog.xml",
        &changelog(&format!(
            r#"<changeSet id="1" author="a"><createTable tableName="${{table.name}}"><column name="id" type="${{id.type}}"/></createTable></changeSet>
<changeSet id="2" author="a">
  <executeCommand executable="sh"><arg value="-c"/><arg value="echo ${{table.name}} &gt; {}"/></executeCommand>
</changeSet>"#,
            marker.display()
        )),
    );
    let f = t.manifest(
        "modules:
  - name: app
    storage: database
    migrations:
      path: db/changelog.xml
      allow_execute_command: true
      properties:
        table.name: from_manifest
        id.type: bigint
",
    );
    let f = f.to_str().unwrap();
    t.pgplane(&["apply", "-f", f, "--yes"]).ok();
    assert_eq!(
        t.sql(
            "lbo_manifest_app",
            "SELECT data_type FROM information_schema.columns WHERE table_name = 'from_manifest'"
        ),
        "bigint"
    );
    assert_eq!(std::fs::read_to_string(&marker).unwrap().trim(), "from_manifest");
}

#[test]
fn properties_from_the_command_line_win_over_the_changelog() {
    let t = T::new("lbo_props");
    let url = t.database("lbo_props");
    t.write(
        "db/changelog.xml",
        &changelog(
            r#"<property name="table.name" value="from_changelog"/>
<property name="suffix" value="_x"/>
<changeSet id="1" author="a"><createTable tableName="${table.name}${suffix}"><column name="id" type="int"/></createTable></changeSet>"#,
        ),
    );
    let source = t.dir.join("db/changelog.xml");
    // Like Liquibase's -D, a property given to the run is set first, and the first one set wins.
    up(&t, &url, source.to_str().unwrap(), &["--property", "table.name=from_cli"]).ok();
    assert_eq!(tables(&t, "lbo_props")[2], "from_cli_x");
    // A property that is not NAME=VALUE is an error.
    let r = up(&t, &url, source.to_str().unwrap(), &["--property", "no-equals-sign"]);
    assert_eq!(r.code, 2, "a usage error");
    assert!(r.stderr.contains("NAME=VALUE"), "{}", r.stderr);
}

#[test]
fn a_stop_change_leaves_what_ran_applied_and_the_status_says_so() {
    let t = T::new("lbo_stop");
    let url = t.database("lbo_stop");
    t.write(
        "db/changelog.xml",
        &changelog(
            r#"<changeSet id="1" author="a"><createTable tableName="first"><column name="id" type="int"/></createTable></changeSet>
<changeSet id="2" author="a">
  <output target="STDOUT">about to stop</output>
  <stop>stopping for a look</stop>
</changeSet>
<changeSet id="3" author="a"><createTable tableName="never"><column name="id" type="int"/></createTable></changeSet>"#,
        ),
    );
    let source = t.dir.join("db/changelog.xml");
    let source = source.to_str().unwrap();
    let r = up(&t, &url, source, &[]).fails();
    assert!(r.stdout.contains("about to stop"), "the output change writes to stdout: {}", r.stdout);
    assert!(r.stderr.contains("stopping for a look") && r.stderr.contains("changelog.xml:4"), "{}", r.stderr);
    assert_eq!(
        tables(&t, "lbo_stop"),
        ["databasechangelog", "databasechangeloglock", "first", "pgplane_changelog_failures"]
    );
    let status = t.pgplane(&["migrate", "status", "--url", &url, "--source", source, "--json"]).json();
    let migrations = status["modules"][0]["targets"][0]["migrations"].as_array().unwrap().clone();
    let states: Vec<(String, String)> = migrations
        .iter()
        .map(|m| (m["name"].as_str().unwrap().to_string(), m["state"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(states[0].1, "applied", "{states:?}");
    assert_ne!(states[1].1, "applied", "{states:?}");
    assert_eq!(states[2].1, "pending", "{states:?}");
}

#[test]
fn what_pgplane_cannot_do_as_liquibase_would_is_refused_before_anything_runs() {
    let t = T::new("lbo_refuse");
    let url = t.database("lbo_refuse");
    let cases = [
        (r#"<addColumn tableName="first"><column name="c" type="int" afterColumn="id"/></addColumn>"#, "afterColumn"),
        (r#"<createTrigger triggerName="t" tableName="first"/>"#, "Liquibase Pro"),
        (r#"<customChange class="com.example.Fix"/>"#, "customChange"),
        (r#"<addUniqueConstraint tableName="first" columnNames="id" clustered="true"/>"#, "clustered"),
        (r#"<output target="NOWHERE">x</output>"#, "target"),
    ];
    for (i, (change, says)) in cases.iter().enumerate() {
        let file = format!("db/c{i}.xml");
        t.write(
            &file,
            &changelog(&format!(
                r#"<changeSet id="1" author="a"><createTable tableName="first"><column name="id" type="int"/></createTable></changeSet>
<changeSet id="2" author="a">
  {change}
</changeSet>"#
            )),
        );
        let source = t.dir.join(&file);
        let r = up(&t, &url, source.to_str().unwrap(), &[]).fails();
        let said = format!("{}{}", r.stdout, r.stderr);
        assert!(
            said.contains(says) && said.contains(&format!("c{i}.xml:")) && said.contains("changeset 2"),
            "{change}: {said}"
        );
        assert!(!tables(&t, "lbo_refuse").contains(&"first".to_string()), "{change}: nothing may run");
    }
}

#[test]
fn an_unsupported_change_inside_rollback_does_not_block_update() {
    let t = T::new("lbo_rollback");
    let url = t.database("lbo_rollback");
    t.write(
        "db/changelog.xml",
        &changelog(
            r#"<changeSet id="1" author="a">
  <createTable tableName="kept"><column name="id" type="int"/></createTable>
  <rollback><customChange class="com.example.Undo"/></rollback>
</changeSet>"#,
        ),
    );
    let source = t.dir.join("db/changelog.xml");
    up(&t, &url, source.to_str().unwrap(), &[]).ok();
    assert!(tables(&t, "lbo_rollback").contains(&"kept".to_string()));
}

#[test]
fn what_the_run_does_not_select_blocks_nothing() {
    let t = T::new("lbo_unselected");
    let url = t.database("lbo_unselected");
    t.write(
        "db/changelog.yaml",
        "databaseChangeLog:
  - changeSet:
      id: 1
      author: a
      changes:
        - createTable: {tableName: t1, columns: [{column: {name: id, type: int}}]}
  - changeSet:
      id: 2
      author: a
      context: other
      changes:
        - createTrigger: {triggerName: x, tableName: t1}
  - changeSet:
      id: 3
      author: a
      labels: nope
      changes:
        - addUniqueConstraint: {tableName: t1, columnNames: id, clustered: true}
",
    );
    let source = t.dir.join("db/changelog.yaml");
    let source = source.to_str().unwrap();
    // Like Liquibase: changesets the contexts and labels leave out are never run.
    up(&t, &url, source, &["--contexts", "test", "--labels", "yes"]).ok();
    assert_eq!(
        t.sql("lbo_unselected", "SELECT string_agg(id, ',' ORDER BY orderexecuted) FROM databasechangelog"),
        "1"
    );
    // Selected, they are refused before anything runs.
    let other = t.database("lbo_unselected2");
    let r = up(&t, &other, source, &[]).fails();
    let said = format!("{}{}", r.stdout, r.stderr);
    assert!(
        said.contains("createTrigger is a Liquibase Pro change type") && said.contains("changelog.yaml:12"),
        "{said}"
    );
    assert!(!tables(&t, "lbo_unselected2").contains(&"t1".to_string()), "nothing may run");
}
