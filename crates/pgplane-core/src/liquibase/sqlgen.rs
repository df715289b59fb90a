//! PostgreSQL SQL for Liquibase changes, following Liquibase 4.28's change classes and SQL
//! generators for PostgreSQL (10 and later), so that the schema pgplane creates is the one
//! Liquibase creates.

use super::loaddata::Catalog;
use super::types;
use super::{expr, split, Action, Change, Column, ModifyKind, ModifySql, Name, SqlChange, Statement, Value};

/// PostgresDatabase's reserved words (Liquibase quotes these).
const RESERVED: &[&str] = &[
    "all",
    "analyse",
    "analyze",
    "and",
    "any",
    "array",
    "as",
    "asc",
    "asymmetric",
    "authorization",
    "binary",
    "both",
    "case",
    "cast",
    "check",
    "collate",
    "collation",
    "column",
    "concurrently",
    "constraint",
    "create",
    "cross",
    "current_catalog",
    "current_date",
    "current_role",
    "current_schema",
    "current_time",
    "current_timestamp",
    "current_user",
    "default",
    "deferrable",
    "desc",
    "distinct",
    "do",
    "else",
    "end",
    "except",
    "false",
    "fetch",
    "for",
    "foreign",
    "freeze",
    "from",
    "full",
    "grant",
    "group",
    "having",
    "ilike",
    "in",
    "initially",
    "inner",
    "intersect",
    "into",
    "is",
    "isnull",
    "join",
    "lateral",
    "leading",
    "left",
    "like",
    "limit",
    "localtime",
    "localtimestamp",
    "natural",
    "not",
    "notnull",
    "null",
    "offset",
    "on",
    "only",
    "or",
    "order",
    "outer",
    "overlaps",
    "placing",
    "primary",
    "references",
    "returning",
    "right",
    "select",
    "session_user",
    "similar",
    "some",
    "symmetric",
    "table",
    "tablesample",
    "then",
    "to",
    "trailing",
    "true",
    "union",
    "unique",
    "user",
    "using",
    "variadic",
    "verbose",
    "when",
    "where",
    "window",
    "with",
];

/// An identifier the way Liquibase (LEGACY quoting) writes it for PostgreSQL
/// (`PostgresDatabase.escapeObjectName`): mixed case in quotes; a reserved word, a name
/// with `-`, starting with a digit or holding a non-word character in quotes; else as is.
pub(crate) fn ident(name: &str) -> String {
    let mixed = name.chars().any(char::is_uppercase) && name.chars().any(char::is_lowercase);
    if mixed {
        return format!("\"{name}\"");
    }
    let name = name.trim();
    let non_word = name.chars().any(|c| !(c.is_alphanumeric() || c == '_'));
    let starts_numeric = name.chars().next().is_some_and(|c| c.is_ascii_digit());
    if name.contains('-') || starts_numeric || non_word || RESERVED.contains(&name.to_ascii_lowercase().as_str()) {
        format!("\"{}\"", name.replace('"', "\"\""))
    } else {
        name.to_string()
    }
}

/// Whatever `standard_conforming_strings` the target database sets (see `quote_literal`).
pub(crate) fn literal(s: &str) -> String {
    crate::ident::quote_literal(s)
}

pub(crate) fn qualified(schema: Option<&str>, name: &str, default_schema: Option<&str>) -> String {
    match schema.or(default_schema) {
        Some(s) => format!("{}.{}", ident(s), ident(name)),
        None => ident(name),
    }
}

/// `schema.name` with the identifiers escaped, for use inside a string (`nextval('…')`).
pub(crate) fn qualified_raw(schema: Option<&str>, name: &str, default_schema: Option<&str>) -> String {
    qualified(schema, name, default_schema)
}

fn q(n: &Name, d: Option<&str>) -> String {
    qualified(n.schema.as_deref(), &n.name, d)
}

fn cols(c: &[String]) -> String {
    c.iter().map(|c| ident(c)).collect::<Vec<_>>().join(", ")
}

/// A Liquibase type name mapped to PostgreSQL. Returns the type and whether it implies
/// auto-increment (serial types).
pub(crate) fn pg_type(t: &str) -> Result<(String, bool), String> {
    types::resolve(t).map(|r| (r.sql, r.auto_increment)).map_err(|e| e.0)
}

/// A current-time function Liquibase replaces with PostgreSQL's `NOW()`.
fn is_now(v: &str) -> bool {
    let l = v.trim().to_ascii_lowercase();
    l == "now()" || l.starts_with("current_timestamp") || l == "current_datetime" || l == "sysdate"
}

fn function_sql(c: &str) -> String {
    if is_now(c) {
        "NOW()".into()
    } else {
        c.to_string()
    }
}

fn sequence_sql(func: &str, schema: Option<&str>, name: &str, d: Option<&str>) -> String {
    format!("{func}('{}')", qualified(schema, name, d).replace('\'', "''"))
}

/// A value written the way `DataTypeFactory.fromObject(value).objectToSql` writes it.
pub(crate) fn value_sql(v: &Value, d: Option<&str>) -> String {
    match v {
        Value::Text(s) if s.eq_ignore_ascii_case("NOW()") => "NOW()".into(),
        Value::Text(s) => literal(s),
        Value::Numeric(n) => n.clone(),
        Value::Boolean(b) => if *b { "TRUE" } else { "FALSE" }.into(),
        Value::Date(x) => literal(&x.replacen('T', " ", 1)),
        Value::Computed(c) => function_sql(c),
        Value::SequenceNext(s, n) => sequence_sql("nextval", s.as_deref(), n, d),
        Value::SequenceCurrent(s, n) => sequence_sql("currval", s.as_deref(), n, d),
    }
}

