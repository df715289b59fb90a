//! Changelog properties (`${name}`), as Liquibase 4.28's `ChangeLogParameters` and
//! `ExpressionExpander` resolve them: global parameters first (the environment, the
//! `database.*` built-ins, the run's own properties, then `<property global="true">` in
//! document order), the first definition of a name wins; then the properties local to the
//! file, the last definition winning. Names compare without case. A parameter with a
//! `context`, `labels` or `dbms` filter exists only for runs it matches.

use std::collections::HashMap;

use super::expr;

#[derive(Debug, Clone)]
struct Param {
    key: String,
    value: String,
    contexts: Option<String>,
    labels: Option<String>,
    dbms: Option<String>,
}

/// What a run knows about its target, for the `database.*` properties.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct TargetInfo {
    /// The database name (`database.defaultCatalogName`).
    pub database: String,
    /// The target schema (`database.defaultSchemaName`).
    pub schema: String,
    /// `server_version` (`database.databaseProductVersion`), e.g. `15.4`.
    pub server_version: String,
    /// The ledger tables' names.
    pub changelog_table: String,
    pub lock_table: String,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Props {
    global: Vec<Param>,
    local: HashMap<String, Vec<Param>>,
    contexts: Vec<String>,
    labels: Option<String>,
    /// Names looked up that depend on the target (`database.*`).
    pub target_dependent: bool,
}

impl Props {
    /// The run's contexts and label expression.
    pub fn selection(&self) -> (&[String], Option<&str>) {
        (&self.contexts, self.labels.as_deref())
    }

    pub fn new(contexts: &[String], labels: Option<&str>) -> Props {
        Props { contexts: contexts.to_vec(), labels: labels.map(str::to_string), ..Props::default() }
    }

    fn matches(&self, p: &Param) -> bool {
        expr::contexts_match(p.contexts.as_deref(), &self.contexts)
            && expr::labels_match(p.labels.as_deref(), self.labels.as_deref())
            && expr::dbms_match(p.dbms.as_deref(), "postgresql")
    }

    /// Adds a parameter; `file` is the changelog's logical path for a local one (`global: false`).
    pub fn set(
        &mut self,
        key: &str,
        value: &str,
        filters: (Option<String>, Option<String>, Option<String>),
        global: bool,
        file: &str,
    ) {
        let (contexts, labels, dbms) = filters;
        let p = Param { key: key.to_string(), value: value.to_string(), contexts, labels, dbms };
        if global {
            self.global.push(p);
        } else {
            self.local.entry(file.to_string()).or_default().push(p);
        }
    }

    pub fn set_global(&mut self, key: &str, value: &str) {
        self.set(key, value, (None, None, None), true, "");
    }

    /// The value of `key` as seen from `file`, unexpanded.
    pub fn raw(&self, key: &str, file: &str) -> Option<&str> {
        if let Some(p) = self.global.iter().find(|p| p.key.eq_ignore_ascii_case(key) && self.matches(p)) {
            return Some(&p.value);
        }
        let local = self.local.get(file)?;
        local.iter().rev().find(|p| p.key.eq_ignore_ascii_case(key) && self.matches(p)).map(|p| p.value.as_str())
    }

    /// Whether `key` is defined for `file` (the `changeLogPropertyDefined` precondition).
    pub fn value(&mut self, key: &str, file: &str) -> Option<String> {
        let raw = self.raw(key, file)?.to_string();
        Some(self.expand(&raw, file))
    }

    /// Replaces `${name}` in `text` (nested expressions and values that hold expressions
    /// too); an unknown name stays as written, like Liquibase's default.
    pub fn expand(&mut self, text: &str, file: &str) -> String {
        if !text.contains("${") {
            return text.to_string();
        }
        let chars: Vec<char> = text.chars().collect();
        let mut i = 0;
        let (out, _) = self.expand_from(&chars, &mut i, file, false, 0);
        out
    }

