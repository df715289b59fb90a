//! `pgplane schema diff`: what changed between two schema snapshots.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::text::{column_attributes, one_line};
use super::{Column, EnumType, SchemaSnapshot, Sequence, TableDetail};

/// The differences between two snapshots, `from` → `to`.
///
/// JSON (stable for tools; every key always present):
///
/// ```json
/// {"changes": [{"object": "column", "name": "price", "table": "public.entries",
///               "change": "changed", "attribute": "type",
///               "from": "integer", "to": "numeric(10,2)"}, …],
///  "summary": {"added": 1, "removed": 0, "changed": 1, "total": 2}}
/// ```
///
/// - `object`: `table` (also partitioned and foreign tables), `view` (also materialized),
///   `column`, `constraint`, `index`, `trigger`, `comment`, `enum` or `sequence`.
/// - `name`: tables, views, enums and sequences by `schema.name`; columns, constraints,
///   indexes and triggers by their own name, with their relation in `table`. A comment's
///   `name` is the full name of what it is on: `schema.table`, `schema.table.column`,
///   `schema.enum` or `schema.sequence`.
/// - `table`: the relation (`schema.name`) a change belongs to, also for the relation's own
///   changes; `null` for enums and sequences.
/// - `change`: `added`, `removed` or `changed`. `attribute` names what changed (`null` for
///   added and removed): `kind`, `partition_key`, `partitions` (tables), `definition`
///   (views, constraints, indexes, triggers), `enabled` (triggers), `type`, `nullable`, `default`, `identity`, `generated`
///   (columns), `values` (enums), `type`, `start`, `increment`, `min`, `max`, `cache`,
///   `cycle`, `owned_by` (sequences), `text` (comments).
/// - `from` / `to`: `null` on the side where the object is absent; the whole object (as
///   `schema describe --json` shows it) for added and removed tables, views, columns,
///   enums and sequences; the definition text for constraints, indexes and triggers; the
///   old and new value of the attribute for changes.
///
/// Order: relations by schema and name (each relation's own change, then its columns in
/// table order, then removed columns, constraints, indexes, triggers, comments by name),
/// then enums, then sequences. Not compared: column order, the indexes that implement a
/// constraint (the constraint stands for them), the columns of views (their definition
/// does), incoming foreign keys (they are the other table's), functions, domains,
/// privileges and data.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SchemaDiff {
    pub changes: Vec<Change>,
    pub summary: Summary,
}

impl SchemaDiff {
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }
}

/// One difference; see [`SchemaDiff`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Change {
    pub object: SchemaObject,
    pub name: String,
    pub table: Option<String>,
    pub change: ChangeKind,
    pub attribute: Option<String>,
    pub from: Option<Value>,
    pub to: Option<Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum SchemaObject {
    Table,
    View,
    Column,
    Constraint,
    Index,
    Trigger,
    Comment,
    Enum,
    Sequence,
}

impl SchemaObject {
    pub fn as_str(self) -> &'static str {
        match self {
            SchemaObject::Table => "table",
            SchemaObject::View => "view",
            SchemaObject::Column => "column",
            SchemaObject::Constraint => "constraint",
            SchemaObject::Index => "index",
            SchemaObject::Trigger => "trigger",
            SchemaObject::Comment => "comment",
            SchemaObject::Enum => "enum",
            SchemaObject::Sequence => "sequence",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    Added,
    Removed,
    Changed,
}

/// How many changes of each kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Summary {
    pub added: usize,
    pub removed: usize,
    pub changed: usize,
    pub total: usize,
}

/// Collects changes in output order.
struct Out(Vec<Change>);

impl Out {
    /// `at`: the object, its name and its table.
    fn push(
        &mut self,
        at: (SchemaObject, &str, Option<&str>),
        change: ChangeKind,
        attribute: Option<&str>,
        from: Option<Value>,
        to: Option<Value>,
    ) {
        let (object, name, table) = at;
        self.0.push(Change {
            object,
            name: name.to_string(),
            table: table.map(str::to_string),
            change,
            attribute: attribute.map(str::to_string),
            from,
            to,
        });
    }

