//! `tenant upgrade --all --module M@V`: every registered tenant of a module moved to one
//! version — the canaries first, one at a time, then the rest `jobs` at a time — stopping
//! after `max_failures` failures.
//!
//! **Invariant:** each tenant is upgraded once. A tenant's progress (pending, provision,
//! migrate, done, failed) is recorded in `pgplane.tenant_upgrades`, and its row's version
//! becomes the new one only when its migrations completed; a re-run (or another worker
//! after a crash) takes the tenants whose version is not the new one yet, and each
//! tenant's ledger runs what is still pending, never a migration twice. Tenants not yet
//! upgraded keep running the old version throughout: nothing locks more than the tenant
//! being migrated.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use futures_util::StreamExt;
use pgplane_core::plan::{Plan, PlanOptions};
use pgplane_core::tenant::{self as core, Direction, ModuleState};
use serde::Serialize;

use super::{failure_of, lock_on, migrate_tenant, registry, run_options, unlock_on, Pending, Sources};
use crate::error::{Error, Result};
use crate::events::Events;
use crate::migrate;
use crate::ops::{Ctx, ManifestArgs, Session};

/// What to upgrade, and how.
#[derive(Debug, Clone)]
pub struct FanOut {
    pub module: String,
    /// `None`: the newest version.
    pub version: Option<String>,
    /// Tenants migrated at once after the canaries.
    pub jobs: usize,
    /// How many tenants go first, one at a time; a failure among them stops the rest.
    pub canary: usize,
    /// Stop starting tenants after this many failures (at least 1).
    pub max_failures: usize,
    pub allow_downgrade: bool,
    pub dry_run: bool,
    pub lock_timeout: Duration,
}

/// One tenant's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct TenantOutcome {
    pub tenant: String,
    pub from: Option<String>,
    pub canary: bool,
    /// pending (not started), provision, migrate, done, failed
    pub stage: String,
    pub applied: Vec<String>,
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct FanOutReport {
    pub module: String,
    pub to_version: String,
    pub dry_run: bool,
    /// Actions the provisioning plan ran (usually none: versions change migrations only).
    pub applied: usize,
    #[serde(skip)]
    pub plan: Plan,
    pub tenants: Vec<TenantOutcome>,
    pub done: usize,
    pub failed: usize,
    /// Not started because the fan-out stopped.
    pub not_started: usize,
    /// Why it stopped before the end.
    pub stopped: Option<String>,
    /// Tenants left alone (at the version already, disabled, newer), said once each.
    pub notes: Vec<String>,
    /// Dry runs: each tenant's pending migrations.
    pub pending: Vec<Pending>,
}

impl FanOutReport {
    /// A one-line outcome, and whether it is a failure.
    pub fn summary(&self) -> (String, bool) {
        let total = self.tenants.len();
        let mut line = format!(
            "module {} to {}: {} of {total} tenant(s) upgraded, {} failed, {} not started",
            self.module, self.to_version, self.done, self.failed, self.not_started
        );
        if let Some(why) = &self.stopped {
            line.push_str(&format!(" (stopped: {why})"));
        }
        (line, self.failed > 0 || self.stopped.is_some())
    }
}

/// Checks a fan-out against the manifest alone: the module has per-tenant storage and
/// declares the version.
pub fn precheck(manifest: &pgplane_core::manifest::Manifest, f: &FanOut) -> Result<()> {
    let m = core::tenant_module(manifest, &f.module).map_err(Error::invalid)?;
    core::resolve_version(m, f.version.as_deref()).map_err(Error::invalid)?.ok_or_else(|| {
        Error::invalid(format!("module {} declares no `versions:`; there is nothing to upgrade to", m.name))
    })?;
    Ok(())
}

