//! Operations shared by every front end (today the CLI; the HTTP service and the event
//! consumer call the same functions): load → desired → observe → plan → execute.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Result};
use pgplane_core::manifest::Manifest;
use pgplane_core::model::Desired;
use pgplane_core::plan::{plan, ActionKind, Plan, PlanOptions};
use pgplane_core::tenant::Registry;
use tokio_postgres::Client;

use crate::conn::Servers;
use crate::exec::{Executor, Progress};
use crate::local::LocalServer;
use crate::observe::{Depth, Fresh};
use crate::secrets::Keyring;
use crate::{control, observe};

/// Process-wide context: the home folder, its secret key and the embedded server.
pub struct Ctx {
    pub home: PathBuf,
    pub local: LocalServer,
    keys: std::sync::OnceLock<Keyring>,
    /// The journal row this operation reports to, when the caller created it (`serve`
    /// creates it to answer 202 before the work starts); `None`: the operation journals itself.
    pub operation: Option<i64>,
}

impl Ctx {
    pub fn new(home: PathBuf) -> Ctx {
        let local = LocalServer::new(&home);
        Ctx { home, local, keys: std::sync::OnceLock::new(), operation: None }
    }

    /// The secret key, loaded (or created) on first use.
    pub fn keys(&self) -> Result<&Keyring> {
        if self.keys.get().is_none() {
            let _ = self.keys.set(Keyring::load(&self.home)?);
        }
        Ok(self.keys.get().expect("just loaded"))
    }
}

/// Which manifest and environment an operation works on (a file is read and validated by
/// the operation; the environment defaults to the manifest's `environment:`).
#[derive(Debug, Clone)]
pub struct ManifestArgs {
    pub file: PathBuf,
    pub env: Option<String>,
}

pub fn load_manifest(path: &Path) -> Result<Manifest> {
    let env = |k: &str| std::env::var(k).ok();
    Ok(Manifest::load(path, &env)?)
}

pub fn environment(manifest: &Manifest, flag: Option<&str>) -> Result<String> {
    match flag.map(str::to_string).or_else(|| manifest.default_environment.clone()) {
        Some(e) => Ok(e),
        None => bail!(
            "no environment given: pass --env NAME (or PGPLANE_ENV), or set `environment:` in {}",
            manifest.file.display()
        ),
    }
}

/// A manifest resolved against live servers, ready to plan.
pub struct Session {
    pub manifest: Manifest,
    /// The registered tenants of the environment (from the control database, when it
    /// exists), with placements chosen for `server: auto` tenants that had none.
    pub registry: Registry,
    /// The manifest and the registry as one desired state.
    pub desired: Desired,
    pub servers: Servers,
    pub admins: BTreeMap<String, Client>,
    /// The home folder, for the secret key (password drift is checked against it).
    pub home: PathBuf,
    /// `apply --new-secret-key`: the current key replaces the recorded one.
    pub new_secret_key: bool,
}

impl Session {
    /// Validates everything that needs no server first, then connects and reads the
    /// registered tenants (never creating the control database).
    pub async fn open(ctx: &mut Ctx, file: &Path, env: Option<&str>) -> Result<Session> {
        let started = std::time::Instant::now();
        let manifest = load_manifest(file)?;
        let env = environment(&manifest, env)?;
        // The manifest's own names, before any server is asked (placements provisional).
        let provisional = crate::tenants::provisional(&manifest, &Registry::default());
        Desired::build(&manifest, &env, &provisional)
            .map_err(|e| anyhow::anyhow!("{}: {e}", manifest.file.display()))?;
        let local = LocalServer::new(&ctx.home);
        let servers = Servers::resolve(&manifest, &local, || ctx.keys())?;
        // Admin sessions only read and take the lock; the executor opens its own, named
        // `pgplane-apply/…`, for the plan's statements.
        let admins = servers.connect_all().await?;
        let mut s = Session {
            manifest,
            registry: Registry::default(),
            desired: Desired { env: env.clone(), ..Desired::default() },
            servers,
            admins,
            home: ctx.home.clone(),
            new_secret_key: false,
        };
        let control = control::open_existing(s.servers.first(), s.first_admin()).await?;
        s.registry = match &control {
            Some(c) => crate::tenants::registry::load(c, &env).await?,
            None => Registry::default(),
        };
        s.place(None).await?;
        tracing::debug!(
            ms = started.elapsed().as_millis() as u64,
            objects = s.desired.objects().len(),
            tenants = s.registry.tenants.len(),
            "manifest read, servers connected"
        );
        Ok(s)
    }

