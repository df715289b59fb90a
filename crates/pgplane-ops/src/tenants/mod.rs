//! The tenant lifecycle: tenants registered in the control database (`tenant add`, `POST
//! /api/v1/tenants`), their module versions and parameters, disable/enable, purge,
//! fan-out upgrades ([`fanout`]), previews and their garbage collection, placement of
//! `server: auto` databases.
//!
//! **Invariant:** one engine. A tenant operation changes the registry (the desired state,
//! see [`pgplane_core::tenant::edit`]) and then runs the same plan → execute → migrate as
//! `apply`, under the same lock; it never creates or drops anything on its own. A purge
//! runs the planner with pruning but keeps only the drops of the purged tenant's records
//! ([`pgplane_core::tenant::retain_drops`]).
//!
//! **Invariant:** one operation per tenant at a time: every operation on a registered
//! tenant holds its advisory lock ([`crate::locks::TENANT`]) on a control connection of its
//! own, taken before the apply lock.

pub mod fanout;
pub mod registry;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::Context as _;
use pgplane_core::manifest::Manifest;
use pgplane_core::plan::{Plan, PlanOptions};
use pgplane_core::tenant::{
    self as core, Change, Direction, EditError, EditErrorKind, ItemAction, ModuleState, Registry, ServerLoad,
};
use serde::Serialize;
use tokio_postgres::Client;

use crate::conn::Target;
use crate::error::{Error, Result};
use crate::events::Events;
use crate::exec::Progress;
use crate::locks::{self, Lock};
use crate::migrate::{self, ModuleRun};
use crate::ops::{Ctx, ManifestArgs, Session};

pub use fanout::{upgrade_all, FanOut, FanOutReport};

/// The registry with a provisional server (the first) for every `server: auto` tenant
/// database not placed yet: for checking names before any server is asked.
pub fn provisional(manifest: &Manifest, registry: &Registry) -> Registry {
    let mut r = registry.clone();
    let first = manifest.server_names().into_iter().next().unwrap_or_default();
    for (t, m) in unplaced(manifest, &r) {
        set_placement(&mut r, &t, &m, &first);
    }
    r
}

/// (tenant, module) pairs of `server: auto` modules without a server yet, in order.
fn unplaced(manifest: &Manifest, registry: &Registry) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for m in manifest.modules.iter().filter(|m| m.auto_server) {
        for t in manifest.tenants.iter().filter(|t| t.modules.contains(&m.name)) {
            if registry.placement(&t.name, &m.name).is_none() {
                out.push((t.name.clone(), m.name.clone()));
            }
        }
        for t in &registry.tenants {
            for tm in t.modules.iter().filter(|tm| tm.module == m.name && tm.state != ModuleState::Purging) {
                if tm.server.is_none() {
                    out.push((t.name.clone(), m.name.clone()));
                }
            }
        }
    }
    out
}

fn set_placement(r: &mut Registry, tenant: &str, module: &str, server: &str) {
    match r.tenant_mut(tenant) {
        Some(t) => {
            if let Some(tm) = t.modules.iter_mut().find(|m| m.module == module) {
                tm.server = Some(server.to_string());
            }
        }
        None => {
            r.placements.insert((tenant.to_string(), module.to_string()), server.to_string());
        }
    }
}

/// Places every `server: auto` tenant database that has no server yet on the least-loaded
/// server with room (databases counted on each server now), in `registry`. Returns the
/// choices (the caller records them). Out of room everywhere: an error, nothing placed.
pub async fn place(
    manifest: &Manifest,
    registry: &mut Registry,
    admins: &BTreeMap<String, Client>,
) -> anyhow::Result<Vec<core::Placement>> {
    let wanted = unplaced(manifest, registry);
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    let mut servers = Vec::new();
    for name in manifest.server_names() {
        let admin = admins.get(&name).with_context(|| format!("no admin connection to server {name}"))?;
        let n: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_catalog.pg_database
                  WHERE NOT datistemplate AND datname OPERATOR(pg_catalog.<>) ALL (ARRAY['postgres', 'pgplane'])",
                &[],
            )
            .await
            .with_context(|| format!("counting the databases of server {name}"))?
            .get(0);
        let capacity = manifest.servers.iter().find(|s| s.name == name).and_then(|s| s.capacity);
        servers.push(ServerLoad { name, databases: u32::try_from(n).unwrap_or(u32::MAX), capacity });
    }
    let placed = core::place(&wanted, &servers).map_err(|e| anyhow::Error::new(Error::invalid(e)))?;
    for ((t, m), server) in &placed {
        set_placement(registry, t, m, server);
    }
    Ok(placed)
}