/// Java's `formatNumber`: a trailing `.0…` dropped.
fn format_number(n: &str) -> String {
    match n.find('.') {
        Some(i) if n.len() > i + 1 && n[i + 1..].bytes().all(|b| b == b'0') => n[..i].to_string(),
        _ => n.to_string(),
    }
}

/// `BooleanType.objectToSql` of a string on PostgreSQL.
fn boolean_text(t: &str) -> Result<String, String> {
    let v = t.replace('\'', "");
    let l = v.to_ascii_lowercase();
    Ok(match l.as_str() {
        "true" | "1" | "b'1'" | "t" => "TRUE".into(),
        "false" | "0" | "b'0'" | "f" => "FALSE".into(),
        _ => {
            let bits = v.strip_prefix('b').unwrap_or(&v);
            let bits = bits.split("::").next().unwrap_or("");
            let first = bits.chars().next();
            if !bits.is_empty() && bits.chars().all(|c| Some(c) == first && (c == '0' || c == '1')) {
                format!("b'{bits}'::\"bit\"")
            } else {
                return Err(format!("Liquibase cannot write {t:?} as a boolean value"));
            }
        }
    })
}

/// A default for a column of Liquibase type `ty`: the type's `objectToSql`, as Liquibase's
/// createTable and addColumn write it.
fn default_sql(v: &Value, ty: Option<&str>, d: Option<&str>) -> Result<String, String> {
    use types::Class as C;
    let class = ty.and_then(types::class_of);
    let texty = matches!(class, Some(C::Char | C::Varchar | C::NChar | C::NVarchar | C::Clob));
    Ok(match v {
        Value::Computed(_) | Value::SequenceNext(..) | Value::SequenceCurrent(..) => value_sql(v, d),
        Value::Boolean(b) => match class {
            Some(C::SmallInt | C::MediumInt) => if *b { "1" } else { "0" }.into(),
            _ if texty => literal(&b.to_string()),
            _ => if *b { "TRUE" } else { "FALSE" }.into(),
        },
        Value::Numeric(n) => match class {
            Some(C::Boolean) => if n == "1" || n == "1.0" { "TRUE" } else { "FALSE" }.into(),
            _ if texty => literal(n),
            _ => format_number(n),
        },
        Value::Date(x) => literal(&x.replacen('T', " ", 1)),
        Value::Text(t) => match class {
            Some(C::BigInt | C::Int | C::SmallInt | C::TinyInt | C::MediumInt) => format_number(t),
            Some(C::Decimal | C::Number | C::Float | C::Double | C::Currency | C::Uuid | C::Xml | C::Function) => {
                t.clone()
            }
            Some(C::Boolean) => boolean_text(t)?,
            Some(C::Clob) if t.starts_with('\'') => t.clone(),
            Some(C::DateTime | C::Timestamp) if t.ends_with("()") || is_now(t) => function_sql(t),
            Some(C::Blob) => format!("'{t}'"),
            None if ty.is_some() => format!("'{t}'"),
            _ => literal(t),
        },
    })
}

fn column_def(c: &Column, in_create_table: bool, d: Option<&str>) -> Result<String, String> {
    let (ty, serial) = match c.data_type.as_deref() {
        Some(t) => pg_type(t)?,
        None => (String::new(), false),
    };
    let mut s = if ty.is_empty() { ident(&c.name) } else { format!("{} {ty}", ident(&c.name)) };
    let cons = c.constraints.clone().unwrap_or_default();
    if c.auto_increment || serial {
        match c.generation_type.as_deref().map(str::trim) {
            Some(g) if g.eq_ignore_ascii_case("ALWAYS") => s.push_str(" GENERATED ALWAYS AS IDENTITY"),
            _ => s.push_str(" GENERATED BY DEFAULT AS IDENTITY"),
        }
        let mut opts = Vec::new();
        if let Some(v) = &c.start_with {
            opts.push(format!("START WITH {v}"));
        }
        if let Some(v) = &c.increment_by {
            opts.push(format!("INCREMENT BY {v}"));
        }
        if !opts.is_empty() {
            s.push_str(&format!(" ({})", opts.join(" ")));
        }
    } else if let Some(v) = &c.default {
        match v {
            Value::Computed(g) if g.trim_start().to_ascii_uppercase().starts_with("GENERATED ALWAYS ") => {
                s.push_str(&format!(" {g}"));
            }
            v => s.push_str(&format!(" DEFAULT {}", default_sql(v, c.data_type.as_deref(), d)?)),
        }
    }
    if cons.nullable == Some(false) || (cons.primary_key && in_create_table) {
        s.push_str(" NOT NULL");
    }
    if !in_create_table && cons.primary_key {
        s.push_str(" PRIMARY KEY");
    }
    Ok(s)
}

/// createTable's foreign key target: `references` written as given (the default schema
/// put in front when it names none), or referencedTableName(referencedColumnNames).
fn create_table_fk_target(c: &Column, d: Option<&str>) -> Option<String> {
    let cons = c.constraints.as_ref()?;
    if let Some(r) = &cons.references {
        return Some(match d {
            Some(schema) if !r.contains('.') => format!("{}.{r}", ident(schema)),
            _ => r.clone(),
        });
    }
    let t = cons.referenced_table.as_ref()?;
    let cols: Vec<String> =
        cons.referenced_columns.as_deref().unwrap_or("").split(',').map(|c| c.trim().to_string()).collect();
    let name = Name { schema: cons.referenced_table_schema.clone(), name: t.clone() };
    Some(format!("{}({})", q(&name, d), self::cols(&cols)))
}

