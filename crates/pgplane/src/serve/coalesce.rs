//! Request coalescing for hot catalog reads: concurrent requests for the same thing share
//! one query, and no answer is older than its request. A request joins the query that
//! will start next (never one already running); that query starts as soon as fewer than
//! [`QUERIES_AT_ONCE`] run for its key. So per key at most that many queries run and one
//! more gathers waiters: with N portals polling the same database the server runs two
//! catalog queries at a time instead of N.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::body::Bytes;
use axum::http::StatusCode;
use tokio::sync::{watch, Semaphore};

use super::error::ApiError;

/// A query that hangs (a stuck backend) must not hold its waiters forever.
const QUERY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Queries per key that may run at once. With one, a request that arrives while a query
/// runs waits for all of it and then for its own (about twice the query's time); with two,
/// only for the first of two to end. Measured on 2 cores with 4 clients (bench/README.md,
/// section 5): 1 → 147 req/s, p50 27 ms; 2 → 177 req/s, p50 22 ms; 3 → 136 req/s (the
/// queries then compete for the cores with serve and its clients).
pub const QUERIES_AT_ONCE: usize = 2;

/// A finished query's answer: the JSON body, or the error (kept as parts: shared).
type Answer = Arc<Result<Bytes, (StatusCode, &'static str, String)>>;

pub struct Coalescer {
    slots: Mutex<HashMap<String, Slot>>,
    at_once: usize,
}

impl Default for Coalescer {
    fn default() -> Self {
        Self::new(QUERIES_AT_ONCE)
    }
}

struct Slot {
    /// `at_once` queries at a time per key.
    running: Arc<Semaphore>,
    /// The next query's answer, for requests that arrive before it starts.
    next: Option<watch::Receiver<Option<Answer>>>,
}

impl Coalescer {
    /// At most `at_once` queries per key at a time (at least one).
    pub fn new(at_once: usize) -> Self {
        Self { slots: Mutex::default(), at_once: at_once.max(1) }
    }

    /// Runs `query` for `key`, or waits for the next run of it that starts after now.
    pub async fn run<F, Fut>(&self, key: String, query: F) -> Result<Bytes, ApiError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Bytes, ApiError>>,
    {
        // Only leaders hold the semaphore's `Arc`: its count tells when a key can be forgotten.
        let lead = {
            let mut slots = self.slots();
            let at_once = self.at_once;
            let slot = slots
                .entry(key.clone())
                .or_insert_with(|| Slot { running: Arc::new(Semaphore::new(at_once)), next: None });
            match &slot.next {
                // Someone waits to run the next query (and is still alive): wait for its answer.
                Some(rx) if rx.has_changed().is_ok() => Err(rx.clone()),
                _ => {
                    let (tx, rx) = watch::channel(None);
                    slot.next = Some(rx);
                    Ok((tx, slot.running.clone()))
                }
            }
        };
        let lead = match lead {
            Err(mut rx) => loop {
                if let Some(answer) = rx.borrow_and_update().clone() {
                    return shared(&answer);
                }
                if rx.changed().await.is_err() {
                    // The leader went away (its client hung up) before answering: run it ourselves.
                    return Box::pin(self.run(key, query)).await;
                }
            },
            Ok((tx, running)) => Lead { coalescer: self, key: &key, running: Some(running), tx },
        };
        let running = lead.running.clone().ok_or_else(|| anyhow::anyhow!("coalescer: a leader without its key"))?;
        // Dropped before `lead` (declared after it), so `lead` sees the count without it.
        let _turn = running.acquire_owned().await.map_err(|_| anyhow::anyhow!("coalescer closed"))?;
        // From here on, new requests gather for the query after this one.
        if let Some(slot) = self.slots().get_mut(&key) {
            slot.next = None;
        }
        let answer = match tokio::time::timeout(QUERY_TIMEOUT, query()).await {
            Ok(result) => result,
            Err(_) => Err(ApiError::unavailable(format!(
                "the catalog query did not answer within {}s",
                QUERY_TIMEOUT.as_secs()
            ))),
        };
        let answer: Answer = Arc::new(answer.map_err(|e| (e.status, e.code, e.message)));
        lead.tx.send_replace(Some(answer.clone()));
        shared(&answer)
    }

    fn slots(&self) -> MutexGuard<'_, HashMap<String, Slot>> {
        super::lock(&self.slots)
    }
}

