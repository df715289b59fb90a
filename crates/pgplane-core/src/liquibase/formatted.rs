//! Liquibase "formatted SQL" changelogs (`--liquibase formatted sql`), read line by line
//! with the same patterns as Liquibase 4.28's `AbstractFormattedChangeLogParser`: changeset
//! attributes are found anywhere on the `--changeset` line (so `-context:x` works too),
//! directives must start their line. Plain SQL files included as changelogs become one
//! changeset `raw` by `includeAll`, as Liquibase does.

use regex::Regex;

use super::checksum;
use super::parse::{changes_of, normalize, on_fail, Ctx, Inherit};
use super::{Change, ChangeSet, ChangelogError, Condition, Location, OnFail, Preconditions, Rollback, SqlChange};

/// A case-insensitive regex that must match the whole line (Java's `matches()`).
fn re(p: &str) -> Regex {
    // The patterns are constants; a bad one is a bug caught by the tests.
    Regex::new(&format!("(?i)^(?:{p})$")).unwrap_or_else(|_| Regex::new("^\u{0}$").unwrap_or_else(|_| unreachable!()))
}

struct Patterns {
    first_line: Regex,
    property: Regex,
    alt_property: Regex,
    changeset: Regex,
    alt_changeset_one: Regex,
    alt_changeset_no_info: Regex,
    rollback: Regex,
    alt_rollback: Regex,
    rollback_start: Regex,
    rollback_end: Regex,
    preconditions: Regex,
    alt_preconditions: Regex,
    precondition: Regex,
    invalid_empty_precondition: Regex,
    alt_precondition: Regex,
    comment: Regex,
    alt_comment_one: Regex,
    alt_comment_plural: Regex,
    valid_checksum: Regex,
    alt_valid_checksum: Regex,
    ignore_lines: Regex,
    alt_ignore_lines: Regex,
    alt_ignore: Regex,
}

fn patterns() -> &'static Patterns {
    static P: std::sync::OnceLock<Patterns> = std::sync::OnceLock::new();
    P.get_or_init(|| Patterns {
        first_line: re(r"\s*--\s*liquibase\s*formatted.*"),
        property: re(r"\s*--[\s]*property\s+(.*:.*)\s+(.*:.*).*"),
        alt_property: re(r"\s*?[-]+\s*property\s.*"),
        changeset: re(r#"\s*--[\s]*changeset\s+("[^"]+"|[^:]+):\s*("[^"]+"|\S+).*"#),
        alt_changeset_one: re(r"-[\s]*changeset\s.*"),
        alt_changeset_no_info: re(r"\s*--[\s]*changeset[\s]*.*"),
        rollback: re(r"\s*--[\s]*rollback (.*)"),
        alt_rollback: re(r"\s*-[\s]*rollback\s.*"),
        rollback_start: re(r"\s*/\*\s*liquibase\s*rollback\s*"),
        rollback_end: re(r".*\s*\*/\s*"),
        preconditions: re(r"\s*--[\s]*preconditions(.*)"),
        alt_preconditions: re(r"\s*-[\s]*preconditions\s.*"),
        precondition: re(r"\s*--[\s]*precondition\-([a-zA-Z0-9-]+) (.*)"),
        invalid_empty_precondition: re(r"\s*--[\s]*precondition\-([a-zA-Z0-9-]+)"),
        alt_precondition: re(r"\s*-[\s]*precondition(.*)"),
        comment: re(r"--[\s]*comment:? (.*)"),
        alt_comment_one: re(r"-[\s]*comment:? (.*)"),
        alt_comment_plural: re(r"--[\s]*comments:? (.*)"),
        valid_checksum: re(r"--[\s]*validCheckSum:? (.*)"),
        alt_valid_checksum: re(r"-[\s]*validCheckSum(.*)"),
        ignore_lines: re(r"--[\s]*ignoreLines:(\w+)"),
        alt_ignore_lines: re(r"-[\s]*?ignoreLines:(\w+).*"),
        alt_ignore: re(r"--[\s]*ignore:(\w+)"),
    })
}

/// `.*key:(value).*` anywhere on the line (the last occurrence, like Java's greedy match).
fn attr(line: &str, key: &str, value: &str) -> Option<String> {
    let r = super::regexes::get(&format!("(?i)^.*{key}:({value}).*$")).ok()?;
    r.captures(line).and_then(|c| c.get(1)).map(|m| m.as_str().to_string())
}