/// The lock of one tenant, held on a control connection of its own until dropped.
pub struct TenantLock {
    pub client: Client,
}

impl TenantLock {
    /// Waits up to `timeout` for the tenant's lock.
    pub async fn take(target: &Target, env: &str, tenant: &str, timeout: Duration) -> anyhow::Result<TenantLock> {
        let client = target.connect_named(Some(crate::control::CONTROL_DB), "pgplane-tenant").await?;
        client.batch_execute("SET idle_session_timeout = 0; SET idle_in_transaction_session_timeout = 0").await?;
        let lock = Lock::named(locks::TENANT, format!("{env}/{tenant}"));
        let started = std::time::Instant::now();
        loop {
            if lock.try_lock(&client).await? {
                return Ok(TenantLock { client });
            }
            if started.elapsed() >= timeout {
                return Err(Error::busy(format!(
                    "another operation on tenant {tenant} holds it for more than {}s; try again when it ends \
                     (`pgplane job list --status running`)",
                    timeout.as_secs()
                ))
                .into());
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                reason = crate::cancel::stop_requested() => return Err(Error::Cancelled(reason).into()),
            }
        }
    }
}

/// Takes a tenant's lock on a session that other work shares (a fan-out's control
/// connection), waiting up to `timeout`; give it back with [`unlock_on`]. The lock still dies
/// with the session.
pub async fn lock_on(c: &Client, env: &str, tenant: &str, timeout: Duration) -> anyhow::Result<()> {
    let lock = Lock::named(locks::TENANT, format!("{env}/{tenant}"));
    let started = std::time::Instant::now();
    loop {
        if lock.try_lock(c).await? {
            return Ok(());
        }
        if started.elapsed() >= timeout {
            return Err(Error::busy(format!(
                "another operation on tenant {tenant} holds it for more than {}s",
                timeout.as_secs()
            ))
            .into());
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            reason = crate::cancel::stop_requested() => return Err(Error::Cancelled(reason).into()),
        }
    }
}

/// Gives back a lock taken with [`lock_on`].
pub async fn unlock_on(c: &Client, env: &str, tenant: &str) -> anyhow::Result<()> {
    Lock::named(locks::TENANT, format!("{env}/{tenant}")).unlock(c).await?;
    Ok(())
}

/// Sources loaded once per choice (a fan-out migrates many tenants with the same one).
#[derive(Default)]
pub struct Sources(std::sync::Mutex<BTreeMap<String, std::sync::Arc<migrate::Source>>>);

impl Sources {
    pub fn get(
        &self,
        manifest_file: &std::path::Path,
        choice: &core::MigrationChoice,
    ) -> anyhow::Result<std::sync::Arc<migrate::Source>> {
        let key = format!("{choice:?}");
        if let Some(s) = self.0.lock().map_err(|_| anyhow::anyhow!("source cache poisoned"))?.get(&key) {
            return Ok(s.clone());
        }
        let source = std::sync::Arc::new(migrate::Source::load_choice(manifest_file, choice)?);
        self.0.lock().map_err(|_| anyhow::anyhow!("source cache poisoned"))?.insert(key, source.clone());
        Ok(source)
    }
}

/// How a caller takes part in a tenant operation.
pub struct Hooks<'a> {
    /// Sees the plan computed under the lock before anything runs or is recorded;
    /// returns false to decline. Not called for an empty plan.
    pub approve: &'a mut dyn FnMut(&Plan) -> bool,
    pub lock_timeout: Duration,
    /// Compute and report the plan; change nothing.
    pub dry_run: bool,
    /// The executor's progress; `None`: through `events`.
    pub progress: Option<&'a dyn Progress>,
    /// The job kind the operation is journaled as when it runs outside a job.
    pub kind: &'a str,
}

