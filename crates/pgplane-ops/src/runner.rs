//! The operations as jobs: each job kind, its typed request (the row's `request`, never a
//! secret), and [`OpsRunner`], which runs them for a worker against the manifest it serves.
//! The CLI runs the same functions inline; `serve` queues them.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::branch::{BranchRequest, Branches, DeployOptions};
use crate::cancel::Cancel;
use crate::error::{Error, Result};
use crate::events::Events;
use crate::jobs::{Done, Job, NewJob, Runner};
use crate::ops::{Ctx, ManifestArgs};

/// Job kinds (the `kind` column).
pub mod kind {
    pub const APPLY: &str = "apply";
    pub const BRANCH_CREATE: &str = "branch_create";
    pub const BRANCH_RESET: &str = "branch_reset";
    pub const BRANCH_DELETE: &str = "branch_delete";
    pub const BRANCH_GC: &str = "branch_gc";
    pub const TEMPLATE_BUILD: &str = "template_build";
    pub const TENANT_ADD: &str = "tenant_add";
    pub const TENANT_UPGRADE: &str = "tenant_upgrade";
    pub const TENANT_DISABLE: &str = "tenant_disable";
    pub const TENANT_ENABLE: &str = "tenant_enable";
    pub const TENANT_REMOVE: &str = "tenant_remove";
    pub const TENANT_INSTALL: &str = "tenant_install";
    pub const TENANT_GC: &str = "tenant_gc";
    pub const DESTROY: &str = "destroy";

    /// Every kind [`super::OpsRunner`] runs (events map only to these).
    pub const ALL: &[&str] = &[
        APPLY,
        BRANCH_CREATE,
        BRANCH_RESET,
        BRANCH_DELETE,
        BRANCH_GC,
        TEMPLATE_BUILD,
        TENANT_ADD,
        TENANT_UPGRADE,
        TENANT_DISABLE,
        TENANT_ENABLE,
        TENANT_REMOVE,
        TENANT_INSTALL,
        TENANT_GC,
        DESTROY,
    ];
}

/// `apply`: provision what the manifest says, then run the modules' migrations.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApplyRequest {
    pub prune: bool,
    pub adopt: bool,
    pub skip_migrations: bool,
    /// Accept a secret key other than the recorded one and set every managed password anew.
    pub new_secret_key: bool,
}

/// `branch_create` / `branch_reset`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BranchJob {
    pub id: String,
    pub template: Option<String>,
    pub sources: Option<Vec<String>>,
    pub contexts: Vec<String>,
    pub labels: Option<BTreeMap<String, String>>,
    /// Time to live in seconds.
    pub ttl_secs: Option<u64>,
}

impl BranchJob {
    pub fn request(&self) -> BranchRequest {
        BranchRequest {
            id: self.id.clone(),
            template: self.template.clone(),
            sources: self.sources.clone(),
            contexts: self.contexts.clone(),
            labels: self.labels.clone(),
            ttl: self.ttl_secs.map(Duration::from_secs),
        }
    }
}

/// `branch_delete`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BranchDeleteJob {
    pub id: String,
    /// A branch that does not exist is not an error (events: `candidate.merged` of a
    /// candidate whose branch expired already).
    pub missing_ok: bool,
}

/// `branch_gc`: drop expired and interrupted branches, and, with a live list, those not in it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GcJob {
    /// Branch ids to keep; `None`: no live list (only expired and interrupted ones go).
    pub keep: Option<Vec<String>>,
    /// A file of live branch ids, one per line, read when the job runs (relative to the manifest).
    pub keep_file: Option<String>,
}

/// `template_build`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TemplateJob {
    pub name: String,
    pub contexts: Option<Vec<String>>,
}

/// Parameter values as strings, whether a request sends `"true"` or `true`.
fn parameter_values<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<BTreeMap<String, String>, D::Error> {
    let raw: BTreeMap<String, serde_json::Value> = Deserialize::deserialize(d)?;
    raw.into_iter()
        .map(|(k, v)| match v {
            serde_json::Value::String(s) => Ok((k, s)),
            serde_json::Value::Bool(b) => Ok((k, b.to_string())),
            serde_json::Value::Number(n) => Ok((k, n.to_string())),
            other => Err(serde::de::Error::custom(format!("parameter {k}: {other} is not true or false"))),
        })
        .collect()
}