/// addColumn's foreign key target: `table(col)` (AddColumnGenerator's REFERENCE_PATTERN) or
/// referencedTableName + referencedColumnNames.
fn add_column_fk_target(c: &Column) -> Result<Option<(Name, String)>, String> {
    let Some(cons) = c.constraints.as_ref() else { return Ok(None) };
    let (table, col) = if let Some(r) = &cons.references {
        let re = super::regexes::get(r"^([\w\._]+)\s*\(\s*([\w_]+)\s*\)$").map_err(|e| e.to_string())?;
        let caps = re.captures(r).ok_or_else(|| {
            format!("Liquibase cannot find table and column names in references={r:?} (write table(column))")
        })?;
        (caps[1].to_string(), caps[2].to_string())
    } else {
        match (&cons.referenced_table, &cons.referenced_columns) {
            (Some(t), Some(cols)) => (t.clone(), cols.clone()),
            _ => return Ok(None),
        }
    };
    let name = match table.split_once('.') {
        Some((s, t)) if !s.is_empty() => {
            Name { schema: Some(s.to_string()), name: t.split('.').next().unwrap_or(t).to_string() }
        }
        _ => Name { schema: cons.referenced_table_schema.clone(), name: table },
    };
    let cols: Vec<String> = col.split(',').map(|c| c.trim().to_string()).collect();
    Ok(Some((name, self::cols(&cols))))
}

fn fk_suffix(cons_delete_cascade: bool, deferrable: bool, initially_deferred: bool) -> String {
    let mut s = String::new();
    if cons_delete_cascade {
        s.push_str(" ON DELETE CASCADE");
    }
    if deferrable {
        s.push_str(" DEFERRABLE");
    }
    if initially_deferred {
        s.push_str(" INITIALLY DEFERRED");
    }
    s
}

fn remarks(out: &mut Vec<String>, table: &str, columns: &[Column]) {
    for c in columns {
        if let Some(r) = c.remarks.as_deref().map(str::trim).filter(|r| !r.is_empty()) {
            out.push(format!("COMMENT ON COLUMN {table}.{} IS {}", ident(&c.name), literal(r)));
        }
    }
}

/// The statements of a `sql`/`sqlFile` change, split and stripped as Liquibase does.
fn raw(s: &SqlChange) -> Vec<String> {
    if !expr::dbms_match(s.dbms.as_deref(), "postgresql") {
        return Vec::new();
    }
    let sql = s.sql.trim().replace("\r\n", "\n").replace('\r', "\n");
    if sql.is_empty() {
        return Vec::new();
    }
    split::process(&sql, s.strip_comments, s.split_statements, s.end_delimiter.as_deref())
}

/// `modifySql` applied to one statement (`rollback`: only those with `applyToRollback`).
/// `SqlUtil.replacePredicatePlaceholders`: each `:name` takes the next named parameter's
/// column name, each `:value` or `?` the next parameter's value; a placeholder with nothing
/// left stays as written.
fn with_params(predicate: &str, params: &[Column], d: Option<&str>) -> String {
    let predicate = predicate.trim();
    if params.is_empty() {
        return predicate.to_string();
    }
    let mut names = params.iter().filter(|p| !p.name.is_empty()).map(|p| ident(&p.name));
    let mut values = params.iter().map(|p| p.value.as_ref().map_or_else(|| "NULL".to_string(), |v| value_sql(v, d)));
    let mut out = String::new();
    let mut rest = predicate;
    while let Some(at) = [":name", "?", ":value"].iter().filter_map(|p| rest.find(p).map(|i| (i, *p))).min() {
        let (i, token) = at;
        out.push_str(&rest[..i]);
        let replacement = if token == ":name" { names.next() } else { values.next() };
        out.push_str(replacement.as_deref().unwrap_or(token));
        rest = &rest[i + token.len()..];
    }
    out.push_str(rest);
    out
}

pub(crate) fn modify(sql: &str, visitors: &[ModifySql], rollback: bool) -> String {
    let mut s = sql.to_string();
    for v in visitors.iter().filter(|v| !rollback || v.apply_to_rollback) {
        s = match &v.kind {
            ModifyKind::Prepend(p) => format!("{p}{s}"),
            ModifyKind::Append(a) => format!("{s}{a}"),
            ModifyKind::Replace { replace, with } => {
                if replace.is_empty() {
                    s
                } else {
                    s.replace(replace.as_str(), with)
                }
            }
            ModifyKind::RegExpReplace { replace, with } => match super::regexes::get(replace) {
                Ok(re) => re.replace_all(&s, java_replacement(with).as_str()).into_owned(),
                Err(_) => s,
            },
        };
    }
    s
}

/// Java's replacement syntax (`$1`, `\$`) in the regex crate's (`${1}`, `$$`).
fn java_replacement(with: &str) -> String {
    let mut out = String::new();
    let mut chars = with.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    if n == '$' {
                        out.push_str("$$");
                    } else {
                        out.push(n);
                    }
                }
            }
            '$' => {
                let mut num = String::new();
                while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                    num.push(*d);
                    chars.next();
                }
                out.push_str(&format!("${{{num}}}"));
            }
            c => out.push(c),
        }
    }
    out
}

