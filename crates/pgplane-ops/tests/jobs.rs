//! The durable job queue against a real PostgreSQL server (one per test binary, the
//! embedded server started through the library): claims are exclusive, dead workers'
//! jobs are recovered and resumed, lost leases stop the old worker, jobs with one key run
//! in order, cancel and shutdown behave as documented, and leadership moves when the
//! leader dies. Each test uses its own manifest fingerprint, so they run in parallel on the
//! shared queue without taking each other's jobs.

#![allow(clippy::unwrap_used)]

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use pgplane_core::job::JobStatus;
use pgplane_ops::cancel::Cancel;
use pgplane_ops::conn::Target;
use pgplane_ops::control::{self, CONTROL_DB};
use pgplane_ops::error::Error;
use pgplane_ops::events::Events;
use pgplane_ops::jobs::{leader, queue, worker, Done, Job, NewJob, Runner};
use pgplane_ops::local::LocalServer;
use pgplane_ops::secrets::Keyring;

struct Server {
    target: Target,
}

static SERVER: OnceLock<Server> = OnceLock::new();

fn server() -> &'static Server {
    SERVER.get_or_init(|| {
        let root = std::env::temp_dir().join(format!("pgplane-ops-jobs-{}", std::process::id()));
        std::fs::create_dir_all(&root).unwrap();
        let home = root.join("home");
        let keys = Keyring::load(&home).unwrap();
        let local = LocalServer::new(&home);
        std::env::set_var("PGPLANE_LOCAL_OPTIONS", "-c fsync=off -c full_page_writes=off -c max_connections=200");
        let status = local.start(&keys, None).unwrap();
        let bindir = pgplane_ops::local::find_bindir().unwrap();
        // Watchdog: stop the server and remove its folder once this test process is gone.
        let as_postgres = if unsafe_is_root() { "runuser -u postgres -- " } else { "" };
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; {as_postgres}'{pg_ctl}' -D '{data}' stop -m immediate >/dev/null 2>&1; rm -rf '{root}'",
            pid = std::process::id(),
            pg_ctl = bindir.join("pg_ctl").display(),
            data = status.data_dir,
            root = root.display(),
        );
        #[allow(clippy::zombie_processes)]
        let _ = std::process::Command::new("sh")
            .args(["-c", &script])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let target = Target::from_url("main", &local.url(&keys).unwrap()).unwrap();
        rt().block_on(async {
            let admin = target.connect(None).await.unwrap();
            control::create_if_missing(&admin).await.unwrap();
            let c = control::ensure(&target).await.unwrap();
            c.batch_execute("CREATE TABLE IF NOT EXISTS public.ran (job bigint, worker text, started timestamptz, ended timestamptz)")
                .await
                .unwrap();
        });
        Server { target }
    })
}

fn unsafe_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| s.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false)
}

/// Recovery (`recover_lapsed`, and every leader's tick) acts on the whole queue, not on one
/// test's fingerprint: a test that leaves a job lapsed, or that recovers, holds this, so
/// one test's recovery does not take another's lapsed job away from under its asserts.
fn recovery() -> std::sync::MutexGuard<'static, ()> {
    static RECOVERY: std::sync::Mutex<()> = std::sync::Mutex::new(());
    RECOVERY.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs a test body on a fresh runtime, with the server started first (outside it).
fn block<F: Future>(f: F) -> F::Output {
    server();
    rt().block_on(f)
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

async fn control() -> tokio_postgres::Client {
    server().target.connect(Some(CONTROL_DB)).await.unwrap()
}

fn new_job(fp: &str, n: usize) -> NewJob {
    let mut j = NewJob::new("test", Some("jobs_test"));
    j.fingerprint = Some(fp.to_string());
    j.resource = Some(format!("r{n}"));
    j
}

type RunFn = dyn Fn(Job, Cancel) -> Pin<Box<dyn Future<Output = Result<Done, Error>>>> + Send + Sync;

/// A runner made of a closure.
struct FnRunner(Box<RunFn>);

impl Runner for FnRunner {
    fn run<'a>(
        &'a self,
        job: &'a Job,
        _events: &'a dyn Events,
        cancel: &'a Cancel,
    ) -> Pin<Box<dyn Future<Output = Result<Done, Error>> + 'a>> {
        (self.0)(job.clone(), cancel.clone())
    }
}

