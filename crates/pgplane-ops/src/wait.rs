//! `pgplane wait`: poll a server until readiness conditions hold (the replacement for
//! `wait_for_psql.py` loops in deployment scripts).
//!
//! Every `--interval` all conditions are checked on one connection to the target database,
//! re-established on the next round whenever it breaks (a server restart). When that
//! database cannot be connected to because it is missing or closed, catalog conditions are
//! checked on a connection to a fallback database instead, so `server` and `database:NAME`
//! still say what is true. Messages name `host:port/database`, never the URL: it may hold
//! a password.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};

use std::time::Duration;

use anyhow::{bail, Context, Result};
use pgplane_core::manifest::{Manifest, Storage};
use pgplane_core::model::{Desired, Purpose};
use serde_json::json;
use tokio::time::Instant;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

use crate::conn::{Logins, Servers, Target};
use crate::events::Events;
use crate::ops::{self, Ctx};
use crate::secrets::Keyring;

/// Exit code when `--timeout` passed before every condition held.
pub const EXIT_TIMEOUT: i32 = 1;

/// The accepted forms of `--for`, for messages.
pub const FORMS: &str = "server, database:NAME, role:NAME, sql:QUERY, migrated:MODULE, branch:ID";

/// The application_name of wait's sessions (visible in pg_stat_activity).
const APPLICATION_NAME: &str = "pgplane-wait";

/// Rows of a diagnostic query shown as text; JSON has them all.
const DIAGNOSTIC_TEXT_ROWS: usize = 50;

/// What `pgplane wait` is asked: conditions, where to check them and for how long.
#[derive(Debug, Clone)]
pub struct WaitArgs {
    pub conditions: Vec<Condition>,
    /// `--url`, or `DATABASE_URL` from the environment.
    pub url: Option<String>,
    /// A manifest whose server (and `module`'s database) to check instead.
    pub file: Option<std::path::PathBuf>,
    pub env: Option<String>,
    pub module: Option<String>,
    pub timeout: Duration,
    pub interval: Duration,
    pub json: bool,
    pub diagnose_sql: Vec<String>,
}

/// One `--for` condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// The server accepts logins: a connection and `SELECT 1` succeed.
    Server,
    /// The database exists, allows connections and can be connected to.
    Database(String),
    /// The role exists and can log in.
    Role(String),
    /// The first column of the first row is true; run in the target database.
    Sql(String),
    /// The module's migrations ran (see [`probe_migrated`]).
    Migrated(String),
    /// The branch is ready (see [`probe_branch`]).
    Branch(String),
}

/// Parses `server`, `database:NAME`, `role:NAME`, `sql:QUERY`, `migrated:MODULE` or
/// `branch:ID`. Everything after the first colon is the argument, kept as written (a
/// query may hold colons of its own).
pub fn parse_condition(s: &str) -> Result<Condition, String> {
    let (kind, arg) = match s.split_once(':') {
        Some((k, a)) => (k, Some(a)),
        None => (s, None),
    };
    let need = |what: &str| -> Result<String, String> {
        match arg {
            Some(a) if !a.trim().is_empty() => Ok(a.to_string()),
            _ => Err(format!("condition {s:?} needs {what} after the colon, e.g. {kind}:{}", example(kind))),
        }
    };
    match kind {
        "server" => match arg {
            None => Ok(Condition::Server),
            Some(_) => Err(format!("condition {s:?}: `server` takes no argument; write just `server`")),
        },
        "database" => need("a database name").map(Condition::Database),
        "role" => need("a role name").map(Condition::Role),
        "sql" => need("a query").map(Condition::Sql),
        "migrated" => need("a module name").map(Condition::Migrated),
        "branch" => need("a branch id").map(Condition::Branch),
        _ => Err(format!("unknown condition {s:?}; the valid forms are: {FORMS}")),
    }
}

fn example(kind: &str) -> &'static str {
    match kind {
        "database" => "app",
        "role" => "app",
        "sql" => "'SELECT count(*) > 0 FROM jobs'",
        "migrated" => "registry",
        _ => "ID",
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Condition::Server => f.write_str("server"),
            Condition::Database(n) => write!(f, "database:{n}"),
            Condition::Role(n) => write!(f, "role:{n}"),
            Condition::Sql(q) => write!(f, "sql:{q}"),
            Condition::Migrated(m) => write!(f, "migrated:{m}"),
            Condition::Branch(b) => write!(f, "branch:{b}"),
        }
    }
}

/// Whether a condition held in one round, and what was seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub ok: bool,
    /// What was observed, for the report: the value, the missing object, the error.
    pub observed: String,
}

impl Outcome {
    pub fn holds(observed: impl Into<String>) -> Outcome {
        Outcome { ok: true, observed: observed.into() }
    }
    pub fn fails(observed: impl Into<String>) -> Outcome {
        Outcome { ok: false, observed: observed.into() }
    }
}

/// `sql:` truth: boolean true, a non-zero number, or `t`, `true`, `yes`, `on`, `1` (the
/// query runs with the simple protocol, so every value arrives as text).
pub fn truthy(value: &str) -> bool {
    let v = value.trim().to_ascii_lowercase();
    if matches!(v.as_str(), "t" | "true" | "yes" | "on") {
        return true;
    }
    v.parse::<f64>().is_ok_and(|n| n != 0.0 && !n.is_nan())
}

