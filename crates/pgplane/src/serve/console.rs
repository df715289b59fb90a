//! The web console: server-rendered, read-only pages for people (no JavaScript). Pages
//! get their data from the same functions as the API (`api.rs`) and render it with the
//! helpers in `console/html.rs`, which escape every value.
//!
//! Sign-in: with tokens configured, every page but `/sign-in` and the stylesheet needs
//! the cookie `pgplane_token` (HttpOnly, SameSite=Strict) holding a session for a token of
//! any scope: an expiry and an HMAC of the token and the expiry with a key derived from the
//! secret key (the same in every replica), so the cookie is not the token and opens no API
//! route; checked in constant time. Without it a page
//! answers 303 to `/sign-in?next=…`. Without tokens (loopback only) nobody signs in.

pub mod html;
mod schema;

use std::fmt::Write;

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Form, Json, Router};
use pgplane_core::schema::TableSummary;
use serde::Deserialize;

use self::html::{badge, bytes, enc, esc, link, opt, time, Page, Section};
use super::api::{self, BranchesQuery, OperationsQuery};
use super::error::{ApiError, ApiPath, ApiQuery, ApiResult};
use super::state::Shared;
use crate::branch::BranchView;

const COOKIE: &str = "pgplane_token";
const CSS: &str = include_str!("console/console.css");

pub fn routes(state: Shared) -> Router<Shared> {
    let pages = Router::new()
        .route("/", get(home))
        .route("/databases/{db}", get(database))
        .route("/databases/{db}/tables/{table}", get(database_table))
        .route("/branches", get(branches))
        .route("/branches/{id}", get(branch))
        .route("/branches/{id}/tables/{table}", get(branch_table))
        .route("/branches/{id}/diff", get(branch_diff))
        .route("/tenants", get(tenants))
        .route("/operations", get(operations))
        .merge(super::stacks::console_routes())
        .route("/events", get(super::events::page))
        .route_layer(middleware::from_fn_with_state(state, require_sign_in));
    Router::new()
        .merge(pages)
        .route("/sign-in", get(sign_in_form).post(sign_in))
        .route("/sign-out", get(sign_out))
        .route("/console.css", get(css))
        .route("/favicon.ico", get(icon))
        .fallback(not_found)
        .layer(middleware::map_response(headers))
}

// ----- frame, errors, headers ---------------------------------------------------------

/// A page in the frame, or the error as a page with its status.
pub(super) fn respond(state: &Shared, result: ApiResult<Page>) -> Response {
    match result {
        Ok(page) => html_response(StatusCode::OK, html::document(&page, &state.env, !state.tokens.is_empty())),
        Err(e) => error_page(state, e),
    }
}

fn error_page(state: &Shared, e: ApiError) -> Response {
    let title = e.status.canonical_reason().unwrap_or("Error");
    let body = format!(
        "<div class=\"notice bad\" id=\"error\"><pre>{}</pre></div><p>{}</p>",
        esc(&e.message),
        link("/", "Back to the databases")
    );
    let page = Page::new(Section::None, title, body);
    html_response(e.status, html::document(&page, &state.env, !state.tokens.is_empty()))
}

fn html_response(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response()
}

async fn not_found(
    State(state): State<Shared>,
    axum::extract::OriginalUri(uri): axum::extract::OriginalUri,
) -> Response {
    error_page(&state, ApiError::not_found(format!("there is no page {}", uri.path())))
}

/// No scripts, styles only from here, no framing, nothing cached but the stylesheet.
async fn headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    let set = |h: &mut HeaderMap, name, value: &'static str| {
        if !h.contains_key(&name) {
            h.insert(name, HeaderValue::from_static(value));
        }
    };
    set(
        h,
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    );
    set(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(h, header::REFERRER_POLICY, "same-origin");
    set(h, header::CACHE_CONTROL, "no-store");
    r
}

async fn css() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8"), (header::CACHE_CONTROL, "max-age=300")], CSS).into_response()
}

