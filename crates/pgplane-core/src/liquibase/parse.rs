//! Loading XML/YAML/JSON changelogs (includes, properties, preconditions) into changesets,
//! with the checksum computed from the same attributes Liquibase serialises.
//!
//! Like Liquibase's `DatabaseChangeLog.handleChildNode`, each top-level element is handled in
//! document order with the properties known at that point; a changeset whose `dbms` excludes
//! PostgreSQL is skipped unread, and one marked `ignore` is never run.

use std::collections::HashSet;

use super::checksum::{self, SVal};
use super::node::{self, Node};
use super::props::{self, Props};
use super::spec::{self, Param, P};
use super::{
    expr, formatted, Change, ChangeSet, Changelog, ChangelogError, Column, Condition, Constraints, LoadColumn,
    LoadData, LoadOptions, Loader, Location, ModifyKind, ModifySql, Name, OnFail, Preconditions, Rollback, SqlChange,
    Value,
};

/// Loads `changelog` (a path relative to the loader's search path, like Liquibase's
/// `--changelog-file`) and every file it includes, with no run-time options.
pub fn load(changelog: &str, loader: &dyn Loader) -> Result<Changelog, ChangelogError> {
    load_with(changelog, loader, &LoadOptions::default())
}

/// [`load`] for a run: its contexts, labels, properties and target.
pub fn load_with(changelog: &str, loader: &dyn Loader, opts: &LoadOptions) -> Result<Changelog, ChangelogError> {
    let mut p = Props::new(&opts.contexts, opts.labels.as_deref());
    for (k, v) in &opts.environment {
        p.set_global(k, v);
    }
    if !opts.target.schema.is_empty() {
        for (k, v) in props::builtins(&opts.target) {
            p.set_global(&k, &v);
        }
    }
    for (k, v) in &opts.properties {
        p.set_global(k, v);
    }
    let mut ctx = Ctx {
        loader,
        props: p,
        changesets: Vec::new(),
        seen: HashSet::new(),
        stack: Vec::new(),
        preconditions: Vec::new(),
        warnings: Vec::new(),
        defer_change_errors: opts.defer_change_errors,
    };
    ctx.file(&normalize(changelog), None, true, &Inherit::default())?;
    for cs in &mut ctx.changesets {
        if let Some(p) = &mut cs.preconditions {
            resolve_properties(&mut p.condition, &mut ctx.props);
        }
    }
    for p in &mut ctx.preconditions {
        resolve_properties(&mut p.condition, &mut ctx.props);
    }
    Ok(Changelog {
        changesets: ctx.changesets,
        preconditions: ctx.preconditions,
        warnings: ctx.warnings,
        target_dependent: ctx.props.target_dependent,
    })
}

/// Marks a `changeLogPropertyDefined` until the changelog is fully read.
const PROPERTY_MARK: &str = "\u{0}changeLogPropertyDefined";

fn resolve_properties(c: &mut Condition, props: &mut Props) {
    match c {
        Condition::All(v) | Condition::Any(v) | Condition::Not(v) => {
            for c in v {
                resolve_properties(c, props);
            }
        }
        Condition::SqlCheck { expected, sql } if expected == PROPERTY_MARK => {
            let (file, rest) = sql.split_once('\u{0}').unwrap_or(("", sql.as_str()));
            let (name, want) = match rest.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (rest, None),
            };
            let defined = props.value(name, file);
            *c = Condition::Constant(match (defined, want) {
                (None, _) => false,
                (Some(_), None) => true,
                (Some(v), Some(w)) => v == w,
            });
        }
        _ => {}
    }
}

/// What an including file passes on: its contexts and labels, and `ignore`.
#[derive(Debug, Clone, Default)]
pub(crate) struct Inherit {
    pub contexts: Vec<String>,
    pub labels: Vec<String>,
    pub ignore: bool,
}

pub(crate) struct Ctx<'a> {
    loader: &'a dyn Loader,
    pub props: Props,
    changesets: Vec<ChangeSet>,
    seen: HashSet<String>,
    stack: Vec<String>,
    preconditions: Vec<super::Preconditions>,
    pub warnings: Vec<String>,
    defer_change_errors: bool,
}

pub(crate) fn normalize(path: &str) -> String {
    let p = path.replace('\\', "/");
    let p = p.strip_prefix("classpath:").unwrap_or(&p);
    let mut parts: Vec<&str> = Vec::new();
    for seg in p.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            s => parts.push(s),
        }
    }
    parts.join("/")
}

pub(crate) fn parent(path: &str) -> &str {
    path.rfind('/').map_or("", |i| &path[..i])
}

pub(crate) fn join(dir: &str, rel: &str) -> String {
    normalize(&if dir.is_empty() { rel.to_string() } else { format!("{dir}/{rel}") })
}

/// `rel` resolved against the folder `dir` (both relative to the search path).
pub(crate) fn join_path(dir: &str, rel: &str) -> String {
    join(dir, rel)
}

/// Liquibase's `ISODateFormat.parse` then `format`: the canonical form of a date (`yyyy-MM-dd`),
/// a time (`HH:mm:ss`) or a timestamp (`yyyy-MM-ddTHH:mm:ss[.fraction]`), `None` when it is
/// none of them (Liquibase then treats the value as a function).
pub(crate) fn iso_date(s: &str) -> Option<String> {
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    let is_date = |t: &str| {
        t.len() == 10
            && t.as_bytes()[4] == b'-'
            && t.as_bytes()[7] == b'-'
            && digits(&t[..4])
            && digits(&t[5..7])
            && digits(&t[8..])
    };
    let is_time = |t: &str| {
        t.len() == 8
            && t.as_bytes()[2] == b':'
            && t.as_bytes()[5] == b':'
            && digits(&t[..2])
            && digits(&t[3..5])
            && digits(&t[6..])
    };
    match s.len() {
        8 if is_time(s) => Some(s.to_string()),
        10 if is_date(s) => Some(s.to_string()),
        19 => {
            let (d, t) = (&s[..10], &s[11..]);
            let sep = s.as_bytes()[10];
            (is_date(d) && is_time(t) && (sep == b'T' || sep == b' ')).then(|| format!("{d}T{t}"))
        }
        n if n > 19 && s.as_bytes()[19] == b'.' => {
            let (d, t) = (&s[..10], &s[11..19]);
            let sep = s.as_bytes()[10];
            if !(is_date(d) && is_time(t) && (sep == b'T' || sep == b' ')) {
                return None;
            }
            let frac: String = s[20..].chars().take_while(char::is_ascii_digit).collect();
            if frac.is_empty() || frac.len() > 9 {
                return None;
            }
            let frac = frac.trim_end_matches('0');
            Some(if frac.is_empty() { format!("{d}T{t}") } else { format!("{d}T{t}.{frac}") })
        }
        _ => None,
    }
}

