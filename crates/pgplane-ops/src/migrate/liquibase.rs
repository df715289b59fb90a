//! Liquibase changelogs against Liquibase's own ledger: `databasechangelog` and
//! `databasechangeloglock` in the target schema, in Liquibase 4.x's layout, so a database
//! migrated by real Liquibase is continued by pgplane and the other way round.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use pgplane_core::ident::quote_ident;
use pgplane_core::liquibase::{
    self, Action, ChangeSet, Changelog, Condition, FsLoader, LoadOptions, OnFail, Preconditions, TargetInfo,
};
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

/// What a Liquibase run needs beyond contexts and labels.
#[derive(Debug, Clone, Default)]
pub struct LiquibaseOptions {
    /// Changelog properties set before the changelog is read (`--property`, the manifest's
    /// `migrations.properties`); the first definition of a name wins.
    pub properties: Vec<(String, String)>,
    /// Lets `executeCommand` changes run their program.
    pub allow_execute_command: bool,
}

#[derive(Debug)]
pub struct LiquibaseSource {
    /// The root changelog as given.
    pub file: PathBuf,
    /// The changelog read with no target (for checks before anything runs and for
    /// descriptions); each target reads it again with its own `database.*` properties.
    pub changelog: Changelog,
    search_path: PathBuf,
    /// The folder every file read must stay inside (canonical).
    root: PathBuf,
    name: String,
    /// Where the module version it was loaded for ends (see [`super::Source::cut`]).
    pub end: Option<pgplane_core::migrate::UpTo>,
    /// Per target (database, schema): the changelog as read for it, and the run's options.
    resolved: std::sync::Mutex<std::collections::HashMap<(String, String), Resolved>>,
}

#[derive(Debug, Clone)]
struct Resolved {
    changelog: Arc<Changelog>,
    allow_execute_command: bool,
}

/// Whether `path` is a Liquibase changelog (by extension, or a formatted SQL header).
pub fn is_changelog(path: &Path, root: &Path) -> Result<bool> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    Ok(match ext.as_str() {
        "yaml" | "yml" | "xml" | "json" => true,
        "sql" => {
            let text = pgplane_core::confine::read_to_string(path, root)
                .with_context(|| format!("reading {}", path.display()))?;
            let first = text.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("");
            first.to_ascii_lowercase().replace(' ', "").starts_with("--liquibaseformattedsql")
        }
        _ => false,
    })
}

/// The process environment a changelog's `${NAME}` may read: none. Liquibase offers its
/// process environment as changelog properties; pgplane's holds its own secrets (a token, a
/// password file's path) and changelog authors are not trusted with them, so values come
/// only from `--property`, the manifest's `migrations.properties` and the changelog itself.
fn environment() -> Vec<(String, String)> {
    Vec::new()
}

/// Loads a changelog; it and every file it includes must lie inside `root` (canonical).
/// `search_path` is Liquibase's search path (`--search-path`, `migrations.search_path`;
/// default: the changelog's folder).
pub fn load(path: &Path, root: &Path, search_path: Option<&Path>) -> Result<LiquibaseSource> {
    let (search_path, name) = match search_path {
        None => {
            let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
            let name = path.file_name().and_then(|n| n.to_str()).context("the changelog path has no file name")?;
            (dir, name.to_string())
        }
        Some(root) => {
            let rel = path.strip_prefix(root).with_context(|| {
                format!(
                    "the changelog {} is not under the search path {}; give a changelog inside it",
                    path.display(),
                    root.display()
                )
            })?;
            let name = rel.to_str().context("the changelog path is not UTF-8")?.replace('\\', "/");
            (root.to_path_buf(), name)
        }
    };
    // The run's contexts and labels come with each target: what a changeset cannot run is
    // an error only when a target's run selects it (`resolve`, `check_refusals`).
    let opts = LoadOptions { environment: environment(), defer_change_errors: true, ..LoadOptions::default() };
    let changelog = parse(&search_path, root, &name, &opts)?;
    for w in &changelog.warnings {
        tracing::warn!("{w}");
    }
    Ok(LiquibaseSource {
        file: path.to_path_buf(),
        changelog,
        search_path,
        root: root.to_path_buf(),
        name,
        end: None,
        resolved: std::sync::Mutex::new(std::collections::HashMap::new()),
    })
}

