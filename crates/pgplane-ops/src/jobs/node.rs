//! One process's share of the work: worker slots that run the jobs queued for its manifest
//! and a leader task that campaigns in its environment. `pgplane serve` and `pgplane
//! worker` both start one.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{leader, worker};
use crate::conn::Target;
use crate::ops::ManifestArgs;
use crate::runner::{OpsRunner, Reconciler};

/// What a node runs.
pub struct Setup {
    pub home: PathBuf,
    pub manifest: ManifestArgs,
    pub env: String,
    /// The manifest's digest: the node runs jobs queued for it.
    pub fingerprint: String,
    /// The live list for the periodic gc (`branches.keep_file`).
    pub keep_file: Option<String>,
    pub control: Target,
    /// Worker slots; 0: the node runs no jobs (an API-only replica still campaigns).
    pub workers: usize,
    pub reconcile_every: Duration,
    /// This process in the jobs table: `serve@host:pid`, `worker@host:pid`.
    pub name: String,
    pub hooks: Option<Arc<dyn worker::Hooks>>,
}

pub struct Node {
    worker: Mutex<Option<worker::Worker>>,
    handle: worker::Handle,
    pub leader: Arc<leader::State>,
    stop_leader: tokio::sync::watch::Sender<bool>,
}

/// A duration in milliseconds from the environment (tests make polls and ticks shorter).
fn env_ms(name: &str) -> Option<Duration> {
    std::env::var(name).ok()?.parse().ok().map(Duration::from_millis)
}

impl Node {
    /// Starts the worker slots and the leader task on the current runtime.
    pub fn start(setup: Setup) -> Node {
        let mut opts = worker::Options::new(setup.name.clone(), setup.workers, vec![setup.fingerprint.clone()]);
        if let Some(ms) = env_ms("PGPLANE_JOB_POLL_MS") {
            opts.poll = ms;
        }
        let runner = Arc::new(OpsRunner { home: setup.home.clone(), manifest: setup.manifest.clone() });
        let worker = worker::Worker::start(setup.control.clone(), opts, runner, setup.hooks.clone());
        let state = Arc::new(leader::State::default());
        let (stop_leader, mut stop_rx) = tokio::sync::watch::channel(false);
        let reconciler = Reconciler {
            env: setup.env.clone(),
            fingerprint: setup.fingerprint.clone(),
            manifest: setup.manifest.file.clone(),
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
        Node { handle: worker.handle(), worker: Mutex::new(Some(worker)), leader: state, stop_leader }
    }

    /// Jobs this process runs now.
    pub fn running(&self) -> Vec<i64> {
        self.handle.running()
    }

    /// Jobs this process's slots claimed, and how many were taken over from a dead worker.
    pub fn claims(&self) -> (u64, u64) {
        self.handle.claims()
    }

    pub fn is_leader(&self) -> bool {
        self.leader.leader.load(Ordering::SeqCst)
    }

    /// Steps down as leader; running jobs get `grace` to finish, then are cancelled and
    /// handed back to the queue (another process continues them). Returns their ids.
    pub async fn shutdown(&self, grace: Duration) -> Vec<i64> {
        let _ = self.stop_leader.send(true);
        let worker = self.worker.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
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
