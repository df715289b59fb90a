//! pgplane's pure core. Manifest → validated [`manifest::Manifest`] → [`model::Desired`];
//! with an [`observed::Observed`] the [`plan::plan`] function computes ordered actions.
//!
//! [`liquibase`] parses Liquibase changelogs into changesets with their SQL and checksums;
//! [`sqlsplit`] splits SQL scripts into statements.
//!
//! **Invariant:** nothing in this crate does I/O beyond reading the manifest file in
//! [`manifest::Manifest::load`] and reading migration source files through a
//! [`liquibase::Loader`] (confined to a folder by [`confine`]); it never talks to a database or the network, and depends on no
//! database, HTTP or CLI crate.

pub mod branch;
pub mod confine;
pub mod destroy;
pub mod event;
pub mod ident;
pub mod job;
pub mod liquibase;
pub mod manifest;
pub mod migrate;
pub mod model;
pub mod naming;
pub mod observed;
pub mod pgbouncer;
pub mod plan;
pub mod render;
pub mod schema;
pub mod sqlsplit;
pub mod stack;
pub mod tenant;