impl Hooks<'_> {
    /// What jobs use: the plan is approved as computed, locks wait up to 300 s.
    pub fn job<'a>(yes: &'a mut dyn FnMut(&Plan) -> bool, kind: &'a str) -> Hooks<'a> {
        Hooks { approve: yes, lock_timeout: Duration::from_secs(300), dry_run: false, progress: None, kind }
    }
}

/// What a tenant operation did (or, dry, would do).
#[derive(Debug, Serialize)]
pub struct Report {
    pub tenant: String,
    pub dry_run: bool,
    /// The caller declined the plan; nothing ran and nothing was recorded.
    pub declined: bool,
    #[serde(skip)]
    pub plan: Plan,
    pub created: bool,
    /// Actions run.
    pub applied: usize,
    /// Per module: the version change, if any.
    pub versions: Vec<core::VersionChange>,
    pub purged: Vec<String>,
    /// Migrations run after provisioning (or, dry, what would run).
    pub migrations: Vec<ModuleRun>,
    /// Dry runs: the migrations each module would apply.
    pub pending: Vec<Pending>,
    pub notes: Vec<String>,
    /// Why the operation failed after it started (provisioning stands).
    pub failed: Option<String>,
}

/// The migrations a dry run found pending for one module of the tenant.
#[derive(Debug, Serialize)]
pub struct Pending {
    pub tenant: String,
    pub module: String,
    pub version: Option<String>,
    pub source: String,
    pub migrations: Vec<String>,
    pub note: Option<String>,
}

fn edit_error(e: EditError) -> Error {
    match e.kind {
        EditErrorKind::NotFound => Error::NotFound(e.message),
        EditErrorKind::Conflict => Error::Conflict(e.message),
        EditErrorKind::Invalid => Error::Invalid(e.message),
    }
}

/// Checks a change against the manifest alone, before anything is recorded (a job row
/// included): names, modules, versions, parameters, a tenant the manifest lists. What
/// depends on the tenant's state is checked again under the locks.
pub fn precheck(manifest: &Manifest, change: &Change) -> Result<()> {
    match core::edit(manifest, &Registry::default(), change) {
        Ok(_) => Ok(()),
        Err(e) if e.kind == EditErrorKind::NotFound => Ok(()),
        Err(e) => Err(edit_error(e)),
    }
}

/// A downgrade runs the rollbacks of what the newer version added, newest first, as the
/// tenant's role (`migrate rollback --to-tag` semantics): possible when both versions are
/// tags (`to_tag`) of the module's one Liquibase changelog, which holds the rollbacks and
/// whose ledger carries the older version's tag. Returns that tag; anything else (SQL
/// folders, versions with sources of their own) is refused, naming why.
fn downgrade(manifest: &Manifest, v: &core::VersionChange) -> Result<String> {
    use pgplane_core::manifest::VersionSource;
    let m = manifest
        .module(&v.module)
        .ok_or_else(|| Error::invalid(format!("module {:?} is not in the manifest", v.module)))?;
    let source = |name: &Option<String>| name.as_deref().and_then(|n| m.version(n)).map(|x| &x.source);
    match (source(&v.from), source(&v.to)) {
        (Some(VersionSource::ToTag(_)), Some(VersionSource::ToTag(tag))) => Ok(tag.clone()),
        _ => Err(Error::invalid(format!(
            "module {} cannot go back from version {} to {}: only versions that are tags (`to_tag`) of the \
             module's Liquibase changelog can be rolled back (the changelog holds the rollbacks); restore from a \
             backup or add a new version that undoes it",
            v.module,
            v.from.as_deref().unwrap_or("-"),
            v.to.as_deref().unwrap_or("-")
        ))),
    }
}

/// Rolls one tenant's storage of `module` back to the ledger's `tag`, logged in as the
/// tenant's role; the first failure (or refusal: a changeset that cannot be undone stops
/// everything before it runs), if any.
async fn roll_back_tenant(
    s: &Session,
    keys: &crate::secrets::Keyring,
    tenant: &str,
    module: &str,
    tag: &str,
    lock_timeout: Duration,
    events: &dyn Events,
) -> anyhow::Result<Option<String>> {
    let opts = migrate::rollback::RollbackOptions {
        run: run_options(lock_timeout),
        to: pgplane_core::migrate::RollbackTo::Tag(tag.to_string()),
        dry_run: false,
    };
    let runs = migrate::rollback::run_module(s, keys, module, Some(tenant), None, None, &opts, events).await?;
    Ok(runs
        .iter()
        .flat_map(|r| r.targets.iter())
        .find(|t| !t.ok)
        .map(|t| t.error.clone().unwrap_or_else(|| format!("refused: {}", t.refused.join("; ")))))
}