    /// Added / removed / changed by the presence and equality of the two sides.
    fn compare<T: PartialEq + Serialize>(
        &mut self,
        object: SchemaObject,
        name: &str,
        table: Option<&str>,
        attribute: &str,
        from: &Option<T>,
        to: &Option<T>,
    ) {
        let kind = match (from, to) {
            (None, None) => return,
            (Some(a), Some(b)) if a == b => return,
            (None, Some(_)) => ChangeKind::Added,
            (Some(_), None) => ChangeKind::Removed,
            (Some(_), Some(_)) => ChangeKind::Changed,
        };
        let attribute = (kind == ChangeKind::Changed).then_some(attribute);
        self.push((object, name, table), kind, attribute, value(from), value(to));
    }

    /// A change of one attribute whose two values differ.
    fn attribute<T: PartialEq + Serialize>(
        &mut self,
        object: SchemaObject,
        name: &str,
        table: Option<&str>,
        attribute: &str,
        from: &T,
        to: &T,
    ) {
        if from != to {
            self.push((object, name, table), ChangeKind::Changed, Some(attribute), Some(json!(from)), Some(json!(to)));
        }
    }

    /// Comments: `added` when one appears, `removed` when it goes, `changed` otherwise.
    fn comment(&mut self, name: &str, table: Option<&str>, from: &Option<String>, to: &Option<String>) {
        self.compare(SchemaObject::Comment, name, table, "text", from, to);
    }
}

fn value<T: Serialize>(v: &Option<T>) -> Option<Value> {
    v.as_ref().map(|v| json!(v))
}

fn relation_object(t: &TableDetail) -> SchemaObject {
    if t.is_view() {
        SchemaObject::View
    } else {
        SchemaObject::Table
    }
}

