//! Workers: slots that claim jobs and run them. Each slot is a thread with a runtime and a
//! control connection of its own; that connection holds the claimed job's lock for the
//! whole attempt and renews its lease by heartbeat. A listener wakes idle slots when a job
//! is queued (`NOTIFY pgplane_jobs`); they also poll, in case a notification is missed.
//!
//! **Invariant:** a slot that cannot renew its lease (the attempt was taken over, or its
//! connection broke and with it the job's lock) cancels the run and never writes the job
//! again. On shutdown, running jobs get a grace period, then are cancelled and handed back
//! to the queue for another worker, not marked failed.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use tokio::sync::watch;
use tracing::Instrument;

use super::queue::{self, Attempt, Beat, Finish};
use super::{Done, Job, JobEvents, Runner};
use crate::cancel::Cancel;
use crate::conn::Target;
use crate::control::CONTROL_DB;
use crate::error::Error;

/// The reason a shutdown gives running jobs when it cancels them.
pub const SHUTDOWN: &str = "shutdown: the worker is stopping; the job goes back to the queue";

#[derive(Debug, Clone)]
pub struct Options {
    /// This process's name in the jobs table (`serve@host:pid`); slots add `/N`.
    pub name: String,
    pub slots: usize,
    /// Digests of the manifests this process serves: it runs jobs of these (and jobs without one).
    pub fingerprints: Vec<String>,
    /// How long a claim holds without a heartbeat.
    pub lease: Duration,
    pub heartbeat: Duration,
    /// How often idle slots look for work without a notification.
    pub poll: Duration,
}

impl Options {
    pub fn new(name: impl Into<String>, slots: usize, fingerprints: Vec<String>) -> Options {
        Options {
            name: name.into(),
            slots,
            fingerprints,
            lease: Duration::from_secs(10),
            heartbeat: Duration::from_secs(1),
            poll: Duration::from_secs(1),
        }
    }
}

/// Called as jobs are claimed (for metrics).
pub trait Hooks: Send + Sync + 'static {
    fn claimed(&self, _job: &Job, _attempt: i32) {}
}

struct NoHooks;
impl Hooks for NoHooks {}

struct Shared {
    opts: Options,
    control: Target,
    runner: Arc<dyn Runner>,
    hooks: Arc<dyn Hooks>,
    /// Bumped by every notification: a slot that found nothing waits for the next bump.
    wake: watch::Sender<u64>,
    stopping: AtomicBool,
    /// Running jobs and their cancel handles.
    running: Mutex<BTreeMap<i64, Cancel>>,
    claims: AtomicU64,
    takeovers: AtomicU64,
}

impl Shared {
    fn running(&self) -> std::sync::MutexGuard<'_, BTreeMap<i64, Cancel>> {
        self.running.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A running set of worker slots.
pub struct Worker {
    shared: Arc<Shared>,
    slots: Vec<std::thread::JoinHandle<()>>,
    _listener: Option<tokio::task::JoinHandle<()>>,
}

/// What can be asked of running slots while the worker is being shut down elsewhere.
#[derive(Clone)]
pub struct Handle(Arc<Shared>);

impl Handle {
    /// Ids of the jobs this process runs now.
    pub fn running(&self) -> Vec<i64> {
        self.0.running().keys().copied().collect()
    }

    /// Asks running jobs to stop now (the second signal) without waiting.
    pub fn cancel_all(&self, reason: &str) {
        for c in self.0.running().values() {
            c.cancel(reason);
        }
    }

    /// Jobs claimed by this process, and how many of those were another worker's before.
    pub fn claims(&self) -> (u64, u64) {
        (self.0.claims.load(Ordering::Relaxed), self.0.takeovers.load(Ordering::Relaxed))
    }
}

impl Worker {
    pub fn handle(&self) -> Handle {
        Handle(self.shared.clone())
    }

