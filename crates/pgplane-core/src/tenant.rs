//! Registered tenants: the part of the desired state that lives in the control database
//! (`pgplane tenant add`, `POST /api/v1/tenants`) rather than in the manifest, and the pure
//! decisions about them — which module version a request means, which parameters it sets
//! and what they select, which server a tenant's database goes to, which previews are due,
//! which drops a tenant operation may run.
//!
//! [`Registry`] is an input of [`crate::model::Desired::build`] next to the manifest: a
//! registered tenant's storage is desired exactly like a manifest tenant's, so `plan` and
//! `apply` compute it with the same planner, and it is never an orphan of a manifest that
//! does not list it.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::manifest::{Manifest, ModuleSpec, ParameterSelects, Storage, VersionSource};
use crate::model::Origin;
use crate::plan::{ActionKind, Plan};

/// What a registered (tenant, module) pair is asked to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ModuleState {
    /// Storage and roles exist, the roles log in.
    Enabled,
    /// Storage and data are kept; its roles lose LOGIN and CONNECT.
    Disabled,
    /// To be dropped (storage and roles); the row goes once the drops succeeded.
    Purging,
}

impl ModuleState {
    pub fn as_str(self) -> &'static str {
        match self {
            ModuleState::Enabled => "enabled",
            ModuleState::Disabled => "disabled",
            ModuleState::Purging => "purging",
        }
    }

    pub fn parse(s: &str) -> Option<ModuleState> {
        [ModuleState::Enabled, ModuleState::Disabled, ModuleState::Purging].into_iter().find(|m| m.as_str() == s)
    }
}

/// One module of a registered tenant, as the control database records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TenantModule {
    pub module: String,
    /// The version the tenant runs (its migrations completed); `None` for a module without
    /// `versions:`.
    pub version: Option<String>,
    /// The version an upgrade under way moves it to.
    pub target_version: Option<String>,
    /// Parameters as set when the module was enabled (defaults filled in).
    pub parameters: BTreeMap<String, bool>,
    pub state: ModuleState,
    /// Where its storage is (`server: auto` modules: chosen once, then kept).
    pub server: Option<String>,
    /// `pending`, `provisioning`, `migrating`, `upgrading`, `ready`, `disabled`,
    /// `purging` or `failed`.
    pub status: String,
    pub error: Option<String>,
    /// The last job that changed it.
    pub last_job: Option<i64>,
}

/// A tenant registered in the control database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TenantRecord {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// Seconds since the Unix epoch; `None`: never expires.
    pub expires_at: Option<i64>,
    pub created_at: String,
    pub modules: Vec<TenantModule>,
}

impl TenantRecord {
    /// A tenant with a time to live or labels is a preview: the reconciler purges it when
    /// it expires, and `tenant gc` when no live list entry names it.
    pub fn is_preview(&self) -> bool {
        self.expires_at.is_some() || !self.labels.is_empty()
    }

    pub fn module(&self, name: &str) -> Option<&TenantModule> {
        self.modules.iter().find(|m| m.module == name)
    }
}

/// The registered tenants of one environment, and where manifest tenants of `server: auto`
/// modules were placed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Registry {
    pub tenants: Vec<TenantRecord>,
    /// (tenant, module) → server, for tenants the manifest lists.
    pub placements: BTreeMap<(String, String), String>,
}

impl Registry {
    pub fn tenant(&self, name: &str) -> Option<&TenantRecord> {
        self.tenants.iter().find(|t| t.name == name)
    }

    pub fn tenant_mut(&mut self, name: &str) -> Option<&mut TenantRecord> {
        self.tenants.iter_mut().find(|t| t.name == name)
    }

    /// The server a tenant's module storage is on, when placed.
    pub fn placement(&self, tenant: &str, module: &str) -> Option<&str> {
        match self.tenant(tenant) {
            Some(t) => t.module(module).and_then(|m| m.server.as_deref()),
            None => self.placements.get(&(tenant.to_string(), module.to_string())).map(String::as_str),
        }
    }
}

// ----- requests: modules, versions, parameters -------------------------------------------

/// `users` or `users@2.0` as given on the command line, in an API request or an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleRef {
    pub module: String,
    pub version: Option<String>,
}

impl ModuleRef {
    pub fn parse(s: &str) -> Result<ModuleRef, String> {
        let s = s.trim();
        let (module, version) = match s.split_once('@') {
            Some((m, v)) => (m, Some(v)),
            None => (s, None),
        };
        if module.is_empty() {
            return Err(format!("{s:?} names no module; write MODULE or MODULE@VERSION"));
        }
        if version.is_some_and(str::is_empty) {
            return Err(format!("{s:?} has an empty version; write MODULE@VERSION (e.g. users@2.0) or just MODULE"));
        }
        Ok(ModuleRef { module: module.to_string(), version: version.map(str::to_string) })
    }
}

impl std::fmt::Display for ModuleRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.version {
            Some(v) => write!(f, "{}@{v}", self.module),
            None => f.write_str(&self.module),
        }
    }
}

