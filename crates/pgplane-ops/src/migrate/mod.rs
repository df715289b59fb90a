//! Migrations: load a source, resolve targets (one URL, or a module and its tenants), and
//! for each target take the migration lock, read the ledger, plan with
//! [`pgplane_core::migrate::plan`] and run what is pending, each migration in one
//! transaction with its ledger row unless it says otherwise.

mod ledger;
mod liquibase;
pub mod rollback;
mod source;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures_util::StreamExt;
use pgplane_core::ident::quote_ident;
use pgplane_core::migrate::{plan, stop_at, MigrationPlan, PlanOptions, State, UpTo};
use serde::Serialize;
use tokio_postgres::Client;

use crate::conn::{Role, Target as Server};
use crate::events::Events;
pub use ledger::LedgerNames;
pub use liquibase::LiquibaseOptions;
pub use source::{request_sources, Root, Selection, Source};

/// Where one run of migrations goes: a database, a schema in it, and who runs them.
#[derive(Clone)]
pub struct Target {
    /// For people and JSON: the tenant, the module or the database.
    pub label: String,
    pub tenant: Option<String>,
    /// How the migration session logs in: as the owner role itself for a module, tenant,
    /// template or branch (see [`crate::conn::Logins`]), as the URL's user for `--url`.
    /// Never the admin followed by `SET ROLE`: a migration could `RESET ROLE` back to it.
    pub server: Server,
    pub database: String,
    pub schema: String,
    /// The owner role `server` logs in as (checked after connecting); `None` for `--url`.
    pub role: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Up,
    Status,
    Validate,
}

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub mode: Mode,
    pub selection: Selection,
    pub ledger: LedgerNames,
    pub retry_failed: bool,
    pub lock_timeout: Duration,
    pub jobs: usize,
    /// Print a line per migration as it runs (not with --json).
    pub live: bool,
    /// Liquibase properties and permissions.
    pub liquibase: LiquibaseOptions,
    /// `up` stops after this tag (Liquibase) or version (SQL folder).
    pub up_to: Option<UpTo>,
}

/// One migration in a report.
#[derive(Debug, Clone, Serialize)]
pub struct Line {
    pub name: String,
    pub state: State,
    pub checksum: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub applied_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Why a migration failed: its name, PostgreSQL's message and where.
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    pub migration: String,
    pub message: String,
    pub sqlstate: Option<String>,
    /// `file:line` for SQL files, `statement N, character C` for generated SQL.
    pub position: Option<String>,
    pub statement: Option<String>,
    /// Whether it ran inside a transaction (so nothing of it stayed).
    pub in_transaction: bool,
}

impl Failure {
    /// A failure that is a message of pgplane's (no SQL error, no position, no statement),
    /// of a migration that ran in a transaction unless the caller says otherwise.
    pub fn message(migration: &str, message: impl Into<String>) -> Failure {
        Failure {
            migration: migration.to_string(),
            message: message.into(),
            sqlstate: None,
            position: None,
            statement: None,
            in_transaction: true,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} failed: {}", self.migration, self.message)?;
        if let Some(code) = &self.sqlstate {
            write!(f, " (SQLSTATE {code})")?;
        }
        if let Some(p) = &self.position {
            write!(f, " at {p}")?;
        }
        Ok(())
    }
}

/// The outcome for one target.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub target: String,
    pub tenant: Option<String>,
    pub database: String,
    pub schema: String,
    pub ledger: String,
    pub ok: bool,
    /// Every migration of the source with its state before this run; when the run fails,
    /// what it applied before the failure is `applied` (so the report matches the ledger).
    pub migrations: Vec<Line>,
    /// What this run applied (up only), in order.
    pub applied: Vec<String>,
    /// What this run skipped and why (a changeset with `failOnError: false` that failed).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<String>,
    pub pending: usize,
    pub problems: Vec<String>,
    /// Ledger entries the source does not have.
    pub unknown: Vec<String>,
    /// Things worth knowing that are not errors (the ledger is past `--to-tag`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    pub error: Option<String>,
    pub failure: Option<Failure>,
}

