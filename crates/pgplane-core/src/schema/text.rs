//! `pgplane schema describe` for people.

use super::{Column, TableDetail};

/// One relation as text, in the spirit of psql's `\d+`: a header with the kind and
/// comment, the columns as an aligned table, then one section per kind of object (sections
/// without content are left out).
pub fn table_text(t: &TableDetail) -> String {
    let mut out = format!("{} {}", t.kind.replace('_', " "), t.qualified());
    if let Some(d) = &t.description {
        out.push_str(&format!("  -- {}", one_line(d)));
    }
    out.push('\n');

    let width = |f: &dyn Fn(&Column) -> usize| t.columns.iter().map(f).max().unwrap_or(0);
    let (w_name, w_type) = (width(&|c| c.name.len()), width(&|c| c.r#type.len()));
    out.push_str(&format!("columns ({})\n", t.columns.len()));
    for c in &t.columns {
        let mut line = format!("  {:<w_name$}  {:<w_type$}  {}", c.name, c.r#type, column_attributes(c));
        if let Some(comment) = &c.comment {
            line = format!("{}  -- {}", line.trim_end(), one_line(comment));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }

    let mut section = |title: &str, lines: Vec<String>| {
        if !lines.is_empty() {
            out.push_str(title);
            out.push('\n');
            for l in lines {
                out.push_str(&format!("  {l}\n"));
            }
        }
    };
    let named = |name: &str, definition: &str| format!("{name}  {definition}");
    section("primary key", t.primary_key.iter().map(|c| named(&c.name, &c.definition)).collect());
    section("unique constraints", t.unique.iter().map(|c| named(&c.name, &c.definition)).collect());
    section("check constraints", t.checks.iter().map(|c| named(&c.name, &c.definition)).collect());
    section("exclusion constraints", t.exclusions.iter().map(|c| named(&c.name, &c.definition)).collect());
    section("foreign keys", t.foreign_keys.iter().map(|f| named(&f.name, &f.definition)).collect());
    section(
        "referenced by",
        t.referenced_by
            .iter()
            .map(|f| {
                format!(
                    "{}.{} ({}) → ({})  {}  on delete {}",
                    f.schema,
                    f.table,
                    f.columns.join(", "),
                    f.referenced_columns.join(", "),
                    f.name,
                    f.on_delete
                )
            })
            .collect(),
    );
    section(
        "indexes",
        t.indexes
            .iter()
            .map(|i| {
                let mut flags = Vec::new();
                if i.primary {
                    flags.push("primary".to_string());
                } else if i.unique {
                    flags.push("unique".to_string());
                }
                if i.predicate.is_some() {
                    flags.push("partial".to_string());
                }
                let flags = if flags.is_empty() { String::new() } else { format!(" ({})", flags.join(", ")) };
                format!("{}{flags}  {}", i.name, i.definition)
            })
            .collect(),
    );
    section(
        "triggers",
        t.triggers
            .iter()
            .map(|tr| {
                let disabled = if tr.enabled { "" } else { " (disabled)" };
                format!("{}{disabled}  {}", tr.name, tr.definition)
            })
            .collect(),
    );
    section("partition key", t.partition_key.iter().cloned().collect());
    section("partitions", t.partitions.clone());
    section(
        "enums",
        t.enums
            .iter()
            .map(|e| {
                let values: Vec<String> = e.values.iter().map(|v| format!("'{v}'")).collect();
                format!("{}  ({})", e.qualified(), values.join(", "))
            })
            .collect(),
    );
    section(
        "sequences",
        t.sequences
            .iter()
            .map(|s| {
                let owned = s.owned_by.as_deref().map(|o| format!(", owned by {o}")).unwrap_or_default();
                format!(
                    "{}  {} start {} increment {} min {} max {}{}{owned}",
                    s.qualified(),
                    s.r#type,
                    s.start,
                    s.increment,
                    s.min,
                    s.max,
                    if s.cycle { " cycle" } else { "" }
                )
            })
            .collect(),
    );
    section("definition", t.view_definition.iter().flat_map(|d| d.lines().map(str::to_string)).collect());
    out
}

/// `not null, default now()`, `identity always`, `generated always as (…) stored`.
pub fn column_attributes(c: &Column) -> String {
    let mut parts = Vec::new();
    if !c.nullable {
        parts.push("not null".to_string());
    }
    if let Some(d) = &c.default {
        parts.push(format!("default {d}"));
    }
    if let Some(i) = &c.identity {
        parts.push(format!("identity {}", i.replace('_', " ")));
    }
    if let Some(g) = &c.generated {
        parts.push(format!("generated always as ({g}) stored"));
    }
    parts.join(", ")
}

/// Comments may span lines; text output keeps one object per line.
pub(super) fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
