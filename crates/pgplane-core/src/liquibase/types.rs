//! Liquibase type names → PostgreSQL types, as Liquibase 4.28's `DataTypeFactory` and the
//! `liquibase.datatype.core` classes do it for PostgreSQL 10 and later: the name is
//! looked up among the classes' names and aliases (without case), parameters and trailing
//! words are kept where the class keeps them, and unknown names pass through upper-cased.
//! Checked row by row against real Liquibase (`tests/fixtures/liquibase-types.tsv`).

/// The Liquibase data type classes (by their `@DataTypeInfo` names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    BigInt,
    Blob,
    Boolean,
    Char,
    Clob,
    Currency,
    Function,
    DateTime,
    Date,
    Decimal,
    Double,
    Float,
    Int,
    MediumInt,
    NChar,
    NVarchar,
    Number,
    SmallInt,
    Time,
    Timestamp,
    TinyInt,
    Uuid,
    Varchar,
    Xml,
}

/// Every registered name and alias, lower-cased, with its class.
const REGISTRY: &[(&str, Class)] = &[
    ("bigint", Class::BigInt),
    ("java.sql.types.bigint", Class::BigInt),
    ("java.math.biginteger", Class::BigInt),
    ("java.lang.long", Class::BigInt),
    ("integer8", Class::BigInt),
    ("bigserial", Class::BigInt),
    ("serial8", Class::BigInt),
    ("int8", Class::BigInt),
    ("blob", Class::Blob),
    ("longblob", Class::Blob),
    ("longvarbinary", Class::Blob),
    ("java.sql.types.blob", Class::Blob),
    ("java.sql.types.longblob", Class::Blob),
    ("java.sql.types.longvarbinary", Class::Blob),
    ("java.sql.types.varbinary", Class::Blob),
    ("java.sql.types.binary", Class::Blob),
    ("varbinary", Class::Blob),
    ("binary", Class::Blob),
    ("image", Class::Blob),
    ("tinyblob", Class::Blob),
    ("mediumblob", Class::Blob),
    ("long binary", Class::Blob),
    ("long varbinary", Class::Blob),
    ("boolean", Class::Boolean),
    ("java.sql.types.boolean", Class::Boolean),
    ("java.lang.boolean", Class::Boolean),
    ("bit", Class::Boolean),
    ("bool", Class::Boolean),
    ("char", Class::Char),
    ("java.sql.types.char", Class::Char),
    ("bpchar", Class::Char),
    ("character", Class::Char),
    ("clob", Class::Clob),
    ("longvarchar", Class::Clob),
    ("text", Class::Clob),
    ("longtext", Class::Clob),
    ("java.sql.types.longvarchar", Class::Clob),
    ("java.sql.types.clob", Class::Clob),
    ("nclob", Class::Clob),
    ("longnvarchar", Class::Clob),
    ("ntext", Class::Clob),
    ("java.sql.types.longnvarchar", Class::Clob),
    ("java.sql.types.nclob", Class::Clob),
    ("tinytext", Class::Clob),
    ("mediumtext", Class::Clob),
    ("long varchar", Class::Clob),
    ("long nvarchar", Class::Clob),
    ("currency", Class::Currency),
    ("money", Class::Currency),
    ("smallmoney", Class::Currency),
    ("function", Class::Function),
    ("liquibase.statement.databasefunction", Class::Function),
    ("datetime", Class::DateTime),
    ("java.sql.types.datetime", Class::DateTime),
    ("java.util.date", Class::DateTime),
    ("smalldatetime", Class::DateTime),
    ("datetime2", Class::DateTime),
    ("date", Class::Date),
    ("java.sql.types.date", Class::Date),
    ("java.sql.date", Class::Date),
    ("decimal", Class::Decimal),
    ("java.sql.types.decimal", Class::Decimal),
    ("java.math.bigdecimal", Class::Decimal),
    ("double", Class::Double),
    ("java.sql.types.double", Class::Double),
    ("java.lang.double", Class::Double),
    ("float", Class::Float),
    ("java.sql.types.float", Class::Float),
    ("java.lang.float", Class::Float),
    ("real", Class::Float),
    ("java.sql.types.real", Class::Float),
    ("int", Class::Int),
    ("integer", Class::Int),
    ("java.sql.types.integer", Class::Int),
    ("java.lang.integer", Class::Int),
    ("serial", Class::Int),
    ("int4", Class::Int),
    ("serial4", Class::Int),
    ("mediumint", Class::MediumInt),
    ("nchar", Class::NChar),
    ("java.sql.types.nchar", Class::NChar),
    ("nchar2", Class::NChar),
    ("nvarchar", Class::NVarchar),
    ("java.sql.types.nvarchar", Class::NVarchar),
    ("nvarchar2", Class::NVarchar),
    ("national", Class::NVarchar),
    ("number", Class::Number),
    ("numeric", Class::Number),
    ("java.sql.types.numeric", Class::Number),
    ("smallint", Class::SmallInt),
    ("java.sql.types.smallint", Class::SmallInt),
    ("int2", Class::SmallInt),
    ("smallserial", Class::SmallInt),
    ("time", Class::Time),
    ("java.sql.types.time", Class::Time),
    ("java.sql.time", Class::Time),
    ("timetz", Class::Time),
    ("timestamp", Class::Timestamp),
    ("java.sql.types.timestamp", Class::Timestamp),
    ("java.sql.types.timestamp_with_timezone", Class::Timestamp),
    ("java.sql.timestamp", Class::Timestamp),
    ("timestamptz", Class::Timestamp),
    ("tinyint", Class::TinyInt),
    ("java.sql.types.tinyint", Class::TinyInt),
    ("uuid", Class::Uuid),
    ("uniqueidentifier", Class::Uuid),
    ("java.util.uuid", Class::Uuid),
    ("varchar", Class::Varchar),
    ("java.sql.types.varchar", Class::Varchar),
    ("java.lang.string", Class::Varchar),
    ("varchar2", Class::Varchar),
    ("character varying", Class::Varchar),
    ("xml", Class::Xml),
    ("xmltype", Class::Xml),
    ("java.sql.types.sqlxml", Class::Xml),
];

