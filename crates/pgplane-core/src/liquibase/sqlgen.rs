//! PostgreSQL SQL for Liquibase changes, following Liquibase 4.28's generators and type
//! mapping for PostgreSQL, so that the schema pgplane creates is the one Liquibase creates.

use super::{expr, Change, Column, Name, SqlChange, Statement, Value};
use crate::sqlsplit;

/// PostgreSQL's reserved key words (SQL key words appendix, "reserved" and "reserved
/// (can be function or type)"): Liquibase quotes these, and names with mixed case.
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
    "system_user",
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

/// An identifier the way Liquibase (LEGACY quoting) writes it for PostgreSQL: quoted when it
/// has mixed case, is a reserved word, or is not a plain identifier.
pub(crate) fn ident(name: &str) -> String {
    let mixed = name.chars().any(|c| c.is_ascii_uppercase()) && name.chars().any(|c| c.is_ascii_lowercase());
    let plain = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$');
    if mixed || !plain || RESERVED.contains(&name.to_ascii_lowercase().as_str()) {
        format!("\"{}\"", name.replace('"', "\"\""))
    } else {
        name.to_string()
    }
}

pub(crate) fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn qualified(schema: Option<&str>, name: &str, default_schema: Option<&str>) -> String {
    match schema.or(default_schema) {
        Some(s) => format!("{}.{}", ident(s), ident(name)),
        None => ident(name),
    }
}

fn q(n: &Name, d: Option<&str>) -> String {
    qualified(n.schema.as_deref(), &n.name, d)
}

fn cols(c: &[String]) -> String {
    c.iter().map(|c| ident(c)).collect::<Vec<_>>().join(", ")
}

/// A Liquibase type name mapped to PostgreSQL, as Liquibase's `*Type` classes do. Returns
/// the type and whether it implies auto-increment (serial types).
pub(crate) fn pg_type(t: &str) -> (String, bool) {
    let t = t.trim();
    let (base, params) = match t.find('(') {
        Some(i) if t.ends_with(')') => (t[..i].trim(), Some(&t[i + 1..t.len() - 1])),
        _ => (t, None),
    };
    let params = params.map(|p| p.split(',').map(str::trim).collect::<Vec<_>>().join(", "));
    let with = |name: &str| match &params {
        Some(p) => format!("{name}({p})"),
        None => name.to_string(),
    };
    let lower = base.to_ascii_lowercase();
    let lower = lower.trim_start_matches("java.sql.types.");
    let r = match lower {
        "int" | "integer" | "int4" | "mediumint" => "INTEGER".to_string(),
        "bigint" | "int8" | "long" => "BIGINT".to_string(),
        "smallint" | "int2" | "tinyint" => "SMALLINT".to_string(),
        "serial" | "serial4" => return ("INTEGER".into(), true),
        "bigserial" | "serial8" => return ("BIGINT".into(), true),
        "smallserial" | "serial2" => return ("SMALLINT".into(), true),
        "varchar" | "nvarchar" | "varchar2" | "nvarchar2" | "character varying" | "varying" => with("VARCHAR"),
        "char" | "nchar" | "character" => with("CHAR"),
        "text" | "clob" | "nclob" | "longtext" | "mediumtext" | "tinytext" | "ntext" | "longvarchar" => "TEXT".into(),
        "boolean" | "bool" | "bit" => "BOOLEAN".into(),
        "date" => "date".into(),
        "time" | "time without time zone" => format!("{} WITHOUT TIME ZONE", with("time")),
        "timetz" | "time with time zone" => format!("{} WITH TIME ZONE", with("TIME")),
        "timestamp" | "datetime" | "timestamp without time zone" | "smalldatetime" | "datetime2" => {
            format!("{} WITHOUT TIME ZONE", with("TIMESTAMP"))
        }
        "timestamptz" | "timestamp with time zone" | "datetimeoffset" => {
            format!("{} WITH TIME ZONE", with("TIMESTAMP"))
        }
        "decimal" | "dec" => with("DECIMAL"),
        "numeric" | "number" => with("numeric"),
        "currency" | "money" | "smallmoney" => "DECIMAL".into(),
        "double" | "double precision" | "float8" => "DOUBLE PRECISION".into(),
        "float" => with("FLOAT"),
        "real" | "float4" => "REAL".into(),
        "blob" | "longblob" | "mediumblob" | "tinyblob" | "image" | "longvarbinary" => "OID".into(),
        "bytea" | "binary" | "varbinary" | "raw" => "BYTEA".into(),
        "uuid" | "uniqueidentifier" => "UUID".into(),
        _ => t.to_string(),
    };
    (r, false)
}