fn module_refs(modules: &[String]) -> Result<Vec<pgplane_core::tenant::ModuleRef>> {
    modules.iter().map(|m| pgplane_core::tenant::ModuleRef::parse(m).map_err(Error::invalid)).collect()
}

fn items(modules: &[String], action: pgplane_core::tenant::ItemAction) -> Result<Vec<pgplane_core::tenant::Item>> {
    Ok(module_refs(modules)?
        .into_iter()
        .map(|r| pgplane_core::tenant::Item { module: r.module, version: r.version, action })
        .collect())
}

/// `tenant_add`: register a tenant (or add modules to one) and provision them. The data of
/// the `tenant.created` event has this shape: `{"tenant": "acme", "modules": ["users",
/// "files@2.0"], "parameters": {"loadReference": "true"}}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct TenantAddRequest {
    pub tenant: String,
    /// `MODULE` or `MODULE@VERSION` (the newest when omitted).
    pub modules: Vec<String>,
    #[serde(deserialize_with = "parameter_values")]
    pub parameters: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    /// Time to live, e.g. `72h` (the tenant becomes a preview, purged when it expires).
    pub ttl: Option<String>,
}

impl TenantAddRequest {
    pub fn change(&self) -> Result<pgplane_core::tenant::Change> {
        let expires_at = match &self.ttl {
            None => None,
            Some(t) => {
                let ttl = pgplane_core::manifest::parse_duration(t).map_err(|e| Error::invalid(format!("ttl: {e}")))?;
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                Some(i64::try_from((now + ttl).as_secs()).unwrap_or(i64::MAX))
            }
        };
        for (k, v) in &self.labels {
            if k.trim().is_empty() || k.contains('=') || k.chars().chain(v.chars()).any(char::is_control) {
                return Err(Error::invalid(format!(
                    "label {k:?}={v:?}: keys are non-empty without '=', no control characters"
                )));
            }
        }
        Ok(pgplane_core::tenant::Change {
            tenant: self.tenant.clone(),
            items: items(&self.modules, pgplane_core::tenant::ItemAction::Add)?,
            parameters: self.parameters.clone(),
            labels: self.labels.clone(),
            expires_at,
            ..Default::default()
        })
    }
}

/// `tenant_upgrade`: one tenant's modules to a version (`tenant`), or every tenant of one
/// module (`all`), the canaries first, then `jobs` at a time.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct TenantUpgradeRequest {
    pub tenant: Option<String>,
    /// Every registered tenant of the (one) module in `modules`.
    pub all: bool,
    /// `MODULE@VERSION` (or `MODULE`: the newest).
    pub modules: Vec<String>,
    /// Every module of the tenant to its newest version.
    pub all_modules: bool,
    pub jobs: Option<usize>,
    pub canary: usize,
    pub max_failures: Option<usize>,
    pub allow_downgrade: bool,
}

impl TenantUpgradeRequest {
    /// The change of one tenant (`tenant` set, `all` not).
    pub fn change(&self) -> Result<pgplane_core::tenant::Change> {
        let tenant = self.tenant.clone().ok_or_else(|| Error::invalid("name the tenant, or upgrade --all"))?;
        if self.all_modules && !self.modules.is_empty() {
            return Err(Error::invalid("give --module M@VERSION or --all-modules, not both"));
        }
        Ok(pgplane_core::tenant::Change {
            tenant,
            items: items(&self.modules, pgplane_core::tenant::ItemAction::Upgrade)?,
            every: self.all_modules.then_some(pgplane_core::tenant::ItemAction::Upgrade),
            allow_downgrade: self.allow_downgrade,
            ..Default::default()
        })
    }

