//! Reading and steering consumed events: recent events with their jobs, lag per
//! partition, held keys, counts by type and outcome (`pgplane events status`, the API,
//! the console, `/metrics`), and an operator's `retry` and `skip` of a blocked event.

use anyhow::{Context, Result};
use pgplane_core::event::Outcome;
use serde::Serialize;
use tokio_postgres::{Client, GenericClient};

use super::record::EventRow;
use crate::error::Error;

fn ts(col: &str) -> String {
    format!("pg_catalog.to_char({col} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')")
}

fn row_of(r: &tokio_postgres::Row) -> EventRow {
    EventRow {
        seq: r.get(0),
        source: r.get(1),
        topic: r.get(2),
        partition: r.get(3),
        offset: r.get(4),
        id: r.get(5),
        kind: r.get(6),
        subject: r.get(7),
        key: r.get(8),
        env: r.get(9),
        outcome: r.get(10),
        job: r.get(11),
        job_status: r.get(12),
        reason: r.get(13),
        received_at: r.get(14),
        finished_at: r.get(15),
    }
}

fn select() -> String {
    format!(
        "SELECT e.seq, e.source, e.topic, e.partition, e.\"offset\", e.event_id, e.type, e.subject, e.key, e.env,
                e.outcome, e.job_id, j.status, e.reason, {received}, {finished}
           FROM pgplane.events e LEFT JOIN pgplane.jobs j ON j.id = e.job_id",
        received = ts("e.received_at"),
        finished = ts("e.finished_at")
    )
}

/// One stream of events: a consumer group reading a Kafka topic, or the embedded queue
/// of an environment (group `pgplane`, topic = the environment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stream {
    pub group: String,
    pub topic: String,
    /// The consumer's environment (its held keys are `event/<env>/…`).
    pub env: String,
}

impl Stream {
    /// The stream a manifest's consumer reads.
    pub fn of(manifest: &pgplane_core::manifest::Manifest, env: &str) -> Stream {
        match &manifest.events.kafka {
            Some(k) => Stream { group: k.group.clone(), topic: k.topic.clone(), env: env.to_string() },
            None => Stream { group: "pgplane".into(), topic: env.to_string(), env: env.to_string() },
        }
    }
}

/// Which events to list.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub stream: Option<Stream>,
    pub key: Option<String>,
    pub outcome: Option<String>,
    pub limit: i64,
}

fn stream_args(s: Option<&Stream>) -> (Option<String>, Option<String>) {
    (s.map(|s| s.group.clone()), s.map(|s| s.topic.clone()))
}

/// Recent events, newest first.
pub async fn list(c: &impl GenericClient, f: &Filter) -> Result<Vec<EventRow>> {
    let (group, topic) = stream_args(f.stream.as_ref());
    let rows = c
        .query(
            &format!(
                "{} WHERE ($1::text IS NULL OR e.key = $1) AND ($2::text IS NULL OR e.outcome = $2)
                    AND ($4::text IS NULL OR (e.consumer = $4 AND e.topic = $5))
                  ORDER BY e.seq DESC LIMIT $3",
                select()
            ),
            &[&f.key, &f.outcome, &f.limit.clamp(1, 10_000), &group, &topic],
        )
        .await
        .context("reading events")?;
    Ok(rows.iter().map(row_of).collect())
}

/// One event.
pub async fn get(c: &impl GenericClient, seq: i64) -> Result<Option<EventRow>> {
    let row = c.query_opt(&format!("{} WHERE e.seq = $1", select()), &[&seq]).await?;
    Ok(row.as_ref().map(row_of))
}

/// How far a group is behind in one partition.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Lag {
    pub consumer: String,
    pub topic: String,
    pub partition: i32,
    /// The next offset to record.
    pub next_offset: i64,
    /// The partition's end as last seen.
    pub end: Option<i64>,
    pub lag: Option<i64>,
}

