//! Ledgers and the migration lock. SQL folders keep pgplane's history table; Liquibase
//! changelogs keep Liquibase's own `databasechangelog`/`databasechangeloglock`, in
//! Liquibase's layout, so either tool continues the other's work.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use pgplane_core::ident::quote_ident;
use pgplane_core::migrate::{Applied, SqlMigration, State, Step, Unit};
use tokio_postgres::Client;

use super::{liquibase, Failure, Source, Target};

/// Ledger table names; `None` takes the default.
#[derive(Debug, Clone, Default)]
pub struct LedgerNames {
    pub history_table: Option<String>,
    pub changelog_table: Option<String>,
    pub changelog_lock_table: Option<String>,
}

pub const DEFAULT_HISTORY_TABLE: &str = "pgplane_schema_history";

impl LedgerNames {
    /// The ledger table this source writes.
    pub fn table(&self, source: &Source) -> String {
        match source {
            Source::Sql { .. } => self.history_table.clone().unwrap_or_else(|| DEFAULT_HISTORY_TABLE.into()),
            Source::Liquibase(_) => {
                self.changelog_table.clone().unwrap_or_else(|| liquibase::DEFAULT_CHANGELOG_TABLE.into())
            }
        }
    }

    pub fn lock_table(&self) -> String {
        self.changelog_lock_table.clone().unwrap_or_else(|| liquibase::DEFAULT_LOCK_TABLE.into())
    }
}

pub fn qualified(schema: &str, table: &str) -> String {
    format!("{}.{}", quote_ident(schema), quote_ident(table))
}

pub async fn table_exists(client: &impl tokio_postgres::GenericClient, schema: &str, table: &str) -> Result<bool> {
    let row = client
        .query_one("SELECT to_regclass(format('%I.%I', $1::text, $2::text)) IS NOT NULL", &[&schema, &table])
        .await?;
    Ok(row.get(0))
}

/// The latest ledger row of every migration; `None` when there is no ledger yet.
pub async fn read(client: &Client, source: &Source, schema: &str, names: &LedgerNames) -> Result<Option<Vec<Applied>>> {
    let table = names.table(source);
    if let Source::Liquibase(_) = source {
        return liquibase::read(client, schema, &table).await;
    }
    if !table_exists(client, schema, &table).await? {
        return Ok(None);
    }
    let rows = match source {
        Source::Liquibase(_) => unreachable!("read above"),
        Source::Sql { .. } => {
            let sql = format!(
                "SELECT DISTINCT ON (key) key, checksum, success, transactional,
                        to_char(installed_on, 'YYYY-MM-DD HH24:MI:SS'), execution_ms::int8, error
                   FROM (SELECT coalesce(version, 'R:' || description) AS key, * FROM {}) h
                  ORDER BY key, installed_rank DESC",
                qualified(schema, &table)
            );
            client
                .query(&sql, &[])
                .await
                .with_context(|| format!("reading the ledger {schema}.{table}"))?
                .iter()
                .map(|r| Applied {
                    key: pgplane_core::migrate::canonical_key(r.get(0)),
                    checksum: r.get(1),
                    success: r.get(2),
                    rolled_back: r.get(3),
                    applied_at: r.get(4),
                    execution_ms: r.get(5),
                    error: r.get(6),
                    tag: None,
                })
                .collect()
        }
    };
    Ok(Some(rows))
}

/// Creates the ledger if it is missing (under the migration lock).
pub async fn ensure(client: &Client, source: &Source, schema: &str, names: &LedgerNames) -> Result<()> {
    let table = names.table(source);
    if let Source::Liquibase(_) = source {
        return liquibase::ensure(client, schema, &table, &names.lock_table()).await;
    }
    if table_exists(client, schema, &table).await? {
        return Ok(());
    }
    let sql = match source {
        Source::Liquibase(_) => unreachable!("handled above"),
        Source::Sql { .. } => format!(
            "CREATE TABLE {} (
                installed_rank integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                version text,
                description text NOT NULL,
                script text NOT NULL,
                checksum text NOT NULL,
                installed_by text NOT NULL DEFAULT current_user,
                installed_on timestamptz NOT NULL DEFAULT now(),
                execution_ms integer NOT NULL,
                success boolean NOT NULL,
                transactional boolean NOT NULL,
                error text
            )",
            qualified(schema, &table)
        ),
    };
    client.batch_execute(&sql).await.with_context(|| format!("creating the ledger {schema}.{table}"))
}

