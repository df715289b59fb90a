//! Command handlers: thin front ends over [`crate::ops`]. Each returns the exit code.

use std::collections::BTreeMap;
use std::io::IsTerminal;

use anyhow::{bail, Context, Result};
use pgplane_core::model::{ObjectKind, Record};
use pgplane_core::plan::{ActionKind, PlanOptions};
use pgplane_core::render;
use serde_json::json;

use crate::cli::{
    AdoptArgs, ApplyArgs, BranchCommand, ChangeArgs, CredentialFormat, CredentialsArgs, LocalCommand, MigrateCommand,
    PlanArgs, RoleChoice, SchemaCommand, StatusArgs, TemplateCommand, WaitArgs,
};
use crate::conn::Servers;
use crate::ops::{self, Ctx, Session};
use crate::{branch, control, exec, migrate, observe, output, secrets, wait};

pub async fn plan(ctx: &mut Ctx, args: PlanArgs) -> Result<i32> {
    let s = Session::open(ctx, &args.manifest.file, args.manifest.env.as_deref()).await?;
    let plan = s.plan_readonly(PlanOptions { prune: args.prune, adopt: args.adopt }, args.deep).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&render::plan_json(&plan))?);
    } else {
        print!("{}", render::plan_text(&plan));
    }
    Ok(if args.detailed_exitcode && plan.changes() > 0 { 2 } else { 0 })
}

fn require_confirmation_possible(yes: bool, verb: &str) -> Result<()> {
    if !yes && !std::io::stdin().is_terminal() {
        bail!(
            "refusing to {verb} without confirmation: stdin is not a terminal; pass --yes to {verb} non-interactively"
        );
    }
    Ok(())
}

pub async fn apply(ctx: &mut Ctx, args: ApplyArgs) -> Result<i32> {
    require_confirmation_possible(args.change.yes, "apply")?;
    let s = Session::open(ctx, &args.manifest.file, args.manifest.env.as_deref()).await?;
    let locked =
        s.lock_and_plan(PlanOptions { prune: args.prune, adopt: args.adopt }, args.change.lock_timeout).await?;
    let (code, doc) = run_locked(ctx, &s, locked, "apply", &args.change).await?;
    let migrating = code == 0 && !args.skip_migrations && s.manifest.modules.iter().any(|m| m.migrations.is_some());
    if !migrating {
        print_doc(doc)?;
        return Ok(code);
    }
    // Provisioning is done; now each module with `migrations:` is migrated, every tenant.
    let opts = migrate::RunOptions {
        mode: migrate::Mode::Up,
        selection: migrate::Selection::default(),
        ledger: migrate::LedgerNames::default(),
        retry_failed: false,
        lock_timeout: args.change.lock_timeout,
        jobs: 4,
        live: !args.change.json,
        up_to: None,
    };
    let runs = match migrate::run_modules(&s, None, None, &opts).await {
        Ok(runs) => runs,
        Err(e) => {
            // Provisioning happened: its result is printed whatever the migrations did.
            if let Some(mut doc) = doc {
                doc["migrations"] = json!({"ok": false, "error": format!("{e:#}"), "modules": []});
                print_doc(Some(doc))?;
            }
            return Err(e.context("provisioning succeeded; migrations did not run"));
        }
    };
    let ok = runs.iter().all(migrate::ModuleRun::ok);
    match doc {
        Some(mut doc) => {
            doc["migrations"] = json!({"ok": ok, "modules": runs});
            print_doc(Some(doc))?;
        }
        None => print_migrations(&runs, migrate::Mode::Up, false)?,
    }
    Ok(if ok { 0 } else { 1 })
}

fn print_doc(doc: Option<serde_json::Value>) -> Result<()> {
    if let Some(doc) = doc {
        println!("{}", serde_json::to_string_pretty(&doc)?);
    }
    Ok(())
}

