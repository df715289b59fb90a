//! Liquibase changelogs against Liquibase's own ledger: `databasechangelog` and
//! `databasechangeloglock` in the target schema, in Liquibase 4.x's layout, so a database
//! migrated by real Liquibase is continued by pgplane and the other way round.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use pgplane_core::ident::quote_ident;
use pgplane_core::liquibase::{self, ChangeSet, Changelog, Condition, FsLoader, OnFail};
use pgplane_core::migrate::{Applied, State, Step, Unit};
use tokio_postgres::Client;

use super::ledger::{failure_of, qualified, table_exists, Outcome};
use super::{Failure, Selection, Target};

pub const DEFAULT_CHANGELOG_TABLE: &str = "databasechangelog";
pub const DEFAULT_LOCK_TABLE: &str = "databasechangeloglock";
/// Where pgplane keeps failures of changesets (Liquibase's ledger only holds successes).
pub const FAILURES_TABLE: &str = "pgplane_changelog_failures";
/// What pgplane writes to the LIQUIBASE column (Liquibase writes its version there).
const TOOL: &str = concat!("pgplane-", env!("CARGO_PKG_VERSION"));

#[derive(Debug)]
pub struct LiquibaseSource {
    /// The root changelog as given.
    pub file: PathBuf,
    pub changelog: Changelog,
}

/// Whether `path` is a Liquibase changelog (by extension, or a formatted SQL header).
pub fn is_changelog(path: &Path) -> Result<bool> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    Ok(match ext.as_str() {
        "yaml" | "yml" | "xml" | "json" => true,
        "sql" => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            let first = text.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("");
            first.to_ascii_lowercase().replace(' ', "").starts_with("--liquibaseformattedsql")
        }
        _ => false,
    })
}

pub fn load(path: &Path) -> Result<LiquibaseSource> {
    let search_path = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
    let name = path.file_name().and_then(|n| n.to_str()).context("the changelog path has no file name")?;
    let loader = FsLoader { root: search_path.clone() };
    let changelog = liquibase::load(name, &loader).map_err(|e| {
        // Errors name files relative to the search path; show them from the working folder.
        let line = e.line.map(|l| format!(":{l}")).unwrap_or_default();
        anyhow::anyhow!("{}{line}: {}", search_path.join(&e.file).display(), e.message)
    })?;
    Ok(LiquibaseSource { file: path.to_path_buf(), changelog })
}

/// Liquibase compares FILENAME after dropping `classpath:` and leading slashes.
fn normalize(filename: &str) -> String {
    let f = filename.strip_prefix("classpath:").unwrap_or(filename).replace('\\', "/");
    f.trim_start_matches('/').trim_start_matches("./").to_string()
}

pub fn key(filename: &str, id: &str, author: &str) -> String {
    format!("{}::{id}::{author}", normalize(filename))
}

impl LiquibaseSource {
    pub fn units(&self, selection: &Selection) -> Vec<Unit> {
        self.changelog
            .changesets
            .iter()
            .map(|cs| Unit {
                key: key(&cs.filename, &cs.id, &cs.author),
                name: format!("{}::{}::{}", cs.filename, cs.id, cs.author),
                checksum: cs.checksum.clone(),
                valid_checksums: cs.valid_checksums.clone(),
                rerun_on_change: cs.run_on_change,
                run_always: cs.run_always,
                version: None,
                selected: cs.applies_to_postgresql() && cs.selected(&selection.contexts, selection.labels.as_deref()),
                transactional: cs.run_in_transaction,
                tag: cs.tag().map(str::to_string),
            })
            .collect()
    }

    pub fn changeset(&self, unit: &Unit) -> Result<&ChangeSet> {
        self.changelog
            .changesets
            .iter()
            .find(|cs| key(&cs.filename, &cs.id, &cs.author) == unit.key)
            .context("unit without changeset")
    }
}