    /// The fan-out (`all` set).
    pub fn fan_out(&self, dry_run: bool, lock_timeout: Duration) -> Result<crate::tenants::FanOut> {
        if self.tenant.is_some() {
            return Err(Error::invalid("upgrade --all names no tenant"));
        }
        let [one] = module_refs(&self.modules)?
            .try_into()
            .map_err(|_: Vec<_>| Error::invalid("upgrade --all takes exactly one --module M[@VERSION]"))?;
        Ok(crate::tenants::FanOut {
            module: one.module,
            version: one.version,
            jobs: self.jobs.unwrap_or(4),
            canary: self.canary,
            max_failures: self.max_failures.unwrap_or(1),
            allow_downgrade: self.allow_downgrade,
            dry_run,
            lock_timeout,
        })
    }
}

/// `tenant_disable` / `tenant_enable`: some modules (none named: all) of a tenant.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct TenantModulesRequest {
    pub tenant: String,
    pub modules: Vec<String>,
}

impl TenantModulesRequest {
    pub fn change(&self, action: pgplane_core::tenant::ItemAction) -> Result<pgplane_core::tenant::Change> {
        Ok(pgplane_core::tenant::Change {
            tenant: self.tenant.clone(),
            items: items(&self.modules, action)?,
            every: self.modules.is_empty().then_some(action),
            ..Default::default()
        })
    }
}

/// `tenant_remove`: purge some modules (none named: all) of a tenant, or, without `purge`,
/// disable them.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct TenantRemoveRequest {
    pub tenant: String,
    pub modules: Vec<String>,
    pub purge: bool,
}

impl TenantRemoveRequest {
    pub fn change(&self) -> Result<pgplane_core::tenant::Change> {
        let action = if self.purge {
            pgplane_core::tenant::ItemAction::Purge
        } else {
            pgplane_core::tenant::ItemAction::Disable
        };
        TenantModulesRequest { tenant: self.tenant.clone(), modules: self.modules.clone() }.change(action)
    }
}

/// What `POST /api/v1/tenants/{t}/install` asks for one module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum InstallAction {
    /// Add the module (or enable it again).
    Enable,
    Upgrade,
    Disable,
    /// Drop its storage and roles.
    Purge,
}

/// One module of an install request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct InstallItem {
    pub module: String,
    /// enable, upgrade: the version (default the newest).
    #[serde(default)]
    pub version: Option<String>,
    pub action: InstallAction,
}

/// `tenant_install`: several module actions on one tenant in one plan.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct TenantInstallRequest {
    pub tenant: String,
    pub items: Vec<InstallItem>,
    #[serde(deserialize_with = "parameter_values")]
    pub parameters: BTreeMap<String, String>,
}

impl TenantInstallRequest {
    pub fn change(&self) -> Result<pgplane_core::tenant::Change> {
        use pgplane_core::tenant::ItemAction;
        Ok(pgplane_core::tenant::Change {
            tenant: self.tenant.clone(),
            items: self
                .items
                .iter()
                .map(|i| pgplane_core::tenant::Item {
                    module: i.module.clone(),
                    version: i.version.clone(),
                    action: match i.action {
                        InstallAction::Enable => ItemAction::Add,
                        InstallAction::Upgrade => ItemAction::Upgrade,
                        InstallAction::Disable => ItemAction::Disable,
                        InstallAction::Purge => ItemAction::Purge,
                    },
                })
                .collect(),
            parameters: self.parameters.clone(),
            ..Default::default()
        })
    }
}

/// `tenant_gc`: purge previews that expired and, with a live list, those it does not name
/// (by tenant name or `key=value` label).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TenantGcRequest {
    pub keep: Option<Vec<String>>,
    /// A file of live tenant names or labels, read when the job runs (relative to the manifest).
    pub keep_file: Option<String>,
}

/// The key of every job on one branch: they run one at a time, in submission order.
pub fn branch_key(env: &str, id: &str) -> String {
    format!("branch/{env}/{id}")
}

/// A job for `kind` with a typed request.
pub fn new_job(kind: &str, env: &str, resource: Option<&str>, request: &impl Serialize) -> Result<NewJob> {
    let mut j = NewJob::new(kind, Some(env));
    j.resource = resource.map(str::to_string);
    j.request = serde_json::to_value(request).map_err(|e| Error::Internal(e.into()))?;
    // Work on one resource is serialized in submission order.
    j.key = resource.map(|r| format!("{kind_group}/{env}/{r}", kind_group = group(kind)));
    Ok(j)
}

