//! Long operations (apply, branch create/reset) run in the background, each on a thread
//! of its own with its own runtime, so the API answers 202 at once and the operation's
//! code is the same the CLI runs.
//!
//! - **Bounded**: at most `--backlog` operations are accepted and not finished (running or
//!   waiting); a request that would start one more is a 429 with Retry-After, before
//!   anything is journaled. At most `--jobs` run at once; the others wait for a slot
//!   (`queued` in the API and the metrics) and hold no connection meanwhile.
//! - **Journaled before the 202**: the operation row is written, and its lock taken, on
//!   one journal connection of the process (not a pooled request connection, not one per
//!   operation). A lock lives as long as that connection, so a crash of this process shows
//!   as "interrupted" to any reader; should the connection break while the process lives,
//!   the next use (or the watcher, within a second) connects again and takes the locks of
//!   the operations still running back.
//! - **Not cancelled by the client**: journaling and starting run in a task of their own,
//!   so a client that goes away mid-request leaves either nothing or a started operation,
//!   never a row that says running with nobody behind it.
//!
//! Issue 13 replaces this with durable jobs in the control database.

use std::collections::BTreeSet;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use tokio::sync::{watch, Semaphore};

use super::error::{ApiError, ApiResult};
use crate::conn::Target;
use crate::control::CONTROL_DB;
const OP_LOCK: i32 = pgplane_ops::locks::JOB.0;
use crate::ops::Ctx;

/// The `application_name` of the journal connection.
const JOURNAL_APP: &str = "pgplane-serve-journal";
/// A journal statement that takes longer means the control database is not answering.
const JOURNAL_TIMEOUT: Duration = Duration::from_secs(5);
/// What a 429 suggests.
const RETRY_AFTER_SECS: u32 = 5;

/// `--jobs` and `--backlog`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub running: usize,
    pub backlog: usize,
}

/// A job's operation id and its thread.
type Thread = (i64, std::thread::JoinHandle<()>);

pub struct Jobs {
    limits: Limits,
    /// Each job's thread and its operation id.
    threads: Arc<Mutex<Vec<Thread>>>,
    /// `limits.running` permits: a job runs while it holds one.
    slots: Arc<Semaphore>,
    /// Operations accepted and not finished (running or queued).
    accepted: Arc<AtomicUsize>,
    /// Operations waiting for a slot.
    queued: Arc<Mutex<BTreeSet<i64>>>,
    journal: Arc<Journal>,
    /// Set at shutdown: queued operations do not start any more.
    closing: watch::Sender<bool>,
}

/// What a finished job reports: how many changes, and the error when it failed (a failed
/// branch deployment is an `Ok` outcome of the job with an error to journal).
pub struct Outcome {
    pub changes: usize,
    pub error: Option<String>,
}

