//! Stack runs over HTTP: `GET /api/v1/stacks`, `GET /api/v1/stacks/{run}` and the console
//! pages `/stacks`, `/stacks/{run}`. They read what `pgplane stack run` records in the
//! control database (`crate::stack::record`); nothing here changes anything.

use std::collections::BTreeMap;
use std::fmt::Write;

use axum::extract::{Query, State};
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::console::html::{esc, time, Page, Section};
use super::error::{ApiError, ApiPath, ApiQuery, ApiResult, ErrorBody};
use super::state::Shared;
use crate::stack::record::{self, RunView, StepView};

/// A run of a stack: its status and its steps (empty in lists).
#[derive(Debug, Serialize, ToSchema)]
pub struct StackRun {
    pub id: i64,
    pub stack: String,
    pub env: String,
    /// The stack file (or manifest) it was run from.
    pub file: String,
    /// `running`, `succeeded`, `failed`, `interrupted` (its runner stopped) or `stopped`.
    pub status: String,
    pub host: String,
    pub runner_pid: Option<i32>,
    /// How many times it was run (`--resume` and friends continue a run).
    pub attempts: i32,
    pub error: Option<String>,
    pub started_at: String,
    pub finished_at: Option<String>,
    /// Steps per state.
    pub counts: BTreeMap<String, i64>,
    pub steps: Vec<StackStep>,
}

/// One step of a run.
#[derive(Debug, Serialize, ToSchema)]
pub struct StackStep {
    pub name: String,
    /// `command`, `sql`, `wait` or `service`.
    pub kind: String,
    pub group: Option<String>,
    /// `[{"step", "condition"}]`.
    #[schema(value_type = Vec<Object>)]
    pub needs: serde_json::Value,
    /// `pending`, `running`, `waiting`, `starting`, `started`, `healthy`, `completed`,
    /// `failed`, `skipped` or `stopped`.
    pub state: String,
    /// Waiting: the condition's last value; failed: why; skipped: what it needed.
    pub detail: Option<String>,
    pub exit_code: Option<i32>,
    /// The last lines of the step's log when it failed (secrets redacted).
    pub log_tail: Option<String>,
    pub attempts: i32,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub started_ms: Option<i64>,
    pub finished_ms: Option<i64>,
    /// A service's supervisor (or a running command).
    pub pid: Option<i32>,
    pub host: Option<String>,
    /// Whether a service's process runs (known on the host that runs it; null elsewhere).
    pub alive: Option<bool>,
}

impl From<StepView> for StackStep {
    fn from(s: StepView) -> StackStep {
        StackStep {
            name: s.name,
            kind: s.kind,
            group: s.group,
            needs: s.needs,
            state: s.state,
            detail: s.detail,
            exit_code: s.exit_code,
            log_tail: s.log_tail,
            attempts: s.attempts,
            started_at: s.started_at,
            finished_at: s.finished_at,
            started_ms: s.started_ms,
            finished_ms: s.finished_ms,
            pid: s.pid,
            host: s.host,
            alive: s.alive,
        }
    }
}