/// A leader's hold on its key. However the leader ends (answered, failed, or dropped with
/// its request), the key is forgotten when no other query runs or gathers for it: keys
/// come from requests.
struct Lead<'a> {
    coalescer: &'a Coalescer,
    key: &'a str,
    running: Option<Arc<Semaphore>>,
    /// Where the answer goes to the requests that joined.
    tx: watch::Sender<Option<Answer>>,
}

impl Drop for Lead<'_> {
    fn drop(&mut self) {
        drop(self.running.take());
        let mut slots = self.coalescer.slots();
        let idle = slots.get(self.key).is_some_and(|s| {
            // Only the map's own `Arc` left, and nobody alive gathering the next query (a
            // leader dropped while it gathered finds its own batch there).
            Arc::strong_count(&s.running) == 1
                && s.next.as_ref().is_none_or(|rx| rx.has_changed().is_err() || rx.same_channel(&self.tx.subscribe()))
        });
        if idle {
            slots.remove(self.key);
        }
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

    #[tokio::test(start_paused = true)]
    async fn requests_share_the_next_query_never_a_running_one() {
        let c = Coalescer::new(1);
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
        assert!(c.slots.lock().expect("lock").is_empty(), "keys are forgotten when nobody waits");
    }

    #[tokio::test(start_paused = true)]
    async fn errors_are_shared_and_a_vanished_leader_is_replaced() {
        let c = Coalescer::new(1);
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
        assert!(c.slots.lock().expect("lock").is_empty(), "an abandoned leader leaves no key behind");
    }

    #[tokio::test(start_paused = true)]
    async fn requests_dropped_while_leading_leave_no_key() {
        let c = Coalescer::default();
        let runs = AtomicUsize::new(0);
        // Dropped in the middle of its query.
        let _ = tokio::time::timeout(Duration::from_millis(10), ask(&c, &runs, "a")).await;
        assert!(c.slots.lock().expect("lock").is_empty(), "key a left behind");
        // Dropped while it gathered for a third query beside two running ones.
        let gatherer = async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            tokio::time::timeout(Duration::from_millis(10), ask(&c, &runs, "b")).await.expect_err("dropped");
        };
        let (x, y, ()) = tokio::join!(ask(&c, &runs, "b"), ask(&c, &runs, "b"), gatherer);
        assert_eq!((x, y), (2, 3));
        assert!(c.slots.lock().expect("lock").is_empty(), "key b left behind");
    }

    #[tokio::test(start_paused = true)]
    async fn two_queries_run_at_once_and_later_requests_gather_for_a_third() {
        let c = Coalescer::default();
        assert_eq!(c.at_once, 2);
        let runs = AtomicUsize::new(0);
        let (running, most) = (AtomicUsize::new(0), AtomicUsize::new(0));
        // Each answer is (the number of its query, how many queries ran when it started).
        let ask = |delay: u64| {
            let (c, runs, running, most) = (&c, &runs, &running, &most);
            async move {
                tokio::time::sleep(Duration::from_millis(delay)).await;
                let body = c
                    .run("db".into(), || async {
                        let n = runs.fetch_add(1, Ordering::SeqCst) + 1;
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        running.fetch_sub(1, Ordering::SeqCst);
                        Ok(Bytes::from(format!("{n} {now}")))
                    })
                    .await
                    .expect("answer");
                String::from_utf8_lossy(&body).into_owned()
            }
        };
        // 1 starts at 0 ms; 2 arrives while it runs and starts at once, beside it; the next
        // three arrive while both run, and share query 3, which starts when query 1 ends.
        let (a, b, c1, c2, c3) = tokio::join!(ask(0), ask(20), ask(40), ask(50), ask(60));
        assert_eq!((a.as_str(), b.as_str()), ("1 1", "2 2"));
        assert_eq!((c1.as_str(), c2.as_str(), c3.as_str()), ("3 2", "3 2", "3 2"));
        assert_eq!(runs.load(Ordering::SeqCst), 3);
        assert_eq!(most.load(Ordering::SeqCst), 2, "never more than two at once");
        assert!(c.slots.lock().expect("lock").is_empty(), "the key is forgotten when nobody waits");
    }
}
