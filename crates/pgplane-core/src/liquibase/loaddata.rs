//! `loadData` and `loadUpdateData`: the CSV rows turned into the statements Liquibase 4.28
//! runs on PostgreSQL. Values take the column's `type` (or, when none is given, the type
//! of the table's column, which only the target can tell: [`Catalog`]), the way
//! `LoadDataChange` converts them; `NULL` (any case) and empty values with no default are
//! NULL.

use super::types::{self, LoadType};
use super::{csv, sqlgen, Name};

/// What a `loadData` needs from the target at run time.
pub trait Catalog {
    /// The type name of a column as PostgreSQL reports it (`int4`, `varchar`, `text`, …),
    /// `None` when the table has no such column (or the table is unknown).
    fn column_type(&self, schema: Option<&str>, table: &str, column: &str) -> Option<String>;
    /// A file named by a CLOB or BLOB value, relative to the search path.
    fn file(&self, path: &str) -> Option<Vec<u8>>;
}

/// A catalog that knows nothing (SQL previews without a target; `loadData` then takes
/// columns without a `type` as text).
pub struct NoCatalog;

impl Catalog for NoCatalog {
    fn column_type(&self, _: Option<&str>, _: &str, _: &str) -> Option<String> {
        None
    }
    fn file(&self, _: &str) -> Option<Vec<u8>> {
        None
    }
}

/// A `<column>` of `loadData`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadColumn {
    pub name: Option<String>,
    pub header: Option<String>,
    pub index: Option<usize>,
    /// `STRING`, `NUMERIC`, `BOOLEAN`, `DATE`, `COMPUTED`, `SEQUENCE`, `BLOB`, `CLOB`,
    /// `UUID`, `OTHER`, `SKIP`, or a database type name.
    pub load_type: Option<String>,
    pub default_value: Option<String>,
    pub allow_update: Option<bool>,
}

/// `loadData` / `loadUpdateData` as parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadData {
    pub table: Name,
    /// As written in the changelog.
    pub file: String,
    /// Relative to the search path.
    pub path: String,
    /// The folder CLOB/BLOB file values are relative to (the changelog's).
    pub base_dir: String,
    /// The file's text, decoded.
    pub content: String,
    pub separator: char,
    pub quote: Option<char>,
    pub comment: Option<String>,
    pub columns: Vec<LoadColumn>,
    /// `loadUpdateData`: the primary key columns and `onlyUpdate`.
    pub update: Option<(Vec<String>, bool)>,
    /// `usePreparedStatements`.
    pub use_prepared: Option<bool>,
}

/// A CSV row as columns: name, value, whether `loadUpdateData` may update it.
type Row = Vec<(String, V, bool)>;

/// One value as Liquibase holds it before writing SQL.
#[derive(Debug, Clone, PartialEq)]
enum V {
    Null,
    Str(String),
    Num(String),
    Bool(bool),
    /// A date/time literal, already in PostgreSQL's form.
    Date(String),
    /// SQL written as is.
    Sql(String),
    Bytes(Vec<u8>),
    /// A new large object holding the bytes (JDBC's `setBlob` on PostgreSQL); its oid.
    LargeObject(Vec<u8>),
}

impl V {
    fn sql(&self) -> String {
        match self {
            V::Null => "NULL".into(),
            V::Str(s) => {
                if s.eq_ignore_ascii_case("NULL") {
                    "NULL".into()
                } else if s.eq_ignore_ascii_case("NOW()") {
                    "NOW()".into()
                } else {
                    sqlgen::literal(s)
                }
            }
            V::Num(n) => n.clone(),
            V::Bool(b) => if *b { "TRUE" } else { "FALSE" }.into(),
            V::Date(d) => format!("'{d}'"),
            V::Sql(s) => s.clone(),
            V::Bytes(b) => format!("'\\x{}'::bytea", crate::ident::hex(b)),
            V::LargeObject(b) => format!("lo_from_bytea(0, '\\x{}'::bytea)", crate::ident::hex(b)),
        }
    }
}