/// What `wait` connects to.
///
/// Who runs what: pgplane's own catalog checks run on `target` with an empty search path
/// (see [`crate::conn::SECURE_OPTIONS`]; for `--url` it is set first thing on each
/// connection, after noting the session's usual one). `sql:` runs as `sql_as` when set
/// (`-f --module M`: the module's owner role, logged in with its derived password, with its
/// usual search path, so nothing the owner planted ever runs with the admin's rights);
/// otherwise on `target`'s connection: with `--url` as the URL's user with that session's
/// usual search path, with `-f` alone as the admin in the admin database with the empty
/// search path (qualify names there). `--diagnose-sql` runs like `sql:` without `sql_as`.
pub struct Resolved {
    pub target: Target,
    /// The database conditions are checked in (`sql:` runs here).
    pub database: String,
    /// Where catalog conditions are checked while `database` cannot be connected to.
    pub fallback: Option<String>,
    /// With `-f`: the manifest, and its desired state when the environment is known.
    pub manifest: Option<Manifest>,
    pub desired: Option<Desired>,
    /// With `-f --module M`: the role `sql:` runs as (the owner of M's database).
    pub sql_as: Option<String>,
    /// With `-f`: the server holding the control database (password generations, branches).
    pub control: Option<Target>,
}

impl Resolved {
    /// `host:port/database`, never the password.
    pub fn display(&self) -> String {
        format!("{}/{}", self.target.display(), self.database)
    }
}

/// `--url`, or `-f FILE [--env E] [--module M]`.
pub fn resolve(ctx: &Ctx, args: &WaitArgs) -> Result<Resolved> {
    if let Some(file) = &args.file {
        // clap fills `url` from DATABASE_URL too; only an explicit --url conflicts.
        if args.url.is_some() && args.url != std::env::var("DATABASE_URL").ok() {
            bail!("pass either --url or -f FILE, not both");
        }
        return resolve_manifest(ctx, file, args.env.as_deref(), args.module.as_deref());
    }
    let Some(url) = &args.url else {
        bail!("nothing to wait on: pass --url URL (or set DATABASE_URL), or -f pgplane.yaml [--module MODULE] to use a manifest's server");
    };
    // The URL's user with its usual search path; `connect` secures it for pgplane's own queries.
    let target = Target::from_url("url", url)?.with_usual_search_path();
    let database = target
        .config
        .get_dbname()
        .or(target.config.get_user())
        .context("the URL names neither a database nor a user; write postgresql://USER@HOST:PORT/DATABASE")?
        .to_string();
    let fallback = (database != "postgres").then(|| "postgres".to_string());
    Ok(Resolved { target, database, fallback, manifest: None, desired: None, sql_as: None, control: None })
}

fn resolve_manifest(ctx: &Ctx, file: &std::path::Path, env: Option<&str>, module: Option<&str>) -> Result<Resolved> {
    let manifest = ops::load_manifest(file)?;
    // The environment matters only for names; without --module it may be absent.
    let env = match module {
        Some(_) => Some(ops::environment(&manifest, env)?),
        None => env.map(str::to_string).or_else(|| manifest.default_environment.clone()),
    };
    let desired = match &env {
        Some(env) => {
            // The manifest's names (registered tenants are read when a condition needs them).
            let provisional = crate::tenants::provisional(&manifest, &Default::default());
            Some(
                Desired::build(&manifest, env, &provisional)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", manifest.file.display()))?,
            )
        }
        None => None,
    };
    let (server, database, owner) = match (module, &desired) {
        (Some(name), Some(desired)) => {
            let m = manifest.module(name).with_context(|| {
                format!(
                    "module {name:?} is not in {} (modules: {})",
                    manifest.file.display(),
                    manifest.modules.iter().map(|m| m.name.as_str()).collect::<Vec<_>>().join(", ")
                )
            })?;
            if m.storage == Storage::DatabasePerTenant {
                bail!(
                    "module {name} has `storage: database-per-tenant`: every tenant has a database of its own and the module has none to wait on; drop --module and wait with --for database:NAME"
                );
            }
            let db = desired
                .databases
                .iter()
                .find(|d| d.origin.module == name && d.origin.tenant.is_none() && d.origin.purpose == Purpose::Database)
                .with_context(|| format!("module {name} has no database in the desired state"))?;
            (Some(m.server.clone()), Some(db.name.clone()), Some(db.owner.clone()))
        }
        _ => (None, None, None),
    };
    let servers = Servers::resolve(&manifest, &ctx.local, || ctx.keys())?;
    let target = match &server {
        Some(s) => servers.get(s)?.clone(),
        None => servers.first().clone(),
    };
    let admin_db = target.config.get_dbname().unwrap_or("postgres").to_string();
    let (database, fallback) = match database {
        Some(db) if db != admin_db => (db, Some(admin_db)),
        Some(db) => (db, None),
        None => {
            let fallback = (admin_db != "postgres").then(|| "postgres".to_string());
            (admin_db, fallback)
        }
    };
    let control = Some(servers.first().clone());
    Ok(Resolved { target, database, fallback, manifest: Some(manifest), desired, sql_as: owner, control })
}