pub async fn adopt(ctx: &mut Ctx, args: AdoptArgs) -> Result<i32> {
    require_confirmation_possible(args.change.yes, "adopt")?;
    let s = Session::open(ctx, &args.manifest.file, args.manifest.env.as_deref()).await?;
    let mut locked = s.lock_and_plan(PlanOptions { prune: false, adopt: true }, args.change.lock_timeout).await?;
    locked.plan.actions.retain(|a| matches!(a.kind, ActionKind::Adopt | ActionKind::SetPassword));
    locked.plan.orphans.clear();
    let (code, doc) = run_locked(ctx, &s, locked, "adopt", &args.change).await?;
    print_doc(doc)?;
    Ok(code)
}

/// Shows the plan, asks, executes. Returns the exit code and, with --json, the document to
/// print (the caller may add to it).
async fn run_locked(
    ctx: &mut Ctx,
    s: &Session,
    locked: ops::Locked,
    kind: &str,
    change: &ChangeArgs,
) -> Result<(i32, Option<serde_json::Value>)> {
    let (yes, json) = (change.yes, change.json);
    let plan = &locked.plan;
    if plan.changes() == 0 {
        s.refresh_cache(&locked, Vec::new()).await?;
        if json {
            return Ok((0, Some(json!({"changes": 0, "applied": 0, "actions": [], "orphans": plan.orphans}))));
        }
        print!("{}", render::plan_text(plan));
        return Ok((0, None));
    }
    if !json || !yes {
        // On a terminal the plan is shown before the question; with --json it goes to stderr.
        let text = render::plan_text(plan);
        if json {
            eprint!("{text}");
        } else {
            print!("{text}");
        }
    }
    if !yes && !output::confirm(&format!("{kind} these {} change(s)?", plan.changes())) {
        eprintln!("pgplane: {kind} cancelled; nothing was changed");
        return Ok((1, None));
    }
    let progress = output::progress();
    let (applied, captured) = s.execute(ctx, &locked, kind, progress.as_ref()).await?;
    s.refresh_cache(&locked, captured).await?;
    if json {
        let mut doc = render::plan_json(plan);
        doc["applied"] = json!(applied);
        return Ok((0, Some(doc)));
    }
    let noun = if applied == 1 { "change" } else { "changes" };
    println!("Applied {applied} {noun} (env {}).", plan.env);
    Ok((0, None))
}