impl From<RunView> for StackRun {
    fn from(r: RunView) -> StackRun {
        StackRun {
            id: r.id,
            stack: r.stack,
            env: r.env,
            file: r.file,
            status: r.status,
            host: r.host,
            runner_pid: r.runner_pid,
            attempts: r.attempts,
            error: r.error,
            started_at: r.started_at,
            finished_at: r.finished_at,
            counts: r.counts,
            steps: r.steps.into_iter().map(StackStep::from).collect(),
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StacksQuery {
    /// Only runs of this environment.
    pub env: Option<String>,
    /// Only runs of this stack.
    pub stack: Option<String>,
    /// How many, newest first (default 50, at most 1000).
    pub limit: Option<i64>,
}

pub fn api_routes() -> Router<Shared> {
    Router::new().route("/stacks", get(stacks)).route("/stacks/{run}", get(stack_run))
}

pub fn console_routes() -> Router<Shared> {
    Router::new().route("/stacks", get(stacks_page)).route("/stacks/{run}", get(stack_run_page))
}

#[utoipa::path(get, path = "/api/v1/stacks", tag = "stacks", params(StacksQuery),
    responses((status = 200, body = [StackRun]), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
/// Stack runs, newest first (`pgplane stack run` records them), without their steps.
pub async fn stacks(State(state): State<Shared>, ApiQuery(q): ApiQuery<StacksQuery>) -> ApiResult<Json<Vec<StackRun>>> {
    let limit = q.limit.unwrap_or(50).clamp(1, 1000);
    let control = state.control().await?;
    let runs = record::runs(&control, None, q.env.as_deref(), q.stack.as_deref(), limit).await?;
    Ok(Json(runs.into_iter().map(StackRun::from).collect()))
}

#[utoipa::path(get, path = "/api/v1/stacks/{run}", tag = "stacks",
    params(("run" = i64, Path, description = "Run id")),
    responses((status = 200, body = StackRun), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
/// One run with every step's state, times, waits' last values and failures' log lines.
pub async fn stack_run(State(state): State<Shared>, ApiPath(run): ApiPath<String>) -> ApiResult<Json<StackRun>> {
    Ok(Json(run_by_id(&state, &run).await?.into()))
}

async fn run_by_id(state: &Shared, run: &str) -> ApiResult<RunView> {
    let id: i64 = run.parse().map_err(|_| ApiError::not_found(format!("there is no stack run {run:?}")))?;
    let control = state.control().await?;
    let mut view = record::run_with_steps(&control, id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("there is no stack run {id}")))?;
    view.steps.iter_mut().for_each(StepView::check_alive);
    Ok(view)
}

// ----- console ----------------------------------------------------------------------------

fn state_badge(state: &str) -> String {
    let class = match state {
        "completed" | "healthy" | "started" | "succeeded" => "ok",
        "failed" | "interrupted" => "bad",
        "running" | "waiting" | "starting" => "busy",
        _ => "none",
    };
    format!("<span class=\"badge {class}\" data-status=\"{s}\">{s}</span>", s = esc(state))
}

fn took(started: Option<i64>, finished: Option<i64>) -> String {
    match (started, finished) {
        (Some(a), Some(b)) if b >= a => esc(&crate::wait::human(std::time::Duration::from_millis((b - a) as u64))),
        _ => "<span class=\"muted\">–</span>".into(),
    }
}

async fn stacks_page(State(state): State<Shared>, Query(q): Query<StacksQuery>) -> Response {
    let result = async {
        let q = StacksQuery { limit: Some(q.limit.unwrap_or(100)), ..q };
        let Json(runs) = stacks(State(state.clone()), ApiQuery(q)).await?;
        let mut body = String::from(
            "<p class=\"muted\">Runs of <code>pgplane stack run</code>, newest first.</p>\
             <div class=\"scroll\"><table class=\"stacks\"><thead><tr><th class=\"num\">Run</th><th>Stack</th><th>Environment</th>\
             <th>Status</th><th>Steps</th><th>Started</th><th>Finished</th></tr></thead><tbody>",
        );
        for r in &runs {
            let counts: Vec<String> = r.counts.iter().map(|(k, v)| format!("{v} {}", esc(k))).collect();
            let _ = write!(
                body,
                "<tr id=\"run-{id}\"><td class=\"num\"><a href=\"/stacks/{id}\">{id}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"nowrap\">{}</td><td class=\"nowrap\">{}</td></tr>",
                esc(&r.stack),
                esc(&r.env),
                state_badge(&r.status),
                counts.join(", "),
                time(Some(&r.started_at)),
                time(r.finished_at.as_deref()),
                id = r.id,
            );
        }
        if runs.is_empty() {
            body.push_str("<tr><td colspan=\"7\" class=\"muted\">no stack runs yet</td></tr>");
        }
        body.push_str("</tbody></table></div>");
        Ok::<_, ApiError>(Page::new(Section::Stacks, "Stacks", body))
    }
    .await;
    super::console::respond(&state, result)
}

async fn stack_run_page(
    State(state): State<Shared>,
    axum::extract::Path(run): axum::extract::Path<String>,
) -> Response {
    let result = async {
        let r = run_by_id(&state, &run).await?;
        let mut body = format!(
            "<p>Stack <strong>{}</strong>, environment {}, from <code>{}</code> on {}: {} · started {} · finished {}</p>",
            esc(&r.stack),
            esc(&r.env),
            esc(&r.file),
            esc(&r.host),
            state_badge(&r.status),
            time(Some(&r.started_at)),
            time(r.finished_at.as_deref()),
        );
        if let Some(e) = &r.error {
            let _ = write!(body, "<div class=\"notice bad\"><pre>{}</pre></div>", esc(e));
        }
        body.push_str(
            "<div class=\"scroll\"><table class=\"steps\"><thead><tr><th>Step</th><th>Kind</th><th>Group</th><th>State</th>\
             <th class=\"num\">Took</th><th>Detail</th></tr></thead><tbody>",
        );
        for s in &r.steps {
            let mut detail = s.detail.as_deref().map(esc).unwrap_or_default();
            if let Some(code) = s.exit_code {
                detail = format!("exit code {code}{}{detail}", if detail.is_empty() { "" } else { "; " });
            }
            if let (Some(alive), Some(pid)) = (s.alive, s.pid) {
                detail = format!("pid {pid} {}{}{detail}", if alive { "running" } else { "NOT running" }, if detail.is_empty() { "" } else { "; " });
            }
            if let Some(tail) = &s.log_tail {
                let _ = write!(detail, "<pre class=\"tail\">{}</pre>", esc(tail));
            }
            let _ = write!(
                body,
                "<tr id=\"step-{n}\"><td class=\"mono\">{n}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"wide\">{detail}</td></tr>",
                esc(&s.kind),
                s.group.as_deref().map(esc).unwrap_or_default(),
                state_badge(&s.state),
                took(s.started_ms, s.finished_ms),
                n = esc(&s.name),
            );
        }
        body.push_str("</tbody></table></div>");
        let mut page = Page::new(Section::Stacks, format!("Run {}", r.id), body);
        page.crumbs.push(("/stacks".into(), "Stacks".into()));
        Ok::<_, ApiError>(page)
    }
    .await;
    super::console::respond(&state, result)
}
