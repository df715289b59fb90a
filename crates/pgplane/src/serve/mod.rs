//! `pgplane serve`: the REST API (`/api/v1`), the web console (`/`), health checks and
//! metrics in one process. Handlers are thin front ends over the operations the CLI runs
//! (see `api.rs`); long operations run in the background (`jobs.rs`) and are journaled
//! in the control database.

mod api;
mod auth;
mod coalesce;
mod console;
mod error;
mod events;
mod guard;
mod jobs;
mod metrics;
pub mod openapi;
mod stacks;
mod state;
mod tenants;

use std::future::Future;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use self::auth::{Scope, Tokens};
use self::error::ApiError;
use self::state::Shared;
use crate::cli::ServeArgs;

pub async fn run(home: PathBuf, args: ServeArgs) -> Result<i32> {
    let mut tokens = Tokens::load(args.tokens_file.as_deref(), std::env::var("PGPLANE_TOKENS").ok().as_deref())?;
    // Console sessions are signed with a key every replica derives from the shared secret key.
    tokens.use_session_key(pgplane_ops::secrets::Keyring::load(&home)?.console_session_key());
    if tokens.is_empty() && !args.listen.ip().is_loopback() {
        bail!(
            "refusing to listen on {} without tokens: anyone who can reach it could change your databases; \
             pass --tokens-file FILE or set PGPLANE_TOKENS=admin:TOKEN,read:TOKEN (or listen on 127.0.0.1)",
            args.listen
        );
    }
    // Running operations stop when the grace period is over, not at the signal.
    crate::cancel::take_over_signals();
    let limits = jobs::Limits { workers: usize::from(args.workers), backlog: usize::from(args.backlog) };
    let state = state::AppState::open(
        home,
        &args.manifest.file,
        args.manifest.env.clone(),
        tokens,
        limits,
        args.reconcile_interval,
    )
    .await?;
    if args.consume {
        let consumer = pgplane_ops::events::service::Service::start(pgplane_ops::events::service::Setup {
            control: state.servers.first().clone(),
            manifest: state.manifest.clone(),
            env: state.env.clone(),
            fingerprint: state.jobs.fingerprint.clone(),
            name: format!("serve@{}:{}", pgplane_ops::jobs::worker::hostname(), std::process::id()),
            tick: std::time::Duration::from_secs(1),
        })
        .await?;
        *lock(&state.consumer) = Some(consumer);
    }
    let listener =
        tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("listening on {}", args.listen))?;
    let addr = listener.local_addr()?;
    let hosts = std::sync::Arc::new(guard::Hosts::new(addr, &args.allowed_hosts)?);
    eprintln!(
        "pgplane: serving env {} on http://{addr}/ (API /api/v1, OpenAPI /api/v1/openapi.json, metrics /metrics){}",
        state.env,
        if state.tokens.is_empty() { "; no tokens: loopback only, no sign-in" } else { "" }
    );
    let app = router(state.clone(), hosts);
    // The grace period starts at the signal and covers both the HTTP requests in flight
    // and the running operations; a second signal stops at once.
    let (signaled, mut on_signal) = tokio::sync::watch::channel(None::<tokio::time::Instant>);
    let grace = args.grace;
    let serving = axum::serve(listener, app).with_graceful_shutdown(async move {
        let name = crate::cancel::shutdown_signal().await;
        eprintln!("pgplane: {name} received: finishing requests and running operations (up to {}s)", grace.as_secs());
        signaled.send_replace(Some(tokio::time::Instant::now()));
    });
    let requests_deadline = async {
        let at = loop {
            if let Some(at) = *on_signal.borrow_and_update() {
                break at;
            }
            if on_signal.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        tokio::time::sleep_until(at + grace).await;
        at
    };
    let signal_at = tokio::select! {
        r = serving => {
            r.context("serving")?;
            on_signal.borrow().unwrap_or_else(tokio::time::Instant::now)
        }
        at = requests_deadline => {
            eprintln!("pgplane: requests still running after {}s; closing them", grace.as_secs());
            at
        }
    };
    let consumer = lock(&state.consumer).take();
    if let Some(c) = consumer {
        c.stop().await;
    }
    let left = grace.saturating_sub(signal_at.elapsed());
    let shutdown = state.jobs.shutdown(left);
    tokio::pin!(shutdown);
    let handed_back = tokio::select! {
        ids = &mut shutdown => ids,
        name = crate::cancel::shutdown_signal() => {
            eprintln!("pgplane: second {name}: stopping now");
            state.jobs.cancel_now();
            shutdown.await
        }
    };
    if !handed_back.is_empty() {
        eprintln!(
            "pgplane: handed operations {handed_back:?} back to the queue: another pgplane serve or worker continues them"
        );
    }
    eprintln!("pgplane: stopped");
    Ok(0)
}

