//! REST handlers under `/api/v1`. Each is a thin front end over the same operations the
//! CLI runs; reads use pooled connections, long operations are queued as durable jobs in
//! the control database and answer 202 with the job (`operation`); any replica's workers
//! run them.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::Path;
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
use super::state::Shared;
use crate::branch::{BranchView, Branches, DeployOptions};
use crate::jobs::Job as Operation;

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
    // One pooled connection at a time: a request that holds one while it waits for
    // another can starve the pool when many arrive at once.
    let (records, branches) = {
        let control = state.control().await?;
        let records = crate::control::read_records(&control).await?;
        let branches: HashMap<(String, String), (String, String)> = control
            .query("SELECT server, database, id, env FROM pgplane.branches", &[])
            .await?
            .iter()
            .map(|r| ((r.get(0), r.get(1)), (r.get(2), r.get(3))))
            .collect();
        (records, branches)
    };
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
    check_id(id)?;
    if id.contains('\0') {
        return Err(ApiError::not_found(format!("there is no branch {id:?}")));
    }
    let record = {
        let control = state.control().await?;
        crate::branch::records(&control, &state.env, Some(id), None).await?.pop()
    };
    let Some(mut v) = record else {
        // Just accepted (202), its job not yet holding the branch's lock: RUNNING.
        if let Some(v) = being_created(state, id).await? {
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

/// The key of every job on branch `id` (create, reset, delete run one at a time, in order).
fn branch_key(state: &Shared, id: &str) -> String {
    crate::runner::branch_key(&state.env, id)
}

/// The branch `id` as accepted by `POST /branches` until its job claims the branch's row:
/// RUNNING, from the queued (or running) `branch_create` job in the control database, so
/// every replica shows it the same.
async fn being_created(state: &Shared, id: &str) -> ApiResult<Option<BranchView>> {
    let control = state.control().await?;
    let Some(job) = crate::jobs::queue::unfinished_with_key(&**control, &branch_key(state, id)).await? else {
        return Ok(None);
    };
    if job.kind != crate::runner::kind::BRANCH_CREATE {
        return Ok(None);
    }
    let Ok(req) = serde_json::from_value::<crate::runner::BranchJob>(job.request.clone()) else { return Ok(None) };
    let mut v = accepted_view(state, &req)?;
    v.operation_id = Some(job.id);
    Ok(Some(v))
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
    let (mut list, creating) = {
        let control = state.control().await?;
        let list = crate::branch::records(&control, &state.env, None, q.template.as_deref()).await?;
        let filter = crate::jobs::Filter {
            env: Some(state.env.clone()),
            kind: Some(crate::runner::kind::BRANCH_CREATE.to_string()),
            statuses: vec![pgplane_core::job::JobStatus::Queued, pgplane_core::job::JobStatus::Running],
            limit: 1000,
            ..Default::default()
        };
        (list, crate::jobs::queue::list(&**control, &filter).await?)
    };
    for v in &mut list {
        check_database(&state, v).await?;
    }
    // Accepted, their jobs not yet holding the branch's row (as `GET /branches/{id}`):
    // after the recorded ones, which keep the control database's order; oldest first.
    for job in creating.iter().rev() {
        let Ok(req) = serde_json::from_value::<crate::runner::BranchJob>(job.request.clone()) else { continue };
        if list.iter().any(|b| b.id == req.id)
            || q.template.as_deref().is_some_and(|t| req.template.as_deref() != Some(t))
        {
            continue;
        }
        let mut v = accepted_view(&state, &req)?;
        v.operation_id = Some(job.id);
        list.push(v);
    }
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
        (status = 415, body = ErrorBody, description = "Not `Content-Type: application/json`"), (status = 422, body = ErrorBody), (status = 429, body = ErrorBody, description = "The backlog is full (`--backlog`); retry after `Retry-After` seconds")),
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
    check_id(&body.id)?;
    let key = pgplane_core::branch::sanitize(&body.id).map_err(ApiError::invalid)?;
    if state.manifest.template(&body.template).is_none() {
        let known: Vec<&str> = state.manifest.templates.iter().map(|t| t.name.as_str()).collect();
        return Err(ApiError::invalid(format!(
            "template {:?} is not in the manifest (templates: {})",
            body.template,
            if known.is_empty() { "none".into() } else { known.join(", ") }
        )));
    }
    let req = crate::runner::BranchJob {
        id: body.id.clone(),
        template: Some(body.template),
        sources: body.sources.as_deref().map(|s| resolve_sources(&state.base, s)).transpose()?,
        contexts: body.contexts.unwrap_or_default(),
        labels: Some(body.labels.unwrap_or_default()),
        ttl_secs: body.ttl.as_deref().map(parse_ttl).transpose()?.map(|d| d.as_secs()),
    };
    accepted_view(&state, &req)?;
    let _ = key;
    let mut control = state.control().await?;
    let existing = crate::branch::records(&control, &state.env, Some(&body.id), None).await?.pop();
    if let Some(b) = existing {
        return Err(ApiError::conflict(format!(
            "branch {:?} already exists (database {}, status {}); POST /api/v1/branches/{}/reset deploys it again",
            b.id, b.database, b.status, b.id
        )));
    }
    queue_branch_job(
        &state,
        &mut control,
        crate::runner::kind::BRANCH_CREATE,
        &req,
        Some("the branch is being created or changed"),
    )
    .await
}

/// Queues a branch job (keyed by the branch, so jobs on one branch run in order) and
/// answers 202 with it.
async fn queue_branch_job(
    state: &Shared,
    control: &mut deadpool_postgres::Object,
    kind: &str,
    req: &impl Serialize,
    exclusive: Option<&str>,
) -> ApiResult<Response> {
    let id = branch_id_of(req)?;
    let mut new = crate::runner::new_job(kind, &state.env, Some(&id), req)?;
    new.key = Some(branch_key(state, &id));
    let job = state.jobs.submit(control, new, exclusive).await?;
    Ok(accepted(job))
}

fn branch_id_of(req: &impl Serialize) -> ApiResult<String> {
    serde_json::to_value(req)
        .ok()
        .and_then(|v| v.get("id").and_then(|i| i.as_str()).map(str::to_string))
        .ok_or_else(|| ApiError::invalid("the request names no branch id"))
}

#[utoipa::path(post, path = "/api/v1/branches/{id}/reset", tag = "branches",
    params(("id" = String, Path, description = "Branch id")), request_body(content = Option<ResetBranch>, description = "Optional"),
    responses((status = 202, body = Operation), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "The branch is being created"), (status = 415, body = ErrorBody, description = "Not `Content-Type: application/json`"),
        (status = 422, body = ErrorBody), (status = 429, body = ErrorBody, description = "The backlog is full (`--backlog`); retry after `Retry-After` seconds")),
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
    check_id(&id)?;
    let ttl = body.ttl.as_deref().map(parse_ttl).transpose()?;
    let sources = body.sources.as_deref().map(|s| resolve_sources(&state.base, s)).transpose()?;
    let existing = branch_view(&state, &id).await?;
    let req = crate::runner::BranchJob {
        id,
        template: Some(existing.template),
        sources,
        contexts: body.contexts.unwrap_or_default(),
        labels: body.labels,
        ttl_secs: ttl.map(|d| d.as_secs()),
    };
    let mut control = state.control().await?;
    queue_branch_job(
        &state,
        &mut control,
        crate::runner::kind::BRANCH_RESET,
        &req,
        Some("the branch is being created or changed"),
    )
    .await
}