impl Ctx<'_> {
    pub fn read(&self, path: &str, from: &str, line: Option<usize>) -> Result<String, ChangelogError> {
        self.loader.read(path).map_err(|e| {
            ChangelogError::new(from, line, format!("cannot read {path}: {e}; paths are relative to the search path"))
        })
    }

    fn read_bytes(&self, path: &str, from: &str, line: Option<usize>) -> Result<Vec<u8>, ChangelogError> {
        self.loader.read_bytes(path).map_err(|e| {
            ChangelogError::new(from, line, format!("cannot read {path}: {e}; paths are relative to the search path"))
        })
    }

    /// Reads a file in `encoding` (UTF-8 by default; a byte order mark is dropped).
    fn read_text(
        &self,
        path: &str,
        encoding: Option<&str>,
        from: &str,
        line: Option<usize>,
    ) -> Result<String, ChangelogError> {
        let bytes = self.read_bytes(path, from, line)?;
        decode(&bytes, encoding).map_err(|e| ChangelogError::new(from, line, format!("{path}: {e}")))
    }

    /// Parses one changelog file. `required`: an include (error on an unknown type) rather
    /// than an includeAll member (skipped, like Liquibase's warning).
    fn file(
        &mut self,
        path: &str,
        from: Option<(&str, Option<usize>)>,
        required: bool,
        inherit: &Inherit,
    ) -> Result<(), ChangelogError> {
        let lower = path.to_ascii_lowercase();
        let kind = ["xml", "yaml", "yml", "json", "sql"].into_iter().find(|e| lower.ends_with(&format!(".{e}")));
        let Some(kind) = kind else {
            if required {
                let (f, l) = from.unwrap_or((path, None));
                return Err(ChangelogError::new(
                    f,
                    l,
                    format!("{path} is not a changelog: use a .xml, .yaml, .yml, .json or .sql file"),
                ));
            }
            return Ok(());
        };
        if self.stack.iter().any(|p| p == path) {
            let (f, l) = from.unwrap_or((path, None));
            return Err(ChangelogError::new(f, l, format!("{path} includes itself (via {})", self.stack.join(" -> "))));
        }
        let src = match from {
            Some((f, l)) => self.read(path, f, l)?,
            None => self.loader.read(path).map_err(|e| {
                ChangelogError::new(
                    path,
                    None,
                    format!("cannot read the changelog: {e}; the path is relative to the search path"),
                )
            })?,
        };
        let src = src.strip_prefix('\u{feff}').unwrap_or(&src).to_string();
        self.stack.push(path.to_string());
        let r = match kind {
            "sql" => formatted::parse(self, path, &src, inherit)
                .and_then(|sets| sets.into_iter().try_for_each(|cs| self.push(cs))),
            "xml" => node::from_xml(path, &src).and_then(|n| self.changelog(path, n, inherit, true)),
            _ => node::from_yaml(path, &src).and_then(|n| self.changelog(path, n, inherit, false)),
        };
        self.stack.pop();
        r
    }

    /// The changesets loaded so far.
    pub(crate) fn changesets(&self) -> &[ChangeSet] {
        &self.changesets
    }

    pub(crate) fn push(&mut self, cs: ChangeSet) -> Result<(), ChangelogError> {
        let key = format!("{}::{}::{}", cs.filename, cs.id, cs.author);
        if !self.seen.insert(key) {
            return Err(ChangelogError::new(
                &cs.location.file,
                Some(cs.location.line),
                format!(
                    "changeset {}::{} appears twice in {}; give one of them another id",
                    cs.id, cs.author, cs.filename
                ),
            ));
        }
        self.changesets.push(cs);
        Ok(())
    }

    fn expand_node(&mut self, n: &mut Node, file: &str) {
        for (_, v) in &mut n.attrs {
            *v = self.props.expand(v, file);
        }
        if let Some(t) = &mut n.text {
            *t = self.props.expand(t, file);
        }
        for c in &mut n.children {
            self.expand_node(c, file);
        }
    }

    fn changelog(&mut self, path: &str, mut root: Node, inherit: &Inherit, strict: bool) -> Result<(), ChangelogError> {
        if root.name != "databaseChangeLog" {
            return Err(ChangelogError::new(
                path,
                root.line,
                format!("the root element is {}, expected databaseChangeLog", root.name),
            ));
        }
        // YAML/JSON: `logicalFilePath` and friends are list items of their own.
        for c in root.children.clone() {
            if c.children.is_empty()
                && c.text.is_some()
                && ["logicalFilePath", "context", "contextFilter", "objectQuotingStrategy"].contains(&c.name.as_str())
            {
                root.attrs.push((c.name.clone(), c.text.clone().unwrap_or_default()));
            }
        }
        let logical = root.get("logicalFilePath").map(|l| self.props.expand(&l, path));
        let file_key = logical.clone().map(|l| normalize(&l)).unwrap_or_else(|| path.to_string());
        for (k, _) in &root.attrs {
            if !["logicalFilePath", "objectQuotingStrategy", "context", "contextFilter"].contains(&k.as_str()) {
                return Err(ChangelogError::new(
                    path,
                    root.line,
                    format!("databaseChangeLog attribute {k} is not supported; remove it"),
                ));
            }
        }
        if root.get("objectQuotingStrategy").is_some_and(|q| q != "LEGACY") {
            return Err(ChangelogError::new(
                path,
                root.line,
                "only objectQuotingStrategy LEGACY (the default) is supported: pgplane quotes names the way Liquibase's default does",
            ));
        }
        let mut inherit = inherit.clone();
        if let Some(c) = root.get("contextFilter").or_else(|| root.get("context")).filter(|c| !c.trim().is_empty()) {
            inherit.contexts.push(self.props.expand(&c, &file_key));
        }
        let filename = file_key.clone();
        for child in &root.children {
            let mut c = child.clone();
            if ["logicalFilePath", "context", "contextFilter", "objectQuotingStrategy"].contains(&c.name.as_str())
                && c.children.is_empty()
            {
                continue;
            }
            self.expand_node(&mut c, &file_key);
            match c.name.as_str() {
                "property" => {
                    let line = c.line;
                    self.property(path, &file_key, &c, line)?;
                }
                "changeSet" => {
                    let line = c.line;
                    if let Some(cs) = self.changeset(path, &filename, &c, line.unwrap_or(1), &inherit, &file_key, strict)? {
                        self.push(cs)?;
                    }
                }
                "include" => {
                    let line = c.line;
                    check_attrs(
                        &c,
                        &["file", "relativeToChangelogFile", "errorIfMissing", "context", "contextFilter", "labels", "ignore"],
                        path,
                        line,
                        "include",
                    )?;
                    let Some(file) = c.get("file") else {
                        return Err(ChangelogError::new(path, line, "include needs a file attribute"));
                    };
                    let target = if bool_attr(&c, "relativeToChangelogFile", path, line)?.unwrap_or(false) {
                        join(parent(path), &file)
                    } else {
                        normalize(&file)
                    };
                    let sub = self.sub_inherit(&inherit, &c, path, line)?;
                    let error_if_missing = bool_attr(&c, "errorIfMissing", path, line)?.unwrap_or(true);
                    if !error_if_missing && self.loader.read_bytes(&target).is_err() {
                        self.warnings.push(format!("{path}: included file {target} does not exist (errorIfMissing: false)"));
                        continue;
                    }
                    self.file(&target, Some((path, line)), true, &sub)?;
                }
                "includeAll" => {
                    let line = c.line;
                    self.include_all(path, &c, line, &inherit)?;
                }
                "preConditions" => {
                    let line = c.line.unwrap_or(1);
                    let pre = preconditions(&c, path, line, "the changelog", &mut self.props, &file_key)?;
                    self.preconditions.push(pre);
                }
                "comment" | "validCheckSum" => {}
                "modifyChangeSets" | "removeChangeSetProperty" => {
                    return Err(ChangelogError::new(
                        path,
                        c.line,
                        format!("{} changes how Liquibase runs included changesets (runWith); pgplane runs SQL itself and does not support it", c.name),
                    ))
                }
                other => {
                    if c.children.is_empty() && c.attrs.is_empty() {
                        continue;
                    }
                    return Err(ChangelogError::new(
                        path,
                        c.line,
                        format!("{other} is not supported at the top of a changelog; use changeSet, include, includeAll, property or preConditions"),
                    ));
                }
            }
        }
        Ok(())
    }

    fn sub_inherit(
        &mut self,
        inherit: &Inherit,
        c: &Node,
        path: &str,
        line: Option<usize>,
    ) -> Result<Inherit, ChangelogError> {
        let mut sub = inherit.clone();
        if let Some(ctx) = c.get("contextFilter").or_else(|| c.get("context")).filter(|x| !x.trim().is_empty()) {
            sub.contexts.push(ctx);
        }
        if let Some(l) = c.get("labels").filter(|x| !x.trim().is_empty()) {
            sub.labels.push(l);
        }
        if bool_attr(c, "ignore", path, line)?.unwrap_or(false) {
            sub.ignore = true;
        }
        Ok(sub)
    }

    fn include_all(
        &mut self,
        path: &str,
        c: &Node,
        line: Option<usize>,
        inherit: &Inherit,
    ) -> Result<(), ChangelogError> {
        check_attrs(
            c,
            &[
                "path",
                "relativeToChangelogFile",
                "errorIfMissingOrEmpty",
                "context",
                "contextFilter",
                "labels",
                "ignore",
                "minDepth",
                "maxDepth",
                "endsWithFilter",
                "filter",
                "resourceFilter",
                "resourceComparator",
            ],
            path,
            line,
            "includeAll",
        )?;
        for k in ["filter", "resourceFilter", "resourceComparator"] {
            if let Some(v) = c.get(k) {
                return Err(ChangelogError::new(
                    path,
                    line,
                    format!(
                        "includeAll {k}={v} names a Java class, which pgplane cannot run; list the files with include"
                    ),
                ));
            }
        }
        let Some(dir) = c.get("path") else {
            return Err(ChangelogError::new(path, line, "includeAll needs a path attribute"));
        };
        let dir = if bool_attr(c, "relativeToChangelogFile", path, line)?.unwrap_or(false) {
            join(parent(path), &dir)
        } else {
            normalize(&dir)
        };
        let num = |k: &str, d: usize| -> Result<usize, ChangelogError> {
            match c.get(k) {
                None => Ok(d),
                Some(v) => v.trim().parse().map_err(|_| {
                    ChangelogError::new(path, line, format!("includeAll {k} must be a number, not {v:?}"))
                }),
            }
        };
        let (min_depth, max_depth) = (num("minDepth", 0)?, num("maxDepth", usize::MAX)?);
        let ends_with = c.get("endsWithFilter").unwrap_or_default();
        let listed = self.loader.list(&dir);
        let error_if_empty = bool_attr(c, "errorIfMissingOrEmpty", path, line)?.unwrap_or(true);
        let mut files = match listed {
            Ok(f) => f,
            Err(_) if !error_if_empty => Vec::new(),
            Err(e) => return Err(ChangelogError::new(path, line, format!("cannot list includeAll path {dir}: {e}"))),
        };
        files.retain(|f| {
            let rel = f.strip_prefix(&format!("{dir}/")).unwrap_or(f);
            let depth = rel.matches('/').count() + 1;
            depth > min_depth.saturating_sub(1) && depth <= max_depth.max(1) && f.ends_with(ends_with.as_str())
        });
        files.sort();
        if files.is_empty() && error_if_empty {
            return Err(ChangelogError::new(
                path,
                line,
                format!("includeAll path {dir} holds no files; add changelogs or set errorIfMissingOrEmpty: false"),
            ));
        }
        let sub = self.sub_inherit(inherit, c, path, line)?;
        for f in files {
            let f = normalize(&f);
            if f != path {
                self.file(&f, Some((path, line)), false, &sub)?;
            }
        }
        Ok(())
    }

    fn property(&mut self, path: &str, file_key: &str, c: &Node, line: Option<usize>) -> Result<(), ChangelogError> {
        check_attrs(
            c,
            &[
                "name",
                "value",
                "dbms",
                "context",
                "contextFilter",
                "labels",
                "global",
                "file",
                "relativeToChangelogFile",
                "errorIfMissing",
            ],
            path,
            line,
            "property",
        )?;
        let context = c.get("contextFilter").filter(|x| !x.is_empty()).or_else(|| c.get("context"));
        let filters = (context, c.get("labels"), c.get("dbms"));
        let global = bool_attr(c, "global", path, line)?.unwrap_or(true);
        if let Some(file) = c.get("file") {
            let target = if bool_attr(c, "relativeToChangelogFile", path, line)?.unwrap_or(false) {
                join(parent(path), &file)
            } else {
                normalize(&file)
            };
            let text = match self.loader.read_bytes(&target) {
                Ok(b) => decode(&b, Some("ISO-8859-1")).unwrap_or_default(),
                Err(e) => {
                    if bool_attr(c, "errorIfMissing", path, line)?.unwrap_or(true) {
                        return Err(ChangelogError::new(
                            path,
                            line,
                            format!("cannot read property file {target}: {e}"),
                        ));
                    }
                    self.warnings
                        .push(format!("{path}: property file {target} does not exist (errorIfMissing: false)"));
                    return Ok(());
                }
            };
            for (k, v) in java_properties(&text) {
                self.props.set(&k, &v, filters.clone(), global, file_key);
            }
            return Ok(());
        }
        let (Some(name), Some(value)) = (c.get("name"), c.get("value")) else {
            return Err(ChangelogError::new(path, line, "property needs name and value, or file"));
        };
        self.props.set(&name, &value, filters, global, file_key);
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn changeset(
        &mut self,
        path: &str,
        filename: &str,
        n: &Node,
        line: usize,
        inherit: &Inherit,
        file_key: &str,
        strict: bool,
    ) -> Result<Option<ChangeSet>, ChangelogError> {
        let err = |msg: String| ChangelogError::new(path, Some(line), msg);
        let id = n.get("id").ok_or_else(|| err("changeSet needs an id".into()))?;
        let author = n.get("author").ok_or_else(|| err(format!("changeSet {id} needs an author")))?;
        let who = format!("changeset {id} (author {author})");
        // A changeset for another database is skipped unread (Liquibase never builds it).
        if !expr::dbms_match(n.get("dbms").as_deref(), "postgresql") {
            return Ok(None);
        }
        for (k, _) in &n.attrs {
            let known = [
                "id",
                "author",
                "runAlways",
                "alwaysRun",
                "runOnChange",
                "failOnError",
                "runInTransaction",
                "context",
                "contextFilter",
                "labels",
                "dbms",
                "logicalFilePath",
                "created",
                "comment",
                "validCheckSum",
                "validCheckSums",
                "rollback",
                "ignore",
                "objectQuotingStrategy",
                "onValidationFail",
                "runOrder",
                "runWith",
                "runWithSpoolFile",
            ];
            if !known.contains(&k.as_str()) {
                if strict {
                    return Err(err(format!("{who}: attribute {k} is not supported; remove it")));
                }
                self.warnings.push(format!("{path}:{line}: {who}: attribute {k} is not a changeset attribute; Liquibase ignores it, so does pgplane"));
            }
        }
        if let Some(q) = n.get("objectQuotingStrategy").filter(|q| q != "LEGACY") {
            return Err(err(format!("{who}: objectQuotingStrategy {q} is not supported; pgplane quotes names as Liquibase's default LEGACY does")));
        }
        if let Some(r) = n.get("runWith").filter(|r| !r.trim().is_empty() && r.trim() != "jdbc") {
            return Err(err(format!(
                "{who}: runWith {r} hands the SQL to another program; pgplane runs SQL itself (remove runWith)"
            )));
        }
        if n.get("runWithSpoolFile").is_some() {
            return Err(err(format!("{who}: runWithSpoolFile is only for runWith; remove it")));
        }
        if let Some(o) = n.get("runOrder") {
            return Err(err(format!("{who}: runOrder {o} reorders changesets; pgplane runs them in changelog order (move the changeset instead)")));
        }
        if let Some(o) = n.get("onValidationFail").filter(|o| o != "HALT") {
            return Err(err(format!(
                "{who}: onValidationFail {o} is not supported; pgplane stops on a changed checksum (HALT)"
            )));
        }
        let b = |k: &str, d: bool| bool_attr(n, k, path, Some(line)).map(|v| v.unwrap_or(d));
        if b("ignore", false)? || inherit.ignore {
            return Ok(None);
        }
        let mut valid: Vec<String> = n.get_all("validCheckSum").into_iter().map(|s| s.trim().to_string()).collect();
        valid.extend(n.get_all("validCheckSums").into_iter().map(|s| s.trim().to_string()));
        let run_always = match n.get("runAlways") {
            Some(_) => b("runAlways", false)?,
            None => b("alwaysRun", false)?,
        };
        let mut cs = ChangeSet {
            filename: n.get("logicalFilePath").map(|l| normalize(&l)).unwrap_or_else(|| filename.to_string()),
            valid_checksums: valid,
            contexts: n.get("contextFilter").filter(|c| !c.trim().is_empty()).or_else(|| n.get("context")),
            labels: n.get("labels"),
            dbms: n.get("dbms"),
            run_always,
            run_on_change: b("runOnChange", false)?,
            fail_on_error: b("failOnError", true)?,
            run_in_transaction: b("runInTransaction", true)?,
            inherited_contexts: inherit.contexts.clone(),
            inherited_labels: inherit.labels.clone(),
            ..ChangeSet::new(id, author, path, line)
        };
        let comments: Vec<String> =
            n.children.iter().filter(|c| c.name == "comment").map(|c| c.text.clone().unwrap_or_default()).collect();
        let comment = if comments.is_empty() {
            n.attrs.iter().find(|(k, _)| k == "comment").map(|(_, v)| v.clone())
        } else {
            Some(comments.join("\n"))
        };
        cs.comment = comment.map(|c| c.trim().to_string()).filter(|c| !c.is_empty());
        let mut sums = Vec::new();
        // A changeset this run does not select is never run (by Liquibase either): what
        // pgplane cannot run in it is noted, not an error.
        let (contexts, labels) = self.props.selection();
        let selected = !self.defer_change_errors && cs.selected(contexts, labels);
        for c in n.flat_children("changes") {
            let cline = c.line.unwrap_or(line);
            match c.name.as_str() {
                "comment" | "validCheckSum" | "validCheckSums" => {}
                "preConditions" => {
                    cs.preconditions = Some(preconditions(c, path, cline, &who, &mut self.props, file_key)?);
                }
                "rollback" => {
                    // Several `<rollback>`s add up; one that cannot be read is kept as
                    // unusable: only a rollback that would run it fails, never `update`.
                    let more = self.rollback(c, path, cline, &who, &cs.filename, file_key, strict);
                    cs.rollback = add_rollback(std::mem::take(&mut cs.rollback), more);
                }
                "modifySql" => {
                    for m in modify_sql(c, path, cline, &who, self.props.selection())? {
                        cs.modify_sql.push(m.0);
                        if let Some(sum) = m.1 {
                            cs.visitor_sums.push(sum);
                        }
                    }
                }
                _ if cs.unrunnable.is_some() => {}
                _ => {
                    let (change, sum, description) = match self.change(c, path, cline, &who, file_key, strict) {
                        Ok(r) => r,
                        Err(e) if !selected => {
                            cs.unrunnable = Some(e.to_string());
                            continue;
                        }
                        Err(e) => return Err(e),
                    };
                    if let Some(sum) = sum {
                        sums.push(sum);
                    }
                    cs.descriptions.push(description);
                    cs.changes.push(change);
                }
            }
        }
        if let Some(sql) = n.attrs.iter().find(|(k, _)| k == "rollback").map(|(_, v)| v.clone()) {
            let so_far = std::mem::take(&mut cs.rollback);
            cs.rollback = add_rollback(so_far, Ok(vec![raw_sql(&sql)]));
        }
        cs.checksum = checksum::changeset_with_visitors(&sums, &cs.visitor_sums);
        Ok(Some(cs))
    }

    /// The changes of one `<rollback>` block (read leniently by the caller: `update` never
    /// runs them).
    #[allow(clippy::too_many_arguments)]
    fn rollback(
        &mut self,
        n: &Node,
        path: &str,
        line: usize,
        who: &str,
        filename: &str,
        file_key: &str,
        strict: bool,
    ) -> Result<Vec<Change>, ChangelogError> {
        if let Some(id) = n.get("changeSetId") {
            // The changes of an earlier changeset, as Liquibase's handleRollbackNode finds it:
            // same path (default: this changeset's), id and author, ignoring case.
            let author = n.get("changeSetAuthor").unwrap_or_default();
            let target = n.get("changeSetPath").unwrap_or_else(|| filename.to_string());
            return changes_of(&self.changesets, &target, &id, &author)
                .map_err(|m| ChangelogError::new(path, Some(line), format!("{who}: {m}")));
        }
        let mut out = Vec::new();
        if let Some(t) = &n.text {
            if !t.trim().is_empty() {
                for s in super::split::process(t.trim(), true, true, Some(";")) {
                    out.push(raw_sql(&s));
                }
            }
        }
        // YAML `rollback: {sql: …}` is a mapping of sql's attributes.
        if n.children.is_empty() && n.attrs.iter().any(|(k, _)| k == "sql") {
            let (c, _, _) =
                self.change(&Node { name: "sql".into(), ..n.clone() }, path, line, who, file_key, strict)?;
            out.push(c);
            return Ok(out);
        }
        for c in n.flat_children("changes") {
            let (c, _, _) = self.change(c, path, c.line.unwrap_or(line), who, file_key, strict)?;
            out.push(c);
        }
        if out.is_empty() {
            out.push(Change::Empty);
        }
        Ok(out)
    }

    /// One change, its checksum (`None` when the change is for another database) and its
    /// DESCRIPTION part.
    #[allow(clippy::too_many_lines)]
    fn change(
        &mut self,
        n: &Node,
        path: &str,
        line: usize,
        who: &str,
        file_key: &str,
        strict: bool,
    ) -> Result<(Change, Option<String>, String), ChangelogError> {
        let ty = n.name.as_str();
        let plain_err = |m: String| ChangelogError::new(path, Some(line), format!("{who}: {m}"));
        if spec::PRO.contains(&ty) {
            return Err(plain_err(format!(
                "{ty} is a Liquibase Pro change type; pgplane runs what open-source Liquibase runs (write it as an sql change)"
            )));
        }
        if ty == "customChange" {
            let class = n.get("class").unwrap_or_default();
            return Err(plain_err(format!(
                "customChange runs the Java class {class}, which pgplane cannot run; write what it does as an sql change"
            )));
        }
        let Some(params) = spec::params(ty) else {
            return Err(plain_err(format!(
                "change type {ty} is not a Liquibase change type pgplane knows; use one of {}",
                spec::SUPPORTED.join(", ")
            )));
        };
        let err = |m: String| ChangelogError::new(path, Some(line), format!("{who}: {ty}: {m}"));
        let columns_kind = spec::column_kind(ty);
        for (k, _) in &n.attrs {
            if !params.iter().any(|(s, _, _)| s == k) {
                if strict || ["column", "columns"].contains(&k.as_str()) {
                    return Err(err(format!("attribute {k} is not supported; remove it")));
                }
                self.warnings.push(format!("{path}:{line}: {who}: {ty}: key {k} is not a {ty} attribute; Liquibase ignores it, so does pgplane"));
            }
        }
        for c in &n.children {
            let ok = match c.name.as_str() {
                "column" | "columns" => columns_kind.is_some(),
                "arg" | "args" => ty == "executeCommand",
                "whereParams" => matches!(ty, "update" | "delete") && c.children.iter().all(|p| p.name == "param"),
                k => {
                    params.iter().any(|(s, kind, _)| *s == k && matches!(kind, P::Text | P::Excluded))
                        && c.children.is_empty()
                }
            };
            if !ok {
                if strict {
                    return Err(err(format!("element {} is not supported here; remove it", c.name)));
                }
                self.warnings.push(format!(
                    "{path}:{line}: {who}: {ty}: key {} is not a {ty} element; Liquibase ignores it, so does pgplane",
                    c.name
                ));
            }
        }
        // Refused attributes (pgplane cannot do what Liquibase would).
        for (k, kind, h) in params {
            if let spec::AttrHandling::Refused(why) = h {
                if let Some(v) = n.get(k) {
                    // A refused flag set to false asks for nothing.
                    let is_flag = matches!(kind, P::Bool | P::ExcludedBool);
                    if !(is_flag && v.trim().eq_ignore_ascii_case("false")) {
                        return Err(err(format!("attribute {k}: {why}")));
                    }
                }
            }
        }
        let fields = canon_fields(n, params, &err)?;
        let description = describe(ty, n, params);
        let mut fields = fields;
        match ty {
            // The message of output is the element's text (a DIRECT_VALUE) when no attribute
            // gives it; its getters answer the defaults, which the checksum serialises.
            "output" => {
                let trimmed = |v: Option<String>| v.map(|m| m.trim().to_string()).filter(|m| !m.is_empty());
                fields.retain(|(k, _)| k != "message" && k != "target");
                if let Some(m) = trimmed(n.get("message")).or_else(|| trimmed(n.text.clone())) {
                    fields.push(("message".into(), SVal::Str(m)));
                }
                let target = trimmed(n.get("target")).unwrap_or_else(|| "STDERR".into());
                fields.push(("target".into(), SVal::Str(target)));
            }
            "stop" => {
                // StopChange.customLoadLogic: the element's text, when there is one, wins.
                let m = n
                    .text
                    .clone()
                    .map(|m| m.trim().to_string())
                    .filter(|m| !m.is_empty())
                    .or_else(|| n.get("message").map(|m| m.trim().to_string()).filter(|m| !m.is_empty()));
                fields.retain(|(k, _)| k != "message");
                fields
                    .push(("message".into(), SVal::Str(m.unwrap_or_else(|| "Stop command in changelog file".into()))));
            }
            _ => {}
        }
        if ty == "addForeignKeyConstraint" {
            // Liquibase loads onDelete, then deleteCascade, whose setter leaves onDelete as
            // CASCADE (true, no onDelete given) or clears it (anything else).
            if let Some(i) = fields.iter().position(|(k, _)| k == "deleteCascade") {
                let (_, v) = fields.remove(i);
                let had_on_delete = fields.iter().any(|(k, _)| k == "onDelete");
                fields.retain(|(k, _)| k != "onDelete");
                if matches!(&v, SVal::Str(b) if b == "true") && !had_on_delete {
                    fields.push(("onDelete".into(), SVal::Str("CASCADE".into())));
                }
            }
        }
        // whereParams (update, delete): columns whose names and values fill the where
        // clause's `:name` and `:value` (or `?`) placeholders, in order.
        let mut where_params = Vec::new();
        for wp in n.children.iter().filter(|c| c.name == "whereParams") {
            for p in wp.children.iter().filter(|p| p.name == "param") {
                let mut p = p.clone();
                if p.get("name").is_none() {
                    p.attrs.push(("name".into(), String::new()));
                }
                let (col, _, _) = column(self, &p, &[], &err, path, strict)?;
                where_params.push(col);
            }
        }
        // (Liquibase's serializer leaves whereParams out of the checksum.)
        let mut columns = Vec::new();
        let mut load_columns = Vec::new();
        let mut col_fields = Vec::new();
        if let Some(extra) = columns_kind {
            for c in n.flat_children("columns").into_iter().filter(|c| c.name == "column") {
                let (col, f, lc) = column(self, c, extra, &err, path, strict)?;
                columns.push(col);
                load_columns.push(lc);
                col_fields.push(f);
            }
            if !col_fields.is_empty() {
                fields.push(("columns".into(), SVal::List(col_fields)));
            }
        }
        let s = |k: &str| n.get(k);
        let text = |k: &str| n.get(k).map(|t| t.trim().to_string()).filter(|t| !t.is_empty());
        let req = |k: &str| s(k).filter(|v| !v.trim().is_empty()).ok_or_else(|| err(format!("{k} is required")));
        let flag = |k: &str| s(k).is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let name =
            |schema: &str, k: &str| -> Result<Name, ChangelogError> { Ok(Name { schema: s(schema), name: req(k)? }) };
        let table = || name("schemaName", "tableName");
        let list = |v: String| v.split(',').map(|c| c.trim().to_string()).filter(|c| !c.is_empty()).collect::<Vec<_>>();
        let num = |k: &str| s(k).map(|v| canon_bigint(&v));
        let default_sum = || checksum::compute(&checksum::serialize(ty, &fields));
        let change = match ty {
            "createTable" => {
                if columns.is_empty() {
                    return Err(err("needs at least one column".into()));
                }
                Change::CreateTable {
                    table: table()?,
                    remarks: s("remarks"),
                    columns,
                    table_type: s("tableType").filter(|t| !t.trim().is_empty()),
                    tablespace: s("tablespace"),
                    if_not_exists: flag("ifNotExists"),
                }
            }
            "dropTable" => Change::DropTable { table: table()?, cascade: flag("cascadeConstraints") },
            "renameTable" => {
                Change::RenameTable { schema: s("schemaName"), old: req("oldTableName")?, new: req("newTableName")? }
            }
            "addColumn" => {
                if columns.is_empty() {
                    return Err(err("needs at least one column".into()));
                }
                Change::AddColumn { table: table()?, columns }
            }
            "dropColumn" => {
                let mut names: Vec<String> = columns.iter().map(|c| c.name.clone()).collect();
                if let Some(c) = s("columnName") {
                    names.insert(0, c);
                }
                if names.is_empty() {
                    return Err(err("columnName (or columns) is required".into()));
                }
                Change::DropColumn { table: table()?, columns: names }
            }
            "renameColumn" => Change::RenameColumn {
                table: table()?,
                old: req("oldColumnName")?,
                new: req("newColumnName")?,
                remarks: s("remarks"),
            },
            "modifyDataType" => {
                Change::ModifyDataType { table: table()?, column: req("columnName")?, new_type: req("newDataType")? }
            }
            "addNotNullConstraint" => Change::AddNotNullConstraint {
                table: table()?,
                column: req("columnName")?,
                default_null_value: s("defaultNullValue"),
                column_type: s("columnDataType"),
                validate: !s("validate").is_some_and(|v| v.eq_ignore_ascii_case("false")),
            },
            "dropNotNullConstraint" => Change::DropNotNullConstraint { table: table()?, column: req("columnName")? },
            "addDefaultValue" => {
                let value =
                    default_value(n, &err)?.ok_or_else(|| err("a defaultValue… attribute is required".into()))?;
                Change::AddDefaultValue {
                    table: table()?,
                    column: req("columnName")?,
                    value,
                    column_type: s("columnDataType"),
                }
            }
            "dropDefaultValue" => Change::DropDefaultValue { table: table()?, column: req("columnName")? },
            "addPrimaryKey" if flag("clustered") && s("constraintName").is_none() => {
                return Err(err(
                    "clustered=\"true\" needs a constraintName on PostgreSQL (Liquibase's validation says so too)"
                        .into(),
                ))
            }
            "addPrimaryKey" => Change::AddPrimaryKey {
                table: table()?,
                columns: list(req("columnNames")?),
                constraint_name: s("constraintName"),
                tablespace: s("tablespace"),
                clustered: flag("clustered"),
                for_index: s("forIndexName"),
            },
            "addUniqueConstraint" => Change::AddUniqueConstraint {
                table: table()?,
                columns: list(req("columnNames")?),
                constraint_name: s("constraintName"),
                deferrable: flag("deferrable"),
                initially_deferred: flag("initiallyDeferred"),
                tablespace: s("tablespace"),
                for_index: s("forIndexName"),
            },
            "addForeignKeyConstraint" => {
                let mut on_delete = s("onDelete");
                if s("deleteCascade").is_some() {
                    on_delete = (flag("deleteCascade") && on_delete.is_none()).then(|| "CASCADE".to_string());
                }
                Change::AddForeignKeyConstraint {
                    table: name("baseTableSchemaName", "baseTableName")?,
                    columns: list(req("baseColumnNames")?),
                    constraint_name: req("constraintName")?,
                    referenced: name("referencedTableSchemaName", "referencedTableName")?,
                    referenced_columns: list(req("referencedColumnNames")?),
                    on_delete,
                    on_update: s("onUpdate"),
                    deferrable: flag("deferrable"),
                    initially_deferred: flag("initiallyDeferred"),
                    validate: !s("validate").is_some_and(|v| v.eq_ignore_ascii_case("false")),
                }
            }
            "dropForeignKeyConstraint" => Change::DropForeignKeyConstraint {
                table: name("baseTableSchemaName", "baseTableName")?,
                constraint_name: req("constraintName")?,
            },
            "createIndex" => {
                if columns.is_empty() {
                    return Err(err("needs at least one column".into()));
                }
                Change::CreateIndex {
                    table: table()?,
                    index_name: req("indexName")?,
                    unique: flag("unique"),
                    columns,
                    tablespace: s("tablespace"),
                    clustered: flag("clustered"),
                }
            }
            "dropIndex" => Change::DropIndex { index: name("schemaName", "indexName")?, table: s("tableName") },
            "createSequence" => Change::CreateSequence {
                sequence: name("schemaName", "sequenceName")?,
                data_type: s("dataType"),
                start: num("startValue"),
                increment: num("incrementBy"),
                min: num("minValue"),
                max: num("maxValue"),
                cache: num("cacheSize"),
                cycle: s("cycle").map(|v| v.eq_ignore_ascii_case("true")),
            },
            "alterSequence" => Change::AlterSequence {
                sequence: name("schemaName", "sequenceName")?,
                data_type: s("dataType"),
                increment: num("incrementBy"),
                min: num("minValue"),
                max: num("maxValue"),
                cache: num("cacheSize"),
                cycle: s("cycle").map(|v| v.eq_ignore_ascii_case("true")),
            },
            "dropSequence" => Change::DropSequence { sequence: name("schemaName", "sequenceName")? },
            "renameSequence" => Change::RenameSequence {
                schema: s("schemaName"),
                old: req("oldSequenceName")?,
                new: req("newSequenceName")?,
            },
            "createView" => {
                let view = name("schemaName", "viewName")?;
                let (query, sum_text) = match s("path") {
                    Some(p) => {
                        let rel = bool_attr(n, "relativeToChangelogFile", path, Some(line))?.unwrap_or(false);
                        let file = if rel { join(parent(path), &p) } else { normalize(&p) };
                        let raw = self.read_text(&file, s("encoding").as_deref(), path, Some(line))?;
                        let expanded = self.props.expand(&raw, file_key);
                        (expanded.trim().to_string(), expanded)
                    }
                    None => {
                        let q = s("selectQuery").or_else(|| n.text.clone()).map(|q| q.trim().to_string());
                        let q = q.filter(|q| !q.is_empty()).ok_or_else(|| err("selectQuery is required".into()))?;
                        (q.clone(), q)
                    }
                };
                let sum = checksum::compute(&format!("{}:{}", default_sum(), checksum::sql(&sum_text)));
                let c = Change::CreateView {
                    view,
                    query,
                    replace: flag("replaceIfExists"),
                    remarks: s("remarks"),
                    full_definition: flag("fullDefinition"),
                };
                return Ok((c, Some(sum), description));
            }
            "dropView" => Change::DropView { view: name("schemaName", "viewName")?, if_exists: flag("ifExists") },
            "renameView" => {
                Change::RenameView { schema: s("schemaName"), old: req("oldViewName")?, new: req("newViewName")? }
            }
            "setTableRemarks" => Change::SetTableRemarks { table: table()?, remarks: s("remarks").unwrap_or_default() },
            "setColumnRemarks" => Change::SetColumnRemarks {
                table: table()?,
                column: req("columnName")?,
                remarks: s("remarks").unwrap_or_default(),
            },
            "insert" => {
                let c = Change::Insert { table: table()?, columns };
                if !expr::dbms_match(s("dbms").as_deref(), "postgresql") {
                    return Ok((Change::Empty, None, description));
                }
                c
            }
            "update" => Change::Update { table: table()?, columns, where_clause: text("where"), where_params },
            "delete" => Change::Delete { table: table()?, where_clause: text("where"), where_params },
            "tagDatabase" => Change::TagDatabase { tag: req("tag")? },
            "sql" => {
                let body = s("sql").or_else(|| n.text.clone()).unwrap_or_default();
                let sql = sql_change(n, body.trim().to_string(), false, &err)?;
                let sum = expr::dbms_match(sql.dbms.as_deref(), "postgresql").then(|| checksum::sql(&sql.sql));
                return Ok((Change::Sql(sql), sum, description));
            }
            "sqlFile" => {
                let p = req("path")?;
                let rel = bool_attr(n, "relativeToChangelogFile", path, Some(line))?.unwrap_or(false);
                let file = if rel { join(parent(path), &p) } else { normalize(&p) };
                let raw = self.read_text(&file, s("encoding").as_deref(), path, Some(line))?;
                let mut sql = sql_change(n, raw.clone(), false, &err)?;
                // Liquibase checksums the file as written and runs it with properties expanded.
                let sum = expr::dbms_match(sql.dbms.as_deref(), "postgresql").then(|| checksum::sql(&raw));
                sql.sql = self.props.expand(&raw, file_key).trim().to_string();
                return Ok((Change::SqlFile { path: p, sql }, sum, description));
            }
            "addAutoIncrement" => Change::AddAutoIncrement {
                table: table()?,
                column: req("columnName")?,
                start_with: num("startWith"),
                increment_by: num("incrementBy"),
            },
            "addLookupTable" => Change::AddLookupTable {
                existing: name("existingTableSchemaName", "existingTableName")?,
                existing_column: req("existingColumnName")?,
                new_table: name("newTableSchemaName", "newTableName")?,
                new_column: req("newColumnName")?,
                new_column_type: s("newColumnDataType"),
                constraint_name: s("constraintName"),
            },
            "dropPrimaryKey" => Change::DropPrimaryKey { table: table()?, constraint_name: s("constraintName") },
            "dropUniqueConstraint" => {
                Change::DropUniqueConstraint { table: table()?, constraint_name: req("constraintName")? }
            }
            "dropAllForeignKeyConstraints" => {
                Change::DropAllForeignKeyConstraints { table: name("baseTableSchemaName", "baseTableName")? }
            }
            "mergeColumns" => Change::MergeColumns {
                table: table()?,
                column1: req("column1Name")?,
                join_string: s("joinString"),
                column2: req("column2Name")?,
                final_column: req("finalColumnName")?,
                final_type: req("finalColumnType")?,
            },
            "createProcedure" => {
                let (text, sum_text) = match s("path") {
                    Some(p) => {
                        let rel = bool_attr(n, "relativeToChangelogFile", path, Some(line))?.unwrap_or(false);
                        let file = if rel { join(parent(path), &p) } else { normalize(&p) };
                        let raw = self.read_text(&file, s("encoding").as_deref(), path, Some(line))?;
                        let expanded = self.props.expand(&raw, file_key);
                        (expanded.clone(), expanded)
                    }
                    None => {
                        let t = s("procedureText").or_else(|| n.text.clone()).unwrap_or_default();
                        (t.trim().to_string(), t)
                    }
                };
                if text.trim().is_empty() {
                    return Err(err("procedureText (or path) is required".into()));
                }
                let dbms = s("dbms");
                let sum = checksum::compute(&format!("{}:{}", default_sum(), checksum::sql(&sum_text)));
                let c = Change::CreateProcedure {
                    schema: s("schemaName"),
                    name: s("procedureName"),
                    text,
                    dbms: dbms.clone(),
                };
                let applies = expr::dbms_match(dbms.as_deref(), "postgresql");
                return Ok((c, applies.then_some(sum), description));
            }
            "dropProcedure" => Change::DropProcedure { procedure: name("schemaName", "procedureName")? },
            "loadData" | "loadUpdateData" => {
                let file_attr = req("file")?;
                let rel = bool_attr(n, "relativeToChangelogFile", path, Some(line))?.unwrap_or(false);
                let file = if rel { join(parent(path), &file_attr) } else { normalize(&file_attr) };
                let bytes = self.read_bytes(&file, path, Some(line))?;
                let comment = match s("commentLineStartsWith") {
                    None => Some("#".to_string()),
                    Some(c) if c.is_empty() => None,
                    Some(c) => Some(c),
                };
                let table_name = req("tableName")?;
                let inner = checksum::compute_bytes(&super::csv::checksum_bytes(&bytes, comment.as_deref()));
                let sum = checksum::compute(&format!("{table_name}:{inner}"));
                let content = decode(&bytes, s("encoding").as_deref()).map_err(|e| err(format!("{file}: {e}")))?;
                let separator = match s("separator").as_deref() {
                    None => ',',
                    Some("\\t") => '\t',
                    Some(x) => x.chars().next().ok_or_else(|| err("separator must not be empty".into()))?,
                };
                let quote = match s("quotchar") {
                    None => Some('"'),
                    Some(q) if q.trim().is_empty() => None,
                    Some(q) => q.chars().next(),
                };
                let update =
                    if ty == "loadUpdateData" { Some((list(req("primaryKey")?), flag("onlyUpdate"))) } else { None };
                let c = Change::LoadData(Box::new(LoadData {
                    table: Name { schema: s("schemaName"), name: table_name },
                    file: file_attr,
                    path: file.clone(),
                    // ExecutablePreparedStatementBase: LOB files are relative to the changelog.
                    base_dir: parent(path).to_string(),
                    content,
                    separator,
                    quote,
                    comment,
                    columns: load_columns,
                    update,
                    use_prepared: if ty == "loadData" {
                        s("usePreparedStatements").and_then(|v| canon_bool(&v)).map(|v| v == "true")
                    } else {
                        None
                    },
                }));
                if let Change::LoadData(l) = &c {
                    let left_out = l.rows_left_out();
                    if !left_out.is_empty() {
                        self.warnings.push(format!(
                            "{path}:{line}: {who}: loadData: the rows on lines {} of {} have no CLOB/BLOB value; Liquibase 4.28 leaves them out (it runs only the rows that need prepared statements), and so does pgplane; set usePreparedStatements=\"true\" to load every row",
                            left_out.iter().map(|l| l.to_string()).collect::<Vec<_>>().join(", "),
                            l.file
                        ));
                    }
                }
                return Ok((c, Some(sum), description));
            }
            "output" => {
                let target = s("target")
                    .map(|t| t.trim().to_string())
                    .filter(|t| !t.is_empty())
                    .unwrap_or_else(|| "STDERR".into());
                const TARGETS: [&str; 9] =
                    ["STDOUT", "STDERR", "DEBUG", "INFO", "WARN", "WARNING", "SEVERE", "FATAL", "ERROR"];
                if !TARGETS.iter().any(|t| t.eq_ignore_ascii_case(&target)) {
                    return Err(err(format!(
                        "attribute target: {target:?} is not an output target (Liquibase fails with \"Unknown target\"); use one of STDOUT, STDERR, DEBUG, INFO, WARN, FATAL"
                    )));
                }
                Change::Output {
                    message: s("message")
                        .filter(|m| !m.trim().is_empty())
                        .or_else(|| n.text.clone())
                        .map(|m| m.trim().to_string())
                        .unwrap_or_default(),
                    target,
                }
            }
            "empty" => Change::Empty,
            "stop" => Change::Stop {
                // StopChange.customLoadLogic: the element's text, when there is one, wins.
                message: n
                    .text
                    .clone()
                    .map(|m| m.trim().to_string())
                    .filter(|m| !m.is_empty())
                    .or_else(|| s("message"))
                    .map(|m| m.trim().to_string())
                    .filter(|m| !m.is_empty())
                    .unwrap_or_else(|| "Stop command in changelog file".into()),
            },
            "executeCommand" => {
                let mut args = Vec::new();
                for a in n.flat_children("args") {
                    if a.name == "arg" {
                        args.push(a.get("value").unwrap_or_default());
                    }
                }
                let os: Vec<String> = n.get("os").map(list).unwrap_or_default();
                if !os.is_empty() && !os.iter().any(|o| o.eq_ignore_ascii_case(std::env::consts::OS)) {
                    return Ok((Change::Empty, Some(default_sum()), description));
                }
                Change::ExecuteCommand { executable: req("executable")?, args, timeout: s("timeout") }
            }
            _ => return Err(err("is listed as supported but has no parser; this is a pgplane bug".into())),
        };
        Ok((change, Some(default_sum()), description))
    }
}

