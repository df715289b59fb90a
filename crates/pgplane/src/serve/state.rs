//! What every request shares: the manifest as loaded at start, the servers, connection
//! pools (one per server and database, idle connections closed after a few seconds so
//! that pooled sessions never hold up `DROP DATABASE` or a template copy), the tokens,
//! the metrics and the background operations.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use pgplane_core::manifest::Manifest;
use tokio_postgres::NoTls;

use super::auth::Tokens;
use super::error::{ApiError, ApiResult};
use super::jobs::Jobs;
use super::metrics::Metrics;
use crate::conn::{Servers, Target};
use crate::control::CONTROL_DB;

/// Pooled connections per (server, database).
const POOL_SIZE: usize = 8;
/// Idle pooled connections older than this are closed.
const IDLE: Duration = Duration::from_secs(3);

pub type Shared = Arc<AppState>;

pub struct AppState {
    pub home: PathBuf,
    pub manifest: Manifest,
    /// The folder of the manifest, canonical: `sources` of API requests must stay inside.
    pub base: PathBuf,
    pub env_flag: Option<String>,
    pub env: String,
    pub servers: Servers,
    pub tokens: Tokens,
    pub metrics: Metrics,
    /// Durable jobs: this process's worker slots and leader task, and the queueing of
    /// requests (all state in the control database).
    pub jobs: Jobs,
    /// Concurrent reads of the same table list share one query.
    pub tables: super::coalesce::Coalescer,
    /// The event consumer (`--consume`), if this process runs one.
    pub consumer: Mutex<Option<pgplane_ops::events::service::Service>>,
    pools: Mutex<HashMap<(String, String), Pool>>,
    /// Which server holds a database (filled on first use).
    located: Mutex<HashMap<String, String>>,
}