impl Jobs {
    /// Must be called on the server's runtime: the journal connection lives on it.
    pub fn new(limits: Limits, control: Target) -> Jobs {
        let limits = Limits { running: limits.running.max(1), backlog: limits.backlog.max(1) };
        let journal = Arc::new(Journal {
            target: control,
            runtime: tokio::runtime::Handle::current(),
            conn: tokio::sync::Mutex::new(None),
            held: Mutex::new(BTreeSet::new()),
        });
        let watched = Arc::downgrade(&journal);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let Some(journal) = watched.upgrade() else { return };
                journal.keep_locks().await;
            }
        });
        Jobs {
            limits,
            threads: Arc::default(),
            slots: Arc::new(Semaphore::new(limits.running)),
            accepted: Arc::new(AtomicUsize::new(0)),
            queued: Arc::new(Mutex::new(BTreeSet::new())),
            journal,
            closing: watch::Sender::new(false),
        }
    }

    /// Accepts `work` as operation `kind` and returns its id once journaled; it runs when
    /// a slot is free. `work` gets a context whose [`Ctx::operation`] is the id. A full
    /// backlog is a 429.
    pub async fn start<F, Fut>(&self, home: PathBuf, kind: &'static str, env: String, work: F) -> ApiResult<i64>
    where
        F: FnOnce(Ctx) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Outcome>>,
    {
        let backlog = self.limits.backlog;
        if *self.closing.borrow() {
            return Err(ApiError::unavailable("pgplane serve is stopping; it starts no operations any more"));
        }
        if self.accepted.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < backlog).then_some(n + 1)).is_err() {
            return Err(ApiError::too_many(
                format!(
                    "{backlog} operations are accepted and not finished, the most this service takes (--backlog {backlog}); \
                     try again in a few seconds (GET /api/v1/operations shows them)"
                ),
                RETRY_AFTER_SECS,
            ));
        }
        let accepted = Accepted(self.accepted.clone());
        let (journal, slots, queued, closing, threads) = (
            self.journal.clone(),
            self.slots.clone(),
            self.queued.clone(),
            self.closing.subscribe(),
            self.threads.clone(),
        );
        // In a task of its own: see the module's documentation.
        let starting = tokio::spawn(async move {
            let id = journal.start(kind, &env).await?;
            super::lock(&queued).insert(id);
            let (journal2, queued2) = (journal.clone(), queued.clone());
            let thread = super::thread_with_runtime(format!("pgplane-{kind}"), move || async move {
                let _accepted = accepted;
                let slot = wait_for_slot(slots, closing).await;
                super::lock(&queued2).remove(&id);
                let outcome = match slot {
                    Some(_slot) => {
                        let mut ctx = Ctx::new(home);
                        ctx.operation = Some(id);
                        work(ctx).await.unwrap_or_else(|e| Outcome { changes: 0, error: Some(format!("{e:#}")) })
                    }
                    None => Outcome {
                        changes: 0,
                        error: Some("not started: pgplane serve was stopped before this operation's turn".into()),
                    },
                };
                match &outcome.error {
                    None => tracing::info!(operation = id, kind, changes = outcome.changes, "operation succeeded"),
                    Some(e) => tracing::warn!(operation = id, kind, error = %e, "operation failed"),
                }
                if let Err(e) = journal2.finish(id, outcome.changes, outcome.error).await {
                    tracing::error!(operation = id, error = %format!("{e:#}"), "could not journal the end of the operation");
                }
            });
            match thread {
                Ok(handle) => {
                    // Tracked here, not by the request: shutdown waits for it even when
                    // the client went away meanwhile.
                    let mut threads = super::lock(&threads);
                    threads.retain(|(_, h)| !h.is_finished());
                    threads.push((id, handle));
                    Ok(id)
                }
                Err(e) => {
                    super::lock(&queued).remove(&id);
                    let why = format!("{e:#}");
                    let _ = journal.finish(id, 0, Some(format!("not started: {why}"))).await;
                    Err(e)
                }
            }
        });
        Ok(starting.await.map_err(|e| anyhow!("starting the operation: {e}"))??)
    }

    /// Operations holding a slot now.
    pub fn running(&self) -> usize {
        self.accepted.load(Ordering::SeqCst).saturating_sub(self.queued_count())
    }

    /// Operations accepted and waiting for a slot.
    pub fn queued_count(&self) -> usize {
        super::lock(&self.queued).len()
    }

    /// Whether operation `id` is waiting for a slot in this process.
    pub fn is_queued(&self, id: i64) -> bool {
        super::lock(&self.queued).contains(&id)
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// After SIGTERM: queued operations do not start (they are journaled as not started);
    /// running ones get `grace` to finish; then they are asked to stop (a running
    /// migration is cancelled and recorded as such, as `pgplane migrate` does on SIGTERM)
    /// and get a few seconds to record it; whatever still runs then is recorded as
    /// interrupted here (its process is about to exit). Returns those ids.
    pub async fn drain(&self, grace: Duration, control_target: &Target) -> Vec<i64> {
        self.closing.send_replace(true);
        if self.wait_until(Instant::now() + grace).await.is_empty() {
            return Vec::new();
        }
        crate::cancel::request_stop("SIGTERM");
        let left = self.wait_until(Instant::now() + Duration::from_secs(10)).await;
        if !left.is_empty() {
            if let Err(e) = interrupt(control_target, &left).await {
                tracing::error!(error = %format!("{e:#}"), "could not record interrupted operations");
            }
        }
        left
    }

    /// Waits until no operation runs or `deadline`; returns the ids still running.
    async fn wait_until(&self, deadline: Instant) -> Vec<i64> {
        loop {
            let left: Vec<i64> =
                super::lock(&self.threads).iter().filter(|(_, h)| !h.is_finished()).map(|(id, _)| *id).collect();
            if left.is_empty() || Instant::now() >= deadline {
                return left;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A slot, or `None` once the service is closing.
async fn wait_for_slot(
    slots: Arc<Semaphore>,
    mut closing: watch::Receiver<bool>,
) -> Option<tokio::sync::OwnedSemaphorePermit> {
    tokio::select! {
        biased;
        _ = closing.wait_for(|c| *c) => None,
        slot = slots.acquire_owned() => slot.ok(),
    }
}

/// One accepted operation, counted until dropped (the job ended, or it never started).
struct Accepted(Arc<AtomicUsize>);

impl Drop for Accepted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The journal connection and the operations whose locks it holds.
struct Journal {
    target: Target,
    /// The server's runtime: the connection's task lives there, whichever thread asks.
    runtime: tokio::runtime::Handle,
    conn: tokio::sync::Mutex<Option<tokio_postgres::Client>>,
    held: Mutex<BTreeSet<i64>>,
}

impl Journal {
    /// Journals the start of an operation and takes its lock.
    async fn start(self: &Arc<Self>, kind: &'static str, env: &str) -> Result<i64> {
        let (me, env) = (self.clone(), env.to_string());
        self.on_runtime(async move {
            let mut conn = me.conn.lock().await;
            let c = me.connected(&mut conn).await?;
            let id = timed(op_start(c, kind, &env)).await?;
            super::lock(&me.held).insert(id);
            Ok(id)
        })
        .await
    }

    /// Journals how an operation ended and releases its lock.
    async fn finish(self: &Arc<Self>, id: i64, changes: usize, error: Option<String>) -> Result<()> {
        let me = self.clone();
        self.on_runtime(async move {
            super::lock(&me.held).remove(&id);
            let mut conn = me.conn.lock().await;
            let c = me.connected(&mut conn).await?;
            timed(op_finish(c, id, changes, error.as_deref())).await
        })
        .await
    }

    /// Connects again when the connection broke and operations are running: their locks
    /// went with it.
    async fn keep_locks(self: &Arc<Self>) {
        if super::lock(&self.held).is_empty() {
            return;
        }
        let mut conn = self.conn.lock().await;
        if let Err(e) = self.connected(&mut conn).await {
            tracing::warn!(error = %format!("{e:#}"), "the operations journal cannot reach the control database");
        }
    }

    /// The connection, connecting (and locking the running operations again) if it
    /// closed. Never replaced while it is open: that would release every lock it holds.
    async fn connected<'c>(&self, conn: &'c mut Option<tokio_postgres::Client>) -> Result<&'c tokio_postgres::Client> {
        if conn.as_ref().is_some_and(|c| !c.is_closed()) {
            return conn.as_ref().context("the journal connection");
        }
        *conn = None;
        let c = timed(async {
            let c = self.target.connect_named(Some(CONTROL_DB), JOURNAL_APP).await?;
            // It idles between operations: never let the server end it for that.
            c.batch_execute("SET idle_session_timeout = 0; SET idle_in_transaction_session_timeout = 0").await?;
            Ok(c)
        })
        .await?;
        let ids: Vec<i64> = super::lock(&self.held).iter().copied().collect();
        if !ids.is_empty() {
            timed(async {
                c.execute(
                    "SELECT pg_advisory_lock($1, (id & 2147483647)::int4) FROM unnest($2::int8[]) id",
                    &[&OP_LOCK, &ids],
                )
                .await
                .map_err(crate::exec::pg_error)
            })
            .await?;
            tracing::info!(operations = ?ids, "the operations journal reconnected and holds their locks again");
        }
        Ok(conn.insert(c))
    }

    /// Runs `f` on the server's runtime (a job's thread has a runtime of its own).
    async fn on_runtime<T: Send + 'static>(&self, f: impl Future<Output = Result<T>> + Send + 'static) -> Result<T> {
        self.runtime.spawn(f).await.map_err(|e| anyhow!("the operations journal: {e}"))?
    }
}

async fn timed<T>(f: impl Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(JOURNAL_TIMEOUT, f).await.map_err(|_| {
        anyhow::Error::new(super::error::NotAnswering(format!(
            "the control database did not answer the operations journal within {}s",
            JOURNAL_TIMEOUT.as_secs()
        )))
    })?
}

async fn interrupt(control_target: &Target, ids: &[i64]) -> Result<()> {
    let c = control_target.connect_as(Some(CONTROL_DB), crate::conn::Role::Branch).await?;
    let error = "interrupted: pgplane serve was stopped before this operation finished";
    c.execute(
        "UPDATE pgplane.jobs SET status = 'failed', error = $2, finished_at = now() WHERE id = ANY($1) AND status = 'running'",
        &[&ids, &error],
    )
    .await?;
    Ok(())
}

/// Journals an operation of this process as a running job whose lock `c` holds.
async fn op_start(c: &tokio_postgres::Client, kind: &str, env: &str) -> Result<i64> {
    let new = crate::jobs::NewJob::new(kind, Some(env));
    let a = crate::jobs::queue::start_inline(c, &new, &crate::jobs::worker::inline_worker_name(), None).await?;
    Ok(a.job.id)
}

/// Journals how an operation of this process ended and releases its lock.
async fn op_finish(c: &tokio_postgres::Client, id: i64, changes: usize, error: Option<&str>) -> Result<()> {
    let status = if error.is_some() { "failed" } else { "succeeded" };
    let changes = i32::try_from(changes).unwrap_or(i32::MAX);
    c.query_one(
        "WITH op AS (UPDATE pgplane.jobs SET status = $2, changes = $3, error = $4, finished_at = now() WHERE id = $1)
         SELECT pg_advisory_unlock($5, ($1 & 2147483647)::int4)",
        &[&id, &status, &changes, &error, &OP_LOCK],
    )
    .await?;
    Ok(())
}