/// How `loadData` treats a column of a type (Liquibase's `LOAD_DATA_TYPE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadType {
    Boolean,
    Numeric,
    Date,
    String,
    Computed,
    Blob,
    Clob,
    Uuid,
}

/// A type as Liquibase resolves it: the PostgreSQL type, whether it implies
/// auto-increment (the serial names), and its `loadData` treatment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgType {
    pub sql: String,
    pub auto_increment: bool,
    pub load: LoadType,
    /// Liquibase's class was found (not an unknown, passed-through name).
    pub known: bool,
}

/// Errors Liquibase raises for a type on PostgreSQL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeError(pub String);

/// Java's `replaceFirst("\\s*\\(.*\\)", "")`: from the whitespace before the first `(` to
/// the last `)`.
fn strip_parens(name: &str) -> String {
    let (Some(open), Some(close)) = (name.find('('), name.rfind(')')) else { return name.to_string() };
    if close < open {
        return name.to_string();
    }
    let start = name[..open].trim_end().len();
    format!("{}{}", &name[..start], &name[close + 1..])
}

fn upper(s: &str) -> String {
    s.to_ascii_uppercase()
}

fn with_params(name: &str, params: &[String]) -> String {
    if params.is_empty() {
        name.to_string()
    } else {
        format!("{name}({})", params.join(", "))
    }
}

fn add_info(mut t: String, info: Option<&str>) -> String {
    if let Some(i) = info {
        t.push(' ');
        t.push_str(i);
    }
    t
}

/// The Liquibase data type class a type name resolves to (`None`: an unknown name).
pub(crate) fn class_of(definition: &str) -> Option<Class> {
    let mut name = definition.to_string();
    if name.find('(').is_some_and(|i| i > 0) && name.rfind(')').is_some_and(|c| Some(c) > name.find('(')) {
        name = strip_parens(&name);
    }
    if let Some(i) = name.find('{').filter(|&i| i > 0) {
        name = name[..i].trim_end().to_string();
    }
    let lower = name.to_ascii_lowercase();
    let lower = lower.strip_suffix(" identity").unwrap_or(&lower).trim().to_string();
    let keep_whole =
        ["bit varying", "character varying", "long varchar", "long nvarchar", "long binary", "long varbinary"]
            .iter()
            .any(|p| lower.starts_with(p));
    let key = if keep_whole { lower.clone() } else { lower.split_whitespace().next().unwrap_or("").to_string() };
    let key = key.trim_matches(|c| c == '"' || c == '`' || c == '[' || c == ']' || c == '\'');
    REGISTRY.iter().find(|(n, _)| n.eq_ignore_ascii_case(key)).map(|(_, c)| *c)
}

