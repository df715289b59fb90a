//! `pgplane.yaml`: the raw document as written by people, and its validation.
//!
//! Parsing is strict: unknown keys, wrong types and missing fields are errors that name
//! the file, line and column. Semantic checks (safe names, references between modules
//! and tenants, naming templates) run right after, before anything touches a server.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::ident::check_name;
use crate::naming::{NameTemplate, Var};

/// An error in a manifest, with the place it was found and, where known, the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ManifestError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(col) = self.column {
                write!(f, ":{col}")?;
            }
        }
        write!(f, ": {}", self.message)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawManifest {
    pub version: u32,
    #[serde(default)]
    pub environment: Option<String>,
    #[serde(default)]
    pub servers: Vec<RawServer>,
    #[serde(default)]
    pub naming: RawNaming,
    pub modules: Vec<RawModule>,
    #[serde(default)]
    pub tenants: Vec<RawTenant>,
    #[serde(default)]
    pub templates: Vec<RawTemplate>,
    #[serde(default)]
    pub branches: Option<RawBranches>,
    /// Phased setups run by `pgplane stack run` (see [`crate::stack`]).
    #[serde(default)]
    pub stacks: Vec<crate::stack::RawStack>,
    /// Event-driven provisioning (`crate::event`): the embedded queue when absent.
    #[serde(default)]
    pub events: Option<crate::event::RawEvents>,
}

/// A template database built from migration sources, for branches to be stamped from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTemplate {
    pub name: String,
    pub module: String,
    pub sources: Vec<String>,
    #[serde(default)]
    pub contexts: Vec<String>,
}

/// How branch databases are named, limited and set up.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBranches {
    #[serde(default)]
    pub database: Option<String>,
    #[serde(default)]
    pub max_per_template: Option<u32>,
    #[serde(default)]
    pub ttl: Option<String>,
    #[serde(default)]
    pub readonly_role: Option<String>,
    #[serde(default)]
    pub template_sessions: Option<TemplateSessions>,
    #[serde(default)]
    pub settings: BTreeMap<String, serde_yaml::Value>,
    /// A file of live branch ids (one per line), relative to the manifest: the leader's
    /// periodic gc drops branches not in it.
    #[serde(default)]
    pub keep_file: Option<String>,
}

/// What `branch create` does with sessions connected to the template.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TemplateSessions {
    /// Wait for them to end (up to the session timeout).
    #[default]
    Wait,
    /// End them with pg_terminate_backend.
    Terminate,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub name: String,
    pub url: String,
    /// How much `server: auto` placement may put on this server.
    #[serde(default)]
    pub capacity: Option<RawCapacity>,
}

/// `capacity: {databases: 200}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCapacity {
    pub databases: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawNaming {
    pub database: String,
    pub tenant_database: String,
    pub tenant_schema: String,
    pub owner_role: String,
    pub tenant_role: String,
    pub readonly_role: String,
}

