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
