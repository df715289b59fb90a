//! Migrations, the pure part: reading a folder of SQL files into ordered migrations, and
//! the migration planner that compares a source with a target's ledger.
//!
//! A source (a SQL folder or a Liquibase changelog) is reduced to [`Unit`]s; a ledger (the
//! pgplane history table or Liquibase's `databasechangelog`) to [`Applied`] rows. [`plan`]
//! decides, for each unit, whether it is up to date, runs, re-runs or is filtered out, and
//! lists the problems that forbid running anything (a changed migration, a failure that
//! left the target in an unknown state, a version older than one already applied).

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;
use sha2::{Digest, Sha256};

/// One migration of a SQL folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlMigration {
    /// The file name, e.g. `V1_2__create_users.sql`.
    pub script: String,
    /// `None` for a repeatable (`R__…`) migration.
    pub version: Option<Version>,
    /// From the file name: `create users`.
    pub description: String,
    pub sql: String,
    /// `sha256:<hex>` of the text with line endings normalised to `\n`.
    pub checksum: String,
    /// False when the file's first line is `-- pgplane: no-transaction`: each statement then
    /// runs on its own (for `CREATE INDEX CONCURRENTLY` and friends).
    pub transactional: bool,
}

impl SqlMigration {
    /// The ledger identity: the version, or `R:<description>` for a repeatable.
    pub fn key(&self) -> String {
        match &self.version {
            Some(v) => v.canonical(),
            None => format!("R:{}", self.description),
        }
    }
}

/// The ledger key of a stored SQL-ledger row: a version written as `1.0` is the same
/// migration as `1`.
pub fn canonical_key(stored: &str) -> String {
    if stored.starts_with("R:") {
        return stored.to_string();
    }
    match stored.split('.').map(str::parse::<u64>).collect::<Result<Vec<_>, _>>() {
        Ok(parts) => Version(parts).canonical(),
        Err(_) => stored.to_string(),
    }
}

/// A dotted version (`1.2.10`), compared part by part as numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version(pub Vec<u64>);

impl Version {
    /// A version as written in a file name or on the command line: `2`, `1.2`, `1_2`.
    pub fn parse(s: &str) -> Result<Version, String> {
        let parts: Result<Vec<u64>, _> = s.split(['.', '_']).map(str::parse::<u64>).collect();
        match parts {
            Ok(p) if !s.is_empty() => Ok(Version(p)),
            _ => Err(format!("version {s:?} is not dotted numbers like 1, 2.1 or 2_1")),
        }
    }

    /// Without trailing zero parts: `1.0` → `1`, `2.1.0` → `2.1`.
    pub fn canonical(&self) -> String {
        let mut parts = self.0.clone();
        while parts.len() > 1 && parts.last() == Some(&0) {
            parts.pop();
        }
        Version(parts).to_string()
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        let len = self.0.len().max(other.0.len());
        (0..len)
            .map(|i| self.0.get(i).copied().unwrap_or(0).cmp(&other.0.get(i).copied().unwrap_or(0)))
            .find(|o| o.is_ne())
            .unwrap_or(Ordering::Equal)
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(u64::to_string).collect();
        f.write_str(&parts.join("."))
    }
}

/// A source that cannot be read as a migration source; names the file and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}{}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct SourceError {
    pub file: String,
    pub line: Option<usize>,
    pub message: String,
}

/// The directive that makes a SQL file run outside a transaction.
pub const NO_TRANSACTION: &str = "-- pgplane: no-transaction";