fn parse_bool(s: &str) -> bool {
    let v = s.trim().to_ascii_lowercase();
    match v.as_str() {
        "true" | "t" | "yes" | "y" | "1" => true,
        "false" | "f" | "no" | "n" | "0" => false,
        _ => v.parse::<i64>().is_ok_and(|n| n > 0),
    }
}

fn base64(s: &str) -> Option<Vec<u8>> {
    if s.is_empty() || !s.len().is_multiple_of(4) {
        return if s.is_empty() { Some(Vec::new()) } else { None };
    }
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        })
    };
    let b = s.as_bytes();
    let mut out = Vec::new();
    for (ci, chunk) in b.chunks(4).enumerate() {
        let last = ci == b.len() / 4 - 1;
        let pad = chunk.iter().rev().take_while(|c| **c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return None;
        }
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            let v = if i >= 4 - pad { 0 } else { val(*c)? };
            n = (n << 6) | v;
        }
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..3 - pad]);
    }
    Some(out)
}

/// `valueNumeric`'s parsing: a number (leading `(`…`)` dropped) is written as given,
/// anything Java's number format cannot read is SQL.
fn numeric(s: &str) -> V {
    let t = s.strip_prefix('(').map(|r| r.strip_suffix(')').unwrap_or(r)).unwrap_or(s);
    let starts_number = t.trim_start_matches('-').chars().next().is_some_and(|c| c.is_ascii_digit() || c == '.');
    if starts_number {
        V::Num(t.to_string())
    } else {
        V::Sql(s.to_string())
    }
}

/// Liquibase's `valueDate` parsing: ISO dates, times and timestamps become literals;
/// anything else is SQL (a function).
fn date(s: &str) -> Result<V, String> {
    let lower = s.to_ascii_lowercase();
    if lower == "now" {
        return Ok(V::Sql("NOW()".into()));
    }
    if lower == "today" {
        return Ok(V::Sql("CURRENT_DATE".into()));
    }
    if lower.starts_with("now") || lower.starts_with("today") {
        return Err(format!(
            "date value {s:?} is computed by Liquibase when it runs; pgplane cannot reproduce it, write the date"
        ));
    }
    Ok(match super::parse::iso_date(s) {
        Some(d) => V::Date(d.replacen('T', " ", 1)),
        None => V::Sql(s.to_string()),
    })
}

struct Cfg {
    name: Option<String>,
    header: Option<String>,
    index: Option<usize>,
    load_type: Option<String>,
    default_value: Option<String>,
    allow_update: Option<bool>,
}

