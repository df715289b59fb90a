//! Liquibase changelogs without Liquibase: parse XML, YAML, JSON and formatted-SQL
//! changelogs, generate PostgreSQL SQL for each change, and compute the changeset checksums
//! Liquibase 4.28 stores (checksum version 9), so a database migrated by Liquibase can be
//! taken over (and vice versa).
//!
//! Pure: files are read only through a [`Loader`]; no database, no network.

mod checksum;
mod expr;
mod formatted;
mod node;
mod parse;
mod rollback;
mod sqlgen;

use std::fmt;
use std::path::PathBuf;

pub use parse::load;
pub use rollback::{inverse, Refusal, Rollback, REFUSAL_FIX};

/// Where changelog files come from: paths are `/`-separated and relative to the search path.
pub trait Loader {
    fn read(&self, path: &str) -> std::io::Result<String>;
    /// Every file below `dir` (recursively), as paths relative to the search path.
    fn list(&self, dir: &str) -> std::io::Result<Vec<String>>;
}

/// A search path on disk.
#[derive(Debug, Clone)]
pub struct FsLoader {
    pub root: PathBuf,
}

impl Loader for FsLoader {
    fn read(&self, path: &str) -> std::io::Result<String> {
        std::fs::read_to_string(self.root.join(path))
    }

    fn list(&self, dir: &str) -> std::io::Result<Vec<String>> {
        fn walk(base: &std::path::Path, rel: &str, out: &mut Vec<String>) -> std::io::Result<()> {
            for e in std::fs::read_dir(base.join(rel))? {
                let e = e?;
                let name = e.file_name().to_string_lossy().into_owned();
                let p = if rel.is_empty() { name } else { format!("{}/{name}", rel.trim_end_matches('/')) };
                if e.file_type()?.is_dir() {
                    walk(base, &p, out)?;
                } else {
                    out.push(p);
                }
            }
            Ok(())
        }
        let mut out = Vec::new();
        walk(&self.root, dir.trim_end_matches('/'), &mut out)?;
        Ok(out)
    }
}

/// A parsed changelog: changesets in execution order, includes flattened.
#[derive(Debug, Clone)]
pub struct Changelog {
    pub changesets: Vec<ChangeSet>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: String,
    pub line: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

#[derive(Debug, Clone)]
pub struct ChangeSet {
    pub id: String,
    pub author: String,
    /// Exactly what Liquibase 4.28 writes to DATABASECHANGELOG.FILENAME.
    pub filename: String,
    pub location: Location,
    /// `9:<md5>`, as Liquibase 4.28 computes it.
    pub checksum: String,
    /// As written; `ANY` (any case) accepts every checksum.
    pub valid_checksums: Vec<String>,
    pub contexts: Option<String>,
    pub labels: Option<String>,
    pub dbms: Option<String>,
    pub run_always: bool,
    pub run_on_change: bool,
    pub fail_on_error: bool,
    pub run_in_transaction: bool,
    pub comment: Option<String>,
    pub preconditions: Option<Preconditions>,
    pub changes: Vec<Change>,
    /// What undoes it (`migrate rollback`); see [`ChangeSet::rollback_statements`].
    pub rollback: Rollback,
}

impl ChangeSet {
    /// A changeset at `path:line` with Liquibase's defaults (fail on error, in a
    /// transaction, no filters) and no changes yet.
    pub fn new(id: String, author: String, path: &str, line: usize) -> ChangeSet {
        ChangeSet {
            id,
            author,
            filename: path.to_string(),
            location: Location { file: path.to_string(), line },
            checksum: String::new(),
            valid_checksums: Vec::new(),
            contexts: None,
            labels: None,
            dbms: None,
            run_always: false,
            run_on_change: false,
            fail_on_error: true,
            run_in_transaction: true,
            comment: None,
            preconditions: None,
            changes: Vec::new(),
            rollback: Rollback::Auto,
        }
    }

    /// Liquibase's DESCRIPTION column value: the changes' descriptions joined with `; `,
    /// cut to 250 characters (247 and `...`) the way Liquibase's history service stores it.
    pub fn description(&self) -> String {
        let parts: Vec<String> = self.changes.iter().map(Change::description).collect();
        let d = if parts.is_empty() { "empty".to_string() } else { parts.join("; ") };
        limit(&d, 250)
    }