/// Upgrades every registered tenant of `f.module` that runs an older version.
pub async fn upgrade_all(ctx: &mut Ctx, args: &ManifestArgs, f: &FanOut, events: &dyn Events) -> Result<FanOutReport> {
    events.stage("plan", &format!("module {}", f.module));
    let mut s = Session::open(ctx, &args.file, args.env.as_deref()).await?;
    let env = s.desired.env.clone();
    let m = core::tenant_module(&s.manifest, &f.module).map_err(Error::invalid)?.clone();
    let to = core::resolve_version(&m, f.version.as_deref()).map_err(Error::invalid)?.ok_or_else(|| {
        Error::invalid(format!("module {} declares no `versions:`; there is nothing to upgrade to", m.name))
    })?;
    let max_failures = f.max_failures.max(1);
    let jobs = f.jobs.max(1);
    let mut report = FanOutReport {
        module: m.name.clone(),
        to_version: to.clone(),
        dry_run: f.dry_run,
        applied: 0,
        plan: Plan::default(),
        tenants: Vec::new(),
        done: 0,
        failed: 0,
        not_started: 0,
        stopped: None,
        notes: Vec::new(),
        pending: Vec::new(),
    };
    let candidates = candidates(&s, &m, &to, f.allow_downgrade, &mut report.notes)?;
    if s.manifest.tenants.iter().any(|t| t.modules.contains(&m.name)) {
        report.notes.push(format!(
            "tenants listed in {} follow it: apply migrates them to the newest version",
            s.manifest.file.display()
        ));
    }
    report.tenants = candidates
        .iter()
        .enumerate()
        .map(|(i, (t, from))| TenantOutcome {
            tenant: t.clone(),
            from: from.clone(),
            canary: i < f.canary,
            stage: "pending".into(),
            applied: Vec::new(),
            error: None,
        })
        .collect();
    if candidates.is_empty() {
        return Ok(report);
    }
    // The desired state with every candidate at the new version.
    let at_new = |reg: &mut core::Registry| {
        for (t, _) in &candidates {
            if let Some(tm) = reg.tenant_mut(t).and_then(|r| r.modules.iter_mut().find(|x| x.module == m.name)) {
                tm.version = Some(to.clone());
            }
        }
    };

    if f.dry_run {
        at_new(&mut s.registry);
        s.place(None).await?;
        report.plan = s.plan_readonly(PlanOptions::default(), false).await?;
        report.pending = dry_pending(&s, &m, &to, &candidates, jobs).await?;
        return Ok(report);
    }

    crate::control::create_if_missing(s.first_admin()).await?;
    let progress_db = crate::control::ensure_as(s.servers.first(), crate::conn::Role::Branch).await?;
    // It holds the tenants' locks while they migrate: never let the server end it for idling.
    progress_db
        .batch_execute("SET idle_session_timeout = 0; SET idle_in_transaction_session_timeout = 0")
        .await
        .map_err(anyhow::Error::from)?;
    let job = ctx.operation;
    for (t, from) in &candidates {
        registry::set_progress(&progress_db, &env, t, &m.name, from.as_deref(), &to, "pending", None, job).await?;
        events.item(t, "pending", &format!("{} -> {to}", from.as_deref().unwrap_or("-")));
    }

    // Provisioning: the environment's plan under the lock, as apply runs it.
    events.stage("provision", &format!("{} tenant(s)", candidates.len()));
    let (lock, control) = s.lock(f.lock_timeout).await?;
    s.registry = registry::load(&control, &env).await?;
    at_new(&mut s.registry);
    s.place(Some(&control)).await?;
    let locked = s.plan_current(lock, control, PlanOptions::default()).await?;
    if locked.plan.changes() > 0 {
        let adapter = crate::provision::EventsProgress::new(events);
        let (n, captured) = s.execute(ctx, &locked, crate::runner::kind::TENANT_UPGRADE, &adapter).await?;
        s.refresh_cache(&locked, captured).await?;
        report.applied = n;
    }
    report.plan = locked.plan.clone();
    drop(locked);
    for (t, from) in &candidates {
        registry::set_progress(&progress_db, &env, t, &m.name, from.as_deref(), &to, "provision", None, job).await?;
        events.item(t, "provision", "");
    }

    events.stage("migrate", &format!("{} tenant(s), {} at a time after {} canary", candidates.len(), jobs, f.canary));
    let keys = ctx.keys()?;
    let logins = migrate::session_logins(&s, keys).await?;
    let sources = Sources::default();
    let failures = AtomicUsize::new(0);
    let finished = AtomicUsize::new(0);
    let total = candidates.len() as u64;
    events.progress(0, total, "tenants upgraded");
    let one = |i: usize| {
        let (t, from) = &candidates[i];
        let (failures, finished, logins, s, progress_db, m, to, sources) =
            (&failures, &finished, &logins, &s, &progress_db, &m, &to, &sources);
        let env = &env;
        async move {
            let stop = if failures.load(Ordering::SeqCst) >= max_failures {
                Some(format!("{max_failures} failure(s)"))
            } else {
                crate::cancel::current().and_then(|c| c.reason())
            };
            if let Some(why) = stop {
                return (i, Outcome::NotStarted(why));
            }
            let out =
                upgrade_one(s, logins, sources, progress_db, env, t, from.as_deref(), m, to, f, job, events).await;
            if matches!(out, Outcome::Failed(..)) {
                failures.fetch_add(1, Ordering::SeqCst);
            }
            let n = finished.fetch_add(1, Ordering::SeqCst) + 1;
            events.progress(n as u64, total, "tenants upgraded");
            (i, out)
        }
    };
    let canaries = f.canary.min(candidates.len());
    let mut outcomes: Vec<(usize, Outcome)> = Vec::new();
    for i in 0..canaries {
        let (i, out) = one(i).await;
        let failed = matches!(out, Outcome::Failed(..));
        outcomes.push((i, out));
        if failed {
            report.stopped = Some(format!("canary {} failed", candidates[i].0));
            break;
        }
    }
    if report.stopped.is_none() {
        let rest: Vec<(usize, Outcome)> =
            futures_util::stream::iter(canaries..candidates.len()).map(one).buffer_unordered(jobs).collect().await;
        outcomes.extend(rest);
    }
    events.progress_done();
    let mut by_index: BTreeMap<usize, Outcome> = outcomes.into_iter().collect();
    for (i, o) in report.tenants.iter_mut().enumerate() {
        match by_index.remove(&i) {
            Some(Outcome::Done(applied)) => {
                o.stage = "done".into();
                o.applied = applied;
                report.done += 1;
            }
            Some(Outcome::Failed(error, applied)) => {
                o.stage = "failed".into();
                o.error = Some(error);
                o.applied = applied;
                report.failed += 1;
            }
            Some(Outcome::NotStarted(why)) => {
                report.not_started += 1;
                if report.stopped.is_none() {
                    report.stopped = Some(why);
                }
            }
            None => report.not_started += 1,
        }
    }
    events.stage("summary", &report.summary().0);
    Ok(report)
}

