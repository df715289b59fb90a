//! Template databases and branch databases: build a template from migration sources,
//! stamp branches from it with `CREATE DATABASE … TEMPLATE`, deploy candidate sources,
//! record statuses in the control database, and clean up.
//!
//! Locks (session advisory locks in the control database, each on a connection of its own
//! that lives as long as the operation): one per branch, so operations on the same branch
//! serialize and different branches run in parallel; one per template, taken shared while
//! a branch is copied from it and exclusive while a rebuilt template is swapped in.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use pgplane_core::ident::quote_ident;
use pgplane_core::manifest::{TemplateSessions, TemplateSpec};
use serde::Serialize;
use serde_json::Value;
use tokio_postgres::Client;

use crate::conn::{Role, Target as Server};
use crate::control::{self, CONTROL_DB};
use crate::migrate;
use crate::ops::Session;

use crate::locks::{BRANCH as BRANCH_LOCK, TEMPLATE as TEMPLATE_LOCK, TEMPLATE_BUILD as TEMPLATE_BUILD_LOCK};

#[derive(Debug, Clone, Copy)]
enum Lock {
    Exclusive,
    Shared,
}

/// The branch lock's key: two ids that become the same name share it.
fn branch_key(env: &str, id: &str) -> String {
    format!("{env}/{}", pgplane_core::branch::sanitize(id).unwrap_or_else(|_| id.to_string()))
}

/// Templates larger than this (`pg_database_size`) are copied with `STRATEGY FILE_COPY`,
/// smaller ones with `WAL_LOG` (PostgreSQL 15's default). `bench/branch` measured the
/// crossover at 30–60 MB on this machine (four passes: 37, 30, 34, 41 MB; below ~60 MB the
/// two are within 0.03 s), with FILE_COPY 1.4x faster at 100 MB and 2.6x at 1 GB. 64 MB
/// sits just above that band, so small templates do not pay FILE_COPY's two checkpoints,
/// which every database on a shared server feels. See bench/README.md, section 4.
pub const FILE_COPY_ABOVE_BYTES: i64 = 64 * 1024 * 1024;

/// A branch as `branch list|show --json` and the HTTP API show it.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BranchView {
    pub id: String,
    pub database: String,
    pub template: String,
    pub server: String,
    pub labels: BTreeMap<String, String>,
    pub sources: Vec<String>,
    /// RUNNING, SUCCESS, FAILED, or UNKNOWN when pgplane has no deployment record.
    pub status: String,
    /// What failed, for people: the migration, PostgreSQL's message, where.
    pub error: Option<String>,
    /// The same, structured: `{migration, message, sqlstate, position, statement}`.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub failure: Option<Value>,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
    pub expires_at: Option<String>,
    pub operation_id: Option<i64>,
    /// `expires_at` in seconds since the epoch, for gc.
    #[serde(skip)]
    pub expires_epoch: Option<i64>,
    /// Set by delete and gc when the database under the branch's name was not pgplane's
    /// and was left alone (see [`Branches::delete`]).
    #[serde(skip)]
    pub kept: Option<String>,
}

/// A branch `gc` dropped (or would drop), and why.
#[derive(Debug, Clone, Serialize)]
pub struct Dropped {
    #[serde(flatten)]
    pub branch: BranchView,
    pub reason: String,
}

/// Everything a branch command needs: the manifest's session and the control database.
pub struct Branches {
    pub s: Session,
    pub env: String,
    pub control: Client,
    pub control_server: Server,
    /// See [`crate::ops::Ctx::operation`].
    pub operation: Option<i64>,
    /// The home folder: the secret key that migrations log in as the module's owner with.
    home: PathBuf,
}

impl Branches {
    /// Opens the session and the control database (creating it if needed).
    pub async fn open(ctx: &mut crate::ops::Ctx, file: &Path, env: Option<&str>) -> Result<Branches> {
        let s = Session::open(ctx, file, env).await?;
        let env = s.desired.env.clone();
        control::create_if_missing(s.first_admin()).await?;
        let control_server = s.servers.first().clone();
        let control = control::ensure_as(&control_server, Role::Branch).await?;
        Ok(Branches { s, env, control, control_server, operation: ctx.operation, home: ctx.home.clone() })
    }

    fn template(&self, name: &str) -> Result<&TemplateSpec> {
        self.s.manifest.template(name).with_context(|| {
            let known: Vec<&str> = self.s.manifest.templates.iter().map(|t| t.name.as_str()).collect();
            format!(
                "template {name:?} is not in {} (templates: {})",
                self.s.manifest.file.display(),
                if known.is_empty() { "none; add a `templates:` entry".to_string() } else { known.join(", ") }
            )
        })
    }

    /// The server and owner role of a template's module.
    fn module_of(&self, t: &TemplateSpec) -> Result<(Server, String, String)> {
        let m = self.s.manifest.module(&t.module).context("template module")?;
        let server = self.s.servers.get(&m.server)?.clone();
        let owner = self
            .s
            .desired
            .endpoint(&m.name, None)
            .map(|e| e.owner_role.clone())
            .context("the template's module has no owner role")?;
        let schema = m.migrations.as_ref().and_then(|x| x.schema.clone()).unwrap_or_else(|| "public".into());
        Ok((server, owner, schema))
    }

    /// The module's owner logging in to `server`: template and branch migrations run as the
    /// owner itself (never as the admin after `SET ROLE`, which `RESET ROLE` would undo).
    async fn owner_login(&self, server: &Server, owner: &str) -> Result<Server> {
        let keys = crate::secrets::Keyring::load(&self.home)?;
        let logins = crate::conn::Logins::load(&keys, Some(&self.control), [(server.name.as_str(), owner)]).await?;
        logins.target(server, owner)
    }

    /// Runs `work` journaled as a job of this process (`branch delete`, `gc` from the CLI),
    /// unless it already runs as a job.
    pub async fn journaled<T>(&self, kind: &str, work: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        let journal = control::Journal::start(&self.control, self.operation, kind, Some(&self.env)).await?;
        let result = work.await;
        let error = result.as_ref().err().map(|e| format!("{e:#}"));
        if let Err(e) = journal.finish(&self.control, usize::from(result.is_ok()), error.as_deref()).await {
            tracing::warn!(error = %format!("{e:#}"), "could not journal the end of the operation");
        }
        result
    }

    fn admin(&self, server: &str) -> Result<&Client> {
        self.s.admins.get(server).with_context(|| format!("no connection to server {server}"))
    }