pub async fn read(client: &Client, schema: &str, table: &str) -> Result<Option<Vec<Applied>>> {
    if !table_exists(client, schema, table).await? {
        return Ok(None);
    }
    let sql = format!(
        "SELECT filename, id, author, md5sum, to_char(dateexecuted, 'YYYY-MM-DD HH24:MI:SS'), tag
           FROM {} WHERE EXECTYPE NOT IN ('FAILED', 'SKIPPED') ORDER BY orderexecuted",
        qualified(schema, table)
    );
    let mut out: Vec<Applied> = client
        .query(&sql, &[])
        .await
        .with_context(|| format!("reading Liquibase's ledger {schema}.{table}"))?
        .iter()
        .map(|r| Applied {
            key: key(r.get(0), r.get(1), r.get(2)),
            checksum: r.get(3),
            success: true,
            rolled_back: false,
            applied_at: r.get(4),
            execution_ms: None,
            error: None,
            tag: r.get(5),
        })
        .collect();
    if table_exists(client, schema, FAILURES_TABLE).await? {
        let sql = format!(
            "SELECT filename, id, author, md5sum, to_char(failed_at, 'YYYY-MM-DD HH24:MI:SS'), in_transaction, error
               FROM {}",
            qualified(schema, FAILURES_TABLE)
        );
        for r in client.query(&sql, &[]).await? {
            let k = key(r.get(0), r.get(1), r.get(2));
            if out.iter().any(|a| a.key == k) {
                continue;
            }
            out.push(Applied {
                key: k,
                checksum: r.get(3),
                success: false,
                rolled_back: r.get(5),
                applied_at: r.get(4),
                execution_ms: None,
                error: r.get(6),
                tag: None,
            });
        }
    }
    Ok(Some(out))
}

/// Creates Liquibase's two tables in Liquibase 4.x's layout when missing.
pub async fn ensure(client: &Client, schema: &str, table: &str, lock_table: &str) -> Result<()> {
    if !table_exists(client, schema, lock_table).await? {
        client
            .batch_execute(&format!(
                "CREATE TABLE {t} (ID INTEGER NOT NULL, LOCKED BOOLEAN NOT NULL, LOCKGRANTED TIMESTAMP WITHOUT TIME ZONE, \
                 LOCKEDBY VARCHAR(255), CONSTRAINT {pk} PRIMARY KEY (ID));",
                t = qualified(schema, lock_table),
                pk = quote_ident(&format!("{lock_table}_pkey"))
            ))
            .await
            .with_context(|| format!("creating {schema}.{lock_table}"))?;
    }
    client
        .execute(
            &format!(
                "INSERT INTO {} (ID, LOCKED) SELECT 1, FALSE WHERE NOT EXISTS (SELECT 1 FROM {} WHERE ID = 1)",
                qualified(schema, lock_table),
                qualified(schema, lock_table)
            ),
            &[],
        )
        .await?;
    if !table_exists(client, schema, table).await? {
        client
            .batch_execute(&format!(
                "CREATE TABLE {} (ID VARCHAR(255) NOT NULL, AUTHOR VARCHAR(255) NOT NULL, FILENAME VARCHAR(255) NOT NULL, \
                 DATEEXECUTED TIMESTAMP WITHOUT TIME ZONE NOT NULL, ORDEREXECUTED INTEGER NOT NULL, EXECTYPE VARCHAR(10) NOT NULL, \
                 MD5SUM VARCHAR(35), DESCRIPTION VARCHAR(255), COMMENTS VARCHAR(255), TAG VARCHAR(255), LIQUIBASE VARCHAR(20), \
                 CONTEXTS VARCHAR(255), LABELS VARCHAR(255), DEPLOYMENT_ID VARCHAR(10));",
                qualified(schema, table)
            ))
            .await
            .with_context(|| format!("creating {schema}.{table}"))?;
    }
    Ok(())
}

fn locked_by() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("pgplane {} (pid {})", host.trim(), std::process::id())
}

