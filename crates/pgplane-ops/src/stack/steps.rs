//! Running one step: a command, SQL, a wait or a service. Each runs as its own task and
//! reports to the runner through [`Msg`]s; output goes (redacted) to the step's log file
//! and, as [`Msg::Output`], to the terminal. Cancellation: the runner flips the step's
//! `cancel` watch; commands get SIGTERM (then SIGKILL), SQL is cancelled on the server,
//! waits and health checks stop observing (a service's process is left running).

use std::collections::VecDeque;
use std::io::Write;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use pgplane_core::stack::schedule::State;
use pgplane_core::stack::{Check, Health, HttpUrl, Restart, Run, DEFAULT_SERVICE_TIMEOUT};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_postgres::{AsyncMessage, NoTls, SimpleQueryMessage};

use super::creds::{Login, Redactor, CONNECTION_VARS, NOT_INHERITED};
use super::proc::{self, ProcId};
use super::record::LOG_TAIL_LINES;
use crate::wait::{self, human, Condition, Resolved, Spec};

/// Grace period of a cancelled command between SIGTERM and SIGKILL.
const COMMAND_GRACE: Duration = Duration::from_secs(10);
/// Grace period of a service that failed its start (never became healthy).
const FAILED_SERVICE_GRACE: Duration = Duration::from_secs(5);

/// What a step task tells the runner.
#[derive(Debug)]
pub enum Msg {
    Output(usize, String),
    /// A wait's (or a health check's) latest observation.
    Observed(usize, String),
    /// The step's process (a command, a service's supervisor).
    Process(usize, ProcId),
    Finished(usize, Outcome),
}

/// How a step ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Completed, Failed, Healthy, Started, or Pending when cancelled.
    pub state: State,
    pub at: SystemTime,
    pub detail: Option<String>,
    pub exit_code: Option<i32>,
    pub log_tail: Option<String>,
}

impl Outcome {
    fn new(state: State, detail: impl Into<Option<String>>) -> Outcome {
        Outcome { state, at: SystemTime::now(), detail: detail.into(), exit_code: None, log_tail: None }
    }
}

/// Everything a step task needs.
pub struct StepCtx {
    pub index: usize,
    pub login: Option<Login>,
    pub proc_env: ProcEnv,
    pub log: Arc<Mutex<StepLog>>,
    pub tx: mpsc::UnboundedSender<Msg>,
    pub cancel: watch::Receiver<bool>,
    pub timeout: Option<Duration>,
    /// A service's process from an earlier attempt that still runs: re-checked, not re-created.
    pub existing: Option<ProcId>,
    /// The pgplane binary (a service runs under `pgplane stack supervise`).
    pub exe: PathBuf,
    /// Ends a service's log tailing (when the run ends).
    pub run_done: watch::Receiver<bool>,
}

/// A step's log file: every line is redacted, written, kept for the tail and shown.
pub struct StepLog {
    file: Option<std::fs::File>,
    tail: VecDeque<String>,
    redactor: Redactor,
    index: usize,
    tx: mpsc::UnboundedSender<Msg>,
    /// Whether output lines go to the runner (not with --quiet).
    show: bool,
}

impl StepLog {
    pub fn open(
        path: &std::path::Path,
        redactor: Redactor,
        index: usize,
        tx: mpsc::UnboundedSender<Msg>,
        show: bool,
    ) -> std::io::Result<StepLog> {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        Ok(StepLog { file: Some(file), tail: VecDeque::new(), redactor, index, tx, show })
    }

    /// A line of the step's own output.
    pub fn line(&mut self, line: &str) {
        let line = self.redactor.apply(line.trim_end_matches(['\n', '\r'])).into_owned();
        if let Some(f) = &mut self.file {
            let _ = writeln!(f, "{line}");
        }
        if self.tail.len() == LOG_TAIL_LINES {
            self.tail.pop_front();
        }
        self.tail.push_back(line.clone());
        if self.show {
            let _ = self.tx.send(Msg::Output(self.index, line));
        }
    }

    /// A line from pgplane about the step (`[pgplane] …`), in the log only.
    pub fn note(&mut self, text: &str) {
        if let Some(f) = &mut self.file {
            let _ = writeln!(f, "[pgplane] {}", self.redactor.apply(text));
        }
    }

