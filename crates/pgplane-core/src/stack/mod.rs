//! Stacks: phased setup on shared databases (`pgplane stack`). A stack file (or a
//! `stacks:` entry of the manifest) lists steps — commands, SQL, waits on SQL conditions and
//! long-running services — ordered by `needs` and by groups that run their members one at a
//! time (`exclusive`) or side by side (`parallel`, at most `max`).
//!
//! This module is pure: [`StackSource`] holds the parsed document, [`StackSource::build`]
//! validates it into a [`Stack`] (every error with its file and line, all of them at once),
//! and [`schedule`] decides which steps may start given the steps' states. The runner in
//! the binary does the I/O.

pub mod lines;
pub mod schedule;
pub mod template;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_yaml::Value;

use self::lines::LineIndex;
use self::template::{expand, Item, Vars};
use crate::manifest::{parse_duration, Manifest, ManifestError, Storage};
use crate::model::Desired;

/// Default `timeout` of a `wait` step (as `pgplane wait`).
pub const DEFAULT_WAIT_TIMEOUT: Duration = Duration::from_secs(300);
/// Default `interval` of a `wait` step (as `pgplane wait`).
pub const DEFAULT_WAIT_INTERVAL: Duration = Duration::from_millis(250);
/// Default time a service has to become healthy (or to start, without a health check).
pub const DEFAULT_SERVICE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default interval between health checks.
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_millis(500);
/// Default first delay before a service is restarted; it doubles up to [`MAX_BACKOFF`].
pub const DEFAULT_BACKOFF: Duration = Duration::from_secs(1);
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Shortest interval of waits and health checks.
pub const MIN_INTERVAL: Duration = Duration::from_millis(10);

// ----- the document as written ----------------------------------------------------------

/// A stack file, or one entry of a manifest's `stacks:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStack {
    #[serde(default)]
    pub version: Option<u32>,
    /// Default: the file's name without extension.
    #[serde(default)]
    pub name: Option<String>,
    /// The manifest whose modules, tenants and roles steps name (stack files only),
    /// relative to the stack file.
    #[serde(default)]
    pub manifest: Option<String>,
    /// Lists for `for_each`, by name.
    #[serde(default)]
    pub vars: BTreeMap<String, Value>,
    #[serde(default)]
    pub groups: BTreeMap<String, RawGroup>,
    pub steps: Vec<RawStep>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGroup {
    pub mode: GroupMode,
    #[serde(default)]
    pub max: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupMode {
    /// Members run one at a time, in the order of the file.
    Exclusive,
    /// Members run side by side, at most `max` at once.
    Parallel,
}

/// One step as written. Exactly one of `command`, `sql`, `sql_file`, `wait`, `service`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStep {
    pub name: String,
    #[serde(default)]
    pub for_each: Option<Value>,
    #[serde(default)]
    pub needs: Vec<Value>,
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub command: Option<Value>,
    #[serde(default)]
    pub sql: Option<String>,
    #[serde(default)]
    pub sql_file: Option<String>,
    #[serde(default)]
    pub wait: Option<String>,
    #[serde(default)]
    pub service: Option<Value>,
    #[serde(default)]
    pub module: Option<String>,
    #[serde(default)]
    pub tenant: Option<String>,
    #[serde(default)]
    pub role: Option<String>,
    #[serde(default)]
    pub database: Option<String>,
    #[serde(default)]
    pub env: BTreeMap<String, Value>,
    #[serde(default)]
    pub cwd: Option<String>,
    #[serde(default)]
    pub timeout: Option<Value>,
    #[serde(default)]
    pub interval: Option<Value>,
    #[serde(default)]
    pub diagnose_sql: Option<Value>,
    #[serde(default)]
    pub health: Option<RawHealth>,
    #[serde(default)]
    pub restart: Option<Value>,
    #[serde(default)]
    pub backoff: Option<Value>,
}

/// A service's health check: exactly one of `sql`, `command`, `http`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    #[serde(default)]
    pub sql: Option<String>,
    #[serde(default)]
    pub command: Option<Value>,
    #[serde(default)]
    pub http: Option<String>,
    #[serde(default)]
    pub interval: Option<Value>,
}

// ----- the validated stack --------------------------------------------------------------

/// A validated stack: steps stamped from `for_each`, references resolved, no cycles.
#[derive(Debug, Clone, PartialEq)]
pub struct Stack {
    pub name: String,
    /// The file it was read from (a stack file or the manifest).
    pub file: PathBuf,
    /// A stack file's `manifest:`, resolved against the stack file's folder.
    pub manifest: Option<PathBuf>,
    pub groups: BTreeMap<String, Group>,
    /// In file order (stamped steps in item order): the order of exclusive groups.
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub name: String,
    pub mode: GroupMode,
    /// Parallel groups: how many members may run at once (`None`: all).
    pub max: Option<usize>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub name: String,
    /// Line of the step's definition (of its `name:`).
    pub line: usize,
    /// For stamped steps: which item (`apps[1]`), for messages.
    pub item: Option<String>,
    pub kind: Kind,
    pub needs: Vec<Need>,
    pub group: Option<String>,
    /// Whose credentials the step gets.
    pub access: Option<AccessSpec>,
    /// Extra environment variables.
    pub env: BTreeMap<String, String>,
    /// Working folder, resolved against the stack file's folder.
    pub cwd: Option<PathBuf>,
    /// `command`/`sql`: longest run time; `wait`: the condition's timeout; `service`: how
    /// long it may take to become healthy (or started).
    pub timeout: Option<Duration>,
}

impl Step {
    pub fn is_service(&self) -> bool {
        matches!(self.kind, Kind::Service { .. })
    }

    pub fn has_health(&self) -> bool {
        matches!(self.kind, Kind::Service { health: Some(_), .. })
    }
}

/// A process to start: an argument vector, or a line for `sh -c`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Run {
    Argv(Vec<String>),
    Shell(String),
}