    /// Chooses servers for `server: auto` tenant databases that have none yet (recorded in
    /// `record`, the control database under the lock; in memory only without it), then
    /// computes the desired state from the manifest and the registry.
    pub async fn place(&mut self, record: Option<&Client>) -> Result<()> {
        let placed = crate::tenants::place(&self.manifest, &mut self.registry, &self.admins).await?;
        if let Some(c) = record {
            crate::tenants::registry::record_placements(c, &self.desired.env, &self.registry, &placed).await?;
        }
        self.desired = Desired::build(&self.manifest, &self.desired.env, &self.registry)
            .map_err(|e| anyhow::anyhow!("{}: {e}", self.manifest.file.display()))?;
        Ok(())
    }

    /// Reads the registry again (under the lock, so it is current) and places what needs
    /// a server, recording the choices.
    pub async fn refresh_registry(&mut self, control: &Client) -> Result<()> {
        self.registry = crate::tenants::registry::load(control, &self.desired.env).await?;
        self.place(Some(control)).await
    }

    /// Creates the control database if needed, takes the lock in it, ends statements a
    /// killed pgplane left running, and migrates the control schema.
    pub async fn lock(&self, timeout: Duration) -> Result<(control::ApplyLock, Client)> {
        control::create_if_missing(self.first_admin()).await?;
        let lock = control::lock(self.servers.first(), timeout, |pid| match pid {
            Some(pid) => tracing::warn!(pid, "waiting for another pgplane operation on this control database"),
            None => tracing::warn!("waiting for another pgplane operation on this control database"),
        })
        .await?;
        let control = control::ensure(self.servers.first()).await?;
        for (server, admin) in &self.admins {
            control::reap_leftovers(admin, server).await?;
        }
        Ok((lock, control))
    }

    /// Runs `work` journaled as a job of this process when the control database exists
    /// (`migrate up -f`); without one there is nothing to journal into, and it just runs.
    pub async fn journaled<T>(&self, kind: &str, work: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        let Some(control) = control::open_existing(self.servers.first(), self.first_admin()).await? else {
            return work.await;
        };
        let journal = control::Journal::start(&control, None, kind, Some(&self.desired.env)).await?;
        let result = work.await;
        let error = result.as_ref().err().map(|e| format!("{e:#}"));
        if let Err(e) = journal.finish(&control, 0, error.as_deref()).await {
            tracing::warn!(error = %format!("{e:#}"), "could not journal the end of the operation");
        }
        result
    }

    pub fn first_admin(&self) -> &Client {
        &self.admins[&self.servers.first().name]
    }

    /// Read-only plan: the control database is read if it exists, never created.
    /// Unless `deep`, database contents come from apply's cache while their fingerprint holds.
    pub async fn plan_readonly(&self, opts: PlanOptions, deep: bool) -> Result<Plan> {
        let started = std::time::Instant::now();
        let control = control::open_existing(self.servers.first(), self.first_admin()).await?;
        let records = match &control {
            Some(c) => control::read_records(c).await?,
            None => Vec::new(),
        };
        tracing::debug!(
            ms = started.elapsed().as_millis() as u64,
            records = records.len(),
            "read the control database"
        );
        let depth = match (&control, deep) {
            (Some(c), false) => Depth::Cached(c),
            _ => Depth::Deep,
        };
        let (mut observed, _) = observe::observe(&self.servers, &self.admins, &self.desired, records, depth).await?;
        if let Some(c) = &control {
            // Password drift, and a secret key that is not the one the passwords derive from.
            let keys = Keyring::load_existing(&self.home)?;
            let check = match &keys {
                Some(k) => observe::check_passwords(&mut observed, &self.desired, &self.admins, c, k).await?,
                None => observe::PasswordCheck::default(),
            };
            let recorded = control::key_fingerprint(c).await?;
            crate::secrets::check_key(
                recorded.as_deref(),
                keys.as_ref(),
                &self.home,
                check.checked,
                check.differing,
                false,
            )?;
        }
        tracing::debug!(ms = started.elapsed().as_millis() as u64, "observed");
        let plan = plan(&self.desired, &observed, opts)?;
        tracing::debug!(ms = started.elapsed().as_millis() as u64, actions = plan.actions.len(), "planned");
        Ok(plan)
    }

    /// Takes the lock, makes sure the control database exists, and plans against it.
    pub async fn lock_and_plan(&mut self, opts: PlanOptions, lock_timeout: Duration) -> Result<Locked> {
        let (lock, control) = self.lock(lock_timeout).await?;
        self.plan_locked(lock, control, opts).await
    }

    /// Plans under a lock taken with [`Session::lock`]: the registry is read again (a
    /// tenant operation may have just changed it) and placements are recorded.
    pub async fn plan_locked(
        &mut self,
        lock: control::ApplyLock,
        control: Client,
        opts: PlanOptions,
    ) -> Result<Locked> {
        self.refresh_registry(&control).await?;
        self.plan_current(lock, control, opts).await
    }

