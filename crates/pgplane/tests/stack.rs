//! End-to-end tests of `pgplane stack`: the real binary, real PostgreSQL, real processes.
//! Each test has its own environment, folder and home; services are stopped by a guard.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{Run, T, TEST_SECRET_KEY};
use serde_json::Value;

/// A test's stack: `pgplane.yaml` with `modules`, `stack.yaml` with `body`.
fn setup(t: &T, modules: &str, body: &str) -> PathBuf {
    t.manifest(modules);
    t.write("stack.yaml", &format!("manifest: pgplane.yaml\n{body}"))
}

fn run(t: &T, args: &[&str]) -> Run {
    let mut all = vec!["stack"];
    all.extend_from_slice(args);
    t.pgplane(&all)
}

fn status(t: &T) -> Value {
    run(t, &["status", "-f", "stack.yaml", "--json"]).ok().json()
}

fn step<'a>(run: &'a Value, name: &str) -> &'a Value {
    run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no step {name}: {run}"))
}

fn times(run: &Value, name: &str) -> (i64, i64) {
    let s = step(run, name);
    (
        s["started_ms"].as_i64().unwrap(),
        s["finished_ms"].as_i64().unwrap_or_else(|| panic!("{name} did not finish: {s}")),
    )
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

/// Runs `stack down` when dropped, so services never outlive a test.
struct Down<'a>(&'a T);

impl Drop for Down<'_> {
    fn drop(&mut self) {
        let _ = run(self.0, &["down", "-f", "stack.yaml", "--grace", "1s"]);
    }
}

const APP: &str = "modules:\n  - name: app\n    storage: database\n";

#[test]
fn exclusive_is_exclusive_and_parallel_is_parallel_but_bounded() {
    let t = T::new("stk_groups");
    setup(
        &t,
        APP,
        "\
groups:
  one: {mode: exclusive}
  two: {mode: parallel, max: 2}
steps:
  - name: ex-{{item}}
    for_each: [a, b, c]
    group: one
    command: sleep 0.3
  - name: par-{{item}}
    for_each: [a, b, c, d]
    group: two
    command: sleep 0.4
",
    );
    let out = run(&t, &["run", "-f", "stack.yaml", "--json"]).ok();
    let doc = out.json();
    assert_eq!(doc["status"], "succeeded");
    // Exclusive: in file order, each starts after the one before ended.
    let ex: Vec<(i64, i64)> = ["ex-a", "ex-b", "ex-c"].iter().map(|n| times(&doc, n)).collect();
    for w in ex.windows(2) {
        assert!(w[0].1 <= w[1].0, "exclusive members overlapped: {ex:?}");
    }
    // Parallel: at most 2 at once, and 2 did run at once.
    let par: Vec<(i64, i64)> = ["par-a", "par-b", "par-c", "par-d"].iter().map(|n| times(&doc, n)).collect();
    let most = par.iter().map(|(s, _)| par.iter().filter(|(a, b)| a <= s && s < b).count()).max().unwrap();
    assert_eq!(most, 2, "parallel members at once: {par:?}");
    // Every member ran once.
    for s in doc["steps"].as_array().unwrap() {
        assert_eq!(s["attempts"], 1, "{s}");
    }
    // The same order is what --dry-run shows.
    let dry = run(&t, &["run", "-f", "stack.yaml", "--dry-run", "--json"]).ok().json();
    assert_eq!(dry["phases"][0], serde_json::json!(["ex-a", "par-a", "par-b"]));
    assert_eq!(dry["phases"][1], serde_json::json!(["ex-b", "par-c", "par-d"]));
}

