//! Stack runs in the control database (`sql/control/0007_stacks.sql`): the run and its
//! steps' states, written by the runner as they change and read by `stack status`,
//! `stack down`, `--resume` and the HTTP API. Catalog and control tables are
//! schema-qualified (admin sessions may have an empty search path).
//!
//! **Invariant:** a run is `running` only while its runner holds the stack's advisory lock
//! `(STACK_LOCK, hashtext(env/stack))` on the connection that writes it; readers report a
//! `running` row without a lock holder as `interrupted`.

use std::time::SystemTime;

use anyhow::{Context, Result};
use serde::Serialize;
use tokio_postgres::Client;

use super::proc::ProcId;
use pgplane_core::stack::schedule::State;

/// Advisory lock class of stack runners (key: `hashtext(env || '/' || stack)`).
pub const STACK_LOCK: i32 = 0x7067_7374; // "pgst"

/// Lines of a failed step's log kept in the control database.
pub const LOG_TAIL_LINES: usize = 20;

/// The key of a stack's lock.
pub fn lock_key(env: &str, stack: &str) -> String {
    format!("{env}/{stack}")
}

/// Takes the stack's lock on `c` without waiting; false when another runner holds it.
pub async fn try_lock(c: &Client, env: &str, stack: &str) -> Result<bool> {
    let got: bool = c
        .query_one(
            "SELECT pg_catalog.pg_try_advisory_lock($1, pg_catalog.hashtext($2))",
            &[&STACK_LOCK, &lock_key(env, stack)],
        )
        .await
        .context("taking the stack's lock")?
        .get(0);
    Ok(got)
}

/// `r.status` told honestly (see the module's invariant).
fn honest_status() -> String {
    format!(
        "CASE WHEN r.status = 'running' AND NOT EXISTS (
                SELECT 1 FROM pg_catalog.pg_locks l WHERE l.locktype = 'advisory' AND l.granted
                   AND l.classid = {STACK_LOCK}::oid
                   AND l.objid = pg_catalog.hashtext(r.env || '/' || r.stack)::oid AND l.objsubid = 2
                   AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database()))
              THEN 'interrupted' ELSE r.status END"
    )
}

/// A run as the API, `stack status` and `--resume` see it.
#[derive(Debug, Clone, Serialize)]
pub struct RunView {
    pub id: i64,
    pub stack: String,
    pub env: String,
    pub file: String,
    /// `running`, `succeeded`, `failed`, `interrupted` (its runner stopped) or `stopped`
    /// (`stack down`).
    pub status: String,
    pub host: String,
    pub runner_pid: Option<i32>,
    pub attempts: i32,
    pub error: Option<String>,
    /// RFC 3339, UTC.
    pub started_at: String,
    pub finished_at: Option<String>,
    /// How many steps are in each state.
    pub counts: std::collections::BTreeMap<String, i64>,
    /// Empty in lists.
    pub steps: Vec<StepView>,
}

/// A step of a run.
#[derive(Debug, Clone, Serialize)]
pub struct StepView {
    pub name: String,
    pub kind: String,
    pub group: Option<String>,
    pub needs: serde_json::Value,
    pub state: String,
    /// Waiting: the condition's last value; failed: why; skipped: what it needed.
    pub detail: Option<String>,
    pub exit_code: Option<i32>,
    /// The last lines of its log, when it failed.
    pub log_tail: Option<String>,
    pub attempts: i32,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// Milliseconds since the Unix epoch (for tests and scripts comparing times).
    pub started_ms: Option<i64>,
    pub finished_ms: Option<i64>,
    pub pid: Option<i32>,
    #[serde(skip)]
    pub pid_start: Option<String>,
    pub host: Option<String>,
    pub log_path: Option<String>,
    /// Whether its process still runs (services; known only on the host that started it).
    pub alive: Option<bool>,
}

impl StepView {
    pub fn state(&self) -> State {
        State::parse(&self.state).unwrap_or(State::Pending)
    }

    pub fn process(&self) -> Option<ProcId> {
        Some(ProcId { pid: self.pid?, start: self.pid_start.clone()? })
    }

    /// Fills `alive` for a service whose process ran on this host.
    pub fn check_alive(&mut self) {
        if self.kind == "service" && self.host.as_deref() == Some(super::proc::hostname().as_str()) {
            self.alive = self.process().map(|p| super::proc::alive(&p));
        }
    }
}

const TIME: &str = "'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'";

