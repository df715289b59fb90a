//! The web console (server-rendered pages).

use axum::Router;

use super::state::Shared;

pub fn routes() -> Router<Shared> {
    Router::new()
}