#[test]
fn a_wait_ends_within_one_interval_of_its_condition_turning_true() {
    let t = T::new("stk_wait");
    setup(
        &t,
        APP,
        "\
steps:
  - name: table
    module: app
    sql: CREATE TABLE flag (at timestamptz NOT NULL)
  - name: ready
    needs: [table]
    module: app
    wait: SELECT count(*) > 0 FROM flag
    interval: 200ms
    timeout: 30s
  - name: after
    needs: [ready]
    command: 'true'
",
    );
    t.pgplane(&["apply", "--yes"]).ok();
    let child = t
        .cmd()
        .args(["stack", "run", "-f", "stack.yaml", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let db = format!("{}_app", t.env);
    t.wait_for_sql("pgplane", &format!("SELECT count(*) FROM pgplane.stack_steps s JOIN pgplane.stack_runs r ON r.id = s.run_id WHERE r.env = '{}' AND s.name = 'ready' AND s.state = 'waiting'", t.env), "1", "the wait did not start");
    std::thread::sleep(Duration::from_millis(700));
    // Asynchronous commit: the row is visible at its commit, not after a WAL flush later.
    t.sql(&db, "SET synchronous_commit = off; INSERT INTO flag VALUES (clock_timestamp())");
    let flag_ms: i64 = t.sql(&db, "SELECT (extract(epoch FROM at) * 1000)::int8 FROM flag").parse().unwrap();
    let out = finish(child);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let doc = out.json();
    let (_, ready_end) = times(&doc, "ready");
    let (after_start, _) = times(&doc, "after");
    // One interval (200 ms) plus the query and the bookkeeping on a shared, busy machine.
    assert!(ready_end - flag_ms <= 350, "the wait ended {} ms after the condition held", ready_end - flag_ms);
    assert!(
        after_start - flag_ms <= 450,
        "the next step started {} ms after the condition held",
        after_start - flag_ms
    );
    assert!(step(&doc, "ready")["detail"].as_str().unwrap().starts_with("returned t after"), "{doc}");
}

fn everything_has(out: &Run, what: &str) -> bool {
    out.stdout.contains(what) || out.stderr.contains(what)
}

fn finish(child: Child) -> Run {
    let out = child.wait_with_output().unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn a_timed_out_wait_shows_its_observation_and_diagnostics_and_stops_dependents() {
    let t = T::new("stk_timeout");
    setup(
        &t,
        APP,
        "\
steps:
  - name: rows
    module: app
    sql: CREATE TABLE jobs (state text); INSERT INTO jobs VALUES ('queued'), ('queued'), ('done')
  - name: drained
    needs: [rows]
    module: app
    wait: SELECT count(*) = 0 FROM jobs WHERE state = 'queued'
    interval: 100ms
    timeout: 1s
    diagnose_sql: SELECT state, count(*) AS n FROM jobs GROUP BY state ORDER BY state
  - name: api
    needs: [drained]
    command: touch api-started
",
    );
    t.pgplane(&["apply", "--yes"]).ok();
    let out = run(&t, &["run", "-f", "stack.yaml"]);
    assert_eq!(out.code, 3, "{out:?}");
    assert!(out.stdout.contains("failed     drained"), "{}", out.stdout);
    assert!(out.stdout.contains("timed out after 1s; last observed: returned f"), "{}", out.stdout);
    // The diagnostic query's rows, as a table.
    assert!(out.stdout.contains("|   state  | n\n"), "{}", out.stdout);
    assert!(out.stdout.contains("|   done   | 1\n") && out.stdout.contains("|   queued | 2\n"), "{}", out.stdout);
    assert!(out.stdout.contains("skipped    api"), "{}", out.stdout);
    assert!(out.stderr.contains("failed: drained") && out.stderr.contains("--resume"), "{}", out.stderr);
    assert!(!t.dir.join("api-started").exists());
    let doc = status(&t);
    assert_eq!(doc["status"], "failed");
    assert_eq!(step(&doc, "drained")["state"], "failed");
    assert!(step(&doc, "drained")["log_tail"].as_str().unwrap().contains("queued | 2"), "{doc}");
    assert_eq!(step(&doc, "api")["detail"], "needs drained, which failed");
    // Fixed: --resume runs the wait and what it stopped, not the completed step.
    t.sql(&format!("{}_app", t.env), "UPDATE jobs SET state = 'done'");
    let out = run(&t, &["run", "-f", "stack.yaml", "--resume", "--json"]).ok();
    let doc = out.json();
    assert_eq!(step(&doc, "rows")["attempts"], 1);
    assert_eq!(step(&doc, "drained")["attempts"], 2);
    assert_eq!(step(&doc, "api")["state"], "completed");
}

#[test]
fn failure_stops_dependents_and_keep_going_lets_independent_steps_finish() {
    let t = T::new("stk_fail");
    let body = "\
steps:
  - name: broken
    command: echo about to fail; exit 7
  - name: after-broken
    needs: [broken]
    command: touch after-broken
  - name: slow
    command: sleep 0.5
  - name: after-slow
    needs: [slow]
    command: touch after-slow
";
    setup(&t, APP, body);
    let out = run(&t, &["run", "-f", "stack.yaml"]);
    assert_eq!(out.code, 3, "{out:?}");
    assert!(out.stdout.contains("exited with code 7"), "{}", out.stdout);
    assert!(out.stdout.contains("| about to fail"), "the failed step's last lines: {}", out.stdout);
    // Without --keep-going, nothing new started after the failure.
    assert!(!t.dir.join("after-slow").exists() && !t.dir.join("after-broken").exists());
    let doc = status(&t);
    assert_eq!(step(&doc, "broken")["exit_code"], 7);
    assert_eq!(step(&doc, "after-broken")["state"], "skipped");
    assert_eq!(step(&doc, "slow")["state"], "completed", "running steps finish");
    assert_eq!(step(&doc, "after-slow")["state"], "pending");
    // --keep-going: the independent branch finishes, the dependent one is skipped.
    let out = run(&t, &["run", "-f", "stack.yaml", "--keep-going"]);
    assert_eq!(out.code, 3, "{out:?}");
    assert!(t.dir.join("after-slow").exists() && !t.dir.join("after-broken").exists());
}

#[test]
fn a_killed_runner_resumes_without_running_completed_steps_twice() {
    let t = T::new("stk_crash");
    setup(
        &t,
        APP,
        "\
steps:
  - name: a
    command: echo a >> runs.txt
  - name: b
    needs: [a]
    command: echo b >> runs.txt
  - name: svc
    needs: [a]
    service: [python3, -m, http.server, --bind, 127.0.0.1, PORT]
    health: {http: 'http://127.0.0.1:PORT/'}
  - name: c
    needs: [b, {svc: healthy}]
    command: echo c >> runs.txt; if [ ! -e c-slept ]; then touch c-slept; sleep 60; fi
  - name: d
    needs: [c]
    command: echo d >> runs.txt
"
        .replace("PORT", &common::free_port().to_string())
        .as_str(),
    );
    let _down = Down(&t);
    let mut child =
        t.cmd().args(["stack", "run", "-f", "stack.yaml"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !t.dir.join("c-slept").exists() {
        assert!(Instant::now() < deadline, "step c never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    let before = status(&t);
    let svc_pid = step(&before, "svc")["pid"].as_i64().unwrap();
    let c_pid = step(&before, "c")["pid"].as_i64().unwrap();
    std::process::Command::new("kill").args(["-9", &child.id().to_string()]).status().unwrap();
    child.wait().unwrap();
    let doc = status(&t);
    assert_eq!(doc["status"], "interrupted", "a running run without its runner: {doc}");
    assert_eq!(step(&doc, "c")["state"], "running");
    // Resumed: a and b do not run again, the healthy service is re-checked (same process),
    // c's leftover process is stopped and c runs again, d runs.
    let out = run(&t, &["run", "-f", "stack.yaml", "--resume", "--json"]).ok();
    let doc = out.json();
    assert_eq!(doc["status"], "succeeded");
    assert_eq!(read(&t.dir.join("runs.txt")), "a\nb\nc\nc\nd\n");
    assert_eq!(step(&doc, "a")["attempts"], 1);
    assert_eq!(step(&doc, "b")["attempts"], 1);
    assert_eq!(step(&doc, "svc")["pid"].as_i64(), Some(svc_pid), "the service was re-created");
    assert_eq!(step(&doc, "svc")["state"], "healthy");
    assert!(
        !Path::new(&format!("/proc/{c_pid}")).exists() || read(Path::new(&format!("/proc/{c_pid}/cmdline"))).is_empty(),
        "c's first process still runs"
    );
    let log = read(&t.dir.join("home/stacks").join(doc["id"].to_string()).join("svc.log"));
    assert!(log.contains("still runs: re-checking it, not starting another"), "{log}");
}

#[test]
fn stack_down_stops_services_dependents_first_each_with_a_grace_period() {
    let t = T::new("stk_down");
    let script = "trap 'echo stop $1 >> stops.txt; exit 0' TERM; echo up; while :; do sleep 0.1; done";
    let stubborn = "trap 'echo ignored TERM' TERM; while :; do sleep 0.1; done";
    t.write("svc.sh", script);
    t.write("stubborn.sh", stubborn);
    setup(
        &t,
        APP,
        "\
steps:
  - name: base
    service: sh svc.sh base
    health: {command: 'true'}
  - name: middle
    needs: [{base: healthy}]
    service: sh svc.sh middle
  - name: top
    needs: [{middle: started}]
    service: sh svc.sh top
  - name: stubborn
    service: sh stubborn.sh
",
    );
    let _down = Down(&t);
    run(&t, &["run", "-f", "stack.yaml"]).ok();
    let doc = status(&t);
    for s in ["base", "middle", "top", "stubborn"] {
        assert_eq!(step(&doc, s)["alive"], true, "{s}: {doc}");
    }
    let pids: Vec<i64> =
        ["base", "middle", "top", "stubborn"].iter().map(|s| step(&doc, s)["pid"].as_i64().unwrap()).collect();
    let started = Instant::now();
    let out = run(&t, &["down", "-f", "stack.yaml", "--grace", "1s", "--json"]).ok();
    let down = out.json();
    let order: Vec<&str> = down["stopped"].as_array().unwrap().iter().map(|s| s["step"].as_str().unwrap()).collect();
    assert_eq!(order, ["stubborn", "top", "middle", "base"], "{down}");
    assert_eq!(read(&t.dir.join("stops.txt")), "stop top\nstop middle\nstop base\n");
    let results: Vec<&str> =
        down["stopped"].as_array().unwrap().iter().map(|s| s["result"].as_str().unwrap()).collect();
    assert_eq!(results, ["killed", "terminated", "terminated", "terminated"]);
    assert!(started.elapsed() < Duration::from_secs(8), "took {:?}", started.elapsed());
    for pid in pids {
        let stat = read(Path::new(&format!("/proc/{pid}/stat")));
        assert!(stat.is_empty() || stat.contains(") Z "), "pid {pid} still runs: {stat}");
    }
    let doc = status(&t);
    assert_eq!(step(&doc, "top")["state"], "stopped");
    // Nothing left to stop: a second down is fine.
    let again = run(&t, &["down", "-f", "stack.yaml", "--json"]).ok().json();
    assert!(again["stopped"].as_array().unwrap().is_empty(), "{again}");
}

#[test]
fn credentials_are_injected_and_never_written_anywhere() {
    let t = T::new("stk_creds");
    setup(
        &t,
        "modules:\n  - name: app\n    storage: database\n  - name: users\n    storage: schema-per-tenant\ntenants:\n  - name: acme\n    modules: [users]\n",
        "\
steps:
  - name: show
    module: app
    command: |
      echo \"user=$PGUSER db=$PGDATABASE\"
      echo \"password=$PGPASSWORD\"
      echo \"url=$DATABASE_URL\"
      echo \"secret key=${PGPLANE_SECRET_KEY:-none}\"
      psql -X -At -c 'SELECT current_user, session_user'
  - name: create
    module: app
    sql: CREATE TABLE made_by_step (id int); SELECT current_user
  - name: ready
    needs: [create]
    module: app
    wait: SELECT count(*) = 0 FROM made_by_step
    interval: 100ms
  - name: tenant
    module: users
    tenant: acme
    command: psql -X -At -c 'SHOW search_path' -c 'SELECT current_user'
  - name: broken
    needs: [show]
    module: app
    command: echo \"failing with $PGPASSWORD\"; exit 1
",
    );
    // pgplane's own secret key is in its environment: steps must not inherit it.
    // (The shared test key: every test of this binary shares one control database, whose
    // recorded key fingerprint any other key would fail.)
    let key = TEST_SECRET_KEY.to_string();
    let pg = |args: &[&str]| {
        let out = t.cmd().env("PGPLANE_SECRET_KEY", &key).args(args).output().unwrap();
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    };
    pg(&["apply", "--yes"]).ok();
    let env = pg(&["credentials", "app", "--format", "env"]).ok().stdout;
    let password = env.lines().find_map(|l| l.strip_prefix("PGPASSWORD=")).unwrap().to_string();
    assert_eq!(password.len(), 43);
    let out = pg(&["stack", "run", "-f", "stack.yaml", "--keep-going"]);
    assert_eq!(out.code, 3, "{out:?}");
    let role = format!("{}_app", t.env);
    let home = t.dir.join("home");
    let run_id = pg(&["stack", "status", "-f", "stack.yaml", "--json"]).ok().json()["id"].to_string();
    let logs = home.join("stacks").join(run_id);
    let show = read(&logs.join("show.log"));
    assert!(show.contains(&format!("user={role} db={role}")), "{show}");
    assert!(show.contains("password=********"), "{show}");
    assert!(show.contains(&format!("url=postgresql://{role}:********@127.0.0.1:")), "{show}");
    assert!(show.contains("secret key=none"), "pgplane's secret key leaked into a step: {show}");
    assert!(!everything_has(&out, &key), "the secret key was printed");
    assert!(show.contains(&format!("{role}|{role}")), "logged in as the role itself: {show}");
    // SQL ran as the role: it owns what it created.
    assert_eq!(t.sql(&role, "SELECT tableowner FROM pg_tables WHERE tablename = 'made_by_step'"), role);
    let tenant = read(&logs.join("tenant.log"));
    assert!(tenant.contains("acme_users") && tenant.contains(&format!("{}_acme_users", t.env)), "{tenant}");
    // Nowhere: not in a log file, not on the terminal, not in the control database, not in
    // the server's statement log.
    let mut everything = out.stdout.clone() + &out.stderr;
    for e in std::fs::read_dir(&logs).unwrap() {
        everything.push_str(&read(&e.unwrap().path()));
    }
    everything.push_str(&t.sql("pgplane", "SELECT string_agg(s::text, E'\\n') FROM pgplane.stack_steps s"));
    everything.push_str(&t.sql("pgplane", "SELECT string_agg(r::text, E'\\n') FROM pgplane.stack_runs r"));
    everything.push_str(&t.server.log());
    assert!(everything.contains("failing with ********"), "the failed step's tail is recorded, redacted");
    assert!(!everything.contains(&password), "the password was written somewhere");
}

#[test]
fn bad_files_are_rejected_before_anything_runs() {
    let t = T::new("stk_bad");
    t.manifest(APP);
    let cases: &[(&str, &str)] = &[
        (
            "manifest: pgplane.yaml\nsteps:\n  - name: first\n    command: touch ran\n  - name: x\n    needs: [nope]\n    command: 'true'\n",
            "stack.yaml:6:13: step x needs \"nope\", which is no step",
        ),
        (
            "manifest: pgplane.yaml\nsteps:\n  - name: first\n    command: touch ran\n    needs: [second]\n  - name: second\n    command: 'true'\n    needs: [first]\n",
            "stack.yaml:5:5: steps depend on each other in a cycle: first → second → first",
        ),
        (
            "manifest: pgplane.yaml\nsteps:\n  - name: first\n    command: touch ran\n  - name: api\n    service: sleep 60\n  - name: x\n    needs: [api]\n    command: 'true'\n",
            "stack.yaml:8:13: step x needs service api to be completed",
        ),
        (
            "manifest: pgplane.yaml\nsteps:\n  - name: first\n    command: touch ran\n    module: nosuch\n",
            "stack.yaml:5:5: step first: module \"nosuch\" is not in",
        ),
        (
            "manifest: pgplane.yaml\nsteps:\n  - name: first\n    command: touch ran\n  - name: w\n    module: app\n    wait: SELECT true\n    timeout: 5 minutes\n",
            "stack.yaml:8:5: step w: `timeout`: unknown unit \" minutes\" in \"5 minutes\"",
        ),
        (
            "manifest: pgplane.yaml\nsteps:\n  - name: first\n    command: touch ran\n    sql_file: x.sql\n",
            "stack.yaml:3:5: step first has command and sql_file",
        ),
        (
            "manifest: pgplane.yaml\nsteps:\n  - name: first\n    command: touch ran\n  - name: s\n    module: app\n    sql_file: missing.sql\n",
            "stack.yaml:5: step s: cannot read sql_file",
        ),
        (
            "manifest: pgplane.yaml\nsteps:\n  - name: first\n    comand: touch ran\n",
            "stack.yaml:4:5: steps[0]: unknown field `comand`",
        ),
    ];
    for (body, want) in cases {
        t.write("stack.yaml", body);
        let out = run(&t, &["run", "-f", "stack.yaml"]).fails();
        assert!(out.stderr.contains(want), "want {want:?} in:\n{}", out.stderr);
        assert!(out.stderr.contains("nothing ran") || out.stderr.contains("unknown field"), "{}", out.stderr);
        assert!(!t.dir.join("ran").exists(), "a step ran for {body}");
    }
    // Several problems at once, each with its line.
    t.write(
        "stack.yaml",
        "steps:\n  - name: a\n    needs: [b]\n    command: 'true'\n  - name: c\n    group: g\n    command: 'true'\n",
    );
    let out = run(&t, &["run", "-f", "stack.yaml"]).fails();
    assert!(out.stderr.contains("2 problems; nothing ran:\nstack.yaml:3:13: step a needs \"b\""), "{}", out.stderr);
    assert!(out.stderr.contains("\nstack.yaml:6:5: step c is in group \"g\""), "{}", out.stderr);
    // Nothing was recorded either.
    let runs = t.sql_try("pgplane", &format!("SELECT count(*) FROM pgplane.stack_runs WHERE env = '{}'", t.env));
    assert!(matches!(runs.as_deref(), Ok("0") | Err(_)), "{runs:?}");
}

#[test]
fn from_and_only_rerun_what_the_operator_names() {
    let t = T::new("stk_from");
    setup(
        &t,
        APP,
        "\
steps:
  - {name: a, command: echo a >> runs.txt}
  - {name: b, needs: [a], command: echo b >> runs.txt}
  - {name: c, needs: [b], command: echo c >> runs.txt}
  - {name: other, needs: [a], command: echo other >> runs.txt}
",
    );
    run(&t, &["run", "-f", "stack.yaml"]).ok();
    let dry = run(&t, &["run", "-f", "stack.yaml", "--from", "b", "--dry-run"]).ok();
    assert!(dry.stdout.contains("not run: a, other"), "{}", dry.stdout);
    run(&t, &["run", "-f", "stack.yaml", "--from", "b"]).ok();
    run(&t, &["run", "-f", "stack.yaml", "--only", "other"]).ok();
    let count = |what: &str| read(&t.dir.join("runs.txt")).lines().filter(|l| *l == what).count();
    assert_eq!([count("a"), count("b"), count("c"), count("other")], [1, 2, 2, 2]);
    // --resume of a finished run has nothing to do.
    run(&t, &["run", "-f", "stack.yaml", "--resume"]).ok();
    assert_eq!(read(&t.dir.join("runs.txt")).lines().count(), 7);
    let out = run(&t, &["run", "-f", "stack.yaml", "--only", "nope"]).fails();
    assert!(out.stderr.contains("has no step \"nope\" (steps: a, b, c, other)"), "{}", out.stderr);
}

#[test]
fn services_restart_by_policy_and_a_service_that_never_gets_healthy_fails() {
    let t = T::new("stk_svc");
    let port = common::free_port();
    t.write(
        "flaky.sh",
        &format!(
            "if [ ! -e crashed-once ]; then touch crashed-once; echo crashing; exit 1; fi\nexec python3 -m http.server --bind 127.0.0.1 {port}\n"
        ),
    );
    setup(
        &t,
        APP,
        &format!(
            "\
steps:
  - name: flaky
    service: sh flaky.sh
    restart: on-failure
    backoff: 200ms
    health: {{http: 'http://127.0.0.1:{port}/', interval: 100ms}}
    timeout: 20s
  - name: never
    service: sleep 60
    health: {{command: 'echo not yet; exit 1', interval: 100ms}}
    timeout: 1s
"
        ),
    );
    let _down = Down(&t);
    let out = run(&t, &["run", "-f", "stack.yaml", "--keep-going"]);
    assert_eq!(out.code, 3, "{out:?}");
    let doc = status(&t);
    assert_eq!(step(&doc, "flaky")["state"], "healthy", "{doc}");
    let log = read(Path::new(step(&doc, "flaky")["log_path"].as_str().unwrap()));
    assert!(log.contains("crashing") && log.contains("restart 1 in 200ms (on-failure policy)"), "{log}");
    let never = step(&doc, "never");
    assert_eq!(never["state"], "failed");
    assert!(
        never["detail"]
            .as_str()
            .unwrap()
            .contains("not healthy within 1s; stopped it; last check: check command exited with code 1: not yet"),
        "{never}"
    );
    assert_eq!(never["pid"], Value::Null, "a failed service keeps no process");
}

#[test]
fn stacks_in_the_manifest_the_api_and_the_console_show_runs() {
    let t = T::new("stk_api");
    t.manifest(&format!(
        "{APP}stacks:\n  - name: setup\n    steps:\n      - name: hello\n        module: app\n        command: echo hello from $PGUSER\n      - name: count\n        needs: [hello]\n        module: app\n        wait: SELECT 1 = 1\n"
    ));
    t.pgplane(&["apply", "--yes"]).ok();
    let out = t.pgplane(&["stack", "run", "-f", "pgplane.yaml"]).ok();
    assert!(out.stderr.contains(&format!("hello | hello from {}_app", t.env)), "{}", out.stderr);
    let serve = t.serve("pgplane.yaml", &[], &[]);
    let list = serve.req("GET", "/api/v1/stacks", None, None);
    assert_eq!(list.status, 200, "{}", list.body);
    let runs = list.json();
    let mine = runs.as_array().unwrap().iter().find(|r| r["env"] == t.env.as_str()).unwrap_or_else(|| panic!("{runs}"));
    assert_eq!(mine["stack"], "setup");
    assert_eq!(mine["status"], "succeeded");
    let one = serve.req("GET", &format!("/api/v1/stacks/{}", mine["id"]), None, None).json();
    assert_eq!(one["steps"][1]["name"], "count");
    assert_eq!(one["steps"][1]["state"], "completed");
    assert_eq!(serve.req("GET", "/api/v1/stacks/999999999", None, None).error_code(), "not_found");
    let page = serve.req("GET", &format!("/stacks/{}", mine["id"]), None, None);
    assert_eq!(page.status, 200);
    assert!(page.body.contains("hello") && page.body.contains("completed"), "{}", page.body);
    let list_page = serve.req("GET", "/stacks", None, None);
    assert!(list_page.body.contains("setup"), "{}", list_page.body);
}

/// `examples/stack` as the README's demo runs it, on the test server, with free ports.
#[test]
fn the_example_stack_runs_end_to_end() {
    let t = T::new("stk_example");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/stack");
    let (alpha, beta) = (common::free_port(), common::free_port());
    for f in ["replay.sh", "sync.sh", "api.py", "sql/schema.sql", "sql/index-alpha.sql", "sql/index-beta.sql"] {
        t.write(&format!("example/{f}"), &read(&src.join(f)));
    }
    let stack = read(&src.join("stack.yaml")).replace("18081", &alpha.to_string()).replace("18082", &beta.to_string());
    t.write("example/stack.yaml", &stack);
    let manifest = read(&src.join("pgplane.yaml")).replace(
        "environment: demo",
        &format!("environment: {}\nservers:\n  - name: main\n    url: ${{TEST_PG_URL}}", t.env),
    );
    t.write("example/pgplane.yaml", &manifest);
    let _down = DownFile(&t, "example/stack.yaml");
    t.pgplane(&["apply", "-f", "example/pgplane.yaml", "--yes"]).ok();
    let out = run(&t, &["run", "-f", "example/stack.yaml", "--json"]).ok();
    let doc = out.json();
    assert_eq!(doc["status"], "succeeded", "{doc}");
    // The index builds on the shared table never overlapped, and ran while rows arrived.
    let (a, b) = (times(&doc, "index-alpha"), times(&doc, "index-beta"));
    assert!(a.1 <= b.0, "index builds overlapped: {a:?} {b:?}");
    let replay = times(&doc, "replay");
    assert!(a.0 < replay.1, "the index builds ran after the replay: {a:?} {replay:?}");
    // App setup one after another, after the instance was ready; syncs side by side.
    let ready = times(&doc, "instance-ready");
    let (sa, sb) = (times(&doc, "setup-alpha"), times(&doc, "setup-beta"));
    assert!(ready.1 <= sa.0 && sa.1 <= sb.0, "{ready:?} {sa:?} {sb:?}");
    let (ya, yb) = (times(&doc, "sync-alpha"), times(&doc, "sync-beta"));
    assert!(ya.0 < yb.1 && yb.0 < ya.1, "the syncs did not overlap: {ya:?} {yb:?}");
    // Each API server started once its app was in sync, and answers.
    for (app, port) in [("alpha", alpha), ("beta", beta)] {
        let in_sync = times(&doc, &format!("in-sync-{app}"));
        let api = step(&doc, &format!("api-{app}"));
        assert_eq!(api["state"], "healthy");
        assert!(api["started_ms"].as_i64().unwrap() >= in_sync.1, "api-{app} started before its app was in sync");
        let body = common::http("GET", &format!("http://127.0.0.1:{port}/"), &[], b"").body;
        assert_eq!(body, format!("{app}: 2000 events\n"));
    }
}

/// `stack down -f FILE` when dropped.
struct DownFile<'a>(&'a T, &'a str);

impl Drop for DownFile<'_> {
    fn drop(&mut self) {
        let _ = run(self.0, &["down", "-f", self.1, "--grace", "1s"]);
    }
}

#[test]
fn sigterm_interrupts_a_run_that_resume_continues_and_one_runner_at_a_time() {
    let t = T::new("stk_signal");
    setup(
        &t,
        APP,
        "\
steps:
  - name: first
    command: echo first >> runs.txt
  - name: long
    needs: [first]
    command: echo long >> runs.txt; if [ ! -e slept ]; then touch slept; sleep 60; fi
",
    );
    let child = t
        .cmd()
        .args(["stack", "run", "-f", "stack.yaml", "-q"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !t.dir.join("slept").exists() {
        assert!(Instant::now() < deadline, "step long never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    // A second runner of the same stack is refused while the first one runs.
    let second = run(&t, &["run", "-f", "stack.yaml", "--resume"]).fails();
    assert!(
        second.stderr.contains("another `pgplane stack run` of stack stack (env stk_signal) is running"),
        "{}",
        second.stderr
    );
    let long_pid = step(&status(&t), "long")["pid"].as_i64().unwrap();
    std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    let out = finish(child);
    assert_eq!(out.code, 4, "{out:?}");
    assert!(out.stderr.contains("interrupted; `pgplane stack run -f stack.yaml --resume` continues"), "{}", out.stderr);
    // --quiet: the summary only, no step output.
    assert!(!out.stderr.contains("long |") && out.stdout.contains("pending    long"), "{out:?}");
    let stat = read(Path::new(&format!("/proc/{long_pid}/stat")));
    assert!(stat.is_empty() || stat.contains(") Z "), "the interrupted command still runs: {stat}");
    let doc = status(&t);
    assert_eq!(doc["status"], "interrupted");
    assert_eq!(step(&doc, "long")["state"], "pending");
    let doc = run(&t, &["run", "-f", "stack.yaml", "--resume", "--json"]).ok().json();
    assert_eq!(doc["status"], "succeeded");
    assert_eq!(read(&t.dir.join("runs.txt")), "first\nlong\nlong\n");
}
