//! The consumer: takes a fair share of a source's partitions, reads them in order and
//! records each message (with its job) in the control database ([`super::record`]).
//!
//! Partitions are assigned through the control database, for the embedded queue and for
//! Kafka alike: every live consumer of a group holds the group's member lock shared (so
//! they count themselves), and the consumer of a partition holds that partition's lock on
//! the connection that records its events. Each round a consumer gives up partitions
//! beyond its fair share and takes free ones up to it; on taking a partition it seeks the
//! source to the offset stored in the control database. A consumer that dies loses its
//! locks with its connection, and the others take its partitions within a round.
//!
//! **Invariant:** an offset is recorded at most once per group, whoever reads it: recording
//! runs on the connection holding the partition's lock and advances the stored offset only
//! from the value the recorder expects (`record`), and `pgplane.events` is unique per
//! (group, topic, partition, offset). A consumer that finds the stored offset moved seeks
//! there again.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio_postgres::Client;

use super::record::{self, Batch, Recorder};
use crate::conn::Target;
use crate::control::CONTROL_DB;
use crate::locks::{self, Lock};

/// A message as a source delivers it.
#[derive(Debug, Clone)]
pub struct Message {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    /// The `event_type` header, if any.
    pub type_header: Option<String>,
    pub payload: Vec<u8>,
}

/// Where events come from: the embedded queue ([`super::log::QueueSource`]) or Kafka
/// ([`super::kafka::KafkaSource`]). Both pass the same behavioural tests.
#[allow(async_fn_in_trait)]
pub trait Source {
    /// `queue` or `kafka` (the `source` column).
    fn kind(&self) -> &'static str;
    fn topic(&self) -> &str;
    /// The source's partitions.
    async fn partitions(&mut self) -> Result<Vec<i32>>;
    /// Reads exactly these partitions from now on, each from the given offset.
    async fn assign(&mut self, from: &[(i32, i64)]) -> Result<()>;
    /// Up to `max` messages, in offset order within each partition; waits up to `wait`
    /// when there are none.
    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<Message>>;
    /// Tells the source how far the control database has recorded (Kafka's committed
    /// offsets, for monitoring; nothing for the queue).
    async fn commit(&mut self, offsets: &[(i32, i64)]) -> Result<()>;
    /// The end of each partition, for lag.
    async fn high_watermarks(&mut self, parts: &[i32]) -> Result<Vec<(i32, i64)>>;
}

/// A point where the consumer kills itself with SIGKILL, for the crash tests
/// (`PGPLANE_EVENTS_CRASH=point:N`: at the N-th event that reaches the point).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPoint {
    /// A message was read; nothing recorded.
    BeforeRecord,
    /// The event and its job are committed in the control database; the source (Kafka)
    /// has not been told.
    AfterRecord,
    /// The source was told (Kafka's committed offset moved).
    AfterCommit,
}

#[derive(Debug, Clone, Copy)]
pub struct Crash {
    pub point: CrashPoint,
    pub at: u64,
}

impl Crash {
    /// From `PGPLANE_EVENTS_CRASH` (`before_record:5`, `after_record:1`, `after_commit:3`).
    pub fn from_env() -> Option<Crash> {
        let v = std::env::var("PGPLANE_EVENTS_CRASH").ok()?;
        let (p, n) = v.split_once(':')?;
        let point = match p {
            "before_record" => CrashPoint::BeforeRecord,
            "after_record" => CrashPoint::AfterRecord,
            "after_commit" => CrashPoint::AfterCommit,
            _ => return None,
        };
        Some(Crash { point, at: n.parse().ok()? })
    }
}

/// Kills this process at `point` when the `count`-th event reaches it (a commit covers
/// several events: the first commit that covers the N-th).
fn die_if(crash: Option<Crash>, point: CrashPoint, count: u64) {
    let due = |c: Crash| match point {
        CrashPoint::AfterCommit => count >= c.at,
        _ => count == c.at,
    };
    if crash.is_some_and(|c| c.point == point && due(c)) {
        tracing::warn!(?point, count, "PGPLANE_EVENTS_CRASH: killing this process");
        let pid = std::process::id().to_string();
        let _ = std::process::Command::new("kill").args(["-9", &pid]).status();
        std::process::abort();
    }
}

/// What a consumer does.
#[derive(Clone)]
pub struct Options {
    pub recorder: Arc<Recorder>,
    /// How often to rebalance and refresh the lag.
    pub tick: Duration,
    /// Messages per poll.
    pub batch: usize,
    pub crash: Option<Crash>,
}