    pub fn tail(&self) -> Option<String> {
        (!self.tail.is_empty()).then(|| self.tail.iter().cloned().collect::<Vec<_>>().join("\n"))
    }
}

/// The last `n` lines of a file (a service's log, written by its supervisor).
pub fn file_tail(path: &std::path::Path, n: usize) -> Option<String> {
    let text = std::fs::read(path).ok()?;
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(n)..].join("\n");
    (!tail.is_empty()).then_some(tail)
}

/// How a step's processes are started: folder, credentials, variables.
#[derive(Clone)]
pub struct ProcEnv {
    pub cwd: PathBuf,
    pub login: Option<Login>,
    /// Extra variables: the step's `env:` and `PGPLANE_*`.
    pub env: Vec<(String, String)>,
}

impl ProcEnv {
    /// A process with the step's environment: pgplane's own secrets removed, the step's
    /// credentials (when it has some) instead of any connection settings inherited.
    pub fn command(&self, program: &str) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(program);
        cmd.current_dir(&self.cwd).stdin(Stdio::null());
        for k in NOT_INHERITED {
            cmd.env_remove(k);
        }
        if let Some(login) = &self.login {
            for k in CONNECTION_VARS {
                cmd.env_remove(k);
            }
            cmd.envs(login.env());
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        cmd
    }
}

impl StepCtx {
    fn log(&self) -> std::sync::MutexGuard<'_, StepLog> {
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn finish(&self, mut outcome: Outcome) {
        if outcome.state == State::Failed && outcome.log_tail.is_none() {
            outcome.log_tail = self.log().tail();
        }
        let _ = self.tx.send(Msg::Finished(self.index, outcome));
    }

    fn command(&self, program: &str) -> tokio::process::Command {
        self.proc_env.command(program)
    }

    async fn cancelled(&mut self) {
        loop {
            if *self.cancel.borrow_and_update() {
                return;
            }
            if self.cancel.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

/// Reads a pipe line by line (lossy UTF-8) into a channel until EOF.
fn pump(pipe: impl tokio::io::AsyncRead + Unpin + Send + 'static, tx: mpsc::UnboundedSender<String>) {
    tokio::spawn(async move {
        let mut r = BufReader::new(pipe);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let _ = tx.send(String::from_utf8_lossy(&buf).into_owned());
                }
            }
        }
    });
}

fn exit_detail(status: std::process::ExitStatus) -> (Option<i32>, String) {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => (Some(c), format!("exited with code {c}")),
        (None, Some(s)) => (None, format!("killed by signal {s}")),
        _ => (None, "ended".into()),
    }
}

// ----- command ----------------------------------------------------------------------------

pub async fn command(mut cx: StepCtx, run: Run) {
    let argv = run.argv();
    let mut cmd = cx.command(&argv[0]);
    cmd.args(&argv[1..]).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let o = Outcome {
                exit_code: Some(127),
                ..Outcome::new(State::Failed, format!("cannot start {:?}: {e}", argv[0]))
            };
            return cx.finish(o);
        }
    };
    let me = child.id().and_then(proc::identify);
    if let Some(p) = &me {
        let _ = cx.tx.send(Msg::Process(cx.index, p.clone()));
    }
    let (ltx, mut lines) = mpsc::unbounded_channel();
    if let Some(out) = child.stdout.take() {
        pump(out, ltx.clone());
    }
    if let Some(err) = child.stderr.take() {
        pump(err, ltx);
    }
    let deadline = cx.timeout.map(|t| Instant::now() + t);
    let ended = loop {
        tokio::select! {
            Some(line) = lines.recv() => cx.log().line(&line),
            status = child.wait() => break Ok(status),
            _ = sleep_until(deadline) => break Err(State::Failed),
            _ = cx.cancelled() => break Err(State::Pending),
        }
    };
    let outcome = match ended {
        Ok(Ok(status)) => {
            drain(&mut lines, &cx).await;
            let (code, detail) = exit_detail(status);
            let state = if status.success() { State::Completed } else { State::Failed };
            Outcome { exit_code: code, ..Outcome::new(state, (state == State::Failed).then_some(detail)) }
        }
        Ok(Err(e)) => Outcome::new(State::Failed, format!("waiting for the process: {e}")),
        Err(state) => {
            if let Some(p) = &me {
                proc::stop_group(p, COMMAND_GRACE).await;
            }
            let _ = child.wait().await;
            drain(&mut lines, &cx).await;
            let detail = match (state, cx.timeout) {
                (State::Failed, Some(t)) => format!("timed out after {}; stopped", human(t)),
                _ => "interrupted; it runs again on --resume".to_string(),
            };
            cx.log().note(&detail);
            Outcome::new(state, detail)
        }
    };
    cx.finish(outcome);
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// The lines still in the pipes after the process ended (a background child that keeps
/// them open is not waited for long).
async fn drain(lines: &mut mpsc::UnboundedReceiver<String>, cx: &StepCtx) {
    let until = Instant::now() + Duration::from_millis(500);
    while let Ok(Some(line)) = tokio::time::timeout_at(until, lines.recv()).await {
        cx.log().line(&line);
    }
}

