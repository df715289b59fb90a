//! `pgplane destroy`: drops everything pgplane manages for one environment — branch and
//! template databases, tenants' and modules' schemas, extensions, databases and roles — and
//! forgets their records, in one operation (a job of kind `destroy`). The plan is
//! `pgplane_core::destroy::plan_destroy`; this module reads what it needs, holds the locks,
//! runs it and checks that nothing of the environment is left.
//!
//! Identity is respected throughout: a role or database re-created outside pgplane under a
//! recorded name is never dropped (the planner's rule; copies by the OID their rows hold),
//! and every statement is checked against the OID the plan saw right before it runs.
//!
//! Locks: the one-mutator lock (like apply), and, on a connection of their own, every
//! branch's lock and every template's build and swap locks of the environment, taken
//! without waiting: a branch or template operation still running makes destroy refuse.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use pgplane_core::destroy::{plan_destroy, Copy, CopyKind, DestroyPlan, Fate, Identity};
use pgplane_core::ident::{fit_identifier, quote_ident};
use pgplane_core::model::{Desired, ObjectKind};
use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use crate::conn::Role;
use crate::control::{self, CONTROL_DB};
use crate::error::{Error, Result};
use crate::events::Events;
use crate::exec::{Executor, Progress};
use crate::locks::{self, Lock};
use crate::observe::{self, Depth};
use crate::ops::{Ctx, Session};
use crate::provision::EventsProgress;
use crate::secrets::Keyring;

/// The `destroy` job's request: the environment is the job's own `env`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DestroyRequest {}

/// How a caller takes part in a destroy.
pub struct DestroyHooks<'a> {
    /// Sees the plan computed under the locks before anything runs (the CLI prints it and
    /// asks); returns false to decline. Not called when there is nothing to destroy.
    pub approve: &'a mut dyn FnMut(&DestroyPlan) -> bool,
    pub lock_timeout: Duration,
    /// The executor's progress; `None`: through the events.
    pub progress: Option<&'a dyn Progress>,
}

/// What a destroy did.
#[derive(Debug)]
pub struct DestroyReport {
    pub plan: DestroyPlan,
    pub declined: bool,
    /// Steps run (copies and actions).
    pub applied: usize,
    /// What of the environment is still recorded afterwards (kept because it is not
    /// pgplane's to drop, or on a server the manifest does not list), for people.
    pub remaining: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct DestroySummary {
    pub env: String,
    pub changes: usize,
    pub applied: usize,
    pub declined: bool,
    pub remaining: Vec<String>,
}

impl DestroyReport {
    pub fn summary(&self) -> DestroySummary {
        DestroySummary {
            env: self.plan.env.clone(),
            changes: self.plan.changes(),
            applied: self.applied,
            declined: self.declined,
            remaining: self.remaining.clone(),
        }
    }