impl Default for RawNaming {
    fn default() -> Self {
        RawNaming {
            database: "{env}_{module}".into(),
            tenant_database: "{env}_{tenant}_{module}".into(),
            tenant_schema: "{tenant}_{module}".into(),
            owner_role: "{env}_{module}".into(),
            tenant_role: "{env}_{tenant}_{module}".into(),
            readonly_role: "{owner}_readonly".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Storage {
    /// One database for the module.
    Database,
    /// One shared database for the module, one schema per tenant.
    SchemaPerTenant,
    /// One database per tenant.
    DatabasePerTenant,
}

impl Storage {
    pub fn as_str(self) -> &'static str {
        match self {
            Storage::Database => "database",
            Storage::SchemaPerTenant => "schema-per-tenant",
            Storage::DatabasePerTenant => "database-per-tenant",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModule {
    pub name: String,
    pub storage: Storage,
    #[serde(default)]
    pub server: Option<String>,
    #[serde(default)]
    pub extensions: Vec<String>,
    #[serde(default)]
    pub connection_limit: Option<i32>,
    #[serde(default)]
    pub readonly_role: bool,
    #[serde(default)]
    pub migrations: Option<RawMigrations>,
    #[serde(default)]
    pub settings: BTreeMap<String, serde_yaml::Value>,
    /// PgBouncer: server connections per (database, user) pool (`pgplane pgbouncer`).
    #[serde(default)]
    pub pool_size: Option<u32>,
    /// PgBouncer: server connections per database, all users together.
    #[serde(default)]
    pub max_db_connections: Option<u32>,
    /// The module's releases, oldest first (see [`VersionSpec`]).
    #[serde(default)]
    pub versions: Vec<RawVersion>,
    /// Named switches a tenant sets when its module is enabled (see [`ParameterSpec`]).
    #[serde(default)]
    pub parameters: BTreeMap<String, RawParameter>,
}

/// One release of a module: `{version: "2.0", migrations: PATH}` (a source of its own),
/// `{version: "2.0", to_tag: v2.0}` (the module's changelog up to a `tagDatabase`) or
/// `{version: "2.0", target: "2.0"}` (the module's SQL folder up to a version).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVersion {
    pub version: serde_yaml::Value,
    #[serde(default)]
    pub migrations: Option<RawMigrations>,
    #[serde(default)]
    pub to_tag: Option<String>,
    #[serde(default)]
    pub target: Option<serde_yaml::Value>,
}

/// `loadReference: {context: reference}`, `{label: sample}` or `{folder: reference}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawParameter {
    #[serde(default)]
    pub context: Option<String>,
    #[serde(default)]
    pub label: Option<String>,
    #[serde(default)]
    pub folder: Option<String>,
    /// The value when a tenant does not set it (default false).
    #[serde(default)]
    pub default: bool,
}

/// `migrations: PATH`, or a map with the path and options.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawMigrations {
    Path(String),
    Detailed(RawMigrationsDetailed),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMigrationsDetailed {
    pub path: String,
    #[serde(default)]
    pub contexts: Vec<String>,
    #[serde(default)]
    pub labels: Option<String>,
    #[serde(default)]
    pub schema: Option<String>,
    #[serde(default)]
    pub changelog_table: Option<String>,
    #[serde(default)]
    pub changelog_lock_table: Option<String>,
    #[serde(default)]
    pub history_table: Option<String>,
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    #[serde(default)]
    pub allow_execute_command: bool,
    #[serde(default)]
    pub search_path: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTenant {
    pub name: String,
    pub modules: Vec<String>,
}

/// A validated manifest: names checked, references resolved, `${VAR}`s expanded.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub file: PathBuf,
    pub default_environment: Option<String>,
    /// Empty means: use the embedded local server.
    pub servers: Vec<ServerSpec>,
    pub naming: Naming,
    pub modules: Vec<ModuleSpec>,
    pub tenants: Vec<TenantSpec>,
    pub templates: Vec<TemplateSpec>,
    pub branches: BranchPolicy,
    /// `stacks:`, checked when the manifest is read; `pgplane stack run` builds one for its
    /// environment with [`crate::stack::StackSource::build`].
    pub stacks: Vec<crate::stack::StackSource>,
    pub events: crate::event::EventsSpec,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSpec {
    pub name: String,
    /// The admin URL with `${VAR}`s expanded. Holds a password: never print it.
    pub url: String,
    /// `capacity.databases`: how many databases `server: auto` placement may bring the
    /// server to (`None`: no limit).
    pub capacity: Option<u32>,
}

#[derive(Debug, Clone)]
pub struct Naming {
    pub database: NameTemplate,
    pub tenant_database: NameTemplate,
    pub tenant_schema: NameTemplate,
    pub owner_role: NameTemplate,
    pub tenant_role: NameTemplate,
    pub readonly_role: NameTemplate,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleSpec {
    pub name: String,
    pub storage: Storage,
    /// Name of the server in `servers`, or `local` for the embedded one.
    pub server: String,
    pub extensions: Vec<String>,
    pub connection_limit: Option<i32>,
    pub readonly_role: bool,
    pub migrations: Option<MigrationsSpec>,
    /// Database-level settings (`ALTER DATABASE … SET name = value`), sorted by name.
    pub settings: Vec<(String, String)>,
    /// PgBouncer pool sizes of the module's databases (`pgplane pgbouncer`).
    pub pool: PoolSpec,
    /// `server: auto` (database-per-tenant only): each tenant's database goes to the
    /// least-loaded server with room, chosen once and recorded; `server` is then the first
    /// server and means nothing for the tenants.
    pub auto_server: bool,
    /// Releases, oldest first; empty: one unnamed version, `migrations:`.
    pub versions: Vec<VersionSpec>,
    /// Tenant parameters, sorted by name.
    pub parameters: Vec<ParameterSpec>,
}

impl ModuleSpec {
    /// The newest version's name (`None` for a module without `versions:`).
    pub fn newest_version(&self) -> Option<&str> {
        self.versions.last().map(|v| v.version.as_str())
    }

    pub fn version(&self, name: &str) -> Option<&VersionSpec> {
        self.versions.iter().find(|v| v.version == name)
    }

    /// A version's place in `versions` (0 = oldest).
    pub fn version_index(&self, name: &str) -> Option<usize> {
        self.versions.iter().position(|v| v.version == name)
    }

    pub fn parameter(&self, name: &str) -> Option<&ParameterSpec> {
        self.parameters.iter().find(|p| p.name == name)
    }

    /// Whether a tenant's storage of this module is its own (schema or database).
    pub fn per_tenant(&self) -> bool {
        self.storage != Storage::Database
    }
}

/// One release of a module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionSpec {
    /// As written (`1.0`, `2.0-rc1`).
    pub version: String,
    pub source: VersionSource,
}

/// Where a version's migrations come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionSource {
    /// A source of its own (it holds what earlier versions applied too, or the ledger
    /// keeps their rows as entries it does not have).
    Own(MigrationsSpec),
    /// The module's `migrations:` changelog up to and including the changeset whose
    /// `tagDatabase` sets this tag.
    ToTag(String),
    /// The module's `migrations:` SQL folder up to and including this migration version
    /// (repeatable migrations always run).
    Target(String),
}

/// A tenant parameter: what turning it on selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParameterSpec {
    pub name: String,
    pub selects: ParameterSelects,
    pub default: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParameterSelects {
    /// A Liquibase context: its changesets run only when the parameter is on.
    Context(String),
    /// A Liquibase label: changesets carrying it run only when the parameter is on.
    Label(String),
    /// A subfolder of a SQL folder: its files join the folder's migrations when on.
    Folder(String),
}

impl ParameterSelects {
    pub fn describe(&self) -> String {
        match self {
            ParameterSelects::Context(c) => format!("context {c}"),
            ParameterSelects::Label(l) => format!("label {l}"),
            ParameterSelects::Folder(f) => format!("folder {f}"),
        }
    }
}

/// A module's PgBouncer pools: `pool_size` server connections per (database, user) pair,
/// at most `max_db_connections` per database. `None`: not given (see `pgbouncer`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PoolSpec {
    pub pool_size: Option<u32>,
    pub max_db_connections: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateSpec {
    /// The template database's name.
    pub name: String,
    /// The module whose owner owns the objects and whose migrations options apply.
    pub module: String,
    /// Migration sources, in order, as written (relative to the manifest's folder).
    pub sources: Vec<String>,
    pub contexts: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct BranchPolicy {
    /// `{template}`, `{branch}` (and `{env}`) → the branch database's name.
    pub database: NameTemplate,
    pub max_per_template: u32,
    pub ttl: Option<std::time::Duration>,
    /// May connect to and read every branch and template.
    pub readonly_role: Option<String>,
    pub template_sessions: TemplateSessions,
    /// Database-level settings of every branch, sorted by name.
    pub settings: Vec<(String, String)>,
    /// The live list for the periodic gc (relative to the manifest's folder).
    pub keep_file: Option<String>,
}

impl BranchPolicy {
    /// The branch read-only role's name in `env` (`{env}` filled in, fitted to 63 bytes).
    pub fn readonly_role_in(&self, env: &str) -> Option<String> {
        let raw = self.readonly_role.as_deref()?;
        match NameTemplate::parse(raw, &[], &[Var::Env]) {
            Ok(t) => Some(t.render(crate::naming::Vars { env, ..Default::default() })),
            Err(_) => Some(raw.to_string()),
        }
    }
}

impl Default for BranchPolicy {
    fn default() -> Self {
        BranchPolicy {
            database: NameTemplate::parse(
                DEFAULT_BRANCH_DATABASE,
                &[Var::Template, Var::Branch],
                &[Var::Template, Var::Branch, Var::Env],
            )
            .expect("valid default"),
            max_per_template: 20,
            ttl: None,
            readonly_role: None,
            template_sessions: TemplateSessions::Wait,
            settings: Vec::new(),
            keep_file: None,
        }
    }
}

pub const DEFAULT_BRANCH_DATABASE: &str = "{template}_{branch}";

/// A module's migration source and how to apply it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MigrationsSpec {
    /// As written in the manifest, relative to the manifest's folder.
    pub path: String,
    /// Liquibase contexts to select; empty selects all.
    pub contexts: Vec<String>,
    /// Liquibase label expression; `None` selects all.
    pub labels: Option<String>,
    /// Target schema for a module with its own database (default `public`); tenant
    /// schemas are always their own.
    pub schema: Option<String>,
    pub changelog_table: Option<String>,
    pub changelog_lock_table: Option<String>,
    pub history_table: Option<String>,
    /// Liquibase changelog properties (`${name}`), set before the changelog is read.
    pub properties: BTreeMap<String, String>,
    /// Lets Liquibase `executeCommand` changes run their program (refused otherwise).
    pub allow_execute_command: bool,
    /// Liquibase's search path, relative to the manifest (default: the changelog's folder).
    pub search_path: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantSpec {
    pub name: String,
    pub modules: Vec<String>,
}

/// The name of the embedded server when the manifest lists none.
pub const LOCAL_SERVER: &str = "local";

/// `server: auto` on a module: placement instead of a server name.
pub const AUTO_SERVER: &str = "auto";

impl Manifest {
    /// Reads and validates a manifest file. `env` resolves `${VAR}` references.
    pub fn load(path: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<Manifest, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|e| ManifestError {
            file: path.to_path_buf(),
            line: None,
            column: None,
            message: match e.kind() {
                std::io::ErrorKind::NotFound => format!(
                    "no such manifest file (looked in {}); check the path, or write one (see examples/platform.yaml)",
                    std::env::current_dir()
                        .map(|d| d.join(path).parent().map(|p| p.display().to_string()).unwrap_or_default())
                        .unwrap_or_default()
                ),
                _ => format!("cannot read the manifest: {e}"),
            },
        })?;
        Manifest::parse(path, &text, env)
    }

    /// Parses and validates manifest text; `path` is used in error messages only.
    pub fn parse(path: &Path, text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Manifest, ManifestError> {
        let src = Source { file: path, text };
        let raw: RawManifest = serde_yaml::from_str(text).map_err(|e| {
            let (line, column) = e.location().map(|l| (l.line(), l.column())).unzip();
            let mut message = e.to_string();
            if let Some(pos) = message.rfind(" at line ") {
                message.truncate(pos);
            }
            if message.contains("untagged enum RawMigrations") {
                message = "`migrations` must be a path (a SQL folder or a Liquibase changelog) or a map with keys \
                           path, contexts, labels, schema, changelog_table, changelog_lock_table, history_table, \
                           properties, allow_execute_command, search_path"
                    .into();
            }
            if message.contains("missing field") && line.is_none() {
                message.push_str(" (at the top level of the document)");
            }
            ManifestError { file: path.to_path_buf(), line, column, message }
        })?;
        no_nul(path, text)?;
        validate(&src, raw, env)
    }

    pub fn template(&self, name: &str) -> Option<&TemplateSpec> {
        self.templates.iter().find(|t| t.name == name)
    }

    pub fn module(&self, name: &str) -> Option<&ModuleSpec> {
        self.modules.iter().find(|m| m.name == name)
    }

    /// The server names in manifest order; the first one holds the control database.
    pub fn server_names(&self) -> Vec<String> {
        if self.servers.is_empty() {
            vec![LOCAL_SERVER.to_string()]
        } else {
            self.servers.iter().map(|s| s.name.clone()).collect()
        }
    }
}

/// PostgreSQL text cannot hold NUL, and a name or value cut at a NUL is not the one
/// written: a key or value holding one (written as `"\0"`, `"\x00"`, `"\u0000"` …) is an
/// error at its line.
fn no_nul(path: &Path, text: &str) -> Result<(), ManifestError> {
    fn has_nul(v: &serde_yaml::Value) -> bool {
        match v {
            serde_yaml::Value::String(s) => s.contains('\0'),
            serde_yaml::Value::Sequence(items) => items.iter().any(has_nul),
            serde_yaml::Value::Mapping(m) => m.iter().any(|(k, v)| has_nul(k) || has_nul(v)),
            serde_yaml::Value::Tagged(t) => has_nul(&t.value),
            _ => false,
        }
    }
    let value: serde_yaml::Value = serde_yaml::from_str(text).unwrap_or(serde_yaml::Value::Null);
    if !has_nul(&value) {
        return Ok(());
    }
    let escapes = ["\\0", "\\x00", "\\u0000", "\\U00000000", "\0"];
    let line = text.lines().position(|l| escapes.iter().any(|e| l.contains(e))).map(|i| i + 1);
    Err(ManifestError {
        file: path.to_path_buf(),
        line,
        column: None,
        message: "a value holds a NUL character (\\0), which PostgreSQL names and settings cannot hold; remove it"
            .into(),
    })
}

struct Source<'a> {
    file: &'a Path,
    text: &'a str,
}

/// A range of lines of the manifest where an error is looked for. serde_yaml gives no
/// spans for values, so semantic errors find their place by searching the source for the
/// offending value as a whole token in value position (`key: v`, `- v`, `[a, v]`).
#[derive(Clone, Copy)]
struct Scope<'a> {
    src: &'a Source<'a>,
    start: usize,
    end: usize,
}

impl<'a> Source<'a> {
    fn whole(&'a self) -> Scope<'a> {
        Scope { src: self, start: 0, end: self.text.lines().count() }
    }

    /// The lines under the top-level key `name:` up to the next top-level key.
    fn section(&'a self, name: &str) -> Scope<'a> {
        let lines: Vec<&str> = self.text.lines().collect();
        let Some(start) = lines.iter().position(|l| l.starts_with(&format!("{name}:"))) else {
            return self.whole();
        };
        let end = lines
            .iter()
            .enumerate()
            .skip(start + 1)
            .find(|(_, l)| l.starts_with(|c: char| c.is_ascii_alphabetic()))
            .map(|(i, _)| i)
            .unwrap_or(lines.len());
        Scope { src: self, start, end }
    }
}

impl<'a> Scope<'a> {
    /// Value positions of `needle` in this scope, as (line index, byte column), the ones on
    /// a `key:` line first.
    fn candidates(&self, key: &str, needle: &str) -> Vec<(usize, usize)> {
        let mut keyed = Vec::new();
        let mut others = Vec::new();
        let is_word = |c: char| c.is_ascii_alphanumeric() || c == '_';
        for (i, line) in self.src.text.lines().enumerate().take(self.end).skip(self.start) {
            let code = line.split(" #").next().unwrap_or(line);
            for (col, _) in code.match_indices(needle) {
                let prev = code[..col].chars().next_back();
                let next = code[col + needle.len()..].chars().next();
                if prev.is_some_and(is_word) || next.is_some_and(is_word) {
                    continue;
                }
                let before = code[..col].trim_end_matches(['"', '\'', ' ', '[']);
                let value = before.ends_with(':') || before.ends_with('-') || before.ends_with(',');
                if before.ends_with(&format!("{key}:")) || (value && code[..col].contains(&format!("{key}:"))) {
                    keyed.push((i, col));
                } else if value {
                    others.push((i, col));
                }
            }
        }
        if keyed.is_empty() {
            others
        } else {
            keyed
        }
    }

    /// The list item (e.g. one module or tenant) whose `key: needle` line comes first: from
    /// that line up to the next item at the same indentation.
    fn from(self, key: &str, needle: &str) -> Scope<'a> {
        let Some(&(line, _)) = self.candidates(key, needle).first() else { return self };
        let lines: Vec<&str> = self.src.text.lines().collect();
        // The item starts at the nearest `- ` at or above the key's line.
        let start = (self.start..=line).rev().find(|&i| lines[i].trim_start().starts_with("- ")).unwrap_or(line);
        let indent = lines[start].len() - lines[start].trim_start().len();
        let end = (start + 1..self.end)
            .find(|&i| {
                let l = lines[i];
                let ind = l.len() - l.trim_start().len();
                !l.trim().is_empty() && ind <= indent && !l.trim_start().starts_with('#')
            })
            .unwrap_or(self.end);
        Scope { start, end, ..self }
    }

    /// Error at the first line in this scope that starts the mapping key `key:`.
    fn err_key(&self, key: &str, message: String) -> ManifestError {
        let found = self.src.text.lines().enumerate().take(self.end).skip(self.start).find_map(|(i, l)| {
            let t = l.trim_start().trim_start_matches("- ");
            let quoted = [format!("{key}:"), format!("\"{key}\":"), format!("'{key}':")];
            quoted.iter().any(|q| t.starts_with(q.as_str())).then(|| (i, l.len() - t.len()))
        });
        ManifestError {
            file: self.src.file.to_path_buf(),
            line: found.map(|p| p.0 + 1),
            column: found.map(|p| p.1 + 1),
            message,
        }
    }

    fn err(&self, key: &str, needle: &str, message: String) -> ManifestError {
        self.err_nth(key, needle, 0, message)
    }

    /// Error at the first line of this scope that sets `key:` (or the scope's first line).
    fn err_at_key(&self, key: &str, message: String) -> ManifestError {
        let lines = self.src.text.lines().enumerate().take(self.end).skip(self.start);
        let found = lines.clone().find(|(_, l)| l.trim_start().starts_with(&format!("{key}:")));
        let line = found.map(|(i, _)| i).or((self.start < self.end).then_some(self.start));
        ManifestError { file: self.src.file.to_path_buf(), line: line.map(|i| i + 1), column: None, message }
    }

    /// Error at the `nth` (0-based) occurrence, e.g. 1 for the repeat of a duplicate.
    fn err_nth(&self, key: &str, needle: &str, nth: usize, message: String) -> ManifestError {
        let found = self.candidates(key, needle);
        let place = found.get(nth).or(found.last());
        ManifestError {
            file: self.src.file.to_path_buf(),
            line: place.map(|p| p.0 + 1),
            column: place.map(|p| p.1 + 1),
            message,
        }
    }
}

fn validate(
    src: &Source<'_>,
    raw: RawManifest,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Manifest, ManifestError> {
    let top = src.whole();
    let servers_scope = src.section("servers");
    let modules_scope = src.section("modules");
    let tenants_scope = src.section("tenants");
    if raw.version != 1 {
        return Err(top.err(
            "version",
            &raw.version.to_string(),
            format!("unsupported manifest version {}; this pgplane reads `version: 1`", raw.version),
        ));
    }
    if let Some(e) = &raw.environment {
        check_name("environment", e).map_err(|m| top.err("environment", e, m))?;
    }

    let mut servers = Vec::new();
    let mut seen = BTreeSet::new();
    for s in &raw.servers {
        check_name("server", &s.name).map_err(|m| servers_scope.err("name", &s.name, m))?;
        if !seen.insert(s.name.clone()) {
            return Err(servers_scope.err_nth("name", &s.name, 1, format!("server {:?} is listed twice", s.name)));
        }
        let url = expand_vars(&s.url).map_err(|m| servers_scope.err("url", &s.url, m))?;
        let url = url.resolve(env).map_err(|m| servers_scope.err("url", &s.url, m))?;
        if url.trim().is_empty() {
            return Err(servers_scope.err("url", &s.url, format!("server {:?} has an empty url", s.name)));
        }
        if s.name == AUTO_SERVER {
            return Err(servers_scope.err(
                "name",
                &s.name,
                "server name \"auto\" is reserved: `server: auto` on a module means placement; rename the server"
                    .into(),
            ));
        }
        let capacity = s.capacity.as_ref().map(|c| c.databases);
        if capacity == Some(0) {
            return Err(servers_scope.from("name", &s.name).err(
                "databases",
                "0",
                format!("server {:?}: capacity.databases must be at least 1", s.name),
            ));
        }
        servers.push(ServerSpec { name: s.name.clone(), url, capacity });
    }
    let server_names: Vec<String> = if servers.is_empty() {
        vec![LOCAL_SERVER.to_string()]
    } else {
        servers.iter().map(|s| s.name.clone()).collect()
    };

    let naming = Naming {
        database: template(
            &src.section("naming"),
            "database",
            &raw.naming.database,
            &[Var::Module],
            &[Var::Env, Var::Module],
        )?,
        tenant_database: template(
            &src.section("naming"),
            "tenant_database",
            &raw.naming.tenant_database,
            &[Var::Tenant, Var::Module],
            &[Var::Env, Var::Tenant, Var::Module],
        )?,
        tenant_schema: template(
            &src.section("naming"),
            "tenant_schema",
            &raw.naming.tenant_schema,
            &[Var::Tenant, Var::Module],
            &[Var::Env, Var::Tenant, Var::Module],
        )?,
        owner_role: template(
            &src.section("naming"),
            "owner_role",
            &raw.naming.owner_role,
            &[Var::Module],
            &[Var::Env, Var::Module],
        )?,
        tenant_role: template(
            &src.section("naming"),
            "tenant_role",
            &raw.naming.tenant_role,
            &[Var::Tenant, Var::Module],
            &[Var::Env, Var::Tenant, Var::Module],
        )?,
        readonly_role: template(
            &src.section("naming"),
            "readonly_role",
            &raw.naming.readonly_role,
            &[Var::Owner],
            &[Var::Owner],
        )?,
    };

    if raw.modules.is_empty() {
        return Err(top.err("modules", "[]", "`modules` is empty; list at least one module".into()));
    }
    let mut modules = Vec::new();
    let mut names = BTreeSet::new();
    for m in &raw.modules {
        check_name("module", &m.name).map_err(|msg| modules_scope.err("name", &m.name, msg))?;
        // Only computed for an error: it scans the section.
        let here = || modules_scope.from("name", &m.name);
        if !names.insert(m.name.clone()) {
            return Err(modules_scope.err_nth("name", &m.name, 1, format!("module {:?} is listed twice", m.name)));
        }
        let auto_server = m.server.as_deref() == Some(AUTO_SERVER);
        if auto_server && m.storage != Storage::DatabasePerTenant {
            return Err(here().err(
                "server",
                AUTO_SERVER,
                format!(
                    "module {:?} has `server: auto`, which places each tenant's database on a server; it needs \
                     `storage: database-per-tenant` (this one has `storage: {}`)",
                    m.name,
                    m.storage.as_str()
                ),
            ));
        }
        let server = match &m.server {
            Some(s) if s == AUTO_SERVER => server_names[0].clone(),
            Some(s) if server_names.contains(s) => s.clone(),
            Some(s) => {
                return Err(here().err(
                    "server",
                    s,
                    format!(
                        "module {:?} names server {s:?}, which is not in `servers` (known: {})",
                        m.name,
                        server_names.join(", ")
                    ),
                ))
            }
            None => server_names[0].clone(),
        };
        let mut exts = BTreeSet::new();
        for e in &m.extensions {
            if e.is_empty() || !e.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
                return Err(here().err(
                    "extensions",
                    e,
                    format!("extension name {e:?} is not valid (letters, digits, _ and -)"),
                ));
            }
            if !exts.insert(e.clone()) {
                return Err(here().err_nth(
                    "extensions",
                    e,
                    1,
                    format!("extension {e:?} is listed twice for module {:?}", m.name),
                ));
            }
        }
        if let Some(limit) = m.connection_limit {
            if limit < -1 {
                return Err(here().err(
                    "connection_limit",
                    &limit.to_string(),
                    format!("connection_limit {limit} is not valid; use -1 (no limit) or a number >= 0"),
                ));
            }
        }
        modules.push(ModuleSpec {
            name: m.name.clone(),
            storage: m.storage,
            server,
            extensions: m.extensions.clone(),
            connection_limit: m.connection_limit,
            readonly_role: m.readonly_role,
            migrations: match &m.migrations {
                None => None,
                Some(raw) => Some(migrations(raw).map_err(|(key, value, msg)| here().err(key, &value, msg))?),
            },
            settings: settings(&m.settings).map_err(|(key, msg)| here().err(&key, &key, msg))?,
            auto_server,
            versions: versions(m).map_err(|(key, value, msg, nth)| here().err_nth(key, &value, nth, msg))?,
            parameters: parameters(m).map_err(|(name, msg)| here().err_key(&name, msg))?,
            pool: pool(m).map_err(|(key, value, msg)| here().err(key, &value.to_string(), msg))?,
        });
    }

    let by_name: BTreeMap<&str, &ModuleSpec> = modules.iter().map(|m| (m.name.as_str(), m)).collect();
    let mut tenants = Vec::new();
    let mut tnames = BTreeSet::new();
    for t in &raw.tenants {
        check_name("tenant", &t.name).map_err(|msg| tenants_scope.err("name", &t.name, msg))?;
        let here = || tenants_scope.from("name", &t.name);
        if !tnames.insert(t.name.clone()) {
            return Err(tenants_scope.err_nth("name", &t.name, 1, format!("tenant {:?} is listed twice", t.name)));
        }
        let mut enabled = BTreeSet::new();
        for m in &t.modules {
            match by_name.get(m.as_str()) {
                None => {
                    return Err(here().err(
                        "modules",
                        m,
                        format!(
                            "tenant {:?} enables module {m:?}, which is not defined in `modules` (defined: {})",
                            t.name,
                            by_name.keys().copied().collect::<Vec<_>>().join(", ")
                        ),
                    ))
                }
                Some(spec) if spec.storage == Storage::Database => {
                    return Err(here().err(
                        "modules",
                        m,
                        format!(
                        "tenant {:?} enables module {m:?}, but that module has `storage: database` (shared by all); \
                             use `storage: schema-per-tenant` or `database-per-tenant` for per-tenant storage",
                        t.name
                    ),
                    ))
                }
                Some(_) => {}
            }
            if !enabled.insert(m.clone()) {
                return Err(here().err_nth("modules", m, 1, format!("tenant {:?} enables module {m:?} twice", t.name)));
            }
        }
        tenants.push(TenantSpec { name: t.name.clone(), modules: t.modules.clone() });
    }

    let templates_scope = src.section("templates");
    let mut templates = Vec::new();
    let mut seen_templates = BTreeSet::new();
    for t in &raw.templates {
        check_name("template", &t.name).map_err(|m| templates_scope.err("name", &t.name, m))?;
        let here = || templates_scope.from("name", &t.name);
        if !seen_templates.insert(t.name.clone()) {
            return Err(templates_scope.err_nth("name", &t.name, 1, format!("template {:?} is listed twice", t.name)));
        }
        match by_name.get(t.module.as_str()) {
            None => {
                return Err(here().err(
                    "module",
                    &t.module,
                    format!(
                        "template {:?} names module {:?}, which is not defined in `modules` (defined: {})",
                        t.name,
                        t.module,
                        by_name.keys().copied().collect::<Vec<_>>().join(", ")
                    ),
                ))
            }
            Some(m) if m.storage != Storage::Database => {
                return Err(here().err(
                    "module",
                    &t.module,
                    format!(
                        "template {:?}: module {:?} has `storage: {}`; templates are built for modules with `storage: database`",
                        t.name,
                        t.module,
                        m.storage.as_str()
                    ),
                ))
            }
            Some(_) => {}
        }
        if t.sources.is_empty() {
            return Err(here().err(
                "sources",
                "[]",
                format!("template {:?} has no sources; list the migration sources that build it", t.name),
            ));
        }
        templates.push(TemplateSpec {
            name: t.name.clone(),
            module: t.module.clone(),
            sources: t.sources.clone(),
            contexts: t.contexts.clone(),
        });
    }

    let branches = match &raw.branches {
        None => BranchPolicy::default(),
        Some(b) => {
            let scope = src.section("branches");
            let mut policy = BranchPolicy::default();
            if let Some(text) = &b.database {
                policy.database =
                    NameTemplate::parse(text, &[Var::Template, Var::Branch], &[Var::Template, Var::Branch, Var::Env])
                        .map_err(|m| scope.err("database", text, format!("branches.database: {m}")))?;
            }
            if let Some(max) = b.max_per_template {
                if max == 0 {
                    return Err(scope.err(
                        "max_per_template",
                        "0",
                        "branches.max_per_template must be at least 1".into(),
                    ));
                }
                policy.max_per_template = max;
            }
            if let Some(ttl) = &b.ttl {
                policy.ttl =
                    Some(parse_duration(ttl).map_err(|m| scope.err("ttl", ttl, format!("branches.ttl: {m}")))?);
            }
            if let Some(role) = &b.readonly_role {
                // `{env}` may appear, so that environments on one server get roles of their own.
                if role.contains('{') {
                    NameTemplate::parse(role, &[], &[Var::Env])
                        .map_err(|m| scope.err("readonly_role", role, format!("branches.readonly_role: {m}")))?;
                } else {
                    check_name("branches.readonly_role", role).map_err(|m| scope.err("readonly_role", role, m))?;
                }
                policy.readonly_role = Some(role.clone());
            }
            policy.template_sessions = b.template_sessions.unwrap_or_default();
            policy.keep_file = b.keep_file.clone();
            policy.settings = settings(&b.settings).map_err(|(key, msg)| scope.err(&key, &key, msg))?;
            policy
        }
    };

    let events = match &raw.events {
        None => crate::event::EventsSpec::new(),
        Some(e) => crate::event::spec(e, &|s| expand_vars(s).and_then(|x| x.resolve(env)))
            .map_err(|(key, message)| src.section("events").err_at_key(&key, message))?,
    };
    let mut manifest = Manifest {
        file: src.file.to_path_buf(),
        default_environment: raw.environment,
        servers,
        naming,
        modules,
        tenants,
        templates,
        branches,
        stacks: Vec::new(),
        events,
    };
    manifest.stacks = stacks(src, &raw.stacks, &manifest)?;
    Ok(manifest)
}

/// `stacks:`: names unique, each stack valid (roles, which depend on the environment, are
/// checked when one runs). The first problem is the error.
fn stacks(
    src: &Source<'_>,
    raws: &[crate::stack::RawStack],
    manifest: &Manifest,
) -> Result<Vec<crate::stack::StackSource>, ManifestError> {
    let sources = crate::stack::StackSource::from_manifest(src.file, src.text, raws);
    let env = manifest.default_environment.as_deref().unwrap_or("env");
    let mut names = BTreeSet::new();
    for (i, s) in sources.iter().enumerate() {
        s.build(Some(manifest), None, env).map_err(|mut e| e.0.remove(0))?;
        if !names.insert(s.name()) {
            return Err(src.section("stacks").err_nth(
                "name",
                &s.name(),
                1,
                format!("stack {:?} is listed twice (stacks[{i}])", s.name()),
            ));
        }
    }
    Ok(sources)
}

/// A version's name as written: a string or an integer (`1.0` unquoted is a float, whose
/// text YAML does not keep: `1.10` would read as `1.1`).
fn version_text(v: &serde_yaml::Value, key: &str) -> Result<String, String> {
    match v {
        serde_yaml::Value::String(s) => Ok(s.clone()),
        serde_yaml::Value::Number(n) if n.is_u64() => Ok(n.to_string()),
        serde_yaml::Value::Number(n) => Err(format!(
            "{key}: {n} is read as a number, which loses how it was written (1.10 becomes 1.1); write it in quotes: \
             {key}: \"{n}\""
        )),
        _ => Err(format!("{key} must be a string such as \"2.0\"")),
    }
}

/// Checks a version name: letters, digits, `.`, `_` and `-`, starting with a letter or digit.
pub fn check_version_name(v: &str) -> Result<(), String> {
    let ok = v.len() <= 63
        && v.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && v.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "version {v:?} is not valid; use letters, digits, '.', '_' and '-', starting with a letter or digit \
             (e.g. 1.0, 2.1-rc1)"
        ))
    }
}