impl LoadData {
    /// The statements, in order. Errors are Liquibase's (a row with too many values, an
    /// unknown type, a missing LOB file).
    pub fn statements(&self, default_schema: Option<&str>, catalog: &dyn Catalog) -> Result<Vec<String>, String> {
        let rows =
            csv::records(&self.content, self.separator, self.quote).map_err(|e| format!("{}: {e}", self.file))?;
        let mut rows = rows.into_iter();
        let headers = rows.next().ok_or_else(|| format!("data file {} was empty", self.file))?;
        let mut cfgs: Vec<Cfg> = self
            .columns
            .iter()
            .map(|c| Cfg {
                name: c.name.clone(),
                header: c.header.clone(),
                index: c.index,
                load_type: c.load_type.clone(),
                default_value: c.default_value.clone(),
                allow_update: c.allow_update,
            })
            .collect();
        // addColumnsFromHeaders: every header gets a column (matched by name, header or index).
        for (i, h) in headers.iter().enumerate() {
            let pos = cfgs.iter().position(|c| {
                c.name.as_deref() == Some(h.as_str()) || c.header.as_deref() == Some(h.as_str()) || c.index == Some(i)
            });
            let pos = match pos {
                Some(p) => p,
                None => {
                    if h.trim().is_empty() {
                        return Err(format!("{}: an unnamed column in the header is not supported", self.file));
                    }
                    cfgs.push(Cfg {
                        name: Some(h.clone()),
                        header: None,
                        index: None,
                        load_type: None,
                        default_value: None,
                        allow_update: None,
                    });
                    cfgs.len() - 1
                }
            };
            cfgs[pos].index = Some(i);
            cfgs[pos].header = Some(h.clone());
        }
        // retrieveMissingColumnLoadTypes: the table's column types for the rest.
        for c in cfgs.iter_mut().filter(|c| c.load_type.is_none()) {
            let Some(name) = c.name.as_deref() else { continue };
            if let Some(t) =
                catalog.column_type(self.table.schema.as_deref().or(default_schema), &self.table.name, name)
            {
                let load = types::resolve(&t).map(|t| t.load).unwrap_or(LoadType::String);
                c.load_type = Some(
                    match load {
                        LoadType::Boolean => "BOOLEAN",
                        LoadType::Numeric => "NUMERIC",
                        LoadType::Date => "DATE",
                        LoadType::String => "STRING",
                        LoadType::Computed => "COMPUTED",
                        LoadType::Blob => "BLOB",
                        LoadType::Clob => "CLOB",
                        LoadType::Uuid => "UUID",
                    }
                    .to_string(),
                );
            }
        }
        let table = sqlgen::qualified(self.table.schema.as_deref(), &self.table.name, default_schema);
        let comment = self.comment.as_deref().filter(|c| !c.is_empty());
        let mut out_rows: Vec<(Row, bool)> = Vec::new();
        for (n, line) in rows.enumerate() {
            let line_no = n + 2;
            if line.is_empty() || (line.len() == 1 && line[0].trim().is_empty()) {
                continue;
            }
            if comment.is_some_and(|c| line[0].starts_with(c)) {
                continue;
            }
            if line.len() != headers.len() {
                return Err(format!(
                    "CSV file {} line {line_no} has {} values, its header has {}; the numbers must be equal (check for an unquoted value holding the separator)",
                    self.file,
                    line.len(),
                    headers.len()
                ));
            }
            let mut row = Vec::new();
            // LoadDataChange: a row with a CLOB or BLOB value needs a prepared statement.
            let mut needs_prepared = false;
            for (i, raw) in line.iter().enumerate() {
                let mut column = headers[i].trim().to_string();
                let cfg = cfgs.iter().find(|c| {
                    c.index == Some(i)
                        || c.header.as_deref().is_some_and(|h| h.eq_ignore_ascii_case(&column))
                        || c.name.as_deref().is_some_and(|h| h.eq_ignore_ascii_case(&column))
                });
                let Some(cfg) = cfg else {
                    row.push((
                        column,
                        if raw.eq_ignore_ascii_case("NULL") { V::Null } else { V::Str(raw.trim().to_string()) },
                        true,
                    ));
                    continue;
                };
                let ty = cfg.load_type.as_deref().map(str::to_ascii_uppercase);
                if ty.as_deref() == Some("SKIP") {
                    continue;
                }
                if let Some(n) = &cfg.name {
                    column = n.clone();
                }
                let value: Option<String> = if raw.is_empty() { cfg.default_value.clone() } else { Some(raw.clone()) };
                let null_word = value.as_deref().is_some_and(|v| v.eq_ignore_ascii_case("null"));
                match ty.as_deref() {
                    Some("CLOB") if !null_word => needs_prepared = true,
                    Some("BLOB") if !null_word && value.is_some() => needs_prepared = true,
                    _ => {}
                }
                let v = match (&value, ty.as_deref()) {
                    // STRING columns get '' for an empty value without a default.
                    (None, Some("STRING")) => V::Str(String::new()),
                    (None, _) => V::Null,
                    (Some(v), _) if v.eq_ignore_ascii_case("null") => V::Null,
                    (Some(v), None) => V::Str(v.clone()),
                    (Some(v), Some("BOOLEAN")) => V::Bool(parse_bool(v)),
                    (Some(v), Some("NUMERIC")) => numeric(v),
                    (Some(v), Some("DATE" | "DATETIME" | "TIME")) => {
                        date(v).map_err(|e| format!("{}: {e}", self.file))?
                    }
                    (Some(v), Some("STRING")) => V::Str(v.clone()),
                    (Some(v), Some("COMPUTED")) => V::Sql(v.clone()),
                    (Some(v), Some("SEQUENCE")) => {
                        let schema = self.table.schema.as_deref();
                        V::Sql(format!("nextval('{}')", sqlgen::qualified_raw(schema, v, None).replace('\'', "''")))
                    }
                    // Liquibase (ExecutablePreparedStatementBase): base64 goes through
                    // setBlob, a large object, whatever the column; a file's bytes go into
                    // a bytea column as they are and into any other as a large object.
                    (Some(v), Some("BLOB")) => match base64(v) {
                        Some(b) => V::LargeObject(b),
                        None => {
                            let bytes = self.lob(v, catalog, "BLOB")?;
                            let bytea = catalog
                                .column_type(self.table.schema.as_deref().or(default_schema), &self.table.name, &column)
                                .is_some_and(|t| t.eq_ignore_ascii_case("bytea"));
                            if bytea {
                                V::Bytes(bytes)
                            } else {
                                V::LargeObject(bytes)
                            }
                        }
                    },
                    (Some(v), Some("CLOB")) => {
                        let bytes = self.lob(v, catalog, "CLOB")?;
                        V::Str(String::from_utf8_lossy(&bytes).into_owned())
                    }
                    (Some(v), Some("UUID" | "OTHER")) => V::Str(v.clone()),
                    (Some(v), Some(t)) if ["UNKNOWN"].contains(&t) => V::Str(v.clone()),
                    (Some(v), Some(t)) => {
                        // A type name that is not a load type: Liquibase's UNKNOWN.
                        let _ = t;
                        V::Str(v.clone())
                    }
                };
                row.push((column, v, cfg.allow_update.unwrap_or(true)));
            }
            out_rows.push((row, needs_prepared));
        }
        let mut out = Vec::new();
        let any_prepared = out_rows.iter().any(|(_, p)| *p);
        let out_rows: Vec<Row> = match (&self.update, self.use_prepared) {
            (None, Some(false)) if any_prepared => {
                return Err("loadData is requesting usePreparedStatements=false but prepared statements are required (Liquibase's error: a CLOB or BLOB value needs one)".into())
            }
            (None, Some(true)) => {
                // One prepared INSERT per row.
                for (row, _) in &out_rows {
                    out.push(insert_one(&table, row));
                }
                return Ok(out);
            }
            (None, None) if any_prepared => {
                // Liquibase 4.28 on PostgreSQL runs only the prepared statements: the rows
                // without a CLOB or BLOB value are left out. pgplane does the same.
                for (row, _) in out_rows.iter().filter(|(_, p)| *p) {
                    out.push(insert_one(&table, row));
                }
                return Ok(out);
            }
            _ => out_rows.into_iter().map(|(r, _)| r).collect(),
        };
        match &self.update {
            None => {
                // One INSERT … VALUES (…), (…) per 50 rows, with the first row's columns.
                let Some(first) = out_rows.first() else { return Ok(out) };
                let cols: Vec<String> = first.iter().map(|(c, _, _)| sqlgen::ident(c)).collect();
                let header = format!("INSERT INTO {table} ({}) VALUES ", cols.join(", "));
                let mut values: Vec<String> = Vec::new();
                for row in &out_rows {
                    let v: Vec<String> = row.iter().map(|(_, v, _)| v.sql()).collect();
                    values.push(format!("({})", v.join(", ")));
                    if values.len() > 50 {
                        out.push(format!("{header}{}", values.join(",")));
                        values.clear();
                    }
                }
                if !values.is_empty() {
                    out.push(format!("{header}{}", values.join(",")));
                }
            }
            Some((pk, only_update)) => {
                for row in &out_rows {
                    let value_of = |k: &str| row.iter().find(|(c, _, _)| c == k).map(|(_, v, _)| v);
                    let mut where_ = Vec::new();
                    for k in pk {
                        match value_of(k) {
                            None | Some(V::Null) => where_.push(format!("{} is NULL", sqlgen::ident(k))),
                            Some(V::Str(s)) if s.eq_ignore_ascii_case("null") => {
                                where_.push(format!("{} is NULL", sqlgen::ident(k)))
                            }
                            Some(v) => where_.push(format!("{} = {}", sqlgen::ident(k), v.sql())),
                        }
                    }
                    let where_ = where_.join(" AND ");
                    let sets: Vec<String> = row
                        .iter()
                        .filter(|(c, _, allow)| *allow && !pk.iter().any(|k| k == c))
                        .map(|(c, v, _)| format!("{} = {}", sqlgen::ident(c), v.sql()))
                        .collect();
                    let mut s = String::from("DO\n$$\nBEGIN\n");
                    if sets.is_empty() {
                        s.push_str(&format!("perform * from {table} WHERE {where_};\n"));
                    } else {
                        s.push_str(&format!("UPDATE {table} SET {} WHERE {where_};\n", sets.join(", ")));
                    }
                    if !only_update {
                        let cols: Vec<String> = row.iter().map(|(c, _, _)| sqlgen::ident(c)).collect();
                        let vals: Vec<String> = row.iter().map(|(_, v, _)| v.sql()).collect();
                        s.push_str(&format!(
                            "IF not found THEN\nINSERT INTO {table} ({}) VALUES ({});\nEND IF;\n",
                            cols.join(", "),
                            vals.join(", ")
                        ));
                    }
                    s.push_str("END;\n$$\nLANGUAGE plpgsql");
                    out.push(s);
                }
            }
        }
        Ok(out)
    }