/// How a branch just accepted for creation looks until its job claims its row: RUNNING,
/// with the database name and server its template gives it; `created_at` and `expires_at`
/// (the TTL counts from the claim) come with the row. A job that fails before it claims
/// the row (the branch's lock not free within 300 s, a database of that name recorded for
/// another branch) leaves no branch: the operation says why.
fn accepted_view(state: &Shared, req: &crate::runner::BranchJob) -> ApiResult<BranchView> {
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

/// 202 with the operation and its URL.
fn accepted(op: Operation) -> Response {
    let id = op.id;
    (StatusCode::ACCEPTED, [(header::LOCATION, format!("/api/v1/operations/{id}"))], Json(op)).into_response()
}

#[utoipa::path(delete, path = "/api/v1/branches/{id}", tag = "branches",
    params(("id" = String, Path, description = "Branch id")),
    responses((status = 200, body = BranchView, description = "Deleted; the branch as it was"),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody, description = "No such branch (also: deleted meanwhile by a concurrent request)"),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody, description = "The id is longer than 255 bytes")),
    security(("bearer" = [])))]
/// Drops a branch's database (ending its sessions) and forgets it. Runs at once in this
/// process, journaled as a job; a create or reset of the branch still queued or running
/// is a 409.
pub async fn delete_branch(State(state): State<Shared>, ApiPath(id): ApiPath<String>) -> ApiResult<Json<BranchView>> {
    check_id(&id)?;
    {
        let control = state.control().await?;
        if let Some(j) = crate::jobs::queue::unfinished_with_key(&**control, &branch_key(&state, &id)).await? {
            return Err(ApiError::conflict(format!(
                "the branch is being created or changed ({} operation {}, {}; GET /api/v1/operations/{}); \
                 try again when it ends",
                j.kind, j.id, j.status, j.id
            )));
        }
    }
    let existing = branch_view(&state, &id).await?;
    state.forget_pool(&existing.server, &existing.database);
    let (home, file, env_flag, of) =
        (state.home.clone(), state.manifest.file.clone(), state.env_flag.clone(), id.clone());
    let control_target = state.servers.first().clone();
    let mut new = crate::runner::new_job(
        crate::runner::kind::BRANCH_DELETE,
        &state.env,
        Some(&id),
        &crate::runner::BranchDeleteJob { id: id.clone(), missing_ok: false },
    )?;
    new.key = Some(branch_key(&state, &id));
    let deleted = super::on_thread(move || async move {
        let job = crate::jobs::worker::Inline::start(&control_target, &new).await?;
        let cancel = crate::cancel::Cancel::new();
        let result = job
            .run(&cancel, async {
                let mut ctx = crate::ops::Ctx::new(home);
                ctx.operation = Some(job.id());
                let b = Branches::open(&mut ctx, &file, env_flag.as_deref()).await?;
                let opts = DeployOptions {
                    lock_timeout: Duration::from_secs(10),
                    session_timeout: Duration::from_secs(10),
                    live: false,
                    confine_to_manifest: true,
                };
                let v = b.delete(&of, &opts).await?;
                Ok::<_, anyhow::Error>((v, crate::jobs::Done { changes: 1, ..Default::default() }))
            })
            .await
            .map_err(crate::error::Error::from);
        job.finish(&cancel, &result).await?;
        Ok(result.map(|(v, _)| v))
    })
    .await?;
    match deleted {
        Ok(deleted) => Ok(Json(deleted)),
        // Deleted meanwhile by a concurrent request (which answered 200).
        Err(crate::error::Error::NotFound(_)) => Err(ApiError::not_found(format!(
            "there is no branch {id:?} in environment {} any more (deleted meanwhile)",
            state.env
        ))),
        Err(e) => Err(ApiError::from(e)),
    }
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
        (status = 400, body = ErrorBody), (status = 415, body = ErrorBody, description = "Not `Content-Type: application/json`"), (status = 422, body = ErrorBody)),
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
    responses((status = 202, body = Operation), (status = 403, body = ErrorBody), (status = 415, body = ErrorBody, description = "Not `Content-Type: application/json`"),
        (status = 422, body = ErrorBody), (status = 429, body = ErrorBody, description = "The backlog is full (`--backlog`); retry after `Retry-After` seconds")),
    security(("bearer" = [])))]
