//! Request coalescing for hot catalog reads: concurrent requests for the same thing share
//! one query, and no answer is older than its request. A request joins the query that
//! will start next (never one already running); that query starts when the running one
//! ends. So per key at most one query runs and one gathers waiters: with N portals polling
//! the same database the server runs one catalog query at a time instead of N.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::StatusCode;
use tokio::sync::{watch, Semaphore};

use super::error::ApiError;

/// A query that hangs (a stuck backend) must not hold its waiters forever.
const QUERY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// A finished query's answer: the JSON body, or the error (kept as parts: shared).
type Answer = Arc<Result<Bytes, (StatusCode, &'static str, String)>>;

#[derive(Default)]
pub struct Coalescer {
    slots: Mutex<HashMap<String, Slot>>,
}

struct Slot {
    /// One query at a time per key.
    running: Arc<Semaphore>,
    /// The next query's answer, for requests that arrive before it starts.
    next: Option<watch::Receiver<Option<Answer>>>,
}

impl Coalescer {
    /// Runs `query` for `key`, or waits for the next run of it that starts after now.
    pub async fn run<F, Fut>(&self, key: String, query: F) -> Result<Bytes, ApiError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Bytes, ApiError>>,
    {
        let (running, lead) = {
            let mut slots = self.slots.lock().map_err(|_| anyhow::anyhow!("coalescer poisoned"))?;
            let slot =
                slots.entry(key.clone()).or_insert_with(|| Slot { running: Arc::new(Semaphore::new(1)), next: None });
            match &slot.next {
                // Someone waits to run the next query (and is still alive): wait for its answer.
                Some(rx) if rx.has_changed().is_ok() => (slot.running.clone(), Err(rx.clone())),
                _ => {
                    let (tx, rx) = watch::channel(None);
                    slot.next = Some(rx);
                    (slot.running.clone(), Ok(tx))
                }
            }
        };
        let tx = match lead {
            Err(mut rx) => loop {
                if let Some(answer) = rx.borrow_and_update().clone() {
                    return shared(&answer);
                }
                if rx.changed().await.is_err() {
                    // The leader went away (its client hung up) before answering: run it ourselves.
                    return Box::pin(self.run(key, query)).await;
                }
            },
            Ok(tx) => tx,
        };
        let _turn = running.acquire().await.map_err(|_| anyhow::anyhow!("coalescer closed"))?;
        // From here on, new requests gather for the query after this one.
        if let Ok(mut slots) = self.slots.lock() {
            if let Some(slot) = slots.get_mut(&key) {
                slot.next = None;
            }
        }
        let answer = match tokio::time::timeout(QUERY_TIMEOUT, query()).await {
            Ok(result) => result,
            Err(_) => Err(ApiError::unavailable(format!(
                "the catalog query did not answer within {}s",
                QUERY_TIMEOUT.as_secs()
            ))),
        };
        let answer: Answer = Arc::new(answer.map_err(|e| (e.status, e.code, e.message)));
        tx.send_replace(Some(answer.clone()));
        // Forget the key when nobody else is queued for it (keys come from requests).
        if let Ok(mut slots) = self.slots.lock() {
            if slots.get(&key).is_some_and(|s| s.next.is_none() && Arc::strong_count(&s.running) <= 2) {
                slots.remove(&key);
            }
        }
        shared(&answer)
    }
}

fn shared(answer: &Answer) -> Result<Bytes, ApiError> {
    match answer.as_ref() {
        Ok(body) => Ok(body.clone()),
        Err((status, code, message)) => Err(ApiError::new(*status, code, message.clone())),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    /// Each answer is the number of the query that produced it.
    async fn ask(c: &Coalescer, runs: &AtomicUsize, key: &str) -> usize {
        let body = c
            .run(key.to_string(), || async {
                let n = runs.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
                Ok(Bytes::from(n.to_string()))
            })
            .await
            .expect("answer");
        String::from_utf8_lossy(&body).parse().expect("number")
    }

    #[tokio::test]
    async fn requests_share_the_next_query_never_a_running_one() {
        let c = Coalescer::default();
        let runs = AtomicUsize::new(0);
        let first = ask(&c, &runs, "db");
        let later = async {
            // Arrive while query 1 runs: all three share query 2, which starts after it.
            tokio::time::sleep(Duration::from_millis(30)).await;
            tokio::join!(ask(&c, &runs, "db"), ask(&c, &runs, "db"), ask(&c, &runs, "db"))
        };
        let other = async {
            tokio::time::sleep(Duration::from_millis(30)).await;
            ask(&c, &runs, "other").await
        };
        let (a, (b, c2, d), o) = tokio::join!(first, later, other);
        assert_eq!(a, 1);
        assert_eq!((b, c2, d), (3, 3, 3), "one query for the three, after the first one");
        assert_eq!(o, 2, "another key does not wait");
        assert_eq!(runs.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn errors_are_shared_and_a_vanished_leader_is_replaced() {
        let c = Coalescer::default();
        let e = c.run("k".into(), || async { Err(ApiError::not_found("gone")) }).await.expect_err("shared error");
        assert_eq!((e.status, e.code, e.message.as_str()), (StatusCode::NOT_FOUND, "not_found", "gone"));
        // A leader whose request is dropped before it answers: the waiter runs the query.
        let runs = AtomicUsize::new(0);
        let blocker = ask(&c, &runs, "k");
        let abandoned = async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let _ = tokio::time::timeout(Duration::from_millis(10), ask(&c, &runs, "k")).await;
        };
        let waiter = async {
            tokio::time::sleep(Duration::from_millis(25)).await;
            ask(&c, &runs, "k").await
        };
        let (_, _, w) = tokio::join!(blocker, abandoned, waiter);
        assert_eq!(w, 2);
    }
}
