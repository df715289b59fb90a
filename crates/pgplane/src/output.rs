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

// ----- text on stdout and stderr -------------------------------------------------------

/// Text for a terminal: control characters that could move the cursor, change colours,
/// set the window title or rewrite what was printed (C0 controls but tab and newline, DEL,
/// C1 controls, and Unicode's bidirectional overrides) are shown as `\u001b`-style
/// escapes. Names, comments, labels and error messages come from the catalog and from
/// requests; none of them may drive the operator's terminal. The escape is also valid
/// inside a JSON string, so `--json` output stays parseable.
pub fn clean(text: &str) -> std::borrow::Cow<'_, str> {
    let bad = |c: char| {
        (c.is_control() && c != '\n' && c != '\t') || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if !text.contains(bad) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if bad(c) {
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Exit status when stdout was closed by its reader (`pgplane … | head -1`): what a shell
/// reports for a program that SIGPIPE ended (128 + 13), as for other Unix tools.
pub const BROKEN_PIPE_EXIT: i32 = 141;

/// Writes to stdout (what `print!`/`println!` expand to in this crate, see `main.rs`).
/// When the reader went away (EPIPE) the process ends quietly with
/// [`BROKEN_PIPE_EXIT`], as a Unix tool that SIGPIPE ends: no panic, no message. Other
/// write errors are ignored, as `print!` would have panicked on them for no gain.
pub fn write_stdout(text: &str) {
    let mut out = std::io::stdout().lock();
    let result = out.write_all(clean(text).as_bytes()).and_then(|()| out.flush());
    if let Err(e) = result {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(BROKEN_PIPE_EXIT);
        }
    }
}

/// Writes to stderr (`eprint!`/`eprintln!`); a closed stderr is ignored: there is nobody
/// left to tell, and the command's work and exit status stay as they are.
pub fn write_stderr(text: &str) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(clean(text).as_bytes()).and_then(|()| err.flush());
}

#[cfg(test)]
mod tests {
    use super::clean;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(clean("plain\ttext\n"), "plain\ttext\n");
        assert_eq!(clean("a\x1b[2Jb"), "a\\u001b[2Jb");
        assert_eq!(clean("x\ry\x07\x7f"), "x\\u000dy\\u0007\\u007f");
        assert_eq!(clean("c1\u{9b}31m"), "c1\\u009b31m");
        assert_eq!(clean("rtl\u{202e}txt"), "rtl\\u202etxt");
        assert_eq!(clean("ünïcödé stays"), "ünïcödé stays");
        let json = serde_json::to_string(&serde_json::json!({"c": "a\u{9b}b\u{1b}"})).expect("json");
        let cleaned: serde_json::Value = serde_json::from_str(&clean(&json)).expect("still JSON");
        assert_eq!(cleaned["c"], "a\u{9b}b\u{1b}");
    }
}
