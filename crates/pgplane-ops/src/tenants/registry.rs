//! The registered tenants in the control database (`sql/control/0008_tenants.sql`):
//! reading them into a [`Registry`] and every write of the tenant operations.
//!
//! Rows are the desired state: a tenant operation writes them under the apply lock, right
//! before it executes the plan computed from them, so a crash leaves rows that the next
//! apply (or a re-run) converges to. Purged rows go after the drops succeeded.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use pgplane_core::tenant::{ModuleState, Registry, TenantModule, TenantRecord};
use tokio_postgres::GenericClient;

/// Whether the control schema has the tenant tables (an older pgplane's may not; read-only
/// commands never migrate it).
async fn has_tables(c: &impl GenericClient) -> Result<bool> {
    Ok(c.query_one("SELECT pg_catalog.to_regclass('pgplane.tenant_modules') IS NOT NULL", &[]).await?.get(0))
}

fn ts(col: &str) -> String {
    format!("pg_catalog.to_char({col} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')")
}

/// The registered tenants of `env`, sorted by name, and the placements of manifest tenants.
pub async fn load(c: &impl GenericClient, env: &str) -> Result<Registry> {
    if !has_tables(c).await? {
        return Ok(Registry::default());
    }
    let rows = c
        .query(
            &format!(
                "SELECT t.name, t.labels::text, pg_catalog.date_part('epoch', t.expires_at)::int8, {created},
                        m.module, m.version, m.target_version, m.parameters::text, m.state, m.server, m.status,
                        m.error, m.last_job
                   FROM pgplane.tenants t
                   LEFT JOIN pgplane.tenant_modules m ON m.env = t.env AND m.tenant = t.name
                  WHERE t.env = $1
                  ORDER BY t.name, m.module",
                created = ts("t.created_at")
            ),
            &[&env],
        )
        .await
        .context("reading registered tenants from the control database")?;
    let mut tenants: Vec<TenantRecord> = Vec::new();
    for r in &rows {
        let name: String = r.get(0);
        if tenants.last().is_none_or(|t| t.name != name) {
            let labels: String = r.get(1);
            tenants.push(TenantRecord {
                name: name.clone(),
                labels: serde_json::from_str(&labels).unwrap_or_default(),
                expires_at: r.get(2),
                created_at: r.get(3),
                modules: Vec::new(),
            });
        }
        let Some(module) = r.get::<_, Option<String>>(4) else { continue };
        let params: String = r.get(7);
        let state: String = r.get(8);
        let t = tenants.last_mut().context("a tenant row")?;
        t.modules.push(TenantModule {
            module,
            version: r.get(5),
            target_version: r.get(6),
            parameters: serde_json::from_str(&params).unwrap_or_default(),
            state: ModuleState::parse(&state)
                .with_context(|| format!("unknown tenant module state {state:?} in the control database"))?,
            server: r.get(9),
            status: r.get(10),
            error: r.get(11),
            last_job: r.get(12),
        });
    }
    let placements = c
        .query("SELECT tenant, module, server FROM pgplane.tenant_placements WHERE env = $1", &[&env])
        .await
        .context("reading tenant placements")?
        .iter()
        .map(|r| ((r.get(0), r.get(1)), r.get(2)))
        .collect();
    Ok(Registry { tenants, placements })
}

/// [`load`] from a server's control database, empty when there is none.
pub async fn load_from(target: &crate::conn::Target, env: &str) -> Result<Registry> {
    match target.connect(Some(crate::control::CONTROL_DB)).await {
        Ok(c) => load(&c, env).await,
        Err(e)
            if e.chain().any(|c| {
                c.downcast_ref::<tokio_postgres::Error>()
                    .is_some_and(|p| p.code() == Some(&tokio_postgres::error::SqlState::INVALID_CATALOG_NAME))
            }) =>
        {
            Ok(Registry::default())
        }
        Err(e) => Err(e),
    }
}

/// Records placements just chosen: in the (tenant, module) row of a registered tenant that
/// has none yet, in `tenant_placements` for a manifest tenant. A placement once recorded
/// is never changed here.
pub async fn record_placements(
    c: &impl GenericClient,
    env: &str,
    registry: &Registry,
    placed: &[pgplane_core::tenant::Placement],
) -> Result<()> {
    for ((tenant, module), server) in placed {
        if registry.tenant(tenant).is_some() {
            c.execute(
                "UPDATE pgplane.tenant_modules SET server = $4, updated_at = pg_catalog.now()
                  WHERE env = $1 AND tenant = $2 AND module = $3 AND server IS NULL",
                &[&env, tenant, module, server],
            )
            .await?;
        } else {
            c.execute(
                "INSERT INTO pgplane.tenant_placements (env, tenant, module, server) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (env, tenant, module) DO NOTHING",
                &[&env, tenant, module, server],
            )
            .await?;
        }
    }
    Ok(())
}

