//! `serve`'s side of durable jobs. Routes queue jobs in the control database (at most
//! `--backlog` waiting per environment, else 429); this process's worker slots
//! (`--workers`, 0 for an API-only replica) run queued jobs of its manifest, whoever
//! queued them; its leader task takes part in the election and, when elected, recovers
//! jobs of dead workers and queues the periodic branch gc. Nothing that decides an answer
//! lives in this process: any replica answers the same.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pgplane_ops::jobs::{leader, worker, Job, NewJob};
use pgplane_ops::locks::{self, Lock};
use pgplane_ops::runner::{OpsRunner, Reconciler};

use super::error::{ApiError, ApiResult};
use crate::conn::Target;
use crate::ops::ManifestArgs;

/// What this process runs and accepts.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Worker slots (jobs this process runs at once); 0: it runs none.
    pub workers: usize,
    /// Jobs of this environment waiting for a worker at most; beyond, 429.
    pub backlog: usize,
}

/// Configuration of the background parts.
pub struct Setup {
    pub home: std::path::PathBuf,
    pub manifest: ManifestArgs,
    pub env: String,
    pub fingerprint: String,
    pub keep_file: Option<String>,
    pub control: Target,
    pub limits: Limits,
    pub reconcile_every: Duration,
    pub claim_latency: prometheus_client::metrics::histogram::Histogram,
}

pub struct Jobs {
    pub limits: Limits,
    pub fingerprint: String,
    env: String,
    worker: Mutex<Option<worker::Worker>>,
    handle: worker::Handle,
    pub leader: Arc<leader::State>,
    stop_leader: tokio::sync::watch::Sender<bool>,
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
    /// Starts the worker slots and the leader task on the current runtime.
    pub fn start(setup: Setup) -> Jobs {
        let hooks = Arc::new(ClaimHooks { latency: setup.claim_latency.clone() });
        let name = format!("serve@{}:{}", worker::hostname(), std::process::id());
        let mut opts = worker::Options::new(name, setup.limits.workers, vec![setup.fingerprint.clone()]);
        if let Some(ms) = env_ms("PGPLANE_JOB_POLL_MS") {
            opts.poll = ms;
        }
        let runner = Arc::new(OpsRunner { home: setup.home.clone(), manifest: setup.manifest.clone() });
        let worker = worker::Worker::start(setup.control.clone(), opts, runner, Some(hooks.clone()));
        let state = Arc::new(leader::State::default());
        let (stop_leader, mut stop_rx) = tokio::sync::watch::channel(false);
        let reconciler = Reconciler {
            env: setup.env.clone(),
            manifest: setup.manifest.file.clone(),
            fingerprint: setup.fingerprint.clone(),
            keep_file: setup.keep_file.clone(),
        };
        let leader_opts = leader::Options {
            env: setup.env.clone(),
            tick: env_ms("PGPLANE_LEADER_TICK_MS").unwrap_or(Duration::from_secs(1)),
            duty_interval: setup.reconcile_every,
            hung_after: Duration::from_secs(30),
        };
        tokio::spawn(leader::run(
            setup.control.clone(),
            leader_opts,
            Arc::new(reconciler),
            state.clone(),
            async move {
                let _ = stop_rx.wait_for(|s| *s).await;
            },
        ));
        Jobs {
            limits: setup.limits,
            fingerprint: setup.fingerprint,
            env: setup.env,
            handle: worker.handle(),
            worker: Mutex::new(Some(worker)),
            leader: state,
            stop_leader,
            stopping: AtomicBool::new(false),
        }
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
        Lock::named(locks::SUBMIT, &self.env).xact_lock(t).await.map_err(anyhow::Error::from)?;
        if let (Some(what), Some(key)) = (exclusive, new.key.as_deref()) {
            if let Some(j) = pgplane_ops::jobs::queue::unfinished_with_key(t, key).await? {
                return Err(ApiError::conflict(format!(
                    "{what} (operation {id}, {status}; GET /api/v1/operations/{id}); try again when it ends",
                    id = j.id,
                    status = j.status
                )));
            }
        }
        let waiting = pgplane_ops::jobs::queue::queued(t, Some(&self.env)).await?;
        if waiting >= i64::try_from(self.limits.backlog).unwrap_or(i64::MAX) {
            return Err(ApiError::too_many(
                format!(
                    "{waiting} operations of environment {} wait for a worker, the most this service queues \
                     (--backlog {}); try again in a few seconds (GET /api/v1/operations shows them)",
                    self.env, self.limits.backlog
                ),
                5,
            ));
        }
        let id = pgplane_ops::jobs::queue::submit(t, &new).await?;
        let job = pgplane_ops::jobs::queue::get(t, id).await?;
        tx.commit().await.map_err(anyhow::Error::from)?;
        job.ok_or_else(|| ApiError::from(anyhow::anyhow!("job {id} vanished as it was queued")))
    }

    /// Jobs this process runs now.
    pub fn running(&self) -> usize {
        self.handle.running().len()
    }

    /// Jobs this process's slots claimed, and how many were taken over from a dead worker.
    pub fn claims(&self) -> (u64, u64) {
        self.handle.claims()
    }

    pub fn is_leader(&self) -> bool {
        self.leader.leader.load(Ordering::SeqCst)
    }

    /// After SIGTERM: no more jobs are queued here; running ones get `grace` to finish, then
    /// are cancelled and handed back to the queue (another replica continues them). The
    /// leader steps down. Returns the ids handed back.
    pub async fn shutdown(&self, grace: Duration) -> Vec<i64> {
        self.stopping.store(true, Ordering::SeqCst);
        let _ = self.stop_leader.send(true);
        let worker = super::lock(&self.worker).take();
        match worker {
            Some(w) => w.shutdown(grace).await,
            None => Vec::new(),
        }
    }

    /// The second signal: running jobs are cancelled now (and handed back).
    pub fn cancel_now(&self) {
        self.handle.cancel_all(worker::SHUTDOWN);
    }
}

/// A duration in milliseconds from the environment (tests make polls and ticks shorter).
fn env_ms(name: &str) -> Option<Duration> {
    std::env::var(name).ok()?.parse().ok().map(Duration::from_millis)
}