/// Resolves a changelog type name (`varchar(255)`, `bigint{autoIncrement:true}`,
/// `timestamp with time zone`, `java.sql.Types.VARCHAR(10)` …) for PostgreSQL.
pub fn resolve(definition: &str) -> Result<PgType, TypeError> {
    let def = definition;
    if def.starts_with("${") && def.ends_with('}') {
        return Ok(PgType { sql: upper(def), auto_increment: false, load: LoadType::String, known: false });
    }
    let mut name = def.to_string();
    // `.+\(.*\).*`: a name, then parentheses.
    if name.find('(').is_some_and(|i| i > 0) && name.rfind(')').is_some_and(|c| Some(c) > name.find('(')) {
        name = strip_parens(&name);
    }
    if let Some(i) = name.find('{').filter(|&i| i > 0) {
        name = name[..i].trim_end().to_string();
    }
    let mut auto_increment = false;
    if name.to_ascii_lowercase().ends_with(" identity") {
        name = name.to_ascii_lowercase();
        name.truncate(name.len() - " identity".len());
        auto_increment = true;
    }
    for (open, close) in [('"', '"'), ('[', ']'), ('`', '`'), ('\'', '\'')] {
        if let Some(rest) = name.strip_prefix(open) {
            if let Some(c) = rest.find(close) {
                if !rest[c + 1..].contains(close) {
                    name = format!("{}{}", &rest[..c], &rest[c + 1..]);
                    break;
                }
            }
        }
    }
    let lower = name.to_ascii_lowercase();
    let mut info: Option<String> = None;
    let keep_whole =
        ["bit varying", "character varying", "long varchar", "long nvarchar", "long binary", "long varbinary"]
            .iter()
            .any(|p| lower.starts_with(p));
    if !keep_whole {
        let t = name.trim();
        match t.find(char::is_whitespace) {
            Some(i) => {
                info = Some(t[i..].trim_start().to_string());
                name = t[..i].to_string();
            }
            None => name = t.to_string(),
        }
    }
    let class = REGISTRY.iter().find(|(n, _)| n.eq_ignore_ascii_case(&name)).map(|(_, c)| *c);
    // Parameters: between the first `(` and the next `)` of the whole definition.
    let mut params: Vec<String> = Vec::new();
    if let Some(open) = def.find('(').filter(|&i| i > 0) {
        let rest = &def[open + 1..];
        let inner = rest.find(')').map_or(rest, |c| &rest[..c]);
        for p in inner.split(',') {
            let p = p.trim();
            if !p.is_empty() {
                let p = if matches!(class, Some(Class::Char | Class::Varchar | Class::NChar | Class::NVarchar)) {
                    p.replacen(" BYTE", "", 1)
                } else {
                    p.to_string()
                };
                params.push(p);
            }
        }
    }
    // Embedded `{autoIncrement:true}` and friends.
    if let Some(open) = def.find('{') {
        let rest = &def[open + 1..];
        let inner = rest.find('}').map_or(rest, |c| &rest[..c]);
        for p in inner.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((k, v)) = p.split_once(':') else {
                return Err(TypeError(format!(
                    "data type definition contains unparseable embedded information: `{def}`"
                )));
            };
            if k.trim() == "autoIncrement" && v.trim().eq_ignore_ascii_case("true") {
                auto_increment = true;
            }
        }
    }
    let raw = def.trim();
    let raw_lower = raw.to_ascii_lowercase();
    if lower == "timestamp_ntz" {
        // Registered by Liquibase's Snowflake support; it fails on PostgreSQL.
        return Err(TypeError("timestamp_ntz is a Snowflake type; Liquibase fails on it for PostgreSQL".into()));
    }
    let Some(class) = class else {
        // UnknownType: at most 2 parameters (any number for enum and set).
        let n = if lower == "enum" || lower == "set" { usize::MAX } else { 2 };
        let p: Vec<String> = params.into_iter().take(n).collect();
        let base = if upper(&name).starts_with("INTERVAL") && !def.contains('(') { upper(def) } else { upper(&name) };
        let sql = add_info(with_params(&base, &p), info.as_deref());
        return Ok(PgType { sql, auto_increment, load: LoadType::String, known: false });
    };
    let serial = match class {
        Class::Int => raw_lower.starts_with("serial"),
        Class::BigInt | Class::SmallInt => raw_lower.contains("serial"),
        _ => false,
    };
    let auto_increment = auto_increment || serial;
    let generic = |n: &str| add_info(with_params(n, &params), info.as_deref());
    let (sql, load) = match class {
        Class::BigInt => (add_info("BIGINT".into(), info.as_deref()), LoadType::Numeric),
        Class::Int => ("INTEGER".into(), LoadType::Numeric),
        Class::SmallInt => ("SMALLINT".into(), LoadType::Numeric),
        Class::TinyInt => ("SMALLINT".into(), LoadType::Numeric),
        Class::MediumInt => (generic("MEDIUMINT"), LoadType::Numeric),
        Class::Boolean => {
            if raw_lower.starts_with("bit") {
                (with_params("BIT", &params), LoadType::Boolean)
            } else {
                (generic("BOOLEAN"), LoadType::Boolean)
            }
        }
        Class::Char | Class::Varchar | Class::NChar => {
            let n = match class {
                Class::Char => "CHAR",
                Class::Varchar => "VARCHAR",
                _ => "NCHAR",
            };
            if params.len() == 1 {
                let p = strip_char_suffix(&params[0]);
                if p == "2147483647" {
                    ("CHARACTER VARYING".into(), LoadType::String)
                } else {
                    (add_info(format!("{n}({p})"), info.as_deref()), LoadType::String)
                }
            } else {
                (generic(n), LoadType::String)
            }
        }
        Class::NVarchar => (with_params("VARCHAR", &params), LoadType::String),
        Class::Clob => ("TEXT".into(), LoadType::Clob),
        Class::Blob => {
            if raw_lower.starts_with("blob") || raw == "java.sql.Types.BLOB" {
                ("OID".into(), LoadType::Blob)
            } else {
                ("BYTEA".into(), LoadType::Blob)
            }
        }
        Class::Currency => ("DECIMAL".into(), LoadType::Numeric),
        Class::Function => (generic("FUNCTION"), LoadType::Computed),
        Class::Date => ("date".into(), LoadType::Date),
        Class::Decimal => (generic("DECIMAL"), LoadType::Numeric),
        Class::Double => ("DOUBLE PRECISION".into(), LoadType::Numeric),
        Class::Float => {
            if raw_lower == "real" {
                ("REAL".into(), LoadType::Numeric)
            } else {
                (generic("FLOAT"), LoadType::Numeric)
            }
        }
        Class::Number => {
            let big = params.first().and_then(|p| p.parse::<i64>().ok()).is_some_and(|n| n > 1000);
            if big {
                ("numeric".into(), LoadType::Numeric)
            } else {
                (with_params("numeric", &params), LoadType::Numeric)
            }
        }
        Class::Uuid => ("UUID".into(), LoadType::Uuid),
        Class::Xml => ("XML".into(), LoadType::Clob),
        Class::DateTime => (datetime_pg(&raw_lower, &params), LoadType::Date),
        Class::Timestamp => (timestamp_pg(raw, &raw_lower, &params, info.as_deref())?, LoadType::Date),
        Class::Time => (time_pg(&raw_lower, &params)?, LoadType::Date),
    };
    Ok(PgType { sql, auto_increment, load, known: true })
}

