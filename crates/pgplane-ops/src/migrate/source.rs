//! Migration sources: a folder of SQL files or a Liquibase changelog, loaded once and
//! reduced to planner [`Unit`]s.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use pgplane_core::confine;
use pgplane_core::migrate::{sql_folder, SqlMigration, Unit, UpTo};

use super::liquibase::{self, LiquibaseSource};

/// Liquibase contexts and labels that select changesets (empty selects all).
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub contexts: Vec<String>,
    pub labels: Option<String>,
}

#[derive(Debug)]
pub enum Source {
    /// `V<version>__<description>.sql` and `R__<description>.sql` files; `end`: where a
    /// module version ends (see [`Source::cut`]).
    Sql { folder: PathBuf, migrations: Vec<SqlMigration>, end: Option<UpTo> },
    /// A Liquibase changelog and everything it includes.
    Liquibase(LiquibaseSource),
}

/// The folder a source's files must stay inside, canonical (symlinks resolved). Every
/// file pgplane reads for a source — the files of a SQL folder, a changelog and all it
/// includes — must lie inside it with its symlinks followed, checked on the opened file
/// when it is read (see [`pgplane_core::confine`]), so a symlink planted in a source
/// (a file, a folder an include goes through) never leads pgplane out of it, also when it
/// appears after a request was accepted.
///
/// - Sources named by a manifest (`migrations:`, `templates[].sources`) and by API
///   requests: the manifest's folder ([`Root::manifest`]).
/// - A `--source PATH` on the command line: the manifest's folder when PATH lies inside it,
///   else PATH's own folder — the folder itself, or a changelog's folder ([`Root::cli`]).
///   The path the operator typed is trusted as written, symlinks included; what the
///   folder holds is not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Root(PathBuf);

impl Root {
    /// The folder of the manifest `manifest_file`.
    pub fn manifest(manifest_file: &Path) -> Result<Root> {
        let folder = manifest_file.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let real = folder
            .canonicalize()
            .with_context(|| format!("the manifest's folder {} cannot be read", folder.display()))?;
        Ok(Root(real))
    }

    /// A source's own folder: a SQL folder itself, or the folder holding a changelog.
    pub fn own(source: &Path) -> Result<Root> {
        let unreadable = || format!("migration source {} cannot be read", source.display());
        let folder = if source.is_dir() {
            source
        } else {
            source.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
        };
        Ok(Root(folder.canonicalize().with_context(unreadable)?))
    }

