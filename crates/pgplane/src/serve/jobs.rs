//! Long operations (apply, branch create/reset) run in the background, each on a thread
//! of its own with its own runtime, so the API answers 202 at once and the operation's
//! code is the same the CLI runs. The operation row is created (and its lock taken) by
//! the job itself before the request is answered; the lock lives as long as the job's
//! control connection, so a crash of this process shows as "interrupted" to any reader.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::sync::oneshot;

use crate::conn::{Role, Target};
use crate::control::{self, CONTROL_DB};
use crate::ops::Ctx;

/// A job's operation id, known once the job has journaled it.
type OperationId = std::sync::Arc<Mutex<Option<i64>>>;

#[derive(Default)]
pub struct Jobs {
    /// Each job's thread and its operation id (known once journaled).
    running: Mutex<Vec<(OperationId, std::thread::JoinHandle<()>)>>,
}

/// What a finished job reports: how many changes, and the error when it failed (a failed
/// branch deployment is an `Ok` outcome of the job with an error to journal).
pub struct Outcome {
    pub changes: usize,
    pub error: Option<String>,
}

impl Jobs {
    /// Starts `work` in the background as operation `kind` and returns its id once the
    /// operation is journaled. `work` gets a context whose [`Ctx::operation`] is the id.
    pub async fn start<F, Fut>(
        &self,
        home: PathBuf,
        control_target: Target,
        kind: &'static str,
        env: String,
        work: F,
    ) -> Result<i64>
    where
        F: FnOnce(Ctx) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Outcome>>,
    {
        let (tx, rx) = oneshot::channel::<Result<i64>>();
        let handle = super::thread_with_runtime(format!("pgplane-{kind}"), move || async move {
            let journal = async {
                let c = control_target.connect_as(Some(CONTROL_DB), Role::Branch).await?;
                let journal = control::Journal::start(&c, None, kind, Some(&env)).await?;
                Ok::<_, anyhow::Error>((c, journal))
            };
            let (control_client, journal) = match journal.await {
                Ok(v) => v,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            let id = journal.id;
            let _ = tx.send(Ok(id));
            let mut ctx = Ctx::new(home);
            ctx.operation = Some(id);
            let outcome = work(ctx).await.unwrap_or_else(|e| Outcome { changes: 0, error: Some(format!("{e:#}")) });
            match &outcome.error {
                None => tracing::info!(operation = id, kind, changes = outcome.changes, "operation succeeded"),
                Some(e) => tracing::warn!(operation = id, kind, error = %e, "operation failed"),
            }
            // The journaling connection may have dropped meanwhile: then on a new one.
            let (changes, error) = (outcome.changes, outcome.error.as_deref());
            let journal = &journal;
            let finish = |c: tokio_postgres::Client| async move { journal.finish(&c, changes, error).await };
            let mut result = finish(control_client).await;
            if result.is_err() {
                result = match control_target.connect_as(Some(CONTROL_DB), Role::Branch).await {
                    Ok(c) => finish(c).await,
                    Err(e) => Err(e),
                };
            }
            if let Err(e) = result {
                tracing::error!(operation = id, error = %format!("{e:#}"), "could not journal the end of the operation");
            }
        })?;
        // Tracked before we wait for its id: should this request go away meanwhile, the
        // job still runs, and shutdown must still wait for it.
        let cell = std::sync::Arc::new(std::sync::Mutex::new(None));
        {
            let mut running = self.running.lock().map_err(|_| anyhow::anyhow!("job list poisoned"))?;
            running.retain(|(_, h)| !h.is_finished());
            running.push((cell.clone(), handle));
        }
        let id = rx.await.context("the operation's thread ended before journaling it")??;
        if let Ok(mut c) = cell.lock() {
            *c = Some(id);
        }
        Ok(id)
    }

    /// How many operations are running now.
    pub fn count(&self) -> usize {
        self.running.lock().map(|r| r.iter().filter(|(_, h)| !h.is_finished()).count()).unwrap_or(0)
    }

    /// After SIGTERM: gives running operations `grace` to finish; then asks them to stop
    /// (a running migration is cancelled and recorded as such, as `pgplane migrate` does on
    /// SIGTERM) and gives them a few seconds to record it; whatever still runs then is
    /// recorded as interrupted here (its process is about to exit). Returns those ids.
    pub async fn drain(&self, grace: Duration, control_target: &Target) -> Vec<i64> {
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
            let left: Vec<i64> = self
                .running
                .lock()
                .map(|r| {
                    r.iter()
                        .filter(|(_, h)| !h.is_finished())
                        .filter_map(|(id, _)| id.lock().ok().and_then(|id| *id))
                        .collect()
                })
                .unwrap_or_default();
            if left.is_empty() || Instant::now() >= deadline {
                return left;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn interrupt(control_target: &Target, ids: &[i64]) -> Result<()> {
    let c = control_target.connect_as(Some(CONTROL_DB), Role::Branch).await?;
    let error = "interrupted: pgplane serve was stopped before this operation finished";
    c.execute(
        "UPDATE pgplane.jobs SET status = 'failed', error = $2, error_code = 'cancelled', finished_at = now()
          WHERE id = ANY($1) AND status = 'running'",
        &[&ids, &error],
    )
    .await?;
    Ok(())
}
