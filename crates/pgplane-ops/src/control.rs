//! The control database: `pgplane` on the first server, schema `pgplane`. Holds what
//! pgplane manages, password generations and the operations journal.
//!
//! **Invariant:** read-only commands (`plan`, `status`, `credentials` without `--rotate`)
//! never create or migrate it.

use std::time::{Duration, Instant};

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use pgplane_core::model::{ObjectKind, ObjectRef, Origin, Purpose, Record};
use pgplane_core::observed::{DbContents, Observed};
use tokio_postgres::Client;

use crate::conn::{Role, Target};
use crate::observe::Fresh;

pub const CONTROL_DB: &str = "pgplane";

/// Schema migrations of the control database, in order. Never edit a released one.
/// Every version not yet in `schema_version` is applied, in this order, so a migration
/// numbered apart from the others (100: stacks, written in parallel) is applied wherever
/// it is missing, whatever the highest version applied so far.
const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("../sql/control/0001_init.sql")),
    (2, include_str!("../sql/control/0002_observations.sql")),
    (3, include_str!("../sql/control/0003_installation.sql")),
    (4, include_str!("../sql/control/0004_branches.sql")),
    (5, include_str!("../sql/control/0005_identity.sql")),
    (6, include_str!("../sql/control/0006_jobs.sql")),
    (7, include_str!("../sql/control/0007_stacks.sql")),
    (8, include_str!("../sql/control/0008_tenants.sql")),
    (9, include_str!("../sql/control/0009_job_priority.sql")),
    (10, include_str!("../sql/control/0010_template_identity.sql")),
    (11, include_str!("../sql/control/0011_events.sql")),
    (12, include_str!("../sql/control/0012_event_jobs.sql")),
];

/// The lock that serializes every mutating pgplane operation on a control database.
fn apply_lock() -> crate::locks::Lock {
    crate::locks::Lock::new(crate::locks::APPLY, crate::locks::Key::Int(0))
}

pub async fn exists(admin: &Client) -> Result<bool> {
    let row = admin
        .query_one("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", &[&CONTROL_DB])
        .await
        .context("looking for the control database")?;
    Ok(row.get(0))
}

/// Opens the control database if it exists, without changing anything.
pub async fn open_existing(target: &Target, admin: &Client) -> Result<Option<Client>> {
    if !exists(admin).await? {
        return Ok(None);
    }
    let client = target.connect(Some(CONTROL_DB)).await?;
    // The lock session idles for the whole operation: never let the server end it for that.
    client.batch_execute("SET idle_session_timeout = 0; SET idle_in_transaction_session_timeout = 0").await?;
    // Two statements: a subquery naming a missing table fails when it is parsed, whatever
    // a CASE around it says (the database exists a moment before its schema does).
    let migrated: bool =
        client.query_one("SELECT to_regclass('pgplane.schema_version') IS NOT NULL", &[]).await?.get(0);
    let version: Option<i32> = match migrated {
        false => None,
        true => client.query_one("SELECT max(version) FROM pgplane.schema_version", &[]).await?.get(0),
    };
    match version {
        None => Ok(None),
        Some(v) if v > latest() => bail!(
            "the control database has schema version {v}, newer than this pgplane knows ({}); upgrade pgplane",
            latest()
        ),
        Some(_) => Ok(Some(client)),
    }
}

fn latest() -> i32 {
    MIGRATIONS.last().map(|m| m.0).unwrap_or(0)
}

/// Creates the control database if it is missing (safe when several processes race).
pub async fn create_if_missing(admin: &Client) -> Result<()> {
    if exists(admin).await? {
        return Ok(());
    }
    match admin.batch_execute(&format!("CREATE DATABASE {}", pgplane_core::ident::quote_ident(CONTROL_DB))).await {
        Ok(()) => {}
        Err(e)
            if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_DATABASE)
                || e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) => {}
        Err(e) => return Err(crate::exec::pg_error(e)).context("creating the control database `pgplane`"),
    }
    restrict(admin).await
}