/// Makes a [`Change`] to one tenant: checks it, records it, provisions what it asks for
/// with the environment's plan (pruning only the purged tenant's storage), then migrates
/// the modules it added, enabled or upgraded, as the tenant's own roles.
pub async fn change(
    ctx: &mut Ctx,
    args: &ManifestArgs,
    change: &Change,
    hooks: Hooks<'_>,
    events: &dyn Events,
) -> Result<Report> {
    events.stage("plan", &format!("tenant {}", change.tenant));
    let mut s = Session::open(ctx, &args.file, args.env.as_deref()).await?;
    let env = s.desired.env.clone();
    let tenant = change.tenant.clone();
    // Checked before any lock: a bad request runs nothing.
    let first = core::edit(&s.manifest, &s.registry, change).map_err(edit_error)?;
    for v in first.versions.iter().filter(|v| v.direction == Direction::Down) {
        downgrade(&s.manifest, v)?;
    }
    let mut report = Report {
        tenant: tenant.clone(),
        dry_run: hooks.dry_run,
        declined: false,
        plan: Plan::default(),
        created: first.created,
        applied: 0,
        versions: first.versions.clone(),
        purged: first.purge.clone(),
        migrations: Vec::new(),
        pending: Vec::new(),
        notes: first.notes.clone(),
        failed: None,
    };
    if hooks.dry_run {
        s.registry = first.registry.clone();
        s.place(None).await?;
        let prune = !first.purge.is_empty();
        let mut plan = s.plan_readonly(PlanOptions { prune, adopt: false }, false).await?;
        if prune {
            core::retain_drops(&mut plan, |o| {
                o.env == env && o.tenant.as_deref() == Some(&tenant) && first.purge.contains(&o.module)
            });
        }
        report.pending = preview(&s, &tenant, &first.migrate, &plan).await?;
        report.plan = plan;
        return Ok(report);
    }

    crate::control::create_if_missing(s.first_admin()).await?;
    crate::control::ensure_as(s.servers.first(), crate::conn::Role::Branch).await?;
    let guard = TenantLock::take(s.servers.first(), &env, &tenant, hooks.lock_timeout).await?;
    let (lock, control) = s.lock(hooks.lock_timeout).await?;
    // The registry as it is now, under both locks.
    s.registry = registry::load(&control, &env).await?;
    let edit = core::edit(&s.manifest, &s.registry, change).map_err(edit_error)?;
    let mut downgrades = BTreeMap::new();
    for v in edit.versions.iter().filter(|v| v.direction == Direction::Down) {
        downgrades.insert(v.module.clone(), downgrade(&s.manifest, v)?);
    }
    report.created = edit.created;
    report.versions = edit.versions.clone();
    report.purged = edit.purge.clone();
    report.notes = edit.notes.clone();
    s.registry = edit.registry.clone();
    s.place(Some(&control)).await?;
    let prune = !edit.purge.is_empty();
    let mut locked = s.plan_current(lock, control, PlanOptions { prune, adopt: false }).await?;
    if prune {
        core::retain_drops(&mut locked.plan, |o| {
            o.env == env && o.tenant.as_deref() == Some(&tenant) && edit.purge.contains(&o.module)
        });
    }
    let changes = locked.plan.changes();
    events.stage("plan", &format!("tenant {tenant}: {changes} change(s)"));
    if changes > 0 && !(hooks.approve)(&locked.plan) {
        report.declined = true;
        report.plan = locked.plan.clone();
        return Ok(report);
    }

    // The rows first (the desired state), then the plan computed from them.
    let job = ctx.operation;
    let record = s.registry.tenant(&tenant).cloned().context("the edited tenant")?;
    {
        let tx = locked.control.transaction().await.map_err(anyhow::Error::from)?;
        let mut plain = Vec::new();
        for (module, action) in &edit.rows {
            match action {
                ItemAction::Upgrade => {
                    let to = record.module(module).and_then(|m| m.version.clone());
                    registry::set_target(&tx, &env, &tenant, module, to.as_deref(), job).await?;
                }
                ItemAction::Add | ItemAction::Enable => plain.push((module.as_str(), "provisioning")),
                ItemAction::Disable => plain.push((module.as_str(), "disabling")),
                ItemAction::Purge => plain.push((module.as_str(), "purging")),
            }
        }
        for status in ["provisioning", "disabling", "purging"] {
            let these: Vec<&str> = plain.iter().filter(|(_, s)| *s == status).map(|(m, _)| *m).collect();
            if !these.is_empty() || (edit.created && status == "provisioning") {
                registry::write(&tx, &env, &record, &these, status, job).await?;
            }
        }
        tx.commit().await.map_err(anyhow::Error::from)?;
    }

    if changes > 0 {
        events.stage("apply", &format!("{changes} change(s)"));
        let adapter = crate::provision::EventsProgress::new(events);
        let progress: &dyn Progress = hooks.progress.unwrap_or(&adapter);
        match s.execute(ctx, &locked, hooks.kind, progress).await {
            Ok((n, captured)) => {
                report.applied = n;
                s.refresh_cache(&locked, captured).await?;
            }
            Err(e) => {
                let msg = format!("{e:#}");
                for (module, _) in &edit.rows {
                    registry::set_status(&guard.client, &env, &tenant, module, "failed", Some(&msg), job).await?;
                }
                return Err(e.into());
            }
        }
    } else {
        s.refresh_cache(&locked, Vec::new()).await?;
    }
    report.plan = locked.plan.clone();
    if !edit.purge.is_empty() {
        registry::forget(&locked.control, &env, &tenant, &edit.purge).await?;
    }
    drop(locked);
    for (module, action) in &edit.rows {
        if *action == ItemAction::Disable {
            registry::set_status(&guard.client, &env, &tenant, module, "disabled", None, job).await?;
        }
    }

    if !edit.migrate.is_empty() {
        events.stage("migrate", &format!("tenant {tenant}"));
        let keys = ctx.keys()?;
        let logins = migrate::session_logins(&s, keys).await?;
        let mut failures = Vec::new();
        for module in &edit.migrate {
            registry::set_status(&guard.client, &env, &tenant, module, "migrating", None, job).await?;
            if let Some(tag) = downgrades.get(module) {
                let failure = match roll_back_tenant(&s, keys, &tenant, module, tag, hooks.lock_timeout, events).await {
                    Ok(f) => f,
                    Err(e) => Some(format!("{e:#}")),
                };
                if let Some(f) = failure {
                    registry::set_status(&guard.client, &env, &tenant, module, "failed", Some(&f), job).await?;
                    failures.push(format!("{module}: {f}"));
                    continue;
                }
                report.notes.push(format!("{module}: rolled back to tag {tag}"));
                // Then up to the version: Liquibase's rollback to a tag undoes the
                // tagDatabase changeset that set it too; running it again leaves the
                // ledger exactly as the version leaves it.
            }
            let runs = migrate_tenant(
                &s,
                &logins,
                &Sources::default(),
                &tenant,
                module,
                &run_options(hooks.lock_timeout),
                events,
            )
            .await;
            let failure = match &runs {
                Ok(runs) => failure_of(runs),
                Err(e) => Some(format!("{e:#}")),
            };
            match &failure {
                None => {
                    let upgraded = edit.versions.iter().find(|v| &v.module == module);
                    match upgraded {
                        Some(v) => {
                            registry::set_version(&guard.client, &env, &tenant, module, v.to.as_deref(), job).await?
                        }
                        None => registry::set_status(&guard.client, &env, &tenant, module, "ready", None, job).await?,
                    }
                }
                Some(f) => {
                    registry::set_status(&guard.client, &env, &tenant, module, "failed", Some(f), job).await?;
                    failures.push(format!("{module}: {f}"));
                }
            }
            if let Ok(runs) = runs {
                report.migrations.extend(runs);
            }
        }
        if !failures.is_empty() {
            report.failed = Some(format!("tenant {tenant}: migrations failed: {}", failures.join(" | ")));
        }
    }
    drop(guard);
    Ok(report)
}