/// Liquibase's `Change.getDescription()`: the type, then every `…Name` (not schema or
/// catalog) and `path` attribute given, as `key=value`, sorted.
fn describe(ty: &str, n: &Node, params: &[Param]) -> String {
    let mut parts: Vec<String> = Vec::new();
    for (k, _, _) in params {
        let lower = k.to_ascii_lowercase();
        let wanted =
            (lower.ends_with("name") && !lower.contains("schema") && !lower.contains("catalog")) || lower == "path";
        if wanted {
            if let Some(v) = n.get(k) {
                parts.push(format!("{k}={v}"));
            }
        }
    }
    parts.sort();
    parts.dedup();
    if parts.is_empty() {
        ty.to_string()
    } else {
        format!("{ty} {}", parts.join(", "))
    }
}

/// The changes of the earlier changeset(s) `path::id::author` (a rollback's reference),
/// found as Liquibase's `getChangeSets` does: path, id and author ignoring case, for
/// PostgreSQL.
pub(crate) fn changes_of<'a>(
    earlier: impl IntoIterator<Item = &'a ChangeSet>,
    path: &str,
    id: &str,
    author: &str,
) -> Result<Vec<Change>, String> {
    let target = normalize(path);
    let found: Vec<&ChangeSet> = earlier
        .into_iter()
        .filter(|c| {
            c.id.eq_ignore_ascii_case(id)
                && c.author.eq_ignore_ascii_case(author)
                && normalize(&c.filename).eq_ignore_ascii_case(&target)
                && c.applies_to_postgresql()
        })
        .collect();
    if found.is_empty() {
        return Err(format!(
            "its rollback refers to changeset {target}::{id}::{author}, which is not defined before it; give the \
             id, author and path of an earlier changeset"
        ));
    }
    Ok(found.iter().flat_map(|c| c.changes.iter().cloned()).collect())
}

