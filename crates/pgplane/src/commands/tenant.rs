//! `pgplane tenant …`: thin front ends over [`crate::tenants`]. Each command that changes
//! something runs as an inline job of this process (`pgplane job list` shows it).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::IsTerminal;

use anyhow::{bail, Result};
use pgplane_core::render;
use pgplane_core::tenant::{Change, ItemAction};
use serde::Serialize;
use serde_json::json;

use crate::cli::{
    ManifestArgs, TenantAddArgs, TenantChangeArgs, TenantCommand, TenantGcArgs, TenantModulesArgs, TenantRemoveArgs,
    TenantUpgradeArgs,
};
use crate::jobs::{worker::Inline, Done};
use crate::ops::Ctx;
use crate::runner::{self, kind};
use crate::tenants::{self, FanOutReport, Report, TenantView};
use crate::{control, output};

pub async fn tenant(ctx: &mut Ctx, command: TenantCommand) -> Result<i32> {
    match command {
        TenantCommand::Add(a) => add(ctx, a).await,
        TenantCommand::Upgrade(a) => upgrade(ctx, a).await,
        TenantCommand::Disable(a) => {
            let req = runner::TenantModulesRequest { tenant: a.tenant.clone(), modules: a.modules.clone() };
            let change = req.change(ItemAction::Disable)?;
            run_change(ctx, &a.change, kind::TENANT_DISABLE, &req, &change, Some(("disable", a.yes))).await
        }
        TenantCommand::Enable(a) => enable(ctx, a).await,
        TenantCommand::Remove(a) => remove(ctx, a).await,
        TenantCommand::List(a) => {
            let list = tenants::list(ctx, &(&a.manifest).into()).await?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else if list.is_empty() {
                println!("No tenants.");
            } else {
                print!("{}", table(&list));
            }
            Ok(0)
        }
        TenantCommand::Show(a) => {
            let t = tenants::show(ctx, &(&a.manifest).into(), &a.tenant).await?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&t)?);
            } else {
                print!("{}", details(&t));
            }
            Ok(if t.modules.iter().any(|m| m.status == "failed") { 1 } else { 0 })
        }
        TenantCommand::Gc(a) => gc(ctx, a).await,
    }
}

async fn add(ctx: &mut Ctx, a: TenantAddArgs) -> Result<i32> {
    let req = runner::TenantAddRequest {
        tenant: a.tenant.clone(),
        modules: a.modules.clone(),
        parameters: a.params.iter().cloned().collect(),
        labels: a.labels.iter().cloned().collect(),
        ttl: a.ttl.map(|d| format!("{}s", d.as_secs())),
    };
    let change = req.change()?;
    run_change(ctx, &a.change, kind::TENANT_ADD, &req, &change, None).await
}

async fn enable(ctx: &mut Ctx, a: TenantModulesArgs) -> Result<i32> {
    let req = runner::TenantModulesRequest { tenant: a.tenant.clone(), modules: a.modules.clone() };
    let change = req.change(ItemAction::Enable)?;
    run_change(ctx, &a.change, kind::TENANT_ENABLE, &req, &change, None).await
}

async fn remove(ctx: &mut Ctx, a: TenantRemoveArgs) -> Result<i32> {
    let req = runner::TenantRemoveRequest { tenant: a.tenant.clone(), modules: a.modules.clone(), purge: a.purge };
    let change = req.change()?;
    let verb = if a.purge { "purge" } else { "disable" };
    run_change(ctx, &a.change, kind::TENANT_REMOVE, &req, &change, Some((verb, a.yes))).await
}

async fn upgrade(ctx: &mut Ctx, a: TenantUpgradeArgs) -> Result<i32> {
    let req = runner::TenantUpgradeRequest {
        tenant: a.tenant.clone(),
        all: a.all,
        modules: a.modules.clone(),
        all_modules: a.all_modules,
        jobs: Some(usize::from(a.jobs)),
        canary: a.canary,
        max_failures: Some(a.max_failures as usize),
        allow_downgrade: a.allow_downgrade,
    };
    if !a.all {
        let change = req.change()?;
        return run_change(ctx, &a.change, kind::TENANT_UPGRADE, &req, &change, None).await;
    }
    let fan = req.fan_out(a.change.dry_run, a.change.lock_timeout)?;
    tenants::fanout::precheck(&crate::ops::load_manifest(&a.change.manifest.file)?, &fan)?;
    let args: crate::ops::ManifestArgs = (&a.change.manifest).into();
    let terminal = output::Terminal::new();
    let report = if a.change.dry_run {
        tenants::upgrade_all(ctx, &args, &fan, &terminal).await?
    } else {
        let resource = format!("all:{}", fan.module);
        let job = inline(ctx, &a.change.manifest, kind::TENANT_UPGRADE, &resource, &req).await?;
        ctx.operation = Some(job.id());
        let cancel = crate::cancel::Cancel::new();
        let events = job.events(&terminal);
        let result = job
            .run(&cancel, crate::cancel::scope(cancel.clone(), tenants::upgrade_all(ctx, &args, &fan, &events)))
            .await;
        crate::events::Events::progress_done(&terminal);
        let done = result.map(|r| {
            let (line, failed) = r.summary();
            let d = Done {
                changes: i32::try_from(r.done).unwrap_or(i32::MAX),
                result: serde_json::to_value(&r).ok(),
                failed: failed.then_some(line),
            };
            (r, d)
        });
        job.finish(&cancel, &done).await?;
        done?.0
    };
    print_fan_out(&report, a.change.json)?;
    Ok(if report.summary().1 { 1 } else { 0 })
}

