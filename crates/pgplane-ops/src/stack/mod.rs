//! `pgplane stack`: runs a stack (validated by `pgplane_core::stack`) — commands, SQL,
//! waits and services — in the order the pure scheduler decides, records every step's
//! state in the control database, and keeps services running after the run.
//!
//! The entry points take typed requests, report progress through [`StackEvents`] and stop
//! when their cancellation handle (a `watch`) turns true, so a job runner can call them
//! as well as the CLI: [`load`] → [`run`], [`status`], [`down`]. Nothing here knows
//! about clap or a terminal (the renderers in `render.rs` implement the events).

pub mod creds;
pub mod proc;
pub mod record;

mod steps;
pub mod supervise;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use pgplane_core::manifest::Manifest;
use pgplane_core::model::Desired;
use pgplane_core::stack::schedule::{self, decide, State};
use pgplane_core::stack::{Kind, SqlText, Stack, StackErrors, StackSource};
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio_postgres::Client;

use self::creds::{Login, Redactor};
use self::proc::ProcId;
use self::record::{NewStep, RunView};
use self::steps::{Msg, Outcome, ProcEnv, StepCtx, StepLog};
use crate::conn::Servers;
use crate::control::{self, CONTROL_DB};
use crate::ops::{self, Ctx};

/// Progress of a run, for whoever shows it (a terminal, log lines, a job's record).
pub trait StackEvents: Send + Sync {
    fn event(&self, event: &Event<'_>);
}

/// What happens during a run. Output lines and details are already redacted.
#[derive(Debug)]
pub enum Event<'a> {
    RunStarted {
        run: i64,
        stack: &'a str,
        env: &'a str,
        steps: usize,
        selected: usize,
        resumed: bool,
        log_dir: &'a Path,
    },
    /// `phase` (0-based) of `phases`: the dry-run wave the step belongs to.
    StepStarted {
        step: &'a str,
        kind: &'static str,
        phase: usize,
        phases: usize,
    },
    Output {
        step: &'a str,
        line: &'a str,
    },
    /// A wait's or a health check's latest observation.
    Waiting {
        step: &'a str,
        observed: &'a str,
    },
    StepFinished {
        step: &'a str,
        state: State,
        detail: Option<&'a str>,
        elapsed: Duration,
    },
    StepSkipped {
        step: &'a str,
        reason: &'a str,
    },
    Note {
        text: &'a str,
    },
    RunFinished {
        run: i64,
        status: &'a str,
    },
}

/// A stack ready to run: validated against its manifest and the environment.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub stack: Stack,
    pub env: String,
    /// The manifest whose modules steps name (the stack file's `manifest:`, or the
    /// manifest holding the stack); `None`: the embedded local server, no credentials.
    pub manifest: Option<Manifest>,
    pub desired: Option<Desired>,
}

/// Reads `file`: a stack file, or a manifest with `stacks:` (`stack` picks one when it has
/// several). Every problem of the stack is reported at once, each with its file and line.
pub fn load(file: &Path, stack: Option<&str>, env: Option<&str>) -> Result<Loaded> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read {} (pass the stack file with -f FILE)", file.display()))?;
    if pgplane_core::stack::is_manifest(&text) {
        let manifest = ops::load_manifest(file)?;
        let env = ops::environment(&manifest, env)?;
        let desired = Desired::build(&manifest, &env, &Default::default())
            .map_err(|e| anyhow::anyhow!("{}: {e}", manifest.file.display()))?;
        let names: Vec<String> = manifest.stacks.iter().map(StackSource::name).collect();
        let source = match stack {
            Some(n) => manifest
                .stacks
                .iter()
                .find(|s| s.name() == n)
                .with_context(|| format!("{} has no stack {n:?} (stacks: {})", file.display(), listing(&names)))?,
            None => match manifest.stacks.as_slice() {
                [one] => one,
                [] => {
                    bail!("{} is a manifest without `stacks:`; pass a stack file, or add a stack to it", file.display())
                }
                _ => bail!("{} has several stacks; pick one with --stack NAME ({})", file.display(), listing(&names)),
            },
        };
        let built = source.build(Some(&manifest), Some(&desired), &env).map_err(errors)?;
        return Ok(Loaded { stack: built, env, manifest: Some(manifest), desired: Some(desired) });
    }
    let source = StackSource::parse(file, &text)?;
    if let Some(n) = stack {
        if n != source.name() {
            bail!("{} holds stack {:?}, not {n:?}", file.display(), source.name());
        }
    }
    let manifest = match source.manifest_path() {
        Some(p) => Some(ops::load_manifest(&p)?),
        None => None,
    };
    let env = match &manifest {
        Some(m) => ops::environment(m, env)?,
        None => env.unwrap_or("default").to_string(),
    };
    let desired = match &manifest {
        Some(m) => Some(
            Desired::build(m, &env, &Default::default()).map_err(|e| anyhow::anyhow!("{}: {e}", m.file.display()))?,
        ),
        None => None,
    };
    let built = source.build(manifest.as_ref(), desired.as_ref(), &env).map_err(errors)?;
    Ok(Loaded { stack: built, env, manifest, desired })
}

