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

    /// Every kind [`super::OpsRunner`] runs (events map only to these).
    pub const ALL: &[&str] = &[APPLY, BRANCH_CREATE, BRANCH_RESET, BRANCH_DELETE, BRANCH_GC, TEMPLATE_BUILD];
}

/// `apply`: provision what the manifest says, then run the modules' migrations.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApplyRequest {
    pub prune: bool,
    pub adopt: bool,
    pub skip_migrations: bool,
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
            other => Err(Error::invalid(format!("job {} has kind {other:?}, which this pgplane does not run", job.id))),
        }
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
            Ok(())
        })
    }
}