async fn gc(ctx: &mut Ctx, a: TenantGcArgs) -> Result<i32> {
    let mut keep: Option<std::collections::BTreeSet<String>> = None;
    if let Some(file) = &a.keep_file {
        let text = std::fs::read_to_string(file)
            .map_err(|e| anyhow::anyhow!("reading the live list {}: {e}", file.display()))?;
        keep = Some(
            text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_string).collect(),
        );
    }
    if !a.keep.is_empty() {
        keep.get_or_insert_with(Default::default).extend(a.keep.iter().cloned());
    }
    if keep.as_ref().is_some_and(|k| k.is_empty()) && !a.allow_empty {
        bail!("the live list is empty, which would purge every preview; pass --allow-empty if that is meant");
    }
    let args: crate::ops::ManifestArgs = (&a.change.manifest).into();
    let terminal = output::Terminal::new();
    let report = if a.change.dry_run {
        tenants::gc(ctx, &args, keep.as_ref(), true, a.change.lock_timeout, &terminal).await?
    } else {
        let req = runner::TenantGcRequest { keep: keep.as_ref().map(|k| k.iter().cloned().collect()), keep_file: None };
        let job = inline(ctx, &a.change.manifest, kind::TENANT_GC, "gc", &req).await?;
        ctx.operation = Some(job.id());
        let cancel = crate::cancel::Cancel::new();
        let events = job.events(&terminal);
        let work = tenants::gc(ctx, &args, keep.as_ref(), false, a.change.lock_timeout, &events);
        let result = job.run(&cancel, crate::cancel::scope(cancel.clone(), work)).await;
        crate::events::Events::progress_done(&terminal);
        let done = result.map(|r| {
            let failed = (!r.failed.is_empty())
                .then(|| r.failed.iter().map(|(t, e)| format!("{t}: {e}")).collect::<Vec<_>>().join(" | "));
            let d = Done {
                changes: i32::try_from(r.purged.len()).unwrap_or(i32::MAX),
                result: serde_json::to_value(&r).ok(),
                failed,
            };
            (r, d)
        });
        job.finish(&cancel, &done).await?;
        done?.0
    };
    if a.change.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        if report.due.is_empty() {
            println!("No preview is due (env {}).", a.change.manifest.env.as_deref().unwrap_or("from the manifest"));
        }
        for d in &report.due {
            let what = if report.dry_run {
                "would purge"
            } else if report.purged.contains(&d.tenant) {
                "purged"
            } else {
                "FAILED"
            };
            println!("{what:<12} {}  ({})", d.tenant, d.reason);
        }
        for (t, e) in &report.failed {
            eprintln!("pgplane: preview {t} was not purged: {e}");
        }
    }
    Ok(if report.failed.is_empty() { 0 } else { 1 })
}

/// Records a job of this process for a tenant operation (creating the control database on
/// a fresh server) and returns it running.
async fn inline(
    ctx: &mut Ctx,
    manifest: &ManifestArgs,
    kind: &str,
    resource: &str,
    req: &impl Serialize,
) -> Result<Inline> {
    let m = crate::ops::load_manifest(&manifest.file)?;
    let env = crate::ops::environment(&m, manifest.env.as_deref())?;
    let servers = crate::conn::Servers::resolve(&m, &ctx.local, || ctx.keys())?;
    let first = servers.first();
    let admin = first.connect(None).await?;
    control::create_if_missing(&admin).await?;
    control::ensure_as(first, crate::conn::Role::Branch).await?;
    let new = runner::new_job(kind, &env, Some(resource), req)?;
    Inline::start(first, &new).await
}

