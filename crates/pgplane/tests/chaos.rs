//! Chaos: three `pgplane serve` replicas and one `pgplane worker` over one control database
//! (one PostgreSQL server, `log_statement=all`); 50 branch creations and 5 applies submitted
//! round-robin across the replicas; two of the four processes, the elected leader among
//! them, killed with SIGKILL at random moments while the jobs run. Then:
//!
//! - every job ends `succeeded`, and its effects happened once: each branch database was
//!   created by exactly one successful `CREATE DATABASE` (read from the server log) and is
//!   the one its record names (by OID);
//! - never two running attempts of one job at once: an observer samples the running jobs
//!   every 20 ms (attempt, worker, `claimed_at`); a job's next attempt is only ever claimed
//!   after the process running its previous attempt was killed. Independently of the jobs
//!   table, every completed deployment writes a row with its session's pid and time (a
//!   `runAlways` changeset that then sleeps): a branch has at most one row per attempt, and
//!   rows of one branch (and of the applies) never overlap in time;
//! - the new leader runs a gc within 10 s of the old one's death: a branch made expired
//!   just before the leader is killed is dropped by a gc job queued after the kill;
//! - every live replica, and one started afterwards, answers `GET /branches` and
//!   `GET /operations` identically.
//!
//! `CHAOS_SEED=N` replays a run's timing choices (the seed is printed, and named in every
//! failure).

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::BufRead;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{Serve, T};

const BRANCHES: usize = 50;
const APPLIES: usize = 5;
/// How long each deployment's marked changeset sleeps after writing its row.
const DEPLOY_SLEEP_MS: i64 = 200;
const APPLY_SLEEP_MS: i64 = 300;
/// Lock class of the leader (`pgld`, see `pgplane_ops::locks`).
const LEADER_CLASS: i64 = 0x7067_6c64;

/// The template: the table every deployment writes its row into.
const MASTER: &str = "\
databaseChangeLog:
  - changeSet:
      id: m1
      author: chaos
      changes:
        - sql:
            sql: CREATE TABLE deploys (pid int NOT NULL, at timestamptz NOT NULL)
";

/// Apply's migrations of the module's own database: one row per completed run.
const APP: &str = "\
databaseChangeLog:
  - changeSet:
      id: a1
      author: chaos
      changes:
        - sql:
            sql: CREATE TABLE apply_runs (pid int NOT NULL, at timestamptz NOT NULL)
  - changeSet:
      id: a2
      author: chaos
      runAlways: true
      changes:
        - sql:
            sql: INSERT INTO apply_runs VALUES (pg_backend_pid(), clock_timestamp())
        - sql:
            sql: SELECT pg_sleep(0.3)
";

/// Every branch's candidate: a row per completed deployment, then a pause (so kills land
/// in the middle of deployments too).
const CANDIDATE: &str = "\
databaseChangeLog:
  - changeSet:
      id: c1
      author: chaos
      runAlways: true
      changes:
        - sql:
            sql: INSERT INTO deploys VALUES (pg_backend_pid(), clock_timestamp())
        - sql:
            sql: SELECT pg_sleep(0.2)
";

/// xorshift64*: the run's timing choices, replayable from the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn epoch_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// SQL on the test's server through one kept session per database (hundreds of checks,
/// polls every 20-50 ms: no psql process per query). Results as `psql -At` prints them.
struct Pg {
    url: String,
    rt: tokio::runtime::Runtime,
    clients: Mutex<BTreeMap<String, Arc<tokio_postgres::Client>>>,
}

impl Pg {
    fn new(url: &str) -> Pg {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        Pg { url: url.to_string(), rt, clients: Mutex::new(BTreeMap::new()) }
    }

    fn q(&self, db: &str, sql: &str) -> String {
        let client = self.clients.lock().unwrap().get(db).cloned();
        let client = match client {
            Some(c) => c,
            None => {
                let url = common::with_db(&self.url, db);
                let (c, conn) = self.rt.block_on(tokio_postgres::connect(&url, tokio_postgres::NoTls)).unwrap();
                self.rt.spawn(conn);
                let c = Arc::new(c);
                self.clients.lock().unwrap().insert(db.to_string(), c.clone());
                c
            }
        };
        let msgs = self.rt.block_on(client.simple_query(sql)).unwrap_or_else(|e| panic!("{db}: {e}\nSQL: {sql}"));
        let mut out: Vec<String> = Vec::new();
        for m in msgs {
            if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
                out.push((0..r.len()).map(|i| r.get(i).unwrap_or("")).collect::<Vec<_>>().join("|"));
            }
        }
        out.join("\n")
    }
}

/// One of the four processes.
struct Proc {
    name: String,
    pid: u32,
    /// The HTTP side of a `serve` replica (None: the worker).
    serve: Option<Serve>,
    worker: Option<(Child, Arc<Mutex<String>>)>,
    /// When it was sent SIGKILL (taken just before the signal).
    killed_at: Option<SystemTime>,
}

impl Proc {
    fn alive(&self) -> bool {
        self.killed_at.is_none()
    }