fn parse(search_path: &Path, root: &Path, name: &str, opts: &LoadOptions) -> Result<Changelog> {
    let loader = FsLoader { root: search_path.to_path_buf(), allowed: Some(root.to_path_buf()) };
    liquibase::load_with(name, &loader, opts).map_err(|e| {
        // Errors name files relative to the search path; show them from the working folder.
        let line = e.line.map(|l| format!(":{l}")).unwrap_or_default();
        anyhow::anyhow!("{}{line}: {}", search_path.join(&e.file).display(), e.message)
    })
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
    /// Reads the changelog for target `t` (its `database.*` properties, the run's
    /// contexts, labels and properties) and remembers it for the run.
    pub async fn resolve(
        &self,
        client: &Client,
        t: &Target,
        selection: &Selection,
        ledger: &super::LedgerNames,
        lb: &LiquibaseOptions,
    ) -> Result<Arc<Changelog>> {
        let version: String = client
            .query_one("SELECT current_setting('server_version')", &[])
            .await
            .context("reading the server version")?
            .get(0);
        let opts = LoadOptions {
            contexts: selection.contexts.clone(),
            labels: selection.labels.clone(),
            properties: lb.properties.clone(),
            environment: environment(),
            target: TargetInfo {
                database: t.database.clone(),
                schema: t.schema.clone(),
                server_version: version,
                changelog_table: ledger.changelog_table.clone().unwrap_or_else(|| DEFAULT_CHANGELOG_TABLE.into()),
                lock_table: ledger.lock_table(),
            },
            defer_change_errors: false,
        };
        let changelog = Arc::new(parse(&self.search_path, &self.root, &self.name, &opts)?);
        let mut map = self.resolved.lock().map_err(|_| anyhow::anyhow!("changelog cache poisoned"))?;
        map.insert(
            (t.database.clone(), t.schema.clone()),
            Resolved { changelog: changelog.clone(), allow_execute_command: lb.allow_execute_command },
        );
        Ok(changelog)
    }

    fn resolved(&self, t: &Target) -> Result<Resolved> {
        let map = self.resolved.lock().map_err(|_| anyhow::anyhow!("changelog cache poisoned"))?;
        Ok(map
            .get(&(t.database.clone(), t.schema.clone()))
            .cloned()
            .unwrap_or_else(|| Resolved { changelog: Arc::new(self.changelog.clone()), allow_execute_command: false }))
    }

    /// See [`super::Source::check_selected`].
    pub fn check_selected(&self, selection: &Selection) -> Result<()> {
        for cs in &self.changelog.changesets {
            if let Some(why) = &cs.unrunnable {
                if cs.applies_to_postgresql() && cs.selected(&selection.contexts, selection.labels.as_deref()) {
                    bail!("{}", self.search_path.join(why).display());
                }
            }
        }
        Ok(())
    }

    pub fn units(&self, selection: &Selection) -> Vec<Unit> {
        units_of(&self.changelog, selection)
    }

    /// `file:line` of a changelog location as seen from the working folder (changelog paths
    /// are relative to the search path).
    pub fn shown(&self, loc: &liquibase::Location) -> String {
        format!("{}:{}", self.search_path.join(&loc.file).display(), loc.line)
    }

    pub fn describe(&self) -> String {
        format!("Liquibase changelog {} ({} changesets)", self.file.display(), self.changelog.changesets.len())
    }
}

