//! The jobs table (`pgplane.jobs` in the control database): submit, claim under a lease,
//! heartbeat, record stages, finish, cancel, recover lapsed leases, read.
//!
//! Every change of a job's status is [`pgplane_core::job::next`] applied to the row as read,
//! written with a guard on what was read (status, attempt, worker, cancel request), so a
//! worker whose lease lapsed (its attempt was taken over) cannot change the job any more,
//! and a decision made on stale data is made again. Claims pick with `FOR UPDATE SKIP
//! LOCKED`, so concurrent workers never wait for each other.
//!
//! **Invariant:** a job runs in at most one worker at a time. A worker holds the job's
//! advisory lock ([`crate::locks::Lock::job`]) on the connection that claimed it for the
//! whole attempt; a job is only claimed (or recovered) when nobody holds its lock, and a
//! worker whose heartbeat finds the attempt gone stops.

use std::time::Duration;

use anyhow::{Context, Result};
use pgplane_core::job::{self, Event, JobStatus, Life, Stage};
use serde::Serialize;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, GenericClient, Row};

use crate::locks::{self, Lock};

/// The channel a submit notifies, so idle workers claim at once instead of at their next poll.
pub const CHANNEL: &str = "pgplane_jobs";

/// What `running` means to a reader when nobody holds the job's lock: its worker died. This
/// is what the leader will write ([`next`](pgplane_core::job::next) on a lapsed lease): a
/// job with attempts left goes back to the queue, the others failed; a cancelled one is
/// cancelled. Readers show it before the leader gets to it.
fn honest_status_sql() -> String {
    format!(
        "CASE WHEN j.status = 'running' AND NOT {held} THEN
              CASE WHEN j.cancel_requested THEN 'cancelled'
                   WHEN j.attempts < j.max_attempts THEN 'queued'
                   ELSE 'failed' END
              ELSE j.status END",
        held = locks::job_lock_held_sql("j")
    )
}

pub const INTERRUPTED: &str = "interrupted: the pgplane process running this operation stopped before it finished";

fn ts(col: &str) -> String {
    format!("pg_catalog.to_char({col} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')")
}

fn columns() -> String {
    columns_with(&honest_status_sql())
}

/// The columns of a [`Job`], its status read as `status` (the claim, which knows the row it
/// just wrote, reads the stored one: the honest one costs a look at the lock table).
fn columns_with(status: &str) -> String {
    format!(
        "j.id, j.kind, j.env, j.resource, j.key, {status} AS status, j.attempts, j.max_attempts, j.worker,
         {lease} AS lease_until, j.cancel_requested, j.stages::text AS stages, j.result::text AS result,
         j.changes, j.error, j.error_code, {created} AS created_at, {claimed} AS claimed_at,
         {finished} AS finished_at, j.request::text AS request, j.status AS stored_status,
         (pg_catalog.date_part('epoch', j.claimed_at - j.run_after) * 1000)::float8 AS claim_latency_ms",
        lease = ts("j.lease_until"),
        created = ts("j.created_at"),
        claimed = ts("j.claimed_at"),
        finished = ts("j.finished_at"),
    )
}

/// A job as readers see it (`running` told honestly, see [`honest_status_sql`]). The HTTP
/// API calls it an operation.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = Operation))]
pub struct Job {
    pub id: i64,
    /// `apply`, `migrate`, `template_build`, `branch_create`, `branch_reset`,
    /// `branch_delete`, `branch_gc`, …
    pub kind: String,
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub status: JobStatus,
    pub env: Option<String>,
    /// What it works on (a branch id, a template, a tenant).
    pub resource: Option<String>,
    /// Jobs with the same key run one at a time, in order.
    pub key: Option<String>,
    pub attempts: i32,
    pub max_attempts: i32,
    /// The worker running the current attempt.
    pub worker: Option<String>,
    pub lease_until: Option<String>,
    pub cancel_requested: bool,
    /// Stages with their last message, in order.
    pub stages: Vec<Stage>,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub result: Option<serde_json::Value>,
    /// How many changes it made.
    pub changes: i32,
    pub error: Option<String>,
    /// The error's kind: `not_found`, `conflict`, `invalid`, `busy`, `unavailable`,
    /// `cancelled`, `internal`.
    pub error_code: Option<String>,
    /// When it was accepted (RFC 3339, UTC).
    pub started_at: String,
    /// When its current (or last) attempt was claimed.
    pub claimed_at: Option<String>,
    pub finished_at: Option<String>,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub request: serde_json::Value,
    /// The status as stored (differs from `status` while a dead worker's job awaits recovery).
    #[serde(skip)]
    pub stored_status: JobStatus,
    /// Milliseconds from when it could run to when it was claimed (metrics).
    #[serde(skip)]
    pub claim_latency_ms: Option<f64>,
}