/// A connection that failed, described without the URL.
struct ConnectError {
    text: String,
    /// The server answered that this database is missing or closed: others may work.
    database_unavailable: bool,
}

/// A connection of the loop, and the search path its session had before pgplane emptied it.
struct Conn {
    client: Client,
    usual_path: String,
}

/// Connects; the first statement notes the session's search path and empties it (fully
/// qualified, so it is safe whatever that path holds), so pgplane's catalog queries resolve
/// from `pg_catalog` alone also on a `--url` session.
async fn connect(target: &Target, db: &str, limit: Duration) -> Result<Conn, ConnectError> {
    let mut cfg = target.config.clone();
    cfg.dbname(db);
    cfg.application_name(APPLICATION_NAME);
    cfg.connect_timeout(limit);
    let at = format!("{}/{db}", target.display());
    // The whole handshake is bounded, not just the TCP connect: a server that accepts and
    // never answers must not stall the loop.
    let handshake = async {
        let (client, conn) = cfg.connect(NoTls).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let row = client
            .query_one(
                "SELECT pg_catalog.current_setting('search_path'), pg_catalog.set_config('search_path', '', false)",
                &[],
            )
            .await?;
        Ok::<_, tokio_postgres::Error>(Conn { client, usual_path: row.get(0) })
    };
    match tokio::time::timeout(limit, handshake).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => {
            let code = e.code().map(|c| c.code().to_string());
            Err(ConnectError {
                text: format!("{} at {at}", describe(&e)),
                database_unavailable: matches!(code.as_deref(), Some("3D000" | "55000")),
            })
        }
        Err(_) => Err(ConnectError {
            text: format!("no answer within {} at {at}", human(limit)),
            database_unavailable: false,
        }),
    }
}

/// A tokio-postgres error as one line: the server's message with its SQLSTATE, or the
/// innermost I/O cause (`connection refused`). These never contain the password.
pub fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{}: {} (SQLSTATE {})", db.severity(), db.message(), db.code().code());
    }
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg = s.to_string();
        source = s.source();
    }
    if let Some(i) = msg.find(" (os error") {
        msg.truncate(i);
    }
    let mut chars = msg.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => msg,
    }
}

/// What a probe may use in one round.
#[allow(dead_code)] // client, client_error and database: for probes that need the target's connection
pub struct Probe<'a> {
    /// Connection to [`Probe::database`], when one could be made this round.
    pub client: Option<&'a Client>,
    /// Why there is no `client`.
    pub client_error: &'a str,
    pub target: &'a Target,
    pub database: &'a str,
    /// With `-f`: the manifest and (when the environment is known) its desired state.
    pub manifest: Option<&'a Manifest>,
    pub desired: Option<&'a Desired>,
    /// Bound for connections a probe opens itself.
    pub connect_timeout: Duration,
    /// The secret key, when a condition logs in as a managed role.
    pub keys: Option<&'a Keyring>,
    /// With `-f`: the server holding the control database.
    pub control: Option<&'a Target>,
}

/// Evaluates `migrated:MODULE`: every migration of the module's source is applied in its
/// database, or in every tenant's schema or database. Needs `-f`.
pub async fn probe_migrated(probe: &Probe<'_>, module: &str) -> Outcome {
    let (Some(manifest), Some(desired)) = (probe.manifest, probe.desired) else {
        return Outcome::fails(format!(
            "migrated:{module} needs the manifest: pass -f FILE (and --env E unless the manifest sets `environment:`)"
        ));
    };
    let Some(keys) = probe.keys else {
        return Outcome::fails(format!(
            "migrated:{module} reads each ledger as its owner role, which needs the secret key"
        ));
    };
    let server = |name: &str| -> Result<Target> {
        match manifest.servers.iter().find(|s| s.name == name) {
            Some(s) => Target::from_url(&s.name, &s.url),
            None => Ok(probe.target.clone()),
        }
    };
    let limit = probe.connect_timeout.max(Duration::from_secs(5));
    let check = async {
        // Registered tenants count too: the desired state with the control database's registry.
        let control = probe.control.unwrap_or(probe.target);
        let registry = crate::tenants::registry::load_from(control, &desired.env).await?;
        let registry = crate::tenants::provisional(manifest, &registry);
        let desired = &Desired::build(manifest, &desired.env, &registry)
            .map_err(|e| anyhow::anyhow!("{}: {e}", manifest.file.display()))?;
        // Ledgers are the owners': they are read as the owners, never as the admin.
        let roles = desired.roles.iter().map(|r| (r.server.as_str(), r.name.as_str()));
        let logins = Logins::load_from(keys, control, roles).await?;
        let login = |name: &str, role: &str| logins.target(&server(name)?, role);
        crate::migrate::unmigrated(manifest, desired, module, login).await
    };
    match tokio::time::timeout(limit, check).await {
        Ok(Ok(None)) => Outcome::holds(format!("module {module}: every migration applied")),
        Ok(Ok(Some(missing))) => Outcome::fails(missing),
        Ok(Err(e)) => Outcome::fails(format!("{e:#}")),
        Err(_) => Outcome::fails(format!("no answer within {}", human(limit))),
    }
}

