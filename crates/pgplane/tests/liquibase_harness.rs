//! The Liquibase conformance suite: every changelog of Liquibase's own test harness that
//! it runs on PostgreSQL (vendored in `tests/fixtures/liquibase-harness`, see its README),
//! the changelogs of real applications (`tests/fixtures/liquibase-apps`) and pgplane's own
//! breadth cases (`tests/fixtures/liquibase-breadth`), each run by real Liquibase 4.28 into
//! one fresh database and by `pgplane migrate up` into another. Both must give the same
//! schema (`pg_dump --schema-only`), the same rows (per table, sorted) and the same ledger
//! rows (timestamps and deployment ids aside); then each tool continues the other's
//! database: Liquibase's `update` runs nothing new on pgplane's, `pgplane migrate up` runs
//! nothing on Liquibase's (runAlways changesets aside), neither sees a changed checksum.
//!
//! Cases that real Liquibase itself cannot run on PostgreSQL 15 are listed with the reason
//! in `LIQUIBASE_FAILS`; pgplane must refuse them too, before anything runs.
//!
//! Real Liquibase runs in one JVM for all cases (`tests/liquibase_batch/LiquibaseBatch.java`,
//! Liquibase's own `CommandScope` API, as its CLI calls it): a JVM start costs seconds.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use common::{lines, with_db, T};

/// Cases real Liquibase 4.28 (open source) fails on PostgreSQL 15, with why; pgplane must
/// refuse them with an error saying so.
const LIQUIBASE_FAILS: &[(&str, &str, &str)] = &[
    ("harness/change/addCheckConstraint.xml", "Liquibase Pro change type addCheckConstraint", "Liquibase Pro"),
    ("harness/change/createFunction.xml", "Liquibase Pro change type createFunction", "Liquibase Pro"),
    ("harness/change/createPackage.xml", "Liquibase Pro change type createPackage", "Liquibase Pro"),
    ("harness/change/createPackageBody.xml", "Liquibase Pro change type createPackageBody", "Liquibase Pro"),
    ("harness/change/createTrigger.xml", "Liquibase Pro change type createTrigger", "Liquibase Pro"),
    ("harness/change/disableCheckConstraint.xml", "Liquibase Pro change types (check constraints)", "Liquibase Pro"),
    ("harness/change/disableTrigger.xml", "Liquibase Pro change types (triggers)", "Liquibase Pro"),
    ("harness/change/dropCheckConstraint.xml", "Liquibase Pro change types (check constraints)", "Liquibase Pro"),
    ("harness/change/dropFunction.xml", "Liquibase Pro change types (functions)", "Liquibase Pro"),
    ("harness/change/dropTrigger.xml", "Liquibase Pro change types (triggers)", "Liquibase Pro"),
    ("harness/change/enableCheckConstraint.xml", "Liquibase Pro change types (check constraints)", "Liquibase Pro"),
    ("harness/change/enableTrigger.xml", "Liquibase Pro change types (triggers)", "Liquibase Pro"),
    ("harness/change/renameTrigger.xml", "Liquibase Pro change types (triggers)", "Liquibase Pro"),
    ("harness/change/postgresql/alterCompositeTypeAttributes.json", "Liquibase Pro composite types", "Liquibase Pro"),
    ("harness/change/postgresql/alterCompositeTypeAttributes.xml", "Liquibase Pro composite types", "Liquibase Pro"),
    ("harness/change/postgresql/alterCompositeTypeAttributes.yaml", "Liquibase Pro composite types", "Liquibase Pro"),
    ("harness/change/postgresql/changeCompositeTypeOwner.json", "Liquibase Pro composite types", "Liquibase Pro"),
    ("harness/change/postgresql/changeCompositeTypeOwner.xml", "Liquibase Pro composite types", "Liquibase Pro"),
    ("harness/change/postgresql/changeCompositeTypeOwner.yaml", "Liquibase Pro composite types", "Liquibase Pro"),
    ("harness/change/postgresql/createCompositeType.json", "Liquibase Pro composite types", "Liquibase Pro"),
    ("harness/change/postgresql/createCompositeType.xml", "Liquibase Pro composite types", "Liquibase Pro"),
    ("harness/change/postgresql/createCompositeType.yaml", "Liquibase Pro composite types", "Liquibase Pro"),
    ("harness/change/postgresql/dropCompositeType.json", "Liquibase Pro composite types", "Liquibase Pro"),
    ("harness/change/postgresql/dropCompositeType.xml", "Liquibase Pro composite types", "Liquibase Pro"),
    ("harness/change/postgresql/dropCompositeType.yaml", "Liquibase Pro composite types", "Liquibase Pro"),
    ("harness/change/postgresql/renameCompositeType.json", "Liquibase Pro composite types", "Liquibase Pro"),
    ("harness/change/postgresql/renameCompositeType.xml", "Liquibase Pro composite types", "Liquibase Pro"),
    ("harness/change/postgresql/renameCompositeType.yaml", "Liquibase Pro composite types", "Liquibase Pro"),
    ("harness/change/postgresql/renameCompositeTypeAttribute.json", "Liquibase Pro composite types", "Liquibase Pro"),
    ("harness/change/postgresql/renameCompositeTypeAttribute.xml", "Liquibase Pro composite types", "Liquibase Pro"),
    ("harness/change/postgresql/renameCompositeTypeAttribute.yaml", "Liquibase Pro composite types", "Liquibase Pro"),
    ("apps/flowable-eventregistry", "a customChange runs a Flowable Java class", "customChange runs the Java class"),
];

