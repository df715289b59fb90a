//! `pgplane pgbouncer`: a PgBouncer configuration for one environment, from its desired
//! state (modules, the manifest's tenants and registered ones), each server's connection
//! limits and the SCRAM verifiers the servers hold for the managed roles.
//!
//! Read-only: it changes nothing on any server nor in the control database. The pure half
//! (entries, budget, rendering) is `pgplane_core::pgbouncer`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;
use pgplane_core::model::{ObjectKind, ObjectRef};
use pgplane_core::pgbouncer::{self as core, Budget, Entry, Hosts, Limits, PoolMode, Settings};
use serde::Serialize;

use crate::control;
use crate::error::{Error, Result};
use crate::ops::{Ctx, Session};
use crate::secrets::{verifier_matches, Keyring};

const ROLE_PASSWORDS: &str = include_str!("../sql/role_passwords.sql");

/// What the caller asks for.
#[derive(Debug, Clone)]
pub struct Options {
    pub listen_addr: String,
    pub listen_port: u16,
    pub pool_mode: PoolMode,
    /// Server connections kept out of the pools (for clients that connect directly, such as
    /// pgplane itself).
    pub reserve: u32,
    /// `auth_file` as PgBouncer opens it.
    pub auth_file: String,
    /// Read and check the verifiers (`userlist.txt`); without, only `pgbouncer.ini`.
    pub userlist: bool,
}

/// A generated configuration.
#[derive(Debug, Serialize)]
pub struct Config {
    pub env: String,
    pub databases: Vec<Entry>,
    pub servers: Vec<Budget>,
    /// The roles in `userlist.txt`.
    pub users: Vec<String>,
    #[serde(skip)]
    pub ini: String,
    /// `userlist.txt` (verifiers, not passwords; still keep it private).
    #[serde(skip)]
    pub userlist: Option<String>,
}

/// Builds the configuration: entries from the desired state, the budget against each
/// server's limits (an overflow is [`Error::Invalid`] naming it), and with
/// `opts.userlist` the verifiers, each checked to be the one pgplane set for a role it
/// manages (by OID) in this environment.
pub async fn generate(ctx: &mut Ctx, file: &Path, env: Option<&str>, opts: &Options) -> Result<Config> {
    let s = Session::open(ctx, file, env).await?;
    let hosts: Hosts = s.servers.list.iter().map(|t| (t.name.clone(), t.host_port())).collect();
    let entries = core::entries(&s.desired, &s.manifest, &hosts).map_err(Error::invalid)?;
    if entries.is_empty() {
        return Err(Error::invalid(format!(
            "environment {} has no databases to pool (modules with per-tenant storage need tenants)",
            s.desired.env
        )));
    }
    let users = core::users(&entries).map_err(Error::invalid)?;

    let mut limits = Vec::new();
    for target in &s.servers.list {
        let admin = &s.admins[&target.name];
        limits.push(read_limits(admin, &target.name).await?);
        let wanted: Vec<String> = entries.iter().filter(|e| e.server == target.name).map(|e| e.name.clone()).collect();
        let rows = admin
            .query(
                "SELECT d.datname::pg_catalog.text FROM pg_catalog.pg_database d
                  WHERE d.datname::pg_catalog.text OPERATOR(pg_catalog.=) ANY ($1::pg_catalog.text[])",
                &[&wanted],
            )
            .await
            .context("reading databases")?;
        let present: BTreeSet<String> = rows.iter().map(|r| r.get(0)).collect();
        let missing: Vec<&String> = wanted.iter().filter(|d| !present.contains(*d)).collect();
        if !missing.is_empty() {
            return Err(Error::invalid(format!(
                "database(s) {} of environment {} do not exist on server {} yet; run `pgplane apply` first",
                join(&missing),
                s.desired.env,
                target.name
            )));
        }
    }
    let budgets = core::budget(&entries, &limits, opts.reserve).map_err(|e| Error::invalid(e.to_string()))?;
    let settings = Settings {
        env: s.desired.env.clone(),
        listen_addr: opts.listen_addr.clone(),
        listen_port: opts.listen_port,
        auth_file: opts.auth_file.clone(),
        pool_mode: opts.pool_mode,
    };
    let ini = core::render_ini(&entries, &budgets, &settings).map_err(Error::invalid)?;
    let userlist = if opts.userlist {
        let verifiers = verifiers(&s, &users).await?;
        Some(core::render_userlist(&verifiers).map_err(Error::invalid)?)
    } else {
        None
    };
    Ok(Config {
        env: s.desired.env.clone(),
        databases: entries,
        servers: budgets,
        users: users.into_iter().map(|(u, _)| u).collect(),
        ini,
        userlist,
    })
}