/// Runs one tenant change: dry (the plan and the migrations that would run), or as an
/// inline job that shows the plan, asks when `confirm` says so, and reports.
async fn run_change(
    ctx: &mut Ctx,
    opts: &TenantChangeArgs,
    kind: &str,
    req: &impl Serialize,
    change: &Change,
    confirm: Option<(&str, bool)>,
) -> Result<i32> {
    let args: crate::ops::ManifestArgs = (&opts.manifest).into();
    // A bad request is refused before anything is recorded, a job included.
    tenants::precheck(&crate::ops::load_manifest(&opts.manifest.file)?, change)?;
    let terminal = output::Terminal::new();
    let json = opts.json;
    let asks = confirm.filter(|(_, yes)| !yes && !opts.dry_run);
    if let Some((verb, _)) = asks {
        if !std::io::stdin().is_terminal() {
            bail!(
                "refusing to {verb} tenant {} without confirmation: stdin is not a terminal; pass --yes to {verb} \
                 non-interactively (or --dry-run to see the plan)",
                change.tenant
            );
        }
    }
    let mut approve = |plan: &pgplane_core::plan::Plan| {
        let text = render::plan_text(plan);
        if json {
            eprint!("{text}");
        } else {
            print!("{text}");
        }
        match asks {
            Some((verb, _)) => {
                output::confirm(&format!("{verb} tenant {} ({} change(s))?", change.tenant, plan.changes()))
            }
            None => true,
        }
    };
    let hooks = tenants::Hooks {
        approve: &mut approve,
        lock_timeout: opts.lock_timeout,
        dry_run: opts.dry_run,
        progress: None,
        kind,
    };
    if opts.dry_run {
        let report = tenants::change(ctx, &args, change, hooks, &terminal).await?;
        crate::events::Events::progress_done(&terminal);
        print_report(&report, None, json)?;
        return Ok(0);
    }
    let job = inline(ctx, &opts.manifest, kind, &change.tenant, req).await?;
    let id = job.id();
    ctx.operation = Some(id);
    let cancel = crate::cancel::Cancel::new();
    let events = job.events(&terminal);
    let work = tenants::change(ctx, &args, change, hooks, &events);
    let result = job.run(&cancel, crate::cancel::scope(cancel.clone(), work)).await;
    crate::events::Events::progress_done(&terminal);
    let done = result.map(|r| {
        let d = Done {
            changes: i32::try_from(r.applied).unwrap_or(i32::MAX),
            result: serde_json::to_value(&r).ok(),
            failed: r.failed.clone(),
        };
        (r, d)
    });
    job.finish(&cancel, &done).await?;
    let report = done?.0;
    print_report(&report, Some(id), json)?;
    if report.declined {
        eprintln!("pgplane: cancelled; nothing was changed or recorded");
        return Ok(1);
    }
    if let Some(f) = &report.failed {
        eprintln!("pgplane: {f}");
        return Ok(1);
    }
    Ok(0)
}

