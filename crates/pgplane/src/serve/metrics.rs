//! `/metrics` in Prometheus' text format: requests and latencies by route (the route
//! pattern, never the concrete path, so branch ids do not explode the label space),
//! operations by kind and status, and branches by status, read from the control
//! database at scrape time (so several `serve` processes report the same truth).

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use super::error::ApiResult;
use super::state::Shared;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: String,
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    kind: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    r#type: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartitionLabels {
    group: String,
    topic: String,
    partition: String,
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram>,
    operations: Family<OperationLabels, Gauge>,
    branches: Family<StatusLabels, Gauge>,
    jobs: Family<StatusLabels, Gauge>,
    running_jobs: Gauge,
    queued_jobs: Gauge,
    backlog_limit: Gauge,
    worker_slots: Gauge,
    leader: Gauge,
    takeovers: Counter,
    events: Family<EventLabels, Gauge>,
    event_lag: Family<PartitionLabels, Gauge>,
    dead_letters: Gauge,
    blocked_keys: Gauge,
    consumed_partitions: Gauge,
    /// Observed by the worker's hooks.
    pub claim_latency: Histogram,
}

fn latency_histogram() -> Histogram {
    // 0.5 ms … ~4 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 14))
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("pgplane");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<RouteLabels, Histogram>::new_with_constructor(latency_histogram as fn() -> Histogram);
        let operations = Family::<OperationLabels, Gauge>::default();
        let branches = Family::<StatusLabels, Gauge>::default();
        let jobs = Family::<StatusLabels, Gauge>::default();
        let running_jobs = Gauge::default();
        let queued_jobs = Gauge::default();
        let backlog_limit = Gauge::default();
        let worker_slots = Gauge::default();
        let leader = Gauge::default();
        let takeovers = Counter::default();
        let events = Family::<EventLabels, Gauge>::default();
        let event_lag = Family::<PartitionLabels, Gauge>::default();
        let dead_letters = Gauge::default();
        let blocked_keys = Gauge::default();
        let consumed_partitions = Gauge::default();
        registry.register("events", "Consumed events by type and outcome (control database)", events.clone());
        registry.register(
            "event_lag",
            "Events of a partition not yet recorded, per consumer group, topic and partition (control database)",
            event_lag.clone(),
        );
        registry.register("event_dead_letters", "Dead letters recorded (control database)", dead_letters.clone());
        registry.register(
            "event_blocked_keys",
            "Keys held by a poison event under on_failure: block (control database)",
            blocked_keys.clone(),
        );
        registry.register(
            "event_partitions",
            "Event partitions this process consumes now (serve --consume)",
            consumed_partitions.clone(),
        );
        // 1 ms … ~16 s.
        let claim_latency = Histogram::new(exponential_buckets(0.001, 2.0, 15));
        registry.register(
            "job_claim_latency_seconds",
            "From when a job could run to when a worker slot of this process claimed it",
            claim_latency.clone(),
        );
        registry.register("http_requests", "HTTP requests by method, route and status", requests.clone());
        registry.register("http_request_duration_seconds", "HTTP request latency by method and route", latency.clone());
        registry.register(
            "operations",
            "Journaled operations by kind and status (control database)",
            operations.clone(),
        );
        registry.register("branches", "Branch databases of this environment by status", branches.clone());
        registry.register("jobs", "Jobs of every environment by status (control database)", jobs.clone());
        registry.register(
            "job_queue_depth",
            "Jobs of this environment waiting for a worker (control database)",
            queued_jobs.clone(),
        );
        registry.register("running_jobs", "Jobs this process's worker slots run now", running_jobs.clone());
        registry.register("worker_slots", "Worker slots of this process (--workers)", worker_slots.clone());
        registry.register(
            "job_backlog_limit",
            "Jobs of this environment that may wait at most (--backlog); beyond, 429",
            backlog_limit.clone(),
        );
        registry.register("leader", "1 while this process is the environment's elected leader", leader.clone());
        registry.register(
            "job_takeovers",
            "Jobs this process's slots took over from a worker that died",
            takeovers.clone(),
        );
        Metrics {
            registry,
            requests,
            latency,
            operations,
            branches,
            jobs,
            running_jobs,
            queued_jobs,
            backlog_limit,
            worker_slots,
            leader,
            takeovers,
            events,
            event_lag,
            dead_letters,
            blocked_keys,
            consumed_partitions,
            claim_latency,
        }
    }
}

/// Counts every request and its latency under its route pattern.
pub async fn track(State(state): State<Shared>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().to_string();
    let route =
        req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string()).unwrap_or_else(|| "unmatched".into());
    let response = next.run(req).await;
    let m = &state.metrics;
    m.requests
        .get_or_create(&RequestLabels {
            method: method.clone(),
            route: route.clone(),
            status: response.status().as_u16(),
        })
        .inc();
    m.latency.get_or_create(&RouteLabels { method, route }).observe(started.elapsed().as_secs_f64());
    response
}

/// The exposition: what the control database says now, plus this process's counters.
pub async fn render(state: &Shared) -> ApiResult<String> {
    let m = &state.metrics;
    let control = state.control().await?;
    m.operations.clear();
    m.jobs.clear();
    let mut by_job_status = std::collections::BTreeMap::<String, i64>::new();
    for (kind, status, n) in crate::jobs::queue::counts(&**control).await? {
        m.operations.get_or_create(&OperationLabels { kind, status: status.to_string() }).set(n);
        *by_job_status.entry(status.to_string()).or_default() += n;
    }
    for (status, n) in by_job_status {
        m.jobs.get_or_create(&StatusLabels { status }).set(n);
    }
    m.queued_jobs.set(crate::jobs::queue::queued(&**control, Some(&state.env)).await?);
    let mut by_status = std::collections::BTreeMap::<String, i64>::new();
    for b in crate::branch::records(&control, &state.env, None, None).await? {
        *by_status.entry(b.status).or_default() += 1;
    }
    m.branches.clear();
    for (status, n) in by_status {
        m.branches.get_or_create(&StatusLabels { status }).set(n);
    }
    m.events.clear();
    for c in pgplane_ops::events::admin::counts(&**control, None).await? {
        m.events.get_or_create(&EventLabels { r#type: c.kind, outcome: c.outcome }).set(c.count);
    }
    m.event_lag.clear();
    for l in pgplane_ops::events::admin::lag(&**control, None).await? {
        let labels = PartitionLabels { group: l.consumer, topic: l.topic, partition: l.partition.to_string() };
        m.event_lag.get_or_create(&labels).set(l.lag.unwrap_or(0));
    }
    m.dead_letters.set(pgplane_ops::events::admin::dead_letter_count(&**control).await?);
    m.blocked_keys.set(i64::try_from(pgplane_ops::events::admin::holds(&**control, None).await?.len()).unwrap_or(0));
    drop(control);
    m.consumed_partitions.set(state.consumer_partitions().map(|p| p.len() as i64).unwrap_or(0));
    let gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
    m.running_jobs.set(gauge(state.jobs.running()));
    m.backlog_limit.set(gauge(state.jobs.limits.backlog));
    m.worker_slots.set(gauge(state.jobs.limits.workers));
    m.leader.set(i64::from(state.jobs.is_leader()));
    let takeovers = state.jobs.claims().1;
    let seen = m.takeovers.get();
    if takeovers > seen {
        m.takeovers.inc_by(takeovers - seen);
    }
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &m.registry).map_err(anyhow::Error::from)?;
    Ok(out)
}