/// Adds a rollback's changes to what a changeset had (several `<rollback>`s add up, as in
/// Liquibase); an unusable part makes the whole rollback unusable.
pub(crate) fn add_rollback(so_far: Rollback, more: Result<Vec<Change>, ChangelogError>) -> Rollback {
    match (so_far, more) {
        (Rollback::Unusable(e), _) | (_, Err(e)) => Rollback::Unusable(e),
        (Rollback::Auto, Ok(more)) => Rollback::Changes(more),
        (Rollback::Changes(mut v), Ok(more)) => {
            v.extend(more);
            Rollback::Changes(v)
        }
    }
}

fn raw_sql(sql: &str) -> Change {
    Change::Sql(SqlChange {
        sql: sql.trim().to_string(),
        split_statements: true,
        strip_comments: false,
        end_delimiter: None,
        dbms: None,
    })
}

/// Decodes a file's bytes as Liquibase's `StreamUtil` does (a BOM wins over `encoding`).
pub(crate) fn decode(bytes: &[u8], encoding: Option<&str>) -> Result<String, String> {
    if let Some(rest) = bytes.strip_prefix(&[0xef, 0xbb, 0xbf]) {
        return String::from_utf8(rest.to_vec()).map_err(|e| format!("not valid UTF-8: {e}"));
    }
    let enc = encoding.map(|e| e.trim().to_ascii_uppercase().replace('_', "-")).unwrap_or_else(|| "UTF-8".into());
    match enc.as_str() {
        "UTF-8" | "UTF8" => String::from_utf8(bytes.to_vec())
            .map_err(|e| format!("not valid UTF-8 ({e}); give its encoding with the encoding attribute")),
        "ISO-8859-1" | "LATIN1" | "ISO8859-1" | "US-ASCII" | "ASCII" => {
            Ok(bytes.iter().map(|b| char::from(*b)).collect())
        }
        "WINDOWS-1252" | "CP1252" => Ok(bytes.iter().map(|b| cp1252(*b)).collect()),
        other => Err(format!("encoding {other} is not supported; use UTF-8, ISO-8859-1 or windows-1252")),
    }
}