/// `max_connections`, `superuser_reserved_connections` and (PostgreSQL 16+)
/// `reserved_connections` of a server.
async fn read_limits(admin: &tokio_postgres::Client, server: &str) -> Result<Limits> {
    let rows = admin
        .query(
            "SELECT s.name::pg_catalog.text, s.setting::pg_catalog.text FROM pg_catalog.pg_settings s
              WHERE s.name OPERATOR(pg_catalog.=) ANY ('{max_connections,superuser_reserved_connections,reserved_connections}'::pg_catalog.text[])",
            &[],
        )
        .await
        .with_context(|| format!("reading the connection limits of server {server}"))?;
    let settings: BTreeMap<String, String> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let get = |name: &str| -> Result<Option<u32>> {
        settings
            .get(name)
            .map(|v| {
                v.parse::<u32>().map_err(|e| Error::Internal(anyhow::anyhow!("server {server}: {name} = {v:?}: {e}")))
            })
            .transpose()
    };
    Ok(Limits {
        server: server.to_string(),
        max_connections: get("max_connections")?.unwrap_or(100),
        superuser_reserved_connections: get("superuser_reserved_connections")?.unwrap_or(3),
        reserved_connections: get("reserved_connections")?,
    })
}

/// The server-side verifier of each user, checked: the role is recorded as this
/// environment's (with the OID it has now) and its verifier is one of the password pgplane
/// derives for it. Anything else is an error naming the roles and the fix.
async fn verifiers(s: &Session, users: &[(String, String)]) -> Result<BTreeMap<String, String>> {
    let env = &s.desired.env;
    let control = control::open_existing(s.servers.first(), s.first_admin()).await?.ok_or_else(|| {
        Error::invalid(format!("pgplane has provisioned nothing yet; run `pgplane apply --env {env}`"))
    })?;
    let keys = Keyring::load_existing(&s.home)?;
    let recorded = control::key_fingerprint(&control).await?;
    crate::secrets::check_key(recorded.as_deref(), keys.as_ref(), &s.home, 0, 0, false)?;
    let keys = keys.ok_or_else(|| {
        Error::invalid("no secret key: set PGPLANE_SECRET_KEY or restore $PGPLANE_HOME/secret.key".to_string())
    })?;
    let records: BTreeMap<ObjectRef, Option<u32>> = control::read_records(&control)
        .await?
        .into_iter()
        .filter(|r| &r.origin.env == env && r.object.kind == ObjectKind::Role)
        .map(|r| (r.object, r.oid))
        .collect();
    let generations = control::password_records(&control).await?;
    let mut by_server: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (role, server) in users {
        by_server.entry(server).or_default().push(role.clone());
    }
    let mut out = BTreeMap::new();
    let mut problems = Vec::new();
    for (server, roles) in by_server {
        let admin = &s.admins[server];
        let stored: BTreeMap<String, Option<String>> = admin
            .query(ROLE_PASSWORDS, &[&roles])
            .await
            .map_err(|e| {
                Error::Internal(crate::exec::pg_error(e).context(format!(
                    "reading the managed roles' verifiers on server {server} (pg_authid: the admin URL must be a superuser's)"
                )))
            })?
            .into_iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let oids: BTreeMap<String, u32> = admin
            .query(
                "SELECT r.rolname::pg_catalog.text, r.oid FROM pg_catalog.pg_roles r
                  WHERE r.rolname::pg_catalog.text OPERATOR(pg_catalog.=) ANY ($1::pg_catalog.text[])",
                &[&roles],
            )
            .await
            .context("reading role OIDs")?
            .into_iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        for role in roles {
            let obj = ObjectRef::cluster(server, ObjectKind::Role, &role);
            let Some(recorded) = records.get(&obj) else {
                problems
                    .push(format!("role {role} on server {server} is not managed by pgplane yet; run `pgplane apply`"));
                continue;
            };
            let Some(now) = oids.get(&role) else {
                problems.push(format!("role {role} does not exist on server {server}; run `pgplane apply`"));
                continue;
            };
            if recorded.is_some_and(|oid| oid != *now) {
                problems.push(format!(
                    "role {role} on server {server} is not the one pgplane created (dropped and re-created outside \
                     pgplane); adopt it with `pgplane adopt` or drop it"
                ));
                continue;
            }
            let (generation, token) =
                generations.get(&(server.to_string(), role.clone())).cloned().unwrap_or((1, None));
            match stored.get(&role).cloned().flatten() {
                Some(v)
                    if token.as_deref() == Some(keys.verified_token(server, &role, generation, &v).as_str())
                        || verifier_matches(&keys.password(server, &role, generation), &v) =>
                {
                    out.insert(role, v);
                }
                _ => problems.push(format!(
                    "role {role} on server {server} does not have the password pgplane set (changed outside pgplane, or \
                     none); run `pgplane apply` to set it again"
                )),
            }
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(Error::invalid(problems.join("\n")))
    }
}

/// Writes `pgbouncer.ini` (0644) and `userlist.txt` (0600, created so from the start) into
/// `dir`, each through a temporary file renamed into place. Returns their paths.
pub fn write(dir: &Path, config: &Config) -> Result<(PathBuf, PathBuf)> {
    let userlist =
        config.userlist.as_deref().ok_or_else(|| Error::Internal(anyhow::anyhow!("the userlist was not generated")))?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let ini = dir.join("pgbouncer.ini");
    let users = dir.join("userlist.txt");
    write_file(&users, userlist, 0o600)?;
    write_file(&ini, &config.ini, 0o644)?;
    Ok((ini, users))
}

fn write_file(path: &Path, text: &str, mode: u32) -> Result<()> {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
        // The umask may have taken bits away: set exactly `mode`.
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn join(items: &[&String]) -> String {
    items.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
}
