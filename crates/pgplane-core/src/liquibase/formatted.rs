//! Liquibase "formatted SQL" changelogs (`--liquibase formatted sql`), and plain SQL files
//! included as changelogs (one changeset `raw` by `includeAll`, as Liquibase does).

use super::checksum;
use super::parse::{changes_of, on_fail, Ctx};
use super::{Change, ChangeSet, ChangelogError, Condition, Preconditions, Rollback, SqlChange};

/// `--` then optional spaces then `word` (case-insensitive); returns the rest of the line.
fn directive<'a>(line: &'a str, word: &str) -> Option<&'a str> {
    let rest = line.trim_start().strip_prefix("--")?.trim_start();
    if rest.len() < word.len() || !rest[..word.len()].eq_ignore_ascii_case(word) {
        return None;
    }
    let after = &rest[word.len()..];
    // The directive word must end here (`--changeset` but not `--changesets`).
    if after.chars().next().is_some_and(|c| c.is_alphanumeric() || c == '-' || c == '_') {
        return None;
    }
    Some(after)
}

/// `key:value` / `key:"quoted value"` pairs.
fn attributes(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let Some(colon) = rest.find(':') else {
            return Err(format!("expected key:value, found {rest:?}"));
        };
        let key = rest[..colon].trim().to_string();
        if key.is_empty() || key.contains(char::is_whitespace) {
            return Err(format!("expected key:value, found {rest:?}"));
        }
        let after = &rest[colon + 1..];
        let (value, next) = if let Some(q) = after.strip_prefix('"') {
            match q.find('"') {
                Some(e) => (q[..e].to_string(), &q[e + 1..]),
                None => return Err(format!("unterminated quote in {rest:?}")),
            }
        } else {
            let e = after.find(char::is_whitespace).unwrap_or(after.len());
            (after[..e].to_string(), &after[e..])
        };
        out.push((key, value));
        rest = next.trim_start();
    }
    Ok(out)
}

struct Pending {
    cs: ChangeSet,
    sql: String,
    rollback: String,
    /// Inside a `/* liquibase rollback … */` block.
    in_rollback_block: bool,
    rollback_split: bool,
    rollback_delimiter: Option<String>,
    split: bool,
    strip: bool,
    delimiter: Option<String>,
}