// ----- sql --------------------------------------------------------------------------------

pub async fn sql(mut cx: StepCtx, text: String) {
    let Some(login) = cx.login.clone() else {
        return cx.finish(Outcome::new(State::Failed, "no login".to_string()));
    };
    let target = login.target();
    let mut config = target.config.clone();
    config.application_name("pgplane-stack");
    config.connect_timeout(Duration::from_secs(10));
    let at = format!("{}/{}", target.display(), login.access.database);
    let connected = tokio::time::timeout(Duration::from_secs(10), config.connect(NoTls)).await;
    let (client, mut conn) = match connected {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            return cx.finish(Outcome::new(
                State::Failed,
                format!("connecting as {} to {at}: {}", login.access.role, wait::describe(&e)),
            ))
        }
        Err(_) => return cx.finish(Outcome::new(State::Failed, format!("no answer from {at} within 10s"))),
    };
    // Notices (RAISE NOTICE, …) go to the step's log.
    let log = cx.log.clone();
    tokio::spawn(async move {
        use futures_util::StreamExt;
        let mut messages = futures_util::stream::poll_fn(move |c| conn.poll_message(c));
        while let Some(m) = messages.next().await {
            match m {
                Ok(AsyncMessage::Notice(n)) => {
                    let line = format!("{}: {}", n.severity(), n.message());
                    log.lock().unwrap_or_else(|e| e.into_inner()).line(&line);
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    let statements = pgplane_core::sqlsplit::split(&text, None);
    let deadline = cx.timeout.map(|t| Instant::now() + t);
    let total = statements.len();
    for (i, st) in statements.iter().enumerate() {
        let first = st.lines().find(|l| !l.trim().is_empty() && !l.trim_start().starts_with("--")).unwrap_or("");
        let first: String = first.chars().take(80).collect();
        cx.log().note(&format!("statement {}/{total}: {first}", i + 1));
        let token = client.cancel_token();
        let result = tokio::select! {
            r = client.simple_query(st) => Ok(r),
            _ = sleep_until(deadline) => Err(State::Failed),
            _ = cx.cancelled() => Err(State::Pending),
        };
        match result {
            Ok(Ok(messages)) => {
                let mut rows = 0usize;
                for m in &messages {
                    if let SimpleQueryMessage::Row(r) = m {
                        rows += 1;
                        let cells: Vec<String> = (0..r.len()).map(|c| r.get(c).unwrap_or("NULL").to_string()).collect();
                        // `SELECT pg_sleep(1)` and other void results say nothing.
                        if rows <= 20 && cells.iter().any(|c| !c.is_empty()) {
                            cx.log().line(&cells.join(" | "));
                        }
                    }
                }
                if rows > 20 {
                    cx.log().line(&format!("({rows} rows, 20 shown)"));
                }
            }
            Ok(Err(e)) => {
                let detail = format!("statement {}/{total} ({first}): {}", i + 1, wait::describe(&e));
                cx.log().line(&detail);
                return cx.finish(Outcome::new(State::Failed, detail));
            }
            Err(state) => {
                let _ = token.cancel_query(NoTls).await;
                let detail = match (state, cx.timeout) {
                    (State::Failed, Some(t)) => {
                        format!("timed out after {} in statement {}/{total}; cancelled", human(t), i + 1)
                    }
                    _ => format!("interrupted in statement {}/{total}; cancelled, it runs again on --resume", i + 1),
                };
                cx.log().note(&detail);
                return cx.finish(Outcome::new(state, detail));
            }
        }
    }
    cx.log().note(&format!("{total} statements ran"));
    cx.finish(Outcome::new(State::Completed, None));
}

// ----- wait -------------------------------------------------------------------------------

pub async fn wait_step(mut cx: StepCtx, sql: String, interval: Duration, timeout: Duration, diagnose_sql: Vec<String>) {
    let Some(login) = cx.login.clone() else {
        return cx.finish(Outcome::new(State::Failed, "no login".to_string()));
    };
    let resolved = resolved(&login);
    let spec = Spec { conditions: vec![Condition::Sql(sql)], interval, timeout, diagnose_sql, within_interval: true };
    let (index, tx, log) = (cx.index, cx.tx.clone(), cx.log.clone());
    let mut last = String::new();
    let mut on_round = move |elapsed: Duration, states: &[wait::State]| {
        if let Some(s) = states.first() {
            if s.outcome.observed != last {
                last = s.outcome.observed.clone();
                log.lock().unwrap_or_else(|e| e.into_inner()).note(&format!("after {}: {last}", human(elapsed)));
                let _ = tx.send(Msg::Observed(index, last.clone()));
            }
        }
    };
    let report = tokio::select! {
        r = wait::until(&resolved, &spec, None, &mut on_round) => r,
        _ = cx.cancelled() => return cx.finish(Outcome::new(State::Pending, "stopped before its condition held; it waits again on --resume".to_string())),
    };
    let text = report.text();
    for line in text.lines() {
        cx.log().line(line);
    }
    if report.ok {
        let seen = report.states.first().map(|s| s.outcome.observed.clone()).unwrap_or_default();
        cx.finish(Outcome::new(State::Completed, format!("{seen} after {}", human(report.elapsed))));
    } else {
        let seen = report.states.first().map(|s| s.outcome.observed.clone()).unwrap_or_default();
        let o = Outcome {
            log_tail: Some(text.trim_end().to_string()),
            ..Outcome::new(State::Failed, format!("timed out after {}; last observed: {seen}", human(timeout)))
        };
        cx.finish(o);
    }
}

fn resolved(login: &Login) -> Resolved {
    Resolved {
        target: login.target(),
        database: login.access.database.clone(),
        fallback: None,
        manifest: None,
        desired: None,
        sql_as: None,
        control: None,
    }
}

// ----- service ----------------------------------------------------------------------------

pub async fn service(
    mut cx: StepCtx,
    run: Run,
    health: Option<Health>,
    restart: Restart,
    backoff: Duration,
    log_path: PathBuf,
) {
    let started = Instant::now();
    let timeout = cx.timeout.unwrap_or(DEFAULT_SERVICE_TIMEOUT);
    // Re-check a process that still runs; start one otherwise.
    let (me, mut child) = match cx.existing.clone().filter(proc::alive) {
        Some(p) => {
            cx.log().note(&format!("supervisor pid {} still runs: re-checking it, not starting another", p.pid));
            (p, None)
        }
        None => match spawn_supervisor(&cx, &run, restart, backoff, &log_path) {
            Ok(x) => x,
            Err(e) => return cx.finish(Outcome::new(State::Failed, format!("cannot start the service: {e}"))),
        },
    };
    let _ = cx.tx.send(Msg::Process(cx.index, me.clone()));
    tail_log(&cx, &log_path);
    let Some(health) = health else {
        return cx.finish(Outcome::new(State::Started, format!("supervisor pid {}", me.pid)));
    };
    let exited = async {
        match child.as_mut() {
            Some(c) => match c.wait().await {
                Ok(status) => exit_detail(status),
                Err(e) => (None, format!("lost: {e}")),
            },
            None => loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if !proc::alive(&me) {
                    break (None, "ended".to_string());
                }
            },
        }
    };
    let (index, tx) = (cx.index, cx.tx.clone());
    let observe = move |o: &str| {
        let _ = tx.send(Msg::Observed(index, o.to_string()));
    };
    let login = cx.login.clone();
    let pe = cx.proc_env.clone();
    let check = check_health(&health, login.as_ref(), timeout, &pe, observe);
    let outcome = tokio::select! {
        r = check => match r {
            Ok(seen) => Outcome::new(State::Healthy, format!("healthy after {} ({seen})", human(started.elapsed()))),
            Err(seen) => {
                proc::stop_group(&me, FAILED_SERVICE_GRACE).await;
                Outcome::new(State::Failed, format!("not healthy within {}; stopped it; last check: {seen}", human(timeout)))
            }
        },
        (code, how) = exited => Outcome { exit_code: code, ..Outcome::new(State::Failed, format!("the service {how} before it became healthy")) },
        _ = cx.cancel.changed() => Outcome::new(State::Pending, "interrupted before it became healthy; its process runs on and is re-checked on --resume".to_string()),
    };
    let outcome = if outcome.state == State::Failed {
        // Let the supervisor write its last words.
        tokio::time::sleep(Duration::from_millis(100)).await;
        Outcome { log_tail: file_tail(&log_path, LOG_TAIL_LINES), ..outcome }
    } else {
        outcome
    };
    let _ = cx.tx.send(Msg::Finished(cx.index, outcome));
}

/// `pgplane stack supervise … -- ARGV` in a process group of its own (so it outlives the
/// run and `stack down` can stop it and the service together).
fn spawn_supervisor(
    cx: &StepCtx,
    run: &Run,
    restart: Restart,
    backoff: Duration,
    log_path: &std::path::Path,
) -> std::io::Result<(ProcId, Option<tokio::process::Child>)> {
    let exe = cx.exe.to_string_lossy().into_owned();
    let mut cmd = cx.command(&exe);
    cmd.args(["stack", "supervise", "--log"]).arg(log_path).args([
        "--restart",
        restart.as_str(),
        "--backoff",
        &format!("{}ms", backoff.as_millis()),
    ]);
    if cx.login.is_some() {
        cmd.args(["--redact-env", "PGPASSWORD"]);
    }
    cmd.arg("--").args(run.argv()).stdout(Stdio::null()).stderr(Stdio::null()).process_group(0);
    let child = cmd.spawn()?;
    let pid = child.id().ok_or_else(|| std::io::Error::other("the supervisor ended at once"))?;
    let me = proc::identify(pid).ok_or_else(|| std::io::Error::other("the supervisor ended at once"))?;
    Ok((me, Some(child)))
}

/// Shows a service's log (written by its supervisor) until the run ends.
fn tail_log(cx: &StepCtx, path: &std::path::Path) {
    let show = cx.log().show;
    if !show {
        return;
    }
    let (index, tx, path) = (cx.index, cx.tx.clone(), path.to_path_buf());
    let mut done = cx.run_done.clone();
    let mut offset = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    tokio::spawn(async move {
        let mut partial = String::new();
        loop {
            let stop = tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(100)) => false,
                _ = done.changed() => true,
            };
            if let Some(bytes) = read_from(&path, offset) {
                offset += bytes.len() as u64;
                partial.push_str(&String::from_utf8_lossy(&bytes));
                while let Some(i) = partial.find('\n') {
                    let line: String = partial.drain(..=i).collect();
                    let line = line.trim_end();
                    if !line.starts_with("[pgplane] ") {
                        let _ = tx.send(Msg::Output(index, line.to_string()));
                    }
                }
            }
            if stop || tx.is_closed() {
                break;
            }
        }
    });
}

/// The bytes of a file from `offset` on (a service's log grows while we read it).
fn read_from(path: &std::path::Path, offset: u64) -> Option<Vec<u8>> {
    use std::io::{Read, Seek};
    let mut f = std::fs::File::open(path).ok()?;
    f.seek(std::io::SeekFrom::Start(offset)).ok()?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).ok()?;
    Some(buf)
}