fn cp1252(b: u8) -> char {
    const HIGH: [u16; 32] = [
        0x20ac, 0x81, 0x201a, 0x192, 0x201e, 0x2026, 0x2020, 0x2021, 0x2c6, 0x2030, 0x160, 0x2039, 0x152, 0x8d, 0x17d,
        0x8f, 0x90, 0x2018, 0x2019, 0x201c, 0x201d, 0x2022, 0x2013, 0x2014, 0x2dc, 0x2122, 0x161, 0x203a, 0x153, 0x9d,
        0x17e, 0x178,
    ];
    if (0x80..0xa0).contains(&b) {
        char::from_u32(u32::from(HIGH[usize::from(b - 0x80)])).unwrap_or('\u{fffd}')
    } else {
        char::from(b)
    }
}

/// Java `.properties` lines: `key=value`, `key: value` or `key value`; `#`/`!` comments.
fn java_properties(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut pending = String::new();
    for raw in text.lines() {
        let line = raw.trim_start();
        if pending.is_empty() && (line.is_empty() || line.starts_with('#') || line.starts_with('!')) {
            continue;
        }
        let continued = line.ends_with('\\') && !line.ends_with("\\\\");
        pending.push_str(if continued { &line[..line.len() - 1] } else { line });
        if continued {
            continue;
        }
        let l = std::mem::take(&mut pending);
        let sep = l.find(['=', ':']).or_else(|| l.find(char::is_whitespace));
        let (k, v) = match sep {
            Some(i) => (&l[..i], &l[i + 1..]),
            None => (l.as_str(), ""),
        };
        out.push((k.trim().to_string(), v.trim_start().replace("\\n", "\n").replace("\\t", "\t")));
    }
    out
}

