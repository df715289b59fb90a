//! The scheduler: given a stack, the state of each step and which steps this run runs,
//! which steps may start now and which can never run. Pure; the runner calls [`decide`]
//! after every change and does what it says.
//!
//! Rules, in the order they are applied:
//! - A step runs only when it is selected (`--only`, `--from` and `--resume` select; the
//!   others are left as they are, and a need on a step that is not selected counts as met).
//! - A need is met when its step reached the condition: `completed`; `healthy` (a service's
//!   check passed); `started` (a service launched, or any other step began). A need whose
//!   step failed, was skipped or was stopped is never met: the step is **skipped**, and so,
//!   in turn, is whatever needs it.
//! - Groups: a member of an `exclusive` group starts only when no other member is active
//!   and every member before it (file order) has finished (completed, up, failed or
//!   skipped); a `parallel` group has at most `max` members active at once.
//! - After a failure without `--keep-going` (`stopping`), nothing new starts.

use serde::{Deserialize, Serialize};

use super::{Condition, GroupMode, Stack};

/// A step's state, as recorded in the control database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Not started (yet).
    Pending,
    /// A command or SQL is running.
    Running,
    /// A wait is polling its condition.
    Waiting,
    /// A service's process runs; its health check has not passed yet.
    Starting,
    /// A service without health check runs.
    Started,
    /// A service runs and its health check passed.
    Healthy,
    Completed,
    Failed,
    /// Not run because something it needs failed or was skipped.
    Skipped,
    /// A service stopped by `stack down`.
    Stopped,
}

impl State {
    pub const ALL: [State; 10] = [
        State::Pending,
        State::Running,
        State::Waiting,
        State::Starting,
        State::Started,
        State::Healthy,
        State::Completed,
        State::Failed,
        State::Skipped,
        State::Stopped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Running => "running",
            State::Waiting => "waiting",
            State::Starting => "starting",
            State::Started => "started",
            State::Healthy => "healthy",
            State::Completed => "completed",
            State::Failed => "failed",
            State::Skipped => "skipped",
            State::Stopped => "stopped",
        }
    }

    pub fn parse(s: &str) -> Option<State> {
        State::ALL.into_iter().find(|x| x.as_str() == s)
    }

    /// Takes a slot of its group: something is in progress.
    pub fn is_active(self) -> bool {
        matches!(self, State::Running | State::Waiting | State::Starting)
    }

    /// Reached its goal: completed, or a service that is up.
    pub fn is_done(self) -> bool {
        matches!(self, State::Completed | State::Started | State::Healthy)
    }

    /// Nothing more happens to it in this run.
    pub fn is_final(self) -> bool {
        self.is_done() || matches!(self, State::Failed | State::Skipped | State::Stopped)
    }
}

/// Whether `state` meets `condition`: `Some(true)` yes, `Some(false)` not yet, `None` never.
pub fn meets(condition: Condition, state: State) -> Option<bool> {
    if matches!(state, State::Failed | State::Skipped | State::Stopped) {
        return None;
    }
    Some(match condition {
        Condition::Completed => state == State::Completed,
        Condition::Healthy => state == State::Healthy,
        Condition::Started => state != State::Pending,
    })
}

/// What the runner should do now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision {
    /// Steps to start, in file order.
    pub start: Vec<usize>,
    /// Steps that can never run, with the reason.
    pub skip: Vec<(usize, String)>,
}