/// Records the job in `public.ran` (start and end), taking `ms` in between.
fn recording_runner(ms: u64) -> Arc<dyn Runner> {
    Arc::new(FnRunner(Box::new(move |job, _cancel| {
        Box::pin(async move {
            let c = server().target.connect(Some(CONTROL_DB)).await?;
            let worker = job.worker.clone().unwrap_or_default();
            c.execute("INSERT INTO public.ran VALUES ($1, $2, clock_timestamp(), NULL)", &[&job.id, &worker]).await?;
            tokio::time::sleep(Duration::from_millis(ms)).await;
            c.execute("UPDATE public.ran SET ended = clock_timestamp() WHERE job = $1 AND ended IS NULL", &[&job.id])
                .await?;
            Ok(Done { changes: 1, ..Default::default() })
        })
    })))
}

fn options(fp: &str, slots: usize) -> worker::Options {
    let mut o = worker::Options::new(format!("test-{fp}"), slots, vec![fp.to_string()]);
    o.poll = Duration::from_millis(200);
    o.heartbeat = Duration::from_millis(200);
    o
}

async fn wait_until_final(c: &tokio_postgres::Client, fp: &str, n: i64, within: Duration) {
    let start = Instant::now();
    loop {
        let done: i64 = c
            .query_one(
                "SELECT count(*) FROM pgplane.jobs WHERE fingerprint = $1 AND status IN ('succeeded', 'failed', 'cancelled')",
                &[&fp],
            )
            .await
            .unwrap()
            .get(0);
        if done >= n {
            return;
        }
        assert!(start.elapsed() < within, "only {done} of {n} jobs ended within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn every_job_runs_exactly_once_across_workers() {
    let fp = "exactly_once";
    block(async {
        let c = control().await;
        for i in 0..200 {
            queue::submit(&c, &new_job(fp, i)).await.unwrap();
        }
        let a = worker::Worker::start(server().target.clone(), options(fp, 4), recording_runner(2), None);
        let b = worker::Worker::start(server().target.clone(), options(fp, 4), recording_runner(2), None);
        wait_until_final(&c, fp, 200, Duration::from_secs(60)).await;
        let row = c
            .query_one(
                "SELECT count(*), count(DISTINCT r.job), count(DISTINCT r.worker) FROM public.ran r
                   JOIN pgplane.jobs j ON j.id = r.job WHERE j.fingerprint = $1",
                &[&fp],
            )
            .await
            .unwrap();
        let (runs, jobs, workers): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
        assert_eq!((runs, jobs), (200, 200), "every job ran once");
        assert!(workers >= 2, "the work was shared: {workers} worker slots ran jobs");
        let statuses: Vec<(String, i64)> = c
            .query("SELECT status, count(*) FROM pgplane.jobs WHERE fingerprint = $1 GROUP BY 1", &[&fp])
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        assert_eq!(statuses, [("succeeded".to_string(), 200)]);
        a.shutdown(Duration::from_secs(1)).await;
        b.shutdown(Duration::from_secs(1)).await;
    });
}

#[test]
fn a_dead_workers_job_is_reported_then_recovered_and_resumed() {
    let _recovery = recovery();
    let fp = "dead_worker";
    block(async {
        let c = control().await;
        let id = queue::submit(&c, &new_job(fp, 0)).await.unwrap();
        // A worker claims it, then dies (its session ends, and the job's lock with it).
        let mut dying = server().target.connect(Some(CONTROL_DB)).await.unwrap();
        let attempt =
            queue::claim(&mut dying, "dying/0", &[fp.to_string()], Duration::from_secs(10)).await.unwrap().unwrap();
        assert_eq!((attempt.job.id, attempt.attempt), (id, 1));
        assert_eq!(queue::get(&c, id).await.unwrap().unwrap().status, JobStatus::Running);
        drop(dying);
        // Readers tell at once what the leader will do; the row still says running.
        let start = Instant::now();
        loop {
            let j = queue::get(&c, id).await.unwrap().unwrap();
            if j.status == JobStatus::Queued {
                assert_eq!(j.stored_status, JobStatus::Running);
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(5), "the dead worker's job still looks running");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let r = queue::recover_lapsed(&c, Duration::from_secs(30)).await.unwrap();
        assert!(r.requeued.contains(&id), "{r:?}");
        // Another worker takes it over: attempt 2, and it ends there.
        let w = worker::Worker::start(server().target.clone(), options(fp, 1), recording_runner(1), None);
        wait_until_final(&c, fp, 1, Duration::from_secs(20)).await;
        let j = queue::get(&c, id).await.unwrap().unwrap();
        assert_eq!((j.status, j.attempts), (JobStatus::Succeeded, 2), "{j:?}");
        assert_eq!(j.stages.first().map(|s| s.name.as_str()), Some("resume"), "{:?}", j.stages);
        assert_eq!(w.claims(), (1, 1), "one claim, a takeover");
        w.shutdown(Duration::from_secs(1)).await;
    });
}

#[test]
fn a_worker_that_lost_its_attempt_can_no_longer_write_it() {
    let _recovery = recovery();
    let fp = "lost_lease";
    block(async {
        let c = control().await;
        let id = queue::submit(&c, &new_job(fp, 0)).await.unwrap();
        let mut old = server().target.connect(Some(CONTROL_DB)).await.unwrap();
        let stale = queue::claim(&mut old, "old/0", &[fp.to_string()], Duration::from_secs(10)).await.unwrap().unwrap();
        // Its session is ended from outside (a hung worker the leader gave up on).
        c.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'pgplane' AND pid = (
               SELECT l.pid FROM pg_locks l WHERE l.locktype = 'advisory' AND l.objid = ($1::bigint & 2147483647)::oid
                 AND l.classid = x'70676f70'::int::oid LIMIT 1)",
            &[&id],
        )
        .await
        .unwrap();
        // The backend exits a moment later; then the leader's recovery puts the job back.
        let t = Instant::now();
        while !queue::recover_lapsed(&c, Duration::from_secs(30)).await.unwrap().requeued.contains(&id) {
            assert!(t.elapsed() < Duration::from_secs(10), "the job was never recovered");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut new = server().target.connect(Some(CONTROL_DB)).await.unwrap();
        let fresh = queue::claim(&mut new, "new/0", &[fp.to_string()], Duration::from_secs(10)).await.unwrap().unwrap();
        assert_eq!(fresh.attempt, 2);
        // The old attempt's heartbeat and end are refused (its own connection is gone, so
        // write through a healthy one: the guard is the attempt, not the connection).
        assert_eq!(queue::heartbeat(&c, &stale, Duration::from_secs(10), None).await.unwrap(), queue::Beat::Lost);
        let how = queue::Finish::Succeeded { changes: 1, result: None };
        assert_eq!(queue::finish(&c, &stale, &how, &[]).await.unwrap(), None);
        assert_eq!(queue::get(&c, id).await.unwrap().unwrap().status, JobStatus::Running);
        assert_eq!(queue::finish(&new, &fresh, &how, &[]).await.unwrap(), Some(JobStatus::Succeeded));
    });
}

#[test]
fn jobs_with_one_key_run_one_at_a_time_in_order() {
    let fp = "one_key";
    block(async {
        let c = control().await;
        let mut ids = Vec::new();
        for i in 0..12 {
            let mut j = new_job(fp, i);
            j.key = Some(format!("tenant/{}", i % 2));
            ids.push(queue::submit(&c, &j).await.unwrap());
        }
        let w = worker::Worker::start(server().target.clone(), options(fp, 4), recording_runner(30), None);
        wait_until_final(&c, fp, 12, Duration::from_secs(30)).await;
        for k in 0..2 {
            let rows = c
                .query(
                    "SELECT r.job, r.started, r.ended FROM public.ran r JOIN pgplane.jobs j ON j.id = r.job
                      WHERE j.fingerprint = $1 AND j.key = $2 ORDER BY r.started",
                    &[&fp, &format!("tenant/{k}")],
                )
                .await
                .unwrap();
            let order: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
            let want: Vec<i64> = ids.iter().copied().skip(k).step_by(2).collect();
            assert_eq!(order, want, "key {k} ran in submission order");
            for pair in rows.windows(2) {
                let (end, next): (std::time::SystemTime, std::time::SystemTime) = (pair[0].get(2), pair[1].get(1));
                assert!(end <= next, "two jobs of key {k} overlapped");
            }
        }
        // Different keys did overlap (the worker has 4 slots).
        let overlapped: bool = c
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM public.ran a JOIN public.ran b ON a.job < b.job
                   JOIN pgplane.jobs ja ON ja.id = a.job JOIN pgplane.jobs jb ON jb.id = b.job
                  WHERE ja.fingerprint = $1 AND jb.fingerprint = $1 AND ja.key <> jb.key
                    AND a.started < b.ended AND b.started < a.ended)",
                &[&fp],
            )
            .await
            .unwrap()
            .get(0);
        assert!(overlapped, "different keys ran in parallel");
        w.shutdown(Duration::from_secs(1)).await;
    });
}

/// A runner that runs until cancelled (or 30 s), recording that it started.
fn until_cancelled(started: Arc<AtomicBool>) -> Arc<dyn Runner> {
    Arc::new(FnRunner(Box::new(move |_job, cancel| {
        let started = started.clone();
        Box::pin(async move {
            started.store(true, Ordering::SeqCst);
            tokio::select! {
                reason = cancel.cancelled() => Err(Error::Cancelled(reason)),
                _ = tokio::time::sleep(Duration::from_secs(30)) => Ok(Done::default()),
            }
        })
    })))
}

#[test]
fn cancel_stops_queued_and_running_jobs() {
    let fp = "cancel";
    block(async {
        let c = control().await;
        let queued = queue::submit(&c, &new_job(fp, 0)).await.unwrap();
        let (job, changed) = queue::request_cancel(&c, queued).await.unwrap().unwrap();
        assert!(changed);
        assert_eq!(job.status, JobStatus::Cancelled);
        assert!(!queue::request_cancel(&c, queued).await.unwrap().unwrap().1, "cancelling twice changes nothing");
        assert!(queue::request_cancel(&c, 987_654_321).await.unwrap().is_none());

        let running = queue::submit(&c, &new_job(fp, 1)).await.unwrap();
        let started = Arc::new(AtomicBool::new(false));
        let w = worker::Worker::start(server().target.clone(), options(fp, 1), until_cancelled(started.clone()), None);
        let t = Instant::now();
        while !started.load(Ordering::SeqCst) {
            assert!(t.elapsed() < Duration::from_secs(10), "never started");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (job, changed) = queue::request_cancel(&c, running).await.unwrap().unwrap();
        assert!(changed && job.status == JobStatus::Running && job.cancel_requested);
        wait_until_final(&c, fp, 2, Duration::from_secs(10)).await;
        let job = queue::get(&c, running).await.unwrap().unwrap();
        assert_eq!((job.status, job.error_code.as_deref()), (JobStatus::Cancelled, Some("cancelled")), "{job:?}");
        w.shutdown(Duration::from_secs(1)).await;
    });
}

#[test]
fn shutdown_hands_running_jobs_back_to_the_queue() {
    let fp = "hand_back";
    block(async {
        let c = control().await;
        let id = queue::submit(&c, &new_job(fp, 0)).await.unwrap();
        let started = Arc::new(AtomicBool::new(false));
        let w = worker::Worker::start(server().target.clone(), options(fp, 1), until_cancelled(started.clone()), None);
        let t = Instant::now();
        while !started.load(Ordering::SeqCst) {
            assert!(t.elapsed() < Duration::from_secs(10), "never started");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let handed = w.shutdown(Duration::from_millis(100)).await;
        assert_eq!(handed, [id]);
        let j = queue::get(&c, id).await.unwrap().unwrap();
        assert_eq!((j.status, j.stored_status, j.attempts), (JobStatus::Queued, JobStatus::Queued, 0), "{j:?}");
        // Another worker finishes it.
        let w2 = worker::Worker::start(server().target.clone(), options(fp, 1), recording_runner(1), None);
        wait_until_final(&c, fp, 1, Duration::from_secs(10)).await;
        assert_eq!(queue::get(&c, id).await.unwrap().unwrap().status, JobStatus::Succeeded);
        w2.shutdown(Duration::from_secs(1)).await;
    });
}

#[test]
fn retryable_failures_are_retried_after_a_backoff_then_given_up() {
    let fp = "retry";
    block(async {
        let c = control().await;
        let mut j = new_job(fp, 0);
        j.max_attempts = 2;
        let id = queue::submit(&c, &j).await.unwrap();
        let busy: Arc<dyn Runner> =
            Arc::new(FnRunner(Box::new(|_, _| Box::pin(async { Err(Error::busy("the branch is locked")) }))));
        let w = worker::Worker::start(server().target.clone(), options(fp, 1), busy, None);
        wait_until_final(&c, fp, 1, Duration::from_secs(20)).await;
        let j = queue::get(&c, id).await.unwrap().unwrap();
        assert_eq!((j.status, j.attempts, j.error_code.as_deref()), (JobStatus::Failed, 2, Some("busy")), "{j:?}");
        // The second attempt waited for the backoff after the first (1 s).
        let took: f64 = c
            .query_one(
                "SELECT extract(epoch FROM finished_at - created_at)::float8 FROM pgplane.jobs WHERE id = $1",
                &[&id],
            )
            .await
            .unwrap()
            .get(0);
        assert!(took >= 0.9, "the retry came after {took}s, before its backoff");
        w.shutdown(Duration::from_secs(1)).await;
    });
}

struct CountDuties(Arc<std::sync::atomic::AtomicU64>);

impl leader::Duties for CountDuties {
    fn run<'a>(
        &'a self,
        _control: &'a tokio_postgres::Client,
    ) -> Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send + 'a>> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Box::pin(async { Ok(()) })
    }
}

#[test]
fn leadership_moves_within_a_tick_when_the_leader_dies() {
    let _recovery = recovery();
    block(async {
        let opts = leader::Options {
            env: "leader_test".to_string(),
            tick: Duration::from_millis(200),
            duty_interval: Duration::from_secs(60),
            hung_after: Duration::from_secs(30),
        };
        let (a_state, b_state) = (Arc::new(leader::State::default()), Arc::new(leader::State::default()));
        let a_duties = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let b_duties = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let a = tokio::spawn(leader::run(
            server().target.clone(),
            opts.clone(),
            Arc::new(CountDuties(a_duties)),
            a_state.clone(),
            std::future::pending(),
        ));
        let t = Instant::now();
        while !a_state.leader.load(Ordering::SeqCst) {
            assert!(t.elapsed() < Duration::from_secs(5), "a never became leader");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let b = tokio::spawn(leader::run(
            server().target.clone(),
            opts.clone(),
            Arc::new(CountDuties(b_duties.clone())),
            b_state.clone(),
            std::future::pending(),
        ));
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(!b_state.leader.load(Ordering::SeqCst), "two leaders at once");
        // a dies: its task and its session go away at once.
        a.abort();
        let _ = a.await;
        let t = Instant::now();
        while !b_state.leader.load(Ordering::SeqCst) {
            assert!(t.elapsed() < Duration::from_secs(3), "no new leader within 3 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(t.elapsed() < Duration::from_secs(1), "took {:?}", t.elapsed());
        while b_duties.load(Ordering::SeqCst) == 0 {
            assert!(t.elapsed() < Duration::from_secs(2), "the new leader did not run its duties at once");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        b.abort();
    });
}

/// Regression (found by the chaos test): the new leader queued its gc behind every branch
/// creation waiting, so an expired branch outlived the leader's death by as long as the
/// backlog took (over 10 s with 50 waiting). The leader's duties now come first.
#[test]
fn a_leaders_gc_is_claimed_before_the_backlog() {
    let fp = "duty_first";
    block(async {
        let c = control().await;
        for i in 0..20 {
            queue::submit(&c, &new_job(fp, i)).await.unwrap();
        }
        // An expired branch: the reconciler queues a gc for it (as the leader does).
        c.execute(
            "INSERT INTO pgplane.branches (env, id, database, server, template, status, expires_at)
             VALUES ('duty_first', 'old', 'duty_first_old', 'main', 'tpl', 'SUCCESS', now() - interval '1 hour')",
            &[],
        )
        .await
        .unwrap();
        let reconciler = pgplane_ops::runner::Reconciler {
            env: "duty_first".into(),
            fingerprint: fp.into(),
            manifest: "pgplane.yaml".into(),
            keep_file: None,
        };
        let gc = reconciler.queue_gc(&c).await.unwrap().expect("a gc is due");
        let mut w = server().target.connect(Some(CONTROL_DB)).await.unwrap();
        let first = queue::claim(&mut w, "w/0", &[fp.to_string()], Duration::from_secs(10)).await.unwrap().unwrap();
        assert_eq!((first.job.id, first.job.kind.as_str()), (gc, "branch_gc"), "the gc waited behind the backlog");
        let next = queue::claim(&mut w, "w/0", &[fp.to_string()], Duration::from_secs(10)).await.unwrap().unwrap();
        assert_eq!(next.job.kind, "test", "then the oldest request");
        // Tidy up: nothing else of this fingerprint runs.
        c.execute("DELETE FROM pgplane.jobs WHERE fingerprint = $1", &[&fp]).await.unwrap();
        c.execute("DELETE FROM pgplane.branches WHERE env = 'duty_first'", &[]).await.unwrap();
    });
}

/// A queued job whose lock someone still holds (a requeue between its commit and its
/// worker's unlock) is passed over, with the prepared claim of a worker slot and the plain
/// one alike: the next job is claimed instead, and the passed one once its lock is free.
#[test]
fn a_queued_job_whose_lock_is_held_is_passed_over() {
    let fp = "lock_held";
    block(async {
        let c = control().await;
        let first = queue::submit(&c, &new_job(fp, 0)).await.unwrap();
        let second = queue::submit(&c, &new_job(fp, 1)).await.unwrap();
        let third = queue::submit(&c, &new_job(fp, 2)).await.unwrap();
        let holder = control().await;
        assert!(pgplane_ops::locks::Lock::job(first).try_lock(&holder).await.unwrap());
        let fps = [fp.to_string()];
        let mut w = server().target.connect(Some(CONTROL_DB)).await.unwrap();
        let prepared = queue::Prepared::new(&w).await.unwrap();
        let a = queue::claim_prepared(&mut w, &prepared, "w/0", &fps, Duration::from_secs(10)).await.unwrap().unwrap();
        assert_eq!(a.job.id, second, "the prepared claim passes over the locked job");
        let b = queue::claim(&mut w, "w/0", &fps, Duration::from_secs(10)).await.unwrap().unwrap();
        assert_eq!(b.job.id, third, "so does the plain claim");
        assert!(queue::claim(&mut w, "w/0", &fps, Duration::from_secs(10)).await.unwrap().is_none());
        let queued: String =
            c.query_one("SELECT status FROM pgplane.jobs WHERE id = $1", &[&first]).await.unwrap().get(0);
        assert_eq!(queued, "queued", "the passed-over job was not touched");
        assert!(pgplane_ops::locks::Lock::job(first).unlock(&holder).await.unwrap());
        let c3 = queue::claim_prepared(&mut w, &prepared, "w/0", &fps, Duration::from_secs(10)).await.unwrap().unwrap();
        assert_eq!(c3.job.id, first, "claimed once its lock is free");
        c.execute("DELETE FROM pgplane.jobs WHERE fingerprint = $1", &[&fp]).await.unwrap();
    });
}

/// A gc whose worker dies is resumed by another worker, like any operation (it is safe to
/// run again), instead of being given up until the leader's next interval (it had one
/// attempt: an expired branch outlived a leader's death by a whole interval when the
/// worker running the new leader's gc was killed too).
#[test]
fn a_gc_whose_worker_died_is_resumed_not_given_up() {
    let _recovery = recovery();
    let fp = "gc_resumed";
    block(async {
        let c = control().await;
        c.execute(
            "INSERT INTO pgplane.branches (env, id, database, server, template, status, expires_at)
             VALUES ('gc_resumed', 'old', 'gc_resumed_old', 'main', 'tpl', 'SUCCESS', now() - interval '1 hour')",
            &[],
        )
        .await
        .unwrap();
        let reconciler = pgplane_ops::runner::Reconciler {
            env: "gc_resumed".into(),
            fingerprint: fp.into(),
            manifest: "pgplane.yaml".into(),
            keep_file: None,
        };
        let gc = reconciler.queue_gc(&c).await.unwrap().expect("a gc is due");
        let mut dying = server().target.connect(Some(CONTROL_DB)).await.unwrap();
        let a = queue::claim(&mut dying, "dying/0", &[fp.to_string()], Duration::from_secs(10)).await.unwrap().unwrap();
        assert_eq!(a.job.id, gc);
        drop(dying);
        let t = Instant::now();
        loop {
            let r = queue::recover_lapsed(&c, Duration::from_secs(30)).await.unwrap();
            assert!(!r.ended.contains(&gc), "the interrupted gc was given up: {r:?}");
            if r.requeued.contains(&gc) {
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(10), "the gc was never recovered");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let j = queue::get(&c, gc).await.unwrap().unwrap();
        assert_eq!((j.status, j.attempts), (JobStatus::Queued, 1), "{j:?}");
        c.execute("DELETE FROM pgplane.jobs WHERE fingerprint = $1", &[&fp]).await.unwrap();
        c.execute("DELETE FROM pgplane.branches WHERE env = 'gc_resumed'", &[]).await.unwrap();
    });
}

/// A hung worker: its slot's thread blocks (a synchronous call that never yields), so it
/// sends no heartbeat while its connection, and the job's lock, stay open. Once the lease
/// has lapsed `hung_after` ago, the leader ends that session; the job goes to another
/// worker; and when the hung runner wakes up it cannot write the job any more.
#[test]
fn a_hung_workers_session_is_ended_and_its_job_taken_over() {
    let _recovery = recovery();
    let fp = "hung";
    block(async {
        let c = control().await;
        let id = queue::submit(&c, &new_job(fp, 0)).await.unwrap();
        let woke = Arc::new(AtomicBool::new(false));
        let hung: Arc<dyn Runner> = {
            let woke = woke.clone();
            Arc::new(FnRunner(Box::new(move |_job, _cancel| {
                let woke = woke.clone();
                Box::pin(async move {
                    std::thread::sleep(Duration::from_secs(3));
                    woke.store(true, Ordering::SeqCst);
                    Ok(Done { changes: 1, ..Default::default() })
                })
            })))
        };
        let mut o = options(fp, 1);
        o.name = "hung".into();
        o.lease = Duration::from_millis(300);
        o.heartbeat = Duration::from_millis(100);
        let h = worker::Worker::start(server().target.clone(), o, hung, None);
        let t = Instant::now();
        while queue::get(&c, id).await.unwrap().unwrap().status != JobStatus::Running {
            assert!(t.elapsed() < Duration::from_secs(10), "never claimed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Within the grace nobody is ended.
        let r = queue::recover_lapsed(&c, Duration::from_secs(30)).await.unwrap();
        assert!(r.terminated.is_empty() && r.requeued.is_empty(), "{r:?}");
        // The leader, with a short grace, ends the session, then recovers the job.
        let state = Arc::new(leader::State::default());
        let opts = leader::Options {
            env: "hung_test".into(),
            tick: Duration::from_millis(100),
            duty_interval: Duration::from_secs(60),
            hung_after: Duration::from_millis(200),
        };
        let duties = Arc::new(CountDuties(Arc::new(std::sync::atomic::AtomicU64::new(0))));
        let lead =
            tokio::spawn(leader::run(server().target.clone(), opts, duties, state.clone(), std::future::pending()));
        let w2 = worker::Worker::start(server().target.clone(), options(fp, 1), recording_runner(1), None);
        wait_until_final(&c, fp, 1, Duration::from_secs(20)).await;
        let j = queue::get(&c, id).await.unwrap().unwrap();
        assert_eq!((j.status, j.attempts), (JobStatus::Succeeded, 2), "{j:?}");
        assert!(j.worker.as_deref().is_some_and(|w| w.starts_with("test-hung/")), "{j:?}");
        assert!(!woke.load(Ordering::SeqCst), "the job was taken over only after the hung runner woke up");
        assert!(state.recovered.load(Ordering::SeqCst) >= 1);
        // The hung runner wakes up: its end is not recorded (its session is gone).
        let t = Instant::now();
        while !woke.load(Ordering::SeqCst) {
            assert!(t.elapsed() < Duration::from_secs(10));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let after = queue::get(&c, id).await.unwrap().unwrap();
        assert_eq!((after.status, after.attempts, &after.worker), (JobStatus::Succeeded, 2, &j.worker), "{after:?}");
        let runs: i64 = c.query_one("SELECT count(*) FROM public.ran WHERE job = $1", &[&id]).await.unwrap().get(0);
        assert_eq!(runs, 1, "the second attempt ran once");
        lead.abort();
        h.shutdown(Duration::from_secs(1)).await;
        w2.shutdown(Duration::from_secs(1)).await;
    });
}

/// One claim of `concurrent_claims_never_overshoot`: job, attempt, key, start, end.
type Claimed = (i64, i32, Option<String>, Instant, Instant);

/// Many claimers at once on one queue: each job is claimed exactly once, with one attempt;
/// jobs of one key never run at the same time; and no claimer waits for another (a claim
/// that finds only locked jobs returns at once).
#[test]
fn concurrent_claims_never_overshoot() {
    let fp = "concurrent";
    block(async {
        let c = control().await;
        let mut n = 0;
        for k in 0..6 {
            for _ in 0..5 {
                let mut j = new_job(fp, n);
                j.key = Some(format!("conc/{k}"));
                queue::submit(&c, &j).await.unwrap();
                n += 1;
            }
        }
        for _ in 0..30 {
            queue::submit(&c, &new_job(fp, n)).await.unwrap();
            n += 1;
        }
        let log: Arc<std::sync::Mutex<Vec<Claimed>>> = Default::default();
        let claimers: Vec<_> = (0..12)
            .map(|i| {
                let log = log.clone();
                tokio::spawn(async move {
                    let mut conn = server().target.connect(Some(CONTROL_DB)).await.unwrap();
                    let name = format!("claimer/{i}");
                    let mut empty = 0;
                    while empty < 5 {
                        let t = Instant::now();
                        let claimed =
                            queue::claim(&mut conn, &name, &[fp.to_string()], Duration::from_secs(10)).await.unwrap();
                        assert!(t.elapsed() < Duration::from_secs(5), "a claim waited {:?}", t.elapsed());
                        let Some(a) = claimed else {
                            empty += 1;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            continue;
                        };
                        empty = 0;
                        let start = Instant::now();
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        let how = queue::Finish::Succeeded { changes: 1, result: None };
                        let end = Instant::now();
                        log.lock().unwrap().push((a.job.id, a.attempt, a.job.key.clone(), start, end));
                        assert_eq!(queue::finish(&conn, &a, &how, &[]).await.unwrap(), Some(JobStatus::Succeeded));
                    }
                })
            })
            .collect();
        for cl in claimers {
            cl.await.unwrap();
        }
        let log = log.lock().unwrap().clone();
        let ids: std::collections::BTreeSet<i64> = log.iter().map(|l| l.0).collect();
        assert_eq!((log.len(), ids.len()), (n, n), "every job claimed exactly once");
        assert!(log.iter().all(|l| l.1 == 1), "one attempt each");
        for k in 0..6 {
            let key = format!("conc/{k}");
            let mut runs: Vec<_> = log.iter().filter(|l| l.2.as_deref() == Some(key.as_str())).collect();
            runs.sort_by_key(|l| l.3);
            assert_eq!(runs.len(), 5);
            for pair in runs.windows(2) {
                assert!(pair[0].4 <= pair[1].3, "two jobs of {key} ran at once");
                assert!(pair[0].0 < pair[1].0, "{key} ran out of order");
            }
        }
        let statuses: Vec<(String, i64)> = c
            .query("SELECT status, count(*) FROM pgplane.jobs WHERE fingerprint = $1 GROUP BY 1", &[&fp])
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        assert_eq!(statuses, [("succeeded".to_string(), n as i64)]);
    });
}