pub(crate) fn parse(ctx: &mut Ctx, path: &str, src: &str) -> Result<Vec<ChangeSet>, ChangelogError> {
    let first = src.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    let formatted = directive(first, "liquibase").is_some_and(|r| r.trim().eq_ignore_ascii_case("formatted sql"));
    if !formatted {
        return Ok(vec![raw(path, src)]);
    }
    let mut out = Vec::new();
    let mut cur: Option<Pending> = None;
    for (i, line) in src.lines().enumerate() {
        let ln = i + 1;
        let err = |m: String| ChangelogError::new(path, Some(ln), m);
        if directive(line, "liquibase").is_some() {
            continue;
        }
        if let Some(rest) = directive(line, "property") {
            let a = attributes(rest).map_err(|e| err(format!("--property: {e}")))?;
            let get = |k: &str| a.iter().find(|(x, _)| x == k).map(|(_, v)| v.clone());
            let (Some(n), Some(v)) = (get("name"), get("value")) else {
                return Err(err("--property needs name:… value:…".into()));
            };
            let v = ctx.expand(&v);
            ctx.set_property(&n, &v);
            continue;
        }
        if let Some(rest) = directive(line, "changeset") {
            if let Some(p) = cur.take() {
                out.push(finish(ctx, p, &out));
            }
            cur = Some(start(path, rest, ln)?);
            continue;
        }
        let Some(p) = cur.as_mut() else { continue };
        let who = format!("changeset {} (author {})", p.cs.id, p.cs.author);
        if p.in_rollback_block {
            // Until a line ending in `*/`; the text before it belongs to the rollback.
            match line.trim_end().strip_suffix("*/") {
                Some(last) => {
                    p.rollback.push_str(last);
                    p.in_rollback_block = false;
                }
                None => p.rollback.push_str(line),
            }
            p.rollback.push('\n');
        } else if is_rollback_block_start(line) {
            p.in_rollback_block = true;
        } else if let Some(rest) = directive(line, "rollback") {
            p.rollback.push_str(rest.trim_start());
            p.rollback.push('\n');
        } else if let Some(rest) = directive(line, "comment") {
            let c = rest.trim_start().strip_prefix(':').unwrap_or(rest).trim();
            p.cs.comment = Some(c.to_string());
        } else if let Some(rest) = directive(line, "validCheckSum") {
            let c = rest.trim_start().strip_prefix(':').unwrap_or(rest).trim();
            p.cs.valid_checksums.push(c.to_string());
        } else if let Some(rest) = directive(line, "preconditions") {
            let a = attributes(rest).map_err(|e| err(format!("{who}: --preconditions: {e}")))?;
            let pre = p.cs.preconditions.get_or_insert_with(empty_preconditions);
            for (k, v) in a {
                match k.as_str() {
                    "onFail" => pre.on_fail = on_fail(Some(v), path, ln)?,
                    "onError" => pre.on_error = on_fail(Some(v), path, ln)?,
                    "onFailMessage" => pre.on_fail_message = Some(v),
                    "onErrorMessage" => {}
                    _ => return Err(err(format!("{who}: --preconditions attribute {k} is not supported"))),
                }
            }
        } else if let Some(rest) = directive(line, "precondition-sql-check") {
            let rest = rest.trim();
            let Some(after) = rest.strip_prefix("expectedResult:") else {
                return Err(err(format!("{who}: write --precondition-sql-check expectedResult:VALUE SQL")));
            };
            let (expected, sql) = if let Some(q) = after.strip_prefix('"') {
                let e = q.find('"').ok_or_else(|| err("unterminated quote".into()))?;
                (q[..e].to_string(), q[e + 1..].trim().to_string())
            } else {
                let e = after.find(char::is_whitespace).unwrap_or(after.len());
                (after[..e].to_string(), after[e..].trim().to_string())
            };
            if sql.is_empty() {
                return Err(err(format!("{who}: --precondition-sql-check needs the SQL after expectedResult")));
            }
            push_condition(&mut p.cs, Condition::SqlCheck { expected, sql: ctx.expand(&sql) });
        } else if let Some(rest) = directive(line, "precondition-table-exists") {
            let a = attributes(rest).map_err(|e| err(format!("{who}: --precondition-table-exists: {e}")))?;
            let get = |k: &str| a.iter().find(|(x, _)| x == k).map(|(_, v)| v.clone());
            let table =
                get("table").ok_or_else(|| err(format!("{who}: --precondition-table-exists needs table:NAME")))?;
            push_condition(&mut p.cs, Condition::TableExists { schema: get("schema"), table });
        } else if let Some(rest) = directive(line, "precondition-column-exists") {
            let a = attributes(rest).map_err(|e| err(format!("{who}: --precondition-column-exists: {e}")))?;
            let get = |k: &str| a.iter().find(|(x, _)| x == k).map(|(_, v)| v.clone());
            let (Some(table), Some(column)) = (get("table"), get("column")) else {
                return Err(err(format!("{who}: --precondition-column-exists needs table:NAME column:NAME")));
            };
            push_condition(&mut p.cs, Condition::ColumnExists { schema: get("schema"), table, column });
        } else if directive(line, "precondition").is_some()
            || line.trim_start().to_ascii_lowercase().starts_with("--precondition-")
        {
            return Err(err(format!(
                "{who}: this precondition is not supported; use precondition-sql-check, precondition-table-exists or precondition-column-exists"
            )));
        } else {
            p.sql.push_str(line);
            p.sql.push('\n');
        }
    }
    if let Some(p) = cur.take() {
        if p.in_rollback_block {
            return Err(ChangelogError::new(
                path,
                Some(p.cs.location.line),
                format!(
                    "changeset {} (author {}): its `/* liquibase rollback` comment is not closed; end it with `*/`",
                    p.cs.id, p.cs.author
                ),
            ));
        }
        out.push(finish(ctx, p, &out));
    }
    Ok(out)
}

/// `/* liquibase rollback` alone on a line (any case and spacing) opens a rollback block.
fn is_rollback_block_start(line: &str) -> bool {
    let Some(rest) = line.trim().strip_prefix("/*") else { return false };
    let words: Vec<String> = rest.split_whitespace().map(str::to_ascii_lowercase).collect();
    words == ["liquibase", "rollback"] || words == ["liquibaserollback"]
}

fn empty_preconditions() -> Preconditions {
    Preconditions {
        on_fail: super::OnFail::Halt,
        on_error: super::OnFail::Halt,
        on_fail_message: None,
        condition: Condition::All(Vec::new()),
    }
}

fn push_condition(cs: &mut ChangeSet, c: Condition) {
    let pre = cs.preconditions.get_or_insert_with(empty_preconditions);
    if let Condition::All(v) = &mut pre.condition {
        v.push(c);
    }
}