    /// A command line's `--source`: the manifest's folder when the source lies inside it
    /// (with symlinks followed), else its own folder.
    pub fn cli(manifest_file: Option<&Path>, source: &Path) -> Result<Root> {
        if let (Some(file), Ok(real)) = (manifest_file, source.canonicalize()) {
            let root = Root::manifest(file)?;
            if real.starts_with(&root.0) {
                return Ok(root);
            }
        }
        Root::own(source)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

/// Sources named by a request (the API's branch routes, an event): paths relative to the
/// manifest's folder `base` (canonical) that must stay inside it. Absolute paths, `..` and
/// symlinks that lead out are refused; the result is the canonical paths, which the job
/// that reads them later checks again file by file.
pub fn request_sources(base: &Path, sources: &[String]) -> crate::error::Result<Vec<String>> {
    use crate::error::Error;
    use std::path::Component;
    sources
        .iter()
        .map(|s| {
            let p = Path::new(s);
            if s.is_empty()
                || p.is_absolute()
                || p.components().any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
            {
                return Err(Error::invalid(format!(
                    "source {s:?} must be a relative path inside the manifest's folder (no `..`, not absolute)"
                )));
            }
            let real = base
                .join(p)
                .canonicalize()
                .map_err(|_| Error::invalid(format!("source {s:?} does not exist under the manifest's folder")))?;
            if !real.starts_with(base) {
                return Err(Error::invalid(format!("source {s:?} leads outside the manifest's folder (symlink)")));
            }
            Ok(real.display().to_string())
        })
        .collect()
}

impl Source {
    /// What a Liquibase changelog holds that pgplane cannot run and this selection runs:
    /// an error before anything runs (a changeset the selection leaves out blocks nothing).
    pub fn check_selected(&self, selection: &Selection) -> Result<()> {
        if let Source::Liquibase(l) = self {
            l.check_selected(selection)?;
        }
        Ok(())
    }

    /// Reads a source inside `root`: a folder is a SQL folder; a `.yaml`/`.yml`/`.xml`/
    /// `.json` file or a `.sql` file starting with `--liquibase formatted sql` is a
    /// Liquibase changelog.
    pub fn load(path: &Path, root: &Root) -> Result<Source> {
        Source::load_with(path, root, None)
    }

    /// [`Source::load`] with Liquibase's search path given (`--search-path`,
    /// `migrations.search_path`): the changelog's includes and files are found from there,
    /// and its FILENAME is its path relative to it, as with `liquibase --search-path`.
    pub fn load_with(path: &Path, root: &Root, search_path: Option<&Path>) -> Result<Source> {
        let real = confine::resolve(path, &root.0).map_err(|e| match e.kind() {
            std::io::ErrorKind::PermissionDenied => anyhow::anyhow!("migration source {e}"),
            _ => anyhow::anyhow!(
                "migration source {} cannot be read ({e}); give a SQL folder or a Liquibase changelog",
                path.display()
            ),
        })?;
        if real.is_dir() {
            return load_sql_folder(path, &root.0, &Folders::default());
        }
        if liquibase::is_changelog(path, &root.0)? {
            return Ok(Source::Liquibase(liquibase::load(path, &root.0, search_path)?));
        }
        bail!(
            "{} is not a migration source: give a folder of V<version>__<description>.sql files, or a Liquibase \
             changelog (.yaml, .yml, .xml, .json, or .sql starting with `--liquibase formatted sql`)",
            path.display()
        )
    }

    pub fn describe(&self) -> String {
        match self {
            Source::Sql { folder, migrations, .. } => {
                format!("SQL folder {} ({} migrations)", folder.display(), migrations.len())
            }
            Source::Liquibase(l) => l.describe(),
        }
    }

    /// Where the module version this source was loaded for ends ([`Source::cut`]); `up`
    /// stops there as with `--to-tag`/`--target`.
    pub fn end(&self) -> Option<&UpTo> {
        match self {
            Source::Sql { end, .. } => end.as_ref(),
            Source::Liquibase(l) => l.end.as_ref(),
        }
    }

    /// The units up to the source's [`Source::end`]: what the version holds (all of them
    /// without an end).
    pub fn version_units(&self, selection: &Selection) -> Result<Vec<Unit>> {
        let units = self.units(selection);
        let Some(end) = self.end() else { return Ok(units) };
        let beyond = pgplane_core::migrate::beyond(&units, &[], end).map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(units.into_iter().zip(beyond).filter(|(_, b)| !b).map(|(u, _)| u).collect())
    }

    /// Every unit of the source (a version's [`Source::end`] is applied by the plan).
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

/// Subfolders of a SQL folder that module parameters name (`parameters: {demo: {folder:
/// demo}}`): `known` are skipped, not refused; the files of `included` join the folder's.
#[derive(Debug, Clone, Default)]
pub struct Folders {
    pub known: Vec<String>,
    pub included: Vec<String>,
}

/// The folder's files, each read through the checked folder's descriptor and checked to
/// lie inside `root` itself (a symlink to a file elsewhere is refused, naming it). The
/// files of `folders.included` subfolders join them, in one version sequence.
fn load_sql_folder(folder: &Path, root: &Path, folders: &Folders) -> Result<Source> {
    let dir = confine::Dir::open(folder, root).with_context(|| format!("reading {}", folder.display()))?;
    let mut files = Vec::new();
    let mut seen = Vec::new();
    for entry in dir.entries().with_context(|| format!("reading {}", folder.display()))? {
        if entry.name.starts_with('.') {
            continue;
        }
        let shown = folder.join(&entry.name);
        if entry.is_dir() {
            if folders.known.contains(&entry.name) {
                seen.push(entry.name.clone());
                if folders.included.contains(&entry.name) {
                    let sub = entry.open_dir(&shown, root).with_context(|| format!("reading {}", shown.display()))?;
                    for e in sub.entries().with_context(|| format!("reading {}", shown.display()))? {
                        let inner = shown.join(&e.name);
                        if e.name.starts_with('.') {
                            continue;
                        }
                        if e.is_dir() {
                            bail!("{}: a parameter's folder holds SQL files only, no subfolders", inner.display());
                        }
                        let text =
                            e.read_to_string(&inner, root).with_context(|| format!("reading {}", inner.display()))?;
                        files.push((e.name, text));
                    }
                }
                continue;
            }
            bail!(
                "{}: subfolders are not read in a SQL migration folder; move its files up into {} (or name it \
                 as a module parameter's `folder:`)",
                shown.display(),
                folder.display()
            );
        }
        let text = entry.read_to_string(&shown, root).with_context(|| format!("reading {}", shown.display()))?;
        files.push((entry.name, text));
    }
    if let Some(missing) = folders.included.iter().find(|f| !seen.contains(f)) {
        bail!(
            "{}: the parameter folder {missing:?} does not exist; create it or fix the parameter's `folder:`",
            folder.display()
        );
    }
    let migrations = sql_folder(&folder.display().to_string(), files)?;
    Ok(Source::Sql { folder: folder.to_path_buf(), migrations, end: None })
}

impl Source {
    /// The source a module's version and parameters choose
    /// ([`pgplane_core::tenant::migration_choice`]), read inside the manifest's folder and
    /// cut where the version ends.
    pub fn load_choice(manifest_file: &Path, choice: &pgplane_core::tenant::MigrationChoice) -> Result<Source> {
        let path = super::module_source_path(manifest_file, &choice.path);
        let root = Root::manifest(manifest_file)?;
        let real = confine::resolve(&path, &root.0).map_err(|e| {
            anyhow::anyhow!(
                "migration source {} cannot be read ({e}); give a SQL folder or a Liquibase changelog",
                path.display()
            )
        })?;
        let mut source = if real.is_dir() {
            if let Some(p) = choice.liquibase_parameters.first() {
                bail!(
                    "parameter {p:?} selects a Liquibase context or label, but {} is a SQL folder; give it \
                     `folder: NAME` instead",
                    path.display()
                );
            }
            let folders = Folders { known: choice.parameter_folders.clone(), included: choice.folders.clone() };
            load_sql_folder(&path, &root.0, &folders)?
        } else {
            let search_path = choice.spec.search_path.as_deref().map(|p| super::module_source_path(manifest_file, p));
            let source = Source::load_with(&path, &root, search_path.as_deref())?;
            if let Some(f) = choice.parameter_folders.first() {
                bail!(
                    "a parameter selects the folder {f:?}, but {} is a Liquibase changelog; give it `context: NAME` \
                     or `label: NAME` instead",
                    path.display()
                );
            }
            source
        };
        if let Some(cut) = &choice.cut {
            source.cut(cut)?;
        }
        Ok(source)
    }

    /// Ends the source where a version ends: a changelog after the changeset whose
    /// `tagDatabase` sets the tag, a SQL folder after a migration version (repeatable
    /// migrations stay). The end is applied where `migrate up --to-tag`/`--target` is, by
    /// [`pgplane_core::migrate::stop_at`] in the plan, so a version's end and an `up` to a
    /// tag follow one rule.
    pub fn cut(&mut self, cut: &pgplane_core::tenant::Cut) -> Result<()> {
        use pgplane_core::migrate::Version;
        use pgplane_core::tenant::Cut;
        match (self, cut) {
            (Source::Liquibase(l), Cut::Tag(tag)) => {
                if !l.changelog.changesets.iter().any(|cs| cs.tag() == Some(tag.as_str())) {
                    bail!(
                        "{}: no changeset has a tagDatabase with tag {tag:?}; the version's `to_tag` must name one",
                        l.file.display()
                    );
                }
                l.end = Some(UpTo::Tag(tag.clone()));
            }
            (Source::Sql { folder, migrations, end }, Cut::Version(v)) => {
                let target = Version::parse(v).map_err(|e| anyhow::anyhow!("{e}"))?;
                if !migrations.iter().any(|m| m.version.as_ref().is_some_and(|x| x.canonical() == target.canonical())) {
                    bail!("{}: no migration has version {v}; the version's `target` must name one", folder.display());
                }
                *end = Some(UpTo::Version(target));
            }
            (Source::Sql { folder, .. }, Cut::Tag(tag)) => bail!(
                "{} is a SQL folder, which has no tags; give the version `target: VERSION` instead of `to_tag: {tag}`",
                folder.display()
            ),
            (Source::Liquibase(l), Cut::Version(v)) => bail!(
                "{} is a Liquibase changelog; give the version `to_tag: TAG` (a tagDatabase in it) instead of \
                 `target: {v}`",
                l.file.display()
            ),
        }
        Ok(())
    }
}