fn print_report(r: &Report, job: Option<i64>, json_out: bool) -> Result<()> {
    if json_out {
        let mut doc = serde_json::to_value(r)?;
        doc["plan"] = render::plan_json(&r.plan);
        doc["job"] = json!(job);
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    let mut out = String::new();
    if r.dry_run {
        out.push_str(&render::plan_text(&r.plan));
        for p in &r.pending {
            let at = p.version.as_deref().map(|v| format!(" {v}")).unwrap_or_default();
            let _ = writeln!(out, "Migrations of {}{at} for tenant {} ({}):", p.module, p.tenant, p.source);
            if p.migrations.is_empty() {
                out.push_str("  none pending\n");
            }
            for m in &p.migrations {
                let _ = writeln!(out, "  would apply {m}");
            }
            if let Some(n) = &p.note {
                let _ = writeln!(out, "  note: {n}");
            }
        }
        out.push_str("Dry run: nothing was changed.\n");
    } else if !r.declined {
        if r.plan.changes() == 0 {
            out.push_str(&render::plan_text(&r.plan));
        } else {
            let _ = writeln!(out, "Applied {} change(s) (env {}).", r.applied, r.plan.env);
        }
        out.push_str(&crate::migrate::render_text(
            &r.migrations.iter().flat_map(|m| m.targets.iter().cloned()).collect::<Vec<_>>(),
            crate::migrate::Mode::Up,
        ));
        for v in &r.versions {
            let _ = writeln!(
                out,
                "Tenant {}: module {} {} -> {}",
                r.tenant,
                v.module,
                v.from.as_deref().unwrap_or("-"),
                v.to.as_deref().unwrap_or("-")
            );
        }
        if !r.purged.is_empty() {
            let _ = writeln!(out, "Tenant {}: purged {}", r.tenant, r.purged.join(", "));
        }
        if let Some(id) = job {
            let _ = writeln!(out, "Job {id} (`pgplane job show {id}`).");
        }
    }
    for n in &r.notes {
        let _ = writeln!(out, "note: {n}");
    }
    print!("{out}");
    Ok(())
}

fn print_fan_out(r: &FanOutReport, json_out: bool) -> Result<()> {
    if json_out {
        let mut doc = serde_json::to_value(r)?;
        doc["plan"] = render::plan_json(&r.plan);
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    let mut out = String::new();
    if r.dry_run {
        out.push_str(&render::plan_text(&r.plan));
        let pending: BTreeMap<&str, &tenants::Pending> = r.pending.iter().map(|p| (p.tenant.as_str(), p)).collect();
        for t in &r.tenants {
            let canary = if t.canary { " (canary)" } else { "" };
            let _ = writeln!(out, "{}{canary}: {} -> {}", t.tenant, t.from.as_deref().unwrap_or("-"), r.to_version);
            if let Some(p) = pending.get(t.tenant.as_str()) {
                for m in &p.migrations {
                    let _ = writeln!(out, "  would apply {m}");
                }
                if let Some(n) = &p.note {
                    let _ = writeln!(out, "  note: {n}");
                }
            }
        }
        let _ = writeln!(out, "Dry run: {} tenant(s) would be upgraded; nothing was changed.", r.tenants.len());
    } else {
        let mut rows = vec![["TENANT".to_string(), "FROM".into(), "STAGE".into(), "APPLIED".into(), "ERROR".into()]];
        for t in &r.tenants {
            rows.push([
                format!("{}{}", t.tenant, if t.canary { " (canary)" } else { "" }),
                t.from.clone().unwrap_or_else(|| "-".into()),
                t.stage.clone(),
                t.applied.len().to_string(),
                t.error.as_deref().unwrap_or("").lines().next().unwrap_or("").chars().take(80).collect(),
            ]);
        }
        out.push_str(&columns(&rows));
        let _ = writeln!(out, "{}", r.summary().0);
    }
    for n in &r.notes {
        let _ = writeln!(out, "note: {n}");
    }
    print!("{out}");
    Ok(())
}

fn columns<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r.iter().zip(widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

fn labels(l: &BTreeMap<String, String>) -> String {
    l.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

fn table(list: &[TenantView]) -> String {
    let mut rows = vec![[
        "TENANT".to_string(),
        "MODULE".into(),
        "VERSION".into(),
        "STATE".into(),
        "STATUS".into(),
        "SERVER".into(),
        "LABELS".into(),
        "EXPIRES".into(),
        "LAST JOB".into(),
    ]];
    for t in list {
        for m in &t.modules {
            let version = match (&m.version, &m.target_version) {
                (v, Some(to)) => format!("{} -> {to}", v.as_deref().unwrap_or("-")),
                (v, None) => v.clone().unwrap_or_else(|| "-".into()),
            };
            rows.push([
                t.name.clone(),
                m.module.clone(),
                version,
                m.state.clone(),
                m.status.clone(),
                m.server.clone().unwrap_or_default(),
                labels(&t.labels),
                t.expires_at.clone().unwrap_or_default(),
                m.last_job.as_ref().map(|j| format!("{} {} {}", j.id, j.kind, j.status)).unwrap_or_default(),
            ]);
        }
    }
    columns(&rows)
}

fn details(t: &TenantView) -> String {
    let mut out = format!("Tenant {} ({})\n", t.name, if t.registered { "registered" } else { "in the manifest" });
    if !t.labels.is_empty() {
        let _ = writeln!(out, "  labels       {}", labels(&t.labels));
    }
    if let Some(e) = &t.expires_at {
        let _ = writeln!(out, "  expires      {e}");
    }
    if let Some(c) = &t.created_at {
        let _ = writeln!(out, "  created      {c}");
    }
    for m in &t.modules {
        let _ = writeln!(
            out,
            "  module {}: version {}, {} ({})",
            m.module,
            m.version.as_deref().unwrap_or("-"),
            m.state,
            m.status
        );
        if let Some(to) = &m.target_version {
            let _ = writeln!(out, "    upgrading to {to}");
        }
        let place = match &m.schema {
            Some(s) => format!("{}.{s}", m.database.as_deref().unwrap_or("?")),
            None => m.database.clone().unwrap_or_default(),
        };
        let _ = writeln!(
            out,
            "    storage    {place} on {} (role {})",
            m.server.as_deref().unwrap_or("?"),
            m.role.as_deref().unwrap_or("?")
        );
        if !m.parameters.is_empty() {
            let p: Vec<String> = m.parameters.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let _ = writeln!(out, "    parameters {}", p.join(", "));
        }
        if let Some(j) = &m.last_job {
            let _ = writeln!(out, "    last job   {} ({}) {}", j.id, j.kind, j.status);
            if let Some(e) = &j.error {
                let _ = writeln!(out, "    job error  {e}");
            }
        }
        if let Some(e) = &m.error {
            let _ = writeln!(out, "    error      {e}");
        }
    }
    out
}