/// The manifest's module for a tenant request: it exists and has per-tenant storage.
pub fn tenant_module<'m>(manifest: &'m Manifest, name: &str) -> Result<&'m ModuleSpec, String> {
    let known =
        || manifest.modules.iter().filter(|m| m.per_tenant()).map(|m| m.name.as_str()).collect::<Vec<_>>().join(", ");
    match manifest.module(name) {
        None => Err(format!(
            "module {name:?} is not in {} (per-tenant modules: {})",
            manifest.file.display(),
            none_if_empty(known())
        )),
        Some(m) if m.storage == Storage::Database => Err(format!(
            "module {name:?} has `storage: database` (one database shared by all), so tenants cannot enable it \
             (per-tenant modules: {})",
            none_if_empty(known())
        )),
        Some(m) => Ok(m),
    }
}

fn none_if_empty(s: String) -> String {
    if s.is_empty() {
        "none".into()
    } else {
        s
    }
}

/// The version a request means: the one named (it must be declared), or the newest.
/// `None` for a module without `versions:` (naming one is an error).
pub fn resolve_version(module: &ModuleSpec, requested: Option<&str>) -> Result<Option<String>, String> {
    let declared = || module.versions.iter().map(|v| v.version.as_str()).collect::<Vec<_>>().join(", ");
    match requested {
        None => Ok(module.newest_version().map(str::to_string)),
        Some(v) if module.versions.is_empty() => Err(format!(
            "module {} declares no `versions:`, so {}@{v} names nothing; write just {}",
            module.name, module.name, module.name
        )),
        Some(v) => match module.version(v) {
            Some(spec) => Ok(Some(spec.version.clone())),
            None => Err(format!("module {} has no version {v:?} (versions: {})", module.name, declared())),
        },
    }
}

/// Which way a version change goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Same,
    Up,
    Down,
}

/// Compares two versions of a module by their order in `versions:`. A tenant recorded
/// without a version (the module had none when it was added) counts as older than every
/// declared version.
pub fn direction(module: &ModuleSpec, from: Option<&str>, to: Option<&str>) -> Result<Direction, String> {
    let index = |v: Option<&str>| -> Result<Option<usize>, String> {
        match v {
            None => Ok(None),
            Some(v) => module.version_index(v).map(Some).ok_or_else(|| {
                format!("module {} no longer declares version {v:?}; add it back to `versions:`", module.name)
            }),
        }
    };
    let (a, b) = (index(from)?, index(to)?);
    Ok(match a.cmp(&b) {
        std::cmp::Ordering::Equal => Direction::Same,
        std::cmp::Ordering::Less => Direction::Up,
        std::cmp::Ordering::Greater => Direction::Down,
    })
}

/// Reads a parameter value: true/false (also yes/no, on/off, 1/0).
pub fn parse_bool(name: &str, value: &str) -> Result<bool, String> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" => Ok(true),
        "false" | "no" | "off" | "0" => Ok(false),
        other => Err(format!("parameter {name}={other:?}: the value must be true or false")),
    }
}

/// The parameters of each module of a request: every given name must be known by at
/// least one of `modules` (else an error listing the known ones); each module gets the
/// ones it knows, with its defaults for the rest.
pub fn resolve_parameters(
    modules: &[&ModuleSpec],
    given: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, BTreeMap<String, bool>>, String> {
    let mut values = BTreeMap::new();
    for (name, value) in given {
        if !modules.iter().any(|m| m.parameter(name).is_some()) {
            let known: BTreeSet<String> =
                modules.iter().flat_map(|m| m.parameters.iter().map(|p| format!("{} ({})", p.name, m.name))).collect();
            return Err(format!(
                "unknown parameter {name:?}; the modules given know: {}",
                if known.is_empty() { "none".to_string() } else { known.into_iter().collect::<Vec<_>>().join(", ") }
            ));
        }
        values.insert(name.clone(), parse_bool(name, value)?);
    }
    Ok(modules
        .iter()
        .map(|m| {
            let own = m
                .parameters
                .iter()
                .map(|p| (p.name.clone(), values.get(&p.name).copied().unwrap_or(p.default)))
                .collect();
            (m.name.clone(), own)
        })
        .collect())
}

// ----- changes to one tenant -----------------------------------------------------------

/// What a tenant operation does to one of its modules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ItemAction {
    /// Add the module (at a version, newest by default) or enable it again; a module that
    /// runs already is left as it is.
    Add,
    /// Enable a disabled module again.
    Enable,
    /// Move the module to another version (newest by default).
    Upgrade,
    /// Keep its data; its roles lose LOGIN and CONNECT.
    Disable,
    /// Drop its storage and roles.
    Purge,
}

impl ItemAction {
    pub fn as_str(self) -> &'static str {
        match self {
            ItemAction::Add => "add",
            ItemAction::Enable => "enable",
            ItemAction::Upgrade => "upgrade",
            ItemAction::Disable => "disable",
            ItemAction::Purge => "purge",
        }
    }
}

/// One module of a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub module: String,
    pub version: Option<String>,
    pub action: ItemAction,
}

/// A change to one registered tenant: what `tenant add|upgrade|disable|enable|remove` and
/// `POST /api/v1/tenants[/{t}/install]` ask for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Change {
    pub tenant: String,
    pub items: Vec<Item>,
    /// This action on every module the tenant has (`tenant disable T` without `--module`).
    pub every: Option<ItemAction>,
    /// Parameters of the modules added (`--param loadReference=true`).
    pub parameters: BTreeMap<String, String>,
    /// A new tenant's labels and expiry (seconds since the epoch); an existing tenant keeps its own.
    pub labels: BTreeMap<String, String>,
    pub expires_at: Option<i64>,
    pub allow_downgrade: bool,
}