pub(crate) fn statements(changes: &[Change], d: Option<&str>, catalog: &dyn Catalog) -> Result<Vec<Statement>, String> {
    let mut out = Vec::new();
    for (i, c) in changes.iter().enumerate() {
        match action(c) {
            Some(a) => out.push(Statement { sql: String::new(), change_index: i, action: Some(a) }),
            None => {
                for sql in change_sql(c, d, catalog)? {
                    out.push(Statement { sql, change_index: i, action: None });
                }
            }
        }
    }
    Ok(out)
}

fn action(c: &Change) -> Option<Action> {
    Some(match c {
        Change::Output { message, target } => Action::Output { message: message.clone(), target: target.clone() },
        Change::Stop { message } => Action::Stop { message: message.clone() },
        Change::ExecuteCommand { executable, args, timeout } => {
            Action::Execute { executable: executable.clone(), args: args.clone(), timeout: timeout.clone() }
        }
        _ => return None,
    })
}

fn set_not_null(t: &str, column: &str) -> String {
    format!("ALTER TABLE {t} ALTER COLUMN  {} SET NOT NULL", ident(column))
}

/// `addNotNullConstraint`'s UPDATE for `defaultNullValue`, written for the column type.
fn fill_nulls(t: &str, column: &str, value: &str, column_type: Option<&str>) -> Option<String> {
    if value.eq_ignore_ascii_case("null") {
        return None;
    }
    let c = ident(column);
    let mut v = literal(value);
    if let Some(ty) = column_type {
        if let Ok(r) = types::resolve(ty) {
            if r.load == types::LoadType::Boolean {
                let l = value.replace('\'', "").to_ascii_lowercase();
                let truth = match l.as_str() {
                    "true" | "1" | "b'1'" | "t" => Some(true),
                    "false" | "0" | "b'0'" | "f" => Some(false),
                    _ => None,
                };
                if ty.to_ascii_lowercase().contains("bit") {
                    v = if truth.unwrap_or(false) { "B'1'".into() } else { "B'0'".into() };
                } else if let Some(b) = truth {
                    v = literal(if b { "TRUE" } else { "FALSE" });
                }
            }
        }
    }
    Some(format!("UPDATE {t} SET {c} = {v} WHERE {c} IS NULL"))
}