    /// Plans the session's desired state as it is (the caller read the registry under the
    /// lock, and may have changed it in memory).
    pub async fn plan_current(&self, lock: control::ApplyLock, control: Client, opts: PlanOptions) -> Result<Locked> {
        let records = control::read_records(&control).await?;
        let (mut observed, fresh) =
            observe::observe(&self.servers, &self.admins, &self.desired, records.clone(), Depth::Deep).await?;
        // Records without an OID (an older pgplane's) name what is there now.
        control::fill_oids(&control, &self.desired.env, &observed).await?;
        let keys = Keyring::load(&self.home)?;
        let check = observe::check_passwords(&mut observed, &self.desired, &self.admins, &control, &keys).await?;
        let recorded = control::key_fingerprint(&control).await?;
        crate::secrets::check_key(
            recorded.as_deref(),
            Some(&keys),
            &self.home,
            check.checked,
            check.differing,
            self.new_secret_key,
        )?;
        if recorded.as_deref() != Some(keys.fingerprint().as_str()) {
            control::set_key_fingerprint(&control, &keys.fingerprint()).await?;
        }
        control::store_verified(&control, &check.verified).await?;
        let plan = plan(&self.desired, &observed, opts)?;
        Ok(Locked { lock, control, plan, fresh, records })
    }

    /// Runs a plan made under the lock and journals the operation. Returns how many
    /// actions ran and the database contents the executor captured on its way.
    pub async fn execute(
        &self,
        ctx: &mut Ctx,
        locked: &Locked,
        kind: &str,
        progress: &dyn Progress,
    ) -> Result<(usize, Vec<Fresh>)> {
        let journal = control::Journal::start(&locked.control, ctx.operation, kind, Some(&self.desired.env)).await?;
        let keys = ctx.keys()?;
        let mut observe_dbs = BTreeMap::new();
        for target in &self.servers.list {
            for (db, readers) in observe::wanted_databases(&target.name, &self.desired, &locked.records) {
                observe_dbs.insert((target.name.clone(), db), readers);
            }
        }
        let mut exec = Executor::new(&self.servers, &locked.control, &locked.lock, keys, observe_dbs);
        let result = exec.run(&locked.plan, progress).await;
        let error = result.as_ref().err().map(|e| format!("{e:#}"));
        let journaled = journal.finish(&locked.control, *result.as_ref().unwrap_or(&0), error.as_deref()).await;
        match (&result, journaled) {
            (Ok(_), Err(e)) => return Err(e.context("journaling the operation")),
            // The action's error is the one to report; the journal's is secondary.
            (Err(_), Err(e)) => tracing::warn!(error = %format!("{e:#}"), "could not journal the failed operation"),
            _ => {}
        }
        Ok((result?, exec.captured))
    }
}

pub struct Locked {
    lock: control::ApplyLock,
    pub control: Client,
    pub plan: Plan,
    /// Database contents read (deeply) for this plan.
    fresh: Vec<Fresh>,
    records: Vec<pgplane_core::model::Record>,
}

impl Session {
    /// Refreshes the observation cache after a successful apply (or a plan with no
    /// changes): databases the plan did not touch keep what was just read, touched ones
    /// are read again, dropped ones are forgotten.
    pub async fn refresh_cache(&self, locked: &Locked, captured: Vec<Fresh>) -> Result<()> {
        let mut touched: BTreeSet<(String, String)> = BTreeSet::new();
        let mut dropped: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for a in &locked.plan.actions {
            if let Some(db) = &a.database {
                touched.insert((a.server.clone(), db.clone()));
            }
            match a.kind {
                ActionKind::CreateDatabase => {
                    touched.insert((a.server.clone(), a.object.name.clone()));
                }
                ActionKind::DropDatabase => dropped.entry(a.server.clone()).or_default().push(a.object.name.clone()),
                _ => {}
            }
        }
        let mut store: Vec<Fresh> = locked
            .fresh
            .iter()
            .filter(|f| !touched.contains(&(f.server.clone(), f.database.clone())))
            .cloned()
            .collect();
        // The executor captured most touched databases on its own connections; the last
        // capture of a database is the one taken after its last action.
        let mut by_db: BTreeMap<(String, String), Fresh> = BTreeMap::new();
        for f in captured {
            by_db.insert((f.server.clone(), f.database.clone()), f);
        }
        for target in &self.servers.list {
            let wanted = observe::wanted_databases(&target.name, &self.desired, &locked.records);
            let again: BTreeMap<String, Vec<String>> = wanted
                .into_iter()
                .filter(|(db, _)| {
                    let key = (target.name.clone(), db.clone());
                    touched.contains(&key) && !by_db.contains_key(&key)
                })
                .collect();
            if !again.is_empty() {
                store.extend(observe::read_fresh(target, &self.admins[&target.name], &again).await?);
            }
        }
        store.extend(by_db.into_values().filter(|f| !dropped.get(&f.server).is_some_and(|d| d.contains(&f.database))));
        control::store_observations(&locked.control, &store).await?;
        for (server, dbs) in dropped {
            control::forget_observations(&locked.control, &server, &dbs).await?;
        }
        Ok(())
    }
}
