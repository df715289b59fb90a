//! Migration sources: a folder of SQL files or a Liquibase changelog, loaded once and
//! reduced to planner [`Unit`]s.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use pgplane_core::migrate::{sql_folder, SqlMigration, Unit};

use super::liquibase::{self, LiquibaseSource};

/// Liquibase contexts and labels that select changesets (empty selects all).
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub contexts: Vec<String>,
    pub labels: Option<String>,
}

#[derive(Debug)]
pub enum Source {
    /// `V<version>__<description>.sql` and `R__<description>.sql` files.
    Sql { folder: PathBuf, migrations: Vec<SqlMigration> },
    /// A Liquibase changelog and everything it includes.
    Liquibase(LiquibaseSource),
}

impl Source {
    /// Reads a source: a folder is a SQL folder; a `.yaml`/`.yml`/`.xml`/`.json` file or a
    /// `.sql` file starting with `--liquibase formatted sql` is a Liquibase changelog.
    pub fn load(path: &Path) -> Result<Source> {
        let meta = std::fs::metadata(path).with_context(|| {
            format!("migration source {} cannot be read; give a SQL folder or a Liquibase changelog", path.display())
        })?;
        if meta.is_dir() {
            return load_sql_folder(path);
        }
        if liquibase::is_changelog(path)? {
            return Ok(Source::Liquibase(liquibase::load(path)?));
        }
        bail!(
            "{} is not a migration source: give a folder of V<version>__<description>.sql files, or a Liquibase \
             changelog (.yaml, .yml, .xml, .json, or .sql starting with `--liquibase formatted sql`)",
            path.display()
        )
    }

    pub fn describe(&self) -> String {
        match self {
            Source::Sql { folder, migrations } => {
                format!("SQL folder {} ({} migrations)", folder.display(), migrations.len())
            }
            Source::Liquibase(l) => {
                format!("Liquibase changelog {} ({} changesets)", l.file.display(), l.changelog.changesets.len())
            }
        }
    }

    pub fn units(&self, selection: &Selection) -> Vec<Unit> {
        match self {
            Source::Liquibase(l) => l.units(selection),
            Source::Sql { migrations, .. } => migrations
                .iter()
                .map(|m| Unit {
                    key: m.key(),
                    name: m.script.clone(),
                    checksum: m.checksum.clone(),
                    valid_checksums: vec![],
                    rerun_on_change: m.version.is_none(),
                    run_always: false,
                    version: m.version.clone(),
                    selected: true,
                    transactional: m.transactional,
                    tag: None,
                })
                .collect(),
        }
    }
}

fn load_sql_folder(folder: &Path) -> Result<Source> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(folder).with_context(|| format!("reading {}", folder.display()))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        if path.is_dir() {
            bail!(
                "{}: subfolders are not read in a SQL migration folder; move its files up into {}",
                path.display(),
                folder.display()
            );
        }
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        files.push((name, text));
    }
    let migrations = sql_folder(&folder.display().to_string(), files)?;
    Ok(Source::Sql { folder: folder.to_path_buf(), migrations })
}
