//! Schema introspection results (what `pgplane schema` and the HTTP API show): the
//! summary of every table (`TableSummary`), one relation described in full
//! (`TableDetail`), a whole database (`SchemaSnapshot`), and the difference of two
//! databases ([`diff`]), each with a text rendering for people.

mod diff;
mod text;

use serde::{Deserialize, Serialize};

pub use diff::{diff, diff_text, Change, ChangeKind, SchemaDiff, SchemaObject, Summary};
pub use text::{column_attributes, table_text};

/// One table or view of a database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TableSummary {
    pub name: String,
    pub schema: String,
    /// `table`, `partitioned_table`, `view`, `materialized_view` or `foreign_table`.
    pub kind: String,
    /// The table's comment.
    pub description: Option<String>,
    pub columns: i64,
    /// The planner's estimate (`reltuples`); 0 before the first ANALYZE.
    pub estimated_rows: i64,
    /// Table, TOAST and indexes, estimated from the planner's page counts (`relpages`, as of
    /// the last VACUUM/ANALYZE/CREATE INDEX, like `estimated_rows`); 0 for views and
    /// partitioned parents. Exact sizes would cost a `stat()` per fork of every relation.
    pub size_bytes: i64,
}

/// One table or view described in full (`pgplane schema describe`).
///
/// Partitions are folded into their parent: they are not relations of their own here, the
/// parent lists them in `partitions`. Constraints, indexes and triggers are sorted by name;
/// columns are in table order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct TableDetail {
    pub schema: String,
    pub name: String,
    /// `table`, `partitioned_table`, `view`, `materialized_view` or `foreign_table`.
    pub kind: String,
    /// The relation's comment.
    pub description: Option<String>,
    pub columns: Vec<Column>,
    pub primary_key: Option<Constraint>,
    pub unique: Vec<Constraint>,
    pub checks: Vec<Constraint>,
    /// `EXCLUDE` constraints.
    pub exclusions: Vec<Constraint>,
    /// Foreign keys of this table (outgoing).
    pub foreign_keys: Vec<ForeignKey>,
    /// Foreign keys of other tables (or this one) that reference this table (incoming).
    pub referenced_by: Vec<ForeignKey>,
    /// Every index, including those that implement a primary key, unique or exclusion constraint.
    pub indexes: Vec<Index>,
    /// User triggers (not the internal ones of foreign keys).
    pub triggers: Vec<Trigger>,
    /// `pg_get_viewdef` of a view or materialized view.
    pub view_definition: Option<String>,
    /// `pg_get_partkeydef` of a partitioned table, e.g. `RANGE (at)`.
    pub partition_key: Option<String>,
    /// The partitions of a partitioned table: `schema.name FOR VALUES …`.
    pub partitions: Vec<String>,
    /// The enum types its columns use (as their type or their array's element type).
    pub enums: Vec<EnumType>,
    /// The sequences owned by its columns (`serial`, `OWNED BY`); identity columns'
    /// sequences are internal and shown as the column's `identity`.
    pub sequences: Vec<Sequence>,
}

impl TableDetail {
    /// `schema.name`.
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }

    /// Views and materialized views.
    pub fn is_view(&self) -> bool {
        self.kind.contains("view")
    }

    /// Primary key, unique, check, exclusion and foreign-key constraints with their kind
    /// (`primary_key`, `unique`, `check`, `exclusion`, `foreign_key`), sorted by name.
    pub fn constraints(&self) -> Vec<(&'static str, &str, &str)> {
        let mut all: Vec<(&'static str, &str, &str)> = Vec::new();
        all.extend(self.primary_key.iter().map(|c| ("primary_key", c.name.as_str(), c.definition.as_str())));
        all.extend(self.unique.iter().map(|c| ("unique", c.name.as_str(), c.definition.as_str())));
        all.extend(self.checks.iter().map(|c| ("check", c.name.as_str(), c.definition.as_str())));
        all.extend(self.exclusions.iter().map(|c| ("exclusion", c.name.as_str(), c.definition.as_str())));
        all.extend(self.foreign_keys.iter().map(|c| ("foreign_key", c.name.as_str(), c.definition.as_str())));
        all.sort_by(|a, b| a.1.cmp(b.1));
        all
    }

    /// Sorts constraints, indexes, triggers, partitions, enums and sequences by name (the
    /// column order is the table's).
    pub fn normalize(&mut self) {
        self.unique.sort_by(|a, b| a.name.cmp(&b.name));
        self.checks.sort_by(|a, b| a.name.cmp(&b.name));
        self.exclusions.sort_by(|a, b| a.name.cmp(&b.name));
        self.foreign_keys.sort_by(|a, b| a.name.cmp(&b.name));
        self.referenced_by.sort_by(|a, b| (&a.schema, &a.table, &a.name).cmp(&(&b.schema, &b.table, &b.name)));
        self.indexes.sort_by(|a, b| a.name.cmp(&b.name));
        self.triggers.sort_by(|a, b| a.name.cmp(&b.name));
        self.partitions.sort();
        self.enums.sort_by(|a, b| (&a.schema, &a.name).cmp(&(&b.schema, &b.name)));
        self.sequences.sort_by(|a, b| (&a.schema, &a.name).cmp(&(&b.schema, &b.name)));
    }
}