/// Provisions what the manifest file says now, then runs the modules' migrations, in the background.
pub async fn apply(State(state): State<Shared>, RawBody(bytes): RawBody) -> ApiResult<Response> {
    let body: ChangeRequest = optional_body(&bytes)?;
    // Refuse a manifest that does not load before starting anything.
    crate::ops::load_manifest(&state.manifest.file).map_err(invalid_manifest)?;
    let req = crate::runner::ApplyRequest {
        prune: body.prune,
        adopt: body.adopt,
        skip_migrations: body.skip_migrations,
        ..Default::default()
    };
    // Applies of one environment run one after another (they would wait for the lock anyway).
    let new = crate::runner::new_job(crate::runner::kind::APPLY, &state.env, Some("apply"), &req)?;
    let mut control = state.control().await?;
    Ok(accepted(state.jobs.submit(&mut control, new, None).await?))
}

async fn operation_by_id(state: &Shared, id: i64) -> ApiResult<Operation> {
    let control = state.control().await?;
    crate::jobs::queue::get(&**control, id)
        .await?
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

#[utoipa::path(delete, path = "/api/v1/operations/{id}", tag = "operations",
    params(("id" = i64, Path, description = "Operation id")),
    responses((status = 200, body = Operation, description = "Cancelled (a queued one) or asked to stop (a running one: `cancel_requested`, then `cancelled` once its worker stopped it)"),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "It already ended")),
    security(("bearer" = [])))]