/// Cases real Liquibase runs that pgplane does not run identically, with why (the README
/// lists them). Empty: every case passes.
const KNOWN_DIFFERENT: &[(&str, &str)] = &[];

struct Case {
    /// `harness/change/createTable.xml`, `apps/jhipster-sample-app`, …
    name: String,
    search_path: PathBuf,
    changelog: String,
    /// Prepare the database with the harness's init SQL first.
    harness_init: bool,
    /// Liquibase contexts for both tools.
    contexts: Option<String>,
    /// Both tools must fail part way (a breadth case marked `suite-expect: fail`), leaving
    /// the same schema, rows and ledger behind.
    expect_fail: bool,
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn liquibase_home() -> PathBuf {
    let bin = common::liquibase_bin();
    let home = Path::new(&bin).parent().unwrap().to_path_buf();
    assert!(
        home.join("internal/lib/liquibase-core.jar").exists(),
        "real Liquibase is needed: run ./scripts/test (it installs it), or set LIQUIBASE to the liquibase launcher"
    );
    home
}

/// The harness's selection for PostgreSQL 15 (`FileUtils.resolveInputFilePaths`): for each
/// format, the generic changelogs and those under `postgresql/`, a `postgresql/` file
/// replacing a generic one of the same name and format.
fn harness_cases() -> Vec<Case> {
    let root = fixtures().join("liquibase-harness");
    let mut out = Vec::new();
    let formats = ["xml", "sql", "json", "yml", "yaml"];
    let list = |dir: &Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| formats.iter().any(|f| n.ends_with(&format!(".{f}"))))
            .collect();
        v.sort();
        v
    };
    let change = root.join("change/changelogs");
    let specific: BTreeSet<String> = list(&change.join("postgresql")).into_iter().collect();
    for f in list(&change) {
        assert!(!specific.contains(&f), "{f} is replaced by postgresql/{f} and should not be vendored");
        out.push(Case {
            name: format!("harness/change/{f}"),
            search_path: change.clone(),
            changelog: f,
            harness_init: true,
            contexts: None,
            expect_fail: false,
        });
    }
    for f in specific {
        out.push(Case {
            name: format!("harness/change/postgresql/{f}"),
            search_path: change.join("postgresql"),
            changelog: f,
            harness_init: true,
            contexts: None,
            expect_fail: false,
        });
    }
    for (dir, prefix) in
        [("data/changelogs", "harness/data"), ("compatibility/foundational/changelogs", "harness/foundational")]
    {
        for f in list(&root.join(dir)) {
            out.push(Case {
                name: format!("{prefix}/{f}"),
                search_path: root.join(dir),
                changelog: f,
                harness_init: true,
                contexts: None,
                expect_fail: false,
            });
        }
    }
    out
}