fn sql_change(
    n: &Node,
    sql: String,
    strip_default: bool,
    err: &dyn Fn(String) -> ChangelogError,
) -> Result<SqlChange, ChangelogError> {
    let b = |k: &str, d: bool| -> Result<bool, ChangelogError> {
        match n.get(k) {
            None => Ok(d),
            Some(v) => canon_bool(&v).map(|v| v == "true").ok_or_else(|| err(format!("{k} must be true or false"))),
        }
    };
    Ok(SqlChange {
        sql,
        split_statements: b("splitStatements", true)?,
        strip_comments: b("stripComments", strip_default)?,
        end_delimiter: n.get("endDelimiter"),
        dbms: n.get("dbms"),
    })
}

pub(crate) fn canon_bool(v: &str) -> Option<String> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" => Some("true".into()),
        "false" => Some("false".into()),
        _ => None,
    }
}

/// A `BigInteger` written as Java's `toString` does (YAML may give `5.0`).
fn canon_bigint(v: &str) -> String {
    let t = v.trim();
    let t = t.strip_suffix(".0").unwrap_or(t);
    let (neg, digits) = match t.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return v.to_string();
    }
    let d = digits.trim_start_matches('0');
    let d = if d.is_empty() { "0" } else { d };
    if neg && d != "0" {
        format!("-{d}")
    } else {
        d.to_string()
    }
}

/// The attributes given, in Liquibase's canonical form, for the checksum.
fn canon_fields(
    n: &Node,
    spec: &[Param],
    err: &dyn Fn(String) -> ChangelogError,
) -> Result<Vec<(String, SVal)>, ChangelogError> {
    let mut out = Vec::new();
    for (k, kind, _) in spec {
        let Some(v) = n.get(k) else { continue };
        let v = match kind {
            P::Excluded | P::ExcludedBool => {
                if *kind == P::ExcludedBool && canon_bool(&v).is_none() {
                    return Err(err(format!("{k} must be true or false, not {v:?}")));
                }
                continue;
            }
            P::Bool => canon_bool(&v).ok_or_else(|| err(format!("{k} must be true or false, not {v:?}")))?,
            P::BigInt => {
                let c = canon_bigint(&v);
                if !c.trim_start_matches('-').bytes().all(|b| b.is_ascii_digit()) {
                    return Err(err(format!("{k} must be a whole number, not {v:?}")));
                }
                c
            }
            P::Text => v.trim().to_string(),
            P::Str => {
                if k.ends_with("Date") && n.yaml_dates.iter().any(|d| d == k) {
                    // snakeyaml reads an unquoted date as a timestamp at midnight.
                    format!("{v}T00:00:00")
                } else {
                    v
                }
            }
        };
        out.push((k.to_string(), SVal::Str(v)));
    }
    Ok(out)
}

/// `setValueNumeric`: a number without its parentheses, or (when Java cannot read it) a
/// computed value.
fn numeric_value(v: &str, float: bool) -> Value {
    let t = v.strip_prefix('(').map(|r| r.strip_suffix(')').unwrap_or(r)).unwrap_or(v);
    let starts_number = {
        let u = t.strip_prefix('-').unwrap_or(t);
        u.chars().next().is_some_and(|c| c.is_ascii_digit() || c == '.')
            && u.chars().next().is_some_and(|c| c != '.' || u.chars().nth(1).is_some_and(|d| d.is_ascii_digit()))
    };
    if starts_number {
        let t = if float && t.ends_with(".0") { t.trim_end_matches(".0") } else { t };
        Value::Numeric(t.to_string())
    } else {
        Value::Computed(v.to_string())
    }
}

fn date_value(v: &str) -> Value {
    match iso_date(v) {
        Some(d) => Value::Date(d),
        None => Value::Computed(v.to_string()),
    }
}

fn seq_value(v: &str, next: bool) -> Value {
    if next {
        Value::SequenceNext(None, v.to_string())
    } else {
        Value::SequenceCurrent(None, v.to_string())
    }
}

/// `addDefaultValue`'s value (its `defaultValue*` attributes, by Liquibase's priority).
fn default_value(n: &Node, err: &dyn Fn(String) -> ChangelogError) -> Result<Option<Value>, ChangelogError> {
    if let Some(v) = n.get("defaultValue") {
        return Ok(Some(Value::Text(v)));
    }
    if let Some(v) = n.get("defaultValueBoolean") {
        let b = canon_bool(&v).ok_or_else(|| err(format!("defaultValueBoolean must be true or false, not {v:?}")))?;
        return Ok(Some(Value::Boolean(b == "true")));
    }
    if let Some(v) = n.get("defaultValueNumeric") {
        return Ok(Some(numeric_value(&v, n.yaml_floats.iter().any(|k| k == "defaultValueNumeric"))));
    }
    if let Some(v) = n.get("defaultValueDate") {
        let v = if n.yaml_dates.iter().any(|k| k == "defaultValueDate") { format!("{v}T00:00:00") } else { v };
        return Ok(Some(date_value(&v)));
    }
    if let Some(v) = n.get("defaultValueComputed") {
        return Ok(Some(Value::Computed(v)));
    }
    if let Some(v) = n.get("defaultValueSequenceNext") {
        return Ok(Some(seq_value(&v, true)));
    }
    Ok(None)
}

/// A column as parsed: the typed column, its checksum fields, and its `loadData` view.
type ParsedColumn = (Column, Vec<(String, SVal)>, LoadColumn);

