//! Credentials: which role a deployment connects as, where, with which password (derived
//! from the secret key at the role's current generation), checked against the server's
//! verifier before it is handed out; and password rotation. Formats (URL, env file, JSON,
//! Kubernetes Secret) are rendered here too, so every front end hands out the same.

use anyhow::{bail, Context, Result};
use pgplane_core::model::ObjectKind;
use serde::Serialize;

use crate::control;
use crate::ops::{Ctx, Session};
use crate::secrets;

/// Whose credentials.
#[derive(Debug, Clone, Default)]
pub struct CredentialRequest {
    pub module: Option<String>,
    pub tenant: Option<String>,
    /// The read-only role instead of the owner.
    pub readonly: bool,
    /// The role of `branches.readonly_role`.
    pub branch_readonly: bool,
    /// Change the password first (a new generation).
    pub rotate: bool,
}

/// What a deployment connects with. Holds the password: never log it.
#[derive(Debug, Clone, Serialize)]
pub struct Credentials {
    pub host: String,
    pub port: u16,
    pub database: String,
    pub user: String,
    pub password: String,
    pub schema: Option<String>,
    pub url: String,
    pub module: Option<String>,
    pub tenant: Option<String>,
    pub env: String,
    /// The default name of its Kubernetes Secret.
    #[serde(skip)]
    pub secret_name: String,
}

impl Credentials {
    /// `PGHOST`… `PGPASSWORD`, `PGOPTIONS` (tenant schemas), `DATABASE_SCHEMA`, `DATABASE_URL`.
    pub fn env_vars(&self) -> Vec<(&'static str, String)> {
        let mut v = vec![
            ("PGHOST", self.host.clone()),
            ("PGPORT", self.port.to_string()),
            ("PGDATABASE", self.database.clone()),
            ("PGUSER", self.user.clone()),
            ("PGPASSWORD", self.password.clone()),
        ];
        if let Some(schema) = &self.schema {
            v.push(("PGOPTIONS", format!("-c search_path={schema}")));
            v.push(("DATABASE_SCHEMA", schema.clone()));
        }
        v.push(("DATABASE_URL", self.url.clone()));
        v
    }

    /// A `v1/Secret` manifest with the same variables as `stringData`.
    pub fn k8s_secret(&self, name: Option<&str>, namespace: Option<&str>) -> String {
        let name = name.map(str::to_string).unwrap_or_else(|| self.secret_name.replace('_', "-"));
        let q = |v: &str| serde_json::to_string(v).unwrap_or_else(|_| "\"\"".to_string());
        let mut doc = format!("apiVersion: v1\nkind: Secret\nmetadata:\n  name: {}\n", q(&name));
        if let Some(ns) = namespace {
            doc.push_str(&format!("  namespace: {}\n", q(ns)));
        }
        doc.push_str("  labels:\n    app.kubernetes.io/managed-by: pgplane\n");
        doc.push_str(&format!("    pgplane.io/env: {}\n", q(&self.env)));
        if let Some(module) = &self.module {
            doc.push_str(&format!("    pgplane.io/module: {}\n", q(module)));
        }
        doc.push_str("type: Opaque\nstringData:\n");
        for (k, v) in self.env_vars().into_iter().filter(|(k, _)| *k != "PGOPTIONS") {
            doc.push_str(&format!("  {k}: {}\n", q(&v)));
        }
        doc
    }
}