/// Evaluates `branch:ID`: the branch's deployment status is SUCCESS (read from the
/// control database, on the manifest's first server). Needs `-f`.
pub async fn probe_branch(probe: &Probe<'_>, id: &str) -> Outcome {
    let (Some(manifest), Some(desired)) = (probe.manifest, probe.desired) else {
        return Outcome::fails(format!(
            "branch:{id} needs the manifest: pass -f FILE (and --env E unless it sets `environment:`)"
        ));
    };
    let control_server = match manifest.servers.first() {
        Some(s) => match Target::from_url(&s.name, &s.url) {
            Ok(t) => t,
            Err(e) => return Outcome::fails(format!("{e:#}")),
        },
        None => probe.target.clone(),
    };
    let limit = probe.connect_timeout.max(Duration::from_secs(5));
    let check = async {
        let control = control_server.connect(Some(crate::control::CONTROL_DB)).await?;
        crate::branch::records(&control, &desired.env, Some(id), None).await
    };
    match tokio::time::timeout(limit, check).await {
        Ok(Ok(list)) => match list.first() {
            Some(b) if b.status == "SUCCESS" => Outcome::holds(format!("branch {id}: SUCCESS ({})", b.database)),
            Some(b) => Outcome::fails(match &b.error {
                Some(e) => format!("branch {id}: {}: {e}", b.status),
                None => format!("branch {id}: {}", b.status),
            }),
            None => Outcome::fails(format!("branch {id}: no deployment record (UNKNOWN)")),
        },
        Ok(Err(e)) => Outcome::fails(format!("{e:#}")),
        Err(_) => Outcome::fails(format!("no answer within {}", human(limit))),
    }
}

/// The connections of the loop: one to the target database, and a fallback one while that
/// database cannot be connected to. `database:NAME` proves it can connect with a short-lived
/// connection (an idle one would block `DROP DATABASE`), once per database OID.
#[derive(Default)]
struct Conns {
    main: Option<Conn>,
    main_error: String,
    fallback: Option<Conn>,
    fallback_error: Option<String>,
    /// Databases a connection succeeded to, with their OID then.
    proved: BTreeMap<String, u32>,
    /// A query got no answer in time: the connection is treated as broken.
    stalled: AtomicBool,
    /// `sql:` as [`Resolved::sql_as`], logged in as that role.
    owner: Option<Conn>,
}

impl Conns {
    /// Drops broken connections and reconnects what is missing (one attempt per round).
    async fn ensure(&mut self, r: &Resolved, limit: Duration) {
        if self.main.as_ref().is_some_and(|c| c.client.is_closed()) {
            tracing::info!(at = %r.display(), "connection lost; reconnecting");
            self.main = None;
            self.main_error = format!("connection to {} lost", r.display());
        }
        if self.stalled.swap(false, Ordering::Relaxed) {
            tracing::info!(at = %r.display(), "a query got no answer in time; reconnecting");
            self.main = None;
            self.main_error = format!("a query on {} got no answer in time", r.display());
            self.fallback = None;
            self.owner = None;
        }
        if self.fallback.as_ref().is_some_and(|c| c.client.is_closed()) {
            self.fallback = None;
        }
        if self.owner.as_ref().is_some_and(|c| c.client.is_closed()) {
            self.owner = None;
        }
        if self.main.is_some() {
            return;
        }
        match connect(&r.target, &r.database, limit).await {
            Ok(c) => {
                tracing::debug!(at = %r.display(), "connected");
                self.main = Some(c);
                self.fallback = None;
                self.fallback_error = None;
            }
            Err(e) => {
                self.main_error = e.text;
                match (&r.fallback, e.database_unavailable) {
                    (Some(db), true) if self.fallback.is_none() => match connect(&r.target, db, limit).await {
                        Ok(c) => {
                            self.fallback = Some(c);
                            self.fallback_error = None;
                        }
                        Err(e) => self.fallback_error = Some(e.text),
                    },
                    (_, true) => {}
                    (_, false) => {
                        self.fallback = None;
                        self.fallback_error = None;
                    }
                }
            }
        }
    }

    /// The connection `sql:` runs on as [`Resolved::sql_as`]: logged in as that role with
    /// the password pgplane derives for it (made once, again after it broke).
    async fn owner(
        &mut self,
        r: &Resolved,
        role: &str,
        keys: Option<&Keyring>,
        limit: Duration,
    ) -> Result<&Conn, String> {
        if self.owner.is_none() {
            let keys = keys.ok_or_else(|| format!("sql: runs as role {role}, whose password needs the secret key"))?;
            let control = r.control.as_ref().unwrap_or(&r.target);
            let logins =
                tokio::time::timeout(limit, Logins::load_from(keys, control, [(r.target.name.as_str(), role)]))
                    .await
                    .map_err(|_| format!("no answer within {} from the control database", human(limit)))?
                    .map_err(|e| format!("{e:#}"))?;
            let target = logins.target(&r.target, role).map_err(|e| format!("{e:#}"))?.with_usual_search_path();
            let c = connect(&target, &r.database, limit)
                .await
                .map_err(|e| format!("logging in as role {role} (sql: runs as the module's owner): {}", e.text))?;
            self.owner = Some(c);
        }
        self.owner.as_ref().ok_or_else(|| "no connection".to_string())
    }

    /// A connection for catalog queries: the main one or the fallback.
    fn catalog(&self) -> Option<&Conn> {
        self.main.as_ref().or(self.fallback.as_ref())
    }

