//! REST handlers under `/api/v1`. Each is a thin front end over the same operations the
//! CLI runs; reads use pooled connections, long operations start a background job and
//! answer 202 with the journaled operation.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use pgplane_core::model::{ObjectKind, Purpose};
use pgplane_core::plan::PlanOptions;
use pgplane_core::schema::{SchemaDiff, TableDetail, TableSummary};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, ApiPath, ApiQuery, ApiResult, Body, ErrorBody, RawBody};
use super::jobs::Outcome;
use super::state::Shared;
use crate::branch::{BranchRequest, BranchView, Branches, DeployOptions};
use crate::control::{self, Operation};

/// A database on one of the manifest's servers, and what pgplane knows of it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DatabaseInfo {
    pub name: String,
    pub server: String,
    pub owner: String,
    pub size_bytes: i64,
    /// The database's comment.
    pub description: Option<String>,
    /// `module`, `tenant`, `branch`, `control` or `unmanaged`.
    pub kind: String,
    pub env: Option<String>,
    pub module: Option<String>,
    pub tenant: Option<String>,
    /// The branch id, for branch databases.
    pub branch: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TablesQuery {
    /// Only this schema.
    pub schema: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct BranchesQuery {
    /// Only branches of this template.
    pub template: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct OperationsQuery {
    /// How many, newest first (default 50, at most 1000).
    pub limit: Option<i64>,
}

/// `POST /branches`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBranch {
    /// The branch id, e.g. a merge request (`MR-42`) or a git branch (`feature/x`).
    pub id: String,
    /// A template of the manifest.
    pub template: String,
    /// Migration sources (SQL folders or changelogs) applied in order after the copy,
    /// relative to the manifest's folder.
    pub sources: Option<Vec<String>>,
    pub labels: Option<BTreeMap<String, String>>,
    /// Time to live, e.g. `72h`; defaults to `branches.ttl`.
    pub ttl: Option<String>,
    /// Changeset contexts; default: the template's.
    pub contexts: Option<Vec<String>>,
}

/// `POST /branches/{id}/reset` (every field optional: the branch keeps what it has).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetBranch {
    pub sources: Option<Vec<String>>,
    pub labels: Option<BTreeMap<String, String>>,
    pub ttl: Option<String>,
    pub contexts: Option<Vec<String>>,
}

/// `POST /plan` and `POST /apply` (every field optional).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangeRequest {
    /// Drop managed objects that left the manifest.
    #[serde(default)]
    pub prune: bool,
    /// Take over existing unmanaged objects the manifest names.
    #[serde(default)]
    pub adopt: bool,
    /// Plan only: read every database's contents instead of apply's cache.
    #[serde(default)]
    pub deep: bool,
    /// Apply only: do not run the modules' migrations after provisioning.
    #[serde(default)]
    pub skip_migrations: bool,
}

/// An optional JSON body: empty means the defaults.
fn optional_body<T: DeserializeOwned + Default>(bytes: &Bytes) -> ApiResult<T> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => ApiError::invalid(format!("invalid request body: {e}")),
        _ => ApiError::bad_request(format!("malformed JSON: {e}")),
    })
}

// ----- databases ----------------------------------------------------------------------

