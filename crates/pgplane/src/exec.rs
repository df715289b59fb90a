//! The executor: runs a plan's actions in order, journaling ownership in the control
//! database around each one.
//!
//! **Invariant:** a claim is committed before the statement that creates the object,
//! and a record is deleted only after the statement that drops it succeeded. A crash at
//! any point leaves records for at most a few objects that do not exist yet (the next
//! apply creates them) and never an object pgplane does not know.

use std::collections::HashMap;

use anyhow::{Context, Result};
use pgplane_core::ident::quote_literal;
use pgplane_core::plan::{Action, ActionKind, Plan, RecordChange, SqlPart};
use tokio_postgres::Client;

use crate::conn::{Role, Servers};
use crate::control;
use crate::secrets::{scram_verifier, Keyring};

/// Receives progress as actions run.
pub trait Progress {
    fn start(&self, total: usize);
    fn action(&self, index: usize, action: &Action);
    fn finish(&self);
}

pub struct Executor<'a> {
    pub servers: &'a Servers,
    pub control: &'a Client,
    pub keys: &'a Keyring,
    conns: HashMap<(String, Option<String>), Client>,
}

impl<'a> Executor<'a> {
    pub fn new(servers: &'a Servers, control: &'a Client, keys: &'a Keyring) -> Executor<'a> {
        Executor { servers, control, keys, conns: HashMap::new() }
    }

    async fn client(&mut self, server: &str, db: Option<&str>) -> Result<&Client> {
        let key = (server.to_string(), db.map(str::to_string));
        if db.is_some() {
            // Actions of one database come together in a plan: keep admin connections and
            // the current database's only, so a plan over thousands of databases never holds
            // more than a few connections (max_connections is often 100).
            self.conns.retain(|(s, d), _| d.is_none() || (s.as_str(), d.as_deref()) == (server, db));
        }
        if !self.conns.contains_key(&key) {
            let client = self.servers.get(server)?.connect_as(db, Role::Apply).await?;
            self.conns.insert(key.clone(), client);
        }
        Ok(&self.conns[&key])
    }

    /// Runs every action; stops at the first failure, naming the action.
    pub async fn run(&mut self, plan: &Plan, progress: &dyn Progress) -> Result<usize> {
        progress.start(plan.actions.len());
        for (i, action) in plan.actions.iter().enumerate() {
            progress.action(i, action);
            self.run_one(action).await.with_context(|| {
                format!(
                    "action {}/{} failed: {} {} ({})",
                    i + 1,
                    plan.actions.len(),
                    action.kind.as_str(),
                    action.target,
                    action.sql.redacted()
                )
            })?;
        }
        progress.finish();
        Ok(plan.actions.len())
    }

    async fn run_one(&mut self, action: &Action) -> Result<()> {
        let new_claim = match &action.record {
            RecordChange::Claim(rec) => control::claim(self.control, rec).await?,
            _ => false,
        };
        let result = self.run_sql(action).await;
        if let (Err(_), true, RecordChange::Claim(rec)) = (&result, new_claim, &action.record) {
            // The CREATE failed (the object does not exist): withdraw the claim, so that an
            // object someone creates under this name later is not taken for ours.
            if let Err(e) = control::forget(self.control, rec).await {
                tracing::warn!(error = %format!("{e:#}"), "could not withdraw the claim after a failed action");
            }
        }
        result?;
        if let RecordChange::Forget(rec) = &action.record {
            control::forget(self.control, rec).await?;
        }
        Ok(())
    }

    async fn run_sql(&mut self, action: &Action) -> Result<()> {
        if !action.sql.is_empty() {
            // Resolve passwords to SCRAM verifiers: the server never sees a password.
            let mut verifiers = HashMap::new();
            for part in &action.sql.0 {
                if let SqlPart::Password { role } = part {
                    let generation = control::generation(self.control, &action.server, role).await?;
                    let password = self.keys.password(&action.server, role, generation);
                    verifiers.insert(role.clone(), quote_literal(&scram_verifier(&password)));
                }
            }
            let sql = action.sql.render(|role| verifiers[role].clone());
            if action.kind == ActionKind::DropDatabase {
                // Our own cached connections to it would block nothing (FORCE), but are useless after.
                if let Some(db) = action.target.strip_prefix("database ") {
                    self.conns.remove(&(action.server.clone(), Some(db.to_string())));
                }
            }
            let client = self.client(&action.server, action.database.as_deref()).await?;
            client.batch_execute(&sql).await.map_err(pg_error)?;
        }
        Ok(())
    }
}

/// A PostgreSQL error with its message, detail and hint on one line.
pub fn pg_error(e: tokio_postgres::Error) -> anyhow::Error {
    match e.as_db_error() {
        Some(db) => {
            let mut msg = format!("{}: {} (SQLSTATE {})", db.severity(), db.message(), db.code().code());
            if let Some(d) = db.detail() {
                msg.push_str(&format!("; detail: {d}"));
            }
            if let Some(h) = db.hint() {
                msg.push_str(&format!("; hint: {h}"));
            }
            anyhow::anyhow!(msg)
        }
        None => anyhow::Error::new(e),
    }
}