/// Lag per partition: for the embedded queue from its heads, for Kafka from the high
/// watermarks the consumers store each round.
pub async fn lag(c: &impl GenericClient, s: Option<&Stream>) -> Result<Vec<Lag>> {
    let (group, topic) = stream_args(s);
    let rows = c
        .query(
            "SELECT o.consumer, o.topic, o.partition, o.next_offset, COALESCE(h.next_offset, o.high_watermark)
               FROM pgplane.event_offsets o
               LEFT JOIN pgplane.event_heads h ON h.topic = o.topic AND h.partition = o.partition
              WHERE $1::text IS NULL OR (o.consumer = $1 AND o.topic = $2)
              ORDER BY 1, 2, 3",
            &[&group, &topic],
        )
        .await
        .context("reading consumer offsets")?;
    Ok(rows
        .iter()
        .map(|r| {
            let next: i64 = r.get(3);
            let end: Option<i64> = r.get(4);
            Lag {
                consumer: r.get(0),
                topic: r.get(1),
                partition: r.get(2),
                next_offset: next,
                end,
                lag: end.map(|e| (e - next).max(0)),
            }
        })
        .collect())
}

/// A key on hold.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Hold {
    /// The job key (`event/<event key>`).
    pub key: String,
    /// The blocking event (`pgplane events retry|skip SEQ`).
    pub event: i64,
    pub job: Option<i64>,
    pub reason: Option<String>,
    /// Jobs of the key waiting behind it.
    pub waiting: i64,
    pub since: String,
}

pub async fn holds(c: &impl GenericClient, s: Option<&Stream>) -> Result<Vec<Hold>> {
    let prefix = s.map(|s| format!("event/{}/", s.env));
    let rows = c
        .query(
            &format!(
                "SELECT h.key, h.event_seq, h.job_id, h.reason,
                        (SELECT count(*) FROM pgplane.jobs j WHERE j.key = h.key AND j.status = 'queued'), {since}
                   FROM pgplane.job_holds h
                  WHERE $1::text IS NULL OR pg_catalog.starts_with(h.key, $1)
                  ORDER BY h.created_at",
                since = ts("h.created_at")
            ),
            &[&prefix],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Hold {
            key: r.get(0),
            event: r.get(1),
            job: r.get(2),
            reason: r.get(3),
            waiting: r.get(4),
            since: r.get(5),
        })
        .collect())
}

/// Events by type and outcome.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Count {
    #[serde(rename = "type")]
    pub kind: String,
    pub outcome: String,
    pub count: i64,
}

pub async fn counts(c: &impl GenericClient, s: Option<&Stream>) -> Result<Vec<Count>> {
    let (group, topic) = stream_args(s);
    let rows = c
        .query(
            "SELECT COALESCE(type, ''), outcome, count(*) FROM pgplane.events
              WHERE $1::text IS NULL OR (consumer = $1 AND topic = $2)
              GROUP BY 1, 2 ORDER BY 1, 2",
            &[&group, &topic],
        )
        .await?;
    Ok(rows.iter().map(|r| Count { kind: r.get(0), outcome: r.get(1), count: r.get(2) }).collect())
}

/// Dead letters recorded so far.
pub async fn dead_letter_count(c: &impl GenericClient) -> Result<i64> {
    Ok(c.query_one("SELECT count(*) FROM pgplane.event_outbox WHERE stream = 'dead_letter'", &[]).await?.get(0))
}

/// Everything `events status` shows.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Status {
    pub recent: Vec<EventRow>,
    pub lag: Vec<Lag>,
    pub holds: Vec<Hold>,
    pub counts: Vec<Count>,
    pub dead_letters: Vec<super::outbox::DeadLetter>,
}

/// The status of one stream (`None`: of every stream in the control database).
pub async fn status(c: &impl GenericClient, s: Option<&Stream>, limit: i64) -> Result<Status> {
    Ok(Status {
        recent: list(c, &Filter { stream: s.cloned(), limit, ..Default::default() }).await?,
        lag: lag(c, s).await?,
        holds: holds(c, s).await?,
        counts: counts(c, s).await?,
        dead_letters: super::outbox::dead_letters(c, s, 20).await?,
    })
}