impl AppState {
    /// Loads the manifest, resolves the servers (starting the embedded one when the
    /// manifest lists none) and makes sure the control database exists and is migrated.
    pub async fn open(
        home: PathBuf,
        file: &std::path::Path,
        env_flag: Option<String>,
        tokens: Tokens,
        limits: super::jobs::Limits,
        reconcile_every: Duration,
    ) -> Result<Shared> {
        let mut ctx = crate::ops::Ctx::new(home.clone());
        let s = crate::ops::Session::open(&mut ctx, file, env_flag.as_deref()).await?;
        crate::control::create_if_missing(s.first_admin()).await?;
        crate::control::ensure_as(s.servers.first(), crate::conn::Role::Branch).await?;
        let base = s
            .manifest
            .file
            .parent()
            .map(|p| if p.as_os_str().is_empty() { std::path::Path::new(".") } else { p })
            .unwrap_or(std::path::Path::new("."))
            .canonicalize()
            .context("the manifest's folder")?;
        let env = s.desired.env.clone();
        let metrics = Metrics::new();
        let jobs = Jobs::start(
            pgplane_ops::jobs::node::Setup {
                home: home.clone(),
                manifest: crate::ops::ManifestArgs { file: file.to_path_buf(), env: Some(env.clone()) },
                env: env.clone(),
                fingerprint: pgplane_ops::runner::fingerprint(file)?,
                keep_file: s.manifest.branches.keep_file.clone(),
                control: s.servers.first().clone(),
                workers: limits.workers,
                reconcile_every,
                name: format!("serve@{}:{}", pgplane_ops::jobs::worker::hostname(), std::process::id()),
                hooks: None,
            },
            limits.backlog,
            metrics.claim_latency.clone(),
        );
        let state = Arc::new(AppState {
            home,
            env: s.desired.env.clone(),
            manifest: s.manifest,
            base,
            env_flag,
            servers: s.servers,
            tokens,
            metrics,
            jobs,
            tables: Default::default(),
            consumer: Mutex::new(None),
            pools: Mutex::new(HashMap::new()),
            located: Mutex::new(HashMap::new()),
        });
        let janitor = Arc::downgrade(&state);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let Some(state) = janitor.upgrade() else { return };
                state.close_idle();
            }
        });
        Ok(state)
    }

    /// The event partitions this process consumes (`None`: it runs no consumer).
    pub fn consumer_partitions(&self) -> Option<Vec<i32>> {
        self.consumer.lock().ok()?.as_ref().map(|c| c.stats.partitions())
    }

    fn close_idle(&self) {
        let pools: Vec<Pool> = self.pools.lock().map(|p| p.values().cloned().collect()).unwrap_or_default();
        for pool in pools {
            pool.retain(|_, m| m.last_used() < IDLE);
        }
    }

    /// A pooled connection to `database` on `server` (`None`: the server's admin database).
    pub async fn client(&self, server: &str, database: Option<&str>) -> ApiResult<Object> {
        let target = self.servers.get(server)?;
        let db =
            database.map(str::to_string).unwrap_or_else(|| target.config.get_dbname().unwrap_or("postgres").into());
        let pool = {
            let mut pools = self.pools.lock().map_err(|_| anyhow::anyhow!("connection pools poisoned"))?;
            pools.entry((server.to_string(), db.clone())).or_insert_with(|| pool(target, &db)).clone()
        };
        Ok(pool.get().await?)
    }

    /// A connection to the control database.
    pub async fn control(&self) -> ApiResult<Object> {
        self.client(&self.servers.first().name.clone(), Some(CONTROL_DB)).await
    }

    /// An unpooled connection (templates: a pooled idle session would delay copies).
    pub async fn connect_once(&self, server: &str, database: &str) -> ApiResult<tokio_postgres::Client> {
        Ok(self.servers.get(server)?.connect_named(Some(database), "pgplane-serve").await?)
    }

    /// The server holding a (non-template) database, or 404.
    pub async fn locate(&self, database: &str) -> ApiResult<String> {
        if database.contains('\0') {
            return Err(ApiError::not_found(format!("there is no database {database:?}")));
        }
        if let Some(s) = self.located.lock().ok().and_then(|m| m.get(database).cloned()) {
            return Ok(s);
        }
        for target in &self.servers.list {
            let admin = self.client(&target.name, None).await?;
            let found: bool = admin
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1 AND datallowconn AND NOT datistemplate)",
                    &[&database],
                )
                .await?
                .get(0);
            if found {
                if let Ok(mut m) = self.located.lock() {
                    m.insert(database.to_string(), target.name.clone());
                }
                return Ok(target.name.clone());
            }
        }
        Err(ApiError::not_found(format!(
            "there is no database {database:?} on the servers of {}",
            self.manifest.file.display()
        )))
    }

    /// A pooled connection to a database found by [`AppState::locate`]; a database dropped
    /// since is forgotten and reported as 404.
    pub async fn database(&self, database: &str) -> ApiResult<Object> {
        let server = self.locate(database).await?;
        match self.client(&server, Some(database)).await {
            Ok(c) => Ok(c),
            Err(e) => {
                if let Ok(mut m) = self.located.lock() {
                    m.remove(database);
                }
                self.forget_pool(&server, database);
                // Gone only when its server says so: a server that is down is a 503.
                match self.locate(database).await {
                    Err(l) if l.status == axum::http::StatusCode::NOT_FOUND => {
                        Err(ApiError::not_found(format!("there is no database {database:?} any more")))
                    }
                    _ => Err(e),
                }
            }
        }
    }

    /// Closes the pool of a database about to be dropped.
    pub fn forget_pool(&self, server: &str, database: &str) {
        if let Ok(mut p) = self.pools.lock() {
            if let Some(pool) = p.remove(&(server.to_string(), database.to_string())) {
                pool.close();
            }
        }
    }
}

fn pool(target: &Target, database: &str) -> Pool {
    // The admin's config, so pooled sessions start with `conn::SECURE_OPTIONS` too (an empty
    // search path, which no database setting and no `RESET ALL` changes).
    let mut cfg = target.config.clone();
    cfg.dbname(database);
    cfg.application_name("pgplane-serve");
    if cfg.get_connect_timeout().is_none() {
        cfg.connect_timeout(Duration::from_secs(10));
    }
    let manager = Manager::from_config(cfg, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
    Pool::builder(manager)
        .max_size(POOL_SIZE)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(30)))
        .create_timeout(Some(Duration::from_secs(10)))
        .build()
        .expect("a pool with a runtime and timeouts always builds")
}
