//! `pgplane consume` and `pgplane events publish|status|retry|skip`: thin front ends over
//! [`crate::events`].

use std::path::Path;

use anyhow::{bail, Context, Result};
use pgplane_ops::events::{admin, kafka, log, service};

use crate::cli::{ConsumeArgs, EventsCommand, ManifestArgs};
use crate::control;
use crate::jobs;
use crate::ops::{Ctx, Session};

/// `pgplane consume`: the manifest's event source, and (with --workers) the jobs.
pub async fn consume(ctx: &mut Ctx, args: ConsumeArgs) -> Result<i32> {
    let s = Session::open(ctx, &args.manifest.file, args.manifest.env.as_deref()).await?;
    control::create_if_missing(s.first_admin()).await?;
    control::ensure_as(s.servers.first(), crate::conn::Role::Branch).await?;
    crate::cancel::take_over_signals();
    let env = s.desired.env.clone();
    let fingerprint = crate::runner::fingerprint(Path::new(&args.manifest.file))?;
    let name = format!("consume@{}:{}", jobs::worker::hostname(), std::process::id());
    let node = (args.workers > 0).then(|| {
        jobs::node::Node::start(jobs::node::Setup {
            home: ctx.home.clone(),
            manifest: crate::ops::ManifestArgs { file: args.manifest.file.clone(), env: Some(env.clone()) },
            env: env.clone(),
            fingerprint: fingerprint.clone(),
            keep_file: s.manifest.branches.keep_file.clone(),
            control: s.servers.first().clone(),
            workers: usize::from(args.workers),
            reconcile_every: args.reconcile_interval,
            name: name.clone(),
            hooks: None,
        })
    });
    let consumer = service::Service::start(service::Setup {
        control: s.servers.first().clone(),
        manifest: s.manifest.clone(),
        env: env.clone(),
        fingerprint,
        name,
        tick: std::time::Duration::from_secs(1),
    })
    .await?;
    eprintln!(
        "pgplane: consuming events of env {env} from {} ({}), {} worker slot(s); SIGTERM stops",
        consumer.source,
        if consumer.source == "kafka" { consumer.topic.clone() } else { "the control database".to_string() },
        args.workers
    );
    let name = crate::cancel::shutdown_signal().await;
    eprintln!(
        "pgplane: {name} received: stopping the consumer, finishing running jobs (up to {}s)",
        args.grace.as_secs()
    );
    consumer.stop().await;
    if let Some(node) = node {
        let shutdown = node.shutdown(args.grace);
        tokio::pin!(shutdown);
        let handed_back = tokio::select! {
            ids = &mut shutdown => ids,
            name = crate::cancel::shutdown_signal() => {
                eprintln!("pgplane: second {name}: stopping now");
                node.cancel_now();
                shutdown.await
            }
        };
        if !handed_back.is_empty() {
            eprintln!("pgplane: handed jobs {handed_back:?} back to the queue: another worker continues them");
        }
    }
    eprintln!("pgplane: stopped");
    Ok(0)
}

/// The control database, created and migrated when `create` (publishing needs it).
async fn control_db(
    ctx: &mut Ctx,
    manifest: &ManifestArgs,
    create: bool,
) -> Result<(Session, Option<tokio_postgres::Client>)> {
    let s = Session::open(ctx, &manifest.file, manifest.env.as_deref()).await?;
    let c = if create {
        control::create_if_missing(s.first_admin()).await?;
        Some(control::ensure_as(s.servers.first(), crate::conn::Role::Branch).await?)
    } else {
        control::open_existing(s.servers.first(), s.first_admin()).await?
    };
    Ok((s, c))
}

