//! Recording one consumed message: in one control-database transaction, the stored
//! offset advances past it, the event is recorded with its identity and envelope id, and
//! — unless it is a duplicate, of an unknown type or poison — its job is queued. A crash
//! before the commit leaves nothing (the message is read again); after it, everything
//! (the message is never recorded again: the stored offset is past it). Either way every
//! effect happens once.

use std::collections::BTreeSet;
use std::sync::Arc;

use anyhow::{Context, Result};
use pgplane_core::event::{self, Disposition, Envelope, OnFailure, Operation, Outcome, Rejection};
use serde::Serialize;
use tokio_postgres::{Client, GenericClient};

use super::consume::Message;
use crate::jobs::{queue, NewJob};
use crate::runner;

/// What the recorder knows: whose events these are and how to treat them.
#[derive(Debug, Clone)]
pub struct Recorder {
    /// `queue` or `kafka`.
    pub source: String,
    /// The consumer group (offsets and `pgplane.events` rows are per group).
    pub group: String,
    pub topic: String,
    /// The consumer's environment (events may name another for `apply`/`module`).
    pub env: String,
    /// Jobs go to the workers serving this manifest digest.
    pub fingerprint: String,
    pub spec: event::EventsSpec,
    /// Modules and templates of the manifest: events naming others are poison at once.
    pub modules: BTreeSet<String>,
    pub templates: BTreeSet<String>,
    /// Job kinds the workers run (events of others are poison: "this pgplane cannot").
    pub kinds: BTreeSet<String>,
    /// The manifest: tenant events are checked against its modules, versions and
    /// parameters before a job is queued (as `tenant add` and the API check them).
    pub manifest: Arc<pgplane_core::manifest::Manifest>,
}

impl Recorder {
    pub fn new(
        source: &str,
        group: &str,
        topic: &str,
        env: &str,
        fingerprint: &str,
        m: &pgplane_core::manifest::Manifest,
    ) -> Recorder {
        Recorder {
            source: source.to_string(),
            group: group.to_string(),
            topic: topic.to_string(),
            env: env.to_string(),
            fingerprint: fingerprint.to_string(),
            spec: m.events.clone(),
            modules: m.modules.iter().map(|x| x.name.clone()).collect(),
            templates: m.templates.iter().map(|t| t.name.clone()).collect(),
            kinds: runner::kind::ALL.iter().map(|k| k.to_string()).collect(),
            manifest: Arc::new(m.clone()),
        }
    }
}

/// What became of a recorded message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// Recorded with its job.
    Queued { seq: i64, job: i64 },
    /// Recorded without a job: a duplicate, skipped, dead-lettered or blocked.
    Without { seq: i64, outcome: Outcome },
    /// The stored offset is not where this consumer thought: another consumer recorded
    /// this partition meanwhile. Nothing was written; seek to the stored offset.
    Stale,
}

/// The next offset to read of a partition (0 when the group never read it).
pub async fn stored_offset(c: &impl GenericClient, group: &str, topic: &str, partition: i32) -> Result<i64> {
    let row = c
        .query_opt(
            "SELECT next_offset FROM pgplane.event_offsets WHERE consumer = $1 AND topic = $2 AND partition = $3",
            &[&group, &topic, &partition],
        )
        .await
        .context("reading the stored offset")?;
    Ok(row.map(|r| r.get(0)).unwrap_or(0))
}

