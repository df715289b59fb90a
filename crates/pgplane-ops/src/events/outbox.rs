//! The outbox: status events and dead letters, written in the transaction that decided
//! them (a job's end — the `pgplane.event_job_ended` trigger — or a rejected event). With
//! the embedded queue, status events are read here (`GET /api/v1/events/status?after=ID`);
//! with Kafka, the relay publishes both streams to their topics, at least once, each
//! status event with its stable id (`pgplane-status-<outbox id>`).

use std::time::Duration;

use anyhow::{Context, Result};
use pgplane_core::event::{status_event, StatusEvent};
use serde::Serialize;
use tokio_postgres::GenericClient;

/// An outbox row.
#[derive(Debug, Clone)]
pub struct Entry {
    pub id: i64,
    pub stream: String,
    pub event_seq: i64,
    pub kind: Option<String>,
    pub subject: Option<String>,
    pub key: Option<String>,
    pub body: Option<serde_json::Value>,
    pub payload: Option<String>,
    pub reason: Option<String>,
    pub created_at: String,
}

impl Entry {
    /// The status event of a `status` row.
    pub fn status(&self) -> StatusEvent {
        status_event(
            self.id,
            self.kind.as_deref().unwrap_or("event.failed"),
            self.subject.as_deref(),
            &self.created_at,
            self.body.clone().unwrap_or(serde_json::Value::Null),
        )
    }
}

fn entry(r: &tokio_postgres::Row) -> Entry {
    let body: Option<String> = r.get(6);
    Entry {
        id: r.get(0),
        stream: r.get(1),
        event_seq: r.get(2),
        kind: r.get(3),
        subject: r.get(4),
        key: r.get(5),
        body: body.and_then(|b| serde_json::from_str(&b).ok()),
        payload: r.get(7),
        reason: r.get(8),
        created_at: r.get(9),
    }
}

const COLUMNS: &str = "id, stream, event_seq, type, subject, key, body::text, payload, reason,
    pg_catalog.to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')";

/// Status events of a stream after outbox id `after`, oldest first.
pub async fn status_after(
    c: &impl GenericClient,
    s: Option<&super::admin::Stream>,
    after: i64,
    limit: i64,
) -> Result<Vec<StatusEvent>> {
    let (group, topic) = (s.map(|s| s.group.clone()), s.map(|s| s.topic.clone()));
    let rows = c
        .query(
            &format!(
                "SELECT {COLUMNS} FROM pgplane.event_outbox
                  WHERE stream = 'status' AND id > $1
                    AND ($3::text IS NULL OR (consumer = $3 AND topic = $4))
                  ORDER BY id LIMIT $2"
            ),
            &[&after, &limit.clamp(1, 1000), &group, &topic],
        )
        .await
        .context("reading status events")?;
    Ok(rows.iter().map(entry).map(|e| e.status()).collect())
}

/// A dead letter as `events status` shows it.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeadLetter {
    pub id: i64,
    /// The event's number (`pgplane.events.seq`).
    pub event: i64,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub key: Option<String>,
    pub reason: Option<String>,
    pub at: String,
}

/// The most recent dead letters.
pub async fn dead_letters(
    c: &impl GenericClient,
    s: Option<&super::admin::Stream>,
    limit: i64,
) -> Result<Vec<DeadLetter>> {
    let (group, topic) = (s.map(|s| s.group.clone()), s.map(|s| s.topic.clone()));
    let rows = c
        .query(
            &format!(
                "SELECT {COLUMNS} FROM pgplane.event_outbox
                  WHERE stream = 'dead_letter'
                    AND ($2::text IS NULL OR (consumer = $2 AND topic = $3))
                  ORDER BY id DESC LIMIT $1"
            ),
            &[&limit.clamp(1, 1000), &group, &topic],
        )
        .await?;
    Ok(rows
        .iter()
        .map(entry)
        .map(|e| DeadLetter {
            id: e.id,
            event: e.event_seq,
            kind: e.kind,
            key: e.key,
            reason: e.reason,
            at: e.created_at,
        })
        .collect())
}

/// Rows of a stream not yet published, oldest first.
pub async fn unpublished(c: &impl GenericClient, group: &str, topic: &str, limit: i64) -> Result<Vec<Entry>> {
    let rows = c
        .query(
            &format!(
                "SELECT {COLUMNS} FROM pgplane.event_outbox
                  WHERE consumer = $2 AND topic = $3 AND published_at IS NULL ORDER BY id LIMIT $1"
            ),
            &[&limit, &group, &topic],
        )
        .await?;
    Ok(rows.iter().map(entry).collect())
}

/// Marks rows published.
pub async fn mark_published(c: &impl GenericClient, ids: &[i64]) -> Result<()> {
    c.execute("UPDATE pgplane.event_outbox SET published_at = pg_catalog.now() WHERE id = ANY($1::int8[])", &[&ids])
        .await?;
    Ok(())
}

/// Where the relay sends each stream.
#[allow(async_fn_in_trait)]
pub trait Sink {
    /// Sends the rows (in order); returns the ids delivered.
    async fn send(&mut self, rows: &[Entry]) -> Result<Vec<i64>>;
}

/// Publishes a stream's outbox through `sink` until `stop`, one relay per stream at a time
/// (the relay lock): read unpublished rows in id order, send, mark. A crash between sending
/// and marking sends those rows again (at least once; status events keep their ids).
pub async fn relay(
    control: crate::conn::Target,
    group: &str,
    topic: &str,
    mut sink: impl Sink,
    every: Duration,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    let lock = crate::locks::Lock::named(crate::locks::EVENT_RELAY, format!("{group}/{topic}"));
    loop {
        let round = async {
            let client = control
                .connect_named(Some(crate::control::CONTROL_DB), "pgplane-relay")
                .await
                .context("connecting the relay")?;
            loop {
                if !lock.held_here(&client).await? && !lock.try_lock(&client).await? {
                    tokio::time::sleep(every).await;
                    continue;
                }
                let rows = unpublished(&client, group, topic, 200).await?;
                if rows.is_empty() {
                    tokio::time::sleep(every).await;
                    continue;
                }
                let sent = sink.send(&rows).await?;
                mark_published(&client, &sent).await?;
                if sent.len() < rows.len() {
                    tokio::time::sleep(every).await;
                }
            }
            #[allow(unreachable_code)]
            Ok::<(), anyhow::Error>(())
        };
        tokio::select! {
            r = round => {
                if let Err(e) = r {
                    tracing::warn!(error = %format!("{e:#}"), "the outbox relay stopped; restarting");
                }
            }
            _ = &mut stop => return,
        }
        tokio::select! { _ = tokio::time::sleep(every) => {}, _ = &mut stop => return }
    }
}