    /// The ordered PostgreSQL statements of the changes (not the rollback). Unqualified
    /// object names get `default_schema` when given; raw SQL (`sql`, `sqlFile`) is passed as
    /// written, so run it with `search_path` set to the target schema.
    pub fn sql(&self, default_schema: Option<&str>) -> Vec<Statement> {
        sqlgen::statements(&self.changes, default_schema)
    }

    /// Liquibase's context/label selection: `contexts` given at run time against the
    /// changeset's context expression, the run-time label expression against the changeset's
    /// labels. An empty filter selects everything.
    pub fn selected(&self, contexts: &[String], labels: Option<&str>) -> bool {
        expr::contexts_match(self.contexts.as_deref(), contexts) && expr::labels_match(self.labels.as_deref(), labels)
    }

    /// Whether the changeset's `dbms` admits PostgreSQL (Liquibase skips it, without a
    /// DATABASECHANGELOG row, otherwise).
    pub fn applies_to_postgresql(&self) -> bool {
        expr::dbms_match(self.dbms.as_deref(), "postgresql")
    }

    /// `stored` equals the current checksum, is listed in `validCheckSum`, or `ANY` is listed.
    pub fn accepts_checksum(&self, stored: &str) -> bool {
        let stored = stored.trim();
        stored.eq_ignore_ascii_case(&self.checksum)
            || self
                .valid_checksums
                .iter()
                .any(|v| v.trim().eq_ignore_ascii_case("any") || v.trim().eq_ignore_ascii_case(stored))
    }

    /// The DATABASECHANGELOG.CONTEXTS value Liquibase writes: the expression, in parentheses
    /// when it holds a comma or a space.
    pub fn contexts_column(&self) -> Option<String> {
        let c = self.contexts.as_deref().map(str::trim).filter(|c| !c.is_empty())?;
        Some(if c.contains(',') || c.contains(' ') { format!("({c})") } else { c.to_string() })
    }

    /// The DATABASECHANGELOG.LABELS value Liquibase writes.
    pub fn labels_column(&self) -> Option<String> {
        self.labels.as_deref().map(str::trim).filter(|c| !c.is_empty()).map(str::to_string)
    }