enum Outcome {
    Done(Vec<String>),
    Failed(String, Vec<String>),
    NotStarted(String),
}

/// Registered tenants of `m` that run another version than `to`, sorted by name, with
/// their version; the others are noted.
fn candidates(
    s: &Session,
    m: &pgplane_core::manifest::ModuleSpec,
    to: &str,
    allow_downgrade: bool,
    notes: &mut Vec<String>,
) -> Result<Vec<(String, Option<String>)>> {
    let mut out = Vec::new();
    for t in &s.registry.tenants {
        let Some(tm) = t.module(&m.name) else { continue };
        match tm.state {
            ModuleState::Disabled => {
                notes.push(format!(
                    "{}: disabled; it stays at {} until enabled and upgraded",
                    t.name,
                    show(&tm.version)
                ));
                continue;
            }
            ModuleState::Purging => continue,
            ModuleState::Enabled => {}
        }
        match core::direction(m, tm.version.as_deref(), Some(to)).map_err(Error::invalid)? {
            Direction::Same => {}
            Direction::Up => out.push((t.name.clone(), tm.version.clone())),
            Direction::Down if allow_downgrade => notes.push(format!(
                "{}: runs {}, newer than {to}; a fan-out only upgrades: roll tenants back one at a time \
                 (`pgplane tenant upgrade {} --module {}@{to} --allow-downgrade`)",
                t.name,
                show(&tm.version),
                t.name,
                m.name
            )),
            Direction::Down => notes.push(format!(
                "{}: runs {}, newer than {to}; left alone (a downgrade needs --allow-downgrade)",
                t.name,
                show(&tm.version)
            )),
        }
    }
    Ok(out)
}

fn show(v: &Option<String>) -> &str {
    v.as_deref().unwrap_or("-")
}

