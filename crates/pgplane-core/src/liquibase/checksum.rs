//! Liquibase's checksum version 9: MD5 over Liquibase's string serialisation of a change
//! (`StringChangeLogSerializer`), or over SQL text with whitespace removed for SQL changes.

use md5::{Digest, Md5};

/// A value in Liquibase's string serialisation.
#[derive(Debug, Clone)]
pub(crate) enum SVal {
    Str(String),
    /// A nested serialisable object (a column's `constraints`): written without its name.
    Obj(Vec<(String, SVal)>),
    /// A list of serialisable objects (`columns`).
    List(Vec<Vec<(String, SVal)>>),
}

/// `name:[…]` exactly as Liquibase's `StringChangeLogSerializer.serialize(change, false)`.
pub(crate) fn serialize(name: &str, fields: &[(String, SVal)]) -> String {
    format!("{name}:{}", object(fields, 1))
}

fn indent(n: usize) -> String {
    " ".repeat(4 * n)
}

fn object(fields: &[(String, SVal)], level: usize) -> String {
    // Liquibase collects the rendered lines in a TreeSet: sorted by Java's String order
    // (UTF-16 code units; the same as byte order for ASCII) and de-duplicated.
    let mut lines: Vec<String> = fields
        .iter()
        .map(|(k, v)| match v {
            SVal::Str(s) => format!("{}{k}=\"{s}\"", indent(level)),
            SVal::Obj(f) => format!("{}{}", indent(level), object(f, level + 1)),
            SVal::List(items) => format!("{}{k}={}", indent(level), list(items, level + 1)),
        })
        .collect();
    lines.sort_by(|a, b| a.encode_utf16().cmp(b.encode_utf16()));
    lines.dedup();
    let mut out = String::from("[");
    if !lines.is_empty() {
        out.push('\n');
        out.push_str(&lines.join("\n"));
        out.push('\n');
    }
    out.push_str(&indent(level - 1));
    out.push(']');
    out.replace("\r\n", "\n").replace('\r', "\n")
}

fn list(items: &[Vec<(String, SVal)>], level: usize) -> String {
    if items.is_empty() {
        return "[]".to_string();
    }
    let body: Vec<String> = items.iter().map(|f| format!("{}{}", indent(level), object(f, level + 1))).collect();
    format!("[\n{}\n{}]", body.join(",\n"), indent(level - 1))
}

pub(crate) fn md5_hex(bytes: &[u8]) -> String {
    crate::ident::hex(&Md5::digest(bytes))
}

/// `CheckSum.compute(String)`: line endings standardised, then MD5.
pub(crate) fn compute(s: &str) -> String {
    let s = s.replace("\r\n", "\n").replace('\r', "\n");
    format!("9:{}", md5_hex(s.as_bytes()))
}

/// The checksum of SQL text: MD5 of its bytes without spaces, tabs and line breaks.
pub(crate) fn sql(text: &str) -> String {
    let bytes: Vec<u8> = text.bytes().filter(|b| !matches!(b, b' ' | b'\n' | b'\r' | b'\t')).collect();
    format!("9:{}", md5_hex(&bytes))
}

/// A changeset's checksum from its changes' checksums.
pub(crate) fn changeset(change_sums: &[String]) -> String {
    changeset_with_visitors(change_sums, &[])
}

/// A changeset's checksum: its changes' checksums each followed by `:`, then its
/// `modifySql` rewrites' checksums each followed by `;`.
pub(crate) fn changeset_with_visitors(change_sums: &[String], visitor_sums: &[String]) -> String {
    let mut s = String::new();
    for c in change_sums {
        s.push_str(c);
        s.push(':');
    }
    for v in visitor_sums {
        s.push_str(v);
        s.push(';');
    }
    compute(&s)
}

/// `CheckSum.compute(stream, standardizeLineEndings=true)` of bytes.
pub(crate) fn compute_bytes(bytes: &[u8]) -> String {
    let mut out = Vec::with_capacity(bytes.len());
    let mut prev_r = false;
    for &b in bytes {
        if b == b'\r' {
            out.push(b'\n');
            prev_r = true;
        } else if b == b'\n' && prev_r {
            prev_r = false;
        } else {
            out.push(b);
            prev_r = false;
        }
    }
    format!("9:{}", md5_hex(&out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialisation_matches_liquibase_layout() {
        let col = vec![
            ("name".to_string(), SVal::Str("id".into())),
            ("constraints".to_string(), SVal::Obj(vec![("primaryKey".into(), SVal::Str("true".into()))])),
        ];
        let s = serialize(
            "createTable",
            &[("tableName".into(), SVal::Str("t".into())), ("columns".into(), SVal::List(vec![col.clone(), col]))],
        );
        assert_eq!(
            s,
            "createTable:[\n    columns=[\n        [\n            [\n                primaryKey=\"true\"\n            ]\n            name=\"id\"\n        ],\n        [\n            [\n                primaryKey=\"true\"\n            ]\n            name=\"id\"\n        ]\n    ]\n    tableName=\"t\"\n]"
        );
    }
}