/// Runs, newest first: one (`id`), the latest of a stack, or the latest `limit` (of an env).
pub async fn runs(
    c: &Client,
    id: Option<i64>,
    env: Option<&str>,
    stack: Option<&str>,
    limit: i64,
) -> Result<Vec<RunView>> {
    let rows = c
        .query(
            &format!(
                "SELECT r.id, r.stack, r.env, r.file, {status}, r.host, r.runner_pid, r.attempts, r.error,
                        to_char(r.started_at AT TIME ZONE 'UTC', {TIME}),
                        to_char(r.finished_at AT TIME ZONE 'UTC', {TIME}),
                        (SELECT COALESCE(jsonb_object_agg(state, n), '{{}}')::text
                           FROM (SELECT state, count(*) AS n FROM pgplane.stack_steps s WHERE s.run_id = r.id GROUP BY state) c)
                   FROM pgplane.stack_runs r
                  WHERE ($1::int8 IS NULL OR r.id = $1) AND ($2::text IS NULL OR r.env = $2)
                    AND ($3::text IS NULL OR r.stack = $3)
                  ORDER BY r.id DESC LIMIT $4",
                status = honest_status()
            ),
            &[&id, &env, &stack, &limit],
        )
        .await
        .context("reading stack runs")?;
    rows.iter()
        .map(|r| {
            let counts: String = r.get(11);
            Ok(RunView {
                id: r.get(0),
                stack: r.get(1),
                env: r.get(2),
                file: r.get(3),
                status: r.get(4),
                host: r.get(5),
                runner_pid: r.get(6),
                attempts: r.get(7),
                error: r.get(8),
                started_at: r.get(9),
                finished_at: r.get(10),
                counts: serde_json::from_str(&counts).unwrap_or_default(),
                steps: Vec::new(),
            })
        })
        .collect()
}

/// One run with its steps in file order.
pub async fn run_with_steps(c: &Client, id: i64) -> Result<Option<RunView>> {
    let Some(mut run) = runs(c, Some(id), None, None, 1).await?.into_iter().next() else { return Ok(None) };
    run.steps = steps(c, id).await?;
    Ok(Some(run))
}

pub async fn steps(c: &Client, run: i64) -> Result<Vec<StepView>> {
    let rows = c
        .query(
            &format!(
                "SELECT name, kind, grp, needs::text, state, detail, exit_code, log_tail, attempts,
                        to_char(started_at AT TIME ZONE 'UTC', {TIME}), to_char(finished_at AT TIME ZONE 'UTC', {TIME}),
                        (extract(epoch FROM started_at) * 1000)::int8, (extract(epoch FROM finished_at) * 1000)::int8,
                        pid, pid_start, host, log_path
                   FROM pgplane.stack_steps WHERE run_id = $1 ORDER BY position"
            ),
            &[&run],
        )
        .await
        .context("reading a stack run's steps")?;
    Ok(rows
        .iter()
        .map(|r| {
            let needs: String = r.get(3);
            StepView {
                name: r.get(0),
                kind: r.get(1),
                group: r.get(2),
                needs: serde_json::from_str(&needs).unwrap_or(serde_json::Value::Null),
                state: r.get(4),
                detail: r.get(5),
                exit_code: r.get(6),
                log_tail: r.get(7),
                attempts: r.get(8),
                started_at: r.get(9),
                finished_at: r.get(10),
                started_ms: r.get(11),
                finished_ms: r.get(12),
                pid: r.get(13),
                pid_start: r.get(14),
                host: r.get(15),
                log_path: r.get(16),
                alive: None,
            }
        })
        .collect())
}

/// A new run, `running`, with every step `pending`.
pub async fn create_run(
    c: &Client,
    stack: &str,
    env: &str,
    file: &str,
    options: &serde_json::Value,
    steps: &[NewStep],
) -> Result<i64> {
    let host = super::proc::hostname();
    let pid = std::process::id() as i32;
    let id: i64 = c
        .query_one(
            "INSERT INTO pgplane.stack_runs (stack, env, file, status, host, runner_pid, options)
             VALUES ($1, $2, $3, 'running', $4, $5, $6::text::jsonb) RETURNING id",
            &[&stack, &env, &file, &host, &pid, &options.to_string()],
        )
        .await
        .context("recording the stack run")?
        .get(0);
    add_steps(c, id, steps).await?;
    Ok(id)
}

/// A step as first recorded.
pub struct NewStep {
    pub name: String,
    pub position: i32,
    pub kind: String,
    pub group: Option<String>,
    pub needs: serde_json::Value,
}

/// Records steps (new ones of a resumed run, too); positions and definitions of known ones
/// are updated.
pub async fn add_steps(c: &Client, run: i64, steps: &[NewStep]) -> Result<()> {
    for s in steps {
        c.execute(
            "INSERT INTO pgplane.stack_steps (run_id, name, position, kind, grp, needs, state)
             VALUES ($1, $2, $3, $4, $5, $6::text::jsonb, 'pending')
             ON CONFLICT (run_id, name) DO UPDATE SET position = EXCLUDED.position, kind = EXCLUDED.kind,
                    grp = EXCLUDED.grp, needs = EXCLUDED.needs",
            &[&run, &s.name, &s.position, &s.kind, &s.group, &s.needs.to_string()],
        )
        .await
        .with_context(|| format!("recording step {}", s.name))?;
    }
    Ok(())
}