pub async fn events(ctx: &mut Ctx, command: EventsCommand) -> Result<i32> {
    match command {
        EventsCommand::Publish { kind, key, id, data, subject, from: file, rate, manifest, json } => {
            if let Some(file) = file {
                return publish_file(ctx, &manifest, &file, rate, json).await;
            }
            let data: serde_json::Value =
                serde_json::from_str(&data).with_context(|| format!("--data is not JSON: {data}"))?;
            if !data.is_object() {
                bail!("--data must be a JSON object, e.g. '{{\"tenant\": \"acme\"}}'");
            }
            let (Some(kind), Some(key)) = (kind, key) else { bail!("pass --type TYPE and --key KEY (or --from FILE)") };
            let p = log::Publish { id, kind, key, subject, source: Some("pgplane-cli".into()), data };
            let s = Session::open(ctx, &manifest.file, manifest.env.as_deref()).await?;
            let (where_, published) = match &s.manifest.events.kafka {
                Some(k) => {
                    let (id, envelope) = p.envelope();
                    let payload = serde_json::to_vec(&envelope)?;
                    let producer = kafka::producer(k)?;
                    let (partition, offset) = kafka::send(&producer, &k.topic, Some(&p.key), &payload, &[]).await?;
                    (format!("Kafka topic {}", k.topic), log::Published { id, partition, offset })
                }
                None => {
                    control::create_if_missing(s.first_admin()).await?;
                    let mut c = control::ensure_as(s.servers.first(), crate::conn::Role::Branch).await?;
                    let env = s.desired.env.clone();
                    (format!("the embedded queue of env {env}"), log::publish(&mut c, &env, &p).await?)
                }
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&published)?);
            } else {
                println!(
                    "Published {} {} (key {}) to {where_}, partition {} offset {}.",
                    p.kind, published.id, p.key, published.partition, published.offset
                );
            }
            Ok(0)
        }
        EventsCommand::Status { manifest, limit, json } => {
            let (s, c) = control_db(ctx, &manifest, false).await?;
            let stream = admin::Stream::of(&s.manifest, &s.desired.env);
            let status = match &c {
                Some(c) if has_events(c).await? => Some(admin::status(c, Some(&stream), limit).await?),
                _ => None,
            };
            let blocked = status.as_ref().is_some_and(|s| !s.holds.is_empty());
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                match &status {
                    None => println!("No events consumed yet."),
                    Some(s) => print!("{}", status_text(s)),
                }
            }
            Ok(if blocked { 1 } else { 0 })
        }
        EventsCommand::Retry { seq, manifest, json } => steer(ctx, seq, &manifest, json, true).await,
        EventsCommand::Skip { seq, manifest, json } => steer(ctx, seq, &manifest, json, false).await,
    }
}

/// One line of `events publish --from`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    #[serde(rename = "type")]
    kind: String,
    key: String,
    id: Option<String>,
    subject: Option<String>,
    #[serde(default)]
    data: Option<serde_json::Value>,
}

/// Publishes every event of a JSON-lines file, in order, on one connection (one producer).
async fn publish_file(
    ctx: &mut Ctx,
    manifest: &ManifestArgs,
    file: &Path,
    rate: Option<f64>,
    json: bool,
) -> Result<i32> {
    if rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        bail!("--rate must be a positive number of events per second");
    }
    let started = std::time::Instant::now();
    // Event `i` is sent no earlier than i/rate seconds after the start.
    let pace = |i: usize| async move {
        if let Some(r) = rate {
            let due = started + std::time::Duration::from_secs_f64(i as f64 / r);
            tokio::time::sleep_until(due.into()).await;
        }
    };
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let mut events = Vec::new();
    for (i, l) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let line: Line =
            serde_json::from_str(l).with_context(|| format!("{}:{}: not an event line", file.display(), i + 1))?;
        let data = line.data.unwrap_or_else(|| serde_json::json!({}));
        if !data.is_object() {
            bail!("{}:{}: `data` must be a JSON object", file.display(), i + 1);
        }
        events.push(log::Publish {
            id: line.id,
            kind: line.kind,
            key: line.key,
            subject: line.subject,
            source: Some("pgplane-cli".into()),
            data,
        });
    }
    let s = Session::open(ctx, &manifest.file, manifest.env.as_deref()).await?;
    let mut out = Vec::new();
    match &s.manifest.events.kafka {
        Some(k) => {
            let producer = kafka::producer(k)?;
            for (i, p) in events.iter().enumerate() {
                pace(i).await;
                let (id, envelope) = p.envelope();
                let payload = serde_json::to_vec(&envelope)?;
                let (partition, offset) = kafka::send(&producer, &k.topic, Some(&p.key), &payload, &[]).await?;
                out.push(log::Published { id, partition, offset });
            }
        }
        None => {
            control::create_if_missing(s.first_admin()).await?;
            let mut c = control::ensure_as(s.servers.first(), crate::conn::Role::Branch).await?;
            for (i, p) in events.iter().enumerate() {
                pace(i).await;
                out.push(log::publish(&mut c, &s.desired.env, p).await?);
            }
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("Published {} event(s) from {}.", out.len(), file.display());
    }
    Ok(0)
}