/// A column of a table or view.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct Column {
    pub name: String,
    /// `format_type`: `integer`, `character varying(100)`, `audit.level[]`…
    pub r#type: String,
    pub nullable: bool,
    /// The default expression (`pg_get_expr`); `None` for identity and generated columns.
    pub default: Option<String>,
    /// `always` or `by_default` for identity columns.
    pub identity: Option<String>,
    /// The expression of a generated (`STORED`) column.
    pub generated: Option<String>,
    pub comment: Option<String>,
}

/// A primary key, unique, check or exclusion constraint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct Constraint {
    pub name: String,
    /// The columns it names, in order (those a check's expression uses, for checks).
    pub columns: Vec<String>,
    /// `pg_get_constraintdef`: `PRIMARY KEY (id)`, `CHECK (price >= 0)`…
    pub definition: String,
}

/// A foreign key: `schema.table (columns)` references `referenced_schema.referenced_table
/// (referenced_columns)`. The same shape serves both directions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct ForeignKey {
    pub name: String,
    /// The referencing table.
    pub schema: String,
    pub table: String,
    pub columns: Vec<String>,
    /// The referenced table.
    pub referenced_schema: String,
    pub referenced_table: String,
    pub referenced_columns: Vec<String>,
    /// `no action`, `restrict`, `cascade`, `set null` or `set default`.
    pub on_update: String,
    pub on_delete: String,
    /// `pg_get_constraintdef` (names outside `pg_catalog` qualified): `FOREIGN KEY (owner_id) REFERENCES public.owners(id) ON DELETE CASCADE`.
    pub definition: String,
}

/// An index of a table or materialized view.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct Index {
    pub name: String,
    /// `pg_get_indexdef`: `CREATE INDEX … ON … USING btree (…)`.
    pub definition: String,
    pub unique: bool,
    pub primary: bool,
    /// The `WHERE` of a partial index.
    pub predicate: Option<String>,
    /// The constraint (primary key, unique, exclusion) this index implements.
    pub constraint: Option<String>,
}

/// A (non-internal) trigger.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct Trigger {
    pub name: String,
    /// `pg_get_triggerdef`: `CREATE TRIGGER … BEFORE UPDATE ON … EXECUTE FUNCTION …`.
    pub definition: String,
    /// False after `ALTER TABLE … DISABLE TRIGGER`.
    pub enabled: bool,
}

/// An enum type with its values in order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct EnumType {
    pub schema: String,
    pub name: String,
    pub values: Vec<String>,
    pub comment: Option<String>,
}

impl EnumType {
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }
}

/// A sequence (not an identity column's: those are the column's `identity`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct Sequence {
    pub schema: String,
    pub name: String,
    /// `smallint`, `integer` or `bigint`.
    pub r#type: String,
    pub start: i64,
    pub increment: i64,
    pub min: i64,
    pub max: i64,
    pub cache: i64,
    pub cycle: bool,
    /// `schema.table.column` of `OWNED BY` (a `serial` column's sequence).
    pub owned_by: Option<String>,
    pub comment: Option<String>,
}

impl Sequence {
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }
}

/// Everything `pgplane schema diff` compares: every table and view of a database (as
/// [`TableDetail`]), its enums and sequences, sorted by schema and name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct SchemaSnapshot {
    pub tables: Vec<TableDetail>,
    pub enums: Vec<EnumType>,
    pub sequences: Vec<Sequence>,
}

/// A bare table name that matches tables in several schemas (none of them `public`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ambiguous {
    pub name: String,
    /// `schema.name` of each match, sorted.
    pub candidates: Vec<String>,
}

