//! End-to-end: event-driven provisioning (issue 15), the real binary against a real
//! server, from the embedded queue and from a real Kafka-compatible broker (tansu, started
//! here; events produced and status events read with kcat, a librdkafka client of its own).
//! Every behavioural test runs against both sources.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{lines, psql, MASTER, T};
use serde_json::{json, Value};

const CANDIDATE: &str = "\
databaseChangeLog:
  - changeSet:
      id: c1
      author: bob
      changes:
        - addColumn:
            tableName: entries
            columns:
              - column: {name: email, type: varchar(200)}
";

const CANDIDATE2: &str = "\
databaseChangeLog:
  - changeSet:
      id: c1
      author: bob
      changes:
        - addColumn:
            tableName: entries
            columns:
              - column: {name: phone, type: varchar(20)}
";

const BROKEN: &str = "\
databaseChangeLog:
  - changeSet:
      id: c1
      author: bob
      changes:
        - sql:
            sql: INSERT INTO missing_table VALUES (1)
";

// ----- a Kafka-compatible broker ---------------------------------------------------------

/// tansu, in memory, on a free port; killed when dropped.
struct Broker {
    child: Child,
    addr: String,
}

fn tansu_bin() -> PathBuf {
    let p = std::env::var_os("PGPLANE_TANSU").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var("PGPLANE_TOOLS").unwrap_or_else(|_| "/var/tmp/pgplane-tools".into()))
            .join("tansu/bin/tansu")
    });
    assert!(
        p.exists(),
        "tansu not found at {} (scripts/test installs it: source scripts/lib.sh; ensure_tansu)",
        p.display()
    );
    p
}

impl Broker {
    fn start() -> Broker {
        let port = common::free_port();
        let addr = format!("127.0.0.1:{port}");
        let url = format!("tcp://{addr}");
        let child = Command::new(tansu_bin())
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/", "--silent"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tansu");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(Instant::now() < deadline, "tansu did not listen on {addr}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Broker { child, addr }
    }