/// A current-time function Liquibase replaces with PostgreSQL's `NOW()`.
fn computed(v: &str) -> String {
    let l = v.trim().to_ascii_lowercase();
    if l == "now()" || l.starts_with("current_timestamp") || l == "current_datetime" {
        "NOW()".into()
    } else {
        v.to_string()
    }
}

fn value_sql(v: &Value) -> String {
    match v {
        Value::Text(s) => literal(s),
        Value::Numeric(n) => n.clone(),
        Value::Boolean(b) => if *b { "TRUE" } else { "FALSE" }.into(),
        Value::Date(d) => literal(&d.replacen('T', " ", 1)),
        Value::Computed(c) => computed(c),
    }
}

fn column_def(c: &Column, in_create_table: bool) -> String {
    let (ty, serial) = c.data_type.as_deref().map(pg_type).unwrap_or_default();
    let mut s = format!("{} {ty}", ident(&c.name));
    let cons = c.constraints.clone().unwrap_or_default();
    if c.auto_increment || serial {
        s.push_str(" GENERATED BY DEFAULT AS IDENTITY");
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
    } else if let Some(d) = &c.default {
        let numeric_type = ["INTEGER", "BIGINT", "SMALLINT", "DECIMAL", "numeric", "FLOAT", "REAL", "DOUBLE"]
            .iter()
            .any(|p| ty.starts_with(p));
        match d {
            Value::Text(v) if numeric_type && v.trim().parse::<f64>().is_ok() => s.push_str(&format!(" DEFAULT {v}")),
            d => s.push_str(&format!(" DEFAULT {}", value_sql(d))),
        }
    }
    if cons.nullable == Some(false) || (cons.primary_key && in_create_table) {
        s.push_str(" NOT NULL");
    }
    if !in_create_table && cons.primary_key {
        s.push_str(" PRIMARY KEY");
    }
    s
}

/// `references: table(col)` or referencedTableName + referencedColumnNames.
fn fk_target(c: &Column) -> Option<(Name, String)> {
    let cons = c.constraints.as_ref()?;
    if let Some(r) = &cons.references {
        let (t, cols) = match r.find('(') {
            Some(i) => (r[..i].trim(), r[i + 1..].trim_end_matches(')').trim()),
            None => (r.trim(), ""),
        };
        let name = match t.split_once('.') {
            Some((s, t)) => Name { schema: Some(s.to_string()), name: t.to_string() },
            None => Name { schema: None, name: t.to_string() },
        };
        let cols: Vec<String> = cols.split(',').map(|c| c.trim().to_string()).filter(|c| !c.is_empty()).collect();
        return Some((name, self::cols(&cols)));
    }
    let t = cons.referenced_table.as_ref()?;
    let cols: Vec<String> =
        cons.referenced_columns.as_deref().unwrap_or("").split(',').map(|c| c.trim().to_string()).collect();
    Some((Name { schema: cons.referenced_table_schema.clone(), name: t.clone() }, self::cols(&cols)))
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
        if let Some(r) = &c.remarks {
            out.push(format!("COMMENT ON COLUMN {table}.{} IS {}", ident(&c.name), literal(r)));
        }
    }
}

fn raw(s: &SqlChange) -> Vec<String> {
    if !expr::dbms_match(s.dbms.as_deref(), "postgresql") {
        return Vec::new();
    }
    let sql = if s.strip_comments { sqlsplit::strip_comments(&s.sql) } else { s.sql.clone() };
    if s.split_statements {
        sqlsplit::split(&sql, s.end_delimiter.as_deref())
    } else {
        let t = sql.trim();
        if t.is_empty() {
            Vec::new()
        } else {
            vec![t.to_string()]
        }
    }
}

pub(crate) fn statements(changes: &[Change], d: Option<&str>) -> Vec<Statement> {
    let mut out = Vec::new();
    for (i, c) in changes.iter().enumerate() {
        for sql in change_sql(c, d) {
            out.push(Statement { sql, change_index: i });
        }
    }
    out
}