pub fn router(state: Shared, hosts: std::sync::Arc<guard::Hosts>) -> Router {
    let api = Router::new()
        .route("/databases", get(api::databases))
        .route("/databases/{db}/tables", get(api::database_tables))
        .route("/databases/{db}/tables/{table}", get(api::database_table))
        .route("/branches", get(api::branches).post(api::create_branch))
        .route("/branches/{id}", get(api::branch).delete(api::delete_branch))
        .route("/branches/{id}/reset", post(api::reset_branch))
        .route("/branches/{id}/tables", get(api::branch_tables))
        .route("/branches/{id}/tables/{table}", get(api::branch_table))
        .route("/branches/{id}/diff", get(api::branch_diff))
        .route("/tenants", get(tenants::tenants).post(tenants::create))
        .route("/tenants/{t}", get(tenants::tenant))
        .route("/tenants/{t}/install", post(tenants::install))
        .route("/plan", post(api::plan))
        .route("/apply", post(api::apply))
        .route("/operations", get(api::operations))
        .route("/operations/{id}", get(api::operation).delete(api::cancel_operation))
        .merge(stacks::api_routes())
        .route("/events", get(events::list).post(events::publish))
        .route("/events/status", get(events::status))
        .route("/events/summary", get(events::summary))
        .route("/events/{seq}/retry", post(events::retry))
        .route("/events/{seq}/skip", post(events::skip))
        .route_layer(middleware::from_fn_with_state(state.clone(), authorize))
        .route("/openapi.json", get(openapi_json))
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed);
    let ready = std::sync::Arc::new(Readiness::new(state.servers.first().clone()));
    Router::new()
        .nest("/api/v1", api)
        .merge(console::routes(state.clone()))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(move || readyz(ready.clone())))
        .route("/metrics", get(metrics_text))
        .layer(middleware::from_fn(catch_panic))
        .layer(middleware::from_fn_with_state(hosts, guard::guard))
        .layer(middleware::from_fn_with_state(state.clone(), metrics::track))
        .with_state(state)
}

/// A handler that panics (a bug) answers 500 in the API's error shape instead of closing
/// the connection; the panic is logged.
async fn catch_panic(req: Request, next: Next) -> Response {
    use futures_util::FutureExt;
    let path = req.uri().path().to_string();
    match std::panic::AssertUnwindSafe(next.run(req)).catch_unwind().await {
        Ok(response) => response,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(path, panic = %what, "a request handler panicked");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error (a bug in pgplane; see its log)",
            )
            .into_response()
        }
    }
}

