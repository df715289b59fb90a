//! Stacks: validation errors (with their lines), the dry-run order and the scheduler's
//! decisions, as snapshots. Update with `UPDATE_EXPECT=1 cargo test -p pgplane-core --test stack`.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use expect_test::{expect, Expect};
use pgplane_core::manifest::Manifest;
use pgplane_core::model::Desired;
use pgplane_core::stack::schedule::{decide, phases, render_phases, State};
use pgplane_core::stack::{Stack, StackSource};

const MANIFEST: &str = "\
version: 1
environment: dev
modules:
  - name: shared
    storage: database
  - name: users
    storage: schema-per-tenant
tenants:
  - name: acme
    modules: [users]
";

fn manifest() -> Manifest {
    Manifest::parse(Path::new("pgplane.yaml"), MANIFEST, &|_| None).unwrap()
}

fn build(text: &str) -> Result<Stack, String> {
    let m = manifest();
    let desired = Desired::build(&m, "dev", &Default::default()).unwrap();
    let src = StackSource::parse(Path::new("stack.yaml"), text).map_err(|e| e.to_string())?;
    src.build(Some(&m), Some(&desired), "dev").map_err(|e| e.to_string())
}

fn check_errors(text: &str, expect: Expect) {
    match build(text) {
        Ok(_) => panic!("expected errors"),
        Err(e) => expect.assert_eq(&format!("{e}\n")),
    }
}

fn check_phases(text: &str, expect: Expect) {
    let stack = build(text).unwrap_or_else(|e| panic!("{e}"));
    let selected = vec![true; stack.steps.len()];
    expect.assert_eq(&render_phases(&stack, &phases(&stack, &selected), &selected));
}

/// The example stack of `examples/stack`, read from the repository.
fn example() -> Stack {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/stack");
    let m = Manifest::load(&dir.join("pgplane.yaml"), &|_| None).unwrap();
    let src = StackSource::load(&dir.join("stack.yaml")).unwrap();
    let mut stack =
        src.build(Some(&m), Some(&Desired::build(&m, "demo", &Default::default()).unwrap()), "demo").unwrap();
    stack.file = "stack.yaml".into();
    stack
}