    /// Why there is no catalog connection.
    fn catalog_error(&self) -> &str {
        self.fallback_error.as_deref().unwrap_or(&self.main_error)
    }
}

/// Evaluates one condition.
async fn evaluate(
    cond: &Condition,
    conns: &mut Conns,
    r: &Resolved,
    keys: Option<&Keyring>,
    connect_limit: Duration,
    query_limit: Duration,
) -> Outcome {
    match cond {
        Condition::Server => match conns.catalog() {
            Some(c) => match bounded(query_limit, &conns.stalled, c.client.simple_query("SELECT 1")).await {
                Ok(_) => Outcome::holds(format!("accepts logins at {}", r.target.display())),
                Err(e) => Outcome::fails(e),
            },
            None => Outcome::fails(conns.catalog_error().to_string()),
        },
        Condition::Database(name) => {
            let Some(c) = conns.catalog() else {
                return Outcome::fails(conns.catalog_error().to_string());
            };
            let sql = "SELECT oid, datallowconn FROM pg_database WHERE datname = $1";
            let row = match bounded(query_limit, &conns.stalled, c.client.query_opt(sql, &[name])).await {
                Ok(row) => row,
                Err(e) => return Outcome::fails(e),
            };
            let accepts = || Outcome::holds(format!("database {name} accepts connections"));
            match row.map(|r| (r.get::<_, u32>(0), r.get::<_, bool>(1))) {
                None => {
                    conns.proved.remove(name);
                    Outcome::fails(format!("database {name} does not exist"))
                }
                Some((_, false)) => {
                    conns.proved.remove(name);
                    Outcome::fails(format!("database {name} exists but does not allow connections"))
                }
                Some(_) if *name == r.database && conns.main.is_some() => accepts(),
                Some((oid, _)) if conns.proved.get(name) == Some(&oid) => accepts(),
                Some((oid, _)) => match connect(&r.target, name, connect_limit).await {
                    Ok(_) => {
                        conns.proved.insert(name.clone(), oid);
                        accepts()
                    }
                    Err(e) => Outcome::fails(format!("database {name} exists but connecting failed: {}", e.text)),
                },
            }
        }
        Condition::Role(name) => {
            let Some(c) = conns.catalog() else {
                return Outcome::fails(conns.catalog_error().to_string());
            };
            let sql = "SELECT rolcanlogin, rolvaliduntil IS NOT NULL AND rolvaliduntil <= now() \
                       FROM pg_roles WHERE rolname = $1";
            match bounded(query_limit, &conns.stalled, c.client.query_opt(sql, &[name])).await {
                Ok(None) => Outcome::fails(format!("role {name} does not exist")),
                Ok(Some(row)) => match (row.get::<_, bool>(0), row.get::<_, bool>(1)) {
                    (false, _) => Outcome::fails(format!("role {name} exists but cannot log in (NOLOGIN)")),
                    (true, true) => {
                        Outcome::fails(format!("role {name} exists but its password has expired (VALID UNTIL)"))
                    }
                    (true, false) => Outcome::holds(format!("role {name} exists and can log in")),
                },
                Err(e) => Outcome::fails(e),
            }
        }
        Condition::Sql(query) => {
            let c = match &r.sql_as {
                Some(role) => match conns.owner(r, role, keys, connect_limit).await {
                    Ok(c) => c,
                    Err(e) => return Outcome::fails(e),
                },
                None => match conns.main.as_ref() {
                    Some(c) => c,
                    None => return Outcome::fails(conns.main_error.clone()),
                },
            };
            let (result, secured) = as_usual(c, query, query_limit).await;
            if !secured {
                // Its search path may still be the usual one: pgplane's queries need another.
                conns.main = None;
                conns.owner = None;
            }
            match result {
                Ok(messages) => {
                    let first = messages.iter().find_map(|m| match m {
                        SimpleQueryMessage::Row(row) => Some(row.get(0).map(str::to_string)),
                        _ => None,
                    });
                    match first {
                        None => Outcome::fails("returned no rows"),
                        Some(None) => Outcome::fails("returned NULL"),
                        Some(Some(v)) if truthy(v.as_str()) => Outcome::holds(format!("returned {v}")),
                        Some(Some(v)) => Outcome::fails(format!("returned {v}")),
                    }
                }
                Err(e) => Outcome::fails(e),
            }
        }
        Condition::Migrated(module) => probe_migrated(&probe(conns, r, keys, connect_limit), module).await,
        Condition::Branch(id) => probe_branch(&probe(conns, r, keys, connect_limit), id).await,
    }
}

/// Runs someone's own SQL (`sql:`, `--diagnose-sql`) with the session's usual search path,
/// then empties it again. `false`: emptying failed, so the connection must not serve
/// pgplane's own queries any more.
async fn as_usual(c: &Conn, sql: &str, limit: Duration) -> (Result<Vec<SimpleQueryMessage>, String>, bool) {
    let run = async {
        if !c.usual_path.is_empty() {
            c.client.execute("SELECT pg_catalog.set_config('search_path', $1, false)", &[&c.usual_path]).await?;
        }
        let result = c.client.simple_query(sql).await;
        let secured = c.usual_path.is_empty()
            || c.client.batch_execute("SELECT pg_catalog.set_config('search_path', '', false)").await.is_ok();
        Ok::<_, tokio_postgres::Error>((result, secured))
    };
    match tokio::time::timeout(limit, run).await {
        Ok(Ok((result, secured))) => (result.map_err(|e| describe(&e)), secured),
        Ok(Err(e)) => (Err(describe(&e)), false),
        Err(_) => (Err(format!("no answer within {}", human(limit))), false),
    }
}

