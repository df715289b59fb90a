//! Provisioning as one operation: load the manifest, take the lock, plan, (let the caller
//! approve,) execute, refresh the observation cache, then migrate every module with
//! `migrations:`. The CLI's `apply` and the `apply` job both call [`apply_with`].

use std::path::Path;
use std::time::Duration;

use pgplane_core::plan::{Action, Plan, PlanOptions};
use serde::Serialize;

use crate::error::Result;
use crate::events::Events;
use crate::exec::Progress;
use crate::migrate::{self, ModuleRun};
use crate::ops::{Ctx, Session};
use crate::runner::ApplyRequest;

/// What an apply did.
#[derive(Debug)]
pub struct ApplyReport {
    pub plan: Plan,
    /// Actions run (0 when the plan was empty or declined).
    pub applied: usize,
    /// The caller declined the plan; nothing ran.
    pub declined: bool,
    /// The modules' migrations: `None` when none ran (skipped, declined, nothing to
    /// migrate); `Err` when they could not start.
    pub migrations: Option<std::result::Result<Vec<ModuleRun>, String>>,
}

#[derive(Debug, Serialize)]
pub struct ApplySummary {
    pub env: String,
    pub changes: usize,
    pub applied: usize,
    pub migrations_ok: Option<bool>,
}

impl ApplyReport {
    pub fn summary(&self) -> ApplySummary {
        ApplySummary {
            env: self.plan.env.clone(),
            changes: self.plan.changes(),
            applied: self.applied,
            migrations_ok: self
                .migrations
                .as_ref()
                .map(|m| m.as_ref().is_ok_and(|runs| runs.iter().all(ModuleRun::ok))),
        }
    }

    /// Why the migrations after provisioning failed, if they did (provisioning stands).
    pub fn migrations_failed(&self) -> Option<String> {
        match self.migrations.as_ref()? {
            Err(e) => Some(format!("provisioned; migrations did not run: {e}")),
            Ok(runs) => {
                let failed: Vec<String> = runs
                    .iter()
                    .flat_map(|r| r.targets.iter().filter(|t| !t.ok).map(move |t| (r, t)))
                    .map(|(r, t)| {
                        format!(
                            "{} ({}): {}",
                            r.module.as_deref().unwrap_or("?"),
                            t.target,
                            t.error.clone().unwrap_or_else(|| t.problems.join("; "))
                        )
                    })
                    .collect();
                (!failed.is_empty()).then(|| format!("provisioned; migrations failed: {}", failed.join(" | ")))
            }
        }
    }
}

/// How a caller takes part in an apply.
pub struct ApplyHooks<'a> {
    /// Sees the plan computed under the lock before anything runs (the CLI prints it);
    /// returns false to decline. Not called for an empty plan.
    pub approve: &'a mut dyn FnMut(&Plan) -> bool,
    pub lock_timeout: Duration,
    /// Report migrations per target as they run (the CLI on a terminal).
    pub live_migrations: bool,
    /// The executor's progress; `None`: through `events`.
    pub progress: Option<&'a dyn Progress>,
    /// Changes the plan before it is approved (`adopt` keeps only adoptions).
    pub edit: Option<&'a dyn Fn(&mut Plan)>,
    /// The journal's kind (`apply`, `adopt`).
    pub kind: &'a str,
}

/// [`apply_with`] for jobs: the plan is approved as computed, locks wait up to 300 s.
pub async fn apply(
    ctx: &mut Ctx,
    file: &Path,
    env: Option<&str>,
    req: &ApplyRequest,
    events: &dyn Events,
) -> Result<ApplyReport> {
    let mut yes = |_: &Plan| true;
    let hooks = ApplyHooks {
        approve: &mut yes,
        lock_timeout: Duration::from_secs(300),
        live_migrations: false,
        progress: None,
        edit: None,
        kind: "apply",
    };
    apply_with(ctx, file, env, req, hooks, events).await
}

pub async fn apply_with(
    ctx: &mut Ctx,
    file: &Path,
    env: Option<&str>,
    req: &ApplyRequest,
    hooks: ApplyHooks<'_>,
    events: &dyn Events,
) -> Result<ApplyReport> {
    events.stage("plan", "reading the catalog under the lock");
    let mut s = Session::open(ctx, file, env).await?;
    s.new_secret_key = req.new_secret_key;
    let mut locked = s.lock_and_plan(PlanOptions { prune: req.prune, adopt: req.adopt }, hooks.lock_timeout).await?;
    if let Some(edit) = hooks.edit {
        edit(&mut locked.plan);
    }
    let changes = locked.plan.changes();
    events.stage("plan", &format!("{changes} change(s)"));
    if changes == 0 {
        s.refresh_cache(&locked, Vec::new()).await?;
    } else if !(hooks.approve)(&locked.plan) {
        return Ok(ApplyReport { plan: locked.plan.clone(), applied: 0, declined: true, migrations: None });
    }
    let mut applied = 0;
    if changes > 0 {
        events.stage("apply", &format!("{changes} change(s)"));
        let adapter = EventsProgress::new(events);
        let progress: &dyn Progress = hooks.progress.unwrap_or(&adapter);
        let (n, captured) = s.execute(ctx, &locked, hooks.kind, progress).await?;
        s.refresh_cache(&locked, captured).await?;
        applied = n;
    }
    let plan = locked.plan.clone();
    drop(locked);
    if req.skip_migrations || !s.manifest.modules.iter().any(|m| m.migrations.is_some()) {
        return Ok(ApplyReport { plan, applied, declined: false, migrations: None });
    }
    events.stage("migrate", "running the modules' migrations");
    let opts = migrate::RunOptions {
        mode: migrate::Mode::Up,
        selection: migrate::Selection::default(),
        ledger: migrate::LedgerNames::default(),
        retry_failed: false,
        lock_timeout: hooks.lock_timeout,
        jobs: 4,
        live: hooks.live_migrations,
        liquibase: migrate::LiquibaseOptions::default(),
        up_to: None,
    };
    let migrations =
        migrate::run_modules(&s, ctx.keys()?, None, None, None, &opts, events).await.map_err(|e| format!("{e:#}"));
    Ok(ApplyReport { plan, applied, declined: false, migrations: Some(migrations) })
}

/// The executor's progress as events: the `apply` stage counts actions.
pub struct EventsProgress<'a>(pub &'a dyn Events, std::sync::atomic::AtomicU64);

impl<'a> EventsProgress<'a> {
    pub fn new(events: &'a dyn Events) -> EventsProgress<'a> {
        EventsProgress(events, std::sync::atomic::AtomicU64::new(0))
    }
}

impl Progress for EventsProgress<'_> {
    fn start(&self, total: usize) {
        self.1.store(total as u64, std::sync::atomic::Ordering::Relaxed);
        self.0.progress(0, total as u64, "actions");
    }
    fn action(&self, index: usize, action: &Action) {
        tracing::info!(step = index + 1, kind = action.kind.as_str(), target = %action.target, server = %action.server, "action");
        let total = self.1.load(std::sync::atomic::Ordering::Relaxed);
        self.0.progress(index as u64 + 1, total, &format!("actions ({} {})", action.kind.as_str(), action.target));
    }
    fn finish(&self) {
        self.0.progress_done();
    }
}