/// Runs `opts.mode` over every target, at most `opts.jobs` at a time; one target's
/// failure does not stop the others.
pub async fn run_all(source: &Source, targets: Vec<Target>, opts: &RunOptions, events: &dyn Events) -> Vec<Report> {
    let many = targets.len() > 1;
    let total = targets.len() as u64;
    let counting = opts.live && many;
    let done = std::sync::atomic::AtomicU64::new(0);
    if counting {
        events.progress(0, total, "targets migrated");
    }
    let mut reports: Vec<(usize, Report)> = futures_util::stream::iter(targets.into_iter().enumerate())
        .map(|(i, t)| {
            let done = &done;
            async move {
                let r = run_one(source, &t, opts).await;
                let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                if counting {
                    events.progress(n, total, "targets migrated");
                }
                (i, r)
            }
        })
        .buffer_unordered(opts.jobs.max(1))
        .collect()
        .await;
    if counting {
        events.progress_done();
    }
    reports.sort_by_key(|(i, _)| *i);
    reports.into_iter().map(|(_, r)| r).collect()
}

async fn run_one(source: &Source, t: &Target, opts: &RunOptions) -> Report {
    let mut report = Report {
        target: t.label.clone(),
        tenant: t.tenant.clone(),
        database: t.database.clone(),
        schema: t.schema.clone(),
        ledger: format!("{}.{}", t.schema, opts.ledger.table(source)),
        ok: false,
        migrations: vec![],
        applied: vec![],
        skipped: vec![],
        pending: 0,
        problems: vec![],
        unknown: vec![],
        notes: vec![],
        error: None,
        failure: None,
    };
    match run_target(source, t, opts, &mut report).await {
        Ok(ok) => report.ok = ok,
        Err(e) => {
            report.ok = false;
            report.error = Some(format!("{e:#}"));
        }
    }
    report
}

/// Connects as the migration session: logged in as the owner role (or the URL's user) to
/// the target database, its schema on the search path.
pub async fn connect(t: &Target) -> Result<Client> {
    let client = match t.server.connect_as(Some(&t.database), Role::Migrate).await {
        Ok(c) => c,
        Err(e) => match &t.role {
            Some(role) => return Err(crate::conn::login_error(e, role)),
            None => return Err(e),
        },
    };
    // A killed pgplane's statement must not hold the migration lock until it finishes:
    // PostgreSQL (14+) then checks every second that the client is still there.
    let row = client
        .query_one(
            "SELECT session_user::text,
                    CASE WHEN pg_catalog.current_setting('server_version_num')::int4 OPERATOR(pg_catalog.>=) 140000
                         THEN pg_catalog.set_config('client_connection_check_interval', '1s', false) END",
            &[],
        )
        .await
        .with_context(|| format!("setting up the migration session in database {}", t.database))?;
    let session_user: String = row.get(0);
    if let Some(role) = &t.role {
        if session_user != *role {
            bail!("the migration session in database {} is {session_user}, not the owner role {role}", t.database);
        }
    }
    setup_session(&client, t).await?;
    Ok(client)
}

/// How each migration starts: the session's own role and the target's search path again
/// (an earlier migration may have changed them), then, inside a transaction, BEGIN;
/// `durable: false` lets the commit return before the WAL is flushed.
pub struct Begin {
    pub setup: String,
    pub durable: bool,
}

impl Begin {
    pub fn new(t: &Target, durable: bool) -> Begin {
        let mut setup = String::new();
        if t.role.is_some() {
            // Back to the owner the session logged in as, should a migration have switched
            // to a role the owner belongs to (nothing higher is reachable from this login).
            setup.push_str("SET ROLE NONE;");
        }
        let _ = write!(setup, "SET search_path TO {};", quote_ident(&t.schema));
        Begin { setup, durable }
    }

    /// Setup, BEGIN and the commit mode, as one batch.
    pub fn transaction(&self) -> String {
        let sync = if self.durable { "" } else { "SET LOCAL synchronous_commit = off;" };
        format!("{}BEGIN;{sync}", self.setup)
    }
}

/// The target's search path.
async fn setup_session(client: &Client, t: &Target) -> Result<()> {
    client
        .batch_execute(&Begin::new(t, true).setup)
        .await
        .with_context(|| format!("setting search_path {} in database {}", t.schema, t.database))
}

