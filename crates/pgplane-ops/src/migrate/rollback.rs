//! `pgplane migrate rollback`: undoes applied Liquibase changesets, newest first, with
//! Liquibase's ledger semantics. Which changesets and their SQL come from the pure core
//! ([`pgplane_core::migrate::plan_rollback`], [`ChangeSet::rollback_statements`]); this file
//! reads the ledger, refuses before anything runs when a changeset cannot be rolled back,
//! and runs each changeset's rollback in one transaction with the removal of its
//! DATABASECHANGELOG row.

use std::fmt::Write as _;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use futures_util::StreamExt;
use pgplane_core::ident::quote_literal;
use pgplane_core::liquibase::{Action, ChangeSet, Statement, REFUSAL_FIX};
use pgplane_core::migrate::{plan_rollback, Ran, RollbackTo};
use serde::Serialize;
use tokio_postgres::Client;

use super::ledger::{failure_of, qualified, table_exists};
use super::liquibase::{self, LiquibaseSource};
use super::{connect, interruptible, Begin, Failure, Root, RunOptions, Source, Target};
use crate::events::Events;

#[derive(Debug, Clone)]
pub struct RollbackOptions {
    /// Contexts/labels, ledger tables, lock timeout, jobs, Liquibase properties and
    /// permissions (`mode` and `up_to` are ignored).
    pub run: RunOptions,
    pub to: RollbackTo,
    /// Print the SQL; change nothing and take no lock.
    pub dry_run: bool,
}

/// One changeset of a rollback.
#[derive(Debug, Clone, Serialize)]
pub struct Undo {
    /// `file::id::author`.
    pub name: String,
    /// Where the changeset is written, `file:line`.
    pub location: String,
    /// Its rollback statements, then the removal of its ledger row.
    pub sql: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
}

/// The outcome of a rollback for one target.
#[derive(Debug, Clone, Serialize)]
pub struct RollbackReport {
    pub target: String,
    pub tenant: Option<String>,
    pub database: String,
    pub schema: String,
    pub ledger: String,
    pub ok: bool,
    pub dry_run: bool,
    /// Changesets to roll back, newest first, with their SQL.
    pub plan: Vec<Undo>,
    /// Those this run rolled back (none with --dry-run).
    pub rolled_back: Vec<String>,
    /// Ledger rows inside the range that stay (another changelog's, or excluded by
    /// contexts/labels/dbms), as Liquibase leaves them.
    pub skipped: Vec<String>,
    /// Changesets that cannot be rolled back; when any, nothing ran.
    pub refused: Vec<String>,
    /// Worth knowing, not errors (a MARK_RAN changeset's rollback runs too).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    pub error: Option<String>,
    pub failure: Option<Failure>,
}

/// One module's (or one URL's) rollback.
#[derive(Debug, Serialize)]
pub struct RollbackRun {
    pub module: Option<String>,
    pub source: String,
    pub targets: Vec<RollbackReport>,
}

impl RollbackRun {
    pub fn ok(&self) -> bool {
        self.targets.iter().all(|t| t.ok)
    }
}

/// Rolls back every target, at most `jobs` at a time; one target's failure does not stop
/// the others.
pub async fn run_all(
    source: &Source,
    targets: Vec<Target>,
    opts: &RollbackOptions,
    events: &dyn Events,
) -> Vec<RollbackReport> {
    let total = targets.len() as u64;
    let counting = opts.run.live && total > 1;
    let done = std::sync::atomic::AtomicU64::new(0);
    if counting {
        events.progress(0, total, "targets rolled back");
    }
    let mut reports: Vec<(usize, RollbackReport)> = futures_util::stream::iter(targets.into_iter().enumerate())
        .map(|(i, t)| {
            let done = &done;
            async move {
                let r = run_one(source, &t, opts).await;
                let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                if counting {
                    events.progress(n, total, "targets rolled back");
                }
                (i, r)
            }
        })
        .buffer_unordered(opts.run.jobs.max(1))
        .collect()
        .await;
    if counting {
        events.progress_done();
    }
    reports.sort_by_key(|(i, _)| *i);
    reports.into_iter().map(|(_, r)| r).collect()
}