/// A plain mark for the browser's tab (and no 404 for the browser's request).
async fn icon() -> Response {
    const SVG: &str = "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 16 16\">\
        <rect width=\"16\" height=\"16\" rx=\"3\" fill=\"#0550ae\"/>\
        <path d=\"M5 13V3h3.5a3 3 0 0 1 0 6H5\" fill=\"none\" stroke=\"#fff\" stroke-width=\"2\"/></svg>";
    ([(header::CONTENT_TYPE, "image/svg+xml"), (header::CACHE_CONTROL, "max-age=86400")], SVG).into_response()
}

// ----- sign-in ------------------------------------------------------------------------

/// Lets a request through when no tokens are configured or its cookie holds a valid
/// token; otherwise 303 to the sign-in page, which brings the person back afterwards.
async fn require_sign_in(State(state): State<Shared>, req: Request, next: Next) -> Response {
    if state.tokens.is_empty()
        || cookie_token(req.headers()).is_some_and(|t| state.tokens.scope_of_session(&t).is_some())
    {
        return next.run(req).await;
    }
    let back = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
    redirect(&format!("/sign-in?next={}", enc(back)))
}

fn redirect(to: &str) -> Response {
    match HeaderValue::from_str(to) {
        Ok(v) => (StatusCode::SEE_OTHER, [(header::LOCATION, v)]).into_response(),
        Err(_) => (StatusCode::SEE_OTHER, [(header::LOCATION, HeaderValue::from_static("/"))]).into_response(),
    }
}

/// The session in the `pgplane_token` cookie, if any.
fn cookie_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('=').map(str::to_string))
}

/// Where to go after signing in: a path on this site, never another site
/// (`//host`, `/\host` and absolute URLs are refused).
fn local_path(next: Option<&str>) -> &str {
    match next {
        Some(n)
            if n.starts_with('/')
                && !n.starts_with("//")
                && !n.starts_with("/\\")
                && !n.starts_with("/sign-")
                && !n.chars().any(|c| c.is_control()) =>
        {
            n
        }
        _ => "/",
    }
}

#[derive(Deserialize)]
struct NextQuery {
    next: Option<String>,
}

#[derive(Deserialize)]
struct SignInForm {
    #[serde(default)]
    token: String,
    next: Option<String>,
}

async fn sign_in_form(State(state): State<Shared>, Query(q): Query<NextQuery>) -> Response {
    if state.tokens.is_empty() {
        return redirect(local_path(q.next.as_deref()));
    }
    sign_in_page(&state, StatusCode::OK, local_path(q.next.as_deref()), None)
}

fn sign_in_page(state: &Shared, status: StatusCode, next: &str, problem: Option<&str>) -> Response {
    let mut body = String::new();
    if let Some(p) = problem {
        let _ = write!(body, "<div class=\"notice bad\" id=\"sign-in-error\" role=\"alert\">{}</div>", esc(p));
    }
    let _ = write!(
        body,
        "<p class=\"muted\">Use a read or admin token of this pgplane service (from <code>--tokens-file</code> or <code>PGPLANE_TOKENS</code>).</p>
<form class=\"sign-in\" method=\"post\" action=\"/sign-in\">
<label for=\"token\">Token</label>
<input type=\"password\" id=\"token\" name=\"token\" autocomplete=\"current-password\" required autofocus>
<input type=\"hidden\" name=\"next\" value=\"{}\">
<button type=\"submit\" id=\"sign-in\">Sign in</button>
</form>",
        esc(next)
    );
    let page = Page::new(Section::None, "Sign in", body);
    html_response(status, html::document(&page, &state.env, false))
}