#[test]
fn the_example_runs_in_this_order() {
    let stack = example();
    let selected = vec![true; stack.steps.len()];
    expect![[r#"
        stack apps (stack.yaml): 13 of 13 steps in 6 phases
        phase 1
          schema          sql      module shared
        phase 2
          replay          command  needs schema; module shared
          index-alpha     sql      group indexes (exclusive); needs schema; module shared
          instance-ready  wait     needs schema; module shared
        phase 3
          index-beta      sql      group indexes (exclusive); needs schema; module shared
          setup-alpha     sql      group setup (exclusive); needs instance-ready, index-alpha; module shared
        phase 4
          setup-beta      sql      group setup (exclusive); needs instance-ready, index-beta; module shared
        phase 5
          sync-alpha      command  group sync (parallel, max 2); needs setup-alpha, setup-beta; module shared
          sync-beta       command  group sync (parallel, max 2); needs setup-alpha, setup-beta; module shared
          in-sync-alpha   wait     needs sync-alpha (started); module shared
          in-sync-beta    wait     needs sync-beta (started); module shared
        phase 6
          api-alpha       service  needs in-sync-alpha; module shared
          api-beta        service  needs in-sync-beta; module shared
    "#]]
    .assert_eq(&render_phases(&stack, &phases(&stack, &selected), &selected));
}

#[test]
fn bad_files_name_every_problem_with_its_line() {
    check_errors(
        "\
steps:
  - name: a
    command: echo a
    needs: [b]
  - name: svc
    service: sleep 100
  - name: c
    needs: [svc, {svc: healthy}]
    command: [echo, c]
  - name: d
    wait: SELECT true
  - name: e
    sql: SELECT 1
    module: nope
  - name: f
    command: echo f
    interval: 1s
    timeout: soon
  - name: g
    group: idx
    command: echo
",
        expect![[r#"
            stack.yaml:4:13: step a needs "b", which is no step
            stack.yaml:8:13: step c needs service svc to be completed, but a service keeps running and never completes; write `- {svc: started}`
            stack.yaml:8:18: step c needs service svc to be healthy, but it has no `health:` check; add one, or need it `started`
            stack.yaml:10:5: step d runs SQL and needs a login: name a `module:` (and `tenant:`), or a `role:` pgplane manages and a `database:`
            stack.yaml:14:5: step e: module "nope" is not in pgplane.yaml (modules: shared, users)
            stack.yaml:17:5: step f is a `command` step; `interval` applies to wait steps (a service's check has `health.interval`)
            stack.yaml:18:5: step f: `timeout`: "soon" is not a duration; write e.g. 250ms, 30s, 5m, 72h or 7d
            stack.yaml:20:5: step g is in group "idx", which is not in `groups` (there are none; add `groups: {NAME: {mode: exclusive}}`)
        "#]],
    );
}

#[test]
fn cycles_are_named_with_the_path() {
    check_errors(
        "\
steps:
  - name: a
    command: echo
    needs: [c]
  - name: b
    command: echo
    needs: [a]
  - name: c
    command: echo
    needs: [b]
",
        expect![[r#"
            stack.yaml:4:5: steps depend on each other in a cycle: a → c → b → a; break it
        "#]],
    );
    // Through an exclusive group's order: b is after a in the group, and a needs b.
    check_errors(
        "\
groups:
  g: {mode: exclusive}
steps:
  - name: a
    group: g
    command: echo
    needs: [b]
  - name: b
    group: g
    command: echo
",
        expect![[r#"
            stack.yaml:7:5: steps depend on each other in a cycle: a → b → a; break it
        "#]],
    );
}

#[test]
fn syntax_and_unknown_keys_are_located() {
    check_errors(
        "steps:\n  - name: a\n    comand: echo\n",
        expect![[r#"
            stack.yaml:3:5: steps[0]: unknown field `comand`, expected one of `name`, `for_each`, `needs`, `group`, `command`, `sql`, `sql_file`, `wait`, `service`, `module`, `tenant`, `role`, `database`, `env`, `cwd`, `timeout`, `interval`, `diagnose_sql`, `health`, `restart`, `backoff`
        "#]],
    );
    check_errors(
        "steps:\n  - name: a\n    command: echo\n    sql: SELECT 1\n  - name: b\n",
        expect![[r#"
            stack.yaml:2:5: step a has command and sql; a step is exactly one of them (split it into steps joined by `needs`)
            stack.yaml:5:5: step b does nothing; give it one of `command`, `sql`, `sql_file`, `wait` or `service`
        "#]],
    );
}

#[test]
fn for_each_stamps_steps_and_checks_placeholders() {
    let stack = build(
        "\
vars:
  apps: [alpha, beta]
steps:
  - name: build-{{item}}
    for_each: apps
    command: make {{item}} ENV={{env}}
  - name: all
    needs: [\"build-*\"]
    command: echo done
",
    )
    .unwrap();
    let names: Vec<&str> = stack.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["build-alpha", "build-beta", "all"]);
    assert_eq!(stack.steps[2].needs.len(), 2);
    assert_eq!(format!("{:?}", stack.steps[1].kind), r#"Command { run: Shell("make beta ENV=dev") }"#);
    check_errors(
        "\
vars:
  apps: [{name: alpha}]
steps:
  - name: build-{{item.nam}}
    for_each: apps
    command: echo
  - name: x-{{item}}
    for_each: [a, a]
    command: echo
  - name: y
    for_each: nothing
    command: echo
",
        expect![[r#"
            stack.yaml:4:5: `{{item.nam}}`: the item has no key "nam" (its keys: name) (for_each item apps[0])
            stack.yaml:4:5: step name "build-{{item.nam}}" contains '{'; allowed are letters, digits, _, - and . (for_each item apps[0])
            stack.yaml:7:5: step name "x-a" is used twice (first at line 7); put {{item}} (or {{item.KEY}}) into the name of a for_each step
            stack.yaml:11:5: for_each names "nothing", which is not in `vars` (known: apps); write the list inline or add it to `vars`
        "#]],
    );
}

#[test]
fn credentials_are_checked_against_the_manifest() {
    check_errors(
        "\
steps:
  - name: a
    sql: SELECT 1
    module: users
  - name: b
    sql: SELECT 1
    module: users
    tenant: globex
  - name: c
    sql: SELECT 1
    module: shared
    tenant: acme
  - name: d
    sql: SELECT 1
    role: dev_nobody
    database: dev_shared
  - name: e
    sql: SELECT 1
    role: dev_shared
",
        expect![[r#"
            stack.yaml:4:5: step a: module users has `storage: schema-per-tenant`; name the `tenant:` whose storage the step uses
            stack.yaml:8:5: step b: tenant "globex" is not in pgplane.yaml (tenants: acme)
            stack.yaml:12:5: step c: module shared has `storage: database` (no tenants); remove `tenant:`
            stack.yaml:15:5: step d: role "dev_nobody" is not a role pgplane manages in environment dev (roles: dev_acme_users, dev_shared, dev_users)
            stack.yaml:19:5: step e: with `role:` and no `module:`, name the `database:` to connect to
        "#]],
    );
    let stack = build(
        "steps:\n  - name: a\n    wait: SELECT true\n    module: users\n    tenant: acme\n  - name: b\n    sql: SELECT 1\n    role: dev_shared\n    database: postgres\n",
    )
    .unwrap();
    let m = manifest();
    let access = stack.access(&Desired::build(&m, "dev", &Default::default()).unwrap()).unwrap();
    expect![[r#"
        [
            Some(
                Access {
                    server: "local",
                    role: "dev_acme_users",
                    database: "dev_users",
                    schema: Some(
                        "acme_users",
                    ),
                    module: Some(
                        "users",
                    ),
                    tenant: Some(
                        "acme",
                    ),
                },
            ),
            Some(
                Access {
                    server: "local",
                    role: "dev_shared",
                    database: "postgres",
                    schema: None,
                    module: None,
                    tenant: None,
                },
            ),
        ]
    "#]]
    .assert_debug_eq(&access);
}

#[test]
fn a_stack_file_without_manifest_cannot_name_modules() {
    let src = StackSource::parse(Path::new("s.yaml"), "steps:\n  - name: a\n    sql: SELECT 1\n    module: shared\n")
        .unwrap();
    let e = src.build(None, None, "dev").unwrap_err().to_string();
    assert_eq!(
        e,
        "s.yaml:4:5: step a names a module, but the stack file names no manifest; add `manifest: pgplane.yaml` (relative to the stack file)"
    );
}

#[test]
fn manifests_hold_stacks_and_check_them_when_read() {
    let text = format!(
        "{MANIFEST}stacks:\n  - name: setup\n    steps:\n      - name: a\n        sql: SELECT 1\n        module: shared\n      - name: b\n        needs: [x]\n        command: echo\n"
    );
    let e = Manifest::parse(Path::new("pgplane.yaml"), &text, &|_| None).unwrap_err();
    assert_eq!(e.to_string(), "pgplane.yaml:18:17: step b needs \"x\", which is no step");
    let good = text.replace("needs: [x]", "needs: [a]");
    let m = Manifest::parse(Path::new("pgplane.yaml"), &good, &|_| None).unwrap();
    assert_eq!(m.stacks.len(), 1);
    let stack = m.stacks[0].build(Some(&m), None, "dev").unwrap();
    assert_eq!(stack.name, "setup");
    assert_eq!(stack.steps[1].line, 17);
}

// ----- the scheduler --------------------------------------------------------------------

const GROUPS: &str = "\
groups:
  ex: {mode: exclusive}
  par: {mode: parallel, max: 2}
steps:
  - {name: e1, group: ex, command: echo}
  - {name: e2, group: ex, command: echo}
  - {name: e3, group: ex, command: echo}
  - {name: p1, group: par, command: echo}
  - {name: p2, group: par, command: echo}
  - {name: p3, group: par, command: echo}
  - name: svc
    service: sleep 100
    health: {command: 'true'}
  - name: after-started
    needs: [{svc: started}]
    command: echo
  - name: after-healthy
    needs: [{svc: healthy}]
    command: echo
  - name: last
    needs: [e3, after-healthy]
    command: echo
";

/// Which steps start (and which are skipped) for the given states, by name.
fn check_decide(states: &[(&str, State)], selected: Option<&[&str]>, stopping: bool, expect: Expect) {
    let stack = build(GROUPS).unwrap();
    let mut st = vec![State::Pending; stack.steps.len()];
    for (name, s) in states {
        st[stack.index(name).unwrap()] = *s;
    }
    let sel: Vec<bool> = match selected {
        None => vec![true; stack.steps.len()],
        Some(names) => stack.steps.iter().map(|s| names.contains(&s.name.as_str())).collect(),
    };
    let d = decide(&stack, &st, &sel, stopping);
    let start: Vec<&str> = d.start.iter().map(|&i| stack.steps[i].name.as_str()).collect();
    let skip: Vec<String> = d.skip.iter().map(|(i, why)| format!("{}: {why}", stack.steps[*i].name)).collect();
    expect.assert_eq(&format!("start: {}\nskip: {}\n", start.join(", "), skip.join("; ")));
}

#[test]
fn exclusive_groups_run_one_member_at_a_time_in_order() {
    check_decide(
        &[],
        None,
        false,
        expect![[r#"
            start: e1, p1, p2, svc, after-started
            skip: 
        "#]],
    );
    check_decide(
        &[("e1", State::Running)],
        None,
        false,
        expect![[r#"
            start: p1, p2, svc, after-started
            skip: 
        "#]],
    );
    // e2 is next; e3 waits even though nothing in the group runs... until e2 finished.
    check_decide(
        &[("e1", State::Completed)],
        None,
        false,
        expect![[r#"
            start: e2, p1, p2, svc, after-started
            skip: 
        "#]],
    );
    // A failed member does not block the next one (order is not a dependency).
    check_decide(
        &[("e1", State::Failed), ("e2", State::Completed)],
        None,
        false,
        expect![[r#"
            start: e3, p1, p2, svc, after-started
            skip: 
        "#]],
    );
}

#[test]
fn parallel_groups_are_bounded() {
    check_decide(
        &[("p1", State::Running)],
        None,
        false,
        expect![[r#"
            start: e1, p2, svc, after-started
            skip: 
        "#]],
    );
    check_decide(
        &[("p1", State::Running), ("p2", State::Running)],
        None,
        false,
        expect![[r#"
            start: e1, svc, after-started
            skip: 
        "#]],
    );
    check_decide(
        &[("p1", State::Completed), ("p2", State::Running)],
        None,
        false,
        expect![[r#"
            start: e1, p3, svc, after-started
            skip: 
        "#]],
    );
}

#[test]
fn needs_conditions_started_and_healthy() {
    check_decide(
        &[("svc", State::Starting)],
        None,
        false,
        expect![[r#"
        start: e1, p1, p2, after-started
        skip: 
    "#]],
    );
    check_decide(
        &[("svc", State::Healthy)],
        None,
        false,
        expect![[r#"
        start: e1, p1, p2, after-started, after-healthy
        skip: 
    "#]],
    );
}

#[test]
fn failures_skip_dependents_transitively_and_stop_without_keep_going() {
    check_decide(
        &[("svc", State::Failed)],
        None,
        false,
        expect![[r#"
        start: e1, p1, p2
        skip: after-started: needs svc, which failed; after-healthy: needs svc, which failed; last: needs after-healthy, which was skipped
    "#]],
    );
    // Without --keep-going nothing new starts, but the skips are still known.
    check_decide(
        &[("svc", State::Failed), ("e1", State::Running)],
        None,
        true,
        expect![[r#"
        start: 
        skip: after-started: needs svc, which failed; after-healthy: needs svc, which failed; last: needs after-healthy, which was skipped
    "#]],
    );
}

#[test]
fn steps_not_selected_count_as_met() {
    // --only last: its needs are not run and count as met.
    check_decide(
        &[],
        Some(&["last"]),
        false,
        expect![[r#"
        start: last
        skip: 
    "#]],
    );
    // --from after-healthy: it and `last`; `last` also needs e3, which is not selected.
    check_decide(
        &[],
        Some(&["after-healthy", "last"]),
        false,
        expect![[r#"
        start: after-healthy
        skip: 
    "#]],
    );
}

#[test]
fn dry_run_shows_groups_as_waves() {
    check_phases(
        GROUPS,
        expect![[r#"
            stack stack (stack.yaml): 10 of 10 steps in 4 phases
            phase 1
              e1             command  group ex (exclusive)
              p1             command  group par (parallel, max 2)
              p2             command  group par (parallel, max 2)
              svc            service
              after-started  command  needs svc (started)
            phase 2
              e2             command  group ex (exclusive)
              p3             command  group par (parallel, max 2)
              after-healthy  command  needs svc (healthy)
            phase 3
              e3             command  group ex (exclusive)
            phase 4
              last           command  needs e3, after-healthy
        "#]],
    );
}

/// The example under "The file." in README.md is a valid stack.
#[test]
fn the_readme_example_is_valid() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md")).unwrap();
    let from = readme.find("**The file.**").unwrap();
    let start = readme[from..].find("```yaml\n").unwrap() + from + "```yaml\n".len();
    let end = readme[start..].find("```").unwrap() + start;
    let yaml = readme[start..end].replace("manifest: pgplane.yaml", "");
    let m = manifest();
    let src = StackSource::parse(Path::new("stack.yaml"), &yaml).unwrap();
    let stack = src
        .build(Some(&m), Some(&Desired::build(&m, "dev", &Default::default()).unwrap()), "dev")
        .unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<&str> = stack.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["schema", "index-alpha", "index-beta", "instance-ready", "api-alpha", "api-beta", "smoke"]);
}
