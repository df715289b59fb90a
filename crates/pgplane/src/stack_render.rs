//! Showing a run: [`StackEvents`] for a terminal (a spinner line with the phase, the
//! running steps and the waits' last values; step output above it, prefixed with the
//! step's name) and for logs (one structured line per event, output lines prefixed), and
//! the text of `stack status` (also the summary after a run).

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use pgplane_core::stack::schedule::State;

use crate::stack::record::RunView;
use crate::stack::{Event, StackEvents};
use crate::wait::human;

/// The renderer for this process: a terminal's, log lines, or only errors (`quiet`).
pub fn events_for_stderr(quiet: bool) -> Box<dyn StackEvents> {
    if quiet {
        Box::new(Quiet)
    } else if std::io::stderr().is_terminal() {
        Box::new(Terminal::new())
    } else {
        Box::new(Log)
    }
}

/// Only notes, on stderr (`stack down`).
pub struct Notes;

impl StackEvents for Notes {
    fn event(&self, e: &Event<'_>) {
        if let Event::Note { text } = e {
            eprintln!("pgplane: {text}");
        }
    }
}

/// `--quiet`: nothing while running; the summary is printed by the caller.
pub struct Quiet;

impl StackEvents for Quiet {
    fn event(&self, _: &Event<'_>) {}
}

/// Structured log lines (stderr is not a terminal): one per event; step output as
/// `step | line`.
pub struct Log;

impl StackEvents for Log {
    fn event(&self, e: &Event<'_>) {
        match e {
            Event::RunStarted { run, stack, env, steps, selected, resumed, log_dir } => {
                tracing::info!(run, stack, env, steps, selected, resumed, logs = %log_dir.display(), "stack run started")
            }
            Event::StepStarted { step, kind, phase, phases } => {
                tracing::info!(step, kind, phase = phase + 1, phases, "step started")
            }
            Event::Output { step, line } => eprintln!("{step} | {line}"),
            Event::Waiting { step, observed } => tracing::info!(step, observed, "waiting"),
            Event::StepFinished { step, state, detail, elapsed } => match state {
                State::Failed => tracing::error!(
                    step,
                    state = state.as_str(),
                    detail,
                    ms = elapsed.as_millis() as u64,
                    "step failed"
                ),
                _ => tracing::info!(
                    step,
                    state = state.as_str(),
                    detail,
                    ms = elapsed.as_millis() as u64,
                    "step finished"
                ),
            },
            Event::StepSkipped { step, reason } => tracing::warn!(step, reason, "step skipped"),
            Event::Note { text } => tracing::info!("{text}"),
            Event::RunFinished { run, status } => tracing::info!(run, status, "stack run finished"),
        }
    }
}

/// A terminal: one spinner line, output and step results printed above it.
pub struct Terminal {
    bar: ProgressBar,
    state: Mutex<TermState>,
}

#[derive(Default)]
struct TermState {
    /// Running steps: their phase and last observation.
    running: BTreeMap<String, (usize, Option<String>)>,
    phases: usize,
    width: usize,
}

impl Terminal {
    pub fn new() -> Terminal {
        let bar = ProgressBar::new_spinner();
        bar.set_style(ProgressStyle::with_template("{spinner} {elapsed:>4} {wide_msg}").expect("valid template"));
        bar.enable_steady_tick(Duration::from_millis(120));
        Terminal { bar, state: Mutex::new(TermState { width: 12, ..TermState::default() }) }
    }

