//! Identifier rules: the safe alphabet for user-given names, PostgreSQL's 63-byte
//! limit, and quoting. Every identifier and literal pgplane sends goes through here.

use sha2::{Digest, Sha256};

/// PostgreSQL's `NAMEDATALEN - 1`: longer identifiers are silently truncated by the server.
pub const MAX_IDENT_BYTES: usize = 63;

/// Length of the hash suffix `_` + 8 hex digits appended to shortened names.
const HASH_SUFFIX_LEN: usize = 9;

/// The safe alphabet for environment, module and tenant names:
/// a lowercase ASCII letter, then lowercase letters, digits or `_`, at most 63 bytes, and
/// not starting with `pg_` (PostgreSQL's prefix for its own roles, schemas and catalogs).
pub fn check_name(what: &str, name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    match chars.next() {
        None => return Err(format!("{what} name is empty")),
        Some(c) if !c.is_ascii_lowercase() => {
            return Err(format!(
                "{what} name {name:?} must start with a lowercase letter a-z \
                 (allowed: a-z, 0-9 and _, starting with a letter, at most 63 bytes)"
            ))
        }
        Some(_) => {}
    }
    if let Some(bad) = chars.find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')) {
        return Err(format!(
            "{what} name {name:?} contains {bad:?}; allowed are a-z, 0-9 and _ \
             (starting with a letter, at most 63 bytes)"
        ));
    }
    if name.len() > MAX_IDENT_BYTES {
        return Err(format!("{what} name {name:?} is {} bytes; at most {MAX_IDENT_BYTES} are allowed", name.len()));
    }
    if name.starts_with("pg_") {
        return Err(format!(
            "{what} name {name:?} starts with pg_, which PostgreSQL reserves for its own objects; choose another name"
        ));
    }
    Ok(())
}

/// Makes a computed name fit PostgreSQL's 63-byte limit deterministically.
///
/// Names that fit are returned unchanged. Longer names keep their first 54 bytes and get
/// `_` plus the first 8 hex digits of the SHA-256 of the full name, so two long names that
/// share a prefix still differ, and the same input always gives the same output.
pub fn fit_identifier(name: &str) -> String {
    if name.len() <= MAX_IDENT_BYTES {
        return name.to_string();
    }
    let mut cut = MAX_IDENT_BYTES - HASH_SUFFIX_LEN;
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    let hex = hex(&Sha256::digest(name.as_bytes())[..4]);
    let prefix = name[..cut].trim_end_matches('_');
    format!("{prefix}_{hex}")
}

/// [`fit_identifier`], keeping `suffix` (when the name ends with it and it is short) at the
/// end of a shortened name: the first bytes, `_`, 8 hex digits of the full name's SHA-256,
/// then the suffix. Same input, same name.
pub fn fit_identifier_keeping(name: &str, suffix: &str) -> String {
    if name.len() <= MAX_IDENT_BYTES || suffix.is_empty() || suffix.len() > 20 || !name.ends_with(suffix) {
        return fit_identifier(name);
    }
    let head = &name[..name.len() - suffix.len()];
    let mut cut = MAX_IDENT_BYTES - HASH_SUFFIX_LEN - suffix.len();
    while !head.is_char_boundary(cut.min(head.len())) {
        cut -= 1;
    }
    let cut = cut.min(head.len());
    let hex = hex(&Sha256::digest(name.as_bytes())[..4]);
    let prefix = head[..cut].trim_end_matches('_');
    format!("{prefix}_{hex}{suffix}")
}