/// Stores the source's ends (for lag); creates no offset a consumer would seek to.
pub async fn store_high_watermarks(c: &impl GenericClient, group: &str, topic: &str, hw: &[(i32, i64)]) -> Result<()> {
    let (parts, ends): (Vec<i32>, Vec<i64>) = hw.iter().copied().unzip();
    c.execute(
        "UPDATE pgplane.event_offsets o SET high_watermark = h.hw
           FROM ROWS FROM (pg_catalog.unnest($3::int4[]), pg_catalog.unnest($4::int8[])) AS h(part, hw)
          WHERE o.consumer = $1 AND o.topic = $2 AND o.partition = h.part",
        &[&group, &topic, &parts, &ends],
    )
    .await?;
    c.execute(
        "INSERT INTO pgplane.event_offsets (consumer, topic, partition, next_offset, high_watermark)
         SELECT $1, $2, h.part, 0, h.hw FROM ROWS FROM (pg_catalog.unnest($3::int4[]), pg_catalog.unnest($4::int8[])) AS h(part, hw)
         ON CONFLICT DO NOTHING",
        &[&group, &topic, &parts, &ends],
    )
    .await?;
    Ok(())
}

/// Event jobs of an environment waiting for a worker (the consumer's back-pressure).
pub async fn queued_event_jobs(c: &impl GenericClient, env: &str) -> Result<i64> {
    Ok(c.query_one(
        "SELECT count(*) FROM pgplane.jobs WHERE status = 'queued' AND key LIKE 'event/%' AND env = $1",
        &[&env],
    )
    .await?
    .get(0))
}

/// Bytes from a message as text PostgreSQL can store: invalid UTF-8 and NUL characters
/// become U+FFFD (a NUL would make recording fail, and the consumer read it forever).
pub fn text_of(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).replace('\0', "\u{FFFD}")
}

/// The event's ordering key: the message key, else the envelope's subject.
fn key_of(m: &Message, e: Option<&Envelope>) -> Option<String> {
    m.key.clone().filter(|k| !k.is_empty()).or_else(|| e.and_then(|e| e.subject.clone()))
}

