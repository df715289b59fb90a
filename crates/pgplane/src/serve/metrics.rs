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

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram>,
    operations: Family<OperationLabels, Gauge>,
    branches: Family<StatusLabels, Gauge>,
    running_jobs: Gauge,
    queued_jobs: Gauge,
    backlog_limit: Gauge,
    jobs_limit: Gauge,
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
        let running_jobs = Gauge::default();
        let queued_jobs = Gauge::default();
        let backlog_limit = Gauge::default();
        let jobs_limit = Gauge::default();
        registry.register("http_requests", "HTTP requests by method, route and status", requests.clone());
        registry.register("http_request_duration_seconds", "HTTP request latency by method and route", latency.clone());
        registry.register(
            "operations",
            "Journaled operations by kind and status (control database)",
            operations.clone(),
        );
        registry.register("branches", "Branch databases of this environment by status", branches.clone());
        registry.register("running_operations", "Operations this process is running now", running_jobs.clone());
        registry.register(
            "queued_operations",
            "Operations this process accepted that wait for a slot (--jobs)",
            queued_jobs.clone(),
        );
        registry.register(
            "operation_backlog_limit",
            "Operations accepted and not finished at most (--backlog); beyond, 429",
            backlog_limit.clone(),
        );
        registry.register("operation_slots", "Operations that run at once at most (--jobs)", jobs_limit.clone());
        Metrics {
            registry,
            requests,
            latency,
            operations,
            branches,
            running_jobs,
            queued_jobs,
            backlog_limit,
            jobs_limit,
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
    for (kind, status, n) in crate::jobs::queue::counts(&**control).await? {
        m.operations.get_or_create(&OperationLabels { kind, status: status.to_string() }).set(n);
    }
    let mut by_status = std::collections::BTreeMap::<String, i64>::new();
    for b in crate::branch::records(&control, &state.env, None, None).await? {
        *by_status.entry(b.status).or_default() += 1;
    }
    m.branches.clear();
    for (status, n) in by_status {
        m.branches.get_or_create(&StatusLabels { status }).set(n);
    }
    drop(control);
    let gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
    m.running_jobs.set(gauge(state.jobs.running()));
    m.queued_jobs.set(gauge(state.jobs.queued_count()));
    m.backlog_limit.set(gauge(state.jobs.limits().backlog));
    m.jobs_limit.set(gauge(state.jobs.limits().running));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &m.registry).map_err(anyhow::Error::from)?;
    Ok(out)
}