/// Rolls back one manifest module (all its tenants, or `tenant`), each target as its owner
/// role; tenants on different versions or parameters are rolled back with their own
/// source, one [`RollbackRun`] each, as `up` runs them. Every source is read before
/// anything runs.
#[allow(clippy::too_many_arguments)]
pub async fn run_module(
    s: &crate::ops::Session,
    keys: &crate::secrets::Keyring,
    module: &str,
    tenant: Option<&str>,
    source_override: Option<&std::path::Path>,
    search_path_override: Option<&std::path::Path>,
    opts: &RollbackOptions,
    events: &dyn Events,
) -> Result<Vec<RollbackRun>> {
    let m = s.manifest.module(module).with_context(|| {
        format!(
            "module {module:?} is not in {} (modules: {})",
            s.manifest.file.display(),
            s.manifest.modules.iter().map(|m| m.name.as_str()).collect::<Vec<_>>().join(", ")
        )
    })?;
    let logins = super::session_logins(s, keys).await?;
    let login = |name: &str, role: &str| logins.target(s.servers.get(name)?, role);
    let mut work = Vec::new();
    if let Some(p) = source_override {
        let spec = m.migrations.clone().unwrap_or_default();
        let source = Source::load_with(p, &Root::cli(Some(&s.manifest.file), p)?, search_path_override)
            .with_context(|| format!("module {module}"))?;
        let run = opts.run.clone().with_spec(&spec);
        source.check_selected(&run.selection).with_context(|| format!("module {module}"))?;
        work.push((source, super::module_targets(s, &logins, m, tenant)?, RollbackOptions { run, ..opts.clone() }));
    } else {
        if m.migrations.is_none() && m.versions.is_empty() {
            bail!(
                "module {module} has no `migrations:` in {}; add `migrations: PATH` to it or pass --source PATH",
                s.manifest.file.display()
            );
        }
        let endpoints = super::module_endpoints(&s.manifest, &s.desired, m, tenant)?;
        for (choice, endpoints) in super::by_choice(m, endpoints)? {
            let source = Source::load_choice(&s.manifest.file, &choice).with_context(|| format!("module {module}"))?;
            let run = opts.run.clone().with_spec(&choice.selected_spec());
            source.check_selected(&run.selection).with_context(|| format!("module {module}"))?;
            let targets =
                endpoints.into_iter().map(|e| super::endpoint_target(m, e, &login)).collect::<Result<Vec<_>>>()?;
            work.push((source, targets, RollbackOptions { run, ..opts.clone() }));
        }
    }
    let mut runs = Vec::new();
    for (source, targets, opts) in work {
        let reports = run_all(&source, targets, &opts, events).await;
        runs.push(RollbackRun { module: Some(module.to_string()), source: source.describe(), targets: reports });
    }
    Ok(runs)
}

async fn run_one(source: &Source, t: &Target, opts: &RollbackOptions) -> RollbackReport {
    let mut report = RollbackReport {
        target: t.label.clone(),
        tenant: t.tenant.clone(),
        database: t.database.clone(),
        schema: t.schema.clone(),
        ledger: format!("{}.{}", t.schema, opts.run.ledger.table(source)),
        ok: false,
        dry_run: opts.dry_run,
        plan: vec![],
        rolled_back: vec![],
        skipped: vec![],
        refused: vec![],
        notes: vec![],
        error: None,
        failure: None,
    };
    match run_target(source, t, opts, &mut report).await {
        Ok(ok) => report.ok = ok,
        Err(e) => report.error = Some(format!("{e:#}")),
    }
    report
}

