//! Reads the catalog into [`Observed`]. Cluster-wide state comes from shared catalogs in
//! a few queries on the admin connection; the inside of each relevant database needs
//! one connection to it, made concurrently (bounded).

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, Result};
use futures_util::stream::{self, StreamExt, TryStreamExt};
use pgplane_core::model::{Desired, Record};
use pgplane_core::observed::{
    Contents, DatabaseState, DbContents, Observed, PasswordState, Privileges, RoleState, SchemaState, ServerState,
};
use tokio_postgres::Client;

use crate::conn::{Servers, Target};
use crate::secrets::Keyring;

const ROLES: &str = include_str!("../sql/roles.sql");
const DATABASES: &str = include_str!("../sql/databases.sql");
const ROLE_SETTINGS: &str = include_str!("../sql/role_settings.sql");
const SCHEMAS: &str = include_str!("../sql/schemas.sql");
const EXTENSIONS: &str = include_str!("../sql/extensions.sql");
const DEFAULT_SELECT: &str = include_str!("../sql/default_select.sql");
const SELECT_ALL: &str = include_str!("../sql/select_all.sql");
const FINGERPRINTS: &str = include_str!("../sql/fingerprints.sql");
const ROLE_PASSWORDS: &str = include_str!("../sql/role_passwords.sql");

/// How many databases are read at once.
const PARALLEL_READS: usize = 8;

/// How to learn the inside of databases.
pub enum Depth<'a> {
    /// Connect to every relevant database.
    Deep,
    /// Reuse observations cached in the control database while their fingerprint holds.
    Cached(&'a Client),
}

/// A database's contents as read now, with the fingerprint read just before.
#[derive(Debug, Clone)]
pub struct Fresh {
    pub server: String,
    pub database: String,
    pub fingerprint: String,
    pub readers: Vec<String>,
    pub contents: DbContents,
}

/// Databases whose inside matters for `desired`: desired ones, and those holding records
/// of this environment; each with the read-only roles whose SELECT coverage is checked.
pub fn wanted_databases(server: &str, desired: &Desired, records: &[Record]) -> BTreeMap<String, Vec<String>> {
    let mut wanted: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for d in desired.databases.iter().filter(|d| d.server == server) {
        wanted.entry(d.name.clone()).or_default();
    }
    for g in desired.read_grants.iter().filter(|g| g.server == server) {
        wanted.entry(g.database.clone()).or_default().insert(g.reader.clone());
    }
    for r in records.iter().filter(|r| r.object.server == server && r.origin.env == desired.env) {
        if !r.object.database.is_empty() {
            wanted.entry(r.object.database.clone()).or_default();
        }
    }
    wanted.into_iter().map(|(db, readers)| (db, readers.into_iter().collect())).collect()
}

pub async fn observe(
    servers: &Servers,
    admins: &BTreeMap<String, Client>,
    desired: &Desired,
    records: Vec<Record>,
    depth: Depth<'_>,
) -> Result<(Observed, Vec<Fresh>)> {
    let mut out = Observed { servers: BTreeMap::new(), records };
    let mut fresh_all = Vec::new();
    for target in &servers.list {
        let admin = admins.get(&target.name).context("no admin connection")?;
        let mut state =
            read_cluster(admin).await.with_context(|| format!("reading the catalog of server {}", target.name))?;
        if desired.databases.iter().any(|d| d.server == target.name && !state.databases.contains_key(&d.name)) {
            let client = target.connect(Some("template1")).await?;
            state.template = Some(
                read_contents(&client, &[])
                    .await
                    .with_context(|| format!("reading template1 on server {}", target.name))?,
            );
        }
        let mut wanted = wanted_databases(&target.name, desired, &out.records);
        wanted.retain(|db, _| state.databases.get(db).is_some_and(|d| !d.is_template));
        let names: Vec<String> = wanted.keys().cloned().collect();
        let fingerprints = fingerprints(admin, &names).await?;

        if let Depth::Cached(control) = depth {
            let cached = crate::control::load_observations(control, &target.name, &names).await?;
            for (db, (fingerprint, readers, contents)) in cached {
                let valid = fingerprints.get(&db) == Some(&fingerprint) && wanted.get(&db) == Some(&readers);
                if valid {
                    if let Some(d) = state.databases.get_mut(&db) {
                        d.contents = Contents::Known(contents);
                    }
                    wanted.remove(&db);
                }
            }
        }

        let reused = names.len() - wanted.len();
        tracing::debug!(server = %target.name, reused, read = wanted.len(), "observing databases");
        let fresh = read_with(target, &fingerprints, &wanted).await?;
        for f in &fresh {
            if let Some(d) = state.databases.get_mut(&f.database) {
                d.contents = Contents::Known(f.contents.clone());
            }
        }
        fresh_all.extend(fresh);
        out.servers.insert(target.name.clone(), state);
    }
    Ok((out, fresh_all))
}