fn app_cases() -> Vec<Case> {
    let root = fixtures().join("liquibase-apps");
    let app = |name: &str, dir: &str, changelog: &str, contexts: Option<&str>| Case {
        name: format!("apps/{name}"),
        search_path: root.join(dir).join("resources"),
        changelog: changelog.to_string(),
        harness_init: false,
        contexts: contexts.map(str::to_string),
        expect_fail: false,
    };
    vec![
        app("jhipster-sample-app", "jhipster-sample-app", "config/liquibase/master.xml", None),
        // The same application as it runs in production: without its `faker` test data.
        app("jhipster-sample-app-prod", "jhipster-sample-app", "config/liquibase/master.xml", Some("prod")),
        app("flowable-cmmn", "flowable-cmmn", "org/flowable/cmmn/db/liquibase/flowable-cmmn-db-changelog.xml", None),
        app("flowable-dmn", "flowable-dmn", "org/flowable/dmn/db/liquibase/flowable-dmn-db-changelog.xml", None),
        app("flowable-app", "flowable-app", "org/flowable/app/db/liquibase/flowable-app-db-changelog.xml", None),
        app(
            "flowable-eventregistry",
            "flowable-eventregistry",
            "org/flowable/eventregistry/db/liquibase/flowable-eventregistry-db-changelog.xml",
            None,
        ),
        app("folio-mod-search", "folio-mod-search", "changelog/changelog-master.xml", None),
        app("folio-mod-inn-reach", "folio-mod-inn-reach", "db/changelog/changelog-master.xml", None),
    ]
}

fn breadth_cases() -> Vec<Case> {
    let root = fixtures().join("liquibase-breadth");
    let mut v: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("case-"))
        .collect();
    v.sort();
    // A case says what it needs in its text: `suite-contexts: a,b`, `suite-expect: fail`.
    let marker = |text: &str, key: &str| -> Option<String> {
        let at = text.find(key)? + key.len();
        text[at..].split_whitespace().next().map(str::to_string)
    };
    v.into_iter()
        .map(|f| {
            let text = std::fs::read_to_string(root.join(&f)).unwrap();
            Case {
                name: format!("breadth/{f}"),
                search_path: root.clone(),
                contexts: marker(&text, "suite-contexts:"),
                expect_fail: marker(&text, "suite-expect:").as_deref() == Some("fail"),
                changelog: f,
                harness_init: true,
            }
        })
        .collect()
}

/// The harness's init SQL (`postgres-init.sh`'s heredoc) without the statements for its
/// `lbuser` role, which the suite does not create.
fn init_sql() -> String {
    let sh = std::fs::read_to_string(fixtures().join("liquibase-harness/postgres-init.sh")).unwrap();
    let start = sh.find("<<-EOSQL").unwrap();
    let body = &sh[sh[start..].find('\n').unwrap() + start + 1..];
    let body = &body[..body.rfind("EOSQL").unwrap()];
    body.lines().filter(|l| !l.to_ascii_lowercase().contains("lbuser")).collect::<Vec<_>>().join("\n")
}