/// What an event asks, as a job.
pub fn job_of(r: &Recorder, op: &Operation, key: Option<&str>) -> std::result::Result<NewJob, Rejection> {
    let invalid = |reason: String| Rejection { why: event::RejectKind::InvalidData, reason };
    let kind = op.job_kind();
    if !r.kinds.contains(kind) {
        return Err(invalid(format!("this pgplane does not run {kind} jobs; nothing was done")));
    }
    let env = op.env().unwrap_or(&r.env).to_string();
    let request = match op {
        Operation::BranchCreate { id, data } | Operation::BranchReset { id, data } => {
            if let Some(t) = data.template.as_ref().filter(|t| !r.templates.contains(*t)) {
                return Err(invalid(format!(
                    "template {t:?} is not in the manifest (templates: {})",
                    r.templates.iter().cloned().collect::<Vec<_>>().join(", ")
                )));
            }
            let req = runner::BranchJob {
                id: id.clone(),
                template: data.template.clone(),
                // Relative to the manifest's folder and inside it, as the API takes them.
                sources: match &data.sources {
                    None => None,
                    Some(given) => Some(
                        crate::migrate::Root::manifest(&r.manifest.file)
                            .map_err(|e| invalid(format!("{e:#}")))
                            .and_then(|root| {
                                crate::migrate::request_sources(root.path(), given)
                                    .map_err(|e| invalid(format!("{e}; nothing was done")))
                            })?,
                    ),
                },
                contexts: data.contexts.clone(),
                labels: match op {
                    Operation::BranchCreate { .. } => Some(data.labels.clone().unwrap_or_default()),
                    _ => data.labels.clone(),
                },
                ttl_secs: event::ttl_secs(data.ttl.as_deref())?,
            };
            serde_json::to_value(req)
        }
        Operation::BranchDelete { id } => {
            serde_json::to_value(runner::BranchDeleteJob { id: id.clone(), missing_ok: true })
        }
        Operation::Apply { data, .. } => {
            // Dropping what the manifest no longer lists, or taking over objects someone
            // else re-created, is the operator's decision unless the manifest hands it over.
            for (asked, allowed, what) in
                [(data.prune, r.spec.allow_prune, "prune"), (data.adopt, r.spec.allow_adopt, "adopt")]
            {
                if asked && !allowed {
                    return Err(invalid(format!(
                        "apply.requested asks for {what}, which events may not ask for unless the manifest allows it \
                         (`events: {{allow_{what}: true}}`); run `pgplane apply --{what}` instead; nothing was done"
                    )));
                }
            }
            serde_json::to_value(runner::ApplyRequest {
                prune: data.prune,
                adopt: data.adopt,
                skip_migrations: data.skip_migrations,
                // Never from an event: rotating every password is an operator's decision.
                new_secret_key: false,
            })
        }
        Operation::Module { module, .. } => {
            if !r.modules.contains(module) {
                return Err(invalid(format!(
                    "module {module:?} is not in the manifest (modules: {})",
                    r.modules.iter().cloned().collect::<Vec<_>>().join(", ")
                )));
            }
            serde_json::to_value(runner::ApplyRequest::default())
        }
        Operation::TenantAdd { tenant, modules, parameters, data } => {
            let req = runner::TenantAddRequest {
                tenant: tenant.clone(),
                modules: modules.clone(),
                parameters: parameters.clone(),
                labels: data.labels.clone(),
                ttl: data.ttl.clone(),
            };
            check_tenant(r, req.change(), modules)?;
            serde_json::to_value(req)
        }
        Operation::TenantUpgrade { tenant, modules } => {
            let req = runner::TenantUpgradeRequest {
                tenant: Some(tenant.clone()),
                modules: modules.clone(),
                // No module named: every module of the tenant to its newest version.
                all_modules: modules.is_empty(),
                ..Default::default()
            };
            check_tenant(r, req.change(), modules)?;
            serde_json::to_value(req)
        }
        Operation::TenantDisable { tenant, module } => {
            let req =
                runner::TenantModulesRequest { tenant: tenant.clone(), modules: module.iter().cloned().collect() };
            check_tenant(r, req.change(pgplane_core::tenant::ItemAction::Disable), &req.modules)?;
            serde_json::to_value(req)
        }
        Operation::TenantRemove { tenant, module } => {
            let req = runner::TenantRemoveRequest {
                tenant: tenant.clone(),
                modules: module.iter().cloned().collect(),
                purge: true,
            };
            check_tenant(r, req.change(), &req.modules)?;
            serde_json::to_value(req)
        }
    }
    .map_err(|e| invalid(format!("the request could not be built: {e}")))?;
    let mut job = NewJob::new(kind, Some(&env));
    job.resource = Some(op.resource());
    job.request = request;
    job.key = key.map(|k| event::job_key(&r.env, k));
    job.fingerprint = Some(r.fingerprint.clone());
    job.max_attempts = r.spec.max_attempts;
    job.event = true;
    Ok(job)
}

/// Checks a tenant event's change against the manifest before its job is queued: the
/// tenant's name, its modules (of a per-tenant storage), the versions named (`users@9.9`)
/// and the parameters. What depends on the tenant's state (registered, the version it
/// runs) is checked when the job runs; a failure there ends the event the same way.
fn check_tenant(
    r: &Recorder,
    change: crate::error::Result<pgplane_core::tenant::Change>,
    modules: &[String],
) -> std::result::Result<(), Rejection> {
    let invalid = |reason: String| Rejection { why: event::RejectKind::InvalidData, reason };
    let change = change.map_err(|e| invalid(format!("{e}; nothing was done")))?;
    crate::tenants::precheck(&r.manifest, &change).map_err(|e| invalid(format!("{e}; nothing was done")))?;
    for m in modules {
        let parsed =
            pgplane_core::tenant::ModuleRef::parse(m).map_err(|e| invalid(format!("{e}; nothing was done")))?;
        let spec = pgplane_core::tenant::tenant_module(&r.manifest, &parsed.module)
            .map_err(|e| invalid(format!("{e}; nothing was done")))?;
        pgplane_core::tenant::resolve_version(spec, parsed.version.as_deref())
            .map_err(|e| invalid(format!("{e}; nothing was done")))?;
    }
    Ok(())
}