    /// Holds an advisory lock in the control database on a connection of its own, waiting
    /// in PostgreSQL's lock queue (fair: an exclusive waiter is not starved by new shared
    /// holders) up to the lock timeout.
    async fn lock(
        &self,
        mode: Lock,
        class: crate::locks::Class,
        key: &str,
        what: &str,
        opts: &DeployOptions,
    ) -> Result<Client> {
        let c = self.control_server.connect_as(Some(CONTROL_DB), Role::Branch).await?;
        c.batch_execute(&format!(
            "SET idle_session_timeout = 0; SET lock_timeout = {}",
            opts.lock_timeout.as_millis().max(1)
        ))
        .await?;
        let lock = crate::locks::Lock::named(class, key);
        let result = {
            let acquire = async {
                match mode {
                    Lock::Exclusive => lock.lock(&c).await,
                    Lock::Shared => lock.lock_shared(&c).await,
                }
            };
            tokio::pin!(acquire);
            tokio::select! {
                r = &mut acquire => r,
                _ = tokio::time::sleep(Duration::from_millis(300)) => {
                    tracing::warn!("waiting for another operation on {what}");
                    acquire.await
                }
            }
        };
        match result {
            Ok(_) => {
                c.batch_execute("SET lock_timeout = 0").await?;
                Ok(c)
            }
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE) => {
                Err(crate::error::Error::busy(format!(
                    "another pgplane operation on {what} did not finish within {}s; try again later or raise --lock-timeout",
                    opts.lock_timeout.as_secs()
                ))
                .into())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Whether a pgplane process holds a branch's lock right now.
    async fn busy(&self, id: &str) -> Result<bool> {
        busy(&self.control, &self.env, id).await
    }

    // ----- templates -------------------------------------------------------------------

    /// Builds (or rebuilds) a template: a new database from the sources, swapped in only
    /// when every source succeeded, so branches can be stamped meanwhile and a failed
    /// rebuild leaves the old template as it was.
    pub async fn build_template(
        &self,
        name: &str,
        contexts: &[String],
        opts: &DeployOptions,
    ) -> Result<TemplateReport> {
        let t = self.template(name)?.clone();
        let (server, owner, schema) = self.module_of(&t)?;
        let admin = self.admin(&server.name)?;
        ensure_role(admin, &owner).await?;
        // Template databases are named as written, so the lock is per server and name.
        let key = format!("{}/{}", server.name, t.name);
        let _build_lock =
            self.lock(Lock::Exclusive, TEMPLATE_BUILD_LOCK, &key, &format!("template {}", t.name), opts).await?;
        let other: Option<String> = self
            .control
            .query_opt(
                "SELECT env FROM pgplane.templates WHERE name = $1 AND server = $2 AND env <> $3",
                &[&t.name, &server.name, &self.env],
            )
            .await?
            .map(|r| r.get(0));
        if let Some(other) = other {
            bail!(
                "template {} on server {} belongs to environment {other}; template databases are shared by name, so give this environment's template another name",
                t.name,
                server.name
            );
        }
        let owned = self.is_template_record(&t.name).await?;
        if database_exists(admin, &t.name).await? && !owned {
            bail!("database {} exists and pgplane did not build it; pick another template name", t.name);
        }
        let journal = control::Journal::start(&self.control, self.operation, "template_build", Some(&self.env)).await?;
        let result = self.build_locked(&t, &server, &owner, &schema, contexts, opts).await;
        let error = match &result {
            Ok(r) => r.error.clone(),
            Err(e) => Some(format!("{e:#}")),
        };
        journal.finish(&self.control, usize::from(error.is_none()), error.as_deref()).await?;
        result
    }

    async fn build_locked(
        &self,
        t: &TemplateSpec,
        server: &Server,
        owner: &str,
        schema: &str,
        contexts: &[String],
        opts: &DeployOptions,
    ) -> Result<TemplateReport> {
        let admin = self.admin(&server.name)?;
        let building = pgplane_core::ident::fit_identifier(&format!("{}__build", t.name));
        let retired = pgplane_core::ident::fit_identifier(&format!("{}__retired", t.name));
        // Claim before create: the row names the build database before it exists.
        self.control
            .execute(
                "INSERT INTO pgplane.templates (env, name, server, module, building) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (env, name) DO UPDATE SET building = excluded.building, server = excluded.server",
                &[&self.env, &t.name, &server.name, &t.module, &building],
            )
            .await?;
        // Leftovers of a build that died: put a retired template back, drop the rest.
        if !database_exists(admin, &t.name).await? && database_exists(admin, &retired).await? {
            swap_in(admin, &retired, &t.name, opts)
                .await
                .with_context(|| format!("restoring template {} after an interrupted rebuild", t.name))?;
        }
        drop_database(admin, &retired).await?;
        drop_database(admin, &building).await?;
        let b = quote_ident(&building);
        admin.batch_execute(&format!("CREATE DATABASE {b}")).await.with_context(|| format!("creating {building}"))?;
        admin.batch_execute(&format!("REVOKE ALL ON DATABASE {b} FROM PUBLIC")).await?;
        // The template belongs to the admin (so the module's roles cannot connect to it);
        // its objects belong to the module's owner, who runs the migrations.
        let inside = server.connect_as(Some(&building), Role::Branch).await?;
        inside
            .batch_execute(&format!("ALTER SCHEMA public OWNER TO {}", quote_ident(owner)))
            .await
            .context("handing the public schema to the module's owner")?;
        // The module's extensions, as in its own database (copied into every branch); created
        // before the owner can log in to plant anything in `public`.
        let module = self.s.manifest.module(&t.module).context("template module")?;
        for ext in &module.extensions {
            inside
                .batch_execute(&format!("CREATE EXTENSION IF NOT EXISTS {} SCHEMA public", quote_ident(ext)))
                .await
                .with_context(|| format!("creating extension {ext} in the template"))?;
        }
        drop(inside);
        // The owner runs the migrations logged in as itself, so it may connect while they run.
        let connect = |verb: &str| {
            format!(
                "{verb} CONNECT ON DATABASE {b} {} {}",
                if verb == "GRANT" { "TO" } else { "FROM" },
                quote_ident(owner)
            )
        };
        let login = self.owner_login(server, owner).await?;
        admin.batch_execute(&connect("GRANT")).await?;
        let root = migrate::Root::manifest(&self.s.manifest.file)?;
        let sources: Vec<(PathBuf, migrate::Root)> =
            t.sources.iter().map(|p| (migrate::module_source_path(&self.s.manifest.file, p), root.clone())).collect();
        let contexts = if contexts.is_empty() { t.contexts.clone() } else { contexts.to_vec() };
        let target = migrate::Target {
            label: t.name.clone(),
            tenant: None,
            server: login,
            database: building.clone(),
            schema: schema.to_string(),
            role: Some(owner.to_string()),
        };
        let deployed = deploy(&target, &sources, &contexts, self.module_ledger(&t.module), opts).await;
        // The template belongs to the admin again: branches are stamped from it, never used.
        admin.batch_execute(&connect("REVOKE")).await?;
        let deployed = deployed?;
        if let Some(err) = &deployed.error {
            drop_database(admin, &building).await?;
            self.control
                .execute(
                    "UPDATE pgplane.templates SET building = NULL WHERE env = $1 AND name = $2",
                    &[&self.env, &t.name],
                )
                .await?;
            return Ok(TemplateReport {
                template: t.name.clone(),
                database: None,
                ok: false,
                error: Some(err.clone()),
                runs: deployed.runs,
            });
        }
        self.grant_readonly(server, &building, owner).await?;
        // Swap under the exclusive template lock: it queues behind branches being copied
        // from the old template and keeps new copies waiting until the new one is in.
        let key = format!("{}/{}", server.name, t.name);
        let _swap = self.lock(Lock::Exclusive, TEMPLATE_LOCK, &key, &format!("template {}", t.name), opts).await?;
        if database_exists(admin, &t.name).await? {
            let sql = format!(
                "ALTER DATABASE {n} IS_TEMPLATE false; ALTER DATABASE {n} RENAME TO {r};",
                n = quote_ident(&t.name),
                r = quote_ident(&retired)
            );
            while_sessions(admin, &t.name, &sql, TemplateSessions::Terminate, opts)
                .await
                .with_context(|| format!("retiring the old {}", t.name))?;
        }
        swap_in(admin, &building, &t.name, opts).await.with_context(|| format!("swapping in the new {}", t.name))?;
        drop_database(admin, &retired).await?;
        let sources_json = serde_json::to_value(&t.sources)?;
        // Its identity: `destroy` drops only the database pgplane built.
        let oid = database_oid(admin, &t.name).await?;
        self.control
            .execute(
                "UPDATE pgplane.templates SET building = NULL, built_at = now(), sources = $3, database_oid = $4
                  WHERE env = $1 AND name = $2",
                &[&self.env, &t.name, &sources_json, &oid],
            )
            .await?;
        Ok(TemplateReport {
            template: t.name.clone(),
            database: Some(t.name.clone()),
            ok: true,
            error: None,
            runs: deployed.runs,
        })
    }

    /// Whether pgplane built (or is building) this template: its row exists.
    async fn is_template_record(&self, name: &str) -> Result<bool> {
        Ok(self
            .control
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pgplane.templates WHERE env = $1 AND name = $2)",
                &[&self.env, &name],
            )
            .await?
            .get(0))
    }