impl std::fmt::Display for Ambiguous {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} is ambiguous, say which one: {}", self.name, self.candidates.join(", "))
    }
}

impl std::error::Error for Ambiguous {}

/// Splits `schema.name` (at the first dot) or a bare `name`.
pub fn split_qualified(name: &str) -> (Option<&str>, &str) {
    match name.split_once('.') {
        Some((schema, rest)) if !schema.is_empty() && !rest.is_empty() => (Some(schema), rest),
        _ => (None, name),
    }
}

impl SchemaSnapshot {
    /// Sorts everything deterministically (see [`TableDetail::normalize`]).
    pub fn normalize(&mut self) {
        self.tables.sort_by(|a, b| (&a.schema, &a.name).cmp(&(&b.schema, &b.name)));
        for t in &mut self.tables {
            t.normalize();
        }
        self.enums.sort_by(|a, b| (&a.schema, &a.name).cmp(&(&b.schema, &b.name)));
        self.sequences.sort_by(|a, b| (&a.schema, &a.name).cmp(&(&b.schema, &b.name)));
    }

    /// A table or view by `schema.name` or bare `name` (in `public` first, else the only
    /// schema that has one); `None` when there is none or the bare name is ambiguous.
    pub fn table(&self, qualified_or_bare: &str) -> Option<&TableDetail> {
        self.find(qualified_or_bare).ok().flatten()
    }

    /// Like [`SchemaSnapshot::table`], saying which tables an ambiguous bare name matches.
    pub fn find(&self, qualified_or_bare: &str) -> Result<Option<&TableDetail>, Ambiguous> {
        if let Some(t) = self.tables.iter().find(|t| t.qualified() == qualified_or_bare) {
            return Ok(Some(t));
        }
        let (schema, name) = split_qualified(qualified_or_bare);
        if schema.is_some() {
            return Ok(None);
        }
        let matches: Vec<&TableDetail> = self.tables.iter().filter(|t| t.name == name).collect();
        if let Some(t) = matches.iter().find(|t| t.schema == "public") {
            return Ok(Some(t));
        }
        match matches.as_slice() {
            [] => Ok(None),
            [one] => Ok(Some(one)),
            many => Err(Ambiguous { name: name.to_string(), candidates: many.iter().map(|t| t.qualified()).collect() }),
        }
    }
}

/// Tables first, then views, each as an aligned table for people.
pub fn tables_text(tables: &[TableSummary]) -> String {
    let mut out = String::new();
    for (title, is_view) in [("tables", false), ("views", true)] {
        let rows: Vec<&TableSummary> = tables.iter().filter(|t| t.kind.contains("view") == is_view).collect();
        if rows.is_empty() {
            continue;
        }
        let width = rows.iter().map(|t| t.schema.len() + t.name.len() + 1).max().unwrap_or(0).max(5);
        out.push_str(&format!("{title} ({})\n", rows.len()));
        for t in rows {
            let qualified = format!("{}.{}", t.schema, t.name);
            let size = if is_view {
                String::new()
            } else {
                format!("{:>10}  ~{} rows  ", human_bytes(t.size_bytes), t.estimated_rows)
            };
            let line = format!(
                "  {qualified:<width$}  {:>3} cols  {size}{}",
                t.columns,
                t.description.as_deref().unwrap_or("")
            );
            out.push_str(line.trim_end());
            out.push('\n');
        }
    }
    if out.is_empty() {
        out.push_str("no tables or views\n");
    }
    out
}

fn human_bytes(b: i64) -> String {
    match b {
        b if b >= 1 << 30 => format!("{:.1} GB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{} kB", b >> 10),
        b => format!("{b} B"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_lists_tables_then_views() {
        let t = |name: &str, kind: &str, description: Option<&str>| TableSummary {
            name: name.into(),
            schema: "public".into(),
            kind: kind.into(),
            description: description.map(str::to_string),
            columns: 3,
            estimated_rows: 10,
            size_bytes: 16384,
        };
        let text = tables_text(&[t("entries", "table", Some("Registry entries")), t("entries_v", "view", None)]);
        expect_test::expect![[r#"
            tables (1)
              public.entries    3 cols       16 kB  ~10 rows  Registry entries
            views (1)
              public.entries_v    3 cols
        "#]]
        .assert_eq(&text);
        assert_eq!(tables_text(&[]), "no tables or views\n");
    }
}