#[allow(clippy::too_many_lines)]
fn change_sql(c: &Change, d: Option<&str>, catalog: &dyn Catalog) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    match c {
        Change::CreateTable { table, remarks: table_remarks, columns, table_type, tablespace, if_not_exists } => {
            let t = q(table, d);
            let mut parts: Vec<String> = Vec::new();
            for c in columns {
                parts.push(column_def(c, true, d)?);
            }
            let pk: Vec<&Column> =
                columns.iter().filter(|c| c.constraints.as_ref().is_some_and(|k| k.primary_key)).collect();
            if !pk.is_empty() {
                let name = pk
                    .iter()
                    .find_map(|c| c.constraints.as_ref().and_then(|k| k.primary_key_name.clone()))
                    .unwrap_or_else(|| format!("{}_pkey", table.name));
                let names: Vec<String> = pk.iter().map(|c| c.name.clone()).collect();
                let mut s = format!("CONSTRAINT {} PRIMARY KEY ({})", ident(&name), cols(&names));
                if let Some(ts) =
                    pk.iter().find_map(|c| c.constraints.as_ref().and_then(|k| k.primary_key_tablespace.clone()))
                {
                    s.push_str(&format!(" USING INDEX TABLESPACE {ts}"));
                }
                parts.push(s);
            }
            for c in columns {
                let Some(k) = &c.constraints else { continue };
                if let Some(target) = create_table_fk_target(c, d) {
                    let name = constraint(k.foreign_key_name.as_deref());
                    parts.push(format!(
                        "{name}FOREIGN KEY ({}) REFERENCES {target}{}",
                        ident(&c.name),
                        fk_suffix(k.delete_cascade, k.deferrable, k.initially_deferred)
                    ));
                }
            }
            // Unique constraints of the same name are one constraint over their columns.
            let mut uniques: Vec<(Option<String>, Vec<String>)> = Vec::new();
            let mut named: Vec<(String, Vec<String>)> = Vec::new();
            for c in columns {
                let Some(k) = &c.constraints else { continue };
                if k.unique {
                    match &k.unique_constraint_name {
                        None => uniques.push((None, vec![c.name.clone()])),
                        Some(n) => match named.iter_mut().find(|(x, _)| x == n) {
                            Some((_, v)) => v.push(c.name.clone()),
                            None => named.push((n.clone(), vec![c.name.clone()])),
                        },
                    }
                }
            }
            uniques.extend(named.into_iter().map(|(n, v)| (Some(n), v)));
            for (n, v) in uniques {
                parts.push(format!("{}UNIQUE ({})", constraint(n.as_deref()), cols(&v)));
            }
            let kind = table_type.as_deref().map(|t| format!("{} ", t.trim().to_ascii_uppercase())).unwrap_or_default();
            let ine = if *if_not_exists { "IF NOT EXISTS " } else { "" };
            let mut s = format!("CREATE {kind}TABLE {ine}{t} ({})", parts.join(", "));
            if let Some(ts) = tablespace {
                s.push_str(&format!(" TABLESPACE {ts}"));
            }
            out.push(s);
            if let Some(r) = table_remarks.as_deref().map(str::trim).filter(|r| !r.is_empty()) {
                out.push(format!("COMMENT ON TABLE {t} IS {}", literal(r)));
            }
            remarks(&mut out, &t, columns);
        }
        Change::DropTable { table, cascade } => {
            out.push(format!("DROP TABLE {}{}", q(table, d), if *cascade { " CASCADE" } else { "" }));
        }
        Change::RenameTable { schema, old, new } => {
            out.push(format!("ALTER TABLE {} RENAME TO {}", qualified(schema.as_deref(), old, d), ident(new)));
        }
        Change::AddColumn { table, columns } => {
            let t = q(table, d);
            let mut updates = Vec::new();
            let mut not_nulls = Vec::new();
            let mut adds = Vec::new();
            for c in columns {
                let mut col = c.clone();
                // NOT NULL with a value: add, fill, then constrain.
                let fill_first = c.value.is_some() && c.constraints.as_ref().is_some_and(|k| k.nullable == Some(false));
                if fill_first {
                    if let Some(k) = &mut col.constraints {
                        k.nullable = None;
                    }
                    not_nulls.push(set_not_null(&t, &c.name));
                }
                adds.push(format!("ALTER TABLE {t} ADD {}", column_def(&col, false, d)?));
                let Some(k) = &c.constraints else {
                    if let Some(v) = &c.value {
                        updates.push(format!("UPDATE {t} SET {} = {}", ident(&c.name), value_sql(v, d)));
                    }
                    continue;
                };
                if k.unique {
                    let name = constraint(k.unique_constraint_name.as_deref());
                    adds.push(format!("ALTER TABLE {t} ADD {name}UNIQUE ({})", ident(&c.name)));
                }
                if let Some((target, rcols)) = add_column_fk_target(c)? {
                    // Liquibase writes the name even when there is none (`CONSTRAINT null`,
                    // which PostgreSQL rejects), and of the options only ON DELETE CASCADE.
                    let name = k.foreign_key_name.as_deref().map_or_else(|| "null".to_string(), ident);
                    adds.push(format!(
                        "ALTER TABLE {t} ADD CONSTRAINT {name} FOREIGN KEY ({}) REFERENCES {} ({rcols}){}",
                        ident(&c.name),
                        q(&target, d),
                        if k.delete_cascade { " ON DELETE CASCADE" } else { "" }
                    ));
                }
                if let Some(v) = &c.value {
                    updates.push(format!("UPDATE {t} SET {} = {}", ident(&c.name), value_sql(v, d)));
                }
            }
            out.extend(adds);
            out.extend(updates);
            out.extend(not_nulls);
            remarks(&mut out, &t, columns);
        }
        Change::DropColumn { table, columns } => {
            let t = q(table, d);
            if columns.len() == 1 {
                out.push(format!("ALTER TABLE {t} DROP COLUMN {}", ident(&columns[0])));
            } else {
                let drops: Vec<String> = columns.iter().map(|c| format!("DROP COLUMN {}", ident(c))).collect();
                out.push(format!("ALTER TABLE {t} {}", drops.join(", ")));
            }
        }
        Change::RenameColumn { table, old, new, .. } => {
            let t = q(table, d);
            // Liquibase 4.28 writes no comment for renameColumn's remarks on PostgreSQL.
            out.push(format!("ALTER TABLE {t} RENAME COLUMN {} TO {}", ident(old), ident(new)));
        }
        Change::ModifyDataType { table, column, new_type } => {
            let (ty, _) = pg_type(new_type)?;
            let c = ident(column);
            out.push(format!("ALTER TABLE {} ALTER COLUMN {c} TYPE {ty} USING ({c}::{ty})", q(table, d)));
        }
        Change::AddNotNullConstraint { table, column, default_null_value, column_type, .. } => {
            let t = q(table, d);
            if let Some(v) = default_null_value {
                out.extend(fill_nulls(&t, column, v, column_type.as_deref()));
            }
            out.push(set_not_null(&t, column));
        }
        Change::DropNotNullConstraint { table, column } => {
            out.push(format!("ALTER TABLE {} ALTER COLUMN  {} DROP NOT NULL", q(table, d), ident(column)));
        }
        Change::AddDefaultValue { table, column, value, .. } => {
            let t = q(table, d);
            out.push(format!("ALTER TABLE {t} ALTER COLUMN  {} SET DEFAULT {}", ident(column), value_sql(value, d)));
            if let Value::SequenceNext(schema, name) = value {
                out.push(format!(
                    "ALTER SEQUENCE {} OWNED BY {t}.{}",
                    qualified(schema.as_deref(), name, d),
                    ident(column)
                ));
            }
        }
        Change::DropDefaultValue { table, column } => {
            out.push(format!("ALTER TABLE {} ALTER COLUMN {} DROP DEFAULT", q(table, d), ident(column)));
        }
        Change::AddPrimaryKey { table, columns, constraint_name, tablespace, clustered, .. } => {
            let t = q(table, d);
            let mut s = match constraint_name {
                None => format!("ALTER TABLE {t} ADD PRIMARY KEY ({})", cols(columns)),
                Some(n) => format!("ALTER TABLE {t} ADD CONSTRAINT {} PRIMARY KEY ({})", ident(n), cols(columns)),
            };
            if let Some(ts) = tablespace.as_deref().map(str::trim).filter(|t| !t.is_empty()) {
                s.push_str(&format!(" USING INDEX TABLESPACE {ts}"));
            }
            out.push(s);
            if *clustered {
                let n = constraint_name.as_deref().ok_or("clustered=true needs a constraintName on PostgreSQL")?;
                out.push(format!("CLUSTER {t} USING {}", ident(n)));
            }
        }
        Change::AddUniqueConstraint {
            table,
            columns,
            constraint_name,
            deferrable,
            initially_deferred,
            tablespace,
            for_index,
        } => {
            let t = q(table, d);
            let mut s = match constraint_name {
                None => format!("ALTER TABLE {t} ADD UNIQUE ({})", cols(columns)),
                Some(n) => format!("ALTER TABLE {t} ADD CONSTRAINT {} UNIQUE ({})", ident(n), cols(columns)),
            };
            s.push_str(&fk_suffix(false, *deferrable, *initially_deferred));
            if let Some(ix) = for_index {
                s.push_str(&format!(" USING INDEX {}", ident(ix)));
            }
            if let Some(ts) = tablespace.as_deref().map(str::trim).filter(|t| !t.is_empty()) {
                if for_index.is_none() {
                    s.push_str(" USING INDEX");
                }
                s.push_str(&format!(" TABLESPACE {ts}"));
            }
            out.push(s);
        }
        Change::AddForeignKeyConstraint {
            table,
            columns,
            constraint_name,
            referenced,
            referenced_columns,
            on_delete,
            on_update,
            deferrable,
            initially_deferred,
            validate,
        } => {
            let mut s = format!(
                "ALTER TABLE {} ADD CONSTRAINT {} FOREIGN KEY ({}) REFERENCES {} ({})",
                q(table, d),
                ident(constraint_name),
                cols(columns),
                q(referenced, d),
                cols(referenced_columns)
            );
            if let Some(u) = on_update {
                s.push_str(&format!(" ON UPDATE {u}"));
            }
            if let Some(x) = on_delete {
                s.push_str(&format!(" ON DELETE {x}"));
            }
            if *deferrable || *initially_deferred {
                if *deferrable {
                    s.push_str(" DEFERRABLE");
                }
                if *initially_deferred {
                    s.push_str(" INITIALLY DEFERRED");
                }
            }
            if !validate {
                s.push_str(" NOT VALID ");
            }
            out.push(s);
        }
        Change::DropForeignKeyConstraint { table, constraint_name } => {
            out.push(format!("ALTER TABLE {} DROP CONSTRAINT {}", q(table, d), ident(constraint_name)));
        }
        Change::CreateIndex { table, index_name, unique, columns, tablespace, clustered } => {
            let c: Vec<String> = columns
                .iter()
                .map(|c| {
                    let n = if c.computed { c.name.clone() } else { ident(&c.name) };
                    format!("{n}{}", if c.descending { " DESC" } else { "" })
                })
                .collect();
            let t = q(table, d);
            let mut s = format!(
                "CREATE {}INDEX {} ON {t}({})",
                if *unique { "UNIQUE " } else { "" },
                ident(index_name),
                c.join(", ")
            );
            if let Some(ts) = tablespace.as_deref().map(str::trim).filter(|t| !t.is_empty()) {
                s.push_str(&format!(" TABLESPACE {ts}"));
            }
            out.push(s);
            if *clustered {
                out.push(format!("CLUSTER {t} USING {}", ident(index_name)));
            }
        }
        Change::DropIndex { index, .. } => out.push(format!("DROP INDEX {}", q(index, d))),
        Change::CreateSequence { sequence, data_type, start, increment, min, max, cache, cycle } => {
            let mut s = format!("CREATE SEQUENCE  IF NOT EXISTS {}", q(sequence, d));
            if let Some(t) = data_type {
                s.push_str(&format!(" AS {t}"));
            }
            for (kw, v) in [
                ("START WITH", start),
                ("INCREMENT BY", increment),
                ("MINVALUE", min),
                ("MAXVALUE", max),
                ("CACHE", cache),
            ] {
                if let Some(v) = v {
                    s.push_str(&format!(" {kw} {v}"));
                }
            }
            if *cycle == Some(true) {
                s.push_str(" CYCLE");
            }
            out.push(s);
        }
        Change::AlterSequence { sequence, data_type, increment, min, max, cache, cycle } => {
            let mut s = format!("ALTER SEQUENCE {}", q(sequence, d));
            if let Some(t) = data_type {
                s.push_str(&format!(" AS {t}"));
            }
            if let Some(v) = increment {
                s.push_str(&format!(" INCREMENT BY {v}"));
            }
            if let Some(v) = min {
                s.push_str(&format!(" MINVALUE {v}"));
            }
            if let Some(v) = max {
                s.push_str(&format!(" MAXVALUE {v}"));
            }
            if let Some(v) = cache {
                if v == "0" {
                    s.push_str(" NOCACHE ");
                } else {
                    s.push_str(&format!(" CACHE {v}"));
                }
            }
            match cycle {
                Some(true) => s.push_str(" CYCLE "),
                Some(false) => s.push_str(" NO CYCLE "),
                None => {}
            }
            out.push(s);
        }
        Change::DropSequence { sequence } => out.push(format!("DROP SEQUENCE {} CASCADE", q(sequence, d))),
        Change::RenameSequence { schema, old, new } => {
            out.push(format!("ALTER SEQUENCE {} RENAME TO {}", qualified(schema.as_deref(), old, d), ident(new)));
        }
        Change::CreateView { view, query, replace, remarks, full_definition } => {
            let v = q(view, d);
            if *full_definition {
                out.push(query.clone());
            } else {
                out.push(format!("CREATE {}VIEW {v} AS {query}", if *replace { "OR REPLACE " } else { "" }));
            }
            if let Some(r) = remarks.as_deref().map(str::trim).filter(|r| !r.is_empty()) {
                out.push(format!("COMMENT ON VIEW {v} IS {}", literal(r)));
            }
        }
        Change::DropView { view, if_exists } => {
            out.push(format!("DROP VIEW {}{}", if *if_exists { "IF EXISTS " } else { "" }, q(view, d)));
        }
        Change::RenameView { schema, old, new } => {
            out.push(format!("ALTER TABLE {} RENAME TO {}", qualified(schema.as_deref(), old, d), ident(new)));
        }
        Change::SetTableRemarks { table, remarks } => {
            out.push(format!("COMMENT ON TABLE {} IS {}", q(table, d), literal(remarks)));
        }
        Change::SetColumnRemarks { table, column, remarks } => {
            out.push(format!("COMMENT ON COLUMN {}.{} IS {}", q(table, d), ident(column), literal(remarks)));
        }
        Change::Insert { table, columns } => {
            let names: Vec<String> = columns.iter().map(|c| ident(&c.name)).collect();
            let values: Vec<String> = columns
                .iter()
                .map(|c| c.value.as_ref().map_or_else(|| "NULL".to_string(), |v| value_sql(v, d)))
                .collect();
            out.push(format!("INSERT INTO {} ({}) VALUES ({})", q(table, d), names.join(", "), values.join(", ")));
        }
        Change::Update { table, columns, where_clause, where_params } => {
            let sets: Vec<String> = columns
                .iter()
                .map(|c| {
                    format!(
                        "{} = {}",
                        ident(&c.name),
                        c.value.as_ref().map_or_else(|| "NULL".to_string(), |v| value_sql(v, d))
                    )
                })
                .collect();
            let w = where_clause
                .as_deref()
                .map(|w| format!(" WHERE {}", with_params(w, where_params, d)))
                .unwrap_or_default();
            out.push(format!("UPDATE {} SET {}{w}", q(table, d), sets.join(", ")));
        }
        Change::Delete { table, where_clause, where_params } => {
            let w = where_clause
                .as_deref()
                .map(|w| format!(" WHERE {}", with_params(w, where_params, d)))
                .unwrap_or_default();
            out.push(format!("DELETE FROM {}{w}", q(table, d)));
        }
        Change::Sql(s) | Change::SqlFile { sql: s, .. } => out = raw(s),
        Change::TagDatabase { .. } | Change::Empty => {}
        Change::AddAutoIncrement { table, column, start_with, increment_by } => {
            let mut seq = format!("{}_{}_seq", table.name, column);
            if !ident(&table.name).starts_with('"') && !ident(column).starts_with('"') {
                seq = seq.to_lowercase();
            }
            let schema = table.schema.as_deref().or(d);
            let seq_q = qualified(table.schema.as_deref(), &seq, d);
            let mut s = format!("CREATE SEQUENCE  IF NOT EXISTS {seq_q}");
            if let Some(v) = start_with {
                s.push_str(&format!(" START WITH {v}"));
            }
            if let Some(v) = increment_by {
                s.push_str(&format!(" INCREMENT BY {v}"));
            }
            out.push(s);
            let t = q(table, d);
            out.push(set_not_null(&t, column));
            out.push(format!(
                "ALTER TABLE {t} ALTER COLUMN  {} SET DEFAULT {}",
                ident(column),
                sequence_sql("nextval", schema, &seq, None)
            ));
            out.push(format!("ALTER SEQUENCE {} OWNED BY {t}.{}", qualified(schema, &seq, None), ident(column)));
        }
        Change::AddLookupTable {
            existing,
            existing_column,
            new_table,
            new_column,
            new_column_type,
            constraint_name,
        } => {
            let nt = q(new_table, d);
            let et = q(existing, d);
            out.push(format!(
                "CREATE TABLE {nt} AS SELECT DISTINCT {} AS {} FROM {et} WHERE {} IS NOT NULL",
                ident(existing_column),
                ident(new_column),
                ident(existing_column)
            ));
            let _ = new_column_type;
            out.push(set_not_null(&nt, new_column));
            out.push(format!("ALTER TABLE {nt} ADD PRIMARY KEY ({})", ident(new_column)));
            let name = constraint_name
                .clone()
                .unwrap_or_else(|| format!("FK_{}_{}", existing.name, new_table.name).to_uppercase());
            out.push(format!(
                "ALTER TABLE {et} ADD CONSTRAINT {} FOREIGN KEY ({}) REFERENCES {nt} ({})",
                ident(&name),
                ident(existing_column),
                ident(new_column)
            ));
        }
        Change::DropPrimaryKey { table, constraint_name } => {
            let t = q(table, d);
            match constraint_name {
                Some(n) => out.push(format!("ALTER TABLE {t} DROP CONSTRAINT {}", ident(n))),
                None => {
                    // Liquibase looks the name up in a DO block (schema and table as PostgreSQL
                    // folds them).
                    let schema = table.schema.as_deref().or(d).unwrap_or("public");
                    let fold = |n: &str| if ident(n).starts_with('"') { n.to_string() } else { n.to_lowercase() };
                    let (s, tn) = (fold(schema), fold(&table.name));
                    out.push(format!(
                        "DO $$ DECLARE constraint_name varchar;\nBEGIN\n  SELECT tc.CONSTRAINT_NAME into strict constraint_name\n    FROM INFORMATION_SCHEMA.TABLE_CONSTRAINTS tc\n    WHERE CONSTRAINT_TYPE = 'PRIMARY KEY'\n      AND TABLE_NAME = {} AND TABLE_SCHEMA = {};\n    EXECUTE 'alter table {}.{} drop constraint \"' || constraint_name || '\"';\nEND $$;",
                        literal(&tn),
                        literal(&s),
                        ident(&s).replace('\'', "''"),
                        ident(&tn).replace('\'', "''")
                    ));
                }
            }
        }
        Change::DropUniqueConstraint { table, constraint_name } => {
            out.push(format!("ALTER TABLE {} DROP CONSTRAINT {}", q(table, d), ident(constraint_name)));
        }
        Change::DropAllForeignKeyConstraints { table } => {
            // Liquibase reads the table's foreign keys when it runs and drops each; the same,
            // decided in the database.
            let schema = table.schema.as_deref().or(d).unwrap_or("public");
            let t = q(table, d);
            out.push(format!(
                "DO $$ DECLARE r record;\nBEGIN\n  FOR r IN SELECT con.conname FROM pg_catalog.pg_constraint con\n      JOIN pg_catalog.pg_class rel ON rel.oid = con.conrelid\n      JOIN pg_catalog.pg_namespace nsp ON nsp.oid = rel.relnamespace\n     WHERE con.contype = 'f' AND nsp.nspname = {} AND rel.relname = {}\n  LOOP\n    EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', {}, r.conname);\n  END LOOP;\nEND $$",
                literal(&fold_name(schema)),
                literal(&fold_name(&table.name)),
                literal(&t)
            ));
        }
        Change::MergeColumns { table, column1, join_string, column2, final_column, final_type } => {
            let t = q(table, d);
            let (ty, _) = pg_type(final_type)?;
            out.push(format!("ALTER TABLE {t} ADD {} {ty}", ident(final_column)));
            let join = join_string.clone().unwrap_or_else(|| "null".into());
            out.push(format!(
                "UPDATE {t} SET {} = {} || '{join}' || {}",
                ident(final_column),
                ident(column1),
                ident(column2)
            ));
            out.push(format!("ALTER TABLE {t} DROP COLUMN {}", ident(column1)));
            out.push(format!("ALTER TABLE {t} DROP COLUMN {}", ident(column2)));
        }
        Change::CreateProcedure { schema, text, dbms, .. } => {
            if !expr::dbms_match(dbms.as_deref(), "postgresql") {
                return Ok(out);
            }
            let mut body = text.clone();
            if let Some(s) = schema {
                body = schema_into_procedure(&body, s);
            }
            out.push(strip_trailing_delimiter(&body, ";"));
        }
        Change::DropProcedure { procedure } => out.push(format!("DROP PROCEDURE {}", q(procedure, d))),
        Change::LoadData(l) => out = l.statements(d, catalog)?,
        Change::Output { .. } | Change::Stop { .. } | Change::ExecuteCommand { .. } => {}
    }
    Ok(out)
}

