//! Durable jobs: every long operation is a row in the control database (`queue`), run by
//! workers in any pgplane process (`worker`) under a lease, and recovered by the elected
//! leader when its worker dies (`leader`).

pub mod leader;
pub mod node;
pub mod queue;
pub mod worker;

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;

use pgplane_core::job::Stage;

pub use queue::{Attempt, Beat, Filter, Finish, Job, NewJob};

use crate::cancel::Cancel;
use crate::error::Error;
use crate::events::Events;

/// What a successful attempt reports.
#[derive(Debug, Clone, Default)]
pub struct Done {
    pub changes: i32,
    pub result: Option<serde_json::Value>,
    /// The operation ended and its outcome is a failure to report, although nothing went
    /// wrong running it (a branch whose deployment FAILED): the job fails, not retried.
    pub failed: Option<String>,
}

/// Runs jobs of the kinds it knows. Called on a worker slot's own thread and runtime, so
/// its future need not be `Send`.
pub trait Runner: Send + Sync + 'static {
    fn run<'a>(
        &'a self,
        job: &'a Job,
        events: &'a dyn Events,
        cancel: &'a Cancel,
    ) -> Pin<Box<dyn Future<Output = Result<Done, Error>> + 'a>>;
}

/// A job's progress, kept as its stages: written to the job row by the heartbeat and at
/// the end, and logged (every log line carries the job's span: id, kind, env, resource).
#[derive(Default)]
pub struct JobEvents {
    stages: Mutex<Vec<Stage>>,
    dirty: std::sync::atomic::AtomicBool,
}

pub fn now_rfc3339() -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    rfc3339(now.as_secs() as i64, now.subsec_millis())
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` from Unix seconds (civil-from-days, proleptic Gregorian).
pub fn rfc3339(secs: i64, millis: u32) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

impl JobEvents {
    pub fn new(stages: Vec<Stage>) -> JobEvents {
        JobEvents { stages: Mutex::new(stages), dirty: Default::default() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Stage>> {
        self.stages.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The stages, if they changed since the last call (for the heartbeat to save).
    pub fn take_changed(&self) -> Option<Vec<Stage>> {
        self.dirty.swap(false, std::sync::atomic::Ordering::AcqRel).then(|| self.lock().clone())
    }

    /// The stages with the current one closed as `done` or `failed`.
    pub fn finished(&self, ok: bool) -> Vec<Stage> {
        let mut s = self.lock();
        if let Some(last) = running(&mut s) {
            last.status = if ok { "done" } else { "failed" }.to_string();
        }
        s.clone()
    }
}

/// The stage that runs now: the last one `running` (items of a stage, with statuses of
/// their own, may follow it).
fn running(stages: &mut [Stage]) -> Option<&mut Stage> {
    stages.iter_mut().rev().find(|s| s.status == "running")
}

impl Events for JobEvents {
    fn stage(&self, name: &str, message: &str) {
        let mut s = self.lock();
        match running(&mut s) {
            Some(last) if last.name == name => {
                if last.message != message {
                    last.message = message.to_string();
                }
            }
            _ => {
                if let Some(last) = running(&mut s) {
                    last.status = "done".to_string();
                }
                tracing::info!(stage = name, message, "stage");
                s.push(Stage {
                    name: name.to_string(),
                    status: "running".to_string(),
                    message: message.to_string(),
                    at: now_rfc3339(),
                });
            }
        }
        self.dirty.store(true, std::sync::atomic::Ordering::Release);
    }

    fn progress(&self, done: u64, total: u64, what: &str) {
        let mut s = self.lock();
        if let Some(last) = running(&mut s) {
            last.message = format!("{done}/{total} {what}");
            self.dirty.store(true, std::sync::atomic::Ordering::Release);
        }
    }

    /// An item is a stage of its own, named `item:NAME`, whose status is the item's.
    fn item(&self, name: &str, status: &str, message: &str) {
        let key = format!("item:{name}");
        let mut s = self.lock();
        let at = now_rfc3339();
        match s.iter_mut().find(|st| st.name == key) {
            Some(st) => {
                st.status = status.to_string();
                st.message = message.to_string();
                st.at = at;
            }
            None => s.push(Stage { name: key, status: status.to_string(), message: message.to_string(), at }),
        }
        if matches!(status, "done" | "failed") {
            tracing::info!(item = name, status, message, "item");
        }
        self.dirty.store(true, std::sync::atomic::Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_of_known_instants() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(rfc3339(1_795_000_000, 999), "2026-11-18T11:06:40.999Z");
    }

    #[test]
    fn stages_open_and_close() {
        let e = JobEvents::default();
        e.stage("plan", "reading the catalog");
        e.stage("plan", "3 changes");
        e.stage("apply", "running");
        e.progress(1, 3, "actions");
        let changed = e.take_changed().unwrap_or_default();
        let summary: Vec<(String, String, String)> =
            changed.iter().map(|s| (s.name.clone(), s.status.clone(), s.message.clone())).collect();
        assert_eq!(
            summary,
            [
                ("plan".into(), "done".into(), "3 changes".into()),
                ("apply".into(), "running".into(), "1/3 actions".into())
            ]
        );
        assert!(e.take_changed().is_none(), "nothing changed since");
        assert_eq!(e.finished(false).last().map(|s| s.status.as_str()), Some("failed"));
    }

    #[test]
    fn items_keep_their_status_beside_the_running_stage() {
        let e = JobEvents::default();
        e.stage("upgrade", "2 tenants");
        e.item("acme", "pending", "");
        e.item("globex", "pending", "");
        e.item("acme", "migrate", "1.0 -> 2.0");
        e.progress(0, 2, "tenants upgraded");
        e.item("acme", "done", "applied 3");
        e.stage("summary", "1 done");
        let all: Vec<(String, String)> = e.finished(true).iter().map(|s| (s.name.clone(), s.status.clone())).collect();
        assert_eq!(
            all,
            [
                ("upgrade".into(), "done".into()),
                ("item:acme".into(), "done".into()),
                ("item:globex".into(), "pending".into()),
                ("summary".into(), "done".into())
            ]
        );
    }
}