    fn topic(&self, name: &str, partitions: u32) {
        let out = Command::new(tansu_bin())
            .args(["topic", "create", "--broker", &format!("tcp://{}", self.addr)])
            .args(["--partitions", &partitions.to_string(), name])
            .output()
            .expect("tansu topic create");
        assert!(out.status.success(), "topic create: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Produces `key\tvalue` lines with kcat, one record per batch: tansu 0.6.0 serves a
    /// fetch only from batches that start at or after the fetch offset, so a consumer that
    /// seeks into the middle of a multi-record batch would never see its rest (README, Kafka).
    fn produce(&self, topic: &str, records: &[(String, String)], header_type: Option<&str>) {
        use std::io::Write;
        let mut cmd = Command::new("kcat");
        cmd.args(["-P", "-b", &self.addr, "-t", topic, "-K", "\t", "-X", "batch.num.messages=1", "-X", "linger.ms=0"]);
        if let Some(h) = header_type {
            cmd.args(["-H", &format!("event_type={h}")]);
        }
        let mut child = cmd.stdin(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("kcat (apt-get install kcat)");
        {
            let stdin = child.stdin.as_mut().unwrap();
            for (k, v) in records {
                assert!(!v.contains('\n') && !k.contains('\t'));
                writeln!(stdin, "{k}\t{v}").unwrap();
            }
        }
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "kcat -P: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Every record of `topic` as (key, value, headers), read with kcat from the start.
    fn read(&self, topic: &str) -> Vec<(String, String, String)> {
        let out = Command::new("kcat")
            .args(["-C", "-b", &self.addr, "-t", topic, "-o", "beginning", "-e", "-q"])
            .args(["-f", "%k\t%h\t%s\n"])
            .output()
            .expect("kcat -C");
        assert!(out.status.success(), "kcat -C: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| {
                let mut p = l.splitn(3, '\t');
                let k = p.next().unwrap_or("").to_string();
                let h = p.next().unwrap_or("").to_string();
                (k, p.next().unwrap_or("").to_string(), h)
            })
            .collect()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ----- a test's world, for either source ---------------------------------------------------

struct World {
    t: T,
    f: String,
    broker: Option<Broker>,
    topic: String,
    consumers: Vec<Child>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Src {
    Queue,
    Kafka,
}

impl World {
    /// A manifest with a template module and a built template; `events` goes under
    /// `events:` (Kafka's connection is added for Kafka).
    fn new(env: &str, src: Src, events: &str) -> World {
        World::with_modules(env, src, events, "", &[])
    }

    /// As [`World::new`], with more modules (YAML list items) after `registry` and their files.
    fn with_modules(env: &str, src: Src, events: &str, modules: &str, files: &[(&str, &str)]) -> World {
        let t = T::new(env);
        for (path, text) in files {
            t.write(path, text);
        }
        t.write("model/master/changelog.yaml", MASTER);
        t.write("model/c1/changelog.yaml", CANDIDATE);
        t.write("model/c2/changelog.yaml", CANDIDATE2);
        t.write("model/broken/changelog.yaml", BROKEN);
        let topic = format!("{env}-requests");
        let broker = (src == Src::Kafka).then(|| {
            let b = Broker::start();
            b.topic(&topic, 4);
            b.topic(&format!("{env}-status"), 1);
            b.topic(&format!("{env}-dead"), 1);
            b
        });
        let kafka = match &broker {
            Some(b) => format!(
                "  kafka:\n    brokers: {}\n    topic: {topic}\n    group: {env}-group\n    status_topic: {env}-status\n    dead_letter_topic: {env}-dead\n    options:\n      socket.timeout.ms: 10000\n",
                b.addr
            ),
            None => String::new(),
        };
        let body = format!(
            "modules:
  - name: registry
    storage: database
{modules}templates:
  - name: {env}_tpl
    module: registry
    sources: [model/master/changelog.yaml]
branches:
  database: \"{{template}}_{{branch}}\"
events:
{kafka}{events}"
        );
        let f = t.manifest(&body);
        let f = f.to_str().unwrap().to_string();
        t.pgplane(&["apply", "-f", &f, "--yes"]).ok();
        t.pgplane(&["template", "build", &format!("{env}_tpl"), "-f", &f]).ok();
        World { t, f, broker, topic, consumers: Vec::new() }
    }

    fn env(&self) -> &str {
        &self.t.env
    }

    fn tpl(&self) -> String {
        format!("{}_tpl", self.env())
    }

    /// The consumer group and topic of this world's stream in the control database.
    fn stream(&self) -> (String, String) {
        match &self.broker {
            Some(_) => (format!("{}-group", self.env()), self.topic.clone()),
            None => ("pgplane".into(), self.env().to_string()),
        }
    }

    fn envelope(kind: &str, id: &str, subject: &str, data: Value) -> String {
        json!({"specversion": "1.0", "id": id, "type": kind, "source": "tests", "subject": subject, "data": data})
            .to_string()
    }

    /// Publishes events: through `pgplane events publish` (queue) or kcat (Kafka).
    fn publish(&self, events: &[(&str, &str, &str, Value)]) {
        match &self.broker {
            None => {
                for (kind, key, id, data) in events {
                    self.t
                        .pgplane(&[
                            "events",
                            "publish",
                            "-f",
                            &self.f,
                            "--type",
                            kind,
                            "--key",
                            key,
                            "--id",
                            id,
                            "--data",
                            &data.to_string(),
                        ])
                        .ok();
                }
            }
            Some(b) => {
                let recs: Vec<(String, String)> = events
                    .iter()
                    .map(|(kind, key, id, data)| (key.to_string(), World::envelope(kind, id, key, data.clone())))
                    .collect();
                b.produce(&self.topic, &recs, None);
            }
        }
    }

    /// Publishes raw payloads (poison) under `key`.
    fn publish_raw(&self, key: &str, payloads: &[&str]) {
        match &self.broker {
            None => {
                let p = pgplane_core::event::partition_of(key, 16);
                for payload in payloads {
                    let q = |s: &str| s.replace('\'', "''");
                    self.t.sql(
                        "pgplane",
                        &format!(
                            "WITH h AS (INSERT INTO pgplane.event_heads AS h (topic, partition, next_offset) VALUES ('{env}', {p}, 1)
                                 ON CONFLICT (topic, partition) DO UPDATE SET next_offset = h.next_offset + 1 RETURNING next_offset - 1 AS o)
                             INSERT INTO pgplane.event_log (topic, partition, \"offset\", key, payload)
                             SELECT '{env}', {p}, o, '{key}', '{payload}' FROM h",
                            env = self.env(),
                            key = q(key),
                            payload = q(payload)
                        ),
                    );
                }
            }
            Some(b) => {
                let recs: Vec<(String, String)> = payloads.iter().map(|p| (key.to_string(), p.to_string())).collect();
                b.produce(&self.topic, &recs, None);
            }
        }
    }

    /// Starts `pgplane consume` with `workers` slots and extra environment variables.
    fn consume(&mut self, workers: u32, envs: &[(&str, &str)]) -> usize {
        let mut cmd = self.t.cmd();
        cmd.args(["consume", "-f", &self.f, "--workers", &workers.to_string(), "--grace", "5s"])
            .env("PGPLANE_EVENTS_TICK_MS", "300")
            .env("PGPLANE_JOB_POLL_MS", "200")
            .env("PGPLANE_LEADER_TICK_MS", "300")
            .env("PGPLANE_LOG", "info")
            .stdout(Stdio::null());
        let log = std::fs::File::create(self.t.dir.join(format!("consume-{}.log", self.consumers.len()))).unwrap();
        cmd.stderr(log);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        self.consumers.push(cmd.spawn().expect("spawn pgplane consume"));
        self.consumers.len() - 1
    }

    fn kill(&mut self, i: usize) {
        let _ = self.consumers[i].kill();
        let _ = self.consumers[i].wait();
    }

    /// Waits for consumer `i` to end by itself (a crash point); true when it did.
    fn wait_exit(&mut self, i: usize, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.consumers[i].try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    fn sql(&self, sql: &str) -> String {
        self.t.sql("pgplane", sql)
    }

    /// `outcome` of each event of this stream, by envelope id (duplicates and rejected rows
    /// by their offset).
    fn outcomes(&self) -> Vec<(String, String)> {
        let (g, t) = self.stream();
        lines(&self.sql(&format!(
            "SELECT COALESCE(event_id, '@' || \"offset\") || ' ' || outcome FROM pgplane.events
              WHERE consumer = '{g}' AND topic = '{t}' ORDER BY partition, \"offset\""
        )))
        .into_iter()
        .map(|l| {
            let (a, b) = l.split_once(' ').unwrap();
            (a.to_string(), b.to_string())
        })
        .collect()
    }

    /// Waits until `sql` (on the control database) returns `want`.
    fn wait(&self, sql: &str, want: &str, what: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let got = self.sql(sql);
            if got == want {
                return;
            }
            assert!(Instant::now() < deadline, "{what}: waited {within:?}, last got {got:?}\n{}", self.debug());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stream_filter(&self) -> String {
        let (g, t) = self.stream();
        format!("consumer = '{g}' AND topic = '{t}'")
    }

    /// Waits until every event of the stream has an outcome other than `queued`, and at
    /// least `n` were recorded.
    fn settle(&self, n: usize, within: Duration) {
        let f = self.stream_filter();
        self.wait(
            &format!("SELECT count(*) >= {n} AND count(*) FILTER (WHERE outcome = 'queued') = 0 FROM pgplane.events WHERE {f}"),
            "t",
            "events settled",
            within,
        );
    }

    /// Status events of this stream (from the outbox): (type, subject, outcome, error).
    fn status_events(&self) -> Vec<Value> {
        let f = self.stream_filter();
        let text = self.sql(&format!(
            "SELECT COALESCE(json_agg(json_build_object('id', o.id, 'type', o.type, 'subject', o.subject, 'body', o.body) ORDER BY o.id), '[]')
               FROM pgplane.event_outbox o JOIN pgplane.events e ON e.seq = o.event_seq
              WHERE o.stream = 'status' AND e.{}",
            f.replace(" AND topic", " AND e.topic")
        ));
        serde_json::from_str::<Vec<Value>>(&text).unwrap()
    }

    fn debug(&self) -> String {
        let f = self.stream_filter();
        let mut logs = String::new();
        for i in 0..self.consumers.len() {
            let text = std::fs::read_to_string(self.t.dir.join(format!("consume-{i}.log"))).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            logs.push_str(&format!(
                "--- consume-{i}.log (last lines)\n{}\n",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            ));
        }
        logs + &self.sql(&format!(
            "SELECT string_agg(seq || ' ' || COALESCE(type,'?') || ' ' || COALESCE(key,'') || ' ' || outcome || ' job=' || COALESCE(job_id::text,'-') || ' ' || COALESCE(reason,''), E'\\n' ORDER BY seq) FROM pgplane.events WHERE {f}"
        ))
    }

    fn database_exists(&self, db: &str) -> bool {
        self.t.sql("postgres", &format!("SELECT count(*) FROM pg_database WHERE datname = '{db}'")) == "1"
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for c in &mut self.consumers {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn branch_db(w: &World, id: &str) -> String {
    format!("{}_{}", w.tpl(), id.to_lowercase().replace('-', "_"))
}

// ----- behavioural tests, each for both sources ------------------------------------------

/// A candidate's life driven by events: opened (branch created), updated (a new patch
/// set), merged (deleted); status events out, in order, with where to fetch credentials
/// and never a password.
fn candidate_lifecycle(src: Src, env: &str) {
    let mut w = World::new(env, src, "");
    w.consume(2, &[]);
    let tpl = w.tpl();
    w.publish(&[(
        "candidate.opened",
        "MR-7",
        &format!("{env}-1"),
        json!({"id": "MR-7", "template": tpl, "sources": ["model/c1/changelog.yaml"], "labels": {"mr": "7"}}),
    )]);
    w.settle(1, Duration::from_secs(60));
    let db = branch_db(&w, "MR-7");
    assert!(w.database_exists(&db), "branch database {db}\n{}", w.debug());
    let cols = |w: &World| {
        w.t.sql(&db, "SELECT string_agg(column_name, ',' ORDER BY column_name) FROM information_schema.columns WHERE table_name = 'entries'")
    };
    assert_eq!(cols(&w), "email,id,name");
    w.publish(&[(
        "candidate.updated",
        "MR-7",
        &format!("{env}-2"),
        json!({"id": "MR-7", "sources": ["model/c2/changelog.yaml"]}),
    )]);
    w.settle(2, Duration::from_secs(60));
    assert_eq!(cols(&w), "id,name,phone", "the new patch set on a fresh copy");
    w.publish(&[("candidate.merged", "MR-7", &format!("{env}-3"), json!({"id": "MR-7"}))]);
    w.settle(3, Duration::from_secs(60));
    assert!(!w.database_exists(&db), "merged: the branch database is gone");
    let outs: Vec<String> = w.outcomes().into_iter().map(|(_, o)| o).collect();
    assert_eq!(outs, ["succeeded", "succeeded", "succeeded"], "{}", w.debug());
    let status = w.status_events();
    let types: Vec<&str> = status.iter().map(|s| s["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["candidate.opened.succeeded", "candidate.updated.succeeded", "candidate.merged.succeeded"]);
    assert_eq!(status[0]["subject"], "MR-7");
    assert!(status[0]["body"]["job"].as_i64().is_some());
    assert_eq!(
        status[0]["body"]["credentials"]["command"],
        format!("pgplane credentials --branch-readonly --env {env}")
    );
    let all = serde_json::to_string(&status).unwrap();
    assert!(!all.to_lowercase().contains("password"), "no secret in a status event: {all}");
    // Kafka: the relay published the same status events to the status topic, read with kcat.
    if let Some(b) = &w.broker {
        let deadline = Instant::now() + Duration::from_secs(30);
        let out = loop {
            let out = b.read(&format!("{env}-status"));
            if out.len() >= 3 || Instant::now() > deadline {
                break out;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let got: Vec<Value> = out.iter().map(|(_, v, _)| serde_json::from_str(v).unwrap()).collect();
        let types: Vec<&str> = got.iter().map(|s| s["type"].as_str().unwrap()).collect();
        assert_eq!(types, ["candidate.opened.succeeded", "candidate.updated.succeeded", "candidate.merged.succeeded"]);
        assert!(got.iter().all(|s| s["id"].as_str().unwrap().starts_with("pgplane-status-")));
        assert_eq!(out[0].0, "MR-7", "keyed by the event key");
        assert!(out[0].2.contains("event_type=candidate.opened.succeeded"), "the type header: {}", out[0].2);
    }
    // `events status` shows them, with no blocked key.
    let s = w.t.pgplane(&["events", "status", "-f", &w.f, "--json"]).ok().json();
    assert_eq!(s["recent"].as_array().unwrap().len(), 3);
    assert!(s["holds"].as_array().unwrap().is_empty());
}

#[test]
fn queue_candidate_lifecycle() {
    candidate_lifecycle(Src::Queue, "ev_life_q");
}

#[test]
fn kafka_candidate_lifecycle() {
    candidate_lifecycle(Src::Kafka, "ev_life_k");
}

/// The same id twice does nothing the second time; unknown types are counted and skipped;
/// poison (not JSON, no id, bad data, a job that fails) is dead-lettered with its reason
/// and its key goes on.
fn duplicates_unknown_and_poison(src: Src, env: &str) {
    let mut w = World::new(env, src, "  max_attempts: 1\n");
    w.consume(2, &[]);
    let tpl = w.tpl();
    let open = |mr: &str, source: &str| json!({"id": mr, "template": tpl, "sources": [source]});
    w.publish(&[
        ("candidate.opened", "MR-1", "e1", open("MR-1", "model/c1/changelog.yaml")),
        ("candidate.opened", "MR-1", "e1", open("MR-1", "model/c1/changelog.yaml")),
        ("invoice.paid", "MR-1", "e2", json!({})),
        ("candidate.opened", "MR-2", "e3", json!({"id": "MR-2"})),
        ("candidate.opened", "MR-3", "e4", open("MR-3", "model/broken/changelog.yaml")),
    ]);
    w.publish_raw("MR-3", &["this is not json", r#"{"type":"candidate.merged","data":{"id":"MR-3"}}"#]);
    w.publish(&[("candidate.merged", "MR-3", "e5", json!({"id": "MR-3"}))]);
    // Kafka: the type in the `event_type` header, as existing producers send it.
    if let Some(b) = &w.broker {
        b.produce(
            &w.topic,
            &[("MR-4".into(), r#"{"id":"e6","data":{"id":"MR-4"}}"#.into())],
            Some("candidate.abandoned"),
        );
    }
    w.settle(if w.broker.is_some() { 9 } else { 8 }, Duration::from_secs(90));
    let outcomes = w.outcomes();
    let by_id = |id: &str| outcomes.iter().filter(|(i, _)| i == id).map(|(_, o)| o.as_str()).collect::<Vec<_>>();
    assert_eq!(by_id("e1"), ["succeeded", "duplicate"], "{}", w.debug());
    assert_eq!(by_id("e2"), ["skipped"]);
    assert_eq!(by_id("e3"), ["dead_lettered"], "no template: poison");
    assert_eq!(by_id("e4"), ["dead_lettered"], "its job failed (the candidate's changelog is broken)");
    assert_eq!(by_id("e5"), ["succeeded"], "the key went on after its poison events");
    if w.broker.is_some() {
        assert_eq!(by_id("e6"), ["succeeded"], "the type from the header");
    }
    let raw: Vec<&str> = outcomes.iter().filter(|(i, _)| i.starts_with('@')).map(|(_, o)| o.as_str()).collect();
    assert_eq!(raw, ["dead_lettered", "dead_lettered"], "not JSON, and no id");
    // One job for e1, whatever was published twice.
    let f = w.stream_filter();
    assert_eq!(w.sql(&format!("SELECT count(DISTINCT job_id) FROM pgplane.events WHERE {f} AND event_id = 'e1'")), "1");
    let reasons = w.sql(&format!(
        "SELECT string_agg(reason, E'\\n' ORDER BY seq) FROM pgplane.events WHERE {f} AND outcome = 'dead_lettered'"
    ));
    for needle in ["needs `data.template`", "missing_table", "not JSON", "no `id`"] {
        assert!(reasons.contains(needle), "reason {needle:?} in:\n{reasons}");
    }
    assert!(!w.database_exists(&branch_db(&w, "MR-3")), "merged after its failed open");
    assert!(w.database_exists(&branch_db(&w, "MR-1")));
    // Dead letters: in the outbox with the original message; with Kafka on the topic too.
    let dead = w.sql(&format!(
        "SELECT count(*) FROM pgplane.event_outbox o JOIN pgplane.events e ON e.seq = o.event_seq WHERE o.stream = 'dead_letter' AND e.{}",
        f.replace(" AND topic", " AND e.topic")
    ));
    assert_eq!(dead, "4");
    if let Some(b) = &w.broker {
        let deadline = Instant::now() + Duration::from_secs(30);
        let got = loop {
            let got = b.read(&format!("{env}-dead"));
            if got.len() >= 4 || Instant::now() > deadline {
                break got;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        assert_eq!(got.len(), 4, "{got:?}");
        assert!(got.iter().any(|(_, v, h)| v == "this is not json" && h.contains("pgplane_reason=")), "{got:?}");
    }
    // In the order outcomes were decided (across keys, not the order of publication).
    let mut types: Vec<String> = w.status_events().iter().map(|s| s["type"].as_str().unwrap().to_string()).collect();
    types.sort();
    types.retain(|t| t != "candidate.abandoned.succeeded");
    assert_eq!(
        types,
        [
            "candidate.merged.succeeded",
            "candidate.opened.failed",
            "candidate.opened.failed",
            "candidate.opened.succeeded"
        ],
        "unknown types and unparseable events have no status event"
    );
}

#[test]
fn queue_duplicates_unknown_and_poison() {
    duplicates_unknown_and_poison(Src::Queue, "ev_dup_q");
}

#[test]
fn kafka_duplicates_unknown_and_poison() {
    duplicates_unknown_and_poison(Src::Kafka, "ev_dup_k");
}

/// `on_failure: block`: a failed job holds its key (later events of the key wait; other
/// keys go on) until `events retry` runs it again (the same job, before the later ones)
/// or `events skip` gives it up.
fn block_retry_skip(src: Src, env: &str) {
    let mut w = World::new(env, src, "  on_failure: block\n  max_attempts: 1\n");
    w.consume(2, &[]);
    let tpl = w.tpl();
    // The template does not exist yet under this name: the open fails, and holds MR-1.
    let other = format!("{env}_tpl");
    w.t.sql(
        "pgplane",
        &format!("UPDATE pgplane.templates SET name = name || '_moved' WHERE env = '{env}' AND name = '{other}'"),
    );
    w.publish(&[
        ("candidate.opened", "MR-1", "b1", json!({"id": "MR-1", "template": tpl})),
        ("candidate.updated", "MR-1", "b2", json!({"id": "MR-1", "sources": ["model/c1/changelog.yaml"]})),
        ("candidate.opened", "MR-2", "b3", json!({"id": "MR-2", "template": tpl})),
    ]);
    let f = w.stream_filter();
    w.wait(
        &format!("SELECT outcome FROM pgplane.events WHERE {f} AND event_id = 'b1'"),
        "blocked",
        "b1 blocks",
        Duration::from_secs(60),
    );
    // Another key is not held. (Its open fails the same way, and blocks its own key.)
    w.wait(
        &format!("SELECT outcome FROM pgplane.events WHERE {f} AND event_id = 'b3'"),
        "blocked",
        "b3 ran",
        Duration::from_secs(60),
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(w.sql(&format!("SELECT j.status FROM pgplane.events e JOIN pgplane.jobs j ON j.id = e.job_id WHERE e.{} AND e.event_id = 'b2'", f.replace(" AND topic", " AND e.topic"))), "queued", "b2 waits behind b1");
    let st = w.t.pgplane(&["events", "status", "-f", &w.f]);
    assert_eq!(st.code, 1, "a blocked key: exit 1\n{}", st.stdout);
    assert!(st.stdout.contains(&format!("event/{env}/MR-1")), "{}", st.stdout);
    // Repair and retry: the same job runs, then b2.
    w.t.sql(
        "pgplane",
        &format!("UPDATE pgplane.templates SET name = '{other}' WHERE env = '{env}' AND name = '{other}_moved'"),
    );
    let seq = w.sql(&format!("SELECT seq FROM pgplane.events WHERE {f} AND event_id = 'b1'"));
    let job_before = w.sql(&format!("SELECT job_id FROM pgplane.events WHERE seq = {seq}"));
    let r = w.t.pgplane(&["events", "retry", &seq, "-f", &w.f]).ok();
    assert!(r.stdout.contains("released"), "{}", r.stdout);
    w.wait(
        &format!("SELECT string_agg(outcome, ',' ORDER BY seq) FROM pgplane.events WHERE {f} AND key = 'MR-1'"),
        "succeeded,succeeded",
        "b1 then b2",
        Duration::from_secs(60),
    );
    assert_eq!(w.sql(&format!("SELECT job_id FROM pgplane.events WHERE seq = {seq}")), job_before, "the same job");
    let db = branch_db(&w, "MR-1");
    assert_eq!(
        w.t.sql(
            &db,
            "SELECT count(*) FROM information_schema.columns WHERE table_name = 'entries' AND column_name = 'email'"
        ),
        "1"
    );
    // Skip gives up b3; a retry of a succeeded event is refused.
    let seq3 = w.sql(&format!("SELECT seq FROM pgplane.events WHERE {f} AND event_id = 'b3'"));
    w.t.pgplane(&["events", "skip", &seq3, "-f", &w.f]).ok();
    assert_eq!(w.sql(&format!("SELECT outcome FROM pgplane.events WHERE seq = {seq3}")), "skipped");
    let again = w.t.pgplane(&["events", "retry", &seq, "-f", &w.f]).fails();
    assert!(again.stderr.contains("not blocked"), "{}", again.stderr);
    assert_eq!(w.sql(&format!("SELECT count(*) FROM pgplane.job_holds WHERE key LIKE 'event/{env}/%'")), "0");
}

#[test]
fn queue_block_retry_skip() {
    block_retry_skip(Src::Queue, "ev_blk_q");
}

#[test]
fn kafka_block_retry_skip() {
    block_retry_skip(Src::Kafka, "ev_blk_k");
}

// ----- tenants ------------------------------------------------------------------------------

/// A schema-per-tenant module with two versions (1.0 runs V1, 2.0 adds V2 and V3) and a
/// parameter that loads reference data, as tests/tenants.rs has it.
const USERS_MODULE: &str = "  - name: users\n    storage: schema-per-tenant\n    migrations: db/users\n    versions:\n      - {version: \"1.0\", target: \"1\"}\n      - {version: \"2.0\", target: \"3\"}\n    parameters:\n      loadReference: {folder: reference}\n";

const USERS_FILES: &[(&str, &str)] = &[
    ("db/users/V1__users.sql", "CREATE TABLE users (id int PRIMARY KEY, name text);\n"),
    ("db/users/V2__email.sql", "ALTER TABLE users ADD COLUMN email text;\n"),
    ("db/users/V3__index.sql", "CREATE INDEX users_email ON users (email);\n"),
    ("db/users/reference/R__countries.sql", "CREATE TABLE IF NOT EXISTS countries (code text PRIMARY KEY);\n"),
];

/// A tenant's life driven by events, through the tenant lifecycle's jobs: created (schema,
/// role, reference data, version 1.0), upgraded (2.0's migrations run once, a duplicate
/// does nothing), bad data dead-lettered with its reason, disabled (no LOGIN), deleted
/// (schema and role gone). Status events say where credentials are fetched, never a password.
fn tenant_lifecycle(src: Src, env: &str) {
    let mut w = World::with_modules(env, src, "  max_attempts: 1\n", USERS_MODULE, USERS_FILES);
    w.consume(2, &[]);
    let db = format!("{env}_users");
    let role = format!("{env}_acme_users");
    let history = |w: &World| {
        w.t.sql(
            &db,
            "SELECT string_agg(version, ',' ORDER BY installed_rank) FROM acme_users.pgplane_schema_history WHERE version IS NOT NULL",
        )
    };
    let listed = |w: &World| -> Vec<String> {
        let list = w.t.pgplane(&["tenant", "list", "--json", "-f", &w.f]).ok().json();
        list.as_array()
            .unwrap()
            .iter()
            .flat_map(|t| {
                let name = t["name"].as_str().unwrap().to_string();
                t["modules"].as_array().unwrap().iter().map(move |m| {
                    format!(
                        "{name}/{}@{}/{}",
                        m["module"].as_str().unwrap(),
                        m["version"].as_str().unwrap_or("-"),
                        m["state"].as_str().unwrap_or("-")
                    )
                })
            })
            .collect()
    };

    // Created: schema, role (LOGIN), reference data (the parameter), version 1.0.
    w.publish(&[(
        "tenant.created",
        "acme",
        &format!("{env}-1"),
        json!({"tenant": "acme", "modules": ["users@1.0"], "parameters": {"loadReference": "true"}}),
    )]);
    w.settle(1, Duration::from_secs(90));
    assert_eq!(w.outcomes().into_iter().map(|(_, o)| o).collect::<Vec<_>>(), ["succeeded"], "{}", w.debug());
    assert_eq!(w.t.sql(&db, "SELECT count(*) FROM pg_namespace WHERE nspname = 'acme_users'"), "1", "{}", w.debug());
    assert_eq!(w.t.sql("postgres", &format!("SELECT rolcanlogin FROM pg_roles WHERE rolname = '{role}'")), "t");
    assert_eq!(
        w.t.sql(&db, "SELECT count(*) FROM pg_tables WHERE schemaname = 'acme_users' AND tablename = 'countries'"),
        "1",
        "loadReference"
    );
    assert_eq!(history(&w), "1");
    assert_eq!(listed(&w), ["acme/users@1.0/enabled"]);
    // The status event says where the credentials are; they work; no password in it.
    let status = w.status_events();
    assert_eq!(status[0]["type"], "tenant.created.succeeded", "{status:?}");
    let hint = &status[0]["body"]["credentials"][0];
    assert_eq!(hint["command"], format!("pgplane credentials users --env {env} --tenant acme"));
    assert_eq!(hint["k8s_secret"], format!("{}-users-acme-db", env.replace('_', "-")));
    let url = w.t.credentials(&["users", "-f", &w.f, "--env", env, "--tenant", "acme"]);
    assert_eq!(psql(&url, "SELECT count(*) FROM users").unwrap(), "0", "the tenant's role reaches its schema");
    let password = url.split("://").nth(1).and_then(|r| r.split('@').next()).and_then(|u| u.split(':').nth(1)).unwrap();
    assert!(password.len() >= 8, "a password in the URL: {url}");
    let all = serde_json::to_string(&status).unwrap();
    assert!(!all.contains(password) && !all.to_lowercase().contains("password"), "no secret in a status event: {all}");

    // Upgraded, and the same event again: 2.0's migrations run once.
    let up = json!({"tenant": "acme", "modules": ["users@2.0"]});
    w.publish(&[
        ("tenant.upgraded", "acme", &format!("{env}-2"), up.clone()),
        ("tenant.upgraded", "acme", &format!("{env}-2"), up),
    ]);
    w.settle(3, Duration::from_secs(90));
    assert_eq!(history(&w), "1,2,3", "{}", w.debug());
    assert_eq!(listed(&w), ["acme/users@2.0/enabled"]);
    let f = w.stream_filter();
    assert_eq!(
        w.sql(&format!("SELECT string_agg(outcome, ',' ORDER BY seq) || ' ' || count(DISTINCT job_id) FROM pgplane.events WHERE {f} AND event_id = '{env}-2'")),
        "succeeded,duplicate 1"
    );

    // Bad data ends the event dead-lettered with the reason; nothing changes. Unknown
    // parameter, version and module are refused before a job exists; a tenant that is not
    // registered fails its job.
    w.publish(&[
        (
            "tenant.created",
            "globex",
            &format!("{env}-3"),
            json!({"tenant": "globex", "modules": ["users"], "parameters": {"loadSample": "true"}}),
        ),
        ("tenant.upgraded", "acme", &format!("{env}-4"), json!({"tenant": "acme", "modules": ["users@9.9"]})),
        ("tenant.module.enabled", "acme", &format!("{env}-5"), json!({"tenant": "acme", "module": "nosuch"})),
        ("tenant.upgraded", "initech", &format!("{env}-6"), json!({"tenant": "initech"})),
    ]);
    w.settle(7, Duration::from_secs(90));
    let reason = |id: &str| {
        w.sql(&format!(
            "SELECT outcome || ': ' || COALESCE(reason, '') FROM pgplane.events WHERE {f} AND event_id = '{env}-{id}'"
        ))
    };
    let cases = [
        ("3", "loadReference", false),
        ("4", "no version \"9.9\" (versions: 1.0, 2.0)", false),
        ("5", "nosuch", false),
        ("6", "not registered", true),
    ];
    for (id, needle, had_job) in cases {
        let r = reason(id);
        assert!(r.starts_with("dead_lettered: ") && r.contains(needle), "event {id}: {r}\n{}", w.debug());
        let job =
            w.sql(&format!("SELECT job_id IS NOT NULL FROM pgplane.events WHERE {f} AND event_id = '{env}-{id}'"));
        assert_eq!(job, if had_job { "t" } else { "f" }, "event {id}: {r}");
    }
    let failed: Vec<String> = w
        .status_events()
        .iter()
        .filter(|s| s["type"].as_str().unwrap().ends_with(".failed"))
        .map(|s| s["type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(failed.len(), 4, "a failed status event each: {failed:?}");
    assert_eq!(listed(&w), ["acme/users@2.0/enabled"], "nothing changed");
    assert_eq!(history(&w), "1,2,3");

    // Disabled: the role loses LOGIN, the data stays.
    w.publish(&[("tenant.disabled", "acme", &format!("{env}-7"), json!({"tenant": "acme"}))]);
    w.settle(8, Duration::from_secs(90));
    assert_eq!(reason("7"), "succeeded:", "{}", w.debug());
    assert_eq!(w.t.sql("postgres", &format!("SELECT rolcanlogin FROM pg_roles WHERE rolname = '{role}'")), "f");
    assert!(psql(&url, "SELECT 1").unwrap_err().contains("not permitted to log in"));
    assert_eq!(listed(&w), ["acme/users@2.0/disabled"]);

    // Deleted: schema and role gone, the tenant forgotten.
    w.publish(&[("tenant.deleted", "acme", &format!("{env}-8"), json!({"tenant": "acme"}))]);
    w.settle(9, Duration::from_secs(90));
    assert_eq!(reason("8"), "succeeded:", "{}", w.debug());
    assert_eq!(w.t.sql(&db, "SELECT count(*) FROM pg_namespace WHERE nspname = 'acme_users'"), "0");
    assert_eq!(w.t.sql("postgres", &format!("SELECT count(*) FROM pg_roles WHERE rolname = '{role}'")), "0");
    assert!(listed(&w).is_empty(), "{:?}", listed(&w));
    // Every job of these events was a tenant job.
    let kinds = w.sql(&format!(
        "SELECT string_agg(DISTINCT j.kind, ',') FROM pgplane.events e JOIN pgplane.jobs j ON j.id = e.job_id WHERE e.{}",
        f.replace(" AND topic", " AND e.topic")
    ));
    assert_eq!(kinds, "tenant_add,tenant_disable,tenant_remove,tenant_upgrade");
}

#[test]
fn queue_tenant_lifecycle() {
    tenant_lifecycle(Src::Queue, "ev_ten_q");
}

#[test]
fn kafka_tenant_lifecycle() {
    tenant_lifecycle(Src::Kafka, "ev_ten_k");
}

// ----- crashes ----------------------------------------------------------------------------

/// A slow candidate: its deployment sleeps, so a test can kill the process running it.
const SLOW: &str = "\
databaseChangeLog:
  - changeSet:
      id: s1
      author: bob
      changes:
        - sql:
            sql: SELECT pg_sleep(4)
        - addColumn:
            tableName: entries
            columns:
              - column: {name: slow, type: int}
";

/// Every event of the stream: recorded once (not counting duplicates), one job, one
/// status event; returns the number of events.
fn assert_exactly_once(w: &World, ids: &[String]) {
    let f = w.stream_filter();
    let ef = f.replace("consumer", "e.consumer").replace(" AND topic", " AND e.topic");
    for id in ids {
        let rows = w.sql(&format!(
            "SELECT count(*) || ' ' || count(DISTINCT job_id) || ' ' || string_agg(outcome, ',')
               FROM pgplane.events WHERE {f} AND event_id = '{id}' AND outcome <> 'duplicate'"
        ));
        assert_eq!(rows, "1 1 succeeded", "event {id}: rows, jobs, outcome\n{}", w.debug());
        let status = w.sql(&format!(
            "SELECT count(*) FROM pgplane.event_outbox o JOIN pgplane.events e ON e.seq = o.event_seq
              WHERE o.stream = 'status' AND {ef} AND e.event_id = '{id}'"
        ));
        assert_eq!(status, "1", "one status event for {id}");
    }
    // No job was queued twice for an event: every event job of this env belongs to one event.
    let env = w.env();
    let orphans = w.sql(&format!(
        "SELECT count(*) FROM pgplane.jobs j WHERE j.key LIKE 'event/{env}/%'
            AND NOT EXISTS (SELECT 1 FROM pgplane.events e WHERE e.job_id = j.id)"
    ));
    assert_eq!(orphans, "0", "jobs without their event");
}

/// kill -9 at each point — a message read but not recorded, recorded but not committed to
/// the source, committed, and in the middle of a job — then a restart: every effect once,
/// one status event each.
fn crash_matrix(src: Src, env: &str) {
    let mut w = World::new(env, src, "");
    w.t.write("model/slow/changelog.yaml", SLOW);
    let tpl = w.tpl();
    let mut ids = Vec::new();
    let mut n = 0;
    for point in ["before_record", "after_record", "after_commit"] {
        // Three events on three keys; the consumer dies at the second.
        let batch: Vec<(String, String)> = (0..3)
            .map(|i| {
                n += 1;
                (format!("MR-{point}-{i}").replace('_', "-"), format!("{env}-{n}"))
            })
            .collect();
        let events: Vec<(&str, &str, &str, Value)> = batch
            .iter()
            .map(|(mr, id)| ("candidate.opened", mr.as_str(), id.as_str(), json!({"id": mr, "template": tpl})))
            .collect();
        w.publish(&events);
        let crash = format!("{point}:2");
        let i = w.consume(0, &[("PGPLANE_EVENTS_CRASH", &crash)]);
        assert!(w.wait_exit(i, Duration::from_secs(60)), "the consumer did not die at {crash}");
        let j = w.consume(2, &[]);
        w.settle(ids.len() + 3, Duration::from_secs(90));
        w.kill(j);
        ids.extend(batch.iter().map(|(_, id)| id.clone()));
        for (mr, _) in &batch {
            assert!(w.database_exists(&branch_db(&w, mr)), "{point}: branch {mr}\n{}", w.debug());
        }
        assert_exactly_once(&w, &ids);
    }
    // In the middle of a job: the process running it dies; another takes the job over.
    let id = format!("{env}-slow");
    w.publish(&[(
        "candidate.opened",
        "MR-slow",
        &id,
        json!({"id": "MR-slow", "template": tpl, "sources": ["model/slow/changelog.yaml"]}),
    )]);
    let i = w.consume(1, &[]);
    let f = w.stream_filter();
    w.wait(
        &format!("SELECT j.status FROM pgplane.events e JOIN pgplane.jobs j ON j.id = e.job_id WHERE e.{} AND e.event_id = '{id}'", f.replace(" AND topic", " AND e.topic")),
        "running",
        "the slow job runs",
        Duration::from_secs(60),
    );
    std::thread::sleep(Duration::from_millis(1500));
    w.kill(i);
    w.consume(1, &[]);
    w.settle(ids.len() + 1, Duration::from_secs(90));
    ids.push(id.clone());
    assert_exactly_once(&w, &ids);
    let attempts = w.sql(&format!(
        "SELECT j.attempts FROM pgplane.events e JOIN pgplane.jobs j ON j.id = e.job_id WHERE e.{} AND e.event_id = '{id}'",
        f.replace(" AND topic", " AND e.topic")
    ));
    assert_eq!(attempts, "2", "taken over once");
    // Nothing was read twice: the restarted consumers began where the control database said.
    assert_eq!(w.sql(&format!("SELECT count(*) FROM pgplane.events WHERE {f} AND outcome = 'duplicate'")), "0");
    let db = branch_db(&w, "MR-slow");
    assert_eq!(
        w.t.sql(
            &db,
            "SELECT count(*) FROM information_schema.columns WHERE table_name = 'entries' AND column_name = 'slow'"
        ),
        "1"
    );
}

#[test]
fn queue_crash_matrix() {
    crash_matrix(Src::Queue, "ev_crash_q");
}

#[test]
fn kafka_crash_matrix() {
    crash_matrix(Src::Kafka, "ev_crash_k");
}

// ----- many events, three consumers, one killed ---------------------------------------------

/// 10,000 events over 100 keys, three consumers (each running jobs too), one killed with
/// SIGKILL mid-way: every event recorded once with one job, every job succeeded, and each
/// key's jobs ran one after another in the order of its events.
fn ten_thousand(src: Src, env: &str) {
    const KEYS: usize = 100;
    const PER_KEY: usize = 100;
    let mut w = World::new(env, src, "  max_queued: 100000\n");
    // The cheapest real operation: the merge of a candidate that has no branch (its delete
    // finds nothing and succeeds), keyed by candidate. Of every ten events of a key, seven
    // are new, two repeat the seventh's id (a producer's retries: duplicates), and one is
    // poison (an invalid candidate id: dead-lettered, and the key goes on).
    let mut lines_out = String::new();
    let mut records = Vec::new();
    for n in 0..PER_KEY {
        for k in 0..KEYS {
            let key = format!("MR-{k}");
            let (id, data) = match n % 10 {
                0..=6 => (format!("{env}-{k}-{n}"), json!({"id": key})),
                7 | 8 => (format!("{env}-{k}-{}", n - n % 10 + 6), json!({"id": key})),
                _ => (format!("{env}-{k}-{n}"), json!({"id": format!("MR {k}")})),
            };
            match src {
                Src::Queue => lines_out.push_str(&format!(
                    "{}\n",
                    json!({"type": "candidate.merged", "key": key, "id": id, "data": data})
                )),
                Src::Kafka => records.push((key.clone(), World::envelope("candidate.merged", &id, &key, data))),
            }
        }
    }
    let started = Instant::now();
    match &w.broker {
        None => {
            let file = w.t.write("events.jsonl", &lines_out);
            w.t.pgplane(&["events", "publish", "-f", &w.f, "--from", file.to_str().unwrap()]).ok();
        }
        Some(b) => b.produce(&w.topic, &records, None),
    }
    eprintln!("published {} events in {:?}", KEYS * PER_KEY, started.elapsed());
    let started = Instant::now();
    for _ in 0..3 {
        w.consume(3, &[]);
    }
    let f = w.stream_filter();
    // Mid-way: kill one consumer (and the jobs it runs).
    w.wait(
        &format!("SELECT count(*) > 3000 FROM pgplane.events WHERE {f}"),
        "t",
        "3000 recorded",
        Duration::from_secs(600),
    );
    w.kill(0);
    eprintln!("killed one consumer after {:?}", started.elapsed());
    w.settle(KEYS * PER_KEY, Duration::from_secs(1800));
    eprintln!("10,000 events consumed and their jobs run in {:?}", started.elapsed());
    let summary = w.sql(&format!(
        "SELECT count(*) || ' ' || count(DISTINCT event_id) || ' ' || count(DISTINCT job_id) || ' ' ||
                count(*) FILTER (WHERE outcome = 'succeeded') || ' ' || count(*) FILTER (WHERE outcome = 'duplicate')
                || ' ' || count(*) FILTER (WHERE outcome = 'dead_lettered')
           FROM pgplane.events WHERE {f}"
    ));
    assert_eq!(summary, "10000 8000 7000 7000 2000 1000", "rows, ids, jobs, succeeded, duplicates, dead letters");
    // Per key: the jobs were created in event order and ended in event order. A job's end
    // writes its status event in its final transaction, and the next job of the key can
    // only be claimed after that commit, so status ids (a sequence) order the ends without
    // relying on clocks. Exactly one status event per event that had a job.
    let ef = f.replace("consumer", "e.consumer").replace(" AND topic", " AND e.topic");
    let disorder = w.sql(&format!(
        "SELECT count(*) FROM (
           SELECT e.job_id, o.id AS status_id, split_part(e.event_id, '-', 3)::int AS n,
                  lag(e.job_id) OVER w AS prev_job, lag(o.id) OVER w AS prev_status,
                  lag(split_part(e.event_id, '-', 3)::int) OVER w AS prev_n
             FROM pgplane.events e JOIN pgplane.event_outbox o ON o.event_seq = e.seq AND o.stream = 'status'
            WHERE {ef} AND e.job_id IS NOT NULL
           WINDOW w AS (PARTITION BY e.key ORDER BY e.partition, e.\"offset\")) x
          WHERE x.prev_job IS NOT NULL AND (x.job_id < x.prev_job OR x.status_id < x.prev_status OR x.n <= x.prev_n)"
    ));
    assert_eq!(disorder, "0", "jobs of a key created or ended out of order");
    let status = w.sql(&format!(
        "SELECT count(*) FILTER (WHERE e.job_id IS NOT NULL) || ' ' || count(DISTINCT o.event_seq) || ' ' || count(*)
           FROM pgplane.event_outbox o JOIN pgplane.events e ON e.seq = o.event_seq
          WHERE o.stream = 'status' AND {ef}"
    ));
    assert_eq!(status, "7000 8000 8000", "one status event per job, and a failed one per poison event");
    let takeovers =
        w.sql(&format!("SELECT count(*) FROM pgplane.jobs WHERE key LIKE 'event/{env}/%' AND attempts > 1"));
    eprintln!("jobs taken over from the killed consumer: {takeovers}");
}

#[test]
fn queue_ten_thousand_events_three_consumers_one_killed() {
    ten_thousand(Src::Queue, "ev_10k_q");
}

#[test]
fn kafka_ten_thousand_events_three_consumers_one_killed() {
    ten_thousand(Src::Kafka, "ev_10k_k");
}

// ----- serve --consume: the HTTP side ---------------------------------------------------------

/// `serve --consume`: events published over HTTP are consumed and run in the same process;
/// status events are read after an id; the summary, the console's Events page and
/// `/metrics` show them; retry and skip answer in the API's error shape.
#[test]
fn serve_consumes_and_reports_over_http() {
    let w = World::new("ev_http", Src::Queue, "");
    let f = w.f.clone();
    let tpl = w.tpl();
    let s = w.t.serve(
        &f,
        &["--consume", "--workers", "2"],
        &[("PGPLANE_EVENTS_TICK_MS", "300"), ("PGPLANE_JOB_POLL_MS", "200")],
    );
    let body = json!({"type": "candidate.opened", "key": "MR-9", "id": "h1", "data": {"id": "MR-9", "template": tpl}});
    let r = s.req("POST", "/api/v1/events", None, Some(&body.to_string()));
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(r.json()["id"], "h1");
    let bad = s.req("POST", "/api/v1/events", None, Some(r#"{"type": "x", "key": "k", "data": [1]}"#));
    assert_eq!((bad.status, bad.error_code().as_str()), (422, "invalid"));
    let deadline = Instant::now() + Duration::from_secs(180); // the 10,000-event tests share the CPU
    let status = loop {
        let st = s.req("GET", "/api/v1/events/status?after=0", None, None).json();
        if !st.as_array().unwrap().is_empty() || Instant::now() > deadline {
            break st;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let first = &status[0];
    assert_eq!(first["type"], "candidate.opened.succeeded", "{status}");
    assert_eq!(first["subject"], "MR-9");
    let id_num: i64 = first["id"].as_str().unwrap().trim_start_matches("pgplane-status-").parse().unwrap();
    let later = s.req("GET", &format!("/api/v1/events/status?after={id_num}"), None, None).json();
    assert!(later.as_array().unwrap().is_empty(), "nothing after the last one: {later}");
    assert!(w.database_exists(&branch_db(&w, "MR-9")));
    let list = s.req("GET", "/api/v1/events", None, None).json();
    assert_eq!(list[0]["outcome"], "succeeded");
    let seq = list[0]["seq"].as_i64().unwrap();
    let summary = s.req("GET", "/api/v1/events/summary", None, None).json();
    assert_eq!(summary["recent"][0]["id"], "h1");
    let retry = s.req("POST", &format!("/api/v1/events/{seq}/retry"), None, Some(""));
    assert_eq!((retry.status, retry.error_code().as_str()), (409, "conflict"), "{}", retry.body);
    let skip = s.req("POST", "/api/v1/events/99999999/skip", None, Some(""));
    assert_eq!((skip.status, skip.error_code().as_str()), (404, "not_found"));
    let page = s.req("GET", "/events", None, None);
    assert_eq!(page.status, 200);
    assert!(page.body.contains("candidate.opened") && page.body.contains("MR-9"), "{}", page.body);
    assert!(page.body.contains("consumes partitions"), "the page says this process consumes");
    let metrics = s.req("GET", "/metrics", None, None).body;
    assert!(
        metrics.lines().any(|l| l.starts_with("pgplane_events{")
            && l.contains("outcome=\"succeeded\"")
            && l.contains("candidate.opened")),
        "{metrics}"
    );
    assert!(metrics.contains("pgplane_event_lag{"), "lag per partition");
    assert!(
        metrics.lines().any(|l| l.starts_with("pgplane_event_partitions ") && !l.ends_with(" 0")),
        "partitions held"
    );
}

/// Consumers of two environments share the default group name: each still consumes every
/// partition of its own stream (a consumer of another stream is not a member that takes a
/// share of this one's partitions).
#[test]
fn consumers_of_two_environments_each_take_all_their_partitions() {
    let mut a = World::new("ev_two_a", Src::Queue, "");
    let mut b = World::new("ev_two_b", Src::Queue, "");
    a.consume(0, &[]);
    b.consume(0, &[]);
    // Keys spread over every partition; an unknown type is recorded and skipped (no job).
    let events: Vec<(String, String)> = (0..40).map(|i| (format!("k{i}"), format!("two-{i}"))).collect();
    for w in [&a, &b] {
        let batch: Vec<(&str, &str, &str, Value)> =
            events.iter().map(|(k, id)| ("invoice.paid", k.as_str(), id.as_str(), json!({}))).collect();
        w.publish(&batch);
    }
    a.settle(40, Duration::from_secs(60));
    b.settle(40, Duration::from_secs(60));
}