/// Takes Liquibase's lock row (pgplane already holds its advisory lock, so a row locked
/// by another pgplane is a leftover of a dead process and is taken over). Waits while real
/// Liquibase holds it.
pub async fn lock_row(client: &Client, schema: &str, lock_table: &str, timeout: Duration) -> Result<()> {
    let t = qualified(schema, lock_table);
    let started = Instant::now();
    let mut told = false;
    loop {
        let n = client
            .execute(
                &format!(
                    "UPDATE {t} SET LOCKED = TRUE, LOCKEDBY = $1, LOCKGRANTED = NOW()
                      WHERE ID = 1 AND (LOCKED = FALSE OR LOCKEDBY LIKE 'pgplane %')"
                ),
                &[&locked_by()],
            )
            .await
            .with_context(|| format!("taking Liquibase's lock in {schema}.{lock_table}"))?;
        if n == 1 {
            return Ok(());
        }
        let row = client.query_opt(&format!("SELECT LOCKEDBY, LOCKGRANTED::text FROM {t} WHERE ID = 1"), &[]).await?;
        let (by, since): (Option<String>, Option<String>) = row.map(|r| (r.get(0), r.get(1))).unwrap_or_default();
        if started.elapsed() >= timeout {
            bail!(
                "Liquibase's lock in {schema}.{lock_table} is held by {} since {}; wait for that Liquibase run, or if none \
                 is running release it (`liquibase release-locks`, or UPDATE {t} SET LOCKED = FALSE)",
                by.as_deref().unwrap_or("?"),
                since.as_deref().unwrap_or("?")
            );
        }
        if !told && started.elapsed() > Duration::from_millis(500) {
            tracing::warn!(by = by.as_deref().unwrap_or("?"), "waiting for Liquibase's lock");
            told = true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn unlock_row(client: &Client, schema: &str, lock_table: &str) -> Result<()> {
    client
        .execute(
            &format!(
                "UPDATE {} SET LOCKED = FALSE, LOCKEDBY = NULL, LOCKGRANTED = NULL WHERE ID = 1",
                qualified(schema, lock_table)
            ),
            &[],
        )
        .await?;
    Ok(())
}

/// Evaluates a precondition in the target: `Ok(true)` holds, `Ok(false)` fails, `Err` errs.
async fn holds(client: &Client, schema: &str, c: &Condition) -> Result<bool> {
    Ok(match c {
        Condition::All(list) => {
            for c in list {
                if !Box::pin(holds(client, schema, c)).await? {
                    return Ok(false);
                }
            }
            true
        }
        Condition::Any(list) => {
            for c in list {
                if Box::pin(holds(client, schema, c)).await? {
                    return Ok(true);
                }
            }
            false
        }
        Condition::Not(list) => {
            for c in list {
                if Box::pin(holds(client, schema, c)).await? {
                    return Ok(false);
                }
            }
            true
        }
        Condition::TableExists { schema: s, table } => {
            let s = s.as_deref().unwrap_or(schema);
            client
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                      WHERE lower(n.nspname) = lower($1) AND lower(c.relname) = lower($2) AND c.relkind IN ('r', 'p'))",
                    &[&s, &table],
                )
                .await?
                .get(0)
        }
        Condition::ColumnExists { schema: s, table, column } => {
            let s = s.as_deref().unwrap_or(schema);
            client
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM information_schema.columns
                      WHERE lower(table_schema) = lower($1) AND lower(table_name) = lower($2) AND lower(column_name) = lower($3))",
                    &[&s, &table, &column],
                )
                .await?
                .get(0)
        }
        Condition::SqlCheck { expected, sql } => {
            let rows = client.simple_query(sql).await.with_context(|| format!("sqlCheck {sql:?}"))?;
            let value = rows.iter().find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap_or("").to_string()),
                _ => None,
            });
            value.unwrap_or_default().trim() == expected.trim()
        }
    })
}

/// One DEPLOYMENT_ID per pgplane run, like Liquibase's per update: the last 10 digits of
/// the start time in milliseconds.
fn deployment_id() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
        let s = ms.to_string();
        s[s.len().saturating_sub(10)..].to_string()
    })
}

struct Row<'a> {
    cs: &'a ChangeSet,
    exectype: &'static str,
    rerun: bool,
}

/// Writes a changeset's DATABASECHANGELOG row as Liquibase 4.28 does: a re-run updates
/// the existing row (EXECTYPE RERAN), anything else inserts one.
async fn write_row(c: &Client, schema: &str, table: &str, row: Row<'_>) -> Result<(), tokio_postgres::Error> {
    use tokio_postgres::types::Type;
    let t = qualified(schema, table);
    let cs = row.cs;
    let deployment = deployment_id();
    // Under the migration lock, so max + 1 is this run's next number.
    let order = format!("(SELECT coalesce(max(ORDEREXECUTED), 0) + 1 FROM {t})");
    if row.rerun {
        let n = c
            .execute_typed(
                &format!(
                    "UPDATE {t} SET DATEEXECUTED = NOW(), ORDEREXECUTED = {order}, MD5SUM = $1, EXECTYPE = $2, DEPLOYMENT_ID = $3
                      WHERE ID = $4 AND AUTHOR = $5 AND FILENAME = $6"
                ),
                &[
                    (&cs.checksum, Type::VARCHAR),
                    (&row.exectype, Type::VARCHAR),
                    (&deployment, Type::VARCHAR),
                    (&cs.id, Type::VARCHAR),
                    (&cs.author, Type::VARCHAR),
                    (&cs.filename, Type::VARCHAR),
                ],
            )
            .await?;
        if n > 0 {
            return Ok(());
        }
    }
    let description = truncate(&cs.description(), 255);
    let comment = truncate(cs.comment.as_deref().unwrap_or(""), 255);
    let tool = truncate(TOOL, 20);
    c.execute_typed(
        &format!(
            "INSERT INTO {t} (ID, AUTHOR, FILENAME, DATEEXECUTED, ORDEREXECUTED, MD5SUM, DESCRIPTION, COMMENTS, EXECTYPE,
                              CONTEXTS, LABELS, LIQUIBASE, DEPLOYMENT_ID, TAG)
             VALUES ($1, $2, $3, NOW(), {order}, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
        ),
        &[
            (&cs.id, Type::VARCHAR),
            (&cs.author, Type::VARCHAR),
            (&cs.filename, Type::VARCHAR),
            (&cs.checksum, Type::VARCHAR),
            (&description, Type::VARCHAR),
            (&comment, Type::VARCHAR),
            (&row.exectype, Type::VARCHAR),
            (&cs.contexts_column(), Type::VARCHAR),
            (&cs.labels_column(), Type::VARCHAR),
            (&tool, Type::VARCHAR),
            (&deployment, Type::VARCHAR),
            (&cs.tag(), Type::VARCHAR),
        ],
    )
    .await?;
    Ok(())
}