/// Writes a tenant and the given modules as the in-memory registry has them (insert or
/// update), with `status` and the job that wrote them.
pub async fn write(
    c: &impl GenericClient,
    env: &str,
    tenant: &TenantRecord,
    modules: &[&str],
    status: &str,
    job: Option<i64>,
) -> Result<()> {
    let labels = serde_json::to_string(&tenant.labels)?;
    c.execute(
        "INSERT INTO pgplane.tenants (env, name, labels, expires_at)
         VALUES ($1, $2, $3::text::jsonb, CASE WHEN $4::int8 IS NULL THEN NULL ELSE pg_catalog.to_timestamp($4::int8) END)
         ON CONFLICT (env, name) DO UPDATE SET updated_at = pg_catalog.now()",
        &[&env, &tenant.name, &labels, &tenant.expires_at],
    )
    .await
    .context("recording the tenant in the control database")?;
    for m in tenant.modules.iter().filter(|m| modules.contains(&m.module.as_str())) {
        let params = serde_json::to_string(&m.parameters)?;
        c.execute(
            "INSERT INTO pgplane.tenant_modules (env, tenant, module, version, target_version, parameters, state,
                                                 server, status, error, last_job)
             VALUES ($1, $2, $3, $4, $5, $6::text::jsonb, $7, $8, $9, NULL, $10)
             ON CONFLICT (env, tenant, module) DO UPDATE
                SET version = EXCLUDED.version, target_version = EXCLUDED.target_version,
                    parameters = EXCLUDED.parameters, state = EXCLUDED.state,
                    server = COALESCE(pgplane.tenant_modules.server, EXCLUDED.server),
                    status = EXCLUDED.status, error = NULL,
                    last_job = COALESCE(EXCLUDED.last_job, pgplane.tenant_modules.last_job),
                    updated_at = pg_catalog.now()",
            &[
                &env,
                &tenant.name,
                &m.module,
                &m.version,
                &m.target_version,
                &params,
                &m.state.as_str(),
                &m.server,
                &status,
                &job,
            ],
        )
        .await
        .with_context(|| format!("recording module {} of tenant {}", m.module, tenant.name))?;
    }
    Ok(())
}

/// How an operation on (tenant, module) went: its status, error and the job.
pub async fn set_status(
    c: &impl GenericClient,
    env: &str,
    tenant: &str,
    module: &str,
    status: &str,
    error: Option<&str>,
    job: Option<i64>,
) -> Result<()> {
    c.execute(
        "UPDATE pgplane.tenant_modules SET status = $4, error = $5, last_job = COALESCE($6, last_job),
                updated_at = pg_catalog.now()
          WHERE env = $1 AND tenant = $2 AND module = $3",
        &[&env, &tenant, &module, &status, &error, &job],
    )
    .await
    .with_context(|| format!("recording the status of tenant {tenant} module {module}"))?;
    Ok(())
}

/// An upgrade begins: the target version is recorded (the tenant still runs its version).
pub async fn set_target(
    c: &impl GenericClient,
    env: &str,
    tenant: &str,
    module: &str,
    to: Option<&str>,
    job: Option<i64>,
) -> Result<()> {
    c.execute(
        "UPDATE pgplane.tenant_modules SET target_version = $4, status = 'upgrading', error = NULL,
                last_job = COALESCE($5, last_job), updated_at = pg_catalog.now()
          WHERE env = $1 AND tenant = $2 AND module = $3",
        &[&env, &tenant, &module, &to, &job],
    )
    .await?;
    Ok(())
}

/// The migrations of `version` completed: the tenant runs it.
pub async fn set_version(
    c: &impl GenericClient,
    env: &str,
    tenant: &str,
    module: &str,
    version: Option<&str>,
    job: Option<i64>,
) -> Result<()> {
    c.execute(
        "UPDATE pgplane.tenant_modules SET version = $4, target_version = NULL, status = 'ready', error = NULL,
                last_job = COALESCE($5, last_job), updated_at = pg_catalog.now()
          WHERE env = $1 AND tenant = $2 AND module = $3",
        &[&env, &tenant, &module, &version, &job],
    )
    .await?;
    Ok(())
}

