//! `pgplane job list|show|cancel` and `pgplane worker`: thin front ends over
//! [`crate::jobs`].

use std::path::Path;

use anyhow::{bail, Result};
use pgplane_core::job::JobStatus;

use crate::cli::{JobCommand, ManifestArgs, WorkerArgs};
use crate::control;
use crate::jobs::{self, queue, Job};
use crate::ops::{Ctx, Session};

/// The control database of the manifest's first server, if it exists (never created here).
async fn control_db(ctx: &mut Ctx, manifest: &ManifestArgs) -> Result<(Option<tokio_postgres::Client>, String)> {
    let s = Session::open(ctx, &manifest.file, manifest.env.as_deref()).await?;
    let env = s.desired.env.clone();
    Ok((control::open_existing(s.servers.first(), s.first_admin()).await?, env))
}

pub async fn job(ctx: &mut Ctx, command: JobCommand) -> Result<i32> {
    match command {
        JobCommand::List { manifest, status, kind, all_envs, limit, json } => {
            let statuses = status
                .iter()
                .map(|s| {
                    JobStatus::parse(s.trim()).ok_or_else(|| {
                        anyhow::anyhow!("unknown status {s:?}; use queued, running, succeeded, failed or cancelled")
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let (control, env) = control_db(ctx, &manifest).await?;
            let list = match &control {
                Some(c) => {
                    let filter =
                        jobs::Filter { env: (!all_envs).then_some(env), kind, statuses, limit, ..Default::default() };
                    queue::list(c, &filter).await?
                }
                None => Vec::new(),
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else if list.is_empty() {
                println!("No jobs.");
            } else {
                print!("{}", table(&list));
            }
            Ok(0)
        }
        JobCommand::Show { id, manifest, json } => {
            let (control, _) = control_db(ctx, &manifest).await?;
            let Some(job) = (match &control {
                Some(c) => queue::get(c, id).await?,
                None => None,
            }) else {
                bail!("there is no job {id} (see `pgplane job list`)");
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&job)?);
            } else {
                print!("{}", details(&job));
            }
            Ok(if job.status == JobStatus::Failed { 1 } else { 0 })
        }
        JobCommand::Cancel { id, manifest, json } => {
            let (control, _) = control_db(ctx, &manifest).await?;
            let Some(c) = control else { bail!("there is no job {id} (see `pgplane job list`)") };
            let Some((job, changed)) = queue::request_cancel(&c, id).await? else {
                bail!("there is no job {id} (see `pgplane job list`)");
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&job)?);
            }
            match (job.status, changed) {
                (JobStatus::Cancelled, _) => {
                    if !json {
                        println!("Job {id} ({}) is cancelled.", job.kind);
                    }
                    Ok(0)
                }
                (JobStatus::Running, _) => {
                    if !json {
                        println!(
                            "Job {id} ({}) was asked to stop; its worker stops it at the next safe point \
                             (`pgplane job show {id}`).",
                            job.kind
                        );
                    }
                    Ok(0)
                }
                (status, _) => {
                    if !json {
                        eprintln!("pgplane: job {id} ({}) already ended: {status}; nothing to cancel", job.kind);
                    }
                    Ok(1)
                }
            }
        }
    }
}

fn table(list: &[Job]) -> String {
    let mut rows = vec![[
        "ID".to_string(),
        "KIND".into(),
        "STATUS".into(),
        "ENV".into(),
        "RESOURCE".into(),
        "TRY".into(),
        "STARTED".into(),
        "ERROR".into(),
    ]];
    for j in list {
        let error = j.error.as_deref().unwrap_or("").lines().next().unwrap_or("");
        rows.push([
            j.id.to_string(),
            j.kind.clone(),
            j.status.to_string(),
            j.env.clone().unwrap_or_default(),
            j.resource.clone().unwrap_or_default(),
            format!("{}/{}", j.attempts, j.max_attempts),
            j.started_at.clone(),
            error.chars().take(60).collect(),
        ]);
    }
    let mut widths = [0usize; 8];
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in &rows {
        let line: Vec<String> = r.iter().zip(widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

fn details(j: &Job) -> String {
    let mut out = format!("Job {} ({}): {}\n", j.id, j.kind, j.status);
    let mut field = |k: &str, v: Option<&str>| {
        if let Some(v) = v.filter(|v| !v.is_empty()) {
            out.push_str(&format!("  {k:<12} {v}\n"));
        }
    };
    field("environment", j.env.as_deref());
    field("resource", j.resource.as_deref());
    field("attempts", Some(&format!("{} of {}", j.attempts, j.max_attempts)));
    field("worker", j.worker.as_deref());
    field("accepted", Some(&j.started_at));
    field("claimed", j.claimed_at.as_deref());
    field("finished", j.finished_at.as_deref());
    if j.cancel_requested {
        field("cancel", Some("requested"));
    }
    field("error", j.error.as_deref());
    if !j.stages.is_empty() {
        out.push_str("  stages:\n");
        for s in &j.stages {
            out.push_str(&format!("    {:<8} {:<10} {}  {}\n", s.status, s.name, s.at, s.message));
        }
    }
    out
}

/// `pgplane worker`: this manifest's jobs, run until SIGTERM.
pub async fn worker(ctx: &mut Ctx, args: WorkerArgs) -> Result<i32> {
    let s = Session::open(ctx, &args.manifest.file, args.manifest.env.as_deref()).await?;
    control::create_if_missing(s.first_admin()).await?;
    control::ensure_as(s.servers.first(), crate::conn::Role::Branch).await?;
    // Running jobs stop when the grace period is over, not at the signal.
    crate::cancel::take_over_signals();
    let env = s.desired.env.clone();
    let node = jobs::node::Node::start(jobs::node::Setup {
        home: ctx.home.clone(),
        manifest: crate::ops::ManifestArgs { file: args.manifest.file.clone(), env: Some(env.clone()) },
        env: env.clone(),
        fingerprint: crate::runner::fingerprint(Path::new(&args.manifest.file))?,
        keep_file: s.manifest.branches.keep_file.clone(),
        control: s.servers.first().clone(),
        workers: usize::from(args.workers),
        reconcile_every: args.reconcile_interval,
        name: format!("worker@{}:{}", jobs::worker::hostname(), std::process::id()),
        hooks: None,
    });
    eprintln!(
        "pgplane: worker for env {env} running jobs with {} slot(s); SIGTERM hands running jobs back",
        args.workers
    );
    let name = crate::cancel::shutdown_signal().await;
    eprintln!("pgplane: {name} received: finishing running jobs (up to {}s)", args.grace.as_secs());
    let shutdown = node.shutdown(args.grace);
    tokio::pin!(shutdown);
    let handed_back = tokio::select! {
        ids = &mut shutdown => ids,
        name = crate::cancel::shutdown_signal() => {
            eprintln!("pgplane: second {name}: stopping now");
            node.cancel_now();
            shutdown.await
        }
    };
    if !handed_back.is_empty() {
        eprintln!("pgplane: handed jobs {handed_back:?} back to the queue: another worker continues them");
    }
    eprintln!("pgplane: stopped");
    Ok(0)
}