/// Runs `script` (many statements, `\connect`s) through one psql.
fn psql_script(url: &str, script: &str) {
    let mut child = Command::new("psql")
        .args([url, "-X", "-q", "-v", "ON_ERROR_STOP=1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run psql");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "psql script failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// Runs the jobs `(key, db, case)` through real Liquibase in one JVM; returns key → error
/// (`None`: it ran).
fn liquibase_batch(t: &T, jobs: &[(String, String, &Case)], command: &str) -> BTreeMap<String, Option<String>> {
    let home = liquibase_home();
    let rest = t.server.url.strip_prefix("postgresql://").unwrap();
    let (auth, hostpart) = rest.split_once('@').unwrap();
    let (user, password) = auth.split_once(':').unwrap();
    let host = hostpart.split('/').next().unwrap();
    let jobs_file = t.dir.join(format!("jobs-{command}.tsv"));
    let results_file = t.dir.join(format!("results-{command}-{}.tsv", jobs.len()));
    let mut text = String::new();
    for (key, db, case) in jobs {
        let contexts = case.contexts.clone().unwrap_or_default();
        text.push_str(&format!(
            "{key}\t{command}\t{}\t{}\tjdbc:postgresql://{host}/{db}\t{user}\t{password}\t{contexts}\n",
            case.search_path.display(),
            case.changelog
        ));
    }
    std::fs::write(&jobs_file, text).unwrap();
    let cp = format!("{}/internal/lib/*:{}/lib/*", home.display(), home.display());
    let out = Command::new("java")
        .args(["-cp", &cp])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/liquibase_batch/LiquibaseBatch.java"))
        .arg(&jobs_file)
        .arg(&results_file)
        .arg("2")
        .stdin(Stdio::null())
        .output()
        .expect("run java");
    assert!(out.status.success(), "the Liquibase batch failed: {}", String::from_utf8_lossy(&out.stderr));
    let mut results = BTreeMap::new();
    for line in std::fs::read_to_string(&results_file).unwrap().lines() {
        let mut parts = line.splitn(3, '\t');
        let (key, status, error) = (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap_or(""));
        results.insert(key.to_string(), if status == "ok" { None } else { Some(error.to_string()) });
    }
    assert_eq!(results.len(), jobs.len(), "the Liquibase batch left jobs without a result");
    results
}

/// Runs `f` over `items`, `n` at a time.
fn parallel<I: Sync, O: Send>(items: &[I], n: usize, f: impl Fn(&I) -> O + Sync) -> Vec<O> {
    let next = Mutex::new(0usize);
    let out: Mutex<Vec<(usize, O)>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..n {
            s.spawn(|| loop {
                let i = {
                    let mut g = next.lock().unwrap();
                    let i = *g;
                    *g += 1;
                    i
                };
                if i >= items.len() {
                    break;
                }
                let o = f(&items[i]);
                out.lock().unwrap().push((i, o));
            });
        }
    });
    let mut v = out.into_inner().unwrap();
    v.sort_by_key(|(i, _)| *i);
    v.into_iter().map(|(_, o)| o).collect()
}