    fn module_ledger(&self, module: &str) -> migrate::LedgerNames {
        let spec = self.s.manifest.module(module).and_then(|m| m.migrations.clone()).unwrap_or_default();
        migrate::LedgerNames {
            history_table: spec.history_table,
            changelog_table: spec.changelog_table,
            changelog_lock_table: spec.changelog_lock_table,
        }
    }

    /// The read-only role may connect to `database` and read everything the owner has
    /// and will create there.
    async fn grant_readonly(&self, server: &Server, database: &str, owner: &str) -> Result<()> {
        let Some(ro) = &self.s.manifest.branches.readonly_role_in(&self.env) else {
            return Ok(());
        };
        let admin = self.admin(&server.name)?;
        if !role_exists(admin, ro).await? {
            bail!("branches.readonly_role {ro} does not exist; run `pgplane apply` first (it creates the role)");
        }
        admin
            .batch_execute(&format!("GRANT CONNECT ON DATABASE {} TO {}", quote_ident(database), quote_ident(ro)))
            .await?;
        let c = server.connect_as(Some(database), Role::Branch).await?;
        let schemas: Vec<String> = c
            .query(
                "SELECT nspname FROM pg_namespace WHERE nspowner = (SELECT oid FROM pg_roles WHERE rolname = $1)
                    AND nspname NOT LIKE 'pg\\_%' AND nspname <> 'information_schema' ORDER BY 1",
                &[&owner],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let (ro, owner) = (quote_ident(ro), quote_ident(owner));
        let mut sql = format!(
            "ALTER DEFAULT PRIVILEGES FOR ROLE {owner} GRANT SELECT ON TABLES TO {ro};
             ALTER DEFAULT PRIVILEGES FOR ROLE {owner} GRANT SELECT ON SEQUENCES TO {ro};
             ALTER DEFAULT PRIVILEGES FOR ROLE {owner} GRANT USAGE ON SCHEMAS TO {ro};"
        );
        for s in schemas {
            let s = quote_ident(&s);
            sql.push_str(&format!(
                "GRANT USAGE ON SCHEMA {s} TO {ro}; GRANT SELECT ON ALL TABLES IN SCHEMA {s} TO {ro};
                 GRANT SELECT ON ALL SEQUENCES IN SCHEMA {s} TO {ro};"
            ));
        }
        c.batch_execute(&sql).await.with_context(|| format!("granting {ro} read access in {database}"))
    }

    // ----- branches --------------------------------------------------------------------

    /// `branch create` (`reset: false`) and `branch reset` (`reset: true`).
    pub async fn deploy_branch(&self, req: &BranchRequest, reset: bool, opts: &DeployOptions) -> Result<BranchView> {
        pgplane_core::branch::sanitize(&req.id).map_err(anyhow::Error::msg)?;
        let _lock = self
            .lock(Lock::Exclusive, BRANCH_LOCK, &branch_key(&self.env, &req.id), &format!("branch {}", req.id), opts)
            .await?;
        // Read under the lock: a concurrent operation on this branch has finished by now.
        let existing = self.record(&req.id).await?;
        // The same job again (its worker died or stopped; another attempt continues it).
        let resuming = self.operation.is_some() && existing.as_ref().is_some_and(|b| b.operation_id == self.operation);
        let template_name = match (&req.template, &existing, reset) {
            (_, None, true) => bail!(
                "there is no branch {:?}; create it with `pgplane branch create {} --template NAME`",
                req.id,
                req.id
            ),
            (_, Some(b), false) if resuming => b.template.clone(),
            (_, Some(b), false) => bail!(
                "branch {:?} already exists (database {}, status {}); use `pgplane branch reset {}` to deploy it again",
                req.id,
                b.database,
                b.status,
                req.id
            ),
            (Some(t), Some(b), true) if *t != b.template => {
                bail!("branch {:?} was stamped from template {}, not {t}", req.id, b.template)
            }
            (_, Some(b), true) => b.template.clone(),
            (Some(t), None, false) => t.clone(),
            (None, None, false) => bail!("pass --template NAME (templates: {})", self.template_names()),
        };
        let t = self.template(&template_name)?.clone();
        let (server, owner, schema) = self.module_of(&t)?;
        let admin = self.admin(&server.name)?;
        let policy = &self.s.manifest.branches;
        // A reset keeps the database it has, even if the naming policy changed since.
        let database = match &existing {
            Some(b) => b.database.clone(),
            None => {
                pgplane_core::branch::database_name(policy, &self.env, &t.name, &req.id).map_err(anyhow::Error::msg)?
            }
        };
        if !database_exists(admin, &t.name).await? || !self.is_template_record(&t.name).await? {
            bail!("template {} is not built yet; run `pgplane template build {}`", t.name, t.name);
        }
        // Sessions a killed pgplane left on this branch (e.g. a CREATE DATABASE still copying).
        let session_name = session_name(&self.env, &req.id);
        reap(admin, &session_name).await?;
        let sources: Vec<String> = match (&req.sources, &existing) {
            (Some(s), _) => s.iter().map(|p| self.checked_source(p, opts)).collect::<Result<_>>()?,
            (None, Some(b)) => {
                b.sources.iter().try_for_each(|p| unchanged(p))?;
                b.sources.clone()
            }
            (None, None) => Vec::new(),
        };
        let contexts = if req.contexts.is_empty() { t.contexts.clone() } else { req.contexts.clone() };
        let labels = req.labels.clone().or_else(|| existing.as_ref().map(|b| b.labels.clone())).unwrap_or_default();
        let ttl = req.ttl.or(policy.ttl);
        if existing.is_none() {
            self.claim(&req.id, &database, &server.name, &t.name, &labels, &sources, &contexts, ttl).await?;
        }
        let kind = if reset { "branch_reset" } else { "branch_create" };
        let journal = control::Journal::start(&self.control, self.operation, kind, Some(&self.env)).await?;
        let op = journal.id;
        let outcome = async {
            self.control
                .execute(
                    "UPDATE pgplane.branches SET status = 'RUNNING', error = NULL, failure = NULL, sources = $3, contexts = $4,
                        labels = $5, operation_id = $6, updated_at = now(),
                        expires_at = CASE WHEN $7::float8 IS NULL THEN expires_at ELSE now() + make_interval(secs => $7::float8) END
                      WHERE env = $1 AND id = $2",
                    &[
                        &self.env,
                        &req.id,
                        &serde_json::to_value(&sources)?,
                        &serde_json::to_value(&contexts)?,
                        &serde_json::to_value(&labels)?,
                        &op,
                        &req.ttl.map(|d| d.as_secs_f64()),
                    ],
                )
                .await?;
            let admin = server.connect_named(None, &session_name).await?;
            // A resumed create keeps the database its earlier attempt stamped (CREATE
            // DATABASE is all or nothing) and continues the deployment from the ledger.
            let stamp = if resuming && !reset {
                if database_exists(&admin, &database).await? {
                    Stamp::Keep
                } else {
                    Stamp::New
                }
            } else if reset {
                Stamp::Again
            } else {
                Stamp::New
            };
            self.stamp_and_deploy(&admin, &t, &server, &owner, &schema, &database, stamp, &sources, &contexts, opts).await
        }
        .await;
        // Stopped because this process shuts down: the job goes back to the queue and
        // another attempt continues; the branch stays RUNNING meanwhile.
        let handed_back = crate::cancel::current().and_then(|c| c.reason()).as_deref()
            == Some(crate::jobs::worker::SHUTDOWN)
            && !matches!(&outcome, Ok(d) if d.error.is_none());
        if handed_back {
            return Err(crate::error::Error::Cancelled(format!(
                "branch {}: stopped by the shutdown; the deployment continues in another attempt",
                req.id
            ))
            .into());
        }
        let (status, error, failure) = match &outcome {
            Ok(d) if d.error.is_none() => ("SUCCESS", None, None),
            Ok(d) => ("FAILED", d.error.clone(), d.failure.clone()),
            Err(e) => ("FAILED", Some(format!("{e:#}")), None),
        };
        self.control
            .execute(
                "UPDATE pgplane.branches SET status = $3, error = $4, failure = $5, updated_at = now() WHERE env = $1 AND id = $2",
                &[&self.env, &req.id, &status, &error, &failure],
            )
            .await?;
        journal.finish(&self.control, 1, error.as_deref()).await?;
        if let Err(e) = outcome {
            if let Some(pg) = e.downcast_ref::<tokio_postgres::Error>() {
                if pg.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_DATABASE) && existing.is_none() {
                    // A database with this name appeared that is not ours: give the name back.
                    self.control
                        .execute("DELETE FROM pgplane.branches WHERE env = $1 AND id = $2", &[&self.env, &req.id])
                        .await?;
                    bail!("database {database} was created by someone else meanwhile; pgplane will not touch it (choose another id)");
                }
            }
        }
        self.show(&req.id).await?.context("the branch record vanished")
    }