pub async fn status(ctx: &mut Ctx, args: StatusArgs) -> Result<i32> {
    let manifest = ops::load_manifest(&args.file)?;
    let servers = Servers::resolve(&manifest, &ctx.local, || ctx.keys())?;
    let admins = servers.connect_all().await?;
    let first = servers.first();
    let control_db = control::open_existing(first, &admins[&first.name]).await?;
    let records = match &control_db {
        Some(c) => control::read_records(c).await?,
        None => Vec::new(),
    };
    let depth = || match (&control_db, args.deep) {
        (Some(c), false) => observe::Depth::Cached(c),
        _ => observe::Depth::Deep,
    };
    let mut envs: BTreeMap<String, Vec<&Record>> = BTreeMap::new();
    for r in &records {
        if args.env.as_ref().is_none_or(|e| *e == r.origin.env) {
            envs.entry(r.origin.env.clone()).or_default().push(r);
        }
    }
    let mut out = Vec::new();
    for (env, recs) in &envs {
        // Drift: what apply would repair for this env, per object.
        // Drift needs the desired state; if it cannot be computed, say why instead of "ok".
        let mut problem: Option<String> = None;
        let desired = match pgplane_core::model::Desired::build(&manifest, env) {
            Ok(d) => Some(d),
            Err(e) => {
                problem = Some(format!("drift unknown: the manifest gives no valid desired state for env {env}: {e}"));
                None
            }
        };
        let (observed, plan) = match &desired {
            Some(d) => {
                let (obs, _) = observe::observe(&servers, &admins, d, records.clone(), depth()).await?;
                let plan = match pgplane_core::plan::plan(d, &obs, PlanOptions::default()) {
                    Ok(p) => Some(p),
                    Err(e) => {
                        problem = Some(format!("drift unknown: no plan for env {env}: {e}"));
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
                .map(|a| json!({"kind": a.kind.as_str(), "why": a.why, "sql": a.sql.redacted()}))
                .collect();
            let in_manifest = wanted.as_ref().map(|w| w.contains(&r.object));
            objects.push(json!({
                "kind": r.object.kind.as_str(),
                "name": r.object.name,
                "database": if r.object.database.is_empty() { None } else { Some(&r.object.database) },
                "server": r.object.server,
                "module": r.origin.module,
                "tenant": r.origin.tenant,
                "purpose": r.origin.purpose.as_str(),
                "exists": exists,
                "in_manifest": in_manifest,
                "drift": drift,
            }));
        }
        out.push(json!({"env": env, "objects": objects, "problem": problem}));
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&json!({"environments": out}))?);
        return Ok(0);
    }
    if out.is_empty() {
        println!("pgplane manages nothing yet{}.", args.env.map(|e| format!(" in env {e}")).unwrap_or_default());
        return Ok(0);
    }
    for env in &out {
        let objects = env["objects"].as_array().cloned().unwrap_or_default();
        let drifted = objects.iter().filter(|o| o["drift"].as_array().is_some_and(|d| !d.is_empty())).count();
        println!("env {} ({} objects, {} with drift)", env["env"].as_str().unwrap_or(""), objects.len(), drifted);
        if let Some(p) = env["problem"].as_str() {
            println!("  {p}");
        }
        for o in objects {
            let name = match o["database"].as_str() {
                Some(db) => format!("{db}.{}", o["name"].as_str().unwrap_or("")),
                None => o["name"].as_str().unwrap_or("").to_string(),
            };
            let mut state = match o["exists"].as_bool() {
                Some(true) => "ok".to_string(),
                Some(false) => "MISSING".to_string(),
                None => "unknown".to_string(),
            };
            if o["in_manifest"] == json!(false) {
                state.push_str(", orphaned");
            }
            for d in o["drift"].as_array().into_iter().flatten() {
                state.push_str(&format!("; drift: {}", d["why"].as_str().unwrap_or("")));
            }
            println!(
                "  {:<9} {:<40} {:<8} {:<12} {}",
                o["kind"].as_str().unwrap_or(""),
                name,
                o["server"].as_str().unwrap_or(""),
                o["module"].as_str().unwrap_or(""),
                state
            );
        }
    }
    Ok(0)
}

pub async fn credentials(ctx: &mut Ctx, args: CredentialsArgs) -> Result<i32> {
    let s = Session::open(ctx, &args.manifest.file, args.manifest.env.as_deref()).await?;
    let who = if args.branch_readonly { branch_readonly(&s)? } else { module_role(&s, &args)? };
    let Who { role, server, database, schema, module, tenant, secret_name } = who;
    let target = s.servers.get(&server)?.clone();
    let not_applied = || format!("role {role} is not provisioned by pgplane yet; run `pgplane apply` first");
    let (generation, _lock) = if args.rotate {
        let (lock, mut c) = s.lock(std::time::Duration::from_secs(300)).await?;
        ensure_managed(&c, &s.desired, &server, &role).await.with_context(not_applied)?;
        let op = control::op_start(&c, "rotate", Some(&s.desired.env)).await?;
        // The new generation commits only once the server has the new verifier.
        let tx = c.transaction().await?;
        let generation = control::bump_generation(&tx, &server, &role).await?;
        let password = ctx.keys()?.password(&server, &role, generation);
        let sql = format!(
            "ALTER ROLE {} PASSWORD {}",
            pgplane_core::ident::quote_ident(&role),
            pgplane_core::ident::quote_literal(&secrets::scram_verifier(&password))
        );
        let result = s.admins[&server].batch_execute(&sql).await.map_err(exec::pg_error);
        let result = match result {
            Ok(()) => tx.commit().await.context("recording the new password generation"),
            Err(e) => {
                let _ = tx.rollback().await;
                Err(e)
            }
        };
        let error = result.as_ref().err().map(|e| format!("{e:#}"));
        if let Err(e) = control::op_finish(&c, op, 1, error.as_deref()).await {
            tracing::warn!(error = %format!("{e:#}"), "could not journal the rotation");
        }
        result.context("changing the password")?;
        (generation, Some(lock))
    } else {
        let c = control::open_existing(s.servers.first(), s.first_admin()).await?.with_context(not_applied)?;
        ensure_managed(&c, &s.desired, &server, &role).await.with_context(not_applied)?;
        (control::generation(&c, &server, &role).await?, None)
    };
    let password = ctx.keys()?.password(&server, &role, generation);
    let (host, port) = target.host_port();
    let url = format!("postgresql://{role}:{password}@{}:{port}/{}", url_host(&host), database);
    let print = |k: &str, v: &str| format!("{k}={v}");
    match args.format {
        CredentialFormat::Url => println!("{url}"),
        CredentialFormat::Env => {
            let mut lines = vec![
                print("PGHOST", &host),
                print("PGPORT", &port.to_string()),
                print("PGDATABASE", &database),
                print("PGUSER", &role),
                print("PGPASSWORD", &password),
            ];
            if let Some(schema) = &schema {
                lines.push(print("PGOPTIONS", &format!("-c search_path={schema}")));
                lines.push(print("DATABASE_SCHEMA", schema));
            }
            lines.push(print("DATABASE_URL", &url));
            println!("{}", lines.join("\n"));
        }
        CredentialFormat::Json => {
            let doc = json!({
                "host": host, "port": port, "database": database, "user": role,
                "password": password, "schema": schema, "url": url,
                "module": module, "tenant": tenant, "env": s.desired.env,
            });
            println!("{}", serde_json::to_string_pretty(&doc)?);
        }
        CredentialFormat::K8sSecret => {
            let name = args.k8s_name.clone().unwrap_or_else(|| secret_name.replace('_', "-"));
            let q = |v: &str| serde_json::to_string(v).expect("strings serialize");
            let mut doc = format!("apiVersion: v1\nkind: Secret\nmetadata:\n  name: {}\n", q(&name));
            if let Some(ns) = &args.k8s_namespace {
                doc.push_str(&format!("  namespace: {}\n", q(ns)));
            }
            doc.push_str("  labels:\n    app.kubernetes.io/managed-by: pgplane\n");
            doc.push_str(&format!("    pgplane.io/env: {}\n", q(&s.desired.env)));
            if let Some(module) = &module {
                doc.push_str(&format!("    pgplane.io/module: {}\n", q(module)));
            }
            doc.push_str("type: Opaque\nstringData:\n");
            let mut data = vec![
                ("PGHOST", host.clone()),
                ("PGPORT", port.to_string()),
                ("PGDATABASE", database.clone()),
                ("PGUSER", role.clone()),
                ("PGPASSWORD", password.clone()),
            ];
            if let Some(schema) = &schema {
                data.push(("DATABASE_SCHEMA", schema.clone()));
            }
            data.push(("DATABASE_URL", url.clone()));
            for (k, v) in data {
                doc.push_str(&format!("  {k}: {}\n", q(&v)));
            }
            print!("{doc}");
        }
    }
    Ok(0)
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
fn module_role(s: &Session, args: &CredentialsArgs) -> Result<Who> {
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
    let role = match args.role {
        RoleChoice::Owner => endpoint.owner_role.clone(),
        RoleChoice::Readonly => endpoint.readonly_role.clone().with_context(|| {
            format!("module {} has no read-only role; set `readonly_role: true` and apply", module.name)
        })?,
    };
    let mut secret_name = format!("{}-{}", s.desired.env, endpoint.module);
    if let Some(t) = &endpoint.tenant {
        secret_name.push_str(&format!("-{t}"));
    }
    if args.role == RoleChoice::Readonly {
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
async fn ensure_managed(
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

/// `pgplane wait`: see [`crate::wait`].
pub async fn wait(ctx: &Ctx, args: WaitArgs) -> Result<i32> {
    wait::run(ctx, args).await
}

pub fn local(ctx: &mut Ctx, command: LocalCommand) -> Result<i32> {
    match command {
        LocalCommand::Start { port, json } => {
            let keys = ctx.keys()?;
            let st = ctx.local.start(keys, port)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&st)?);
            } else {
                println!(
                    "local PostgreSQL {} runs on 127.0.0.1:{} (pid {}, data {})",
                    st.version.as_deref().unwrap_or("?"),
                    st.port.unwrap_or(0),
                    st.pid.unwrap_or(0),
                    st.data_dir
                );
            }
            Ok(0)
        }
        LocalCommand::Stop => {
            if ctx.local.stop()? {
                println!("local server stopped");
            } else {
                println!("local server was not running");
            }
            Ok(0)
        }
        LocalCommand::Status { json } => {
            let st = ctx.local.status()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&st)?);
            } else if st.running {
                println!(
                    "running on 127.0.0.1:{} (pid {}, data {})",
                    st.port.unwrap_or(0),
                    st.pid.unwrap_or(0),
                    st.data_dir
                );
            } else if st.initialized {
                println!("stopped (data {})", st.data_dir);
            } else {
                println!("not initialised ({} does not exist; `pgplane local start` creates it)", st.data_dir);
            }
            Ok(if st.running { 0 } else { 3 })
        }
        LocalCommand::Url => {
            let keys = ctx.keys()?;
            println!("{}", ctx.local.url(keys)?);
            Ok(0)
        }
    }
}