fn parse_json<T: serde::de::DeserializeOwned>(text: Option<String>) -> Option<T> {
    text.and_then(|t| serde_json::from_str(&t).ok())
}

fn job_of(r: &Row) -> Result<Job> {
    let status: String = r.get(5);
    let stored: String = r.get(20);
    let parse =
        |s: &str| JobStatus::parse(s).with_context(|| format!("unknown job status {s:?} in the control database"));
    let status = parse(&status)?;
    let stored_status = parse(&stored)?;
    let mut error: Option<String> = r.get(14);
    // A dead worker's job, as readers see it before the leader recovers it.
    if stored_status == JobStatus::Running && status != JobStatus::Running && error.is_none() {
        error = Some(INTERRUPTED.to_string());
    }
    Ok(Job {
        id: r.get(0),
        kind: r.get(1),
        env: r.get(2),
        resource: r.get(3),
        key: r.get(4),
        status,
        attempts: r.get(6),
        max_attempts: r.get(7),
        worker: r.get(8),
        lease_until: r.get(9),
        cancel_requested: r.get(10),
        stages: parse_json(r.get(11)).unwrap_or_default(),
        result: parse_json(r.get(12)),
        changes: r.get(13),
        error,
        error_code: r.get(15),
        started_at: r.get(16),
        claimed_at: r.get(17),
        finished_at: r.get(18),
        request: parse_json(r.get(19)).unwrap_or(serde_json::Value::Null),
        stored_status,
        claim_latency_ms: r.get(21),
    })
}

/// A job to submit.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub kind: String,
    pub env: Option<String>,
    pub resource: Option<String>,
    pub key: Option<String>,
    pub request: serde_json::Value,
    /// Only workers serving this manifest digest may run it (`None`: any worker).
    pub fingerprint: Option<String>,
    pub max_attempts: i32,
    /// Claimed before every job of a lower priority: requests are 0, the leader's duties
    /// [`PRIORITY_DUTY`] (a gc must not wait behind a backlog of branch creations).
    pub priority: i16,
    /// Queued for an event (`pgplane.events`): its end decides the event's outcome.
    pub event: bool,
}

/// The priority of the jobs the leader queues for its duties.
pub const PRIORITY_DUTY: i16 = 1;

impl NewJob {
    pub fn new(kind: &str, env: Option<&str>) -> NewJob {
        NewJob {
            kind: kind.to_string(),
            env: env.map(str::to_string),
            resource: None,
            key: None,
            request: serde_json::Value::Object(Default::default()),
            fingerprint: None,
            max_attempts: 3,
            priority: 0,
            event: false,
        }
    }
}

/// Queues a job and wakes idle workers (the notification is sent at commit). Returns its id.
pub async fn submit(c: &impl GenericClient, j: &NewJob) -> Result<i64> {
    let request = serde_json::to_string(&j.request)?;
    let row = c
        .query_one(
            &format!(
                "WITH ins AS (
                    INSERT INTO pgplane.jobs (kind, env, resource, key, request, fingerprint, max_attempts, priority, event)
                    VALUES ($1, $2, $3, $4, $5::text::jsonb, $6, $7, $8, $9) RETURNING id)
                 SELECT id, pg_catalog.pg_notify('{CHANNEL}', id::text) IS NOT NULL FROM ins"
            ),
            &[&j.kind, &j.env, &j.resource, &j.key, &request, &j.fingerprint, &j.max_attempts, &j.priority, &j.event],
        )
        .await
        .context("queueing a job in the control database")?;
    Ok(row.get(0))
}

/// Queues a job unless `backlog` jobs of its environment already wait for a worker: one
/// statement counts and inserts. Returns the new id, or `Err(waiting)` when full. Callers
/// that must never overshoot hold a lock per environment around it (serve does).
pub async fn submit_bounded(c: &impl GenericClient, j: &NewJob, backlog: i64) -> Result<Result<i64, i64>> {
    let request = serde_json::to_string(&j.request)?;
    let row = c
        .query_one(
            &format!(
                "WITH w AS (SELECT count(*) AS n FROM pgplane.jobs WHERE status = 'queued' AND env IS NOT DISTINCT FROM $2),
                      ins AS (INSERT INTO pgplane.jobs (kind, env, resource, key, request, fingerprint, max_attempts)
                              SELECT $1, $2, $3, $4, $5::text::jsonb, $6, $7 FROM w WHERE w.n < $8
                              RETURNING id)
                 SELECT w.n, ins.id,
                        CASE WHEN ins.id IS NOT NULL THEN pg_catalog.pg_notify('{CHANNEL}', ins.id::text) END IS NULL
                   FROM w LEFT JOIN ins ON true"
            ),
            &[&j.kind, &j.env, &j.resource, &j.key, &request, &j.fingerprint, &j.max_attempts, &backlog],
        )
        .await
        .context("queueing a job in the control database")?;
    let waiting: i64 = row.get(0);
    Ok(match row.get::<_, Option<i64>>(1) {
        Some(id) => Ok(id),
        None => Err(waiting),
    })
}

