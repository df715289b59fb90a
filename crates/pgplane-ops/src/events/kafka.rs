//! Kafka through rdkafka (librdkafka): the consumer side as a [`Source`] and the producer
//! that publishes events, status events and dead letters.
//!
//! Partitions are assigned by pgplane through the control database ([`super::consume`]),
//! not by Kafka's group protocol: the consumer `assign`s exactly the partitions whose lock
//! it holds, starting at the offsets stored in the control database (the truth on
//! restart), and commits the offsets it recorded to the group afterwards, so Kafka's lag
//! tools see the group's position. Two reasons: ownership and recording share one
//! connection (a consumer that lost a partition cannot record it any more), and it works
//! with brokers whose group coordinator does not reassign a dead member's partitions
//! (see README, "Kafka").

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result};
use pgplane_core::event::KafkaSpec;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, Message as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use super::consume::{Message, Source};
use super::outbox::{Entry, Sink};

/// librdkafka's settings for `spec`, with the manifest's pass-through options.
fn config(spec: &KafkaSpec) -> ClientConfig {
    config_over(spec, &[])
}

/// [`config`] over `defaults`, which the manifest's options override.
fn config_over(spec: &KafkaSpec, defaults: &[(&str, &str)]) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &spec.brokers);
    c.set("client.id", format!("pgplane-{}", std::process::id()));
    for (k, v) in defaults {
        c.set(*k, *v);
    }
    for (k, v) in &spec.options {
        c.set(k, v);
    }
    c
}

/// The consumer's default fetch wait: a request event should take effect within a second,
/// and librdkafka's 500 ms (which some brokers hold even when data is there) spends half of
/// it. The manifest's `events.kafka.options` can set it.
const FETCH_WAIT_MS: &str = "100";

/// The consumer side.
pub struct KafkaSource {
    consumer: StreamConsumer,
    /// A client of its own for the partitions' ends (lag): on the consumer's connection
    /// that request waited behind the consumer's pending fetch, and the consume loop with it.
    watermarks: std::sync::Arc<BaseConsumer>,
    topic: String,
    /// Partitions assigned, with the next offset to deliver (for filtering re-deliveries
    /// of a batch's records before a seek point).
    assigned: BTreeMap<i32, i64>,
}

impl KafkaSource {
    pub fn new(spec: &KafkaSpec) -> Result<KafkaSource> {
        let mut c = config_over(spec, &[("fetch.wait.max.ms", FETCH_WAIT_MS)]);
        c.set("group.id", &spec.group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false");
        let consumer: StreamConsumer = c.create().context("creating the Kafka consumer")?;
        let watermarks: BaseConsumer = config(spec).create().context("creating the Kafka lag reader")?;
        Ok(KafkaSource {
            consumer,
            watermarks: std::sync::Arc::new(watermarks),
            topic: spec.topic.clone(),
            assigned: BTreeMap::new(),
        })
    }

    async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        tokio::task::spawn_blocking(f).await.context("a Kafka call panicked")
    }
}

impl Source for KafkaSource {
    fn kind(&self) -> &'static str {
        "kafka"
    }

    fn topic(&self) -> &str {
        &self.topic
    }

    async fn partitions(&mut self) -> Result<Vec<i32>> {
        // A blocking call in librdkafka: the consumer runs on a thread of its own.
        let topic = self.topic.clone();
        let md = self.consumer.fetch_metadata(Some(&topic), Duration::from_secs(10));
        let md = md.with_context(|| format!("reading the metadata of topic {topic}"))?;
        let t =
            md.topics().iter().find(|t| t.name() == topic).with_context(|| format!("Kafka has no topic {topic}"))?;
        if let Some(e) = t.error() {
            anyhow::bail!("Kafka topic {topic}: {e:?}");
        }
        let mut parts: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
        parts.sort_unstable();
        Ok(parts)
    }

    async fn assign(&mut self, from: &[(i32, i64)]) -> Result<()> {
        let mut tpl = TopicPartitionList::new();
        for (p, o) in from {
            tpl.add_partition_offset(&self.topic, *p, Offset::Offset(*o))
                .with_context(|| format!("seeking partition {p} to {o}"))?;
        }
        self.consumer.assign(&tpl).context("assigning Kafka partitions")?;
        self.assigned = from.iter().copied().collect();
        Ok(())
    }

    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<Message>> {
        let mut out = Vec::new();
        if self.assigned.is_empty() {
            tokio::time::sleep(wait).await;
            return Ok(out);
        }
        let deadline = tokio::time::Instant::now() + wait;
        while out.len() < max {
            let left = if out.is_empty() { deadline - tokio::time::Instant::now() } else { Duration::from_millis(5) };
            let m = match tokio::time::timeout(left, self.consumer.recv()).await {
                Err(_) => break,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "Kafka consumer error");
                    break;
                }
                Ok(Ok(m)) => m,
            };
            let Some(next) = self.assigned.get_mut(&m.partition()) else { continue };
            if m.offset() < *next {
                continue;
            }
            *next = m.offset() + 1;
            let type_header = m.headers().and_then(|h| {
                h.iter()
                    .find(|x| x.key == pgplane_core::event::TYPE_HEADER)
                    .and_then(|x| x.value)
                    .map(super::record::text_of)
            });
            out.push(Message {
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().map(super::record::text_of),
                type_header,
                payload: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
            });
            if tokio::time::Instant::now() >= deadline {
                break;
            }
        }
        Ok(out)
    }

    async fn commit(&mut self, offsets: &[(i32, i64)]) -> Result<()> {
        let mut tpl = TopicPartitionList::new();
        for (p, o) in offsets {
            tpl.add_partition_offset(&self.topic, *p, Offset::Offset(*o))?;
        }
        self.consumer.commit(&tpl, CommitMode::Async).context("committing offsets to the Kafka group")
    }

    async fn high_watermarks(&mut self, parts: &[i32]) -> Result<Vec<(i32, i64)>> {
        let (client, topic, parts) = (self.watermarks.clone(), self.topic.clone(), parts.to_vec());
        Self::blocking(move || {
            let mut out = Vec::new();
            for p in parts {
                let (_, high) = client
                    .fetch_watermarks(&topic, p, Duration::from_secs(5))
                    .with_context(|| format!("reading the end of partition {p}"))?;
                out.push((p, high));
            }
            Ok(out)
        })
        .await?
    }
}