fn pgplane_up(t: &T, url: &str, case: &Case, json: bool) -> common::Run {
    let source = case.search_path.join(&case.changelog);
    let mut args = vec![
        "migrate".to_string(),
        "up".into(),
        "--url".into(),
        url.to_string(),
        "--source".into(),
        source.display().to_string(),
        "--search-path".into(),
        case.search_path.display().to_string(),
        "--allow-execute-command".into(),
    ];
    if let Some(c) = &case.contexts {
        args.push("--contexts".into());
        args.push(c.clone());
    }
    if json {
        args.push("--json".into());
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    t.pgplane(&refs)
}

const LEDGER_TABLES: [&str; 3] = ["databasechangelog", "databasechangeloglock", "pgplane_changelog_failures"];

/// Masks timestamps with fractional seconds (values of now() at run time).
fn mask_now(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        let looks = i + 20 < b.len()
            && b[i..i + 4].iter().all(u8::is_ascii_digit)
            && b[i + 4] == b'-'
            && (b[i + 10] == b' ' || b[i + 10] == b'T')
            && b[i + 13] == b':'
            && b[i + 19] == b'.';
        if looks {
            out.push_str("<now>");
            i += 20;
            while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'+' || b[i] == b':') {
                i += 1;
            }
        } else {
            let ch = text[i..].chars().next().unwrap();
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

/// The schema (pg_dump) without the ledger tables.
fn schema_of(t: &T, db: &str) -> String {
    let mut cmd = Command::new("pg_dump");
    cmd.arg(with_db(&t.server.url, db)).args(["--schema-only", "--no-owner", "--no-privileges"]);
    for table in LEDGER_TABLES {
        cmd.arg(format!("--exclude-table={table}"));
    }
    let out = cmd.output().expect("run pg_dump");
    assert!(out.status.success(), "pg_dump {db}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| {
            !l.starts_with("--")
                && !l.trim().is_empty()
                && !l.starts_with("\\restrict")
                && !l.starts_with("\\unrestrict")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every table's rows as text, sorted (now() values masked).
fn data_of(t: &T, db: &str) -> String {
    let sql = format!(
        "CREATE FUNCTION pg_temp.all_rows() RETURNS TABLE(tbl text, r text) LANGUAGE plpgsql AS $f$
         DECLARE c regclass; cols text;
         BEGIN
           FOR c IN SELECT k.oid FROM pg_catalog.pg_class k JOIN pg_catalog.pg_namespace n ON n.oid = k.relnamespace
                     WHERE k.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
                       AND n.nspname NOT LIKE 'pg_toast%' AND k.relname NOT IN ({})
           LOOP
             -- A large object (an oid column) by its content: oids differ between databases.
             SELECT string_agg(CASE WHEN a.atttypid = 'oid'::regtype
                                    THEN format('(SELECT encode(lo_get(t.%I), ''hex''))', a.attname)
                                    ELSE format('t.%I', a.attname) END, ', ' ORDER BY a.attnum)
               INTO cols FROM pg_catalog.pg_attribute a WHERE a.attrelid = c AND a.attnum > 0 AND NOT a.attisdropped;
             RETURN QUERY EXECUTE format('SELECT %L::text, ROW(%s)::text FROM %s t', c::text, coalesce(cols, ''), c);
           END LOOP;
         END $f$;
         SELECT tbl || ': ' || coalesce(r, '') FROM pg_temp.all_rows();",
        LEDGER_TABLES.iter().map(|t| format!("'{t}'")).collect::<Vec<_>>().join(", ")
    );
    let out = Command::new("psql")
        .args([&with_db(&t.server.url, db), "-X", "-At", "-v", "ON_ERROR_STOP=1"])
        .arg("-c")
        .arg(&sql)
        .output()
        .expect("run psql");
    assert!(out.status.success(), "reading rows of {db}: {}", String::from_utf8_lossy(&out.stderr));
    let mut rows: Vec<String> =
        lines(&String::from_utf8_lossy(&out.stdout)).into_iter().map(|r| mask_now(&r)).collect();
    rows.sort();
    rows.join("\n")
}

/// The ledger as both tools must agree on it (times and deployment ids aside).
fn ledger_of(t: &T, db: &str) -> Vec<String> {
    if t.sql(db, "SELECT to_regclass('databasechangelog') IS NULL") == "t" {
        return Vec::new();
    }
    lines(&t.sql(
        db,
        "SELECT concat_ws(' | ', orderexecuted, filename, id, author, md5sum, description, comments, exectype, contexts, labels, tag)
           FROM databasechangelog ORDER BY orderexecuted",
    ))
}

fn identities(t: &T, db: &str) -> Vec<String> {
    // DISTINCT: Liquibase itself adds a MARK_RAN row each time a runAlways changeset's
    // precondition marks it ran.
    lines(
        &t.sql(db, "SELECT DISTINCT concat_ws(' | ', filename, id, author, md5sum) FROM databasechangelog ORDER BY 1"),
    )
}

#[test]
fn liquibase_conformance_suite() {
    let started = std::time::Instant::now();
    let t = T::new("lbh");
    let mut cases = harness_cases();
    cases.extend(app_cases());
    cases.extend(breadth_cases());
    let dbs: Vec<(String, String)> = (0..cases.len()).map(|i| (format!("lbh_{i}_l"), format!("lbh_{i}_p"))).collect();

    // Fresh databases, prepared with the harness's init SQL where the case wants it.
    // The init SQL runs once, into a template the cases' databases are copied from.
    let mut script = format!(
        "DROP DATABASE IF EXISTS lbh_init;\nCREATE DATABASE lbh_init;\n\\connect lbh_init\nSET client_min_messages = warning;\n{}\n\\connect postgres\n",
        init_sql()
    );
    for (case, (l, p)) in cases.iter().zip(&dbs) {
        let template = if case.harness_init { " TEMPLATE lbh_init" } else { "" };
        for db in [l, p] {
            script.push_str(&format!("DROP DATABASE IF EXISTS {db};\nCREATE DATABASE {db}{template};\n"));
        }
    }
    psql_script(&with_db(&t.server.url, "postgres"), &script);
    let prepared = started.elapsed();

    // Real Liquibase into the `_l` databases, pgplane into the `_p` ones, at the same time.
    let jobs: Vec<(String, String, &Case)> =
        cases.iter().zip(&dbs).map(|(c, (l, _))| (c.name.clone(), l.clone(), c)).collect();
    let (lb, pg) = std::thread::scope(|s| {
        let lb = s.spawn(|| liquibase_batch(&t, &jobs, "update"));
        let pg = parallel(&cases.iter().zip(&dbs).collect::<Vec<_>>(), 3, |(c, (_, p))| {
            pgplane_up(&t, &with_db(&t.server.url, p), c, false)
        });
        (lb.join().unwrap(), pg)
    });
    let first_runs = started.elapsed();

    // Compare.
    let mut problems: Vec<String> = Vec::new();
    let mut same: Vec<usize> = Vec::new();
    let compared = parallel(&(0..cases.len()).collect::<Vec<_>>(), 8, |&i| {
        let case = &cases[i];
        let (l, p) = &dbs[i];
        let lb_error = &lb[&case.name];
        let pg_run = &pg[i];
        let expected_fail = LIQUIBASE_FAILS.iter().find(|(n, _, _)| *n == case.name);
        if case.expect_fail {
            if lb_error.is_none() {
                return Err(format!("{}: real Liquibase ran it, but the case expects it to fail", case.name));
            }
            if pg_run.code == 0 {
                return Err(format!("{}: Liquibase failed part way, pgplane did not", case.name));
            }
        }
        match (lb_error, expected_fail) {
            (Some(_), None) if case.expect_fail => {}
            (Some(e), None) => {
                return Err(format!(
                    "{}: real Liquibase failed, and the case is not in LIQUIBASE_FAILS: {e}",
                    case.name
                ))
            }
            (None, Some(_)) => {
                return Err(format!("{}: real Liquibase ran it, but it is listed in LIQUIBASE_FAILS", case.name))
            }
            (Some(_), Some((_, _, marker))) => {
                if pg_run.code == 0 {
                    return Err(format!("{}: Liquibase cannot run it, but pgplane did", case.name));
                }
                if !pg_run.stderr.contains(marker) && !pg_run.stdout.contains(marker) {
                    return Err(format!("{}: pgplane failed without saying {marker:?}: {}", case.name, pg_run.stderr));
                }
                return Ok(None);
            }
            (None, None) => {}
        }
        if pg_run.code != 0 && !case.expect_fail {
            return Err(format!(
                "{}: pgplane failed where Liquibase ran it:\n{}{}",
                case.name, pg_run.stdout, pg_run.stderr
            ));
        }
        let mut diffs = Vec::new();
        if schema_of(&t, p) != schema_of(&t, l) {
            diffs.push(format!(
                "schema differs:\n--- liquibase\n{}\n--- pgplane\n{}",
                schema_of(&t, l),
                schema_of(&t, p)
            ));
        }
        if data_of(&t, p) != data_of(&t, l) {
            diffs.push(format!("rows differ:\n--- liquibase\n{}\n--- pgplane\n{}", data_of(&t, l), data_of(&t, p)));
        }
        let (ll, pl) = (ledger_of(&t, l), ledger_of(&t, p));
        if ll != pl {
            diffs.push(format!("ledger differs:\n--- liquibase\n{}\n--- pgplane\n{}", ll.join("\n"), pl.join("\n")));
        }
        if diffs.is_empty() {
            Ok(Some(()))
        } else {
            Err(format!("{}: {}", case.name, diffs.join("\n")))
        }
    });
    let mut ran_by_liquibase = 0;
    for (i, r) in compared.into_iter().enumerate() {
        if lb[&cases[i].name].is_none() || cases[i].expect_fail {
            ran_by_liquibase += 1;
        }
        match r {
            Ok(Some(())) => same.push(i),
            Ok(None) => {}
            Err(e) => {
                if !KNOWN_DIFFERENT.iter().any(|(n, _)| *n == cases[i].name) {
                    problems.push(e);
                }
            }
        }
    }
    let compared_at = started.elapsed();

    // Each tool continues the other's database: nothing new runs, no checksum error.
    let cont_cases: Vec<usize> = same.iter().copied().filter(|&i| !cases[i].expect_fail).collect();
    let before: Vec<Vec<String>> = cont_cases.iter().map(|&i| identities(&t, &dbs[i].1)).collect();
    let jobs2: Vec<(String, String, &Case)> =
        cont_cases.iter().map(|&i| (cases[i].name.clone(), dbs[i].1.clone(), &cases[i])).collect();
    let (lb2, pg2) = std::thread::scope(|s| {
        let lb2 = s.spawn(|| liquibase_batch(&t, &jobs2, "update"));
        let pg2 = parallel(&cont_cases, 3, |&i| pgplane_up(&t, &with_db(&t.server.url, &dbs[i].0), &cases[i], true));
        (lb2.join().unwrap(), pg2)
    });
    for (k, &i) in cont_cases.iter().enumerate() {
        let case = &cases[i];
        if let Some(e) = &lb2[&case.name] {
            problems.push(format!("{}: Liquibase failed to continue pgplane's database: {e}", case.name));
        } else if identities(&t, &dbs[i].1) != before[k] {
            problems.push(format!("{}: Liquibase ran changesets again on pgplane's database", case.name));
        }
        let run = &pg2[k];
        if run.code != 0 {
            problems.push(format!(
                "{}: pgplane failed to continue Liquibase's database:\n{}{}",
                case.name, run.stdout, run.stderr
            ));
            continue;
        }
        let target = &run.json()["modules"][0]["targets"][0];
        let ran: Vec<&str> = target["applied"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
        let always: Vec<&str> = target["migrations"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["state"] == "always")
            .map(|m| m["name"].as_str().unwrap())
            .collect();
        if ran != always {
            problems.push(format!("{}: pgplane re-ran changesets Liquibase had run: {ran:?}", case.name));
        }
    }

    let passing =
        same.iter().filter(|&&i| !problems.iter().any(|p| p.starts_with(&format!("{}:", cases[i].name)))).count();
    eprintln!(
        "Liquibase conformance: {passing} of {ran_by_liquibase} cases real Liquibase runs pass identically ({} refused as Liquibase refuses them); \
         prepared in {:.1?}, first runs {:.1?}, compared {:.1?}, total {:.1?}",
        LIQUIBASE_FAILS.len(),
        prepared,
        first_runs - prepared,
        compared_at - first_runs,
        started.elapsed()
    );
    assert!(problems.is_empty(), "{} problem(s):\n\n{}", problems.len(), problems.join("\n\n"));
    assert!(
        passing * 100 >= ran_by_liquibase * 95,
        "only {passing} of {ran_by_liquibase} cases pass identically (the target is 95%)"
    );
}