/// Lowercase hex of bytes (digests in names and checksums).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Quotes an identifier for SQL: `"` around it, inner `"` doubled. Always quoting keeps
/// case and reserved words exactly as written.
pub fn quote_ident(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    out.push('"');
    for c in name.chars() {
        if c == '"' {
            out.push('"');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Quotes a string literal for SQL, correct whatever `standard_conforming_strings` is (a
/// tenant may turn it off for its database or role): `'` around it, inner `'` doubled,
/// and a value holding a backslash is written as an escape string `E'…'` with the
/// backslashes doubled, as libpq's `PQescapeLiteral` does. (A plain `'…'` string with a
/// backslash reads differently when the setting is off: `'a\'` would not even end.)
/// Used only for statements that cannot take bind parameters (utility commands such as
/// `CREATE ROLE ... PASSWORD`).
pub fn quote_literal(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 3);
    if value.contains('\\') {
        out.push('E');
    }
    out.push('\'');
    for c in value.chars() {
        if c == '\'' || c == '\\' {
            out.push(c);
        }
        out.push(c);
    }
    out.push('\'');
    out
}

/// Parameters that PostgreSQL reads as a list of identifiers and quotes element by element
/// (`GUC_LIST_QUOTE`): `SET search_path = 'a, b'` would set one schema named `a, b`, so
/// their values are sent as one literal per element.
pub const LIST_SETTINGS: &[&str] =
    &["search_path", "temp_tablespaces", "local_preload_libraries", "session_preload_libraries"];

/// Splits `"$user", registry, public` into its names the way PostgreSQL's
/// `SplitIdentifierString` does: comma-separated, whitespace around names ignored, a
/// double-quoted name kept as is (`""` inside is one `"`), an unquoted one lowercased.
pub fn split_identifier_list(s: &str) -> Result<Vec<String>, String> {
    let is_space = |c: char| matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c');
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.next_if(|c| is_space(*c)).is_some() {}
        let mut name = String::new();
        if chars.next_if_eq(&'"').is_some() {
            loop {
                match chars.next() {
                    None => return Err(format!("unclosed double quote in {s:?}")),
                    Some('"') if chars.next_if_eq(&'"').is_some() => name.push('"'),
                    Some('"') => break,
                    Some(c) => name.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| *c != ',' && !is_space(*c)) {
                name.push(c.to_ascii_lowercase());
            }
        }
        if name.is_empty() {
            return Err(format!("{s:?} has an empty name; write names separated by commas"));
        }
        out.push(name);
        while chars.next_if(|c| is_space(*c)).is_some() {}
        match chars.next() {
            None => return Ok(out),
            Some(',') => {}
            Some(c) => return Err(format!("unexpected {c:?} in {s:?}; separate names with commas")),
        }
    }
}

/// The right side of `SET name = …` for a setting's value: one literal, or for
/// [`LIST_SETTINGS`] one literal per name (`'$user', 'registry', 'public'`), which
/// PostgreSQL stores as `"$user", registry, public`.
pub fn setting_value_sql(name: &str, value: &str) -> String {
    if LIST_SETTINGS.contains(&name) {
        if let Ok(names) = split_identifier_list(value) {
            return names.iter().map(|n| quote_literal(n)).collect::<Vec<_>>().join(", ");
        }
    }
    quote_literal(value)
}

/// Whether a setting's stored value (as in `pg_db_role_setting.setconfig`) is the wanted
/// one: the same text, or for [`LIST_SETTINGS`] the same names.
pub fn same_setting_value(name: &str, stored: &str, wanted: &str) -> bool {
    if LIST_SETTINGS.contains(&name) {
        if let (Ok(a), Ok(b)) = (split_identifier_list(stored), split_identifier_list(wanted)) {
            return a == b;
        }
    }
    stored == wanted
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn safe_alphabet() {
        assert!(check_name("module", "registry").is_ok());
        assert!(check_name("module", "a_b9").is_ok());
        for bad in ["", "Registry", "9lives", "_x", "re-gistry", "a b", "ä", "a;drop", "pg_x", "pg_"] {
            assert!(check_name("module", bad).is_err(), "{bad:?} accepted");
        }
        assert!(check_name("env", &"a".repeat(64)).is_err());
    }

    #[test]
    fn short_names_unchanged() {
        assert_eq!(fit_identifier("dev_registry"), "dev_registry");
        let exact = "a".repeat(63);
        assert_eq!(fit_identifier(&exact), exact);
    }

    #[test]
    fn long_names_shortened_with_hash() {
        let long = format!("dev_{}", "x".repeat(70));
        let fitted = fit_identifier(&long);
        assert_eq!(fitted.len(), 63);
        assert!(fitted.starts_with("dev_xxx"));
        let other = format!("dev_{}y", "x".repeat(70));
        assert_ne!(fit_identifier(&other), fitted);
        assert_eq!(fit_identifier(&long), fitted, "deterministic");
    }

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal("a\\b"), "E'a\\\\b'");
        assert_eq!(quote_literal("x\\'; DROP ROLE y; --"), "E'x\\\\''; DROP ROLE y; --'");
        for scs in [true, false] {
            assert_eq!(lex_literal(&quote_literal("a\\"), scs).as_deref(), Some("a\\"));
        }
    }

    /// Reads a string literal back the way PostgreSQL's lexer does with
    /// `standard_conforming_strings` on or off; `None` where the literal would not end
    /// where it should (injection) or holds an escape `quote_literal` never writes.
    fn lex_literal(quoted: &str, standard: bool) -> Option<String> {
        let (escapes, rest) = match quoted.strip_prefix('E') {
            Some(rest) => (true, rest),
            None => (!standard, quoted),
        };
        let inner = rest.strip_prefix('\'')?.strip_suffix('\'')?;
        let mut out = String::new();
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            match c {
                '\'' if chars.next() != Some('\'') => return None,
                '\\' if escapes => match chars.next() {
                    Some(e @ ('\\' | '\'')) => {
                        out.push(e);
                        continue;
                    }
                    _ => return None,
                },
                _ => {}
            }
            out.push(c);
        }
        Some(out)
    }

    #[test]
    fn identifier_lists_split_like_postgres() {
        let split = |s: &str| split_identifier_list(s);
        assert_eq!(split("\"$user\", registry, public").unwrap(), ["$user", "registry", "public"]);
        assert_eq!(split(" Registry ,\"My \"\"x\"\"\",$user").unwrap(), ["registry", "My \"x\"", "$user"]);
        assert!(split("").is_err());
        assert!(split("a,,b").is_err());
        assert!(split("a, \"b").is_err());
        assert!(split("a b").is_err());
        assert_eq!(setting_value_sql("search_path", "\"$user\", registry"), "'$user', 'registry'");
        assert_eq!(setting_value_sql("statement_timeout", "5s"), "'5s'");
        assert_eq!(setting_value_sql("app.mode", "it's"), "'it''s'");
        assert!(same_setting_value("search_path", "\"$user\", registry, public", "\"$user\",registry,  public"));
        assert!(!same_setting_value("search_path", "\"registry, public\"", "registry, public"));
        assert!(!same_setting_value("statement_timeout", "0", "5000"));
    }

    /// Reads a quoted identifier back the way PostgreSQL's lexer does.
    fn unquote(quoted: &str, q: char) -> Option<String> {
        let inner = quoted.strip_prefix(q)?.strip_suffix(q)?;
        let mut out = String::new();
        let mut chars = inner.chars().peekable();
        while let Some(c) = chars.next() {
            if c == q {
                // A lone quote inside would end the token early: injection.
                if chars.next() != Some(q) {
                    return None;
                }
            }
            out.push(c);
        }
        Some(out)
    }

    proptest! {
        #[test]
        fn quote_ident_round_trips(s in "\\PC*") {
            prop_assert_eq!(unquote(&quote_ident(&s), '"'), Some(s));
        }

        #[test]
        fn quote_literal_round_trips(s in "\\PC*") {
            let q = quote_literal(&s);
            prop_assert_eq!(lex_literal(&q, true), Some(s.clone()));
            prop_assert_eq!(lex_literal(&q, false), Some(s));
        }

        #[test]
        fn fitted_names_fit_and_are_deterministic(s in "[a-z_]{1,200}") {
            let f = fit_identifier(&s);
            prop_assert!(f.len() <= MAX_IDENT_BYTES);
            prop_assert_eq!(f.clone(), fit_identifier(&s));
            if s.len() <= MAX_IDENT_BYTES { prop_assert_eq!(f, s); }
        }

        #[test]
        fn distinct_long_names_stay_distinct(a in "[a-z]{60,90}", b in "[a-z]{60,90}") {
            prop_assume!(a != b);
            prop_assert_ne!(fit_identifier(&a), fit_identifier(&b));
        }

        #[test]
        fn check_name_accepts_only_safe_alphabet(s in "\\PC{0,70}") {
            let ok = check_name("x", &s).is_ok();
            let expected = !s.is_empty() && s.len() <= 63
                && s.chars().next().is_some_and(|c| c.is_ascii_lowercase())
                && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                && !s.starts_with("pg_");
            prop_assert_eq!(ok, expected);
        }
    }
}
