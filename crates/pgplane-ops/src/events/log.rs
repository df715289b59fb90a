//! The embedded queue: an append-only log per partition in the control database
//! (`pgplane.event_log`), the default source of events when the manifest names no broker.
//! Each environment has its own queue (its topic is the environment's name).
//! A key always goes to the same partition ([`pgplane_core::event::partition_of`], as
//! Kafka's default partitioner puts it), so events of one key are read in the order they
//! were published.
//!
//! **Invariant:** offsets are dense and commit in offset order within a partition: a
//! publisher holds the partition's head row from taking its offset until its commit, so a
//! reader that has seen offset N never later finds a committed N-1 it skipped.

use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;
use tokio_postgres::{Client, GenericClient};

use super::consume::{Message, Source};

/// Partitions of each embedded queue.
pub const PARTITIONS: i32 = 16;

/// Where a published event went.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Published {
    pub id: String,
    pub partition: i32,
    pub offset: i64,
}

/// An event to publish: the envelope's fields and the ordering key.
#[derive(Debug, Clone)]
pub struct Publish {
    pub id: Option<String>,
    pub kind: String,
    pub key: String,
    pub subject: Option<String>,
    pub source: Option<String>,
    pub data: serde_json::Value,
}

impl Publish {
    /// The CloudEvents-shaped envelope (a new UUID when no id is given).
    pub fn envelope(&self) -> (String, serde_json::Value) {
        let id = self.id.clone().unwrap_or_else(uuid_v4);
        let env = serde_json::json!({
            "specversion": "1.0",
            "id": id,
            "type": self.kind,
            "source": self.source.clone().unwrap_or_else(|| "pgplane".to_string()),
            "subject": self.subject.clone().unwrap_or_else(|| self.key.clone()),
            "time": crate::jobs::now_rfc3339(),
            "data": self.data,
        });
        (id, env)
    }
}

