//! The OpenAPI 3 document, generated from the handlers' annotations. The committed copy
//! (`docs/openapi.json`) must equal it: `tests` below fails otherwise; regenerate with
//! `UPDATE_OPENAPI=1 cargo test -p pgplane openapi`.

use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{api, events, tenants};

#[derive(OpenApi)]
#[openapi(
    info(title = "pgplane", description = "Control plane for shared PostgreSQL: databases, branches, tenants, operations. \
        Every failure answers `{\"error\": {\"code\", \"message\"}}`. Send `Authorization: Bearer TOKEN`: \
        `read` tokens may read and plan, `admin` tokens may also change things. \
        Every POST (and any request with a body) must send `Content-Type: application/json`, also with an empty body (415 otherwise); \
        a browser's cross-site request (a foreign `Origin`, `Sec-Fetch-Site: cross-site`) is 403; \
        a `Host` that is not the listen address or an `--allowed-host` is 421. \
        A database that cannot be reached is 503."),
    paths(
        api::databases, api::database_tables, api::database_table,
        api::branches, api::create_branch, api::branch, api::reset_branch, api::delete_branch, api::branch_tables,
        api::branch_table, api::branch_diff,
        api::plan, api::apply, api::operations, api::operation, api::cancel_operation,
        super::stacks::stacks, super::stacks::stack_run,
        tenants::tenants, tenants::tenant, tenants::create, tenants::install,
        events::publish, events::list, events::status, events::summary, events::retry, events::skip,
    ),
    modifiers(&Bearer),
    tags((name = "databases"), (name = "branches"), (name = "tenants"), (name = "operations"), (name = "stacks"), (name = "events")),
)]
struct ApiDoc;

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearer", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
    }
}

/// The document as pretty JSON, with a trailing newline (as committed).
pub fn document() -> String {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    let mut text = doc.to_pretty_json().unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    #[test]
    fn committed_openapi_document_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json");
        let current = super::document();
        if std::env::var_os("UPDATE_OPENAPI").is_some() {
            std::fs::write(&path, &current).expect("writing docs/openapi.json");
            return;
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == current,
            "docs/openapi.json is not what the code generates; run `UPDATE_OPENAPI=1 cargo test -p pgplane openapi` and commit it"
        );
    }
}
