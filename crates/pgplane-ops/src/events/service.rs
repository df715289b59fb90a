//! One process's event consumer, as `pgplane consume` and `pgplane serve --consume` run
//! it: the consumer of the manifest's source (the embedded queue, or Kafka with the
//! outbox relay beside it) on a thread of its own, until stopped.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use pgplane_core::manifest::Manifest;

use super::consume::{self, Crash, Stats};
use super::record::Recorder;
use crate::conn::Target;
use crate::control::CONTROL_DB;

/// What a consumer needs.
pub struct Setup {
    pub control: Target,
    pub manifest: Manifest,
    pub env: String,
    /// The manifest's digest: jobs go to workers serving it.
    pub fingerprint: String,
    /// This process (`consume@host:pid`).
    pub name: String,
    pub tick: Duration,
}

/// A running consumer.
pub struct Service {
    pub stats: Arc<Stats>,
    /// `queue` or `kafka`.
    pub source: &'static str,
    pub group: String,
    pub topic: String,
    stop: tokio::sync::watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// A duration in milliseconds from the environment (tests make rounds shorter).
fn env_ms(name: &str) -> Option<Duration> {
    std::env::var(name).ok()?.parse().ok().map(Duration::from_millis)
}

impl Service {
    /// Checks the source (Kafka's brokers and topic answer) and starts the consumer.
    pub async fn start(setup: Setup) -> Result<Service> {
        let spec = setup.manifest.events.clone();
        let (source, group, topic) = match &spec.kafka {
            Some(k) => {
                let n = super::kafka::check(k).await?;
                tracing::info!(topic = %k.topic, partitions = n, brokers = %k.brokers, "consuming from Kafka");
                ("kafka", k.group.clone(), k.topic.clone())
            }
            None => ("queue", "pgplane".to_string(), setup.env.clone()),
        };
        let recorder = Arc::new(Recorder::new(source, &group, &topic, &setup.env, &setup.fingerprint, &setup.manifest));
        let opts = consume::Options {
            recorder,
            tick: env_ms("PGPLANE_EVENTS_TICK_MS").unwrap_or(setup.tick),
            batch: 100,
            crash: Crash::from_env(),
        };
        let stats = Arc::new(Stats::default());
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let control = setup.control.clone();
        let name = setup.name.clone();
        let st = stats.clone();
        let kafka = spec.kafka.clone();
        let relay_group = group.clone();
        let queue_topic = topic.clone();
        let thread = std::thread::Builder::new()
            .name("pgplane-consume".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start the consumer's runtime");
                        return;
                    }
                };
                rt.block_on(async move {
                    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
                        let _ = rx.wait_for(|s| *s).await;
                    };
                    match kafka {
                        None => {
                            let source = loop {
                                match control.connect_named(Some(CONTROL_DB), &format!("pgplane-queue/{name}")).await {
                                    Ok(c) => break super::log::QueueSource::new(c, &queue_topic),
                                    Err(e) => {
                                        tracing::warn!(error = %format!("{e:#}"), "the queue reader cannot connect");
                                        tokio::select! {
                                            _ = tokio::time::sleep(opts.tick) => {}
                                            _ = stopped(stop_rx.clone()) => return,
                                        }
                                    }
                                }
                            };
                            consume::run(control, &name, opts, source, st, stopped(stop_rx)).await;
                        }
                        Some(k) => {
                            let source = match super::kafka::KafkaSource::new(&k) {
                                Ok(s) => s,
                                Err(e) => {
                                    tracing::error!(error = %format!("{e:#}"), "cannot create the Kafka consumer");
                                    return;
                                }
                            };
                            let sink = match super::kafka::KafkaSink::new(&k) {
                                Ok(s) => s,
                                Err(e) => {
                                    tracing::error!(error = %format!("{e:#}"), "cannot create the Kafka producer");
                                    return;
                                }
                            };
                            let every = opts.tick.min(Duration::from_millis(200));
                            tokio::join!(
                                consume::run(control.clone(), &name, opts, source, st, stopped(stop_rx.clone())),
                                super::outbox::relay(control, &relay_group, &k.topic, sink, every, stopped(stop_rx)),
                            );
                        }
                    }
                })
            })
            .context("starting the consumer's thread")?;
        Ok(Service { stats, source, group, topic, stop, thread: Some(thread) })
    }

    /// Stops reading (the partitions go to other consumers) and waits for the thread.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}
