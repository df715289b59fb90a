//! pgplane's pure core. Manifest → validated [`manifest::Manifest`] → [`model::Desired`];
//! with an [`observed::Observed`] the [`plan::plan`] function computes ordered actions.
//!
//! **Invariant:** nothing in this crate does I/O beyond reading the manifest file in
//! [`manifest::Manifest::load`]; it depends on no database, HTTP or CLI crate.

pub mod ident;
pub mod manifest;
pub mod migrate;
pub mod model;
pub mod naming;
pub mod observed;
pub mod plan;
pub mod render;