/// How many jobs wait for a worker (optionally of one environment).
pub async fn queued(c: &impl GenericClient, env: Option<&str>) -> Result<i64> {
    let row = c
        .query_one(
            "SELECT count(*) FROM pgplane.jobs WHERE status = 'queued' AND ($1::text IS NULL OR env = $1)",
            &[&env],
        )
        .await?;
    Ok(row.get(0))
}

/// One attempt of a job that this process runs: the job and the attempt number its
/// writes are guarded by.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub job: Job,
    pub attempt: i32,
    pub worker: String,
}

/// Claims the runnable job of the highest priority, the oldest first, for `worker`: queued,
/// due, of one of `fingerprints` (or of none), not behind an unfinished job with the same
/// key nor of a key on hold (`pgplane.job_holds`: a poison event under `on_failure: block`),
/// and not locked by anyone. Takes the job's lock on `c`, which must stay open for the
/// whole attempt.
///
/// One statement, one round trip (claims are the queue's hot path): pick the job (`FOR
/// UPDATE SKIP LOCKED`), take its lock (a session lock: it outlives the statement), write
/// the claim, return the job; a second statement only when the pick's lock was held (see
/// `claim_sql`). The claim written is [`pgplane_core::job::next`] of a queued
/// job on [`Event::Claim`] (running, one attempt more; a job whose cancel was requested is
/// not claimed), checked against it on the row returned. Should the statement fail after
/// the lock was taken, the caller drops `c` (a worker slot does), which releases it.
pub async fn claim(c: &mut Client, worker: &str, fingerprints: &[String], lease: Duration) -> Result<Option<Attempt>> {
    claim_on(c, None, worker, fingerprints, lease).await
}

/// [`claim`] with the statements prepared on `c` (a worker slot's connection).
pub async fn claim_prepared(
    c: &mut Client,
    p: &Prepared,
    worker: &str,
    fingerprints: &[String],
    lease: Duration,
) -> Result<Option<Attempt>> {
    claim_on(c, Some(p), worker, fingerprints, lease).await
}

/// The queue's hot statements, prepared once per worker connection: planning the claim (a
/// statement of several subqueries) costs more than running it, so a worker that plans it
/// for every job claims at half the rate. A `Prepared` belongs to the connection it was
/// prepared on.
pub struct Prepared {
    claim: tokio_postgres::Statement,
    finish: tokio_postgres::Statement,
}

impl Prepared {
    pub async fn new(c: &Client) -> Result<Prepared> {
        Ok(Prepared {
            claim: c.prepare_typed(&claim_fast_sql(), &CLAIM_TYPES).await.context("preparing the claim")?,
            finish: c.prepare_typed(&finish_sql(), &FINISH_TYPES).await.context("preparing the finish")?,
        })
    }
}

type Value<'a> = &'a (dyn tokio_postgres::types::ToSql + Sync);

const CLAIM_TYPES: [Type; 3] = [Type::TEXT_ARRAY, Type::TEXT, Type::FLOAT8];
const FINISH_TYPES: [Type; 12] = [
    Type::INT8,
    Type::TEXT,
    Type::INT4,
    Type::TEXT,
    Type::INT4,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::FLOAT8,
    Type::INT4,
    Type::TEXT,
    Type::BOOL,
];

/// Runs a statement prepared on `c` when there is one, else its text with `types` (the
/// types it is prepared with).
async fn query_opt(
    c: &impl GenericClient,
    prepared: Option<&tokio_postgres::Statement>,
    sql: fn() -> String,
    types: &[Type],
    values: &[Value<'_>],
) -> Result<Option<Row>, tokio_postgres::Error> {
    match prepared {
        Some(st) => c.query_opt(st, values).await,
        None => c.query_typed_opt(&sql(), &typed(types, values)).await,
    }
}

async fn execute(
    c: &impl GenericClient,
    prepared: Option<&tokio_postgres::Statement>,
    sql: fn() -> String,
    types: &[Type],
    values: &[Value<'_>],
) -> Result<u64, tokio_postgres::Error> {
    match prepared {
        Some(st) => c.execute(st, values).await,
        None => c.execute_typed(&sql(), &typed(types, values)).await,
    }
}

fn typed<'a>(types: &[Type], values: &[Value<'a>]) -> Vec<(Value<'a>, Type)> {
    values.iter().zip(types).map(|(v, t)| (*v, t.clone())).collect()
}