/// How tenant migrations run: `up`, one target at a time per tenant.
pub fn run_options(lock_timeout: Duration) -> migrate::RunOptions {
    migrate::RunOptions {
        mode: migrate::Mode::Up,
        selection: migrate::Selection::default(),
        ledger: migrate::LedgerNames::default(),
        retry_failed: false,
        lock_timeout,
        jobs: 1,
        live: false,
        liquibase: migrate::LiquibaseOptions::default(),
        up_to: None,
    }
}

/// The first failure among migration runs, said in one line.
pub fn failure_of(runs: &[ModuleRun]) -> Option<String> {
    runs.iter().flat_map(|r| r.targets.iter()).find(|t| !t.ok).map(|t| {
        t.error.clone().or_else(|| t.failure.as_ref().map(ToString::to_string)).unwrap_or_else(|| t.problems.join("; "))
    })
}

/// Migrates one tenant's storage of `module` with the source its version and parameters
/// choose (in the session's desired state), logged in as the tenant's role.
pub async fn migrate_tenant(
    s: &Session,
    logins: &crate::conn::Logins,
    sources: &Sources,
    tenant: &str,
    module: &str,
    base: &migrate::RunOptions,
    events: &dyn Events,
) -> anyhow::Result<Vec<ModuleRun>> {
    let m = s.manifest.module(module).with_context(|| format!("module {module:?} is not in the manifest"))?;
    let login = |name: &str, role: &str| logins.target(s.servers.get(name)?, role);
    let mut runs = Vec::new();
    for (choice, endpoints) in
        migrate::by_choice(m, migrate::module_endpoints(&s.manifest, &s.desired, m, Some(tenant))?)?
    {
        let source = sources.get(&s.manifest.file, &choice).with_context(|| format!("module {module}"))?;
        let opts = base.clone().with_spec(&choice.selected_spec());
        let targets = endpoints
            .into_iter()
            .map(|e| migrate::endpoint_target(m, e, &login))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let reports = migrate::run_all(&source, targets, &opts, events).await;
        runs.push(ModuleRun { module: Some(module.to_string()), source: source.describe(), targets: reports });
    }
    Ok(runs)
}