/// A name as PostgreSQL stores it when Liquibase writes it unquoted.
fn fold_name(n: &str) -> String {
    if ident(n).starts_with('"') {
        n.to_string()
    } else {
        n.to_lowercase()
    }
}

/// `CreateProcedureGenerator.removeTrailingDelimiter`: the text without trailing comments
/// and whitespace loses a final `delimiter`.
fn strip_trailing_delimiter(text: &str, delimiter: &str) -> String {
    let trimmed = strip_end_comments(text);
    match trimmed.strip_suffix(delimiter) {
        Some(t) => t.to_string(),
        None => text.to_string(),
    }
}

/// Comments and whitespace at the end of the text removed.
fn strip_end_comments(text: &str) -> String {
    let mut t = text.trim_end().to_string();
    loop {
        if t.ends_with("*/") {
            if let Some(i) = t.rfind("/*") {
                t.truncate(i);
                t = t.trim_end().to_string();
                continue;
            }
        }
        if let Some(last_line_start) = t.rfind('\n').map(|i| i + 1).or(Some(0)) {
            let last = &t[last_line_start..];
            if let Some(c) = last.find("--") {
                if !last[..c].contains('\'') {
                    t.truncate(last_line_start + c);
                    t = t.trim_end().to_string();
                    continue;
                }
            }
        }
        break;
    }
    t
}

