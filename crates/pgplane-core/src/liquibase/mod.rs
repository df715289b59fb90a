//! Liquibase changelogs without Liquibase: parse XML, YAML, JSON and formatted-SQL
//! changelogs, generate PostgreSQL SQL for each change, and compute the changeset checksums
//! Liquibase 4.28 stores (checksum version 9), so a database migrated by Liquibase can be
//! taken over (and vice versa).
//!
//! Pure: files are read only through a [`Loader`]; no database, no network. What only the
//! target database can tell (the column types `loadData` converts values to, the foreign
//! keys `dropAllForeignKeyConstraints` drops) is asked for through [`Catalog`].

mod checksum;
mod csv;
mod expr;
mod formatted;
mod loaddata;
mod node;
mod parse;
mod props;
mod regexes;
mod rollback;
mod spec;
mod split;
mod sqlgen;
pub mod types;

use std::fmt;
use std::path::PathBuf;

pub use loaddata::{Catalog, LoadColumn, LoadData, NoCatalog};
pub use parse::{load, load_with};
pub use props::TargetInfo;
pub use rollback::{inverse, Refusal, Rollback, REFUSAL_FIX};
pub use spec::{attribute_table, AttrHandling, AttrRow, PRO, SUPPORTED};

/// Where changelog files come from: paths are `/`-separated and relative to the search path.
pub trait Loader {
    fn read(&self, path: &str) -> std::io::Result<String>;
    /// Every file below `dir` (recursively), as paths relative to the search path.
    fn list(&self, dir: &str) -> std::io::Result<Vec<String>>;
    /// The file's bytes (for files in another encoding than UTF-8, and binary files).
    fn read_bytes(&self, path: &str) -> std::io::Result<Vec<u8>> {
        self.read(path).map(String::into_bytes)
    }
}

/// A search path on disk whose files must stay inside a folder: every file read and
/// every folder listed must lie inside `allowed` (or `root` when it is `None`) with its
/// symlinks followed, checked on what was opened (see [`crate::confine`]). A changelog
/// author may put symlinks in their folder; none of them leads pgplane out of it.
#[derive(Debug, Clone)]
pub struct FsLoader {
    /// The search path: changelog paths are relative to it.
    pub root: PathBuf,
    /// The folder files must stay inside (e.g. the manifest's folder); `None`: `root`.
    pub allowed: Option<PathBuf>,
}

impl FsLoader {
    fn allowed(&self) -> std::io::Result<PathBuf> {
        self.allowed.as_deref().unwrap_or(&self.root).canonicalize()
    }
}

impl Loader for FsLoader {
    fn read(&self, path: &str) -> std::io::Result<String> {
        String::from_utf8(self.read_bytes(path)?).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "{path} is not UTF-8 ({e}); give its encoding (`encoding` attribute) where Liquibase allows one"
                ),
            )
        })
    }

    fn read_bytes(&self, path: &str) -> std::io::Result<Vec<u8>> {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(
            &mut crate::confine::open_file(&self.root.join(path), &self.allowed()?)?,
            &mut bytes,
        )?;
        Ok(bytes)
    }

    fn list(&self, dir: &str) -> std::io::Result<Vec<String>> {
        use crate::confine::Dir;
        fn walk(
            base: &std::path::Path,
            d: &Dir,
            allowed: &std::path::Path,
            rel: &str,
            out: &mut Vec<String>,
        ) -> std::io::Result<()> {
            for e in d.entries()? {
                let p =
                    if rel.is_empty() { e.name.clone() } else { format!("{}/{}", rel.trim_end_matches('/'), e.name) };
                // Folders are walked (symlinks to folders are not, as before); every folder
                // and file is checked to lie inside when it is opened.
                if e.folder {
                    walk(base, &e.open_dir(&base.join(&p), allowed)?, allowed, &p, out)?;
                } else {
                    out.push(p);
                }
            }
            Ok(())
        }
        let allowed = self.allowed()?;
        let dir = dir.trim_end_matches('/');
        let mut out = Vec::new();
        walk(&self.root, &Dir::open(&self.root.join(dir), &allowed)?, &allowed, dir, &mut out)?;
        Ok(out)
    }
}