/// The credentials of a module's (or tenant's) role, or of the branch read-only role; with
/// `rotate`, after changing its password under the apply lock.
pub async fn credentials(ctx: &mut Ctx, s: &Session, req: &CredentialRequest) -> Result<Credentials> {
    let who = if req.branch_readonly { branch_readonly(s)? } else { module_role(s, req)? };
    let Who { role, server, database, schema, module, tenant, secret_name } = who;
    let target = s.servers.get(&server)?.clone();
    let not_applied = || format!("role {role} is not provisioned by pgplane yet; run `pgplane apply` first");
    let generation = if req.rotate {
        rotate(ctx, s, &server, &role).await.with_context(not_applied)?
    } else {
        let c = control::open_existing(s.servers.first(), s.first_admin()).await?.with_context(not_applied)?;
        ensure_managed(&c, &s.desired, &server, &role).await.with_context(not_applied)?;
        let recorded = control::key_fingerprint(&c).await?;
        secrets::check_key(recorded.as_deref(), Some(ctx.keys()?), &ctx.home, 0, 0, false)?;
        control::generation(&c, &server, &role).await?
    };
    let password = ctx.keys()?.password(&server, &role, generation);
    // Hand out only a password that works: the server's verifier must be this password's.
    let stored = s.admins[&server]
        .query_opt(
            "SELECT rolpassword FROM pg_catalog.pg_authid WHERE rolname OPERATOR(pg_catalog.=) $1::pg_catalog.text",
            &[&role],
        )
        .await;
    match stored {
        Ok(Some(row)) => {
            let verifier: Option<String> = row.get(0);
            if !verifier.as_deref().is_some_and(|v| secrets::verifier_matches(&password, v)) {
                bail!(
                    "the password of role {role} on server {server} is not the one pgplane derives (changed outside \
                     pgplane, or set with another secret key); `pgplane plan` shows it and `pgplane apply` repairs it"
                );
            }
        }
        Ok(None) => bail!("role {role} does not exist on server {server}; run `pgplane apply`"),
        // pg_authid needs a superuser: without one, the password is handed out unchecked.
        Err(e) => tracing::warn!(error = %crate::exec::pg_error(e), "cannot read the role's password; not checked"),
    }
    let (host, port) = target.host_port();
    let url = format!("postgresql://{role}:{password}@{}:{port}/{}", url_host(&host), database);
    Ok(Credentials {
        host,
        port,
        database,
        user: role,
        password,
        schema,
        url,
        module,
        tenant,
        env: s.desired.env.clone(),
        secret_name,
    })
}

/// Changes a managed role's password to its next generation (under the apply lock,
/// journaled as a `rotate` job); the generation commits only once the server has the new
/// verifier. Returns the new generation.
pub async fn rotate(ctx: &mut Ctx, s: &Session, server: &str, role: &str) -> Result<i32> {
    let (_lock, mut c) = s.lock(std::time::Duration::from_secs(300)).await?;
    ensure_managed(&c, &s.desired, server, role).await?;
    // Never set a password derived from a key the others do not have.
    let recorded = control::key_fingerprint(&c).await?;
    secrets::check_key(recorded.as_deref(), Some(ctx.keys()?), &ctx.home, 0, 0, false)?;
    let op = control::Journal::start(&c, None, "rotate", Some(&s.desired.env)).await?;
    let tx = c.transaction().await?;
    let generation = control::bump_generation(&tx, server, role).await?;
    let password = ctx.keys()?.password(server, role, generation);
    let sql = format!(
        "ALTER ROLE {} PASSWORD {}",
        pgplane_core::ident::quote_ident(role),
        pgplane_core::ident::quote_literal(&secrets::scram_verifier(&password))
    );
    let result = s.admins[server].batch_execute(&sql).await.map_err(crate::exec::pg_error);
    let result = match result {
        Ok(()) => tx.commit().await.context("recording the new password generation"),
        Err(e) => {
            let _ = tx.rollback().await;
            Err(e)
        }
    };
    let error = result.as_ref().err().map(|e| format!("{e:#}"));
    if let Err(e) = op.finish(&c, 1, error.as_deref()).await {
        tracing::warn!(error = %format!("{e:#}"), "could not journal the rotation");
    }
    result.context("changing the password")?;
    Ok(generation)
}

/// The role `credentials` hands out, where it connects, and how to name its Secret.
struct Who {
    role: String,
    server: String,
    database: String,
    schema: Option<String>,
    module: Option<String>,
    tenant: Option<String>,
    secret_name: String,
}