/// Polls the health check until it passes (`Ok(what was seen)`) or `timeout` passes
/// (`Err(the last observation)`). An `sql:` check is a `pgplane wait --for sql:` loop.
async fn check_health(
    health: &Health,
    login: Option<&Login>,
    timeout: Duration,
    command: &ProcEnv,
    observe: impl Fn(&str) + Send + Sync,
) -> Result<String, String> {
    if let Check::Sql(sql) = &health.check {
        let Some(login) = login else { return Err("no login".into()) };
        let resolved = resolved(login);
        let spec = Spec {
            conditions: vec![Condition::Sql(sql.clone())],
            interval: health.interval,
            timeout,
            diagnose_sql: Vec::new(),
            within_interval: true,
        };
        let mut on_round = |_: Duration, states: &[wait::State]| {
            if let Some(s) = states.first() {
                observe(&s.outcome.observed);
            }
        };
        let report = wait::until(&resolved, &spec, None, &mut on_round).await;
        let seen = report.states.first().map(|s| s.outcome.observed.clone()).unwrap_or_default();
        return if report.ok { Ok(format!("sql {seen}")) } else { Err(seen) };
    }
    let deadline = Instant::now() + timeout;
    let mut last = String::from("not checked yet");
    loop {
        let round = Instant::now();
        let limit = health
            .interval
            .max(Duration::from_secs(5))
            .min(deadline.saturating_duration_since(round).max(Duration::from_millis(100)));
        let result = match &health.check {
            Check::Http(url) => http_check(url, limit).await,
            Check::Command(run) => command_check(run, command, limit).await,
            Check::Sql(_) => Err("unreachable".into()),
        };
        match result {
            Ok(seen) => return Ok(seen),
            Err(seen) => {
                if seen != last {
                    observe(&seen);
                }
                last = seen;
            }
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(last);
        }
        // As a stack's waits: the next check ends about one interval after this one began.
        let lead = (now - round + Duration::from_millis(10)).min(health.interval / 2);
        tokio::time::sleep_until((round + health.interval - lead).min(deadline)).await;
    }
}