/// Kinds that touch the same thing share a key group: every branch job of one branch.
fn group(kind: &str) -> &str {
    match kind {
        kind::BRANCH_CREATE | kind::BRANCH_RESET | kind::BRANCH_DELETE => "branch",
        kind::TENANT_ADD
        | kind::TENANT_UPGRADE
        | kind::TENANT_DISABLE
        | kind::TENANT_ENABLE
        | kind::TENANT_REMOVE
        | kind::TENANT_INSTALL => "tenant",
        other => other,
    }
}

fn request<T: for<'de> Deserialize<'de>>(job: &Job) -> Result<T> {
    serde_json::from_value(job.request.clone()).map_err(|e| {
        Error::invalid(format!("job {} ({}) has a request this pgplane cannot read: {e}", job.id, job.kind))
    })
}

/// How long a job waits for locks and for sessions on a template.
fn deploy_options() -> DeployOptions {
    DeployOptions {
        lock_timeout: Duration::from_secs(300),
        session_timeout: Duration::from_secs(60),
        live: false,
        // Jobs come from requests: their sources stay inside the manifest's folder.
        confine_to_manifest: true,
    }
}

/// Runs jobs against one manifest (as a `serve` replica or `pgplane worker` does).
pub struct OpsRunner {
    pub home: PathBuf,
    pub manifest: ManifestArgs,
}

impl Runner for OpsRunner {
    fn run<'a>(
        &'a self,
        job: &'a Job,
        events: &'a dyn Events,
        cancel: &'a Cancel,
    ) -> Pin<Box<dyn Future<Output = Result<Done>> + 'a>> {
        Box::pin(crate::cancel::scope(cancel.clone(), self.dispatch(job, events)))
    }
}

impl OpsRunner {
    fn ctx(&self, job: &Job) -> Ctx {
        let mut ctx = Ctx::new(self.home.clone());
        ctx.operation = Some(job.id);
        ctx
    }