pub async fn migrate(ctx: &mut Ctx, command: MigrateCommand) -> Result<i32> {
    let (mode, args, up_to) = match command {
        MigrateCommand::Up(a) => {
            let up_to = match (a.to_tag, a.target) {
                (Some(tag), _) => Some(pgplane_core::migrate::UpTo::Tag(tag)),
                (None, Some(v)) => Some(pgplane_core::migrate::UpTo::Version(
                    pgplane_core::migrate::Version::parse(&v).map_err(|e| anyhow::anyhow!("--target: {e}"))?,
                )),
                (None, None) => None,
            };
            (migrate::Mode::Up, a.common, up_to)
        }
        MigrateCommand::Status(a) => (migrate::Mode::Status, a, None),
        MigrateCommand::Validate(a) => (migrate::Mode::Validate, a, None),
        MigrateCommand::Rollback(a) => return migrate_rollback(ctx, a).await,
    };
    let opts = run_options(&args, mode, up_to)?;
    let runs = if let Some((source, target)) = url_target(&args)? {
        let targets = migrate::run_all(&source, vec![target], &opts).await;
        vec![migrate::ModuleRun { module: None, source: source.describe(), targets }]
    } else {
        if args.source.is_some() && args.module.is_none() {
            bail!("--source with -f needs --module M (the module whose migrations it replaces), or use --url URL");
        }
        let s = Session::open(ctx, &args.manifest.file, args.manifest.env.as_deref()).await?;
        let only = args.module.as_deref().map(|m| (m, args.tenant.as_deref()));
        let runs = migrate::run_modules(&s, only, args.source.as_deref(), &opts).await?;
        if runs.is_empty() {
            bail!(
                "no module in {} has `migrations:`; add `migrations: PATH` to a module or pass --module M --source PATH",
                s.manifest.file.display()
            );
        }
        runs
    };
    print_migrations(&runs, mode, args.json)?;
    Ok(if runs.iter().all(migrate::ModuleRun::ok) { 0 } else { 1 })
}