/// A plain HTTP/1.0 GET: 2xx or 3xx passes.
pub async fn http_check(url: &HttpUrl, limit: Duration) -> Result<String, String> {
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect((url.host.as_str(), url.port)).await.map_err(|e| {
            format!("{url}: {}", e.to_string().split(" (os error").next().unwrap_or_default().to_lowercase())
        })?;
        let host = if url.host.contains(':') { format!("[{}]", url.host) } else { url.host.clone() };
        let req = format!(
            "GET {} HTTP/1.0\r\nHost: {host}:{}\r\nUser-Agent: pgplane\r\nConnection: close\r\n\r\n",
            url.path, url.port
        );
        stream.write_all(req.as_bytes()).await.map_err(|e| format!("{url}: {e}"))?;
        let mut head = Vec::new();
        let mut buf = [0u8; 512];
        while !head.contains(&b'\n') && head.len() < 4096 {
            let n = stream.read(&mut buf).await.map_err(|e| format!("{url}: {e}"))?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        let line = String::from_utf8_lossy(&head).lines().next().unwrap_or_default().to_string();
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("{url}: not an HTTP answer"))?;
        if (200..400).contains(&status) {
            Ok(format!("HTTP {status}"))
        } else {
            Err(format!("{url}: HTTP {status}"))
        }
    };
    match tokio::time::timeout(limit, attempt).await {
        Ok(r) => r,
        Err(_) => Err(format!("{url}: no answer within {}", human(limit))),
    }
}

async fn command_check(run: &Run, penv: &ProcEnv, limit: Duration) -> Result<String, String> {
    let argv = run.argv();
    let mut cmd = penv.command(&argv[0]);
    cmd.args(&argv[1..]).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    let out = match tokio::time::timeout(limit, cmd.output()).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => return Err(format!("cannot run {:?}: {e}", argv[0])),
        Err(_) => return Err(format!("no result within {}", human(limit))),
    };
    if out.status.success() {
        return Ok("check command exited 0".into());
    }
    let text = String::from_utf8_lossy(if out.stderr.is_empty() { &out.stdout } else { &out.stderr }).into_owned();
    let last = text.lines().last().unwrap_or("").trim().to_string();
    let (_, how) = exit_detail(out.status);
    Err(if last.is_empty() { format!("check command {how}") } else { format!("check command {how}: {last}") })
}