    /// Records a new branch (RUNNING) before its database exists; refuses a name another
    /// id has, an unmanaged database with the name, and a full template.
    #[allow(clippy::too_many_arguments)]
    async fn claim(
        &self,
        id: &str,
        database: &str,
        server: &str,
        template: &str,
        labels: &BTreeMap<String, String>,
        sources: &[String],
        contexts: &[String],
        ttl: Option<Duration>,
    ) -> Result<()> {
        if let Some(other) = self.id_by_database(server, database).await? {
            bail!("branch ids {other:?} and {id:?} both become database {database}; use ids that differ in letters or digits");
        }
        if database_exists(self.admin(server)?, database).await? {
            bail!("database {database} exists but is not a branch pgplane manages; pgplane will not touch it (choose another id)");
        }
        let policy = &self.s.manifest.branches;
        let mut tx_client = self.control_server.connect_as(Some(CONTROL_DB), Role::Branch).await?;
        let tx = tx_client.transaction().await?;
        // Counting and inserting under one template-wide lock: parallel creates cannot overshoot the cap.
        crate::locks::Lock::named(crate::locks::TEMPLATE_CAP, format!("{}/{template}", self.env))
            .xact_lock(&tx)
            .await?;
        let count: i64 = tx
            .query_one(
                "SELECT count(*) FROM pgplane.branches WHERE env = $1 AND template = $2",
                &[&self.env, &template],
            )
            .await?
            .get(0);
        if count >= i64::from(policy.max_per_template) {
            bail!(
                "template {template} already has {count} branches (branches.max_per_template is {}); delete or gc some first",
                policy.max_per_template
            );
        }
        let inserted = tx
            .execute(
                "INSERT INTO pgplane.branches (env, id, database, server, template, labels, sources, contexts, status, expires_at,
                                               operation_id)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'RUNNING', now() + make_interval(secs => $9::float8), $10)
                 ON CONFLICT DO NOTHING",
                &[
                    &self.env,
                    &id,
                    &database,
                    &server,
                    &template,
                    &serde_json::to_value(labels)?,
                    &serde_json::to_value(sources)?,
                    &serde_json::to_value(contexts)?,
                    &ttl.map(|d| d.as_secs_f64()),
                    // The job claiming it: should this process die before the deployment
                    // starts, the job's next attempt knows the row for its own.
                    &self.operation,
                ],
            )
            .await?;
        if inserted == 0 {
            bail!("database {database} is already recorded for another branch; use another id");
        }
        tx.commit().await?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn stamp_and_deploy(
        &self,
        admin: &Client,
        t: &TemplateSpec,
        server: &Server,
        owner: &str,
        schema: &str,
        database: &str,
        stamp: Stamp,
        sources: &[String],
        contexts: &[String],
        opts: &DeployOptions,
    ) -> Result<Deployed> {
        if stamp == Stamp::Again {
            if let Some(b) = self.record_of_database(database).await? {
                if let Some(why) = self.ours(&b).await? {
                    bail!("{why}; `pgplane branch delete {}` forgets the branch", b.id);
                }
            }
            // Until the new copy's OID is recorded, the database under the name is the
            // branch's whatever its OID (0, as for rows of an older pgplane): an attempt that
            // dies after its copy leaves the copy to the next attempt, which would otherwise
            // take it for a database re-created outside pgplane and refuse it.
            self.control
                .execute(
                    "UPDATE pgplane.branches SET database_oid = 0 WHERE env = $1 AND database = $2",
                    &[&self.env, &database],
                )
                .await?;
            drop_database(admin, database).await?;
        }
        if stamp != Stamp::Keep {
            // Shared template lock: a rebuild cannot swap the template out mid-copy.
            let key = format!("{}/{}", server.name, t.name);
            let _copying = self.lock(Lock::Shared, TEMPLATE_LOCK, &key, &format!("template {}", t.name), opts).await?;
            let size: i64 = admin.query_one("SELECT pg_database_size($1)", &[&t.name]).await?.get(0);
            let strategy = if size > FILE_COPY_ABOVE_BYTES { "FILE_COPY" } else { "WAL_LOG" };
            let sql = format!(
                "CREATE DATABASE {d} TEMPLATE {t} OWNER {o} STRATEGY {strategy}",
                d = quote_ident(database),
                t = quote_ident(&t.name),
                o = quote_ident(owner)
            );
            while_sessions(admin, &t.name, &sql, self.s.manifest.branches.template_sessions, opts)
                .await
                .with_context(|| format!("copying template {} to {database}", t.name))?;
            // From now on the branch's database is this one, by OID.
            let oid = database_oid(admin, database).await?.context("the branch's database vanished after its copy")?;
            self.control
                .execute(
                    "UPDATE pgplane.branches SET database_oid = $3 WHERE env = $1 AND database = $2",
                    &[&self.env, &database, &oid],
                )
                .await?;
        } else {
            // A create resumed after its earlier attempt copied the template but died before
            // recording the copy: the database appeared after the claim found none under the
            // name, and it is deployed into here, so it is the branch's own; unrecorded,
            // `delete` would leave it behind and `reset` would refuse it.
            let oid = database_oid(admin, database).await?.context("the branch's database vanished")?;
            self.control
                .execute(
                    "UPDATE pgplane.branches SET database_oid = $3 WHERE env = $1 AND database = $2 AND database_oid IS NULL",
                    &[&self.env, &database, &oid],
                )
                .await?;
        }
        let mut setup = format!("REVOKE ALL ON DATABASE {} FROM PUBLIC;", quote_ident(database));
        for (name, value) in &self.s.manifest.branches.settings {
            setup.push_str(&format!(
                "ALTER DATABASE {} SET {} = {};",
                quote_ident(database),
                quote_ident(name),
                pgplane_core::ident::setting_value_sql(name, value)
            ));
        }
        admin.batch_execute(&setup).await.with_context(|| format!("setting up {database}"))?;
        self.grant_readonly(server, database, owner).await?;
        let target = migrate::Target {
            label: database.to_string(),
            tenant: None,
            server: self.owner_login(server, owner).await?,
            database: database.to_string(),
            schema: schema.to_string(),
            role: Some(owner.to_string()),
        };
        let paths = sources
            .iter()
            .map(|p| Ok((PathBuf::from(p), self.source_root(Path::new(p), opts)?)))
            .collect::<Result<Vec<_>>>()?;
        let deployed = deploy(&target, &paths, contexts, self.module_ledger(&t.module), opts).await?;
        if deployed.error.is_none() {
            // Tables in schemas the candidate created get their read grants too.
            self.grant_readonly(server, database, owner).await?;
        }
        Ok(deployed)
    }

    /// The folder a branch source must stay inside (see [`migrate::Root`]): the manifest's
    /// folder for API requests (`confine_to_manifest`), else the command line's rule.
    fn source_root(&self, path: &Path, opts: &DeployOptions) -> Result<migrate::Root> {
        if opts.confine_to_manifest {
            migrate::Root::manifest(&self.s.manifest.file)
        } else {
            migrate::Root::cli(Some(&self.s.manifest.file), path)
        }
    }

    /// A source given for a branch, as recorded: absolute with symlinks resolved (so
    /// `reset` finds it from any folder), and inside its root now.
    fn checked_source(&self, path: &str, opts: &DeployOptions) -> Result<String> {
        let root = self.source_root(Path::new(path), opts)?;
        let real = pgplane_core::confine::resolve(Path::new(path), root.path()).map_err(|e| match e.kind() {
            std::io::ErrorKind::PermissionDenied => anyhow::anyhow!("source {e}"),
            _ => anyhow::anyhow!("source {path} cannot be read: {e}"),
        })?;
        Ok(real.display().to_string())
    }

    fn template_names(&self) -> String {
        let names: Vec<&str> = self.s.manifest.templates.iter().map(|t| t.name.as_str()).collect();
        if names.is_empty() {
            "none".into()
        } else {
            names.join(", ")
        }
    }

    /// The branch of this environment whose database has this name.
    async fn record_of_database(&self, database: &str) -> Result<Option<BranchView>> {
        Ok(self.records(None, None).await?.into_iter().find(|b| b.database == database))
    }

    async fn record(&self, id: &str) -> Result<Option<BranchView>> {
        Ok(self.records(Some(id), None).await?.into_iter().next())
    }

    /// The id recorded for a database name on a server (in any environment).
    async fn id_by_database(&self, server: &str, database: &str) -> Result<Option<String>> {
        Ok(self
            .control
            .query_opt("SELECT id FROM pgplane.branches WHERE server = $1 AND database = $2", &[&server, &database])
            .await?
            .map(|r| r.get(0)))
    }

    /// Branch records of this environment (one id, or one template), with RUNNING shown
    /// honestly: a deployment no pgplane process holds any more is FAILED (interrupted).
    /// A finished branch whose database is gone (dropped outside pgplane) is FAILED too.
    pub async fn records(&self, id: Option<&str>, template: Option<&str>) -> Result<Vec<BranchView>> {
        let mut list = records(&self.control, &self.env, id, template).await?;
        for v in list.iter_mut().filter(|v| v.status == "SUCCESS") {
            if !database_exists(self.admin(&v.server)?, &v.database).await? {
                mark_missing(v);
            }
        }
        Ok(list)
    }

    /// `branch show`: the record, or UNKNOWN for a database with the branch's name that
    /// pgplane has no deployment record of.
    pub async fn show(&self, id: &str) -> Result<Option<BranchView>> {
        if let Some(v) = self.record(id).await? {
            return Ok(Some(v));
        }
        for t in &self.s.manifest.templates {
            let Ok(database) = pgplane_core::branch::database_name(&self.s.manifest.branches, &self.env, &t.name, id)
            else {
                continue;
            };
            let (server, _, _) = self.module_of(t)?;
            if database_exists(self.admin(&server.name)?, &database).await? {
                return Ok(Some(unknown(id, database, &t.name, &server.name)));
            }
        }
        Ok(None)
    }

    /// Drops a branch's database (ending its sessions) and then its record. A database
    /// under the branch's name that pgplane did not create (see [`Branches::ours`]) is
    /// left alone; only the record goes, and `kept` says why.
    pub async fn delete(&self, id: &str, opts: &DeployOptions) -> Result<BranchView> {
        let _lock =
            self.lock(Lock::Exclusive, BRANCH_LOCK, &branch_key(&self.env, id), &format!("branch {id}"), opts).await?;
        let Some(mut b) = self.record(id).await? else {
            return Err(crate::error::Error::not_found(format!(
                "there is no branch {id:?} in environment {} (see `pgplane branch list`)",
                self.env
            ))
            .into());
        };
        b.kept = self.drop_locked(&b).await?;
        Ok(b)
    }

    /// Whether the database under a branch's name is the one pgplane created for it:
    /// `Ok(None)` it is (or there is none), `Ok(Some(why))` it is not. The branch row
    /// holds the database's OID from its creation; an older pgplane's row (OID 0) takes
    /// the database under the name as its own.
    async fn ours(&self, b: &BranchView) -> Result<Option<String>> {
        let admin = self.admin(&b.server)?;
        let Some(now) = database_oid(admin, &b.database).await? else { return Ok(None) };
        let recorded: Option<u32> = self
            .control
            .query_one("SELECT database_oid FROM pgplane.branches WHERE env = $1 AND id = $2", &[&self.env, &b.id])
            .await?
            .get(0);
        Ok(match recorded {
            Some(0) => None,
            Some(oid) if oid == now => None,
            Some(oid) => Some(format!(
                "database {} is not the one pgplane created for branch {} (OID {oid}, now {now}: dropped and re-created \
                 outside pgplane); pgplane leaves it alone",
                b.database, b.id
            )),
            None => Some(format!(
                "database {} was not created by pgplane for branch {} (its deployment stopped before the copy was \
                 recorded); pgplane leaves it alone — drop it by hand if it is a leftover",
                b.database, b.id
            )),
        })
    }

    /// With the branch's lock held: ends leftovers of a dead process, drops the database
    /// if it is pgplane's, then forgets the record. Returns why a database was kept.
    async fn drop_locked(&self, b: &BranchView) -> Result<Option<String>> {
        let admin = self.admin(&b.server)?;
        reap(admin, &session_name(&self.env, &b.id)).await?;
        let kept = self.ours(b).await?;
        match &kept {
            None => drop_database(admin, &b.database).await.with_context(|| format!("dropping {}", b.database))?,
            Some(why) => tracing::warn!(branch = %b.id, "{why}"),
        }
        self.control.execute("DELETE FROM pgplane.branches WHERE env = $1 AND id = $2", &[&self.env, &b.id]).await?;
        Ok(kept)
    }

    /// `branch delete --all [--match PATTERN]`: only branches pgplane has records of.
    pub async fn delete_all(&self, pattern: Option<&str>, opts: &DeployOptions) -> Result<Vec<BranchView>> {
        let mut dropped = Vec::new();
        for b in self.records(None, None).await? {
            if pattern
                .is_some_and(|p| !pgplane_core::branch::glob(p, &b.database) && !pgplane_core::branch::glob(p, &b.id))
            {
                continue;
            }
            dropped.push(self.delete(&b.id, opts).await?);
        }
        Ok(dropped)
    }

    /// Reconciliation: drops branches not in `keep` (when given), expired ones and
    /// interrupted deployments; `dry_run` only reports. Each decision is made again under
    /// the branch's lock, with the record as it is then.
    pub async fn gc(
        &self,
        keep: Option<&std::collections::BTreeSet<String>>,
        dry_run: bool,
        opts: &DeployOptions,
    ) -> Result<Vec<Dropped>> {
        let now = || async {
            Ok::<i64, anyhow::Error>(
                self.control.query_one("SELECT extract(epoch FROM now())::int8", &[]).await?.get(0),
            )
        };
        let known = |b: &BranchView, busy: bool| pgplane_core::branch::Known {
            id: b.id.clone(),
            expires_at: b.expires_epoch,
            interrupted: b.status == "FAILED" && b.error.as_deref() == Some(INTERRUPTED),
            busy,
        };
        let records = self.records(None, None).await?;
        let mut candidates = Vec::new();
        for b in &records {
            candidates.push(known(b, self.busy(&b.id).await?));
        }
        let mut out = Vec::new();
        for d in pgplane_core::branch::gc(&candidates, keep, now().await?) {
            if dry_run {
                if let Some(b) = records.iter().find(|b| b.id == d.id) {
                    out.push(Dropped { branch: b.clone(), reason: d.reason });
                }
                continue;
            }
            let _lock = self
                .lock(Lock::Exclusive, BRANCH_LOCK, &branch_key(&self.env, &d.id), &format!("branch {}", d.id), opts)
                .await?;
            let Some(b) = self.record(&d.id).await? else { continue };
            // Still to be dropped now that we hold it (a reset may have renewed it meanwhile)?
            // We hold its lock now, so a RUNNING record is one no process runs any more.
            let mut current = known(&b, false);
            current.interrupted |= b.status == "RUNNING";
            let Some(again) = pgplane_core::branch::gc(&[current], keep, now().await?).pop() else { continue };
            let mut b = b;
            b.kept = self.drop_locked(&b).await?;
            out.push(Dropped { branch: b, reason: again.reason });
        }
        Ok(out)
    }
}