/// Runs a query with a time limit; errors as one line. A query without an answer marks
/// the connections `stalled`, so that the next round reconnects.
async fn bounded<T>(
    limit: Duration,
    stalled: &AtomicBool,
    fut: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, String> {
    match tokio::time::timeout(limit, fut).await {
        Ok(res) => res.map_err(|e| describe(&e)),
        Err(_) => {
            stalled.store(true, Ordering::Relaxed);
            Err(format!("no answer within {}", human(limit)))
        }
    }
}

fn probe<'a>(conns: &'a Conns, r: &'a Resolved, keys: Option<&'a Keyring>, connect_timeout: Duration) -> Probe<'a> {
    Probe {
        client: conns.main.as_ref().map(|c| &c.client),
        client_error: &conns.main_error,
        target: &r.target,
        database: &r.database,
        manifest: r.manifest.as_ref(),
        desired: r.desired.as_ref(),
        connect_timeout,
        keys,
        control: r.control.as_ref(),
    }
}

/// One condition's state across rounds.
#[derive(Debug, Clone)]
pub struct State {
    pub cond: Condition,
    pub outcome: Outcome,
    /// When the condition started to hold (in its current run of rounds).
    pub since: Option<Duration>,
}

/// The result of a diagnostic query.
#[derive(Debug, Clone)]
pub struct Diagnostic {
    pub sql: String,
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Option<String>>>,
    pub error: Option<String>,
}

async fn diagnose(sql: &str, client: Option<&Conn>, no_client: &str, limit: Duration) -> Diagnostic {
    let mut d = Diagnostic { sql: sql.to_string(), columns: Vec::new(), rows: Vec::new(), error: None };
    let Some(c) = client else {
        d.error = Some(format!("not run: {no_client}"));
        return d;
    };
    match as_usual(c, sql, limit).await.0 {
        Ok(messages) => {
            for m in messages {
                match m {
                    SimpleQueryMessage::RowDescription(cols) if d.columns.is_empty() => {
                        d.columns = cols.iter().map(|c| c.name().to_string()).collect();
                    }
                    SimpleQueryMessage::Row(row) => {
                        if d.columns.is_empty() {
                            d.columns = row.columns().iter().map(|c| c.name().to_string()).collect();
                        }
                        d.rows.push((0..row.len()).map(|i| row.get(i).map(str::to_string)).collect());
                    }
                    _ => {}
                }
            }
        }
        Err(e) => d.error = Some(e),
    }
    d
}

/// `1.3s`, `250ms`, `5m`.
pub fn human(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else if d < Duration::from_secs(120) {
        format!("{:.1}s", d.as_secs_f64()).replace(".0s", "s")
    } else {
        format!("{}m{}s", d.as_secs() / 60, d.as_secs() % 60)
    }
}

/// Reports the pending conditions to `events` as the `waiting` stage's message.
fn report_waiting(events: &dyn Events, elapsed: Duration, states: &[State]) {
    let pending: Vec<String> =
        states.iter().filter(|s| !s.outcome.ok).map(|s| format!("{} ({})", s.cond, s.outcome.observed)).collect();
    events.stage("waiting", &format!("waiting {} for {}", human(elapsed), pending.join(", ")));
}

/// What to wait for, and how (the flags of `pgplane wait`, or a stack's `wait` step).
#[derive(Debug, Clone)]
pub struct Spec {
    pub conditions: Vec<Condition>,
    pub interval: Duration,
    pub timeout: Duration,
    /// Run once when the timeout passes, for the report.
    pub diagnose_sql: Vec<String>,
    /// See a condition that turns true within one interval, checks included: each round
    /// starts early by the longest of the last rounds (plus 10 ms for what follows), so
    /// it ends one interval after the previous one began. `pgplane wait` keeps the plain
    /// schedule (a round every interval); stacks use this (the next step waits for it).
    pub within_interval: bool,
}

/// What [`Spec::within_interval`] adds to a round's time for the work after it.
const FOLLOW_UP: Duration = Duration::from_millis(10);

/// How a wait ended: every condition's last observation and the diagnostics.
#[derive(Debug, Clone)]
pub struct Report {
    pub ok: bool,
    pub elapsed: Duration,
    pub states: Vec<State>,
    pub diagnostics: Vec<Diagnostic>,
    /// `host:port/database` of the target, for messages.
    pub target: String,
    pub timeout: Duration,
}

impl Report {
    /// One line per condition (`ok  sql:…  after 1.3s` or `FAIL  sql:…  returned f`), then
    /// each diagnostic query's rows as a table.
    pub fn text(&self) -> String {
        report_text(&self.states, &self.diagnostics)
    }

