//! `pgplane stack run|status|down`: parse, call `stack`, render. (`stack supervise` is the
//! hidden keeper of one service.)

use anyhow::Result;
use pgplane_core::stack::Restart;

use crate::cli::{StackCommand, StackDownArgs, StackRunArgs, StackStatusArgs, SuperviseArgs};
use crate::ops::Ctx;
use crate::stack::{self, Ended, RunOptions, RunOutcome, RunRequest};
use crate::stack_render as render;

/// `stack run`: a step failed or timed out.
pub const EXIT_FAILED: i32 = 3;
/// `stack run`: interrupted by a signal.
pub const EXIT_INTERRUPTED: i32 = 4;

pub async fn stack(ctx: &Ctx, command: StackCommand) -> Result<i32> {
    match command {
        StackCommand::Run(a) => run(ctx, a).await,
        StackCommand::Status(a) => status(ctx, a).await,
        StackCommand::Down(a) => down(ctx, a).await,
        StackCommand::Supervise(a) => supervise(a).await,
    }
}

async fn run(ctx: &Ctx, a: StackRunArgs) -> Result<i32> {
    let loaded = stack::load(&a.file.file, a.file.stack.as_deref(), a.file.env.as_deref())?;
    let options = RunOptions {
        resume: a.resume,
        from: a.from,
        only: a.only,
        keep_going: a.keep_going,
        quiet: a.quiet,
        dry_run: a.dry_run,
    };
    let events = render::events_for_stderr(a.quiet || a.dry_run);
    let (cancel_tx, cancel_rx) = tokio::sync::watch::channel(false);
    let signals = tokio::spawn(async move {
        crate::cancel::stop_requested().await;
        cancel_tx.send_replace(true);
        // A second signal stops at once.
        crate::cancel::shutdown_signal().await;
        eprintln!("pgplane: second signal: exiting now; `--resume` continues");
        std::process::exit(EXIT_INTERRUPTED);
    });
    let file = a.file.file.display().to_string();
    let outcome = stack::run(ctx, RunRequest { loaded, options }, &*events, cancel_rx).await;
    signals.abort();
    match outcome? {
        RunOutcome::DryRun(d) => {
            if a.json {
                println!("{}", serde_json::to_string_pretty(&d)?);
            } else {
                print!("{}", d.text);
            }
            Ok(0)
        }
        RunOutcome::Ran { ended, run } => {
            if a.json {
                println!("{}", serde_json::to_string_pretty(&run)?);
            } else {
                print!("{}", render::status_text(&run));
            }
            match ended {
                Ended::Succeeded => Ok(0),
                Ended::Failed => {
                    let failed: Vec<&str> =
                        run.steps.iter().filter(|s| s.state == "failed").map(|s| s.name.as_str()).collect();
                    eprintln!(
                        "pgplane: run {} of stack {} failed ({}); fix it, then `pgplane stack run -f {file} --resume`",
                        run.id,
                        run.stack,
                        if failed.is_empty() {
                            "steps did not finish".to_string()
                        } else {
                            format!("failed: {}", failed.join(", "))
                        }
                    );
                    Ok(EXIT_FAILED)
                }
                Ended::Interrupted => {
                    eprintln!("pgplane: run {} interrupted; `pgplane stack run -f {file} --resume` continues", run.id);
                    Ok(EXIT_INTERRUPTED)
                }
            }
        }
    }
}

async fn status(ctx: &Ctx, a: StackStatusArgs) -> Result<i32> {
    let loaded = stack::load(&a.file.file, a.file.stack.as_deref(), a.file.env.as_deref())?;
    match stack::status(ctx, &loaded, a.run).await? {
        Some(run) if a.json => println!("{}", serde_json::to_string_pretty(&run)?),
        Some(run) => print!("{}", render::status_text(&run)),
        None if a.json => println!("null"),
        None => println!("stack {} (env {}) has not run yet", loaded.stack.name, loaded.env),
    }
    Ok(0)
}

async fn down(ctx: &Ctx, a: StackDownArgs) -> Result<i32> {
    let loaded = stack::load(&a.file.file, a.file.stack.as_deref(), a.file.env.as_deref())?;
    let events: Box<dyn stack::StackEvents> = if a.json { Box::new(render::Quiet) } else { Box::new(render::Notes) };
    match stack::down(ctx, &loaded, a.run, a.grace, &*events).await? {
        Some((run, stops)) if a.json => {
            println!("{}", serde_json::to_string_pretty(&serde_json::json!({"run": run, "stopped": stops}))?)
        }
        Some((run, stops)) => {
            if stops.is_empty() {
                println!("run {run} of stack {} has no services to stop", loaded.stack.name);
            }
            for s in stops {
                println!("{:12} {} (pid {})", s.result, s.step, s.pid.unwrap_or(0));
            }
        }
        None if a.json => println!("null"),
        None => println!("stack {} (env {}) has not run yet", loaded.stack.name, loaded.env),
    }
    Ok(0)
}

async fn supervise(a: SuperviseArgs) -> Result<i32> {
    let restart = Restart::parse(&a.restart)
        .ok_or_else(|| anyhow::anyhow!("--restart {:?}: use no, on-failure or always", a.restart))?;
    stack::supervise::supervise(stack::supervise::SuperviseArgs {
        log: a.log,
        restart,
        backoff: a.backoff,
        redact_env: a.redact_env,
        argv: a.argv,
    })
    .await
}