/// What a deployment does with the branch's database before the sources run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stamp {
    /// Copy the template (a new branch).
    New,
    /// Drop it and copy the template again (a reset).
    Again,
    /// Keep it (a create resumed after its database was stamped).
    Keep,
}

/// A database with a branch's name that pgplane has no deployment record of.
pub fn unknown(id: &str, database: String, template: &str, server: &str) -> BranchView {
    BranchView {
        id: id.to_string(),
        database,
        template: template.to_string(),
        server: server.to_string(),
        labels: BTreeMap::new(),
        sources: vec![],
        status: "UNKNOWN".into(),
        error: None,
        failure: None,
        created_at: None,
        updated_at: None,
        expires_at: None,
        operation_id: None,
        expires_epoch: None,
        kept: None,
    }
}

/// A finished branch whose database is gone (dropped outside pgplane) is FAILED.
pub fn mark_missing(v: &mut BranchView) {
    v.status = "FAILED".into();
    v.error = Some(format!(
        "database {} is missing (dropped outside pgplane); run `pgplane branch reset {}` or `pgplane branch delete {}`",
        v.database, v.id, v.id
    ));
}

async fn busy(control: &Client, env: &str, id: &str) -> Result<bool> {
    Ok(crate::locks::Lock::named(BRANCH_LOCK, branch_key(env, id)).holder(control).await?.is_some())
}