/// Cancels an operation: a queued one at once, a running one at its next safe point (a
/// running migration is cancelled and rolled back). Same as `pgplane job cancel ID`.
pub async fn cancel_operation(State(state): State<Shared>, ApiPath(id): ApiPath<String>) -> ApiResult<Json<Operation>> {
    let id: i64 = id.parse().map_err(|_| ApiError::not_found(format!("there is no operation {id:?}")))?;
    let control = state.control().await?;
    match crate::jobs::queue::request_cancel(&**control, id).await? {
        None => Err(ApiError::not_found(format!("there is no operation {id}"))),
        Some((job, _)) if job.status.is_final() && !job.cancel_requested => {
            Err(ApiError::conflict(format!("operation {id} already ended ({}); nothing to cancel", job.status)))
        }
        Some((job, _)) => Ok(Json(job)),
    }
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
    let filter = crate::jobs::Filter { limit, ..Default::default() };
    Ok(Json(crate::jobs::queue::list(&**control, &filter).await?))
}

// ----- request checks -----------------------------------------------------------------

/// PostgreSQL text cannot hold NUL: such a value is the request's mistake.
fn no_nul<'a>(mut values: impl Iterator<Item = &'a String>) -> ApiResult<()> {
    match values.find(|v| v.contains('\0')) {
        Some(v) => Err(ApiError::invalid(format!("{v:?} contains a NUL character"))),
        None => Ok(()),
    }
}

/// Branch ids longer than this are refused (422): they name databases, locks and
/// sessions, and no CI system needs more.
pub const MAX_ID_BYTES: usize = 255;

fn check_id(id: &str) -> ApiResult<()> {
    if id.len() > MAX_ID_BYTES {
        return Err(ApiError::invalid(format!(
            "the branch id is {} bytes long; at most {MAX_ID_BYTES} are allowed",
            id.len()
        )));
    }
    Ok(())
}

/// A branch's time to live: from a minute (gc would drop it before it is used) to ten
/// years (beyond that it is a mistake, and far enough out it overflows PostgreSQL's
/// timestamps).
pub const TTL_RANGE: (Duration, Duration) = (Duration::from_secs(60), Duration::from_secs(3650 * 86400));

fn parse_ttl(s: &str) -> ApiResult<Duration> {
    let ttl = pgplane_core::manifest::parse_duration(s).map_err(|e| ApiError::invalid(format!("ttl: {e}")))?;
    let (min, max) = TTL_RANGE;
    if ttl < min || ttl > max {
        return Err(ApiError::invalid(format!("ttl {s:?} is out of range: use 1m to 3650d (e.g. 72h)")));
    }
    Ok(ttl)
}

/// Source paths are relative to the manifest's folder and must stay inside it: absolute
/// paths, `..` and symlinks that lead out are refused (422).
pub fn resolve_sources(base: &Path, sources: &[String]) -> ApiResult<Vec<String>> {
    Ok(pgplane_ops::migrate::request_sources(base, sources)?)
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
