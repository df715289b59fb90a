//! Schema introspection results (what `pgplane schema` and the HTTP API show).

use serde::Serialize;

/// One table or view of a database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TableSummary {
    pub name: String,
    pub schema: String,
    /// `table`, `partitioned_table`, `view`, `materialized_view` or `foreign_table`.
    pub kind: String,
    /// The table's comment.
    pub description: Option<String>,
    pub columns: i64,
    /// The planner's estimate (`reltuples`); 0 before the first ANALYZE.
    pub estimated_rows: i64,
    /// Table, indexes and TOAST (`pg_total_relation_size`); 0 for views.
    pub size_bytes: i64,
}

/// Tables first, then views, each as an aligned table for people.
pub fn tables_text(tables: &[TableSummary]) -> String {
    let mut out = String::new();
    for (title, is_view) in [("tables", false), ("views", true)] {
        let rows: Vec<&TableSummary> = tables.iter().filter(|t| t.kind.contains("view") == is_view).collect();
        if rows.is_empty() {
            continue;
        }
        let width = rows.iter().map(|t| t.schema.len() + t.name.len() + 1).max().unwrap_or(0).max(5);
        out.push_str(&format!("{title} ({})\n", rows.len()));
        for t in rows {
            let qualified = format!("{}.{}", t.schema, t.name);
            let size = if is_view {
                String::new()
            } else {
                format!("{:>10}  ~{} rows  ", human_bytes(t.size_bytes), t.estimated_rows)
            };
            let line = format!(
                "  {qualified:<width$}  {:>3} cols  {size}{}",
                t.columns,
                t.description.as_deref().unwrap_or("")
            );
            out.push_str(line.trim_end());
            out.push('\n');
        }
    }
    if out.is_empty() {
        out.push_str("no tables or views\n");
    }
    out
}

fn human_bytes(b: i64) -> String {
    match b {
        b if b >= 1 << 30 => format!("{:.1} GB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{} kB", b >> 10),
        b => format!("{b} B"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_lists_tables_then_views() {
        let t = |name: &str, kind: &str, description: Option<&str>| TableSummary {
            name: name.into(),
            schema: "public".into(),
            kind: kind.into(),
            description: description.map(str::to_string),
            columns: 3,
            estimated_rows: 10,
            size_bytes: 16384,
        };
        let text = tables_text(&[t("entries", "table", Some("Registry entries")), t("entries_v", "view", None)]);
        expect_test::expect![[r#"
            tables (1)
              public.entries    3 cols       16 kB  ~10 rows  Registry entries
            views (1)
              public.entries_v    3 cols
        "#]]
        .assert_eq(&text);
        assert_eq!(tables_text(&[]), "no tables or views\n");
    }
}