/// Reads a SQL folder's files (name, text) into migrations: versioned ones in version
/// order, then repeatable ones by description. Every file must follow the naming scheme;
/// files starting with `.` are ignored.
pub fn sql_folder(folder: &str, files: Vec<(String, String)>) -> Result<Vec<SqlMigration>, SourceError> {
    let mut versioned: BTreeMap<Vec<u64>, SqlMigration> = BTreeMap::new();
    let mut repeatable: BTreeMap<String, SqlMigration> = BTreeMap::new();
    for (name, text) in files {
        if name.starts_with('.') {
            continue;
        }
        let file = format!("{folder}/{name}");
        let m = parse_file(&name, &text).map_err(|message| SourceError { file: file.clone(), line: None, message })?;
        match &m.version {
            Some(v) => {
                // 1.0 and 1 are the same version: compare without trailing zeros.
                let mut k = v.0.clone();
                while k.len() > 1 && k.last() == Some(&0) {
                    k.pop();
                }
                if let Some(other) = versioned.get(&k) {
                    return Err(SourceError {
                        file,
                        line: None,
                        message: format!(
                            "version {v} is also used by {}; give one of them a new version",
                            other.script
                        ),
                    });
                }
                versioned.insert(k, m);
            }
            None => {
                if let Some(other) = repeatable.get(&m.description) {
                    return Err(SourceError {
                        file,
                        line: None,
                        message: format!(
                            "repeatable description {:?} is also used by {}; rename one of them",
                            m.description, other.script
                        ),
                    });
                }
                repeatable.insert(m.description.clone(), m);
            }
        }
    }
    let mut out: Vec<SqlMigration> = versioned.into_values().collect();
    out.sort_by(|a, b| a.version.cmp(&b.version));
    out.extend(repeatable.into_values());
    Ok(out)
}

fn parse_file(name: &str, text: &str) -> Result<SqlMigration, String> {
    let hint = "name it V<version>__<description>.sql (e.g. V1__create_users.sql, V1.2__add_index.sql) \
                or R__<description>.sql for a repeatable migration; move other files out of the folder";
    let Some(stem) = name.strip_suffix(".sql") else {
        return Err(format!("{name:?} is not a .sql file; {hint}"));
    };
    let (version, description) = if let Some(rest) = stem.strip_prefix("R__") {
        (None, rest)
    } else if let Some(rest) = stem.strip_prefix('V') {
        let Some((v, d)) = rest.split_once("__") else {
            return Err(format!("{name:?} has no `__` between version and description; {hint}"));
        };
        match Version::parse(v) {
            Ok(version) => (Some(version), d),
            Err(e) => return Err(format!("{name:?}: {e}; {hint}")),
        }
    } else {
        return Err(format!("{name:?} does not start with V or R__; {hint}"));
    };
    if description.is_empty() {
        return Err(format!("{name:?} has an empty description; {hint}"));
    }
    let normalized = text.replace("\r\n", "\n");
    let transactional = normalized.lines().next().map(str::trim) != Some(NO_TRANSACTION);
    Ok(SqlMigration {
        script: name.to_string(),
        version,
        description: description.replace('_', " "),
        checksum: checksum(&normalized),
        sql: normalized,
        transactional,
    })
}

/// `sha256:<hex>` of a text.
pub fn checksum(text: &str) -> String {
    format!("sha256:{}", crate::ident::hex(&Sha256::digest(text.as_bytes())))
}

/// A migration as the planner sees it, whatever its source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unit {
    /// Identity in the ledger: a version, `R:<description>`, or `file::id::author`.
    pub key: String,
    /// For people: `V2__add_email.sql`, `changelog.yaml::3::alice`.
    pub name: String,
    pub checksum: String,
    /// Checksums that are accepted besides `checksum` (`ANY` accepts all).
    pub valid_checksums: Vec<String>,
    /// Re-runs when its checksum changes (repeatable SQL, Liquibase runOnChange).
    pub rerun_on_change: bool,
    /// Re-runs on every `up` (Liquibase runAlways).
    pub run_always: bool,
    /// Versioned SQL migrations are ordered: a pending one older than an applied one is
    /// refused.
    pub version: Option<Version>,
    /// False when contexts/labels filter it out.
    pub selected: bool,
    /// Runs inside one transaction with its ledger row.
    pub transactional: bool,
    /// The tag a Liquibase `tagDatabase` change of it sets (`up --to-tag` stops after it).
    pub tag: Option<String>,
}