impl Run {
    /// The program and its arguments.
    pub fn argv(&self) -> Vec<String> {
        match self {
            Run::Argv(a) => a.clone(),
            Run::Shell(s) => vec!["sh".into(), "-c".into(), s.clone()],
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    Command { run: Run },
    Sql { sql: SqlText },
    Wait { sql: String, interval: Duration, timeout: Duration, diagnose_sql: Vec<String> },
    Service { run: Run, health: Option<Health>, restart: Restart, backoff: Duration },
}

impl Kind {
    pub fn as_str(&self) -> &'static str {
        match self {
            Kind::Command { .. } => "command",
            Kind::Sql { .. } => "sql",
            Kind::Wait { .. } => "wait",
            Kind::Service { .. } => "service",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SqlText {
    Inline(String),
    /// Resolved against the stack file's folder.
    File(PathBuf),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Health {
    pub check: Check,
    pub interval: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// True like `pgplane wait --for sql:`, with the step's credentials.
    Sql(String),
    /// Exit status 0, with the step's environment.
    Command(Run),
    /// `http://HOST:PORT/PATH` answers 2xx or 3xx to a GET.
    Http(HttpUrl),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    pub host: String,
    pub port: u16,
    pub path: String,
}

impl fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}:{}{}", self.host, self.port, self.path)
    }
}

/// When a service's process is started again after it exited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Restart {
    No,
    OnFailure,
    Always,
}

impl Restart {
    pub fn as_str(self) -> &'static str {
        match self {
            Restart::No => "no",
            Restart::OnFailure => "on-failure",
            Restart::Always => "always",
        }
    }

    pub fn parse(s: &str) -> Option<Restart> {
        match s {
            "no" => Some(Restart::No),
            "on-failure" => Some(Restart::OnFailure),
            "always" => Some(Restart::Always),
            _ => None,
        }
    }
}

/// `needs:` entry: another step and what it must have reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Need {
    pub step: usize,
    pub condition: Condition,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    /// The step ran to completion (not for services: they keep running).
    Completed,
    /// The service's health check passed.
    Healthy,
    /// The step's process started (a service: launched; other steps: began).
    Started,
}

impl Condition {
    pub fn as_str(self) -> &'static str {
        match self {
            Condition::Completed => "completed",
            Condition::Healthy => "healthy",
            Condition::Started => "started",
        }
    }
}

/// Whose credentials a step gets, as written (resolved by [`Stack::access`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessSpec {
    pub module: Option<String>,
    pub tenant: Option<String>,
    pub role: Option<String>,
    pub database: Option<String>,
}

/// A step's credentials, resolved against the environment's desired state: log in as
/// `role` (with the password pgplane derives for it) to `database` on `server`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    pub server: String,
    pub role: String,
    pub database: String,
    /// A tenant's schema (schema-per-tenant): the search path.
    pub schema: Option<String>,
    pub module: Option<String>,
    pub tenant: Option<String>,
}

/// Every problem of a stack, each with its place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackErrors(pub Vec<ManifestError>);

impl fmt::Display for StackErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        for (i, e) in self.0.iter().enumerate() {
            write!(f, "{e}")?;
            if i + 1 < n {
                writeln!(f)?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for StackErrors {}

// ----- reading --------------------------------------------------------------------------

/// A parsed stack with what it takes to point at its lines.
#[derive(Debug, Clone)]
pub struct StackSource {
    pub file: PathBuf,
    pub raw: RawStack,
    pub lines: LineIndex,
    /// Path of the stack inside the document: `""` for a stack file, `stacks[2].` in a manifest.
    pub prefix: String,
    /// The position in the manifest's `stacks:`, `None` for a stack file.
    pub in_manifest: Option<usize>,
}

impl StackSource {
    /// Reads a stack file (syntax and types only; [`StackSource::build`] validates).
    pub fn load(path: &Path) -> Result<StackSource, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|e| ManifestError {
            file: path.to_path_buf(),
            line: None,
            column: None,
            message: format!("cannot read the stack file: {e} (pass it with -f FILE)"),
        })?;
        StackSource::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<StackSource, ManifestError> {
        let raw: RawStack = serde_yaml::from_str(text).map_err(|e| yaml_error(path, &e))?;
        Ok(StackSource {
            file: path.to_path_buf(),
            raw,
            lines: LineIndex::new(text),
            prefix: String::new(),
            in_manifest: None,
        })
    }

    /// The stacks of a manifest's `stacks:` section (`text` is the manifest's text).
    pub fn from_manifest(path: &Path, text: &str, raws: &[RawStack]) -> Vec<StackSource> {
        let lines = LineIndex::new(text);
        raws.iter()
            .enumerate()
            .map(|(i, raw)| StackSource {
                file: path.to_path_buf(),
                raw: raw.clone(),
                lines: lines.clone(),
                prefix: format!("stacks[{i}]."),
                in_manifest: Some(i),
            })
            .collect()
    }

    /// The stack's name: `name:`, else the file's stem.
    pub fn name(&self) -> String {
        match &self.raw.name {
            Some(n) => n.clone(),
            None => self.file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(),
        }
    }

    /// The manifest a stack file names, resolved against its folder.
    pub fn manifest_path(&self) -> Option<PathBuf> {
        self.raw.manifest.as_ref().map(|m| self.base().join(m))
    }

    fn base(&self) -> PathBuf {
        match self.file.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }

    /// An error at `path` (relative to the stack: `steps[2].needs[0]`).
    fn err(&self, path: &str, message: impl Into<String>) -> ManifestError {
        let place = self.lines.at(&format!("{}{path}", self.prefix));
        ManifestError {
            file: self.file.clone(),
            line: place.map(|p| p.0),
            column: place.map(|p| p.1),
            message: message.into(),
        }
    }

    /// Validates the stack. `manifest` (the stack file's `manifest:`, or the manifest holding
    /// it) is needed for steps that name modules; `desired` (the environment's desired
    /// state) checks `role:` names too. Every problem is reported, each with its line.
    pub fn build(
        &self,
        manifest: Option<&Manifest>,
        desired: Option<&Desired>,
        env: &str,
    ) -> Result<Stack, StackErrors> {
        Builder { src: self, manifest, desired, env, errors: Vec::new() }.build()
    }
}

/// Whether a YAML document is a manifest (it has `modules:`) rather than a stack file.
pub fn is_manifest(text: &str) -> bool {
    matches!(serde_yaml::from_str::<Value>(text), Ok(Value::Mapping(m)) if m.contains_key("modules"))
}

/// A serde_yaml error with its place and without serde's " at line …" tail.
fn yaml_error(path: &Path, e: &serde_yaml::Error) -> ManifestError {
    let (line, column) = e.location().map(|l| (l.line(), l.column())).unzip();
    let mut message = e.to_string();
    if let Some(pos) = message.rfind(" at line ") {
        message.truncate(pos);
    }
    if message.contains("missing field") && line.is_none() {
        message.push_str(" (at the top level of the document)");
    }
    ManifestError { file: path.to_path_buf(), line, column, message }
}

/// Step names: a letter or digit, then letters, digits, `_`, `-` and `.`; at most 63 bytes
/// (they name log files and appear in commands).
pub fn check_step_name(name: &str) -> Result<(), String> {
    let ok_first = name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    let bad = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')));
    match (ok_first, bad) {
        _ if name.is_empty() => Err("a step name is empty".into()),
        (false, _) => Err(format!("step name {name:?} must start with a letter or digit")),
        (_, Some(c)) => Err(format!("step name {name:?} contains {c:?}; allowed are letters, digits, _, - and .")),
        _ if name.len() > 63 => Err(format!("step name {name:?} is {} bytes; at most 63 are allowed", name.len())),
        _ => Ok(()),
    }
}

/// A scalar as text (numbers and booleans as written); `None` for lists and maps.
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn describe(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a map",
        Value::Tagged(_) => "a tagged value",
    }
}