fn listing(names: &[String]) -> String {
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

/// Several problems as one error: a count, then one line each.
fn errors(e: StackErrors) -> anyhow::Error {
    if e.0.len() == 1 {
        return anyhow::anyhow!("{e}; nothing ran");
    }
    anyhow::anyhow!("{} problems; nothing ran:\n{e}", e.0.len())
}

/// How to run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunOptions {
    /// Continue the latest run: completed steps are not run again, services are re-checked.
    pub resume: bool,
    /// Run this step and everything that depends on it (of the latest run), even if completed.
    pub from: Option<String>,
    /// Run only these steps (of the latest run), even if completed; their needs are not checked.
    pub only: Vec<String>,
    /// After a failure, let steps that do not depend on it run on.
    pub keep_going: bool,
    /// No output lines (the log files still get them).
    pub quiet: bool,
    /// Print the order of phases and steps; run nothing.
    pub dry_run: bool,
}

pub struct RunRequest {
    pub loaded: Loaded,
    pub options: RunOptions,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Ended {
    /// Every selected step completed (services are up).
    Succeeded,
    /// A step failed or timed out; what depends on it was skipped.
    Failed,
    /// Cancelled (a signal): `--resume` continues.
    Interrupted,
}

impl Ended {
    pub fn as_str(self) -> &'static str {
        match self {
            Ended::Succeeded => "succeeded",
            Ended::Failed => "failed",
            Ended::Interrupted => "interrupted",
        }
    }
}

pub enum RunOutcome {
    DryRun(DryRun),
    Ran { ended: Ended, run: RunView },
}

/// The order a run would take.
#[derive(Debug, Clone, Serialize)]
pub struct DryRun {
    pub stack: String,
    pub env: String,
    /// Step names per phase.
    pub phases: Vec<Vec<String>>,
    /// Steps this run would not run (completed before, or outside --from/--only).
    pub not_run: Vec<String>,
    #[serde(skip)]
    pub text: String,
}