/// Branch records of `env` from the control database (see [`Branches::records`]); also
/// what `wait --for branch:ID` reads.
pub async fn records(control: &Client, env: &str, id: Option<&str>, template: Option<&str>) -> Result<Vec<BranchView>> {
    let rows = control
        .query(
            &format!(
                "{SELECT_BRANCH} WHERE env = $1 AND ($2::text IS NULL OR id = $2) AND ($3::text IS NULL OR template = $3) ORDER BY template, id"
            ),
            &[&env, &id, &template],
        )
        .await?;
    let mut out: Vec<BranchView> = rows.iter().map(view_of).collect::<Result<_>>()?;
    // RUNNING without a process holding the branch: interrupted, unless a job for it is
    // still queued or running (a worker died and another one resumes it). Two queries
    // for all of them, however many there are.
    let running: Vec<&BranchView> = out.iter().filter(|v| v.status == "RUNNING").collect();
    if running.is_empty() {
        return Ok(out);
    }
    let lock_keys: Vec<String> = running.iter().map(|v| branch_key(env, &v.id)).collect();
    let job_keys: Vec<String> = running.iter().map(|v| crate::runner::branch_key(env, &v.id)).collect();
    let rows = control
        .query(
            "SELECT k.i::int4,
                    EXISTS (SELECT 1 FROM pg_catalog.pg_locks l WHERE l.locktype = 'advisory' AND l.granted
                             AND l.classid = ($1::int4)::pg_catalog.oid
                             AND l.objid = (pg_catalog.hashtext(k.lock_key))::pg_catalog.oid AND l.objsubid = 2
                             AND l.database = (SELECT d.oid FROM pg_catalog.pg_database d
                                                WHERE d.datname = pg_catalog.current_database()))
                    OR EXISTS (SELECT 1 FROM pgplane.jobs j WHERE j.key = k.job_key AND j.status IN ('queued', 'running'))
               FROM ROWS FROM (pg_catalog.unnest($2::text[]), pg_catalog.unnest($3::text[])) WITH ORDINALITY AS k(lock_key, job_key, i)",
            &[&BRANCH_LOCK.0, &lock_keys, &job_keys],
        )
        .await?;
    let alive: std::collections::BTreeSet<usize> =
        rows.iter().filter(|r| r.get::<_, bool>(1)).map(|r| r.get::<_, i32>(0) as usize - 1).collect();
    let ids: Vec<String> = running.iter().map(|v| v.id.clone()).collect();
    for (i, id) in ids.iter().enumerate() {
        if alive.contains(&i) {
            continue;
        }
        if let Some(v) = out.iter_mut().find(|v| &v.id == id) {
            v.status = "FAILED".into();
            v.error = Some(INTERRUPTED.into());
        }
    }
    Ok(out)
}

