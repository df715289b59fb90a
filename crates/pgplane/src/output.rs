//! Terminal interaction: progress bars on a terminal, log lines elsewhere, confirmation.

use std::io::{BufRead, IsTerminal, Write};

use indicatif::{ProgressBar, ProgressStyle};
use pgplane_core::plan::Action;

use crate::events::Events;
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

/// The CLI's [`Events`]: on a terminal, a counter bar for progress and a spinner for stage
/// messages; elsewhere, a stage message at most every 10 seconds as a log line.
pub struct Terminal {
    state: std::sync::Mutex<TermState>,
    tty: bool,
}

#[derive(Default)]
struct TermState {
    bar: Option<ProgressBar>,
    spinner: Option<ProgressBar>,
    last_line: Option<std::time::Instant>,
}

impl Terminal {
    pub fn new() -> Terminal {
        Terminal { state: Default::default(), tty: std::io::stderr().is_terminal() }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, TermState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Events for Terminal {
    fn stage(&self, _name: &str, message: &str) {
        let mut s = self.state();
        if self.tty {
            let spinner = s.spinner.get_or_insert_with(|| {
                let bar = ProgressBar::new_spinner();
                bar.enable_steady_tick(std::time::Duration::from_millis(120));
                bar
            });
            spinner.set_message(message.to_string());
        } else if s.last_line.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(10)) {
            // The first message comes a round after the start; later ones every 10 s.
            if s.last_line.is_some() {
                eprintln!("pgplane: still {message}");
            }
            s.last_line = Some(std::time::Instant::now());
        }
    }

    fn progress(&self, done: u64, total: u64, what: &str) {
        if !self.tty {
            return;
        }
        let mut s = self.state();
        let bar = s.bar.get_or_insert_with(|| counter(total, what, false));
        bar.set_length(total);
        bar.set_position(done);
    }

    fn progress_done(&self) {
        let mut s = self.state();
        if let Some(bar) = s.bar.take() {
            bar.finish_and_clear();
        }
        if let Some(spinner) = s.spinner.take() {
            spinner.finish_and_clear();
        }
    }
}
