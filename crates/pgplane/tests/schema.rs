//! End-to-end: `pgplane schema`, real binary against a real server.

#![allow(clippy::unwrap_used)]

mod common;

use common::{with_db, T};

#[test]
fn tables_lists_tables_and_views_with_comments_counts_and_sizes() {
    let t = T::new("sch_tables");
    t.write(
        "db/V1__model.sql",
        "CREATE TABLE entries (id bigint PRIMARY KEY, name text, created_at timestamptz);
         COMMENT ON TABLE entries IS 'Registry entries';
         INSERT INTO entries SELECT g, 'n' || g, now() FROM generate_series(1, 500) g;
         ANALYZE entries;
         CREATE VIEW entry_names AS SELECT name FROM entries;
         CREATE SCHEMA audit;
         CREATE TABLE audit.events (id int, at timestamptz) PARTITION BY RANGE (at);
         CREATE TABLE audit.events_2026 PARTITION OF audit.events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');\n",
    );
    let f = t.manifest("modules:\n  - name: registry\n    storage: database\n    migrations: db\n");
    let f = f.to_str().unwrap();
    t.pgplane(&["apply", "-f", f, "--yes"]).ok();

    let out = t.pgplane(&["schema", "tables", "--db", "sch_tables_registry", "-f", f, "--json"]).ok().json();
    let rows = out.as_array().unwrap();
    let names: Vec<String> = rows
        .iter()
        .map(|r| {
            format!("{}.{} {}", r["schema"].as_str().unwrap(), r["name"].as_str().unwrap(), r["kind"].as_str().unwrap())
        })
        .collect();
    // Sorted by schema and name; partitions are not listed apart from their parent.
    assert_eq!(
        names,
        [
            "audit.events partitioned_table",
            "public.entries table",
            "public.entry_names view",
            "public.pgplane_schema_history table"
        ]
    );
    let entries = &rows[1];
    assert_eq!(entries["description"], "Registry entries");
    assert_eq!(entries["columns"], 3);
    assert_eq!(entries["estimated_rows"], 500);
    assert!(entries["size_bytes"].as_i64().unwrap() > 8192, "{entries}");
    assert_eq!(rows[2]["description"], serde_json::Value::Null);
    assert_eq!(rows[2]["size_bytes"], 0);

    // --schema narrows; --url reads any database; the text output groups views apart.
    let audit = t
        .pgplane(&["schema", "tables", "--db", "sch_tables_registry", "-f", f, "--schema", "audit", "--json"])
        .ok()
        .json();
    assert_eq!(audit.as_array().unwrap().len(), 1);
    let url = with_db(&t.server.url, "sch_tables_registry");
    let text = t.pgplane(&["schema", "tables", "--url", &url]).ok().stdout;
    assert!(text.contains("tables (3)") && text.contains("views (1)") && text.contains("Registry entries"), "{text}");
    assert!(!text.contains(&url), "the URL (with its password) is not echoed");

    let none = t.pgplane(&["schema", "tables", "-f", f]).fails();
    assert!(none.stderr.contains("--db NAME, --branch ID or --url URL"), "{}", none.stderr);
}

#[test]
fn tables_of_a_branch() {
    let t = T::new("sch_branch");
    t.write("db/V1__model.sql", "CREATE TABLE entries (id int); COMMENT ON TABLE entries IS 'from the template';\n");
    t.write("cand/V2__more.sql", "CREATE TABLE candidates (id int);\n");
    let f = t.manifest(
        "modules:\n  - name: registry\n    storage: database\ntemplates:\n  - name: sch_branch_tpl\n    module: registry\n    sources: [db]\n",
    );
    let f = f.to_str().unwrap();
    t.pgplane(&["apply", "-f", f, "--yes"]).ok();
    t.pgplane(&["template", "build", "sch_branch_tpl", "-f", f]).ok();
    t.pgplane(&["branch", "create", "MR-1", "--template", "sch_branch_tpl", "--source", "cand", "-f", f]).ok();
    let out = t.pgplane(&["schema", "tables", "--branch", "MR-1", "-f", f, "--json"]).ok().json();
    let names: Vec<&str> = out.as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["candidates", "entries", "pgplane_schema_history"]);
    let missing = t.pgplane(&["schema", "tables", "--branch", "nope", "-f", f]).fails();
    assert!(missing.stderr.contains("there is no branch \"nope\""), "{}", missing.stderr);
}