/// What an operator's action did.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Steered {
    pub event: EventRow,
    /// The key released (its waiting jobs run now), if the event held one.
    pub released: Option<String>,
}

async fn blocked(tx: &tokio_postgres::Transaction<'_>, seq: i64, verb: &str) -> std::result::Result<EventRow, Error> {
    let row = tx
        .query_opt(&format!("{} WHERE e.seq = $1 FOR UPDATE OF e", select()), &[&seq])
        .await
        .map_err(|e| Error::Internal(e.into()))?;
    let Some(row) = row.as_ref().map(row_of) else {
        return Err(Error::not_found(format!("there is no event {seq} (see `pgplane events status`)")));
    };
    if row.outcome != Outcome::Blocked.as_str() {
        return Err(Error::Conflict(format!(
            "event {seq} is {}, not blocked: only an event holding its key can be {verb}",
            row.outcome
        )));
    }
    Ok(row)
}

async fn release(tx: &tokio_postgres::Transaction<'_>, seq: i64) -> Result<Option<String>> {
    let row = tx.query_opt("DELETE FROM pgplane.job_holds WHERE event_seq = $1 RETURNING key", &[&seq]).await?;
    if row.is_some() {
        // Workers waiting for the key's jobs look again.
        tx.execute(&format!("SELECT pg_catalog.pg_notify('{}', '')", crate::jobs::queue::CHANNEL), &[]).await?;
    }
    Ok(row.map(|r| r.get(0)))
}

/// Runs a blocked event's job again (the same job: it keeps its place before the key's
/// later jobs) and releases its key. An event that never became a job (unparseable,
/// invalid) cannot be retried: it would be refused again; skip it and publish a corrected one.
pub async fn retry(c: &mut Client, seq: i64) -> std::result::Result<Steered, Error> {
    let internal = |e: anyhow::Error| Error::Internal(e);
    let tx = c.transaction().await.map_err(|e| internal(e.into()))?;
    let ev = blocked(&tx, seq, "retried").await?;
    let Some(job) = ev.job else {
        return Err(Error::Conflict(format!(
            "event {seq} never became a job ({}); retrying would refuse it again: `pgplane events skip {seq}` and \
             publish a corrected event",
            ev.reason.as_deref().unwrap_or("rejected")
        )));
    };
    if crate::jobs::queue::requeue(&tx, job).await.map_err(internal)?.is_none() {
        return Err(Error::Conflict(format!("job {job} of event {seq} is not failed any more")));
    }
    tx.execute(
        "UPDATE pgplane.events SET outcome = 'queued', reason = NULL, finished_at = NULL WHERE seq = $1",
        &[&seq],
    )
    .await
    .map_err(|e| internal(e.into()))?;
    let released = release(&tx, seq).await.map_err(internal)?;
    tx.commit().await.map_err(|e| internal(e.into()))?;
    let event =
        get(&*c, seq).await.map_err(internal)?.ok_or_else(|| Error::not_found(format!("event {seq} vanished")))?;
    Ok(Steered { event, released })
}

/// Gives up a blocked event (its job stays failed) and releases its key.
pub async fn skip(c: &mut Client, seq: i64) -> std::result::Result<Steered, Error> {
    let internal = |e: anyhow::Error| Error::Internal(e);
    let tx = c.transaction().await.map_err(|e| internal(e.into()))?;
    let ev = blocked(&tx, seq, "skipped").await?;
    tx.execute(
        "UPDATE pgplane.events SET outcome = 'skipped', finished_at = pg_catalog.now(),
                reason = 'skipped by an operator; it was blocked: ' || COALESCE(reason, '') WHERE seq = $1",
        &[&ev.seq],
    )
    .await
    .map_err(|e| internal(e.into()))?;
    let released = release(&tx, seq).await.map_err(internal)?;
    tx.commit().await.map_err(|e| internal(e.into()))?;
    let event =
        get(&*c, seq).await.map_err(internal)?.ok_or_else(|| Error::not_found(format!("event {seq} vanished")))?;
    Ok(Steered { event, released })
}