/// A producer for events, status events and dead letters (idempotent: retries keep order
/// and add no duplicates within a session).
pub fn producer(spec: &KafkaSpec) -> Result<FutureProducer> {
    let mut c = config(spec);
    c.set("enable.idempotence", "true").set("linger.ms", "5");
    c.create().context("creating the Kafka producer")
}

/// Produces one message and waits for the broker's acknowledgement.
pub async fn send(
    p: &FutureProducer,
    topic: &str,
    key: Option<&str>,
    payload: &[u8],
    headers: &[(&str, &str)],
) -> Result<(i32, i64)> {
    let mut h = OwnedHeaders::new();
    for (k, v) in headers {
        h = h.insert(Header { key: k, value: Some(*v) });
    }
    let mut record = FutureRecord::to(topic).payload(payload).headers(h);
    if let Some(k) = key {
        record = record.key(k);
    }
    let d = p
        .send(record, Duration::from_secs(30))
        .await
        .map_err(|(e, _)| anyhow::anyhow!("producing to Kafka topic {topic}: {e}"))?;
    Ok((d.partition, d.offset))
}

/// The relay's sink: status events to `status_topic`, dead letters (the original message,
/// with the reason in a `pgplane_reason` header) to `dead_letter_topic`. A stream without
/// a topic is only kept in the control database.
pub struct KafkaSink {
    producer: FutureProducer,
    status_topic: Option<String>,
    dead_letter_topic: Option<String>,
}

impl KafkaSink {
    pub fn new(spec: &KafkaSpec) -> Result<KafkaSink> {
        Ok(KafkaSink {
            producer: producer(spec)?,
            status_topic: spec.status_topic.clone(),
            dead_letter_topic: spec.dead_letter_topic.clone(),
        })
    }
}

impl Sink for KafkaSink {
    async fn send(&mut self, rows: &[Entry]) -> Result<Vec<i64>> {
        let mut sent = Vec::new();
        // In order, one at a time per batch of futures: idempotent production keeps order.
        let mut pending = Vec::new();
        for r in rows {
            let (topic, payload, headers): (Option<&String>, Vec<u8>, Vec<(&str, String)>) = match r.stream.as_str() {
                "status" => {
                    let s = r.status();
                    (self.status_topic.as_ref(), serde_json::to_vec(&s)?, vec![("event_type", s.kind.clone())])
                }
                _ => (
                    self.dead_letter_topic.as_ref(),
                    r.payload.clone().unwrap_or_default().into_bytes(),
                    vec![
                        ("pgplane_reason", r.reason.clone().unwrap_or_default()),
                        ("pgplane_event", r.event_seq.to_string()),
                    ],
                ),
            };
            let Some(topic) = topic else {
                sent.push(r.id);
                continue;
            };
            let key = r.key.clone().or_else(|| r.subject.clone());
            let producer = self.producer.clone();
            let topic = topic.clone();
            let id = r.id;
            pending.push(async move {
                let hs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
                send(&producer, &topic, key.as_deref(), &payload, &hs).await.map(|_| id)
            });
        }
        for r in futures_util::future::join_all(pending).await {
            match r {
                Ok(id) => sent.push(id),
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "relaying to Kafka failed; retrying later");
                    break;
                }
            }
        }
        sent.sort_unstable();
        Ok(sent)
    }
}

/// A metadata-only check that the brokers answer and the topic exists (for `consume`'s
/// start: a wrong broker list or topic is an error named at once).
pub async fn check(spec: &KafkaSpec) -> Result<usize> {
    let spec = spec.clone();
    KafkaSource::blocking(move || -> Result<usize> {
        let c: BaseConsumer = config(&spec).create().context("creating a Kafka client")?;
        let md = c
            .fetch_metadata(Some(&spec.topic), Duration::from_secs(10))
            .with_context(|| format!("reaching the Kafka brokers {}", spec.brokers))?;
        let t = md.topics().iter().find(|t| t.name() == spec.topic);
        match t {
            Some(t) if t.error().is_none() && !t.partitions().is_empty() => Ok(t.partitions().len()),
            _ => anyhow::bail!("Kafka topic {} does not exist on {} (create it first)", spec.topic, spec.brokers),
        }
    })
    .await?
}