/// How a changelog is read: the run's contexts and labels (properties may depend on
/// them), properties given from outside (`--property`, the manifest), and the target the
/// `database.*` properties describe.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    pub contexts: Vec<String>,
    pub labels: Option<String>,
    /// Changelog parameters set before the changelog is read (they win over its own).
    pub properties: Vec<(String, String)>,
    /// The environment variables Liquibase sees as parameters (pass `std::env::vars()`).
    pub environment: Vec<(String, String)>,
    pub target: TargetInfo,
    /// The run's selection is not known yet (a first read, before the targets): what
    /// cannot run is noted on its changeset (`unrunnable`) instead of failing the load.
    pub defer_change_errors: bool,
}

/// A parsed changelog: changesets in execution order, includes flattened.
#[derive(Debug, Clone)]
pub struct Changelog {
    pub changesets: Vec<ChangeSet>,
    /// Preconditions of the changelog files (`<preConditions>` under `databaseChangeLog`),
    /// checked before anything runs.
    pub preconditions: Vec<Preconditions>,
    /// What Liquibase would ignore without a word (unknown YAML/JSON keys): shown, not fatal.
    pub warnings: Vec<String>,
    /// Some value used a `database.*` property, so the changelog differs per target.
    pub target_dependent: bool,
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
    /// What undoes it (`migrate rollback`); see [`ChangeSet::rollback_statements`]. Read
    /// leniently: a rollback pgplane cannot run is [`Rollback::Unusable`], never an error
    /// for `update`.
    pub rollback: Rollback,
    /// Why pgplane could not read its changes as runnable, for a changeset this run does not
    /// select (contexts, labels): Liquibase never runs it either, so it blocks nothing; its
    /// changes and checksum are then incomplete.
    pub unrunnable: Option<String>,
    /// `modifySql` rewrites applied to every statement of the changes.
    pub modify_sql: Vec<ModifySql>,
    /// Contexts of the changelog files that include this one (`include context=…`, the
    /// changelog's own `context`), outermost first: each must match too.
    pub inherited_contexts: Vec<String>,
    /// Labels of the including `include`s.
    pub inherited_labels: Vec<String>,
    /// Each change's DESCRIPTION part as Liquibase computes it from the attributes given
    /// (empty: derived from the typed changes).
    pub descriptions: Vec<String>,
    /// The checksum parts of the `modifySql` rewrites.
    pub(crate) visitor_sums: Vec<String>,
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
            unrunnable: None,
            modify_sql: Vec::new(),
            inherited_contexts: Vec::new(),
            inherited_labels: Vec::new(),
            descriptions: Vec::new(),
            visitor_sums: Vec::new(),
        }
    }

    /// Liquibase's DESCRIPTION column value: the changes' descriptions joined with `; `,
    /// cut to 250 characters (247 and `...`) the way Liquibase's history service stores it.
    pub fn description(&self) -> String {
        let parts: Vec<String> = if self.descriptions.len() == self.changes.len() {
            self.descriptions.clone()
        } else {
            self.changes.iter().map(Change::description).collect()
        };
        let d = if parts.is_empty() { "empty".to_string() } else { parts.join("; ") };
        limit(&d, 250)
    }

    /// The ordered PostgreSQL statements of the changes (not the rollback), `modifySql`
    /// applied. Unqualified object names get `default_schema` when given; raw SQL (`sql`,
    /// `sqlFile`) is passed as written, so run it with `search_path` set to the target
    /// schema. `loadData` rows need the target's column types: see [`ChangeSet::sql_with`].
    pub fn sql(&self, default_schema: Option<&str>) -> Vec<Statement> {
        self.sql_with(default_schema, &loaddata::NoCatalog).unwrap_or_default()
    }

    /// [`ChangeSet::sql`] with what only the target knows.
    pub fn sql_with(&self, default_schema: Option<&str>, catalog: &dyn Catalog) -> Result<Vec<Statement>, String> {
        let mut out = sqlgen::statements(&self.changes, default_schema, catalog)?;
        for s in &mut out {
            s.sql = sqlgen::modify(&s.sql, &self.modify_sql, false);
        }
        Ok(out)
    }

    /// Liquibase's context/label selection: `contexts` given at run time against the
    /// changeset's context expression, the run-time label expression against the changeset's
    /// labels. An empty filter selects everything.
    pub fn selected(&self, contexts: &[String], labels: Option<&str>) -> bool {
        let all_labels: Vec<&str> =
            self.inherited_labels.iter().map(String::as_str).chain(self.labels.as_deref()).collect();
        let joined = all_labels.join(",");
        expr::contexts_match(self.contexts.as_deref(), contexts)
            && self.inherited_contexts.iter().all(|c| expr::contexts_match(Some(c), contexts))
            && expr::labels_match(Some(&joined).filter(|j| !j.is_empty()).map(|j| j.as_str()), labels)
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
    /// Inherited contexts come first, joined with ` AND ` (`ChangeSet.buildFullContext`).
    pub fn contexts_column(&self) -> Option<String> {
        let parts: Vec<&str> = self
            .inherited_contexts
            .iter()
            .map(String::as_str)
            .chain(self.contexts.as_deref())
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect();
        if parts.is_empty() {
            return None;
        }
        let wrapped: Vec<String> = parts
            .iter()
            .map(|c| if c.contains(',') || c.contains(' ') { format!("({c})") } else { c.to_string() })
            .collect();
        Some(wrapped.join(" AND "))
    }

    /// The DATABASECHANGELOG.LABELS value Liquibase writes: each label set lower-cased
    /// and de-duplicated, inherited ones first, joined with `,`.
    pub fn labels_column(&self) -> Option<String> {
        let mut parts: Vec<String> = Vec::new();
        for set in self.inherited_labels.iter().map(String::as_str).chain(self.labels.as_deref()) {
            let mut seen: Vec<String> = Vec::new();
            for l in set.split(',').map(str::trim).filter(|l| !l.is_empty()) {
                let l = l.to_lowercase();
                if !seen.contains(&l) {
                    seen.push(l);
                }
            }
            if !seen.is_empty() {
                parts.push(seen.join(","));
            }
        }
        (!parts.is_empty()).then(|| parts.join(","))
    }

    /// The tag a `tagDatabase` change sets on this changeset's DATABASECHANGELOG row.
    pub fn tag(&self) -> Option<&str> {
        self.changes.iter().rev().find_map(|c| match c {
            Change::TagDatabase { tag } => Some(tag.as_str()),
            _ => None,
        })
    }
}