/// `REVOKE ALL ON DATABASE pgplane FROM PUBLIC`, unless already so. Processes racing on
/// a fresh server may update the database's row at the same moment ("tuple concurrently
/// updated"): then look again and retry.
async fn restrict(c: &Client) -> Result<()> {
    for attempt in 0.. {
        let open: bool = c
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_database d, aclexplode(coalesce(d.datacl, acldefault('d', d.datdba))) a
                  WHERE d.datname = $1 AND a.grantee = 0)",
                &[&CONTROL_DB],
            )
            .await?
            .get(0);
        if !open {
            return Ok(());
        }
        match c.batch_execute("REVOKE ALL ON DATABASE pgplane FROM PUBLIC").await {
            Ok(()) => return Ok(()),
            Err(e) if attempt < 20 && e.as_db_error().is_some_and(|d| d.message().contains("concurrently updated")) => {
                tokio::time::sleep(Duration::from_millis(20 + 10 * attempt)).await;
            }
            Err(e) => return Err(anyhow::Error::new(e).context("restricting the control database")),
        }
    }
    unreachable!("the loop returns")
}

/// Migrates the control schema (call with the lock held, after [`create_if_missing`]).
pub async fn ensure(target: &Target) -> Result<Client> {
    ensure_as(target, Role::Apply).await
}

/// [`ensure`] with a session named for `role` (branch operations must not look like an
/// apply's session, which the next apply would reap).
pub async fn ensure_as(target: &Target, role: Role) -> Result<Client> {
    let mut client = target.connect_as(Some(CONTROL_DB), role).await?;
    let tx = client.transaction().await?;
    crate::locks::Lock::new(crate::locks::CONTROL_MIGRATE, crate::locks::Key::Int(0)).xact_lock(&tx).await?;
    tx.batch_execute(
        "CREATE SCHEMA IF NOT EXISTS pgplane;
         CREATE TABLE IF NOT EXISTS pgplane.schema_version (
             version    integer     PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now())",
    )
    .await
    .context("creating the control schema")?;
    let applied: Vec<i32> =
        tx.query("SELECT version FROM pgplane.schema_version", &[]).await?.iter().map(|r| r.get(0)).collect();
    let current = applied.iter().copied().max().unwrap_or(0);
    if current > latest() {
        bail!(
            "the control database has schema version {current}, newer than this pgplane knows ({}); upgrade pgplane",
            latest()
        );
    }
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| !applied.contains(v)) {
        tx.batch_execute(sql).await.with_context(|| format!("migrating the control database to version {version}"))?;
        tx.execute("INSERT INTO pgplane.schema_version (version) VALUES ($1)", &[version]).await?;
    }
    tx.commit().await?;
    // Also when a process died between creating the database and restricting it.
    restrict(&client).await?;
    let id: String = client.query_one("SELECT id FROM pgplane.installation", &[]).await?.get(0);
    crate::conn::set_apply_installation(&id[..id.len().min(16)]);
    Ok(client)
}

/// Cached observations of the named databases: database → (fingerprint, readers, contents).
/// Empty when the control schema predates the cache.
pub async fn load_observations(
    c: &Client,
    server: &str,
    dbs: &[String],
) -> Result<BTreeMap<String, (String, Vec<String>, DbContents)>> {
    let has_cache: bool = c.query_one("SELECT to_regclass('pgplane.observations') IS NOT NULL", &[]).await?.get(0);
    if !has_cache {
        return Ok(BTreeMap::new());
    }
    let rows = c
        .query(
            "SELECT database, fingerprint, readers, contents::text FROM pgplane.observations
              WHERE server = $1 AND database = ANY($2::text[])",
            &[&server, &dbs],
        )
        .await
        .context("reading cached observations")?;
    let mut out = BTreeMap::new();
    for r in rows {
        let text: String = r.get(3);
        // An entry this version cannot read is simply not used.
        if let Ok(contents) = serde_json::from_str::<DbContents>(&text) {
            out.insert(r.get(0), (r.get(1), r.get(2), contents));
        }
    }
    Ok(out)
}

/// Stores fresh observations (apply only, under the lock).
pub async fn store_observations(c: &Client, fresh: &[Fresh]) -> Result<()> {
    if fresh.is_empty() {
        return Ok(());
    }
    let mut servers = Vec::new();
    let mut dbs = Vec::new();
    let mut fps = Vec::new();
    let mut readers = Vec::new();
    let mut contents = Vec::new();
    for f in fresh {
        servers.push(f.server.clone());
        dbs.push(f.database.clone());
        fps.push(f.fingerprint.clone());
        readers.push(serde_json::to_string(&f.readers)?);
        contents.push(serde_json::to_string(&f.contents)?);
    }
    c.execute(
        "INSERT INTO pgplane.observations (server, database, fingerprint, readers, contents)
         SELECT s, d, f, ARRAY(SELECT jsonb_array_elements_text(r::jsonb)), j::jsonb
           FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[]) AS t(s, d, f, r, j)
         ON CONFLICT (server, database) DO UPDATE
            SET fingerprint = EXCLUDED.fingerprint, readers = EXCLUDED.readers,
                contents = EXCLUDED.contents, observed_at = now()",
        &[&servers, &dbs, &fps, &readers, &contents],
    )
    .await
    .context("caching observations")?;
    Ok(())
}

