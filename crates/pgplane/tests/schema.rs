//! End-to-end: `pgplane schema`, real binary against a real server.

#![allow(clippy::unwrap_used)]

mod common;

use common::{with_db, T};
use pgplane_core::schema::SchemaSnapshot;

#[test]
fn tables_lists_tables_and_views_with_comments_counts_and_sizes() {
    let t = T::new("sch_tables");
    t.write(
        "db/V1__model.sql",
        "CREATE TABLE entries (id bigint PRIMARY KEY, name text, created_at timestamptz);
         COMMENT ON TABLE entries IS 'Registry entries';
         INSERT INTO entries SELECT g, 'n' || g, now() FROM generate_series(1, 500) g;
         CREATE INDEX entries_created_at_idx ON entries (created_at);
         -- Stored out of line: the TOAST table and its index have pages too.
         INSERT INTO entries SELECT 0, string_agg(md5(g::text), '') FROM generate_series(1, 4000) g;
         ANALYZE entries;
         CREATE VIEW entry_names AS SELECT name FROM entries;
         CREATE SCHEMA audit;
         CREATE TABLE audit.events (id int, at timestamptz) PARTITION BY RANGE (at);
         CREATE TABLE audit.events_2026 PARTITION OF audit.events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');\n",
    );
    let f = t.manifest("modules:\n  - name: registry\n    storage: database\n    migrations: db\n");
    let f = f.to_str().unwrap();
    t.pgplane(&["apply", "-f", f, "--yes"]).ok();
    t.sql("sch_tables_registry", "VACUUM entries");

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
    assert_eq!(entries["estimated_rows"], 501);
    // The size is the planner's page counts of the table, its TOAST table and the indexes
    // of both (here: every part has pages), as one relation at a time adds them up.
    let pages = t.sql(
        "sch_tables_registry",
        "SELECT c.relpages, t.relpages, (SELECT sum(i.relpages) FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
                                          WHERE x.indrelid = c.oid),
                (SELECT sum(i.relpages) FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
                  WHERE x.indrelid = t.oid)
           FROM pg_class c JOIN pg_class t ON t.oid = c.reltoastrelid WHERE c.oid = 'public.entries'::regclass",
    );
    let pages: Vec<i64> = pages.split('|').map(|p| p.trim().parse().unwrap()).collect();
    assert!(pages.iter().all(|&p| p > 0), "every part has pages: {pages:?}");
    assert_eq!(entries["size_bytes"].as_i64().unwrap(), pages.iter().sum::<i64>() * 8192, "{entries} {pages:?}");
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

const EVERY_KIND: &str = include_str!("fixtures/schema/every_kind.sql");

/// A manifest naming only the test server (`db:NAME` finds any database on it) and a fresh
/// database `name` with `sql` run in it.
fn database_with(t: &T, name: &str, sql: &str) -> String {
    t.database(name);
    if !sql.is_empty() {
        t.sql(name, sql);
    }
    name.to_string()
}