fn strip_quotes(s: &str) -> String {
    let t = s.trim();
    if t.len() >= 2 && t.starts_with('"') && t.ends_with('"') {
        t[1..t.len() - 1].to_string()
    } else {
        t.to_string()
    }
}

fn java_bool(v: Option<String>, default: bool) -> bool {
    v.map_or(default, |v| v.eq_ignore_ascii_case("true"))
}

struct Pending {
    cs: ChangeSet,
    sql: String,
    rollback: String,
    split: Option<bool>,
    strip: bool,
    delimiter: Option<String>,
    rollback_split: bool,
    rollback_delimiter: Option<String>,
}

pub(crate) fn parse(ctx: &mut Ctx, path: &str, src: &str, inherit: &Inherit) -> Result<Vec<ChangeSet>, ChangelogError> {
    let p = patterns();
    let first = src.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    if !p.first_line.is_match(first) {
        return Ok(vec![raw(path, src)]);
    }
    let mut logical: Option<String> = None;
    let mut out: Vec<ChangeSet> = Vec::new();
    let mut cur: Option<Pending> = None;
    let lines: Vec<&str> = src.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l)).collect();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        i += 1;
        let ln = i;
        let err = |m: String| ChangelogError::new(path, Some(ln), m);
        let file_key = logical.clone().unwrap_or_else(|| path.to_string());
        if p.property.is_match(line) {
            property(ctx, line, &file_key);
            continue;
        }
        if p.alt_property.is_match(line) {
            return Err(err("write properties as --property name:NAME value:VALUE".into()));
        }
        if p.first_line.is_match(line) {
            if let Some(l) = attr(line, "logicalFilePath", r"\S*") {
                logical = Some(normalize(&l));
            }
        }
        if let Some(c) = p.ignore_lines.captures(line) {
            let what = c.get(1).map_or("", |m| m.as_str());
            if what == "start" {
                while i < lines.len() {
                    let l = lines[i];
                    i += 1;
                    if let Some(e) = p.ignore_lines.captures(l) {
                        if e.get(1).is_some_and(|m| m.as_str() == "end") {
                            break;
                        }
                    } else if p.alt_ignore_lines.is_match(l) {
                        return Err(ChangelogError::new(path, Some(i), "write --ignoreLines:end"));
                    }
                }
                continue;
            }
            let n: usize =
                what.parse().map_err(|_| err("unknown ignoreLines syntax; use a number or start/end".into()))?;
            i += n;
            continue;
        }
        if p.alt_ignore_lines.is_match(line) || p.alt_ignore.is_match(line) {
            return Err(err("write --ignoreLines:<count|start>".into()));
        }
        if let Some(c) = p.changeset.captures(line) {
            if let Some(done) = cur.take() {
                out.push(finish(ctx, done, path, &out, false)?);
            }
            let author_group = c.get(1).map_or("", |m| m.as_str()).to_string();
            let id_group = c.get(2).map_or("", |m| m.as_str()).to_string();
            let exact = super::regexes::get(&format!(
                r"(?i)^\s*--[\s]*changeset\s+{}.*$",
                regex::escape(&format!("{author_group}:{id_group}"))
            ))
            .map_err(|e| err(format!("bad changeset line: {e}")))?;
            if !exact.is_match(line) {
                return Err(err("write --changeset AUTHOR:ID (no space after the colon)".into()));
            }
            cur = Some(start(ctx, path, line, ln, &author_group, &id_group, logical.as_deref(), inherit)?);
            continue;
        }
        let Some(pend) = cur.as_mut() else {
            if p.alt_changeset_one.is_match(line) || p.alt_changeset_no_info.is_match(line) {
                return Err(err("write --changeset AUTHOR:ID".into()));
            }
            if p.comment.is_match(line) {
                return Err(err("formatted SQL changelogs allow --comment only inside a changeset".into()));
            }
            continue;
        };
        if p.alt_changeset_one.is_match(line) || p.alt_changeset_no_info.is_match(line) {
            return Err(err("write --changeset AUTHOR:ID".into()));
        }
        let who = format!("changeset {} (author {})", pend.cs.id, pend.cs.author);
        if let Some(c) = p.comment.captures(line) {
            pend.cs.comment = c.get(1).map(|m| m.as_str().to_string());
        } else if p.alt_comment_one.is_match(line) || p.alt_comment_plural.is_match(line) {
            return Err(err(format!("{who}: write --comment TEXT")));
        } else if let Some(c) = p.valid_checksum.captures(line) {
            pend.cs.valid_checksums.push(c.get(1).map_or("", |m| m.as_str()).to_string());
        } else if p.alt_valid_checksum.is_match(line) {
            return Err(err(format!("{who}: write --validCheckSum CHECKSUM")));
        } else if let Some(c) = p.rollback.captures(line) {
            pend.rollback.push_str(c.get(1).map_or("", |m| m.as_str()));
            pend.rollback.push('\n');
        } else if p.alt_rollback.is_match(line) {
            return Err(err(format!("{who}: write --rollback SQL")));
        } else if p.rollback_start.is_match(line) {
            let mut closed = false;
            while i < lines.len() {
                let l = lines[i];
                i += 1;
                if p.rollback_end.is_match(l) {
                    let head = l.rsplit_once("*/").map_or("", |(h, _)| h);
                    if !head.trim().is_empty() {
                        pend.rollback.push_str(head);
                    }
                    closed = true;
                    break;
                }
                pend.rollback.push_str(l);
            }
            if !closed {
                return Err(err(format!("{who}: its `/* liquibase rollback` comment is not closed; end it with `*/`")));
            }
        } else if let Some(c) = p.preconditions.captures(line) {
            let body = c.get(1).map_or("", |m| m.as_str());
            let pre = pend.cs.preconditions.get_or_insert_with(|| empty_preconditions(path, ln));
            if let Some(v) = attr(body, "onFail", r"\w+") {
                pre.on_fail = on_fail(Some(v), path, ln)?;
            }
            if let Some(v) = attr(body, "onError", r"\w+") {
                pre.on_error = on_fail(Some(v), path, ln)?;
            }
        } else if p.alt_preconditions.is_match(line) {
            return Err(err(format!("{who}: write --preconditions onFail:… onError:…")));
        } else if let Some(c) = p.precondition.captures(line) {
            let name = c.get(1).map_or("", |m| m.as_str()).trim().to_string();
            let file_key = logical.clone().unwrap_or_else(|| path.to_string());
            let body = ctx.props.expand(c.get(2).map_or("", |m| m.as_str()).trim(), &file_key);
            let cond = match name.as_str() {
                "sql-check" => sql_check(&body).ok_or_else(|| err(format!("{who}: cannot read a sqlCheck precondition from {body:?}")))?,
                "table-exists" => {
                    let table = attr(&body, "table", r"\w+").ok_or_else(|| err(format!("{who}: precondition-table-exists needs table:NAME")))?;
                    Condition::TableExists { schema: attr(&body, "schema", r"\w+"), table }
                }
                "view-exists" => {
                    let view = attr(&body, "view", r"\w+").ok_or_else(|| err(format!("{who}: precondition-view-exists needs view:NAME")))?;
                    Condition::ViewExists { schema: attr(&body, "schema", r"\w+"), view }
                }
                other => return Err(err(format!("{who}: the {other:?} precondition is not supported in formatted SQL (Liquibase knows sql-check, table-exists, view-exists)"))),
            };
            let pre = pend.cs.preconditions.get_or_insert_with(|| empty_preconditions(path, ln));
            if let Condition::All(v) = &mut pre.condition {
                v.push(cond);
            }
        } else if p.alt_precondition.is_match(line) {
            return Err(err(format!("{who}: write --precondition-sql-check …")));
        } else if let Some(c) = p.invalid_empty_precondition.captures(line) {
            let name = c.get(1).map_or("", |m| m.as_str());
            return Err(err(format!("{who}: precondition {name} needs its parameters")));
        } else {
            pend.sql.push_str(line);
            pend.sql.push('\n');
        }
    }
    if let Some(done) = cur.take() {
        out.push(finish(ctx, done, path, &out, true)?);
    }
    Ok(out)
}