/// Decides which selected pending steps start now and which are skipped. `states` and
/// `selected` have one entry per step.
pub fn decide(stack: &Stack, states: &[State], selected: &[bool], stopping: bool) -> Decision {
    let mut st = states.to_vec();
    let mut decision = Decision::default();
    // Skips propagate: repeat until nothing changes.
    loop {
        let mut changed = false;
        for (i, step) in stack.steps.iter().enumerate() {
            if !selected[i] || st[i] != State::Pending {
                continue;
            }
            let blocked = step.needs.iter().find(|n| selected[n.step] && meets(n.condition, st[n.step]).is_none());
            if let Some(n) = blocked {
                let target = &stack.steps[n.step].name;
                let why = match st[n.step] {
                    State::Failed => format!("needs {target}, which failed"),
                    State::Stopped => format!("needs {target}, which was stopped"),
                    _ => format!("needs {target}, which was skipped"),
                };
                st[i] = State::Skipped;
                decision.skip.push((i, why));
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    if stopping {
        return decision;
    }
    for (i, step) in stack.steps.iter().enumerate() {
        if !selected[i] || st[i] != State::Pending {
            continue;
        }
        let ready = step.needs.iter().all(|n| !selected[n.step] || meets(n.condition, st[n.step]) == Some(true));
        if !ready || !group_allows(stack, &st, selected, i) {
            continue;
        }
        st[i] = State::Running;
        decision.start.push(i);
    }
    decision
}

fn group_allows(stack: &Stack, st: &[State], selected: &[bool], i: usize) -> bool {
    let Some(group) = stack.steps[i].group.as_ref().and_then(|g| stack.groups.get(g)) else { return true };
    let members = || stack.steps.iter().enumerate().filter(|(_, s)| s.group.as_deref() == Some(group.name.as_str()));
    let active = members().filter(|(j, _)| st[*j].is_active()).count();
    match group.mode {
        GroupMode::Exclusive => {
            active == 0 && members().take_while(|(j, _)| *j < i).all(|(j, _)| !selected[j] || st[j].is_final())
        }
        GroupMode::Parallel => group.max.is_none_or(|max| active < max),
    }
}

/// The state a step ends in when it succeeds.
pub fn done_state(stack: &Stack, i: usize) -> State {
    let s = &stack.steps[i];
    match (s.is_service(), s.has_health()) {
        (true, true) => State::Healthy,
        (true, false) => State::Started,
        _ => State::Completed,
    }
}

/// The order `--dry-run` shows: waves of steps that would start together if every step
/// succeeded at once. An exclusive group's members land in successive phases; a parallel
/// group's are cut into waves of `max`.
pub fn phases(stack: &Stack, selected: &[bool]) -> Vec<Vec<usize>> {
    let mut st = vec![State::Pending; stack.steps.len()];
    let mut out = Vec::new();
    loop {
        let d = decide(stack, &st, selected, false);
        if d.start.is_empty() {
            break;
        }
        for &i in &d.start {
            st[i] = done_state(stack, i);
        }
        out.push(d.start);
    }
    out
}

/// The phase of each step in [`phases`] (`None`: not selected).
pub fn phase_of(phases: &[Vec<usize>], steps: usize) -> Vec<Option<usize>> {
    let mut out = vec![None; steps];
    for (p, wave) in phases.iter().enumerate() {
        for &i in wave {
            out[i] = Some(p);
        }
    }
    out
}

/// `--dry-run`'s text: the phases and, per step, what it is and what it waits for.
pub fn render_phases(stack: &Stack, phases: &[Vec<usize>], selected: &[bool]) -> String {
    let width = stack.steps.iter().map(|s| s.name.len()).max().unwrap_or(0);
    let runs = selected.iter().filter(|s| **s).count();
    let mut out = format!(
        "stack {} ({}): {} of {} steps in {} phases\n",
        stack.name,
        stack.file.display(),
        runs,
        stack.steps.len(),
        phases.len()
    );
    for (p, wave) in phases.iter().enumerate() {
        out.push_str(&format!("phase {}\n", p + 1));
        for &i in wave {
            let s = &stack.steps[i];
            let mut notes = Vec::new();
            if let Some(g) = s.group.as_ref().and_then(|g| stack.groups.get(g)) {
                notes.push(match (g.mode, g.max) {
                    (GroupMode::Exclusive, _) => format!("group {} (exclusive)", g.name),
                    (GroupMode::Parallel, Some(m)) => format!("group {} (parallel, max {m})", g.name),
                    (GroupMode::Parallel, None) => format!("group {} (parallel)", g.name),
                });
            }
            if !s.needs.is_empty() {
                let needs: Vec<String> = s
                    .needs
                    .iter()
                    .map(|n| match n.condition {
                        Condition::Completed => stack.steps[n.step].name.clone(),
                        c => format!("{} ({})", stack.steps[n.step].name, c.as_str()),
                    })
                    .collect();
                notes.push(format!("needs {}", needs.join(", ")));
            }
            if let Some(a) = &s.access {
                let mut who = Vec::new();
                if let Some(m) = &a.module {
                    who.push(format!("module {m}"));
                }
                if let Some(t) = &a.tenant {
                    who.push(format!("tenant {t}"));
                }
                if let Some(r) = &a.role {
                    who.push(format!("role {r}"));
                }
                if let Some(d) = &a.database {
                    who.push(format!("database {d}"));
                }
                notes.push(who.join(" "));
            }
            out.push_str(format!("  {:width$}  {:8} {}", s.name, s.kind.as_str(), notes.join("; ")).trim_end());
            out.push('\n');
        }
    }
    let skipped: Vec<&str> =
        stack.steps.iter().enumerate().filter(|(i, _)| !selected[*i]).map(|(_, s)| s.name.as_str()).collect();
    if !skipped.is_empty() {
        out.push_str(&format!("not run: {}\n", skipped.join(", ")));
    }
    out
}