/// Drops cached observations of databases that no longer exist or were dropped.
pub async fn forget_observations(c: &Client, server: &str, dbs: &[String]) -> Result<()> {
    c.execute("DELETE FROM pgplane.observations WHERE server = $1 AND database = ANY($2::text[])", &[&server, &dbs])
        .await?;
    Ok(())
}

pub async fn read_records(c: &Client) -> Result<Vec<Record>> {
    // `object_oid` through to_jsonb: read-only commands also read a control database an
    // older pgplane created and did not migrate (the column is missing there).
    let rows = c
        .query(
            "SELECT server, kind, database, name, env, module, tenant, purpose,
                    (pg_catalog.to_jsonb(o) OPERATOR(pg_catalog.->>) 'object_oid')::pg_catalog.oid
               FROM pgplane.objects o ORDER BY server, kind, database, name",
            &[],
        )
        .await
        .context("reading managed objects from the control database")?;
    rows.iter()
        .map(|r| {
            let kind: String = r.get(1);
            let purpose: String = r.get(7);
            Ok(Record {
                object: ObjectRef {
                    server: r.get(0),
                    kind: ObjectKind::parse(&kind)
                        .with_context(|| format!("unknown object kind {kind:?} in the control database"))?,
                    database: r.get(2),
                    name: r.get(3),
                },
                origin: Origin {
                    env: r.get(4),
                    module: r.get(5),
                    tenant: r.get(6),
                    purpose: Purpose::parse(&purpose)
                        .with_context(|| format!("unknown purpose {purpose:?} in the control database"))?,
                },
                oid: r.get(8),
            })
        })
        .collect()
}

/// Records the OID of a role or database pgplane just created or adopted.
pub async fn set_oid(c: &Client, r: &Record, oid: u32) -> Result<()> {
    c.execute(
        "UPDATE pgplane.objects SET object_oid = $5 WHERE server = $1 AND kind = $2 AND database = $3 AND name = $4",
        &[&r.object.server, &r.object.kind.as_str(), &r.object.database, &r.object.name, &oid],
    )
    .await
    .with_context(|| format!("recording the identity of {} in the control database", r.object.display()))?;
    Ok(())
}

/// Records of `env` written without an OID (by an older pgplane, or by an apply that died
/// right after its CREATE) get the OID of the object now under their name: the first
/// time apply sees the object, it takes it as the one it created. Returns how many.
pub async fn fill_oids(c: &Client, env: &str, observed: &Observed) -> Result<usize> {
    let mut filled = 0;
    for r in observed.records.iter().filter(|r| r.origin.env == env && r.oid.is_none()) {
        if let Some(oid) = observed.servers.get(&r.object.server).and_then(|s| s.oid(r.object.kind, &r.object.name)) {
            set_oid(c, r, oid).await?;
            filled += 1;
        }
    }
    if filled > 0 {
        tracing::info!(env, records = filled, "recorded the identity (OID) of objects recorded without one");
    }
    Ok(filled)
}

/// Records `r` as managed. Returns true when the record is new, false when it was there
/// already with the same origin; a record of another origin is an error, never taken over.
pub async fn claim(c: &Client, r: &Record) -> Result<bool> {
    let inserted = c
        .execute(
            "INSERT INTO pgplane.objects (server, kind, database, name, env, module, tenant, purpose, object_oid)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (server, kind, database, name) DO NOTHING",
            &[
                &r.object.server,
                &r.object.kind.as_str(),
                &r.object.database,
                &r.object.name,
                &r.origin.env,
                &r.origin.module,
                &r.origin.tenant,
                &r.origin.purpose.as_str(),
                &r.oid,
            ],
        )
        .await
        .with_context(|| format!("recording {} in the control database", r.object.display()))?;
    if inserted == 1 {
        return Ok(true);
    }
    let existing = c
        .query_opt(
            "SELECT env, module, tenant, purpose FROM pgplane.objects
              WHERE server = $1 AND kind = $2 AND database = $3 AND name = $4",
            &[&r.object.server, &r.object.kind.as_str(), &r.object.database, &r.object.name],
        )
        .await?;
    let Some(row) = existing else { bail!("{} could not be recorded; run plan again", r.object.display()) };
    let purpose: String = row.get(3);
    let origin = Origin {
        env: row.get(0),
        module: row.get(1),
        tenant: row.get(2),
        purpose: Purpose::parse(&purpose)
            .with_context(|| format!("unknown purpose {purpose:?} in the control database"))?,
    };
    if origin == r.origin {
        // Adopting a re-created object: the record now names the new one.
        if let Some(oid) = r.oid {
            set_oid(c, r, oid).await?;
        }
        return Ok(false);
    }
    bail!(
        "{} is recorded for {}, not {}; another pgplane changed it meanwhile: run plan again",
        r.object.display(),
        origin.describe(),
        r.origin.describe()
    )
}

