//! `status`: what pgplane manages, per environment, whether each object exists, whether
//! the manifest still wants it, and its drift (the repairs `apply` would make). Read-only:
//! the control database is read if it exists, never created.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Result;
use pgplane_core::model::Record;
use pgplane_core::plan::{ActionKind, PlanOptions};
use serde::Serialize;

use crate::conn::Servers;
use crate::ops::{self, Ctx};
use crate::{control, observe, secrets};

/// One environment's managed objects (JSON fields in alphabetical order, as `status --json`
/// has always printed them).
#[derive(Debug, Serialize)]
pub struct EnvStatus {
    pub env: String,
    pub objects: Vec<ObjectStatus>,
    /// Why drift could not be computed (an invalid desired state, a wrong secret key).
    pub problem: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct ObjectStatus {
    pub database: Option<String>,
    pub drift: Vec<Drift>,
    /// `None`: unknown (its server could not be read).
    pub exists: Option<bool>,
    /// `None`: unknown (no valid desired state).
    pub in_manifest: Option<bool>,
    pub kind: String,
    pub module: String,
    pub name: String,
    pub purpose: String,
    /// Another object holds the recorded name (dropped and re-created outside pgplane).
    pub replaced: Option<Replaced>,
    pub server: String,
    pub tenant: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Drift {
    pub kind: String,
    pub sql: String,
    pub why: String,
}

#[derive(Debug, Serialize)]
pub struct Replaced {
    pub oid: u32,
    pub recorded_oid: u32,
}

/// The status of every environment (or `env` alone) that pgplane manages on the manifest's servers.
pub async fn status(ctx: &mut Ctx, file: &Path, env_filter: Option<&str>, deep: bool) -> Result<Vec<EnvStatus>> {
    let manifest = ops::load_manifest(file)?;
    let servers = Servers::resolve(&manifest, &ctx.local, || ctx.keys())?;
    let admins = servers.connect_all().await?;
    let first = servers.first();
    let control_db = control::open_existing(first, &admins[&first.name]).await?;
    let records = match &control_db {
        Some(c) => control::read_records(c).await?,
        None => Vec::new(),
    };
    let depth = || match (&control_db, deep) {
        (Some(c), false) => observe::Depth::Cached(c),
        _ => observe::Depth::Deep,
    };
    let mut envs: BTreeMap<String, Vec<&Record>> = BTreeMap::new();
    for r in &records {
        if env_filter.is_none_or(|e| e == r.origin.env) {
            envs.entry(r.origin.env.clone()).or_default().push(r);
        }
    }
    let mut out = Vec::new();
    for (env, recs) in &envs {
        // Drift: what apply would repair for this env, per object.
        // Drift needs the desired state; if it cannot be computed, say why instead of "ok".
        let mut problem: Option<String> = None;
        // Registered tenants are part of the desired state (never drift, never orphans).
        let registry = match &control_db {
            Some(c) => crate::tenants::registry::load(c, env).await?,
            None => Default::default(),
        };
        let registry = crate::tenants::provisional(&manifest, &registry);
        let desired = match pgplane_core::model::Desired::build(&manifest, env, &registry) {
            Ok(d) => Some(d),
            Err(e) => {
                problem = Some(format!("drift unknown: the manifest gives no valid desired state for env {env}: {e}"));
                None
            }
        };
        let (observed, plan) = match &desired {
            Some(d) => {
                let (mut obs, _) = observe::observe(&servers, &admins, d, records.clone(), depth()).await?;
                // Password drift shows as a repair; a wrong secret key is named instead.
                if let Some(c) = &control_db {
                    let keys = secrets::Keyring::load_existing(&ctx.home)?;
                    let check = match &keys {
                        Some(k) => observe::check_passwords(&mut obs, d, &admins, c, k).await?,
                        None => observe::PasswordCheck::default(),
                    };
                    let recorded = control::key_fingerprint(c).await?;
                    if let Err(e) = secrets::check_key(
                        recorded.as_deref(),
                        keys.as_ref(),
                        &ctx.home,
                        check.checked,
                        check.differing,
                        false,
                    ) {
                        problem = Some(format!("{e:#}"));
                    }
                }
                let plan = match pgplane_core::plan::plan(d, &obs, PlanOptions::default()) {
                    Ok(p) => Some(p),
                    Err(e) => {
                        let p = format!("drift unknown: no plan for env {env}: {e}");
                        problem = Some(problem.map_or(p.clone(), |k| format!("{k}\n  {p}")));
                        None
                    }
                };
                (obs, plan)
            }
            None => {
                let empty = pgplane_core::model::Desired { env: env.clone(), ..Default::default() };
                (observe::observe(&servers, &admins, &empty, records.clone(), depth()).await?.0, None)
            }
        };
        let wanted: Option<std::collections::BTreeSet<_>> =
            desired.as_ref().map(|d| d.objects().into_iter().map(|(o, _)| o).collect());
        let mut objects = Vec::new();
        for r in recs {
            let server = observed.servers.get(&r.object.server);
            let exists = server.and_then(|s| s.exists(&r.object));
            let display = r.object.display();
            let drift: Vec<_> = plan
                .iter()
                .flat_map(|p| p.actions.iter())
                .filter(|a| a.target == display && a.kind != ActionKind::Adopt)
                .map(|a| Drift { kind: a.kind.as_str().to_string(), why: a.why.clone(), sql: a.sql.redacted() })
                .collect();
            let in_manifest = wanted.as_ref().map(|w| w.contains(&r.object));
            // Another object under the recorded name: not pgplane's (dropped and re-created).
            let replaced =
                server.and_then(|s| s.replaced(r)).map(|(was, now)| Replaced { recorded_oid: was, oid: now });
            objects.push(ObjectStatus {
                kind: r.object.kind.as_str().to_string(),
                name: r.object.name.clone(),
                database: (!r.object.database.is_empty()).then(|| r.object.database.clone()),
                server: r.object.server.clone(),
                module: r.origin.module.clone(),
                tenant: r.origin.tenant.clone(),
                purpose: r.origin.purpose.as_str().to_string(),
                exists,
                in_manifest,
                replaced,
                drift,
            });
        }
        out.push(EnvStatus { env: env.clone(), objects, problem });
    }
    Ok(out)
}
