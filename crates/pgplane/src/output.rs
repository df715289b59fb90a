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

    /// Tenants of a fan-out: a line each when it ends (above the bar on a terminal).
    fn item(&self, name: &str, status: &str, message: &str) {
        if !matches!(status, "done" | "failed") {
            return;
        }
        let line = format!("{status:<6} {name}  {message}");
        let s = self.state();
        match &s.bar {
            Some(bar) if self.tty => bar.println(clean(&line)),
            _ => eprintln!("{line}"),
        }
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

/// Log lines go through [`clean`] too: a field's value can come from the catalog, a
/// changelog or a request (a failing statement's message). Used as the log writer.
pub struct CleanStderr;

impl std::io::Write for CleanStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        write_stderr(&String::from_utf8_lossy(buf));
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
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