/// Fills MD5SUM where it is NULL (after `liquibase clear-checksums`), as Liquibase's update does.
pub async fn fill_checksums(
    client: &Client,
    src: &LiquibaseSource,
    schema: &str,
    table: &str,
    units: &[&Unit],
) -> Result<()> {
    let t = qualified(schema, table);
    for unit in units {
        let cs = src.changeset(unit)?;
        client
            .execute(
                &format!(
                    "UPDATE {t} SET MD5SUM = $1 WHERE ID = $2 AND AUTHOR = $3 AND FILENAME = $4 AND MD5SUM IS NULL"
                ),
                &[&cs.checksum, &cs.id, &cs.author, &cs.filename],
            )
            .await
            .with_context(|| format!("filling in the checksum of {}::{}::{}", cs.filename, cs.id, cs.author))?;
    }
    Ok(())
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max - 3).collect();
    out.push_str("...");
    out
}

/// Records a failed changeset next to Liquibase's tables (Liquibase's ledger only holds
/// what ran). `in_transaction`: nothing of it stayed.
async fn record_failure(client: &Client, schema: &str, cs: &ChangeSet, f: &Failure) -> Result<()> {
    let t = qualified(schema, FAILURES_TABLE);
    client
        .batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {t} (filename text NOT NULL, id text NOT NULL, author text NOT NULL,
                md5sum text, failed_at timestamptz NOT NULL DEFAULT now(), in_transaction boolean NOT NULL,
                error text NOT NULL, PRIMARY KEY (filename, id, author))"
        ))
        .await?;
    client
        .execute(
            &format!(
                "INSERT INTO {t} (filename, id, author, md5sum, in_transaction, error) VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (filename, id, author) DO UPDATE
                 SET md5sum = excluded.md5sum, failed_at = now(), in_transaction = excluded.in_transaction, error = excluded.error"
            ),
            &[&cs.filename, &cs.id, &cs.author, &cs.checksum, &f.in_transaction, &f.to_string()],
        )
        .await?;
    Ok(())
}

/// Forgets a recorded failure; call only for a changeset the plan retries (its failure
/// row, hence the table, exists).
async fn clear_failure(c: &Client, schema: &str, cs: &ChangeSet) -> Result<(), tokio_postgres::Error> {
    c.execute(
        &format!("DELETE FROM {} WHERE filename = $1 AND id = $2 AND author = $3", qualified(schema, FAILURES_TABLE)),
        &[&cs.filename, &cs.id, &cs.author],
    )
    .await?;
    Ok(())
}

/// Runs the statements, then the ledger row; `Err((statement index, error))`, where the
/// index is `None` for an error after the statements (the row, the commit). In a
/// transaction everything up to the row is sent at once (pipelined): an error aborts the
/// transaction, so nothing after it can commit. Outside one, statement by statement.
async fn run_statements(
    c: &Client,
    begin: &super::Begin,
    statements: &[liquibase::Statement],
    schema: &str,
    table: &str,
    row: Row<'_>,
    had_failure: bool,
) -> Result<(), (Option<usize>, tokio_postgres::Error)> {
    use futures_util::TryFutureExt;
    let cs = row.cs;
    if cs.run_in_transaction {
        let begin = begin.transaction();
        let result = async {
            futures_util::future::try_join3(
                c.batch_execute(&begin).map_err(|e| (None, e)),
                futures_util::future::try_join_all(
                    statements.iter().enumerate().map(|(i, s)| c.batch_execute(&s.sql).map_err(move |e| (Some(i), e))),
                ),
                write_row(c, schema, table, row).map_err(|e| (None, e)),
            )
            .await?;
            if had_failure {
                clear_failure(c, schema, cs).await.map_err(|e| (None, e))?;
            }
            c.batch_execute("COMMIT").await.map_err(|e| (None, e))
        }
        .await;
        if result.is_err() {
            // Leaves no transaction open, whichever step failed (none is left after a failed COMMIT).
            let _ = c.batch_execute("ROLLBACK").await;
        }
        result
    } else {
        c.batch_execute(&begin.setup).await.map_err(|e| (None, e))?;
        for (i, s) in statements.iter().enumerate() {
            c.batch_execute(&s.sql).await.map_err(|e| (Some(i), e))?;
        }
        write_row(c, schema, table, row).await.map_err(|e| (None, e))?;
        if had_failure {
            clear_failure(c, schema, cs).await.map_err(|e| (None, e))?;
        }
        Ok(())
    }
}