#[test]
fn describe_shows_every_feature_of_a_table() {
    let t = T::new("sch_describe");
    let db = database_with(&t, "sch_describe_kinds", EVERY_KIND);
    let f = t.manifest("modules:\n  - name: app\n    storage: database\n");
    let f = f.to_str().unwrap();

    let e = t.pgplane(&["schema", "describe", "entries", "--db", &db, "-f", f, "--json"]).ok().json();
    assert_eq!(
        (e["schema"].as_str(), e["name"].as_str(), e["kind"].as_str()),
        (Some("public"), Some("entries"), Some("table"))
    );
    assert_eq!(e["description"], "Registry entries");
    let col = |name: &str| e["columns"].as_array().unwrap().iter().find(|c| c["name"] == name).unwrap().clone();
    assert_eq!(col("id")["identity"], "always");
    assert_eq!(col("id")["nullable"], false);
    assert_eq!(col("id")["default"], serde_json::Value::Null);
    assert_eq!(col("total")["generated"], "(price * (quantity)::numeric)");
    assert_eq!(col("total")["default"], serde_json::Value::Null);
    assert_eq!(col("name")["type"], "character varying(100)");
    assert_eq!(col("name")["default"], "'unnamed'::character varying");
    assert_eq!(col("name")["comment"], "Shown to people");
    assert_eq!(col("price")["nullable"], true);
    assert_eq!(col("history")["type"], "public.entry_status[]", "types outside pg_catalog are qualified");
    let names = |v: &serde_json::Value| -> Vec<String> {
        v.as_array().unwrap().iter().map(|x| x["name"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(e["primary_key"]["definition"], "PRIMARY KEY (id)");
    assert_eq!(e["primary_key"]["columns"], serde_json::json!(["id"]));
    assert_eq!(names(&e["unique"]), ["entries_name_owner_key"]);
    assert_eq!(e["unique"][0]["columns"], serde_json::json!(["owner_id", "name"]));
    assert_eq!(names(&e["checks"]), ["entries_price_check", "entries_quantity_positive"]);
    assert_eq!(e["foreign_keys"][0]["referenced_table"], "owners");
    assert_eq!(e["foreign_keys"][0]["on_delete"], "cascade");
    // Incoming: from a table of another schema (a partitioned one: its partitions' copies
    // of the key are not listed) and from public.entry_tags.
    let incoming: Vec<String> = e["referenced_by"]
        .as_array()
        .unwrap()
        .iter()
        .map(|fk| {
            format!(
                "{}.{} {}",
                fk["schema"].as_str().unwrap(),
                fk["table"].as_str().unwrap(),
                fk["name"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(incoming, ["audit.events events_entry_id_fkey", "public.entry_tags entry_tags_entry_id_fkey"]);
    let idx = |name: &str| e["indexes"].as_array().unwrap().iter().find(|i| i["name"] == name).unwrap().clone();
    assert_eq!(idx("entries_live_idx")["predicate"], "status = 'live'::public.entry_status");
    assert_eq!(idx("entries_pkey")["primary"], true);
    assert_eq!(idx("entries_pkey")["constraint"], "entries_pkey");
    assert_eq!(idx("entries_name_owner_key")["unique"], true);
    assert_eq!(idx("entries_lower_name_idx")["predicate"], serde_json::Value::Null);
    assert_eq!(names(&e["triggers"]), ["entries_touch"], "the foreign keys' internal triggers are not listed");
    assert!(e["triggers"][0]["definition"].as_str().unwrap().starts_with("CREATE TRIGGER entries_touch BEFORE UPDATE"));
    assert_eq!(e["enums"][0]["values"], serde_json::json!(["draft", "live", "archived"]));
    assert_eq!(names(&e["sequences"]), ["entry_numbers"], "the identity's sequence is the column's");
    assert_eq!(e["sequences"][0]["owned_by"], "public.entries.number");
    assert_eq!(e["view_definition"], serde_json::Value::Null);

    // The same for people.
    let text = t.pgplane(&["schema", "describe", "public.entries", "--db", &db, "-f", f]).ok().stdout;
    expect_test::expect![[r#"
        table public.entries  -- Registry entries
        columns (10)
          id          bigint                    not null, identity always
          number      integer                   not null, default nextval('public.entry_numbers'::regclass)
          name        character varying(100)    not null, default 'unnamed'::character varying  -- Shown to people
          status      public.entry_status       not null, default 'draft'::public.entry_status
          history     public.entry_status[]
          price       numeric(10,2)
          quantity    integer                   not null, default 1
          total       numeric                   generated always as ((price * (quantity)::numeric)) stored
          owner_id    integer
          created_at  timestamp with time zone  not null, default now()
        primary key
          entries_pkey  PRIMARY KEY (id)
        unique constraints
          entries_name_owner_key  UNIQUE (owner_id, name)
        check constraints
          entries_price_check  CHECK (price >= 0::numeric)
          entries_quantity_positive  CHECK (quantity > 0)
        foreign keys
          entries_owner_id_fkey  FOREIGN KEY (owner_id) REFERENCES public.owners(id) ON DELETE CASCADE
        referenced by
          audit.events (entry_id) → (id)  events_entry_id_fkey  on delete no action
          public.entry_tags (entry_id) → (id)  entry_tags_entry_id_fkey  on delete no action
        indexes
          entries_live_idx (partial)  CREATE INDEX entries_live_idx ON public.entries USING btree (created_at DESC) WHERE (status = 'live'::public.entry_status)
          entries_lower_name_idx  CREATE INDEX entries_lower_name_idx ON public.entries USING btree (lower((name)::text))
          entries_name_owner_key (unique)  CREATE UNIQUE INDEX entries_name_owner_key ON public.entries USING btree (owner_id, name)
          entries_pkey (primary)  CREATE UNIQUE INDEX entries_pkey ON public.entries USING btree (id)
        triggers
          entries_touch  CREATE TRIGGER entries_touch BEFORE UPDATE ON public.entries FOR EACH ROW WHEN (((old.name)::text IS DISTINCT FROM (new.name)::text)) EXECUTE FUNCTION public.touch()
        enums
          public.entry_status  ('draft', 'live', 'archived')
        sequences
          public.entry_numbers  integer start 100 increment 10 min 1 max 100000 cycle, owned by public.entries.number
    "#]].assert_eq(&text);

    // A view and a partitioned table.
    let v = t.pgplane(&["schema", "describe", "live_entries", "--db", &db, "-f", f, "--json"]).ok().json();
    assert_eq!(v["kind"], "view");
    assert_eq!(v["description"], "What people see");
    assert!(v["view_definition"].as_str().unwrap().starts_with("SELECT entries.id,"), "{v}");
    assert_eq!(names(&v["columns"]), ["id", "name"]);
    let p = t.pgplane(&["schema", "describe", "audit.events", "--db", &db, "-f", f, "--json"]).ok().json();
    assert_eq!(p["kind"], "partitioned_table");
    assert_eq!(p["partition_key"], "RANGE (id)");
    assert_eq!(p["partitions"].as_array().unwrap().len(), 2);
    assert_eq!(p["enums"][0]["name"], "level");

    // Bare names: public first, else the only match, else an error naming the candidates.
    t.sql(&db, "CREATE SCHEMA billing; CREATE TABLE billing.events (id int); CREATE TABLE billing.entries (id int)");
    let url = with_db(&t.server.url, &db);
    let out = t.pgplane(&["schema", "describe", "entries", "--url", &url, "--json"]).ok().json();
    assert_eq!(out["schema"], "public");
    let out = t.pgplane(&["schema", "describe", "billing.entries", "--url", &url, "--json"]).ok().json();
    assert_eq!(out["columns"].as_array().unwrap().len(), 1);
    let amb = t.pgplane(&["schema", "describe", "events", "--url", &url]).fails();
    assert!(
        amb.stderr.contains("\"events\" is ambiguous, say which one: audit.events, billing.events"),
        "{}",
        amb.stderr
    );
    let missing = t.pgplane(&["schema", "describe", "nope", "--url", &url]).fails();
    assert!(missing.stderr.contains("there is no table or view \"nope\""), "{}", missing.stderr);
    // Partitions are folded into their parent.
    t.pgplane(&["schema", "describe", "audit.events_1", "--url", &url]).fails();
}

/// The introspection of a schema with every object kind, as JSON: what `schema diff`
/// reports as added against an empty database is the whole snapshot.
#[test]
fn snapshot_of_every_object_kind() {
    let t = T::new("sch_snapshot");
    let empty = database_with(&t, "sch_snapshot_empty", "");
    let db = database_with(&t, "sch_snapshot_kinds", EVERY_KIND);
    let f = t.manifest("modules:\n  - name: app\n    storage: database\n");
    let f = f.to_str().unwrap();

    let same = t.pgplane(&["schema", "diff", &db, &format!("db:{db}"), "-f", f, "--exit-code"]).ok().stdout;
    assert_eq!(same, "--- db:sch_snapshot_kinds\n+++ db:sch_snapshot_kinds\nno differences\n");

    let d = t.pgplane(&["schema", "diff", &format!("db:{empty}"), &format!("db:{db}"), "-f", f, "--json"]).ok().json();
    assert_eq!(d["from"], "db:sch_snapshot_empty");
    // Read back into the core types (so the JSON is theirs), in their field order.
    let mut snapshot = SchemaSnapshot::default();
    for c in d["changes"].as_array().unwrap() {
        assert_eq!(c["change"], "added", "{c}");
        let to = c["to"].clone();
        match c["object"].as_str().unwrap() {
            "table" | "view" => snapshot.tables.push(serde_json::from_value(to).unwrap()),
            "enum" => snapshot.enums.push(serde_json::from_value(to).unwrap()),
            "sequence" => snapshot.sequences.push(serde_json::from_value(to).unwrap()),
            other => panic!("{other}: {c}"),
        }
    }
    let sorted = {
        let mut s = snapshot.clone();
        s.normalize();
        s
    };
    assert_eq!(sorted, snapshot, "the diff lists objects in the snapshot's order");
    expect_test::expect_file!["fixtures/schema/every_kind.json"]
        .assert_eq(&(serde_json::to_string_pretty(&snapshot).unwrap() + "\n"));
}

#[test]
fn diff_of_two_databases_shows_each_kind_of_change() {
    let t = T::new("sch_diff");
    let old = database_with(&t, "sch_diff_old", EVERY_KIND);
    let new = database_with(&t, "sch_diff_new", EVERY_KIND);
    t.sql(
        &new,
        "CREATE TABLE audit_log (id bigint PRIMARY KEY, at timestamptz);
         DROP TABLE entry_tags;
         ALTER TABLE entries DROP COLUMN total;
         ALTER TABLE entries ADD COLUMN note text;
         ALTER TABLE entries ALTER COLUMN price TYPE numeric(12,2);
         ALTER TABLE entries ALTER COLUMN created_at DROP NOT NULL;
         ALTER TABLE entries ALTER COLUMN quantity SET DEFAULT 2;
         ALTER TABLE entries ADD CONSTRAINT entries_note_short CHECK (length(note) < 1000);
         ALTER TABLE entries DROP CONSTRAINT entries_quantity_positive;
         CREATE INDEX entries_note_idx ON entries (note);
         DROP INDEX entries_lower_name_idx;
         CREATE OR REPLACE VIEW live_entries AS SELECT id, name FROM entries WHERE status IN ('live', 'archived');
         COMMENT ON TABLE entries IS 'Every registry entry';
         COMMENT ON COLUMN entries.name IS 'Shown to people, unique per owner';
         ALTER TYPE entry_status ADD VALUE 'deleted';",
    );
    let f = t.manifest("modules:\n  - name: app\n    storage: database\n");
    let f = f.to_str().unwrap();
    let run = t.pgplane(&["schema", "diff", &old, &new, "-f", f, "--json", "--exit-code"]);
    assert_eq!(run.code, 2, "--exit-code: 2 when different\n{}", run.stderr);
    let d = run.json();
    let got: Vec<String> = d["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap_or("-").to_string();
            format!("{} {} {} {} {}", s("change"), s("object"), s("table"), s("name"), s("attribute"))
        })
        .collect();
    expect_test::expect![[r#"
        added table public.audit_log public.audit_log -
        changed column public.entries price type
        changed column public.entries quantity default
        changed column public.entries created_at nullable
        added column public.entries note -
        removed column public.entries total -
        added constraint public.entries entries_note_short -
        removed constraint public.entries entries_quantity_positive -
        removed index public.entries entries_lower_name_idx -
        added index public.entries entries_note_idx -
        changed comment public.entries public.entries text
        changed comment public.entries public.entries.name text
        removed table public.entry_tags public.entry_tags -
        changed view public.live_entries public.live_entries definition
        changed enum - public.entry_status values
        removed sequence - public.entry_tags_serial_no_seq -
    "#]]
    .assert_eq(&(got.join("\n") + "\n"));
    assert_eq!(d["summary"]["total"], got.len());
    let find = |object: &str, name: &str| {
        d["changes"].as_array().unwrap().iter().find(|c| c["object"] == object && c["name"] == name).unwrap().clone()
    };
    assert_eq!(find("enum", "public.entry_status")["to"], serde_json::json!(["draft", "live", "archived", "deleted"]));
    assert_eq!(find("column", "note")["to"]["type"], "text");

    let text = t.pgplane(&["schema", "diff", &old, &new, "-f", f]).ok().stdout;
    expect_test::expect![[r#"
        --- db:sch_diff_old
        +++ db:sch_diff_new
        + table public.audit_log (2 columns)
        ~ public.entries
            ~ column price type: numeric(10,2) → numeric(12,2)
            ~ column quantity default: 1 → 2
            ~ column created_at: now nullable (was NOT NULL)
            + column note text
            - column total numeric generated always as ((price * (quantity)::numeric)) stored
            + constraint entries_note_short  CHECK (length(note) < 1000)
            - constraint entries_quantity_positive  CHECK (quantity > 0)
            - index entries_lower_name_idx  CREATE INDEX entries_lower_name_idx ON public.entries USING btree (lower((name)::text))
            + index entries_note_idx  CREATE INDEX entries_note_idx ON public.entries USING btree (note)
            ~ comment: 'Registry entries' → 'Every registry entry'
            ~ comment on column name: 'Shown to people' → 'Shown to people, unique per owner'
        - table public.entry_tags (3 columns)
        ~ public.live_entries
            ~ view definition:
                  SELECT entries.id,
                      entries.name
                     FROM public.entries
                -   WHERE entries.status = 'live'::public.entry_status;
                +   WHERE entries.status = ANY (ARRAY['live'::public.entry_status, 'archived'::public.entry_status]);
        ~ enum public.entry_status values: 'draft', 'live', 'archived' → 'draft', 'live', 'archived', 'deleted'
        - sequence public.entry_tags_serial_no_seq integer start 1 increment 1

        16 changes: 4 added, 5 removed, 7 changed
    "#]].assert_eq(&text);
}

#[test]
fn diff_of_a_branch_against_its_template() {
    let t = T::new("sch_bdiff");
    t.write("db/V1__model.sql", "CREATE TABLE entries (id int PRIMARY KEY, name text);\n");
    t.write(
        "cand/V2__more.sql",
        "ALTER TABLE entries ADD COLUMN email text NOT NULL DEFAULT '';
         CREATE UNIQUE INDEX entries_email_idx ON entries (email) WHERE email <> '';\n",
    );
    let f = t.manifest(
        "modules:\n  - name: registry\n    storage: database\ntemplates:\n  - name: sch_bdiff_tpl\n    module: registry\n    sources: [db]\n",
    );
    let f = f.to_str().unwrap();
    t.pgplane(&["apply", "-f", f, "--yes"]).ok();
    t.pgplane(&["template", "build", "sch_bdiff_tpl", "-f", f]).ok();
    t.pgplane(&["branch", "create", "MR-7", "--template", "sch_bdiff_tpl", "--source", "cand", "-f", f]).ok();
    let text = t.pgplane(&["schema", "diff", "template:sch_bdiff_tpl", "branch:MR-7", "-f", f]).ok().stdout;
    expect_test::expect![[r#"
        --- template:sch_bdiff_tpl
        +++ branch:MR-7 (database sch_bdiff_tpl_mr_7)
        ~ public.entries
            + column email text not null, default ''::text
            + index entries_email_idx  CREATE UNIQUE INDEX entries_email_idx ON public.entries USING btree (email) WHERE (email <> ''::text)

        2 changes: 2 added, 0 removed, 0 changed
    "#]].assert_eq(&text);
    // And the other way round, as JSON.
    let d = t.pgplane(&["schema", "diff", "branch:MR-7", "template:sch_bdiff_tpl", "-f", f, "--json"]).ok().json();
    assert_eq!(d["summary"]["removed"], 2, "{d}");
}

#[test]
fn bad_sides_are_clear_errors() {
    let t = T::new("sch_sides");
    let db = database_with(&t, "sch_sides_db", "");
    let f = t.manifest("modules:\n  - name: app\n    storage: database\n");
    let f = f.to_str().unwrap();
    let bad = t.pgplane(&["schema", "diff", "tag:v1", &db, "-f", f]).fails();
    assert!(bad.stderr.contains("\"tag:v1\" is not something to compare: write db:NAME"), "{}", bad.stderr);
    let empty = t.pgplane(&["schema", "diff", &db, "branch:", "-f", f]).fails();
    assert!(empty.stderr.contains("\"branch:\" names nothing"), "{}", empty.stderr);
    let tpl = t.pgplane(&["schema", "diff", "template:nope", &db, "-f", f]).fails();
    assert!(tpl.stderr.contains("template \"nope\" is not in"), "{}", tpl.stderr);
    let branch = t.pgplane(&["schema", "diff", &db, "branch:nope", "-f", f]).fails();
    assert!(branch.stderr.contains("there is no branch \"nope\""), "{}", branch.stderr);
    let missing = t.pgplane(&["schema", "diff", &db, "db:sch_sides_missing", "-f", f]).fails();
    assert!(missing.stderr.contains("sch_sides_missing"), "{}", missing.stderr);
}
