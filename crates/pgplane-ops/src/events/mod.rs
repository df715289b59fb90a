//! How operations report progress: a `Send + Sync` trait that each front end implements
//! (a terminal bar in the CLI, stages of a job row in the control database, log lines).

/// Progress of one operation. Every method has a no-op default.
pub trait Events: Send + Sync {
    /// A stage of the operation begins (`plan`, `apply`, `migrate`, `deploy`, …).
    fn stage(&self, _name: &str, _message: &str) {}
    /// Progress within the current stage: `done` of `total` units of `what`.
    fn progress(&self, _done: u64, _total: u64, _what: &str) {}
    /// The current stage's progress is over (a bar may be cleared).
    fn progress_done(&self) {}
    /// One item of a stage that handles many (a tenant of a fan-out upgrade) reached
    /// `status` (`pending`, `provision`, `migrate`, `done`, `failed`).
    fn item(&self, _name: &str, _status: &str, _message: &str) {}
}

/// Reports nothing.
pub struct Quiet;

impl Events for Quiet {}

// Event-driven provisioning: events from the embedded queue or Kafka become jobs (one
// control-database transaction records each event with its job), in order per key and
// each once; jobs' ends write status events to an outbox. The pure parts (envelope,
// mapping, dispositions) are `pgplane_core::event`.
pub mod admin;
pub mod consume;
pub mod kafka;
pub mod log;
pub mod outbox;
pub mod record;
pub mod service;
