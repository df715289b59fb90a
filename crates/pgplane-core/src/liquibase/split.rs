//! SQL splitting and comment stripping exactly as Liquibase 4.28 does it
//! (`StringUtil.processMultiLineSQL` over the `SimpleSqlGrammar` tokenizer). The tokenizer
//! knows quotes (with backslash escapes) and comments but not PostgreSQL's dollar quotes:
//! `--` inside a `$$` body is a comment and is stripped, and `;` inside it ends a
//! statement unless a `BEGIN` … `END` pair is open. pgplane splits the same way so the same
//! statements reach the server.

/// One token: its text and whether it is whitespace or a comment.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Tok {
    text: String,
    kind: Kind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Space,
    Comment,
    Word,
    Other,
}

fn is_space(c: char) -> bool {
    matches!(
        c,
        ' ' | '\t' | '\n' | '\r' | '\u{85}' | '\u{a0}' | '\u{1680}' | '\u{180e}' | '\u{2000}'
            ..='\u{200d}' | '\u{2028}' | '\u{2029}' | '\u{202f}' | '\u{205f}' | '\u{2060}' | '\u{3000}' | '\u{feff}'
    )
}

fn ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '$' || c == '_' || (!c.is_ascii() && c.is_alphabetic())
}

fn ident_part(c: char) -> bool {
    ident_start(c) || c.is_ascii_digit() || c == '#' || c == '@'
}

/// The end of a quoted run starting at `i` (`c[i]` is the quote): `''`-style doubling and
/// backslash escapes; `None` when it never closes.
fn quoted_end(c: &[char], i: usize, q: char) -> Option<usize> {
    let mut j = i + 1;
    while j < c.len() {
        if c[j] == '\\' {
            if j + 1 < c.len() {
                j += 2;
                continue;
            }
            return None;
        }
        if c[j] == q {
            if c.get(j + 1) == Some(&q) {
                j += 2;
                continue;
            }
            return Some(j + 1);
        }
        j += 1;
    }
    None
}

fn simple_ident_end(c: &[char], i: usize) -> Option<usize> {
    if c.get(i).copied().is_some_and(ident_start) {
        let mut j = i + 1;
        while j < c.len() && ident_part(c[j]) {
            j += 1;
        }
        return Some(j);
    }
    if c.get(i) == Some(&'"') {
        let mut j = i + 1;
        while j < c.len() && !matches!(c[j], '\n' | '\r' | '"') {
            j += 1;
        }
        if j > i + 1 && c.get(j) == Some(&'"') {
            return Some(j + 1);
        }
    }
    None
}

fn digits_end(c: &[char], i: usize) -> usize {
    let mut j = i;
    while j < c.len() && c[j].is_ascii_digit() {
        j += 1;
    }
    j
}

fn exponent_end(c: &[char], i: usize) -> Option<usize> {
    if !matches!(c.get(i), Some('e' | 'E')) {
        return None;
    }
    let mut j = i + 1;
    if matches!(c.get(j), Some('+' | '-')) {
        j += 1;
    }
    let e = digits_end(c, j);
    (e > j).then_some(e)
}

/// The longest number token at `i`, if any.
fn number_end(c: &[char], i: usize) -> Option<usize> {
    let d = digits_end(c, i);
    let mut best = (d > i).then_some(d);
    // [digits] "." digits [exp]
    let after_int = d;
    if c.get(after_int) == Some(&'.') {
        let f = digits_end(c, after_int + 1);
        if f > after_int + 1 {
            let e = exponent_end(c, f).unwrap_or(f);
            best = best.max(Some(e));
        } else if d > i {
            // digits "." [exp]
            let e = exponent_end(c, after_int + 1).unwrap_or(after_int + 1);
            best = best.max(Some(e));
        }
    }
    if d > i {
        if let Some(e) = exponent_end(c, d) {
            best = best.max(Some(e));
        }
    }
    best
}