/// The latest ledger row of a migration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Applied {
    pub key: String,
    /// `None` when Liquibase left MD5SUM empty (after `clear-checksums`).
    pub checksum: Option<String>,
    pub success: bool,
    /// Whether a failed run was inside a transaction (so nothing of it stayed).
    pub rolled_back: bool,
    pub applied_at: String,
    pub execution_ms: Option<i64>,
    pub error: Option<String>,
    /// Liquibase's TAG column.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Applied with the same checksum; nothing to do.
    Applied,
    /// Not applied yet; runs.
    Pending,
    /// Applied, but repeatable/runOnChange and changed since; runs again.
    Changed,
    /// runAlways; runs again.
    Always,
    /// Failed last time inside a transaction (nothing stayed); runs again.
    Retry,
    /// Contexts/labels exclude it.
    Filtered,
    /// A problem (see [`Problem`]) blocks it.
    Blocked,
    /// Would run, but lies beyond `up --to-tag`/`--target`.
    AfterTarget,
}

impl State {
    pub fn runs(self) -> bool {
        matches!(self, State::Pending | State::Changed | State::Always | State::Retry)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Step {
    pub unit: usize,
    pub state: State,
    /// A note for people, e.g. why a checksum was accepted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Problem {
    /// An applied migration's text changed.
    Changed { name: String, applied: String, now: String },
    /// A migration failed outside a transaction: part of it may have stayed.
    FailedPartially { name: String, error: String },
    /// A pending versioned migration is older than the newest applied one.
    OutOfOrder { name: String, newest_applied: String },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Changed { name, applied, now } => write!(
                f,
                "{name} was changed after it was applied (checksum applied {applied}, now {now}); \
                 restore the applied text and put the change in a new migration \
                 (Liquibase: or mark the changeset runOnChange, or add validCheckSum: {now})"
            ),
            Problem::FailedPartially { name, error } => write!(
                f,
                "{name} failed outside a transaction, so part of it may have been applied ({error}); \
                 check the database, make the migration safe to re-run, then run `pgplane migrate up --retry-failed`"
            ),
            Problem::OutOfOrder { name, newest_applied } => write!(
                f,
                "{name} is pending but older than the applied version {newest_applied}; \
                 give it a version newer than {newest_applied}"
            ),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MigrationPlan {
    /// One step per unit, in source order.
    pub steps: Vec<Step>,
    pub problems: Vec<Problem>,
    /// Ledger keys that no unit of the source has (applied by another source or removed).
    pub unknown: Vec<String>,
    /// Applied units that lie beyond `up --to-tag`/`--target` (see [`stop_at`]).
    #[serde(skip_serializing_if = "is_zero")]
    pub applied_beyond_target: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl MigrationPlan {
    /// Migrations not applied yet (or changed, or to retry); runAlways ones are not
    /// pending: they run on every `up` but are never "missing".
    pub fn pending(&self) -> usize {
        self.steps.iter().filter(|s| s.state.runs() && s.state != State::Always).count()
    }

    pub fn to_run(&self) -> impl Iterator<Item = &Step> {
        self.steps.iter().filter(|s| s.state.runs())
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct PlanOptions {
    /// Re-run migrations that failed outside a transaction (the user checked the target).
    pub retry_failed: bool,
}

/// Whether a stored checksum matches a unit; `Some(note)` when accepted for a reason
/// other than equality.
fn accepts(unit: &Unit, stored: Option<&str>) -> Result<Option<String>, ()> {
    let Some(stored) = stored else {
        return Ok(Some("the ledger has no checksum for it; it is filled in".into()));
    };
    if stored.eq_ignore_ascii_case(&unit.checksum) {
        return Ok(None);
    }
    for v in &unit.valid_checksums {
        if v.eq_ignore_ascii_case("any") || v.eq_ignore_ascii_case(stored) {
            return Ok(Some(format!("checksum {stored} accepted by validCheckSum")));
        }
    }
    // Liquibase before 4.24 wrote version-8 checksums; Liquibase itself upgrades them
    // in place. pgplane computes version 9 only, so it keeps an older one unverified.
    if unit.checksum.starts_with("9:") && stored.split_once(':').is_some_and(|(v, _)| v != "9") {
        return Ok(Some(format!("checksum {stored} is from an older Liquibase and is not verified")));
    }
    Err(())
}

/// Compares a source with a ledger.
pub fn plan(units: &[Unit], ledger: &[Applied], opts: PlanOptions) -> MigrationPlan {
    let by_key: BTreeMap<&str, &Applied> = ledger.iter().map(|a| (a.key.as_str(), a)).collect();
    let newest_applied = units
        .iter()
        .filter(|u| by_key.get(u.key.as_str()).is_some_and(|a| a.success))
        .filter_map(|u| u.version.clone())
        .max();
    let mut out = MigrationPlan::default();
    for (i, u) in units.iter().enumerate() {
        let mut note = None;
        let state = match by_key.get(u.key.as_str()) {
            _ if !u.selected => State::Filtered,
            None => match (&u.version, &newest_applied) {
                (Some(v), Some(newest)) if v < newest => {
                    out.problems.push(Problem::OutOfOrder { name: u.name.clone(), newest_applied: newest.to_string() });
                    State::Blocked
                }
                _ => State::Pending,
            },
            Some(a) if !a.success => {
                let error = a.error.clone().unwrap_or_else(|| "no error recorded".into());
                if a.rolled_back || opts.retry_failed {
                    note = Some(format!("failed last time ({error}); running it again"));
                    State::Retry
                } else {
                    out.problems.push(Problem::FailedPartially { name: u.name.clone(), error });
                    State::Blocked
                }
            }
            Some(_) if u.run_always => State::Always,
            Some(a) => match accepts(u, a.checksum.as_deref()) {
                Ok(n) => {
                    note = n;
                    State::Applied
                }
                Err(()) if u.rerun_on_change => State::Changed,
                Err(()) => {
                    out.problems.push(Problem::Changed {
                        name: u.name.clone(),
                        applied: a.checksum.clone().unwrap_or_default(),
                        now: u.checksum.clone(),
                    });
                    State::Blocked
                }
            },
        };
        out.steps.push(Step { unit: i, state, note });
    }
    let known: std::collections::BTreeSet<&str> = units.iter().map(|u| u.key.as_str()).collect();
    out.unknown = ledger.iter().filter(|a| !known.contains(a.key.as_str())).map(|a| a.key.clone()).collect();
    out
}

/// Where `up` stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpTo {
    /// Liquibase's `update-to-tag`: up to and including the changeset that carries the tag
    /// (the one the ledger has it on, or the first with a `tagDatabase` of it).
    Tag(String),
    /// SQL folders: versioned migrations up to and including this version; repeatable
    /// ones still run.
    Version(Version),
}

impl fmt::Display for UpTo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpTo::Tag(t) => write!(f, "tag {t}"),
            UpTo::Version(v) => write!(f, "version {v}"),
        }
    }
}

/// Holds back what lies beyond `up_to`: steps after the cut that would run become
/// [`State::AfterTarget`], and `applied_beyond_target` counts applied units after it (the
/// ledger is already past the target). Fails when there is no such target.
pub fn stop_at(plan: &mut MigrationPlan, units: &[Unit], ledger: &[Applied], up_to: &UpTo) -> Result<(), String> {
    let beyond = beyond(units, ledger, up_to)?;
    let mut applied_beyond = 0;
    for step in &mut plan.steps {
        if !beyond[step.unit] {
            continue;
        }
        if step.state.runs() {
            step.state = State::AfterTarget;
        } else if step.state == State::Applied {
            applied_beyond += 1;
        }
    }
    plan.applied_beyond_target = plan.applied_beyond_target.max(applied_beyond);
    Ok(())
}

/// Which units lie beyond `up_to` (the rule [`stop_at`] applies), by index; fails when
/// there is no such target.
pub fn beyond(units: &[Unit], ledger: &[Applied], up_to: &UpTo) -> Result<Vec<bool>, String> {
    Ok(match up_to {
        UpTo::Tag(tag) => {
            // Liquibase's UpToTagChangeSetFilter: the ledger's first row with the tag (any
            // case), or a changeset's own tagDatabase (exact), among the selected ones.
            let carrier = ledger.iter().find(|a| a.tag.as_deref().is_some_and(|t| t.eq_ignore_ascii_case(tag)));
            let cut = units.iter().position(|u| {
                u.selected && (carrier.is_some_and(|a| a.key == u.key) || u.tag.as_deref() == Some(tag.as_str()))
            });
            let Some(cut) = cut else {
                let hint = match units.iter().find(|u| u.tag.as_deref() == Some(tag.as_str())) {
                    Some(u) => format!("its changeset {} is excluded by contexts, labels or dbms", u.name),
                    None => "no changeset has a tagDatabase with it and the ledger has no row tagged so".to_string(),
                };
                return Err(format!(
                    "tag {tag:?} is not in the changelog: {hint}; nothing was run (Liquibase's update-to-tag would \
                     run everything)"
                ));
            };
            (0..units.len()).map(|i| i > cut).collect()
        }
        UpTo::Version(v) => {
            if !units.iter().any(|u| u.version.as_ref().is_some_and(|x| x.cmp(v) == Ordering::Equal)) {
                let versions: Vec<String> =
                    units.iter().filter_map(|u| u.version.as_ref().map(ToString::to_string)).collect();
                return Err(format!(
                    "no migration has version {v}; the versions are: {}",
                    if versions.is_empty() { "none".to_string() } else { versions.join(", ") }
                ));
            }
            units.iter().map(|u| u.version.as_ref().is_some_and(|x| x > v)).collect()
        }
    })
}

/// A ledger row as rollback reads it (Liquibase's `RanChangeSet`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ran {
    pub key: String,
    /// DATEEXECUTED as stored, `YYYY-MM-DD HH:MM:SS.ffffff`.
    pub executed_at: String,
    pub order: i64,
    pub tag: Option<String>,
    pub description: Option<String>,
}

/// How far `migrate rollback` goes back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RollbackTo {
    /// The last N changesets.
    Count(usize),
    /// Everything after the changeset carrying the tag (Liquibase's `rollback`, tag
    /// version OLDEST).
    Tag(String),
    /// Everything applied after this instant, `YYYY-MM-DD HH:MM:SS.ffffff` (see
    /// [`parse_date`]).
    Date(String),
}