/// A step before its `needs` are resolved.
struct Stamped {
    step: Step,
    /// The raw step's path, `steps[3]`.
    path: String,
    /// `needs` as written after expansion: (pattern, condition, path of the entry).
    needs: Vec<(String, Condition, String)>,
}

struct Builder<'a> {
    src: &'a StackSource,
    manifest: Option<&'a Manifest>,
    desired: Option<&'a Desired>,
    env: &'a str,
    errors: Vec<ManifestError>,
}

impl Builder<'_> {
    fn fail(&mut self, path: &str, message: impl Into<String>) {
        let e = self.src.err(path, message);
        self.errors.push(e);
    }

    fn build(mut self) -> Result<Stack, StackErrors> {
        let raw = &self.src.raw;
        let name = self.src.name();
        if let Err(m) = check_step_name(&name) {
            self.fail("name", m.replacen("step name", "stack name", 1));
        }
        match (raw.version, self.src.in_manifest) {
            (Some(1), None) | (None, _) => {}
            (Some(_), Some(_)) => {
                self.fail("version", "`version` belongs to the manifest, not to one of its stacks; remove it")
            }
            (Some(v), None) => {
                self.fail("version", format!("unsupported stack file version {v}; this pgplane reads `version: 1`"))
            }
        }
        if raw.manifest.is_some() && self.src.in_manifest.is_some() {
            self.fail("manifest", "a stack inside a manifest uses that manifest; remove `manifest:`");
        }
        if self.src.in_manifest.is_some() && raw.name.is_none() {
            self.fail("steps", "a stack in `stacks:` needs a `name:`");
        }
        let groups = self.groups();
        let vars = self.vars();
        if raw.steps.is_empty() {
            self.fail("steps", "`steps` is empty; list at least one step");
        }
        let mut stamped = Vec::new();
        for (i, rs) in raw.steps.iter().enumerate() {
            let path = format!("steps[{i}]");
            let items = self.items(&path, rs, &vars);
            for (label, item) in items {
                if let Some(s) = self.step(&path, rs, label, &item, &name) {
                    stamped.push(s);
                }
            }
        }
        // Names are unique.
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        for s in &stamped {
            if let Some(first) = seen.get(&s.step.name) {
                let msg = format!(
                    "step name {:?} is used twice (first at line {first}){}",
                    s.step.name,
                    if s.step.item.is_some() {
                        "; put {{item}} (or {{item.KEY}}) into the name of a for_each step"
                    } else {
                        ""
                    }
                );
                self.fail(&format!("{}.name", s.path), msg);
            } else {
                seen.insert(s.step.name.clone(), s.step.line);
            }
        }
        let steps = self.resolve_needs(stamped, &groups);
        if self.errors.is_empty() {
            self.cycles(&steps, &groups);
        }
        if !self.errors.is_empty() {
            self.errors.sort_by_key(|e| (e.line, e.column));
            return Err(StackErrors(self.errors));
        }
        let steps = steps.into_iter().map(|s| s.step).collect();
        Ok(Stack { name, file: self.src.file.clone(), manifest: self.src.manifest_path(), groups, steps })
    }

    fn groups(&mut self) -> BTreeMap<String, Group> {
        let mut out = BTreeMap::new();
        for (name, g) in &self.src.raw.groups {
            let path = format!("groups.{name}");
            if let Err(m) = check_step_name(name) {
                self.fail(&path, m.replacen("step name", "group name", 1));
            }
            let max = match (g.mode, g.max) {
                (GroupMode::Exclusive, Some(_)) => {
                    self.fail(
                        &format!("{path}.max"),
                        format!("group {name} is exclusive (one at a time); `max` applies to parallel groups"),
                    );
                    None
                }
                (GroupMode::Parallel, Some(0)) => {
                    self.fail(&format!("{path}.max"), format!("group {name}: `max` must be at least 1"));
                    None
                }
                (_, m) => m.map(|m| m as usize),
            };
            out.insert(name.clone(), Group { name: name.clone(), mode: g.mode, max });
        }
        out
    }

    fn vars(&mut self) -> BTreeMap<String, Vec<Item>> {
        let mut out = BTreeMap::new();
        for (name, v) in &self.src.raw.vars {
            let path = format!("vars.{name}");
            if let Some(items) = self.list(&path, v) {
                out.insert(name.clone(), items);
            }
        }
        out
    }

    /// A list of items: scalars, or maps of scalars.
    fn list(&mut self, path: &str, v: &Value) -> Option<Vec<Item>> {
        let Value::Sequence(seq) = v else {
            self.fail(path, format!("expected a list of items (strings, or maps of strings), found {}", describe(v)));
            return None;
        };
        let mut items = Vec::new();
        for (i, e) in seq.iter().enumerate() {
            let at = format!("{path}[{i}]");
            match e {
                Value::Mapping(m) => {
                    let mut map = BTreeMap::new();
                    for (k, v) in m {
                        match (scalar(k), scalar(v)) {
                            (Some(k), Some(v)) => {
                                map.insert(k, v);
                            }
                            _ => self.fail(&at, "a map item holds only plain values (strings, numbers, booleans)"),
                        }
                    }
                    items.push(Item::Map(map));
                }
                other => match scalar(other) {
                    Some(s) => items.push(Item::Scalar(s)),
                    None => self.fail(&at, format!("an item is a plain value or a map, not {}", describe(other))),
                },
            }
        }
        Some(items)
    }

    /// The items a step is stamped for: `[(None, Item::None)]` without `for_each`.
    fn items(&mut self, path: &str, rs: &RawStep, vars: &BTreeMap<String, Vec<Item>>) -> Vec<(Option<String>, Item)> {
        let Some(fe) = &rs.for_each else { return vec![(None, Item::None)] };
        let at = format!("{path}.for_each");
        let (label, items) = match fe {
            Value::String(var) => match vars.get(var) {
                Some(items) => (var.clone(), items.clone()),
                None => {
                    let known: Vec<&str> = vars.keys().map(String::as_str).collect();
                    self.fail(
                        &at,
                        format!(
                            "for_each names {var:?}, which is not in `vars` ({}); write the list inline or add it to `vars`",
                            if known.is_empty() { "there are none".to_string() } else { format!("known: {}", known.join(", ")) }
                        ),
                    );
                    return Vec::new();
                }
            },
            other => match self.list(&at, other) {
                Some(items) => ("for_each".to_string(), items),
                None => return Vec::new(),
            },
        };
        if items.is_empty() {
            self.fail(&at, "for_each has no items; the step would not exist");
        }
        items.into_iter().enumerate().map(|(i, it)| (Some(format!("{label}[{i}]")), it)).collect()
    }

    /// One stamped step; `None` after recording its errors.
    fn step(&mut self, path: &str, rs: &RawStep, label: Option<String>, item: &Item, stack: &str) -> Option<Stamped> {
        let before = self.errors.len();
        let vars = Vars { item, env: self.env, stack };
        let at_item = |m: String| match &label {
            Some(l) => format!("{m} (for_each item {l})"),
            None => m,
        };
        let x = |builder: &mut Builder<'_>, key: &str, s: &str| -> String {
            match expand(s, &vars) {
                Ok(v) => v,
                Err(m) => {
                    builder.fail(&format!("{path}.{key}"), at_item(m));
                    s.to_string()
                }
            }
        };
        let name = x(self, "name", &rs.name);
        if let Err(m) = check_step_name(&name) {
            self.fail(&format!("{path}.name"), at_item(m));
        }
        let line = self.src.lines.at(&format!("{}{path}.name", self.src.prefix)).map(|p| p.0).unwrap_or(0);
        let who = format!("step {name}");

        // The kind: exactly one key.
        let kinds: Vec<&str> = [
            ("command", rs.command.is_some()),
            ("sql", rs.sql.is_some()),
            ("sql_file", rs.sql_file.is_some()),
            ("wait", rs.wait.is_some()),
            ("service", rs.service.is_some()),
        ]
        .into_iter()
        .filter_map(|(k, present)| present.then_some(k))
        .collect();
        if kinds.len() != 1 {
            let msg = if kinds.is_empty() {
                format!("{who} does nothing; give it one of `command`, `sql`, `sql_file`, `wait` or `service`")
            } else {
                format!(
                    "{who} has {}; a step is exactly one of them (split it into steps joined by `needs`)",
                    kinds.join(" and ")
                )
            };
            self.fail(&format!("{path}.name"), at_item(msg));
            return None;
        }
        let kind_key = kinds[0];
        let base = self.src.base();
        let duration = |builder: &mut Builder<'_>, key: &str, v: &Option<Value>| -> Option<Duration> {
            let v = v.as_ref()?;
            let text = match scalar(v) {
                Some(t) => t,
                None => {
                    builder.fail(
                        &format!("{path}.{key}"),
                        format!("{who}: `{key}` is a duration such as 250ms, 30s or 5m, not {}", describe(v)),
                    );
                    return None;
                }
            };
            match parse_duration(&text) {
                Ok(d) => Some(d),
                Err(m) => {
                    builder.fail(&format!("{path}.{key}"), format!("{who}: `{key}`: {m}"));
                    None
                }
            }
        };
        let timeout = duration(self, "timeout", &rs.timeout);
        let interval = duration(self, "interval", &rs.interval);
        let backoff = duration(self, "backoff", &rs.backoff);
        if let Some(d) = interval.filter(|d| *d < MIN_INTERVAL) {
            self.fail(&format!("{path}.interval"), format!("{who}: interval {d:?} is too short; use at least 10ms"));
        }
        if timeout == Some(Duration::ZERO) {
            self.fail(
                &format!("{path}.timeout"),
                format!("{who}: timeout 0 would fail at once; give a positive duration"),
            );
        }
        // Keys that belong to other kinds.
        let only = |builder: &mut Builder<'_>, key: &str, present: bool, kinds_ok: &[&str], what: &str| {
            if present && !kinds_ok.contains(&kind_key) {
                builder
                    .fail(&format!("{path}.{key}"), format!("{who} is a `{kind_key}` step; `{key}` applies to {what}"));
            }
        };
        only(
            self,
            "interval",
            rs.interval.is_some(),
            &["wait"],
            "wait steps (a service's check has `health.interval`)",
        );
        only(self, "diagnose_sql", rs.diagnose_sql.is_some(), &["wait"], "wait steps");
        only(self, "health", rs.health.is_some(), &["service"], "services");
        only(self, "restart", rs.restart.is_some(), &["service"], "services");
        only(self, "backoff", rs.backoff.is_some(), &["service"], "services");
        only(self, "cwd", rs.cwd.is_some(), &["command", "service"], "commands and services");
        only(self, "env", !rs.env.is_empty(), &["command", "service"], "commands and services");

        let run = |builder: &mut Builder<'_>, key: &str, v: &Value| -> Option<Run> {
            match v {
                Value::String(s) if !s.trim().is_empty() => Some(Run::Shell(x(builder, key, s))),
                Value::Sequence(seq) if !seq.is_empty() => {
                    let mut argv = Vec::new();
                    for (i, a) in seq.iter().enumerate() {
                        match scalar(a) {
                            Some(a) => argv.push(x(builder, &format!("{key}[{i}]"), &a)),
                            None => {
                                builder.fail(
                                    &format!("{path}.{key}[{i}]"),
                                    format!("{who}: an argument is a plain value, not {}", describe(a)),
                                );
                                return None;
                            }
                        }
                    }
                    Some(Run::Argv(argv))
                }
                other => {
                    builder.fail(
                        &format!("{path}.{key}"),
                        format!(
                            "{who}: `{key}` is a shell line (a string, run with sh -c) or an argument list, not {}",
                            if matches!(other, Value::String(_) | Value::Sequence(_)) {
                                "empty"
                            } else {
                                describe(other)
                            }
                        ),
                    );
                    None
                }
            }
        };

        let kind = match kind_key {
            "command" => rs.command.as_ref().and_then(|v| run(self, "command", v)).map(|run| Kind::Command { run }),
            "sql" => rs.sql.as_ref().map(|s| Kind::Sql { sql: SqlText::Inline(x(self, "sql", s)) }),
            "sql_file" => {
                rs.sql_file.as_ref().map(|f| Kind::Sql { sql: SqlText::File(base.join(x(self, "sql_file", f))) })
            }
            "wait" => {
                let sql = rs.wait.as_ref().map(|s| x(self, "wait", s).trim().to_string()).unwrap_or_default();
                if sql.trim().is_empty() {
                    self.fail(
                        &format!("{path}.wait"),
                        format!("{who}: `wait` is an SQL condition, e.g. SELECT count(*) > 0 FROM jobs"),
                    );
                }
                let diagnose_sql = match &rs.diagnose_sql {
                    None => Vec::new(),
                    Some(Value::String(s)) => vec![x(self, "diagnose_sql", s)],
                    Some(Value::Sequence(seq)) => seq
                        .iter()
                        .enumerate()
                        .filter_map(|(i, v)| match v {
                            Value::String(s) => Some(x(self, &format!("diagnose_sql[{i}]"), s)),
                            other => {
                                self.fail(
                                    &format!("{path}.diagnose_sql[{i}]"),
                                    format!("{who}: a diagnostic query is a string, not {}", describe(other)),
                                );
                                None
                            }
                        })
                        .collect(),
                    Some(other) => {
                        self.fail(
                            &format!("{path}.diagnose_sql"),
                            format!("{who}: `diagnose_sql` is a query or a list of queries, not {}", describe(other)),
                        );
                        Vec::new()
                    }
                };
                Some(Kind::Wait {
                    sql,
                    interval: interval.unwrap_or(DEFAULT_WAIT_INTERVAL),
                    timeout: timeout.unwrap_or(DEFAULT_WAIT_TIMEOUT),
                    diagnose_sql,
                })
            }
            _ => {
                let svc = rs.service.as_ref().and_then(|v| run(self, "service", v));
                let restart = match &rs.restart {
                    None => Restart::No,
                    Some(Value::Bool(false)) => Restart::No,
                    Some(v) => match scalar(v).as_deref().and_then(Restart::parse) {
                        Some(r) => r,
                        None => {
                            self.fail(
                                &format!("{path}.restart"),
                                format!("{who}: `restart` is one of no, on-failure, always"),
                            );
                            Restart::No
                        }
                    },
                };
                let health = match &rs.health {
                    None => None,
                    Some(h) => self.health(path, &who, h, &mut |b, k, s| x(b, k, s), &run),
                };
                svc.map(|run| Kind::Service { run, health, restart, backoff: backoff.unwrap_or(DEFAULT_BACKOFF) })
            }
        };

        // Credentials.
        let access = {
            let module = rs.module.as_ref().map(|m| x(self, "module", m));
            let tenant = rs.tenant.as_ref().map(|t| x(self, "tenant", t));
            let role = rs.role.as_ref().map(|r| x(self, "role", r));
            let database = rs.database.as_ref().map(|d| x(self, "database", d));
            let spec = AccessSpec { module, tenant, role, database };
            self.check_access(path, &who, &spec, kind_key, kind.as_ref());
            (spec.module.is_some() || spec.role.is_some() || spec.database.is_some() || spec.tenant.is_some())
                .then_some(spec)
        };

        let mut env = BTreeMap::new();
        for (k, v) in &rs.env {
            let at = format!("{path}.env.{k}");
            if k.is_empty()
                || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                || k.starts_with(|c: char| c.is_ascii_digit())
            {
                self.fail(&at, format!("{who}: {k:?} is not an environment variable name (letters, digits and _)"));
                continue;
            }
            match scalar(v) {
                Some(s) => {
                    env.insert(k.clone(), x(self, &format!("env.{k}"), &s));
                }
                None => self.fail(&at, format!("{who}: env {k} is a plain value, not {}", describe(v))),
            }
        }
        let cwd = rs.cwd.as_ref().map(|c| base.join(x(self, "cwd", c)));
        let group = rs.group.as_ref().map(|g| x(self, "group", g));

        let mut needs = Vec::new();
        for (i, v) in rs.needs.iter().enumerate() {
            let at = format!("{path}.needs[{i}]");
            let parsed = match v {
                Value::String(s) => Some((s.clone(), Condition::Completed)),
                Value::Mapping(m) if m.len() == 1 => {
                    let (k, c) = m.iter().next().map(|(k, c)| (scalar(k), scalar(c))).unwrap_or((None, None));
                    match (k, c.as_deref()) {
                        (Some(k), Some("completed")) => Some((k, Condition::Completed)),
                        (Some(k), Some("healthy")) => Some((k, Condition::Healthy)),
                        (Some(k), Some("started")) => Some((k, Condition::Started)),
                        (Some(k), other) => {
                            self.fail(
                                &at,
                                format!(
                                    "{who}: needs {k}: unknown condition {:?}; use completed, healthy or started",
                                    other.unwrap_or("")
                                ),
                            );
                            None
                        }
                        _ => None,
                    }
                }
                _ => None,
            };
            match parsed {
                Some((pattern, cond)) => {
                    let pattern = x(self, &format!("needs[{i}]"), &pattern);
                    needs.push((pattern, cond, at));
                }
                None if self.errors.len() > before => {}
                None => self.fail(&at, format!("{who}: a `needs` entry is a step name (`- setup`) or a step with a condition (`- {{api: healthy}}`)")),
            }
        }

        if self.errors.len() > before {
            return None;
        }
        let kind = kind?;
        let step = Step { name, line, item: label, kind, needs: Vec::new(), group, access, env, cwd, timeout };
        Some(Stamped { step, path: path.to_string(), needs })
    }

    fn health(
        &mut self,
        path: &str,
        who: &str,
        h: &RawHealth,
        x: &mut dyn FnMut(&mut Builder<'_>, &str, &str) -> String,
        run: &dyn Fn(&mut Builder<'_>, &str, &Value) -> Option<Run>,
    ) -> Option<Health> {
        let at = format!("{path}.health");
        let present: Vec<&str> =
            [("sql", h.sql.is_some()), ("command", h.command.is_some()), ("http", h.http.is_some())]
                .into_iter()
                .filter_map(|(k, p)| p.then_some(k))
                .collect();
        if present.len() != 1 {
            self.fail(
                &at,
                format!(
                    "{who}: `health` has exactly one of `sql`, `command`, `http` (found {})",
                    if present.is_empty() { "none".to_string() } else { present.join(", ") }
                ),
            );
            return None;
        }
        let interval = match &h.interval {
            None => DEFAULT_HEALTH_INTERVAL,
            Some(v) => match scalar(v).map(|t| parse_duration(&t)) {
                Some(Ok(d)) if d >= MIN_INTERVAL => d,
                Some(Ok(_)) => {
                    self.fail(
                        &format!("{at}.interval"),
                        format!("{who}: health interval is too short; use at least 10ms"),
                    );
                    return None;
                }
                Some(Err(m)) => {
                    self.fail(&format!("{at}.interval"), format!("{who}: health.interval: {m}"));
                    return None;
                }
                None => {
                    self.fail(&format!("{at}.interval"), format!("{who}: health.interval is a duration such as 500ms"));
                    return None;
                }
            },
        };
        let check = if let Some(sql) = &h.sql {
            Check::Sql(x(self, "health.sql", sql))
        } else if let Some(cmd) = &h.command {
            Check::Command(run(self, "health.command", cmd)?)
        } else {
            let url = x(self, "health.http", h.http.as_deref().unwrap_or_default());
            match parse_http_url(&url) {
                Ok(u) => Check::Http(u),
                Err(m) => {
                    self.fail(&format!("{at}.http"), format!("{who}: {m}"));
                    return None;
                }
            }
        };
        Some(Health { check, interval })
    }

    /// Module, tenant and role references, against the manifest and the desired state.
    fn check_access(&mut self, path: &str, who: &str, spec: &AccessSpec, kind_key: &str, kind: Option<&Kind>) {
        let needs_login = matches!(kind_key, "sql" | "sql_file" | "wait")
            || matches!(kind, Some(Kind::Service { health: Some(Health { check: Check::Sql(_), .. }), .. }));
        if needs_login && spec.module.is_none() && spec.role.is_none() {
            self.fail(
                &format!("{path}.name"),
                format!("{who} runs SQL and needs a login: name a `module:` (and `tenant:`), or a `role:` pgplane manages and a `database:`"),
            );
        }
        if spec.role.is_some() && spec.module.is_none() && spec.database.is_none() {
            self.fail(
                &format!("{path}.role"),
                format!("{who}: with `role:` and no `module:`, name the `database:` to connect to"),
            );
        }
        if spec.tenant.is_some() && spec.module.is_none() {
            self.fail(&format!("{path}.tenant"), format!("{who}: `tenant:` needs the `module:` it enables"));
        }
        if spec.module.is_none() && spec.role.is_none() && spec.database.is_some() {
            self.fail(
                &format!("{path}.database"),
                format!("{who}: `database:` needs a `module:` or `role:` to log in with"),
            );
        }
        if spec.module.is_none() && spec.role.is_none() {
            return;
        }
        let Some(manifest) = self.manifest else {
            let key = if spec.module.is_some() { "module" } else { "role" };
            self.fail(
                &format!("{path}.{key}"),
                format!("{who} names a {key}, but the stack file names no manifest; add `manifest: pgplane.yaml` (relative to the stack file)"),
            );
            return;
        };
        if let Some(m) = &spec.module {
            match manifest.module(m) {
                None => self.fail(
                    &format!("{path}.module"),
                    format!(
                        "{who}: module {m:?} is not in {} (modules: {})",
                        manifest.file.display(),
                        manifest.modules.iter().map(|m| m.name.as_str()).collect::<Vec<_>>().join(", ")
                    ),
                ),
                Some(module) => match (&spec.tenant, module.storage) {
                    (None, Storage::Database) => {}
                    (None, s) => self.fail(
                        &format!("{path}.module"),
                        format!(
                            "{who}: module {m} has `storage: {}`; name the `tenant:` whose storage the step uses",
                            s.as_str()
                        ),
                    ),
                    (Some(_), Storage::Database) => self.fail(
                        &format!("{path}.tenant"),
                        format!("{who}: module {m} has `storage: database` (no tenants); remove `tenant:`"),
                    ),
                    (Some(t), _) => match manifest.tenants.iter().find(|x| &x.name == t) {
                        None => self.fail(
                            &format!("{path}.tenant"),
                            format!(
                                "{who}: tenant {t:?} is not in {} (tenants: {})",
                                manifest.file.display(),
                                manifest.tenants.iter().map(|t| t.name.as_str()).collect::<Vec<_>>().join(", ")
                            ),
                        ),
                        Some(tenant) if !tenant.modules.contains(m) => self.fail(
                            &format!("{path}.tenant"),
                            format!("{who}: tenant {t} does not enable module {m}; add it to the tenant's `modules`"),
                        ),
                        Some(_) => {}
                    },
                },
            }
        }
        if let (Some(role), Some(desired)) = (&spec.role, self.desired) {
            if !desired.roles.iter().any(|r| &r.name == role) {
                let mut known: Vec<&str> = desired.roles.iter().map(|r| r.name.as_str()).collect();
                known.sort();
                self.fail(
                    &format!("{path}.role"),
                    format!(
                        "{who}: role {role:?} is not a role pgplane manages in environment {} (roles: {})",
                        desired.env,
                        known.join(", ")
                    ),
                );
            }
        }
    }

    /// `needs` patterns → step indices; checks the conditions and groups.
    fn resolve_needs(&mut self, stamped: Vec<Stamped>, groups: &BTreeMap<String, Group>) -> Vec<Stamped> {
        let names: Vec<(String, bool, bool)> =
            stamped.iter().map(|s| (s.step.name.clone(), s.step.is_service(), s.step.has_health())).collect();
        let mut out = Vec::new();
        for mut s in stamped {
            let who = format!("step {}", s.step.name);
            let mut resolved: Vec<Need> = Vec::new();
            for (pattern, cond, at) in &s.needs {
                let matched: Vec<usize> = names
                    .iter()
                    .enumerate()
                    .filter(|(_, (n, _, _))| glob(pattern, n) && *n != s.step.name)
                    .map(|(i, _)| i)
                    .collect();
                if pattern == &s.step.name {
                    self.fail(at, format!("{who} needs itself"));
                    continue;
                }
                if matched.is_empty() {
                    let close: Vec<&str> = names
                        .iter()
                        .map(|(n, _, _)| n.as_str())
                        .filter(|n| *n != s.step.name && similar(pattern, n))
                        .take(3)
                        .collect();
                    self.fail(
                        at,
                        format!(
                            "{who} needs {pattern:?}, which {} no step{}",
                            if pattern.contains('*') { "matches" } else { "is" },
                            if close.is_empty() {
                                String::new()
                            } else {
                                format!(" (did you mean {}?)", close.join(", "))
                            }
                        ),
                    );
                    continue;
                }
                for i in matched {
                    let (target, service, health) = &names[i];
                    match (cond, service, health) {
                        (Condition::Completed, true, _) => self.fail(
                            at,
                            format!(
                                "{who} needs service {target} to be completed, but a service keeps running and never completes; write `- {{{target}: {}}}`",
                                if *health { "healthy" } else { "started" }
                            ),
                        ),
                        (Condition::Healthy, false, _) => self.fail(
                            at,
                            format!("{who} needs {target} to be healthy, but only services have health checks; write `- {target}` (completed)"),
                        ),
                        (Condition::Healthy, true, false) => self.fail(
                            at,
                            format!("{who} needs service {target} to be healthy, but it has no `health:` check; add one, or need it `started`"),
                        ),
                        _ => {
                            if let Some(n) = resolved.iter_mut().find(|n| n.step == i) {
                                // The stronger condition wins.
                                if n.condition == Condition::Started {
                                    n.condition = *cond;
                                }
                            } else {
                                resolved.push(Need { step: i, condition: *cond });
                            }
                        }
                    }
                }
            }
            if let Some(g) = &s.step.group {
                if !groups.contains_key(g) {
                    let known: Vec<&str> = groups.keys().map(String::as_str).collect();
                    self.fail(
                        &format!("{}.group", s.path),
                        format!(
                            "{who} is in group {g:?}, which is not in `groups` ({})",
                            if known.is_empty() {
                                "there are none; add `groups: {NAME: {mode: exclusive}}`".to_string()
                            } else {
                                format!("known: {}", known.join(", "))
                            }
                        ),
                    );
                }
            }
            s.step.needs = resolved;
            out.push(s);
        }
        out
    }

    /// A cycle through `needs` and the order of exclusive groups can never run.
    fn cycles(&mut self, steps: &[Stamped], groups: &BTreeMap<String, Group>) {
        let graph: Vec<Vec<usize>> =
            (0..steps.len()).map(|i| order_edges(steps.iter().map(|s| &s.step), groups, i)).collect();
        if let Some(cycle) = find_cycle(&graph) {
            let names: Vec<&str> = cycle.iter().map(|&i| steps[i].step.name.as_str()).collect();
            let first = cycle[0];
            let via_group = cycle.windows(2).any(|w| !steps[w[0]].step.needs.iter().any(|n| n.step == w[1]));
            self.fail(
                &format!("{}.needs", steps[first].path),
                format!(
                    "steps depend on each other in a cycle: {} → {}{}; break it",
                    names.join(" → "),
                    names[0],
                    if via_group {
                        " (an exclusive group runs its members in file order, so a member waits for the ones before it)"
                    } else {
                        ""
                    }
                ),
            );
        }
    }
}

/// What step `i` waits for: its needs, and in an exclusive group the member before it.
pub fn order_edges<'a>(
    steps: impl Iterator<Item = &'a Step> + Clone,
    groups: &BTreeMap<String, Group>,
    i: usize,
) -> Vec<usize> {
    let all: Vec<&Step> = steps.collect();
    let s = all[i];
    let mut out: Vec<usize> = s.needs.iter().map(|n| n.step).collect();
    if let Some(g) = s.group.as_ref().and_then(|g| groups.get(g)) {
        if g.mode == GroupMode::Exclusive {
            if let Some(prev) = (0..i).rev().find(|&j| all[j].group.as_deref() == Some(g.name.as_str())) {
                out.push(prev);
            }
        }
    }
    out
}

