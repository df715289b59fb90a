//! Event-driven provisioning, the pure parts: the CloudEvents-shaped envelope and its
//! validation, the event types and the operation each maps to (with the `data` schema of
//! each), what happens to an event that cannot be used (skipped, dead-lettered or holding
//! its key), which partition a key goes to, how many partitions a consumer takes, and the
//! status event that reports an outcome.
//!
//! The consumer (`pgplane_ops::events`) reads messages, calls [`parse`] and [`map`], and
//! records the event with the job of its [`Operation`] in one control-database
//! transaction; nothing here does I/O.
//!
//! ```text
//! message ──parse──► Envelope ──map──► Operation ──► job (kind, key, request)
//!    │ not JSON, no id, no type         │ unknown type ──► skipped / dead-lettered
//!    └──► Rejection (poison)            └ bad data ────► Rejection (poison)
//! ```

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Events larger than this are poison (a provisioning request is a few hundred bytes).
pub const MAX_EVENT_BYTES: usize = 256 * 1024;
/// The longest ordering key (message key or subject) an event may have: keys are indexed
/// (`event/<env>/<key>` in the jobs table), and PostgreSQL refuses index rows beyond a
/// few kilobytes.
pub const MAX_KEY_BYTES: usize = 1024;

/// The header that may carry the type (as existing producers send it).
pub const TYPE_HEADER: &str = "event_type";

/// An event as it arrives: `{id, type, source, subject, time, data}` (CloudEvents' JSON
/// format; `specversion` and extension attributes are accepted and ignored).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Envelope {
    /// The producer's id: the idempotency key (the same id twice does nothing the second time).
    pub id: String,
    /// `candidate.opened`, `tenant.created`, … (from the envelope, or the `event_type` header).
    #[serde(rename = "type")]
    pub kind: String,
    pub source: Option<String>,
    pub subject: Option<String>,
    pub time: Option<String>,
    pub data: serde_json::Value,
}

/// Why an event cannot be used. Rejected events never become jobs: they are dead-lettered
/// (or hold their key, with `on_failure: block`) with this reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub why: RejectKind,
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectKind {
    /// Not a JSON object, too large, or missing `id` or `type`.
    Unparseable,
    /// A type pgplane does not know (skipped or dead-lettered, as configured).
    UnknownType,
    /// A known type whose `data` does not fit its schema.
    InvalidData,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

fn reject(why: RejectKind, reason: impl Into<String>) -> Rejection {
    Rejection { why, reason: reason.into() }
}

/// Reads an envelope from a message's payload; `header_type` is the `event_type` header's
/// value, if the message has one. The envelope's `type` and the header must agree when
/// both are present.
pub fn parse(payload: &[u8], header_type: Option<&str>) -> Result<Envelope, Rejection> {
    use RejectKind::Unparseable;
    if payload.len() > MAX_EVENT_BYTES {
        return Err(reject(
            Unparseable,
            format!("the event has {} bytes, more than the {MAX_EVENT_BYTES} an event may have", payload.len()),
        ));
    }
    let value: serde_json::Value =
        serde_json::from_slice(payload).map_err(|e| reject(Unparseable, format!("the event is not JSON: {e}")))?;
    let serde_json::Value::Object(mut obj) = value else {
        return Err(reject(Unparseable, "the event is not a JSON object (expected {\"id\", \"type\", \"data\", …})"));
    };
    let mut text = |name: &str| -> Result<Option<String>, Rejection> {
        match obj.remove(name) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(s)) if s.contains('\0') => {
                Err(reject(Unparseable, format!("the event's `{name}` holds a NUL character")))
            }
            Some(serde_json::Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(reject(Unparseable, format!("the event's `{name}` must be a string, not {other}"))),
        }
    };
    let id = text("id")?.filter(|s| !s.trim().is_empty());
    let kind = text("type")?;
    let source = text("source")?;
    let subject = text("subject")?;
    let time = text("time")?;
    let Some(id) = id else {
        return Err(reject(Unparseable, "the event has no `id` (its idempotency key); every event needs one"));
    };
    if id.len() > 200 {
        return Err(reject(Unparseable, "the event's `id` is longer than 200 characters"));
    }
    let header = header_type.map(str::trim).filter(|h| !h.is_empty());
    let kind = match (kind, header) {
        (Some(k), Some(h)) if k != h => {
            return Err(reject(
                Unparseable,
                format!("the event's `type` ({k:?}) and its `{TYPE_HEADER}` header ({h:?}) disagree"),
            ))
        }
        (Some(k), _) => k,
        (None, Some(h)) => h.to_string(),
        (None, None) => {
            return Err(reject(
                Unparseable,
                format!("the event has no `type` and no `{TYPE_HEADER}` header (e.g. \"candidate.opened\")"),
            ))
        }
    };
    let data = match obj.remove("data") {
        None | Some(serde_json::Value::Null) => serde_json::Value::Object(Default::default()),
        Some(d @ serde_json::Value::Object(_)) => d,
        Some(other) => return Err(reject(Unparseable, format!("the event's `data` must be an object, not {other}"))),
    };
    // PostgreSQL's text and jsonb cannot hold one: recording the job would fail, and the
    // consumer would read the same event again and again.
    if holds_nul(&data) {
        return Err(reject(Unparseable, "the event's `data` holds a NUL character (\\u0000)"));
    }
    Ok(Envelope { id, kind, source, subject, time, data })
}

/// Whether a string or key anywhere in `v` holds a NUL character.
fn holds_nul(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::String(s) => s.contains('\0'),
        serde_json::Value::Array(a) => a.iter().any(holds_nul),
        serde_json::Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || holds_nul(v)),
        _ => false,
    }
}