/// Whether the branch's deployment was interrupted (shown FAILED, nobody resumes it).
pub fn is_interrupted(v: &BranchView) -> bool {
    v.status == "FAILED" && v.error.as_deref() == Some(INTERRUPTED)
}

const INTERRUPTED: &str =
    "the deployment was interrupted (no pgplane process is running it); run `pgplane branch reset` or `pgplane branch delete`";

const SELECT_BRANCH: &str = "SELECT id, database, template, server, labels, sources, status, error, failure,
        to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),
        to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),
        to_char(expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),
        operation_id, extract(epoch FROM expires_at)::int8
   FROM pgplane.branches";

fn view_of(r: &tokio_postgres::Row) -> Result<BranchView> {
    let labels: Value = r.get(4);
    let sources: Value = r.get(5);
    Ok(BranchView {
        id: r.get(0),
        database: r.get(1),
        template: r.get(2),
        server: r.get(3),
        labels: serde_json::from_value(labels).unwrap_or_default(),
        sources: serde_json::from_value(sources).unwrap_or_default(),
        status: r.get(6),
        error: r.get(7),
        failure: r.get(8),
        created_at: r.get(9),
        updated_at: r.get(10),
        expires_at: r.get(11),
        operation_id: r.get(12),
        expires_epoch: r.get(13),
        kept: None,
    })
}

/// A `branch create|reset` request (the CLI's flags, the API's JSON body).
#[derive(Debug, Clone, Default)]
pub struct BranchRequest {
    pub id: String,
    pub template: Option<String>,
    /// `None`: keep the recorded sources (reset) or none (create).
    pub sources: Option<Vec<String>>,
    pub contexts: Vec<String>,
    pub labels: Option<BTreeMap<String, String>>,
    pub ttl: Option<Duration>,
}

#[derive(Debug, Clone)]
pub struct DeployOptions {
    /// Sources must lie inside the manifest's folder (API requests); otherwise the command
    /// line's rule applies (see [`migrate::Root`]).
    pub confine_to_manifest: bool,
    pub lock_timeout: Duration,
    /// How long to wait for (or to keep terminating) sessions on the template.
    pub session_timeout: Duration,
    /// Print a line per migration as it runs.
    pub live: bool,
}

#[derive(Debug, Serialize)]
pub struct TemplateReport {
    pub template: String,
    pub database: Option<String>,
    pub ok: bool,
    pub error: Option<String>,
    pub runs: Vec<migrate::ModuleRun>,
}

pub struct Deployed {
    pub runs: Vec<migrate::ModuleRun>,
    pub error: Option<String>,
    pub failure: Option<Value>,
}