/// Checks the token and sets the cookie. Refuses posts from other sites (a forged
/// sign-in would put someone in another person's session).
async fn sign_in(State(state): State<Shared>, headers: HeaderMap, Form(form): Form<SignInForm>) -> Response {
    let next = local_path(form.next.as_deref()).to_string();
    if state.tokens.is_empty() {
        return redirect(&next);
    }
    if !same_origin(&headers) {
        return error_page(&state, ApiError::forbidden("sign-in forms are only accepted from this site"));
    }
    let token = form.token.trim();
    let Some(session) = state.tokens.session_for(token) else {
        return sign_in_page(
            &state,
            StatusCode::UNAUTHORIZED,
            &next,
            Some("That token is not valid. Check it and try again."),
        );
    };
    let secure = headers.get("x-forwarded-proto").is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"));
    let cookie =
        format!("{COOKIE}={session}; Path=/; HttpOnly; SameSite=Strict{}", if secure { "; Secure" } else { "" });
    let mut r = redirect(&next);
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

/// An `Origin` header, when the browser sends one, must name this host.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
    origin.split_once("://").map(|(_, h)| h) == Some(host)
}

async fn sign_out() -> Response {
    let mut r = redirect("/sign-in");
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("pgplane_token=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    r
}

// ----- databases ----------------------------------------------------------------------

async fn home(State(state): State<Shared>) -> Response {
    respond(&state, home_page(&state).await)
}

async fn home_page(state: &Shared) -> ApiResult<Page> {
    let Json(dbs) = api::databases(State(state.clone())).await?;
    let mut body = String::new();
    for server in &state.servers.list {
        let c = &server.config;
        let host = match c.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            #[cfg(unix)]
            Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
            None => "localhost".into(),
        };
        let port = c.get_ports().first().copied().unwrap_or(5432);
        let mine: Vec<_> = dbs.iter().filter(|d| d.server == server.name).collect();
        let _ = write!(
            body,
            "<section class=\"server\" data-server=\"{name}\"><h2>Server {name} <span class=\"muted mono\">{host}:{port}</span></h2>",
            name = esc(&server.name),
            host = esc(&host),
        );
        body.push_str(
            "<div class=\"scroll\"><table class=\"databases\"><thead><tr><th>Database</th><th>Kind</th><th>Module</th><th>Tenant</th>\
             <th>Branch</th><th>Owner</th><th class=\"num\">Size</th><th>Description</th></tr></thead><tbody>",
        );
        for d in &mine {
            let branch = match &d.branch {
                Some(id) => link(&format!("/branches/{}", enc(id)), id),
                None => opt(None),
            };
            let _ = write!(
                body,
                "<tr data-database=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{branch}</td><td>{}</td><td class=\"num\">{}</td><td class=\"wide\">{}</td></tr>",
                esc(&d.name),
                link(&format!("/databases/{}", enc(&d.name)), &d.name),
                esc(&d.kind),
                opt(d.module.as_deref()),
                opt(d.tenant.as_deref()),
                esc(&d.owner),
                bytes(d.size_bytes),
                opt(d.description.as_deref()),
            );
        }
        if mine.is_empty() {
            body.push_str("<tr><td colspan=\"8\" class=\"muted\">no databases</td></tr>");
        }
        body.push_str("</tbody></table></div></section>");
    }
    if !state.manifest.templates.is_empty() {
        body.push_str("<h2>Templates</h2><p class=\"muted\">Template databases branches are stamped from (not listed above: they take no connections).</p><ul>");
        for t in &state.manifest.templates {
            let _ = write!(
                body,
                "<li><span class=\"mono\">{}</span> <span class=\"muted\">of module {}</span> · {}</li>",
                esc(&t.name),
                esc(&t.module),
                link(&format!("/branches?template={}", enc(&t.name)), "branches")
            );
        }
        body.push_str("</ul>");
    }
    Ok(Page::new(Section::Databases, "Databases", body))
}

async fn database(State(state): State<Shared>, Path(db): Path<String>) -> Response {
    respond(&state, database_page(&state, &db).await)
}

async fn database_page(state: &Shared, db: &str) -> ApiResult<Page> {
    let server = state.locate(db).await?;
    let client = state.database(db).await?;
    let tables = crate::schema::tables(&client, None).await?;
    let mut body = format!("<p class=\"muted\">On server <span class=\"mono\">{}</span>.</p>", esc(&server));
    body.push_str(&tables_table(&tables, &format!("/databases/{}/tables", enc(db))));
    Ok(Page::new(Section::Databases, db, body).crumb("/", "Databases"))
}