/// What a dry run would migrate: each module's pending migrations in the tenant's storage
/// (read as its role), or all of them when the plan creates the storage.
async fn preview(s: &Session, tenant: &str, modules: &[String], plan: &Plan) -> Result<Vec<Pending>> {
    let mut out = Vec::new();
    if modules.is_empty() {
        return Ok(out);
    }
    let keys = crate::secrets::Keyring::load_existing(&s.home)?;
    for module in modules {
        let Some(m) = s.manifest.module(module) else { continue };
        let endpoints = migrate::module_endpoints(&s.manifest, &s.desired, m, Some(tenant))?;
        for (choice, eps) in migrate::by_choice(m, endpoints)? {
            let source =
                migrate::Source::load_choice(&s.manifest.file, &choice).with_context(|| format!("module {module}"))?;
            let opts = run_options(Duration::from_secs(5)).with_spec(&choice.selected_spec());
            for e in eps {
                let created = plan.actions.iter().any(|a| {
                    a.kind.as_str().starts_with("create_")
                        && (a.object.name == e.database || e.schema.as_deref() == Some(a.object.name.as_str()))
                });
                let all = || -> Result<Vec<String>> {
                    Ok(source
                        .version_units(&opts.selection)?
                        .into_iter()
                        .filter(|u| u.selected)
                        .map(|u| u.name)
                        .collect())
                };
                let (migrations, note) = if created {
                    (all()?, Some("new storage: every migration of the version runs".to_string()))
                } else {
                    match &keys {
                        None => {
                            (Vec::new(), Some("no secret key here: the ledger cannot be read as the tenant".into()))
                        }
                        Some(k) => {
                            let logins = migrate::session_logins(s, k).await?;
                            let login = |name: &str, role: &str| logins.target(s.servers.get(name)?, role);
                            let target = migrate::endpoint_target(m, e, &login)?;
                            let status = migrate::RunOptions { mode: migrate::Mode::Status, ..opts.clone() };
                            let reports = migrate::run_all(&source, vec![target], &status, &crate::events::Quiet).await;
                            match reports.first() {
                                Some(r) if r.error.is_none() => (
                                    r.migrations.iter().filter(|l| l.state.runs()).map(|l| l.name.clone()).collect(),
                                    (!r.problems.is_empty()).then(|| r.problems.join("; ")),
                                ),
                                Some(r) => (Vec::new(), r.error.clone()),
                                None => (Vec::new(), None),
                            }
                        }
                    }
                };
                out.push(Pending {
                    tenant: tenant.to_string(),
                    module: module.clone(),
                    version: e.version.clone(),
                    source: source.describe(),
                    migrations,
                    note,
                });
            }
        }
    }
    Ok(out)
}