    /// Starts `opts.slots` slots (none: an API-only process) and the listener (on the
    /// current runtime).
    pub fn start(control: Target, opts: Options, runner: Arc<dyn Runner>, hooks: Option<Arc<dyn Hooks>>) -> Worker {
        let shared = Arc::new(Shared {
            opts,
            control,
            runner,
            hooks: hooks.unwrap_or_else(|| Arc::new(NoHooks)),
            wake: watch::channel(0).0,
            stopping: AtomicBool::new(false),
            running: Mutex::new(BTreeMap::new()),
            claims: AtomicU64::new(0),
            takeovers: AtomicU64::new(0),
        });
        if shared.opts.slots == 0 {
            return Worker { shared, slots: Vec::new(), _listener: None };
        }
        let listener = tokio::spawn(listen(shared.clone()));
        let slots = (0..shared.opts.slots)
            .filter_map(|i| {
                let shared = shared.clone();
                std::thread::Builder::new()
                    .name(format!("pgplane-worker-{i}"))
                    .spawn(move || slot(i, shared))
                    .map_err(|e| tracing::error!(error = %e, "cannot start a worker slot"))
                    .ok()
            })
            .collect();
        Worker { shared, slots, _listener: Some(listener) }
    }

    /// Ids of the jobs this process runs now.
    pub fn running(&self) -> Vec<i64> {
        self.shared.running().keys().copied().collect()
    }

    pub fn slots(&self) -> usize {
        self.shared.opts.slots
    }

    /// Jobs claimed by this process, and how many of those were another worker's before.
    pub fn claims(&self) -> (u64, u64) {
        (self.shared.claims.load(Ordering::Relaxed), self.shared.takeovers.load(Ordering::Relaxed))
    }

    /// Asks running jobs to stop now (the second signal) without waiting.
    pub fn cancel_all(&self, reason: &str) {
        for c in self.shared.running().values() {
            c.cancel(reason);
        }
    }

    /// Stops claiming, gives running jobs `grace` to finish, then cancels them; they are
    /// handed back to the queue. Returns the ids handed back (or still running when the
    /// slots did not stop in time).
    pub async fn shutdown(self, grace: Duration) -> Vec<i64> {
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.shared.wake.send_modify(|g| *g += 1);
        let deadline = tokio::time::Instant::now() + grace;
        while !self.shared.running().is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let left = self.running();
        for c in self.shared.running().values() {
            c.cancel(SHUTDOWN);
        }
        let slots = self.slots;
        let joined = tokio::task::spawn_blocking(move || {
            for s in slots {
                let _ = s.join();
            }
        });
        let _ = tokio::time::timeout(Duration::from_secs(15), joined).await;
        left
    }
}

/// Keeps a LISTEN session open and bumps the wake counter on each notification;
/// reconnects when the session breaks.
async fn listen(shared: Arc<Shared>) {
    loop {
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let (closed_tx, closed_rx) = tokio::sync::oneshot::channel();
        let wake = shared.wake.clone();
        let session = shared
            .control
            .listen(
                Some(CONTROL_DB),
                "pgplane-listen",
                queue::CHANNEL,
                move |_| {
                    wake.send_modify(|g| *g = g.wrapping_add(1));
                },
                move || {
                    let _ = closed_tx.send(());
                },
            )
            .await;
        match session {
            Ok(client) => {
                // Work queued while we were not listening.
                shared.wake.send_modify(|g| *g = g.wrapping_add(1));
                let _ = closed_rx.await;
                drop(client);
                tracing::warn!("lost the job notification session; polling until it is back");
            }
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "cannot listen for jobs; polling"),
        }
        tokio::time::sleep(shared.opts.poll).await;
    }
}

fn slot(i: usize, shared: Arc<Shared>) {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start a runtime for a worker slot");
            return;
        }
    };
    let name = format!("{}/{i}", shared.opts.name);
    rt.block_on(async move {
        // The slot's connection and the queue's statements prepared on it.
        let mut conn: Option<(tokio_postgres::Client, queue::Prepared)> = None;
        let mut wake = shared.wake.subscribe();
        loop {
            if shared.stopping.load(Ordering::SeqCst) {
                return;
            }
            let (mut client, prepared) = match conn.take().filter(|(c, _)| !c.is_closed()) {
                Some(c) => c,
                None => match connect(&shared, &name).await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %format!("{e:#}"), "worker cannot reach the control database");
                        tokio::time::sleep(shared.opts.poll).await;
                        continue;
                    }
                },
            };
            wake.borrow_and_update();
            match queue::claim_prepared(&mut client, &prepared, &name, &shared.opts.fingerprints, shared.opts.lease)
                .await
            {
                Ok(Some(attempt)) => {
                    shared.claims.fetch_add(1, Ordering::Relaxed);
                    if attempt.attempt > 1 {
                        shared.takeovers.fetch_add(1, Ordering::Relaxed);
                    }
                    shared.hooks.claimed(&attempt.job, attempt.attempt);
                    let keep = run_attempt(&shared, &mut client, &prepared, attempt).await;
                    if keep {
                        conn = Some((client, prepared));
                    }
                }
                Ok(None) => {
                    conn = Some((client, prepared));
                    tokio::select! {
                        _ = wake.changed() => {}
                        _ = tokio::time::sleep(shared.opts.poll) => {}
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "claiming a job failed");
                    tokio::time::sleep(shared.opts.poll).await;
                }
            }
        }
    });
}

