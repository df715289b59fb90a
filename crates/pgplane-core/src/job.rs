//! The life of a durable job, as pure decisions: which status follows which event, when a
//! failed attempt is tried again, and when a job is given up. The queue
//! (`pgplane_ops::jobs`) writes exactly these decisions to the control database, each
//! guarded by the attempt it belongs to, so a worker that lost its lease cannot change a
//! job another worker now runs.
//!
//! ```text
//!            claim                 succeed
//!   queued ─────────► running ───────────────► succeeded
//!     ▲  │              │  │ fail (retryable, attempts left) ──► queued (after a backoff)
//!     │  │ cancel       │  │ fail (otherwise) ───────────────► failed
//!     │  ▼              │  │ cancel requested, then it stops ─► cancelled
//!     │ cancelled       │  │ lease lapsed (attempts left) ────► queued
//!     └──── hand back ──┘  └ lease lapsed (no attempts left) ─► failed
//! ```

use std::fmt;
use std::time::Duration;

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    /// Waiting for a worker (also between attempts).
    Queued,
    /// A worker holds its lease and runs it.
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobStatus {
    pub const ALL: [JobStatus; 5] =
        [JobStatus::Queued, JobStatus::Running, JobStatus::Succeeded, JobStatus::Failed, JobStatus::Cancelled];

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<JobStatus> {
        JobStatus::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Succeeded, failed and cancelled jobs never change again.
    pub fn is_final(self) -> bool {
        matches!(self, JobStatus::Succeeded | JobStatus::Failed | JobStatus::Cancelled)
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What happens to a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A worker takes it (and its lease).
    Claim,
    /// The attempt ended well.
    Succeed,
    /// The attempt ended with an error; `retryable` when trying again may help (a server
    /// that was unavailable, a lock held by someone else).
    Fail { retryable: bool },
    /// Someone asked to cancel it (`job cancel`, `DELETE /operations/{id}`).
    RequestCancel,
    /// The worker stopped before the attempt ended, on purpose (graceful shutdown): the
    /// attempt does not count.
    HandBack,
    /// The worker's lease lapsed (its process died or lost the control database).
    LeaseLapsed,
    /// An operator runs a failed or cancelled job again (`pgplane events retry`): it goes
    /// back to the queue with fresh attempts, keeping its id (and so its place among the
    /// jobs of its key).
    Requeue,
}

/// A job as far as its life is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Life {
    pub status: JobStatus,
    /// Attempts started so far (a claim starts one).
    pub attempts: i32,
    pub max_attempts: i32,
    pub cancel_requested: bool,
}

/// What follows an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Next {
    pub status: JobStatus,
    pub attempts: i32,
    pub cancel_requested: bool,
    /// When a job goes back to the queue: not before this long from now.
    pub retry_after: Option<Duration>,
}

/// An event that cannot happen to a job in its state (the caller lost a race; nothing
/// is written).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a {status} job cannot {event}")]
pub struct Refused {
    pub status: JobStatus,
    pub event: &'static str,
}

impl Event {
    fn verb(self) -> &'static str {
        match self {
            Event::Claim => "be claimed",
            Event::Succeed => "succeed",
            Event::Fail { .. } => "fail",
            Event::RequestCancel => "be cancelled",
            Event::HandBack => "be handed back",
            Event::LeaseLapsed => "lose its lease",
            Event::Requeue => "be requeued",
        }
    }
}