/// Why a change cannot be made; nothing is run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct EditError {
    pub kind: EditErrorKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EditErrorKind {
    /// The tenant or its module does not exist.
    NotFound,
    /// The request contradicts the tenant's state.
    Conflict,
    /// The request is wrong in itself (a name, a version, a parameter).
    Invalid,
}

fn invalid(m: impl Into<String>) -> EditError {
    EditError { kind: EditErrorKind::Invalid, message: m.into() }
}
fn conflict(m: impl Into<String>) -> EditError {
    EditError { kind: EditErrorKind::Conflict, message: m.into() }
}
fn not_found(m: impl Into<String>) -> EditError {
    EditError { kind: EditErrorKind::NotFound, message: m.into() }
}

/// A version change of one module.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VersionChange {
    pub module: String,
    pub from: Option<String>,
    pub to: Option<String>,
    pub direction: Direction,
}

/// The registry as a change leaves it, and what follows from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edit {
    /// The registry with the change made (an upgraded module shows its new version: the
    /// desired state runs it).
    pub registry: Registry,
    /// The tenant did not exist before.
    pub created: bool,
    /// Modules whose rows the change writes, with the action.
    pub rows: Vec<(String, ItemAction)>,
    /// Modules to migrate once provisioned (added, enabled, upgraded).
    pub migrate: Vec<String>,
    /// Modules to drop.
    pub purge: Vec<String>,
    pub versions: Vec<VersionChange>,
    /// Things that need no change, said once.
    pub notes: Vec<String>,
}