/// Java's `StringUtil.limitSize` (lengths in UTF-16 code units).
fn limit(s: &str, max: usize) -> String {
    if s.encode_utf16().count() <= max {
        return s.to_string();
    }
    let mut t = String::new();
    let mut units = 0;
    for c in s.chars() {
        if units + c.len_utf16() > max - 3 {
            break;
        }
        units += c.len_utf16();
        t.push(c);
    }
    t.push_str("...");
    t
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    /// One statement without a trailing `;`.
    pub sql: String,
    /// Index into [`ChangeSet::changes`] (or `rollback`) of the change it came from.
    pub change_index: usize,
    /// Not SQL: what the executor does instead (`output`, `stop`, `executeCommand`).
    pub action: Option<Action>,
}

/// Changes that do something other than run SQL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `output`: print `message` to `target` (STDOUT, STDERR, FATAL, WARN, INFO, DEBUG).
    Output { message: String, target: String },
    /// `stop`: end the update here with `message`, as a failure.
    Stop { message: String },
    /// `executeCommand`: run a program (only when the manifest allows it).
    Execute { executable: String, args: Vec<String>, timeout: Option<String> },
}

/// A `modifySql` rewrite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModifySql {
    pub kind: ModifyKind,
    pub apply_to_rollback: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModifyKind {
    Prepend(String),
    Append(String),
    Replace { replace: String, with: String },
    RegExpReplace { replace: String, with: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preconditions {
    pub on_fail: OnFail,
    pub on_error: OnFail,
    pub on_fail_message: Option<String>,
    pub on_error_message: Option<String>,
    pub condition: Condition,
    /// Where they are written, for messages.
    pub location: Location,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFail {
    Halt,
    MarkRan,
    Continue,
    Warn,
}

/// A precondition. Names of tables, columns and other objects compare without case, as
/// Liquibase's snapshot does on PostgreSQL; a missing schema means the target schema.
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
    ViewExists {
        schema: Option<String>,
        view: String,
    },
    SequenceExists {
        schema: Option<String>,
        sequence: String,
    },
    /// `indexName` and/or `tableName` (+ `columnNames`).
    IndexExists {
        schema: Option<String>,
        table: Option<String>,
        index: Option<String>,
        columns: Vec<String>,
    },
    PrimaryKeyExists {
        schema: Option<String>,
        table: Option<String>,
        name: Option<String>,
    },
    ForeignKeyExists {
        schema: Option<String>,
        table: Option<String>,
        name: String,
    },
    UniqueConstraintExists {
        schema: Option<String>,
        table: String,
        name: Option<String>,
        columns: Vec<String>,
    },
    RowCount {
        schema: Option<String>,
        table: String,
        expected: i64,
    },
    TableIsEmpty {
        schema: Option<String>,
        table: String,
    },
    /// The session user (before any `SET ROLE`), without case.
    RunningAs {
        username: String,
    },
    /// Decided while parsing (`dbms`, `changeLogPropertyDefined`, `expectedQuotingStrategy`).
    Constant(bool),
    /// `changeSetExecuted`: a ledger row with EXECUTED, RERAN or MARK_RAN.
    ChangeSetExecuted {
        filename: String,
        id: String,
        author: String,
    },
    /// Runs `sql` (a single value) and compares its text with `expected`.
    SqlCheck {
        expected: String,
        sql: String,
    },
}

impl Condition {
    /// What the condition asks, in Liquibase's words (`tableExists tableName=authors`), for
    /// the message of a precondition that fails.
    pub fn describe(&self) -> String {
        let q = |s: &Option<String>, n: &str| match s {
            Some(s) => format!("{s}.{n}"),
            None => n.to_string(),
        };
        let list = |v: &[Condition]| v.iter().map(Condition::describe).collect::<Vec<_>>().join(", ");
        match self {
            Condition::All(v) => format!("and ({})", list(v)),
            Condition::Any(v) => format!("or ({})", list(v)),
            Condition::Not(v) => format!("not ({})", list(v)),
            Condition::TableExists { schema, table } => format!("tableExists {}", q(schema, table)),
            Condition::ColumnExists { schema, table, column } => {
                format!("columnExists {}.{column}", q(schema, table))
            }
            Condition::ViewExists { schema, view } => format!("viewExists {}", q(schema, view)),
            Condition::SequenceExists { schema, sequence } => format!("sequenceExists {}", q(schema, sequence)),
            Condition::IndexExists { schema, table, index, columns } => format!(
                "indexExists{}{}{}",
                index.as_ref().map(|i| format!(" indexName={}", q(schema, i))).unwrap_or_default(),
                table.as_ref().map(|t| format!(" tableName={t}")).unwrap_or_default(),
                if columns.is_empty() { String::new() } else { format!(" columnNames={}", columns.join(",")) }
            ),
            Condition::PrimaryKeyExists { schema, table, name } => format!(
                "primaryKeyExists{}{}",
                name.as_ref().map(|n| format!(" primaryKeyName={}", q(schema, n))).unwrap_or_default(),
                table.as_ref().map(|t| format!(" tableName={t}")).unwrap_or_default()
            ),
            Condition::ForeignKeyExists { schema, table, name } => format!(
                "foreignKeyConstraintExists foreignKeyName={}{}",
                q(schema, name),
                table.as_ref().map(|t| format!(" foreignKeyTableName={t}")).unwrap_or_default()
            ),
            Condition::UniqueConstraintExists { schema, table, name, columns } => format!(
                "uniqueConstraintExists tableName={}{}{}",
                q(schema, table),
                name.as_ref().map(|n| format!(" constraintName={n}")).unwrap_or_default(),
                if columns.is_empty() { String::new() } else { format!(" columnNames={}", columns.join(",")) }
            ),
            Condition::RowCount { schema, table, expected } => {
                format!("rowCount {} expectedRows={expected}", q(schema, table))
            }
            Condition::TableIsEmpty { schema, table } => format!("tableIsEmpty {}", q(schema, table)),
            Condition::RunningAs { username } => format!("runningAs username={username}"),
            Condition::Constant(b) => format!("{b} (decided when the changelog was read)"),
            Condition::ChangeSetExecuted { filename, id, author } => {
                format!("changeSetExecuted {filename}::{id}::{author}")
            }
            Condition::SqlCheck { expected, sql } => {
                format!("sqlCheck expectedResult={expected} {:?}", sql.trim())
            }
        }
    }
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
    /// `valueDate`: an ISO date, time or timestamp, in Liquibase's canonical form.
    Date(String),
    /// `valueComputed` (and values Liquibase turns into functions): SQL written as is.
    Computed(String),
    /// `valueSequenceNext`: `nextval('seq')`.
    SequenceNext(Option<String>, String),
    /// `valueSequenceCurrent`: `currval('seq')`.
    SequenceCurrent(Option<String>, String),
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
    /// `ALWAYS` or `BY DEFAULT` (identity columns).
    pub generation_type: Option<String>,
    pub remarks: Option<String>,
    pub descending: bool,
    /// `computed: true`: the name is an expression (indexes).
    pub computed: bool,
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
    pub check: Option<String>,
    pub primary_key_tablespace: Option<String>,
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
        /// `TEMPORARY`, `UNLOGGED`, … written after CREATE.
        table_type: Option<String>,
        tablespace: Option<String>,
        if_not_exists: bool,
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
        columns: Vec<String>,
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
        /// Decides how `defaultNullValue` is written (Liquibase's type of it).
        column_type: Option<String>,
        /// `validate: false`: PostgreSQL cannot skip checking rows for NOT NULL (refused).
        validate: bool,
    },
    DropNotNullConstraint {
        table: Name,
        column: String,
    },
    AddDefaultValue {
        table: Name,
        column: String,
        value: Value,
        column_type: Option<String>,
    },
    DropDefaultValue {
        table: Name,
        column: String,
    },
    AddPrimaryKey {
        table: Name,
        columns: Vec<String>,
        constraint_name: Option<String>,
        tablespace: Option<String>,
        /// `clustered: true`: `CLUSTER table USING constraint` after it.
        clustered: bool,
        /// `forIndexName`: `USING INDEX name`.
        for_index: Option<String>,
    },
    AddUniqueConstraint {
        table: Name,
        columns: Vec<String>,
        constraint_name: Option<String>,
        deferrable: bool,
        initially_deferred: bool,
        tablespace: Option<String>,
        for_index: Option<String>,
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
        /// `validate: false`: `NOT VALID`.
        validate: bool,
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
        tablespace: Option<String>,
        /// `clustered: true`: `CLUSTER table USING index` after it.
        clustered: bool,
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
    AlterSequence {
        sequence: Name,
        data_type: Option<String>,
        increment: Option<String>,
        min: Option<String>,
        max: Option<String>,
        cache: Option<String>,
        cycle: Option<bool>,
    },
    DropSequence {
        sequence: Name,
    },
    RenameSequence {
        schema: Option<String>,
        old: String,
        new: String,
    },
    CreateView {
        view: Name,
        query: String,
        replace: bool,
        remarks: Option<String>,
        /// `fullDefinition: true`: `query` is the whole CREATE VIEW statement.
        full_definition: bool,
    },
    DropView {
        view: Name,
        if_exists: bool,
    },
    RenameView {
        schema: Option<String>,
        old: String,
        new: String,
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
        /// `whereParams`: names and values for the where clause's placeholders.
        where_params: Vec<Column>,
    },
    Delete {
        table: Name,
        where_clause: Option<String>,
        where_params: Vec<Column>,
    },
    Sql(SqlChange),
    /// `path` as written (relative to the search path after resolution); `sql` holds the
    /// file's content with properties expanded.
    SqlFile {
        path: String,
        sql: SqlChange,
    },
    TagDatabase {
        tag: String,
    },
    AddAutoIncrement {
        table: Name,
        column: String,
        start_with: Option<String>,
        increment_by: Option<String>,
    },
    AddLookupTable {
        existing: Name,
        existing_column: String,
        new_table: Name,
        new_column: String,
        new_column_type: Option<String>,
        constraint_name: Option<String>,
    },
    DropPrimaryKey {
        table: Name,
        constraint_name: Option<String>,
    },
    DropUniqueConstraint {
        table: Name,
        constraint_name: String,
    },
    DropAllForeignKeyConstraints {
        table: Name,
    },
    MergeColumns {
        table: Name,
        column1: String,
        join_string: Option<String>,
        column2: String,
        final_column: String,
        final_type: String,
    },
    CreateProcedure {
        schema: Option<String>,
        name: Option<String>,
        /// The procedure's text (from `path` when given), properties expanded.
        text: String,
        /// The change's own `dbms`.
        dbms: Option<String>,
    },
    DropProcedure {
        procedure: Name,
    },
    LoadData(Box<LoadData>),
    Output {
        message: String,
        target: String,
    },
    Empty,
    Stop {
        message: String,
    },
    ExecuteCommand {
        executable: String,
        args: Vec<String>,
        timeout: Option<String>,
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
            Change::AlterSequence { .. } => "alterSequence",
            Change::DropSequence { .. } => "dropSequence",
            Change::RenameSequence { .. } => "renameSequence",
            Change::CreateView { .. } => "createView",
            Change::DropView { .. } => "dropView",
            Change::RenameView { .. } => "renameView",
            Change::SetTableRemarks { .. } => "setTableRemarks",
            Change::SetColumnRemarks { .. } => "setColumnRemarks",
            Change::Insert { .. } => "insert",
            Change::Update { .. } => "update",
            Change::Delete { .. } => "delete",
            Change::Sql(_) => "sql",
            Change::SqlFile { .. } => "sqlFile",
            Change::TagDatabase { .. } => "tagDatabase",
            Change::AddAutoIncrement { .. } => "addAutoIncrement",
            Change::AddLookupTable { .. } => "addLookupTable",
            Change::DropPrimaryKey { .. } => "dropPrimaryKey",
            Change::DropUniqueConstraint { .. } => "dropUniqueConstraint",
            Change::DropAllForeignKeyConstraints { .. } => "dropAllForeignKeyConstraints",
            Change::MergeColumns { .. } => "mergeColumns",
            Change::CreateProcedure { .. } => "createProcedure",
            Change::DropProcedure { .. } => "dropProcedure",
            Change::LoadData(l) => {
                if l.update.is_some() {
                    "loadUpdateData"
                } else {
                    "loadData"
                }
            }
            Change::Output { .. } => "output",
            Change::Empty => "empty",
            Change::Stop { .. } => "stop",
            Change::ExecuteCommand { .. } => "executeCommand",
        }
    }

    /// Liquibase's per-change description (`Change.getDescription()`): the type and the
    /// parameters its `@DatabaseChange` metadata calls description-worthy.
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
        let opt = |p: &mut Vec<(&'static str, String)>, k: &'static str, v: &Option<String>| {
            if let Some(v) = v {
                p.push((k, v.clone()));
            }
        };
        let owned = |ty: &str, p: Vec<(&'static str, String)>| d(ty, p.iter().map(|(k, v)| (*k, v.as_str())).collect());
        match self {
            Change::CreateTable { table, .. }
            | Change::DropTable { table, .. }
            | Change::AddColumn { table, .. }
            | Change::SetTableRemarks { table, .. }
            | Change::Insert { table, .. }
            | Change::Update { table, .. }
            | Change::Delete { table, .. }
            | Change::DropPrimaryKey { table, .. }
            | Change::MergeColumns { table, .. } => d(t, vec![("tableName", &table.name)]),
            Change::DropColumn { table, columns } => {
                let mut p = vec![("tableName", table.name.clone())];
                if columns.len() == 1 {
                    p.push(("columnName", columns[0].clone()));
                }
                owned(t, p)
            }
            Change::LoadData(l) => d(t, vec![("tableName", &l.table.name)]),
            Change::RenameTable { old, new, .. } => d(t, vec![("newTableName", new), ("oldTableName", old)]),
            Change::RenameView { old, new, .. } => d(t, vec![("newViewName", new), ("oldViewName", old)]),
            Change::RenameSequence { old, new, .. } => d(t, vec![("newSequenceName", new), ("oldSequenceName", old)]),
            Change::ModifyDataType { table, column, .. }
            | Change::AddNotNullConstraint { table, column, .. }
            | Change::DropNotNullConstraint { table, column }
            | Change::AddDefaultValue { table, column, .. }
            | Change::DropDefaultValue { table, column }
            | Change::SetColumnRemarks { table, column, .. }
            | Change::AddAutoIncrement { table, column, .. } => {
                d(t, vec![("columnName", column), ("tableName", &table.name)])
            }
            Change::RenameColumn { table, old, new, .. } => {
                d(t, vec![("newColumnName", new), ("oldColumnName", old), ("tableName", &table.name)])
            }
            Change::AddPrimaryKey { table, constraint_name, .. }
            | Change::AddUniqueConstraint { table, constraint_name, .. } => {
                let mut p = vec![("tableName", table.name.clone())];
                opt(&mut p, "constraintName", constraint_name);
                owned(t, p)
            }
            Change::DropUniqueConstraint { table, constraint_name } => {
                d(t, vec![("constraintName", constraint_name), ("tableName", &table.name)])
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
            Change::DropAllForeignKeyConstraints { table } => d(t, vec![("baseTableName", &table.name)]),
            Change::AddLookupTable { existing, existing_column, new_table, new_column, constraint_name, .. } => {
                let mut p = vec![
                    ("existingColumnName", existing_column.clone()),
                    ("existingTableName", existing.name.clone()),
                    ("newColumnName", new_column.clone()),
                    ("newTableName", new_table.name.clone()),
                ];
                opt(&mut p, "constraintName", constraint_name);
                owned(t, p)
            }
            Change::CreateIndex { table, index_name, .. } => {
                d(t, vec![("indexName", index_name), ("tableName", &table.name)])
            }
            Change::DropIndex { index, table } => {
                let mut p = vec![("indexName", index.name.clone())];
                opt(&mut p, "tableName", table);
                owned(t, p)
            }
            Change::CreateSequence { sequence, .. }
            | Change::AlterSequence { sequence, .. }
            | Change::DropSequence { sequence } => d(t, vec![("sequenceName", &sequence.name)]),
            Change::CreateView { view, .. } | Change::DropView { view, .. } => d(t, vec![("viewName", &view.name)]),
            Change::CreateProcedure { name, .. } => {
                let mut p = Vec::new();
                opt(&mut p, "procedureName", name);
                owned(t, p)
            }
            Change::DropProcedure { procedure } => d(t, vec![("procedureName", &procedure.name)]),
            Change::SqlFile { path, .. } => d(t, vec![("path", path)]),
            Change::ExecuteCommand { executable, .. } => d(t, vec![("executable", executable)]),
            Change::Sql(_)
            | Change::TagDatabase { .. }
            | Change::Output { .. }
            | Change::Empty
            | Change::Stop { .. } => t.to_string(),
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
