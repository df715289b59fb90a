//! Command handlers: thin front ends over [`crate::ops`]. Each returns the exit code.

mod destroy;
mod events;
mod jobs;
mod pgbouncer;
mod tenant;
pub use destroy::destroy;
pub use events::{consume, events};
pub use jobs::{job, worker};
pub use pgbouncer::pgbouncer;
pub use tenant::tenant;

use std::io::IsTerminal;

use anyhow::{bail, Context, Result};
use pgplane_core::plan::{ActionKind, PlanOptions};
use pgplane_core::render;
use serde_json::json;

use crate::cli::{
    AdoptArgs, ApplyArgs, BranchCommand, ChangeArgs, CredentialFormat, CredentialsArgs, LocalCommand, MigrateCommand,
    PlanArgs, RoleChoice, SchemaCommand, StatusArgs, TemplateCommand, WaitArgs,
};
use crate::ops::{self, Ctx, Session};
use crate::{branch, migrate, output, wait};

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

pub(crate) fn require_confirmation_possible(yes: bool, verb: &str) -> Result<()> {
    if !yes && !std::io::stdin().is_terminal() {
        bail!(
            "refusing to {verb} without confirmation: stdin is not a terminal; pass --yes to {verb} non-interactively"
        );
    }
    Ok(())
}

pub async fn apply(ctx: &mut Ctx, args: ApplyArgs) -> Result<i32> {
    require_confirmation_possible(args.change.yes, "apply")?;
    let mut s = Session::open(ctx, &args.manifest.file, args.manifest.env.as_deref()).await?;
    s.new_secret_key = args.new_secret_key;
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
        liquibase: migrate::LiquibaseOptions::default(),
        up_to: None,
    };
    let runs = match migrate::run_modules(&s, ctx.keys()?, None, None, None, &opts, &output::Terminal::new()).await {
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
    let mut s = Session::open(ctx, &args.manifest.file, args.manifest.env.as_deref()).await?;
    let mut locked = s.lock_and_plan(PlanOptions { prune: false, adopt: true }, args.change.lock_timeout).await?;
    // Adoptions and the passwords of the adopted roles; other repairs are apply's.
    let adopted: std::collections::BTreeSet<String> =
        locked.plan.actions.iter().filter(|a| a.kind == ActionKind::Adopt).map(|a| a.target.clone()).collect();
    locked
        .plan
        .actions
        .retain(|a| a.kind == ActionKind::Adopt || (a.kind == ActionKind::SetPassword && adopted.contains(&a.target)));
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
    let envs = crate::status::status(ctx, &args.file, args.env.as_deref(), args.deep).await?;
    let out: Vec<serde_json::Value> = envs.iter().map(serde_json::to_value).collect::<Result<_, _>>()?;
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
            if !o["replaced"].is_null() {
                state = format!(
                    "NOT PGPLANE'S (dropped and re-created outside pgplane: OID {}, now {})",
                    o["replaced"]["recorded_oid"], o["replaced"]["oid"]
                );
            }
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
    let req = crate::credentials::CredentialRequest {
        module: args.module.clone(),
        tenant: args.tenant.clone(),
        readonly: args.role == RoleChoice::Readonly,
        branch_readonly: args.branch_readonly,
        rotate: args.rotate,
    };
    let c = crate::credentials::credentials(ctx, &s, &req).await?;
    match args.format {
        CredentialFormat::Url => println!("{}", c.url),
        CredentialFormat::Env => {
            let lines: Vec<String> = c.env_vars().into_iter().map(|(k, v)| format!("{k}={v}")).collect();
            println!("{}", lines.join("\n"));
        }
        CredentialFormat::Json => println!("{}", serde_json::to_string_pretty(&c)?),
        CredentialFormat::K8sSecret => {
            print!("{}", c.k8s_secret(args.k8s_name.as_deref(), args.k8s_namespace.as_deref()))
        }
    }
    Ok(0)
}