/// The claim. `check_locks`: skip queued jobs whose lock someone holds, which costs a look
/// at the whole lock table per claim. A queued job's lock is held only for the moment
/// between a requeue's commit and its worker's unlock, so the hot path claims without the
/// look, and only when its pick turns out locked claims again with it.
fn claim_sql(check_locks: bool) -> String {
    format!(
        "WITH candidate AS MATERIALIZED (
            SELECT j.id FROM pgplane.jobs j
             WHERE j.status = 'queued' AND NOT j.cancel_requested AND j.run_after <= pg_catalog.now()
               AND (j.fingerprint IS NULL OR j.fingerprint = ANY($1::text[]))
               AND (j.key IS NULL OR (NOT EXISTS (
                     SELECT 1 FROM pgplane.jobs k
                      WHERE k.key = j.key AND k.id < j.id AND k.status IN ('queued', 'running'))
                 AND NOT EXISTS (SELECT 1 FROM pgplane.job_holds h WHERE h.key = j.key))){held}
             ORDER BY j.priority DESC, j.id
             LIMIT 1
             FOR UPDATE SKIP LOCKED),
         locked AS MATERIALIZED (
            SELECT c.id FROM candidate c
             WHERE pg_catalog.pg_try_advisory_lock({class}, (c.id & 2147483647)::int4)),
         claimed AS (
            UPDATE pgplane.jobs j SET status = 'running', attempts = j.attempts + 1, worker = $2,
                   claimed_at = pg_catalog.now(),
                   lease_until = pg_catalog.now() + $3 * interval '1 millisecond', finished_at = NULL
              FROM locked l WHERE j.id = l.id
            RETURNING j.*)
         SELECT {columns}, c.id AS candidate FROM candidate c LEFT JOIN claimed j ON j.id = c.id",
        held = if check_locks { format!(" AND NOT {}", locks::job_lock_held_sql("j")) } else { String::new() },
        class = locks::JOB.0,
        columns = columns_with("j.status"),
    )
}

fn claim_fast_sql() -> String {
    claim_sql(false)
}

fn claim_checked_sql() -> String {
    claim_sql(true)
}

async fn claim_on(
    c: &mut Client,
    p: Option<&Prepared>,
    worker: &str,
    fingerprints: &[String],
    lease: Duration,
) -> Result<Option<Attempt>> {
    let lease = lease_ms(lease);
    let values: [Value; 3] = [&fingerprints, &worker, &lease];
    let mut row =
        query_opt(c, p.map(|p| &p.claim), claim_fast_sql, &CLAIM_TYPES, &values).await.context("claiming a job")?;
    if row.as_ref().is_some_and(|r| r.get::<_, Option<i64>>(0).is_none()) {
        // The pick's lock is held (a requeue not yet unlocked): claim again past such jobs.
        row = query_opt(c, None, claim_checked_sql, &CLAIM_TYPES, &values).await.context("claiming a job")?;
    }
    // No row: nothing to claim; a row without a job: the pick was locked meanwhile.
    let Some(row) = row.filter(|r| r.get::<_, Option<i64>>(0).is_some()) else { return Ok(None) };
    let job = job_of(&row)?;
    let before = Life {
        status: JobStatus::Queued,
        attempts: job.attempts - 1,
        max_attempts: job.max_attempts,
        cancel_requested: job.cancel_requested,
    };
    match job::next(before, Event::Claim) {
        Ok(next) if next.status == JobStatus::Running && next.attempts == job.attempts => {}
        other => anyhow::bail!("claiming job {} wrote {} attempt {}, not {other:?}", job.id, job.status, job.attempts),
    }
    Ok(Some(Attempt { attempt: job.attempts, job, worker: worker.to_string() }))
}

