//! Provisioning events over HTTP: publish to the embedded queue (`POST /api/v1/events`),
//! read what became of them, read status events (`GET /api/v1/events/status?after=ID`),
//! retry or skip a blocked event; and the console's events page. Thin front ends over
//! [`crate::events`].

use std::fmt::Write;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use pgplane_core::event::StatusEvent;
use pgplane_ops::events::admin::{self, Steered};
use pgplane_ops::events::log::{self, Published};
use pgplane_ops::events::record::EventRow;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use super::console::html::{badge, esc, opt, time, Page, Section};
use super::error::{ApiError, ApiPath, ApiQuery, ApiResult, Body, ErrorBody};
use super::state::Shared;

/// `POST /events`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishEvent {
    /// The event type: `tenant.created`, `candidate.opened`, `module.requested`, … (README).
    #[serde(rename = "type")]
    pub kind: String,
    /// The ordering key (a tenant, a candidate): events of one key take effect in order.
    pub key: String,
    /// The idempotency key (default: a new UUID); the same id twice does nothing the second time.
    pub id: Option<String>,
    /// The envelope's subject (default: the key).
    pub subject: Option<String>,
    /// The event's `data` (its schema depends on the type).
    #[schema(value_type = Object)]
    pub data: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// How many, newest first (default 50, at most 1000).
    pub limit: Option<i64>,
    /// Only events of this key.
    pub key: Option<String>,
    /// Only this outcome: queued, succeeded, duplicate, skipped, dead_lettered, blocked, cancelled.
    pub outcome: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StatusQuery {
    /// Status events after this outbox id (default 0: from the first).
    pub after: Option<i64>,
    /// How many (default 100, at most 1000).
    pub limit: Option<i64>,
}

fn no_nul(s: &str) -> ApiResult<()> {
    if s.contains('\0') {
        return Err(ApiError::invalid("a value holds a NUL character"));
    }
    Ok(())
}

#[utoipa::path(post, path = "/api/v1/events", tag = "events", request_body = PublishEvent,
    responses((status = 202, body = Published, description = "In the queue; `GET /api/v1/events` shows what became of it"),
        (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
/// Publishes an event to the embedded queue (or to the Kafka topic when the manifest has
/// `events.kafka`). A consumer (`serve --consume`, `pgplane consume`) turns it into a job.
pub async fn publish(State(state): State<Shared>, Body(body): Body<PublishEvent>) -> ApiResult<Response> {
    for s in [Some(&body.kind), Some(&body.key), body.id.as_ref(), body.subject.as_ref()].into_iter().flatten() {
        no_nul(s)?;
    }
    let data = body.data.unwrap_or_else(|| serde_json::json!({}));
    if !data.is_object() {
        return Err(ApiError::invalid("`data` must be a JSON object"));
    }
    let p = log::Publish {
        id: body.id,
        kind: body.kind,
        key: body.key,
        subject: body.subject,
        source: Some("pgplane-api".into()),
        data,
    };
    let published = match &state.manifest.events.kafka {
        Some(k) => {
            let (id, envelope) = p.envelope();
            pgplane_core::event::parse(envelope.to_string().as_bytes(), None)
                .map_err(|r| ApiError::invalid(r.reason))?;
            let producer = pgplane_ops::events::kafka::producer(k)?;
            let payload = serde_json::to_vec(&envelope).map_err(anyhow::Error::from)?;
            let (partition, offset) =
                pgplane_ops::events::kafka::send(&producer, &k.topic, Some(&p.key), &payload, &[]).await?;
            Published { id, partition, offset }
        }
        None => {
            let mut c = state.control().await?;
            let client: &mut tokio_postgres::Client = &mut c;
            log::publish(client, &state.env, &p).await.map_err(|e| ApiError::invalid(format!("{e:#}")))?
        }
    };
    Ok((StatusCode::ACCEPTED, [(header::CONTENT_TYPE, "application/json")], Json(published)).into_response())
}

#[utoipa::path(get, path = "/api/v1/events", tag = "events", params(EventsQuery),
    responses((status = 200, body = [EventRow])), security(("bearer" = [])))]