    /// Why the environment is not entirely gone, if it is not.
    pub fn incomplete(&self) -> Option<String> {
        (!self.remaining.is_empty()).then(|| {
            format!("environment {} is not entirely gone; still recorded: {}", self.plan.env, self.remaining.join("; "))
        })
    }
}

/// The plan without changing anything (`--dry-run`): `None` when there is no control
/// database (pgplane manages nothing on these servers). Never creates anything.
pub async fn preview(ctx: &mut Ctx, file: &Path, env: &str) -> Result<Option<DestroyPlan>> {
    let s = open(ctx, file, env).await?;
    let Some(control) = control::open_existing(s.servers.first(), s.first_admin()).await? else {
        return Ok(None);
    };
    let copies = copies(&control, env).await?;
    let records = control::read_records(&control).await?;
    let (observed, _) = observe::observe(&s.servers, &s.admins, &s.desired, records, Depth::Cached(&control)).await?;
    Ok(Some(plan_destroy(env, copies, &observed).map_err(|e| Error::invalid(e.to_string()))?))
}

/// [`destroy_with`] for jobs: the plan is approved as computed, locks wait up to 300 s.
pub async fn destroy(ctx: &mut Ctx, file: &Path, env: &str, events: &dyn Events) -> Result<DestroyReport> {
    let mut yes = |_: &DestroyPlan| true;
    let hooks = DestroyHooks { approve: &mut yes, lock_timeout: Duration::from_secs(300), progress: None };
    destroy_with(ctx, file, env, hooks, events).await
}

/// Plans under the locks, lets the caller approve, drops, forgets, and reports what is
/// left. Without a control database there is nothing to destroy (and none is created).
pub async fn destroy_with(
    ctx: &mut Ctx,
    file: &Path,
    env: &str,
    hooks: DestroyHooks<'_>,
    events: &dyn Events,
) -> Result<DestroyReport> {
    events.stage("plan", &format!("reading what pgplane manages in env {env}"));
    let s = open(ctx, file, env).await?;
    if control::open_existing(s.servers.first(), s.first_admin()).await?.is_none() {
        let plan = plan_destroy(env, Vec::new(), &pgplane_core::observed::Observed::default())
            .map_err(|e| Error::invalid(e.to_string()))?;
        return Ok(DestroyReport { plan, declined: false, applied: 0, remaining: Vec::new() });
    }
    let (lock, control) = s.lock(hooks.lock_timeout).await?;
    refuse_unfinished_jobs(&control, env, ctx.operation).await?;
    let copies = copies(&control, env).await?;
    let _held = hold_copy_locks(&s, env, &copies).await?;
    let records = control::read_records(&control).await?;
    let (observed, _) = observe::observe(&s.servers, &s.admins, &s.desired, records, Depth::Deep).await?;
    control::fill_oids(&control, env, &observed).await?;
    let env_roles: Vec<(String, String)> = observed
        .records
        .iter()
        .filter(|r| r.origin.env == env && r.object.kind == ObjectKind::Role)
        .map(|r| (r.object.server.clone(), r.object.name.clone()))
        .collect();
    let plan = plan_destroy(env, copies, &observed).map_err(|e| Error::invalid(e.to_string()))?;
    events.stage("plan", &format!("{} step(s)", plan.changes()));
    if plan.changes() == 0 {
        let remaining = remaining(&control, env).await?;
        return Ok(DestroyReport { plan, declined: false, applied: 0, remaining });
    }
    if !(hooks.approve)(&plan) {
        return Ok(DestroyReport { plan, declined: true, applied: 0, remaining: Vec::new() });
    }

    events.stage("copies", "dropping branch and template databases");
    let mut applied = 0;
    for step in &plan.copies {
        lock.ensure_held().await?;
        applied += drop_copy(&s, &control, env, step).await?;
    }
    // A template's row goes once its database and leftovers are dropped or not pgplane's.
    let templates = plan.copies.iter().filter(|c| c.copy.kind != CopyKind::Branch);
    let unreachable: BTreeSet<&str> =
        templates.clone().filter(|c| c.fate == Fate::Unreachable).map(|c| c.copy.owner.as_str()).collect();
    let finished_templates: BTreeSet<&str> =
        templates.map(|c| c.copy.owner.as_str()).filter(|t| !unreachable.contains(t)).collect();
    for t in finished_templates {
        control
            .execute("DELETE FROM pgplane.templates WHERE env = $1 AND name = $2", &[&env, &t])
            .await
            .context("forgetting a template")?;
    }

    if plan.objects.changes() > 0 {
        events.stage("drop", &format!("{} action(s)", plan.objects.changes()));
        let keys = Keyring::load(&s.home)?;
        let adapter = EventsProgress::new(events);
        let progress: &dyn Progress = hooks.progress.unwrap_or(&adapter);
        let mut exec = Executor::new(&s.servers, &control, &lock, &keys, Default::default());
        applied += exec.run(&plan.objects, progress).await?;
    }

    events.stage("forget", "removing the environment's remaining records");
    let mut by_server: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for (server, db) in plan.forgotten_databases() {
        by_server.entry(server).or_default().push(db);
    }
    for (server, dbs) in by_server {
        control::forget_observations(&control, &server, &dbs).await?;
    }
    // Registered tenants of the environment: their storage went with the drops above.
    crate::tenants::registry::forget_env(&control, env).await?;
    // Password generations of the roles that went. A rotated role's row stays: a role
    // re-created under that name continues its generation, so a password rotated away
    // never works again (see `control::forget`); generation 1 is what a missing row means.
    let still: BTreeSet<(String, String)> = control::read_records(&control)
        .await?
        .into_iter()
        .filter(|r| r.object.kind == ObjectKind::Role)
        .map(|r| (r.object.server, r.object.name))
        .collect();
    for (server, role) in env_roles.iter().filter(|k| !still.contains(*k)) {
        control
            .execute(
                "DELETE FROM pgplane.role_secrets WHERE server = $1 AND role = $2 AND generation = 1",
                &[server, role],
            )
            .await
            .context("forgetting a dropped role's verified password")?;
    }
    let remaining = remaining(&control, env).await?;
    drop(lock);
    Ok(DestroyReport { plan, declined: false, applied, remaining })
}

/// The session with an empty desired state: everything of `env` is an orphan.
async fn open(ctx: &mut Ctx, file: &Path, env: &str) -> Result<Session> {
    let mut s = Session::open(ctx, file, Some(env)).await?;
    s.desired = Desired { env: env.to_string(), ..Desired::default() };
    Ok(s)
}

/// Another job of the environment still queued or running (its lock held) would create or
/// change what destroy drops: refuse, naming it.
async fn refuse_unfinished_jobs(control: &Client, env: &str, this: Option<i64>) -> Result<()> {
    // A `running` row whose lock nobody holds is a process that died: it runs no more.
    let sql = format!(
        "SELECT j.id, j.kind, j.status FROM pgplane.jobs j
          WHERE j.env = $1 AND j.id <> $2 AND (j.status = 'queued' OR (j.status = 'running' AND {}))
          ORDER BY j.id",
        locks::job_lock_held_sql("j")
    );
    let rows = control.query(&sql, &[&env, &this.unwrap_or(-1)]).await.context("reading the environment's jobs")?;
    if rows.is_empty() {
        return Ok(());
    }
    let jobs: Vec<String> = rows
        .iter()
        .map(|r| format!("{} {} ({})", r.get::<_, String>(1), r.get::<_, i64>(0), r.get::<_, String>(2)))
        .collect();
    Err(Error::busy(format!(
        "environment {env} has unfinished jobs: {}; wait for them or cancel them (`pgplane job cancel ID`), then \
         destroy again",
        jobs.join(", ")
    )))
}

/// The environment's branch and template databases, with what their rows say about
/// their identity.
async fn copies(control: &Client, env: &str) -> Result<Vec<Copy>> {
    let mut out = Vec::new();
    for r in control
        .query("SELECT id, database, server, database_oid FROM pgplane.branches WHERE env = $1", &[&env])
        .await
        .context("reading the environment's branches")?
    {
        let oid: Option<u32> = r.get(3);
        out.push(Copy {
            kind: CopyKind::Branch,
            owner: r.get(0),
            database: r.get(1),
            server: r.get(2),
            identity: match oid {
                None => Identity::NotCreated,
                Some(0) => Identity::ByName,
                Some(oid) => Identity::Oid(oid),
            },
        });
    }
    // `database_oid` through to_jsonb: a read-only preview also reads a control database
    // an older pgplane created and did not migrate.
    for r in control
        .query(
            "SELECT name, server, building, built_at IS NOT NULL,
                    (pg_catalog.to_jsonb(t) OPERATOR(pg_catalog.->>) 'database_oid')::pg_catalog.oid
               FROM pgplane.templates t WHERE env = $1",
            &[&env],
        )
        .await
        .context("reading the environment's templates")?
    {
        let (name, server, building, built, oid): (String, String, Option<String>, bool, Option<u32>) =
            (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
        let identity = match (oid, built) {
            (Some(oid), _) => Identity::Oid(oid),
            (None, true) => Identity::ByName,
            (None, false) => Identity::NotCreated,
        };
        if let Some(building) = building {
            // A build that did not finish: its build database and a retired template, as
            // the next build would drop them.
            for database in [building, fit_identifier(&format!("{name}__retired"))] {
                out.push(Copy {
                    kind: CopyKind::TemplateLeftover,
                    owner: name.clone(),
                    server: server.clone(),
                    database,
                    identity: Identity::ByName,
                });
            }
        }
        out.push(Copy { kind: CopyKind::Template, owner: name, server, database: r.get(0), identity });
    }
    Ok(out)
}

/// Takes every branch lock and every template's build and swap locks of the environment
/// without waiting, on one control connection (returned: the locks last as long as it).
async fn hold_copy_locks(s: &Session, env: &str, copies: &[Copy]) -> Result<Client> {
    let c = s.servers.first().connect_as(Some(CONTROL_DB), Role::Branch).await?;
    c.batch_execute("SET idle_session_timeout = 0").await?;
    for copy in copies {
        let wanted: Vec<(Lock, String)> = match copy.kind {
            CopyKind::Branch => {
                let id = pgplane_core::branch::sanitize(&copy.owner).unwrap_or_else(|_| copy.owner.clone());
                vec![(Lock::named(locks::BRANCH, format!("{env}/{id}")), format!("branch {}", copy.owner))]
            }
            CopyKind::Template | CopyKind::TemplateLeftover => {
                let key = format!("{}/{}", copy.server, copy.owner);
                vec![
                    (Lock::named(locks::TEMPLATE_BUILD, key.clone()), format!("template {} (a build)", copy.owner)),
                    (Lock::named(locks::TEMPLATE, key), format!("template {} (a branch copy)", copy.owner)),
                ]
            }
        };
        for (lock, what) in wanted {
            if lock.held_here(&c).await? {
                continue;
            }
            if !lock.try_lock(&c).await? {
                return Err(Error::busy(format!(
                    "an operation on {what} of env {env} is running; wait for it to end, then destroy again"
                )));
            }
        }
    }
    Ok(c)
}

/// Runs one copy's step: drops its database if it is still the one planned, and forgets a
/// branch's row. Returns the steps run (0 or 1).
async fn drop_copy(s: &Session, control: &Client, env: &str, step: &pgplane_core::destroy::CopyStep) -> Result<usize> {
    let c = &step.copy;
    match &step.fate {
        Fate::Unreachable => return Ok(0),
        Fate::Drop { oid, is_template } => {
            let admin = s.servers.get(&c.server)?.connect_as(None, Role::Apply).await?;
            let now: Option<u32> = admin
                .query_opt(
                    "SELECT oid FROM pg_catalog.pg_database WHERE datname OPERATOR(pg_catalog.=) $1::pg_catalog.text",
                    &[&c.database],
                )
                .await?
                .map(|r| r.get(0));
            match now {
                None => {}
                Some(now) if now != *oid => {
                    return Err(Error::conflict(format!(
                        "database {} is no longer the one the plan saw (OID {oid}, now {now}): it was dropped or \
                         re-created outside pgplane meanwhile; nothing more runs, run destroy again",
                        c.database
                    )))
                }
                Some(_) => {
                    let d = quote_ident(&c.database);
                    if *is_template {
                        admin
                            .batch_execute(&format!("ALTER DATABASE {d} IS_TEMPLATE false"))
                            .await
                            .map_err(crate::exec::pg_error)
                            .with_context(|| format!("unmarking template {}", c.database))?;
                    }
                    admin
                        .batch_execute(&format!("DROP DATABASE {d} WITH (FORCE)"))
                        .await
                        .map_err(crate::exec::pg_error)
                        .with_context(|| {
                            format!("dropping {} {} (database {})", c.kind.as_str(), c.owner, c.database)
                        })?;
                }
            }
        }
        Fate::Keep { why } => tracing::warn!(database = %c.database, "{why}"),
        Fate::Gone => {}
    }
    if c.kind == CopyKind::Branch {
        control
            .execute("DELETE FROM pgplane.branches WHERE env = $1 AND id = $2", &[&env, &c.owner])
            .await
            .context("forgetting a branch")?;
    }
    Ok(1)
}

/// What of `env` the control database still records, for people.
async fn remaining(control: &Client, env: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for r in control::read_records(control).await?.into_iter().filter(|r| r.origin.env == env) {
        out.push(format!("{} [{}]", r.object.display(), r.object.server));
    }
    for r in control
        .query("SELECT id, database FROM pgplane.branches WHERE env = $1 ORDER BY id", &[&env])
        .await
        .context("reading the environment's branches")?
    {
        out.push(format!("branch {} (database {})", r.get::<_, String>(0), r.get::<_, String>(1)));
    }
    for r in control
        .query("SELECT name FROM pgplane.templates WHERE env = $1 ORDER BY name", &[&env])
        .await
        .context("reading the environment's templates")?
    {
        out.push(format!("template {}", r.get::<_, String>(0)));
    }
    Ok(out)
}