async fn database_table(State(state): State<Shared>, Path((db, table)): Path<(String, String)>) -> Response {
    respond(&state, database_table_page(&state, &db, &table).await)
}

async fn database_table_page(state: &Shared, db: &str, table: &str) -> ApiResult<Page> {
    let Json(detail) = api::database_table(State(state.clone()), ApiPath((db.to_string(), table.to_string()))).await?;
    let base = format!("/databases/{}", enc(db));
    Ok(Page::new(Section::Databases, detail.qualified(), schema::structure(&detail, &format!("{base}/tables")))
        .crumb("/", "Databases")
        .crumb(base, db))
}

/// Tables and views; names link to `{base}/{schema.name}`.
fn tables_table(tables: &[TableSummary], base: &str) -> String {
    let mut out = String::from(
        "<div class=\"scroll\"><table class=\"tables\"><thead><tr><th>Table</th><th>Kind</th><th>Description</th>\
         <th class=\"num\">Columns</th><th class=\"num\">Rows (est.)</th><th class=\"num\">Size</th></tr></thead><tbody>",
    );
    for t in tables {
        let qualified = format!("{}.{}", t.schema, t.name);
        let is_view = t.kind.contains("view");
        let _ = write!(
            out,
            "<tr data-table=\"{}\"><td class=\"mono\">{}</td><td>{}</td><td class=\"wide\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
            esc(&qualified),
            link(&format!("{base}/{}", enc(&qualified)), &qualified),
            esc(&t.kind.replace('_', " ")),
            opt(t.description.as_deref()),
            t.columns,
            if is_view { opt(None) } else { t.estimated_rows.to_string() },
            if is_view { opt(None) } else { bytes(t.size_bytes) },
        );
    }
    if tables.is_empty() {
        out.push_str("<tr><td colspan=\"6\" class=\"muted\">no tables or views</td></tr>");
    }
    out.push_str("</tbody></table></div>");
    out
}

// ----- branches -----------------------------------------------------------------------

async fn branches(State(state): State<Shared>, Query(q): Query<BranchesQuery>) -> Response {
    respond(&state, branches_page(&state, q).await)
}

async fn branches_page(state: &Shared, q: BranchesQuery) -> ApiResult<Page> {
    let template = q.template.clone();
    let Json(list) = api::branches(State(state.clone()), ApiQuery(q)).await?;
    let mut body = String::new();
    if let Some(t) = &template {
        let _ = write!(
            body,
            "<p>Branches of template <span class=\"mono\">{}</span> · {}</p>",
            esc(t),
            link("/branches", "all branches")
        );
    }
    body.push_str(
        "<div class=\"scroll\"><table class=\"branches\"><thead><tr><th>Branch</th><th>Status</th><th>Template</th>\
         <th>Labels</th><th>Updated</th><th>Expires</th><th>Error</th></tr></thead><tbody>",
    );
    for b in &list {
        let _ = write!(
            body,
            "<tr data-branch=\"{}\"><td class=\"mono\">{}</td><td>{}</td><td class=\"mono\">{}</td><td>{}</td><td class=\"nowrap\">{}</td><td class=\"nowrap\">{}</td><td class=\"wide\">{}</td></tr>",
            esc(&b.id),
            link(&format!("/branches/{}", enc(&b.id)), &b.id),
            badge(&b.status),
            esc(&b.template),
            labels(b),
            time(b.updated_at.as_deref()),
            expires(b),
            match &b.error {
                Some(e) => format!("<span class=\"error-text\">{}</span>", esc(&first_line(e, 240))),
                None => opt(None),
            },
        );
    }
    if list.is_empty() {
        body.push_str("<tr><td colspan=\"7\" class=\"muted\">no branches</td></tr>");
    }
    body.push_str("</tbody></table></div>");
    Ok(Page::new(Section::Branches, "Branches", body))
}

fn labels(b: &BranchView) -> String {
    if b.labels.is_empty() {
        return opt(None);
    }
    b.labels.iter().map(|(k, v)| format!("<span class=\"chip\">{}={}</span>", esc(k), esc(v))).collect()
}