    async fn dispatch(&self, job: &Job, events: &dyn Events) -> Result<Done> {
        let mut ctx = self.ctx(job);
        let env = job.env.as_deref().or(self.manifest.env.as_deref());
        match job.kind.as_str() {
            kind::APPLY => {
                let req: ApplyRequest = request(job)?;
                let report = crate::provision::apply(&mut ctx, &self.manifest.file, env, &req, events).await?;
                Ok(Done {
                    changes: i32::try_from(report.applied).unwrap_or(i32::MAX),
                    result: serde_json::to_value(report.summary()).ok(),
                    failed: report.migrations_failed(),
                })
            }
            kind::BRANCH_CREATE | kind::BRANCH_RESET => {
                let req: BranchJob = request(job)?;
                events.stage("deploy", &format!("branch {}", req.id));
                let b = Branches::open(&mut ctx, &self.manifest.file, env).await?;
                let view = b.deploy_branch(&req.request(), job.kind == kind::BRANCH_RESET, &deploy_options()).await?;
                let failed = (view.status == "FAILED")
                    .then(|| view.error.clone().unwrap_or_else(|| format!("branch {} FAILED", view.id)));
                Ok(Done { changes: 1, result: serde_json::to_value(&view).ok(), failed })
            }
            kind::BRANCH_DELETE => {
                let req: BranchDeleteJob = request(job)?;
                events.stage("delete", &format!("branch {}", req.id));
                let b = Branches::open(&mut ctx, &self.manifest.file, env).await?;
                match b.delete(&req.id, &deploy_options()).await.map_err(Error::from) {
                    Ok(view) => Ok(Done { changes: 1, result: serde_json::to_value(&view).ok(), failed: None }),
                    Err(Error::NotFound(why)) if req.missing_ok => {
                        events.stage("delete", &why);
                        Ok(Done {
                            changes: 0,
                            result: Some(serde_json::json!({"id": req.id, "deleted": false, "reason": why})),
                            failed: None,
                        })
                    }
                    Err(e) => Err(e),
                }
            }
            kind::BRANCH_GC => {
                let req: GcJob = request(job)?;
                events.stage("gc", "looking for expired and abandoned branches");
                let b = Branches::open(&mut ctx, &self.manifest.file, env).await?;
                let keep = match (&req.keep, &req.keep_file) {
                    (_, Some(file)) => Some(read_keep_file(&self.manifest.file, file)?),
                    (Some(ids), None) => Some(ids.iter().cloned().collect()),
                    (None, None) => None,
                };
                let dropped = b.gc(keep.as_ref(), false, &deploy_options()).await?;
                events.stage("gc", &format!("dropped {} branch(es)", dropped.len()));
                Ok(Done {
                    changes: i32::try_from(dropped.len()).unwrap_or(i32::MAX),
                    result: serde_json::to_value(&dropped).ok(),
                    failed: None,
                })
            }
            kind::TEMPLATE_BUILD => {
                let req: TemplateJob = request(job)?;
                events.stage("build", &format!("template {}", req.name));
                let b = Branches::open(&mut ctx, &self.manifest.file, env).await?;
                let contexts = req.contexts.clone().unwrap_or_default();
                let report = b.build_template(&req.name, &contexts, &deploy_options()).await?;
                let failed = (!report.ok).then(|| report.error.clone().unwrap_or_else(|| "the build failed".into()));
                Ok(Done { changes: 1, result: serde_json::to_value(&report).ok(), failed })
            }
            kind::TENANT_ADD
            | kind::TENANT_UPGRADE
            | kind::TENANT_DISABLE
            | kind::TENANT_ENABLE
            | kind::TENANT_REMOVE
            | kind::TENANT_INSTALL
            | kind::TENANT_GC => self.tenant_job(&mut ctx, job, env, events).await,
            kind::DESTROY => {
                let _: crate::destroy::DestroyRequest = request(job)?;
                let env = job
                    .env
                    .as_deref()
                    .ok_or_else(|| Error::invalid(format!("destroy job {} names no environment", job.id)))?;
                let report = crate::destroy::destroy(&mut ctx, &self.manifest.file, env, events).await?;
                Ok(Done {
                    changes: i32::try_from(report.applied).unwrap_or(i32::MAX),
                    result: serde_json::to_value(report.summary()).ok(),
                    failed: report.incomplete(),
                })
            }
            other => Err(Error::invalid(format!("job {} has kind {other:?}, which this pgplane does not run", job.id))),
        }
    }
}

impl OpsRunner {
    async fn tenant_job(&self, ctx: &mut Ctx, job: &Job, env: Option<&str>, events: &dyn Events) -> Result<Done> {
        use pgplane_core::tenant::ItemAction;
        let args = ManifestArgs { file: self.manifest.file.clone(), env: env.map(str::to_string) };
        let change = match job.kind.as_str() {
            kind::TENANT_ADD => request::<TenantAddRequest>(job)?.change()?,
            kind::TENANT_DISABLE => request::<TenantModulesRequest>(job)?.change(ItemAction::Disable)?,
            kind::TENANT_ENABLE => request::<TenantModulesRequest>(job)?.change(ItemAction::Enable)?,
            kind::TENANT_REMOVE => request::<TenantRemoveRequest>(job)?.change()?,
            kind::TENANT_INSTALL => request::<TenantInstallRequest>(job)?.change()?,
            kind::TENANT_UPGRADE => {
                let req: TenantUpgradeRequest = request(job)?;
                if req.all {
                    let report =
                        crate::tenants::upgrade_all(ctx, &args, &req.fan_out(false, Duration::from_secs(300))?, events)
                            .await?;
                    let (line, failed) = report.summary();
                    return Ok(Done {
                        changes: i32::try_from(report.done).unwrap_or(i32::MAX),
                        result: serde_json::to_value(&report).ok(),
                        failed: failed.then_some(line),
                    });
                }
                req.change()?
            }
            _ => {
                let req: TenantGcRequest = request(job)?;
                let keep = match (&req.keep, &req.keep_file) {
                    (_, Some(file)) => Some(read_keep_file(&self.manifest.file, file)?),
                    (Some(list), None) => Some(list.iter().cloned().collect()),
                    (None, None) => None,
                };
                let report =
                    crate::tenants::gc(ctx, &args, keep.as_ref(), false, Duration::from_secs(300), events).await?;
                let failed = (!report.failed.is_empty())
                    .then(|| report.failed.iter().map(|(t, e)| format!("{t}: {e}")).collect::<Vec<_>>().join(" | "));
                return Ok(Done {
                    changes: i32::try_from(report.purged.len()).unwrap_or(i32::MAX),
                    result: serde_json::to_value(&report).ok(),
                    failed,
                });
            }
        };
        let mut yes = |_: &pgplane_core::plan::Plan| true;
        let report =
            crate::tenants::change(ctx, &args, &change, crate::tenants::Hooks::job(&mut yes, &job.kind), events)
                .await?;
        Ok(Done {
            changes: i32::try_from(report.applied).unwrap_or(i32::MAX),
            result: serde_json::to_value(&report).ok(),
            failed: report.failed.clone(),
        })
    }
}