    /// Rows a `loadData` leaves out when it loads them the way Liquibase 4.28 does on
    /// PostgreSQL: with CLOB/BLOB columns typed in the changelog, the rows without such a
    /// value (1-based line numbers of the file), unless `usePreparedStatements` is true.
    pub fn rows_left_out(&self) -> Vec<usize> {
        if self.update.is_some() || self.use_prepared.is_some() {
            return Vec::new();
        }
        let lob_types = ["CLOB", "BLOB"];
        let Ok(rows) = csv::records(&self.content, self.separator, self.quote) else { return Vec::new() };
        let mut rows = rows.into_iter();
        let Some(headers) = rows.next() else { return Vec::new() };
        let lob_at: Vec<bool> = headers
            .iter()
            .enumerate()
            .map(|(i, h)| {
                self.columns.iter().any(|c| {
                    (c.index == Some(i) || c.header.as_deref() == Some(h.trim()) || c.name.as_deref() == Some(h.trim()))
                        && c.load_type.as_deref().is_some_and(|t| lob_types.iter().any(|l| t.eq_ignore_ascii_case(l)))
                })
            })
            .collect();
        let comment = self.comment.as_deref().filter(|c| !c.is_empty());
        let mut needing = Vec::new();
        for (n, line) in rows.enumerate() {
            if line.is_empty() || (line.len() == 1 && line[0].trim().is_empty()) {
                continue;
            }
            if comment.is_some_and(|c| line[0].starts_with(c)) {
                continue;
            }
            let needs = line.iter().enumerate().any(|(i, v)| {
                lob_at.get(i).copied().unwrap_or(false) && !v.eq_ignore_ascii_case("null") && !v.is_empty()
            });
            needing.push((n + 2, needs));
        }
        if needing.iter().any(|(_, n)| *n) {
            needing.into_iter().filter(|(_, n)| !n).map(|(l, _)| l).collect()
        } else {
            Vec::new()
        }
    }

    fn lob(&self, value: &str, catalog: &dyn Catalog, kind: &str) -> Result<Vec<u8>, String> {
        let path = super::parse::join_path(&self.base_dir, value);
        catalog.file(&path).ok_or_else(|| format!("{kind} resource not found: {value} (looked for {path})"))
    }
}

/// One row's INSERT (Liquibase's `InsertExecutablePreparedStatement`).
fn insert_one(table: &str, row: &[(String, V, bool)]) -> String {
    let cols: Vec<String> = row.iter().map(|(c, _, _)| sqlgen::ident(c)).collect();
    let vals: Vec<String> = row.iter().map(|(_, v, _)| v.sql()).collect();
    format!("INSERT INTO {table}({}) VALUES({})", cols.join(", "), vals.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_decodes() {
        assert_eq!(base64("aGVsbG8="), Some(b"hello".to_vec()));
        assert_eq!(base64("not base64"), None);
    }
}
