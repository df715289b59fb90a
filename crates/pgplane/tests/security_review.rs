//! Findings of the attacker review of the surfaces merged after issue 11 (tenants, events,
//! stacks, pgbouncer, destroy, Liquibase breadth, durable jobs); see SECURITY.md, "Review".
//! Each test failed on the code before its fix.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::T;

/// A `pgplane consume` that is stopped when dropped.
struct Consumer(Child);

impl Drop for Consumer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn consume(t: &T, f: &str, log: &str) -> Consumer {
    let mut cmd = t.cmd();
    cmd.args(["consume", "-f", f, "--workers", "1", "--grace", "5s"])
        .env("PGPLANE_EVENTS_TICK_MS", "300")
        .env("PGPLANE_JOB_POLL_MS", "200")
        .env("PGPLANE_LEADER_TICK_MS", "300")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(t.dir.join(log)).unwrap());
    Consumer(cmd.spawn().expect("spawn pgplane consume"))
}

fn publish(t: &T, f: &str, id: &str, data: &str) {
    t.pgplane(&["events", "publish", "-f", f, "--type", "apply.requested", "--key", "ops", "--id", id, "--data", data])
        .ok();
}

/// Waits until event `id` has an outcome other than `queued` and its job (if any) ended;
/// returns `outcome|reason|job status`.
fn settled(t: &T, id: &str) -> String {
    let sql = format!(
        "SELECT e.outcome || '|' || COALESCE(e.reason, '') || '|' || COALESCE(j.status, '')
           FROM pgplane.events e LEFT JOIN pgplane.jobs j ON j.id = e.job_id WHERE e.event_id = '{id}'"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = t.sql_try("pgplane", &sql).unwrap_or_default();
        let done =
            !got.is_empty() && !got.starts_with("queued|") && !got.ends_with("|queued") && !got.ends_with("|running");
        if done {
            return got;
        }
        assert!(Instant::now() < deadline, "event {id} did not settle; last {got:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn database_exists(t: &T, db: &str) -> bool {
    t.sql("postgres", &format!("SELECT count(*) FROM pg_database WHERE datname = '{db}'")) == "1"
}

/// Whoever can produce to the event stream (a Kafka topic's producers, the embedded
/// queue's publishers) is not the operator: an `apply.requested` event must not drop what
/// the manifest stopped listing (`prune`) or take over objects someone else re-created
/// (`adopt`) unless the manifest hands that decision over (`events.allow_prune`,
/// `events.allow_adopt`). Before the fix, `{"prune": true}` dropped the module's database.
#[test]
fn an_event_cannot_prune_or_adopt_unless_the_manifest_allows_it() {
    let env = "rvprune";
    let t = T::new(env);
    let both = "modules:\n  - name: keep\n    storage: database\n  - name: gone\n    storage: database\n";
    let f = t.manifest(both).to_str().unwrap().to_string();
    t.pgplane(&["apply", "-f", &f, "--yes"]).ok();
    let gone = format!("{env}_gone");
    assert!(database_exists(&t, &gone));
    // The operator takes the module out of the manifest and has not decided to prune yet.
    t.manifest("modules:\n  - name: keep\n    storage: database\n");
    {
        let _c = consume(&t, &f, "consume-0.log");
        publish(&t, &f, "prune-1", r#"{"prune": true}"#);
        publish(&t, &f, "adopt-1", r#"{"adopt": true}"#);
        publish(&t, &f, "plain-1", r#"{}"#);
        let pruned = settled(&t, "prune-1");
        assert!(pruned.starts_with("dead_lettered|") && pruned.contains("allow_prune"), "{pruned}");
        let adopted = settled(&t, "adopt-1");
        assert!(adopted.starts_with("dead_lettered|") && adopted.contains("allow_adopt"), "{adopted}");
        // An apply without either still runs (and leaves the orphan alone).
        let plain = settled(&t, "plain-1");
        assert!(plain.ends_with("|succeeded"), "{plain}");
    }
    assert!(database_exists(&t, &gone), "an event pruned the database {gone}");

    // The manifest may hand the decision over.
    t.manifest("modules:\n  - name: keep\n    storage: database\nevents:\n  allow_prune: true\n");
    let _c = consume(&t, &f, "consume-1.log");
    publish(&t, &f, "prune-2", r#"{"prune": true}"#);
    let pruned = settled(&t, "prune-2");
    assert!(pruned.ends_with("|succeeded"), "{pruned}");
    assert!(!database_exists(&t, &gone), "allow_prune: the event's prune ran");
}