/// One event row.
struct Row<'a> {
    e: Option<&'a Envelope>,
    key: Option<&'a str>,
    env: &'a str,
    outcome: Outcome,
    job: Option<i64>,
    reason: Option<&'a str>,
    hints: Option<serde_json::Value>,
}

async fn insert_event(c: &impl GenericClient, r: &Recorder, m: &Message, row: Row<'_>) -> Result<i64> {
    let payload = text_of(&m.payload);
    let on_failure = match r.spec.on_failure {
        OnFailure::DeadLetter => "dead_letter",
        OnFailure::Block => "block",
    };
    let hints = row.hints.map(|h| h.to_string());
    let finished = !matches!(row.outcome, Outcome::Queued);
    let seq: i64 = c
        .query_one(
            "INSERT INTO pgplane.events (source, consumer, topic, partition, \"offset\", event_id, type, subject, key,
                                         env, outcome, job_id, on_failure, reason, payload, hints, finished_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16::text::jsonb,
                     CASE WHEN $17 THEN pg_catalog.now() END)
             RETURNING seq",
            &[
                &r.source,
                &r.group,
                &r.topic,
                &m.partition,
                &m.offset,
                &row.e.map(|e| e.id.clone()),
                &row.e.map(|e| e.kind.clone()).or_else(|| m.type_header.clone()),
                &row.e.and_then(|e| e.subject.clone()),
                &row.key,
                &row.env,
                &row.outcome.as_str(),
                &row.job,
                &on_failure,
                &row.reason,
                &payload.as_str(),
                &hints,
                &finished,
            ],
        )
        .await?
        .get(0);
    Ok(seq)
}

/// A message with what could be decided before any I/O.
pub struct Prepared<'m> {
    pub m: &'m Message,
    envelope: Option<Envelope>,
    key: Option<String>,
    decision: std::result::Result<(Operation, NewJob), Rejection>,
}

/// Parses and maps a message (pure).
pub fn prepare<'m>(r: &Recorder, m: &'m Message) -> Prepared<'m> {
    let parsed = event::parse(&m.payload, m.type_header.as_deref());
    let key = key_of(m, parsed.as_ref().ok());
    // An over-long key could not be recorded (nor indexed): the event is poison, without
    // a key to hold.
    if let Some(n) = key.as_ref().map(String::len).filter(|n| *n > event::MAX_KEY_BYTES) {
        let reason = format!("the event's key is {n} bytes, more than the {} a key may have", event::MAX_KEY_BYTES);
        let decision = Err(Rejection { why: event::RejectKind::Unparseable, reason });
        return Prepared { m, envelope: parsed.ok(), key: None, decision };
    }
    let decision = parsed.clone().and_then(|e| {
        let op = event::map(&r.env, &e)?;
        let job = job_of(r, &op, key.as_deref())?;
        Ok((op, job))
    });
    Prepared { m, envelope: parsed.ok(), key, decision }
}

/// What recording a batch did.
#[derive(Debug)]
pub enum Batch {
    /// Every message recorded, in order.
    Recorded(Vec<Recorded>),
    /// A stored offset was not where this consumer thought (another consumer recorded the
    /// partition meanwhile): nothing was written; seek to the stored offsets.
    Stale,
}

/// Records `m`, expecting the stored offset of its partition to be `expected`.
pub async fn record(c: &mut Client, r: &Recorder, m: &Message, expected: i64) -> Result<Recorded> {
    let expected = std::collections::BTreeMap::from([(m.partition, expected)]);
    match record_batch(c, r, std::slice::from_ref(m), &expected, &mut |_| {}).await? {
        Batch::Stale => Ok(Recorded::Stale),
        Batch::Recorded(mut v) => v.pop().context("a batch of one recorded nothing"),
    }
}