/// Compares two snapshots; see [`SchemaDiff`] for the shape. `diff(a, a)` is empty.
pub fn diff(from: &SchemaSnapshot, to: &SchemaSnapshot) -> SchemaDiff {
    let mut out = Out(Vec::new());

    let rel = |s: &SchemaSnapshot| -> BTreeMap<(String, String), TableDetail> {
        s.tables.iter().map(|t| ((t.schema.clone(), t.name.clone()), t.clone())).collect()
    };
    let (a, b) = (rel(from), rel(to));
    let keys: BTreeSet<&(String, String)> = a.keys().chain(b.keys()).collect();
    for key in keys {
        match (a.get(key), b.get(key)) {
            (Some(x), Some(y)) if x.is_view() == y.is_view() => relation(&mut out, x, y),
            (x, y) => {
                // Absent on one side, or a table on one side and a view on the other.
                if let Some(x) = x {
                    let q = x.qualified();
                    out.push((relation_object(x), &q, Some(&q)), ChangeKind::Removed, None, Some(json!(x)), None);
                }
                if let Some(y) = y {
                    let q = y.qualified();
                    out.push((relation_object(y), &q, Some(&q)), ChangeKind::Added, None, None, Some(json!(y)));
                }
            }
        }
    }

    let enums = |s: &SchemaSnapshot| -> BTreeMap<(String, String), EnumType> {
        s.enums.iter().map(|e| ((e.schema.clone(), e.name.clone()), e.clone())).collect()
    };
    let (a, b) = (enums(from), enums(to));
    for key in a.keys().chain(b.keys()).collect::<BTreeSet<_>>() {
        let (x, y) = (a.get(key), b.get(key));
        let q = format!("{}.{}", key.0, key.1);
        match (x, y) {
            (Some(x), Some(y)) => {
                out.attribute(SchemaObject::Enum, &q, None, "values", &x.values, &y.values);
                out.comment(&q, None, &x.comment, &y.comment);
            }
            _ => out.compare(SchemaObject::Enum, &q, None, "", &x.cloned(), &y.cloned()),
        }
    }

    let sequences = |s: &SchemaSnapshot| -> BTreeMap<(String, String), Sequence> {
        s.sequences.iter().map(|e| ((e.schema.clone(), e.name.clone()), e.clone())).collect()
    };
    let (a, b) = (sequences(from), sequences(to));
    for key in a.keys().chain(b.keys()).collect::<BTreeSet<_>>() {
        let (x, y) = (a.get(key), b.get(key));
        let q = format!("{}.{}", key.0, key.1);
        match (x, y) {
            (Some(x), Some(y)) => {
                let s = SchemaObject::Sequence;
                out.attribute(s, &q, None, "type", &x.r#type, &y.r#type);
                out.attribute(s, &q, None, "start", &x.start, &y.start);
                out.attribute(s, &q, None, "increment", &x.increment, &y.increment);
                out.attribute(s, &q, None, "min", &x.min, &y.min);
                out.attribute(s, &q, None, "max", &x.max, &y.max);
                out.attribute(s, &q, None, "cache", &x.cache, &y.cache);
                out.attribute(s, &q, None, "cycle", &x.cycle, &y.cycle);
                out.attribute(s, &q, None, "owned_by", &x.owned_by, &y.owned_by);
                out.comment(&q, None, &x.comment, &y.comment);
            }
            _ => out.compare(SchemaObject::Sequence, &q, None, "", &x.cloned(), &y.cloned()),
        }
    }

    let changes = out.0;
    let count = |k: ChangeKind| changes.iter().filter(|c| c.change == k).count();
    let summary = Summary {
        added: count(ChangeKind::Added),
        removed: count(ChangeKind::Removed),
        changed: count(ChangeKind::Changed),
        total: changes.len(),
    };
    SchemaDiff { changes, summary }
}

/// Two relations of the same name, both tables or both views.
fn relation(out: &mut Out, x: &TableDetail, y: &TableDetail) {
    let q = y.qualified();
    let table = Some(q.as_str());
    let object = relation_object(y);
    out.attribute(object, &q, table, "kind", &x.kind, &y.kind);
    out.attribute(object, &q, table, "definition", &x.view_definition, &y.view_definition);
    out.attribute(object, &q, table, "partition_key", &x.partition_key, &y.partition_key);
    out.attribute(object, &q, table, "partitions", &x.partitions, &y.partitions);

    if !y.is_view() {
        let old: BTreeMap<&str, &Column> = x.columns.iter().map(|c| (c.name.as_str(), c)).collect();
        let new: BTreeSet<&str> = y.columns.iter().map(|c| c.name.as_str()).collect();
        let col = SchemaObject::Column;
        for c in &y.columns {
            let Some(o) = old.get(c.name.as_str()) else {
                out.push((col, &c.name, table), ChangeKind::Added, None, None, Some(json!(c)));
                continue;
            };
            out.attribute(col, &c.name, table, "type", &o.r#type, &c.r#type);
            out.attribute(col, &c.name, table, "nullable", &o.nullable, &c.nullable);
            out.attribute(col, &c.name, table, "default", &o.default, &c.default);
            out.attribute(col, &c.name, table, "identity", &o.identity, &c.identity);
            out.attribute(col, &c.name, table, "generated", &o.generated, &c.generated);
        }
        for c in x.columns.iter().filter(|c| !new.contains(c.name.as_str())) {
            out.push((col, &c.name, table), ChangeKind::Removed, None, Some(json!(c)), None);
        }
    }

    let constraints = |t: &TableDetail| -> BTreeMap<String, String> {
        t.constraints().into_iter().map(|(_, name, def)| (name.to_string(), def.to_string())).collect()
    };
    named(out, SchemaObject::Constraint, &q, &constraints(x), &constraints(y));

    let indexes = |t: &TableDetail| -> BTreeMap<String, String> {
        t.indexes.iter().filter(|i| i.constraint.is_none()).map(|i| (i.name.clone(), i.definition.clone())).collect()
    };
    named(out, SchemaObject::Index, &q, &indexes(x), &indexes(y));

    let triggers = |t: &TableDetail| -> BTreeMap<String, String> {
        t.triggers.iter().map(|tr| (tr.name.clone(), tr.definition.clone())).collect()
    };
    named(out, SchemaObject::Trigger, &q, &triggers(x), &triggers(y));
    for tr in &y.triggers {
        if let Some(o) = x.triggers.iter().find(|o| o.name == tr.name) {
            out.attribute(SchemaObject::Trigger, &tr.name, table, "enabled", &o.enabled, &tr.enabled);
        }
    }

    out.comment(&q, table, &x.description, &y.description);
    for c in &y.columns {
        let from = x.columns.iter().find(|o| o.name == c.name).map(|o| o.comment.clone());
        // A new column's comment comes with the column.
        if let Some(from) = from {
            out.comment(&format!("{q}.{}", c.name), table, &from, &c.comment);
        }
    }
}

/// Objects identified by name within a table and compared by their definition.
fn named(out: &mut Out, object: SchemaObject, table: &str, x: &BTreeMap<String, String>, y: &BTreeMap<String, String>) {
    for name in x.keys().chain(y.keys()).collect::<BTreeSet<_>>() {
        out.compare(object, name, Some(table), "definition", &x.get(name), &y.get(name));
    }
}

/// The diff for people, like a code review: one block per relation (`~ schema.name` and
/// its changes indented), `+`/`-` lines for relations that are new or gone, then enums and
/// sequences, then a count. `no differences` when there are none.
pub fn diff_text(d: &SchemaDiff) -> String {
    if d.is_empty() {
        return "no differences\n".to_string();
    }
    let mut out = String::new();
    let mut i = 0;
    while i < d.changes.len() {
        let group = d.changes[i].table.clone();
        let mut j = i + 1;
        while j < d.changes.len() && group.is_some() && d.changes[j].table == group {
            j += 1;
        }
        let block = &d.changes[i..j];
        let whole = block.len() == 1
            && matches!(block[0].object, SchemaObject::Table | SchemaObject::View)
            && block[0].change != ChangeKind::Changed;
        match &group {
            Some(table) if !whole => {
                out.push_str(&format!("~ {table}\n"));
                for c in block {
                    for line in change_lines(c) {
                        out.push_str(&format!("    {line}\n"));
                    }
                }
            }
            _ => {
                for c in block {
                    for line in change_lines(c) {
                        out.push_str(&format!("{line}\n"));
                    }
                }
            }
        }
        i = j;
    }
    let s = &d.summary;
    let plural = if s.total == 1 { "" } else { "s" };
    out.push_str(&format!(
        "\n{} change{plural}: {} added, {} removed, {} changed\n",
        s.total, s.added, s.removed, s.changed
    ));
    out
}

fn marker(c: &Change) -> &'static str {
    match c.change {
        ChangeKind::Added => "+",
        ChangeKind::Removed => "-",
        ChangeKind::Changed => "~",
    }
}

fn text(v: &Option<Value>) -> String {
    match v {
        None | Some(Value::Null) => "(none)".to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(items)) => {
            items.iter().map(|i| format!("'{}'", i.as_str().unwrap_or_default())).collect::<Vec<_>>().join(", ")
        }
        Some(other) => other.to_string(),
    }
}

