//! `/api/v1/tenants`: thin front ends over [`crate::tenants`]. Reads open a session on a
//! request thread; changes are queued as durable jobs (202 with the operation), except a
//! simulated install, which computes the plan and changes nothing.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use pgplane_core::tenant as core;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, ApiPath, ApiQuery, ApiResult, Body, ErrorBody};
use super::state::Shared;
use crate::jobs::Job as Operation;
use crate::runner::{self, kind, InstallItem};
use crate::tenants::TenantView;

/// `POST /tenants`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    /// The tenant's name (a-z, 0-9 and _, starting with a letter).
    pub tenant: String,
    /// `MODULE` or `MODULE@VERSION` (default: the newest version).
    pub modules: Vec<String>,
    /// Module parameters, e.g. `{"loadReference": "true"}`.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub parameters: BTreeMap<String, serde_json::Value>,
    /// Labels, e.g. `{"pr": "123"}` (the tenant is a preview).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Time to live, e.g. `72h` (the tenant is a preview, purged when it expires).
    pub ttl: Option<String>,
}

/// `POST /tenants/{t}/install`: the module actions, or them with parameters.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum InstallBody {
    Items(Vec<InstallItem>),
    WithParameters {
        items: Vec<InstallItem>,
        #[schema(value_type = Object)]
        parameters: BTreeMap<String, serde_json::Value>,
    },
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct InstallQuery {
    /// Compute and return the plan; change nothing.
    #[serde(default)]
    pub simulate: bool,
}

/// What a simulated install would do.
#[derive(Debug, Serialize, ToSchema)]
pub struct Simulation {
    pub tenant: String,
    /// The plan, as `pgplane plan --json` has it.
    #[schema(value_type = Object)]
    pub plan: serde_json::Value,
    /// The migrations each module would apply.
    #[schema(value_type = Object)]
    pub pending: serde_json::Value,
    #[schema(value_type = Object)]
    pub versions: serde_json::Value,
    pub notes: Vec<String>,
}

fn parameter_text(p: BTreeMap<String, serde_json::Value>) -> ApiResult<BTreeMap<String, String>> {
    p.into_iter()
        .map(|(k, v)| match v {
            serde_json::Value::String(s) => Ok((k, s)),
            serde_json::Value::Bool(b) => Ok((k, b.to_string())),
            other => Err(ApiError::invalid(format!("parameter {k}: {other} is not true or false"))),
        })
        .collect()
}

/// The request checked against the manifest before anything is queued (what depends on
/// the tenant's state is the job's to check).
fn check(state: &Shared, change: &core::Change) -> ApiResult<()> {
    Ok(crate::tenants::precheck(&state.manifest, change)?)
}

fn accepted(op: Operation) -> Response {
    let id = op.id;
    (StatusCode::ACCEPTED, [(header::LOCATION, format!("/api/v1/operations/{id}"))], Json(op)).into_response()
}

async fn queue(state: &Shared, kind: &str, tenant: &str, req: &impl Serialize) -> ApiResult<Response> {
    let new = runner::new_job(kind, &state.env, Some(tenant), req)?;
    let mut control = state.control().await?;
    Ok(accepted(state.jobs.submit(&mut control, new, None).await?))
}

async fn all(state: &Shared) -> ApiResult<Vec<TenantView>> {
    let (home, file, env) = (state.home.clone(), state.manifest.file.clone(), state.env_flag.clone());
    Ok(super::on_thread(move || async move {
        let mut ctx = crate::ops::Ctx::new(home);
        let args = crate::ops::ManifestArgs { file, env };
        Ok(crate::tenants::list(&mut ctx, &args).await?)
    })
    .await?)
}