/// The run options the command line asks for (table names checked).
fn run_options(
    args: &crate::cli::MigrateArgs,
    mode: migrate::Mode,
    up_to: Option<pgplane_core::migrate::UpTo>,
) -> Result<migrate::RunOptions> {
    let opts = migrate::RunOptions {
        mode,
        selection: migrate::Selection { contexts: args.contexts.clone(), labels: args.labels.clone() },
        ledger: migrate::LedgerNames {
            history_table: args.history_table.clone(),
            changelog_table: args.changelog_table.clone(),
            changelog_lock_table: args.changelog_lock_table.clone(),
        },
        retry_failed: args.retry_failed,
        lock_timeout: args.lock_timeout,
        jobs: migrate::check_jobs(args.jobs)?,
        live: !args.json && mode == migrate::Mode::Up,
        up_to,
    };
    for (flag, value) in [
        ("--schema", &args.schema),
        ("--changelog-table", &args.changelog_table),
        ("--changelog-lock-table", &args.changelog_lock_table),
        ("--history-table", &args.history_table),
    ] {
        if let Some(v) = value {
            pgplane_core::ident::check_name(flag, v).map_err(|m| anyhow::anyhow!("{flag}: {m}"))?;
        }
    }
    Ok(opts)
}

/// With --url: the source and the one target it names.
fn url_target(args: &crate::cli::MigrateArgs) -> Result<Option<(migrate::Source, migrate::Target)>> {
    let Some(url) = &args.url else { return Ok(None) };
    let path = args.source.as_deref().context("--url needs --source PATH")?;
    let source = migrate::Source::load(path)?;
    let server = crate::conn::Target::from_url("url", url)?;
    let database = server.config.get_dbname().unwrap_or("postgres").to_string();
    let target = migrate::Target {
        label: database.clone(),
        tenant: None,
        server,
        database,
        schema: args.schema.clone().unwrap_or_else(|| "public".into()),
        role: None,
    };
    Ok(Some((source, target)))
}