// ----- reading ------------------------------------------------------------------------------

/// A tenant as `tenant list|show` and `GET /api/v1/tenants` show it.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TenantView {
    pub name: String,
    /// Registered with `tenant add` (false: listed in the manifest).
    pub registered: bool,
    pub labels: BTreeMap<String, String>,
    /// Has a TTL or labels: purged when it expires or leaves the live list.
    pub preview: bool,
    /// RFC 3339, UTC.
    pub expires_at: Option<String>,
    pub created_at: Option<String>,
    pub modules: Vec<ModuleView>,
}

/// One module of a tenant.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ModuleView {
    pub module: String,
    pub version: Option<String>,
    /// The version an upgrade under way (or failed) moves it to.
    pub target_version: Option<String>,
    /// `enabled`, `disabled` or `purging`.
    pub state: String,
    /// `provisioning`, `migrating`, `upgrading`, `ready`, `disabled`, `purging` or `failed`.
    pub status: String,
    pub error: Option<String>,
    pub parameters: BTreeMap<String, bool>,
    pub server: Option<String>,
    pub database: Option<String>,
    pub schema: Option<String>,
    pub role: Option<String>,
    pub last_job: Option<JobRef>,
}

/// The last job that changed a tenant's module.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobRef {
    pub id: i64,
    pub kind: String,
    pub status: String,
    pub error: Option<String>,
}