/// The event types pgplane acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EventType {
    TenantCreated,
    TenantModuleEnabled,
    TenantUpgraded,
    TenantDisabled,
    TenantDeleted,
    CandidateOpened,
    CandidateUpdated,
    CandidateMerged,
    CandidateAbandoned,
    ModuleRequested,
    ApplyRequested,
}

impl EventType {
    pub const ALL: [EventType; 11] = [
        EventType::TenantCreated,
        EventType::TenantModuleEnabled,
        EventType::TenantUpgraded,
        EventType::TenantDisabled,
        EventType::TenantDeleted,
        EventType::CandidateOpened,
        EventType::CandidateUpdated,
        EventType::CandidateMerged,
        EventType::CandidateAbandoned,
        EventType::ModuleRequested,
        EventType::ApplyRequested,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::TenantCreated => "tenant.created",
            EventType::TenantModuleEnabled => "tenant.module.enabled",
            EventType::TenantUpgraded => "tenant.upgraded",
            EventType::TenantDisabled => "tenant.disabled",
            EventType::TenantDeleted => "tenant.deleted",
            EventType::CandidateOpened => "candidate.opened",
            EventType::CandidateUpdated => "candidate.updated",
            EventType::CandidateMerged => "candidate.merged",
            EventType::CandidateAbandoned => "candidate.abandoned",
            EventType::ModuleRequested => "module.requested",
            EventType::ApplyRequested => "apply.requested",
        }
    }

    pub fn parse(s: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `data` of `candidate.opened` and `candidate.updated`. The id defaults to the
/// envelope's `subject`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CandidateData {
    /// The branch id (a merge request: `MR-42`).
    #[serde(default)]
    pub id: Option<String>,
    /// The template to stamp from (required by `candidate.opened`; `updated` keeps the branch's).
    #[serde(default)]
    pub template: Option<String>,
    /// Migration sources applied after the copy, relative to the manifest's folder
    /// (`updated`: the new patch set; omitted: the last deployment's).
    #[serde(default)]
    pub sources: Option<Vec<String>>,
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    /// Time to live, e.g. `72h`.
    #[serde(default)]
    pub ttl: Option<String>,
    #[serde(default)]
    pub contexts: Vec<String>,
}

/// `data` of `candidate.merged` and `candidate.abandoned`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CandidateRef {
    #[serde(default)]
    pub id: Option<String>,
}

/// `data` of `apply.requested`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApplyData {
    /// The environment (default: the consumer's).
    #[serde(default)]
    pub env: Option<String>,
    #[serde(default)]
    pub prune: bool,
    #[serde(default)]
    pub adopt: bool,
    #[serde(default)]
    pub skip_migrations: bool,
}

/// `data` of `module.requested`: a module's database and roles for an environment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModuleData {
    pub module: String,
    /// The environment (sandbox) to provision it in (default: the consumer's).
    #[serde(default)]
    pub env: Option<String>,
}

/// `data` of `tenant.created`: `{"tenant": "acme", "modules": ["users", "files@2.0"],
/// "parameters": {"loadReference": "true"}}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TenantCreatedData {
    #[serde(default)]
    pub tenant: Option<String>,
    pub modules: Vec<String>,
    #[serde(default)]
    pub parameters: BTreeMap<String, String>,
    #[serde(default)]
    pub ttl: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// `data` of `tenant.module.enabled` (`{"tenant": "acme", "module": "files@2.0"}`),
/// `tenant.upgraded` (`{"tenant", "modules": ["users@2.0"]}`, or none: every module to its
/// newest version), `tenant.disabled` and `tenant.deleted` (`{"tenant", "module"?}`: one
/// module, or the whole tenant).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TenantData {
    #[serde(default)]
    pub tenant: Option<String>,
    #[serde(default)]
    pub module: Option<String>,
    #[serde(default)]
    pub modules: Vec<String>,
    #[serde(default)]
    pub parameters: BTreeMap<String, String>,
}

/// What an event asks for: an operation of the job kinds pgplane runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    /// `branch_create`.
    BranchCreate { id: String, data: CandidateData },
    /// `branch_reset`: a new patch set is deployed on a fresh copy.
    BranchReset { id: String, data: CandidateData },
    /// `branch_delete`; a branch that is already gone is not an error.
    BranchDelete { id: String },
    /// `apply` of an environment.
    Apply { env: String, data: ApplyData },
    /// `apply` of the environment the module is to be provisioned in (the manifest is the
    /// desired state: the module's database and roles exist afterwards, everything else of
    /// the environment as the manifest says).
    Module { env: String, module: String },
    /// `tenant_add` (`tenant.created`; `tenant.module.enabled` adds one module).
    TenantAdd { tenant: String, modules: Vec<String>, parameters: BTreeMap<String, String>, data: TenantCreatedData },
    /// `tenant_upgrade`.
    TenantUpgrade { tenant: String, modules: Vec<String> },
    /// `tenant_disable`.
    TenantDisable { tenant: String, module: Option<String> },
    /// `tenant_remove` with purge.
    TenantRemove { tenant: String, module: Option<String> },
}

/// Job kinds (as `pgplane_ops::runner::kind` names them).
pub mod job_kind {
    pub const APPLY: &str = "apply";
    pub const BRANCH_CREATE: &str = "branch_create";
    pub const BRANCH_RESET: &str = "branch_reset";
    pub const BRANCH_DELETE: &str = "branch_delete";
    pub const TENANT_ADD: &str = "tenant_add";
    pub const TENANT_UPGRADE: &str = "tenant_upgrade";
    pub const TENANT_DISABLE: &str = "tenant_disable";
    pub const TENANT_ENABLE: &str = "tenant_enable";
    pub const TENANT_REMOVE: &str = "tenant_remove";
}