/// What a consumer reports (for `/metrics` and logs).
#[derive(Default)]
pub struct Stats {
    pub consumed: AtomicU64,
    /// Partitions this process holds now.
    pub partitions: std::sync::Mutex<Vec<i32>>,
    pub rebalances: AtomicU64,
}

impl Stats {
    pub fn partitions(&self) -> Vec<i32> {
        self.partitions.lock().map(|p| p.clone()).unwrap_or_default()
    }
}

fn partition_lock(group: &str, topic: &str, partition: i32) -> Lock {
    Lock::named(locks::EVENT_PARTITION, format!("{group}/{topic}/{partition}"))
}

/// The members a partition's fair share counts: the live consumers of this group *and*
/// stream. Consumers of other streams under the same group name (another environment's
/// queue, another topic) share none of these partitions, so they must not shrink the share.
fn member_lock(group: &str, topic: &str) -> Lock {
    Lock::named(locks::EVENT_MEMBER, format!("{group}/{topic}"))
}

/// Runs a consumer until `stop` resolves: reconnects after losing the control database
/// (its partitions go to others meanwhile).
pub async fn run<S: Source>(
    control: Target,
    name: &str,
    opts: Options,
    mut source: S,
    stats: Arc<Stats>,
    stop: impl Future<Output = ()>,
) {
    tokio::pin!(stop);
    let app = format!("pgplane-consume/{name}");
    loop {
        let session = tokio::select! {
            s = control.connect_named(Some(CONTROL_DB), &app) => s,
            _ = &mut stop => return,
        };
        match session {
            Ok(client) => {
                let mut c = Consumer { client, opts: opts.clone(), owned: BTreeMap::new(), stats: stats.clone() };
                let outcome = tokio::select! {
                    r = c.run(&mut source) => r,
                    _ = &mut stop => {
                        c.release_all().await;
                        return;
                    }
                };
                if let Err(e) = outcome {
                    tracing::warn!(error = %format!("{e:#}"), "the consumer lost its session; rejoining");
                }
                if let Ok(mut p) = stats.partitions.lock() {
                    p.clear();
                }
                let _ = source.assign(&[]).await;
            }
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "the consumer cannot reach the control database"),
        }
        tokio::select! { _ = tokio::time::sleep(opts.tick) => {}, _ = &mut stop => return }
    }
}

struct Consumer {
    client: Client,
    opts: Options,
    /// Partitions held, with the next offset to record.
    owned: BTreeMap<i32, i64>,
    stats: Arc<Stats>,
}

impl Consumer {
    fn group(&self) -> &str {
        &self.opts.recorder.group
    }

    async fn release_all(&mut self) {
        let topic = self.opts.recorder.topic.clone();
        for p in std::mem::take(&mut self.owned).into_keys() {
            let _ = partition_lock(self.group(), &topic, p).unlock(&self.client).await;
        }
        let _ = member_lock(self.group(), &topic).unlock_shared(&self.client).await;
    }

    async fn run<S: Source>(&mut self, source: &mut S) -> Result<()> {
        member_lock(self.group(), &self.opts.recorder.topic)
            .lock_shared(&self.client)
            .await
            .context("joining the consumer group")?;
        let mut last_round: Option<Instant> = None;
        let mut pending: BTreeMap<i32, i64> = BTreeMap::new();
        let mut last_commit = Instant::now();
        loop {
            if last_round.is_none_or(|t| t.elapsed() >= self.opts.tick) {
                last_round = Some(Instant::now());
                self.rebalance(source).await?;
                self.refresh_lag(source).await;
            }
            if self.owned.is_empty() {
                tokio::time::sleep(self.opts.tick).await;
                continue;
            }
            if record::queued_event_jobs(&self.client, &self.opts.recorder.env).await?
                >= self.opts.recorder.spec.max_queued
            {
                // Back-pressure: the workers are behind; read on when they catch up.
                tokio::time::sleep(self.opts.tick).await;
                continue;
            }
            let wait = self.opts.tick.min(Duration::from_millis(500));
            let msgs: Vec<Message> = source
                .poll(self.opts.batch, wait)
                .await?
                .into_iter()
                .filter(|m| self.owned.get(&m.partition).is_some_and(|&next| m.offset >= next))
                .collect();
            if !msgs.is_empty() {
                let first = self.stats.consumed.load(Ordering::Relaxed);
                let crash = self.opts.crash;
                let mut before = |i: usize| die_if(crash, CrashPoint::BeforeRecord, first + i as u64 + 1);
                let expected = self.owned.clone();
                match record::record_batch(&mut self.client, &self.opts.recorder, &msgs, &expected, &mut before).await?
                {
                    Batch::Stale => {
                        tracing::warn!("a stored offset moved; seeking to the stored offsets again");
                        self.reseek(source).await?;
                        continue;
                    }
                    Batch::Recorded(done) => {
                        tracing::debug!(events = done.len(), "events recorded");
                    }
                }
                for m in &msgs {
                    self.owned.insert(m.partition, m.offset + 1);
                    pending.insert(m.partition, m.offset + 1);
                    let n = self.stats.consumed.fetch_add(1, Ordering::Relaxed) + 1;
                    die_if(self.opts.crash, CrashPoint::AfterRecord, n);
                }
            }
            if !pending.is_empty() && last_commit.elapsed() >= Duration::from_millis(200) {
                let offsets: Vec<(i32, i64)> = std::mem::take(&mut pending).into_iter().collect();
                if let Err(e) = source.commit(&offsets).await {
                    tracing::warn!(error = %format!("{e:#}"), "committing offsets to the source failed (monitoring only)");
                }
                last_commit = Instant::now();
                let n = self.stats.consumed.load(Ordering::Relaxed);
                die_if(self.opts.crash, CrashPoint::AfterCommit, n);
            }
        }
    }

