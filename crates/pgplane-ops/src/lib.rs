//! pgplane's operations: everything pgplane does to PostgreSQL servers, as library calls
//! that any front end (the CLI, `pgplane serve`, a worker, the event consumer, the stack
//! runner) makes the same way.
//!
//! **Invariant:** this crate depends on no CLI, HTTP, terminal or OpenAPI crate (the
//! `openapi` feature only adds schema derives for `pgplane serve`); `scripts/test` checks it
//! with `cargo tree`. Progress goes through [`events::Events`], never to a terminal.

pub mod branch;
pub mod cancel;
pub mod conn;
pub mod control;
pub mod credentials;
pub mod destroy;
pub mod error;
pub mod events;
pub mod exec;
pub mod jobs;
pub mod local;
pub mod locks;
pub mod migrate;
pub mod observe;
pub mod ops;
pub mod pgbouncer;
pub mod provision;
pub mod runner;
pub mod schema;
pub mod secrets;
pub mod stack;
pub mod status;
pub mod tenants;
pub mod wait;