fn expires(b: &BranchView) -> String {
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    let expired = b.expires_epoch.is_some_and(|e| e <= now);
    format!(
        "{}{}",
        time(b.expires_at.as_deref()),
        if expired { " <span class=\"badge busy\">expired</span>" } else { "" }
    )
}

/// The first line of a message, cut to about `max` characters.
fn first_line(s: &str, max: usize) -> String {
    let line = s.lines().next().unwrap_or("");
    if line.chars().count() <= max && !s.contains('\n') {
        return line.to_string();
    }
    let cut: String = line.chars().take(max).collect();
    format!("{cut}…")
}

async fn branch(State(state): State<Shared>, Path(id): Path<String>) -> Response {
    respond(&state, branch_page(&state, &id).await)
}

async fn branch_page(state: &Shared, id: &str) -> ApiResult<Page> {
    let b = api::branch_view(state, id).await?;
    let mut body = String::new();
    let _ = write!(body, "<p id=\"branch-status\">{}</p>", badge(&b.status));
    if let Some(e) = &b.error {
        let _ = write!(body, "<div class=\"notice bad\" id=\"branch-error\"><pre>{}</pre>", esc(e));
        body.push_str(&failure(&b));
        body.push_str("</div>");
    }
    body.push_str("<dl class=\"facts\">");
    let mut fact = |name: &str, value: String| {
        let _ = write!(body, "<dt>{}</dt><dd>{value}</dd>", esc(name));
    };
    fact("Database", format!("<span class=\"mono\">{}</span> on {}", esc(&b.database), esc(&b.server)));
    fact("Template", format!("<span class=\"mono\">{}</span>", esc(&b.template)));
    fact("Labels", labels(&b));
    fact(
        "Sources",
        if b.sources.is_empty() {
            opt(None)
        } else {
            b.sources.iter().map(|s| format!("<span class=\"mono\">{}</span>", esc(s))).collect::<Vec<_>>().join("<br>")
        },
    );
    fact("Created", time(b.created_at.as_deref()));
    fact("Updated", time(b.updated_at.as_deref()));
    fact("Expires", expires(&b));
    if let Some(op) = b.operation_id {
        fact("Operation", link(&format!("/operations#op-{op}"), &format!("#{op}")));
    }
    body.push_str("</dl>");
    let base = format!("/branches/{}", enc(&b.id));
    let _ = write!(
        body,
        "<p><a id=\"diff-link\" href=\"{}/diff\">Schema changes against template {}</a></p>",
        esc(&base),
        esc(&b.template)
    );
    body.push_str("<h2>Tables</h2>");
    match branch_tables(state, &b).await {
        Ok(tables) => body.push_str(&tables_table(&tables, &format!("{base}/tables"))),
        Err(e) => {
            let _ = write!(body, "<p class=\"notice\" id=\"tables-unavailable\">{}</p>", esc(&e.message));
        }
    }
    Ok(Page::new(Section::Branches, format!("Branch {}", b.id), body).crumb("/branches", "Branches"))
}

async fn branch_tables(state: &Shared, b: &BranchView) -> ApiResult<Vec<TableSummary>> {
    let client = api::branch_client(state, b).await?;
    Ok(crate::schema::tables(&client, None).await?)
}

async fn branch_table(State(state): State<Shared>, Path((id, table)): Path<(String, String)>) -> Response {
    respond(&state, branch_table_page(&state, &id, &table).await)
}

async fn branch_table_page(state: &Shared, id: &str, table: &str) -> ApiResult<Page> {
    let Json(detail) = api::branch_table(State(state.clone()), ApiPath((id.to_string(), table.to_string()))).await?;
    let base = format!("/branches/{}", enc(id));
    Ok(Page::new(Section::Branches, detail.qualified(), schema::structure(&detail, &format!("{base}/tables")))
        .crumb("/branches", "Branches")
        .crumb(base, format!("Branch {id}")))
}