/// Fingerprints (see `sql/fingerprints.sql`) of the named databases.
pub async fn fingerprints(admin: &Client, names: &[String]) -> Result<BTreeMap<String, String>> {
    let rows = admin.query(FINGERPRINTS, &[&names]).await.context("reading database fingerprints")?;
    Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Reads the named databases afresh (fingerprint first, then contents).
pub async fn read_fresh(target: &Target, admin: &Client, dbs: &BTreeMap<String, Vec<String>>) -> Result<Vec<Fresh>> {
    let names: Vec<String> = dbs.keys().cloned().collect();
    let fingerprints = fingerprints(admin, &names).await?;
    read_with(target, &fingerprints, dbs).await
}

/// Reads the contents of `dbs` (database → readers), 8 at a time, pairing each with the
/// fingerprint read before it. Databases without a fingerprint no longer exist.
async fn read_with(
    target: &Target,
    fingerprints: &BTreeMap<String, String>,
    dbs: &BTreeMap<String, Vec<String>>,
) -> Result<Vec<Fresh>> {
    stream::iter(dbs.iter().filter_map(|(db, readers)| Some((db, readers, fingerprints.get(db)?.clone()))).map(
        |(db, readers, fingerprint)| async move {
            let client = target.connect(Some(db)).await?;
            let contents = read_contents(&client, readers)
                .await
                .with_context(|| format!("reading database {db} on server {}", target.name))?;
            Ok::<_, anyhow::Error>(Fresh {
                server: target.name.clone(),
                database: db.clone(),
                fingerprint,
                readers: readers.clone(),
                contents,
            })
        },
    ))
    .buffer_unordered(PARALLEL_READS)
    .try_collect()
    .await
}

fn privileges(pairs: Vec<String>) -> Privileges {
    let mut map: Privileges = BTreeMap::new();
    for p in pairs {
        if let Some((grantee, privilege)) = p.rsplit_once(':') {
            map.entry(grantee.to_string()).or_default().insert(privilege.to_string());
        }
    }
    map
}

pub async fn read_cluster(admin: &Client) -> Result<ServerState> {
    let (roles, dbs, settings) =
        futures_util::try_join!(admin.query(ROLES, &[]), admin.query(DATABASES, &[]), admin.query(ROLE_SETTINGS, &[]))?;
    let mut state = ServerState::default();
    for r in roles {
        let deps: Vec<String> = r.get(8);
        let owns: Vec<String> = r.get(9);
        state.roles.insert(
            r.get(0),
            RoleState {
                oid: r.get(10),
                login: r.get(1),
                superuser: r.get(2),
                createdb: r.get(3),
                createrole: r.get(4),
                replication: r.get(5),
                bypassrls: r.get(6),
                inherit: r.get(7),
                dependent_databases: deps.into_iter().collect(),
                owns_objects_in: owns.into_iter().collect(),
                password: PasswordState::Unknown,
            },
        );
    }
    for d in dbs {
        state.databases.insert(
            d.get(0),
            DatabaseState {
                oid: d.get(6),
                owner: d.get(1),
                connection_limit: d.get(2),
                is_template: d.get(3),
                privileges: privileges(d.get(4)),
                settings: DatabaseState::parse_settings(&d.get::<_, Vec<String>>(5)),
                contents: Contents::Unknown,
            },
        );
    }
    for s in settings {
        let cfg: Option<Vec<String>> = s.get(2);
        state.role_settings.insert((s.get(0), s.get(1)), cfg.unwrap_or_default());
    }
    Ok(state)
}

pub async fn read_contents(c: &Client, readers: &[String]) -> Result<DbContents> {
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&readers];
    let (schemas, exts, defaults, select_all) = futures_util::try_join!(
        c.query(SCHEMAS, &[]),
        c.query(EXTENSIONS, &[]),
        c.query(DEFAULT_SELECT, &[]),
        c.query(SELECT_ALL, &params),
    )?;
    Ok(DbContents {
        schemas: schemas
            .into_iter()
            .map(|r| (r.get(0), SchemaState { owner: r.get(1), privileges: privileges(r.get(2)) }))
            .collect(),
        extensions: exts.into_iter().map(|r| r.get(0)).collect(),
        default_select: defaults.into_iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect(),
        select_all: select_all.into_iter().map(|r| (r.get(0), r.get(1))).collect(),
    })
}