fn column(
    ctx: &mut Ctx,
    n: &Node,
    extra: &[Param],
    err: &dyn Fn(String) -> ChangelogError,
    path: &str,
    strict: bool,
) -> Result<ParsedColumn, ChangelogError> {
    let known = |k: &str| spec::COLUMN.iter().chain(extra).any(|(s, _, _)| *s == k);
    for (k, _) in &n.attrs {
        if !known(k) {
            if strict {
                return Err(err(format!("column attribute {k} is not supported; remove it")));
            }
            ctx.warnings.push(format!(
                "{path}: column key {k} is not a column attribute; Liquibase ignores it, so does pgplane"
            ));
        }
    }
    for c in &n.children {
        if c.name != "constraints" {
            return Err(err(format!("column element {} is not supported; remove it", c.name)));
        }
    }
    for (k, kind, h) in spec::COLUMN.iter().chain(extra) {
        if let spec::AttrHandling::Refused(why) = h {
            if let Some(v) = n.get(k) {
                if !(matches!(kind, P::Bool) && v.trim().eq_ignore_ascii_case("false")) {
                    return Err(err(format!("column attribute {k}: {why}")));
                }
            }
        }
    }
    let get = |k: &str| n.get(k);
    let is_float = |k: &str| n.yaml_floats.iter().any(|x| x == k);
    let is_date = |k: &str| n.yaml_dates.iter().any(|x| x == k);
    let boolean = |k: &str| -> Result<Option<bool>, ChangelogError> {
        match get(k) {
            None => Ok(None),
            Some(v) => canon_bool(&v)
                .map(|b| Some(b == "true"))
                .ok_or_else(|| err(format!("column {k} must be true or false, not {v:?}"))),
        }
    };
    // Values by Liquibase's load rules, then its priority (getValueObject).
    let value_text = get("value").or_else(|| n.text.clone().map(|t| t.trim().to_string()).filter(|t| !t.is_empty()));
    let mut computed_from: Option<(&str, String)> = None;
    let value_numeric = get("valueNumeric")
        .filter(|v| !v.eq_ignore_ascii_case("null"))
        .map(|v| numeric_value(&v, is_float("valueNumeric")));
    let value_date = get("valueDate").filter(|v| !v.eq_ignore_ascii_case("null")).map(|v| {
        let v = if is_date("valueDate") { format!("{v}T00:00:00") } else { v };
        date_value(&v)
    });
    let value_bool = boolean("valueBoolean")?;
    let mut value = None;
    if let Some(t) = value_text.clone() {
        value = Some(Value::Text(t));
    } else if let Some(b) = value_bool {
        value = Some(Value::Boolean(b));
    } else if let Some(v @ Value::Numeric(_)) = value_numeric.clone() {
        value = Some(v);
    } else if let Some(v @ Value::Date(_)) = value_date.clone() {
        value = Some(v);
    } else if let Some(Value::Computed(c)) = value_numeric.clone().or(value_date.clone()) {
        computed_from = Some(("valueComputed", c.clone()));
        value = Some(Value::Computed(c));
    }
    if value.is_none() {
        if let Some(c) = get("valueComputed") {
            value = Some(Value::Computed(c));
        } else if let Some(f) = get("valueClobFile") {
            let file = join(parent(path), &f);
            let text = ctx.read_text(&file, get("encoding").as_deref(), path, None)?;
            value = Some(Value::Text(text));
        } else if let Some(f) = get("valueBlobFile") {
            let file = join(parent(path), &f);
            let bytes = ctx.read_bytes(&file, path, None)?;
            value = Some(Value::Computed(format!("'\\x{}'::bytea", crate::ident::hex(&bytes))));
        } else if let Some(s) = get("valueSequenceNext") {
            value = Some(seq_value(&s, true));
        } else if let Some(s) = get("valueSequenceCurrent") {
            value = Some(seq_value(&s, false));
        }
    }
    let _ = computed_from;
    let mut auto_increment = boolean("autoIncrement")?.unwrap_or(false);
    let default = {
        let mut d = None;
        if let Some(v) = get("defaultValue") {
            d = Some(Value::Text(v));
        } else if let Some(v) = get("defaultValueBoolean") {
            match canon_bool(&v) {
                Some(b) => d = Some(Value::Boolean(b == "true")),
                None if v == "1" || v == "0" => d = Some(Value::Boolean(v == "1")),
                None => d = Some(Value::Computed(v)),
            }
        } else if let Some(v) = get("defaultValueNumeric").filter(|v| !v.eq_ignore_ascii_case("null")) {
            if v == "GENERATED_BY_DEFAULT" {
                auto_increment = true;
            } else {
                d = Some(numeric_value(&v, is_float("defaultValueNumeric")));
            }
        } else if let Some(v) = get("defaultValueDate").filter(|v| !v.eq_ignore_ascii_case("null")) {
            let v = if is_date("defaultValueDate") { format!("{v}T00:00:00") } else { v };
            d = Some(date_value(&v));
        } else if let Some(v) = get("defaultValueComputed") {
            d = Some(Value::Computed(v));
        } else if let Some(v) = get("defaultValueSequenceNext") {
            d = Some(seq_value(&v, true));
        }
        d
    };
    // Checksum fields: ColumnConfig's non-null fields, as loaded.
    let mut fields: Vec<(String, SVal)> = Vec::new();
    let mut put = |k: &str, v: String| fields.push((k.to_string(), SVal::Str(v)));
    for k in [
        "name",
        "type",
        "encoding",
        "remarks",
        "valueBlobFile",
        "valueClobFile",
        "valueComputed",
        "valueSequenceNext",
        "valueSequenceCurrent",
        "defaultValueConstraintName",
        "defaultValue",
        "defaultValueComputed",
        "defaultValueSequenceNext",
        "generationType",
        "header",
    ] {
        if let Some(v) = get(k) {
            if extra.iter().any(|(s, _, _)| *s == k) || spec::COLUMN.iter().any(|(s, _, _)| *s == k) {
                put(k, v);
            }
        }
    }
    for k in ["computed", "autoIncrement", "descending", "defaultOnNull", "allowUpdate"] {
        if let Some(b) = boolean(k)? {
            if extra.iter().any(|(s, _, _)| *s == k) || spec::COLUMN.iter().any(|(s, _, _)| *s == k) {
                put(k, b.to_string());
            }
        }
    }
    for k in ["startWith", "incrementBy", "position", "index"] {
        if let Some(v) = get(k) {
            if extra.iter().any(|(s, _, _)| *s == k) || spec::COLUMN.iter().any(|(s, _, _)| *s == k) {
                put(k, canon_bigint(&v));
            }
        }
    }
    for k in ["afterColumn", "beforeColumn"] {
        if let Some(v) = get(k) {
            if extra.iter().any(|(s, _, _)| *s == k) {
                put(k, v);
            }
        }
    }
    if let Some(t) = value_text {
        put("value", t);
    }
    if let Some(b) = value_bool {
        put("valueBoolean", b.to_string());
    }
    // The checksum has the number as read (YAML's `1.0` stays `1.0`); the SQL drops `.0`.
    match get("valueNumeric").filter(|v| !v.eq_ignore_ascii_case("null")).map(|v| numeric_value(&v, false)) {
        Some(Value::Numeric(x)) => put("valueNumeric", x),
        Some(Value::Computed(x)) if get("valueComputed").is_none() => put("valueComputed", x),
        _ => {}
    }
    match value_date {
        Some(Value::Date(x)) => put("valueDate", x),
        Some(Value::Computed(x)) if get("valueComputed").is_none() => put("valueComputed", x),
        _ => {}
    }
    match get("defaultValueNumeric").filter(|v| !v.eq_ignore_ascii_case("null") && v != "GENERATED_BY_DEFAULT") {
        Some(v) => match numeric_value(&v, false) {
            Value::Numeric(x) => put("defaultValueNumeric", x),
            _ if get("defaultValueComputed").is_none() => put("defaultValueComputed", v),
            _ => {}
        },
        None => {
            if get("defaultValueNumeric").as_deref() == Some("GENERATED_BY_DEFAULT") && get("autoIncrement").is_none() {
                put("autoIncrement", "true".into());
            }
        }
    }
    if let Some(v) = get("defaultValueDate").filter(|v| !v.eq_ignore_ascii_case("null")) {
        let v = if is_date("defaultValueDate") { format!("{v}T00:00:00") } else { v };
        match date_value(&v) {
            Value::Date(x) => put("defaultValueDate", x),
            Value::Computed(x) if get("defaultValueComputed").is_none() => put("defaultValueComputed", x),
            _ => {}
        }
    }
    if let Some(v) = get("defaultValueBoolean") {
        match canon_bool(&v) {
            Some(b) => put("defaultValueBoolean", b),
            None if get("defaultValueComputed").is_none() => put("defaultValueComputed", v),
            None => {}
        }
    }
    let constraints = match n.child("constraints") {
        Some(c) => {
            for (k, _) in &c.attrs {
                if !spec::CONSTRAINTS.iter().any(|(s, _, _)| s == k) {
                    return Err(err(format!("constraints attribute {k} is not supported; remove it")));
                }
            }
            let mut f = Vec::new();
            for (k, kind, _) in spec::CONSTRAINTS {
                if let Some(v) = c.get(k) {
                    let v = if *kind == P::Bool {
                        canon_bool(&v)
                            .ok_or_else(|| err(format!("constraints {k} must be true or false, not {v:?}")))?
                    } else {
                        v
                    };
                    f.push((k.to_string(), SVal::Str(v)));
                }
            }
            fields.push(("constraints".into(), SVal::Obj(f)));
            let flag = |k: &str| c.get(k).is_some_and(|v| v.eq_ignore_ascii_case("true"));
            Some(Constraints {
                nullable: c.get("nullable").map(|v| v.eq_ignore_ascii_case("true")),
                primary_key: flag("primaryKey"),
                primary_key_name: c.get("primaryKeyName"),
                unique: flag("unique"),
                unique_constraint_name: c.get("uniqueConstraintName"),
                foreign_key_name: c.get("foreignKeyName"),
                references: c.get("references"),
                referenced_table_schema: c.get("referencedTableSchemaName"),
                referenced_table: c.get("referencedTableName"),
                referenced_columns: c.get("referencedColumnNames"),
                delete_cascade: flag("deleteCascade"),
                deferrable: flag("deferrable"),
                initially_deferred: flag("initiallyDeferred"),
                check: c.get("checkConstraint"),
                primary_key_tablespace: c.get("primaryKeyTablespace"),
            })
        }
        None => None,
    };
    let name = get("name");
    let load = LoadColumn {
        name: name.clone(),
        header: get("header"),
        index: match get("index") {
            Some(i) => Some(i.trim().parse().map_err(|_| err(format!("column index must be a number, not {i:?}")))?),
            None => None,
        },
        load_type: get("type"),
        default_value: get("defaultValue")
            .or_else(|| get("defaultValueNumeric"))
            .or_else(|| get("defaultValueBoolean"))
            .or_else(|| get("defaultValueDate"))
            .or_else(|| get("defaultValueComputed")),
        allow_update: boolean("allowUpdate")?,
    };
    let is_load = extra.iter().any(|(s, _, _)| *s == "header");
    let name = match name {
        Some(n) => n,
        None if is_load => String::new(),
        None => return Err(err("every column needs a name".into())),
    };
    let col = Column {
        name,
        data_type: get("type"),
        value,
        default,
        auto_increment,
        start_with: get("startWith").map(|v| canon_bigint(&v)),
        increment_by: get("incrementBy").map(|v| canon_bigint(&v)),
        generation_type: get("generationType"),
        remarks: get("remarks"),
        descending: boolean("descending")?.unwrap_or(false),
        computed: boolean("computed")?.unwrap_or(false),
        constraints,
    };
    Ok((col, fields, load))
}