#[utoipa::path(get, path = "/api/v1/databases", tag = "databases",
    responses((status = 200, body = [DatabaseInfo]), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
/// Every database of the manifest's servers, with what pgplane manages it as.
pub async fn databases(State(state): State<Shared>) -> ApiResult<Json<Vec<DatabaseInfo>>> {
    let control = state.control().await?;
    let records = control::read_records(&control).await?;
    let branches: HashMap<(String, String), (String, String)> = control
        .query("SELECT server, database, id, env FROM pgplane.branches", &[])
        .await?
        .iter()
        .map(|r| ((r.get(0), r.get(1)), (r.get(2), r.get(3))))
        .collect();
    let mut out = Vec::new();
    for target in &state.servers.list {
        let admin = state.client(&target.name, None).await?;
        let rows = admin
            .query(
                "SELECT d.datname, pg_get_userbyid(d.datdba), pg_database_size(d.oid), shobj_description(d.oid, 'pg_database')
                   FROM pg_database d WHERE d.datallowconn AND NOT d.datistemplate ORDER BY d.datname",
                &[],
            )
            .await?;
        for r in rows {
            let name: String = r.get(0);
            // NULL: dropped while we read (branches come and go).
            let Some(size_bytes) = r.get::<_, Option<i64>>(2) else { continue };
            let mut info = DatabaseInfo {
                server: target.name.clone(),
                owner: r.get(1),
                size_bytes,
                description: r.get(3),
                kind: "unmanaged".into(),
                env: None,
                module: None,
                tenant: None,
                branch: None,
                name,
            };
            if let Some(rec) = records.iter().find(|rec| {
                rec.object.kind == ObjectKind::Database
                    && rec.object.server == target.name
                    && rec.object.name == info.name
            }) {
                info.kind = if rec.origin.purpose == Purpose::TenantDatabase { "tenant" } else { "module" }.into();
                info.env = Some(rec.origin.env.clone());
                info.module = Some(rec.origin.module.clone()).filter(|m| !m.is_empty());
                info.tenant = rec.origin.tenant.clone();
            } else if let Some((id, env)) = branches.get(&(target.name.clone(), info.name.clone())) {
                info.kind = "branch".into();
                info.branch = Some(id.clone());
                info.env = Some(env.clone());
            } else if target.name == state.servers.first().name && info.name == crate::control::CONTROL_DB {
                info.kind = "control".into();
            }
            out.push(info);
        }
    }
    Ok(Json(out))
}

#[utoipa::path(get, path = "/api/v1/databases/{db}/tables", tag = "databases",
    params(("db" = String, Path, description = "Database name"), TablesQuery),
    responses((status = 200, body = [TableSummary]), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
/// Tables and views of a database, sorted by schema and name (one catalog query).
pub async fn database_tables(
    State(state): State<Shared>,
    ApiPath(db): ApiPath<String>,
    ApiQuery(q): ApiQuery<TablesQuery>,
) -> ApiResult<Response> {
    tables_response(&state, format!("db:{db}"), q.schema.as_deref(), state.database(&db)).await
}

#[utoipa::path(get, path = "/api/v1/databases/{db}/tables/{table}", tag = "databases",
    params(("db" = String, Path, description = "Database name"),
        ("table" = String, Path, description = "`schema.name`, or a bare name (`public` first)")),
    responses((status = 200, body = TableDetail), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
/// A table's or view's structure (as `pgplane schema describe --json`).
pub async fn database_table(
    State(state): State<Shared>,
    ApiPath((db, table)): ApiPath<(String, String)>,
) -> ApiResult<Json<TableDetail>> {
    let client = state.database(&db).await?;
    describe(&client, &table, &db).await
}

async fn describe(client: &tokio_postgres::Client, table: &str, place: &str) -> ApiResult<Json<TableDetail>> {
    if table.contains('\0') {
        return Err(ApiError::not_found(format!("there is no table {table:?} in {place}")));
    }
    match crate::schema::describe(client, table).await {
        Ok(Some(t)) => Ok(Json(t)),
        Ok(None) => Err(ApiError::not_found(format!("there is no table or view {table:?} in {place}"))),
        Err(e) if e.downcast_ref::<pgplane_core::schema::Ambiguous>().is_some() => {
            Err(ApiError::invalid(format!("{e:#}")))
        }
        Err(e) => Err(e.into()),
    }
}

/// The tables query, prepared once per pooled connection (the hot path of portals).
/// Concurrent requests for the same list share one query that starts after they arrived
/// (see `coalesce.rs`), and the JSON is built once for all of them.
async fn tables_response(
    state: &Shared,
    place: String,
    schema: Option<&str>,
    client: impl Future<Output = ApiResult<deadpool_postgres::Object>>,
) -> ApiResult<Response> {
    if schema.is_some_and(|s| s.contains('\0')) {
        return Err(ApiError::invalid("schema contains a NUL character"));
    }
    let key = format!("{place:?} {schema:?}");
    let body = state
        .tables
        .run(key, || async {
            let client = client.await?;
            let statement = client.prepare_cached(crate::schema::TABLES_SQL).await?;
            let rows = client.query(&statement, &[&schema]).await?;
            let tables: Vec<TableSummary> = rows.iter().map(crate::schema::table_summary).collect();
            Ok(Bytes::from(serde_json::to_vec(&tables).map_err(anyhow::Error::from)?))
        })
        .await?;
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

// ----- branches -----------------------------------------------------------------------

/// A branch of the serving environment, with a finished branch whose database is gone
/// shown as FAILED (as `pgplane branch show` does).
pub(super) async fn branch_view(state: &Shared, id: &str) -> ApiResult<BranchView> {
    if id.contains('\0') {
        return Err(ApiError::not_found(format!("there is no branch {id:?}")));
    }
    let control = state.control().await?;
    let Some(mut v) = crate::branch::records(&control, &state.env, Some(id), None).await?.pop() else {
        // Just accepted (202), its job not yet holding the branch's lock: RUNNING.
        if let Some(v) = being_created(state, id) {
            return Ok(v);
        }
        // As `branch show`: a database with the branch's name but no record is UNKNOWN.
        for t in &state.manifest.templates {
            let (Ok(database), Some(module)) = (
                pgplane_core::branch::database_name(&state.manifest.branches, &state.env, &t.name, id),
                state.manifest.module(&t.module),
            ) else {
                continue;
            };
            let admin = state.client(&module.server, None).await?;
            if crate::branch::database_exists(&admin, &database).await? {
                return Ok(crate::branch::unknown(id, database, &t.name, &module.server));
            }
        }
        return Err(ApiError::not_found(format!("there is no branch {id:?} in environment {}", state.env)));
    };
    check_database(state, &mut v).await?;
    Ok(v)
}

/// The branch `id` as accepted by `POST /branches`, until its job ends (the job's own
/// record shows once it claimed the branch).
fn being_created(state: &Shared, id: &str) -> Option<BranchView> {
    let key = pgplane_core::branch::sanitize(id).ok()?;
    state.creating().get(&key)?.as_ref().filter(|v| v.id == id).cloned()
}

/// 409 while the branch's creation has been accepted and its job runs.
fn not_being_created(state: &Shared, id: &str) -> ApiResult<()> {
    match being_created(state, id) {
        Some(v) => Err(ApiError::conflict(format!(
            "branch {id:?} is being created{}; try again when it ends",
            v.operation_id.map(|op| format!(" (GET /api/v1/operations/{op})")).unwrap_or_default()
        ))),
        None => Ok(()),
    }
}

async fn check_database(state: &Shared, v: &mut BranchView) -> ApiResult<()> {
    if v.status == "SUCCESS" {
        let admin = state.client(&v.server, None).await?;
        if !crate::branch::database_exists(&admin, &v.database).await? {
            crate::branch::mark_missing(v);
        }
    }
    Ok(())
}

#[utoipa::path(get, path = "/api/v1/branches", tag = "branches", params(BranchesQuery),
    responses((status = 200, body = [BranchView]), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
/// Branches of the serving environment (as `pgplane branch list --json`).
pub async fn branches(
    State(state): State<Shared>,
    ApiQuery(q): ApiQuery<BranchesQuery>,
) -> ApiResult<Json<Vec<BranchView>>> {
    let control = state.control().await?;
    let mut list = crate::branch::records(&control, &state.env, None, q.template.as_deref()).await?;
    for v in &mut list {
        check_database(&state, v).await?;
    }
    // Accepted, their jobs not yet holding the branch's lock (as `GET /branches/{id}`):
    // after the recorded ones, which keep the control database's order.
    let accepted: Vec<BranchView> = state
        .creating()
        .values()
        .flatten()
        .filter(|v| q.template.as_deref().is_none_or(|t| v.template == t) && !list.iter().any(|b| b.id == v.id))
        .cloned()
        .collect();
    list.extend(accepted);
    Ok(Json(list))
}

#[utoipa::path(get, path = "/api/v1/branches/{id}", tag = "branches",
    params(("id" = String, Path, description = "Branch id")),
    responses((status = 200, body = BranchView), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
/// One branch (as `pgplane branch show --json`); RUNNING from the moment `POST /branches`
/// accepted it.
pub async fn branch(State(state): State<Shared>, ApiPath(id): ApiPath<String>) -> ApiResult<Json<BranchView>> {
    Ok(Json(branch_view(&state, &id).await?))
}

#[utoipa::path(post, path = "/api/v1/branches", tag = "branches", request_body = CreateBranch,
    responses((status = 202, body = Operation, description = "Started; poll the operation or the branch"),
        (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
/// Stamps a branch database from a template and deploys the sources, in the background.
pub async fn create_branch(State(state): State<Shared>, Body(body): Body<CreateBranch>) -> ApiResult<Response> {
    no_nul(
        [&body.id, &body.template]
            .into_iter()
            .chain(body.ttl.iter())
            .chain(body.sources.iter().flatten())
            .chain(body.contexts.iter().flatten())
            .chain(body.labels.iter().flat_map(|l| l.iter().flat_map(|(k, v)| [k, v]))),
    )?;
    let key = pgplane_core::branch::sanitize(&body.id).map_err(ApiError::invalid)?;
    if state.manifest.template(&body.template).is_none() {
        let known: Vec<&str> = state.manifest.templates.iter().map(|t| t.name.as_str()).collect();
        return Err(ApiError::invalid(format!(
            "template {:?} is not in the manifest (templates: {})",
            body.template,
            if known.is_empty() { "none".into() } else { known.join(", ") }
        )));
    }
    let req = BranchRequest {
        id: body.id.clone(),
        template: Some(body.template),
        sources: body.sources.as_deref().map(|s| resolve_sources(&state.base, s)).transpose()?,
        contexts: body.contexts.unwrap_or_default(),
        labels: Some(body.labels.unwrap_or_default()),
        ttl: body.ttl.as_deref().map(parse_ttl).transpose()?,
    };
    let view = accepted_view(&state, &req)?;
    // From here on the id is released whenever this guard goes: on an error below, or
    // when the job that takes it over ends.
    let creating = Creating::reserve(&state, key).map_err(|other| {
        ApiError::conflict(format!(
            "branch {:?} is being created (see GET /api/v1/operations)",
            other.unwrap_or(body.id.clone())
        ))
    })?;
    let control = state.control().await?;
    if let Some(b) = crate::branch::records(&control, &state.env, Some(&body.id), None).await?.pop() {
        return Err(ApiError::conflict(format!(
            "branch {:?} already exists (database {}, status {}); POST /api/v1/branches/{}/reset deploys it again",
            b.id, b.database, b.status, b.id
        )));
    }
    creating.show(view);
    start_deploy(&state, req, Some(Arc::new(creating))).await
}

#[utoipa::path(post, path = "/api/v1/branches/{id}/reset", tag = "branches",
    params(("id" = String, Path, description = "Branch id")), request_body(content = Option<ResetBranch>, description = "Optional"),
    responses((status = 202, body = Operation), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "The branch is being created"), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
/// Stamps the branch again from its template and redeploys, in the background.
pub async fn reset_branch(
    State(state): State<Shared>,
    ApiPath(id): ApiPath<String>,
    bytes: Bytes,
) -> ApiResult<Response> {
    let body: ResetBranch = optional_body(&bytes)?;
    no_nul(
        body.ttl
            .iter()
            .chain(body.sources.iter().flatten())
            .chain(body.contexts.iter().flatten())
            .chain(body.labels.iter().flat_map(|l| l.iter().flat_map(|(k, v)| [k, v]))),
    )?;
    not_being_created(&state, &id)?;
    let existing = branch_view(&state, &id).await?;
    let req = BranchRequest {
        id,
        template: Some(existing.template),
        sources: body.sources.as_deref().map(|s| resolve_sources(&state.base, s)).transpose()?,
        contexts: body.contexts.unwrap_or_default(),
        labels: body.labels,
        ttl: body.ttl.as_deref().map(parse_ttl).transpose()?,
    };
    start_deploy(&state, req, None).await
}

/// How a branch just accepted for creation looks until its job claims its row: RUNNING,
/// with the database name and server its template gives it; `created_at` and `expires_at`
/// (the TTL counts from the claim) come with the row. A job that fails before it claims
/// the row (the branch's lock not free within 300 s, a database of that name recorded for
/// another branch) leaves no branch: the operation says why.
fn accepted_view(state: &Shared, req: &BranchRequest) -> ApiResult<BranchView> {
    let template = req.template.as_deref().unwrap_or_default();
    let module = state
        .manifest
        .template(template)
        .and_then(|t| state.manifest.module(&t.module))
        .ok_or_else(|| ApiError::invalid(format!("template {template:?} has no module in the manifest")))?;
    let database = pgplane_core::branch::database_name(&state.manifest.branches, &state.env, template, &req.id)
        .map_err(ApiError::invalid)?;
    let mut v = crate::branch::unknown(&req.id, database, template, &module.server);
    v.status = "RUNNING".into();
    v.labels = req.labels.clone().unwrap_or_default();
    v.sources = req.sources.clone().unwrap_or_default();
    Ok(v)
}

/// Starts `branch create` (with the id's `creating` guard) or `branch reset` (without).
async fn start_deploy(state: &Shared, req: BranchRequest, creating: Option<Arc<Creating>>) -> ApiResult<Response> {
    let (file, env_flag) = (state.manifest.file.clone(), state.env_flag.clone());
    let reset = creating.is_none();
    // The handler keeps the guard too, so the entry it names the operation in is its own.
    let shown = creating.clone();
    let kind = if reset { "branch_reset" } else { "branch_create" };
    let id = state
        .jobs
        .start(state.home.clone(), state.servers.first().clone(), kind, state.env.clone(), move |mut ctx| async move {
            let b = Branches::open(&mut ctx, &file, env_flag.as_deref()).await?;
            let opts = DeployOptions {
                lock_timeout: Duration::from_secs(300),
                session_timeout: Duration::from_secs(60),
                live: false,
            };
            let view = b.deploy_branch(&req, reset, &opts).await;
            drop(creating);
            Ok(Outcome { changes: 1, error: view?.error })
        })
        .await?;
    if let Some(c) = shown {
        c.update(|v| v.operation_id = Some(id));
    }
    accepted(state, id).await
}

/// A (sanitised) branch id in `AppState::creating`, removed when this is dropped (however
/// the request or its job ends).
struct Creating {
    state: Shared,
    key: String,
}

impl Creating {
    /// Reserves `key`, not yet shown; `Err` with the id being created when it is taken.
    fn reserve(state: &Shared, key: String) -> Result<Creating, Option<String>> {
        match state.creating().entry(key.clone()) {
            std::collections::hash_map::Entry::Occupied(e) => Err(e.get().as_ref().map(|v| v.id.clone())),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(None);
                Ok(Creating { state: state.clone(), key })
            }
        }
    }

    /// From now on `GET /branches/{id}` shows the branch as `view`.
    fn show(&self, view: BranchView) {
        self.state.creating().insert(self.key.clone(), Some(view));
    }

    fn update(&self, change: impl FnOnce(&mut BranchView)) {
        if let Some(Some(v)) = self.state.creating().get_mut(&self.key) {
            change(v);
        }
    }
}

impl Drop for Creating {
    fn drop(&mut self) {
        self.state.creating().remove(&self.key);
    }
}

/// 202 with the operation and its URL.
async fn accepted(state: &Shared, id: i64) -> ApiResult<Response> {
    let op = operation_by_id(state, id).await?;
    Ok((StatusCode::ACCEPTED, [(header::LOCATION, format!("/api/v1/operations/{id}"))], Json(op)).into_response())
}

#[utoipa::path(delete, path = "/api/v1/branches/{id}", tag = "branches",
    params(("id" = String, Path, description = "Branch id")),
    responses((status = 200, body = BranchView, description = "Deleted; the branch as it was"),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
/// Drops a branch's database (ending its sessions) and forgets it.
pub async fn delete_branch(State(state): State<Shared>, ApiPath(id): ApiPath<String>) -> ApiResult<Json<BranchView>> {
    not_being_created(&state, &id)?;
    let existing = branch_view(&state, &id).await?;
    state.forget_pool(&existing.server, &existing.database);
    let (home, file, env_flag) = (state.home.clone(), state.manifest.file.clone(), state.env_flag.clone());
    let deleted = super::on_thread(move || async move {
        let mut ctx = crate::ops::Ctx::new(home);
        let b = Branches::open(&mut ctx, &file, env_flag.as_deref()).await?;
        let opts = DeployOptions {
            lock_timeout: Duration::from_secs(10),
            session_timeout: Duration::from_secs(10),
            live: false,
        };
        b.delete(&id, &opts).await
    })
    .await
    .map_err(|e| {
        let message = format!("{e:#}");
        if message.contains("did not finish within") {
            ApiError::conflict(message)
        } else {
            ApiError::from(e)
        }
    })?;
    Ok(Json(deleted))
}

#[utoipa::path(get, path = "/api/v1/branches/{id}/tables", tag = "branches",
    params(("id" = String, Path, description = "Branch id"), TablesQuery),
    responses((status = 200, body = [TableSummary]), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
/// Tables and views of a branch's database.
pub async fn branch_tables(
    State(state): State<Shared>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<TablesQuery>,
) -> ApiResult<Response> {
    let v = branch_view(&state, &id).await?;
    tables_response(&state, format!("branch:{id}"), q.schema.as_deref(), branch_client(&state, &v)).await
}

pub(super) async fn branch_client(state: &Shared, v: &BranchView) -> ApiResult<deadpool_postgres::Object> {
    state.client(&v.server, Some(&v.database)).await.map_err(|e| match v.status.as_str() {
        "SUCCESS" | "UNKNOWN" => e,
        _ => ApiError::not_found(format!(
            "branch {:?} has no database to read (status {}{})",
            v.id,
            v.status,
            v.error.as_deref().map(|e| format!(": {e}")).unwrap_or_default()
        )),
    })
}

#[utoipa::path(get, path = "/api/v1/branches/{id}/tables/{table}", tag = "branches",
    params(("id" = String, Path, description = "Branch id"),
        ("table" = String, Path, description = "`schema.name`, or a bare name (`public` first)")),
    responses((status = 200, body = TableDetail), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
/// A table's structure in a branch's database.
pub async fn branch_table(
    State(state): State<Shared>,
    ApiPath((id, table)): ApiPath<(String, String)>,
) -> ApiResult<Json<TableDetail>> {
    let v = branch_view(&state, &id).await?;
    let client = branch_client(&state, &v).await?;
    describe(&client, &table, &format!("branch {id}")).await
}

/// What a branch changes compared with its template.
#[derive(Debug, Serialize, ToSchema)]
pub struct BranchDiff {
    /// `template:NAME`
    pub from: String,
    /// `branch:ID`
    pub to: String,
    #[serde(flatten)]
    pub diff: SchemaDiff,
}

#[utoipa::path(get, path = "/api/v1/branches/{id}/diff", tag = "branches",
    params(("id" = String, Path, description = "Branch id")),
    responses((status = 200, body = BranchDiff), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
/// The branch's schema against its template's (as `pgplane schema diff template:T branch:ID --json`).
pub async fn branch_diff(State(state): State<Shared>, ApiPath(id): ApiPath<String>) -> ApiResult<Json<BranchDiff>> {
    let v = branch_view(&state, &id).await?;
    let client = branch_client(&state, &v).await?;
    // The template on its own short session: an idle pooled one would hold up copies.
    let template = state.connect_once(&v.server, &v.template).await.map_err(|e| {
        ApiError::not_found(format!("template {} of branch {id:?} cannot be read: {}", v.template, e.message))
    })?;
    let (from, to) = futures_util::try_join!(crate::schema::snapshot(&template), crate::schema::snapshot(&client))?;
    Ok(Json(BranchDiff {
        from: format!("template:{}", v.template),
        to: format!("branch:{id}"),
        diff: pgplane_core::schema::diff(&from, &to),
    }))
}

// ----- plan, apply, operations --------------------------------------------------------

#[utoipa::path(post, path = "/api/v1/plan", tag = "operations", request_body(content = Option<ChangeRequest>, description = "Optional"),
    responses((status = 200, description = "The plan, as `pgplane plan --json`", body = Object),
        (status = 400, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
/// What apply would change now (reads the manifest file again); changes nothing.
pub async fn plan(State(state): State<Shared>, RawBody(bytes): RawBody) -> ApiResult<Json<serde_json::Value>> {
    let body: ChangeRequest = optional_body(&bytes)?;
    let (home, file, env_flag) = (state.home.clone(), state.manifest.file.clone(), state.env_flag.clone());
    let plan = super::on_thread(move || async move {
        let mut ctx = crate::ops::Ctx::new(home);
        let s = crate::ops::Session::open(&mut ctx, &file, env_flag.as_deref()).await?;
        let plan = s.plan_readonly(PlanOptions { prune: body.prune, adopt: body.adopt }, body.deep).await?;
        Ok(pgplane_core::render::plan_json(&plan))
    })
    .await
    .map_err(invalid_manifest)?;
    Ok(Json(plan))
}

/// A manifest that does not load or validate is the request's problem (422), not ours.
fn invalid_manifest(e: anyhow::Error) -> ApiError {
    if e.chain().any(|c| c.downcast_ref::<pgplane_core::manifest::ManifestError>().is_some()) {
        ApiError::invalid(format!("{e:#}"))
    } else {
        ApiError::from(e)
    }
}

#[utoipa::path(post, path = "/api/v1/apply", tag = "operations", request_body(content = Option<ChangeRequest>, description = "Optional"),
    responses((status = 202, body = Operation), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
/// Provisions what the manifest file says now, then runs the modules' migrations, in the background.
pub async fn apply(State(state): State<Shared>, RawBody(bytes): RawBody) -> ApiResult<Response> {
    let body: ChangeRequest = optional_body(&bytes)?;
    // Refuse a manifest that does not load before starting anything.
    crate::ops::load_manifest(&state.manifest.file).map_err(invalid_manifest)?;
    let (file, env_flag) = (state.manifest.file.clone(), state.env_flag.clone());
    let id = state
        .jobs
        .start(
            state.home.clone(),
            state.servers.first().clone(),
            "apply",
            state.env.clone(),
            move |mut ctx| async move { apply_job(&mut ctx, &file, env_flag.as_deref(), &body).await },
        )
        .await?;
    accepted(&state, id).await
}

async fn apply_job(
    ctx: &mut crate::ops::Ctx,
    file: &Path,
    env: Option<&str>,
    body: &ChangeRequest,
) -> anyhow::Result<Outcome> {
    let s = crate::ops::Session::open(ctx, file, env).await?;
    let lock_timeout = Duration::from_secs(300);
    let locked = s.lock_and_plan(PlanOptions { prune: body.prune, adopt: body.adopt }, lock_timeout).await?;
    let mut changes = 0;
    if locked.plan.changes() == 0 {
        s.refresh_cache(&locked, Vec::new()).await?;
    } else {
        let (applied, captured) = s.execute(ctx, &locked, "apply", &crate::output::LogProgress).await?;
        s.refresh_cache(&locked, captured).await?;
        changes = applied;
    }
    if body.skip_migrations || !s.manifest.modules.iter().any(|m| m.migrations.is_some()) {
        return Ok(Outcome { changes, error: None });
    }
    let opts = crate::migrate::RunOptions {
        mode: crate::migrate::Mode::Up,
        selection: crate::migrate::Selection::default(),
        ledger: crate::migrate::LedgerNames::default(),
        retry_failed: false,
        lock_timeout,
        jobs: 4,
        live: false,
        up_to: None,
    };
    let runs = crate::migrate::run_modules(&s, None, None, &opts).await?;
    let failed: Vec<String> = runs
        .iter()
        .flat_map(|r| r.targets.iter().filter(|t| !t.ok).map(move |t| (r, t)))
        .map(|(r, t)| {
            format!(
                "{} ({}): {}",
                r.module.as_deref().unwrap_or("?"),
                t.target,
                t.error.clone().unwrap_or_else(|| t.problems.join("; "))
            )
        })
        .collect();
    let error = (!failed.is_empty()).then(|| format!("provisioned; migrations failed: {}", failed.join(" | ")));
    Ok(Outcome { changes, error })
}

async fn operation_by_id(state: &Shared, id: i64) -> ApiResult<Operation> {
    let control = state.control().await?;
    control::operations(&control, Some(id), None, 1)
        .await?
        .pop()
        .ok_or_else(|| ApiError::not_found(format!("there is no operation {id}")))
}

#[utoipa::path(get, path = "/api/v1/operations/{id}", tag = "operations",
    params(("id" = i64, Path, description = "Operation id")),
    responses((status = 200, body = Operation), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
/// One operation; `running` only while a pgplane process runs it.
pub async fn operation(State(state): State<Shared>, ApiPath(id): ApiPath<String>) -> ApiResult<Json<Operation>> {
    let id: i64 = id.parse().map_err(|_| ApiError::not_found(format!("there is no operation {id:?}")))?;
    Ok(Json(operation_by_id(&state, id).await?))
}

#[utoipa::path(get, path = "/api/v1/operations", tag = "operations", params(OperationsQuery),
    responses((status = 200, body = [Operation])),
    security(("bearer" = [])))]
/// Recent operations, newest first, from every pgplane process.
pub async fn operations(
    State(state): State<Shared>,
    ApiQuery(q): ApiQuery<OperationsQuery>,
) -> ApiResult<Json<Vec<Operation>>> {
    let limit = q.limit.unwrap_or(50).clamp(1, 1000);
    let control = state.control().await?;
    Ok(Json(control::operations(&control, None, None, limit).await?))
}

// ----- request checks -----------------------------------------------------------------

/// PostgreSQL text cannot hold NUL: such a value is the request's mistake.
fn no_nul<'a>(mut values: impl Iterator<Item = &'a String>) -> ApiResult<()> {
    match values.find(|v| v.contains('\0')) {
        Some(v) => Err(ApiError::invalid(format!("{v:?} contains a NUL character"))),
        None => Ok(()),
    }
}

fn parse_ttl(s: &str) -> ApiResult<Duration> {
    pgplane_core::manifest::parse_duration(s).map_err(|e| ApiError::invalid(format!("ttl: {e}")))
}

/// Source paths are relative to the manifest's folder and must stay inside it: absolute
/// paths, `..` and symlinks that lead out are refused (422).
pub fn resolve_sources(base: &Path, sources: &[String]) -> ApiResult<Vec<String>> {
    sources
        .iter()
        .map(|s| {
            let p = Path::new(s);
            if s.is_empty()
                || p.is_absolute()
                || p.components().any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
            {
                return Err(ApiError::invalid(format!(
                    "source {s:?} must be a relative path inside the manifest's folder (no `..`, not absolute)"
                )));
            }
            let full: PathBuf = base.join(p);
            let real = full
                .canonicalize()
                .map_err(|_| ApiError::invalid(format!("source {s:?} does not exist under the manifest's folder")))?;
            if !real.starts_with(base) {
                return Err(ApiError::invalid(format!("source {s:?} leads outside the manifest's folder (symlink)")));
            }
            Ok(real.display().to_string())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_stay_inside_the_manifest_folder() {
        let root = std::env::temp_dir().join(format!("pgplane-sources-{}", std::process::id()));
        let base = root.join("m");
        std::fs::create_dir_all(base.join("db/changes")).expect("dirs");
        std::fs::create_dir_all(root.join("outside")).expect("dirs");
        #[cfg(unix)]
        std::os::unix::fs::symlink(root.join("outside"), base.join("escape")).expect("symlink");
        let base = base.canonicalize().expect("canonical");
        let ok = resolve_sources(&base, &["db/changes".into(), "./db".into()]).expect("inside");
        assert_eq!(ok[0], base.join("db/changes").display().to_string());
        for bad in ["../outside", "/etc", "db/../../outside", "escape", "missing", ""] {
            let e = resolve_sources(&base, &[bad.to_string()]).expect_err(bad);
            assert_eq!(e.status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {}", e.message);
        }
        let _ = std::fs::remove_dir_all(&root);
    }
}