async fn run_target(source: &Source, t: &Target, opts: &RollbackOptions, r: &mut RollbackReport) -> Result<bool> {
    let Source::Liquibase(src) = source else {
        bail!(
            "{}: SQL folders have no down migrations, so there is nothing to roll back with; write a new migration \
             that undoes the change (or use a Liquibase changelog, whose changesets can carry a rollback)",
            source.describe()
        );
    };
    let mut client = connect(t).await?;
    let table = opts.run.ledger.table(source);
    if !table_exists(&client, &t.schema, &table).await? {
        // Nothing was ever applied here: nothing to roll back, and no tag to go back to.
        plan_rollback(&src.units(&opts.run.selection), &[], &opts.to).map_err(|e| anyhow::anyhow!("{e}"))?;
        return Ok(true);
    }
    if opts.dry_run {
        return plan_and_undo(&mut client, src, t, &table, opts, r).await;
    }
    let _lock = super::ledger::lock(&client, source, t, &opts.run.ledger, opts.run.lock_timeout).await?;
    let lock_table = opts.run.ledger.lock_table();
    let row_lock = table_exists(&client, &t.schema, &lock_table).await?;
    if row_lock {
        liquibase::lock_row(&client, &t.schema, &lock_table, opts.run.lock_timeout).await?;
    }
    let result = interruptible(&mut client, |c| plan_and_undo(c, src, t, &table, opts, r)).await;
    if result.is_err() {
        let _ = client.batch_execute("ROLLBACK").await;
    }
    if row_lock {
        if let Err(e) = liquibase::unlock_row(&client, &t.schema, &lock_table).await {
            tracing::warn!(error = %format!("{e:#}"), "could not release Liquibase's lock row; the next pgplane run takes it over");
        }
    }
    result
}

/// One ledger row as stored, for its DELETE.
struct Row {
    id: String,
    author: String,
    filename: String,
    exectype: String,
}

/// The ledger in Liquibase's `RanChangeSet` shape, with each key's stored rows.
async fn read_ledger(client: &Client, schema: &str, table: &str) -> Result<(Vec<Ran>, Vec<(String, Row)>)> {
    let sql = format!(
        "SELECT id, author, filename, to_char(dateexecuted, 'YYYY-MM-DD HH24:MI:SS.US'), orderexecuted::int8, tag, description,
                exectype
           FROM {} WHERE exectype NOT IN ('FAILED', 'SKIPPED')",
        qualified(schema, table)
    );
    let rows = client.query(&sql, &[]).await.with_context(|| format!("reading Liquibase's ledger {schema}.{table}"))?;
    let mut ran = Vec::new();
    let mut stored = Vec::new();
    for row in rows {
        let (id, author, filename): (String, String, String) = (row.get(0), row.get(1), row.get(2));
        let key = liquibase::key(&filename, &id, &author);
        ran.push(Ran {
            key: key.clone(),
            executed_at: row.get::<_, Option<String>>(3).unwrap_or_default(),
            order: row.get::<_, Option<i64>>(4).unwrap_or(0),
            tag: row.get(5),
            description: row.get(6),
        });
        stored.push((key, Row { id, author, filename, exectype: row.get::<_, Option<String>>(7).unwrap_or_default() }));
    }
    Ok((ran, stored))
}

/// The DELETE of a changeset's ledger rows (one per stored spelling of its file name).
fn delete_sql(t: &str, rows: &[&Row]) -> Vec<String> {
    rows.iter()
        .map(|r| {
            format!(
                "DELETE FROM {t} WHERE ID = {} AND AUTHOR = {} AND FILENAME = {}",
                quote_literal(&r.id),
                quote_literal(&r.author),
                quote_literal(&r.filename)
            )
        })
        .collect()
}