/// The next state of a job after `event`.
pub fn next(life: Life, event: Event) -> Result<Next, Refused> {
    let refuse = || Refused { status: life.status, event: event.verb() };
    let keep = |status: JobStatus| Next {
        status,
        attempts: life.attempts,
        cancel_requested: life.cancel_requested,
        retry_after: None,
    };
    let attempts_left = life.attempts < life.max_attempts;
    Ok(match (life.status, event) {
        (JobStatus::Queued, Event::Claim) if life.cancel_requested => return Err(refuse()),
        (JobStatus::Queued, Event::Claim) => Next { attempts: life.attempts + 1, ..keep(JobStatus::Running) },
        (JobStatus::Queued, Event::RequestCancel) => Next { cancel_requested: true, ..keep(JobStatus::Cancelled) },
        // A running job is told through its heartbeat and stops at its next safe point.
        (JobStatus::Running, Event::RequestCancel) => Next { cancel_requested: true, ..keep(JobStatus::Running) },
        (JobStatus::Running, Event::Succeed) => keep(JobStatus::Succeeded),
        (JobStatus::Running, Event::Fail { .. }) if life.cancel_requested => keep(JobStatus::Cancelled),
        (JobStatus::Running, Event::Fail { retryable: true }) if attempts_left => {
            Next { retry_after: Some(backoff(life.attempts)), ..keep(JobStatus::Queued) }
        }
        (JobStatus::Running, Event::Fail { .. }) => keep(JobStatus::Failed),
        (JobStatus::Running, Event::HandBack) if life.cancel_requested => keep(JobStatus::Cancelled),
        (JobStatus::Running, Event::HandBack) => {
            Next { attempts: life.attempts - 1, retry_after: Some(Duration::ZERO), ..keep(JobStatus::Queued) }
        }
        (JobStatus::Running, Event::LeaseLapsed) if life.cancel_requested => keep(JobStatus::Cancelled),
        (JobStatus::Running, Event::LeaseLapsed) if attempts_left => {
            Next { retry_after: Some(Duration::ZERO), ..keep(JobStatus::Queued) }
        }
        (JobStatus::Running, Event::LeaseLapsed) => keep(JobStatus::Failed),
        (JobStatus::Failed | JobStatus::Cancelled, Event::Requeue) => {
            Next { status: JobStatus::Queued, attempts: 0, cancel_requested: false, retry_after: Some(Duration::ZERO) }
        }
        _ => return Err(refuse()),
    })
}

/// How long a failed attempt waits before the next: 1 s, 2 s, 4 s, … at most a minute.
pub fn backoff(attempt: i32) -> Duration {
    let exp = u32::try_from(attempt.clamp(1, 7) - 1).unwrap_or(0);
    Duration::from_secs(1u64 << exp).min(Duration::from_secs(60))
}