/// A resumed run: `running` again, by this process.
pub async fn reopen_run(c: &Client, run: i64, options: &serde_json::Value) -> Result<()> {
    let host = super::proc::hostname();
    let pid = std::process::id() as i32;
    c.execute(
        "UPDATE pgplane.stack_runs SET status = 'running', host = $2, runner_pid = $3, options = $4::text::jsonb,
                attempts = attempts + 1, error = NULL, finished_at = NULL, updated_at = now() WHERE id = $1",
        &[&run, &host, &pid, &options.to_string()],
    )
    .await
    .context("reopening the stack run")?;
    Ok(())
}

/// Steps of an earlier run that are no longer in the stack.
pub async fn forget_steps(c: &Client, run: i64, keep: &[String]) -> Result<u64> {
    Ok(c.execute("DELETE FROM pgplane.stack_steps WHERE run_id = $1 AND NOT (name = ANY($2))", &[&run, &keep]).await?)
}

pub async fn finish_run(c: &Client, run: i64, status: &str, error: Option<&str>) -> Result<()> {
    c.execute(
        "UPDATE pgplane.stack_runs SET status = $2, error = $3, finished_at = now(), updated_at = now() WHERE id = $1",
        &[&run, &status, &error],
    )
    .await
    .context("recording the end of the stack run")?;
    Ok(())
}

/// A step back to `pending` for this run (selected again): its last outcome is cleared.
pub async fn reset_step(c: &Client, run: i64, name: &str, detail: Option<&str>) -> Result<()> {
    c.execute(
        "UPDATE pgplane.stack_steps SET state = 'pending', detail = $3, exit_code = NULL, log_tail = NULL,
                updated_at = now() WHERE run_id = $1 AND name = $2",
        &[&run, &name, &detail],
    )
    .await
    .with_context(|| format!("recording step {name}"))?;
    Ok(())
}

/// The step started: its state, start time and attempt; the end of an earlier attempt is cleared.
pub async fn step_started(
    c: &Client,
    run: i64,
    name: &str,
    state: State,
    at: SystemTime,
    log_path: &str,
) -> Result<()> {
    c.execute(
        "UPDATE pgplane.stack_steps SET state = $3, started_at = $4, finished_at = NULL, detail = NULL,
                exit_code = NULL, log_tail = NULL, attempts = attempts + 1, log_path = $5, updated_at = now()
          WHERE run_id = $1 AND name = $2",
        &[&run, &name, &state.as_str(), &at, &log_path],
    )
    .await
    .with_context(|| format!("recording step {name}"))?;
    Ok(())
}

/// The step's process (a command's, a service's supervisor), or none.
pub async fn step_process(c: &Client, run: i64, name: &str, proc: Option<&ProcId>) -> Result<()> {
    let host = proc.map(|_| super::proc::hostname());
    c.execute(
        "UPDATE pgplane.stack_steps SET pid = $3, pid_start = $4, host = $5, updated_at = now()
          WHERE run_id = $1 AND name = $2",
        &[&run, &name, &proc.map(|p| p.pid), &proc.map(|p| p.start.as_str()), &host],
    )
    .await
    .with_context(|| format!("recording step {name}'s process"))?;
    Ok(())
}

/// A state change while the step runs (`waiting` with the last value, `starting`).
pub async fn step_state(c: &Client, run: i64, name: &str, state: State, detail: Option<&str>) -> Result<()> {
    c.execute(
        "UPDATE pgplane.stack_steps SET state = $3, detail = $4, updated_at = now() WHERE run_id = $1 AND name = $2",
        &[&run, &name, &state.as_str(), &detail],
    )
    .await
    .with_context(|| format!("recording step {name}"))?;
    Ok(())
}

/// How a step ended, as recorded.
pub struct Finish<'a> {
    pub state: State,
    /// When it ended (`None` for a step that did not run, e.g. skipped).
    pub at: Option<SystemTime>,
    pub detail: Option<&'a str>,
    pub exit_code: Option<i32>,
    pub log_tail: Option<&'a str>,
    /// Its process is gone (or was never there): clear pid, start time and host.
    pub forget_process: bool,
}

/// How the step ended, in one statement (the next step waits for it).
pub async fn step_finished(c: &Client, run: i64, name: &str, f: Finish<'_>) -> Result<()> {
    c.execute(
        "UPDATE pgplane.stack_steps SET state = $3, finished_at = $4, detail = $5, exit_code = $6, log_tail = $7,
                pid = CASE WHEN $8 THEN NULL ELSE pid END, pid_start = CASE WHEN $8 THEN NULL ELSE pid_start END,
                host = CASE WHEN $8 THEN NULL ELSE host END, updated_at = now()
          WHERE run_id = $1 AND name = $2",
        &[&run, &name, &f.state.as_str(), &f.at, &f.detail, &f.exit_code, &f.log_tail, &f.forget_process],
    )
    .await
    .with_context(|| format!("recording step {name}"))?;
    Ok(())
}