    /// Port of `ExpressionExpander.expandExpressions(reader, …, inExpression)`.
    fn expand_from(&mut self, c: &[char], i: &mut usize, file: &str, in_expr: bool, depth: usize) -> (String, bool) {
        let mut out = String::new();
        while *i < c.len() {
            let ch = c[*i];
            *i += 1;
            if ch == '$' && c.get(*i) == Some(&'{') {
                *i += 1;
                let (expr, closed) = self.expand_from(c, i, file, true, depth + 1);
                if !closed || expr.starts_with("${") {
                    // Never closed: the text as it was.
                    out.push_str(&if closed { expr } else { format!("${{{expr}") });
                    continue;
                }
                let name = expr.trim();
                if name.to_ascii_lowercase().starts_with("database.") {
                    self.target_dependent = true;
                }
                match self.raw(name, file).map(str::to_string) {
                    Some(v) if depth < 32 => {
                        let v = self.expand(&v, file);
                        out.push_str(&v);
                    }
                    Some(v) => out.push_str(&v),
                    None => {
                        out.push_str("${");
                        out.push_str(&expr);
                        out.push('}');
                    }
                }
            } else if ch == '}' && in_expr {
                return (out, true);
            } else {
                out.push(ch);
            }
        }
        (out, !in_expr)
    }
}

/// The `database.*` properties Liquibase 4.28 defines for PostgreSQL, in its order.
pub(crate) fn builtins(t: &TargetInfo) -> Vec<(String, String)> {
    let version = t.server_version.split_whitespace().next().unwrap_or("");
    let mut parts = version.split('.');
    let major = parts.next().unwrap_or("").to_string();
    let minor = parts.next().unwrap_or("0").to_string();
    let b = |v: bool| v.to_string();
    [
        ("database.autoIncrementClause", "GENERATED BY DEFAULT AS IDENTITY".to_string()),
        ("database.currentDateTimeFunction", "NOW()".to_string()),
        ("database.databaseChangeLogLockTableName", t.lock_table.clone()),
        ("database.databaseChangeLogTableName", t.changelog_table.clone()),
        ("database.databaseMajorVersion", major),
        ("database.databaseMinorVersion", minor),
        ("database.databaseProductName", "PostgreSQL".to_string()),
        ("database.databaseProductVersion", t.server_version.clone()),
        ("database.defaultCatalogName", t.database.clone()),
        ("database.defaultSchemaName", t.schema.clone()),
        (
            "database.defaultSchemaNamePrefix",
            if t.schema.is_empty() { String::new() } else { format!(".{}", t.schema) },
        ),
        ("database.lineComment", "--".to_string()),
        // database.liquibaseSchemaName: Liquibase 4.28 sets it to null unless
        // --liquibase-schema-name is given, so `${database.liquibaseSchemaName}` stays as written.
        ("database.typeName", "postgresql".to_string()),
        ("database.isSafeToRunUpdate", b(true)),
        ("database.requiresPassword", b(true)),
        ("database.requiresUsername", b(true)),
        ("database.supportsForeignKeyDisable", b(false)),
        ("database.supportsInitiallyDeferrableColumns", b(true)),
        ("database.supportsRestrictForeignKeys", b(true)),
        ("database.supportsSchemas", b(true)),
        ("database.supportsSequences", b(true)),
        ("database.supportsTablespaces", b(true)),
        ("database.supportsNotNullConstraintNames", b(false)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion_follows_liquibase() {
        let mut p = Props::new(&[], None);
        p.set_global("a", "x");
        p.set_global("A", "ignored: the first definition wins");
        p.set_global("b", "${a}-y");
        p.set("loc", "1", (None, None, None), false, "f.xml");
        p.set("loc", "2", (None, None, None), false, "f.xml");
        p.set("pg", "only", (None, None, Some("postgresql".into())), true, "");
        p.set("ora", "no", (None, None, Some("oracle".into())), true, "");
        assert_eq!(p.expand("${a}/${b}/${missing}/${loc}", "f.xml"), "x/x-y/${missing}/2");
        assert_eq!(p.expand("${loc}", "other.xml"), "${loc}");
        assert_eq!(p.expand("${pg}${ora}", "f.xml"), "only${ora}");
        assert_eq!(p.expand("$x ${ unclosed", "f.xml"), "$x ${ unclosed");
        assert_eq!(p.expand("${${a}}", "f.xml"), "${x}");
    }
}