/// One tenant: under its lock, the recorded target, its migrations as its own role, then
/// its new version.
#[allow(clippy::too_many_arguments)]
async fn upgrade_one(
    s: &Session,
    logins: &crate::conn::Logins,
    sources: &Sources,
    progress_db: &tokio_postgres::Client,
    env: &str,
    tenant: &str,
    from: Option<&str>,
    m: &pgplane_core::manifest::ModuleSpec,
    to: &str,
    f: &FanOut,
    job: Option<i64>,
    events: &dyn Events,
) -> Outcome {
    // The tenant's lock on the fan-out's control session (no connection per tenant); the
    // lock dies with the session should this process die.
    if let Err(e) = lock_on(progress_db, env, tenant, f.lock_timeout).await {
        let e = format!("{e:#}");
        events.item(tenant, "failed", &e);
        return Outcome::Failed(e, vec![]);
    }
    let result: anyhow::Result<Outcome> = async {
        // Someone (a re-run, another worker) may have upgraded it meanwhile.
        let row = progress_db
            .query_opt(
                "SELECT version, state FROM pgplane.tenant_modules WHERE env = $1 AND tenant = $2 AND module = $3",
                &[&env, &tenant, &m.name],
            )
            .await
            .context("reading the tenant's module")?;
        let Some(row) = row else { return Ok(Outcome::Failed("the tenant's module is gone".into(), vec![])) };
        let (version, state): (Option<String>, String) = (row.get(0), row.get(1));
        if version.as_deref() == Some(to) {
            registry::set_progress(progress_db, env, tenant, &m.name, from, to, "done", None, job).await?;
            events.item(tenant, "done", "at the version already");
            return Ok(Outcome::Done(vec![]));
        }
        if state != "enabled" {
            let why = format!("its module is {state} now");
            registry::set_progress(progress_db, env, tenant, &m.name, from, to, "failed", Some(&why), job).await?;
            return Ok(Outcome::Failed(why, vec![]));
        }
        registry::set_target(progress_db, env, tenant, &m.name, Some(to), job).await?;
        registry::set_progress(progress_db, env, tenant, &m.name, from, to, "migrate", None, job).await?;
        events.item(tenant, "migrate", &format!("{} -> {to}", from.unwrap_or("-")));
        let runs = migrate_tenant(s, logins, sources, tenant, &m.name, &run_options(f.lock_timeout), events).await;
        let applied: Vec<String> =
            runs.iter().flatten().flat_map(|r| r.targets.iter().flat_map(|t| t.applied.clone())).collect();
        let failure = match &runs {
            Ok(r) => failure_of(r),
            Err(e) => Some(format!("{e:#}")),
        };
        Ok(match failure {
            None => {
                registry::set_version(progress_db, env, tenant, &m.name, Some(to), job).await?;
                registry::set_progress(progress_db, env, tenant, &m.name, from, to, "done", None, job).await?;
                events.item(tenant, "done", &format!("applied {}", applied.len()));
                Outcome::Done(applied)
            }
            Some(e) => {
                registry::set_status(progress_db, env, tenant, &m.name, "failed", Some(&e), job).await?;
                registry::set_progress(progress_db, env, tenant, &m.name, from, to, "failed", Some(&e), job).await?;
                events.item(tenant, "failed", &e);
                Outcome::Failed(e, applied)
            }
        })
    }
    .await;
    if let Err(e) = unlock_on(progress_db, env, tenant).await {
        tracing::warn!(tenant, error = %format!("{e:#}"), "could not give back the tenant's lock");
    }
    result.unwrap_or_else(|e| {
        let e = format!("{e:#}");
        events.item(tenant, "failed", &e);
        Outcome::Failed(e, vec![])
    })
}

/// Dry runs: what each candidate's ledger still lacks of the new version, read as its role.
async fn dry_pending(
    s: &Session,
    m: &pgplane_core::manifest::ModuleSpec,
    to: &str,
    candidates: &[(String, Option<String>)],
    jobs: usize,
) -> Result<Vec<Pending>> {
    let Some(keys) = crate::secrets::Keyring::load_existing(&s.home)? else {
        return Ok(Vec::new());
    };
    let logins = migrate::session_logins(s, &keys).await?;
    let login = |name: &str, role: &str| logins.target(s.servers.get(name)?, role);
    let mut out = Vec::new();
    let endpoints: Vec<&pgplane_core::model::Endpoint> = migrate::module_endpoints(&s.manifest, &s.desired, m, None)?
        .into_iter()
        .filter(|e| candidates.iter().any(|(t, _)| e.tenant.as_deref() == Some(t.as_str())))
        .collect();
    for (choice, eps) in migrate::by_choice(m, endpoints)? {
        let source = migrate::Source::load_choice(&s.manifest.file, &choice)?;
        let opts = migrate::RunOptions { mode: migrate::Mode::Status, jobs, ..run_options(Duration::from_secs(5)) }
            .with_spec(&choice.selected_spec());
        let targets = eps.iter().map(|e| migrate::endpoint_target(m, e, &login)).collect::<anyhow::Result<Vec<_>>>()?;
        for r in migrate::run_all(&source, targets, &opts, &crate::events::Quiet).await {
            out.push(Pending {
                tenant: r.tenant.clone().unwrap_or_default(),
                module: m.name.clone(),
                version: Some(to.to_string()),
                source: source.describe(),
                migrations: r.migrations.iter().filter(|l| l.state.runs()).map(|l| l.name.clone()).collect(),
                note: r.error.clone().or_else(|| (!r.problems.is_empty()).then(|| r.problems.join("; "))),
            });
        }
    }
    Ok(out)
}