async fn plan_and_undo(
    client: &mut Client,
    src: &LiquibaseSource,
    t: &Target,
    table: &str,
    opts: &RollbackOptions,
    r: &mut RollbackReport,
) -> Result<bool> {
    let (ran, stored) = read_ledger(client, &t.schema, table).await?;
    // The changelog as read for this target (its `database.*` properties, the run's own).
    let changelog = src.resolve(client, t, &opts.run.selection, &opts.run.ledger, &opts.run.liquibase).await?;
    let units = liquibase::units_of(&changelog, &opts.run.selection);
    let plan = plan_rollback(&units, &ran, &opts.to).map_err(|e| anyhow::anyhow!("{e}"))?;
    r.skipped = plan.skipped.clone();
    let ledger_table = qualified(&t.schema, table);
    // Every changeset's rollback is worked out before anything runs.
    let mut work: Vec<(&ChangeSet, Vec<Statement>, Vec<String>)> = Vec::new();
    for &i in &plan.units {
        let cs = liquibase::changeset(&changelog, &units[i])?;
        let rows: Vec<&Row> = stored.iter().filter(|(k, _)| *k == units[i].key).map(|(_, row)| row).collect();
        if rows.iter().any(|r| r.exectype == "MARK_RAN") {
            r.notes.push(format!(
                "{} was marked ran (its changes never ran here); its rollback runs all the same, as Liquibase's does",
                units[i].name
            ));
        }
        match cs.rollback_statements(Some(&t.schema)) {
            Ok(statements) if !opts.run.liquibase.allow_execute_command && statements.iter().any(executes) => {
                r.refused.push(format!(
                    "{}: changeset {} cannot be rolled back here: its rollback has an executeCommand, which runs a \
                     program; allow it with `allow_execute_command: true` under the module's migrations in the \
                     manifest (or --allow-execute-command)",
                    src.shown(&cs.location),
                    units[i].name
                ));
            }
            Ok(statements) => {
                let deletes = delete_sql(&ledger_table, &rows);
                r.plan.push(Undo {
                    name: units[i].name.clone(),
                    location: src.shown(&cs.location),
                    sql: statements.iter().map(shown_statement).chain(deletes.iter().cloned()).collect(),
                    duration_ms: None,
                });
                work.push((cs, statements, deletes));
            }
            Err(x) => r.refused.push(format!(
                "{}: changeset {} cannot be rolled back: {}",
                src.shown(&x.location),
                x.changeset,
                x.reason
            )),
        }
    }
    if !r.refused.is_empty() {
        r.error = Some(format!(
            "nothing was rolled back: {} of the {} changeset(s) to roll back cannot be; {REFUSAL_FIX}",
            r.refused.len(),
            plan.units.len()
        ));
        return Ok(false);
    }
    if opts.dry_run {
        return Ok(true);
    }
    let total = work.len();
    for (n, (cs, statements, deletes)) in work.into_iter().enumerate() {
        let name = r.plan[n].name.clone();
        // As in `up`: only the last commit waits for the disk, and makes the earlier ones durable.
        let begin = Begin::new(t, n + 1 == total);
        let started = Instant::now();
        let here = src.shown(&cs.location);
        let allow = opts.run.liquibase.allow_execute_command;
        match undo(client, &begin, cs.run_in_transaction, &statements, &deletes, allow, &here).await {
            Ok(()) => {
                let ms = started.elapsed().as_millis() as u64;
                r.plan[n].duration_ms = Some(ms);
                tracing::info!(target = %t.label, migration = %name, ms, "rolled back");
                r.rolled_back.push(name);
            }
            Err(err) => {
                let (index, mut f) = match &err {
                    UndoError::Sql(index, e) => (*index, failure_of(&name, e, None)),
                    UndoError::Action(i, m) => (Some(*i), Failure::message(&name, m.clone())),
                };
                f.in_transaction = cs.run_in_transaction;
                let detail = match index {
                    Some(i) => format!("rollback statement {} of the changeset", i + 1),
                    None => "removing its ledger row or committing".to_string(),
                };
                f.position = Some(format!(
                    "{here} ({detail}{})",
                    f.position.as_deref().map(|p| format!(", {p}")).unwrap_or_default()
                ));
                f.statement = index.map(|i| super::ledger::redact(&shown_statement(&statements[i])));
                tracing::warn!(target = %t.label, migration = %name, error = %f, "rollback failed");
                r.failure = Some(f);
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// Whether a rollback statement is an `executeCommand`.
fn executes(s: &Statement) -> bool {
    matches!(s.action, Some(Action::Execute { .. }))
}

/// A rollback statement as the plan shows it (an action by what it does).
fn shown_statement(s: &Statement) -> String {
    match &s.action {
        None => s.sql.clone(),
        Some(Action::Output { message, target }) => format!("-- output to {target}: {message}"),
        Some(Action::Stop { message }) => format!("-- stop: {message}"),
        Some(Action::Execute { executable, args, .. }) => format!("-- executeCommand: {executable} {}", args.join(" ")),
    }
}

/// A failure while undoing one changeset: a statement (by index) or its action, or the
/// ledger DELETE/COMMIT (index `None`).
enum UndoError {
    Sql(Option<usize>, tokio_postgres::Error),
    Action(usize, String),
}

/// Runs a changeset's rollback statements, then removes its ledger rows; in a transaction
/// (pipelined, like `up`, unless an action such as `output` has to run in its turn) unless
/// the changeset runs outside one.
#[allow(clippy::too_many_arguments)]
async fn undo(
    c: &Client,
    begin: &Begin,
    in_transaction: bool,
    statements: &[Statement],
    deletes: &[String],
    allow_execute: bool,
    here: &str,
) -> Result<(), UndoError> {
    use futures_util::TryFutureExt;
    let sql_err = |i: Option<usize>| move |e| UndoError::Sql(i, e);
    if !in_transaction || statements.iter().any(|s| s.action.is_some()) {
        let setup = if in_transaction { begin.transaction() } else { begin.setup.clone() };
        let result = async {
            c.batch_execute(&setup).await.map_err(sql_err(None))?;
            for (i, s) in statements.iter().enumerate() {
                match &s.action {
                    Some(a) => liquibase::act(a, allow_execute, here).await.map_err(|m| UndoError::Action(i, m))?,
                    None => c.batch_execute(&s.sql).await.map_err(sql_err(Some(i)))?,
                }
            }
            c.batch_execute(&deletes.join(";")).await.map_err(sql_err(None))?;
            if in_transaction {
                c.batch_execute("COMMIT").await.map_err(sql_err(None))?;
            }
            Ok(())
        }
        .await;
        if result.is_err() && in_transaction {
            let _ = c.batch_execute("ROLLBACK").await;
        }
        return result;
    }
    let result = async {
        futures_util::future::try_join3(
            c.batch_execute(&begin.transaction()).map_err(sql_err(None)),
            futures_util::future::try_join_all(
                statements.iter().enumerate().map(|(i, s)| c.batch_execute(&s.sql).map_err(sql_err(Some(i)))),
            ),
            c.batch_execute(&deletes.join(";")).map_err(sql_err(None)),
        )
        .await?;
        c.batch_execute("COMMIT").await.map_err(sql_err(None))
    }
    .await;
    if result.is_err() {
        let _ = c.batch_execute("ROLLBACK").await;
    }
    result
}

/// Text for people: per target, what was (or would be) rolled back.
pub fn render_text(reports: &[RollbackReport]) -> String {
    let mut out = String::new();
    for r in reports {
        let where_ = if r.schema == "public" { r.database.clone() } else { format!("{}.{}", r.database, r.schema) };
        let _ = writeln!(out, "{} ({where_}, ledger {})", r.target, r.ledger);
        if r.dry_run {
            for u in &r.plan {
                let _ = writeln!(out, "  -- roll back {} ({})", u.name, u.location);
                for s in &u.sql {
                    let _ = writeln!(out, "  {};", s.trim_end().trim_end_matches(';'));
                }
            }
        } else if r.ok {
            // What this run rolled back, in order.
            for u in r.plan.iter().filter(|u| r.rolled_back.contains(&u.name)) {
                let _ = write!(out, "  rolled back {}", u.name);
                if let Some(ms) = u.duration_ms {
                    let _ = write!(out, " ({ms} ms)");
                }
                out.push('\n');
            }
        } else if r.refused.is_empty() {
            for u in &r.plan {
                let done = if r.rolled_back.contains(&u.name) { "rolled back" } else { "not rolled back" };
                let _ = writeln!(out, "  {done:<16} {}", u.name);
            }
        }
        for n in &r.notes {
            let _ = writeln!(out, "  note: {n}");
        }
        for s in &r.skipped {
            let _ = writeln!(
                out,
                "  note: {s} stays in the ledger (not in this changelog, or excluded by contexts/labels)"
            );
        }
        for x in &r.refused {
            let _ = writeln!(out, "  refused: {x}");
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
                "its rollback was undone and its ledger row kept; the changesets listed as rolled back stay rolled back; \
                 fix the rollback and run the same command again"
            } else {
                "it ran outside a transaction, so part of its rollback may have stayed; check the target before running again"
            };
            let _ = writeln!(out, "  {advice}");
        }
        let summary = match (r.dry_run, r.ok) {
            (true, true) => format!("would roll back {}", r.plan.len()),
            (false, true) if r.rolled_back.is_empty() => "nothing to roll back".to_string(),
            (false, true) => format!("rolled back {}", r.rolled_back.len()),
            (_, false) => format!("FAILED after rolling back {}", r.rolled_back.len()),
        };
        let _ = writeln!(out, "  {summary}");
    }
    out
}