impl Operation {
    /// The job kind that runs it.
    pub fn job_kind(&self) -> &'static str {
        match self {
            Operation::BranchCreate { .. } => job_kind::BRANCH_CREATE,
            Operation::BranchReset { .. } => job_kind::BRANCH_RESET,
            Operation::BranchDelete { .. } => job_kind::BRANCH_DELETE,
            Operation::Apply { .. } | Operation::Module { .. } => job_kind::APPLY,
            Operation::TenantAdd { .. } => job_kind::TENANT_ADD,
            Operation::TenantUpgrade { .. } => job_kind::TENANT_UPGRADE,
            Operation::TenantDisable { .. } => job_kind::TENANT_DISABLE,
            Operation::TenantRemove { .. } => job_kind::TENANT_REMOVE,
        }
    }

    /// What it works on, for people (the job's `resource`).
    pub fn resource(&self) -> String {
        match self {
            Operation::BranchCreate { id, .. } | Operation::BranchReset { id, .. } | Operation::BranchDelete { id } => {
                id.clone()
            }
            Operation::Apply { .. } => "apply".into(),
            Operation::Module { module, .. } => module.clone(),
            Operation::TenantAdd { tenant, .. }
            | Operation::TenantUpgrade { tenant, .. }
            | Operation::TenantDisable { tenant, .. }
            | Operation::TenantRemove { tenant, .. } => tenant.clone(),
        }
    }

    /// The environment it runs in (`None`: the consumer's).
    pub fn env(&self) -> Option<&str> {
        match self {
            Operation::Apply { env, .. } | Operation::Module { env, .. } => Some(env),
            _ => None,
        }
    }

    /// Where the credentials of what it provisions are fetched (status events carry this,
    /// never a password): the `pgplane credentials` command and the Kubernetes Secret's
    /// default name.
    pub fn credentials(&self, env: &str) -> Option<serde_json::Value> {
        let hint = |module: &str, tenant: Option<&str>| {
            let mut cmd = format!("pgplane credentials {module} --env {env}");
            let mut secret = format!("{env}-{module}");
            if let Some(t) = tenant {
                cmd.push_str(&format!(" --tenant {t}"));
                secret.push_str(&format!("-{t}"));
            }
            // As `pgplane credentials --format k8s-secret` names it (`_` is not allowed there).
            serde_json::json!({"command": cmd, "k8s_secret": format!("{secret}-db").replace('_', "-")})
        };
        let module_name = |m: &str| m.split('@').next().unwrap_or(m).to_string();
        match self {
            Operation::Module { env, module } => {
                let mut cmd = format!("pgplane credentials {module} --env {env}");
                cmd.push_str(" --format env");
                Some(serde_json::json!({"command": cmd, "k8s_secret": format!("{env}-{module}-db")}))
            }
            Operation::TenantAdd { tenant, modules, .. } => {
                Some(serde_json::Value::Array(modules.iter().map(|m| hint(&module_name(m), Some(tenant))).collect()))
            }
            Operation::BranchCreate { .. } | Operation::BranchReset { .. } => Some(serde_json::json!({
                "command": format!("pgplane credentials --branch-readonly --env {env}"),
                "k8s_secret": format!("{env}-branch-readonly-db"),
            })),
            _ => None,
        }
    }
}

/// Names in events become branch ids, tenant, module and environment names: a safe,
/// short alphabet, checked before anything runs (the operations check them again).
fn check_name(what: &str, v: &str) -> Result<(), Rejection> {
    let ok = !v.is_empty()
        && v.len() <= 63
        && v.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/' | '@'))
        && !v.starts_with(['-', '.', '/']);
    if ok {
        Ok(())
    } else {
        Err(reject(
            RejectKind::InvalidData,
            format!("{what} {v:?} is not a valid name (1-63 of A-Z a-z 0-9 _ - . / @, not starting with - . /)"),
        ))
    }
}

fn data<T: for<'de> Deserialize<'de>>(e: &Envelope, t: EventType, schema: &str) -> Result<T, Rejection> {
    serde_json::from_value(e.data.clone()).map_err(|err| {
        reject(RejectKind::InvalidData, format!("the data of {t} does not fit its schema {schema}: {err}"))
    })
}

/// A candidate's time to live in seconds (`72h`), checked before anything runs.
pub fn ttl_secs(ttl: Option<&str>) -> Result<Option<u64>, Rejection> {
    ttl.map(|t| {
        crate::manifest::parse_duration(t)
            .map(|d| d.as_secs())
            .map_err(|m| reject(RejectKind::InvalidData, format!("the candidate's ttl: {m}")))
    })
    .transpose()
}

/// The id a candidate event names: `data.id`, else the envelope's `subject`.
fn candidate_id(t: EventType, id: Option<&String>, e: &Envelope) -> Result<String, Rejection> {
    let id = id.or(e.subject.as_ref()).cloned().ok_or_else(|| {
        reject(RejectKind::InvalidData, format!("{t} names no candidate: give `data.id` or the envelope's `subject`"))
    })?;
    check_name("the candidate id", &id)?;
    Ok(id)
}

fn tenant_name(t: EventType, name: Option<&String>, e: &Envelope) -> Result<String, Rejection> {
    let name = name.or(e.subject.as_ref()).cloned().ok_or_else(|| {
        reject(RejectKind::InvalidData, format!("{t} names no tenant: give `data.tenant` or the envelope's `subject`"))
    })?;
    check_name("the tenant", &name)?;
    Ok(name)
}