/// Reads the ledger and plans; `None` ledger means the table does not exist yet.
pub async fn plan_target(
    client: &Client,
    source: &Source,
    t: &Target,
    opts: &RunOptions,
) -> Result<(Vec<pgplane_core::migrate::Unit>, Vec<pgplane_core::migrate::Applied>, MigrationPlan)> {
    let units = match source {
        Source::Liquibase(l) => {
            let changelog = l.resolve(client, t, &opts.selection, &opts.ledger, &opts.liquibase).await?;
            liquibase::units_of(&changelog, &opts.selection)
        }
        Source::Sql { .. } => source.units(&opts.selection),
    };
    let applied = ledger::read(client, source, &t.schema, &opts.ledger).await?.unwrap_or_default();
    let mut p = plan(&units, &applied, PlanOptions { retry_failed: opts.retry_failed });
    // Where the source's module version ends, then where `up --to-tag`/`--target` stops.
    for up_to in source.end().into_iter().chain(opts.up_to.as_ref()) {
        check_up_to(source, up_to)?;
        stop_at(&mut p, &units, &applied, up_to).map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    Ok((units, applied, p))
}

/// `--to-tag` is for Liquibase changelogs, `--target` for SQL folders.
pub fn check_up_to(source: &Source, up_to: &UpTo) -> Result<()> {
    match (source, up_to) {
        (Source::Sql { folder, .. }, UpTo::Tag(_)) => bail!(
            "{} is a SQL folder, which has no tags; use --target VERSION to stop after a version",
            folder.display()
        ),
        (Source::Liquibase(l), UpTo::Version(_)) => bail!(
            "{} is a Liquibase changelog; use --to-tag TAG (a tagDatabase in it) to stop after a changeset",
            l.file.display()
        ),
        _ => Ok(()),
    }
}

async fn run_target(source: &Source, t: &Target, opts: &RunOptions, report: &mut Report) -> Result<bool> {
    let mut client = connect(t).await?;
    let _lock = match opts.mode {
        Mode::Up => Some(ledger::lock(&client, source, t, &opts.ledger, opts.lock_timeout).await?),
        Mode::Status | Mode::Validate => None,
    };
    if opts.mode != Mode::Up {
        return plan_and_run(&mut client, source, t, opts, report).await;
    }
    if opts.up_to.is_some() {
        // A target that is nowhere is refused before the ledger is created.
        plan_target(&client, source, t, opts).await?;
    }
    ledger::ensure(&client, source, &t.schema, &opts.ledger).await?;
    let Source::Liquibase(_) = source else {
        return interruptible(&mut client, |c| plan_and_run(c, source, t, opts, report)).await;
    };
    // Liquibase's lock row too, so a real Liquibase started meanwhile waits for pgplane.
    let lock_table = opts.ledger.lock_table();
    liquibase::lock_row(&client, &t.schema, &lock_table, opts.lock_timeout).await?;
    let result = interruptible(&mut client, |c| plan_and_run(c, source, t, opts, report)).await;
    if result.is_err() {
        // An interrupted migration may have left its transaction open on this session.
        let _ = client.batch_execute("ROLLBACK").await;
    }
    let released = liquibase::unlock_row(&client, &t.schema, &lock_table).await;
    match (result, released) {
        (Ok(ok), Ok(())) => Ok(ok),
        (Ok(_), Err(e)) => Err(e.context("releasing Liquibase's lock row")),
        (Err(e), Ok(())) => Err(e),
        (Err(e), Err(unlock)) => {
            tracing::warn!(error = %format!("{unlock:#}"), "could not release Liquibase's lock row; the next pgplane run takes it over");
            Err(e)
        }
    }
}

/// Runs `work` until it ends or the process gets SIGINT/SIGTERM; then the running
/// statement is cancelled (its transaction rolls back) and an error says so.
pub(crate) async fn interruptible<'c, F, Fut>(client: &'c mut Client, work: F) -> Result<bool>
where
    F: FnOnce(&'c mut Client) -> Fut,
    Fut: std::future::Future<Output = Result<bool>> + 'c,
{
    let cancel = client.cancel_token();
    tokio::select! {
        r = work(client) => r,
        signal = crate::cancel::stop_requested() => {
            let _ = cancel.cancel_query(tokio_postgres::NoTls).await;
            bail!("interrupted by {signal}: the running migration was cancelled and rolled back")
        }
    }
}

async fn plan_and_run(
    client: &mut Client,
    source: &Source,
    t: &Target,
    opts: &RunOptions,
    report: &mut Report,
) -> Result<bool> {
    let (units, applied, p) = plan_target(client, source, t, opts).await?;
    if let (Some(up_to), n @ 1..) = (&opts.up_to, p.applied_beyond_target) {
        report.notes.push(format!("the ledger is already past {up_to}: {n} applied migration(s) come after it"));
    }
    report.pending = p.pending();
    report.problems = p.problems.iter().map(ToString::to_string).collect();
    report.unknown = p.unknown.clone();
    report.migrations = p
        .steps
        .iter()
        .map(|s| {
            let u = &units[s.unit];
            let a = applied.iter().find(|a| a.key == u.key);
            Line {
                name: u.name.clone(),
                state: s.state,
                checksum: u.checksum.clone(),
                applied_at: a.filter(|a| a.success).map(|a| a.applied_at.clone()),
                duration_ms: a.and_then(|a| a.execution_ms).map(|ms| ms.max(0) as u64),
                note: s.note.clone(),
            }
        })
        .collect();
    if !p.problems.is_empty() {
        return Ok(false);
    }
    if opts.mode != Mode::Up {
        return Ok(true);
    }
    if let Source::Liquibase(l) = source {
        // Liquibase's update fills in checksums `clear-checksums` removed.
        let cleared: Vec<&pgplane_core::migrate::Unit> = p
            .steps
            .iter()
            .filter(|s| s.state == State::Applied)
            .map(|s| &units[s.unit])
            .filter(|u| applied.iter().any(|a| a.key == u.key && a.checksum.is_none()))
            .collect();
        liquibase::fill_checksums(client, l, t, &opts.ledger.table(source), &cleared).await?;
    }
    let to_run: Vec<_> = p.to_run().collect();
    if let Source::Liquibase(l) = source {
        // Before anything runs: what the run may not do, and the changelogs' own preconditions.
        let run_units: Vec<&pgplane_core::migrate::Unit> = to_run.iter().map(|s| &units[s.unit]).collect();
        liquibase::check_refusals(l, t, &run_units)?;
        if !run_units.is_empty() {
            liquibase::check_changelog_preconditions(client, l, t, &opts.ledger.table(source)).await?;
        }
    }
    let mut done = Vec::new();
    for (i, step) in to_run.iter().enumerate() {
        let unit = &units[step.unit];
        // Only the run's last migration waits for its commit to reach disk, which makes
        // every earlier one durable too; a server crash in between loses whole
        // migrations with their ledger rows (never one without the other), and they run
        // again next time.
        let begin = Begin::new(t, i + 1 == to_run.len());
        let started = Instant::now();
        let outcome = match ledger::run_unit(client, source, t, &opts.ledger, step, unit, &begin).await {
            Ok(o) => o,
            Err(e) => {
                mark_applied(report, &done);
                return Err(e);
            }
        };
        let ms = started.elapsed().as_millis() as u64;
        match outcome {
            ledger::Outcome::Ran(how) => {
                tracing::info!(target = %t.label, migration = %unit.name, ms, "{how}");
                if let Some(line) = report.migrations.iter_mut().find(|l| l.name == unit.name) {
                    line.duration_ms = Some(ms);
                }
                report.applied.push(unit.name.clone());
                done.push(step.unit);
            }
            ledger::Outcome::Skipped(why) => {
                tracing::info!(target = %t.label, migration = %unit.name, "skipped: {why}");
                report.skipped.push(format!("{} ({why})", unit.name));
            }
            ledger::Outcome::Failed(f) => {
                tracing::warn!(target = %t.label, migration = %unit.name, error = %f, "failed");
                report.failure = Some(f);
                mark_applied(report, &done);
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// After a failed run, the report's lines of what it applied say `applied` (the rest keep
/// their state before the run), so the report matches the ledger and `migrate status`.
fn mark_applied(report: &mut Report, units: &[usize]) {
    for &u in units {
        if let Some(line) = report.migrations.get_mut(u) {
            if matches!(line.state, State::Pending | State::Retry) {
                line.state = State::Applied;
                line.note = Some("applied by this run".into());
            }
        }
    }
}

/// Text for people: per target, its migrations and the outcome.
pub fn render_text(reports: &[Report], mode: Mode) -> String {
    let mut out = String::new();
    for r in reports {
        let where_ = if r.schema == "public" { r.database.clone() } else { format!("{}.{}", r.database, r.schema) };
        let _ = writeln!(out, "{} ({where_}, ledger {})", r.target, r.ledger);
        if mode == Mode::Up && r.ok {
            // What this run applied, in order, under its target.
            for name in &r.applied {
                let ms = r.migrations.iter().find(|l| &l.name == name).and_then(|l| l.duration_ms);
                let _ = write!(out, "  applied   {name}");
                if let Some(ms) = ms {
                    let _ = write!(out, " ({ms} ms)");
                }
                out.push('\n');
            }
        }
        for s in &r.skipped {
            let _ = writeln!(out, "  skipped   {s}");
        }
        if mode != Mode::Up || !r.ok {
            for l in &r.migrations {
                let state = match l.state {
                    State::Applied => "applied",
                    State::Pending => "pending",
                    State::Changed => "changed",
                    State::Always => "always",
                    State::Retry => "retry",
                    State::Filtered => "filtered",
                    State::Blocked => "BLOCKED",
                    State::AfterTarget => "beyond",
                };
                let when = l.applied_at.as_deref().unwrap_or("");
                let _ = write!(out, "  {state:<9} {}", l.name);
                if !when.is_empty() {
                    let _ = write!(out, "  {when}");
                }
                if let Some(n) = &l.note {
                    let _ = write!(out, "  ({n})");
                }
                out.push('\n');
            }
        }
        for u in &r.unknown {
            let _ = writeln!(out, "  note: the ledger has {u}, which the source does not have");
        }
        for n in &r.notes {
            let _ = writeln!(out, "  note: {n}");
        }
        for p in &r.problems {
            let _ = writeln!(out, "  error: {p}");
        }
        if let Some(e) = &r.error {
            let _ = writeln!(out, "  error: {e}");
        }
        if let Some(f) = &r.failure {
            let _ = writeln!(out, "  error: {f}");
            if let Some(s) = &f.statement {
                let _ = writeln!(out, "  statement: {s}");
            }
            let advice = if f.in_transaction {
                "it was rolled back and recorded; fix it and run `pgplane migrate up` again"
            } else {
                "it ran outside a transaction, so part of it may have stayed; check the target, make it safe \
                 to re-run, then run `pgplane migrate up --retry-failed`"
            };
            let _ = writeln!(out, "  {advice}");
        }
        let summary = match (mode, r.ok) {
            (Mode::Up, true) if r.applied.is_empty() => "up to date".to_string(),
            (Mode::Up, true) => format!("applied {}", r.applied.len()),
            (Mode::Up, false) => format!("FAILED after applying {}", r.applied.len()),
            (Mode::Status, _) => format!("{} pending", r.pending),
            (Mode::Validate, true) => format!("valid ({} pending)", r.pending),
            (Mode::Validate, false) => "INVALID".to_string(),
        };
        let _ = writeln!(out, "  {summary}");
    }
    out
}

/// Where a manifest module's source is: its `migrations` path under the manifest's folder.
pub fn module_source_path(manifest_file: &std::path::Path, path: &str) -> PathBuf {
    let base = manifest_file.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    base.join(path)
}

/// Fails when `--jobs` is zero.
pub fn check_jobs(jobs: usize) -> Result<usize> {
    if jobs == 0 {
        bail!("--jobs must be at least 1");
    }
    Ok(jobs)
}

/// Statements of a script that runs outside a transaction, one at a time.
fn split(sql: &str) -> Vec<String> {
    pgplane_core::sqlsplit::split(sql, None)
}

/// A manifest module's migration targets: its database, or each enabled tenant's schema
/// or database (`tenant` narrows to one). Each logs in as the owner role of that storage.
pub fn module_targets(
    s: &crate::ops::Session,
    logins: &crate::conn::Logins,
    module: &pgplane_core::manifest::ModuleSpec,
    tenant: Option<&str>,
) -> Result<Vec<Target>> {
    targets_of(&s.manifest, &s.desired, module, tenant, |name, role| logins.target(s.servers.get(name)?, role))
}

/// The logins of every role of the session's environment (see [`crate::conn::Logins`]).
pub async fn session_logins(s: &crate::ops::Session, keys: &crate::secrets::Keyring) -> Result<crate::conn::Logins> {
    let control = crate::control::open_existing(s.servers.first(), s.first_admin()).await?;
    crate::conn::Logins::load(
        keys,
        control.as_ref(),
        s.desired.roles.iter().map(|r| (r.server.as_str(), r.name.as_str())),
    )
    .await
}

/// The storage of a module that migrations run on: its database, or each tenant's schema
/// or database (`tenant` narrows to one). Disabled tenants are left out (their roles
/// cannot log in); naming one is an error.
pub fn module_endpoints<'d>(
    manifest: &pgplane_core::manifest::Manifest,
    desired: &'d pgplane_core::model::Desired,
    module: &pgplane_core::manifest::ModuleSpec,
    tenant: Option<&str>,
) -> Result<Vec<&'d pgplane_core::model::Endpoint>> {
    let endpoints: Vec<_> = desired
        .endpoints
        .iter()
        .filter(|e| e.module == module.name && (tenant.is_none() || e.tenant.as_deref() == tenant))
        .collect();
    if let Some(t) = tenant {
        match endpoints.first() {
            None => bail!("tenant {t:?} does not enable module {} in {}", module.name, manifest.file.display()),
            Some(e) if !e.enabled => bail!(
                "tenant {t:?}'s module {} is disabled: its roles cannot log in; `pgplane tenant enable {t} --module {}` first",
                module.name,
                module.name
            ),
            Some(_) => {}
        }
    }
    Ok(endpoints.into_iter().filter(|e| e.enabled).collect())
}

/// [`module_targets`] with any way to reach a server by its manifest name as a role:
/// `login(server, role)`.
pub fn targets_of(
    manifest: &pgplane_core::manifest::Manifest,
    desired: &pgplane_core::model::Desired,
    module: &pgplane_core::manifest::ModuleSpec,
    tenant: Option<&str>,
    login: impl Fn(&str, &str) -> Result<Server>,
) -> Result<Vec<Target>> {
    let endpoints = module_endpoints(manifest, desired, module, tenant)?;
    endpoints.into_iter().map(|e| endpoint_target(module, e, &login)).collect()
}

/// The migration target of one endpoint: as its owner role, in its schema (a module's own
/// database: the `migrations.schema`, default `public`).
pub fn endpoint_target(
    module: &pgplane_core::manifest::ModuleSpec,
    e: &pgplane_core::model::Endpoint,
    login: &impl Fn(&str, &str) -> Result<Server>,
) -> Result<Target> {
    let default_schema = module.migrations.as_ref().and_then(|m| m.schema.clone()).unwrap_or_else(|| "public".into());
    Ok(Target {
        label: match &e.tenant {
            Some(t) => format!("{}/{t}", module.name),
            None => module.name.clone(),
        },
        tenant: e.tenant.clone(),
        server: login(&e.server, &e.owner_role)?,
        database: e.database.clone(),
        schema: e.schema.clone().unwrap_or(default_schema),
        role: Some(e.owner_role.clone()),
    })
}

/// A module's endpoints grouped by the migrations they run: each group's version and
/// parameters choose one source ([`pgplane_core::tenant::migration_choice`]). Groups of a
/// module without migrations are left out.
pub fn by_choice<'e>(
    module: &pgplane_core::manifest::ModuleSpec,
    endpoints: Vec<&'e pgplane_core::model::Endpoint>,
) -> Result<Vec<(pgplane_core::tenant::MigrationChoice, Vec<&'e pgplane_core::model::Endpoint>)>> {
    type Key = (Option<String>, std::collections::BTreeMap<String, bool>);
    let mut groups: std::collections::BTreeMap<Key, Vec<&pgplane_core::model::Endpoint>> = Default::default();
    for e in endpoints {
        groups.entry((e.version.clone(), e.parameters.clone())).or_default().push(e);
    }
    let mut out = Vec::new();
    for ((version, parameters), eps) in groups {
        let choice = pgplane_core::tenant::migration_choice(module, version.as_deref(), &parameters)
            .map_err(|e| anyhow::anyhow!("module {}: {e}", module.name))?;
        if let Some(choice) = choice {
            out.push((choice, eps));
        }
    }
    Ok(out)
}

/// For `pgplane wait --for migrated:MODULE`: how many targets of the module still have
/// pending migrations or problems (read as each target's owner, `login(server, role)`).
/// `Ok(None)` when all are migrated, else what is missing.
pub async fn unmigrated(
    manifest: &pgplane_core::manifest::Manifest,
    desired: &pgplane_core::model::Desired,
    module: &str,
    login: impl Fn(&str, &str) -> Result<Server>,
) -> Result<Option<String>> {
    let m = manifest.module(module).with_context(|| format!("module {module:?} is not in the manifest"))?;
    if m.migrations.is_none() && m.versions.is_empty() {
        bail!("module {module} has no `migrations:` in the manifest");
    }
    let base = RunOptions {
        mode: Mode::Status,
        selection: Selection::default(),
        ledger: LedgerNames::default(),
        retry_failed: false,
        lock_timeout: Duration::ZERO,
        jobs: 8,
        live: false,
        liquibase: LiquibaseOptions::default(),
        up_to: None,
    };
    let mut work = Vec::new();
    for (choice, endpoints) in by_choice(m, module_endpoints(manifest, desired, m, None)?)? {
        let source = cached_choice(&manifest.file, &choice)?;
        let opts = base.clone().with_spec(&choice.selected_spec());
        for e in endpoints {
            work.push((source.clone(), opts.clone(), endpoint_target(m, e, &login)?));
        }
    }
    let targets: Vec<Target> = work.iter().map(|(_, _, t)| t.clone()).collect();
    if targets.is_empty() {
        return Ok(Some(format!("module {module} has no targets (no tenant enables it)")));
    }
    // Every target is checked (8 at a time); each one's problem is collected, none stops the rest.
    // The futures are made before the stream: a closure inside the stream's type makes
    // the future not `Send` for every lifetime, which stack runners need.
    let futures: Vec<_> = work.iter().map(|(source, opts, t)| pending_of(t, source, opts)).collect();
    let checks = futures_util::stream::iter(futures).buffered(base.jobs).collect::<Vec<_>>().await;
    let missing: Vec<String> = targets
        .iter()
        .zip(checks)
        .filter_map(|(t, r)| match r {
            Ok(None) => None,
            Ok(Some(why)) => Some(format!("{}: {why}", t.label)),
            Err(e) => Some(format!("{}: {e:#}", t.label)),
        })
        .collect();
    if missing.is_empty() {
        return Ok(None);
    }
    Ok(Some(format!("{} of {} target(s) not migrated: {}", missing.len(), targets.len(), missing.join("; "))))
}

/// What keeps one target from counting as migrated (`None`: nothing).
async fn pending_of(t: &Target, source: &Source, opts: &RunOptions) -> Result<Option<String>> {
    let client = connect(t).await?;
    let (units, _, p) = plan_target(&client, source, t, opts).await?;
    Ok(if let Some(problem) = p.problems.first() {
        Some(problem.to_string())
    } else if p.pending() > 0 {
        let first =
            p.to_run().find(|s| s.state != State::Always).map(|s| units[s.unit].name.clone()).unwrap_or_default();
        Some(format!("{} pending (next {first})", p.pending()))
    } else {
        None
    })
}

/// Sources read once per process: `wait` asks every interval.
fn cached_choice(
    manifest_file: &std::path::Path,
    choice: &pgplane_core::tenant::MigrationChoice,
) -> Result<std::sync::Arc<Source>> {
    type Cache = std::sync::Mutex<std::collections::BTreeMap<String, std::sync::Arc<Source>>>;
    static CACHE: std::sync::OnceLock<Cache> = std::sync::OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let key = format!("{}\0{choice:?}", manifest_file.display());
    if let Some(s) = cache.lock().map_err(|_| anyhow::anyhow!("source cache poisoned"))?.get(&key) {
        return Ok(s.clone());
    }
    let source = std::sync::Arc::new(Source::load_choice(manifest_file, choice)?);
    cache.lock().map_err(|_| anyhow::anyhow!("source cache poisoned"))?.insert(key, source.clone());
    Ok(source)
}

impl RunOptions {
    /// Fills what the command line left open from a manifest's `migrations:` options.
    pub fn with_spec(mut self, spec: &pgplane_core::manifest::MigrationsSpec) -> RunOptions {
        if self.selection.contexts.is_empty() {
            self.selection.contexts = spec.contexts.clone();
        }
        if self.selection.labels.is_none() {
            self.selection.labels = spec.labels.clone();
        }
        self.ledger.changelog_table = self.ledger.changelog_table.or(spec.changelog_table.clone());
        self.ledger.changelog_lock_table = self.ledger.changelog_lock_table.or(spec.changelog_lock_table.clone());
        self.ledger.history_table = self.ledger.history_table.or(spec.history_table.clone());
        // The command line's properties come first, so they win over the manifest's.
        self.liquibase.properties.extend(spec.properties.iter().map(|(k, v)| (k.clone(), v.clone())));
        self.liquibase.allow_execute_command |= spec.allow_execute_command;
        self
    }
}

/// One module's (or one URL's) run: its source and the reports of its targets.
#[derive(Debug, Serialize)]
pub struct ModuleRun {
    pub module: Option<String>,
    pub source: String,
    pub targets: Vec<Report>,
}

impl ModuleRun {
    pub fn ok(&self) -> bool {
        self.targets.iter().all(|t| t.ok)
    }
}

/// Migrates every module of the session that has `migrations:` (or just `only`), with
/// options from the manifest overridden by `base`'s non-default values; each target as its
/// owner role, with the password derived from `keys`.
pub async fn run_modules(
    s: &crate::ops::Session,
    keys: &crate::secrets::Keyring,
    only: Option<(&str, Option<&str>)>,
    source_override: Option<&std::path::Path>,
    search_path_override: Option<&std::path::Path>,
    base: &RunOptions,
    events: &dyn Events,
) -> Result<Vec<ModuleRun>> {
    let modules: Vec<&pgplane_core::manifest::ModuleSpec> = match only {
        Some((name, _)) => vec![s.manifest.module(name).with_context(|| {
            format!(
                "module {name:?} is not in {} (modules: {})",
                s.manifest.file.display(),
                s.manifest.modules.iter().map(|m| m.name.as_str()).collect::<Vec<_>>().join(", ")
            )
        })?],
        None => s.manifest.modules.iter().filter(|m| m.migrations.is_some() || !m.versions.is_empty()).collect(),
    };
    // Load and check every source before anything runs.
    let logins = session_logins(s, keys).await?;
    let login = |name: &str, role: &str| logins.target(s.servers.get(name)?, role);
    let mut work = Vec::new();
    for m in modules {
        let tenant = only.and_then(|(_, t)| t);
        if let Some(p) = source_override {
            let spec = m.migrations.clone().unwrap_or_default();
            let source = Source::load_with(p, &Root::cli(Some(&s.manifest.file), p)?, search_path_override)
                .with_context(|| format!("module {}", m.name))?;
            let opts = base.clone().with_spec(&spec);
            source.check_selected(&opts.selection).with_context(|| format!("module {}", m.name))?;
            let targets = module_targets(s, &logins, m, tenant)?;
            work.push((m.name.clone(), source, targets, opts));
            continue;
        }
        if m.migrations.is_none() && m.versions.is_empty() {
            bail!(
                "module {} has no `migrations:` in {}; add `migrations: PATH` to it or pass --source PATH",
                m.name,
                s.manifest.file.display()
            );
        }
        // Tenants of one module may run different versions and parameters: one source each.
        for (choice, endpoints) in by_choice(m, module_endpoints(&s.manifest, &s.desired, m, tenant)?)? {
            let source =
                Source::load_choice(&s.manifest.file, &choice).with_context(|| format!("module {}", m.name))?;
            let opts = base.clone().with_spec(&choice.selected_spec());
            source.check_selected(&opts.selection).with_context(|| format!("module {}", m.name))?;
            let targets = endpoints.into_iter().map(|e| endpoint_target(m, e, &login)).collect::<Result<Vec<_>>>()?;
            work.push((m.name.clone(), source, targets, opts));
        }
    }
    let mut runs = Vec::new();
    for (module, source, targets, opts) in work {
        let reports = run_all(&source, targets, &opts, events).await;
        runs.push(ModuleRun { module: Some(module), source: source.describe(), targets: reports });
    }
    Ok(runs)
}