/// Queues a job that this process runs itself right away (the CLI's operations): inserted
/// as running with this process as its worker and the lock taken on `c`. `max_attempts`
/// is 1: should this process die, the job is failed, not run again by another worker (the
/// CLI's caller decides whether to run it again).
///
/// `lease`: `None` when the caller sends no heartbeats; the job then counts as running as
/// long as its lock is held (never as hung).
pub async fn start_inline(
    c: &impl GenericClient,
    j: &NewJob,
    worker: &str,
    lease: Option<Duration>,
) -> Result<Attempt> {
    let request = serde_json::to_string(&j.request)?;
    // One statement: the row and its lock (a session lock) together.
    let row = c
        .query_one(
            &format!(
                "WITH ins AS (
                    INSERT INTO pgplane.jobs (kind, env, resource, key, request, fingerprint, max_attempts, status,
                                              attempts, worker, claimed_at, lease_until)
                    VALUES ($1, $2, $3, $4, $5::text::jsonb, $6, 1, 'running', 1, $7, pg_catalog.now(),
                            pg_catalog.now() + $8::float8 * interval '1 millisecond')
                    RETURNING id)
                 SELECT id, pg_catalog.pg_advisory_lock({class}, (id & 2147483647)::int4) IS NOT NULL FROM ins",
                class = locks::JOB.0
            ),
            &[&j.kind, &j.env, &j.resource, &j.key, &request, &j.fingerprint, &worker, &lease.map(lease_ms)],
        )
        .await
        .context("recording the operation in the control database")?;
    let id: i64 = row.get(0);
    let job = get(c, id).await?.context("a new job vanished")?;
    Ok(Attempt { attempt: 1, job, worker: worker.to_string() })
}

fn lease_ms(lease: Duration) -> f64 {
    lease.as_millis() as f64
}

/// What a heartbeat learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Beat {
    /// The lease is renewed; `cancel` when someone asked to cancel the job.
    Held { cancel: bool },
    /// The attempt is not ours any more (recovered by the leader after a lapse, or ended):
    /// stop at once.
    Lost,
}

/// Renews the attempt's lease and saves its stages (when given).
pub async fn heartbeat(c: &impl GenericClient, a: &Attempt, lease: Duration, stages: Option<&[Stage]>) -> Result<Beat> {
    let stages = stages.map(serde_json::to_string).transpose()?;
    let row = c
        .query_typed_opt(
            "UPDATE pgplane.jobs SET lease_until = pg_catalog.now() + $3 * interval '1 millisecond',
                    stages = COALESCE($4::text::jsonb, stages)
              WHERE id = $1 AND attempts = $2 AND status = 'running' AND worker = $5
              RETURNING cancel_requested",
            &[
                (&a.job.id, Type::INT8),
                (&a.attempt, Type::INT4),
                (&lease_ms(lease), Type::FLOAT8),
                (&stages, Type::TEXT),
                (&a.worker, Type::TEXT),
            ],
        )
        .await?;
    Ok(match row {
        Some(r) => Beat::Held { cancel: r.get(0) },
        None => Beat::Lost,
    })
}

/// How an attempt ended.
#[derive(Debug, Clone)]
pub enum Finish {
    Succeeded {
        changes: i32,
        result: Option<serde_json::Value>,
    },
    Failed {
        error: String,
        code: String,
        retryable: bool,
        changes: i32,
        result: Option<serde_json::Value>,
    },
    /// This process stops (shutdown) before the attempt ended: another worker continues it.
    HandBack,
}

/// Records how the attempt ended (with its last stages) and releases the job's lock.
/// Returns the job's new status, or `None` when the attempt was no longer ours.
pub async fn finish(c: &impl GenericClient, a: &Attempt, how: &Finish, stages: &[Stage]) -> Result<Option<JobStatus>> {
    finish_on(c, None, a, how, stages).await
}

/// [`finish`] with the statements prepared on `c` (a worker slot's connection).
pub async fn finish_prepared(
    c: &Client,
    p: &Prepared,
    a: &Attempt,
    how: &Finish,
    stages: &[Stage],
) -> Result<Option<JobStatus>> {
    finish_on(c, Some(p), a, how, stages).await
}

fn finish_sql() -> String {
    format!(
        "UPDATE pgplane.jobs SET status = $2, attempts = $3, stages = $4::text::jsonb,
                changes = changes + $5, result = COALESCE($6::text::jsonb, result),
                error = $7, error_code = $8,
                worker = CASE WHEN $2 = 'queued' THEN NULL ELSE worker END,
                lease_until = NULL,
                run_after = CASE WHEN $9::float8 IS NULL THEN run_after
                                 ELSE pg_catalog.now() + $9 * interval '1 millisecond' END,
                finished_at = CASE WHEN $2 IN ('succeeded', 'failed', 'cancelled') THEN pg_catalog.now() END
          WHERE id = $1 AND attempts = $10 AND status = 'running' AND worker = $11
            AND cancel_requested = $12
            AND ($2 <> 'queued' OR pg_catalog.pg_notify('{CHANNEL}', id::text) IS NOT NULL)"
    )
}