/// The `data` schema of each type, for errors and documentation.
pub fn schema(t: EventType) -> &'static str {
    match t {
        EventType::TenantCreated => {
            r#"{"tenant": "acme", "modules": ["users", "files@2.0"], "parameters": {"loadReference": "true"}, "ttl"?: "72h", "labels"?: {}}"#
        }
        EventType::TenantModuleEnabled => r#"{"tenant": "acme", "module": "files@2.0", "parameters"?: {}}"#,
        EventType::TenantUpgraded => r#"{"tenant": "acme", "modules"?: ["users@2.0"]}"#,
        EventType::TenantDisabled | EventType::TenantDeleted => r#"{"tenant": "acme", "module"?: "files"}"#,
        EventType::CandidateOpened => {
            r#"{"id": "MR-42", "template": "registry_template", "sources"?: ["candidates/mr-42/changelog.yaml"], "labels"?: {}, "ttl"?: "72h", "contexts"?: []}"#
        }
        EventType::CandidateUpdated => {
            r#"{"id": "MR-42", "sources"?: [...], "labels"?: {}, "ttl"?: "72h", "contexts"?: []}"#
        }
        EventType::CandidateMerged | EventType::CandidateAbandoned => r#"{"id": "MR-42"}"#,
        EventType::ModuleRequested => r#"{"module": "registry", "env"?: "sandbox1"}"#,
        EventType::ApplyRequested => r#"{"env"?: "dev", "prune"?: false, "adopt"?: false, "skip_migrations"?: false}"#,
    }
}

/// The operation an event asks for. `env` is the consumer's environment (the default of
/// events that may name another).
pub fn map(env: &str, e: &Envelope) -> Result<Operation, Rejection> {
    let Some(t) = EventType::parse(&e.kind) else {
        return Err(reject(
            RejectKind::UnknownType,
            format!(
                "unknown event type {:?} (pgplane acts on {})",
                e.kind,
                EventType::ALL.iter().map(|t| t.as_str()).collect::<Vec<_>>().join(", ")
            ),
        ));
    };
    let s = schema(t);
    let op = match t {
        EventType::CandidateOpened => {
            let d: CandidateData = data(e, t, s)?;
            let id = candidate_id(t, d.id.as_ref(), e)?;
            match &d.template {
                Some(tpl) => check_name("the template", tpl)?,
                None => return Err(reject(RejectKind::InvalidData, format!("{t} needs `data.template` ({s})"))),
            }
            ttl_secs(d.ttl.as_deref())?;
            Operation::BranchCreate { id, data: d }
        }
        EventType::CandidateUpdated => {
            let d: CandidateData = data(e, t, s)?;
            let id = candidate_id(t, d.id.as_ref(), e)?;
            if let Some(tpl) = &d.template {
                check_name("the template", tpl)?;
            }
            ttl_secs(d.ttl.as_deref())?;
            Operation::BranchReset { id, data: d }
        }
        EventType::CandidateMerged | EventType::CandidateAbandoned => {
            let d: CandidateRef = data(e, t, s)?;
            Operation::BranchDelete { id: candidate_id(t, d.id.as_ref(), e)? }
        }
        EventType::ApplyRequested => {
            let d: ApplyData = data(e, t, s)?;
            let env = d.env.clone().unwrap_or_else(|| env.to_string());
            check_name("the environment", &env)?;
            Operation::Apply { env, data: d }
        }
        EventType::ModuleRequested => {
            let d: ModuleData = data(e, t, s)?;
            check_name("the module", &d.module)?;
            let env = d.env.clone().unwrap_or_else(|| env.to_string());
            check_name("the environment", &env)?;
            Operation::Module { env, module: d.module }
        }
        EventType::TenantCreated => {
            let d: TenantCreatedData = data(e, t, s)?;
            let tenant = tenant_name(t, d.tenant.as_ref(), e)?;
            if d.modules.is_empty() {
                return Err(reject(
                    RejectKind::InvalidData,
                    format!("{t} enables no module: give `data.modules` ({s})"),
                ));
            }
            for m in &d.modules {
                check_name("the module", m)?;
            }
            Operation::TenantAdd { tenant, modules: d.modules.clone(), parameters: d.parameters.clone(), data: d }
        }
        EventType::TenantModuleEnabled => {
            let d: TenantData = data(e, t, s)?;
            let tenant = tenant_name(t, d.tenant.as_ref(), e)?;
            let Some(module) = d.module.clone() else {
                return Err(reject(RejectKind::InvalidData, format!("{t} needs `data.module` ({s})")));
            };
            check_name("the module", &module)?;
            Operation::TenantAdd {
                tenant,
                modules: vec![module.clone()],
                parameters: d.parameters.clone(),
                data: TenantCreatedData {
                    tenant: d.tenant,
                    modules: vec![module],
                    parameters: d.parameters,
                    ..Default::default()
                },
            }
        }
        EventType::TenantUpgraded => {
            let d: TenantData = data(e, t, s)?;
            let tenant = tenant_name(t, d.tenant.as_ref(), e)?;
            let mut modules = d.modules.clone();
            modules.extend(d.module.clone());
            for m in &modules {
                check_name("the module", m)?;
            }
            Operation::TenantUpgrade { tenant, modules }
        }
        EventType::TenantDisabled | EventType::TenantDeleted => {
            let d: TenantData = data(e, t, s)?;
            let tenant = tenant_name(t, d.tenant.as_ref(), e)?;
            if let Some(m) = &d.module {
                check_name("the module", m)?;
            }
            if t == EventType::TenantDisabled {
                Operation::TenantDisable { tenant, module: d.module }
            } else {
                Operation::TenantRemove { tenant, module: d.module }
            }
        }
    };
    Ok(op)
}

/// What to do with events of unknown types (`events.unknown_types`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UnknownTypes {
    /// Count and skip them (other consumers of the topic may know them).
    #[default]
    Skip,
    /// Record them as dead letters (and send them to the dead-letter topic).
    DeadLetter,
}