fn tokenize(sql: &str) -> Vec<Tok> {
    let c: Vec<char> = sql.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let push = |out: &mut Vec<Tok>, c: &[char], a: usize, b: usize, kind: Kind| {
        out.push(Tok { text: c[a..b].iter().collect(), kind });
    };
    while i < c.len() {
        let ch = c[i];
        if is_space(ch) {
            let mut j = i;
            while j < c.len() && is_space(c[j]) {
                j += 1;
            }
            push(&mut out, &c, i, j, Kind::Space);
            i = j;
            continue;
        }
        if ch == '-' && c.get(i + 1) == Some(&'-') {
            let mut j = i;
            while j < c.len() && c[j] != '\n' && c[j] != '\r' {
                j += 1;
            }
            push(&mut out, &c, i, j, Kind::Comment);
            i = j;
            continue;
        }
        if ch == '/' && c.get(i + 1) == Some(&'*') {
            let mut j = i + 2;
            let mut end = None;
            while j + 1 < c.len() {
                if c[j] == '*' && c[j + 1] == '/' {
                    end = Some(j + 2);
                    break;
                }
                j += 1;
            }
            if let Some(e) = end {
                push(&mut out, &c, i, e, Kind::Comment);
                i = e;
                continue;
            }
        }
        // Candidates; the longest wins, the first listed on a tie.
        let mut best: Option<(usize, Kind)> = None;
        let mut consider = |end: Option<usize>, kind: Kind| {
            if let Some(e) = end {
                if best.is_none_or(|(b, _)| e > b) {
                    best = Some((e, kind));
                }
            }
        };
        consider(number_end(&c, i), Kind::Other);
        // COMPLEX_IDENTIFIER: ident ( [\r\n ]* "." [\r\n ]* ident )+
        if let Some(mut e) = simple_ident_end(&c, i) {
            let mut complex = None;
            loop {
                let mut j = e;
                while matches!(c.get(j), Some('\r' | '\n' | ' ')) {
                    j += 1;
                }
                if c.get(j) != Some(&'.') {
                    break;
                }
                j += 1;
                while matches!(c.get(j), Some('\r' | '\n' | ' ')) {
                    j += 1;
                }
                match simple_ident_end(&c, j) {
                    Some(n) => {
                        e = n;
                        complex = Some(n);
                    }
                    None => break,
                }
            }
            consider(complex, Kind::Word);
        }
        if c.get(i).copied().is_some_and(ident_start) {
            consider(simple_ident_end(&c, i), Kind::Word);
        }
        // S_CHAR_LITERAL: an optional prefix, then a single- or double-quoted string.
        for prefix in ["", "U", "E", "N", "R", "B", "RB", "_utf8"] {
            let p: Vec<char> = prefix.chars().collect();
            if c.len() >= i + p.len() && c[i..i + p.len()] == p[..] {
                let q = i + p.len();
                if let Some(&qc) = c.get(q) {
                    if qc == '\'' || qc == '"' {
                        consider(quoted_end(&c, q, qc), Kind::Other);
                    }
                }
            }
        }
        if ch == '"' || ch == '`' || ch == '[' {
            let close = match ch {
                '[' => ']',
                x => x,
            };
            let mut j = i + 1;
            while j < c.len() && !matches!(c[j], '\n' | '\r') && c[j] != close {
                j += 1;
            }
            if j > i + 1 && c.get(j) == Some(&close) && !(ch == '[' && c[i + 1].is_ascii_digit()) {
                consider(Some(j + 1), Kind::Other);
            }
        }
        match best {
            Some((e, kind)) => {
                push(&mut out, &c, i, e, kind);
                i = e;
            }
            None => {
                push(&mut out, &c, i, i + 1, Kind::Other);
                i += 1;
            }
        }
    }
    out
}

/// `StringUtil.stripComments`: the text without comments, trimmed.
#[cfg(test)]
fn strip_comments(sql: &str) -> String {
    let s: String = tokenize(sql).into_iter().filter(|t| t.kind != Kind::Comment).map(|t| t.text).collect();
    s.trim().to_string()
}

fn merge_tokens(pieces: Vec<String>, delim: Option<&str>) -> Vec<String> {
    let Some(d) = delim else { return pieces };
    let mut out = Vec::new();
    let mut possible: Vec<String> = Vec::new();
    for p in pieces {
        if possible.is_empty() {
            if d.starts_with(p.as_str()) {
                possible.push(p);
            } else {
                out.push(p);
            }
        } else {
            let merged = format!("{}{p}", possible.concat());
            if d == merged {
                out.push(merged);
                possible.clear();
            } else if d.starts_with(merged.as_str()) {
                possible.push(p);
            } else {
                out.append(&mut possible);
                out.push(p);
            }
        }
    }
    out
}

