//! Splitting an SQL script into statements the way Liquibase does for PostgreSQL
//! (`splitStatements`/`endDelimiter`), used for Liquibase `sql`/`sqlFile` changes and for
//! plain SQL migration files.
//!
//! The scanner knows PostgreSQL's lexical structure well enough not to split inside
//! single-quoted strings (including `E'…'` escapes), double-quoted identifiers, dollar-quoted
//! bodies (`$$…$$`, `$tag$…$tag$`), `--` line comments and nested `/* */` block comments.
//! Comments stay in the statement they belong to; statements that hold nothing but whitespace
//! and comments are dropped.

/// Splits `sql` into statements.
///
/// `delimiter`: `None` (or `Some(";")`) splits after every `;` and at lines that hold only
/// `GO` (any case), like Liquibase's default. Any other delimiter (Liquibase's `endDelimiter`,
/// e.g. `"GO"`, `"/"`, `"\n/"`, `"$$"`) splits only there: at a line that holds nothing but
/// the delimiter, or where the delimiter ends a line outside quotes and comments. The
/// delimiters themselves are not part of the returned statements, which are trimmed.
pub fn split(sql: &str, delimiter: Option<&str>) -> Vec<String> {
    let delim = delimiter.map(|d| d.trim_matches(|c: char| c == '\n' || c == '\r')).filter(|d| !d.trim().is_empty());
    let delim = delim.map(str::trim);
    let semicolon = delim.is_none_or(|d| d == ";");
    let mut out = Vec::new();
    let mut cur = String::new();
    let b = sql.as_bytes();
    let mut i = 0;
    let mut line_start = true;
    while i < b.len() {
        // A delimiter alone on its line (GO by default, the end delimiter otherwise).
        if line_start {
            let end = sql[i..].find('\n').map_or(sql.len(), |n| i + n);
            let line = sql[i..end].trim();
            let alone = match delim {
                Some(d) if d != ";" => line.eq_ignore_ascii_case(d),
                _ => line.eq_ignore_ascii_case("go"),
            };
            if alone {
                push(&mut out, &mut cur);
                i = end;
                continue;
            }
        }
        let c = b[i];
        line_start = c == b'\n';
        match c {
            b'\'' => i = copy_quoted(sql, i, b'\'', &mut cur),
            b'"' => i = copy_quoted(sql, i, b'"', &mut cur),
            b'-' if b.get(i + 1) == Some(&b'-') => {
                let end = sql[i..].find('\n').map_or(sql.len(), |n| i + n);
                cur.push_str(&sql[i..end]);
                i = end;
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let end = block_comment_end(b, i);
                cur.push_str(&sql[i..end]);
                i = end;
            }
            b'$' if dollar_tag(b, i).is_some() => {
                let tag_len = dollar_tag(b, i).unwrap_or(1);
                let tag = &sql[i..i + tag_len];
                let end = sql[i + tag_len..].find(tag).map_or(sql.len(), |n| i + tag_len + n + tag_len);
                cur.push_str(&sql[i..end]);
                i = end;
            }
            b';' if semicolon => {
                push(&mut out, &mut cur);
                i += 1;
            }
            _ => {
                if let Some(d) = delim.filter(|d| *d != ";") {
                    if sql[i..].starts_with(d) && rest_of_line_blank(sql, i + d.len()) && !d.is_empty() {
                        push(&mut out, &mut cur);
                        i += d.len();
                        continue;
                    }
                }
                let ch = sql[i..].chars().next().unwrap_or(' ');
                cur.push(ch);
                i += ch.len_utf8();
            }
        }
    }
    push(&mut out, &mut cur);
    out
}

/// Removes `--` and `/* */` comments outside quotes (Liquibase's `stripComments`).
pub fn strip_comments(sql: &str) -> String {
    let b = sql.as_bytes();
    let mut out = String::with_capacity(sql.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\'' => i = copy_quoted(sql, i, b'\'', &mut out),
            b'"' => i = copy_quoted(sql, i, b'"', &mut out),
            b'-' if b.get(i + 1) == Some(&b'-') => {
                i = sql[i..].find('\n').map_or(sql.len(), |n| i + n);
            }
            b'/' if b.get(i + 1) == Some(&b'*') => i = block_comment_end(b, i),
            b'$' if dollar_tag(b, i).is_some() => {
                let tag_len = dollar_tag(b, i).unwrap_or(1);
                let tag = &sql[i..i + tag_len];
                let end = sql[i + tag_len..].find(tag).map_or(sql.len(), |n| i + tag_len + n + tag_len);
                out.push_str(&sql[i..end]);
                i = end;
            }
            _ => {
                let ch = sql[i..].chars().next().unwrap_or(' ');
                out.push(ch);
                i += ch.len_utf8();
            }
        }
    }
    out
}