pub fn units_of(changelog: &Changelog, selection: &Selection) -> Vec<Unit> {
    changelog
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

/// The changeset of `unit` in `changelog`.
pub fn changeset<'a>(changelog: &'a Changelog, unit: &Unit) -> Result<&'a ChangeSet> {
    changelog
        .changesets
        .iter()
        .find(|cs| key(&cs.filename, &cs.id, &cs.author) == unit.key)
        .context("unit without changeset")
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
/// Names compare without case, as Liquibase's snapshot does on PostgreSQL.
async fn holds(client: &Client, schema: &str, ledger: &str, c: &Condition) -> Result<bool> {
    let one = |sql: &'static str| sql;
    let exists = |sql: &'static str, params: Vec<Option<String>>| async move {
        let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
            params.iter().map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync)).collect();
        let row = client.query_one(sql, &refs).await?;
        Ok::<bool, anyhow::Error>(row.get(0))
    };
    let sch = |s: &Option<String>| Some(s.clone().unwrap_or_else(|| schema.to_string()));
    Ok(match c {
        Condition::All(list) => {
            for c in list {
                if !Box::pin(holds(client, schema, ledger, c)).await? {
                    return Ok(false);
                }
            }
            true
        }
        Condition::Any(list) => {
            for c in list {
                if Box::pin(holds(client, schema, ledger, c)).await? {
                    return Ok(true);
                }
            }
            false
        }
        Condition::Not(list) => {
            for c in list {
                if Box::pin(holds(client, schema, ledger, c)).await? {
                    return Ok(false);
                }
            }
            true
        }
        Condition::Constant(b) => *b,
        Condition::TableExists { schema: s, table } => {
            exists(
                one("SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                      WHERE lower(n.nspname) = lower($1) AND lower(c.relname) = lower($2) AND c.relkind IN ('r', 'p', 'f'))"),
                vec![sch(s), Some(table.clone())],
            )
            .await?
        }
        Condition::ViewExists { schema: s, view } => {
            exists(
                one("SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                      WHERE lower(n.nspname) = lower($1) AND lower(c.relname) = lower($2) AND c.relkind IN ('v', 'm'))"),
                vec![sch(s), Some(view.clone())],
            )
            .await?
        }
        Condition::SequenceExists { schema: s, sequence } => {
            exists(
                one("SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                      WHERE lower(n.nspname) = lower($1) AND lower(c.relname) = lower($2) AND c.relkind = 'S')"),
                vec![sch(s), Some(sequence.clone())],
            )
            .await?
        }
        Condition::ColumnExists { schema: s, table, column } => {
            exists(
                one("SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
                      JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                      WHERE lower(n.nspname) = lower($1) AND lower(c.relname) = lower($2) AND lower(a.attname) = lower($3)
                        AND a.attnum > 0 AND NOT a.attisdropped)"),
                vec![sch(s), Some(table.clone()), Some(column.clone())],
            )
            .await?
        }
        Condition::IndexExists { schema: s, table, index, columns } => {
            let rows = client
                .query(
                    "SELECT ic.relname, tc.relname,
                            ARRAY(SELECT lower(a.attname) FROM unnest(i.indkey) WITH ORDINALITY k(attnum, ord)
                                    JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                                   ORDER BY k.ord)
                       FROM pg_catalog.pg_index i
                       JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
                       JOIN pg_catalog.pg_class tc ON tc.oid = i.indrelid
                       JOIN pg_catalog.pg_namespace n ON n.oid = tc.relnamespace
                      WHERE lower(n.nspname) = lower($1)",
                    &[&sch(s)],
                )
                .await?;
            let want: Vec<String> = columns.iter().map(|c| c.to_lowercase()).collect();
            rows.iter().any(|r| {
                let (iname, tname, cols): (String, String, Vec<String>) = (r.get(0), r.get(1), r.get(2));
                index.as_ref().is_none_or(|x| x.eq_ignore_ascii_case(&iname))
                    && table.as_ref().is_none_or(|x| x.eq_ignore_ascii_case(&tname))
                    && (want.is_empty() || want == cols)
            })
        }
        Condition::PrimaryKeyExists { schema: s, table, name } => {
            exists(
                one("SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint k JOIN pg_catalog.pg_class c ON c.oid = k.conrelid
                      JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                      WHERE k.contype = 'p' AND lower(n.nspname) = lower($1)
                        AND ($2::text IS NULL OR lower(c.relname) = lower($2))
                        AND ($3::text IS NULL OR lower(k.conname) = lower($3)))"),
                vec![sch(s), table.clone(), name.clone()],
            )
            .await?
        }
        Condition::ForeignKeyExists { schema: s, table, name } => {
            exists(
                one("SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint k JOIN pg_catalog.pg_class c ON c.oid = k.conrelid
                      JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                      WHERE k.contype = 'f' AND lower(n.nspname) = lower($1)
                        AND ($2::text IS NULL OR lower(c.relname) = lower($2))
                        AND lower(k.conname) = lower($3))"),
                vec![sch(s), table.clone(), Some(name.clone())],
            )
            .await?
        }
        Condition::UniqueConstraintExists { schema: s, table, name, columns } => {
            let rows = client
                .query(
                    "SELECT k.conname,
                            ARRAY(SELECT lower(a.attname) FROM unnest(k.conkey) WITH ORDINALITY u(attnum, ord)
                                    JOIN pg_catalog.pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = u.attnum
                                   ORDER BY u.ord)
                       FROM pg_catalog.pg_constraint k JOIN pg_catalog.pg_class c ON c.oid = k.conrelid
                       JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                      WHERE k.contype = 'u' AND lower(n.nspname) = lower($1) AND lower(c.relname) = lower($2)",
                    &[&sch(s), table],
                )
                .await?;
            let want: Vec<String> = columns.iter().map(|c| c.to_lowercase()).collect();
            rows.iter().any(|r| {
                let (cname, cols): (String, Vec<String>) = (r.get(0), r.get(1));
                name.as_ref().is_none_or(|x| x.eq_ignore_ascii_case(&cname)) && (want.is_empty() || want == cols)
            })
        }
        Condition::RowCount { schema: s, table, expected } => {
            let t = qualified_name(s.as_deref().unwrap_or(schema), table);
            let n: i64 = client.query_one(&format!("SELECT count(*) FROM {t}"), &[]).await?.get(0);
            n == *expected
        }
        Condition::TableIsEmpty { schema: s, table } => {
            let t = qualified_name(s.as_deref().unwrap_or(schema), table);
            let any: bool = client.query_one(&format!("SELECT EXISTS (SELECT 1 FROM {t})"), &[]).await?.get(0);
            !any
        }
        Condition::RunningAs { username } => {
            let user: String = client.query_one("SELECT session_user::text", &[]).await?.get(0);
            let user = user.split('@').next().unwrap_or("").to_string();
            user.eq_ignore_ascii_case(username)
        }
        Condition::ChangeSetExecuted { filename, id, author } => {
            if !table_exists(client, schema, ledger).await? {
                return Ok(false);
            }
            let rows = client
                .query(
                    &format!(
                        "SELECT filename FROM {} WHERE id = $1 AND author = $2 AND exectype IN ('EXECUTED', 'RERAN', 'MARK_RAN')",
                        qualified(schema, ledger)
                    ),
                    &[id, author],
                )
                .await?;
            let want = normalize(filename);
            rows.iter().any(|r| normalize(&r.get::<_, String>(0)) == want)
        }
        Condition::SqlCheck { expected, sql } => {
            let sql = sql.trim().trim_end_matches(';');
            let rows = client.simple_query(sql).await.with_context(|| format!("sqlCheck {sql:?}"))?;
            let value = rows.iter().find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).map(str::to_string)),
                _ => None,
            });
            match value {
                None | Some(None) => false,
                Some(Some(v)) => v == *expected || jdbc_text(&v) == *expected,
            }
        }
    })
}