/// A slot's control connection, with the queue's statements prepared on it.
async fn connect(shared: &Shared, name: &str) -> Result<(tokio_postgres::Client, queue::Prepared)> {
    let client = shared.control.connect_named(Some(CONTROL_DB), &format!("pgplane-worker/{name}")).await?;
    let prepared = queue::Prepared::new(&client).await?;
    Ok((client, prepared))
}

/// Runs one attempt with heartbeats; returns whether the connection may be reused (it is
/// dropped after a lost lease, so the job's lock goes with it).
async fn run_attempt(
    shared: &Shared,
    client: &mut tokio_postgres::Client,
    prepared: &queue::Prepared,
    attempt: Attempt,
) -> bool {
    let job = attempt.job.clone();
    let span = tracing::info_span!(
        "job",
        id = job.id,
        kind = %job.kind,
        env = job.env.as_deref().unwrap_or(""),
        resource = job.resource.as_deref().unwrap_or(""),
        attempt = attempt.attempt,
    );
    async {
        let events = JobEvents::new(job.stages.clone());
        if attempt.attempt > 1 {
            crate::events::Events::stage(
                &events,
                "resume",
                &format!("attempt {} of {} on {}", attempt.attempt, job.max_attempts, attempt.worker),
            );
        }
        tracing::info!("job claimed");
        let cancel = Cancel::new();
        shared.running().insert(job.id, cancel.clone());
        let (result, lost) = {
            let run = shared.runner.run(&job, &events, &cancel);
            tokio::pin!(run);
            // The first beat one period from now: an interval's immediate first tick still
            // waits for the timer wheel's next millisecond, which every job would pay.
            let mut tick = tokio::time::interval_at(
                tokio::time::Instant::now() + shared.opts.heartbeat,
                shared.opts.heartbeat,
            );
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut lost = false;
            let result = loop {
                tokio::select! {
                    r = &mut run => break r,
                    _ = tick.tick(), if !lost => {
                        match queue::heartbeat(&*client, &attempt, shared.opts.lease, events.take_changed().as_deref()).await {
                            Ok(Beat::Held { cancel: true }) => cancel.cancel("cancelled on request"),
                            Ok(Beat::Held { cancel: false }) => {}
                            Ok(Beat::Lost) => {
                                tracing::warn!("the job was taken over or ended elsewhere; stopping it here");
                                lost = true;
                                cancel.cancel("lost the job's lease");
                            }
                            Err(e) => {
                                tracing::warn!(error = %format!("{e:#}"), "cannot renew the job's lease; stopping it here");
                                lost = true;
                                cancel.cancel("lost the control database");
                            }
                        }
                    }
                }
            };
            (result, lost)
        };
        shared.running().remove(&job.id);
        if lost {
            return false;
        }
        let how = finish_of(result, &cancel);
        let ok = matches!(how, Finish::Succeeded { .. });
        match &how {
            Finish::Succeeded { changes, .. } => tracing::info!(changes, "job succeeded"),
            Finish::Failed { error, code, retryable, .. } => tracing::warn!(error = %error, code, retryable, "job failed"),
            Finish::HandBack => tracing::info!("job handed back to the queue"),
        }
        match queue::finish_prepared(client, prepared, &attempt, &how, &events.finished(ok)).await {
            Ok(Some(status)) => {
                tracing::debug!(%status, "job recorded");
                true
            }
            Ok(None) => {
                tracing::warn!("the job was taken over before its end could be recorded");
                true
            }
            Err(e) => {
                // The lock goes with the connection; the leader recovers the job and it runs
                // again (operations converge when run again).
                tracing::error!(error = %format!("{e:#}"), "cannot record the job's end");
                false
            }
        }
    }
    .instrument(span)
    .await
}

