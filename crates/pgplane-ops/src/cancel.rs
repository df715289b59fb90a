//! Stopping running operations: on SIGINT/SIGTERM, or, in a process that handles signals
//! itself (`pgplane serve`), when it asks.

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

tokio::task_local! {
    static CURRENT: Cancel;
}

/// Runs `f` as one operation that `cancel` can stop: [`stop_requested`] inside it also
/// resolves when `cancel` is cancelled (a job's cancel request, a lost lease, a shutdown).
pub async fn scope<F: std::future::Future>(cancel: Cancel, f: F) -> F::Output {
    CURRENT.scope(cancel, f).await
}

/// The cancel handle of the operation running in this task, if it runs under [`scope`].
pub fn current() -> Option<Cancel> {
    CURRENT.try_with(Clone::clone).ok()
}

/// Resolves (with the reason) when the running operation should stop: its own cancel
/// handle (see [`scope`]) is cancelled, or the process is asked to stop — SIGINT or
/// SIGTERM, or, in a process that handles signals itself, [`request_stop`].
pub async fn stop_requested() -> String {
    match current() {
        Some(cancel) => tokio::select! {
            reason = cancel.cancelled() => reason,
            signal = process_stop_requested() => signal.to_string(),
        },
        None => process_stop_requested().await.to_string(),
    }
}

/// Resolves when the whole process should stop (signal or [`request_stop`]).
async fn process_stop_requested() -> &'static str {
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

/// A cancellation handle for one operation: cloned into everything the operation runs,
/// cancelled by whoever may stop it (a job's heartbeat seeing a cancel request or a lost
/// lease, a shutdown, the CLI's signal handler). Operations check it at safe points and
/// race it against long statements (which they then cancel on the server).
#[derive(Clone, Debug)]
pub struct Cancel {
    tx: std::sync::Arc<tokio::sync::watch::Sender<Option<String>>>,
}

impl Default for Cancel {
    fn default() -> Self {
        Cancel::new()
    }
}

impl Cancel {
    pub fn new() -> Cancel {
        Cancel { tx: std::sync::Arc::new(tokio::sync::watch::channel(None).0) }
    }

    /// Asks the operation to stop; the first reason given is kept.
    pub fn cancel(&self, reason: impl Into<String>) {
        let reason = reason.into();
        self.tx.send_if_modified(|r| {
            if r.is_none() {
                *r = Some(reason);
                true
            } else {
                false
            }
        });
    }

    /// Why the operation was asked to stop, if it was.
    pub fn reason(&self) -> Option<String> {
        self.tx.borrow().clone()
    }

    /// Resolves (with the reason) once the operation is asked to stop. Works from any runtime.
    pub async fn cancelled(&self) -> String {
        let mut rx = self.tx.subscribe();
        loop {
            if let Some(r) = rx.borrow_and_update().clone() {
                return r;
            }
            if rx.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// An error if the operation was asked to stop: call it between steps.
    pub fn check(&self) -> crate::error::Result<()> {
        match self.reason() {
            Some(r) => Err(crate::error::Error::Cancelled(format!("stopped: {r}"))),
            None => Ok(()),
        }
    }
}