/// Applies `change` to `registry` in memory, checking it against the manifest and the
/// tenant's state. Pure: the caller writes the rows and plans.
pub fn edit(manifest: &Manifest, registry: &Registry, change: &Change) -> Result<Edit, EditError> {
    crate::ident::check_name("tenant", &change.tenant).map_err(invalid)?;
    let t = &change.tenant;
    if manifest.tenants.iter().any(|m| &m.name == t) {
        return Err(conflict(format!(
            "tenant {t:?} is listed in {}: change it there and run `pgplane apply`",
            manifest.file.display()
        )));
    }
    let mut reg = registry.clone();
    let existing = reg.tenant(t).cloned();
    let mut items = change.items.clone();
    if let Some(action) = change.every {
        let Some(existing) = &existing else {
            return Err(not_found(format!("tenant {t:?} is not registered (see `pgplane tenant list`)")));
        };
        items.extend(
            existing
                .modules
                .iter()
                .filter(|m| m.state != ModuleState::Purging || action == ItemAction::Purge)
                .map(|m| Item { module: m.module.clone(), version: None, action }),
        );
    }
    if items.is_empty() {
        return Err(invalid(format!("name at least one module of tenant {t:?} (--module M)")));
    }
    let mut seen = BTreeSet::new();
    for i in &items {
        if !seen.insert(i.module.clone()) {
            return Err(invalid(format!("module {} is named twice", i.module)));
        }
    }
    let adding: Vec<&ModuleSpec> = items
        .iter()
        .filter(|i| i.action == ItemAction::Add)
        .map(|i| tenant_module(manifest, &i.module))
        .collect::<Result<_, _>>()
        .map_err(invalid)?;
    if adding.is_empty() && !change.parameters.is_empty() {
        return Err(invalid("parameters are set when a module is added (tenant add, or the install action enable)"));
    }
    let params = resolve_parameters(&adding, &change.parameters).map_err(invalid)?;
    let created = existing.is_none();
    if created {
        if items.iter().any(|i| i.action != ItemAction::Add) {
            return Err(not_found(format!(
                "tenant {t:?} is not registered (see `pgplane tenant list`; `pgplane tenant add` registers it)"
            )));
        }
        reg.tenants.push(TenantRecord {
            name: t.clone(),
            labels: change.labels.clone(),
            expires_at: change.expires_at,
            created_at: String::new(),
            modules: Vec::new(),
        });
        reg.tenants.sort_by(|a, b| a.name.cmp(&b.name));
    }
    let mut out = Edit {
        registry: Registry::default(),
        created,
        rows: Vec::new(),
        migrate: Vec::new(),
        purge: Vec::new(),
        versions: Vec::new(),
        notes: Vec::new(),
    };
    if !created && (!change.labels.is_empty() || change.expires_at.is_some()) {
        out.notes.push(format!("tenant {t} exists: its labels and expiry stay as they are"));
    }
    for item in &items {
        let spec = tenant_module(manifest, &item.module).map_err(invalid)?;
        let tenant = reg.tenant_mut(t).ok_or_else(|| not_found(format!("tenant {t:?} is not registered")))?;
        let current = tenant.modules.iter_mut().find(|m| m.module == item.module);
        let m = &item.module;
        match (item.action, current) {
            (ItemAction::Add, None) => {
                let version = resolve_version(spec, item.version.as_deref()).map_err(invalid)?;
                tenant.modules.push(TenantModule {
                    module: m.clone(),
                    version,
                    target_version: None,
                    parameters: params.get(m).cloned().unwrap_or_default(),
                    state: ModuleState::Enabled,
                    server: None,
                    status: "provisioning".into(),
                    error: None,
                    last_job: None,
                });
                tenant.modules.sort_by(|a, b| a.module.cmp(&b.module));
                out.rows.push((m.clone(), ItemAction::Add));
                out.migrate.push(m.clone());
            }
            (_, Some(cur)) if cur.state == ModuleState::Purging && item.action != ItemAction::Purge => {
                return Err(conflict(format!(
                    "tenant {t}'s module {m} is being purged; finish it with `pgplane tenant remove {t} --module {m} --purge`"
                )))
            }
            (ItemAction::Add | ItemAction::Enable, Some(cur)) => {
                let version = resolve_version(spec, item.version.as_deref()).map_err(invalid)?;
                if item.version.is_some() && version != cur.version {
                    return Err(conflict(format!(
                        "tenant {t} runs module {m} at version {}; move it with `pgplane tenant upgrade {t} --module {m}@{}`",
                        cur.version.as_deref().unwrap_or("-"),
                        item.version.as_deref().unwrap_or_default()
                    )));
                }
                if item.action == ItemAction::Add {
                    if let Some(given) = params.get(m).filter(|p| **p != cur.parameters) {
                        if change.parameters.keys().any(|k| given.contains_key(k)) {
                            return Err(conflict(format!(
                                "tenant {t} enabled module {m} with other parameters ({}); parameters are set when a \
                                 module is added",
                                describe_params(&cur.parameters)
                            )));
                        }
                    }
                }
                if cur.state == ModuleState::Disabled {
                    cur.state = ModuleState::Enabled;
                    out.rows.push((m.clone(), ItemAction::Enable));
                } else {
                    out.notes.push(format!("tenant {t}'s module {m} is enabled already"));
                }
                out.migrate.push(m.clone());
            }
            (ItemAction::Upgrade, Some(cur)) => {
                if cur.state == ModuleState::Disabled {
                    return Err(conflict(format!(
                        "tenant {t}'s module {m} is disabled (its roles cannot log in to migrate); \
                         `pgplane tenant enable {t} --module {m}` first"
                    )));
                }
                let to = resolve_version(spec, item.version.as_deref()).map_err(invalid)?;
                if to.is_none() {
                    return Err(invalid(format!("module {m} declares no `versions:`; there is nothing to upgrade to")));
                }
                let dir = direction(spec, cur.version.as_deref(), to.as_deref()).map_err(invalid)?;
                let change_of = VersionChange { module: m.clone(), from: cur.version.clone(), to: to.clone(), direction: dir };
                match dir {
                    Direction::Same if cur.target_version.is_none() => {
                        out.notes.push(format!("tenant {t} runs module {m} at version {} already", to.as_deref().unwrap_or("-")));
                    }
                    Direction::Down if !change.allow_downgrade => {
                        return Err(invalid(format!(
                            "tenant {t} runs module {m} at version {}; going back to {} is a downgrade, refused unless \
                             --allow-downgrade is given and the source can roll it back",
                            cur.version.as_deref().unwrap_or("-"),
                            to.as_deref().unwrap_or("-")
                        )));
                    }
                    _ => {
                        cur.version = to;
                        out.rows.push((m.clone(), ItemAction::Upgrade));
                        out.migrate.push(m.clone());
                        out.versions.push(change_of);
                    }
                }
            }
            (ItemAction::Disable, Some(cur)) => {
                if cur.state == ModuleState::Disabled {
                    out.notes.push(format!("tenant {t}'s module {m} is disabled already"));
                } else {
                    cur.state = ModuleState::Disabled;
                    out.rows.push((m.clone(), ItemAction::Disable));
                }
            }
            (ItemAction::Purge, Some(cur)) => {
                cur.state = ModuleState::Purging;
                out.rows.push((m.clone(), ItemAction::Purge));
                out.purge.push(m.clone());
            }
            (_, None) => {
                return Err(not_found(format!(
                    "tenant {t} has no module {m} (modules: {}); `pgplane tenant add {t} --module {m}` adds it",
                    none_if_empty(tenant.modules.iter().map(|m| m.module.as_str()).collect::<Vec<_>>().join(", "))
                )))
            }
        }
    }
    out.registry = reg;
    Ok(out)
}

fn describe_params(p: &BTreeMap<String, bool>) -> String {
    if p.is_empty() {
        return "none".into();
    }
    p.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", ")
}

// ----- which migrations a tenant runs ------------------------------------------------------

/// Where the migrations of a module at a version with some parameters come from, and what
/// to select in them: what [`crate::migrate`]'s runner needs, decided without reading files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationChoice {
    /// The source, relative to the manifest's folder.
    pub path: String,
    /// Where `up` stops in it.
    pub cut: Option<Cut>,
    /// Liquibase contexts to run (the module's, plus those of parameters that are on;
    /// [`BASE_CONTEXT`] when a parameter's context must stay off and none is left).
    pub contexts: Vec<String>,
    /// Liquibase label expression: the module's, and `!label` for each parameter that is off.
    pub labels: Option<String>,
    /// SQL folders: subfolders whose files join the migrations (parameters that are on).
    pub folders: Vec<String>,
    /// SQL folders: every parameter's subfolder (the ones that are off are skipped, not refused).
    pub parameter_folders: Vec<String>,
    /// Parameters that select a Liquibase context or label (a SQL folder cannot have them).
    pub liquibase_parameters: Vec<String>,
    /// The `migrations:` options (tables, schema) of the source.
    pub spec: crate::manifest::MigrationsSpec,
}