/// A module's (or tenant's) owner or read-only role.
fn module_role(s: &Session, args: &CredentialRequest) -> Result<Who> {
    let name = args.module.as_deref().context("name a module, or pass --branch-readonly")?;
    let module = s.manifest.module(name).with_context(|| {
        format!(
            "module {:?} is not in {} (modules: {})",
            name,
            s.manifest.file.display(),
            s.manifest.modules.iter().map(|m| m.name.as_str()).collect::<Vec<_>>().join(", ")
        )
    })?;
    let per_tenant = module.storage != pgplane_core::manifest::Storage::Database;
    match (&args.tenant, per_tenant) {
        (None, true) => bail!("module {} has `storage: {}`; pass --tenant NAME", module.name, module.storage.as_str()),
        (Some(_), false) => bail!("module {} has `storage: database` (no tenants); drop --tenant", module.name),
        _ => {}
    }
    let endpoint = s.desired.endpoint(&module.name, args.tenant.as_deref()).with_context(|| {
        format!(
            "tenant {:?} does not enable module {} in the manifest",
            args.tenant.as_deref().unwrap_or(""),
            module.name
        )
    })?;
    let role = if args.readonly {
        endpoint.readonly_role.clone().with_context(|| {
            format!("module {} has no read-only role; set `readonly_role: true` and apply", module.name)
        })?
    } else {
        endpoint.owner_role.clone()
    };
    let mut secret_name = format!("{}-{}", s.desired.env, endpoint.module);
    if let Some(t) = &endpoint.tenant {
        secret_name.push_str(&format!("-{t}"));
    }
    if args.readonly {
        secret_name.push_str("-readonly");
    }
    secret_name.push_str("-db");
    Ok(Who {
        role,
        server: endpoint.server.clone(),
        database: endpoint.database.clone(),
        schema: endpoint.schema.clone(),
        module: Some(endpoint.module.clone()),
        tenant: endpoint.tenant.clone(),
        secret_name,
    })
}

/// The role of `branches.readonly_role`, on the server of the first template (or the first
/// server); its URL names that template, which `template build` lets it read.
fn branch_readonly(s: &Session) -> Result<Who> {
    let role = s
        .desired
        .roles
        .iter()
        .find(|r| r.origin.purpose == pgplane_core::model::Purpose::BranchReadonlyRole)
        .with_context(|| format!("{} sets no `branches.readonly_role`", s.manifest.file.display()))?;
    let template =
        s.manifest.templates.iter().find(|t| s.manifest.module(&t.module).is_some_and(|m| m.server == role.server));
    Ok(Who {
        role: role.name.clone(),
        server: role.server.clone(),
        database: template.map_or_else(|| "postgres".to_string(), |t| t.name.clone()),
        schema: None,
        module: None,
        tenant: None,
        secret_name: format!("{}-branch-readonly-db", s.desired.env),
    })
}

fn url_host(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

/// The role must be recorded as managed for exactly this env, module and tenant: names
/// need not contain `{env}`, so a name alone could be another environment's role.
pub async fn ensure_managed(
    c: &tokio_postgres::Client,
    desired: &pgplane_core::model::Desired,
    server: &str,
    role: &str,
) -> Result<()> {
    let wanted = desired
        .roles
        .iter()
        .find(|r| r.server == server && r.name == role)
        .map(|r| &r.origin)
        .with_context(|| format!("role {role} is not in the desired state"))?;
    let record = control::read_records(c)
        .await?
        .into_iter()
        .find(|r| r.object.kind == ObjectKind::Role && r.object.server == server && r.object.name == role);
    match record {
        Some(r) if &r.origin == wanted => Ok(()),
        Some(r) => bail!(
            "role {role} on server {server} is managed for {}, not for {}",
            r.origin.describe(),
            wanted.describe()
        ),
        None => bail!("pgplane does not manage role {role} on server {server}"),
    }
}