pub async fn forget(c: &Client, r: &Record) -> Result<()> {
    c.execute(
        "DELETE FROM pgplane.objects WHERE server = $1 AND kind = $2 AND database = $3 AND name = $4",
        &[&r.object.server, &r.object.kind.as_str(), &r.object.database, &r.object.name],
    )
    .await
    .with_context(|| format!("forgetting {} in the control database", r.object.display()))?;
    // role_secrets rows stay: a role re-created under the same name continues its password
    // generation, so a password rotated away never works again.
    Ok(())
}

/// The current password generation of a role (1 when never rotated).
pub async fn generation(c: &Client, server: &str, role: &str) -> Result<i32> {
    let row = c
        .query_opt("SELECT generation FROM pgplane.role_secrets WHERE server = $1 AND role = $2", &[&server, &role])
        .await?;
    Ok(row.map(|r| r.get(0)).unwrap_or(1))
}

pub async fn bump_generation(c: &tokio_postgres::Transaction<'_>, server: &str, role: &str) -> Result<i32> {
    let row = c
        .query_one(
            "INSERT INTO pgplane.role_secrets (server, role, generation, rotated_at) VALUES ($1, $2, 2, now())
             ON CONFLICT (server, role) DO UPDATE
                SET generation = pgplane.role_secrets.generation + 1, rotated_at = now()
             RETURNING generation",
            &[&server, &role],
        )
        .await?;
    Ok(row.get(0))
}

// ----- the secret key and password checks ----------------------------------------------

/// The fingerprint of the secret key recorded in the control database (`None`: none yet,
/// or a control database of an older pgplane).
pub async fn key_fingerprint(c: &Client) -> Result<Option<String>> {
    let row = c
        .query_opt(
            "SELECT pg_catalog.to_jsonb(i) OPERATOR(pg_catalog.->>) 'key_fingerprint' FROM pgplane.installation i",
            &[],
        )
        .await
        .context("reading the secret key's fingerprint")?;
    Ok(row.and_then(|r| r.get(0)))
}

/// Records which secret key this control database's passwords derive from (apply only).
pub async fn set_key_fingerprint(c: &Client, fingerprint: &str) -> Result<()> {
    c.execute("UPDATE pgplane.installation SET key_fingerprint = $1", &[&fingerprint])
        .await
        .context("recording the secret key's fingerprint")?;
    Ok(())
}

/// Per (server, role): the password generation and the verifier token last found to match
/// (see `0005_identity.sql`).
pub async fn password_records(c: &Client) -> Result<BTreeMap<(String, String), (i32, Option<String>)>> {
    let rows = c
        .query(
            "SELECT server, role, generation, pg_catalog.to_jsonb(s) OPERATOR(pg_catalog.->>) 'verified'
               FROM pgplane.role_secrets s",
            &[],
        )
        .await
        .context("reading password generations")?;
    Ok(rows.into_iter().map(|r| ((r.get(0), r.get(1)), (r.get(2), r.get(3)))).collect())
}

/// Remembers verifiers found (or set) to match the derived password at `generation`, so the
/// next check is a string comparison. A row of a newer generation is left as it is.
pub async fn store_verified(c: &Client, verified: &[(String, String, i32, String)]) -> Result<()> {
    for (server, role, generation, token) in verified {
        c.execute(
            "INSERT INTO pgplane.role_secrets (server, role, generation, verified) VALUES ($1, $2, $3, $4)
             ON CONFLICT (server, role) DO UPDATE SET verified = EXCLUDED.verified
              WHERE pgplane.role_secrets.generation = EXCLUDED.generation",
            &[server, role, generation, token],
        )
        .await
        .context("remembering checked passwords")?;
    }
    Ok(())
}

/// An operation's journal entry (a job of this process, see [`crate::jobs`]): started
/// here, or handed over by the worker that claimed the job (it finishes it).
pub struct Journal {
    pub id: i64,
    attempt: Option<crate::jobs::Attempt>,
}