fn change_sql(c: &Change, d: Option<&str>) -> Vec<String> {
    let mut out = Vec::new();
    match c {
        Change::CreateTable { table, remarks: table_remarks, columns } => {
            let t = q(table, d);
            let mut parts: Vec<String> = columns.iter().map(|c| column_def(c, true)).collect();
            let pk: Vec<&Column> =
                columns.iter().filter(|c| c.constraints.as_ref().is_some_and(|k| k.primary_key)).collect();
            if !pk.is_empty() {
                let name = pk
                    .iter()
                    .find_map(|c| c.constraints.as_ref().and_then(|k| k.primary_key_name.clone()))
                    .unwrap_or_else(|| format!("{}_pkey", table.name));
                let names: Vec<String> = pk.iter().map(|c| c.name.clone()).collect();
                parts.push(format!("CONSTRAINT {} PRIMARY KEY ({})", ident(&name), cols(&names)));
            }
            for c in columns {
                let Some(k) = &c.constraints else { continue };
                if let Some((target, rcols)) = fk_target(c) {
                    let name = constraint(k.foreign_key_name.as_deref());
                    parts.push(format!(
                        "{name}FOREIGN KEY ({}) REFERENCES {}({rcols}){}",
                        ident(&c.name),
                        q(&target, d),
                        fk_suffix(k.delete_cascade, k.deferrable, k.initially_deferred)
                    ));
                }
            }
            for c in columns {
                let Some(k) = &c.constraints else { continue };
                if k.unique {
                    let name = constraint(k.unique_constraint_name.as_deref());
                    parts.push(format!("{name}UNIQUE ({})", ident(&c.name)));
                }
            }
            out.push(format!("CREATE TABLE {t} ({})", parts.join(", ")));
            if let Some(r) = table_remarks {
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
            for c in columns {
                out.push(format!("ALTER TABLE {t} ADD {}", column_def(c, false)));
                let Some(k) = &c.constraints else { continue };
                if k.unique {
                    let name = constraint(k.unique_constraint_name.as_deref());
                    out.push(format!("ALTER TABLE {t} ADD {name}UNIQUE ({})", ident(&c.name)));
                }
                if let (Some((target, rcols)), Some(name)) = (fk_target(c), &k.foreign_key_name) {
                    out.push(format!(
                        "ALTER TABLE {t} ADD CONSTRAINT {} FOREIGN KEY ({}) REFERENCES {} ({rcols}){}",
                        ident(name),
                        ident(&c.name),
                        q(&target, d),
                        fk_suffix(k.delete_cascade, k.deferrable, k.initially_deferred)
                    ));
                }
            }
            remarks(&mut out, &t, columns);
        }
        Change::DropColumn { table, column } => {
            out.push(format!("ALTER TABLE {} DROP COLUMN {}", q(table, d), ident(column)));
        }
        Change::RenameColumn { table, old, new, .. } => {
            let t = q(table, d);
            // Liquibase 4.28 writes no comment for renameColumn's remarks on PostgreSQL.
            out.push(format!("ALTER TABLE {t} RENAME COLUMN {} TO {}", ident(old), ident(new)));
        }
        Change::ModifyDataType { table, column, new_type } => {
            let (ty, _) = pg_type(new_type);
            let c = ident(column);
            out.push(format!("ALTER TABLE {} ALTER COLUMN {c} TYPE {ty} USING ({c}::{ty})", q(table, d)));
        }
        Change::AddNotNullConstraint { table, column, default_null_value } => {
            let t = q(table, d);
            if let Some(v) = default_null_value {
                out.push(format!("UPDATE {t} SET {c} = {} WHERE {c} IS NULL", literal(v), c = ident(column)));
            }
            out.push(format!("ALTER TABLE {t} ALTER COLUMN  {} SET NOT NULL", ident(column)));
        }
        Change::DropNotNullConstraint { table, column } => {
            out.push(format!("ALTER TABLE {} ALTER COLUMN  {} DROP NOT NULL", q(table, d), ident(column)));
        }
        Change::AddDefaultValue { table, column, value } => {
            out.push(format!(
                "ALTER TABLE {} ALTER COLUMN  {} SET DEFAULT {}",
                q(table, d),
                ident(column),
                value_sql(value)
            ));
        }
        Change::DropDefaultValue { table, column } => {
            out.push(format!("ALTER TABLE {} ALTER COLUMN {} DROP DEFAULT", q(table, d), ident(column)));
        }
        Change::AddPrimaryKey { table, columns, constraint_name } => {
            let name = constraint(constraint_name.as_deref());
            out.push(format!("ALTER TABLE {} ADD {name}PRIMARY KEY ({})", q(table, d), cols(columns)));
        }
        Change::AddUniqueConstraint { table, columns, constraint_name, deferrable, initially_deferred } => {
            let name = constraint(constraint_name.as_deref());
            out.push(format!(
                "ALTER TABLE {} ADD {name}UNIQUE ({}){}",
                q(table, d),
                cols(columns),
                fk_suffix(false, *deferrable, *initially_deferred)
            ));
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
            s.push_str(&fk_suffix(false, *deferrable, *initially_deferred));
            out.push(s);
        }
        Change::DropForeignKeyConstraint { table, constraint_name } => {
            out.push(format!("ALTER TABLE {} DROP CONSTRAINT {}", q(table, d), ident(constraint_name)));
        }
        Change::CreateIndex { table, index_name, unique, columns } => {
            let c: Vec<String> = columns
                .iter()
                .map(|c| format!("{}{}", ident(&c.name), if c.descending { " DESC" } else { "" }))
                .collect();
            out.push(format!(
                "CREATE {}INDEX {} ON {}({})",
                if *unique { "UNIQUE " } else { "" },
                ident(index_name),
                q(table, d),
                c.join(", ")
            ));
        }
        Change::DropIndex { index, .. } => out.push(format!("DROP INDEX {}", q(index, d))),
        Change::CreateSequence { sequence, data_type, start, increment, min, max, cache, cycle } => {
            let mut s = format!("CREATE SEQUENCE  IF NOT EXISTS {}", q(sequence, d));
            if let Some(t) = data_type {
                s.push_str(&format!(" AS {}", pg_type(t).0));
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
        Change::CreateView { view, query, replace, remarks } => {
            let v = q(view, d);
            out.push(format!("CREATE {}VIEW {v} AS {query}", if *replace { "OR REPLACE " } else { "" }));
            if let Some(r) = remarks {
                out.push(format!("COMMENT ON VIEW {v} IS {}", literal(r)));
            }
        }
        Change::DropView { view } => out.push(format!("DROP VIEW {}", q(view, d))),
        Change::SetTableRemarks { table, remarks } => {
            out.push(format!("COMMENT ON TABLE {} IS {}", q(table, d), literal(remarks)));
        }
        Change::SetColumnRemarks { table, column, remarks } => {
            out.push(format!("COMMENT ON COLUMN {}.{} IS {}", q(table, d), ident(column), literal(remarks)));
        }
        Change::Insert { table, columns } => {
            let names: Vec<String> = columns.iter().map(|c| ident(&c.name)).collect();
            let values: Vec<String> =
                columns.iter().map(|c| c.value.as_ref().map_or_else(|| "NULL".to_string(), value_sql)).collect();
            out.push(format!("INSERT INTO {} ({}) VALUES ({})", q(table, d), names.join(", "), values.join(", ")));
        }
        Change::Update { table, columns, where_clause } => {
            let sets: Vec<String> = columns
                .iter()
                .map(|c| {
                    format!("{} = {}", ident(&c.name), c.value.as_ref().map_or_else(|| "NULL".to_string(), value_sql))
                })
                .collect();
            let w = where_clause.as_deref().map(|w| format!(" WHERE {w}")).unwrap_or_default();
            out.push(format!("UPDATE {} SET {}{w}", q(table, d), sets.join(", ")));
        }
        Change::Delete { table, where_clause } => {
            let w = where_clause.as_deref().map(|w| format!(" WHERE {w}")).unwrap_or_default();
            out.push(format!("DELETE FROM {}{w}", q(table, d)));
        }
        Change::Sql(s) | Change::SqlFile { sql: s, .. } => out = raw(s),
        Change::TagDatabase { .. } => {}
    }
    out
}

/// `CONSTRAINT "name" ` when the change names its constraint, else nothing (PostgreSQL names it).
fn constraint(name: Option<&str>) -> String {
    name.map(|n| format!("CONSTRAINT {} ", ident(n))).unwrap_or_default()
}