/// Where `up` stops in a source.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Cut {
    /// A changelog up to and including the changeset whose `tagDatabase` sets it.
    Tag(String),
    /// A SQL folder up to and including this migration version.
    Version(String),
}

/// Liquibase runs every changeset when no context is given, so a module whose parameter
/// selects a context passes this one when no other is on: changesets of the parameter's
/// context stay off, those without a context run.
pub const BASE_CONTEXT: &str = "pgplane_base";

/// The migrations of `module` at `version` (`None`: the module's `migrations:`, or its
/// first version when it has none) with `parameters`. `None` when it has no migrations.
pub fn migration_choice(
    module: &ModuleSpec,
    version: Option<&str>,
    parameters: &BTreeMap<String, bool>,
) -> Result<Option<MigrationChoice>, String> {
    let (spec, cut) = match version.map(|v| module.version(v).ok_or(v)) {
        Some(Err(v)) => {
            return Err(format!(
                "module {} has no version {v:?} (versions: {})",
                module.name,
                module.versions.iter().map(|v| v.version.as_str()).collect::<Vec<_>>().join(", ")
            ))
        }
        Some(Ok(v)) => match &v.source {
            VersionSource::Own(spec) => (spec.clone(), None),
            VersionSource::ToTag(tag) => (module_spec(module)?, Some(Cut::Tag(tag.clone()))),
            VersionSource::Target(t) => (module_spec(module)?, Some(Cut::Version(t.clone()))),
        },
        None => match (&module.migrations, module.versions.first()) {
            (Some(spec), _) => (spec.clone(), None),
            (None, Some(first)) => return migration_choice(module, Some(&first.version), parameters),
            (None, None) => return Ok(None),
        },
    };
    let on =
        |name: &str| parameters.get(name).copied().unwrap_or_else(|| module.parameter(name).is_some_and(|p| p.default));
    let mut contexts = spec.contexts.clone();
    let mut negated = Vec::new();
    let mut folders = Vec::new();
    let mut parameter_folders = Vec::new();
    let mut context_params = false;
    let mut liquibase_parameters = Vec::new();
    for p in &module.parameters {
        if !matches!(p.selects, ParameterSelects::Folder(_)) {
            liquibase_parameters.push(p.name.clone());
        }
        match &p.selects {
            ParameterSelects::Context(c) => {
                context_params = true;
                if on(&p.name) && !contexts.contains(c) {
                    contexts.push(c.clone());
                }
            }
            ParameterSelects::Label(l) => {
                if !on(&p.name) {
                    negated.push(format!("!{l}"));
                }
            }
            ParameterSelects::Folder(f) => {
                parameter_folders.push(f.clone());
                if on(&p.name) {
                    folders.push(f.clone());
                }
            }
        }
    }
    if context_params && contexts.is_empty() {
        contexts.push(BASE_CONTEXT.to_string());
    }
    let labels = match (&spec.labels, negated.is_empty()) {
        (base, true) => base.clone(),
        (None, false) => Some(negated.join(" and ")),
        (Some(base), false) => Some(format!("({base}) and {}", negated.join(" and "))),
    };
    Ok(Some(MigrationChoice {
        path: spec.path.clone(),
        cut,
        contexts,
        labels,
        folders,
        parameter_folders,
        liquibase_parameters,
        spec,
    }))
}

impl MigrationChoice {
    /// The `migrations:` options with this choice's contexts and labels.
    pub fn selected_spec(&self) -> crate::manifest::MigrationsSpec {
        crate::manifest::MigrationsSpec {
            contexts: self.contexts.clone(),
            labels: self.labels.clone(),
            ..self.spec.clone()
        }
    }
}

fn module_spec(module: &ModuleSpec) -> Result<crate::manifest::MigrationsSpec, String> {
    module
        .migrations
        .clone()
        .ok_or_else(|| format!("module {} has no `migrations:` to cut a version from", module.name))
}

// ----- placement ---------------------------------------------------------------------------

/// A server as placement sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerLoad {
    pub name: String,
    /// Databases on it now (templates, `postgres` and `pgplane` not counted).
    pub databases: u32,
    /// `capacity.databases`; `None`: no limit.
    pub capacity: Option<u32>,
}

/// A (tenant, module) pair and the server its database goes to.
pub type Placement = ((String, String), String);