    /// The tag a `tagDatabase` change sets on this changeset's DATABASECHANGELOG row.
    pub fn tag(&self) -> Option<&str> {
        self.changes.iter().rev().find_map(|c| match c {
            Change::TagDatabase { tag } => Some(tag.as_str()),
            _ => None,
        })
    }
}

fn limit(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max - 3).collect();
        t.push_str("...");
        t
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    /// One statement without a trailing `;`.
    pub sql: String,
    /// Index into [`ChangeSet::changes`] (or `rollback`) of the change it came from.
    pub change_index: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preconditions {
    pub on_fail: OnFail,
    pub on_error: OnFail,
    pub on_fail_message: Option<String>,
    pub condition: Condition,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFail {
    Halt,
    MarkRan,
    Continue,
    Warn,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// `and`, also the implicit top level.
    All(Vec<Condition>),
    /// `or`.
    Any(Vec<Condition>),
    /// `not`: true when none of the conditions holds.
    Not(Vec<Condition>),
    TableExists {
        schema: Option<String>,
        table: String,
    },
    ColumnExists {
        schema: Option<String>,
        table: String,
        column: String,
    },
    /// Runs `sql` (a single value) and compares its text with `expected`.
    SqlCheck {
        expected: String,
        sql: String,
    },
}

/// A schema-qualified name as written in the changelog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Name {
    pub schema: Option<String>,
    pub name: String,
}

/// A value of a column or a default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// `value`/`defaultValue`: a string literal.
    Text(String),
    /// `valueNumeric`: written as is.
    Numeric(String),
    Boolean(bool),
    /// `valueDate`: an ISO date or timestamp literal.
    Date(String),
    /// `valueComputed`: an SQL expression written as is.
    Computed(String),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub data_type: Option<String>,
    pub value: Option<Value>,
    pub default: Option<Value>,
    pub auto_increment: bool,
    pub start_with: Option<String>,
    pub increment_by: Option<String>,
    pub remarks: Option<String>,
    pub descending: bool,
    pub constraints: Option<Constraints>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Constraints {
    pub nullable: Option<bool>,
    pub primary_key: bool,
    pub primary_key_name: Option<String>,
    pub unique: bool,
    pub unique_constraint_name: Option<String>,
    pub foreign_key_name: Option<String>,
    /// `references: table(col, …)`.
    pub references: Option<String>,
    pub referenced_table_schema: Option<String>,
    pub referenced_table: Option<String>,
    pub referenced_columns: Option<String>,
    pub delete_cascade: bool,
    pub deferrable: bool,
    pub initially_deferred: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlChange {
    pub sql: String,
    pub split_statements: bool,
    pub strip_comments: bool,
    pub end_delimiter: Option<String>,
    /// The change's own `dbms`; a change not for PostgreSQL yields no SQL and no checksum part.
    pub dbms: Option<String>,
}

/// One Liquibase change, typed per change type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    CreateTable {
        table: Name,
        remarks: Option<String>,
        columns: Vec<Column>,
    },
    DropTable {
        table: Name,
        cascade: bool,
    },
    RenameTable {
        schema: Option<String>,
        old: String,
        new: String,
    },
    AddColumn {
        table: Name,
        columns: Vec<Column>,
    },
    DropColumn {
        table: Name,
        column: String,
    },
    RenameColumn {
        table: Name,
        old: String,
        new: String,
        remarks: Option<String>,
    },
    ModifyDataType {
        table: Name,
        column: String,
        new_type: String,
    },
    AddNotNullConstraint {
        table: Name,
        column: String,
        default_null_value: Option<String>,
    },
    DropNotNullConstraint {
        table: Name,
        column: String,
    },
    AddDefaultValue {
        table: Name,
        column: String,
        value: Value,
    },
    DropDefaultValue {
        table: Name,
        column: String,
    },
    AddPrimaryKey {
        table: Name,
        columns: Vec<String>,
        constraint_name: Option<String>,
    },
    AddUniqueConstraint {
        table: Name,
        columns: Vec<String>,
        constraint_name: Option<String>,
        deferrable: bool,
        initially_deferred: bool,
    },
    AddForeignKeyConstraint {
        table: Name,
        columns: Vec<String>,
        constraint_name: String,
        referenced: Name,
        referenced_columns: Vec<String>,
        on_delete: Option<String>,
        on_update: Option<String>,
        deferrable: bool,
        initially_deferred: bool,
    },
    DropForeignKeyConstraint {
        table: Name,
        constraint_name: String,
    },
    CreateIndex {
        table: Name,
        index_name: String,
        unique: bool,
        columns: Vec<Column>,
    },
    /// `schema` of `index` is the table's schema (an index lives in its table's schema).
    DropIndex {
        index: Name,
        table: Option<String>,
    },
    CreateSequence {
        sequence: Name,
        data_type: Option<String>,
        start: Option<String>,
        increment: Option<String>,
        min: Option<String>,
        max: Option<String>,
        cache: Option<String>,
        cycle: Option<bool>,
    },
    CreateView {
        view: Name,
        query: String,
        replace: bool,
        remarks: Option<String>,
    },
    DropView {
        view: Name,
    },
    SetTableRemarks {
        table: Name,
        remarks: String,
    },
    SetColumnRemarks {
        table: Name,
        column: String,
        remarks: String,
    },
    Insert {
        table: Name,
        columns: Vec<Column>,
    },
    Update {
        table: Name,
        columns: Vec<Column>,
        where_clause: Option<String>,
    },
    Delete {
        table: Name,
        where_clause: Option<String>,
    },
    Sql(SqlChange),
    /// `path` as written (relative to the search path after resolution); `sql` holds the
    /// file's content.
    SqlFile {
        path: String,
        sql: SqlChange,
    },
    TagDatabase {
        tag: String,
    },
}