/// `pgplane migrate rollback`.
async fn migrate_rollback(ctx: &mut Ctx, a: crate::cli::RollbackArgs) -> Result<i32> {
    use pgplane_core::migrate::{parse_date, RollbackTo};
    let to = match (a.count, a.to_tag, a.to_date) {
        (Some(n), _, _) => RollbackTo::Count(n),
        (None, Some(tag), _) => RollbackTo::Tag(tag),
        (None, None, Some(d)) => RollbackTo::Date(parse_date(&d).map_err(|e| anyhow::anyhow!("--to-date: {e}"))?),
        (None, None, None) => bail!("give --count N, --to-tag TAG or --to-date DATE"),
    };
    let args = &a.common;
    let mut run = run_options(args, migrate::Mode::Up, None)?;
    run.live = !args.json && !a.dry_run;
    let opts = migrate::rollback::RollbackOptions { run, to, dry_run: a.dry_run };
    let runs = if let Some((source, target)) = url_target(args)? {
        let targets = migrate::rollback::run_all(&source, vec![target], &opts).await;
        vec![migrate::rollback::RollbackRun { module: None, source: source.describe(), targets }]
    } else {
        let Some(module) = args.module.as_deref() else {
            bail!("rollback with -f needs --module M: modules are rolled back one at a time (or use --url URL --source PATH)");
        };
        let s = Session::open(ctx, &args.manifest.file, args.manifest.env.as_deref()).await?;
        vec![migrate::rollback::run_module(&s, module, args.tenant.as_deref(), args.source.as_deref(), &opts).await?]
    };
    let ok = runs.iter().all(migrate::rollback::RollbackRun::ok);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&json!({"ok": ok, "modules": runs}))?);
    } else {
        for r in &runs {
            println!("{}", r.source);
            print!("{}", migrate::rollback::render_text(&r.targets));
        }
    }
    Ok(if ok { 0 } else { 1 })
}

fn print_migrations(runs: &[migrate::ModuleRun], mode: migrate::Mode, json: bool) -> Result<()> {
    if json {
        let ok = runs.iter().all(migrate::ModuleRun::ok);
        println!("{}", serde_json::to_string_pretty(&json!({"ok": ok, "modules": runs}))?);
        return Ok(());
    }
    for r in runs {
        println!("{}", r.source);
        print!("{}", migrate::render_text(&r.targets, mode));
    }
    Ok(())
}

pub async fn template(ctx: &mut Ctx, command: TemplateCommand) -> Result<i32> {
    let TemplateCommand::Build(args) = command;
    let b = branch::Branches::open(ctx, &args.manifest.file, args.manifest.env.as_deref()).await?;
    let opts = deploy_options(&args.deploy, !args.json);
    let report = b.build_template(&args.name, &args.deploy.contexts, &opts).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if report.ok {
        println!("template {} built (marked IS_TEMPLATE, closed to module roles)", report.template);
    } else {
        for r in &report.runs {
            println!("{}", r.source);
            print!("{}", migrate::render_text(&r.targets, migrate::Mode::Up));
        }
        println!(
            "template {} NOT rebuilt: {}; the previous template (if any) is unchanged",
            report.template,
            report.error.as_deref().unwrap_or("")
        );
    }
    Ok(if report.ok { 0 } else { 1 })
}

