//! HTML for the console: escaping, URL pieces, the page frame and small formatters.
//! **Every value that reaches a page goes through [`esc`]** (text and attributes alike),
//! and every value in a URL through [`enc`] first.

use std::fmt::Write;

/// Escapes text for HTML element content and quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes one URL path segment or query value: everything but RFC 3986's
/// unreserved characters (so `feature/x` stays one segment).
pub fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// A link; `href` is built by the caller from [`enc`]oded parts and escaped here.
pub fn link(href: &str, text: &str) -> String {
    format!("<a href=\"{}\">{}</a>", esc(href), esc(text))
}

/// A status badge: green for success, red for failure, amber while running, grey otherwise.
pub fn badge(status: &str) -> String {
    let class = match status.to_ascii_lowercase().as_str() {
        "success" | "succeeded" | "ready" | "enabled" | "done" => "ok",
        "failed" | "interrupted" => "bad",
        "running" | "provisioning" | "migrating" | "upgrading" | "purging" | "disabling" => "busy",
        _ => "none",
    };
    format!("<span class=\"badge {class}\" data-status=\"{s}\">{s}</span>", s = esc(status))
}

/// Sizes for people (binary units, as `pgplane schema tables` prints them).
pub fn bytes(b: i64) -> String {
    match b {
        b if b >= 1 << 30 => format!("{:.1} GB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{} kB", b >> 10),
        b => format!("{b} B"),
    }
}

/// An RFC 3339 UTC timestamp as `2026-01-02 10:00:00 UTC` in a `<time>` element.
pub fn time(ts: Option<&str>) -> String {
    match ts {
        None => "<span class=\"muted\">–</span>".into(),
        Some(ts) => {
            let shown = ts.replacen('T', " ", 1);
            let shown = match shown.strip_suffix('Z') {
                Some(s) => format!("{} UTC", s.split('.').next().unwrap_or(s)),
                None => shown,
            };
            format!("<time datetime=\"{}\">{}</time>", esc(ts), esc(&shown))
        }
    }
}

/// `value` or a grey dash.
pub fn opt(value: Option<&str>) -> String {
    match value {
        Some(v) if !v.is_empty() => esc(v),
        _ => "<span class=\"muted\">–</span>".into(),
    }
}

/// Which part of the site a page belongs to (highlighted in the navigation).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Databases,
    Branches,
    Tenants,
    Operations,
    Stacks,
    Events,
    None,
}

/// A rendered page body and what the frame around it needs.
pub struct Page {
    pub title: String,
    pub section: Section,
    /// Breadcrumbs above the title: (href, text); the title itself is the last crumb.
    pub crumbs: Vec<(String, String)>,
    /// HTML, already escaped.
    pub body: String,
}

impl Page {
    pub fn new(section: Section, title: impl Into<String>, body: String) -> Page {
        Page { title: title.into(), section, crumbs: Vec::new(), body }
    }

    pub fn crumb(mut self, href: impl Into<String>, text: impl Into<String>) -> Page {
        self.crumbs.push((href.into(), text.into()));
        self
    }
}

/// The whole document: header with the environment and navigation, then the page.
pub fn document(page: &Page, env: &str, sign_out: bool) -> String {
    let mut nav = String::new();
    for (section, href, text) in [
        (Section::Databases, "/", "Databases"),
        (Section::Branches, "/branches", "Branches"),
        (Section::Tenants, "/tenants", "Tenants"),
        (Section::Operations, "/operations", "Operations"),
        (Section::Stacks, "/stacks", "Stacks"),
        (Section::Events, "/events", "Events"),
    ] {
        let current = if page.section == section { " aria-current=\"page\"" } else { "" };
        let _ = write!(nav, "<a href=\"{href}\"{current}>{text}</a>");
    }
    if sign_out {
        nav.push_str("<a href=\"/sign-out\" class=\"sign-out\">Sign out</a>");
    }
    let mut crumbs = String::new();
    if !page.crumbs.is_empty() {
        crumbs.push_str("<p class=\"crumbs\">");
        for (href, text) in &page.crumbs {
            let _ = write!(crumbs, "{} / ", link(href, text));
        }
        crumbs.push_str("</p>");
    }
    format!(
        "<!doctype html>
<html lang=\"en\">
<head>
<meta charset=\"utf-8\">
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">
<title>{title} · pgplane {env}</title>
<link rel=\"stylesheet\" href=\"/console.css\">
<link rel=\"icon\" href=\"/favicon.ico\" type=\"image/svg+xml\">
</head>
<body>
<header><div class=\"bar\"><a class=\"brand\" href=\"/\">pgplane</a><span class=\"env\" title=\"environment\">{env}</span><nav>{nav}</nav></div></header>
<main>
{crumbs}<h1>{title}</h1>
{body}
</main>
</body>
</html>
",
        title = esc(&page.title),
        env = esc(env),
        body = page.body,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            esc("<script>alert('x')</script> & \"y\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;y&quot;"
        );
        assert_eq!(link("/a?b=\"c\"", "<b>"), "<a href=\"/a?b=&quot;c&quot;\">&lt;b&gt;</a>");
        assert_eq!(badge("<x>"), "<span class=\"badge none\" data-status=\"&lt;x&gt;\">&lt;x&gt;</span>");
    }

    #[test]
    fn encodes_path_segments() {
        assert_eq!(enc("feature/ABC-12"), "feature%2FABC-12");
        assert_eq!(enc("public.Entrées"), "public.Entr%C3%A9es");
    }

    #[test]
    fn formats_sizes_and_times() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(16384), "16 kB");
        assert_eq!(bytes(3 << 20), "3.0 MB");
        assert_eq!(
            time(Some("2026-01-02T10:00:00.123Z")),
            "<time datetime=\"2026-01-02T10:00:00.123Z\">2026-01-02 10:00:00 UTC</time>"
        );
    }
}