#[utoipa::path(get, path = "/api/v1/tenants", tag = "tenants",
    responses((status = 200, body = [TenantView]), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
/// Every tenant of the environment (the manifest's and the registered ones) with its
/// modules, versions, status, labels, expiry and last job.
pub async fn tenants(State(state): State<Shared>) -> ApiResult<Json<Vec<TenantView>>> {
    Ok(Json(all(&state).await?))
}

/// One tenant, for the console too.
pub async fn view(state: &Shared, t: &str) -> ApiResult<TenantView> {
    all(state)
        .await?
        .into_iter()
        .find(|v| v.name == t)
        .ok_or_else(|| ApiError::not_found(format!("there is no tenant {t:?}")))
}

#[utoipa::path(get, path = "/api/v1/tenants/{t}", tag = "tenants",
    params(("t" = String, Path, description = "Tenant name")),
    responses((status = 200, body = TenantView), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
/// One tenant.
pub async fn tenant(State(state): State<Shared>, ApiPath(t): ApiPath<String>) -> ApiResult<Json<TenantView>> {
    Ok(Json(view(&state, &t).await?))
}

#[utoipa::path(post, path = "/api/v1/tenants", tag = "tenants", request_body = CreateTenant,
    responses((status = 202, body = Operation, description = "Queued: registers the tenant, provisions and migrates its modules"),
        (status = 403, body = ErrorBody), (status = 409, body = ErrorBody, description = "The manifest lists the tenant"),
        (status = 415, body = ErrorBody, description = "Not `Content-Type: application/json`"),
        (status = 422, body = ErrorBody, description = "An unknown module, version or parameter, a bad name or TTL"),
        (status = 429, body = ErrorBody, description = "The backlog is full (`--backlog`); retry after `Retry-After` seconds")),
    security(("bearer" = [])))]
/// Registers a tenant (or adds modules to it) and provisions them, in the background.
pub async fn create(State(state): State<Shared>, Body(body): Body<CreateTenant>) -> ApiResult<Response> {
    let req = runner::TenantAddRequest {
        tenant: body.tenant,
        modules: body.modules,
        parameters: parameter_text(body.parameters)?,
        labels: body.labels,
        ttl: body.ttl,
    };
    let change = req.change().map_err(ApiError::from)?;
    check(&state, &change)?;
    queue(&state, kind::TENANT_ADD, &req.tenant, &req).await
}

#[utoipa::path(post, path = "/api/v1/tenants/{t}/install", tag = "tenants",
    params(("t" = String, Path, description = "Tenant name"), InstallQuery), request_body = InstallBody,
    responses((status = 200, body = Simulation, description = "`?simulate=true`: the plan; nothing changed"),
        (status = 202, body = Operation, description = "Queued"),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody, description = "Simulated: no such tenant or module"),
        (status = 409, body = ErrorBody), (status = 415, body = ErrorBody, description = "Not `Content-Type: application/json`"),
        (status = 422, body = ErrorBody), (status = 429, body = ErrorBody, description = "The backlog is full (`--backlog`); retry after `Retry-After` seconds")),
    security(("bearer" = [])))]
/// Enables, upgrades, disables or purges modules of a tenant in one plan (`enable` adds a
/// module the tenant does not have). With `?simulate=true`, answers the plan and the
/// migrations that would run, and changes nothing.
pub async fn install(
    State(state): State<Shared>,
    ApiPath(t): ApiPath<String>,
    ApiQuery(q): ApiQuery<InstallQuery>,
    bytes: Bytes,
) -> ApiResult<Response> {
    let body: InstallBody = serde_json::from_slice(&bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => ApiError::invalid(format!(
            "invalid request body: {e}; send [{{\"module\": \"users\", \"version\": \"2.0\", \"action\": \
             \"enable|upgrade|disable|purge\"}}]"
        )),
        _ => ApiError::bad_request(format!("malformed JSON: {e}")),
    })?;
    let (items, parameters) = match body {
        InstallBody::Items(items) => (items, BTreeMap::new()),
        InstallBody::WithParameters { items, parameters } => (items, parameters),
    };
    let req = runner::TenantInstallRequest { tenant: t.clone(), items, parameters: parameter_text(parameters)? };
    let change = req.change()?;
    check(&state, &change)?;
    if !q.simulate {
        return queue(&state, kind::TENANT_INSTALL, &t, &req).await;
    }
    let (home, file, env) = (state.home.clone(), state.manifest.file.clone(), state.env_flag.clone());
    let sim = super::on_thread(move || async move {
        let mut ctx = crate::ops::Ctx::new(home);
        let args = crate::ops::ManifestArgs { file, env };
        let mut yes = |_: &pgplane_core::plan::Plan| true;
        let hooks = crate::tenants::Hooks {
            approve: &mut yes,
            lock_timeout: std::time::Duration::from_secs(30),
            dry_run: true,
            progress: None,
            kind: kind::TENANT_INSTALL,
        };
        let r = crate::tenants::change(&mut ctx, &args, &change, hooks, &crate::events::Quiet).await?;
        Ok(Simulation {
            tenant: r.tenant.clone(),
            plan: pgplane_core::render::plan_json(&r.plan),
            pending: serde_json::to_value(&r.pending)?,
            versions: serde_json::to_value(&r.versions)?,
            notes: r.notes,
        })
    })
    .await?;
    Ok(Json(sim).into_response())
}