async fn has_events(c: &tokio_postgres::Client) -> Result<bool> {
    Ok(c.query_one("SELECT to_regclass('pgplane.events') IS NOT NULL", &[]).await?.get(0))
}

async fn steer(ctx: &mut Ctx, seq: i64, manifest: &ManifestArgs, json: bool, retry: bool) -> Result<i32> {
    let (_, c) = control_db(ctx, manifest, false).await?;
    let Some(mut c) = c else { bail!("there is no event {seq} (no control database yet)") };
    let done = if retry { admin::retry(&mut c, seq).await } else { admin::skip(&mut c, seq).await };
    let done = done.map_err(|e| anyhow::anyhow!("{}", e.chain()))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&done)?);
    } else {
        let e = &done.event;
        let what = e.kind.as_deref().unwrap_or("event");
        if retry {
            println!(
                "Event {seq} ({what}, key {}) runs again as job {}.",
                e.key.as_deref().unwrap_or("-"),
                e.job.map(|j| j.to_string()).unwrap_or_default()
            );
        } else {
            println!("Event {seq} ({what}, key {}) is skipped.", e.key.as_deref().unwrap_or("-"));
        }
        if let Some(k) = &done.released {
            println!("Key {k} is released: its waiting events go on.");
        }
    }
    Ok(0)
}

/// `events status` as text: recent events, blocked keys, lag, counts, dead letters.
fn status_text(s: &admin::Status) -> String {
    let mut out = String::new();
    let mut rows = vec![[
        "SEQ".to_string(),
        "TYPE".into(),
        "KEY".into(),
        "OUTCOME".into(),
        "JOB".into(),
        "SOURCE".into(),
        "RECEIVED".into(),
        "REASON".into(),
    ]];
    for e in &s.recent {
        let job = match (e.job, &e.job_status) {
            (Some(j), Some(st)) => format!("{j} {st}"),
            (Some(j), None) => j.to_string(),
            _ => String::new(),
        };
        rows.push([
            e.seq.to_string(),
            e.kind.clone().unwrap_or_else(|| "?".into()),
            e.key.clone().unwrap_or_default(),
            e.outcome.clone(),
            job,
            format!("{}:{}@{}", e.topic, e.partition, e.offset),
            e.received_at.clone(),
            e.reason.as_deref().unwrap_or("").lines().next().unwrap_or("").chars().take(60).collect(),
        ]);
    }
    out.push_str(&table(&rows));
    if !s.holds.is_empty() {
        out.push_str("\nBlocked keys (`pgplane events retry SEQ` or `pgplane events skip SEQ`):\n");
        for h in &s.holds {
            out.push_str(&format!(
                "  {}  by event {}{}, {} waiting: {}\n",
                h.key,
                h.event,
                h.job.map(|j| format!(" (job {j})")).unwrap_or_default(),
                h.waiting,
                h.reason.as_deref().unwrap_or("").lines().next().unwrap_or("")
            ));
        }
    }
    if !s.lag.is_empty() {
        let total: i64 = s.lag.iter().filter_map(|l| l.lag).sum();
        let behind: Vec<String> = s
            .lag
            .iter()
            .filter(|l| l.lag.unwrap_or(0) > 0)
            .map(|l| format!("{}:{} {}", l.topic, l.partition, l.lag.unwrap_or(0)))
            .collect();
        out.push_str(&format!(
            "\nLag: {total} event(s) not yet recorded{}\n",
            if behind.is_empty() { String::new() } else { format!(" ({})", behind.join(", ")) }
        ));
    }
    if !s.counts.is_empty() {
        let parts: Vec<String> = s.counts.iter().map(|c| format!("{} {} {}", c.kind, c.outcome, c.count)).collect();
        out.push_str(&format!("Counts: {}\n", parts.join("; ")));
    }
    if !s.dead_letters.is_empty() {
        out.push_str("Dead letters (newest first):\n");
        for d in s.dead_letters.iter().take(5) {
            out.push_str(&format!(
                "  event {} {} key {}: {}\n",
                d.event,
                d.kind.as_deref().unwrap_or("?"),
                d.key.as_deref().unwrap_or("-"),
                d.reason.as_deref().unwrap_or("").lines().next().unwrap_or("")
            ));
        }
    }
    out
}

fn table<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r.iter().zip(widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}