fn deploy_options(args: &crate::cli::DeployArgs, live: bool) -> branch::DeployOptions {
    branch::DeployOptions { lock_timeout: args.lock_timeout, session_timeout: args.session_timeout, live }
}

pub async fn branch(ctx: &mut Ctx, command: BranchCommand) -> Result<i32> {
    match command {
        BranchCommand::Create(a) => {
            let b = branch::Branches::open(ctx, &a.manifest.file, a.manifest.env.as_deref()).await?;
            let req = branch::BranchRequest {
                id: a.id.clone(),
                template: Some(a.template.clone()),
                sources: Some(a.sources.clone()),
                contexts: a.deploy.contexts.clone(),
                labels: Some(a.labels.iter().cloned().collect()),
                ttl: a.ttl,
            };
            let v = b.deploy_branch(&req, false, &deploy_options(&a.deploy, !a.json)).await?;
            print_branch(&v, a.json)
        }
        BranchCommand::Reset(a) => {
            let b = branch::Branches::open(ctx, &a.manifest.file, a.manifest.env.as_deref()).await?;
            let req = branch::BranchRequest {
                id: a.id.clone(),
                template: None,
                sources: (!a.sources.is_empty()).then(|| a.sources.clone()),
                contexts: a.deploy.contexts.clone(),
                labels: None,
                ttl: None,
            };
            let v = b.deploy_branch(&req, true, &deploy_options(&a.deploy, !a.json)).await?;
            print_branch(&v, a.json)
        }
        BranchCommand::Show(a) => {
            let b = branch::Branches::open(ctx, &a.manifest.file, a.manifest.env.as_deref()).await?;
            let v = b.show(&a.id).await?.with_context(|| {
                format!("there is no branch {:?} in environment {} (see `pgplane branch list`)", a.id, b.env)
            })?;
            // Like create and reset: exit 1 when the deployment FAILED.
            print_branch(&v, a.json)
        }
        BranchCommand::List(a) => {
            let b = branch::Branches::open(ctx, &a.manifest.file, a.manifest.env.as_deref()).await?;
            let all = b.records(None, a.template.as_deref()).await?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&all)?);
                return Ok(0);
            }
            if all.is_empty() {
                println!("no branches in environment {}", b.env);
            }
            for v in &all {
                let labels: Vec<String> = v.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                println!(
                    "{:<24} {:<8} {:<40} {:<20} expires {:<20} {}",
                    v.id,
                    v.status,
                    v.database,
                    v.template,
                    v.expires_at.as_deref().unwrap_or("never"),
                    labels.join(",")
                );
            }
            Ok(0)
        }
        BranchCommand::Delete(a) => {
            let b = branch::Branches::open(ctx, &a.manifest.file, a.manifest.env.as_deref()).await?;
            let opts = plain_options(a.lock_timeout);
            let dropped = match &a.id {
                Some(id) => vec![b.delete(id, &opts).await?],
                None => b.delete_all(a.pattern.as_deref(), &opts).await?,
            };
            if a.json {
                println!("{}", serde_json::to_string_pretty(&json!({"deleted": dropped}))?);
            } else {
                for v in &dropped {
                    println!("deleted branch {} (database {})", v.id, v.database);
                }
                if dropped.is_empty() {
                    println!("no branch matched; nothing deleted");
                }
            }
            Ok(0)
        }
        BranchCommand::Gc(a) => {
            let b = branch::Branches::open(ctx, &a.manifest.file, a.manifest.env.as_deref()).await?;
            let mut keep: Option<std::collections::BTreeSet<String>> =
                (!a.keep.is_empty()).then(|| a.keep.iter().cloned().collect());
            if let Some(file) = &a.keep_file {
                let text = std::fs::read_to_string(file)
                    .with_context(|| format!("reading the live list {}", file.display()))?;
                let ids =
                    text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_string);
                keep.get_or_insert_with(Default::default).extend(ids);
            }
            if keep.as_ref().is_some_and(|k| k.is_empty()) && !a.allow_empty {
                bail!("the live list is empty, which would drop every branch; if that is meant, pass --allow-empty");
            }
            let dropped = b.gc(keep.as_ref(), a.dry_run, &plain_options(a.lock_timeout)).await?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&json!({"dry_run": a.dry_run, "dropped": dropped}))?);
            } else {
                let verb = if a.dry_run { "would drop" } else { "dropped" };
                for d in &dropped {
                    println!("{verb} branch {} (database {}): {}", d.branch.id, d.branch.database, d.reason);
                }
                if dropped.is_empty() {
                    println!("nothing to drop");
                }
            }
            Ok(0)
        }
    }
}