/// A module's `versions:`; an error names the key, its value and the message.
fn versions(m: &RawModule) -> Result<Vec<VersionSpec>, (&'static str, String, String, usize)> {
    let mut out: Vec<VersionSpec> = Vec::new();
    for raw in &m.versions {
        let version = version_text(&raw.version, "version").map_err(|e| ("version", String::new(), e, 0))?;
        check_version_name(&version).map_err(|e| ("version", version.clone(), e, 0))?;
        if out.iter().any(|v| v.version == version) {
            return Err((
                "version",
                version.clone(),
                format!("module {:?} lists version {version:?} twice", m.name),
                1,
            ));
        }
        let given = [raw.migrations.is_some(), raw.to_tag.is_some(), raw.target.is_some()];
        if given.iter().filter(|g| **g).count() != 1 {
            return Err((
                "version",
                version.clone(),
                format!(
                    "module {:?} version {version:?}: give exactly one of `migrations: PATH` (a source of its own), \
                     `to_tag: TAG` (the module's changelog up to a tagDatabase) or `target: VERSION` (the module's \
                     SQL folder up to a migration version)",
                    m.name
                ),
                0,
            ));
        }
        let needs_module_source = |key: &'static str, value: &str| {
            if m.migrations.is_none() {
                Err((
                    key,
                    value.to_string(),
                    format!(
                        "module {:?} version {version:?} uses `{key}`, which cuts the module's own `migrations:` \
                         source; add `migrations: PATH` to the module",
                        m.name
                    ),
                    0,
                ))
            } else {
                Ok(())
            }
        };
        let source = if let Some(raw_m) = &raw.migrations {
            VersionSource::Own(migrations(raw_m).map_err(|(k, v, e)| (k, v, e, 0))?)
        } else if let Some(tag) = &raw.to_tag {
            needs_module_source("to_tag", tag)?;
            if tag.trim().is_empty() {
                return Err((
                    "to_tag",
                    String::new(),
                    format!("module {:?} version {version:?}: to_tag is empty", m.name),
                    0,
                ));
            }
            VersionSource::ToTag(tag.clone())
        } else {
            let target = raw
                .target
                .as_ref()
                .map(|t| version_text(t, "target"))
                .transpose()
                .map_err(|e| ("target", String::new(), e, 0))?
                .unwrap_or_default();
            needs_module_source("target", &target)?;
            crate::migrate::Version::parse(&target)
                .map_err(|e| ("target", target.clone(), format!("module {:?} version {version:?}: {e}", m.name), 0))?;
            VersionSource::Target(target)
        };
        out.push(VersionSpec { version, source });
    }
    Ok(out)
}