async fn branch_diff(State(state): State<Shared>, Path(id): Path<String>) -> Response {
    respond(&state, branch_diff_page(&state, &id).await)
}

/// The branch's schema against its template's (the API's diff: the template is read over
/// a connection of its own, closed right after).
async fn branch_diff_page(state: &Shared, id: &str) -> ApiResult<Page> {
    let Json(d) = api::branch_diff(State(state.clone()), ApiPath(id.to_string())).await?;
    let template = d.from.strip_prefix("template:").unwrap_or(&d.from);
    let base = format!("/branches/{}", enc(id));
    let body = schema::diff(&d.diff, template, &format!("{base}/tables"));
    Ok(Page::new(Section::Branches, format!("Branch {id} against {template}"), body)
        .crumb("/branches", "Branches")
        .crumb(base, format!("Branch {id}")))
}

/// The structured failure (migration, SQLSTATE, position, statement) under the message.
fn failure(b: &BranchView) -> String {
    let Some(serde_json::Value::Object(f)) = &b.failure else {
        return String::new();
    };
    let mut out = String::from("<dl class=\"facts\" id=\"failure\">");
    for (key, title) in [("migration", "Migration"), ("sqlstate", "SQLSTATE"), ("position", "Position")] {
        if let Some(v) = f.get(key).filter(|v| !v.is_null()) {
            let text = v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string());
            let _ = write!(out, "<dt>{title}</dt><dd class=\"mono\">{}</dd>", esc(&text));
        }
    }
    out.push_str("</dl>");
    if let Some(s) = f.get("statement").and_then(|v| v.as_str()) {
        let _ = write!(out, "<p class=\"muted\">Statement</p><pre class=\"statement\">{}</pre>", esc(s));
    }
    out
}

// ----- operations ---------------------------------------------------------------------

async fn operations(State(state): State<Shared>, Query(q): Query<OperationsQuery>) -> Response {
    respond(&state, operations_page(&state, q).await)
}

async fn operations_page(state: &Shared, q: OperationsQuery) -> ApiResult<Page> {
    let q = OperationsQuery { limit: Some(q.limit.unwrap_or(100)) };
    let Json(ops) = api::operations(State(state.clone()), ApiQuery(q)).await?;
    let mut body = String::from(
        "<p class=\"muted\">Newest first, from every pgplane process sharing the control database.</p>\
         <div class=\"scroll\"><table class=\"operations\"><thead><tr><th class=\"num\">#</th><th>Kind</th><th>Status</th>\
         <th>Environment</th><th>Started</th><th>Finished</th><th class=\"num\">Changes</th><th>Error</th></tr></thead><tbody>",
    );
    for o in &ops {
        let _ = write!(
            body,
            "<tr id=\"op-{id}\"><td class=\"num\">{id}</td><td class=\"mono\">{}</td><td>{}</td><td>{}</td><td class=\"nowrap\">{}</td><td class=\"nowrap\">{}</td><td class=\"num\">{}</td><td class=\"wide\">{}</td></tr>",
            esc(&o.kind),
            badge(o.status.as_str()),
            opt(o.env.as_deref()),
            time(Some(&o.started_at)),
            time(o.finished_at.as_deref()),
            o.changes,
            match &o.error {
                Some(e) => format!("<span class=\"error-text\">{}</span>", esc(e)),
                None => opt(None),
            },
            id = o.id,
        );
    }
    if ops.is_empty() {
        body.push_str("<tr><td colspan=\"8\" class=\"muted\">no operations yet</td></tr>");
    }
    body.push_str("</tbody></table></div>");
    Ok(Page::new(Section::Operations, "Operations", body))
}

// ----- tenants ----------------------------------------------------------------------------

async fn tenants(State(state): State<Shared>) -> Response {
    respond(&state, tenants_page(&state).await)
}