/// The first condition of `c` that fails (described), or `None` when `c` holds.
async fn failing(client: &Client, schema: &str, ledger: &str, c: &Condition) -> Result<Option<String>> {
    if let Condition::All(list) = c {
        for c in list {
            if let Some(f) = Box::pin(failing(client, schema, ledger, c)).await? {
                return Ok(Some(f));
            }
        }
        return Ok(None);
    }
    Ok((!holds(client, schema, ledger, c).await?).then(|| c.describe()))
}

/// JDBC's `getString` on a boolean is `true`/`false`, PostgreSQL's text `t`/`f`.
fn jdbc_text(v: &str) -> String {
    match v {
        "t" => "true".into(),
        "f" => "false".into(),
        v => v.to_string(),
    }
}

/// A table name as Liquibase writes it (unquoted lower case, mixed case quoted).
fn qualified_name(schema: &str, table: &str) -> String {
    let id = |n: &str| {
        if n.chars().any(char::is_uppercase) && n.chars().any(char::is_lowercase) {
            quote_ident(n)
        } else {
            quote_ident(&n.to_lowercase())
        }
    };
    format!("{}.{}", id(schema), id(table))
}

/// Checks the changelogs' own preconditions before anything runs: a failure stops the
/// target (Liquibase fails its validation), unless they say WARN.
pub async fn check_changelog_preconditions(
    client: &Client,
    src: &LiquibaseSource,
    t: &Target,
    ledger: &str,
) -> Result<()> {
    let resolved = src.resolved(t)?;
    for pre in &resolved.changelog.preconditions {
        let verdict = failing(client, &t.schema, ledger, &pre.condition).await;
        let (option, what) = match verdict {
            Ok(None) => continue,
            Ok(Some(f)) => {
                (pre.on_fail, pre.on_fail_message.clone().unwrap_or_else(|| format!("precondition failed: {f}")))
            }
            Err(e) => {
                (pre.on_error, pre.on_error_message.clone().unwrap_or_else(|| format!("precondition error: {e:#}")))
            }
        };
        if option == OnFail::Warn {
            tracing::warn!("{}: changelog precondition: {what}; going on (WARN)", pre.location);
            continue;
        }
        bail!("{}: the changelog's precondition does not hold: {what}; nothing ran", pre.location);
    }
    Ok(())
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
    // Liquibase: StringUtil.limitSize(trimToEmpty(comments), 250).
    let comment = truncate(cs.comment.as_deref().unwrap_or("").trim(), 250);
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
    target: &Target,
    table: &str,
    units: &[&Unit],
) -> Result<()> {
    let resolved = src.resolved(target)?;
    let t = qualified(&target.schema, table);
    for unit in units {
        let cs = changeset(&resolved.changelog, unit)?;
        if cs.unrunnable.is_some() {
            continue;
        }
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

/// Java's `StringUtil.limitSize`: lengths in UTF-16 code units.
fn truncate(s: &str, max: usize) -> String {
    if s.encode_utf16().count() <= max {
        return s.to_string();
    }
    let mut out = String::new();
    let mut units = 0;
    for c in s.chars() {
        if units + c.len_utf16() > max - 3 {
            break;
        }
        units += c.len_utf16();
        out.push(c);
    }
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

/// What a `loadData` needs from the target: the table's column types (read in the
/// migration's transaction, so a table created earlier in the changeset counts) and the
/// files CLOB/BLOB values name.
struct DbCatalog {
    /// (schema, table) → (column, type name) as PostgreSQL reports them.
    columns: std::collections::HashMap<(String, String), Vec<(String, String)>>,
    search_path: PathBuf,
    root: PathBuf,
}

impl liquibase::Catalog for DbCatalog {
    fn column_type(&self, schema: Option<&str>, table: &str, column: &str) -> Option<String> {
        let fold = |n: &str| {
            if n.chars().any(char::is_uppercase) && n.chars().any(char::is_lowercase) {
                n.to_string()
            } else {
                n.to_lowercase()
            }
        };
        let cols = self.columns.get(&(fold(schema.unwrap_or("public")), fold(table)))?;
        let c = fold(column);
        cols.iter().find(|(n, _)| *n == c).map(|(_, t)| t.clone())
    }

    fn file(&self, path: &str) -> Option<Vec<u8>> {
        liquibase::Loader::read_bytes(
            &FsLoader { root: self.search_path.clone(), allowed: Some(self.root.clone()) },
            path,
        )
        .ok()
    }
}

async fn catalog_for(
    c: &Client,
    src: &LiquibaseSource,
    schema: &str,
    change: &liquibase::Change,
) -> Result<DbCatalog, tokio_postgres::Error> {
    let mut columns = std::collections::HashMap::new();
    if let liquibase::Change::LoadData(l) = change {
        let fold = |n: &str| {
            if n.chars().any(char::is_uppercase) && n.chars().any(char::is_lowercase) {
                n.to_string()
            } else {
                n.to_lowercase()
            }
        };
        let s = fold(l.table.schema.as_deref().unwrap_or(schema));
        let t = fold(&l.table.name);
        let rows = c
            .query(
                "SELECT a.attname::text, CASE WHEN a.attidentity <> '' OR pg_catalog.pg_get_expr(d.adbin, d.adrelid) LIKE 'nextval(%'
                                              THEN replace(replace(ty.typname, 'int8', 'bigserial'), 'int4', 'serial')
                                              ELSE ty.typname::text END
                   FROM pg_catalog.pg_attribute a
                   JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
                   JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                   JOIN pg_catalog.pg_type ty ON ty.oid = a.atttypid
                   LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
                  WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped",
                &[&s, &t],
            )
            .await?;
        columns.insert((s, t), rows.iter().map(|r| (r.get(0), r.get(1))).collect());
    }
    Ok(DbCatalog { columns, search_path: src.search_path.clone(), root: src.root.clone() })
}

/// A failure of one step of a changeset: a statement (by index), or something else.
enum StepError {
    Sql(Option<usize>, tokio_postgres::Error),
    Other(String),
}

/// Runs an action (`output`, `stop`, `executeCommand`).
pub(super) async fn act(a: &Action, allow_execute: bool, here: &str) -> Result<(), String> {
    match a {
        Action::Output { message, target } => {
            match target.to_ascii_uppercase().as_str() {
                "STDOUT" => println!("{message}"),
                "STDERR" => eprintln!("{message}"),
                "WARN" | "WARNING" => tracing::warn!("{message}"),
                "SEVERE" | "FATAL" | "ERROR" => tracing::error!("{message}"),
                "DEBUG" => tracing::debug!("{message}"),
                _ => tracing::info!("{message}"),
            }
            Ok(())
        }
        Action::Stop { message } => Err(format!("stopped by a stop change: {message}")),
        Action::Execute { executable, args, timeout } => {
            if !allow_execute {
                return Err(format!(
                    "executeCommand {executable} at {here} runs a program; allow it with `allow_execute_command: true` under the module's migrations in the manifest (or --allow-execute-command)"
                ));
            }
            let limit = timeout.as_deref().map(parse_timeout).transpose()?;
            let mut cmd = tokio::process::Command::new(executable);
            cmd.args(args).stdin(std::process::Stdio::null()).kill_on_drop(true);
            let run = cmd.output();
            let out = match limit {
                Some(d) => tokio::time::timeout(d, run)
                    .await
                    .map_err(|_| format!("executeCommand {executable} did not finish within {}s", d.as_secs()))?,
                None => run.await,
            }
            .map_err(|e| format!("executeCommand {executable}: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "executeCommand {executable} failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            Ok(())
        }
    }
}

/// Liquibase's `timeout` for executeCommand: `10s`, `2m`, `1h` or seconds.
fn parse_timeout(t: &str) -> Result<Duration, String> {
    let t = t.trim();
    let (n, unit) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&t[..i], c.to_ascii_lowercase()),
        _ => (t, 's'),
    };
    let n: u64 =
        n.trim().parse().map_err(|_| format!("executeCommand timeout {t:?} is not a number with s, m or h"))?;
    Ok(Duration::from_secs(match unit {
        's' => n,
        'm' => n * 60,
        'h' => n * 3600,
        _ => return Err(format!("executeCommand timeout {t:?}: use s, m or h")),
    }))
}

/// Whether a changeset needs to run change by change (it reads the catalog, or acts).
fn stepwise(cs: &ChangeSet) -> bool {
    cs.changes.iter().any(|c| {
        matches!(
            c,
            liquibase::Change::LoadData(_)
                | liquibase::Change::Output { .. }
                | liquibase::Change::Stop { .. }
                | liquibase::Change::ExecuteCommand { .. }
        )
    })
}

/// The statements of one change of `cs` (with `cs`'s modifySql).
fn change_statements(
    cs: &ChangeSet,
    i: usize,
    schema: &str,
    catalog: &dyn liquibase::Catalog,
) -> Result<Vec<liquibase::Statement>, String> {
    let mut one = cs.clone();
    one.changes = vec![cs.changes[i].clone()];
    one.descriptions.clear();
    let mut out = one.sql_with(Some(schema), catalog)?;
    for s in &mut out {
        s.change_index = i;
    }
    Ok(out)
}

/// Runs the changes one at a time (in the transaction when there is one): actions when
/// their turn comes, `loadData` after reading the table's columns.
#[allow(clippy::too_many_arguments)]
async fn run_stepwise(
    c: &Client,
    src: &LiquibaseSource,
    begin: &super::Begin,
    cs: &ChangeSet,
    schema: &str,
    table: &str,
    row: Row<'_>,
    had_failure: bool,
    allow_execute: bool,
    ran: &mut Vec<String>,
) -> Result<(), StepError> {
    use futures_util::TryFutureExt;
    let sql_err = |i: Option<usize>| move |e| StepError::Sql(i, e);
    let setup = if cs.run_in_transaction { begin.transaction() } else { begin.setup.clone() };
    c.batch_execute(&setup).await.map_err(sql_err(None))?;
    let here = format!("{}:{}", cs.location.file, cs.location.line);
    let mut n = 0;
    for i in 0..cs.changes.len() {
        let catalog = catalog_for(c, src, schema, &cs.changes[i]).await.map_err(sql_err(None))?;
        let statements = change_statements(cs, i, schema, &catalog).map_err(StepError::Other)?;
        // Statements between two actions go out at once (pipelined: a loadData's INSERTs
        // do not wait for each other's answers); the server runs them in order and the
        // first error stops the rest (in a transaction, it is aborted; outside one, the
        // statements after it are not sent).
        let mut rest = statements.as_slice();
        while !rest.is_empty() {
            if let Some(a) = &rest[0].action {
                act(a, allow_execute, &here).await.map_err(StepError::Other)?;
                rest = &rest[1..];
                continue;
            }
            let len = rest.iter().position(|s| s.action.is_some()).unwrap_or(rest.len());
            let (run, after) = rest.split_at(len);
            ran.extend(run.iter().map(|s| s.sql.clone()));
            if cs.run_in_transaction {
                let first = n;
                futures_util::future::try_join_all(
                    run.iter().enumerate().map(|(k, s)| c.batch_execute(&s.sql).map_err(move |e| (first + k, e))),
                )
                .await
                .map_err(|(k, e)| StepError::Sql(Some(k), e))?;
                n += run.len();
            } else {
                for s in run {
                    c.batch_execute(&s.sql).await.map_err(sql_err(Some(n)))?;
                    n += 1;
                }
            }
            rest = after;
        }
    }
    write_row(c, schema, table, row).await.map_err(sql_err(None))?;
    if had_failure {
        clear_failure(c, schema, cs).await.map_err(sql_err(None))?;
    }
    if cs.run_in_transaction {
        c.batch_execute("COMMIT").await.map_err(sql_err(None))?;
    }
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
            let work = futures_util::future::try_join3(
                c.batch_execute(&begin).map_err(|e| (None, e)),
                futures_util::future::try_join_all(
                    statements.iter().enumerate().map(|(i, s)| c.batch_execute(&s.sql).map_err(move |e| (Some(i), e))),
                ),
                write_row(c, schema, table, row).map_err(|e| (None, e)),
            );
            if had_failure {
                work.await?;
                clear_failure(c, schema, cs).await.map_err(|e| (None, e))?;
                return c.batch_execute("COMMIT").await.map_err(|e| (None, e));
            }
            // The COMMIT goes out with the rest: after an error the server has aborted the
            // transaction, so the COMMIT rolls it back, and the error is what is reported.
            futures_util::future::try_join(work, c.batch_execute("COMMIT").map_err(|e| (None, e))).await.map(|_| ())
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

/// Refuses, before anything runs, what the run may not do: `executeCommand` without
/// permission. `units`: the changesets this run will execute.
pub fn check_refusals(src: &LiquibaseSource, t: &Target, units: &[&Unit]) -> Result<()> {
    let resolved = src.resolved(t)?;
    for unit in units {
        let cs = changeset(&resolved.changelog, unit)?;
        if let Some(why) = &cs.unrunnable {
            bail!("{why}; nothing ran");
        }
    }
    if resolved.allow_execute_command {
        return Ok(());
    }
    for unit in units {
        let cs = changeset(&resolved.changelog, unit)?;
        if let Some(liquibase::Change::ExecuteCommand { executable, .. }) =
            cs.changes.iter().find(|c| matches!(c, liquibase::Change::ExecuteCommand { .. }))
        {
            bail!(
                "{}:{}: changeset {}::{}::{}: executeCommand runs the program {executable}; nothing ran. Allow it with \
                 `allow_execute_command: true` under the module's migrations in the manifest (or --allow-execute-command)",
                cs.location.file,
                cs.location.line,
                cs.filename,
                cs.id,
                cs.author
            );
        }
    }
    Ok(())
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
    let resolved = src.resolved(t)?;
    let cs = changeset(&resolved.changelog, unit)?;
    let had_failure = step.state == State::Retry;
    let schema = t.schema.as_str();
    let rerun = matches!(step.state, State::Changed | State::Always);
    let ran = if rerun { "reran" } else { "applied" };
    let exectype = if rerun { "RERAN" } else { "EXECUTED" };
    let here = format!("{}:{}", cs.location.file, cs.location.line);
    if let Some(pre) = &cs.preconditions {
        if let Some(outcome) = precondition_outcome(client, pre, cs, unit, schema, table, had_failure, &here).await? {
            return Ok(outcome);
        }
    }
    let row = Row { cs, exectype, rerun };
    let mut failed_statement: Option<String> = None;
    let result: Result<(), StepError> = if stepwise(cs) {
        let mut ran_sql = Vec::new();
        let r = run_stepwise(
            client,
            src,
            begin,
            cs,
            schema,
            table,
            row,
            had_failure,
            resolved.allow_execute_command,
            &mut ran_sql,
        )
        .await;
        if r.is_err() {
            if cs.run_in_transaction {
                let _ = client.batch_execute("ROLLBACK").await;
            }
            failed_statement = match &r {
                Err(StepError::Sql(Some(k), _)) => ran_sql.get(*k).cloned(),
                _ => ran_sql.last().cloned(),
            };
        }
        r
    } else {
        match cs.sql_with(Some(schema), &liquibase::NoCatalog) {
            Err(e) => Err(StepError::Other(e)),
            Ok(statements) => {
                run_statements(client, begin, &statements, schema, table, row, had_failure).await.map_err(|(i, e)| {
                    failed_statement = i.map(|i| statements[i].sql.clone());
                    StepError::Sql(i, e)
                })
            }
        }
    };
    let Err(step_error) = result else {
        return Ok(Outcome::Ran(ran));
    };
    let mut f = match &step_error {
        StepError::Sql(_, e) => failure_of(&unit.name, e, None),
        StepError::Other(m) => Failure::message(&unit.name, m.clone()),
    };
    f.in_transaction = cs.run_in_transaction;
    let detail = match &step_error {
        StepError::Sql(Some(i), _) => format!("statement {} of the changeset", i + 1),
        StepError::Sql(None, _) => "writing its ledger row or committing".to_string(),
        StepError::Other(_) => "a change of the changeset".to_string(),
    };
    f.position =
        Some(format!("{here} ({detail}{})", f.position.as_deref().map(|p| format!(", {p}")).unwrap_or_default()));
    f.statement = failed_statement.map(|s| truncate(&super::ledger::redact(&s), 300));
    record_failure(client, schema, cs, &f).await.with_context(|| format!("{f}; recording it failed too"))?;
    let stopped = matches!(&step_error, StepError::Other(m) if m.starts_with("stopped by a stop change"));
    if !cs.fail_on_error && !stopped {
        // failOnError: false — Liquibase writes no row and goes on; the changeset runs
        // again on the next update. pgplane does the same and keeps the failure on record.
        tracing::warn!(changeset = %unit.name, "{f}; failOnError is false, going on");
        return Ok(Outcome::Skipped(format!("{f}; failOnError is false, it runs again next time")));
    }
    Ok(Outcome::Failed(f))
}

/// A changeset's preconditions: `None` to run it, else what happened instead.
#[allow(clippy::too_many_arguments)]
async fn precondition_outcome(
    client: &mut Client,
    pre: &Preconditions,
    cs: &ChangeSet,
    unit: &Unit,
    schema: &str,
    table: &str,
    had_failure: bool,
    here: &str,
) -> Result<Option<Outcome>> {
    let verdict = failing(client, schema, table, &pre.condition).await;
    let (handling, what) = match &verdict {
        Ok(None) => return Ok(None),
        Ok(Some(f)) => {
            (pre.on_fail, pre.on_fail_message.clone().unwrap_or_else(|| format!("precondition failed: {f}")))
        }
        Err(e) => (pre.on_error, pre.on_error_message.clone().unwrap_or_else(|| format!("precondition error: {e:#}"))),
    };
    Ok(match handling {
        OnFail::Warn => {
            tracing::warn!(changeset = %unit.name, "{what}; running it anyway (WARN)");
            None
        }
        OnFail::MarkRan => {
            // Like Liquibase: MARK_RAN always adds a row, even for a re-run.
            let tx = client.transaction().await?;
            write_row(tx.client(), schema, table, Row { cs, exectype: "MARK_RAN", rerun: false }).await?;
            if had_failure {
                clear_failure(tx.client(), schema, cs).await?;
            }
            tx.commit().await?;
            Some(Outcome::Ran("mark-ran"))
        }
        OnFail::Continue => Some(Outcome::Skipped(format!("{what}; it runs again next time"))),
        OnFail::Halt => {
            // Nothing ran.
            let f = Failure { position: Some(here.to_string()), ..Failure::message(&unit.name, what) };
            record_failure(client, schema, cs, &f).await.with_context(|| format!("{f}; recording it failed too"))?;
            Some(Outcome::Failed(f))
        }
    })
}