/// Every tenant of the session's environment: the manifest's and the registered ones,
/// sorted by name.
pub async fn views(s: &Session) -> Result<Vec<TenantView>> {
    let control = crate::control::open_existing(s.servers.first(), s.first_admin()).await?;
    let mut jobs: BTreeMap<i64, JobRef> = BTreeMap::new();
    if let Some(c) = &control {
        let ids: BTreeSet<i64> =
            s.registry.tenants.iter().flat_map(|t| t.modules.iter().filter_map(|m| m.last_job)).collect();
        for id in ids {
            if let Some(j) = crate::jobs::queue::get(c, id).await? {
                jobs.insert(id, JobRef { id, kind: j.kind, status: j.status.to_string(), error: j.error });
            }
        }
    }
    let storage = |tenant: &str, module: &str| s.desired.endpoint(module, Some(tenant));
    let mut out = Vec::new();
    for t in &s.manifest.tenants {
        out.push(TenantView {
            name: t.name.clone(),
            registered: false,
            labels: BTreeMap::new(),
            preview: false,
            expires_at: None,
            created_at: None,
            modules: t
                .modules
                .iter()
                .map(|m| {
                    let e = storage(&t.name, m);
                    ModuleView {
                        module: m.clone(),
                        version: e.and_then(|e| e.version.clone()),
                        target_version: None,
                        state: "enabled".into(),
                        status: "manifest".into(),
                        error: None,
                        parameters: e.map(|e| e.parameters.clone()).unwrap_or_default(),
                        server: e.map(|e| e.server.clone()),
                        database: e.map(|e| e.database.clone()),
                        schema: e.and_then(|e| e.schema.clone()),
                        role: e.map(|e| e.owner_role.clone()),
                        last_job: None,
                    }
                })
                .collect(),
        });
    }
    for t in &s.registry.tenants {
        out.push(TenantView {
            name: t.name.clone(),
            registered: true,
            labels: t.labels.clone(),
            preview: t.is_preview(),
            expires_at: t.expires_at.map(|at| crate::jobs::rfc3339(at, 0).replace(".000Z", "Z")),
            created_at: Some(t.created_at.clone()),
            modules: t
                .modules
                .iter()
                .map(|m| {
                    let e = storage(&t.name, &m.module);
                    ModuleView {
                        module: m.module.clone(),
                        version: m.version.clone(),
                        target_version: m.target_version.clone(),
                        state: m.state.as_str().into(),
                        status: m.status.clone(),
                        error: m.error.clone(),
                        parameters: m.parameters.clone(),
                        server: m.server.clone().or_else(|| e.map(|e| e.server.clone())),
                        database: e.map(|e| e.database.clone()),
                        schema: e.and_then(|e| e.schema.clone()),
                        role: e.map(|e| e.owner_role.clone()),
                        last_job: m.last_job.and_then(|id| jobs.get(&id).cloned()),
                    }
                })
                .collect(),
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// `tenant list`: every tenant of the environment.
pub async fn list(ctx: &mut Ctx, args: &ManifestArgs) -> Result<Vec<TenantView>> {
    let s = Session::open(ctx, &args.file, args.env.as_deref()).await?;
    views(&s).await
}

/// `tenant show`: one tenant.
pub async fn show(ctx: &mut Ctx, args: &ManifestArgs, tenant: &str) -> Result<TenantView> {
    list(ctx, args)
        .await?
        .into_iter()
        .find(|t| t.name == tenant)
        .ok_or_else(|| Error::not_found(format!("there is no tenant {tenant:?} (see `pgplane tenant list`)")))
}

// ----- previews -----------------------------------------------------------------------------

/// What a preview garbage collection did (or, dry, would do).
#[derive(Debug, Serialize)]
pub struct GcReport {
    pub dry_run: bool,
    /// Previews due, with why.
    pub due: Vec<core::Due>,
    /// Purged (their storage dropped and records gone).
    pub purged: Vec<String>,
    /// Previews that could not be purged, with the error.
    pub failed: Vec<(String, String)>,
}

/// Purges previews that expired and, with a live list (`keep`), those it does not name
/// (by tenant name or `key=value` label). Tenants without a TTL or labels are never touched.
pub async fn gc(
    ctx: &mut Ctx,
    args: &ManifestArgs,
    keep: Option<&BTreeSet<String>>,
    dry_run: bool,
    lock_timeout: Duration,
    events: &dyn Events,
) -> Result<GcReport> {
    events.stage("gc", "looking for previews that are due");
    let s = Session::open(ctx, &args.file, args.env.as_deref()).await?;
    let control = crate::control::open_existing(s.servers.first(), s.first_admin()).await?;
    let now: i64 = match &control {
        Some(c) => c
            .query_one("SELECT extract(epoch FROM pg_catalog.now())::int8", &[])
            .await
            .map_err(anyhow::Error::from)?
            .get(0),
        None => 0,
    };
    let due = core::previews_due(&s.registry.tenants, keep, now);
    drop(s);
    let mut report = GcReport { dry_run, due: due.clone(), purged: Vec::new(), failed: Vec::new() };
    if dry_run {
        return Ok(report);
    }
    for d in &due {
        events.stage("gc", &format!("purging preview {} ({})", d.tenant, d.reason));
        let purge = Change { tenant: d.tenant.clone(), every: Some(ItemAction::Purge), ..Change::default() };
        let mut yes = |_: &Plan| true;
        let hooks = Hooks { approve: &mut yes, lock_timeout, dry_run: false, progress: None, kind: "tenant_gc" };
        match change(ctx, args, &purge, hooks, events).await {
            Ok(_) => report.purged.push(d.tenant.clone()),
            // Purged meanwhile by someone else: nothing left to do.
            Err(Error::NotFound(_)) => {}
            Err(e) => report.failed.push((d.tenant.clone(), e.chain())),
        }
    }
    Ok(report)
}

/// Whether some preview of `env` is due now (expired); for the leader's reconciler.
pub async fn expired_previews(control: &Client, env: &str) -> anyhow::Result<Vec<core::Due>> {
    let reg = registry::load(control, env).await?;
    if reg.tenants.iter().all(|t| t.expires_at.is_none()) {
        return Ok(Vec::new());
    }
    let now: i64 = control.query_one("SELECT extract(epoch FROM pg_catalog.now())::int8", &[]).await?.get(0);
    Ok(core::previews_due(&reg.tenants, None, now))
}