/// The object a change is about, as its text line shows it.
fn subject(c: &Change) -> String {
    match c.object {
        SchemaObject::Comment => match &c.table {
            Some(t) if c.name != *t => {
                format!("comment on column {}", c.name.strip_prefix(&format!("{t}.")).unwrap_or(&c.name))
            }
            Some(_) => "comment".to_string(),
            None => format!("comment on {}", c.name),
        },
        // A relation's own change inside its block: the block's header names it.
        SchemaObject::Table | SchemaObject::View if c.change == ChangeKind::Changed => c.object.as_str().to_string(),
        o => format!("{} {}", o.as_str(), c.name),
    }
}

/// One change as text lines (more than one for multi-line view definitions).
fn change_lines(c: &Change) -> Vec<String> {
    let m = marker(c);
    let side = if c.change == ChangeKind::Removed { &c.from } else { &c.to };
    match (c.change, c.attribute.as_deref()) {
        (ChangeKind::Added | ChangeKind::Removed, _) => {
            let detail = match (c.object, side) {
                (SchemaObject::Table | SchemaObject::View, Some(v)) => {
                    let t: TableDetail = serde_json::from_value(v.clone()).unwrap_or_default();
                    let n = t.columns.len();
                    let kind = match t.kind.as_str() {
                        "table" | "view" => String::new(),
                        other => format!("{}, ", other.replace('_', " ")),
                    };
                    format!(" ({kind}{n} column{})", if n == 1 { "" } else { "s" })
                }
                (SchemaObject::Column, Some(v)) => {
                    let col: Column = serde_json::from_value(v.clone()).unwrap_or_default();
                    format!(" {} {}", col.r#type, column_attributes(&col)).trim_end().to_string()
                }
                (SchemaObject::Enum, Some(v)) => {
                    let e: EnumType = serde_json::from_value(v.clone()).unwrap_or_default();
                    let values: Vec<String> = e.values.iter().map(|v| format!("'{v}'")).collect();
                    format!(" ({})", values.join(", "))
                }
                (SchemaObject::Sequence, Some(v)) => {
                    let s: Sequence = serde_json::from_value(v.clone()).unwrap_or_default();
                    format!(" {} start {} increment {}", s.r#type, s.start, s.increment)
                }
                (SchemaObject::Comment, v) => format!(": {}", quoted(v)),
                (_, v) => format!("  {}", one_line(&text(v))),
            };
            vec![format!("{m} {}{detail}", subject(c))]
        }
        (ChangeKind::Changed, Some("definition")) if matches!(c.object, SchemaObject::Table | SchemaObject::View) => {
            let mut lines = vec![format!("{m} {} definition:", subject(c))];
            lines.extend(line_diff(&text(&c.from), &text(&c.to)).into_iter().map(|l| format!("    {l}")));
            lines
        }
        (ChangeKind::Changed, Some("nullable")) => {
            let now =
                if c.to == Some(Value::Bool(true)) { "nullable (was NOT NULL)" } else { "NOT NULL (was nullable)" };
            vec![format!("{m} {}: now {now}", subject(c))]
        }
        (ChangeKind::Changed, Some("enabled")) => {
            let now = if c.to == Some(Value::Bool(true)) { "enabled" } else { "disabled" };
            vec![format!("{m} {}: now {now}", subject(c))]
        }
        (ChangeKind::Changed, Some("text")) => {
            vec![format!("{m} {}: {} → {}", subject(c), quoted(&c.from), quoted(&c.to))]
        }
        (ChangeKind::Changed, Some("definition")) => vec![
            format!("{m} {}:", subject(c)),
            format!("    - {}", one_line(&text(&c.from))),
            format!("    + {}", one_line(&text(&c.to))),
        ],
        (ChangeKind::Changed, attribute) => vec![format!(
            "{m} {} {}: {} → {}",
            subject(c),
            attribute.unwrap_or("?").replace('_', " "),
            one_line(&text(&c.from)),
            one_line(&text(&c.to))
        )],
    }
}

fn quoted(v: &Option<Value>) -> String {
    match v {
        Some(Value::String(s)) => format!("'{}'", one_line(s)),
        _ => "(none)".to_string(),
    }
}

/// A line diff (longest common subsequence): `  ` kept, `- ` removed, `+ ` added.
fn line_diff(a: &str, b: &str) -> Vec<String> {
    let (a, b): (Vec<&str>, Vec<&str>) = (a.lines().collect(), b.lines().collect());
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] { lcs[i + 1][j + 1] + 1 } else { lcs[i + 1][j].max(lcs[i][j + 1]) };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            out.push(format!("  {}", a[i]));
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            out.push(format!("- {}", a[i]));
            i += 1;
        } else {
            out.push(format!("+ {}", b[j]));
            j += 1;
        }
    }
    out
}