async fn finish_on(
    c: &impl GenericClient,
    p: Option<&Prepared>,
    a: &Attempt,
    how: &Finish,
    stages: &[Stage],
) -> Result<Option<JobStatus>> {
    let stages = serde_json::to_string(stages)?;
    let event = match how {
        Finish::Succeeded { .. } => Event::Succeed,
        Finish::Failed { retryable, .. } => Event::Fail { retryable: *retryable },
        Finish::HandBack => Event::HandBack,
    };
    let (changes, result, error, code) = match how {
        Finish::Succeeded { changes, result } => (*changes, result.clone(), None, None),
        Finish::Failed { error, code, changes, result, .. } => {
            (*changes, result.clone(), Some(error.clone()), Some(code.clone()))
        }
        Finish::HandBack => (0, None, None, None),
    };
    let result = result.map(|r| serde_json::to_string(&r)).transpose()?;
    // Decide with `next` on the attempt as this worker knows it (running, its attempt, the
    // cancel request as claimed), write guarded by exactly that; when the guard fails (a
    // cancel request arrived meanwhile, or the attempt is gone), read the row and decide
    // again. One round trip when nothing changed.
    let mut known = Some(Life {
        status: JobStatus::Running,
        attempts: a.attempt,
        max_attempts: a.job.max_attempts,
        cancel_requested: a.job.cancel_requested,
    });
    let mut locked = true;
    let status = loop {
        let life = match known.take() {
            Some(life) => life,
            None => {
                let Some(row) = c
                    .query_typed_opt(
                        "SELECT id, status, attempts, max_attempts, cancel_requested FROM pgplane.jobs
                          WHERE id = $1 AND attempts = $2 AND status = 'running' AND worker = $3",
                        &[(&a.job.id, Type::INT8), (&a.attempt, Type::INT4), (&a.worker, Type::TEXT)],
                    )
                    .await?
                else {
                    break None;
                };
                life_of(&row, 1)?
            }
        };
        let next = job::next(life, event).map_err(anyhow::Error::new)?;
        let (error, code) = match next.status {
            JobStatus::Cancelled => (
                Some(error.clone().unwrap_or_else(|| "cancelled on request".to_string())),
                Some("cancelled".to_string()),
            ),
            _ => (error.clone(), code.clone()),
        };
        let retry_ms = next.retry_after.map(|d| d.as_millis() as f64);
        let status = next.status.as_str();
        let values: [Value; 12] = [
            &a.job.id,
            &status,
            &next.attempts,
            &stages,
            &changes,
            &result,
            &error,
            &code,
            &retry_ms,
            &a.attempt,
            &a.worker,
            &life.cancel_requested,
        ];
        let write = execute(c, p.map(|p| &p.finish), finish_sql, &FINISH_TYPES, &values);
        let n = if locked {
            // The unlock goes out with the first write (pipelined: one round trip) and runs
            // after it committed, so nobody sees the lock free while the row still says
            // running. Should the write's guard fail, the decision is made again without the
            // lock: every write is guarded, and a reader's honest status of a running row
            // whose lock is free is what the next decision writes.
            locked = false;
            let lock = Lock::job(a.job.id);
            let (n, unlocked) = tokio::join!(write, lock.unlock(c));
            unlocked?;
            n?
        } else {
            write.await?
        };
        if n == 1 {
            break Some(next.status);
        }
    };
    if locked {
        Lock::job(a.job.id).unlock(c).await?;
    }
    Ok(status)
}

fn life_of(row: &Row, from: usize) -> Result<Life> {
    let status: String = row.get(from);
    Ok(Life {
        status: JobStatus::parse(&status).with_context(|| format!("unknown job status {status:?}"))?,
        attempts: row.get(from + 1),
        max_attempts: row.get(from + 2),
        cancel_requested: row.get(from + 3),
    })
}