/// `(?<=\d+)\s*(?i)CHAR$` removed.
fn strip_char_suffix(p: &str) -> String {
    let t = p.trim_end();
    if t.len() >= 4 && t[t.len() - 4..].eq_ignore_ascii_case("char") {
        let head = t[..t.len() - 4].trim_end();
        if head.ends_with(|c: char| c.is_ascii_digit()) {
            return head.to_string();
        }
    }
    p.to_string()
}

fn datetime_pg(raw_lower: &str, params: &[String]) -> String {
    let zone = if raw_lower.contains("tz") || raw_lower.contains("with time zone") { "WITH" } else { "WITHOUT" };
    if params.is_empty() {
        format!("TIMESTAMP {zone} TIME ZONE")
    } else {
        let p = if params.len() == 2 { &params[1] } else { &params[0] };
        format!("TIMESTAMP({p}) {zone} TIME ZONE")
    }
}

fn timestamp_pg(raw: &str, raw_lower: &str, params: &[String], info: Option<&str>) -> Result<String, TypeError> {
    let mut base = "TIMESTAMP".to_string();
    if let Some(p) = params.first() {
        let digits: i64 = p.parse().map_err(|_| {
            TypeError(format!("a timestamp with '{p}' fractional digits does not seem to be an integer"))
        })?;
        if digits > 6 {
            return Err(TypeError(format!(
                "a TIMESTAMP with {digits} fractional digits was requested, but PostgreSQL only supports 6"
            )));
        }
        base = format!("TIMESTAMP({digits})");
    }
    if raw.starts_with("java.sql.Types.TIMESTAMP_WITH_TIMEZONE") {
        return Ok(format!("{base} WITH TIME ZONE"));
    }
    if let Some(i) = info {
        // Upper-cased only when it says TIMEZONE (made TIME ZONE); else as written.
        let i = if i.to_ascii_uppercase().contains("TIMEZONE") {
            i.to_ascii_uppercase().replace("TIMEZONE", "TIME ZONE")
        } else {
            i.to_string()
        };
        return Ok(format!("{base} {i}"));
    }
    // DateTimeType's rule, with TIMESTAMP's own parameters.
    let _ = raw_lower;
    Ok(datetime_pg(raw_lower, params))
}

