//! `serve`'s side of durable jobs. Routes queue jobs in the control database (at most
//! `--backlog` waiting per environment, else 429); this process's worker slots
//! (`--workers`, 0 for an API-only replica) run queued jobs of its manifest, whoever
//! queued them; its leader task takes part in the election and, when elected, recovers
//! jobs of dead workers and queues the periodic branch gc. Nothing that decides an answer
//! lives in this process: any replica answers the same.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pgplane_ops::jobs::node::{Node, Setup};
use pgplane_ops::jobs::{worker, Job, NewJob};
use pgplane_ops::locks::{self, Lock};

use super::error::{ApiError, ApiResult};

/// What this process runs and accepts.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Worker slots (jobs this process runs at once); 0: it runs none.
    pub workers: usize,
    /// Jobs of this environment waiting for a worker at most; beyond, 429.
    pub backlog: usize,
}

pub struct Jobs {
    pub limits: Limits,
    pub fingerprint: String,
    env: String,
    node: Node,
    stopping: AtomicBool,
}

/// Claims seen by this process's slots: the claim-to-start latency histogram of `/metrics`.
pub struct ClaimHooks {
    pub latency: prometheus_client::metrics::histogram::Histogram,
}

impl worker::Hooks for ClaimHooks {
    fn claimed(&self, job: &Job, _attempt: i32) {
        if let Some(ms) = job.claim_latency_ms {
            self.latency.observe(ms.max(0.0) / 1000.0);
        }
    }
}

impl Jobs {
    /// Starts this replica's worker slots and leader task on the current runtime.
    pub fn start(
        mut setup: Setup,
        backlog: usize,
        claim_latency: prometheus_client::metrics::histogram::Histogram,
    ) -> Jobs {
        setup.hooks = Some(Arc::new(ClaimHooks { latency: claim_latency }));
        let limits = Limits { workers: setup.workers, backlog };
        let (fingerprint, env) = (setup.fingerprint.clone(), setup.env.clone());
        Jobs { limits, fingerprint, env, node: Node::start(setup), stopping: AtomicBool::new(false) }
    }

    /// Queues `new` for a worker of this manifest. With `exclusive`, refuses (409) when an
    /// unfinished job with the same key exists (a branch being created). Refuses (429) when
    /// `backlog` jobs of this environment already wait. The count and the insert run under
    /// one environment-wide transaction lock, so concurrent requests cannot overshoot.
    pub async fn submit(
        &self,
        control: &mut deadpool_postgres::Object,
        mut new: NewJob,
        exclusive: Option<&str>,
    ) -> ApiResult<Job> {
        if self.stopping.load(Ordering::SeqCst) {
            return Err(ApiError::unavailable("pgplane serve is stopping; it queues no more operations"));
        }
        new.fingerprint = Some(self.fingerprint.clone());
        let tx = control.transaction().await.map_err(anyhow::Error::from)?;
        let t: &tokio_postgres::Transaction = &tx;
        // Exclusive: no unfinished job with the key, checked under a lock of that key only.
        if let (Some(what), Some(key)) = (exclusive, new.key.as_deref()) {
            Lock::named(locks::SUBMIT, key).xact_lock(t).await.map_err(anyhow::Error::from)?;
            if let Some(j) = pgplane_ops::jobs::queue::unfinished_with_key(t, key).await? {
                return Err(ApiError::conflict(format!(
                    "{what} (operation {id}, {status}; GET /api/v1/operations/{id}); try again when it ends",
                    id = j.id,
                    status = j.status
                )));
            }
        }
        // Count and insert in one statement under the environment's lock, held until the
        // commit right after: concurrent requests never overshoot the backlog.
        Lock::named(locks::SUBMIT, format!("env/{}", self.env)).xact_lock(t).await.map_err(anyhow::Error::from)?;
        let backlog = i64::try_from(self.limits.backlog).unwrap_or(i64::MAX);
        let id = match pgplane_ops::jobs::queue::submit_bounded(t, &new, backlog).await? {
            Ok(id) => id,
            Err(waiting) => {
                return Err(ApiError::too_many(
                    format!(
                        "{waiting} operations of environment {} wait for a worker, the most this service queues \
                         (--backlog {}); try again in a few seconds (GET /api/v1/operations shows them)",
                        self.env, self.limits.backlog
                    ),
                    5,
                ))
            }
        };
        tx.commit().await.map_err(anyhow::Error::from)?;
        let job = pgplane_ops::jobs::queue::get(&***control, id).await?;
        job.ok_or_else(|| ApiError::from(anyhow::anyhow!("job {id} vanished as it was queued")))
    }

    /// Jobs this process runs now.
    pub fn running(&self) -> usize {
        self.node.running().len()
    }

    /// Jobs this process's slots claimed, and how many were taken over from a dead worker.
    pub fn claims(&self) -> (u64, u64) {
        self.node.claims()
    }

    pub fn is_leader(&self) -> bool {
        self.node.is_leader()
    }

    /// After SIGTERM: no more jobs are queued here; running ones get `grace` to finish, then
    /// are cancelled and handed back to the queue (another replica continues them). The
    /// leader steps down. Returns the ids handed back.
    pub async fn shutdown(&self, grace: Duration) -> Vec<i64> {
        self.stopping.store(true, Ordering::SeqCst);
        self.node.shutdown(grace).await
    }

    /// The second signal: running jobs are cancelled now (and handed back).
    pub fn cancel_now(&self) {
        self.node.cancel_now();
    }
}