    pub fn json(&self) -> serde_json::Value {
        json!({
            "ok": self.ok,
            "elapsed_ms": self.elapsed.as_millis() as u64,
            "conditions": self.states.iter().map(|s| json!({
                "condition": s.cond.to_string(),
                "ok": s.outcome.ok,
                "observed": s.outcome.observed,
                "since_ms": s.since.map(|d| d.as_millis() as u64),
            })).collect::<Vec<_>>(),
            "diagnostics": self.diagnostics.iter().map(|d| json!({
                "sql": d.sql, "columns": d.columns, "rows": d.rows, "error": d.error,
            })).collect::<Vec<_>>(),
        })
    }

    /// The timeout message (`None` when every condition held).
    pub fn timed_out(&self) -> Option<String> {
        if self.ok {
            return None;
        }
        let failing: Vec<String> = self.states.iter().filter(|s| !s.outcome.ok).map(|s| s.cond.to_string()).collect();
        Some(format!("timed out after {} on {}; not holding: {}", human(self.timeout), self.target, failing.join(", ")))
    }
}

/// Checks every condition each `spec.interval` until all hold or `spec.timeout` passes;
/// then, on a timeout, runs the diagnostic queries. `on_round` sees every round that did
/// not end the wait (elapsed time, the states). `keys`: the secret key, when a condition
/// logs in as a managed role. Dropping the future cancels the wait.
///
/// Boxed so that callers on any runtime can spawn it (the callback's higher-ranked
/// lifetime otherwise defeats the compiler's `Send` inference).
pub fn until<'a>(
    r: &'a Resolved,
    spec: &'a Spec,
    keys: Option<&'a Keyring>,
    on_round: &'a mut (dyn FnMut(Duration, &[State]) + Send),
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Report> + Send + 'a>> {
    Box::pin(until_inner(r, spec, keys, on_round))
}

async fn until_inner(
    r: &Resolved,
    spec: &Spec,
    keys: Option<&Keyring>,
    on_round: &mut (dyn FnMut(Duration, &[State]) + Send),
) -> Report {
    let started = Instant::now();
    let deadline = started + spec.timeout;
    let mut states: Vec<State> = spec
        .conditions
        .iter()
        .map(|c| State { cond: c.clone(), outcome: Outcome::fails("not checked yet"), since: None })
        .collect();
    let mut conns = Conns { main_error: format!("not connected to {} yet", r.display()), ..Conns::default() };
    let limits = |now: Instant| {
        // Never stall a round on one attempt: a connection gets at most the interval
        // (at least 1s), a query at least 5s; both end at the deadline (at least 1s later).
        let left = deadline.saturating_duration_since(now).max(Duration::from_secs(1));
        (spec.interval.max(Duration::from_secs(1)).min(left), spec.interval.max(Duration::from_secs(5)).min(left))
    };
    // The last rounds' durations (for `within_interval`).
    let mut recent: std::collections::VecDeque<Duration> = std::collections::VecDeque::new();
    let all_ok = loop {
        let round = Instant::now();
        let (connect_limit, query_limit) = limits(round);
        conns.ensure(r, connect_limit).await;
        // Catalog checks first: a slow `sql:` query must not delay them on the shared connection.
        let mut order: Vec<&mut State> = states.iter_mut().collect();
        order.sort_by_key(|s| matches!(s.cond, Condition::Sql(_) | Condition::Migrated(_) | Condition::Branch(_)));
        for s in order {
            let outcome = evaluate(&s.cond, &mut conns, r, keys, connect_limit, query_limit).await;
            s.since = match (outcome.ok, s.since) {
                (true, Some(t)) => Some(t),
                (true, None) => Some(started.elapsed()),
                (false, _) => None,
            };
            s.outcome = outcome;
        }
        if states.iter().all(|s| s.outcome.ok) {
            break true;
        }
        let now = Instant::now();
        if now >= deadline {
            break false;
        }
        on_round(now - started, &states);
        let mut next = round + spec.interval;
        if spec.within_interval {
            if recent.len() == 4 {
                recent.pop_front();
            }
            recent.push_back(now - round);
            let lead = recent.iter().max().copied().unwrap_or_default() + FOLLOW_UP;
            next -= lead.min(spec.interval / 2);
        }
        tokio::time::sleep_until(next.min(deadline)).await;
    };
    let elapsed = started.elapsed();
    let mut diagnostics = Vec::new();
    if !all_ok && !spec.diagnose_sql.is_empty() {
        let (connect_limit, query_limit) = limits(Instant::now());
        if conns.catalog().is_none() {
            conns.ensure(r, connect_limit).await;
        }
        for sql in &spec.diagnose_sql {
            diagnostics.push(diagnose(sql, conns.catalog(), conns.catalog_error(), query_limit).await);
        }
    }
    Report { ok: all_ok, elapsed, states, diagnostics, target: r.display(), timeout: spec.timeout }
}

/// Whether waiting on `conditions` logs in as a managed role (and needs the secret key).
pub fn logs_in(r: &Resolved, conditions: &[Condition]) -> bool {
    conditions.iter().any(|c| match c {
        Condition::Migrated(_) => true,
        Condition::Sql(_) => r.sql_as.is_some(),
        _ => false,
    })
}