/// Records messages (in offset order within each partition) in one transaction: each
/// event with its job, and each partition's stored offset moved from `expected` past its
/// last message. `before(i)` runs before message `i` is written (the crash tests' hook).
/// Two partitions recording the same id at once fail one transaction on the idempotency
/// key: it is recorded again message by message, and the id is then a duplicate.
pub async fn record_batch(
    c: &mut Client,
    r: &Recorder,
    msgs: &[Message],
    expected: &std::collections::BTreeMap<i32, i64>,
    before: &mut (dyn FnMut(usize) + Send),
) -> Result<Batch> {
    let prepared: Vec<Prepared<'_>> = msgs.iter().map(|m| prepare(r, m)).collect();
    match try_batch(c, r, &prepared, expected, before).await {
        Err(e) if is_unique_violation(&e, "events_identity") => Ok(Batch::Stale),
        Err(e) if is_unique_violation(&e, "events_idempotency") => {
            // One by one: the one that lost the race now sees the other's row.
            let mut out = Vec::new();
            let mut next = expected.clone();
            for p in &prepared {
                let from = next.get(&p.m.partition).copied().unwrap_or(p.m.offset);
                let one = std::collections::BTreeMap::from([(p.m.partition, from)]);
                match try_batch(c, r, std::slice::from_ref(p), &one, &mut |_| {}).await? {
                    Batch::Stale => return Ok(Batch::Stale),
                    Batch::Recorded(v) => out.extend(v),
                }
                next.insert(p.m.partition, p.m.offset + 1);
            }
            Ok(Batch::Recorded(out))
        }
        other => other,
    }
}

fn is_unique_violation(e: &anyhow::Error, constraint: &str) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<tokio_postgres::Error>().and_then(|e| e.as_db_error()).is_some_and(|d| {
            d.code() == &tokio_postgres::error::SqlState::UNIQUE_VIOLATION && d.constraint() == Some(constraint)
        })
    })
}