/// What [`check_passwords`] found: how many managed roles it compared and how many did
/// not match (for the secret key check), and verifiers newly found to match (for
/// `control::store_verified`, which only apply writes).
#[derive(Debug, Default)]
pub struct PasswordCheck {
    pub checked: usize,
    pub differing: usize,
    pub verified: Vec<(String, String, i32, String)>,
}

/// Fills [`RoleState::password`] for every role of `desired` that pgplane manages (recorded
/// for the same origin, existing, not re-created outside pgplane): its stored verifier
/// against the password the secret key derives at the role's generation. A verifier
/// checked before (its token in the control database) is compared as a string; others
/// need one SCRAM derivation each.
pub async fn check_passwords(
    observed: &mut Observed,
    desired: &Desired,
    admins: &BTreeMap<String, Client>,
    control: &Client,
    keys: &Keyring,
) -> Result<PasswordCheck> {
    let records: BTreeMap<&pgplane_core::model::ObjectRef, &Record> =
        observed.records.iter().map(|r| (&r.object, r)).collect();
    let mut managed: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in &desired.roles {
        let obj = pgplane_core::model::ObjectRef::cluster(&r.server, pgplane_core::model::ObjectKind::Role, &r.name);
        let Some(rec) = records.get(&obj).filter(|rec| rec.origin == r.origin) else { continue };
        let Some(state) = observed.servers.get(&r.server) else { continue };
        if state.roles.contains_key(&r.name) && state.replaced(rec).is_none() {
            managed.entry(r.server.clone()).or_default().push(r.name.clone());
        }
    }
    let mut check = PasswordCheck::default();
    if managed.is_empty() {
        return Ok(check);
    }
    let generations = crate::control::password_records(control).await?;
    for (server, roles) in managed {
        let Some(admin) = admins.get(&server) else { continue };
        let rows = match admin.query(ROLE_PASSWORDS, &[&roles]).await {
            Ok(rows) => rows,
            Err(e) => {
                // Not a superuser: the passwords stay unknown rather than the plan failing.
                tracing::warn!(server, error = %crate::exec::pg_error(e), "cannot read role passwords; password drift is not checked");
                continue;
            }
        };
        let stored: BTreeMap<String, Option<String>> = rows.into_iter().map(|r| (r.get(0), r.get(1))).collect();
        let Some(state) = observed.servers.get_mut(&server) else { continue };
        for role in roles {
            let (generation, token) = generations.get(&(server.clone(), role.clone())).cloned().unwrap_or((1, None));
            let found = match stored.get(&role).cloned().flatten() {
                None => PasswordState::Missing,
                Some(v) => {
                    let want = keys.verified_token(&server, &role, generation, &v);
                    if token.as_deref() == Some(want.as_str()) {
                        PasswordState::Matches
                    } else if crate::secrets::verifier_matches(&keys.password(&server, &role, generation), &v) {
                        check.verified.push((server.clone(), role.clone(), generation, want));
                        PasswordState::Matches
                    } else {
                        PasswordState::Differs
                    }
                }
            };
            check.checked += 1;
            if found != PasswordState::Matches {
                check.differing += 1;
            }
            if let Some(r) = state.roles.get_mut(&role) {
                r.password = found;
            }
        }
    }
    Ok(check)
}