/// `pgplane wait`: resolves the target, waits, and returns the report (the caller prints
/// it; exit [`EXIT_TIMEOUT`] when it timed out). Progress goes to `events`.
pub async fn run(ctx: &Ctx, args: WaitArgs, events: &dyn Events) -> Result<Report> {
    if args.interval < Duration::from_millis(10) {
        bail!("--interval {} is too short; use at least 10ms (e.g. 250ms)", human(args.interval));
    }
    let r = resolve(ctx, &args)?;
    let keys = if logs_in(&r, &args.conditions) { Some(ctx.keys()?) } else { None };
    let spec = Spec {
        conditions: args.conditions.clone(),
        interval: args.interval,
        timeout: args.timeout,
        diagnose_sql: args.diagnose_sql.clone(),
        within_interval: false,
    };
    let report = {
        let mut on_round = |elapsed: Duration, states: &[State]| report_waiting(events, elapsed, states);
        // `events` is not `Send`-bounded here; the wait runs on this task.
        until_inner(&r, &spec, keys, &mut on_round).await
    };
    events.progress_done();
    Ok(report)
}

fn report_text(states: &[State], diagnostics: &[Diagnostic]) -> String {
    let width = states.iter().map(|s| s.cond.to_string().chars().count()).max().unwrap_or(0);
    let mut out = String::new();
    for s in states {
        let cond = s.cond.to_string();
        let pad = " ".repeat(width - cond.chars().count());
        match (s.outcome.ok, s.since) {
            (true, Some(t)) => out.push_str(&format!("ok    {cond}{pad}  after {}\n", human(t))),
            _ => out.push_str(&format!("FAIL  {cond}{pad}  {}\n", s.outcome.observed)),
        }
    }
    for d in diagnostics {
        out.push_str(&format!("\ndiagnostic: {}\n", d.sql));
        if let Some(e) = &d.error {
            out.push_str(&format!("  error: {e}\n"));
            continue;
        }
        out.push_str(&table(&d.columns, &d.rows));
    }
    out
}

/// A psql-like table, indented; at most [`DIAGNOSTIC_TEXT_ROWS`] rows.
fn table(columns: &[String], rows: &[Vec<Option<String>>]) -> String {
    let cell = |v: &Option<String>| v.clone().unwrap_or_else(|| "NULL".into());
    let shown = &rows[..rows.len().min(DIAGNOSTIC_TEXT_ROWS)];
    let mut widths: Vec<usize> = columns.iter().map(|c| c.chars().count()).collect();
    for row in shown {
        for (i, v) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell(v).chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let parts: Vec<String> =
            cells.iter().zip(&widths).map(|(c, w)| format!("{c}{}", " ".repeat(w - c.chars().count()))).collect();
        format!("  {}\n", parts.join(" | ").trim_end())
    };
    let mut out = line(columns.to_vec());
    out.push_str(&format!("  {}\n", widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>().join("-+-")));
    for row in shown {
        out.push_str(&line(row.iter().map(cell).collect()));
    }
    match rows.len() {
        n if n > shown.len() => out.push_str(&format!("  ({n} rows, {} shown)\n", shown.len())),
        1 => out.push_str("  (1 row)\n"),
        n => out.push_str(&format!("  ({n} rows)\n")),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_parse() {
        assert_eq!(parse_condition("server"), Ok(Condition::Server));
        assert_eq!(parse_condition("database:app"), Ok(Condition::Database("app".into())));
        assert_eq!(parse_condition("role:dev_app"), Ok(Condition::Role("dev_app".into())));
        assert_eq!(parse_condition("migrated:registry"), Ok(Condition::Migrated("registry".into())));
        assert_eq!(parse_condition("branch:42"), Ok(Condition::Branch("42".into())));
    }

    #[test]
    fn sql_keeps_everything_after_the_first_colon() {
        let q = "SELECT '1'::int = 1 AND 'a:b' <> ''";
        assert_eq!(parse_condition(&format!("sql:{q}")), Ok(Condition::Sql(q.into())));
        assert_eq!(parse_condition(&format!("sql:{q}")).unwrap().to_string(), format!("sql:{q}"));
    }

    #[test]
    fn bad_conditions_say_what_is_valid() {
        let e = parse_condition("datbase:app").unwrap_err();
        assert!(e.contains("unknown condition \"datbase:app\""), "{e}");
        assert!(e.contains(FORMS), "{e}");
        assert!(parse_condition("database:").unwrap_err().contains("needs a database name"));
        assert!(parse_condition("sql:  ").unwrap_err().contains("needs a query"));
        assert!(parse_condition("server:x").unwrap_err().contains("takes no argument"));
        assert!(parse_condition("").unwrap_err().contains("unknown condition"));
    }

    #[test]
    fn truth_values() {
        for v in ["t", "true", "TRUE", "yes", "on", "1", "2", "-1", "0.5"] {
            assert!(truthy(v), "{v}");
        }
        for v in ["f", "false", "no", "off", "0", "0.0", "", "x", "NaN"] {
            assert!(!truthy(v), "{v}");
        }
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(human(Duration::from_millis(250)), "250ms");
        assert_eq!(human(Duration::from_millis(1300)), "1.3s");
        assert_eq!(human(Duration::from_secs(2)), "2s");
        assert_eq!(human(Duration::from_secs(300)), "5m0s");
    }

    #[test]
    fn tables_are_aligned() {
        let t = table(&["a".into(), "long".into()], &[vec![Some("xyz".into()), None]]);
        assert_eq!(t, "  a   | long\n  ----+-----\n  xyz | NULL\n  (1 row)\n");
    }
}