/// Chooses a server for each (tenant, module) database that has none yet: the least-loaded
/// server with room (fewest databases; the manifest's order breaks ties), counting the
/// databases placed before it. Fails, placing nothing, when one does not fit anywhere.
pub fn place(wanted: &[(String, String)], servers: &[ServerLoad]) -> Result<Vec<Placement>, String> {
    let mut load: Vec<ServerLoad> = servers.to_vec();
    let mut out = Vec::new();
    for (i, w) in wanted.iter().enumerate() {
        let best = load
            .iter_mut()
            .enumerate()
            .filter(|(_, s)| s.capacity.is_none_or(|c| s.databases < c))
            .min_by_key(|(i, s)| (s.databases, *i))
            .map(|(_, s)| s);
        match best {
            Some(s) => {
                s.databases += 1;
                out.push((w.clone(), s.name.clone()));
            }
            None => {
                let full: Vec<String> = servers
                    .iter()
                    .map(|s| match s.capacity {
                        Some(c) => format!("{} {}/{c}", s.name, s.databases),
                        None => format!("{} {}", s.name, s.databases),
                    })
                    .collect();
                return Err(format!(
                    "no server has room for the database of tenant {} module {} ({} of {} new database(s) fit): \
                     databases/capacity per server: {}; raise `servers[].capacity.databases` or add a server",
                    w.0,
                    w.1,
                    i,
                    wanted.len(),
                    full.join(", ")
                ));
            }
        }
    }
    Ok(out)
}

// ----- previews ----------------------------------------------------------------------------

/// Why a preview is due for purging.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Due {
    pub tenant: String,
    pub reason: String,
}

/// Previews to purge: expired ones, and, with a live list, those neither named in it nor
/// carrying a listed `key=value` label. Tenants that are not previews are never due.
pub fn previews_due(tenants: &[TenantRecord], keep: Option<&BTreeSet<String>>, now: i64) -> Vec<Due> {
    let mut out = Vec::new();
    for t in tenants.iter().filter(|t| t.is_preview()) {
        if let Some(at) = t.expires_at.filter(|at| *at <= now) {
            out.push(Due { tenant: t.name.clone(), reason: format!("expired {}s ago", now - at) });
            continue;
        }
        if let Some(keep) = keep {
            let listed = keep.contains(&t.name) || t.labels.iter().any(|(k, v)| keep.contains(&format!("{k}={v}")));
            if !listed {
                out.push(Due { tenant: t.name.clone(), reason: "not in the live list".into() });
            }
        }
    }
    out
}

// ----- scoping a plan to one tenant operation ---------------------------------------------

/// The planner's reason for a drop of an orphan.
const PRUNED: &str = "removed from the manifest; --prune given";