    fn log(&self) -> String {
        match (&self.serve, &self.worker) {
            (Some(s), _) => s.log(),
            (None, Some((_, log))) => log.lock().unwrap().clone(),
            _ => String::new(),
        }
    }

    fn kill(&mut self) -> SystemTime {
        let at = SystemTime::now();
        let child = match (&mut self.serve, &mut self.worker) {
            (Some(s), _) => &mut s.child,
            (None, Some((c, _))) => c,
            _ => unreachable!("a process is a replica or the worker"),
        };
        child.kill().unwrap();
        child.wait().unwrap();
        self.killed_at = Some(at);
        at
    }

    /// Whether `/metrics` says this replica is the leader.
    fn says_leader(&self) -> bool {
        let Some(s) = &self.serve else { return false };
        let r = s.req("GET", "/metrics", None, None);
        assert_eq!(r.status, 200, "{}: /metrics: {}", self.name, r.body);
        r.body.lines().any(|l| l.trim() == "pgplane_leader 1")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // Replicas stop with their `Serve`; the worker is ours to stop.
        if let Some((child, _)) = &mut self.worker {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Which process leads: a replica says so in `/metrics`; the worker has no HTTP side, so it
/// is the leader when the leader's lock is held and no replica says it is. Leadership only
/// moves when its holder dies, and only this test kills.
fn leader_of(procs: &[Proc], pg: &Pg) -> Option<usize> {
    if let Some(i) = procs.iter().position(|p| p.alive() && p.says_leader()) {
        return Some(i);
    }
    let w = procs.iter().position(|p| p.serve.is_none() && p.alive())?;
    let held = pg.q(
        "pgplane",
        &format!(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 2
                AND classid = {LEADER_CLASS}::oid AND objid = hashtext('chaos')::oid"
        ),
    );
    (held == "1").then_some(w)
}

/// Runs `pgplane worker` and waits for its start line.
fn start_worker(t: &T, f: &str, envs: &[(&str, &str)]) -> (Child, Arc<Mutex<String>>) {
    let mut cmd = t.cmd();
    cmd.args(["worker", "-f", f, "--workers", "4", "--grace", "1s", "--reconcile-interval", "30s"])
        .stderr(Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn pgplane worker");
    let stderr = child.stderr.take().expect("stderr");
    let log = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("pgplane: worker for env") {
                let _ = tx.send(());
            }
            let mut l = sink.lock().unwrap();
            l.push_str(&line);
            l.push('\n');
        }
    });
    if rx.recv_timeout(Duration::from_secs(60)).is_err() {
        let _ = child.kill();
        panic!("pgplane worker did not start:\n{}", log.lock().unwrap());
    }
    (child, log)
}

/// A running job as the observer saw it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Seen {
    attempt: i32,
    worker: String,
    claimed_ms: i64,
}

/// Samples the running jobs every 20 ms until `stop`: (job id → attempts seen).
fn observe(url: String, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<(BTreeMap<i64, BTreeSet<Seen>>, usize)> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
            tokio::spawn(conn);
            let mut seen: BTreeMap<i64, BTreeSet<Seen>> = BTreeMap::new();
            let mut samples = 0;
            while !stop.load(Ordering::SeqCst) {
                let rows = client
                    .query(
                        "SELECT id, attempts, worker, (extract(epoch FROM claimed_at) * 1000)::int8
                           FROM pgplane.jobs WHERE env = 'chaos' AND status = 'running' AND worker IS NOT NULL",
                        &[],
                    )
                    .await
                    .unwrap();
                for r in rows {
                    seen.entry(r.get(0)).or_default().insert(Seen {
                        attempt: r.get(1),
                        worker: r.get(2),
                        claimed_ms: r.get(3),
                    });
                }
                samples += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (seen, samples)
        })
    })
}

/// The pid in a worker name: `serve@host:PID/slot`, `worker@host:PID/slot`.
fn pid_of_worker(name: &str) -> Option<u32> {
    name.rsplit_once(':')?.1.split('/').next()?.parse().ok()
}

/// Successful `CREATE DATABASE` statements per database, from a server log with
/// `log_statement=all` and the default prefix `%m [%p] `. A statement failed when the next
/// line of its backend is an ERROR or FATAL (an error, or a session ended by
/// `pg_terminate_backend` mid-copy); otherwise it committed (CREATE DATABASE is all or nothing).
fn successful_creates(log: &str) -> BTreeMap<String, usize> {
    let mut pending: BTreeMap<u32, String> = BTreeMap::new();
    let mut out: BTreeMap<String, usize> = BTreeMap::new();
    for line in log.lines() {
        let Some((pid, msg)) = line.split_once(" [").and_then(|(_, rest)| {
            let (pid, msg) = rest.split_once("] ")?;
            Some((pid.parse::<u32>().ok()?, msg))
        }) else {
            continue;
        };
        if let Some(db) = pending.remove(&pid) {
            if !(msg.starts_with("ERROR:") || msg.starts_with("FATAL:")) {
                *out.entry(db).or_default() += 1;
            }
        }
        if msg.starts_with("LOG:") {
            if let Some(rest) = msg.split("CREATE DATABASE ").nth(1) {
                let db = rest.split_whitespace().next().unwrap_or_default().trim_matches('"').to_string();
                pending.insert(pid, db);
            }
        }
    }
    for db in pending.into_values() {
        *out.entry(db).or_default() += 1;
    }
    out
}