fn finish_of(result: Result<Done, Error>, cancel: &Cancel) -> Finish {
    let shutdown = cancel.reason().as_deref() == Some(SHUTDOWN);
    match result {
        // Stopped by the shutdown, whichever way the operation reports it.
        Ok(done) if shutdown && done.failed.is_some() => Finish::HandBack,
        Ok(done) => match done.failed {
            None => Finish::Succeeded { changes: done.changes, result: done.result },
            Some(error) => Finish::Failed {
                error,
                code: "failed".to_string(),
                retryable: false,
                changes: done.changes,
                result: done.result,
            },
        },
        Err(_) if shutdown => Finish::HandBack,
        Err(e) => Finish::Failed {
            error: e.chain(),
            code: e.code().to_string(),
            retryable: e.retryable(),
            changes: 0,
            result: None,
        },
    }
}

/// A job this process runs itself, inline (the CLI's operations, synchronous API routes):
/// recorded as a running job of this process with its lock held, heartbeats while it runs,
/// its end recorded. It is not run again elsewhere if this process dies (one attempt).
///
/// ```ignore
/// let job = Inline::start(&control, &new).await?;
/// let events = job.events(&terminal);
/// let result = job.run(&cancel, operation(&events, &cancel)).await;
/// job.finish(&cancel, &result).await?;
/// ```
pub struct Inline {
    client: tokio_postgres::Client,
    attempt: Attempt,
    recorder: JobEvents,
    lease: Duration,
}

impl Inline {
    pub async fn start(control: &Target, new: &queue::NewJob) -> Result<Inline> {
        let client = control.connect_named(Some(CONTROL_DB), "pgplane-inline").await?;
        let lease = Duration::from_secs(30);
        let attempt = queue::start_inline(&client, new, &inline_worker_name(), Some(lease)).await?;
        Ok(Inline { client, attempt, recorder: JobEvents::default(), lease })
    }

    pub fn id(&self) -> i64 {
        self.attempt.job.id
    }

    /// Events that reach `front` and are recorded as the job's stages.
    pub fn events<'a>(&'a self, front: &'a dyn crate::events::Events) -> Tee<'a> {
        Tee(front, &self.recorder)
    }

    /// Runs `work` while renewing the lease; a cancel request from elsewhere (`job cancel`)
    /// cancels `cancel`.
    pub async fn run<T>(&self, cancel: &Cancel, work: impl std::future::Future<Output = T>) -> T {
        let span = tracing::info_span!(
            "job",
            id = self.attempt.job.id,
            kind = %self.attempt.job.kind,
            env = self.attempt.job.env.as_deref().unwrap_or(""),
            resource = self.attempt.job.resource.as_deref().unwrap_or(""),
        );
        async {
            tokio::pin!(work);
            let beat = Duration::from_secs(2);
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + beat, beat);
            loop {
                tokio::select! {
                    r = &mut work => break r,
                    _ = tick.tick() => {
                        let stages = self.recorder.take_changed();
                        if let Ok(Beat::Held { cancel: true }) =
                            queue::heartbeat(&self.client, &self.attempt, self.lease, stages.as_deref()).await
                        {
                            cancel.cancel("cancelled on request");
                        }
                    }
                }
            }
        }
        .instrument(span)
        .await
    }

    /// Records how the job ended.
    pub async fn finish<T>(self, cancel: &Cancel, result: &Result<(T, Done), Error>) -> Result<()> {
        let how = match result {
            Ok((_, done)) => finish_of(Ok(done.clone()), cancel),
            Err(e) => Finish::Failed {
                error: e.chain(),
                code: e.code().to_string(),
                retryable: false,
                changes: 0,
                result: None,
            },
        };
        let ok = matches!(how, Finish::Succeeded { .. });
        let stages = self.recorder.finished(ok);
        queue::finish(&self.client, &self.attempt, &how, &stages).await?;
        Ok(())
    }
}

/// Forwards events to the front end's renderer and records them as the job's stages.
pub struct Tee<'a>(&'a dyn crate::events::Events, &'a JobEvents);

impl crate::events::Events for Tee<'_> {
    fn stage(&self, name: &str, message: &str) {
        self.0.stage(name, message);
        self.1.stage(name, message);
    }
    fn progress(&self, done: u64, total: u64, what: &str) {
        self.0.progress(done, total, what);
        self.1.progress(done, total, what);
    }
    fn progress_done(&self) {
        self.0.progress_done();
    }
    fn item(&self, name: &str, status: &str, message: &str) {
        self.0.item(name, status, message);
        self.1.item(name, status, message);
    }
}

/// `cli@host:pid`.
pub fn inline_worker_name() -> String {
    format!("cli@{}:{}", hostname(), std::process::id())
}

/// This machine's name (for worker names; `localhost` when unknown).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}
