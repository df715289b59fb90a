//! The one error type operations return across the library's boundary. Front ends branch
//! on the variant (HTTP status, exit code, retry), never on the message text.

use pgplane_core::liquibase::ChangelogError;
use pgplane_core::manifest::ManifestError;
use tokio_postgres::error::SqlState;

/// Why an operation did not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// What the request names does not exist (a branch, a template, a job, a module).
    #[error("{0}")]
    NotFound(String),
    /// The request contradicts the current state (the branch exists, an unmanaged object
    /// has the name, the job already ended).
    #[error("{0}")]
    Conflict(String),
    /// The request or its input is wrong (a manifest, a changelog, a flag); nothing ran.
    #[error("{0}")]
    Invalid(String),
    /// Someone else holds what it needs (a lock, a full queue); try again later.
    #[error("{0}")]
    Busy(String),
    /// A server is down or refuses connections; try again later.
    #[error("{0}")]
    Unavailable(String),
    /// Stopped on request (a cancel, a shutdown, a signal).
    #[error("{0}")]
    Cancelled(String),
    /// Anything else: a bug, or a failure nobody can do anything about by retrying.
    #[error(transparent)]
    Internal(anyhow::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A stable machine-readable name: the JSON error code and the job's `error_code`.
    pub fn code(&self) -> &'static str {
        match self {
            Error::NotFound(_) => "not_found",
            Error::Conflict(_) => "conflict",
            Error::Invalid(_) => "invalid",
            Error::Busy(_) => "busy",
            Error::Unavailable(_) => "unavailable",
            Error::Cancelled(_) => "cancelled",
            Error::Internal(_) => "internal",
        }
    }

    /// Whether trying the same thing again later may succeed.
    pub fn retryable(&self) -> bool {
        matches!(self, Error::Busy(_) | Error::Unavailable(_))
    }

    /// The message with its whole cause chain (`a: b: c`).
    pub fn chain(&self) -> String {
        match self {
            Error::Internal(e) => format!("{e:#}"),
            other => other.to_string(),
        }
    }

    pub fn not_found(m: impl Into<String>) -> Error {
        Error::NotFound(m.into())
    }
    pub fn conflict(m: impl Into<String>) -> Error {
        Error::Conflict(m.into())
    }
    pub fn invalid(m: impl Into<String>) -> Error {
        Error::Invalid(m.into())
    }
    pub fn busy(m: impl Into<String>) -> Error {
        Error::Busy(m.into())
    }
    pub fn unavailable(m: impl Into<String>) -> Error {
        Error::Unavailable(m.into())
    }
}

/// Classifies an error made with `anyhow` inside the library: a typed [`Error`] anywhere in
/// the chain keeps its variant (with the added context in the message); a PostgreSQL
/// connection failure is `Unavailable`, a lock or serialization conflict `Busy`; manifest
/// and changelog errors are `Invalid`; everything else is `Internal`.
impl From<anyhow::Error> for Error {
    fn from(e: anyhow::Error) -> Error {
        let message = format!("{e:#}");
        for cause in e.chain() {
            if let Some(typed) = cause.downcast_ref::<Error>() {
                return match typed {
                    Error::NotFound(_) => Error::NotFound(message),
                    Error::Conflict(_) => Error::Conflict(message),
                    Error::Invalid(_) => Error::Invalid(message),
                    Error::Busy(_) => Error::Busy(message),
                    Error::Unavailable(_) => Error::Unavailable(message),
                    Error::Cancelled(_) => Error::Cancelled(message),
                    Error::Internal(_) => Error::Internal(e),
                };
            }
            if cause.is::<ManifestError>() || cause.is::<ChangelogError>() {
                return Error::Invalid(message);
            }
            if let Some(pg) = cause.downcast_ref::<tokio_postgres::Error>() {
                match postgres_kind(pg) {
                    Some(Kind::Unavailable) => return Error::Unavailable(message),
                    Some(Kind::Busy) => return Error::Busy(message),
                    None => {}
                }
            }
            if let Some(io) = cause.downcast_ref::<std::io::Error>() {
                if matches!(
                    io.kind(),
                    std::io::ErrorKind::ConnectionRefused
                        | std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::ConnectionAborted
                        | std::io::ErrorKind::TimedOut
                ) {
                    return Error::Unavailable(message);
                }
            }
        }
        Error::Internal(e)
    }
}

impl From<tokio_postgres::Error> for Error {
    fn from(e: tokio_postgres::Error) -> Error {
        Error::from(anyhow::Error::new(e))
    }
}

enum Kind {
    Unavailable,
    Busy,
}

fn postgres_kind(e: &tokio_postgres::Error) -> Option<Kind> {
    if e.is_closed() {
        return Some(Kind::Unavailable);
    }
    match e.code() {
        // No database error: the connection itself failed (refused, reset, timed out).
        None => {
            let text = e.to_string();
            (text.contains("connect") || text.contains("timed out") || text.contains("closed"))
                .then_some(Kind::Unavailable)
        }
        Some(code) => {
            let c = code.code();
            if c.starts_with("08")
                || code == &SqlState::ADMIN_SHUTDOWN
                || code == &SqlState::CRASH_SHUTDOWN
                || code == &SqlState::CANNOT_CONNECT_NOW
                || code == &SqlState::TOO_MANY_CONNECTIONS
            {
                Some(Kind::Unavailable)
            } else if code == &SqlState::LOCK_NOT_AVAILABLE
                || code == &SqlState::T_R_SERIALIZATION_FAILURE
                || code == &SqlState::T_R_DEADLOCK_DETECTED
            {
                Some(Kind::Busy)
            } else {
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn typed_errors_keep_their_kind_through_context() {
        let e: anyhow::Result<()> = Err(Error::not_found("branch MR-1 does not exist").into());
        let e = Error::from(e.context("deleting branch MR-1").unwrap_err());
        assert!(matches!(e, Error::NotFound(_)));
        assert_eq!(e.to_string(), "deleting branch MR-1: branch MR-1 does not exist");
        assert_eq!(e.code(), "not_found");
        assert!(!e.retryable());
    }

    #[test]
    fn untyped_errors_are_internal() {
        let e = Error::from(anyhow::anyhow!("something odd"));
        assert!(matches!(e, Error::Internal(_)));
        assert!(!e.retryable());
        assert!(Error::busy("x").retryable() && Error::unavailable("x").retryable());
    }

    #[test]
    fn refused_connections_are_unavailable() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let e = Error::from(anyhow::Error::new(io).context("connecting to server main"));
        assert!(matches!(e, Error::Unavailable(_)), "{e:?}");
    }
}