/// `pgplane wait`: see [`crate::wait`].
pub async fn wait(ctx: &Ctx, args: WaitArgs) -> Result<i32> {
    let json = args.json;
    let report = wait::run(ctx, args.into(), &output::Terminal::new()).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report.json())?);
    } else {
        print!("{}", report.text());
    }
    match report.timed_out() {
        None => Ok(0),
        Some(message) => {
            eprintln!("pgplane: {message}");
            Ok(wait::EXIT_TIMEOUT)
        }
    }
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
    let runs = if let Some((source, target)) = url_target(&args, &opts)? {
        let targets = migrate::run_all(&source, vec![target], &opts, &output::Terminal::new()).await;
        vec![migrate::ModuleRun { module: None, source: source.describe(), targets }]
    } else {
        if args.source.is_some() && args.module.is_none() {
            bail!("--source with -f needs --module M (the module whose migrations it replaces), or use --url URL");
        }
        let s = Session::open(ctx, &args.manifest.file, args.manifest.env.as_deref()).await?;
        let only = args.module.as_deref().map(|m| (m, args.tenant.as_deref()));
        let terminal = output::Terminal::new();
        let run = migrate::run_modules(
            &s,
            ctx.keys()?,
            only,
            args.source.as_deref(),
            args.search_path.as_deref(),
            &opts,
            &terminal,
        );
        let runs = match mode {
            migrate::Mode::Up => s.journaled("migrate", run).await?,
            _ => run.await?,
        };
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
        liquibase: migrate::LiquibaseOptions {
            properties: args.property.clone(),
            allow_execute_command: args.allow_execute_command,
        },
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

/// With --url: the source (checked against the run's selection) and the one target it
/// names.
fn url_target(
    args: &crate::cli::MigrateArgs,
    opts: &migrate::RunOptions,
) -> Result<Option<(migrate::Source, migrate::Target)>> {
    let Some(url) = &args.url else { return Ok(None) };
    let path = args.source.as_deref().context("--url needs --source PATH")?;
    // The files a changelog reads stay inside its search path (or its own folder).
    let root = migrate::Root::own(args.search_path.as_deref().unwrap_or(path))?;
    let source = migrate::Source::load_with(path, &root, args.search_path.as_deref())?;
    source.check_selected(&opts.selection)?;
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
    let terminal = output::Terminal::new();
    let runs = if let Some((source, target)) = url_target(args, &opts.run)? {
        let targets = migrate::rollback::run_all(&source, vec![target], &opts, &terminal).await;
        vec![migrate::rollback::RollbackRun { module: None, source: source.describe(), targets }]
    } else {
        let Some(module) = args.module.as_deref() else {
            bail!("rollback with -f needs --module M: modules are rolled back one at a time (or use --url URL --source PATH)");
        };
        let s = Session::open(ctx, &args.manifest.file, args.manifest.env.as_deref()).await?;
        let run = migrate::rollback::run_module(
            &s,
            ctx.keys()?,
            module,
            args.tenant.as_deref(),
            args.source.as_deref(),
            args.search_path.as_deref(),
            &opts,
            &terminal,
        );
        if a.dry_run {
            run.await?
        } else {
            s.journaled("migrate rollback", run).await?
        }
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
    branch::DeployOptions {
        lock_timeout: args.lock_timeout,
        session_timeout: args.session_timeout,
        live,
        confine_to_manifest: false,
    }
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
                Some(id) => vec![b.journaled("branch_delete", b.delete(id, &opts)).await?],
                None => b.journaled("branch_delete", b.delete_all(a.pattern.as_deref(), &opts)).await?,
            };
            if a.json {
                println!("{}", serde_json::to_string_pretty(&json!({"deleted": dropped}))?);
            } else {
                for v in &dropped {
                    match &v.kept {
                        None => println!("deleted branch {} (database {})", v.id, v.database),
                        Some(why) => println!("deleted branch {} record only: {why}", v.id),
                    }
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
            let gc_options = plain_options(a.lock_timeout);
            let gc = b.gc(keep.as_ref(), a.dry_run, &gc_options);
            let dropped = if a.dry_run { gc.await? } else { b.journaled("branch_gc", gc).await? };
            if a.json {
                println!("{}", serde_json::to_string_pretty(&json!({"dry_run": a.dry_run, "dropped": dropped}))?);
            } else {
                let verb = if a.dry_run { "would drop" } else { "dropped" };
                for d in &dropped {
                    println!("{verb} branch {} (database {}): {}", d.branch.id, d.branch.database, d.reason);
                    if let Some(why) = &d.branch.kept {
                        println!("  record only: {why}");
                    }
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
    branch::DeployOptions { lock_timeout, session_timeout: lock_timeout, live: false, confine_to_manifest: false }
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
            let (client, database) = crate::schema::connect(ctx, &(&a.target).into()).await?;
            let tables = crate::schema::tables(&client, a.schema.as_deref()).await?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&tables)?);
            } else {
                println!("database {database}");
                print!("{}", pgplane_core::schema::tables_text(&tables));
            }
        }
        SchemaCommand::Describe(a) => {
            let (client, database) = crate::schema::connect(ctx, &(&a.target).into()).await?;
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
            let (from, from_label) = crate::schema::connect_side(ctx, &(&a.manifest).into(), &a.from).await?;
            let (to, to_label) = crate::schema::connect_side(ctx, &(&a.manifest).into(), &a.to).await?;
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