/// A module's `parameters:`, sorted by name.
fn parameters(m: &RawModule) -> Result<Vec<ParameterSpec>, (String, String)> {
    let mut out = Vec::new();
    for (name, raw) in &m.parameters {
        let valid = name.len() <= 63
            && name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err((
                name.clone(),
                format!("parameter name {name:?} is not valid; use letters, digits and _ (e.g. loadReference)"),
            ));
        }
        let selects = match (&raw.context, &raw.label, &raw.folder) {
            (Some(c), None, None) => ParameterSelects::Context(c.clone()),
            (None, Some(l), None) => ParameterSelects::Label(l.clone()),
            (None, None, Some(f)) => ParameterSelects::Folder(f.clone()),
            _ => {
                return Err((
                    name.clone(),
                    format!(
                        "parameter {name:?} of module {:?}: give exactly one of `context: NAME` (Liquibase), \
                         `label: NAME` (Liquibase) or `folder: NAME` (a subfolder of a SQL folder)",
                        m.name
                    ),
                ))
            }
        };
        let value = match &selects {
            ParameterSelects::Context(v) | ParameterSelects::Label(v) | ParameterSelects::Folder(v) => v,
        };
        let plain = !value.is_empty()
            && value.len() <= 63
            && value.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
            && value != "."
            && value != "..";
        if !plain {
            return Err((
                name.clone(),
                format!(
                    "parameter {name:?} of module {:?}: {value:?} is not a plain name (letters, digits, _, - and .)",
                    m.name
                ),
            ));
        }
        out.push(ParameterSpec { name: name.clone(), selects, default: raw.default });
    }
    Ok(out)
}