/// Every tenant, one row per module: version (and the one an upgrade moves it to), state
/// and status, where it lives, labels, expiry, and the last job with its error.
async fn tenants_page(state: &Shared) -> ApiResult<Page> {
    let Json(list) = super::tenants::tenants(State(state.clone())).await?;
    let mut body = String::from(
        "<p class=\"muted\">Tenants of the manifest and those registered with <code>pgplane tenant add</code> or \
         <code>POST /api/v1/tenants</code>. A tenant with a TTL or labels is a preview.</p>\
         <div class=\"scroll\"><table class=\"tenants\"><thead><tr><th>Tenant</th><th>Module</th><th>Version</th>\
         <th>Status</th><th>Storage</th><th>Labels</th><th>Expires</th><th>Last job</th></tr></thead><tbody>",
    );
    for t in &list {
        let labels: Vec<String> = t.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        for m in &t.modules {
            let version = match (&m.version, &m.target_version) {
                (v, Some(to)) => format!("{} → {}", esc(v.as_deref().unwrap_or("–")), esc(to)),
                (v, None) => opt(v.as_deref()),
            };
            let status = if m.state == "enabled" || m.status == m.state {
                badge(&m.status)
            } else {
                format!("{} {}", badge(&m.state), badge(&m.status))
            };
            let storage = match &m.schema {
                Some(schema) => format!("{}.{}", m.database.as_deref().unwrap_or("?"), schema),
                None => m.database.clone().unwrap_or_default(),
            };
            let job = match &m.last_job {
                Some(j) => format!(
                    "<a href=\"/operations#op-{id}\">{id}</a> <span class=\"mono\">{}</span> {}{}",
                    esc(&j.kind),
                    badge(&j.status),
                    match j.error.as_deref().or(m.error.as_deref()) {
                        Some(e) => format!("<br><span class=\"error-text\">{}</span>", esc(e)),
                        None => String::new(),
                    },
                    id = j.id
                ),
                None => match &m.error {
                    Some(e) => format!("<span class=\"error-text\">{}</span>", esc(e)),
                    None => opt(None),
                },
            };
            let _ = write!(
                body,
                "<tr data-tenant=\"{tenant}\" data-module=\"{module}\"><td>{tenant}{kind}</td><td class=\"mono\">{module}</td>\
                 <td class=\"nowrap\">{version}</td><td>{status}</td><td class=\"mono\">{storage}<br><span class=\"muted\">{server}</span></td>\
                 <td>{labels}</td><td class=\"nowrap\">{expires}</td><td class=\"wide\">{job}</td></tr>",
                tenant = esc(&t.name),
                kind = if t.registered { "" } else { " <span class=\"muted\">(manifest)</span>" },
                module = esc(&m.module),
                storage = esc(&storage),
                server = esc(m.server.as_deref().unwrap_or("")),
                labels = opt(Some(&labels.join(", "))),
                expires = time(t.expires_at.as_deref()),
            );
        }
    }
    if list.is_empty() {
        body.push_str("<tr><td colspan=\"8\" class=\"muted\">no tenants yet</td></tr>");
    }
    body.push_str("</tbody></table></div>");
    Ok(Page::new(Section::Tenants, "Tenants", body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_stays_on_this_site() {
        assert_eq!(local_path(Some("/branches/MR-1?x=1")), "/branches/MR-1?x=1");
        for bad in ["//evil.example/", "/\\evil.example", "https://evil.example/", "evil", "/sign-in", "/a\nb", ""] {
            assert_eq!(local_path(Some(bad)), "/", "{bad:?}");
        }
        assert_eq!(local_path(None), "/");
    }

    #[test]
    fn cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("other=1; pgplane_token=abc123; x=y"));
        assert_eq!(cookie_token(&h).as_deref(), Some("abc123"));
        h.insert(header::COOKIE, HeaderValue::from_static("pgplane_tokenx=61"));
        assert_eq!(cookie_token(&h), None);
    }

    #[test]
    fn sign_in_posts_only_from_this_site() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:7070"));
        assert!(same_origin(&h));
        h.insert(header::ORIGIN, HeaderValue::from_static("http://127.0.0.1:7070"));
        assert!(same_origin(&h));
        h.insert(header::ORIGIN, HeaderValue::from_static("https://evil.example"));
        assert!(!same_origin(&h));
    }
}
