//! The executor: runs a plan's actions in order, journaling ownership in the control
//! database around each one.
//!
//! **Invariant:** a claim is committed before the statement that creates the object,
//! and a record is deleted only after the statement that drops it succeeded. A crash at
//! any point leaves records for at most a few objects that do not exist yet (the next
//! apply creates them) and never an object pgplane does not know.

use std::collections::{BTreeMap, HashMap};

use anyhow::{Context, Result};
use pgplane_core::ident::quote_literal;
use pgplane_core::model::ObjectKind;
use pgplane_core::plan::{Action, ActionKind, Plan, RecordChange, SqlPart};
use tokio_postgres::Client;

use crate::conn::{Role, Servers};
use crate::control;
use crate::observe::{self, Fresh};
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
    lock: &'a control::ApplyLock,
    pub keys: &'a Keyring,
    conns: HashMap<(String, Option<String>), Client>,
    /// Databases whose contents to capture (with these readers) before their connection
    /// closes, for the observation cache: no extra connection per database.
    observe: BTreeMap<(String, String), Vec<String>>,
    /// What was captured, in order; a later capture of the same database supersedes.
    pub captured: Vec<Fresh>,
}

impl<'a> Executor<'a> {
    pub fn new(
        servers: &'a Servers,
        control: &'a Client,
        lock: &'a control::ApplyLock,
        keys: &'a Keyring,
        observe: BTreeMap<(String, String), Vec<String>>,
    ) -> Executor<'a> {
        Executor { servers, control, lock, keys, conns: HashMap::new(), observe, captured: Vec::new() }
    }

    /// Reads a database's fingerprint, then its contents, on the connection about to close.
    /// Best effort: a database not captured is read again (or deeply by the next plan).
    async fn capture(&mut self, server: &str, db: &str, client: &Client) {
        let Some(readers) = self.observe.get(&(server.to_string(), db.to_string())) else { return };
        let names = vec![db.to_string()];
        let read = async {
            let fingerprint = observe::fingerprints(client, &names).await?.remove(db).unwrap_or_default();
            let contents = observe::read_contents(client, readers).await?;
            Ok::<_, anyhow::Error>((fingerprint, contents))
        };
        match read.await {
            Ok((fingerprint, contents)) => self.captured.push(Fresh {
                server: server.into(),
                database: db.into(),
                fingerprint,
                readers: readers.clone(),
                contents,
            }),
            Err(e) => tracing::debug!(error = %format!("{e:#}"), db, "could not capture the database for the cache"),
        }
    }

    async fn close_database_connections(&mut self, keep: Option<(&str, Option<&str>)>) {
        let closing: Vec<(String, Option<String>)> = self
            .conns
            .keys()
            .filter(|(s, d)| d.is_some() && keep != Some((s.as_str(), d.as_deref())))
            .cloned()
            .collect();
        for key in closing {
            if let Some(client) = self.conns.remove(&key) {
                if let Some(db) = &key.1 {
                    self.capture(&key.0, db, &client).await;
                }
            }
        }
    }

    async fn client(&mut self, server: &str, db: Option<&str>) -> Result<&Client> {
        let key = (server.to_string(), db.map(str::to_string));
        if db.is_some() {
            // Actions of one database come together in a plan: keep admin connections and
            // the current database's only, so a plan over thousands of databases never holds
            // more than a few connections (max_connections is often 100).
            self.close_database_connections(Some((server, db))).await;
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
        self.close_database_connections(None).await;
        progress.finish();
        Ok(plan.actions.len())
    }

    async fn run_one(&mut self, action: &Action) -> Result<()> {
        self.lock.ensure_held().await?;
        let new_claim = match &action.record {
            RecordChange::Claim(rec) => control::claim(self.control, rec).await?,
            _ => false,
        };
        let result = self.run_sql(action).await;
        if let (Err(e), true, RecordChange::Claim(rec)) = (&result, new_claim, &action.record) {
            // The server rejected the CREATE, so the object does not exist: withdraw the
            // claim, so that an object someone creates under this name later is not taken
            // for ours. After a lost connection the outcome is unknown: keep the claim, as
            // after a crash (the next apply sees whether the object exists).
            if e.is::<Rejected>() {
                if let Err(e) = control::forget(self.control, rec).await {
                    tracing::warn!(error = %format!("{e:#}"), "could not withdraw the claim after a failed action");
                }
            }
        }
        result?;
        if let RecordChange::Forget(rec) = &action.record {
            control::forget(self.control, rec).await?;
        }
        Ok(())
    }

    /// The OID of a role or database on `server` now (`None`: there is none of that name).
    async fn current_oid(&mut self, server: &str, kind: ObjectKind, name: &str) -> Result<Option<u32>> {
        let sql = match kind {
            ObjectKind::Role => {
                "SELECT oid FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) $1::pg_catalog.text"
            }
            ObjectKind::Database => {
                "SELECT oid FROM pg_catalog.pg_database WHERE datname OPERATOR(pg_catalog.=) $1::pg_catalog.text"
            }
            ObjectKind::Schema | ObjectKind::Extension => return Ok(None),
        };
        let client = self.client(server, None).await?;
        Ok(client.query_opt(sql, &[&name]).await?.map(|r| r.get(0)))
    }

    async fn run_sql(&mut self, action: &Action) -> Result<()> {
        if !action.sql.is_empty() {
            // Every role and database the statement acts on or runs in is still the one the
            // plan saw: one dropped and re-created by someone else meanwhile is not ours.
            for e in &action.expect {
                let now = self.current_oid(&action.server, e.kind, &e.name).await?;
                if now != Some(e.oid) {
                    return Err(anyhow::Error::new(Rejected(format!(
                        "{} {} is no longer the one the plan saw (OID {}, now {}): it was dropped or re-created \
                         outside pgplane meanwhile; nothing more runs, plan again",
                        e.kind.as_str(),
                        e.name,
                        e.oid,
                        now.map_or_else(|| "none".to_string(), |o| o.to_string())
                    ))));
                }
            }
            // Resolve passwords to SCRAM verifiers: the server never sees a password.
            let mut verifiers = HashMap::new();
            for part in &action.sql.0 {
                if let SqlPart::Password { role } = part {
                    let generation = control::generation(self.control, &action.server, role).await?;
                    let password = self.keys.password(&action.server, role, generation);
                    verifiers.insert(role.clone(), (generation, scram_verifier(&password)));
                }
            }
            let sql = action.sql.render(|role| quote_literal(&verifiers[role].1));
            if action.kind == ActionKind::DropDatabase {
                // Our own cached connections to it would block nothing (FORCE), but are useless after.
                if let Some(db) = action.target.strip_prefix("database ") {
                    self.conns.remove(&(action.server.clone(), Some(db.to_string())));
                }
            }
            let client = self.client(&action.server, action.database.as_deref()).await?;
            client.batch_execute(&sql).await.map_err(pg_error)?;
            // What pgplane just created is known by its OID from now on.
            if let (ActionKind::CreateRole | ActionKind::CreateDatabase, RecordChange::Claim(rec)) =
                (action.kind, &action.record)
            {
                if let Some(oid) = self.current_oid(&action.server, rec.object.kind, &rec.object.name).await? {
                    control::set_oid(self.control, rec, oid).await?;
                }
            }
            // The verifiers just set match their passwords: the next drift check compares strings.
            let verified: Vec<(String, String, i32, String)> = verifiers
                .into_iter()
                .map(|(role, (generation, verifier))| {
                    let token = self.keys.verified_token(&action.server, &role, generation, &verifier);
                    (action.server.clone(), role, generation, token)
                })
                .collect();
            control::store_verified(self.control, &verified).await?;
        }
        Ok(())
    }
}

/// The server executed the statement and rejected it (it had an SQLSTATE): nothing of it
/// took effect.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Rejected(String);

/// A PostgreSQL error with its message, detail and hint on one line; [`Rejected`] when the
/// server answered with an error, a plain error when the connection failed.
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
            anyhow::Error::new(Rejected(msg))
        }
        None => anyhow::Error::new(e),
    }
}