/// What to do with poison events: unparseable, invalid, or whose job failed after its
/// attempts (`events.on_failure`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// Record it as a dead letter with the reason; later events of its key go on.
    #[default]
    DeadLetter,
    /// Keep its key stopped (later events of the key wait) until an operator runs
    /// `pgplane events retry ID` or `pgplane events skip ID`.
    Block,
}

/// What becomes of a consumed event (the `outcome` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Its job is queued or running.
    Queued,
    Succeeded,
    /// The same id was consumed before: nothing done.
    Duplicate,
    /// An unknown type (skipped by policy), or skipped by an operator.
    Skipped,
    /// Poison, recorded as a dead letter; its key went on.
    DeadLettered,
    /// Poison under `on_failure: block`: its key waits for `events retry|skip`.
    Blocked,
    /// Its job was cancelled by an operator.
    Cancelled,
}

impl Outcome {
    pub const ALL: [Outcome; 7] = [
        Outcome::Queued,
        Outcome::Succeeded,
        Outcome::Duplicate,
        Outcome::Skipped,
        Outcome::DeadLettered,
        Outcome::Blocked,
        Outcome::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Queued => "queued",
            Outcome::Succeeded => "succeeded",
            Outcome::Duplicate => "duplicate",
            Outcome::Skipped => "skipped",
            Outcome::DeadLettered => "dead_lettered",
            Outcome::Blocked => "blocked",
            Outcome::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Outcome> {
        Outcome::ALL.into_iter().find(|o| o.as_str() == s)
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the consumer records for an event that did not parse or map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Disposition {
    pub outcome: Outcome,
    /// Also written to the dead-letter stream (table, and topic with Kafka).
    pub dead_letter: bool,
    /// Its key is held (later jobs of the key are not run).
    pub hold: bool,
}

/// What happens to a rejected event. A poison event without a key cannot hold anything:
/// it is dead-lettered whatever the policy.
pub fn dispose(r: &Rejection, unknown: UnknownTypes, on_failure: OnFailure, has_key: bool) -> Disposition {
    let dead = Disposition { outcome: Outcome::DeadLettered, dead_letter: true, hold: false };
    match (r.why, unknown, on_failure) {
        (RejectKind::UnknownType, UnknownTypes::Skip, _) => {
            Disposition { outcome: Outcome::Skipped, dead_letter: false, hold: false }
        }
        (RejectKind::UnknownType, UnknownTypes::DeadLetter, _) => dead,
        (_, _, OnFailure::Block) if has_key => {
            Disposition { outcome: Outcome::Blocked, dead_letter: false, hold: true }
        }
        _ => dead,
    }
}

/// The job key of an event key: jobs with the same key run one at a time, in order. Keys
/// are per environment (the consumer's).
pub fn job_key(env: &str, event_key: &str) -> String {
    format!("event/{env}/{event_key}")
}

/// Kafka's default partitioner (murmur2 of the key, as the Java client computes it): the
/// embedded queue puts a key in the partition Kafka would.
pub fn partition_of(key: &str, partitions: i32) -> i32 {
    let h = murmur2(key.as_bytes()) & 0x7fff_ffff;
    (h % partitions.max(1) as u32) as i32
}

fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len();
    let mut h = SEED ^ (len as u32);
    let chunks = data.chunks_exact(4);
    let tail = chunks.remainder();
    for c in chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    match tail.len() {
        3 => {
            h ^= u32::from(tail[2]) << 16;
            h ^= u32::from(tail[1]) << 8;
            h ^= u32::from(tail[0]);
            h = h.wrapping_mul(M);
        }
        2 => {
            h ^= u32::from(tail[1]) << 8;
            h ^= u32::from(tail[0]);
            h = h.wrapping_mul(M);
        }
        1 => {
            h ^= u32::from(tail[0]);
            h = h.wrapping_mul(M);
        }
        _ => {}
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// How many partitions one of `members` consumers takes: an even share, rounded up.
pub fn fair_share(partitions: usize, members: usize) -> usize {
    partitions.div_ceil(members.max(1))
}

/// Which partitions a consumer gives up and which it tries to take, given what it owns,
/// which are free (no owner) and its fair share. It keeps the ones it has (no needless
/// moves); it releases the highest-numbered beyond its share.
pub fn rebalance(owned: &[i32], free: &[i32], share: usize) -> (Vec<i32>, Vec<i32>) {
    let mut owned: Vec<i32> = owned.to_vec();
    owned.sort_unstable();
    if owned.len() > share {
        return (owned.split_off(share), Vec::new());
    }
    let want = share - owned.len();
    let mut free: Vec<i32> = free.iter().copied().filter(|p| !owned.contains(p)).collect();
    free.sort_unstable();
    free.truncate(want);
    (Vec::new(), free)
}

/// A status event: `{id, type: "<type>.succeeded|failed", source, subject, time, data: {job,
/// error, …}}`. The id is stable (the outbox row's), so a consumer de-duplicates
/// re-deliveries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StatusEvent {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub source: String,
    pub subject: Option<String>,
    pub time: String,
    pub specversion: String,
    /// `{job, error, event, outcome, env, credentials, result}`; never a password.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub data: serde_json::Value,
}

/// The status event's type: `candidate.opened.succeeded`, `tenant.created.failed`.
pub fn status_type(event_type: &str, ok: bool) -> String {
    format!("{event_type}.{}", if ok { "succeeded" } else { "failed" })
}

/// Builds the status event of outbox row `seq` (its id is `pgplane-status-<seq>`).
pub fn status_event(seq: i64, kind: &str, subject: Option<&str>, time: &str, data: serde_json::Value) -> StatusEvent {
    StatusEvent {
        id: format!("pgplane-status-{seq}"),
        kind: kind.to_string(),
        source: "pgplane".to_string(),
        subject: subject.map(str::to_string),
        time: time.to_string(),
        specversion: "1.0".to_string(),
        data,
    }
}

/// The events section of a manifest (`events:`), validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventsSpec {
    /// `None`: the embedded queue (the control database's own log).
    pub kafka: Option<KafkaSpec>,
    pub on_failure: OnFailure,
    pub unknown_types: UnknownTypes,
    /// Attempts of an event's job before it counts as failed.
    pub max_attempts: i32,
    /// The consumer stops reading while this many event jobs wait for a worker.
    pub max_queued: i64,
    /// `apply.requested` may ask for `prune` (drops what the manifest no longer lists).
    /// Off by default: whoever can produce to the stream is not the operator.
    pub allow_prune: bool,
    /// `apply.requested` may ask for `adopt` (takes over objects someone else re-created
    /// under a managed name). Off by default, as `allow_prune`.
    pub allow_adopt: bool,
}

impl EventsSpec {
    pub fn new() -> EventsSpec {
        EventsSpec { max_attempts: 3, max_queued: 10_000, ..Default::default() }
    }
}

/// `events.kafka`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KafkaSpec {
    /// `host:port,host:port`.
    pub brokers: String,
    pub topic: String,
    /// The consumer group: Kafka's committed offsets (for monitoring) are stored under it,
    /// and pgplane's own offsets are kept per group in the control database.
    pub group: String,
    pub status_topic: Option<String>,
    pub dead_letter_topic: Option<String>,
    /// librdkafka properties passed through as given (`security.protocol`,
    /// `sasl.mechanisms`, `sasl.username`, `sasl.password`, `ssl.ca.location`, …), with
    /// `${VAR}`s expanded. Values may hold secrets: never print them.
    pub options: BTreeMap<String, String>,
}

/// `events:` as written in the manifest.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEvents {
    #[serde(default)]
    pub kafka: Option<RawKafka>,
    #[serde(default)]
    pub on_failure: Option<OnFailure>,
    #[serde(default)]
    pub unknown_types: Option<UnknownTypes>,
    #[serde(default)]
    pub max_attempts: Option<i32>,
    #[serde(default)]
    pub max_queued: Option<i64>,
    #[serde(default)]
    pub allow_prune: bool,
    #[serde(default)]
    pub allow_adopt: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKafka {
    pub brokers: String,
    pub topic: String,
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub status_topic: Option<String>,
    #[serde(default)]
    pub dead_letter_topic: Option<String>,
    /// Passed through to librdkafka.
    #[serde(default)]
    pub options: BTreeMap<String, serde_yaml::Value>,
}

/// librdkafka properties pgplane sets itself: the manifest may not override them.
const RESERVED_OPTIONS: &[&str] = &[
    "bootstrap.servers",
    "group.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "auto.offset.reset",
    "enable.idempotence",
];

/// Validates `events:`; `expand` resolves `${VAR}` in brokers and option values. Errors
/// name the key (the manifest adds file and line).
pub fn spec(raw: &RawEvents, expand: &dyn Fn(&str) -> Result<String, String>) -> Result<EventsSpec, (String, String)> {
    let mut s = EventsSpec::new();
    s.on_failure = raw.on_failure.unwrap_or_default();
    s.unknown_types = raw.unknown_types.unwrap_or_default();
    s.allow_prune = raw.allow_prune;
    s.allow_adopt = raw.allow_adopt;
    if let Some(n) = raw.max_attempts {
        if !(1..=100).contains(&n) {
            return Err(("max_attempts".into(), format!("events.max_attempts is {n}; use 1 to 100")));
        }
        s.max_attempts = n;
    }
    if let Some(n) = raw.max_queued {
        if n < 1 {
            return Err(("max_queued".into(), format!("events.max_queued is {n}; use at least 1")));
        }
        s.max_queued = n;
    }
    if let Some(k) = &raw.kafka {
        let brokers = expand(&k.brokers).map_err(|m| ("brokers".to_string(), format!("events.kafka.brokers: {m}")))?;
        if brokers.trim().is_empty() {
            return Err(("brokers".into(), "events.kafka.brokers is empty; write host:port[,host:port]".into()));
        }
        let topic_ok = |t: &str| {
            !t.is_empty()
                && t.len() <= 249
                && t.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        };
        for (key, t) in [("topic", Some(&k.topic)), ("status_topic", k.status_topic.as_ref())]
            .into_iter()
            .chain([("dead_letter_topic", k.dead_letter_topic.as_ref())])
        {
            if let Some(t) = t {
                if !topic_ok(t) {
                    return Err((
                        key.into(),
                        format!("events.kafka.{key} {t:?} is not a Kafka topic name (A-Z a-z 0-9 . _ -)"),
                    ));
                }
            }
        }
        let group = k.group.clone().unwrap_or_else(|| "pgplane".to_string());
        if group.trim().is_empty() {
            return Err(("group".into(), "events.kafka.group is empty".into()));
        }
        let mut options = BTreeMap::new();
        for (name, v) in &k.options {
            if RESERVED_OPTIONS.contains(&name.as_str()) {
                return Err((
                    name.clone(),
                    format!("events.kafka.options.{name} is set by pgplane (brokers, group and offsets are its own)"),
                ));
            }
            let text = match v {
                serde_yaml::Value::String(s) => s.clone(),
                serde_yaml::Value::Number(n) => n.to_string(),
                serde_yaml::Value::Bool(b) => b.to_string(),
                _ => {
                    return Err((
                        name.clone(),
                        format!("events.kafka.options.{name} must be a string, number or boolean"),
                    ))
                }
            };
            let value = expand(&text).map_err(|m| (name.clone(), format!("events.kafka.options.{name}: {m}")))?;
            options.insert(name.clone(), value);
        }
        s.kafka = Some(KafkaSpec {
            brokers,
            topic: k.topic.clone(),
            group,
            status_topic: k.status_topic.clone(),
            dead_letter_topic: k.dead_letter_topic.clone(),
            options,
        });
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(json: &str) -> Envelope {
        parse(json.as_bytes(), None).unwrap_or_else(|e| panic!("{json}: {e}"))
    }

    #[test]
    fn envelopes() {
        let e = env(r#"{"id":"1","type":"candidate.opened","subject":"MR-1","specversion":"1.0","data":{"x":1}}"#);
        assert_eq!((e.id.as_str(), e.kind.as_str(), e.subject.as_deref()), ("1", "candidate.opened", Some("MR-1")));
        // The type from the header, as existing producers send it.
        let h = parse(br#"{"id":"2","data":{}}"#, Some("tenant.created")).map(|e| e.kind);
        assert_eq!(h.as_deref(), Ok("tenant.created"));
        // Agreeing header and envelope are fine; disagreeing ones are poison.
        assert!(parse(br#"{"id":"2","type":"a.b"}"#, Some("a.b")).is_ok());
        let bad = |p: &[u8], h: Option<&str>| parse(p, h).map(|_| ()).map_err(|r| (r.why, r.reason));
        for (payload, header, needle) in [
            (&b"not json"[..], None, "not JSON"),
            (b"[1]", None, "not a JSON object"),
            (br#"{"type":"a"}"#, None, "no `id`"),
            (br#"{"id":" ","type":"a"}"#, None, "no `id`"),
            (br#"{"id":"1"}"#, None, "no `type`"),
            (br#"{"id":1,"type":"a"}"#, None, "must be a string"),
            (br#"{"id":"1","type":"a","data":[1]}"#, None, "must be an object"),
            (br#"{"id":"1","type":"a"}"#, Some("b"), "disagree"),
            (br#"{"id":"1\u0000","type":"a"}"#, None, "NUL"),
        ] {
            let r = bad(payload, header).expect_err("rejected");
            assert_eq!(r.0, RejectKind::Unparseable);
            assert!(r.1.contains(needle), "{} -> {}", String::from_utf8_lossy(payload), r.1);
        }
        let big = format!(r#"{{"id":"1","type":"a","data":{{"x":"{}"}}}}"#, "y".repeat(MAX_EVENT_BYTES));
        assert!(bad(big.as_bytes(), None).is_err_and(|r| r.1.contains("more than")));
    }

    fn op(json: &str) -> Result<Operation, (RejectKind, String)> {
        map("dev", &env(json)).map_err(|r| (r.why, r.reason))
    }

    #[test]
    fn every_type_maps_to_its_job_kind() {
        let cases = [
            (
                r#"{"id":"1","type":"tenant.created","data":{"tenant":"acme","modules":["users","files@2.0"],"parameters":{"loadReference":"true"}}}"#,
                "tenant_add",
                "acme",
            ),
            (
                r#"{"id":"1","type":"tenant.module.enabled","data":{"tenant":"acme","module":"files@2.0"}}"#,
                "tenant_add",
                "acme",
            ),
            (
                r#"{"id":"1","type":"tenant.upgraded","subject":"acme","data":{"modules":["users@2.0"]}}"#,
                "tenant_upgrade",
                "acme",
            ),
            (r#"{"id":"1","type":"tenant.disabled","data":{"tenant":"acme"}}"#, "tenant_disable", "acme"),
            (
                r#"{"id":"1","type":"tenant.deleted","data":{"tenant":"acme","module":"files"}}"#,
                "tenant_remove",
                "acme",
            ),
            (
                r#"{"id":"1","type":"candidate.opened","data":{"id":"MR-1","template":"t","sources":["a.yaml"]}}"#,
                "branch_create",
                "MR-1",
            ),
            (r#"{"id":"1","type":"candidate.updated","subject":"MR-1"}"#, "branch_reset", "MR-1"),
            (r#"{"id":"1","type":"candidate.merged","data":{"id":"MR-1"}}"#, "branch_delete", "MR-1"),
            (r#"{"id":"1","type":"candidate.abandoned","subject":"MR-1"}"#, "branch_delete", "MR-1"),
            (
                r#"{"id":"1","type":"module.requested","data":{"module":"registry","env":"sandbox1"}}"#,
                "apply",
                "registry",
            ),
            (r#"{"id":"1","type":"apply.requested"}"#, "apply", "apply"),
        ];
        let mut kinds = std::collections::BTreeSet::new();
        for (json, kind, resource) in cases {
            let o = op(json).unwrap_or_else(|e| panic!("{json}: {e:?}"));
            assert_eq!((o.job_kind(), o.resource().as_str()), (kind, resource), "{json}");
            kinds.insert(env(json).kind);
        }
        assert_eq!(kinds.len(), EventType::ALL.len(), "every type has a case");
        assert_eq!(
            op(r#"{"id":"1","type":"module.requested","data":{"module":"registry","env":"sandbox1"}}"#)
                .ok()
                .and_then(|o| o.env().map(str::to_string)),
            Some("sandbox1".into())
        );
        assert_eq!(
            op(r#"{"id":"1","type":"apply.requested"}"#).ok().and_then(|o| o.env().map(str::to_string)),
            Some("dev".into()),
            "the consumer's environment by default"
        );
    }

    #[test]
    fn bad_data_is_poison_and_names_the_schema() {
        for (json, needle) in [
            (r#"{"id":"1","type":"candidate.opened","data":{"id":"MR-1"}}"#, "needs `data.template`"),
            (r#"{"id":"1","type":"candidate.opened","data":{"template":"t"}}"#, "names no candidate"),
            (r#"{"id":"1","type":"candidate.merged","data":{"id":"MR 1"}}"#, "not a valid name"),
            (r#"{"id":"1","type":"candidate.merged","data":{"id":"MR-1","password":"x"}}"#, "unknown field `password`"),
            (r#"{"id":"1","type":"tenant.created","data":{"tenant":"acme","modules":[]}}"#, "enables no module"),
            (r#"{"id":"1","type":"tenant.created","data":{"tenant":"acme"}}"#, "missing field `modules`"),
            (r#"{"id":"1","type":"module.requested","data":{}}"#, "missing field `module`"),
            (r#"{"id":"1","type":"apply.requested","data":{"env":"-x"}}"#, "not a valid name"),
            (r#"{"id":"1","type":"candidate.updated","data":{"id":"MR-1","ttl":"soon"}}"#, "ttl"),
        ] {
            let (why, reason) = op(json).expect_err(json);
            assert_eq!(why, RejectKind::InvalidData, "{json}");
            assert!(reason.contains(needle), "{json} -> {reason}");
        }
        let (why, reason) = op(r#"{"id":"1","type":"invoice.paid"}"#).expect_err("unknown");
        assert_eq!(why, RejectKind::UnknownType);
        assert!(reason.contains("candidate.opened"), "lists the known types: {reason}");
    }

    #[test]
    fn dispositions() {
        let r = |why| Rejection { why, reason: String::new() };
        let d = |why, u, f, k| {
            let d = dispose(&r(why), u, f, k);
            (d.outcome, d.dead_letter, d.hold)
        };
        use OnFailure::*;
        use Outcome::*;
        use RejectKind::*;
        assert_eq!(d(UnknownType, UnknownTypes::Skip, Block, true), (Skipped, false, false));
        assert_eq!(d(UnknownType, UnknownTypes::DeadLetter, Block, true), (DeadLettered, true, false));
        assert_eq!(d(InvalidData, UnknownTypes::Skip, DeadLetter, true), (DeadLettered, true, false));
        assert_eq!(d(Unparseable, UnknownTypes::Skip, Block, true), (Blocked, false, true));
        assert_eq!(d(Unparseable, UnknownTypes::Skip, Block, false), (DeadLettered, true, false), "no key to hold");
    }

    #[test]
    fn partitions_as_kafka_puts_them() {
        // Reference values from kafka-python's port of the Java client's murmur2.
        assert_eq!(murmur2(b"21"), 0xc5f2_f8ec);
        assert_eq!(murmur2(b""), 0x106e_08d9);
        assert_eq!(murmur2(b"kafka"), 0xd067_cf64);
        assert_eq!(partition_of("tenant/acme", 16), 5);
        for k in ["a", "tenant/acme", "MR-42"] {
            let p = partition_of(k, 16);
            assert!((0..16).contains(&p));
            assert_eq!(p, partition_of(k, 16), "stable");
        }
    }

    #[test]
    fn rebalancing() {
        assert_eq!(fair_share(16, 3), 6);
        assert_eq!(fair_share(16, 0), 16);
        // Too many: give up the highest.
        assert_eq!(rebalance(&[0, 5, 3, 9], &[], 2), (vec![5, 9], vec![]));
        // Too few: take free ones, lowest first, up to the share.
        assert_eq!(rebalance(&[2], &[7, 1, 2, 4], 3), (vec![], vec![1, 4]));
        assert_eq!(rebalance(&[1, 2], &[3], 2), (vec![], vec![]));
    }

    #[test]
    fn status_events_never_carry_secrets_only_where_to_fetch_them() {
        let o = op(r#"{"id":"1","type":"module.requested","data":{"module":"registry","env":"s1"}}"#).expect("maps");
        let c = o.credentials("dev").expect("hint");
        assert_eq!(c["command"], "pgplane credentials registry --env s1 --format env");
        assert_eq!(c["k8s_secret"], "s1-registry-db");
        let o = op(r#"{"id":"1","type":"tenant.created","data":{"tenant":"acme","modules":["users","files@2.0"]}}"#)
            .expect("maps");
        assert_eq!(o.credentials("dev").expect("hint")[1]["k8s_secret"], "dev-files-acme-db");
        let s = status_event(7, &status_type("candidate.opened", true), Some("MR-1"), "t", serde_json::json!({}));
        assert_eq!((s.id.as_str(), s.kind.as_str()), ("pgplane-status-7", "candidate.opened.succeeded"));
    }

    #[test]
    fn manifest_section() {
        let raw: RawEvents = serde_yaml::from_str(
            "kafka:\n  brokers: ${B}\n  topic: requests\n  status_topic: outcomes\n  options:\n    sasl.password: ${P}\n    request.timeout.ms: 5000\non_failure: block\n",
        )
        .expect("yaml");
        let expand = |s: &str| Ok::<_, String>(s.replace("${B}", "k:9092").replace("${P}", "secret"));
        let s = spec(&raw, &expand).expect("valid");
        let k = s.kafka.expect("kafka");
        assert_eq!((k.brokers.as_str(), k.group.as_str()), ("k:9092", "pgplane"));
        assert_eq!(k.options.get("sasl.password").map(String::as_str), Some("secret"));
        assert_eq!(k.options.get("request.timeout.ms").map(String::as_str), Some("5000"));
        assert_eq!(s.on_failure, OnFailure::Block);
        let raw: RawEvents =
            serde_yaml::from_str("kafka:\n  brokers: k\n  topic: t\n  options:\n    group.id: x\n").expect("yaml");
        assert!(spec(&raw, &expand).is_err_and(|(k, m)| k == "group.id" && m.contains("set by pgplane")));
        let raw: RawEvents = serde_yaml::from_str("kafka:\n  brokers: k\n  topic: 'a b'\n").expect("yaml");
        assert!(spec(&raw, &expand).is_err_and(|(k, _)| k == "topic"));
    }
}