/// The tests of this binary share one server; they run one at a time so that the chaos
/// test's timing and log are its own.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static ONE: Mutex<()> = Mutex::new(());
    ONE.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[test]
fn three_replicas_and_a_worker_survive_two_kills_including_the_leader() {
    let _one = one_at_a_time();
    let started = Instant::now();
    let seed: u64 = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| (epoch_ms(SystemTime::now()) as u64) ^ u64::from(std::process::id()) << 20)
        | 1;
    let mut rng = Rng(seed);
    eprintln!("chaos: CHAOS_SEED={seed}");
    let t = T::new("chaos");
    t.write("model/master/changelog.yaml", MASTER);
    t.write("model/app/changelog.yaml", APP);
    t.write("model/cand/changelog.yaml", CANDIDATE);
    let f = t.manifest(
        "modules:
  - name: registry
    storage: database
    migrations: model/app/changelog.yaml
templates:
  - name: chaos_tpl
    module: registry
    sources: [model/master/changelog.yaml]
branches:
  database: \"{template}_{branch}\"
  max_per_template: 100
",
    );
    let f = f.to_str().unwrap().to_string();
    t.pgplane(&["apply", "-f", &f, "--yes"]).ok();
    t.pgplane(&["template", "build", "chaos_tpl", "-f", &f]).ok();
    // The branch the new leader's gc must drop; it is made expired just before the kill.
    t.pgplane(&["branch", "create", "expired", "--template", "chaos_tpl", "-f", &f]).ok();

    let envs = [("PGPLANE_LEADER_TICK_MS", "200"), ("PGPLANE_JOB_POLL_MS", "200"), ("PGPLANE_LOG", "info")];
    // The first leader runs its duties when elected, then every 30 s: it never sees the
    // branch expired (the run is over well before). A new leader runs them when elected.
    let serve_args = ["--workers", "4", "--backlog", "200", "--reconcile-interval", "30s", "--grace", "1s"];
    let mut procs: Vec<Proc> = Vec::new();
    for i in 1..=3 {
        let s = t.serve(&f, &serve_args, &envs);
        procs.push(Proc {
            name: format!("serve-{i}"),
            pid: s.child.id(),
            serve: Some(s),
            worker: None,
            killed_at: None,
        });
    }
    let (child, log) = start_worker(&t, &f, &envs);
    procs.push(Proc {
        name: "worker".into(),
        pid: child.id(),
        serve: None,
        worker: Some((child, log)),
        killed_at: None,
    });
    let control_url = common::with_db(&t.server.url, "pgplane");
    let pg = Arc::new(Pg::new(&t.server.url));
    let t0 = Instant::now();
    while leader_of(&procs, &pg).is_none() {
        assert!(t0.elapsed() < Duration::from_secs(10), "no leader elected within 10 s (seed {seed})");
        std::thread::sleep(Duration::from_millis(50));
    }
    let startup = started.elapsed();

    let stop = Arc::new(AtomicBool::new(false));
    let observer = observe(control_url.clone(), stop.clone());
    let procs = Arc::new(Mutex::new(procs));

    // The killer: two kills at random moments after the first submission, one of them the
    // leader of that moment (which one comes first is random too). A kill and an HTTP
    // request never overlap (`procs` is locked for both): a request to a replica either
    // completed or was never sent, so the jobs accepted are exactly the 202s.
    let leader_first = rng.below(2) == 0;
    let first_ms = 300 + rng.below(4700);
    let second_ms = first_ms + 500 + rng.below(4500);
    let other_pick = rng.next();
    let submit_start = Instant::now();
    let submit_wall = SystemTime::now();
    let killer = {
        let procs = procs.clone();
        let pg = pg.clone();
        std::thread::spawn(move || {
            let mut kills: Vec<(String, SystemTime, bool)> = Vec::new();
            let mut new_leader_after: Option<Duration> = None;
            for (n, at_ms) in [first_ms, second_ms].into_iter().enumerate() {
                let wait = Duration::from_millis(at_ms).saturating_sub(submit_start.elapsed());
                std::thread::sleep(wait);
                let leader_kill = (n == 0) == leader_first;
                let mut ps = procs.lock().unwrap();
                let leader = {
                    let deadline = Instant::now() + Duration::from_secs(10);
                    loop {
                        if let Some(l) = leader_of(&ps, &pg) {
                            break l;
                        }
                        assert!(Instant::now() < deadline, "no leader to kill (seed {seed})");
                        std::thread::sleep(Duration::from_millis(20));
                    }
                };
                let victim = if leader_kill {
                    // Expired from now on: only a gc queued after this kill can drop it.
                    pg.q(
                        "pgplane",
                        "UPDATE pgplane.branches SET expires_at = now() - interval '1 second' WHERE env = 'chaos' AND id = 'expired'",
                    );
                    leader
                } else {
                    let others: Vec<usize> = (0..ps.len()).filter(|&i| i != leader && ps[i].alive()).collect();
                    others[(other_pick % others.len() as u64) as usize]
                };
                let at = ps[victim].kill();
                kills.push((ps[victim].name.clone(), at, leader_kill));
                if leader_kill {
                    let deadline = Instant::now() + Duration::from_secs(10);
                    while leader_of(&ps, &pg).is_none() {
                        assert!(Instant::now() < deadline, "no new leader within 10 s (seed {seed})");
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    new_leader_after = Some(at.elapsed().unwrap_or_default());
                }
            }
            (kills, new_leader_after)
        })
    };

    // Submissions: round-robin over the replicas alive at the time; applies spread among them.
    let mut accepted: Vec<(String, i64)> = Vec::new();
    let mut next = 0usize;
    let apply_every = (BRANCHES + APPLIES) / APPLIES;
    let (mut b, mut a) = (0, 0);
    while b < BRANCHES || a < APPLIES {
        let (what, path, body) = if a < APPLIES && (b + a) % apply_every == 0 {
            a += 1;
            (format!("apply#{a}"), "/api/v1/apply", "{}".to_string())
        } else {
            b += 1;
            let id = format!("b{b:02}");
            let body = format!(
                "{{\"id\": \"{id}\", \"template\": \"chaos_tpl\", \"sources\": [\"model/cand/changelog.yaml\"]}}"
            );
            (id, "/api/v1/branches", body)
        };
        let ps = procs.lock().unwrap();
        let live: Vec<&Proc> = ps.iter().filter(|p| p.alive() && p.serve.is_some()).collect();
        let p = live[next % live.len()];
        next += 1;
        let r = p.serve.as_ref().unwrap().req("POST", path, None, Some(&body));
        assert_eq!(r.status, 202, "{what} on {}: {} (seed {seed})", p.name, r.body);
        accepted.push((what, r.json()["id"].as_i64().unwrap()));
    }
    let submitted_in = submit_start.elapsed();
    let (kills, new_leader_after) = killer.join().unwrap();
    let procs = Arc::try_unwrap(procs).ok().unwrap().into_inner().unwrap();
    let kill_of = |name: &str| kills.iter().find(|k| k.0 == name).map(|k| k.1);
    let leader_killed_at = kills.iter().find(|k| k.2).map(|k| k.1).unwrap();
    let context = || {
        let mut s = format!("seed {seed}; kills {kills:?}\n");
        for p in &procs {
            s.push_str(&format!("--- {} (pid {}, killed {:?})\n{}\n", p.name, p.pid, p.killed_at, p.log()));
        }
        s
    };

    // The new leader's gc drops the expired branch within 10 s of the old leader's death.
    let deadline = leader_killed_at + Duration::from_secs(10);
    while pg.q("pgplane", "SELECT count(*) FROM pgplane.branches WHERE env = 'chaos' AND id = 'expired'") != "0" {
        assert!(
            SystemTime::now() < deadline,
            "the expired branch is still there 10 s after the leader died\n{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let gc_after = leader_killed_at.elapsed().unwrap_or_default();
    // The branch's row goes before its gc job records its end: wait for that too (a
    // loaded machine takes a while between the two).
    let gc_query = format!(
        "SELECT count(*) FROM pgplane.jobs WHERE env = 'chaos' AND kind = 'branch_gc' AND status = 'succeeded'
          AND created_at >= to_timestamp({}::float8 / 1000) AND result::text LIKE '%\"expired\"%'",
        epoch_ms(leader_killed_at)
    );
    let gc_deadline = SystemTime::now() + Duration::from_secs(30);
    let mut gc = pg.q("pgplane", &gc_query);
    while gc != "1" && SystemTime::now() < gc_deadline {
        std::thread::sleep(Duration::from_millis(100));
        gc = pg.q("pgplane", &gc_query);
    }
    assert_eq!(gc, "1", "the expired branch was not dropped by a gc queued after the leader died\n{}", context());
    assert_eq!(pg.q("postgres", "SELECT count(*) FROM pg_database WHERE datname = 'chaos_tpl_expired'"), "0");

    // Every job ends.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let open = pg
            .q("pgplane", "SELECT count(*) FROM pgplane.jobs WHERE env = 'chaos' AND status IN ('queued', 'running')");
        if open == "0" {
            break;
        }
        assert!(Instant::now() < deadline, "{open} jobs still open after 120 s\n{}", context());
        std::thread::sleep(Duration::from_millis(100));
    }
    let all_done = submit_start.elapsed();
    stop.store(true, Ordering::SeqCst);
    let (seen, samples) = observer.join().unwrap();

    // Every job of the environment succeeded: ours, and the gc jobs the leaders queued.
    let failed = pg.q(
        "pgplane",
        "SELECT coalesce(string_agg(id || ' ' || kind || ' ' || resource || ': ' || status || ' ' || coalesce(error, ''), E'\\n'), '')
           FROM pgplane.jobs WHERE env = 'chaos' AND status <> 'succeeded'",
    );
    assert!(failed.is_empty(), "jobs that did not succeed:\n{failed}\n{}", context());
    let ids: Vec<i64> = accepted.iter().map(|a| a.1).collect();
    let id_list = ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
    let kinds = pg.q(
        "pgplane",
        &format!(
            "SELECT kind || ' ' || count(*) FROM pgplane.jobs WHERE id IN ({id_list}) GROUP BY kind ORDER BY kind"
        ),
    );
    assert_eq!(common::lines(&kinds), [format!("apply {APPLIES}"), format!("branch_create {BRANCHES}")]);

    // Attempts: the next attempt of a job is claimed only after the process running the
    // previous one was killed; and a killed process finished nothing after its death.
    let jobs = pg.q(
        "pgplane",
        &format!(
            "SELECT id || '|' || kind || '|' || coalesce(resource, '') || '|' || attempts || '|' || worker || '|'
                    || (extract(epoch FROM claimed_at) * 1000)::int8 || '|' || (extract(epoch FROM finished_at) * 1000)::int8
               FROM pgplane.jobs WHERE id IN ({id_list}) ORDER BY id"
        ),
    );
    let name_of_pid = |pid: u32| procs.iter().find(|p| p.pid == pid).map(|p| p.name.clone());
    let mut takeovers = 0;
    let mut attempts_of: BTreeMap<String, i32> = BTreeMap::new();
    for line in common::lines(&jobs) {
        let v: Vec<&str> = line.split('|').collect();
        let (id, kind, resource, attempts, worker) = (v[0].parse::<i64>().unwrap(), v[1], v[2], v[3], v[4]);
        let (claimed_ms, finished_ms): (i64, i64) = (v[5].parse().unwrap(), v[6].parse().unwrap());
        let attempts: i32 = attempts.parse().unwrap();
        let last =
            name_of_pid(pid_of_worker(worker).unwrap()).unwrap_or_else(|| panic!("job {id}: unknown worker {worker}"));
        // A statement sent just before the kill may run just after it (under load, some
        // time after): a second is far less than a zombie would take.
        if let Some(k) = kill_of(&last) {
            assert!(
                finished_ms < epoch_ms(k) + 1000,
                "job {id} was finished by {last} {} ms after it was killed\n{}",
                finished_ms - epoch_ms(k),
                context()
            );
        }
        attempts_of.insert(if kind == "apply" { format!("apply/{id}") } else { resource.to_string() }, attempts);
        if attempts > 1 {
            takeovers += 1;
        }
        let mut history: Vec<Seen> = seen.get(&id).map(|s| s.iter().cloned().collect()).unwrap_or_default();
        history.push(Seen { attempt: attempts, worker: worker.to_string(), claimed_ms });
        history.sort();
        history.dedup();
        for pair in history.windows(2) {
            let (before, after) = (&pair[0], &pair[1]);
            assert!(
                before.attempt < after.attempt,
                "job {id}: one attempt with two workers or claims: {history:?}\n{}",
                context()
            );
            let owner = name_of_pid(pid_of_worker(&before.worker).unwrap()).unwrap();
            let Some(died) = kill_of(&owner) else {
                panic!(
                    "job {id}: attempt {} claimed while {owner}, running attempt {}, was alive: {history:?}\n{}",
                    after.attempt,
                    before.attempt,
                    context()
                );
            };
            assert!(
                after.claimed_ms >= epoch_ms(died),
                "job {id}: attempt {} claimed {} ms before {owner} (attempt {}) was killed: {history:?}\n{}",
                after.attempt,
                epoch_ms(died) - after.claimed_ms,
                before.attempt,
                context()
            );
        }
    }

    // Each branch database was created once, is the one recorded, and was deployed at most
    // once per attempt, never by two sessions at once.
    let creates = successful_creates(&t.server.log());
    let mut rows_total = 0;
    for n in 1..=BRANCHES {
        let id = format!("b{n:02}");
        let db = format!("chaos_tpl_{id}");
        assert_eq!(creates.get(&db), Some(&1), "{db}: successful CREATE DATABASE statements\n{}", context());
        let status =
            pg.q("pgplane", &format!("SELECT status FROM pgplane.branches WHERE env = 'chaos' AND id = '{id}'"));
        assert_eq!(status, "SUCCESS", "branch {id}\n{}", context());
        let oid = pg.q("postgres", &format!("SELECT oid FROM pg_database WHERE datname = '{db}'"));
        let recorded = pg.q(
            "pgplane",
            &format!(
                "SELECT coalesce(database_oid::text, 'NULL') FROM pgplane.branches WHERE env = 'chaos' AND id = '{id}'"
            ),
        );
        assert_eq!(recorded, oid, "branch {id}: the recorded database OID\n{}", context());
        let rows = pg.q(&db, "SELECT (extract(epoch FROM at) * 1000)::int8 FROM deploys ORDER BY at");
        let rows: Vec<i64> = common::lines(&rows).iter().map(|r| r.parse().unwrap()).collect();
        rows_total += rows.len();
        let attempts = attempts_of[&id];
        assert!(
            !rows.is_empty() && rows.len() as i32 <= attempts,
            "branch {id}: {} deployment rows for {attempts} attempt(s)\n{}",
            rows.len(),
            context()
        );
        for pair in rows.windows(2) {
            assert!(
                pair[1] - pair[0] >= DEPLOY_SLEEP_MS,
                "branch {id}: two deployments overlapped: {rows:?}\n{}",
                context()
            );
        }
    }
    let apply_rows = pg.q("chaos_registry", "SELECT (extract(epoch FROM at) * 1000)::int8 FROM apply_runs ORDER BY at");
    let apply_rows: Vec<i64> = common::lines(&apply_rows).iter().map(|r| r.parse().unwrap()).collect();
    let apply_attempts: i32 = attempts_of.iter().filter(|(k, _)| k.starts_with("apply/")).map(|(_, a)| a).sum();
    // The CLI's apply before the replicas started ran it once too.
    assert!(
        apply_rows.len() > APPLIES && apply_rows.len() as i32 <= apply_attempts + 1,
        "{} apply runs for {apply_attempts} attempts\n{}",
        apply_rows.len(),
        context()
    );
    for pair in apply_rows.windows(2) {
        assert!(pair[1] - pair[0] >= APPLY_SLEEP_MS, "two applies overlapped: {apply_rows:?}\n{}", context());
    }

    // Every live replica, and one started now, answers the same.
    let fresh = t.serve(&f, &["--workers", "0"], &envs);
    let mut answers: Vec<(String, String, String)> = Vec::new();
    for (name, s) in procs
        .iter()
        .filter(|p| p.alive())
        .filter_map(|p| p.serve.as_ref().map(|s| (p.name.clone(), s)))
        .chain([("fresh".to_string(), &fresh)])
    {
        let b = s.req("GET", "/api/v1/branches", None, None);
        let o = s.req("GET", "/api/v1/operations?limit=1000", None, None);
        assert_eq!((b.status, o.status), (200, 200), "{name}: {} {}", b.body, o.body);
        answers.push((name, b.body, o.body));
    }
    for a in &answers[1..] {
        assert_eq!(a.1, answers[0].1, "GET /branches differs between {} and {}", a.0, answers[0].0);
        assert_eq!(a.2, answers[0].2, "GET /operations differs between {} and {}", a.0, answers[0].0);
    }
    let listed: serde_json::Value = serde_json::from_str(&answers[0].1).unwrap();
    assert_eq!(listed.as_array().map(Vec::len), Some(BRANCHES), "{listed}");
    for p in procs.iter().filter(|p| p.alive()) {
        assert!(!p.log().contains("panicked"), "{} panicked:\n{}", p.name, p.log());
    }

    let running_samples: usize = seen.values().map(BTreeSet::len).sum();
    eprintln!(
        "chaos: seed {seed}; startup {:.1}s; {} jobs submitted in {:.1}s to {} replicas; kills: {}; new leader {:.2}s and \
         gc {:.2}s after the leader's death; all done {:.1}s after the first submission; {takeovers} jobs taken over; \
         {samples} samples ({running_samples} attempt sightings); {rows_total} branch deployments, {} applies run; \
         {} replicas answer the same; total {:.1}s",
        startup.as_secs_f64(),
        accepted.len(),
        submitted_in.as_secs_f64(),
        3,
        kills
            .iter()
            .map(|(n, at, l)| format!(
                "{n}{} at {:.2}s",
                if *l { " (leader)" } else { "" },
                at.duration_since(submit_wall).unwrap_or_default().as_secs_f64()
            ))
            .collect::<Vec<_>>()
            .join(", "),
        new_leader_after.unwrap_or_default().as_secs_f64(),
        gc_after.as_secs_f64(),
        all_done.as_secs_f64(),
        apply_rows.len(),
        answers.len(),
        started.elapsed().as_secs_f64(),
    );
}

/// Regression (found by the chaos test): a worker killed after its branch's copy but before
/// the copy's OID was recorded left a branch whose resumed create kept the database without
/// recording it, so pgplane took its own database for someone else's: `delete` left it
/// behind and `reset` refused. The kill is simulated exactly: the OID record undone while
/// the deployment runs, then SIGKILL.
#[test]
fn a_create_resumed_after_its_copy_records_the_database_oid() {
    let _one = one_at_a_time();
    let t = T::new("chaos_oid");
    t.write("model/master/changelog.yaml", MASTER);
    t.write(
        "model/slow/changelog.yaml",
        "databaseChangeLog:\n  - changeSet:\n      id: s1\n      author: chaos\n      changes:\n        - sql:\n            sql: SELECT pg_sleep(3)\n",
    );
    let f = t.manifest(
        "modules:
  - name: registry
    storage: database
templates:
  - name: chaos_oid_tpl
    module: registry
    sources: [model/master/changelog.yaml]
branches:
  database: \"{template}_{branch}\"
",
    );
    let f = f.to_str().unwrap().to_string();
    t.pgplane(&["apply", "-f", &f, "--yes"]).ok();
    t.pgplane(&["template", "build", "chaos_oid_tpl", "-f", &f]).ok();
    let envs = [("PGPLANE_LEADER_TICK_MS", "200"), ("PGPLANE_JOB_POLL_MS", "200")];
    let mut a = t.serve(&f, &["--workers", "1"], &envs);
    let body = "{\"id\": \"x\", \"template\": \"chaos_oid_tpl\", \"sources\": [\"model/slow/changelog.yaml\"]}";
    let r = a.req("POST", "/api/v1/branches", None, Some(body));
    assert_eq!(r.status, 202, "{}", r.body);
    let op = r.json()["id"].as_i64().unwrap();
    t.wait_for_sql(
        "postgres",
        "SELECT count(*) FROM pg_stat_activity WHERE datname = 'chaos_oid_tpl_x' AND query LIKE '%pg_sleep(3)%'",
        "1",
        "the deployment never started",
    );
    // As if the worker had died between the copy and its record.
    t.sql("pgplane", "UPDATE pgplane.branches SET database_oid = NULL WHERE env = 'chaos_oid' AND id = 'x'");
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    let b = t.serve(&f, &["--workers", "1"], &envs);
    t.wait_for_sql(
        "pgplane",
        &format!("SELECT status || ' ' || attempts FROM pgplane.jobs WHERE id = {op}"),
        "succeeded 2",
        "the create was not resumed and finished by the second replica",
    );
    let oid = t.sql("postgres", "SELECT oid FROM pg_database WHERE datname = 'chaos_oid_tpl_x'");
    let recorded = t.sql(
        "pgplane",
        "SELECT coalesce(database_oid::text, 'NULL') FROM pgplane.branches WHERE env = 'chaos_oid' AND id = 'x'",
    );
    assert_eq!(recorded, oid, "the resumed create recorded its database");
    let r = b.req("DELETE", "/api/v1/branches/x", None, None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.json()["kept"].is_null(), "delete kept the branch's own database: {}", r.body);
    assert_eq!(t.sql("postgres", "SELECT count(*) FROM pg_database WHERE datname = 'chaos_oid_tpl_x'"), "0");
}

/// Regression (found reading the code the chaos test runs): a worker killed after its
/// create claimed the branch's row but before the row named its job left a row the resumed
/// create took for someone else's branch ("already exists"), so the create failed instead of
/// finishing. A trigger holds the statement that follows the claim; the worker is killed
/// there.
#[test]
fn a_create_killed_right_after_claiming_its_branch_is_resumed() {
    let _one = one_at_a_time();
    let t = T::new("chaos_claim");
    t.write("model/master/changelog.yaml", MASTER);
    let f = t.manifest(
        "modules:
  - name: registry
    storage: database
templates:
  - name: chaos_claim_tpl
    module: registry
    sources: [model/master/changelog.yaml]
branches:
  database: \"{template}_{branch}\"
",
    );
    let f = f.to_str().unwrap().to_string();
    t.pgplane(&["apply", "-f", &f, "--yes"]).ok();
    t.pgplane(&["template", "build", "chaos_claim_tpl", "-f", &f]).ok();
    // The first change of the row after its claim waits here.
    t.sql(
        "pgplane",
        "CREATE FUNCTION public.chaos_hold() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN PERFORM pg_catalog.pg_sleep(60); RETURN NEW; END $$;
         CREATE TRIGGER chaos_hold BEFORE UPDATE ON pgplane.branches FOR EACH ROW
           WHEN (OLD.env = 'chaos_claim') EXECUTE FUNCTION public.chaos_hold()",
    );
    let envs = [("PGPLANE_LEADER_TICK_MS", "200"), ("PGPLANE_JOB_POLL_MS", "200")];
    let mut a = t.serve(&f, &["--workers", "1"], &envs);
    let r = a.req("POST", "/api/v1/branches", None, Some("{\"id\": \"x\", \"template\": \"chaos_claim_tpl\"}"));
    assert_eq!(r.status, 202, "{}", r.body);
    let op = r.json()["id"].as_i64().unwrap();
    let held =
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep' AND query LIKE 'UPDATE pgplane.branches%'";
    t.wait_for_sql("pgplane", held, "1", "the claim was never followed by the held update");
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    // Its statement would sleep on without a client; it would have failed at its end.
    t.sql(
        "pgplane",
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
          WHERE wait_event = 'PgSleep' AND query LIKE 'UPDATE pgplane.branches%'",
    );
    t.sql("pgplane", "DROP TRIGGER chaos_hold ON pgplane.branches; DROP FUNCTION public.chaos_hold()");
    assert_eq!(
        t.sql("pgplane", "SELECT status FROM pgplane.branches WHERE env = 'chaos_claim' AND id = 'x'"),
        "RUNNING"
    );
    let _b = t.serve(&f, &["--workers", "1"], &envs);
    t.wait_for_sql(
        "pgplane",
        &format!("SELECT status IN ('succeeded', 'failed') FROM pgplane.jobs WHERE id = {op}"),
        "t",
        "the create never ended",
    );
    let job = t.sql(
        "pgplane",
        &format!("SELECT status || ' ' || attempts || ' ' || coalesce(error, '') FROM pgplane.jobs WHERE id = {op}"),
    );
    assert_eq!(job, "succeeded 2", "the resumed create");
    assert_eq!(
        t.sql("pgplane", "SELECT status FROM pgplane.branches WHERE env = 'chaos_claim' AND id = 'x'"),
        "SUCCESS"
    );
    let oid = t.sql("postgres", "SELECT oid FROM pg_database WHERE datname = 'chaos_claim_tpl_x'");
    let recorded = t.sql("pgplane", "SELECT database_oid FROM pgplane.branches WHERE env = 'chaos_claim' AND id = 'x'");
    assert_eq!(recorded, oid);
}

/// Regression (found reading the code the chaos test runs): a reset whose worker was killed
/// after it copied the template again but before it recorded the new copy's OID could not
/// be resumed: its next attempt took the branch's new database for one re-created outside
/// pgplane and refused it, and the branch stayed FAILED. A trigger holds the OID's record;
/// the worker is killed there.
#[test]
fn a_reset_killed_after_its_copy_is_resumed() {
    let _one = one_at_a_time();
    let t = T::new("chaos_reset");
    t.write("model/master/changelog.yaml", MASTER);
    let f = t.manifest(
        "modules:
  - name: registry
    storage: database
templates:
  - name: chaos_reset_tpl
    module: registry
    sources: [model/master/changelog.yaml]
branches:
  database: \"{template}_{branch}\"
",
    );
    let f = f.to_str().unwrap().to_string();
    t.pgplane(&["apply", "-f", &f, "--yes"]).ok();
    t.pgplane(&["template", "build", "chaos_reset_tpl", "-f", &f]).ok();
    t.pgplane(&["branch", "create", "x", "--template", "chaos_reset_tpl", "-f", &f]).ok();
    let before = t.sql("postgres", "SELECT oid FROM pg_database WHERE datname = 'chaos_reset_tpl_x'");
    t.sql(
        "pgplane",
        "CREATE FUNCTION public.chaos_hold_oid() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN PERFORM pg_catalog.pg_sleep(60); RETURN NEW; END $$;
         CREATE TRIGGER chaos_hold_oid BEFORE UPDATE ON pgplane.branches FOR EACH ROW
           WHEN (OLD.env = 'chaos_reset' AND NEW.database_oid IS DISTINCT FROM OLD.database_oid AND NEW.database_oid <> 0)
           EXECUTE FUNCTION public.chaos_hold_oid()",
    );
    let envs = [("PGPLANE_LEADER_TICK_MS", "200"), ("PGPLANE_JOB_POLL_MS", "200")];
    let mut a = t.serve(&f, &["--workers", "1"], &envs);
    let r = a.req("POST", "/api/v1/branches/x/reset", None, None);
    assert_eq!(r.status, 202, "{}", r.body);
    let op = r.json()["id"].as_i64().unwrap();
    let held = "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep' AND query LIKE 'UPDATE pgplane.branches SET database_oid%'";
    t.wait_for_sql("pgplane", held, "1", "the copy's record was never held");
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    t.sql(
        "pgplane",
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
          WHERE wait_event = 'PgSleep' AND query LIKE 'UPDATE pgplane.branches SET database_oid%'",
    );
    t.sql("pgplane", "DROP TRIGGER chaos_hold_oid ON pgplane.branches; DROP FUNCTION public.chaos_hold_oid()");
    let copied = t.sql("postgres", "SELECT oid FROM pg_database WHERE datname = 'chaos_reset_tpl_x'");
    assert_ne!(copied, before, "the first attempt copied the template again before it was killed");
    let _b = t.serve(&f, &["--workers", "1"], &envs);
    t.wait_for_sql(
        "pgplane",
        &format!("SELECT status IN ('succeeded', 'failed') FROM pgplane.jobs WHERE id = {op}"),
        "t",
        "the reset never ended",
    );
    let job = t.sql(
        "pgplane",
        &format!("SELECT status || ' ' || attempts || ' ' || coalesce(error, '') FROM pgplane.jobs WHERE id = {op}"),
    );
    assert_eq!(job, "succeeded 2", "the resumed reset");
    assert_eq!(
        t.sql("pgplane", "SELECT status FROM pgplane.branches WHERE env = 'chaos_reset' AND id = 'x'"),
        "SUCCESS"
    );
    let oid = t.sql("postgres", "SELECT oid FROM pg_database WHERE datname = 'chaos_reset_tpl_x'");
    let recorded = t.sql("pgplane", "SELECT database_oid FROM pgplane.branches WHERE env = 'chaos_reset' AND id = 'x'");
    assert_eq!(recorded, oid);
}