async fn try_batch(
    c: &mut Client,
    r: &Recorder,
    prepared: &[Prepared<'_>],
    expected: &std::collections::BTreeMap<i32, i64>,
    before: &mut (dyn FnMut(usize) + Send),
) -> Result<Batch> {
    let tx = c.transaction().await?;
    let mut out = Vec::with_capacity(prepared.len());
    let mut next: std::collections::BTreeMap<i32, i64> = std::collections::BTreeMap::new();
    for (i, p) in prepared.iter().enumerate() {
        before(i);
        out.push(record_in(&tx, r, p).await?);
        next.insert(p.m.partition, p.m.offset + 1);
    }
    // Each offset moves only from where this consumer expects it.
    for (partition, to) in &next {
        let from = expected.get(partition).copied().unwrap_or(0);
        let moved = tx
            .query_opt(
                "INSERT INTO pgplane.event_offsets AS o (consumer, topic, partition, next_offset)
                 VALUES ($1, $2, $3, $5)
                 ON CONFLICT (consumer, topic, partition) DO UPDATE
                    SET next_offset = EXCLUDED.next_offset, updated_at = pg_catalog.now()
                  WHERE o.next_offset = $4
                 RETURNING 1",
                &[&r.group, &r.topic, partition, &from, to],
            )
            .await
            .context("advancing the stored offset")?;
        if moved.is_none() {
            return Ok(Batch::Stale);
        }
    }
    tx.commit().await.context("committing the events")?;
    Ok(Batch::Recorded(out))
}

/// Writes one event (and its job, dead letter, hold or status event) in `tx`.
async fn record_in(tx: &tokio_postgres::Transaction<'_>, r: &Recorder, p: &Prepared<'_>) -> Result<Recorded> {
    let (m, envelope, key, decision) = (p.m, p.envelope.as_ref(), p.key.as_deref(), &p.decision);
    let row = |outcome, job, reason, hints| Row { e: envelope, key, env: &r.env, outcome, job, reason, hints };
    // The same id consumed before (here or from another partition): nothing to do.
    if let Some(e) = envelope {
        let seen = tx
            .query_opt(
                "SELECT seq FROM pgplane.events
                  WHERE consumer = $2 AND topic = $3 AND event_id = $1 AND outcome <> 'duplicate'",
                &[&e.id, &r.group, &r.topic],
            )
            .await?;
        if let Some(first) = seen {
            let first: i64 = first.get(0);
            let why = format!("the id {:?} was consumed before (event {first})", e.id);
            let seq = insert_event(tx, r, m, row(Outcome::Duplicate, None, Some(&why), None)).await?;
            return Ok(Recorded::Without { seq, outcome: Outcome::Duplicate });
        }
    }
    let recorded = match decision {
        Ok((op, job)) => {
            let env = op.env().unwrap_or(&r.env).to_string();
            let id = queue::submit(tx, job).await?;
            let mut ev = row(Outcome::Queued, Some(id), None, op.credentials(&env));
            ev.env = &env;
            let seq = insert_event(tx, r, m, ev).await?;
            Recorded::Queued { seq, job: id }
        }
        Err(rejection) => {
            let d: Disposition = event::dispose(rejection, r.spec.unknown_types, r.spec.on_failure, key.is_some());
            let seq = insert_event(tx, r, m, row(d.outcome, None, Some(&rejection.reason), None)).await?;
            let kind = envelope.map(|e| e.kind.clone());
            let known = kind.as_deref().and_then(event::EventType::parse).is_some();
            if d.dead_letter {
                tx.execute(
                    "INSERT INTO pgplane.event_outbox (stream, event_seq, type, subject, key, payload, reason, consumer, topic)
                     VALUES ('dead_letter', $1, $2, $3, $4, $5, $6, $7, $8)",
                    &[
                        &seq,
                        &kind.clone().or_else(|| m.type_header.clone()),
                        &envelope.and_then(|e| e.subject.clone()),
                        &key,
                        &text_of(&m.payload).as_str(),
                        &rejection.reason,
                        &r.group,
                        &r.topic,
                    ],
                )
                .await?;
            }
            if d.hold {
                if let Some(k) = key {
                    tx.execute(
                        "INSERT INTO pgplane.job_holds (key, event_seq, reason) VALUES ($1, $2, $3)
                         ON CONFLICT (key) DO NOTHING",
                        &[&event::job_key(&r.env, k), &seq, &rejection.reason],
                    )
                    .await?;
                }
            }
            // A known type that cannot be done is reported like a failed job.
            if known && d.outcome != Outcome::Skipped {
                let body = serde_json::json!({
                    "job": null, "error": rejection.reason, "event": envelope.map(|e| e.id.clone()),
                    "outcome": d.outcome.as_str(), "env": r.env,
                });
                tx.execute(
                    "INSERT INTO pgplane.event_outbox (stream, event_seq, type, subject, key, body, consumer, topic)
                     VALUES ('status', $1, $2, $3, $4, $5::text::jsonb, $6, $7)",
                    &[
                        &seq,
                        &kind.as_deref().map(|k| event::status_type(k, false)),
                        &envelope.and_then(|e| e.subject.clone()),
                        &key,
                        &body.to_string(),
                        &r.group,
                        &r.topic,
                    ],
                )
                .await?;
            }
            Recorded::Without { seq, outcome: d.outcome }
        }
    };
    Ok(recorded)
}

/// A recorded event as `events status` and the API show it.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EventRow {
    /// The event's number in pgplane (for `events retry|skip`).
    pub seq: i64,
    pub source: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub id: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub subject: Option<String>,
    pub key: Option<String>,
    pub env: Option<String>,
    /// queued, succeeded, duplicate, skipped, dead_lettered, blocked, cancelled.
    pub outcome: String,
    pub job: Option<i64>,
    /// The job's status as readers see it.
    pub job_status: Option<String>,
    pub reason: Option<String>,
    pub received_at: String,
    pub finished_at: Option<String>,
}
