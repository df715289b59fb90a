//! Compiled regexes by pattern. Reading a changelog asks for the same patterns again and
//! again (an attribute of every `--changeset` line, the end delimiter of every piece of a
//! split, a precondition's `sqlCheck`), and compiling a case-insensitive pattern costs far
//! more than matching it: compiled once per process, a changelog of 200 changesets reads in
//! a fraction of the time. Patterns can come from changelogs (an `endDelimiter`, a
//! `regExpReplace`), so the cache is bounded: it starts afresh once it holds `LIMIT`.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock, PoisonError};

use regex::Regex;

const LIMIT: usize = 512;

/// The compiled `pattern`, or its compile error.
pub(crate) fn get(pattern: &str) -> Result<Regex, regex::Error> {
    static CACHE: OnceLock<Mutex<HashMap<String, Regex>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(r) = cache.lock().unwrap_or_else(PoisonError::into_inner).get(pattern) {
        return Ok(r.clone());
    }
    let r = Regex::new(pattern)?;
    let mut map = cache.lock().unwrap_or_else(PoisonError::into_inner);
    if map.len() >= LIMIT {
        map.clear();
    }
    map.insert(pattern.to_string(), r.clone());
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_pattern_compiles_once_and_bad_ones_are_errors() {
        let a = get("(?i)^go$").expect("valid");
        let b = get("(?i)^go$").expect("valid");
        assert!(a.is_match("GO") && b.is_match("go"));
        assert!(get("(unclosed").is_err());
        // Past the limit the cache starts afresh and still answers.
        for i in 0..(LIMIT + 10) {
            assert!(get(&format!("^x{i}$")).expect("valid").is_match(&format!("x{i}")));
        }
    }
}
