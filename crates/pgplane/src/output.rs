//! Terminal interaction: progress bars on a terminal, log lines elsewhere, confirmation.

use std::io::{BufRead, IsTerminal, Write};

use indicatif::{ProgressBar, ProgressStyle};
use pgplane_core::plan::Action;

use crate::exec::Progress;

pub struct BarProgress(ProgressBar);

impl Progress for BarProgress {
    fn start(&self, total: usize) {
        self.0.set_length(total as u64);
    }
    fn action(&self, index: usize, action: &Action) {
        self.0.set_position(index as u64);
        self.0.set_message(format!("{} {}", action.kind.as_str(), action.target));
    }
    fn finish(&self) {
        self.0.finish_and_clear();
    }
}

/// Structured progress for logs when stderr is not a terminal.
pub struct LogProgress;

impl Progress for LogProgress {
    fn start(&self, total: usize) {
        tracing::info!(total, "applying");
    }
    fn action(&self, index: usize, action: &Action) {
        tracing::info!(step = index + 1, kind = action.kind.as_str(), target = %action.target, server = %action.server, "action");
    }
    fn finish(&self) {
        tracing::info!("applied");
    }
}

pub fn progress() -> Box<dyn Progress> {
    if std::io::stderr().is_terminal() {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template("{spinner} [{bar:30}] {pos}/{len} {wide_msg}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        Box::new(BarProgress(bar))
    } else {
        Box::new(LogProgress)
    }
}

/// A counter bar on a terminal (hidden otherwise or when `hidden`).
pub fn counter(total: u64, what: &str, hidden: bool) -> ProgressBar {
    if hidden || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(&format!("{{spinner}} [{{bar:30}}] {{pos}}/{{len}} {what}"))
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar
}

/// Asks on stderr; true only for an explicit yes.
pub fn confirm(question: &str) -> bool {
    eprint!("{question} [y/N] ");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    if std::io::stdin().lock().read_line(&mut line).is_err() {
        return false;
    }
    matches!(line.trim().to_ascii_lowercase().as_str(), "y" | "yes")
}

/// Set by `serve`, which handles signals itself: running operations are asked to stop
/// only when its grace period is over, not at the signal.
static STOP: std::sync::OnceLock<tokio::sync::watch::Sender<Option<&'static str>>> = std::sync::OnceLock::new();

/// From now on [`stop_requested`] waits for [`request_stop`] instead of a signal.
pub fn take_over_signals() {
    STOP.get_or_init(|| tokio::sync::watch::channel(None).0);
}

/// Asks running operations to stop (see [`take_over_signals`]).
pub fn request_stop(reason: &'static str) {
    if let Some(tx) = STOP.get() {
        tx.send_replace(Some(reason));
    }
}

/// Resolves when the running operation should stop: on SIGINT or SIGTERM, or, in `serve`,
/// when [`request_stop`] is called. Works from any runtime.
pub async fn stop_requested() -> &'static str {
    let Some(tx) = STOP.get() else {
        return shutdown_signal().await;
    };
    let mut rx = tx.subscribe();
    loop {
        if let Some(reason) = *rx.borrow_and_update() {
            return reason;
        }
        if rx.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM, with the signal's name.
pub async fn shutdown_signal() -> &'static str {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return "SIGINT";
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}
