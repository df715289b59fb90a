//! `pgplane stack supervise` (hidden): keeps one service running after the run that started
//! it has ended. It runs the service as its child in its own process group, writes the
//! service's output (redacted) to the step's log, and restarts it by policy — `no`,
//! `on-failure` (a non-zero exit) or `always` — after a delay that doubles from `--backoff`
//! up to 30 s and starts over once the service ran for 10 s. On SIGTERM or SIGINT it stops
//! restarting, passes the signal on and exits when the service has; `stack down` signals
//! the whole group and sends SIGKILL after its grace period.

use std::io::Write;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result};
use pgplane_core::stack::{Restart, MAX_BACKOFF};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::creds::Redactor;

/// A service that ran this long starts over at the first backoff delay.
const STABLE: Duration = Duration::from_secs(10);

pub struct SuperviseArgs {
    pub log: PathBuf,
    pub restart: Restart,
    pub backoff: Duration,
    /// Variables whose values are secrets to hide in the log.
    pub redact_env: Vec<String>,
    pub argv: Vec<String>,
}

pub async fn supervise(args: SuperviseArgs) -> Result<i32> {
    let redactor = Redactor::new(args.redact_env.iter().filter_map(|k| std::env::var(k).ok()).collect());
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args.log)
        .with_context(|| format!("opening {}", args.log.display()))?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    // Not the terminal's business any more: a hangup is ignored.
    let _hup = signal(SignalKind::hangup())?;
    let note = |log: &mut std::fs::File, text: &str| {
        let _ = writeln!(log, "[pgplane] {text}");
    };
    let Some((program, rest)) = args.argv.split_first() else {
        note(&mut log, "nothing to run");
        return Ok(2);
    };
    let mut delay = args.backoff;
    let mut restarts = 0u32;
    loop {
        let started = Instant::now();
        let spawned = tokio::process::Command::new(program)
            .args(rest)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let (code, stopping) = match spawned {
            Err(e) => {
                note(&mut log, &format!("cannot start {program:?}: {e}"));
                (127, false)
            }
            Ok(mut child) => {
                note(&mut log, &format!("started pid {} (supervisor {})", child.id().unwrap_or(0), std::process::id()));
                let (tx, mut lines) = mpsc::unbounded_channel::<String>();
                for pipe in
                    [child.stdout.take().map(Pipe::Out), child.stderr.take().map(Pipe::Err)].into_iter().flatten()
                {
                    pipe.pump(tx.clone());
                }
                drop(tx);
                let mut stopping = false;
                let status = loop {
                    tokio::select! {
                        Some(line) = lines.recv() => {
                            let _ = writeln!(log, "{}", redactor.apply(line.trim_end_matches(['\n', '\r'])));
                        }
                        status = child.wait() => break status,
                        _ = term.recv() => stopping = pass_on(&child),
                        _ = int.recv() => stopping = pass_on(&child),
                    }
                };
                let until = Instant::now() + Duration::from_millis(500);
                while let Ok(Some(line)) = tokio::time::timeout_at(until, lines.recv()).await {
                    let _ = writeln!(log, "{}", redactor.apply(line.trim_end_matches(['\n', '\r'])));
                }
                let code = match status {
                    Ok(s) => {
                        use std::os::unix::process::ExitStatusExt;
                        match (s.code(), s.signal()) {
                            (Some(c), _) => {
                                note(&mut log, &format!("the service exited with code {c}"));
                                c
                            }
                            (None, sig) => {
                                note(&mut log, &format!("the service was killed by signal {}", sig.unwrap_or(0)));
                                128 + sig.unwrap_or(0)
                            }
                        }
                    }
                    Err(e) => {
                        note(&mut log, &format!("lost the service: {e}"));
                        1
                    }
                };
                (code, stopping)
            }
        };
        let again = match args.restart {
            _ if stopping => false,
            Restart::No => false,
            Restart::OnFailure => code != 0,
            Restart::Always => true,
        };
        if !again {
            if stopping {
                note(&mut log, "stopped");
            }
            return Ok(code);
        }
        if started.elapsed() >= STABLE {
            delay = args.backoff;
        }
        restarts += 1;
        note(&mut log, &format!("restart {restarts} in {}ms ({} policy)", delay.as_millis(), args.restart.as_str()));
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = term.recv() => { note(&mut log, "stopped"); return Ok(code) }
            _ = int.recv() => { note(&mut log, "stopped"); return Ok(code) }
        }
        delay = (delay * 2).min(MAX_BACKOFF);
    }
}

/// Passes a stop signal on to the service (`stack down` signals the whole group; a signal
/// to the supervisor alone must stop the service too).
fn pass_on(child: &tokio::process::Child) -> bool {
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        super::proc::signal(pid, "TERM");
    }
    true
}

enum Pipe {
    Out(tokio::process::ChildStdout),
    Err(tokio::process::ChildStderr),
}

impl Pipe {
    fn pump(self, tx: mpsc::UnboundedSender<String>) {
        tokio::spawn(async move {
            use tokio::io::AsyncBufReadExt;
            let mut buf = Vec::new();
            let mut reader: Box<dyn tokio::io::AsyncBufRead + Unpin + Send> = match self {
                Pipe::Out(p) => Box::new(tokio::io::BufReader::new(p)),
                Pipe::Err(p) => Box::new(tokio::io::BufReader::new(p)),
            };
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let _ = tx.send(String::from_utf8_lossy(&buf).into_owned());
                    }
                }
            }
        });
    }
}