fn sql_check(body: &str) -> Option<Condition> {
    for pat in [
        r"^(?:expectedResult:)?(\w+) (.*)$",
        r"^(?:expectedResult:)?'([^']+)' (.*)$",
        r#"^(?:expectedResult:)?"([^"]+)" (.*)$"#,
    ] {
        let r = super::regexes::get(&format!("(?is){pat}")).ok()?;
        if let Some(c) = r.captures(body) {
            return Some(Condition::SqlCheck {
                expected: c.get(1).map_or("", |m| m.as_str()).to_string(),
                sql: c.get(2).map_or("", |m| m.as_str()).to_string(),
            });
        }
    }
    None
}

fn property(ctx: &mut Ctx, line: &str, file_key: &str) {
    let get = |k: &str, v: &str| attr(line, k, v);
    let name = get("name", r"\S+").map(|s| s.trim().to_string());
    let value = get("value", r"\S+");
    let context =
        get("contextFilter", r#"".*?"|\S*"#).filter(|c| !c.is_empty()).or_else(|| get("context", r#"".*?"|\S*"#));
    let labels = get("labels", r#"".*?"|\S*"#);
    let dbms = get("dbms", r"[^,][\w!,]+");
    let global = java_bool(get("global", r"\S+"), true);
    if let (Some(n), Some(v)) = (name, value) {
        let n = ctx.props.expand(&n, file_key);
        let v = ctx.props.expand(&v, file_key);
        let filters = (
            context.map(|c| ctx.props.expand(&strip_quotes(&c), file_key)),
            labels.map(|l| ctx.props.expand(&strip_quotes(&l), file_key)),
            dbms.map(|d| ctx.props.expand(d.trim(), file_key)),
        );
        ctx.props.set(&n, &v, filters, global, file_key);
    }
}

fn empty_preconditions(path: &str, line: usize) -> Preconditions {
    Preconditions {
        on_fail: OnFail::Halt,
        on_error: OnFail::Halt,
        on_fail_message: None,
        on_error_message: None,
        condition: Condition::All(Vec::new()),
        location: Location { file: path.to_string(), line },
    }
}

#[allow(clippy::too_many_arguments)]
fn start(
    ctx: &mut Ctx,
    path: &str,
    line: &str,
    ln: usize,
    author_group: &str,
    id_group: &str,
    logical: Option<&str>,
    inherit: &Inherit,
) -> Result<Pending, ChangelogError> {
    let file_key = logical.unwrap_or(path).to_string();
    let err = |m: String| ChangelogError::new(path, Some(ln), m);
    let get = |k: &str, v: &str| attr(line, k, v);
    let id = ctx.props.expand(&strip_quotes(id_group), &file_key);
    let author = ctx.props.expand(&strip_quotes(author_group), &file_key);
    let who = format!("changeset {id} (author {author})");
    if let Some(r) = get("runWith", r"[\w\$\{\}]+").map(|r| ctx.props.expand(&r, &file_key)) {
        if r != "jdbc" {
            return Err(err(format!(
                "{who}: runWith:{r} hands the SQL to another program; pgplane runs SQL itself (remove runWith)"
            )));
        }
    }
    if get("runWithSpoolFile", ".*").is_some() {
        return Err(err(format!("{who}: runWithSpoolFile is only for runWith; remove it")));
    }
    let context =
        get("contextFilter", r#"".*?"|\S*"#).filter(|c| !c.is_empty()).or_else(|| get("context", r#"".*?"|\S*"#));
    let context = context.map(|c| ctx.props.expand(&strip_quotes(&c), &file_key));
    let labels = get("labels", r#"".*?"|\S*"#).map(|l| ctx.props.expand(&strip_quotes(&l), &file_key));
    let logical_cs = get("logicalFilePath", r"\S*").filter(|l| !l.is_empty()).or_else(|| logical.map(str::to_string));
    let logical_cs = logical_cs.map(|l| normalize(&ctx.props.expand(&l, &file_key)));
    let dbms = get("dbms", r"[^,][\w!,]+").map(|d| ctx.props.expand(&d, &file_key));
    let ignore = get("ignore", r"\w*").map(|v| ctx.props.expand(&v, &file_key));
    let mut cs = ChangeSet::new(id, author, path, ln);
    cs.run_on_change = java_bool(get("runOnChange", r"\w+"), false);
    cs.run_always = java_bool(get("runAlways", r"\w+"), false);
    cs.run_in_transaction = java_bool(get("runInTransaction", r"\w+"), true);
    cs.fail_on_error = java_bool(get("failOnError", r"\w+"), true);
    cs.contexts = context;
    cs.labels = labels;
    cs.dbms = dbms;
    if let Some(l) = logical_cs {
        cs.filename = l;
    }
    cs.inherited_contexts = inherit.contexts.clone();
    cs.inherited_labels = inherit.labels.clone();
    if ignore.is_some_and(|v| v.eq_ignore_ascii_case("true")) || inherit.ignore {
        // Parsed, never run (no ledger row): marked by an impossible dbms.
        cs.dbms = Some("none".into());
    }
    Ok(Pending {
        cs,
        sql: String::new(),
        rollback: String::new(),
        split: get("splitStatements", r"\w+").map(|v| v.eq_ignore_ascii_case("true")),
        strip: java_bool(get("stripComments", r"\w+"), true),
        delimiter: get("endDelimiter", r"\S*"),
        rollback_split: java_bool(get("rollbackSplitStatements", r"\w+"), true),
        rollback_delimiter: get("rollbackEndDelimiter", r"\S*"),
    })
}

/// The changeset `p` ends here; `earlier` are the changesets of this file before it (a
/// `--rollback changesetId:` may name one).
fn finish(
    ctx: &mut Ctx,
    mut p: Pending,
    path: &str,
    earlier: &[ChangeSet],
    last: bool,
) -> Result<ChangeSet, ChangelogError> {
    let file_key = p.cs.filename.clone();
    let trimmed = p.sql.trim();
    if trimmed.is_empty() && !last {
        return Err(ChangelogError::new(
            path,
            Some(p.cs.location.line),
            format!(
                "no SQL for changeset {}::{}::{}; write its statements under the --changeset line",
                p.cs.filename, p.cs.id, p.cs.author
            ),
        ));
    }
    let sql = ctx.props.expand(trimmed, &file_key).trim().to_string();
    let mut delimiter = p.delimiter.clone();
    if last && delimiter.is_none() && sql.ends_with("\n/") {
        delimiter = Some("\n/$".into());
    }
    p.cs.checksum = checksum::changeset(&[checksum::sql(&sql)]);
    p.cs.changes.push(Change::Sql(SqlChange {
        sql,
        split_statements: p.split.unwrap_or(true),
        strip_comments: p.strip,
        end_delimiter: delimiter,
        dbms: None,
    }));
    p.cs.rollback = rollback(ctx, &p, &file_key, earlier);
    Ok(p.cs)
}

/// The changeset's `--rollback` lines (or `/* liquibase rollback */` block) as Liquibase
/// 4.28 reads them: none is automatic rollback; `empty…`/`not required…` runs nothing; a
/// text naming `changesetId:` runs that earlier changeset's changes; anything else is SQL.
/// A reference pgplane cannot resolve is [`Rollback::Unusable`]: only a rollback that would
/// run it fails, never `update`.
fn rollback(ctx: &mut Ctx, p: &Pending, file_key: &str, earlier_here: &[ChangeSet]) -> Rollback {
    let rb = p.rollback.trim();
    let lower = rb.to_ascii_lowercase();
    if rb.is_empty() {
        return Rollback::Auto;
    }
    if lower.starts_with("empty") || lower.starts_with("not required") {
        return Rollback::Changes(vec![Change::Empty]);
    }
    if lower.contains("changesetid") {
        let flat = rb.replace(['\n', '\r'], "");
        let value = |key: &str| {
            let lower = flat.to_ascii_lowercase();
            let at = lower.find(&format!("{key}:"))? + key.len() + 1;
            let v: String = flat[at..].chars().take_while(|c| !c.is_whitespace()).collect();
            Some(v).filter(|v| !v.is_empty())
        };
        let who = format!("changeset {} (author {})", p.cs.id, p.cs.author);
        let err = |m: String| Rollback::Unusable(ChangelogError::new(&p.cs.location.file, Some(p.cs.location.line), m));
        let (Some(id), Some(author)) = (value("changesetid"), value("changesetauthor")) else {
            return err(format!("{who}: a --rollback naming changesetId: needs changesetAuthor: too"));
        };
        let path = value("changesetpath").unwrap_or_else(|| p.cs.filename.clone());
        return match changes_of(ctx.changesets().iter().chain(earlier_here), &path, &id, &author) {
            Ok(changes) => Rollback::Changes(changes),
            Err(m) => err(format!("{who}: {m}")),
        };
    }
    Rollback::Changes(vec![Change::Sql(SqlChange {
        sql: ctx.props.expand(&p.rollback, file_key),
        split_statements: p.rollback_split,
        strip_comments: true,
        end_delimiter: p.rollback_delimiter.clone(),
        dbms: None,
    })])
}

/// A plain SQL file used as a changelog: one changeset, id `raw`, author `includeAll`, its
/// text run as one statement batch (Liquibase does not split it).
fn raw(path: &str, src: &str) -> ChangeSet {
    let sql = src.trim().to_string();
    ChangeSet {
        checksum: checksum::changeset(&[checksum::sql(&sql)]),
        changes: vec![Change::Sql(SqlChange {
            sql,
            split_statements: false,
            strip_comments: false,
            end_delimiter: None,
            dbms: None,
        })],
        ..ChangeSet::new("raw".into(), "includeAll".into(), path, 1)
    }
}