/// Consumed events, newest first, with their outcome and job.
pub async fn list(State(state): State<Shared>, ApiQuery(q): ApiQuery<EventsQuery>) -> ApiResult<Json<Vec<EventRow>>> {
    let c = state.control().await?;
    let f = admin::Filter {
        stream: Some(admin::Stream::of(&state.manifest, &state.env)),
        key: q.key,
        outcome: q.outcome,
        limit: q.limit.unwrap_or(50).clamp(1, 1000),
    };
    Ok(Json(admin::list(&**c, &f).await?))
}

#[utoipa::path(get, path = "/api/v1/events/status", tag = "events", params(StatusQuery),
    responses((status = 200, body = [StatusEvent], description = "Oldest first; pass the last id's number as `after` to read on")),
    security(("bearer" = [])))]
/// Status events (`{id, type: "<type>.succeeded|failed", subject, data: {job, error, …}}`)
/// after outbox id `after`: each event's outcome, at least once, with a stable id.
pub async fn status(
    State(state): State<Shared>,
    ApiQuery(q): ApiQuery<StatusQuery>,
) -> ApiResult<Json<Vec<StatusEvent>>> {
    let c = state.control().await?;
    let after = q.after.unwrap_or(0);
    let stream = admin::Stream::of(&state.manifest, &state.env);
    Ok(Json(pgplane_ops::events::outbox::status_after(&**c, Some(&stream), after, q.limit.unwrap_or(100)).await?))
}

#[utoipa::path(get, path = "/api/v1/events/summary", tag = "events",
    responses((status = 200, body = admin::Status)), security(("bearer" = [])))]
/// Recent events, lag per partition, blocked keys, counts and dead letters (`pgplane events status`).
pub async fn summary(State(state): State<Shared>) -> ApiResult<Json<admin::Status>> {
    let c = state.control().await?;
    let stream = admin::Stream::of(&state.manifest, &state.env);
    Ok(Json(admin::status(&**c, Some(&stream), 50).await?))
}

fn seq_of(s: &str) -> ApiResult<i64> {
    s.parse().map_err(|_| ApiError::not_found(format!("there is no event {s:?}")))
}

#[utoipa::path(post, path = "/api/v1/events/{seq}/retry", tag = "events",
    params(("seq" = i64, Path, description = "The event's number")),
    responses((status = 200, body = Steered), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "Not blocked, or never a job")),
    security(("bearer" = [])))]
/// Runs a blocked event's job again (`pgplane events retry`).
pub async fn retry(State(state): State<Shared>, ApiPath(seq): ApiPath<String>) -> ApiResult<Json<Steered>> {
    let seq = seq_of(&seq)?;
    let mut c = state.control().await?;
    let client: &mut tokio_postgres::Client = &mut c;
    Ok(Json(admin::retry(client, seq).await?))
}