/// One stage of a job with its last message: `plan`, `apply`, `migrate`, a tenant's
/// `migrate acme`… Stages are shown in order; the last one is the current one while the
/// job runs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Stage {
    pub name: String,
    /// `running`, `done` or `failed`.
    pub status: String,
    pub message: String,
    /// RFC 3339, UTC, from the worker's clock.
    pub at: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn life(status: JobStatus, attempts: i32) -> Life {
        Life { status, attempts, max_attempts: 3, cancel_requested: false }
    }

    #[test]
    fn only_ended_jobs_are_requeued_with_fresh_attempts() {
        for status in JobStatus::ALL {
            let r = next(Life { cancel_requested: true, ..life(status, 3) }, Event::Requeue);
            match status {
                JobStatus::Failed | JobStatus::Cancelled => {
                    let n = r.expect("requeued");
                    assert_eq!((n.status, n.attempts, n.cancel_requested), (JobStatus::Queued, 0, false));
                }
                _ => assert!(r.is_err(), "{status} cannot be requeued"),
            }
        }
    }

    /// Every (status, event) pair: what follows, or that it is refused. A change to the
    /// state machine shows here as a diff.
    #[test]
    fn every_transition() {
        let events = [
            Event::Claim,
            Event::Succeed,
            Event::Fail { retryable: false },
            Event::Fail { retryable: true },
            Event::RequestCancel,
            Event::HandBack,
            Event::LeaseLapsed,
        ];
        let mut out = String::new();
        for status in JobStatus::ALL {
            for cancel_requested in [false, true] {
                for attempts in [1, 3] {
                    for e in events {
                        let l = Life { cancel_requested, ..life(status, attempts) };
                        let r = match next(l, e) {
                            Ok(n) => format!(
                                "{} a={}{}{}",
                                n.status,
                                n.attempts,
                                if n.cancel_requested { " cancel" } else { "" },
                                n.retry_after.map(|d| format!(" after={}s", d.as_secs())).unwrap_or_default()
                            ),
                            Err(r) => format!("refused: {r}"),
                        };
                        out.push_str(&format!(
                            "{status}{} a={attempts} {e:?} -> {r}\n",
                            if cancel_requested { "+cancel" } else { "" }
                        ));
                    }
                }
            }
        }
        // Final states refuse everything; only the interesting lines are checked below.
        for line in
            out.lines().filter(|l| l.starts_with("succeeded") || l.starts_with("failed") || l.starts_with("cancelled"))
        {
            assert!(line.contains("refused"), "{line}");
        }
        let live: String = out
            .lines()
            .filter(|l| l.starts_with("queued") || l.starts_with("running"))
            .map(|l| format!("{l}\n"))
            .collect();
        expect_test::expect![[r#"
            queued a=1 Claim -> running a=2
            queued a=1 Succeed -> refused: a queued job cannot succeed
            queued a=1 Fail { retryable: false } -> refused: a queued job cannot fail
            queued a=1 Fail { retryable: true } -> refused: a queued job cannot fail
            queued a=1 RequestCancel -> cancelled a=1 cancel
            queued a=1 HandBack -> refused: a queued job cannot be handed back
            queued a=1 LeaseLapsed -> refused: a queued job cannot lose its lease
            queued a=3 Claim -> running a=4
            queued a=3 Succeed -> refused: a queued job cannot succeed
            queued a=3 Fail { retryable: false } -> refused: a queued job cannot fail
            queued a=3 Fail { retryable: true } -> refused: a queued job cannot fail
            queued a=3 RequestCancel -> cancelled a=3 cancel
            queued a=3 HandBack -> refused: a queued job cannot be handed back
            queued a=3 LeaseLapsed -> refused: a queued job cannot lose its lease
            queued+cancel a=1 Claim -> refused: a queued job cannot be claimed
            queued+cancel a=1 Succeed -> refused: a queued job cannot succeed
            queued+cancel a=1 Fail { retryable: false } -> refused: a queued job cannot fail
            queued+cancel a=1 Fail { retryable: true } -> refused: a queued job cannot fail
            queued+cancel a=1 RequestCancel -> cancelled a=1 cancel
            queued+cancel a=1 HandBack -> refused: a queued job cannot be handed back
            queued+cancel a=1 LeaseLapsed -> refused: a queued job cannot lose its lease
            queued+cancel a=3 Claim -> refused: a queued job cannot be claimed
            queued+cancel a=3 Succeed -> refused: a queued job cannot succeed
            queued+cancel a=3 Fail { retryable: false } -> refused: a queued job cannot fail
            queued+cancel a=3 Fail { retryable: true } -> refused: a queued job cannot fail
            queued+cancel a=3 RequestCancel -> cancelled a=3 cancel
            queued+cancel a=3 HandBack -> refused: a queued job cannot be handed back
            queued+cancel a=3 LeaseLapsed -> refused: a queued job cannot lose its lease
            running a=1 Claim -> refused: a running job cannot be claimed
            running a=1 Succeed -> succeeded a=1
            running a=1 Fail { retryable: false } -> failed a=1
            running a=1 Fail { retryable: true } -> queued a=1 after=1s
            running a=1 RequestCancel -> running a=1 cancel
            running a=1 HandBack -> queued a=0 after=0s
            running a=1 LeaseLapsed -> queued a=1 after=0s
            running a=3 Claim -> refused: a running job cannot be claimed
            running a=3 Succeed -> succeeded a=3
            running a=3 Fail { retryable: false } -> failed a=3
            running a=3 Fail { retryable: true } -> failed a=3
            running a=3 RequestCancel -> running a=3 cancel
            running a=3 HandBack -> queued a=2 after=0s
            running a=3 LeaseLapsed -> failed a=3
            running+cancel a=1 Claim -> refused: a running job cannot be claimed
            running+cancel a=1 Succeed -> succeeded a=1 cancel
            running+cancel a=1 Fail { retryable: false } -> cancelled a=1 cancel
            running+cancel a=1 Fail { retryable: true } -> cancelled a=1 cancel
            running+cancel a=1 RequestCancel -> running a=1 cancel
            running+cancel a=1 HandBack -> cancelled a=1 cancel
            running+cancel a=1 LeaseLapsed -> cancelled a=1 cancel
            running+cancel a=3 Claim -> refused: a running job cannot be claimed
            running+cancel a=3 Succeed -> succeeded a=3 cancel
            running+cancel a=3 Fail { retryable: false } -> cancelled a=3 cancel
            running+cancel a=3 Fail { retryable: true } -> cancelled a=3 cancel
            running+cancel a=3 RequestCancel -> running a=3 cancel
            running+cancel a=3 HandBack -> cancelled a=3 cancel
            running+cancel a=3 LeaseLapsed -> cancelled a=3 cancel
        "#]]
        .assert_eq(&live);
    }

    #[test]
    fn backoff_doubles_up_to_a_minute() {
        let secs: Vec<u64> = (0..10).map(|a| backoff(a).as_secs()).collect();
        assert_eq!(secs, [1, 1, 2, 4, 8, 16, 32, 60, 60, 60]);
    }

    #[test]
    fn statuses_round_trip() {
        for s in JobStatus::ALL {
            assert_eq!(JobStatus::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_string(&s).ok(), Some(format!("\"{s}\"")));
        }
        assert_eq!(JobStatus::parse("RUNNING"), None);
    }
}