/// After a purge's drops succeeded: the module rows go, the tenant with its last module,
/// and its upgrade progress and placements.
pub async fn forget(c: &impl GenericClient, env: &str, tenant: &str, modules: &[String]) -> Result<bool> {
    c.execute(
        "DELETE FROM pgplane.tenant_modules WHERE env = $1 AND tenant = $2 AND module = ANY($3::text[])",
        &[&env, &tenant, &modules],
    )
    .await?;
    c.execute(
        "DELETE FROM pgplane.tenant_upgrades WHERE env = $1 AND tenant = $2 AND module = ANY($3::text[])",
        &[&env, &tenant, &modules],
    )
    .await?;
    let gone = c
        .execute(
            "DELETE FROM pgplane.tenants t WHERE t.env = $1 AND t.name = $2
                AND NOT EXISTS (SELECT 1 FROM pgplane.tenant_modules m WHERE m.env = t.env AND m.tenant = t.name)",
            &[&env, &tenant],
        )
        .await?;
    Ok(gone == 1)
}

/// Forgets every registered tenant of `env` with its modules, placements and upgrade
/// progress: for an environment whose storage was dropped as a whole (`pgplane destroy`),
/// after the drops succeeded. Returns how many tenants were registered.
pub async fn forget_env(c: &impl GenericClient, env: &str) -> Result<u64> {
    if !has_tables(c).await? {
        return Ok(0);
    }
    c.execute("DELETE FROM pgplane.tenant_upgrades WHERE env = $1", &[&env]).await?;
    c.execute("DELETE FROM pgplane.tenant_placements WHERE env = $1", &[&env]).await?;
    // tenant_modules go with their tenant (ON DELETE CASCADE).
    Ok(c.execute("DELETE FROM pgplane.tenants WHERE env = $1", &[&env]).await?)
}

/// One tenant's upgrade progress, as a fan-out records it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Progress {
    pub tenant: String,
    pub module: String,
    pub from_version: Option<String>,
    pub to_version: String,
    /// pending, provision, migrate, done, failed
    pub stage: String,
    pub attempts: i32,
    pub error: Option<String>,
    pub job: Option<i64>,
}

/// The recorded progress of upgrades of `module` to `to` in `env`, by tenant.
pub async fn progress(c: &impl GenericClient, env: &str, module: &str, to: &str) -> Result<BTreeMap<String, Progress>> {
    let rows = c
        .query(
            "SELECT tenant, from_version, stage, attempts, error, job FROM pgplane.tenant_upgrades
              WHERE env = $1 AND module = $2 AND to_version = $3",
            &[&env, &module, &to],
        )
        .await
        .context("reading upgrade progress")?;
    Ok(rows
        .iter()
        .map(|r| {
            let tenant: String = r.get(0);
            (
                tenant.clone(),
                Progress {
                    tenant,
                    module: module.to_string(),
                    from_version: r.get(1),
                    to_version: to.to_string(),
                    stage: r.get(2),
                    attempts: r.get(3),
                    error: r.get(4),
                    job: r.get(5),
                },
            )
        })
        .collect())
}

/// Moves one tenant's upgrade to `stage` (counting an attempt when it enters `provision`).
#[allow(clippy::too_many_arguments)]
pub async fn set_progress(
    c: &impl GenericClient,
    env: &str,
    tenant: &str,
    module: &str,
    from: Option<&str>,
    to: &str,
    stage: &str,
    error: Option<&str>,
    job: Option<i64>,
) -> Result<()> {
    c.execute(
        "INSERT INTO pgplane.tenant_upgrades (env, tenant, module, to_version, from_version, stage, job, attempts,
                                              error, started_at, finished_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, CASE WHEN $6 = 'provision' THEN 1 ELSE 0 END, $8,
                 CASE WHEN $6 = 'pending' THEN NULL ELSE pg_catalog.now() END,
                 CASE WHEN $6 IN ('done', 'failed') THEN pg_catalog.now() END)
         ON CONFLICT (env, tenant, module, to_version) DO UPDATE
            SET stage = EXCLUDED.stage, job = COALESCE(EXCLUDED.job, pgplane.tenant_upgrades.job),
                from_version = COALESCE(pgplane.tenant_upgrades.from_version, EXCLUDED.from_version),
                attempts = pgplane.tenant_upgrades.attempts + CASE WHEN EXCLUDED.stage = 'provision' THEN 1 ELSE 0 END,
                error = EXCLUDED.error,
                started_at = COALESCE(pgplane.tenant_upgrades.started_at, EXCLUDED.started_at),
                finished_at = EXCLUDED.finished_at",
        &[&env, &tenant, &module, &to, &from, &stage, &job, &error],
    )
    .await
    .with_context(|| format!("recording the upgrade progress of tenant {tenant}"))?;
    Ok(())
}