fn is_delimiter(piece: &str, previous: Option<&str>, delim: Option<&str>) -> bool {
    match delim {
        None => {
            piece == ";"
                || ((piece.eq_ignore_ascii_case("go") || piece == "/") && previous.is_none_or(|p| p.ends_with('\n')))
        }
        Some(d) if d.chars().count() == 1 => {
            if d == "/" && previous.is_some_and(|p| !p.ends_with('\n')) {
                return false;
            }
            piece.eq_ignore_ascii_case(d)
        }
        Some(d) => {
            if piece.eq_ignore_ascii_case(d) {
                return true;
            }
            // `(previous + piece).matches("[\s\n\r]*" + delimiter)`: the delimiter is a regex.
            let text = format!("{}{piece}", previous.unwrap_or("null")).to_lowercase();
            match super::regexes::get(&format!(r"^(?s:[\s\n\r]*{})$", d.to_lowercase())) {
                Ok(re) => re.is_match(&text),
                Err(_) => false,
            }
        }
    }
}

/// `StringUtil.processMultiLineSQL(sql, stripComments, splitStatements, endDelimiter)`.
pub(crate) fn process(sql: &str, strip_comments: bool, split: bool, end_delimiter: Option<&str>) -> Vec<String> {
    let pieces: Vec<String> =
        tokenize(sql).into_iter().filter(|t| !(strip_comments && t.kind == Kind::Comment)).map(|t| t.text).collect();
    let tokens = merge_tokens(pieces, end_delimiter);
    let mut out = Vec::new();
    let mut current = String::new();
    let mut previous: Option<String> = None;
    let mut previous_delimiter = false;
    let mut in_clause = 0usize;
    for (i, piece) in tokens.iter().enumerate() {
        let next = tokens[i + 1..].iter().map(|t| t.trim()).find(|t| !t.is_empty());
        let next_is = |words: &[&str]| next.is_some_and(|n| words.iter().any(|w| n.eq_ignore_ascii_case(w)));
        if piece.eq_ignore_ascii_case("BEGIN")
            && !next_is(&["transaction", "trans", "tran"])
            && !next_is(&["dialog", "conversation", "distributed"])
        {
            in_clause += 1;
        }
        if piece.eq_ignore_ascii_case("END") && in_clause > 0 && !next_is(&["transaction", "trans", "tran"]) {
            in_clause -= 1;
        }
        if in_clause == 0 && split && is_delimiter(piece, previous.as_deref(), end_delimiter) {
            let t = current.trim();
            if !t.is_empty() {
                out.push(t.to_string());
            }
            current.clear();
            previous_delimiter = true;
        } else {
            if (!previous_delimiter || !piece.trim().is_empty()) && (!current.is_empty() || !piece.trim().is_empty()) {
                current.push_str(piece);
            }
            previous_delimiter = false;
        }
        previous = Some(piece.clone());
    }
    let t = current.trim();
    if !t.is_empty() {
        out.push(t.to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_like_liquibase() {
        assert_eq!(process("a; b;\n  c", false, true, None), vec!["a", "b", "c"]);
        assert_eq!(process("select 'x;y'; select 2", false, true, None), vec!["select 'x;y'", "select 2"]);
        // BEGIN … END keeps `;` together; `END;` then splits.
        assert_eq!(
            process("create function f() as $$ begin x; end; $$ language plpgsql;", false, true, None),
            vec!["create function f() as $$ begin x; end", "$$ language plpgsql"]
        );
        assert_eq!(process("a\nGO\nb", false, true, None), vec!["a", "b"]);
        assert_eq!(process("a -- c;\n;b", true, true, None), vec!["a", "b"]);
        assert_eq!(process("a;\nb", false, false, None), vec!["a;\nb"]);
        assert_eq!(process("x\n/\ny\n/", false, true, Some("\n/")), vec!["x", "y"]);
    }

    #[test]
    fn strips_comments_inside_dollar_quotes() {
        assert_eq!(strip_comments("select $$ -- not a comment for PostgreSQL\n$$"), "select $$ \n$$");
    }
}