/// A cycle in a graph of "waits for" edges, as the nodes in order.
fn find_cycle(graph: &[Vec<usize>]) -> Option<Vec<usize>> {
    // 0 unvisited, 1 on the path, 2 done.
    let mut mark = vec![0u8; graph.len()];
    let mut path = Vec::new();
    fn visit(n: usize, graph: &[Vec<usize>], mark: &mut [u8], path: &mut Vec<usize>) -> Option<Vec<usize>> {
        mark[n] = 1;
        path.push(n);
        for &m in &graph[n] {
            if mark[m] == 1 {
                let start = path.iter().position(|&p| p == m).unwrap_or(0);
                return Some(path[start..].to_vec());
            }
            if mark[m] == 0 {
                if let Some(c) = visit(m, graph, mark, path) {
                    return Some(c);
                }
            }
        }
        path.pop();
        mark[n] = 2;
        None
    }
    for n in 0..graph.len() {
        if mark[n] == 0 {
            if let Some(c) = visit(n, graph, &mut mark, &mut path) {
                return Some(c);
            }
        }
    }
    None
}

/// `*` matches any run of characters; everything else matches itself.
pub fn glob(pattern: &str, name: &str) -> bool {
    if !pattern.contains('*') {
        return pattern == name;
    }
    let parts: Vec<&str> = pattern.split('*').collect();
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !name.starts_with(first) || name.len() < first.len() + last.len() || !name.ends_with(last) {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

/// Names worth suggesting for a misspelt one: a shared prefix of 3 or more, or a few edits.
fn similar(a: &str, b: &str) -> bool {
    let prefix = a.chars().zip(b.chars()).take_while(|(x, y)| x == y).count();
    let d = levenshtein(a, b);
    prefix >= 3 || (d <= 2 && d * 3 <= a.len().max(b.len()))
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            cur.push((prev[j] + usize::from(ca != *cb)).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// `http://HOST[:PORT][/PATH]`; no TLS.
pub fn parse_http_url(url: &str) -> Result<HttpUrl, String> {
    let Some(rest) = url.strip_prefix("http://") else {
        return Err(format!("health.http {url:?} must start with http:// (the check speaks plain HTTP)"));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => match p.parse::<u16>() {
            Ok(p) if p > 0 => (h, p),
            _ => return Err(format!("health.http {url:?}: {p:?} is not a port")),
        },
        _ => (authority, 80),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || path.contains(char::is_whitespace) {
        return Err(format!("health.http {url:?} is not a URL like http://127.0.0.1:8080/healthz"));
    }
    Ok(HttpUrl { host: host.to_string(), port, path: path.to_string() })
}

impl Stack {
    pub fn index(&self, name: &str) -> Option<usize> {
        self.steps.iter().position(|s| s.name == name)
    }

    /// `file:line` of a step, for messages.
    pub fn place(&self, step: usize) -> String {
        format!("{}:{}", self.file.display(), self.steps[step].line)
    }

    /// Every step's credentials in the environment's desired state (`None`: none named).
    pub fn access(&self, desired: &Desired) -> Result<Vec<Option<Access>>, StackErrors> {
        let mut errors = Vec::new();
        let mut out = Vec::new();
        for s in &self.steps {
            let err = |m: String| ManifestError {
                file: self.file.clone(),
                line: Some(s.line),
                column: None,
                message: format!("step {}: {m}", s.name),
            };
            let Some(spec) = &s.access else {
                out.push(None);
                continue;
            };
            let endpoint = match &spec.module {
                Some(m) => match desired.endpoint(m, spec.tenant.as_deref()) {
                    Some(e) => Some(e),
                    None => {
                        errors.push(err(format!(
                            "module {m} has no storage for tenant {:?} in environment {}",
                            spec.tenant.as_deref().unwrap_or(""),
                            desired.env
                        )));
                        out.push(None);
                        continue;
                    }
                },
                None => None,
            };
            let (role, server) = match (&spec.role, endpoint) {
                (Some(r), _) => match desired.roles.iter().find(|x| &x.name == r) {
                    Some(x) => (x.name.clone(), x.server.clone()),
                    None => {
                        errors.push(err(format!(
                            "role {r:?} is not a role pgplane manages in environment {}",
                            desired.env
                        )));
                        out.push(None);
                        continue;
                    }
                },
                (None, Some(e)) => (e.owner_role.clone(), e.server.clone()),
                (None, None) => {
                    errors.push(err("names no module or role".into()));
                    out.push(None);
                    continue;
                }
            };
            let database = match (&spec.database, endpoint) {
                (Some(d), _) => d.clone(),
                (None, Some(e)) => e.database.clone(),
                (None, None) => {
                    errors.push(err("names no database".into()));
                    out.push(None);
                    continue;
                }
            };
            // The tenant's schema as search path only where the step uses the tenant's database.
            let schema = endpoint.filter(|e| e.database == database).and_then(|e| e.schema.clone());
            out.push(Some(Access {
                server,
                role,
                database,
                schema,
                module: spec.module.clone(),
                tenant: spec.tenant.clone(),
            }));
        }
        if errors.is_empty() {
            Ok(out)
        } else {
            Err(StackErrors(errors))
        }
    }
}