/// Asks to cancel a job: a queued one is cancelled at once, a running one is told through
/// its heartbeat. Returns the job and whether the request changed anything, or `None` when
/// there is no such job (a finished job comes back unchanged).
pub async fn request_cancel(c: &impl GenericClient, id: i64) -> Result<Option<(Job, bool)>> {
    let changed = loop {
        let Some(row) = c
            .query_opt(
                "SELECT id, status, attempts, max_attempts, cancel_requested FROM pgplane.jobs WHERE id = $1",
                &[&id],
            )
            .await?
        else {
            return Ok(None);
        };
        let life = life_of(&row, 1)?;
        let Ok(next) = job::next(life, Event::RequestCancel) else { break false };
        if life.cancel_requested {
            break false;
        }
        let n = c
            .execute(
                "UPDATE pgplane.jobs SET status = $2, cancel_requested = true,
                        error = CASE WHEN $2 = 'cancelled' THEN 'cancelled on request' ELSE error END,
                        error_code = CASE WHEN $2 = 'cancelled' THEN 'cancelled' ELSE error_code END,
                        finished_at = CASE WHEN $2 = 'cancelled' THEN pg_catalog.now() ELSE finished_at END
                  WHERE id = $1 AND status = $3 AND attempts = $4 AND NOT cancel_requested",
                &[&id, &next.status.as_str(), &life.status.as_str(), &life.attempts],
            )
            .await?;
        if n == 1 {
            break true;
        }
    };
    Ok(get(c, id).await?.map(|j| (j, changed)))
}

/// Runs a failed or cancelled job again ([`Event::Requeue`]): back in the queue with fresh
/// attempts, keeping its id and so its place before later jobs of its key. Returns the
/// new status, or `None` when the job is not failed or cancelled (or does not exist).
pub async fn requeue(c: &impl GenericClient, id: i64) -> Result<Option<JobStatus>> {
    loop {
        let Some(row) = c
            .query_opt(
                "SELECT id, status, attempts, max_attempts, cancel_requested FROM pgplane.jobs WHERE id = $1",
                &[&id],
            )
            .await?
        else {
            return Ok(None);
        };
        let life = life_of(&row, 1)?;
        let Ok(next) = job::next(life, Event::Requeue) else { return Ok(None) };
        let n = c
            .execute(
                &format!(
                    "UPDATE pgplane.jobs SET status = $2, attempts = $3, cancel_requested = $4, worker = NULL,
                            lease_until = NULL, error = NULL, error_code = NULL, finished_at = NULL,
                            run_after = pg_catalog.now()
                      WHERE id = $1 AND status = $5 AND attempts = $6
                        AND pg_catalog.pg_notify('{CHANNEL}', id::text) IS NOT NULL"
                ),
                &[
                    &id,
                    &next.status.as_str(),
                    &next.attempts,
                    &next.cancel_requested,
                    &life.status.as_str(),
                    &life.attempts,
                ],
            )
            .await?;
        if n == 1 {
            return Ok(Some(next.status));
        }
    }
}

/// What the leader's recovery did.
#[derive(Debug, Default, Clone)]
pub struct Recovered {
    /// Jobs put back in the queue for another worker.
    pub requeued: Vec<i64>,
    /// Jobs given up (no attempts left) or cancelled.
    pub ended: Vec<i64>,
    /// Sessions ended because they held a job whose lease lapsed long ago (a hung worker).
    pub terminated: Vec<i32>,
}

/// Recovers running jobs whose worker is gone: nobody holds the job's lock (the process
/// died or lost its connection). A job whose lease lapsed `grace` ago while its lock is
/// still held belongs to a hung worker: its session is ended, so the next round recovers
/// the job. Each job goes where [`pgplane_core::job::next`] says for a lapsed lease.
pub async fn recover_lapsed(c: &impl GenericClient, grace: Duration) -> Result<Recovered> {
    let mut out = Recovered::default();
    let rows = c
        .query(
            &format!(
                "SELECT j.id, j.status, j.attempts, j.max_attempts, j.cancel_requested FROM pgplane.jobs j
                  WHERE j.status = 'running' AND NOT {held}
                  ORDER BY j.id",
                held = locks::job_lock_held_sql("j")
            ),
            &[],
        )
        .await?;
    for row in &rows {
        let id: i64 = row.get(0);
        let life = life_of(row, 1)?;
        let Ok(next) = job::next(life, Event::LeaseLapsed) else { continue };
        // Guarded by what was read, and by the lock still being free.
        let n = c
            .execute(
                &format!(
                    "UPDATE pgplane.jobs j SET status = $2, worker = CASE WHEN $2 = 'queued' THEN NULL ELSE worker END,
                            lease_until = NULL, run_after = pg_catalog.now(),
                            error = CASE WHEN $2 = 'queued' THEN error WHEN $2 = 'cancelled' THEN 'cancelled on request' ELSE $3 END,
                            error_code = CASE WHEN $2 = 'queued' THEN error_code WHEN $2 = 'cancelled' THEN 'cancelled' ELSE 'unavailable' END,
                            finished_at = CASE WHEN $2 = 'queued' THEN NULL ELSE pg_catalog.now() END
                      WHERE j.id = $1 AND j.status = 'running' AND j.attempts = $4 AND j.cancel_requested = $5
                        AND NOT {held}
                        AND ($2 <> 'queued' OR pg_catalog.pg_notify('{CHANNEL}', j.id::text) IS NOT NULL)",
                    held = locks::job_lock_held_sql("j")
                ),
                &[&id, &next.status.as_str(), &INTERRUPTED, &life.attempts, &life.cancel_requested],
            )
            .await?;
        if n == 0 {
            continue;
        }
        if next.status == JobStatus::Queued {
            out.requeued.push(id);
        } else {
            out.ended.push(id);
        }
    }
    // Hung workers: the lease lapsed long ago but the lock is still held.
    let hung = c
        .query(
            &format!(
                "SELECT l.pid FROM pgplane.jobs j
                   JOIN pg_catalog.pg_locks l ON l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
                    AND l.classid = ({class})::pg_catalog.oid
                    AND l.objid = ((j.id & 2147483647)::int4)::pg_catalog.oid
                    AND l.database = (SELECT d.oid FROM pg_catalog.pg_database d
                                       WHERE d.datname = pg_catalog.current_database())
                  WHERE j.status = 'running'
                    AND j.lease_until < pg_catalog.now() - $1 * interval '1 millisecond'
                    AND l.pid <> pg_catalog.pg_backend_pid()",
                class = locks::JOB.0
            ),
            &[&lease_ms(grace)],
        )
        .await?;
    for r in hung {
        let pid: i32 = r.get(0);
        c.execute("SELECT pg_catalog.pg_terminate_backend($1)", &[&pid]).await?;
        out.terminated.push(pid);
    }
    Ok(out)
}