fn push(out: &mut Vec<String>, cur: &mut String) {
    let s = cur.trim();
    if !strip_comments(s).trim().is_empty() {
        out.push(s.to_string());
    }
    cur.clear();
}

fn rest_of_line_blank(sql: &str, from: usize) -> bool {
    sql[from..].split('\n').next().is_none_or(|r| r.trim().is_empty())
}

/// Copies a quoted string or identifier starting at `i` (doubled quotes stay inside; a
/// backslash escapes in `E'…'` strings) and returns the index after it.
fn copy_quoted(sql: &str, i: usize, q: u8, out: &mut String) -> usize {
    let b = sql.as_bytes();
    let backslash = q == b'\'' && i > 0 && matches!(b[i - 1], b'e' | b'E') && (i < 2 || !is_ident_byte(b[i - 2]));
    let mut j = i + 1;
    while j < b.len() {
        if backslash && b[j] == b'\\' {
            j += 2;
            continue;
        }
        if b[j] == q {
            if b.get(j + 1) == Some(&q) {
                j += 2;
                continue;
            }
            j += 1;
            break;
        }
        j += 1;
    }
    let j = j.min(b.len());
    out.push_str(&sql[i..j]);
    j
}

fn block_comment_end(b: &[u8], i: usize) -> usize {
    let mut depth = 0;
    let mut j = i;
    while j < b.len() {
        if b[j] == b'/' && b.get(j + 1) == Some(&b'*') {
            depth += 1;
            j += 2;
        } else if b[j] == b'*' && b.get(j + 1) == Some(&b'/') {
            depth -= 1;
            j += 2;
            if depth == 0 {
                return j;
            }
        } else {
            j += 1;
        }
    }
    b.len()
}

fn is_ident_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80
}

/// Length of a dollar-quote tag (`$$` or `$tag$`) starting at `i`, if one starts there.
fn dollar_tag(b: &[u8], i: usize) -> Option<usize> {
    if i > 0 && is_ident_byte(b[i - 1]) {
        return None; // `a$b` is part of an identifier; `$1` never reaches here as a tag
    }
    let mut j = i + 1;
    while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_' || b[j] >= 0x80) {
        j += 1;
    }
    if j < b.len() && b[j] == b'$' && !(j > i + 1 && b[i + 1].is_ascii_digit()) {
        Some(j + 1 - i)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn semicolons_outside_quotes_split() {
        let sql = "INSERT INTO t VALUES ('a;b', \"x;y\"); -- c;d\nSELECT $$ ; $$; SELECT $f$ ; $f$;\n/* ; /* ; */ ; */ SELECT 1;";
        assert_eq!(
            split(sql, None),
            vec![
                "INSERT INTO t VALUES ('a;b', \"x;y\")",
                "-- c;d\nSELECT $$ ; $$",
                "SELECT $f$ ; $f$",
                "/* ; /* ; */ ; */ SELECT 1"
            ]
        );
    }

    #[test]
    fn go_lines_and_end_delimiters() {
        assert_eq!(split("SELECT 1\nGO\nSELECT 2\ngo\n", None), vec!["SELECT 1", "SELECT 2"]);
        let body = "CREATE FUNCTION f() RETURNS int AS $$ SELECT 1; $$ LANGUAGE sql;\n/\nSELECT 2\n/";
        assert_eq!(
            split(body, Some("\n/")),
            vec!["CREATE FUNCTION f() RETURNS int AS $$ SELECT 1; $$ LANGUAGE sql;", "SELECT 2"]
        );
        assert_eq!(split("SELECT 1; SELECT 2\nGO", Some("GO")), vec!["SELECT 1; SELECT 2"]);
    }

    #[test]
    fn empty_and_comment_only_statements_are_dropped() {
        assert_eq!(split(";; -- nothing\n ; SELECT 1;\n-- trailing", None), vec!["SELECT 1"]);
        assert!(split("", None).is_empty());
    }

    #[test]
    fn escapes_and_positional_parameters() {
        assert_eq!(split(r"SELECT E'a\';b'; SELECT $1", None), vec![r"SELECT E'a\';b'", "SELECT $1"]);
        assert_eq!(strip_comments("SELECT '--x' -- y\n/* z */ FROM t"), "SELECT '--x' \n FROM t");
    }
}