/// Runs one changeset: preconditions, its statements and its ledger row.
pub async fn run_unit(
    client: &mut Client,
    src: &LiquibaseSource,
    t: &Target,
    table: &str,
    step: &Step,
    unit: &Unit,
    begin: &super::Begin,
) -> Result<Outcome> {
    let cs = src.changeset(unit)?;
    let had_failure = step.state == State::Retry;
    let schema = t.schema.as_str();
    let rerun = matches!(step.state, State::Changed | State::Always);
    let ran = if rerun { "reran" } else { "applied" };
    let exectype = if rerun { "RERAN" } else { "EXECUTED" };
    let here = format!("{}:{}", cs.location.file, cs.location.line);
    if let Some(pre) = &cs.preconditions {
        let verdict = holds(client, schema, &pre.condition).await;
        let (handling, what) = match &verdict {
            Ok(true) => (None, String::new()),
            Ok(false) => {
                (Some(pre.on_fail), pre.on_fail_message.clone().unwrap_or_else(|| "precondition failed".into()))
            }
            Err(e) => (Some(pre.on_error), format!("precondition error: {e:#}")),
        };
        match handling {
            None => {}
            Some(OnFail::Warn) => tracing::warn!(changeset = %unit.name, "{what}; running it anyway (WARN)"),
            Some(OnFail::MarkRan) => {
                // Like Liquibase: MARK_RAN always adds a row, even for a re-run.
                let tx = client.transaction().await?;
                write_row(tx.client(), schema, table, Row { cs, exectype: "MARK_RAN", rerun: false }).await?;
                if had_failure {
                    clear_failure(tx.client(), schema, cs).await?;
                }
                tx.commit().await?;
                return Ok(Outcome::Ran("mark-ran"));
            }
            Some(OnFail::Continue) => return Ok(Outcome::Skipped(format!("{what}; it runs again next time"))),
            Some(OnFail::Halt) => {
                let f = Failure {
                    migration: unit.name.clone(),
                    message: what,
                    sqlstate: None,
                    position: Some(here),
                    statement: None,
                    // Nothing ran.
                    in_transaction: true,
                };
                record_failure(client, schema, cs, &f)
                    .await
                    .with_context(|| format!("{f}; recording it failed too"))?;
                return Ok(Outcome::Failed(f));
            }
        }
    }
    let statements = cs.sql(Some(schema));
    let row = Row { cs, exectype, rerun };
    let result = run_statements(client, begin, &statements, schema, table, row, had_failure).await;
    let Err((index, e)) = result else {
        return Ok(Outcome::Ran(ran));
    };
    let mut f = failure_of(&unit.name, &e, None);
    f.in_transaction = cs.run_in_transaction;
    let detail = match index {
        Some(i) => format!("statement {} of the changeset", i + 1),
        None => "writing its ledger row or committing".to_string(),
    };
    f.position =
        Some(format!("{here} ({detail}{})", f.position.as_deref().map(|p| format!(", {p}")).unwrap_or_default()));
    f.statement = index.map(|i| truncate(&super::ledger::redact(&statements[i].sql), 300));
    record_failure(client, schema, cs, &f).await.with_context(|| format!("{f}; recording it failed too"))?;
    if !cs.fail_on_error {
        // failOnError: false — Liquibase writes no row and goes on; the changeset runs
        // again on the next update. pgplane does the same and keeps the failure on record.
        tracing::warn!(changeset = %unit.name, "{f}; failOnError is false, going on");
        return Ok(Outcome::Skipped(format!("{f}; failOnError is false, it runs again next time")));
    }
    Ok(Outcome::Failed(f))
}