impl Change {
    /// Liquibase's change type name (`createTable`, …).
    pub fn type_name(&self) -> &'static str {
        match self {
            Change::CreateTable { .. } => "createTable",
            Change::DropTable { .. } => "dropTable",
            Change::RenameTable { .. } => "renameTable",
            Change::AddColumn { .. } => "addColumn",
            Change::DropColumn { .. } => "dropColumn",
            Change::RenameColumn { .. } => "renameColumn",
            Change::ModifyDataType { .. } => "modifyDataType",
            Change::AddNotNullConstraint { .. } => "addNotNullConstraint",
            Change::DropNotNullConstraint { .. } => "dropNotNullConstraint",
            Change::AddDefaultValue { .. } => "addDefaultValue",
            Change::DropDefaultValue { .. } => "dropDefaultValue",
            Change::AddPrimaryKey { .. } => "addPrimaryKey",
            Change::AddUniqueConstraint { .. } => "addUniqueConstraint",
            Change::AddForeignKeyConstraint { .. } => "addForeignKeyConstraint",
            Change::DropForeignKeyConstraint { .. } => "dropForeignKeyConstraint",
            Change::CreateIndex { .. } => "createIndex",
            Change::DropIndex { .. } => "dropIndex",
            Change::CreateSequence { .. } => "createSequence",
            Change::CreateView { .. } => "createView",
            Change::DropView { .. } => "dropView",
            Change::SetTableRemarks { .. } => "setTableRemarks",
            Change::SetColumnRemarks { .. } => "setColumnRemarks",
            Change::Insert { .. } => "insert",
            Change::Update { .. } => "update",
            Change::Delete { .. } => "delete",
            Change::Sql(_) => "sql",
            Change::SqlFile { .. } => "sqlFile",
            Change::TagDatabase { .. } => "tagDatabase",
        }
    }

    /// Liquibase's per-change description: the type and its `…Name`/`path` parameters.
    pub fn description(&self) -> String {
        fn d(ty: &str, mut parts: Vec<(&str, &str)>) -> String {
            parts.sort();
            let p: Vec<String> = parts.iter().map(|(k, v)| format!("{k}={v}")).collect();
            if p.is_empty() {
                ty.to_string()
            } else {
                format!("{ty} {}", p.join(", "))
            }
        }
        let t = self.type_name();
        match self {
            Change::CreateTable { table, .. }
            | Change::DropTable { table, .. }
            | Change::AddColumn { table, .. }
            | Change::SetTableRemarks { table, .. }
            | Change::Insert { table, .. }
            | Change::Update { table, .. }
            | Change::Delete { table, .. } => d(t, vec![("tableName", &table.name)]),
            Change::RenameTable { old, new, .. } => d(t, vec![("newTableName", new), ("oldTableName", old)]),
            Change::DropColumn { table, column }
            | Change::ModifyDataType { table, column, .. }
            | Change::AddNotNullConstraint { table, column, .. }
            | Change::DropNotNullConstraint { table, column }
            | Change::AddDefaultValue { table, column, .. }
            | Change::DropDefaultValue { table, column }
            | Change::SetColumnRemarks { table, column, .. } => {
                d(t, vec![("columnName", column), ("tableName", &table.name)])
            }
            Change::RenameColumn { table, old, new, .. } => {
                d(t, vec![("newColumnName", new), ("oldColumnName", old), ("tableName", &table.name)])
            }
            Change::AddPrimaryKey { table, constraint_name, .. }
            | Change::AddUniqueConstraint { table, constraint_name, .. } => {
                let mut p = vec![("tableName", table.name.as_str())];
                if let Some(c) = constraint_name {
                    p.push(("constraintName", c));
                }
                d(t, p)
            }
            Change::AddForeignKeyConstraint { table, constraint_name, referenced, .. } => d(
                t,
                vec![
                    ("baseTableName", &table.name),
                    ("constraintName", constraint_name),
                    ("referencedTableName", &referenced.name),
                ],
            ),
            Change::DropForeignKeyConstraint { table, constraint_name } => {
                d(t, vec![("baseTableName", &table.name), ("constraintName", constraint_name)])
            }
            Change::CreateIndex { table, index_name, .. } => {
                d(t, vec![("indexName", index_name), ("tableName", &table.name)])
            }
            Change::DropIndex { index, table } => {
                let mut p = vec![("indexName", index.name.as_str())];
                if let Some(tb) = table {
                    p.push(("tableName", tb));
                }
                d(t, p)
            }
            Change::CreateSequence { sequence, .. } => d(t, vec![("sequenceName", &sequence.name)]),
            Change::CreateView { view, .. } | Change::DropView { view } => d(t, vec![("viewName", &view.name)]),
            Change::SqlFile { path, .. } => d(t, vec![("path", path)]),
            Change::Sql(_) | Change::TagDatabase { .. } => t.to_string(),
        }
    }
}

/// A changelog error: the file, the line when known, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangelogError {
    pub file: String,
    pub line: Option<usize>,
    pub message: String,
}

impl ChangelogError {
    pub(crate) fn new(file: &str, line: Option<usize>, message: impl Into<String>) -> ChangelogError {
        ChangelogError { file: file.to_string(), line, message: message.into() }
    }
}

impl fmt::Display for ChangelogError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{}: {}", self.file, l, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

impl std::error::Error for ChangelogError {}
