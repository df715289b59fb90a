//! Liquibase "formatted SQL" changelogs (`--liquibase formatted sql`), and plain SQL files
//! included as changelogs (one changeset `raw` by `includeAll`, as Liquibase does).

use super::checksum;
use super::parse::{on_fail, Ctx};
use super::{Change, ChangeSet, ChangelogError, Condition, Preconditions, SqlChange};

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
                out.push(finish(ctx, p));
            }
            cur = Some(start(path, rest, ln)?);
            continue;
        }
        let Some(p) = cur.as_mut() else { continue };
        let who = format!("changeset {} (author {})", p.cs.id, p.cs.author);
        if let Some(rest) = directive(line, "rollback") {
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
        out.push(finish(ctx, p));
    }
    Ok(out)
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

fn finish(ctx: &Ctx, mut p: Pending) -> ChangeSet {
    let sql = ctx.expand(p.sql.trim());
    p.cs.checksum = checksum::changeset(&[checksum::sql(&sql)]);
    p.cs.changes.push(Change::Sql(SqlChange {
        sql,
        split_statements: p.split,
        strip_comments: p.strip,
        end_delimiter: p.delimiter,
        dbms: None,
    }));
    let rb = p.rollback.trim();
    if !rb.is_empty() {
        p.cs.rollback.push(Change::Sql(SqlChange {
            sql: ctx.expand(rb),
            split_statements: true,
            strip_comments: true,
            end_delimiter: None,
            dbms: None,
        }));
    }
    p.cs
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