/// Holds the migration lock of one target until the session ends. It is a session-level
/// advisory lock, so it is released on every path, also when the process dies.
pub struct Lock;

/// Takes the migration lock of `schema.ledger` in the target database, waiting up to
/// `timeout` for another migration to finish.
pub async fn lock(
    client: &Client,
    source: &Source,
    t: &Target,
    names: &LedgerNames,
    timeout: Duration,
) -> Result<Lock> {
    let key = format!("{}.{}", t.schema, names.table(source));
    let lock = crate::locks::Lock::named(crate::locks::MIGRATION, key.clone());
    let started = Instant::now();
    let mut told = false;
    loop {
        if lock.try_lock(client).await? {
            return Ok(Lock);
        }
        let holder: Option<i32> = lock.holder(client).await?;
        if started.elapsed() >= timeout {
            bail!(
                "another migration of {}.{key} is running (session pid {}) and did not finish within {}s; \
                 wait for it or raise --lock-timeout",
                t.database,
                holder.map(|p| p.to_string()).unwrap_or_else(|| "?".into()),
                timeout.as_secs()
            );
        }
        if !told && started.elapsed() > Duration::from_millis(500) {
            tracing::warn!(database = %t.database, ledger = %key, pid = holder, "waiting for another migration of this target");
            told = true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub enum Outcome {
    /// Ran; the word for people: applied, reapplied.
    Ran(&'static str),
    Skipped(String),
    Failed(Failure),
}

/// Runs one migration with its ledger row.
pub async fn run_unit(
    client: &mut Client,
    source: &Source,
    t: &Target,
    names: &LedgerNames,
    step: &Step,
    unit: &Unit,
    begin: &super::Begin,
) -> Result<Outcome> {
    let how = match step.state {
        State::Pending | State::Retry => "applied",
        _ => "reapplied",
    };
    match source {
        Source::Liquibase(l) => liquibase::run_unit(client, l, t, &names.table(source), step, unit, begin).await,
        Source::Sql { migrations, folder, .. } => {
            let m = migrations.iter().find(|m| m.key() == unit.key).context("unit without migration")?;
            let table = qualified(&t.schema, &names.table(source));
            let started = Instant::now();
            // Every error until the commit, the commit's included, is the migration's failure.
            let result: Result<(), (tokio_postgres::Error, usize)> = if m.transactional {
                // BEGIN, the script and the ledger row are sent at once (pipelined); an
                // error in the script aborts the transaction, so the row cannot commit.
                let c: &Client = client;
                let run = futures_util::future::try_join3(
                    c.batch_execute(&begin.transaction()),
                    c.batch_execute(&m.sql),
                    insert_sql_row(c, &table, m, None, None),
                )
                .await;
                let result = match run {
                    Ok(_) => c.batch_execute("COMMIT").await.map_err(|e| (e, 0)),
                    Err(e) => Err((e, 0)),
                };
                if result.is_err() {
                    let _ = c.batch_execute("ROLLBACK").await;
                }
                result
            } else {
                async {
                    client.batch_execute(&begin.setup).await.map_err(|e| (e, 0))?;
                    // Position of each statement in the file, to map error positions to lines.
                    let mut offset = 0;
                    for stmt in super::split(&m.sql) {
                        let at = m.sql[offset..].find(stmt.as_str()).map(|i| offset + i).unwrap_or(offset);
                        offset = at + stmt.len();
                        let chars_before = m.sql[..at].chars().count();
                        client.batch_execute(&stmt).await.map_err(|e| (e, chars_before))?;
                    }
                    insert_sql_row(&*client, &table, m, Some(started), None).await.map_err(|e| (e, 0))
                }
                .await
            };
            match result {
                Ok(()) => Ok(Outcome::Ran(how)),
                Err((e, chars_before)) => {
                    let file = format!("{}/{}", folder.display(), m.script);
                    let mut failure = failure_of(&m.script, &e, Some((&file, &m.sql, chars_before)));
                    failure.in_transaction = m.transactional;
                    insert_sql_row(&*client, &table, m, Some(started), Some(&failure.to_string()))
                        .await
                        .with_context(|| format!("{failure}; recording this failure in the ledger failed too"))?;
                    Ok(Outcome::Failed(failure))
                }
            }
        }
    }
}

/// `started: None` inside the migration's transaction: the server measures from BEGIN.
async fn insert_sql_row(
    c: &Client,
    table: &str,
    m: &SqlMigration,
    started: Option<Instant>,
    error: Option<&str>,
) -> Result<(), tokio_postgres::Error> {
    use tokio_postgres::types::Type;
    let ms = started.map(|s| s.elapsed().as_millis().min(i32::MAX as u128) as i32);
    let version = m.version.as_ref().map(ToString::to_string);
    // execute_typed: parse, bind and execute in one round trip.
    c.execute_typed(
        &format!(
            "INSERT INTO {table} (version, description, script, checksum, execution_ms, success, transactional, error)
             VALUES ($1, $2, $3, $4, coalesce($5, (extract(epoch FROM clock_timestamp() - now()) * 1000)::int),
                     $6, $7, $8)"
        ),
        &[
            (&version, Type::TEXT),
            (&m.description, Type::TEXT),
            (&m.script, Type::TEXT),
            (&m.checksum, Type::TEXT),
            (&ms, Type::INT4),
            (&error.is_none(), Type::BOOL),
            (&m.transactional, Type::BOOL),
            (&error, Type::TEXT),
        ],
    )
    .await?;
    Ok(())
}

/// PostgreSQL's error with its position: a line of `text` (named `file`) when the
/// statement started `chars_before` characters into it.
pub fn failure_of(migration: &str, e: &tokio_postgres::Error, whole: Option<(&str, &str, usize)>) -> Failure {
    let Some(db) = e.as_db_error() else {
        return Failure {
            position: whole.map(|(file, _, _)| file.to_string()),
            ..Failure::message(migration, e.to_string())
        };
    };
    let mut message = db.message().to_string();
    if let Some(d) = db.detail() {
        message.push_str(&format!(" ({d})"));
    }
    let position = match (db.position(), whole) {
        (Some(tokio_postgres::error::ErrorPosition::Original(p)), Some((file, text, chars_before))) => {
            let before: String = text.chars().take(chars_before + (*p as usize).saturating_sub(1)).collect();
            let line = before.matches('\n').count() + 1;
            Some(format!("{file}:{line}"))
        }
        (Some(tokio_postgres::error::ErrorPosition::Original(p)), None) => Some(format!("character {p}")),
        _ => whole.map(|(file, _, _)| file.to_string()),
    };
    Failure {
        migration: migration.to_string(),
        message,
        sqlstate: Some(db.code().code().to_string()),
        position,
        statement: None,
        in_transaction: true,
    }
}

/// Hides string literals that follow PASSWORD in a statement shown to people.
pub fn redact(sql: &str) -> String {
    let lower = sql.to_ascii_lowercase();
    let mut out = String::with_capacity(sql.len());
    let mut i = 0;
    while let Some(found) = lower[i..].find("password") {
        let after = i + found + "password".len();
        let rest = &sql[after..];
        let skipped = rest.len() - rest.trim_start().len();
        let quote_at = after + skipped;
        out.push_str(&sql[i..after]);
        if sql[quote_at..].starts_with('\'') {
            // Skip to the closing quote ('' is an escaped quote inside).
            let mut j = quote_at + 1;
            let bytes = sql.as_bytes();
            while j < bytes.len() {
                if bytes[j] == b'\'' {
                    if bytes.get(j + 1) == Some(&b'\'') {
                        j += 2;
                        continue;
                    }
                    break;
                }
                j += 1;
            }
            out.push_str(&sql[after..quote_at]);
            out.push_str("'********'");
            i = (j + 1).min(sql.len());
        } else {
            i = after;
        }
    }
    out.push_str(&sql[i..]);
    out
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_in_statements_are_hidden() {
        assert_eq!(
            redact("ALTER ROLE app PASSWORD 'it''s secret' VALID UNTIL 'x'"),
            "ALTER ROLE app PASSWORD '********' VALID UNTIL 'x'"
        );
        assert_eq!(redact("create role a password  'p';"), "create role a password  '********';");
        assert_eq!(redact("SELECT password FROM users"), "SELECT password FROM users");
    }
}