    /// Gives up partitions beyond the fair share, takes free ones up to it, and seeks the
    /// source to the stored offsets of any new ones.
    async fn rebalance<S: Source>(&mut self, source: &mut S) -> Result<()> {
        let topic = self.opts.recorder.topic.clone();
        let group = self.group().to_string();
        let all = source.partitions().await?;
        // Partitions that left the source (a shrunk topic) are let go.
        let gone: Vec<i32> = self.owned.keys().copied().filter(|p| !all.contains(p)).collect();
        let members = usize::try_from(member_lock(&group, &topic).holders(&self.client).await?).unwrap_or(1).max(1);
        let share = pgplane_core::event::fair_share(all.len(), members);
        let owned: Vec<i32> = self.owned.keys().copied().filter(|p| !gone.contains(p)).collect();
        let candidates: Vec<i32> = all.iter().copied().filter(|p| !owned.contains(p)).collect();
        let (mut release, take) = pgplane_core::event::rebalance(&owned, &candidates, share);
        release.extend(gone);
        let mut changed = !release.is_empty();
        for p in release {
            partition_lock(&group, &topic, p).unlock(&self.client).await?;
            self.owned.remove(&p);
            tracing::info!(partition = p, "gave up an event partition (rebalance)");
        }
        let want = share.saturating_sub(self.owned.len());
        let mut taken = 0;
        // Free partitions first in the order `rebalance` chose, then any other free one.
        let order: Vec<i32> =
            take.iter().copied().chain(candidates.iter().copied().filter(|p| !take.contains(p))).collect();
        for p in order {
            if taken >= want {
                break;
            }
            if partition_lock(&group, &topic, p).try_lock(&self.client).await? {
                let next = record::stored_offset(&self.client, &group, &topic, p).await?;
                self.owned.insert(p, next);
                taken += 1;
                changed = true;
                tracing::info!(partition = p, offset = next, "took an event partition");
            }
        }
        if changed {
            self.stats.rebalances.fetch_add(1, Ordering::Relaxed);
            self.reseek(source).await?;
        }
        Ok(())
    }

    /// Re-reads the stored offsets of every held partition and seeks the source there.
    async fn reseek<S: Source>(&mut self, source: &mut S) -> Result<()> {
        let topic = self.opts.recorder.topic.clone();
        let group = self.group().to_string();
        for (p, next) in self.owned.iter_mut() {
            *next = record::stored_offset(&self.client, &group, &topic, *p).await?;
        }
        let from: Vec<(i32, i64)> = self.owned.iter().map(|(p, o)| (*p, *o)).collect();
        source.assign(&from).await?;
        if let Ok(mut p) = self.stats.partitions.lock() {
            *p = self.owned.keys().copied().collect();
        }
        Ok(())
    }

    /// Stores the source's ends of the held partitions (lag = end - next), best effort.
    async fn refresh_lag<S: Source>(&mut self, source: &mut S) {
        let parts: Vec<i32> = self.owned.keys().copied().collect();
        if parts.is_empty() {
            return;
        }
        match source.high_watermarks(&parts).await {
            Ok(hw) => {
                let r = &self.opts.recorder;
                if let Err(e) = record::store_high_watermarks(&self.client, &r.group, &r.topic, &hw).await {
                    tracing::debug!(error = %format!("{e:#}"), "storing high watermarks failed");
                }
            }
            Err(e) => tracing::debug!(error = %format!("{e:#}"), "reading high watermarks failed"),
        }
    }
}