/// A random (version 4) UUID from the kernel's random source.
pub fn uuid_v4() -> String {
    let mut b = [0u8; 16];
    if std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b)).is_err() {
        // No urandom (never on Linux): time and pid still make ids unique enough per process.
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        b[..16].copy_from_slice(&(t ^ (u128::from(std::process::id()) << 64)).to_le_bytes());
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = pgplane_core::ident::hex(&b);
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

/// Appends an event to the embedded queue and returns where it went. The event is checked
/// as the consumer will read it (a malformed envelope is refused here rather than
/// dead-lettered later).
pub async fn publish(c: &mut Client, topic: &str, p: &Publish) -> Result<Published> {
    if p.key.trim().is_empty() || p.key.contains('\0') {
        anyhow::bail!(
            "the event's key is empty (pass --key: a tenant, a candidate — events of one key keep their order)"
        );
    }
    if p.key.len() > pgplane_core::event::MAX_KEY_BYTES {
        anyhow::bail!(
            "the event's key is {} bytes; at most {} are allowed",
            p.key.len(),
            pgplane_core::event::MAX_KEY_BYTES
        );
    }
    let (id, envelope) = p.envelope();
    let payload = serde_json::to_string(&envelope)?;
    pgplane_core::event::parse(payload.as_bytes(), None).map_err(|r| anyhow::anyhow!("{r}"))?;
    append(c, topic, &p.key, &payload, None).await.map(|(partition, offset)| Published { id, partition, offset })
}

/// Appends a raw message (as a producer sent it) to its key's partition of `topic`.
pub async fn append(
    c: &mut Client,
    topic: &str,
    key: &str,
    payload: &str,
    type_header: Option<&str>,
) -> Result<(i32, i64)> {
    let partition = pgplane_core::event::partition_of(key, PARTITIONS);
    let tx = c.transaction().await?;
    let offset: i64 = tx
        .query_one(
            "INSERT INTO pgplane.event_heads AS h (topic, partition, next_offset) VALUES ($1, $2, 1)
             ON CONFLICT (topic, partition) DO UPDATE SET next_offset = h.next_offset + 1
             RETURNING next_offset - 1",
            &[&topic, &partition],
        )
        .await
        .context("taking the partition's next offset")?
        .get(0);
    tx.execute(
        "INSERT INTO pgplane.event_log (topic, partition, \"offset\", key, type_header, payload)
         VALUES ($1, $2, $3, $4, $5, $6)",
        &[&topic, &partition, &offset, &key, &type_header, &payload],
    )
    .await
    .context("appending the event to the queue")?;
    tx.commit().await.context("committing the event")?;
    Ok((partition, offset))
}

/// The next offset of every partition of `topic` that has events (the queue's high watermarks).
pub async fn heads(c: &impl GenericClient, topic: &str) -> Result<Vec<(i32, i64)>> {
    let rows = c
        .query("SELECT partition, next_offset FROM pgplane.event_heads WHERE topic = $1 ORDER BY partition", &[&topic])
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Reads the embedded queue for a consumer: its own connection, the partitions it was
/// given and where it is in each.
pub struct QueueSource {
    client: Client,
    topic: String,
    positions: std::collections::BTreeMap<i32, i64>,
    /// How often an idle poll looks again.
    pub poll_every: Duration,
}

impl QueueSource {
    pub fn new(client: Client, topic: &str) -> QueueSource {
        QueueSource {
            client,
            topic: topic.to_string(),
            positions: Default::default(),
            poll_every: Duration::from_millis(50),
        }
    }

    async fn read(&self, per_partition: i64) -> Result<Vec<Message>> {
        let (parts, pos): (Vec<i32>, Vec<i64>) = self.positions.iter().map(|(p, o)| (*p, *o)).unzip();
        let rows = self
            .client
            .query(
                "SELECT l.partition, l.\"offset\", l.key, l.type_header, l.payload
                   FROM ROWS FROM (pg_catalog.unnest($1::int4[]), pg_catalog.unnest($2::int8[])) AS p(part, pos)
                   CROSS JOIN LATERAL (SELECT * FROM pgplane.event_log l
                                        WHERE l.topic = $4 AND l.partition = p.part AND l.\"offset\" >= p.pos
                                        ORDER BY l.\"offset\" LIMIT $3) l
                  ORDER BY l.partition, l.\"offset\"",
                &[&parts, &pos, &per_partition, &self.topic],
            )
            .await
            .context("reading the embedded queue")?;
        Ok(rows
            .iter()
            .map(|r| {
                let payload: String = r.get(4);
                Message {
                    partition: r.get(0),
                    offset: r.get(1),
                    key: Some(r.get(2)),
                    type_header: r.get(3),
                    payload: payload.into_bytes(),
                }
            })
            .collect())
    }
}

impl Source for QueueSource {
    fn kind(&self) -> &'static str {
        "queue"
    }

    fn topic(&self) -> &str {
        &self.topic
    }

    async fn partitions(&mut self) -> Result<Vec<i32>> {
        Ok((0..PARTITIONS).collect())
    }

    async fn assign(&mut self, from: &[(i32, i64)]) -> Result<()> {
        self.positions = from.iter().copied().collect();
        Ok(())
    }

    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<Message>> {
        if self.positions.is_empty() {
            tokio::time::sleep(wait).await;
            return Ok(Vec::new());
        }
        let per_partition = i64::try_from(max / self.positions.len()).unwrap_or(1).max(1);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let msgs = self.read(per_partition).await?;
            if !msgs.is_empty() {
                for m in &msgs {
                    self.positions.insert(m.partition, m.offset + 1);
                }
                return Ok(msgs);
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(Vec::new());
            }
            tokio::time::sleep(self.poll_every.min(deadline - tokio::time::Instant::now())).await;
        }
    }

    async fn commit(&mut self, _offsets: &[(i32, i64)]) -> Result<()> {
        // The control database's offsets are the only ones.
        Ok(())
    }

    async fn high_watermarks(&mut self, parts: &[i32]) -> Result<Vec<(i32, i64)>> {
        let known = heads(&self.client, &self.topic).await?;
        // A partition nobody published to yet ends at 0.
        Ok(parts.iter().map(|p| (*p, known.iter().find(|(k, _)| k == p).map(|(_, o)| *o).unwrap_or(0))).collect())
    }
}