impl Journal {
    /// `given`: the job this operation runs as (a worker claimed it); `None`: record a job
    /// of this process now, its lock held on `c` (the operation's control connection) until
    /// [`Journal::finish`] or until `c` closes (the process died: readers see it interrupted).
    pub async fn start(c: &Client, given: Option<i64>, kind: &str, env: Option<&str>) -> Result<Journal> {
        Journal::start_for(c, given, kind, env, None).await
    }

    /// [`Journal::start`] naming what the operation works on (a branch, a stack).
    pub async fn start_for(
        c: &Client,
        given: Option<i64>,
        kind: &str,
        env: Option<&str>,
        resource: Option<&str>,
    ) -> Result<Journal> {
        Ok(match given {
            Some(id) => Journal { id, attempt: None },
            None => {
                let mut new = crate::jobs::NewJob::new(kind, env);
                new.resource = resource.map(str::to_string);
                let attempt =
                    crate::jobs::queue::start_inline(c, &new, &crate::jobs::worker::inline_worker_name(), None).await?;
                Journal { id: attempt.job.id, attempt: Some(attempt) }
            }
        })
    }

    pub async fn finish(&self, c: &Client, changes: usize, error: Option<&str>) -> Result<()> {
        let Some(attempt) = &self.attempt else { return Ok(()) };
        let changes = i32::try_from(changes).unwrap_or(i32::MAX);
        let how = match error {
            None => crate::jobs::Finish::Succeeded { changes, result: None },
            Some(e) => crate::jobs::Finish::Failed {
                error: e.to_string(),
                code: "failed".to_string(),
                retryable: false,
                changes,
                result: None,
            },
        };
        crate::jobs::queue::finish(c, attempt, &how, &[]).await?;
        Ok(())
    }
}

/// Terminates statements that a killed pgplane left running, and waits until they are gone.
///
/// When a pgplane process dies, the backend holding its lock sees the closed socket at
/// once and releases the lock, but another backend of the same process may still be in
/// the middle of a `CREATE DATABASE`. The new lock holder must not race it: every
/// mutating session is named `pgplane-apply/<pid>`, and while we hold the lock any such
/// session that is busy belongs to a process that lost the lock, i.e. died.
pub async fn reap_leftovers(admin: &Client, server: &str) -> Result<()> {
    let ours = crate::conn::apply_application_name();
    let pattern = crate::conn::apply_pattern();
    let start = Instant::now();
    loop {
        let rows = admin
            .query(
                "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity
                  WHERE application_name LIKE $1 AND application_name <> $2
                    AND state <> 'idle' AND pid <> pg_backend_pid()",
                &[&pattern, &ours],
            )
            .await
            .context("looking for sessions of a killed pgplane")?;
        if rows.is_empty() {
            return Ok(());
        }
        tracing::warn!(server, sessions = rows.len(), "ending statements left running by a killed pgplane");
        if start.elapsed() > Duration::from_secs(60) {
            bail!("sessions of a killed pgplane on server {server} do not end; look at pg_stat_activity");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A session advisory lock held on its own connection. Dropping it closes the
/// connection, which releases the lock on every path — also when the process dies.
pub struct ApplyLock {
    client: Client,
}

impl ApplyLock {
    /// Fails unless this process still holds the lock (its session may have been ended by
    /// a timeout, a proxy or an administrator): never run a statement without it.
    pub async fn ensure_held(&self) -> Result<()> {
        let held = apply_lock().held_here(&self.client).await.unwrap_or(false);
        if !held {
            bail!("lost the pgplane lock (its session ended); stopping before the next statement. Run apply again");
        }
        Ok(())
    }
}

pub async fn lock(target: &Target, timeout: Duration, on_wait: impl Fn(Option<i32>)) -> Result<ApplyLock> {
    // Advisory locks belong to one database: take it in the control database itself, so
    // every pgplane sharing it meets the same lock whatever database its admin URL names.
    let client = target.connect(Some(CONTROL_DB)).await?;
    let start = Instant::now();
    let mut told = false;
    loop {
        if apply_lock().try_lock(&client).await? {
            return Ok(ApplyLock { client });
        }
        if !told {
            let holder: Option<i32> = apply_lock().holder(&client).await?;
            on_wait(holder);
            told = true;
        }
        if start.elapsed() > timeout {
            bail!(
                "another pgplane operation holds the lock on server {} for more than {}s; try again later or raise --lock-timeout",
                target.name,
                timeout.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