/// Database-level settings: names like `search_path` or `app.mode`; scalar values.
fn settings(raw: &BTreeMap<String, serde_yaml::Value>) -> Result<Vec<(String, String)>, (String, String)> {
    let mut out = Vec::new();
    for (name, value) in raw {
        let valid = !name.is_empty()
            && name.len() <= 63
            && name.split('.').count() <= 2
            && name.split('.').all(|p| {
                p.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
                    && p.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            });
        if !valid {
            return Err((
                name.clone(),
                format!(
                    "setting name {name:?} is not valid; use a PostgreSQL parameter name like search_path or app.mode"
                ),
            ));
        }
        let value = match value {
            serde_yaml::Value::String(s) => s.clone(),
            serde_yaml::Value::Number(n) => n.to_string(),
            serde_yaml::Value::Bool(b) => if *b { "on" } else { "off" }.to_string(),
            _ => return Err((name.clone(), format!("setting {name}: the value must be a string, number or boolean"))),
        };
        if crate::ident::LIST_SETTINGS.contains(&name.as_str()) {
            crate::ident::split_identifier_list(&value).map_err(|m| {
                (name.clone(), format!("setting {name} is a list of names like '\"$user\", app, public': {m}"))
            })?;
        }
        out.push((name.clone(), value));
    }
    Ok(out)
}