    fn redraw(&self, st: &TermState) {
        let mut parts = Vec::new();
        for (step, (_, seen)) in &st.running {
            parts.push(match seen {
                Some(v) => format!("{step} ({v})"),
                None => step.clone(),
            });
        }
        // The earliest phase something still runs in.
        let phase = st.running.values().map(|(p, _)| *p).min().unwrap_or(0);
        self.bar.set_message(format!("phase {}/{} · {}", phase + 1, st.phases.max(1), parts.join(", ")));
    }
}

impl Default for Terminal {
    fn default() -> Self {
        Terminal::new()
    }
}

impl StackEvents for Terminal {
    fn event(&self, e: &Event<'_>) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match e {
            Event::RunStarted { run, stack, env, selected, resumed, log_dir, .. } => {
                self.bar.println(format!(
                    "{} run {run} of stack {stack} (env {env}): {selected} steps; logs in {}",
                    if *resumed { "continuing" } else { "starting" },
                    log_dir.display()
                ));
            }
            Event::StepStarted { step, phase, phases, .. } => {
                st.width = st.width.max(step.len());
                st.phases = *phases;
                st.running.insert(step.to_string(), (*phase, None));
                self.redraw(&st);
            }
            Event::Output { step, line } => {
                self.bar.println(format!("{step:>w$} | {line}", w = st.width));
            }
            Event::Waiting { step, observed } => {
                if let Some(entry) = st.running.get_mut(*step) {
                    entry.1 = Some(observed.to_string());
                }
                self.redraw(&st);
            }
            Event::StepFinished { step, state, detail, elapsed } => {
                st.running.remove(*step);
                let mark = match state {
                    State::Failed => "✗",
                    State::Pending => "·",
                    _ => "✓",
                };
                let detail = detail.map(|d| format!(": {}", d.lines().next().unwrap_or(""))).unwrap_or_default();
                self.bar.println(format!("{mark} {step} {} in {}{detail}", state.as_str(), human(*elapsed)));
                self.redraw(&st);
            }
            Event::StepSkipped { step, reason } => self.bar.println(format!("- {step} skipped: {reason}")),
            Event::Note { text } => self.bar.println(*text),
            Event::RunFinished { .. } => self.bar.finish_and_clear(),
        }
    }
}

/// `stack status`'s text (and the summary after a run): the run, then one line per step.
pub fn status_text(run: &RunView) -> String {
    let mut out = format!("run {} of stack {} (env {}): {}", run.id, run.stack, run.env, run.status);
    out.push_str(&format!(", started {}", run.started_at));
    if let Some(f) = &run.finished_at {
        out.push_str(&format!(", finished {f}"));
    }
    out.push('\n');
    if let Some(e) = &run.error {
        out.push_str(&format!("  error: {e}\n"));
    }
    let width = run.steps.iter().map(|s| s.name.len()).max().unwrap_or(4).max(4);
    for s in &run.steps {
        let took = match (s.started_ms, s.finished_ms) {
            (Some(a), Some(b)) if b >= a => human(Duration::from_millis((b - a) as u64)),
            (Some(_), None) if s.state().is_active() => "…".to_string(),
            _ => "-".to_string(),
        };
        let mut detail = s.detail.clone().unwrap_or_default();
        if let Some(alive) = s.alive {
            if s.kind == "service" && matches!(s.state(), State::Healthy | State::Started | State::Starting) {
                let pid = s.pid.map(|p| format!("pid {p} ")).unwrap_or_default();
                detail = format!(
                    "{pid}{}{}{detail}",
                    if alive { "running" } else { "NOT RUNNING" },
                    if detail.is_empty() { "" } else { "; " }
                );
            }
        }
        if let Some(code) = s.exit_code {
            if s.state() == State::Failed && !detail.contains("code") {
                detail = format!("exit code {code}; {detail}");
            }
        }
        let first = detail.lines().next().unwrap_or("");
        out.push_str(
            format!("  {:10} {:w$}  {:7} {:>6}  {first}", s.state, s.name, s.kind, took, w = width).trim_end(),
        );
        out.push('\n');
        if s.state() == State::Failed {
            let rest: Vec<&str> = detail.lines().skip(1).collect();
            for l in rest {
                out.push_str(&format!("      {l}\n"));
            }
            if let Some(tail) = &s.log_tail {
                out.push_str(&format!("      last lines of {}:\n", s.log_path.as_deref().unwrap_or("its log")));
                for l in tail.lines() {
                    out.push_str(&format!("      | {l}\n"));
                }
            }
        }
    }
    out
}