/// Applies sources in order to one target; stops at the first that fails.
async fn deploy(
    target: &migrate::Target,
    sources: &[(PathBuf, migrate::Root)],
    contexts: &[String],
    ledger: migrate::LedgerNames,
    opts: &DeployOptions,
) -> Result<Deployed> {
    let run_opts = migrate::RunOptions {
        mode: migrate::Mode::Up,
        selection: migrate::Selection { contexts: contexts.to_vec(), labels: None },
        ledger,
        retry_failed: false,
        lock_timeout: opts.lock_timeout,
        jobs: 1,
        live: opts.live,
        liquibase: migrate::LiquibaseOptions::default(),
        up_to: None,
    };
    // Every source is read (and rejected if bad) before anything runs.
    let mut loaded = Vec::new();
    for (path, root) in sources {
        loaded.push(migrate::Source::load(path, root).with_context(|| format!("source {}", path.display()))?);
    }
    let mut runs = Vec::new();
    for source in &loaded {
        let reports = migrate::run_all(source, vec![target.clone()], &run_opts, &crate::events::Quiet).await;
        let failed = reports.iter().find(|r| !r.ok).map(|r| {
            let error = match (&r.failure, &r.error) {
                (Some(f), _) => f.to_string(),
                (None, Some(e)) => e.clone(),
                (None, None) => r.problems.join("; "),
            };
            (error, r.failure.as_ref().and_then(|f| serde_json::to_value(f).ok()))
        });
        runs.push(migrate::ModuleRun { module: None, source: source.describe(), targets: reports });
        if let Some((error, failure)) = failed {
            return Ok(Deployed { runs, error: Some(error), failure });
        }
    }
    Ok(Deployed { runs, error: None, failure: None })
}

/// The OID of the database of this name, if there is one.
async fn database_oid(admin: &Client, name: &str) -> Result<Option<u32>> {
    Ok(admin
        .query_opt(
            "SELECT oid FROM pg_catalog.pg_database WHERE datname OPERATOR(pg_catalog.=) $1::pg_catalog.text",
            &[&name],
        )
        .await?
        .map(|r| r.get(0)))
}

/// Whether a database of this name exists on the admin connection's server.
pub async fn database_exists(admin: &Client, name: &str) -> Result<bool> {
    Ok(admin.query_one("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", &[&name]).await?.get(0))
}

async fn role_exists(admin: &Client, name: &str) -> Result<bool> {
    Ok(admin.query_one("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)", &[&name]).await?.get(0))
}

async fn ensure_role(admin: &Client, owner: &str) -> Result<()> {
    if !role_exists(admin, owner).await? {
        bail!("role {owner} does not exist yet; run `pgplane apply` first");
    }
    Ok(())
}

/// `DROP DATABASE IF EXISTS … WITH (FORCE)`: ends its sessions first.
async fn drop_database(admin: &Client, name: &str) -> Result<()> {
    admin.batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote_ident(name))).await?;
    Ok(())
}

/// Renames `from` to `to` and marks it as a template, in one transaction.
async fn swap_in(admin: &Client, from: &str, to: &str, opts: &DeployOptions) -> Result<()> {
    let sql = format!(
        "ALTER DATABASE {f} RENAME TO {t}; ALTER DATABASE {t} IS_TEMPLATE true;",
        f = quote_ident(from),
        t = quote_ident(to)
    );
    while_sessions(admin, from, &sql, TemplateSessions::Terminate, opts).await
}

/// Runs `sql`, which needs `database` to have no other sessions: clears them per
/// `policy` and retries while new ones slip in, up to the session timeout.
async fn while_sessions(
    admin: &Client,
    database: &str,
    sql: &str,
    policy: TemplateSessions,
    opts: &DeployOptions,
) -> Result<()> {
    let deadline = Instant::now() + opts.session_timeout;
    loop {
        clear_sessions(admin, database, policy, deadline, opts.session_timeout).await?;
        match admin.batch_execute(sql).await {
            Ok(()) => return Ok(()),
            Err(e)
                if e.code() == Some(&tokio_postgres::error::SqlState::OBJECT_IN_USE) && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// The application_name of a branch operation's admin session: the next holder of the
/// branch's lock ends sessions with this name, which only a dead process can have left.
fn session_name(env: &str, id: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(branch_key(env, id).as_bytes());
    format!("pgplane-branch/{}", pgplane_core::ident::hex(&digest[..8]))
}

/// Ends sessions named `name` (a dead process's leftovers; we hold the lock) and waits
/// until they are gone.
async fn reap(admin: &Client, name: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left: i64 = admin
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1 AND pid <> pg_backend_pid()",
                &[&name],
            )
            .await?
            .get(0);
        if left == 0 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("{left} session(s) left by an interrupted pgplane ({name}) did not end within 30s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A recorded source (absolute, symlinks resolved when it was recorded) must still be
/// that path: a folder on its way replaced by a symlink since would lead elsewhere.
fn unchanged(path: &str) -> Result<()> {
    let real = std::fs::canonicalize(path).with_context(|| format!("source {path} cannot be read"))?;
    if real != Path::new(path) {
        bail!(
            "source {path} now leads to {} (a symlink on its way appeared since it was recorded); \
             pass the sources again with --source",
            real.display()
        );
    }
    Ok(())
}

/// Waits for (or terminates) sessions connected to `database` until `deadline` (`timeout`
/// is the configured wait, for the message).
async fn clear_sessions(
    admin: &Client,
    database: &str,
    policy: TemplateSessions,
    deadline: Instant,
    timeout: Duration,
) -> Result<()> {
    loop {
        let sessions: Vec<(i32, String, String)> = admin
            .query(
                "SELECT pid, coalesce(usename, ''), coalesce(application_name, '') FROM pg_stat_activity
                  WHERE datname = $1 AND pid <> pg_backend_pid()",
                &[&database],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        if sessions.is_empty() {
            return Ok(());
        }
        if policy == TemplateSessions::Terminate {
            for (pid, _, _) in &sessions {
                admin.execute("SELECT pg_terminate_backend($1)", &[pid]).await?;
            }
        }
        if Instant::now() >= deadline {
            let list: Vec<String> =
                sessions.iter().map(|(p, u, a)| format!("pid {p} user {u} application {a:?}")).collect();
            bail!(
                "{} session(s) on template {database} did not end within {}s ({}); {}",
                sessions.len(),
                timeout.as_secs(),
                list.join(", "),
                match policy {
                    TemplateSessions::Wait => "end them, or set `branches.template_sessions: terminate`",
                    TemplateSessions::Terminate => "they reconnect as fast as they are terminated; stop the client",
                }
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