/// Options of commands that deploy nothing (delete, gc).
fn plain_options(lock_timeout: std::time::Duration) -> branch::DeployOptions {
    branch::DeployOptions { lock_timeout, session_timeout: lock_timeout, live: false }
}

fn print_branch(v: &branch::BranchView, json_out: bool) -> Result<i32> {
    if json_out {
        println!("{}", serde_json::to_string_pretty(v)?);
    } else {
        println!("branch {}", v.id);
        println!("  status    {}", v.status);
        println!("  database  {} (template {}, server {})", v.database, v.template, v.server);
        if !v.labels.is_empty() {
            let labels: Vec<String> = v.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            println!("  labels    {}", labels.join(", "));
        }
        if !v.sources.is_empty() {
            println!("  sources   {}", v.sources.join(", "));
        }
        println!(
            "  created   {}   expires {}",
            v.created_at.as_deref().unwrap_or("-"),
            v.expires_at.as_deref().unwrap_or("never")
        );
        if let Some(e) = &v.error {
            println!("  error     {e}");
        }
        if let Some(stmt) = v.failure.as_ref().and_then(|f| f.get("statement")).and_then(|s| s.as_str()) {
            println!("  statement {stmt}");
        }
    }
    Ok(if v.status == "FAILED" { 1 } else { 0 })
}

pub async fn schema(ctx: &mut Ctx, command: SchemaCommand) -> Result<i32> {
    match command {
        SchemaCommand::Tables(a) => {
            let (client, database) = crate::schema::connect(ctx, &a.target).await?;
            let tables = crate::schema::tables(&client, a.schema.as_deref()).await?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&tables)?);
            } else {
                println!("database {database}");
                print!("{}", pgplane_core::schema::tables_text(&tables));
            }
        }
        SchemaCommand::Describe(a) => {
            let (client, database) = crate::schema::connect(ctx, &a.target).await?;
            let Some(table) = crate::schema::describe(&client, &a.table).await? else {
                bail!("there is no table or view {:?} in database {database} (see `pgplane schema tables`)", a.table);
            };
            if a.json {
                println!("{}", serde_json::to_string_pretty(&table)?);
            } else {
                print!("{}", pgplane_core::schema::table_text(&table));
            }
        }
        SchemaCommand::Diff(a) => {
            let (from, from_label) = crate::schema::connect_side(ctx, &a.manifest, &a.from).await?;
            let (to, to_label) = crate::schema::connect_side(ctx, &a.manifest, &a.to).await?;
            let (old, new) = futures_util::try_join!(crate::schema::snapshot(&from), crate::schema::snapshot(&to))?;
            let d = pgplane_core::schema::diff(&old, &new);
            if a.json {
                #[derive(serde::Serialize)]
                struct Report<'a> {
                    from: &'a str,
                    to: &'a str,
                    #[serde(flatten)]
                    diff: &'a pgplane_core::schema::SchemaDiff,
                }
                let report = Report { from: &from_label, to: &to_label, diff: &d };
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!("--- {from_label}\n+++ {to_label}");
                print!("{}", pgplane_core::schema::diff_text(&d));
            }
            return Ok(if a.exit_code && !d.is_empty() { 2 } else { 0 });
        }
    }
    Ok(0)
}
