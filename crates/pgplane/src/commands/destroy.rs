//! `pgplane destroy`: a thin front end over [`pgplane_ops::destroy`], run as an inline job.

use anyhow::Result;
use pgplane_core::destroy::{destroy_json, destroy_text, DestroyPlan};
use serde_json::json;

use crate::cli::DestroyArgs;
use crate::conn::Servers;
use crate::ops::{self, Ctx};
use crate::{cancel, control, jobs, output, runner};
use pgplane_ops::destroy::{destroy_with, preview, DestroyHooks, DestroyRequest};

pub async fn destroy(ctx: &mut Ctx, args: DestroyArgs) -> Result<i32> {
    let env = args.env.clone();
    pgplane_core::ident::check_name("environment", &env).map_err(anyhow::Error::msg)?;
    if args.dry_run {
        let plan = preview(ctx, &args.file, &env).await?;
        match (&plan, args.json) {
            (Some(p), true) => println!("{}", serde_json::to_string_pretty(&destroy_json(p))?),
            (Some(p), false) => print!("{}", destroy_text(p)),
            (None, true) => println!("{}", serde_json::to_string_pretty(&json!({"env": env, "changes": 0}))?),
            (None, false) => println!("Nothing to destroy: pgplane manages nothing on these servers."),
        }
        return Ok(0);
    }
    super::require_confirmation_possible(args.yes, "destroy")?;
    // Without a control database pgplane manages nothing here: nothing to record a job in.
    let manifest = ops::load_manifest(&args.file)?;
    let servers = Servers::resolve(&manifest, &ctx.local, || ctx.keys())?;
    if !control::exists(&servers.first().connect(None).await?).await? {
        if args.json {
            println!("{}", serde_json::to_string_pretty(&json!({"env": env, "changes": 0, "applied": 0}))?);
        } else {
            println!("Nothing to destroy: pgplane manages nothing on these servers.");
        }
        return Ok(0);
    }
    control::ensure(servers.first()).await?;
    let new = runner::new_job(runner::kind::DESTROY, &env, None, &DestroyRequest::default())?;
    let job = jobs::worker::Inline::start(servers.first(), &new).await?;
    ctx.operation = Some(job.id());
    let terminal = output::Terminal::new();
    let events = job.events(&terminal);
    let cancel = cancel::Cancel::new();
    let (yes, as_json) = (args.yes, args.json);
    let mut approve = |plan: &DestroyPlan| {
        // The plan goes to stdout, or to stderr when stdout carries JSON.
        if !as_json {
            print!("{}", destroy_text(plan));
        } else if !yes {
            eprint!("{}", destroy_text(plan));
        }
        yes || output::confirm(&format!("destroy env {} ({} step(s))?", plan.env, plan.changes()))
    };
    let progress = output::progress();
    let hooks =
        DestroyHooks { approve: &mut approve, lock_timeout: args.lock_timeout, progress: Some(progress.as_ref()) };
    let result = job
        .run(&cancel, async {
            let report = destroy_with(ctx, &args.file, &env, hooks, &events).await?;
            let done = jobs::Done {
                changes: i32::try_from(report.applied).unwrap_or(i32::MAX),
                result: serde_json::to_value(report.summary()).ok(),
                failed: report.incomplete(),
            };
            Ok((report, done))
        })
        .await;
    let id = job.id();
    job.finish(&cancel, &result).await?;
    let (report, _) = result?;
    if report.declined {
        eprintln!("pgplane: destroy cancelled; nothing was changed");
        return Ok(1);
    }
    if as_json {
        let mut doc = destroy_json(&report.plan);
        doc["applied"] = json!(report.applied);
        doc["remaining"] = json!(report.remaining);
        doc["job"] = json!(id);
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else if report.plan.changes() == 0 && report.remaining.is_empty() {
        println!("Nothing to destroy: pgplane manages nothing in env {env}.");
    } else if report.applied > 0 {
        println!("Destroyed env {env}: {} step(s) (job {id}).", report.applied);
    }
    if let Some(why) = report.incomplete() {
        eprintln!("pgplane: {why}");
        return Ok(1);
    }
    Ok(0)
}