fn start(path: &str, rest: &str, ln: usize) -> Result<Pending, ChangelogError> {
    let err = |m: String| ChangelogError::new(path, Some(ln), m);
    let rest = rest.trim();
    let (head, attrs) = rest.split_at(rest.find(char::is_whitespace).unwrap_or(rest.len()));
    let Some((author, id)) = head.split_once(':').filter(|(a, i)| !a.is_empty() && !i.is_empty()) else {
        return Err(err(format!("--changeset needs author:id, found {head:?}")));
    };
    let (author, id) = (author.trim_matches('"').to_string(), id.to_string());
    let who = format!("changeset {id} (author {author})");
    let attrs = attributes(attrs).map_err(|e| err(format!("{who}: {e}")))?;
    let mut p = Pending {
        cs: ChangeSet::new(id, author, path, ln),
        sql: String::new(),
        rollback: String::new(),
        in_rollback_block: false,
        rollback_split: true,
        rollback_delimiter: None,
        split: true,
        strip: true,
        delimiter: None,
    };
    for (k, v) in attrs {
        let b = || match v.to_ascii_lowercase().as_str() {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err(err(format!("{who}: {k} must be true or false, not {v:?}"))),
        };
        match k.as_str() {
            "runAlways" => p.cs.run_always = b()?,
            "runOnChange" => p.cs.run_on_change = b()?,
            "failOnError" => p.cs.fail_on_error = b()?,
            "runInTransaction" => p.cs.run_in_transaction = b()?,
            "splitStatements" => p.split = b()?,
            "stripComments" => p.strip = b()?,
            "endDelimiter" => p.delimiter = Some(v),
            "rollbackSplitStatements" => p.rollback_split = b()?,
            "rollbackEndDelimiter" => p.rollback_delimiter = Some(v),
            "context" | "contextFilter" => p.cs.contexts = Some(v),
            "labels" => p.cs.labels = Some(v),
            "dbms" => p.cs.dbms = Some(v),
            "logicalFilePath" => p.cs.filename = v,
            "created" => {}
            _ => {
                return Err(err(format!(
                    "{who}: attribute {k} is not supported; use runAlways, runOnChange, failOnError, runInTransaction, splitStatements, stripComments, endDelimiter, context, labels, dbms or logicalFilePath"
                )))
            }
        }
    }
    Ok(p)
}

fn finish(ctx: &Ctx, mut p: Pending, earlier: &[ChangeSet]) -> ChangeSet {
    p.cs.rollback = rollback(ctx, &p, earlier);
    let sql = ctx.expand(p.sql.trim());
    p.cs.checksum = checksum::changeset(&[checksum::sql(&sql)]);
    p.cs.changes.push(Change::Sql(SqlChange {
        sql,
        split_statements: p.split,
        strip_comments: p.strip,
        end_delimiter: p.delimiter,
        dbms: None,
    }));
    p.cs
}

/// The changeset's `--rollback` lines as Liquibase 4.28 reads them: none is automatic
/// rollback; `empty…`/`not required…` runs nothing; a text naming `changesetId:` runs that
/// earlier changeset's changes; anything else is SQL.
fn rollback(ctx: &Ctx, p: &Pending, earlier_here: &[ChangeSet]) -> Rollback {
    let rb = p.rollback.trim();
    let lower = rb.to_ascii_lowercase();
    if rb.is_empty() {
        return Rollback::Auto;
    }
    if lower.starts_with("empty") || lower.starts_with("not required") {
        return Rollback::Changes(Vec::new());
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
        let path = value("changesetpath").unwrap_or_else(|| p.cs.location.file.clone());
        let earlier: Vec<ChangeSet> = ctx.changesets().iter().chain(earlier_here).cloned().collect();
        return match changes_of(&earlier, &path, &id, &author) {
            Ok(changes) => Rollback::Changes(changes),
            Err(m) => err(format!("{who}: {m}")),
        };
    }
    Rollback::Changes(vec![Change::Sql(SqlChange {
        sql: ctx.expand(rb),
        split_statements: p.rollback_split,
        strip_comments: true,
        end_delimiter: p.rollback_delimiter.clone(),
        dbms: None,
    })])
}

/// A plain SQL file used as a changelog: one changeset, id `raw`, author `includeAll`.
fn raw(path: &str, src: &str) -> ChangeSet {
    let sql = src.trim().to_string();
    ChangeSet {
        checksum: checksum::changeset(&[checksum::sql(&sql)]),
        changes: vec![Change::Sql(SqlChange {
            sql,
            split_statements: true,
            strip_comments: false,
            end_delimiter: None,
            dbms: None,
        })],
        ..ChangeSet::new("raw".into(), "includeAll".into(), path, 1)
    }
}