/// `CreateProcedureGenerator.addSchemaToText`: the name after `PROCEDURE` gets the schema.
fn schema_into_procedure(text: &str, schema: &str) -> String {
    let words: Vec<(usize, &str)> = text
        .split_whitespace()
        .scan(0usize, |pos, w| {
            let start = text[*pos..].find(w).map(|i| i + *pos).unwrap_or(*pos);
            *pos = start + w.len();
            Some((start, w))
        })
        .collect();
    for (i, (_, w)) in words.iter().enumerate() {
        if w.eq_ignore_ascii_case("PROCEDURE") {
            if let Some((start, name)) = words.get(i + 1) {
                let bare = name.split('(').next().unwrap_or(name);
                let rest = &name[bare.len()..];
                let parts: Vec<&str> = bare.split('.').collect();
                let final_name = match parts.len() {
                    1 => format!("{}.{}", ident(schema), parts[0]),
                    2 => format!("{}.{}", ident(schema), parts[1]),
                    _ => bare.to_string(),
                };
                return format!("{}{final_name}{rest}{}", &text[..*start], &text[start + name.len()..]);
            }
        }
    }
    text.to_string()
}

/// `CONSTRAINT "name" ` when the change names its constraint, else nothing (PostgreSQL names it).
fn constraint(name: Option<&str>) -> String {
    name.map(|n| format!("CONSTRAINT {} ", ident(n))).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn java_replacements() {
        assert_eq!(java_replacement("x$1y"), "x${1}y");
        assert_eq!(java_replacement("\\$"), "$$");
        let re = regex::Regex::new("[0-9]{3}([A-z]+)[0-9]{2}").ok();
        assert_eq!(
            re.map(|r| r.replace_all("a123abc45b", java_replacement("<$1>").as_str()).into_owned()),
            Some("a<abc>b".into())
        );
    }
}