/// Keeps a plan's creations and repairs, and only those drops (and record forgets) whose
/// object was recorded for an origin `purge` accepts: a tenant purge runs the planner with
/// pruning, but drops only what it was asked to, never another orphan of the environment.
pub fn retain_drops(plan: &mut Plan, purge: impl Fn(&Origin) -> bool) {
    let allowed: BTreeSet<crate::model::ObjectRef> =
        plan.orphans.iter().filter(|o| purge(&o.record.origin)).map(|o| o.record.object.clone()).collect();
    plan.actions.retain(|a| {
        let dropping = matches!(
            a.kind,
            ActionKind::DropExtension
                | ActionKind::DropSchema
                | ActionKind::DropDatabase
                | ActionKind::DisableRole
                | ActionKind::ReassignOwned
                | ActionKind::DropOwned
                | ActionKind::DropRole
                | ActionKind::Forget
        );
        !dropping || allowed.contains(&a.object)
    });
    for a in plan.actions.iter_mut().filter(|a| a.why == PRUNED) {
        a.why = "purge requested".to_string();
    }
    plan.orphans.retain(|o| allowed.contains(&o.record.object));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn manifest(body: &str) -> Manifest {
        Manifest::parse(Path::new("pgplane.yaml"), &format!("version: 1\n{body}"), &|_| None).expect("valid")
    }

    const VERSIONED: &str = "modules:
  - name: users
    storage: schema-per-tenant
    migrations: db/users.yaml
    versions:
      - {version: \"1.0\", to_tag: v1}
      - {version: \"2.0\", to_tag: v2}
    parameters:
      loadReference: {context: reference}
      loadSample: {label: sample, default: false}
  - name: files
    storage: database-per-tenant
    versions:
      - {version: \"1.0\", migrations: db/files-1}
      - {version: \"1.1\", migrations: db/files-1.1}
    parameters:
      demo: {folder: demo}
  - name: registry
    storage: database
";

    fn add(tenant: &str, modules: &[&str]) -> Change {
        Change {
            tenant: tenant.into(),
            items: modules
                .iter()
                .map(|m| {
                    let r = ModuleRef::parse(m).unwrap();
                    Item { module: r.module, version: r.version, action: ItemAction::Add }
                })
                .collect(),
            ..Change::default()
        }
    }

    #[test]
    fn a_change_is_checked_and_made_in_memory() {
        let m = manifest(VERSIONED);
        let mut c = add("acme", &["users@1.0", "files"]);
        c.parameters.insert("loadReference".into(), "true".into());
        let e = edit(&m, &Registry::default(), &c).unwrap();
        assert!(e.created);
        let t = e.registry.tenant("acme").unwrap();
        assert_eq!(t.module("users").unwrap().version.as_deref(), Some("1.0"));
        assert_eq!(t.module("files").unwrap().version.as_deref(), Some("1.1"), "newest by default");
        assert!(t.module("users").unwrap().parameters["loadReference"]);
        assert_eq!(e.migrate, ["users", "files"]);
        let reg = e.registry.clone();
        // Adding again changes nothing; an other version is a conflict.
        let again = edit(&m, &reg, &add("acme", &["users"])).unwrap();
        assert!(again.rows.is_empty() && again.notes[0].contains("enabled already"));
        let e2 = edit(&m, &reg, &add("acme", &["users@2.0"])).unwrap_err();
        assert_eq!(e2.kind, EditErrorKind::Conflict);
        assert!(e2.message.contains("tenant upgrade acme --module users@2.0"), "{}", e2.message);
        // Upgrade, downgrade, disable, purge.
        let up = Change {
            tenant: "acme".into(),
            items: vec![Item { module: "users".into(), version: None, action: ItemAction::Upgrade }],
            ..Change::default()
        };
        let e3 = edit(&m, &reg, &up).unwrap();
        assert_eq!(e3.versions[0].direction, Direction::Up);
        assert_eq!(e3.registry.tenant("acme").unwrap().module("users").unwrap().version.as_deref(), Some("2.0"));
        let down = Change {
            items: vec![Item { module: "files".into(), version: Some("1.0".into()), action: ItemAction::Upgrade }],
            ..up.clone()
        };
        let e4 = edit(&m, &reg, &down).unwrap_err();
        assert!(e4.message.contains("--allow-downgrade"), "{}", e4.message);
        let off = Change { every: Some(ItemAction::Disable), items: vec![], ..up.clone() };
        let e5 = edit(&m, &reg, &off).unwrap();
        assert_eq!(e5.rows.len(), 2);
        let disabled = e5.registry;
        let e6 = edit(&m, &disabled, &up).unwrap_err();
        assert!(e6.message.contains("tenant enable acme --module users"), "{}", e6.message);
        let purge = Change { every: Some(ItemAction::Purge), items: vec![], ..up.clone() };
        assert_eq!(edit(&m, &disabled, &purge).unwrap().purge, ["files", "users"]);
    }

    #[test]
    fn bad_changes_name_the_fix() {
        let m = manifest(VERSIONED);
        let e = edit(&m, &Registry::default(), &add("acme", &["nope"])).unwrap_err();
        assert_eq!(e.message, "module \"nope\" is not in pgplane.yaml (per-tenant modules: users, files)");
        let e = edit(&m, &Registry::default(), &add("acme", &["registry"])).unwrap_err();
        assert!(e.message.contains("storage: database"), "{}", e.message);
        let e = edit(&m, &Registry::default(), &add("acme", &["users@9"])).unwrap_err();
        assert!(e.message.contains("no version \"9\""), "{}", e.message);
        let mut c = add("acme", &["files"]);
        c.parameters.insert("loadReference".into(), "true".into());
        let e = edit(&m, &Registry::default(), &c).unwrap_err();
        assert!(e.message.contains("unknown parameter \"loadReference\"") && e.message.contains("demo (files)"));
        let e = edit(&m, &Registry::default(), &add("Acme", &["users"])).unwrap_err();
        assert_eq!(e.kind, EditErrorKind::Invalid);
        let disable = Change {
            tenant: "ghost".into(),
            items: vec![Item { module: "users".into(), version: None, action: ItemAction::Disable }],
            ..Change::default()
        };
        assert_eq!(edit(&m, &Registry::default(), &disable).unwrap_err().kind, EditErrorKind::NotFound);
        let listed = manifest(&format!("{VERSIONED}tenants:\n  - name: acme\n    modules: [users]\n"));
        assert_eq!(
            edit(&listed, &Registry::default(), &add("acme", &["files"])).unwrap_err().kind,
            EditErrorKind::Conflict
        );
    }

    #[test]
    fn module_refs_parse() {
        assert_eq!(ModuleRef::parse("users").unwrap(), ModuleRef { module: "users".into(), version: None });
        assert_eq!(ModuleRef::parse("users@2.0").unwrap().version.as_deref(), Some("2.0"));
        assert!(ModuleRef::parse("@2.0").is_err());
        assert!(ModuleRef::parse("users@").unwrap_err().contains("empty version"));
    }

    #[test]
    fn versions_resolve_to_the_named_or_the_newest() {
        let m = manifest(VERSIONED);
        let users = m.module("users").unwrap();
        assert_eq!(resolve_version(users, None).unwrap().as_deref(), Some("2.0"));
        assert_eq!(resolve_version(users, Some("1.0")).unwrap().as_deref(), Some("1.0"));
        let e = resolve_version(users, Some("3.0")).unwrap_err();
        assert_eq!(e, "module users has no version \"3.0\" (versions: 1.0, 2.0)");
        let m2 = manifest("modules:\n  - name: plain\n    storage: schema-per-tenant\n");
        let plain = m2.module("plain").unwrap();
        assert_eq!(resolve_version(plain, None).unwrap(), None);
        assert!(resolve_version(plain, Some("1")).unwrap_err().contains("declares no `versions:`"));
        assert_eq!(direction(users, Some("1.0"), Some("2.0")).unwrap(), Direction::Up);
        assert_eq!(direction(users, Some("2.0"), Some("1.0")).unwrap(), Direction::Down);
        assert_eq!(direction(users, Some("2.0"), Some("2.0")).unwrap(), Direction::Same);
        assert_eq!(direction(users, None, Some("1.0")).unwrap(), Direction::Up);
        assert!(direction(users, Some("0.9"), Some("1.0")).unwrap_err().contains("no longer declares"));
    }

    #[test]
    fn parameters_are_known_typed_and_defaulted() {
        let m = manifest(VERSIONED);
        let (users, files) = (m.module("users").unwrap(), m.module("files").unwrap());
        let given = BTreeMap::from([("loadReference".to_string(), "true".to_string())]);
        let p = resolve_parameters(&[users, files], &given).unwrap();
        assert_eq!(p["users"], BTreeMap::from([("loadReference".into(), true), ("loadSample".into(), false)]));
        assert_eq!(p["files"], BTreeMap::from([("demo".into(), false)]));
        let e = resolve_parameters(&[files], &given).unwrap_err();
        assert_eq!(e, "unknown parameter \"loadReference\"; the modules given know: demo (files)");
        let bad = BTreeMap::from([("loadSample".to_string(), "maybe".to_string())]);
        assert!(resolve_parameters(&[users], &bad).unwrap_err().contains("true or false"));
    }

    #[test]
    fn migration_choice_cuts_and_selects() {
        let m = manifest(VERSIONED);
        let users = m.module("users").unwrap();
        let off = BTreeMap::from([("loadReference".to_string(), false), ("loadSample".to_string(), false)]);
        let c = migration_choice(users, Some("1.0"), &off).unwrap().unwrap();
        assert_eq!(c.path, "db/users.yaml");
        assert_eq!(c.cut, Some(Cut::Tag("v1".into())));
        assert_eq!(c.contexts, vec![BASE_CONTEXT.to_string()], "reference data stays off");
        assert_eq!(c.labels.as_deref(), Some("!sample"));
        let on = BTreeMap::from([("loadReference".to_string(), true), ("loadSample".to_string(), true)]);
        let c = migration_choice(users, Some("2.0"), &on).unwrap().unwrap();
        assert_eq!((c.contexts, c.labels, c.cut), (vec!["reference".to_string()], None, Some(Cut::Tag("v2".into()))));
        let files = m.module("files").unwrap();
        let c = migration_choice(files, Some("1.1"), &BTreeMap::from([("demo".to_string(), true)])).unwrap().unwrap();
        assert_eq!((c.path.as_str(), c.folders.clone(), c.cut.clone()), ("db/files-1.1", vec!["demo".into()], None));
        assert_eq!(c.parameter_folders, vec!["demo".to_string()]);
        let c = migration_choice(files, None, &BTreeMap::new()).unwrap().unwrap();
        assert_eq!(c.path, "db/files-1", "no recorded version and no module source: the first version");
        assert!(c.folders.is_empty());
        assert_eq!(migration_choice(m.module("registry").unwrap(), None, &BTreeMap::new()).unwrap(), None);
    }

    #[test]
    fn placement_fills_the_least_loaded_server_with_room() {
        let servers = [
            ServerLoad { name: "a".into(), databases: 3, capacity: Some(4) },
            ServerLoad { name: "b".into(), databases: 1, capacity: None },
        ];
        let want: Vec<(String, String)> =
            ["t1", "t2", "t3", "t4"].iter().map(|t| (t.to_string(), "files".to_string())).collect();
        let placed: Vec<String> = place(&want, &servers).unwrap().into_iter().map(|(_, s)| s).collect();
        // b 1→2, b 2→3, then a (3) ties b (3): a comes first; then a is full (4/4).
        assert_eq!(placed, ["b", "b", "a", "b"]);
        let full = [ServerLoad { name: "a".into(), databases: 2, capacity: Some(2) }];
        let e = place(&want[..1], &full).unwrap_err();
        assert!(e.contains("no server has room") && e.contains("a 2/2"), "{e}");
    }

    fn preview(name: &str, expires_at: Option<i64>, labels: &[(&str, &str)]) -> TenantRecord {
        TenantRecord {
            name: name.into(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            expires_at,
            created_at: String::new(),
            modules: vec![],
        }
    }

    #[test]
    fn previews_expire_or_leave_the_live_list() {
        let tenants = [
            preview("acme", None, &[]),
            preview("pr1", Some(100), &[("pr", "1")]),
            preview("pr2", Some(1000), &[("pr", "2")]),
            preview("pr3", None, &[("pr", "3")]),
        ];
        let due = previews_due(&tenants, None, 500);
        assert_eq!(due, vec![Due { tenant: "pr1".into(), reason: "expired 400s ago".into() }]);
        let keep: BTreeSet<String> = ["pr=2".to_string()].into();
        let names: Vec<String> = previews_due(&tenants, Some(&keep), 500).into_iter().map(|d| d.tenant).collect();
        assert_eq!(names, ["pr1", "pr3"], "acme is no preview; pr2 is listed by its label");
        let keep: BTreeSet<String> = ["pr3".to_string()].into();
        let names: Vec<String> = previews_due(&tenants, Some(&keep), 50).into_iter().map(|d| d.tenant).collect();
        assert_eq!(names, ["pr1", "pr2"], "pr3 is listed by its name");
    }
}
