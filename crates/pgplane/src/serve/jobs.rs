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

#[derive(Default)]
pub struct Jobs {
    running: Mutex<Vec<(i64, std::thread::JoinHandle<()>)>>,
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
        let handle = std::thread::Builder::new()
            .name(format!("pgplane-{kind}"))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = tx.send(Err(anyhow::Error::new(e).context("starting the operation's runtime")));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let journal = async {
                        let c = control_target.connect_as(Some(CONTROL_DB), Role::Branch).await?;
                        let id = control::op_start(&c, kind, Some(&env)).await?;
                        Ok::<_, anyhow::Error>((c, id))
                    };
                    let (control_client, id) = match journal.await {
                        Ok(v) => v,
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = tx.send(Ok(id));
                    let mut ctx = Ctx::new(home);
                    ctx.operation = Some(id);
                    let outcome = work(ctx).await.unwrap_or_else(|e| Outcome { changes: 0, error: Some(format!("{e:#}")) });
                    match &outcome.error {
                        None => tracing::info!(operation = id, kind, changes = outcome.changes, "operation succeeded"),
                        Some(e) => tracing::warn!(operation = id, kind, error = %e, "operation failed"),
                    }
                    if let Err(e) = control::op_finish(&control_client, id, outcome.changes, outcome.error.as_deref()).await {
                        tracing::error!(operation = id, error = %format!("{e:#}"), "could not journal the end of the operation");
                    }
                });
            })
            .context("starting a thread for the operation")?;
        let id = rx.await.context("the operation's thread ended before journaling it")??;
        let mut running = self.running.lock().map_err(|_| anyhow::anyhow!("job list poisoned"))?;
        running.retain(|(_, h)| !h.is_finished());
        running.push((id, handle));
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
        crate::output::request_stop("SIGTERM");
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
                .map(|r| r.iter().filter(|(_, h)| !h.is_finished()).map(|(id, _)| *id).collect())
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
        "UPDATE pgplane.operations SET status = 'failed', error = $2, finished_at = now() WHERE id = ANY($1) AND status = 'running'",
        &[&ids, &error],
    )
    .await?;
    Ok(())
}