/// Checks a module's `pool_size` and `max_db_connections`; an error names the key, its
/// value and the fix.
fn pool(m: &RawModule) -> Result<PoolSpec, (&'static str, u32, String)> {
    let spec = PoolSpec { pool_size: m.pool_size, max_db_connections: m.max_db_connections };
    for (key, value) in [("pool_size", spec.pool_size), ("max_db_connections", spec.max_db_connections)] {
        if value == Some(0) {
            return Err((key, 0, format!("{key} 0 lets no connection through PgBouncer; use 1 or more")));
        }
    }
    if let (Some(size), Some(max)) = (spec.pool_size, spec.max_db_connections) {
        if size > max {
            return Err((
                "pool_size",
                size,
                format!(
                    "pool_size {size} is larger than max_db_connections {max}: no pool of module {:?} can use more \
                     than {max} connections; lower pool_size to {max} or less",
                    m.name
                ),
            ));
        }
    }
    if let (Some(max), Some(limit)) = (spec.max_db_connections, m.connection_limit.filter(|l| *l >= 0)) {
        if i64::from(max) > i64::from(limit) {
            return Err((
                "max_db_connections",
                max,
                format!(
                    "max_db_connections {max} is larger than connection_limit {limit} of module {:?}: PgBouncer would \
                     open connections the server refuses; lower max_db_connections to {limit} or less",
                    m.name
                ),
            ));
        }
    }
    Ok(spec)
}

/// `250ms`, `30s`, `5m`, `72h`, `7d`; a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    use std::time::Duration;
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a duration; write e.g. 250ms, 30s, 5m, 72h or 7d"))?;
    let seconds = |per: u64| n.checked_mul(per).map(Duration::from_secs).ok_or_else(|| format!("{s:?} is too long"));
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "" | "s" => Ok(Duration::from_secs(n)),
        "m" => seconds(60),
        "h" => seconds(3600),
        "d" => seconds(86400),
        _ => Err(format!("unknown unit {unit:?} in {s:?}; use ms, s, m, h or d")),
    }
}

/// Checks a module's `migrations`; an error names the key, its value and the message.
fn migrations(raw: &RawMigrations) -> Result<MigrationsSpec, (&'static str, String, String)> {
    let spec = match raw {
        RawMigrations::Path(path) => MigrationsSpec { path: path.clone(), ..MigrationsSpec::default() },
        RawMigrations::Detailed(d) => MigrationsSpec {
            path: d.path.clone(),
            contexts: d.contexts.clone(),
            labels: d.labels.clone(),
            schema: d.schema.clone(),
            changelog_table: d.changelog_table.clone(),
            changelog_lock_table: d.changelog_lock_table.clone(),
            history_table: d.history_table.clone(),
            properties: d.properties.clone(),
            allow_execute_command: d.allow_execute_command,
            search_path: d.search_path.clone(),
        },
    };
    if spec.path.trim().is_empty() {
        return Err((
            "migrations",
            String::new(),
            "`migrations` is empty; give a SQL folder or a Liquibase changelog, relative to the manifest".into(),
        ));
    }
    for (key, value) in [
        ("schema", &spec.schema),
        ("changelog_table", &spec.changelog_table),
        ("changelog_lock_table", &spec.changelog_lock_table),
        ("history_table", &spec.history_table),
    ] {
        if let Some(v) = value {
            check_name(key, v).map_err(|m| (key, v.clone(), m))?;
        }
    }
    Ok(spec)
}

fn template(
    src: &Scope<'_>,
    key: &str,
    text: &str,
    required: &[Var],
    allowed: &[Var],
) -> Result<NameTemplate, ManifestError> {
    NameTemplate::parse(text, required, allowed).map_err(|m| src.err(key, text, format!("naming.{key}: {m}")))
}

/// A string with `${VAR}` references.
struct Expandable(Vec<Piece>);
enum Piece {
    Lit(String),
    Var(String),
}

fn expand_vars(s: &str) -> Result<Expandable, String> {
    let mut pieces = Vec::new();
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        pieces.push(Piece::Lit(rest[..start].to_string()));
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or_else(|| "unclosed ${ in the url; write ${VAR}".to_string())?;
        let var = &after[..end];
        if var.is_empty() || !var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!(
                "${{{var}}} is not a valid environment variable reference; write ${{NAME}} with A-Z, 0-9 and _"
            ));
        }
        pieces.push(Piece::Var(var.to_string()));
        rest = &after[end + 1..];
    }
    pieces.push(Piece::Lit(rest.to_string()));
    Ok(Expandable(pieces))
}

