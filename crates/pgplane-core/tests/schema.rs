//! Snapshot tests of `pgplane schema describe|diff` output from hand-made snapshots.

use expect_test::expect;
use pgplane_core::schema::{
    diff, diff_text, table_text, Column, Constraint, EnumType, ForeignKey, Index, SchemaSnapshot, Sequence,
    TableDetail, Trigger,
};

fn col(name: &str, ty: &str, nullable: bool, default: Option<&str>) -> Column {
    Column { name: name.into(), r#type: ty.into(), nullable, default: default.map(str::to_string), ..Column::default() }
}

fn constraint(name: &str, columns: &[&str], definition: &str) -> Constraint {
    Constraint {
        name: name.into(),
        columns: columns.iter().map(|c| c.to_string()).collect(),
        definition: definition.into(),
    }
}

fn index(name: &str, definition: &str, constraint: Option<&str>) -> Index {
    Index {
        name: name.into(),
        definition: definition.into(),
        unique: definition.contains("UNIQUE"),
        primary: name.ends_with("_pkey"),
        predicate: definition.split_once(" WHERE ").map(|(_, p)| p.to_string()),
        constraint: constraint.map(str::to_string),
    }
}

fn status_enum(values: &[&str]) -> EnumType {
    EnumType {
        schema: "public".into(),
        name: "entry_status".into(),
        values: values.iter().map(|v| v.to_string()).collect(),
        comment: None,
    }
}

fn owners_fk() -> ForeignKey {
    ForeignKey {
        name: "entries_owner_id_fkey".into(),
        schema: "public".into(),
        table: "entries".into(),
        columns: vec!["owner_id".into()],
        referenced_schema: "public".into(),
        referenced_table: "owners".into(),
        referenced_columns: vec!["id".into()],
        on_update: "no action".into(),
        on_delete: "cascade".into(),
        definition: "FOREIGN KEY (owner_id) REFERENCES owners(id) ON DELETE CASCADE".into(),
    }
}

fn numbers_sequence() -> Sequence {
    Sequence {
        schema: "public".into(),
        name: "entry_numbers".into(),
        r#type: "integer".into(),
        start: 100,
        increment: 10,
        min: 1,
        max: 100000,
        cache: 1,
        cycle: true,
        owned_by: Some("public.entries.number".into()),
        comment: None,
    }
}

/// A table with every feature `describe` shows.
fn entries() -> TableDetail {
    TableDetail {
        schema: "public".into(),
        name: "entries".into(),
        kind: "table".into(),
        description: Some("Registry entries".into()),
        columns: vec![
            Column { identity: Some("always".into()), ..col("id", "bigint", false, None) },
            col("number", "integer", false, Some("nextval('entry_numbers'::regclass)")),
            Column {
                comment: Some("Shown to people".into()),
                ..col("name", "character varying(100)", false, Some("'unnamed'::character varying"))
            },
            col("status", "entry_status", false, Some("'draft'::entry_status")),
            col("price", "numeric(10,2)", true, None),
            col("quantity", "integer", false, Some("1")),
            Column { generated: Some("(price * (quantity)::numeric)".into()), ..col("total", "numeric", true, None) },
            col("owner_id", "integer", true, None),
        ],
        primary_key: Some(constraint("entries_pkey", &["id"], "PRIMARY KEY (id)")),
        unique: vec![constraint("entries_name_owner_key", &["owner_id", "name"], "UNIQUE (owner_id, name)")],
        checks: vec![constraint("entries_price_check", &["price"], "CHECK (price >= 0::numeric)")],
        foreign_keys: vec![owners_fk()],
        referenced_by: vec![ForeignKey {
            name: "entry_tags_entry_id_fkey".into(),
            schema: "public".into(),
            table: "entry_tags".into(),
            columns: vec!["entry_id".into()],
            referenced_schema: "public".into(),
            referenced_table: "entries".into(),
            referenced_columns: vec!["id".into()],
            on_update: "no action".into(),
            on_delete: "no action".into(),
            definition: "FOREIGN KEY (entry_id) REFERENCES entries(id)".into(),
        }],
        indexes: vec![
            index(
                "entries_live_idx",
                "CREATE INDEX entries_live_idx ON public.entries USING btree (id) WHERE (status = 'live'::entry_status)",
                None,
            ),
            index(
                "entries_name_owner_key",
                "CREATE UNIQUE INDEX entries_name_owner_key ON public.entries USING btree (owner_id, name)",
                Some("entries_name_owner_key"),
            ),
            index(
                "entries_pkey",
                "CREATE UNIQUE INDEX entries_pkey ON public.entries USING btree (id)",
                Some("entries_pkey"),
            ),
        ],
        triggers: vec![Trigger {
            name: "entries_touch".into(),
            definition: "CREATE TRIGGER entries_touch BEFORE UPDATE ON public.entries FOR EACH ROW EXECUTE FUNCTION touch()"
                .into(),
            enabled: true,
        }],
        enums: vec![status_enum(&["draft", "live"])],
        sequences: vec![numbers_sequence()],
        ..TableDetail::default()
    }
}

fn live_view(definition: &str) -> TableDetail {
    TableDetail {
        schema: "public".into(),
        name: "live_entries".into(),
        kind: "view".into(),
        columns: vec![col("id", "bigint", true, None), col("name", "character varying(100)", true, None)],
        view_definition: Some(definition.into()),
        ..TableDetail::default()
    }
}

fn simple(schema: &str, name: &str, columns: &[(&str, &str)]) -> TableDetail {
    TableDetail {
        schema: schema.into(),
        name: name.into(),
        kind: "table".into(),
        columns: columns.iter().map(|(n, t)| col(n, t, true, None)).collect(),
        ..TableDetail::default()
    }
}

const VIEW_V1: &str =
    "SELECT entries.id,\n    entries.name\n   FROM entries\n  WHERE entries.status = 'live'::entry_status;";
const VIEW_V2: &str =
    "SELECT entries.id,\n    entries.name\n   FROM entries\n  WHERE entries.status = ANY (ARRAY['live'::entry_status, 'archived'::entry_status]);";

fn before() -> SchemaSnapshot {
    let mut s = SchemaSnapshot {
        tables: vec![
            entries(),
            live_view(VIEW_V1),
            simple("public", "legacy", &[("id", "integer")]),
            simple("audit", "events", &[("id", "bigint")]),
        ],
        enums: vec![status_enum(&["draft", "live"])],
        sequences: vec![numbers_sequence()],
    };
    s.normalize();
    s
}

/// One change of each kind against `before()`.
fn after() -> SchemaSnapshot {
    let mut e = entries();
    e.description = Some("Every registry entry".into());
    e.columns.retain(|c| c.name != "quantity" && c.name != "total");
    for c in &mut e.columns {
        match c.name.as_str() {
            "price" => {
                c.r#type = "numeric(12,2)".into();
                c.nullable = false;
            }
            "status" => c.default = Some("'live'::entry_status".into()),
            "name" => c.comment = Some("Shown to people, unique per owner".into()),
            _ => {}
        }
    }
    e.columns.push(Column { comment: Some("Free text".into()), ..col("note", "text", true, Some("''::text")) });
    e.checks = vec![
        constraint("entries_price_check", &["price"], "CHECK (price > 0::numeric)"),
        constraint("entries_note_short", &["note"], "CHECK (length(note) < 1000)"),
    ];
    e.unique.clear();
    e.indexes.retain(|i| i.name != "entries_name_owner_key" && i.name != "entries_live_idx");
    e.indexes.push(index(
        "entries_note_idx",
        "CREATE INDEX entries_note_idx ON public.entries USING btree (note)",
        None,
    ));
    e.triggers[0].enabled = false;
    let mut numbers = numbers_sequence();
    numbers.increment = 1;
    let mut s = SchemaSnapshot {
        tables: vec![
            e,
            live_view(VIEW_V2),
            simple("audit", "events", &[("id", "bigint")]),
            simple("public", "audit_log", &[("id", "bigint"), ("at", "timestamp with time zone")]),
        ],
        enums: vec![
            status_enum(&["draft", "live", "archived"]),
            EnumType { schema: "audit".into(), name: "level".into(), values: vec!["info".into()], comment: None },
        ],
        sequences: vec![numbers],
    };
    s.normalize();
    s
}

#[test]
fn describe_text_shows_every_section() {
    expect![[r#"
        table public.entries  -- Registry entries
        columns (8)
          id        bigint                  not null, identity always
          number    integer                 not null, default nextval('entry_numbers'::regclass)
          name      character varying(100)  not null, default 'unnamed'::character varying  -- Shown to people
          status    entry_status            not null, default 'draft'::entry_status
          price     numeric(10,2)
          quantity  integer                 not null, default 1
          total     numeric                 generated always as ((price * (quantity)::numeric)) stored
          owner_id  integer
        primary key
          entries_pkey  PRIMARY KEY (id)
        unique constraints
          entries_name_owner_key  UNIQUE (owner_id, name)
        check constraints
          entries_price_check  CHECK (price >= 0::numeric)
        foreign keys
          entries_owner_id_fkey  FOREIGN KEY (owner_id) REFERENCES owners(id) ON DELETE CASCADE
        referenced by
          public.entry_tags (entry_id) → (id)  entry_tags_entry_id_fkey  on delete no action
        indexes
          entries_live_idx (partial)  CREATE INDEX entries_live_idx ON public.entries USING btree (id) WHERE (status = 'live'::entry_status)
          entries_name_owner_key (unique)  CREATE UNIQUE INDEX entries_name_owner_key ON public.entries USING btree (owner_id, name)
          entries_pkey (primary)  CREATE UNIQUE INDEX entries_pkey ON public.entries USING btree (id)
        triggers
          entries_touch  CREATE TRIGGER entries_touch BEFORE UPDATE ON public.entries FOR EACH ROW EXECUTE FUNCTION touch()
        enums
          public.entry_status  ('draft', 'live')
        sequences
          public.entry_numbers  integer start 100 increment 10 min 1 max 100000 cycle, owned by public.entries.number
    "#]]
    .assert_eq(&table_text(&entries()));
    expect![[r#"
        view public.live_entries
        columns (2)
          id    bigint
          name  character varying(100)
        definition
          SELECT entries.id,
              entries.name
             FROM entries
            WHERE entries.status = 'live'::entry_status;
    "#]]
    .assert_eq(&table_text(&live_view(VIEW_V1)));
}

#[test]
fn diff_of_a_snapshot_with_itself_is_empty() {
    let d = diff(&before(), &before());
    assert!(d.is_empty());
    assert_eq!(diff_text(&d), "no differences\n");
    expect![[r#"{"changes":[],"summary":{"added":0,"removed":0,"changed":0,"total":0}}"#]]
        .assert_eq(&serde_json::to_string(&d).unwrap());
}

#[test]
fn diff_text_reads_like_a_review() {
    expect![[r#"
        + table public.audit_log (2 columns)
        ~ public.entries
            ~ column status default: 'draft'::entry_status → 'live'::entry_status
            ~ column price type: numeric(10,2) → numeric(12,2)
            ~ column price: now NOT NULL (was nullable)
            + column note text default ''::text
            - column quantity integer not null, default 1
            - column total numeric generated always as ((price * (quantity)::numeric)) stored
            - constraint entries_name_owner_key  UNIQUE (owner_id, name)
            + constraint entries_note_short  CHECK (length(note) < 1000)
            ~ constraint entries_price_check:
                - CHECK (price >= 0::numeric)
                + CHECK (price > 0::numeric)
            - index entries_live_idx  CREATE INDEX entries_live_idx ON public.entries USING btree (id) WHERE (status = 'live'::entry_status)
            + index entries_note_idx  CREATE INDEX entries_note_idx ON public.entries USING btree (note)
            ~ trigger entries_touch: now disabled
            ~ comment: 'Registry entries' → 'Every registry entry'
            ~ comment on column name: 'Shown to people' → 'Shown to people, unique per owner'
        - table public.legacy (1 column)
        ~ public.live_entries
            ~ view definition:
                  SELECT entries.id,
                      entries.name
                     FROM entries
                -   WHERE entries.status = 'live'::entry_status;
                +   WHERE entries.status = ANY (ARRAY['live'::entry_status, 'archived'::entry_status]);
        + enum audit.level ('info')
        ~ enum public.entry_status values: 'draft', 'live' → 'draft', 'live', 'archived'
        ~ sequence public.entry_numbers increment: 10 → 1

        20 changes: 5 added, 5 removed, 10 changed
    "#]]
    .assert_eq(&diff_text(&diff(&before(), &after())));
}

#[test]
fn diff_json_is_stable() {
    let d = diff(&before(), &after());
    // Whole objects of added/removed tables are left out here to keep the snapshot short.
    let mut v = serde_json::to_value(&d).unwrap();
    for c in v["changes"].as_array_mut().unwrap() {
        for side in ["from", "to"] {
            if c["object"] == "table" && c[side].is_object() {
                c[side] = serde_json::json!("…");
            }
        }
    }
    let lines: Vec<String> = v["changes"].as_array().unwrap().iter().map(|c| c.to_string()).collect();
    expect![[r#"
        {"attribute":null,"change":"added","from":null,"name":"public.audit_log","object":"table","table":"public.audit_log","to":"…"}
        {"attribute":"default","change":"changed","from":"'draft'::entry_status","name":"status","object":"column","table":"public.entries","to":"'live'::entry_status"}
        {"attribute":"type","change":"changed","from":"numeric(10,2)","name":"price","object":"column","table":"public.entries","to":"numeric(12,2)"}
        {"attribute":"nullable","change":"changed","from":true,"name":"price","object":"column","table":"public.entries","to":false}
        {"attribute":null,"change":"added","from":null,"name":"note","object":"column","table":"public.entries","to":{"comment":"Free text","default":"''::text","generated":null,"identity":null,"name":"note","nullable":true,"type":"text"}}
        {"attribute":null,"change":"removed","from":{"comment":null,"default":"1","generated":null,"identity":null,"name":"quantity","nullable":false,"type":"integer"},"name":"quantity","object":"column","table":"public.entries","to":null}
        {"attribute":null,"change":"removed","from":{"comment":null,"default":null,"generated":"(price * (quantity)::numeric)","identity":null,"name":"total","nullable":true,"type":"numeric"},"name":"total","object":"column","table":"public.entries","to":null}
        {"attribute":null,"change":"removed","from":"UNIQUE (owner_id, name)","name":"entries_name_owner_key","object":"constraint","table":"public.entries","to":null}
        {"attribute":null,"change":"added","from":null,"name":"entries_note_short","object":"constraint","table":"public.entries","to":"CHECK (length(note) < 1000)"}
        {"attribute":"definition","change":"changed","from":"CHECK (price >= 0::numeric)","name":"entries_price_check","object":"constraint","table":"public.entries","to":"CHECK (price > 0::numeric)"}
        {"attribute":null,"change":"removed","from":"CREATE INDEX entries_live_idx ON public.entries USING btree (id) WHERE (status = 'live'::entry_status)","name":"entries_live_idx","object":"index","table":"public.entries","to":null}
        {"attribute":null,"change":"added","from":null,"name":"entries_note_idx","object":"index","table":"public.entries","to":"CREATE INDEX entries_note_idx ON public.entries USING btree (note)"}
        {"attribute":"enabled","change":"changed","from":true,"name":"entries_touch","object":"trigger","table":"public.entries","to":false}
        {"attribute":"text","change":"changed","from":"Registry entries","name":"public.entries","object":"comment","table":"public.entries","to":"Every registry entry"}
        {"attribute":"text","change":"changed","from":"Shown to people","name":"public.entries.name","object":"comment","table":"public.entries","to":"Shown to people, unique per owner"}
        {"attribute":null,"change":"removed","from":"…","name":"public.legacy","object":"table","table":"public.legacy","to":null}
        {"attribute":"definition","change":"changed","from":"SELECT entries.id,\n    entries.name\n   FROM entries\n  WHERE entries.status = 'live'::entry_status;","name":"public.live_entries","object":"view","table":"public.live_entries","to":"SELECT entries.id,\n    entries.name\n   FROM entries\n  WHERE entries.status = ANY (ARRAY['live'::entry_status, 'archived'::entry_status]);"}
        {"attribute":null,"change":"added","from":null,"name":"audit.level","object":"enum","table":null,"to":{"comment":null,"name":"level","schema":"audit","values":["info"]}}
        {"attribute":"values","change":"changed","from":["draft","live"],"name":"public.entry_status","object":"enum","table":null,"to":["draft","live","archived"]}
        {"attribute":"increment","change":"changed","from":10,"name":"public.entry_numbers","object":"sequence","table":null,"to":1}
    "#]]
    .assert_eq(&(lines.join("\n") + "\n"));
    expect![[r#"{"added":5,"changed":10,"removed":5,"total":20}"#]].assert_eq(&v["summary"].to_string());
    // The JSON reads back into the same diff.
    let back: pgplane_core::schema::SchemaDiff = serde_json::from_str(&serde_json::to_string(&d).unwrap()).unwrap();
    assert_eq!(back, d);
}

#[test]
fn lookup_by_qualified_or_bare_name() {
    let mut s = before();
    s.tables.push(simple("audit", "legacy", &[]));
    s.tables.push(simple("audit", "only_here", &[]));
    s.tables.push(simple("billing", "only_here", &[]));
    s.tables.push(simple("billing", "invoices", &[]));
    s.normalize();
    assert_eq!(s.table("audit.legacy").unwrap().schema, "audit");
    assert_eq!(s.table("legacy").unwrap().schema, "public", "public first");
    assert_eq!(s.table("invoices").unwrap().schema, "billing", "else the only match");
    assert!(s.table("nope").is_none());
    assert!(s.table("nope.legacy").is_none());
    let err = s.find("only_here").unwrap_err();
    assert_eq!(err.to_string(), r#""only_here" is ambiguous, say which one: audit.only_here, billing.only_here"#);
    assert!(s.table("only_here").is_none());
}
