//! A table's structure and a schema diff as HTML. `base` is where table pages live
//! (`/databases/DB/tables` or `/branches/ID/tables`): other tables link there.

use std::fmt::Write;

use pgplane_core::schema::{
    column_attributes, diff_text, Change, ChangeKind, Column, SchemaDiff, SchemaObject, TableDetail,
};
use serde_json::Value;

use super::html::{enc, esc, link, opt};

/// Columns, constraints, foreign keys both ways, indexes, triggers, the view definition,
/// partitions, and the enums and sequences the table uses.
pub fn structure(t: &TableDetail, base: &str) -> String {
    let mut out = format!(
        "<p class=\"muted\" id=\"table-kind\">{}{}</p>",
        esc(&t.kind.replace('_', " ")),
        match &t.description {
            Some(d) => format!(" · <span class=\"description\">{}</span>", esc(d)),
            None => String::new(),
        }
    );

    let _ = write!(out, "<h2>Columns ({})</h2>", t.columns.len());
    out.push_str(
        "<div class=\"scroll\"><table class=\"columns\"><thead><tr><th>Column</th><th>Type</th><th>Nullable</th>\
         <th>Default</th><th>Identity</th><th>Comment</th></tr></thead><tbody>",
    );
    for c in &t.columns {
        let default = match (&c.default, &c.generated) {
            (_, Some(g)) => format!("<code>generated always as ({}) stored</code>", esc(g)),
            (Some(d), None) => format!("<code>{}</code>", esc(d)),
            (None, None) => opt(None),
        };
        let _ = write!(
            out,
            "<tr data-column=\"{name}\"><td class=\"mono\">{name}</td><td class=\"mono\">{}</td><td>{}</td><td>{default}</td><td>{}</td><td class=\"wide\">{}</td></tr>",
            esc(&c.r#type),
            if c.nullable { "yes" } else { "<strong>not null</strong>" },
            opt(c.identity.as_deref().map(|i| i.replace('_', " ")).as_deref()),
            opt(c.comment.as_deref()),
            name = esc(&c.name),
        );
    }
    if t.columns.is_empty() {
        out.push_str("<tr><td colspan=\"6\" class=\"muted\">no columns</td></tr>");
    }
    out.push_str("</tbody></table></div>");

    let constraints = t.constraints();
    let non_fk: Vec<_> = constraints.iter().filter(|(kind, _, _)| *kind != "foreign_key").collect();
    if !non_fk.is_empty() {
        out.push_str(
            "<h2>Constraints</h2><div class=\"scroll\"><table class=\"constraints\"><thead><tr><th>Name</th><th>Kind</th>\
             <th>Definition</th></tr></thead><tbody>",
        );
        for (kind, name, definition) in non_fk {
            let _ = write!(
                out,
                "<tr><td class=\"mono\">{}</td><td>{}</td><td class=\"mono wide\">{}</td></tr>",
                esc(name),
                esc(&kind.replace('_', " ")),
                esc(definition)
            );
        }
        out.push_str("</tbody></table></div>");
    }

    if !t.foreign_keys.is_empty() {
        out.push_str(
            "<h2>Foreign keys</h2><div class=\"scroll\"><table class=\"foreign-keys\"><thead><tr><th>Name</th><th>Columns</th>\
             <th>References</th><th>On update</th><th>On delete</th></tr></thead><tbody>",
        );
        for f in &t.foreign_keys {
            let target = format!("{}.{}", f.referenced_schema, f.referenced_table);
            let _ = write!(
                out,
                "<tr><td class=\"mono\">{}</td><td class=\"mono\">{}</td><td class=\"mono\">{} ({})</td><td>{}</td><td>{}</td></tr>",
                esc(&f.name),
                esc(&f.columns.join(", ")),
                link(&format!("{base}/{}", enc(&target)), &target),
                esc(&f.referenced_columns.join(", ")),
                esc(&f.on_update),
                esc(&f.on_delete),
            );
        }
        out.push_str("</tbody></table></div>");
    }

    if !t.referenced_by.is_empty() {
        out.push_str(
            "<h2>Referenced by</h2><div class=\"scroll\"><table class=\"referenced-by\"><thead><tr><th>Table</th><th>Columns</th>\
             <th>Referencing</th><th>Name</th><th>On delete</th></tr></thead><tbody>",
        );
        for f in &t.referenced_by {
            let from = format!("{}.{}", f.schema, f.table);
            let _ = write!(
                out,
                "<tr><td class=\"mono\">{}</td><td class=\"mono\">{}</td><td class=\"mono\">{}</td><td class=\"mono\">{}</td><td>{}</td></tr>",
                link(&format!("{base}/{}", enc(&from)), &from),
                esc(&f.columns.join(", ")),
                esc(&f.referenced_columns.join(", ")),
                esc(&f.name),
                esc(&f.on_delete),
            );
        }
        out.push_str("</tbody></table></div>");
    }

    if !t.indexes.is_empty() {
        out.push_str(
            "<h2>Indexes</h2><div class=\"scroll\"><table class=\"indexes\"><thead><tr><th>Name</th><th>Kind</th>\
             <th>Definition</th></tr></thead><tbody>",
        );
        for i in &t.indexes {
            let mut kind = Vec::new();
            if i.primary {
                kind.push("primary key".to_string());
            } else if i.unique {
                kind.push("unique".to_string());
            }
            if i.predicate.is_some() {
                kind.push("partial".to_string());
            }
            if let Some(c) = &i.constraint {
                kind.push(format!("for {c}"));
            }
            let _ = write!(
                out,
                "<tr><td class=\"mono\">{}</td><td>{}</td><td class=\"mono wide\">{}</td></tr>",
                esc(&i.name),
                if kind.is_empty() { opt(None) } else { esc(&kind.join(", ")) },
                esc(&i.definition)
            );
        }
        out.push_str("</tbody></table></div>");
    }

    if !t.triggers.is_empty() {
        out.push_str(
            "<h2>Triggers</h2><div class=\"scroll\"><table class=\"triggers\"><thead><tr><th>Name</th><th>Enabled</th>\
             <th>Definition</th></tr></thead><tbody>",
        );
        for tr in &t.triggers {
            let _ = write!(
                out,
                "<tr><td class=\"mono\">{}</td><td>{}</td><td class=\"mono wide\">{}</td></tr>",
                esc(&tr.name),
                if tr.enabled { "yes" } else { "<strong>disabled</strong>" },
                esc(&tr.definition)
            );
        }
        out.push_str("</tbody></table></div>");
    }

    if let Some(v) = &t.view_definition {
        let _ = write!(out, "<h2>Definition</h2><pre id=\"view-definition\">{}</pre>", esc(v.trim()));
    }

    if let Some(k) = &t.partition_key {
        let _ = write!(out, "<h2>Partitions</h2><p>Partitioned by <code>{}</code>.</p>", esc(k));
        if !t.partitions.is_empty() {
            out.push_str("<ul class=\"partitions\">");
            for p in &t.partitions {
                let _ = write!(out, "<li class=\"mono\">{}</li>", esc(p));
            }
            out.push_str("</ul>");
        }
    }

    if !t.enums.is_empty() {
        out.push_str("<h2>Enum types</h2><ul class=\"enums\">");
        for e in &t.enums {
            let values: Vec<String> = e.values.iter().map(|v| format!("'{v}'")).collect();
            let _ = write!(
                out,
                "<li><span class=\"mono\">{}</span> <span class=\"mono muted\">({})</span></li>",
                esc(&e.qualified()),
                esc(&values.join(", "))
            );
        }
        out.push_str("</ul>");
    }

    if !t.sequences.is_empty() {
        out.push_str("<h2>Sequences</h2><ul class=\"sequences\">");
        for s in &t.sequences {
            let _ = write!(
                out,
                "<li><span class=\"mono\">{}</span> <span class=\"muted\">{} start {} increment {}{}</span></li>",
                esc(&s.qualified()),
                esc(&s.r#type),
                s.start,
                s.increment,
                s.owned_by.as_deref().map(|o| format!(", owned by {}", esc(o))).unwrap_or_default()
            );
        }
        out.push_str("</ul>");
    }
    out
}

/// The diff grouped per table (then enums and sequences): added green, removed red,
/// changed amber, each row marked `+`, `−` or `~` too (colour is not the only sign).
/// `from_name` names the other side (the template).
pub fn diff(d: &SchemaDiff, from_name: &str, base: &str) -> String {
    if d.is_empty() {
        return format!(
            "<p id=\"no-differences\" class=\"notice\">No differences: the branch has the schema of template <span class=\"mono\">{}</span>.</p>",
            esc(from_name)
        );
    }
    let s = &d.summary;
    let mut out = format!(
        "<p id=\"diff-summary\">{} change{} against template <span class=\"mono\">{}</span>: \
         <span class=\"badge ok\">{} added</span> <span class=\"badge bad\">{} removed</span> <span class=\"badge busy\">{} changed</span></p>",
        s.total,
        if s.total == 1 { "" } else { "s" },
        esc(from_name),
        s.added,
        s.removed,
        s.changed
    );
    let mut i = 0;
    while i < d.changes.len() {
        let group = d.changes[i].table.clone();
        let mut j = i + 1;
        while j < d.changes.len() && d.changes[j].table == group {
            j += 1;
        }
        let block = &d.changes[i..j];
        match &group {
            Some(table) => {
                // A table that is new or gone has its row in the block; its page only if it exists now.
                let gone = block.iter().any(|c| is_relation(c) && c.change == ChangeKind::Removed);
                let title = if gone { esc(table) } else { link(&format!("{base}/{}", enc(table)), table) };
                let _ = write!(out, "<h2 class=\"mono\" data-diff-table=\"{}\">{title}</h2>", esc(table));
            }
            None => out.push_str("<h2>Types and sequences</h2>"),
        }
        out.push_str("<div class=\"scroll\"><table class=\"diff\"><tbody>");
        for c in block {
            let (class, sign) = match c.change {
                ChangeKind::Added => ("added", "+"),
                ChangeKind::Removed => ("removed", "−"),
                ChangeKind::Changed => ("changed", "~"),
            };
            let _ = write!(
                out,
                "<tr class=\"{class}\" data-object=\"{}\" data-name=\"{}\"><td class=\"sign\">{sign}</td><td class=\"nowrap\">{}</td><td class=\"mono\">{}</td><td class=\"wide\">{}</td></tr>",
                c.object.as_str(),
                esc(&c.name),
                esc(&format!("{} {class}", c.object.as_str())),
                esc(&shown_name(c)),
                detail(c),
            );
        }
        out.push_str("</tbody></table></div>");
        i = j;
    }
    let _ = write!(
        out,
        "<details><summary>As text (<code>pgplane schema diff</code>)</summary><pre id=\"diff-text\">{}</pre></details>",
        esc(&diff_text(d))
    );
    out
}

fn is_relation(c: &Change) -> bool {
    matches!(c.object, SchemaObject::Table | SchemaObject::View)
}

/// A change's object as people name it inside its table's block.
fn shown_name(c: &Change) -> String {
    match (&c.table, c.object) {
        (Some(t), SchemaObject::Comment) if c.name == *t => "(the table)".into(),
        (Some(t), SchemaObject::Comment) => c.name.strip_prefix(&format!("{t}.")).unwrap_or(&c.name).to_string(),
        _ => c.name.clone(),
    }
}

/// What was added or removed, or what changed from what to what (escaped HTML).
fn detail(c: &Change) -> String {
    let side = if c.change == ChangeKind::Removed { &c.from } else { &c.to };
    match (c.change, c.attribute.as_deref()) {
        (ChangeKind::Added | ChangeKind::Removed, _) => match (c.object, side) {
            (SchemaObject::Table | SchemaObject::View, Some(v)) => {
                let t: TableDetail = serde_json::from_value(v.clone()).unwrap_or_default();
                let n = t.columns.len();
                let cols: Vec<String> = t.columns.iter().map(|c| c.name.clone()).collect();
                format!(
                    "{} · {n} column{}: <span class=\"mono\">{}</span>",
                    esc(&t.kind.replace('_', " ")),
                    if n == 1 { "" } else { "s" },
                    esc(&cols.join(", "))
                )
            }
            (SchemaObject::Column, Some(v)) => {
                let col: Column = serde_json::from_value(v.clone()).unwrap_or_default();
                format!(
                    "<span class=\"mono\">{}</span>",
                    esc(format!("{} {}", col.r#type, column_attributes(&col)).trim())
                )
            }
            (SchemaObject::Comment, v) => esc(&text(v)),
            (SchemaObject::Enum | SchemaObject::Sequence, Some(Value::Object(o))) => {
                let values = o.get("values").and_then(|v| v.as_array()).map(|vs| {
                    vs.iter().map(|v| format!("'{}'", v.as_str().unwrap_or_default())).collect::<Vec<_>>().join(", ")
                });
                let ty = o.get("type").and_then(|v| v.as_str());
                esc(&values.or(ty.map(str::to_string)).unwrap_or_default())
            }
            (_, v) => format!("<span class=\"mono\">{}</span>", esc(&text(v))),
        },
        (ChangeKind::Changed, Some("definition")) => format!(
            "definition<pre class=\"from\">− {}</pre><pre class=\"to\">+ {}</pre>",
            esc(&text(&c.from)),
            esc(&text(&c.to))
        ),
        (ChangeKind::Changed, attribute) => format!(
            "{}: <span class=\"mono\">{}</span> → <span class=\"mono\">{}</span>",
            esc(&attribute.unwrap_or("?").replace('_', " ")),
            esc(&text(&c.from)),
            esc(&text(&c.to))
        ),
    }
}

fn text(v: &Option<Value>) -> String {
    match v {
        None | Some(Value::Null) => "(none)".to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| i.as_str().map(|s| format!("'{s}'")).unwrap_or_else(|| i.to_string()))
            .collect::<Vec<_>>()
            .join(", "),
        Some(other) => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgplane_core::schema::{SchemaSnapshot, TableDetail};

    fn table(name: &str, columns: &[(&str, &str)], comment: Option<&str>) -> TableDetail {
        TableDetail {
            schema: "public".into(),
            name: name.into(),
            kind: "table".into(),
            description: comment.map(str::to_string),
            columns: columns
                .iter()
                .map(|(n, t)| Column {
                    name: n.to_string(),
                    r#type: t.to_string(),
                    nullable: true,
                    ..Column::default()
                })
                .collect(),
            ..TableDetail::default()
        }
    }

    #[test]
    fn diff_groups_per_table_with_signs_and_escapes() {
        let from = SchemaSnapshot { tables: vec![table("entries", &[("id", "bigint")], None)], ..Default::default() };
        let to = SchemaSnapshot {
            tables: vec![
                table("entries", &[("id", "bigint"), ("email", "text")], Some("<b>x</b>")),
                table("reviews", &[("id", "integer")], None),
            ],
            ..Default::default()
        };
        let html = diff(&pgplane_core::schema::diff(&from, &to), "tpl", "/branches/MR-1/tables");
        assert!(html.contains("data-diff-table=\"public.entries\""), "{html}");
        assert!(html.contains("<a href=\"/branches/MR-1/tables/public.reviews\">public.reviews</a>"), "{html}");
        assert!(html.contains("<tr class=\"added\" data-object=\"column\" data-name=\"email\">"), "{html}");
        assert!(html.contains("&lt;b&gt;x&lt;/b&gt;") && !html.contains("<b>x"), "{html}");
        let none = diff(&pgplane_core::schema::diff(&from, &from), "tpl", "/x");
        assert!(none.contains("id=\"no-differences\""), "{none}");
    }

    #[test]
    fn structure_escapes_and_links_foreign_keys() {
        let mut t = table("reviews", &[("entry_id", "bigint")], Some("<script>"));
        t.foreign_keys.push(pgplane_core::schema::ForeignKey {
            name: "reviews_entry_id_fkey".into(),
            schema: "public".into(),
            table: "reviews".into(),
            columns: vec!["entry_id".into()],
            referenced_schema: "public".into(),
            referenced_table: "entries".into(),
            referenced_columns: vec!["id".into()],
            on_update: "no action".into(),
            on_delete: "cascade".into(),
            definition: String::new(),
        });
        let html = structure(&t, "/databases/d/tables");
        assert!(html.contains("&lt;script&gt;") && !html.contains("<script>"), "{html}");
        assert!(html.contains("<a href=\"/databases/d/tables/public.entries\">public.entries</a>"), "{html}");
    }
}