impl fmt::Display for RollbackTo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RollbackTo::Count(n) => write!(f, "the last {n}"),
            RollbackTo::Tag(t) => write!(f, "tag {t}"),
            RollbackTo::Date(d) => write!(f, "{d}"),
        }
    }
}

/// Reads `--to-date`: `YYYY-MM-DD`, optionally with a time `HH:MM[:SS[.fff]]` after a
/// space or `T`, as the timestamp text ledger rows are compared with.
pub fn parse_date(s: &str) -> Result<String, String> {
    let bad = || format!("{s:?} is not a date; write YYYY-MM-DD or YYYY-MM-DD HH:MM:SS (or with a T)");
    let s = s.trim();
    let (date, time) = match s.split_once([' ', 'T']) {
        Some((d, t)) => (d, t.trim()),
        None => (s, ""),
    };
    let num = |p: &str, len: usize, max: u32| {
        (p.len() == len && p.bytes().all(|b| b.is_ascii_digit()))
            .then(|| p.parse::<u32>().ok())
            .flatten()
            .filter(|n| *n <= max)
    };
    let d: Vec<&str> = date.split('-').collect();
    let [y, m, day] = d[..] else { return Err(bad()) };
    let (Some(y), Some(m), Some(day)) = (num(y, 4, 9999), num(m, 2, 12), num(day, 2, 31)) else { return Err(bad()) };
    if m == 0 || day == 0 {
        return Err(bad());
    }
    let (clock, frac) = match time.split_once('.') {
        Some((c, f)) if !f.is_empty() && f.len() <= 6 && f.bytes().all(|b| b.is_ascii_digit()) => (c, f),
        Some(_) => return Err(bad()),
        None => (time, ""),
    };
    let t: Vec<&str> = if clock.is_empty() { vec![] } else { clock.split(':').collect() };
    let (h, mi, sec) = match t[..] {
        [] => (0, 0, 0),
        [h, mi] => (num(h, 2, 23).ok_or_else(bad)?, num(mi, 2, 59).ok_or_else(bad)?, 0),
        [h, mi, sec] => {
            (num(h, 2, 23).ok_or_else(bad)?, num(mi, 2, 59).ok_or_else(bad)?, num(sec, 2, 59).ok_or_else(bad)?)
        }
        _ => return Err(bad()),
    };
    Ok(format!("{y:04}-{m:02}-{day:02} {h:02}:{mi:02}:{sec:02}.{frac:0<6}"))
}