/// Reads a live list: branch ids, one per line; `#` comments and blank lines ignored.
/// A relative path is relative to the manifest's folder.
pub fn read_keep_file(manifest: &std::path::Path, file: &str) -> Result<BTreeSet<String>> {
    let path = manifest.parent().unwrap_or(std::path::Path::new(".")).join(file);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| Error::invalid(format!("reading the live list {}: {e}", path.display())))?;
    Ok(text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_string).collect())
}

/// The digest of a manifest's text: workers run only jobs queued for the manifest they
/// serve (replicas share it; a process with another manifest leaves those jobs alone).
pub fn fingerprint(manifest: &std::path::Path) -> Result<String> {
    use sha2::Digest;
    let bytes = std::fs::read(manifest)
        .map_err(|e| Error::invalid(format!("reading the manifest {}: {e}", manifest.display())))?;
    Ok(pgplane_core::ident::hex(&sha2::Sha256::digest(&bytes))[..16].to_string())
}

/// The leader's periodic duties for one environment: queue a branch garbage collection
/// (expired and interrupted branches, and with a live list those not in it) unless one is
/// queued or running already. The gc itself is a job like any other.
pub struct Reconciler {
    pub env: String,
    pub fingerprint: String,
    pub manifest: PathBuf,
    /// The manifest's live list (`branches.keep_file`), if any.
    pub keep_file: Option<String>,
}

impl Reconciler {
    /// Queues a gc job when some branch is due: expired, interrupted, or (with a live
    /// list) not in it. Nothing is queued when there is nothing to drop.
    pub async fn queue_gc(&self, control: &tokio_postgres::Client) -> anyhow::Result<Option<i64>> {
        let records = crate::branch::records(control, &self.env, None, None).await?;
        if records.is_empty() {
            return Ok(None);
        }
        let keep = match &self.keep_file {
            Some(f) => Some(read_keep_file(&self.manifest, f).map_err(|e| anyhow::anyhow!("{e}"))?),
            None => None,
        };
        let now: i64 = control.query_one("SELECT extract(epoch FROM pg_catalog.now())::int8", &[]).await?.get(0);
        let known: Vec<pgplane_core::branch::Known> = records
            .iter()
            .map(|b| pgplane_core::branch::Known {
                id: b.id.clone(),
                expires_at: b.expires_epoch,
                interrupted: crate::branch::is_interrupted(b),
                busy: false,
            })
            .collect();
        if pgplane_core::branch::gc(&known, keep.as_ref(), now).is_empty() {
            return Ok(None);
        }
        let req = GcJob { keep: None, keep_file: self.keep_file.clone() };
        let mut job = new_job(kind::BRANCH_GC, &self.env, Some("gc"), &req).map_err(|e| anyhow::anyhow!("{e}"))?;
        job.fingerprint = Some(self.fingerprint.clone());
        // Three attempts, as every job: a gc is safe to run again, and one whose worker dies
        // is resumed by another instead of waiting for the leader's next interval.
        // Before the backlog of requests: a new leader's gc runs within seconds however many
        // branch creations wait.
        job.priority = crate::jobs::queue::PRIORITY_DUTY;
        let key = job.key.clone().unwrap_or_default();
        if crate::jobs::queue::unfinished_with_key(control, &key).await?.is_some() {
            return Ok(None);
        }
        Ok(Some(crate::jobs::queue::submit(control, &job).await?))
    }
}