/// Bearer token check: reads need `read` (or `admin`), changes need `admin`. `POST /plan`
/// changes nothing and needs `read`. Without configured tokens (loopback only) all pass.
async fn authorize(State(state): State<Shared>, req: Request, next: Next) -> Response {
    if state.tokens.is_empty() {
        return next.run(req).await;
    }
    // By route pattern, not by path: `DELETE /branches/plan` is a branch named "plan".
    let plan = req.extensions().get::<axum::extract::MatchedPath>().is_some_and(|p| p.as_str().ends_with("/plan"))
        && req.method() == Method::POST;
    let needed =
        if req.method() == Method::GET || req.method() == Method::HEAD || plan { Scope::Read } else { Scope::Admin };
    // The scheme is case-insensitive (RFC 7235).
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    let Some(presented) = presented else {
        return with_challenge(ApiError::unauthorized("send `Authorization: Bearer TOKEN` (a read or admin token)"));
    };
    match state.tokens.scope_of(presented) {
        None => with_challenge(ApiError::unauthorized("the token is not valid")),
        Some(scope) if scope < needed => ApiError::forbidden(format!(
            "this route changes things and needs an admin token; the token given has scope {}",
            scope.as_str()
        ))
        .into_response(),
        Some(_) => next.run(req).await,
    }
}

fn with_challenge(e: ApiError) -> Response {
    let mut r = e.into_response();
    r.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
    r
}

async fn openapi_json() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], openapi::document()).into_response()
}

/// `/readyz`'s own connection to the control database: never one of the request pool,
/// so a probe never waits behind requests or operations, and one at most, so probes
/// (which need no token) cannot open connections by the hundred.
struct Readiness {
    control: crate::conn::Target,
    conn: tokio::sync::Mutex<Option<tokio_postgres::Client>>,
}

/// A probe answers within this, ready or not.
const READY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

impl Readiness {
    fn new(control: crate::conn::Target) -> Readiness {
        Readiness { control, conn: tokio::sync::Mutex::new(None) }
    }

    async fn check(&self) -> Result<()> {
        let mut conn = self.conn.lock().await;
        if conn.as_ref().is_none_or(|c| c.is_closed()) {
            *conn = Some(self.control.connect_named(Some(crate::control::CONTROL_DB), "pgplane-serve-ready").await?);
        }
        let Some(c) = conn.as_ref() else { bail!("no connection") };
        if let Err(e) = c.simple_query("SELECT 1").await {
            *conn = None;
            return Err(e.into());
        }
        Ok(())
    }
}

/// Ready when the control database answers, within [`READY_TIMEOUT`].
async fn readyz(ready: std::sync::Arc<Readiness>) -> Response {
    match tokio::time::timeout(READY_TIMEOUT, ready.check()).await {
        Ok(Ok(())) => (StatusCode::OK, "ready\n").into_response(),
        Ok(Err(e)) => ApiError::unavailable(format!("the control database does not answer: {e:#}")).into_response(),
        Err(_) => {
            ApiError::unavailable(format!("the control database did not answer within {}s", READY_TIMEOUT.as_secs()))
                .into_response()
        }
    }
}

async fn metrics_text(State(state): State<Shared>) -> Response {
    match metrics::render(&state).await {
        Ok(text) => ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text)
            .into_response(),
        Err(e) => e.into_response(),
    }
}

/// Locks `m`, also after a panic elsewhere held it: for maps whose every change under the
/// lock is one map operation, so nothing can be left half done.
pub fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Starts `work` on a new thread with a single-threaded runtime of its own. Should the
/// runtime not start (it is logged), `work` is dropped unrun: callers learn it from their
/// result channel closing.
pub fn thread_with_runtime<F, Fut>(name: String, work: F) -> Result<std::thread::JoinHandle<()>>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    std::thread::Builder::new()
        .name(name)
        .spawn(move || match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt.block_on(work()),
            Err(e) => tracing::error!(error = %e, "cannot start a runtime for a background thread"),
        })
        .context("starting a thread")
}

/// Runs a request's operation on a thread of its own (with its own runtime): the CLI's
/// operations are written for one task at a time, not for the multi-threaded server.
pub async fn on_thread<T, F, Fut>(work: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<T>>,
{
    // At most a few at a time: each is an OS thread with connections of its own.
    static SLOTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(4);
    let _slot = SLOTS.acquire().await.context("request slots closed")?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    thread_with_runtime("pgplane-request".into(), move || async move {
        let _ = tx.send(work().await);
    })?;
    rx.await.context("the request's thread ended early")?
}
