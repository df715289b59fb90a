//! Processes of a stack: who a process is (pid + start time + boot, so a recycled pid is
//! never taken for ours), signals to process groups, and stopping a group with a grace
//! period. Signals go through `kill(1)`: the workspace forbids `unsafe`, and stopping is
//! rare enough that a process per signal costs nothing.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A process as recorded: its pid and `"<boot id>/<start time in clock ticks>"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcId {
    pub pid: i32,
    pub start: String,
}

/// What `/proc/PID/stat` says about a process.
struct Stat {
    state: char,
    pgrp: i32,
    start_ticks: u64,
}

fn stat(pid: i32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid pgrp …`: comm may hold spaces and parentheses.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields after comm start at field 3 (state); start time is field 22.
    Some(Stat {
        state: fields.first()?.chars().next()?,
        pgrp: fields.get(2)?.parse().ok()?,
        start_ticks: fields.get(19)?.parse().ok()?,
    })
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").map(|s| s.trim().to_string()).unwrap_or_default()
}

/// The machine's name, recorded with processes (a pid means nothing on another host).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// Who `pid` is now (`None`: no such process).
pub fn identify(pid: u32) -> Option<ProcId> {
    let pid = i32::try_from(pid).ok()?;
    let st = stat(pid)?;
    Some(ProcId { pid, start: format!("{}/{}", boot_id(), st.start_ticks) })
}

/// The recorded process still runs (same pid, same start time, same boot; not a zombie).
pub fn alive(id: &ProcId) -> bool {
    match stat(id.pid) {
        Some(st) => st.state != 'Z' && format!("{}/{}", boot_id(), st.start_ticks) == id.start,
        None => false,
    }
}

/// Live members of process group `pgid` (zombies excluded).
pub fn group_members(pgid: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| stat(*pid).is_some_and(|st| st.pgrp == pgid && st.state != 'Z'))
        .collect()
}

/// Whether a group led by `leader` (its pgid is the leader's pid) may be signalled: the
/// leader is the recorded process, or it is gone and members remain (a pgid cannot be
/// taken by a new group while members of the old one live).
pub fn group_is_ours(leader: &ProcId) -> bool {
    if alive(leader) {
        return true;
    }
    match stat(leader.pid) {
        // The pid runs again, but it is another process: not ours.
        Some(st) if st.state != 'Z' => false,
        _ => !group_members(leader.pid).is_empty(),
    }
}

/// Sends `signal` (`TERM`, `KILL`) to the process group `pgid`.
pub fn signal_group(pgid: i32, signal: &str) -> bool {
    std::process::Command::new("kill")
        .args(["-s", signal, "--", &format!("-{pgid}")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Sends `signal` to one process.
pub fn signal(pid: i32, signal: &str) -> bool {
    std::process::Command::new("kill")
        .args(["-s", signal, "--", &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// How stopping a group ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// It was not running (or the pid now belongs to another process).
    NotRunning,
    /// It ended within the grace period after SIGTERM.
    Terminated,
    /// It was still there after the grace period: SIGKILL.
    Killed,
}

/// SIGTERM to the group led by `leader`, then SIGKILL once `grace` has passed.
pub async fn stop_group(leader: &ProcId, grace: Duration) -> Stopped {
    if !group_is_ours(leader) {
        return Stopped::NotRunning;
    }
    signal_group(leader.pid, "TERM");
    let deadline = tokio::time::Instant::now() + grace;
    while tokio::time::Instant::now() < deadline {
        if group_members(leader.pid).is_empty() {
            return Stopped::Terminated;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if group_members(leader.pid).is_empty() {
        return Stopped::Terminated;
    }
    signal_group(leader.pid, "KILL");
    for _ in 0..40 {
        if group_members(leader.pid).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Stopped::Killed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_identified_and_a_changed_start_is_not_it() {
        let me = identify(std::process::id()).expect("this process");
        assert!(alive(&me));
        let other = ProcId { pid: me.pid, start: format!("{}0", me.start) };
        assert!(!alive(&other));
        assert!(!group_is_ours(&ProcId { pid: i32::MAX - 1, start: "x/1".into() }));
    }
}