impl Reconciler {
    /// Queues a `tenant_gc` job when some preview tenant expired, unless one is queued or
    /// running already.
    pub async fn queue_tenant_gc(&self, control: &tokio_postgres::Client) -> anyhow::Result<Option<i64>> {
        let due = crate::tenants::expired_previews(control, &self.env).await?;
        if due.is_empty() {
            return Ok(None);
        }
        let mut job = new_job(kind::TENANT_GC, &self.env, Some("gc"), &TenantGcRequest::default())
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        job.fingerprint = Some(self.fingerprint.clone());
        job.max_attempts = 1;
        let key = job.key.clone().unwrap_or_default();
        if crate::jobs::queue::unfinished_with_key(control, &key).await?.is_some() {
            return Ok(None);
        }
        Ok(Some(crate::jobs::queue::submit(control, &job).await?))
    }
}

impl crate::jobs::leader::Duties for Reconciler {
    fn run<'a>(
        &'a self,
        control: &'a tokio_postgres::Client,
    ) -> Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send + 'a>> {
        Box::pin(async move {
            if let Some(id) = self.queue_gc(control).await? {
                tracing::info!(job = id, env = %self.env, "queued the periodic branch gc");
            }
            if let Some(id) = self.queue_tenant_gc(control).await? {
                tracing::info!(job = id, env = %self.env, "queued the purge of expired preview tenants");
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgplane_core::tenant::ItemAction;

    #[test]
    fn the_tenant_created_event_is_a_tenant_add_request() {
        let data = r#"{"tenant": "acme", "modules": ["users", "files@2.0"], "parameters": {"loadReference": "true"}}"#;
        let req: TenantAddRequest = serde_json::from_str(data).expect("the event's shape");
        let c = req.change().expect("a change");
        assert_eq!(c.tenant, "acme");
        let items: Vec<(String, Option<String>, ItemAction)> =
            c.items.iter().map(|i| (i.module.clone(), i.version.clone(), i.action)).collect();
        assert_eq!(
            items,
            [("users".into(), None, ItemAction::Add), ("files".into(), Some("2.0".into()), ItemAction::Add)]
        );
        assert_eq!(c.parameters["loadReference"], "true");
        // Booleans as JSON booleans too; a TTL makes it expire.
        let req: TenantAddRequest = serde_json::from_str(
            r#"{"tenant": "pr1", "modules": ["users"], "parameters": {"loadReference": true}, "ttl": "2h"}"#,
        )
        .expect("booleans");
        let c = req.change().expect("a change");
        assert_eq!(c.parameters["loadReference"], "true");
        assert!(c.expires_at.is_some());
        let bad: Result<TenantAddRequest, _> = serde_json::from_str(r#"{"tenant": "x", "parameters": {"a": [1]}}"#);
        assert!(bad.is_err());
        let req = TenantAddRequest { tenant: "x".into(), ttl: Some("soon".into()), ..Default::default() };
        assert!(matches!(req.change(), Err(Error::Invalid(m)) if m.contains("ttl")));
    }

    #[test]
    fn tenant_jobs_share_the_tenants_key() {
        let add = new_job(kind::TENANT_ADD, "dev", Some("acme"), &TenantAddRequest::default())
            .unwrap_or_else(|e| panic!("{e}"));
        let off = new_job(kind::TENANT_DISABLE, "dev", Some("acme"), &TenantModulesRequest::default())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(add.key.as_deref(), Some("tenant/dev/acme"));
        assert_eq!(add.key, off.key, "operations on one tenant run one after another");
        let req = TenantRemoveRequest { tenant: "acme".into(), modules: vec![], purge: true };
        let c = req.change().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((c.every, c.items.len()), (Some(ItemAction::Purge), 0), "no module named: all of them");
    }
}
