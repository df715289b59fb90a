//! The leader of an environment: one process among all that share the control database,
//! elected by holding the session lock [`Lock::leader`] on a connection of its own (a new
//! leader takes over within one `tick` of the old one's death: its connection closes and
//! the lock with it). The leader recovers jobs whose worker died and runs the periodic
//! duties ([`Duties`]: branch expiry and garbage collection, preview tenants…).
//!
//! **Invariant:** at most one process per environment acts as leader at a time, and it
//! stops acting the moment it cannot prove it still holds the lock.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::queue;
use crate::conn::Target;
use crate::control::CONTROL_DB;
use crate::locks::Lock;

/// What the leader does besides recovering jobs.
pub trait Duties: Send + Sync + 'static {
    /// Called every `duty_interval` (and at once when leadership begins) with a control
    /// connection. Typically queues jobs (a branch gc), so the work itself is durable.
    fn run<'a>(
        &'a self,
        control: &'a tokio_postgres::Client,
    ) -> Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send + 'a>>;
}

#[derive(Debug, Clone)]
pub struct Options {
    pub env: String,
    /// How often to try for leadership, check it, and recover lapsed jobs.
    pub tick: Duration,
    /// How often to run the duties.
    pub duty_interval: Duration,
    /// How long after its lease lapsed a job whose lock is still held counts as hung.
    pub hung_after: Duration,
}

/// What the leader task reports (for metrics and logs).
#[derive(Default)]
pub struct State {
    pub leader: AtomicBool,
    /// Times this process became leader.
    pub elected: AtomicU64,
    /// Jobs this process recovered as leader.
    pub recovered: AtomicU64,
}

/// Runs the election and, while leader, the leader's work, until `stop` resolves.
pub async fn run(
    control: Target,
    opts: Options,
    duties: Arc<dyn Duties>,
    state: Arc<State>,
    stop: impl Future<Output = ()>,
) {
    tokio::pin!(stop);
    let lock = Lock::leader(&opts.env);
    let app = format!("pgplane-leader/{}", opts.env);
    loop {
        let session = tokio::select! {
            s = control.connect_named(Some(CONTROL_DB), &app) => s,
            _ = &mut stop => return,
        };
        let client = match session {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "leader election: cannot reach the control database");
                tokio::select! { _ = tokio::time::sleep(opts.tick) => continue, _ = &mut stop => return }
            }
        };
        // Campaign, then lead, on this session until it breaks.
        let mut last_duty: Option<Instant> = None;
        loop {
            let leading = state.leader.load(Ordering::SeqCst);
            let held = if leading {
                lock.held_here(&client).await
            } else {
                match lock.try_lock(&client).await {
                    Ok(true) => {
                        state.elected.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(env = %opts.env, "elected leader");
                        Ok(true)
                    }
                    other => other,
                }
            };
            match held {
                Ok(true) => {
                    state.leader.store(true, Ordering::SeqCst);
                    match queue::recover_lapsed(&client, opts.hung_after).await {
                        Ok(r) => {
                            let n = r.requeued.len() + r.ended.len();
                            if n > 0 || !r.terminated.is_empty() {
                                state.recovered.fetch_add(n as u64, Ordering::Relaxed);
                                tracing::warn!(requeued = ?r.requeued, ended = ?r.ended, terminated = ?r.terminated,
                                    "recovered jobs whose worker is gone");
                            }
                        }
                        Err(e) => tracing::warn!(error = %format!("{e:#}"), "recovering lapsed jobs failed"),
                    }
                    if last_duty.is_none_or(|t| t.elapsed() >= opts.duty_interval) {
                        last_duty = Some(Instant::now());
                        if let Err(e) = duties.run(&client).await {
                            tracing::warn!(error = %format!("{e:#}"), "leader duties failed");
                        }
                    }
                }
                Ok(false) => {
                    if leading {
                        tracing::warn!(env = %opts.env, "no longer leader");
                    }
                    state.leader.store(false, Ordering::SeqCst);
                }
                Err(e) => {
                    if leading {
                        tracing::warn!(env = %opts.env, error = %e, "lost the leader's session; no longer leader");
                    }
                    state.leader.store(false, Ordering::SeqCst);
                    break;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(opts.tick) => {}
                _ = &mut stop => {
                    if state.leader.swap(false, Ordering::SeqCst) {
                        let _ = lock.unlock(&client).await;
                        tracing::info!(env = %opts.env, "stepped down as leader");
                    }
                    return;
                }
            }
        }
        tokio::select! { _ = tokio::time::sleep(opts.tick) => {}, _ = &mut stop => return }
    }
}
