//! One error shape for every failure of the API: `{"error": {"code", "message"}}`.

use axum::body::Bytes;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// An API failure: an HTTP status, a stable machine code and a message for people.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds for a `Retry-After` header (429).
    pub retry_after: Option<u32>,
}

/// The body of every error response.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable: `bad_request` (400), `unauthorized` (401), `forbidden` (403), `not_found`
    /// (404), `method_not_allowed` (405), `conflict` (409), `too_large` (413),
    /// `unsupported_media_type` (415), `misdirected` (421: a Host this service is not
    /// reached by), `invalid` (422), `too_many_requests` (429, with Retry-After),
    /// `internal` (500), `unavailable` (503: a database cannot be reached).
    pub code: String,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into(), retry_after: None }
    }
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }
    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
    }
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, "conflict", message)
    }
    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", message)
    }
    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }
    /// 429: come back in `retry_after` seconds.
    pub fn too_many(message: impl Into<String>, retry_after: u32) -> ApiError {
        ApiError {
            retry_after: Some(retry_after),
            ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, "too_many_requests", message)
        }
    }
}

/// Anything unexpected is a 500 whose message is the error chain (which never carries
/// passwords: connection errors name host, port and database only). It is logged too.
/// A database that cannot be reached (refused, closed, shutting down) anywhere in the
/// chain is a 503 instead: the request may succeed later.
impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> ApiError {
        ApiError::from(pgplane_ops::error::Error::from(e))
    }
}

/// The operations' typed errors, by variant (never by message text).
impl From<pgplane_ops::error::Error> for ApiError {
    fn from(e: pgplane_ops::error::Error) -> ApiError {
        use pgplane_ops::error::Error as E;
        match e {
            E::NotFound(m) => ApiError::not_found(m),
            E::Conflict(m) => ApiError::conflict(m),
            E::Invalid(m) => ApiError::invalid(m),
            E::Busy(m) => ApiError::new(StatusCode::CONFLICT, "busy", m),
            E::Unavailable(m) => {
                tracing::warn!(error = %m, "a database cannot be reached");
                ApiError::unavailable(m)
            }
            E::Cancelled(m) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "cancelled", m),
            E::Internal(e) => internal(e),
        }
    }
}

fn internal(e: anyhow::Error) -> ApiError {
    {
        let message = format!("{e:#}");
        if e.chain()
            .any(|c| c.is::<NotAnswering>() || c.downcast_ref::<tokio_postgres::Error>().is_some_and(unreachable))
        {
            tracing::warn!(error = %message, "a database cannot be reached");
            return ApiError::unavailable(message);
        }
        tracing::error!(error = %message, "request failed");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
}

impl From<tokio_postgres::Error> for ApiError {
    fn from(e: tokio_postgres::Error) -> ApiError {
        if unreachable(&e) {
            let message = format!("the database cannot be reached: {}", crate::exec::pg_error(e));
            tracing::warn!(error = %message, "a database cannot be reached");
            return ApiError::unavailable(message);
        }
        ApiError::from(crate::exec::pg_error(e))
    }
}

/// A database that did not answer in time (a 503, like one that cannot be reached).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NotAnswering(pub String);

/// Whether `e` says the server cannot be reached now, rather than that a statement failed:
/// the connection was refused, broke or closed (not a protocol error of ours), or the
/// server answered with a connection exception (class 08), "shutting down" or "starting
/// up" (57P01–57P03) or "too many connections" (53300).
fn unreachable(e: &tokio_postgres::Error) -> bool {
    use std::error::Error as _;
    if let Some(db) = e.as_db_error() {
        let code = db.code().code();
        return code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03" | "53300");
    }
    e.is_closed()
        || e.source()
            .and_then(|s| s.downcast_ref::<std::io::Error>())
            .is_some_and(|io| !matches!(io.kind(), std::io::ErrorKind::InvalidInput | std::io::ErrorKind::InvalidData))
}

impl From<deadpool_postgres::PoolError> for ApiError {
    fn from(e: deadpool_postgres::PoolError) -> ApiError {
        tracing::warn!(error = %e, "no database connection");
        ApiError::unavailable(format!("cannot reach the database: {e}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody { error: ErrorDetail { code: self.code.to_string(), message: self.message } };
        let mut r = (self.status, axum::Json(body)).into_response();
        if let Some(s) = self.retry_after {
            r.headers_mut().insert(axum::http::header::RETRY_AFTER, s.into());
        }
        r
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// A JSON request body whose failures use the API's error shape: malformed JSON or a
/// missing `Content-Type: application/json` is a 400, well-formed JSON of the wrong
/// shape (unknown field, wrong type) a 422.
pub struct Body<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Body(v)),
            Err(JsonRejection::JsonDataError(e)) => Err(ApiError::invalid(e.body_text())),
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(too_large(e.body_text())),
            Err(e) => Err(ApiError::bad_request(e.body_text())),
        }
    }
}

fn too_large(message: String) -> ApiError {
    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", message)
}

/// A raw (optional JSON) body whose failures use the error shape (413 over 2 MB).
pub struct RawBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Bytes::from_request(req, state).await {
            Ok(b) => Ok(RawBody(b)),
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(too_large(e.body_text())),
            Err(e) => Err(ApiError::bad_request(e.body_text())),
        }
    }
}

/// Query parameters whose failures (e.g. `?limit=abc`) use the error shape: 400.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|e| ApiError::bad_request(e.body_text()))
    }
}

/// Path parameters whose failures (e.g. invalid UTF-8) use the error shape: 400.
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| ApiPath(p.0))
            .map_err(|e| ApiError::bad_request(e.body_text()))
    }
}

/// Unknown routes under /api/v1.
pub async fn not_found(axum::extract::OriginalUri(uri): axum::extract::OriginalUri) -> ApiError {
    ApiError::not_found(format!("no such route: {}", uri.path()))
}

pub async fn method_not_allowed(
    method: axum::http::Method,
    axum::extract::OriginalUri(uri): axum::extract::OriginalUri,
) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on {} (see /api/v1/openapi.json)", uri.path()),
    )
}