/// Runs a stack (or, with `dry_run`, says in which order it would). Ends when no step runs
/// and none may start, or soon after `cancel` turns true.
pub async fn run(
    ctx: &Ctx,
    req: RunRequest,
    events: &dyn StackEvents,
    mut cancel: watch::Receiver<bool>,
) -> Result<RunOutcome> {
    let Loaded { stack, env, manifest, desired } = req.loaded;
    let opts = req.options;
    for name in opts.only.iter().chain(opts.from.iter()) {
        if stack.index(name).is_none() {
            let names: Vec<String> = stack.steps.iter().map(|s| s.name.clone()).collect();
            bail!("{} has no step {name:?} (steps: {})", stack.file.display(), listing(&names));
        }
    }
    let inputs = Inputs::read(&stack)?;
    let accesses = match &desired {
        Some(d) => stack.access(d).map_err(errors)?,
        None => vec![None; stack.steps.len()],
    };
    let continuing = opts.resume || opts.from.is_some() || !opts.only.is_empty();
    if opts.dry_run && !continuing {
        let selected = vec![true; stack.steps.len()];
        return Ok(RunOutcome::DryRun(dry_run(&stack, &env, &selected)));
    }
    let servers = servers(ctx, manifest.as_ref())?;
    if opts.dry_run {
        // Read-only: the latest run's states, if the control database has any.
        let recorded = match open_control(&servers, false, &stack.name).await? {
            Some(c) => match record::runs(&c, None, Some(&env), Some(&stack.name), 1).await?.into_iter().next() {
                Some(r) => record::steps(&c, r.id).await?,
                None => Vec::new(),
            },
            None => Vec::new(),
        };
        let states = recorded_states(&stack, &recorded);
        let selected = selection(&stack, &states, &opts);
        return Ok(RunOutcome::DryRun(dry_run(&stack, &env, &selected)));
    }

    let c = open_control(&servers, true, &stack.name).await?.context("opening the control database")?;
    if !record::try_lock(&c, &env, &stack.name).await? {
        let holder = record::runs(&c, None, Some(&env), Some(&stack.name), 1).await?.into_iter().next();
        match holder {
            Some(r) => bail!(
                "another `pgplane stack run` of stack {} (env {env}) is running: run {}, pid {} on host {}; wait for it or stop it first",
                stack.name,
                r.id,
                r.runner_pid.unwrap_or(0),
                r.host
            ),
            None => bail!("another `pgplane stack run` of stack {} (env {env}) is running", stack.name),
        }
    }
    let logins = match &desired {
        Some(d) => creds::logins(&accesses, d, &servers, &c, ctx.keys()?).await?,
        None => vec![None; stack.steps.len()],
    };

    // The run: a new one, or the latest one continued.
    let options = serde_json::to_value(&opts)?;
    let new_steps: Vec<NewStep> = stack
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| NewStep {
            name: s.name.clone(),
            position: i as i32,
            kind: s.kind.as_str().to_string(),
            group: s.group.clone(),
            needs: serde_json::Value::Array(
                s.needs
                    .iter()
                    .map(|n| serde_json::json!({"step": stack.steps[n.step].name, "condition": n.condition.as_str()}))
                    .collect(),
            ),
        })
        .collect();
    let latest = record::runs(&c, None, Some(&env), Some(&stack.name), 1).await?.into_iter().next();
    let file = stack.file.display().to_string();
    let (run_id, recorded, resumed) = match (continuing, latest) {
        (true, Some(r)) => {
            record::reopen_run(&c, r.id, &options).await?;
            let old = record::steps(&c, r.id).await?;
            // Steps that left the stack are forgotten, unless their process still runs.
            let mut keep: Vec<String> = stack.steps.iter().map(|s| s.name.clone()).collect();
            for s in &old {
                let live = s.process().is_some_and(|p| proc::alive(&p));
                if live && stack.index(&s.name).is_none() {
                    events.event(&Event::Note {
                        text: &format!(
                            "step {} is no longer in the stack but its process (pid {}) still runs; `pgplane stack down` stops it",
                            s.name,
                            s.pid.unwrap_or(0)
                        ),
                    });
                    keep.push(s.name.clone());
                }
            }
            record::forget_steps(&c, r.id, &keep).await?;
            record::add_steps(&c, r.id, &new_steps).await?;
            (r.id, record::steps(&c, r.id).await?, true)
        }
        (continuing, latest) => {
            if let Some(r) = &latest {
                let live: Vec<String> = record::steps(&c, r.id)
                    .await?
                    .iter()
                    .filter(|s| s.kind == "service" && s.process().is_some_and(|p| proc::alive(&p)))
                    .map(|s| format!("{} (pid {})", s.name, s.pid.unwrap_or(0)))
                    .collect();
                if !live.is_empty() {
                    bail!(
                        "run {} of stack {} still has services running: {}; stop them with `pgplane stack down -f {}` first, or continue that run with --resume",
                        r.id,
                        stack.name,
                        live.join(", "),
                        file
                    );
                }
            }
            let id = record::create_run(&c, &stack.name, &env, &file, &options, &new_steps).await?;
            if continuing {
                events.event(&Event::Note {
                    text: &format!("no earlier run of stack {}; starting run {id}", stack.name),
                });
            }
            (id, record::steps(&c, id).await?, false)
        }
    };
    // The run is a job of this process too (`job list` shows it; its lock is held on the
    // run's control connection, so a killed runner's job reads as interrupted). Its services
    // live on this host, so no other worker takes it over: `--resume` continues it.
    let journal = crate::control::Journal::start_for(&c, None, "stack_run", Some(&env), Some(&stack.name)).await?;
    let mut states = recorded_states(&stack, &recorded);
    let selected = selection(&stack, &states, &opts);
    let processes: Vec<Option<ProcId>> =
        stack.steps.iter().map(|s| recorded.iter().find(|r| r.name == s.name).and_then(|r| r.process())).collect();
    // Absolute: services' supervisors write there from the step's own folder.
    let log_dir = std::path::absolute(ctx.home.join("stacks").join(run_id.to_string()))
        .context("the home folder's absolute path")?;
    std::fs::create_dir_all(&log_dir).with_context(|| format!("creating {}", log_dir.display()))?;
    for (i, s) in stack.steps.iter().enumerate() {
        if !selected[i] {
            continue;
        }
        // A command a dead runner left behind is stopped before it runs again.
        if !s.is_service() {
            if let Some(p) = &processes[i] {
                if proc::group_is_ours(p) {
                    events.event(&Event::Note {
                        text: &format!(
                            "step {}: stopping its earlier process (pid {}) before it runs again",
                            s.name, p.pid
                        ),
                    });
                    proc::stop_group(p, Duration::from_secs(10)).await;
                }
            }
        }
        if states[i] != State::Pending {
            record::reset_step(&c, run_id, &s.name, None).await?;
            states[i] = State::Pending;
        }
    }
    let phases = schedule::phases(&stack, &selected);
    let phase_of = schedule::phase_of(&phases, stack.steps.len());
    events.event(&Event::RunStarted {
        run: run_id,
        stack: &stack.name,
        env: &env,
        steps: stack.steps.len(),
        selected: selected.iter().filter(|s| **s).count(),
        resumed,
        log_dir: &log_dir,
    });

    let mut runner = Runner {
        stack: &stack,
        env: &env,
        run: run_id,
        c: &c,
        events,
        logins,
        inputs,
        log_dir,
        processes,
        states,
        selected,
        started: vec![None; stack.steps.len()],
        cancels: vec![None; stack.steps.len()],
        exe: std::env::current_exe().context("finding the pgplane binary (services run under it)")?,
        quiet: opts.quiet,
        phase_of,
        phases: phases.len(),
        unrecorded: Vec::new(),
    };
    let (tx, mut rx) = mpsc::unbounded_channel::<Msg>();
    let (done_tx, done_rx) = watch::channel(false);
    let mut stopping = false;
    let mut interrupted = false;
    let result: Result<()> = async {
        loop {
            let d = decide(runner.stack, &runner.states, &runner.selected, stopping || interrupted);
            for (i, why) in d.skip {
                runner.skip(i, &why).await?;
            }
            for i in d.start {
                runner.start(i, tx.clone(), done_rx.clone()).await?;
            }
            runner.flush().await?;
            if runner.active() == 0 {
                break;
            }
            tokio::select! {
                Some(msg) = rx.recv() => {
                    if let Some(failed) = runner.handle(msg).await? {
                        if !opts.keep_going && !stopping {
                            stopping = true;
                            runner.stop_observers(&failed);
                        }
                    }
                }
                changed = cancel.changed(), if !interrupted => {
                    if changed.is_err() || *cancel.borrow() {
                        interrupted = true;
                        events.event(&Event::Note { text: "stopping: running steps are cancelled; `--resume` continues" });
                        runner.cancel_all();
                    }
                }
            }
        }
        Ok(())
    }
    .await;
    done_tx.send_replace(true);
    if let Err(e) = result {
        // The control database failed us: stop the steps (their processes included) and
        // let them end before giving up, so none is left running unrecorded.
        runner.cancel_all();
        let until = tokio::time::Instant::now() + Duration::from_secs(15);
        while runner.active() > 0 {
            match tokio::time::timeout_at(until, rx.recv()).await {
                Ok(Some(Msg::Finished(i, _))) => runner.cancels[i] = None,
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        let _ = record::finish_run(&c, run_id, "failed", Some(&format!("{e:#}"))).await;
        let _ = journal.finish(&c, 0, Some(&format!("{e:#}"))).await;
        return Err(e);
    }
    runner.flush().await?;
    let ended = if interrupted {
        Ended::Interrupted
    } else if runner.selected.iter().zip(&runner.states).all(|(sel, st)| !sel || st.is_done()) {
        Ended::Succeeded
    } else {
        Ended::Failed
    };
    record::finish_run(&c, run_id, ended.as_str(), None).await?;
    let completed = runner.states.iter().filter(|s| s.is_done()).count();
    let failure = (ended != Ended::Succeeded).then(|| format!("stack run {run_id} {}", ended.as_str()));
    journal.finish(&c, completed, failure.as_deref()).await?;
    events.event(&Event::RunFinished { run: run_id, status: ended.as_str() });
    let mut view = record::run_with_steps(&c, run_id).await?.context("the run's record vanished")?;
    view.steps.iter_mut().for_each(record::StepView::check_alive);
    Ok(RunOutcome::Ran { ended, run: view })
}

/// SQL files read and folders checked before anything runs.
struct Inputs {
    sql: Vec<Option<String>>,
}

impl Inputs {
    fn read(stack: &Stack) -> Result<Inputs> {
        let mut problems = Vec::new();
        let mut sql = Vec::new();
        for s in &stack.steps {
            let place = format!("{}:{}: step {}", stack.file.display(), s.line, s.name);
            sql.push(match &s.kind {
                Kind::Sql { sql: SqlText::Inline(t) } => Some(t.clone()),
                Kind::Sql { sql: SqlText::File(p) } => match std::fs::read_to_string(p) {
                    Ok(t) => Some(t),
                    Err(e) => {
                        problems.push(format!("{place}: cannot read sql_file {}: {e}", p.display()));
                        None
                    }
                },
                _ => None,
            });
            if let Some(cwd) = &s.cwd {
                if !cwd.is_dir() {
                    problems.push(format!("{place}: cwd {} is not a folder", cwd.display()));
                }
            }
        }
        match problems.len() {
            0 => Ok(Inputs { sql }),
            1 => bail!("{}; nothing ran", problems[0]),
            n => bail!("{n} problems; nothing ran:\n{}", problems.join("\n")),
        }
    }
}

fn dry_run(stack: &Stack, env: &str, selected: &[bool]) -> DryRun {
    let phases = schedule::phases(stack, selected);
    DryRun {
        stack: stack.name.clone(),
        env: env.to_string(),
        phases: phases.iter().map(|w| w.iter().map(|&i| stack.steps[i].name.clone()).collect()).collect(),
        not_run: stack.steps.iter().enumerate().filter(|(i, _)| !selected[*i]).map(|(_, s)| s.name.clone()).collect(),
        text: schedule::render_phases(stack, &phases, selected),
    }
}

/// The recorded state of each step of the stack (pending when not recorded).
fn recorded_states(stack: &Stack, recorded: &[record::StepView]) -> Vec<State> {
    stack
        .steps
        .iter()
        .map(|s| recorded.iter().find(|r| r.name == s.name).map(record::StepView::state).unwrap_or(State::Pending))
        .collect()
}

/// Which steps this run runs: all (a new run), the unfinished ones (`--resume`; services
/// always, to be re-checked), `--from S` and what depends on it, or `--only` steps.
fn selection(stack: &Stack, states: &[State], opts: &RunOptions) -> Vec<bool> {
    let n = stack.steps.len();
    if !opts.only.is_empty() {
        return stack.steps.iter().map(|s| opts.only.contains(&s.name)).collect();
    }
    if let Some(from) = opts.from.as_ref().and_then(|f| stack.index(f)) {
        let mut sel = vec![false; n];
        sel[from] = true;
        // Steps are not in dependency order: repeat until nothing changes.
        loop {
            let mut changed = false;
            for (i, s) in stack.steps.iter().enumerate() {
                if !sel[i] && s.needs.iter().any(|need| sel[need.step]) {
                    sel[i] = true;
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        return sel;
    }
    if opts.resume {
        return stack.steps.iter().zip(states).map(|(s, st)| s.is_service() || *st != State::Completed).collect();
    }
    vec![true; n]
}

/// The manifest's servers, or the embedded local server.
fn servers(ctx: &Ctx, manifest: Option<&Manifest>) -> Result<Servers> {
    match manifest {
        Some(m) => Servers::resolve(m, &ctx.local, || ctx.keys()),
        None => Ok(Servers { list: vec![crate::conn::start_local(&ctx.local, ctx.keys()?)?] }),
    }
}

/// A session in the control database named `pgplane-stack/<stack>` (never an apply's
/// name, which apply's reaper would end). `create`: create and migrate it when needed;
/// otherwise `None` when it does not exist yet.
async fn open_control(servers: &Servers, create: bool, stack: &str) -> Result<Option<Client>> {
    let first = servers.first();
    let admin = first.connect(None).await?;
    if create {
        control::create_if_missing(&admin).await?;
        drop(control::ensure_as(first, crate::conn::Role::Branch).await?);
    } else if control::open_existing(first, &admin).await?.is_none() {
        return Ok(None);
    }
    let has_stacks: bool = if create {
        true
    } else {
        let c = first.connect(Some(CONTROL_DB)).await?;
        c.query_one("SELECT pg_catalog.to_regclass('pgplane.stack_runs') IS NOT NULL", &[]).await?.get(0)
    };
    if !has_stacks {
        return Ok(None);
    }
    let c = first.connect_named(Some(CONTROL_DB), &format!("pgplane-stack/{stack}")).await?;
    // The lock session idles for the whole run: never let the server end it for that.
    c.batch_execute("SET idle_session_timeout = 0; SET idle_in_transaction_session_timeout = 0").await?;
    Ok(Some(c))
}

/// The state of a running stack.
struct Runner<'a> {
    stack: &'a Stack,
    env: &'a str,
    run: i64,
    c: &'a Client,
    events: &'a dyn StackEvents,
    logins: Vec<Option<Login>>,
    inputs: Inputs,
    log_dir: PathBuf,
    processes: Vec<Option<ProcId>>,
    states: Vec<State>,
    selected: Vec<bool>,
    started: Vec<Option<Instant>>,
    /// The cancel switch of each running step.
    cancels: Vec<Option<watch::Sender<bool>>>,
    exe: PathBuf,
    quiet: bool,
    phase_of: Vec<Option<usize>>,
    phases: usize,
    /// Ends of steps not recorded yet (see [`Runner::flush`]).
    unrecorded: Vec<Unrecorded>,
}

/// A step's end, until it is recorded.
struct Unrecorded {
    name: String,
    state: State,
    at: Option<SystemTime>,
    detail: Option<String>,
    exit_code: Option<i32>,
    log_tail: Option<String>,
    forget_process: bool,
}

impl Runner<'_> {
    fn active(&self) -> usize {
        self.cancels.iter().filter(|c| c.is_some()).count()
    }

    fn redactor(&self, i: usize) -> Redactor {
        Redactor::new(self.logins[i].as_ref().map(Login::secrets).unwrap_or_default())
    }

    async fn skip(&mut self, i: usize, why: &str) -> Result<()> {
        let name = self.stack.steps[i].name.clone();
        self.states[i] = State::Skipped;
        self.unrecorded.push(Unrecorded {
            name: name.clone(),
            state: State::Skipped,
            at: None,
            detail: Some(why.to_string()),
            exit_code: None,
            log_tail: None,
            forget_process: false,
        });
        self.events.event(&Event::StepSkipped { step: &name, reason: why });
        Ok(())
    }

    /// Records the ends of steps, in the order they happened. Called after the steps that
    /// waited for them have been started (so they do not wait for the commit) and before
    /// their starts are recorded (so no record shows a step started before what it needs
    /// ended).
    async fn flush(&mut self) -> Result<()> {
        for u in std::mem::take(&mut self.unrecorded) {
            let finish = record::Finish {
                state: u.state,
                at: u.at,
                detail: u.detail.as_deref(),
                exit_code: u.exit_code,
                log_tail: u.log_tail.as_deref(),
                forget_process: u.forget_process,
            };
            record::step_finished(self.c, self.run, &u.name, finish).await?;
        }
        Ok(())
    }

    async fn start(&mut self, i: usize, tx: mpsc::UnboundedSender<Msg>, run_done: watch::Receiver<bool>) -> Result<()> {
        let step = &self.stack.steps[i];
        let log_path = self.log_dir.join(format!("{}.log", step.name));
        let mut log = StepLog::open(&log_path, self.redactor(i), i, tx.clone(), !self.quiet)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let now = SystemTime::now();
        log.note(&format!("{} step {} of run {} at {}", step.kind.as_str(), step.name, self.run, rfc3339(now)));
        let state = match &step.kind {
            Kind::Wait { .. } => State::Waiting,
            Kind::Service { .. } => State::Starting,
            _ => State::Running,
        };
        self.states[i] = state;
        self.started[i] = Some(Instant::now());
        self.events.event(&Event::StepStarted {
            step: &step.name,
            kind: step.kind.as_str(),
            phase: self.phase_of[i].unwrap_or(0),
            phases: self.phases,
        });
        let (cancel_tx, cancel_rx) = watch::channel(false);
        self.cancels[i] = Some(cancel_tx);
        let mut env = vec![
            ("PGPLANE_STACK".to_string(), self.stack.name.clone()),
            ("PGPLANE_RUN".to_string(), self.run.to_string()),
            ("PGPLANE_STEP".to_string(), step.name.clone()),
            ("PGPLANE_ENV".to_string(), self.env.to_string()),
        ];
        env.extend(step.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        let cwd = step.cwd.clone().unwrap_or_else(|| match self.stack.file.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        });
        let cx = StepCtx {
            index: i,
            login: self.logins[i].clone(),
            proc_env: ProcEnv { cwd, login: self.logins[i].clone(), env },
            log: Arc::new(Mutex::new(log)),
            tx,
            cancel: cancel_rx,
            timeout: step.timeout,
            existing: if step.is_service() { self.processes[i].clone() } else { None },
            exe: self.exe.clone(),
            run_done,
        };
        match step.kind.clone() {
            Kind::Command { run } => {
                tokio::spawn(steps::command(cx, run));
            }
            Kind::Sql { .. } => {
                let text = self.inputs.sql[i].clone().unwrap_or_default();
                tokio::spawn(steps::sql(cx, text));
            }
            Kind::Wait { sql, interval, timeout, diagnose_sql } => {
                tokio::spawn(steps::wait_step(cx, sql, interval, timeout, diagnose_sql));
            }
            Kind::Service { run, health, restart, backoff } => {
                tokio::spawn(steps::service(cx, run, health, restart, backoff, log_path.clone()));
            }
        }
        // Recorded while the step already runs (its start time is from before): the
        // record is written before any message of the step is handled, and the step does
        // not wait for it.
        self.flush().await?;
        record::step_started(self.c, self.run, &step.name, state, now, &log_path.display().to_string()).await?;
        Ok(())
    }

    /// Handles a step's message; returns the name of a step that just failed.
    async fn handle(&mut self, msg: Msg) -> Result<Option<String>> {
        match msg {
            Msg::Output(i, line) => {
                self.events.event(&Event::Output { step: &self.stack.steps[i].name, line: &line });
            }
            Msg::Observed(i, seen) => {
                let seen = self.redactor(i).apply(&seen).into_owned();
                let name = &self.stack.steps[i].name;
                record::step_state(self.c, self.run, name, self.states[i], Some(&seen)).await?;
                self.events.event(&Event::Waiting { step: name, observed: &seen });
            }
            Msg::Process(i, p) => {
                record::step_process(self.c, self.run, &self.stack.steps[i].name, Some(&p)).await?;
                self.processes[i] = Some(p);
            }
            Msg::Finished(i, outcome) => {
                let Outcome { state, at, detail, exit_code, log_tail } = outcome;
                let r = self.redactor(i);
                let detail = detail.map(|d| r.apply(&d).into_owned());
                let log_tail = log_tail.map(|t| r.apply(&t).into_owned());
                let name = self.stack.steps[i].name.clone();
                self.cancels[i] = None;
                self.states[i] = state;
                // A cancelled step goes back to pending (it runs on --resume); its start is kept.
                let at = (state != State::Pending).then_some(at);
                let service = self.stack.steps[i].is_service();
                // A step's process is gone once it ended, except a service that is up or
                // was interrupted while its health was checked (`--resume` re-checks it).
                let forget_process = if service { state == State::Failed } else { true };
                self.unrecorded.push(Unrecorded {
                    name: name.clone(),
                    state,
                    at,
                    detail: detail.clone(),
                    exit_code,
                    log_tail,
                    forget_process,
                });
                if forget_process {
                    self.processes[i] = None;
                }
                let elapsed = self.started[i].map(|s| s.elapsed()).unwrap_or_default();
                self.events.event(&Event::StepFinished { step: &name, state, detail: detail.as_deref(), elapsed });
                if state == State::Failed {
                    return Ok(Some(name));
                }
            }
        }
        Ok(None)
    }

    /// After a failure (without --keep-going): waits and health checks stop observing
    /// (they change nothing); commands and SQL finish what they do.
    fn stop_observers(&mut self, failed: &str) {
        self.events.event(&Event::Note {
            text: &format!("step {failed} failed: no new steps start; running commands finish (--keep-going lets independent steps run)"),
        });
        for (i, s) in self.stack.steps.iter().enumerate() {
            if matches!(s.kind, Kind::Wait { .. } | Kind::Service { .. }) {
                if let Some(c) = &self.cancels[i] {
                    c.send_replace(true);
                }
            }
        }
    }

    fn cancel_all(&mut self) {
        for c in self.cancels.iter().flatten() {
            c.send_replace(true);
        }
    }
}

/// `2025-01-31T12:00:00.123Z`.
fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil from days (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

// ----- status and down --------------------------------------------------------------------

/// The latest run of the stack (or run `id`), with its steps; services' processes checked
/// when they run on this host. `None`: the stack never ran.
pub async fn status(ctx: &Ctx, loaded: &Loaded, id: Option<i64>) -> Result<Option<RunView>> {
    let servers = servers(ctx, loaded.manifest.as_ref())?;
    let Some(c) = open_control(&servers, false, &loaded.stack.name).await? else { return Ok(None) };
    let Some(run) = find_run(&c, loaded, id).await? else { return Ok(None) };
    let mut view = record::run_with_steps(&c, run).await?.context("the run's record vanished")?;
    view.steps.iter_mut().for_each(record::StepView::check_alive);
    Ok(Some(view))
}

async fn find_run(c: &Client, loaded: &Loaded, id: Option<i64>) -> Result<Option<i64>> {
    let runs = record::runs(c, id, Some(&loaded.env), Some(&loaded.stack.name), 1).await?;
    match (id, runs.first()) {
        (_, Some(r)) => Ok(Some(r.id)),
        (Some(id), None) => bail!("stack {} (env {}) has no run {id}", loaded.stack.name, loaded.env),
        (None, None) => Ok(None),
    }
}

/// One service `down` stopped.
#[derive(Debug, Clone, Serialize)]
pub struct Stop {
    pub step: String,
    pub pid: Option<i32>,
    /// `terminated`, `killed` (still there after the grace period) or `not running`.
    pub result: String,
}

/// Stops the services of the latest run (or run `id`) in reverse dependency order, each
/// with `grace` between SIGTERM and SIGKILL. Refused while a runner holds the stack.
pub async fn down(
    ctx: &Ctx,
    loaded: &Loaded,
    id: Option<i64>,
    grace: Duration,
    events: &dyn StackEvents,
) -> Result<Option<(i64, Vec<Stop>)>> {
    let servers = servers(ctx, loaded.manifest.as_ref())?;
    let Some(c) = open_control(&servers, false, &loaded.stack.name).await? else { return Ok(None) };
    if !record::try_lock(&c, &loaded.env, &loaded.stack.name).await? {
        bail!(
            "a `pgplane stack run` of stack {} (env {}) is running; interrupt it (Ctrl-C or SIGTERM) before `stack down`",
            loaded.stack.name,
            loaded.env
        );
    }
    let Some(run) = find_run(&c, loaded, id).await? else { return Ok(None) };
    let recorded = record::steps(&c, run).await?;
    let host = proc::hostname();
    let order = down_order(&loaded.stack, &recorded);
    let mut out = Vec::new();
    for name in order {
        let Some(s) = recorded.iter().find(|r| r.name == name) else { continue };
        let Some(p) = s.process() else { continue };
        if s.host.as_deref().is_some_and(|h| h != host) {
            bail!(
                "service {} of run {run} runs on host {}, not here ({host}); run `pgplane stack down` there",
                s.name,
                s.host.as_deref().unwrap_or("")
            );
        }
        events.event(&Event::Note {
            text: &format!("stopping {} (pid {}, grace {})", s.name, p.pid, crate::wait::human(grace)),
        });
        let result = match proc::stop_group(&p, grace).await {
            proc::Stopped::NotRunning => "not running",
            proc::Stopped::Terminated => "terminated",
            proc::Stopped::Killed => "killed",
        };
        let detail = format!("stack down: {result}");
        let finish = record::Finish {
            state: State::Stopped,
            at: Some(SystemTime::now()),
            detail: Some(&detail),
            exit_code: None,
            log_tail: None,
            forget_process: true,
        };
        record::step_finished(&c, run, &s.name, finish).await?;
        out.push(Stop { step: s.name.clone(), pid: Some(p.pid), result: result.to_string() });
    }
    if !out.is_empty() {
        c.execute(
            "UPDATE pgplane.stack_runs SET status = 'stopped', updated_at = now() WHERE id = $1 AND status = 'succeeded'",
            &[&run],
        )
        .await?;
    }
    Ok(Some((run, out)))
}

/// Services with a recorded process, dependents first: the reverse of an order in which
/// every step comes after what it needs (by the stack as it is now; services no longer in
/// it come first).
fn down_order(stack: &Stack, recorded: &[record::StepView]) -> Vec<String> {
    let mut order: Vec<usize> = Vec::new();
    let mut placed = vec![false; stack.steps.len()];
    while order.len() < stack.steps.len() {
        let before = order.len();
        for i in 0..stack.steps.len() {
            if !placed[i] && stack.steps[i].needs.iter().all(|n| placed[n.step]) {
                placed[i] = true;
                order.push(i);
            }
        }
        if order.len() == before {
            // A cycle cannot pass validation; place the rest as they are.
            order.extend((0..stack.steps.len()).filter(|i| !placed[*i]));
            break;
        }
    }
    let known: BTreeSet<&str> = stack.steps.iter().map(|s| s.name.as_str()).collect();
    let mut names: Vec<String> = recorded
        .iter()
        .filter(|r| r.kind == "service" && !known.contains(r.name.as_str()))
        .map(|r| r.name.clone())
        .collect();
    names.extend(
        order
            .iter()
            .rev()
            .map(|&i| stack.steps[i].name.clone())
            .filter(|n| recorded.iter().any(|r| &r.name == n && r.kind == "service" && r.pid.is_some())),
    );
    names
}

/// Compile-time check: a run can be spawned on any runtime (a job worker's threads).
#[allow(dead_code)]
fn run_is_send(ctx: &'static Ctx, req: RunRequest, events: &'static dyn StackEvents, cancel: watch::Receiver<bool>) {
    fn is_send<T: Send>(_: &T) {}
    is_send(&run(ctx, req, events, cancel));
}