#[utoipa::path(post, path = "/api/v1/events/{seq}/skip", tag = "events",
    params(("seq" = i64, Path, description = "The event's number")),
    responses((status = 200, body = Steered), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
/// Gives up a blocked event; its key's later events go on (`pgplane events skip`).
pub async fn skip(State(state): State<Shared>, ApiPath(seq): ApiPath<String>) -> ApiResult<Json<Steered>> {
    let seq = seq_of(&seq)?;
    let mut c = state.control().await?;
    let client: &mut tokio_postgres::Client = &mut c;
    Ok(Json(admin::skip(client, seq).await?))
}

// ----- console ------------------------------------------------------------------------

pub async fn page(State(state): State<Shared>) -> Response {
    super::console::respond(&state, events_page(&state).await)
}

async fn events_page(state: &Shared) -> ApiResult<Page> {
    let Json(s) = summary(State(state.clone())).await?;
    let mut body = String::new();
    let consuming = state.consumer_partitions();
    let _ = write!(
        body,
        "<p class=\"muted\">Events consumed from {}, newest first. This process {}.</p>",
        if state.manifest.events.kafka.is_some() { "Kafka" } else { "the embedded queue" },
        match &consuming {
            None => "does not consume (start it with --consume)".to_string(),
            Some(p) if p.is_empty() => "consumes, holding no partition now".to_string(),
            Some(p) => format!("consumes partitions {}", esc(&format!("{p:?}"))),
        }
    );
    if !s.holds.is_empty() {
        body.push_str("<h2>Blocked keys</h2><div class=\"scroll\"><table><thead><tr><th>Key</th><th class=\"num\">Event</th><th class=\"num\">Job</th><th class=\"num\">Waiting</th><th>Since</th><th>Reason</th></tr></thead><tbody>");
        for h in &s.holds {
            let _ = write!(
                body,
                "<tr><td class=\"mono\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"nowrap\">{}</td><td class=\"wide\"><span class=\"error-text\">{}</span></td></tr>",
                esc(&h.key),
                h.event,
                opt(h.job.map(|j| j.to_string()).as_deref()),
                h.waiting,
                time(Some(&h.since)),
                esc(h.reason.as_deref().unwrap_or("")),
            );
        }
        body.push_str("</tbody></table></div><p class=\"muted\">Release a key with <code>pgplane events retry SEQ</code> or <code>pgplane events skip SEQ</code>.</p>");
    }
    body.push_str("<h2>Recent events</h2><div class=\"scroll\"><table class=\"events\"><thead><tr><th class=\"num\">#</th><th>Type</th><th>Key</th><th>Outcome</th><th>Job</th><th>Source</th><th>Received</th><th>Reason</th></tr></thead><tbody>");
    for e in &s.recent {
        let job = match e.job {
            Some(j) => format!(
                "<a href=\"/operations#op-{j}\">{j}</a> {}",
                e.job_status.as_deref().map(badge).unwrap_or_default()
            ),
            None => opt(None),
        };
        let _ = write!(
            body,
            "<tr id=\"event-{seq}\"><td class=\"num\">{seq}</td><td class=\"mono\">{}</td><td class=\"mono\">{}</td><td>{}</td><td>{job}</td><td class=\"mono nowrap\">{}</td><td class=\"nowrap\">{}</td><td class=\"wide\">{}</td></tr>",
            opt(e.kind.as_deref()),
            opt(e.key.as_deref()),
            badge(&e.outcome),
            esc(&format!("{}:{}@{}", e.topic, e.partition, e.offset)),
            time(Some(&e.received_at)),
            esc(e.reason.as_deref().unwrap_or("")),
            seq = e.seq,
        );
    }
    if s.recent.is_empty() {
        body.push_str("<tr><td colspan=\"8\" class=\"muted\">no events yet</td></tr>");
    }
    body.push_str("</tbody></table></div>");
    if !s.lag.is_empty() {
        body.push_str("<h2>Lag</h2><div class=\"scroll\"><table><thead><tr><th>Group</th><th>Topic</th><th class=\"num\">Partition</th><th class=\"num\">Next offset</th><th class=\"num\">End</th><th class=\"num\">Lag</th></tr></thead><tbody>");
        for l in &s.lag {
            let _ = write!(
                body,
                "<tr><td class=\"mono\">{}</td><td class=\"mono\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
                esc(&l.consumer),
                esc(&l.topic),
                l.partition,
                l.next_offset,
                opt(l.end.map(|e| e.to_string()).as_deref()),
                opt(l.lag.map(|e| e.to_string()).as_deref()),
            );
        }
        body.push_str("</tbody></table></div>");
    }
    Ok(Page::new(Section::Events, "Events", body))
}