impl Expandable {
    fn resolve(&self, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
        let mut out = String::new();
        for p in &self.0 {
            match p {
                Piece::Lit(s) => out.push_str(s),
                Piece::Var(v) => match env(v) {
                    Some(val) => out.push_str(&val),
                    None => {
                        return Err(format!(
                            "environment variable {v} is not set; export {v}=postgresql://... before running pgplane"
                        ))
                    }
                },
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Manifest, ManifestError> {
        let env = |k: &str| (k == "MAIN_PG_URL").then(|| "postgresql://admin:pw@db:5432/postgres".to_string());
        Manifest::parse(Path::new("pgplane.yaml"), text, &env)
    }

    fn err(text: &str) -> String {
        parse(text).expect_err("manifest should be rejected").to_string()
    }

    #[test]
    fn events_section_errors_name_the_line() {
        let base = "version: 1\nmodules:\n  - name: a\n    storage: database\nevents:\n";
        let e = err(&format!("{base}  kafka:\n    brokers: k:9092\n    topic: 'a b'\n"));
        assert!(e.starts_with("pgplane.yaml:8: events.kafka.topic"), "{e}");
        let e = err(&format!("{base}  max_attempts: 0\n"));
        assert!(e.starts_with("pgplane.yaml:6: events.max_attempts is 0"), "{e}");
        let e = err(&format!("{base}  kafka:\n    brokers: ${{NOPE_BROKERS}}\n    topic: t\n"));
        assert!(e.contains(":7:") && e.contains("NOPE_BROKERS is not set"), "{e}");
        let m = parse(&format!("{base}  on_failure: block\n")).expect("valid");
        assert_eq!(m.events.on_failure, crate::event::OnFailure::Block);
        assert!(m.events.kafka.is_none(), "the embedded queue");
    }

    const ISSUE_EXAMPLE: &str = "\
version: 1
environment: dev            # default for --env
servers:                    # optional; absent -> embedded local server
  - name: main
    url: ${MAIN_PG_URL}     # ${VAR} is read from the environment
naming:                     # optional; these are the defaults
  database: \"{env}_{module}\"
  tenant_database: \"{env}_{tenant}_{module}\"
  tenant_schema: \"{tenant}_{module}\"
modules:
  - name: registry
    storage: database              # database | schema-per-tenant | database-per-tenant
    extensions: [pg_trgm]
    connection_limit: 40
    readonly_role: true
  - name: users
    storage: schema-per-tenant
tenants:
  - name: acme
    modules: [users]
";

    #[test]
    fn issue_example_parses() {
        let m = parse(ISSUE_EXAMPLE).expect("valid");
        assert_eq!(m.servers[0].url, "postgresql://admin:pw@db:5432/postgres");
        assert_eq!(m.modules.len(), 2);
        assert_eq!(m.modules[0].server, "main");
        assert_eq!(m.tenants[0].modules, vec!["users"]);
    }

    #[test]
    fn unknown_key_names_line_column_and_allowed_keys() {
        let e = err("version: 1\nmodules:\n  - name: a\n    storage: database\n    conection_limit: 4\n");
        assert!(e.starts_with("pgplane.yaml:5:5: "), "{e}");
        assert!(e.contains("unknown field `conection_limit`"), "{e}");
        assert!(e.contains("connection_limit"), "lists allowed keys: {e}");
    }

    #[test]
    fn wrong_type_names_line() {
        let e = err("version: 1\nmodules:\n  - name: a\n    storage: database\n    connection_limit: lots\n");
        assert!(e.starts_with("pgplane.yaml:5:"), "{e}");
        assert!(e.contains("invalid type"), "{e}");
    }

    #[test]
    fn wrong_enum_lists_variants() {
        let e = err("version: 1\nmodules:\n  - name: a\n    storage: cluster\n");
        assert!(e.starts_with("pgplane.yaml:4:"), "{e}");
        assert!(e.contains("schema-per-tenant"), "{e}");
    }

    #[test]
    fn missing_field_is_reported() {
        let e = err("version: 1\nmodules:\n  - name: a\n");
        assert!(e.contains("missing field `storage`"), "{e}");
        assert!(e.contains(":3:"), "{e}");
    }

    #[test]
    fn unsafe_names_are_rejected_with_line() {
        let e = err("version: 1\nmodules:\n  - name: Bad-Name\n    storage: database\n");
        assert!(e.starts_with("pgplane.yaml:3:11: "), "{e}");
        assert!(e.contains("must start with a lowercase letter"), "{e}");
        let e = err("version: 1\nenvironment: \"dev;drop\"\nmodules:\n  - name: a\n    storage: database\n");
        assert!(e.starts_with("pgplane.yaml:2:"), "{e}");
    }

    #[test]
    fn nul_and_pg_names_are_rejected_with_line() {
        let e =
            err("version: 1\nmodules:\n  - name: a\n    storage: database\n    settings:\n      app.x: \"a\\0b\"\n");
        assert!(e.starts_with("pgplane.yaml:6: "), "{e}");
        assert!(e.contains("NUL"), "{e}");
        let e = err("version: 1\nmodules:\n  - name: \"a\\u0000\"\n    storage: database\n");
        assert!(e.starts_with("pgplane.yaml:3: "), "{e}");
        // A backslash and a zero in single quotes are two characters, not a NUL.
        assert!(parse(
            "version: 1\nmodules:\n  - name: a\n    storage: database\n    settings:\n      app.x: 'a\\0'\n"
        )
        .is_ok());
        let e = err("version: 1\nmodules:\n  - name: pg_stat\n    storage: database\n");
        assert!(e.starts_with("pgplane.yaml:3:"), "{e}");
        assert!(e.contains("starts with pg_"), "{e}");
        let e = err("version: 1\nmodules:\n  - name: a\n    storage: schema-per-tenant\ntenants:\n  - name: pg_acme\n    modules: [a]\n");
        assert!(e.starts_with("pgplane.yaml:6:"), "{e}");
    }

    #[test]
    fn tenant_references_are_checked() {
        let e = err(
            "version: 1\nmodules:\n  - name: a\n    storage: database\ntenants:\n  - name: t\n    modules: [nope]\n",
        );
        assert!(e.starts_with("pgplane.yaml:7:"), "{e}");
        assert!(e.contains("not defined"), "{e}");
        let e =
            err("version: 1\nmodules:\n  - name: a\n    storage: database\ntenants:\n  - name: t\n    modules: [a]\n");
        assert!(e.contains("storage: database"), "{e}");
    }

    #[test]
    fn missing_env_var_is_named() {
        let e = err("version: 1\nservers:\n  - name: main\n    url: ${NOPE_URL}\nmodules:\n  - name: a\n    storage: database\n");
        assert!(e.starts_with("pgplane.yaml:4:"), "{e}");
        assert!(e.contains("NOPE_URL is not set"), "{e}");
    }

    #[test]
    fn naming_templates_are_checked() {
        let e = err("version: 1\nnaming:\n  database: \"{env}_db\"\nmodules:\n  - name: a\n    storage: database\n");
        assert!(e.contains("naming.database"), "{e}");
        assert!(e.contains("{module}"), "{e}");
        let e =
            err("version: 1\nnaming:\n  database: \"{env}-{module}\"\nmodules:\n  - name: a\n    storage: database\n");
        assert!(e.contains("'-'"), "{e}");
    }

    #[test]
    fn duplicates_point_at_the_repeat() {
        // Short names that also occur inside keys, and a tenant named like a module.
        let e = err("version: 1\nmodules:\n  - name: a\n    storage: database\n  - name: a\n    storage: database\n");
        assert!(e.starts_with("pgplane.yaml:5:11: module \"a\" is listed twice"), "{e}");
        let e = err("version: 1\nmodules:\n  - name: users\n    storage: schema-per-tenant\n\
             tenants:\n  - name: users\n    modules: [users]\n  - name: users\n    modules: [users]\n");
        assert!(e.starts_with("pgplane.yaml:8:11: tenant \"users\" is listed twice"), "{e}");
    }

    #[test]
    fn a_tenant_error_points_into_that_tenant() {
        let e = err("version: 1\nmodules:\n  - name: u\n    storage: schema-per-tenant\n\
             tenants:\n  - name: t1\n    modules: [u]\n  - name: t2\n    modules: [u, nope]\n");
        assert!(e.starts_with("pgplane.yaml:9:18: "), "{e}");
    }

    #[test]
    fn an_item_error_stays_inside_its_item() {
        let yaml = "version: 1\nmodules:\n  - name: a\n    storage: database\n    extensions: [x, \"e!\"]\n  - name: b\n    storage: database\n    extensions: [\"e!\"]\n";
        let e = err(yaml);
        assert!(e.starts_with("pgplane.yaml:5:22: "), "{e}");
        let e = err("version: 1\nmodules:\n  - name: a\n    storage: database\n    extensions: [x, y, x]\n");
        assert!(e.starts_with("pgplane.yaml:5:24: extension \"x\" is listed twice"), "{e}");
    }

    #[test]
    fn url_errors_do_not_echo_the_url() {
        let e = err("version: 1\nservers:\n  - name: main\n    url: postgresql://u:s3cret@h/${OOPS\nmodules:\n  - name: a\n    storage: database\n");
        assert!(!e.contains("s3cret"), "{e}");
        assert!(e.contains("unclosed ${"), "{e}");
    }

    #[test]
    fn migrations_take_a_path_or_a_map() {
        let m = parse(
            "version: 1\nmodules:\n  - name: a\n    storage: database\n    migrations: db/a\n  - name: b\n    storage: database\n    migrations:\n      path: b.yaml\n      contexts: [dev]\n      changelog_table: ddm_db_changelog\n",
        )
        .unwrap();
        assert_eq!(m.modules[0].migrations.as_ref().unwrap().path, "db/a");
        let b = m.modules[1].migrations.as_ref().unwrap();
        assert_eq!((b.path.as_str(), b.contexts.clone()), ("b.yaml", vec!["dev".to_string()]));
        assert_eq!(b.changelog_table.as_deref(), Some("ddm_db_changelog"));
        let e = err("version: 1\nmodules:\n  - name: a\n    storage: database\n    migrations:\n      path: x\n      tabel: y\n");
        assert!(e.contains(":5:") && e.contains("changelog_table"), "{e}");
        let e = err("version: 1\nmodules:\n  - name: a\n    storage: database\n    migrations:\n      path: x\n      changelog_table: \"bad name\"\n");
        assert!(e.contains(":7:") && e.contains("changelog_table"), "{e}");
    }

    #[test]
    fn templates_and_branches_from_the_issue() {
        let m = parse(
            "version: 1\nmodules:\n  - name: registry\n    storage: database\n    settings: {search_path: 'registry, public', statement_timeout: 5000}\ntemplates:\n  - name: registry_template\n    module: registry\n    sources: [data-model/master/changelog.yaml]\nbranches:\n  database: \"{template}_dev_{branch}\"\n  max_per_template: 20\n  ttl: 72h\n  readonly_role: registry_dev_role\n  template_sessions: terminate\n  settings: {search_path: '\"$user\", registry, public'}\n",
        )
        .unwrap();
        assert_eq!(m.templates[0].module, "registry");
        assert_eq!(m.branches.ttl, Some(std::time::Duration::from_secs(72 * 3600)));
        assert_eq!(m.branches.template_sessions, TemplateSessions::Terminate);
        assert_eq!(m.branches.settings, vec![("search_path".to_string(), "\"$user\", registry, public".to_string())]);
        assert_eq!(
            m.modules[0].settings,
            vec![("search_path".into(), "registry, public".into()), ("statement_timeout".into(), "5000".into())]
        );
        let e = err("version: 1\nmodules:\n  - name: a\n    storage: schema-per-tenant\ntemplates:\n  - name: t\n    module: a\n    sources: [x]\n");
        assert!(e.contains(":7:") && e.contains("storage: database"), "{e}");
        let e =
            err("version: 1\nmodules:\n  - name: a\n    storage: database\nbranches:\n  database: \"{template}_x\"\n");
        assert!(e.contains(":6:") && e.contains("{branch}"), "{e}");
        let e = err("version: 1\nmodules:\n  - name: a\n    storage: database\n    settings: {\"Bad-Name\": 1}\n");
        assert!(e.contains("Bad-Name"), "{e}");
        let e = err(
            "version: 1\nmodules:\n  - name: a\n    storage: database\n    settings:\n      search_path: 'a,, b'\n",
        );
        assert!(e.contains("search_path is a list of names"), "{e}");
    }

    #[test]
    fn versions_parameters_and_placement() {
        let m = parse(
            "version: 1\nservers:\n  - name: a\n    url: postgresql://a/p\n  - name: b\n    url: postgresql://b/p\n    capacity: {databases: 200}\nmodules:\n  - name: users\n    storage: schema-per-tenant\n    migrations: db/users.yaml\n    versions:\n      - {version: \"1.0\", to_tag: v1.0}\n      - {version: 2, migrations: db/users-2.yaml}\n    parameters:\n      loadReference: {context: reference}\n      loadSample: {label: sample, default: true}\n  - name: files\n    storage: database-per-tenant\n    server: auto\n    migrations: db/files\n    versions:\n      - {version: \"1.0\", target: \"1\"}\n    parameters:\n      demo: {folder: demo}\n",
        )
        .unwrap();
        assert_eq!(m.servers[1].capacity, Some(200));
        let users = m.module("users").unwrap();
        assert_eq!(users.newest_version(), Some("2"));
        assert_eq!(users.versions[0].source, VersionSource::ToTag("v1.0".into()));
        assert!(matches!(&users.versions[1].source, VersionSource::Own(s) if s.path == "db/users-2.yaml"));
        assert_eq!(users.parameter("loadSample").map(|p| p.default), Some(true));
        let files = m.module("files").unwrap();
        assert!(files.auto_server);
        assert_eq!(files.versions[0].source, VersionSource::Target("1".into()));
        assert_eq!(files.parameters[0].selects, ParameterSelects::Folder("demo".into()));
    }

    #[test]
    fn version_and_parameter_errors_name_their_line() {
        let base = "version: 1\nmodules:\n  - name: users\n    storage: schema-per-tenant\n";
        let e = err(&format!("{base}    versions:\n      - {{version: 1.0, migrations: x}}\n"));
        assert!(e.contains("write it in quotes"), "{e}");
        let e = err(&format!("{base}    versions:\n      - {{version: \"1.0\", to_tag: v1}}\n"));
        assert!(e.starts_with("pgplane.yaml:6:") && e.contains("add `migrations: PATH` to the module"), "{e}");
        let e = err(&format!(
            "{base}    migrations: x\n    versions:\n      - {{version: \"1.0\", to_tag: v1}}\n      - {{version: \"1.0\", to_tag: v2}}\n"
        ));
        assert!(e.starts_with("pgplane.yaml:8:") && e.contains("twice"), "{e}");
        let e = err(&format!("{base}    migrations: x\n    versions:\n      - {{version: \"1.0\"}}\n"));
        assert!(e.contains("exactly one of"), "{e}");
        let e = err(&format!("{base}    parameters:\n      loadReference: {{context: a, label: b}}\n"));
        assert!(e.starts_with("pgplane.yaml:6:") && e.contains("exactly one of"), "{e}");
        let e = err(&format!("{base}    parameters:\n      loadReference: {{folder: ../up}}\n"));
        assert!(e.starts_with("pgplane.yaml:6:") && e.contains("not a plain name"), "{e}");
        let e = err(&format!("{base}    parameters:\n      load-ref: {{context: a}}\n"));
        assert!(e.starts_with("pgplane.yaml:6:") && e.contains("load-ref"), "{e}");
        let e = err("version: 1\nmodules:\n  - name: users\n    storage: schema-per-tenant\n    server: auto\n");
        assert!(e.starts_with("pgplane.yaml:5:") && e.contains("database-per-tenant"), "{e}");
        let e = err("version: 1\nservers:\n  - name: a\n    url: u\n    capacity: {databases: 0}\nmodules:\n  - name: x\n    storage: database\n");
        assert!(e.starts_with("pgplane.yaml:5:") && e.contains("at least 1"), "{e}");
    }

    #[test]
    fn pool_sizes_are_checked_with_their_line() {
        let m = parse(
            "version: 1\nmodules:\n  - name: a\n    storage: database\n    pool_size: 5\n    max_db_connections: 20\n",
        )
        .unwrap();
        assert_eq!(m.modules[0].pool, PoolSpec { pool_size: Some(5), max_db_connections: Some(20) });
        let e = err("version: 1\nmodules:\n  - name: a\n    storage: database\n  - name: b\n    storage: database\n    pool_size: 0\n");
        assert!(e.starts_with("pgplane.yaml:7:16: pool_size 0"), "{e}");
        let e = err(
            "version: 1\nmodules:\n  - name: a\n    storage: database\n    pool_size: 30\n    max_db_connections: 20\n",
        );
        assert!(e.starts_with("pgplane.yaml:5:16: pool_size 30 is larger than max_db_connections 20"), "{e}");
        let e = err("version: 1\nmodules:\n  - name: a\n    storage: database\n    connection_limit: 10\n    max_db_connections: 20\n");
        assert!(e.starts_with("pgplane.yaml:6:25: max_db_connections 20 is larger than connection_limit 10"), "{e}");
        let e = err("version: 1\nmodules:\n  - name: a\n    storage: database\n    pool_size: -3\n");
        assert!(e.starts_with("pgplane.yaml:5:"), "{e}");
    }

    #[test]
    fn bad_version() {
        let e = err("version: 2\nmodules:\n  - name: a\n    storage: database\n");
        assert!(e.starts_with("pgplane.yaml:1:"), "{e}");
    }
}