/// `modifySql` rewrites with their checksum parts (`None` for a dbms that excludes PostgreSQL:
/// Liquibase drops those before it computes the checksum).
fn modify_sql(
    n: &Node,
    path: &str,
    line: usize,
    who: &str,
    run: (&[String], Option<&str>),
) -> Result<Vec<(ModifySql, Option<String>)>, ChangelogError> {
    let err = |m: String| ChangelogError::new(path, Some(line), format!("{who}: modifySql: {m}"));
    check_attrs(n, &["dbms", "context", "contextFilter", "labels", "applyToRollback"], path, Some(line), "modifySql")?;
    // Liquibase's dbms, context and label filters drop a visitor that does not match the run
    // from the changeset: it neither rewrites the SQL nor counts in the checksum.
    let context = n.get("contextFilter").or_else(|| n.get("context")).filter(|c| !c.trim().is_empty());
    let labels = n.get("labels").filter(|l| !l.trim().is_empty());
    let applies = expr::dbms_match(n.get("dbms").as_deref(), "postgresql")
        && expr::contexts_match(context.as_deref(), run.0)
        && expr::labels_match(labels.as_deref(), run.1);
    let apply_to_rollback = bool_attr(n, "applyToRollback", path, Some(line))?.unwrap_or(false);
    let mut out = Vec::new();
    for c in &n.children {
        let get = |k: &str| c.get(k).unwrap_or_default();
        let (kind, fields): (ModifyKind, Vec<(String, SVal)>) = match c.name.as_str() {
            "prepend" => (ModifyKind::Prepend(get("value")), vec![("value".into(), SVal::Str(get("value")))]),
            "append" => (ModifyKind::Append(get("value")), vec![("value".into(), SVal::Str(get("value")))]),
            "replace" | "regExpReplace" => {
                let (r, w) = (get("replace"), get("with"));
                let f = vec![("replace".into(), SVal::Str(r.clone())), ("with".into(), SVal::Str(w.clone()))];
                if c.name == "replace" {
                    (ModifyKind::Replace { replace: r, with: w }, f)
                } else {
                    if regex::Regex::new(&r).is_err() {
                        return Err(err(format!(
                            "regExpReplace pattern {r:?} is not a regular expression pgplane can read"
                        )));
                    }
                    (ModifyKind::RegExpReplace { replace: r, with: w }, f)
                }
            }
            other => {
                return Err(err(format!(
                    "{other} is not a modifySql rewrite; use prepend, append, replace or regExpReplace"
                )))
            }
        };
        let mut fields = fields;
        fields.push(("applyToRollback".into(), SVal::Str(apply_to_rollback.to_string())));
        let sum = applies.then(|| checksum::compute(&checksum::serialize(&c.name, &fields)));
        if applies {
            out.push((ModifySql { kind, apply_to_rollback }, sum));
        }
    }
    Ok(out)
}

pub(crate) fn bool_attr(n: &Node, k: &str, path: &str, line: Option<usize>) -> Result<Option<bool>, ChangelogError> {
    match n.get(k) {
        None => Ok(None),
        Some(v) => canon_bool(&v)
            .map(|b| Some(b == "true"))
            .ok_or_else(|| ChangelogError::new(path, line, format!("{k} must be true or false, not {v:?}"))),
    }
}

fn check_attrs(n: &Node, allowed: &[&str], path: &str, line: Option<usize>, what: &str) -> Result<(), ChangelogError> {
    for (k, _) in &n.attrs {
        if !allowed.contains(&k.as_str()) {
            return Err(ChangelogError::new(path, line, format!("{what} attribute {k} is not supported; remove it")));
        }
    }
    Ok(())
}

pub(crate) fn on_fail(v: Option<String>, path: &str, line: usize) -> Result<OnFail, ChangelogError> {
    Ok(match v.as_deref().map(|s| s.trim().to_ascii_uppercase()).as_deref() {
        None | Some("HALT") => OnFail::Halt,
        Some("MARK_RAN") => OnFail::MarkRan,
        Some("CONTINUE") => OnFail::Continue,
        Some("WARN") => OnFail::Warn,
        Some(o) => {
            return Err(ChangelogError::new(
                path,
                Some(line),
                format!("onFail/onError {o} is unknown; use HALT, MARK_RAN, CONTINUE or WARN"),
            ))
        }
    })
}

fn preconditions(
    n: &Node,
    path: &str,
    line: usize,
    who: &str,
    props: &mut Props,
    file_key: &str,
) -> Result<Preconditions, ChangelogError> {
    check_attrs(
        n,
        &["onFail", "onError", "onFailMessage", "onErrorMessage", "onSqlOutput", "onUpdateSQL", "onUpdateSql"],
        path,
        Some(line),
        "preConditions",
    )?;
    let mut all = Vec::new();
    for c in &n.children {
        if ["onFail", "onError", "onFailMessage", "onErrorMessage", "onSqlOutput", "onUpdateSQL"]
            .contains(&c.name.as_str())
        {
            continue;
        }
        all.push(condition(c, path, c.line.unwrap_or(line), who, props, file_key)?);
    }
    Ok(Preconditions {
        on_fail: on_fail(n.get("onFail"), path, line)?,
        on_error: on_fail(n.get("onError"), path, line)?,
        on_fail_message: n.get("onFailMessage"),
        on_error_message: n.get("onErrorMessage"),
        condition: Condition::All(all),
        location: Location { file: path.to_string(), line },
    })
}

fn condition(
    n: &Node,
    path: &str,
    line: usize,
    who: &str,
    props: &mut Props,
    file_key: &str,
) -> Result<Condition, ChangelogError> {
    let err = |m: String| ChangelogError::new(path, Some(line), format!("{who}: precondition {}: {m}", n.name));
    let kids = |n: &Node, props: &mut Props| -> Result<Vec<Condition>, ChangelogError> {
        n.flat_children("preConditions")
            .into_iter()
            .map(|c| condition(c, path, c.line.unwrap_or(line), who, props, file_key))
            .collect()
    };
    let req = |k: &str| n.get(k).filter(|v| !v.trim().is_empty()).ok_or_else(|| err(format!("{k} is required")));
    let allow = |ks: &[&str]| check_attrs(n, ks, path, Some(line), &n.name);
    let cols = |v: Option<String>| -> Vec<String> {
        v.map(|v| v.split(',').map(|c| c.trim().to_string()).filter(|c| !c.is_empty()).collect()).unwrap_or_default()
    };
    Ok(match n.name.as_str() {
        "and" => Condition::All(kids(n, props)?),
        "or" => Condition::Any(kids(n, props)?),
        "not" => Condition::Not(kids(n, props)?),
        "tableExists" => {
            allow(&["tableName", "schemaName", "catalogName"])?;
            Condition::TableExists { schema: n.get("schemaName"), table: req("tableName")? }
        }
        "columnExists" => {
            allow(&["tableName", "schemaName", "columnName", "catalogName"])?;
            Condition::ColumnExists {
                schema: n.get("schemaName"),
                table: req("tableName")?,
                column: req("columnName")?,
            }
        }
        "viewExists" => {
            allow(&["viewName", "schemaName", "catalogName"])?;
            Condition::ViewExists { schema: n.get("schemaName"), view: req("viewName")? }
        }
        "sequenceExists" => {
            allow(&["sequenceName", "schemaName", "catalogName"])?;
            Condition::SequenceExists { schema: n.get("schemaName"), sequence: req("sequenceName")? }
        }
        "indexExists" => {
            allow(&["indexName", "tableName", "columnNames", "schemaName", "catalogName"])?;
            let index = n.get("indexName");
            let table = n.get("tableName");
            if index.is_none() && table.is_none() {
                return Err(err("indexName or tableName is required".into()));
            }
            Condition::IndexExists { schema: n.get("schemaName"), table, index, columns: cols(n.get("columnNames")) }
        }
        "primaryKeyExists" => {
            allow(&["primaryKeyName", "tableName", "schemaName", "catalogName"])?;
            let (table, name) = (n.get("tableName"), n.get("primaryKeyName"));
            if table.is_none() && name.is_none() {
                return Err(err("primaryKeyName or tableName is required".into()));
            }
            Condition::PrimaryKeyExists { schema: n.get("schemaName"), table, name }
        }
        "foreignKeyConstraintExists" => {
            allow(&["foreignKeyName", "foreignKeyTableName", "schemaName", "catalogName"])?;
            Condition::ForeignKeyExists {
                schema: n.get("schemaName"),
                table: n.get("foreignKeyTableName"),
                name: req("foreignKeyName")?,
            }
        }
        "uniqueConstraintExists" => {
            allow(&["constraintName", "tableName", "columnNames", "schemaName", "catalogName"])?;
            Condition::UniqueConstraintExists {
                schema: n.get("schemaName"),
                table: req("tableName")?,
                name: n.get("constraintName"),
                columns: cols(n.get("columnNames")),
            }
        }
        "rowCount" => {
            allow(&["tableName", "schemaName", "catalogName", "expectedRows"])?;
            let e = req("expectedRows")?;
            let expected = e.trim().parse().map_err(|_| err(format!("expectedRows must be a number, not {e:?}")))?;
            Condition::RowCount { schema: n.get("schemaName"), table: req("tableName")?, expected }
        }
        "tableIsEmpty" => {
            allow(&["tableName", "schemaName", "catalogName"])?;
            Condition::TableIsEmpty { schema: n.get("schemaName"), table: req("tableName")? }
        }
        "runningAs" => {
            allow(&["username"])?;
            Condition::RunningAs { username: req("username")? }
        }
        "dbms" => {
            allow(&["type"])?;
            Condition::Constant(expr::dbms_match(Some(&req("type")?), "postgresql"))
        }
        "changeLogPropertyDefined" => {
            allow(&["property", "value"])?;
            // Decided once the whole changelog is read: Liquibase checks it at run time,
            // when every property is known.
            let name = req("property")?;
            let want = n.get("value").map(|v| format!("={v}")).unwrap_or_default();
            Condition::SqlCheck { expected: PROPERTY_MARK.into(), sql: format!("{file_key}\u{0}{name}{want}") }
        }
        "changeSetExecuted" => {
            allow(&["id", "author", "changeLogFile"])?;
            Condition::ChangeSetExecuted {
                filename: n.get("changeLogFile").map(|f| normalize(&f)).unwrap_or_else(|| file_key.to_string()),
                id: req("id")?,
                author: req("author")?,
            }
        }
        "sqlCheck" => {
            allow(&["expectedResult", "sql"])?;
            let sql = n.get("sql").or_else(|| n.text.clone()).map(|s| s.trim().to_string());
            let sql = sql.filter(|s| !s.is_empty()).ok_or_else(|| err("the SQL to run is required".into()))?;
            Condition::SqlCheck { expected: n.get("expectedResult").unwrap_or_default(), sql }
        }
        "expectedQuotingStrategy" => {
            allow(&["strategy"])?;
            Condition::Constant(n.get("strategy").is_none_or(|s| s == "LEGACY"))
        }
        "customPrecondition" => {
            return Err(err(format!(
                "runs the Java class {}, which pgplane cannot run; write it as a sqlCheck",
                n.get("className").unwrap_or_default()
            )))
        }
        other => {
            return Err(ChangelogError::new(
                path,
                Some(line),
                format!("{who}: precondition {other} is not a Liquibase precondition pgplane knows"),
            ))
        }
    })
}