/// One job.
pub async fn get(c: &impl GenericClient, id: i64) -> Result<Option<Job>> {
    let row = c
        .query_opt(&format!("SELECT {} FROM pgplane.jobs j WHERE j.id = $1", columns()), &[&id])
        .await
        .context("reading a job from the control database")?;
    row.as_ref().map(job_of).transpose()
}

/// Which jobs to list.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub env: Option<String>,
    pub kind: Option<String>,
    pub resource: Option<String>,
    /// Only these statuses (as readers see them); empty: all.
    pub statuses: Vec<JobStatus>,
    pub limit: i64,
}

/// Jobs, newest first.
pub async fn list(c: &impl GenericClient, f: &Filter) -> Result<Vec<Job>> {
    let statuses: Vec<&str> = f.statuses.iter().map(|s| s.as_str()).collect();
    let rows = c
        .query(
            &format!(
                "SELECT * FROM (SELECT {cols} FROM pgplane.jobs j
                  WHERE ($1::text IS NULL OR j.env = $1) AND ($2::text IS NULL OR j.kind = $2)
                    AND ($3::text IS NULL OR j.resource = $3)
                  ORDER BY j.id DESC) x
                  WHERE pg_catalog.cardinality($4::text[]) = 0 OR x.status = ANY($4::text[])
                  LIMIT $5",
                cols = columns()
            ),
            &[&f.env, &f.kind, &f.resource, &statuses, &f.limit.max(1)],
        )
        .await
        .context("reading jobs from the control database")?;
    rows.iter().map(job_of).collect()
}

/// Counts of jobs by kind and status (as readers see them), for metrics.
pub async fn counts(c: &impl GenericClient) -> Result<Vec<(String, JobStatus, i64)>> {
    let rows = c
        .query(
            &format!(
                "SELECT kind, status, count(*) FROM (SELECT j.kind, {s} AS status FROM pgplane.jobs j) x
                  GROUP BY 1, 2 ORDER BY 1, 2",
                s = honest_status_sql()
            ),
            &[],
        )
        .await?;
    rows.iter()
        .map(|r| {
            let s: String = r.get(1);
            Ok((r.get(0), JobStatus::parse(&s).with_context(|| format!("unknown job status {s:?}"))?, r.get(2)))
        })
        .collect()
}

/// The unfinished job (queued or running) with this key, if any: e.g. a branch being created.
pub async fn unfinished_with_key(c: &impl GenericClient, key: &str) -> Result<Option<Job>> {
    let row = c
        .query_opt(
            &format!(
                "SELECT {} FROM pgplane.jobs j WHERE j.key = $1 AND j.status IN ('queued', 'running')
                  ORDER BY j.id LIMIT 1",
                columns()
            ),
            &[&key],
        )
        .await?;
    match row.as_ref().map(job_of).transpose()? {
        // A dead worker's job with no attempts left is over, whatever the row says.
        Some(j) if j.status.is_final() => Ok(None),
        other => Ok(other),
    }
}