/// Which changesets a rollback undoes, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RollbackPlan {
    /// Indexes into the units, in the order they are rolled back.
    pub units: Vec<usize>,
    /// Ledger rows inside the range that are not rolled back: no unit of the source has
    /// them (another changelog's), or contexts/labels/dbms exclude them. Liquibase leaves
    /// them too.
    pub skipped: Vec<String>,
}

/// Liquibase's rollback selection: the ledger in execution order (DATEEXECUTED, then
/// ORDEREXECUTED), each row mapped to its changeset, newest first; changesets that are not
/// selected (contexts, labels, dbms) are passed over, then `to` picks: the first N, those
/// after the tag (the tagged changeset itself too when it only tags, as Liquibase does), or
/// those executed after the date.
pub fn plan_rollback(units: &[Unit], ledger: &[Ran], to: &RollbackTo) -> Result<RollbackPlan, String> {
    let mut rows: Vec<&Ran> = ledger.iter().collect();
    rows.sort_by(|a, b| (a.executed_at.as_str(), a.order).cmp(&(b.executed_at.as_str(), b.order)));
    // The range of rows Tag and Date pick (Count picks from the changesets instead).
    let in_range: Option<std::collections::BTreeSet<&str>> = match to {
        RollbackTo::Count(_) => None,
        RollbackTo::Tag(tag) => {
            let is_tag = |r: &Ran| r.tag.as_deref().is_some_and(|t| t.eq_ignore_ascii_case(tag));
            let mut seen = false;
            let mut range = std::collections::BTreeSet::new();
            for r in &rows {
                if seen {
                    range.insert(r.key.as_str());
                }
                if is_tag(r) {
                    seen = true;
                    if r.description.as_deref().map(str::trim) == Some("tagDatabase") {
                        range.insert(r.key.as_str());
                    }
                }
            }
            if !seen {
                return Err(format!(
                    "tag {tag:?} is not in the ledger; `pgplane migrate status` lists what is applied"
                ));
            }
            Some(range)
        }
        RollbackTo::Date(d) => {
            Some(rows.iter().filter(|r| r.executed_at.as_str() > d.as_str()).map(|r| r.key.as_str()).collect())
        }
    };
    let mut out = RollbackPlan::default();
    let mut taken = std::collections::BTreeSet::new();
    let mut first_taken_row = None;
    for (pos, r) in rows.iter().enumerate().rev() {
        let unit = units.iter().position(|u| u.key == r.key);
        let wanted = match (&in_range, to) {
            (Some(range), _) => range.contains(r.key.as_str()),
            (None, RollbackTo::Count(n)) => out.units.len() < *n,
            (None, _) => false,
        };
        let Some(i) = unit.filter(|&i| units[i].selected) else {
            if wanted && in_range.is_some() {
                out.skipped.push(r.key.clone());
            }
            continue;
        };
        if wanted && taken.insert(i) {
            out.units.push(i);
            first_taken_row = Some(pos);
        }
    }
    // Rows among the rolled-back ones that stay (Count: no unit, or not selected).
    if let (Some(first), None) = (first_taken_row, &in_range) {
        for r in &rows[first..] {
            if !units.iter().any(|u| u.key == r.key && u.selected) {
                out.skipped.insert(0, r.key.clone());
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(names: &[&str]) -> Vec<(String, String)> {
        names.iter().map(|n| (n.to_string(), format!("-- {n}\nSELECT 1;\n"))).collect()
    }

    #[test]
    fn folder_orders_versions_numerically_then_repeatables() {
        let m = sql_folder(
            "db",
            files(&["V10__ten.sql", "R__views.sql", "V2__two.sql", "V2.1__two_one.sql", "V1_5__one_five.sql"]),
        )
        .unwrap();
        let names: Vec<&str> = m.iter().map(|m| m.script.as_str()).collect();
        assert_eq!(names, ["V1_5__one_five.sql", "V2__two.sql", "V2.1__two_one.sql", "V10__ten.sql", "R__views.sql"]);
        assert_eq!(m[0].version, Some(Version(vec![1, 5])));
        assert_eq!(m[0].description, "one five");
        assert_eq!(m[4].key(), "R:views");
        assert!(m[0].checksum.starts_with("sha256:"));
    }

    #[test]
    fn folder_rejects_files_off_the_scheme_by_name() {
        for (bad, needle) in [
            ("v1__lower.sql", "does not start with V or R__"),
            ("V1_init.sql", "no `__`"),
            ("Vx__bad.sql", "not dotted numbers"),
            ("V1__.sql", "empty description"),
            ("notes.txt", "not a .sql file"),
            ("V1__a.SQL", "not a .sql file"),
        ] {
            let e = sql_folder("db", files(&["V0__ok.sql", bad])).unwrap_err();
            assert_eq!(e.file, format!("db/{bad}"));
            assert!(e.message.contains(needle), "{bad}: {e}");
        }
        let e = sql_folder("db", files(&["V1__a.sql", "V1.0__b.sql"])).unwrap_err();
        assert!(e.to_string().contains("version 1.0 is also used by V1__a.sql"), "{e}");
        assert!(sql_folder("db", files(&[".keep", "V1__a.sql"])).is_ok());
    }

    #[test]
    fn versions_1_0_and_1_are_one_ledger_key() {
        let m = sql_folder("d", files(&["V1.0__a.sql", "V2_1_0__b.sql"])).unwrap();
        assert_eq!((m[0].key(), m[1].key()), ("1".to_string(), "2.1".to_string()));
        assert_eq!(canonical_key("1.0"), "1");
        assert_eq!(canonical_key("R:views"), "R:views");
    }

    #[test]
    fn checksum_ignores_line_endings_and_directive_is_read() {
        let a = sql_folder("d", vec![("V1__a.sql".into(), "SELECT 1;\r\n".into())]).unwrap();
        let b = sql_folder("d", vec![("V1__a.sql".into(), "SELECT 1;\n".into())]).unwrap();
        assert_eq!(a[0].checksum, b[0].checksum);
        assert!(a[0].transactional);
        let c = sql_folder(
            "d",
            vec![("V1__a.sql".into(), "-- pgplane: no-transaction\nCREATE INDEX CONCURRENTLY i ON t (a);\n".into())],
        )
        .unwrap();
        assert!(!c[0].transactional);
    }

    fn unit(key: &str, sum: &str) -> Unit {
        Unit {
            key: key.into(),
            name: key.into(),
            checksum: sum.into(),
            valid_checksums: vec![],
            rerun_on_change: false,
            run_always: false,
            version: key.parse::<u64>().ok().map(|v| Version(vec![v])),
            selected: true,
            transactional: true,
            tag: None,
        }
    }

    fn applied(key: &str, sum: &str) -> Applied {
        Applied {
            key: key.into(),
            checksum: Some(sum.into()),
            success: true,
            rolled_back: false,
            applied_at: "t".into(),
            execution_ms: Some(1),
            error: None,
            tag: None,
        }
    }

    fn states(p: &MigrationPlan) -> Vec<State> {
        p.steps.iter().map(|s| s.state).collect()
    }

    #[test]
    fn planner_runs_what_is_new_and_blocks_changes() {
        let units = [unit("1", "a"), unit("2", "b"), unit("3", "c")];
        let p = plan(&units, &[applied("1", "a"), applied("2", "B-changed")], PlanOptions::default());
        assert_eq!(states(&p), [State::Applied, State::Blocked, State::Pending]);
        assert!(matches!(&p.problems[..], [Problem::Changed { name, .. }] if name == "2"));
        assert_eq!(p.pending(), 1);
    }

    #[test]
    fn planner_reruns_changed_repeatables_and_always() {
        let mut r = unit("R:v", "new");
        r.rerun_on_change = true;
        let mut always = unit("x", "same");
        always.run_always = true;
        let mut filtered = unit("y", "y");
        filtered.selected = false;
        let p = plan(
            &[r, always, filtered],
            &[applied("R:v", "old"), applied("x", "same"), applied("gone", "g")],
            PlanOptions::default(),
        );
        assert_eq!(states(&p), [State::Changed, State::Always, State::Filtered]);
        assert_eq!(p.unknown, ["gone"]);
        assert!(p.problems.is_empty());
    }

    #[test]
    fn planner_accepts_valid_checksums_legacy_and_missing() {
        let mut u = unit("a", "9:new");
        u.valid_checksums = vec!["9:OLD".into()];
        let p = plan(&[u.clone()], &[applied("a", "9:old")], PlanOptions::default());
        assert_eq!(states(&p), [State::Applied]);
        assert!(p.steps[0].note.as_deref().unwrap().contains("validCheckSum"));
        let p = plan(&[u.clone()], &[applied("a", "8:abc")], PlanOptions::default());
        assert_eq!(states(&p), [State::Applied]);
        let mut none = applied("a", "");
        none.checksum = None;
        assert_eq!(states(&plan(&[u.clone()], &[none], PlanOptions::default())), [State::Applied]);
        u.valid_checksums = vec!["ANY".into()];
        assert_eq!(states(&plan(&[u], &[applied("a", "9:zzz")], PlanOptions::default())), [State::Applied]);
    }

    #[test]
    fn planner_retries_rolled_back_failures_and_blocks_partial_ones() {
        let mut failed = applied("1", "a");
        failed.success = false;
        failed.error = Some("boom".into());
        let units = [unit("1", "a")];
        let mut rolled = failed.clone();
        rolled.rolled_back = true;
        assert_eq!(states(&plan(&units, &[rolled], PlanOptions::default())), [State::Retry]);
        let p = plan(&units, std::slice::from_ref(&failed), PlanOptions::default());
        assert_eq!(states(&p), [State::Blocked]);
        assert!(p.problems[0].to_string().contains("--retry-failed"));
        let p = plan(&units, &[failed], PlanOptions { retry_failed: true });
        assert_eq!(states(&p), [State::Retry]);
    }

    #[test]
    fn planner_refuses_out_of_order_versions() {
        let units = [unit("1", "a"), unit("2", "b"), unit("3", "c")];
        let p = plan(&units, &[applied("1", "a"), applied("3", "c")], PlanOptions::default());
        assert_eq!(states(&p), [State::Applied, State::Blocked, State::Applied]);
        assert!(p.problems[0].to_string().contains("older than the applied version 3"));
    }
}