fn time_pg(raw_lower: &str, params: &[String]) -> Result<String, TypeError> {
    let first = params.first().map(|p| p.parse::<i64>()).transpose().map_err(|_| {
        TypeError(format!(
            "the precision {:?} of a time type is not a number",
            params.first().unwrap_or(&String::new())
        ))
    })?;
    let validated: &[String] = if first.is_some_and(|n| n <= 6) { params } else { &[] };
    let mut t = with_params("time", validated);
    if params.is_empty() {
        // A `(n)` in the definition (e.g. `time(3) with time zone` split oddly).
        if let Some(open) = raw_lower.find('(') {
            if let Some(close) = raw_lower[open..].find(')') {
                let inner = &raw_lower[open + 1..open + close];
                if !inner.is_empty() && inner.chars().all(|c| c.is_ascii_digit()) {
                    t.push_str(&raw_lower[open..=open + close]);
                }
            }
        }
    } else if validated.is_empty() && params.len() >= 2 {
        t = format!("time({})", params[1]);
    }
    let zone = if raw_lower.contains("tz") || raw_lower.contains("with time zone") { "WITH" } else { "WITHOUT" };
    Ok(format!("{t} {zone} TIME ZONE"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_names() {
        let r = |s: &str| resolve(s).map(|t| t.sql).unwrap_or_else(|e| format!("ERROR {}", e.0));
        assert_eq!(r("varchar(255)"), "VARCHAR(255)");
        assert_eq!(r("bit(8)"), "BIT(8)");
        assert_eq!(r("longblob"), "BYTEA");
        assert_eq!(r("blob"), "OID");
        assert_eq!(r("datetime"), "TIMESTAMP WITHOUT TIME ZONE");
        assert_eq!(r("timestamp with time zone"), "TIMESTAMP with time zone");
        assert_eq!(r("tinyint"), "SMALLINT");
        assert_eq!(r("number(10,2)"), "numeric(10, 2)");
        assert_eq!(r("jsonb"), "JSONB");
        assert!(r("timestamp(10)").starts_with("ERROR"));
        assert!(resolve("bigserial").is_ok_and(|t| t.auto_increment && t.sql == "BIGINT"));
    }
}
