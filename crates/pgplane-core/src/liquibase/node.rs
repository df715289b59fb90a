//! One tree shape for XML, YAML and JSON changelogs (like Liquibase's `ParsedNode`):
//! scalar values are attributes, nested objects and lists are children.

use super::ChangelogError;

#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub name: String,
    /// Scalar attributes in document order; a key may repeat (YAML lists of scalars).
    pub attrs: Vec<(String, String)>,
    pub children: Vec<Node>,
    /// XML text content, or the value of a YAML key whose value is a plain scalar list item.
    pub text: Option<String>,
    pub line: Option<usize>,
    /// YAML only: keys whose scalar value was an unquoted date (snakeyaml turns those into
    /// timestamps, which changes how Liquibase serialises them).
    pub yaml_dates: Vec<String>,
    /// YAML only: keys whose value was a floating-point number (a Java Double for
    /// Liquibase, which writes `1.0` as `1` in SQL).
    pub yaml_floats: Vec<String>,
}

impl Node {
    fn new(name: &str, line: Option<usize>) -> Node {
        Node {
            name: name.to_string(),
            attrs: Vec::new(),
            children: Vec::new(),
            text: None,
            line,
            yaml_dates: Vec::new(),
            yaml_floats: Vec::new(),
        }
    }

    /// The attribute `key`, or the text of a child element `key` (XML `<where>`, `<comment>`).
    pub fn get(&self, key: &str) -> Option<String> {
        if let Some((_, v)) = self.attrs.iter().find(|(k, _)| k == key) {
            return Some(v.clone());
        }
        self.children
            .iter()
            .find(|c| c.name == key && c.children.is_empty())
            .map(|c| c.text.clone().unwrap_or_default())
    }

    /// Every value of `key`: repeated attributes and child elements' texts.
    pub fn get_all(&self, key: &str) -> Vec<String> {
        let mut v: Vec<String> = self.attrs.iter().filter(|(k, _)| k == key).map(|(_, v)| v.clone()).collect();
        v.extend(self.children.iter().filter(|c| c.name == key).filter_map(|c| c.text.clone()));
        v
    }

    pub fn child(&self, name: &str) -> Option<&Node> {
        self.children.iter().find(|c| c.name == name)
    }

    /// Children, with the children of YAML wrapper lists named `wrapper` flattened in
    /// (`changes: [...]`, `columns: [...]`).
    pub fn flat_children<'a>(&'a self, wrapper: &str) -> Vec<&'a Node> {
        let mut out = Vec::new();
        for c in &self.children {
            if c.name == wrapper {
                out.extend(c.children.iter());
            } else {
                out.push(c);
            }
        }
        out
    }

    pub fn map_strings(&mut self, f: &dyn Fn(&str) -> String) {
        for (_, v) in &mut self.attrs {
            *v = f(v);
        }
        if let Some(t) = &mut self.text {
            *t = f(t);
        }
        for c in &mut self.children {
            c.map_strings(f);
        }
    }
}

pub(crate) fn from_xml(file: &str, src: &str) -> Result<Node, ChangelogError> {
    let doc = roxmltree::Document::parse(src).map_err(|e| ChangelogError {
        file: file.to_string(),
        line: Some(e.pos().row as usize),
        message: format!("not well-formed XML: {e}; fix the XML syntax"),
    })?;
    // Line of a byte offset by binary search: roxmltree's text_pos_at rescans from the
    // start, which made large changelogs quadratic.
    let line_starts: Vec<usize> = std::iter::once(0).chain(src.match_indices('\n').map(|(i, _)| i + 1)).collect();
    fn conv(starts: &[usize], n: roxmltree::Node) -> Node {
        let line = starts.partition_point(|&s| s <= n.range().start);
        let mut node = Node::new(n.tag_name().name(), Some(line));
        for a in n.attributes() {
            if a.namespace().is_some() || a.name() == "schemaLocation" {
                continue; // xsi:schemaLocation and friends
            }
            node.attrs.push((a.name().to_string(), a.value().to_string()));
        }
        let mut text = String::new();
        for c in n.children() {
            if c.is_element() {
                node.children.push(conv(starts, c));
            } else if c.is_text() {
                text.push_str(c.text().unwrap_or(""));
            }
        }
        if !text.trim().is_empty() {
            node.text = Some(text);
        }
        node
    }
    Ok(conv(&line_starts, doc.root_element()))
}

pub(crate) fn from_yaml(file: &str, src: &str, json: bool) -> Result<Node, ChangelogError> {
    let v: serde_yaml::Value = serde_yaml::from_str(src).map_err(|e| ChangelogError {
        file: file.to_string(),
        line: e.location().map(|l| l.line()),
        message: format!("not valid {}: {e}", if json { "JSON" } else { "YAML" }),
    })?;
    let serde_yaml::Value::Mapping(m) = &v else {
        return Err(ChangelogError::new(file, Some(1), "a changelog must be a mapping with the key databaseChangeLog"));
    };
    let Some(root) = m.get("databaseChangeLog") else {
        return Err(ChangelogError::new(file, Some(1), "missing the top-level key databaseChangeLog"));
    };
    let mut node = Node::new("databaseChangeLog", Some(1));
    fill(&mut node, "databaseChangeLog", root, json);
    if !json {
        keep_unquoted_dates(&mut node, src);
    }
    Ok(node)
}

/// serde_yaml does not say whether a scalar was quoted; snakeyaml reads only an unquoted
/// date as a timestamp. Keep the date mark only where the source has the value unquoted.
fn keep_unquoted_dates(node: &mut Node, src: &str) {
    let attrs = node.attrs.clone();
    node.yaml_dates.retain(|k| {
        attrs.iter().filter(|(a, _)| a == k).any(|(_, v)| {
            src.lines().any(|l| {
                let l = l.trim().trim_start_matches('-').trim();
                l.split(['{', ',']).any(|part| {
                    let part = part.trim();
                    part.strip_prefix(k.as_str())
                        .and_then(|r| r.trim_start().strip_prefix(':'))
                        .is_some_and(|r| r.trim().trim_end_matches('}').trim() == v)
                })
            })
        })
    });
    for c in &mut node.children {
        keep_unquoted_dates(c, src);
    }
}

fn scalar(v: &serde_yaml::Value) -> Option<String> {
    match v {
        serde_yaml::Value::String(s) => Some(s.clone()),
        serde_yaml::Value::Bool(b) => Some(b.to_string()),
        serde_yaml::Value::Number(n) => Some(n.to_string()),
        serde_yaml::Value::Tagged(t) => scalar(&t.value),
        _ => None,
    }
}

fn is_date(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && s.chars().enumerate().all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit())
}

/// Fills `node` (named `key`) from a YAML value: mapping entries become attributes or
/// children, list items `{name: …}` become children (`{name: scalar}` attributes).
fn fill(node: &mut Node, key: &str, v: &serde_yaml::Value, json: bool) {
    match v {
        serde_yaml::Value::Mapping(m) => {
            for (k, val) in m {
                let Some(k) = scalar(k) else { continue };
                add(node, &k, val, json);
            }
        }
        serde_yaml::Value::Sequence(items) => {
            for item in items {
                match item {
                    serde_yaml::Value::Mapping(m) => {
                        for (k, val) in m {
                            let Some(k) = scalar(k) else { continue };
                            add(node, &k, val, json);
                        }
                    }
                    other => {
                        if let Some(s) = scalar(other) {
                            node.attrs.push((key.to_string(), s));
                        }
                    }
                }
            }
        }
        other => node.text = scalar(other),
    }
}

fn add(node: &mut Node, k: &str, val: &serde_yaml::Value, json: bool) {
    match val {
        // `rollback:` with no value is an empty rollback for Liquibase, not a missing one.
        serde_yaml::Value::Null if k == "rollback" => node.children.push(Node::new(k, None)),
        serde_yaml::Value::Null => {}
        serde_yaml::Value::Mapping(_) => {
            let mut c = Node::new(k, None);
            fill(&mut c, k, val, json);
            node.children.push(c);
        }
        serde_yaml::Value::Sequence(items) if items.iter().all(|i| scalar(i).is_some()) && !items.is_empty() => {
            for i in items {
                if let Some(s) = scalar(i) {
                    node.attrs.push((k.to_string(), s));
                }
            }
        }
        serde_yaml::Value::Sequence(_) => {
            let mut c = Node::new(k, None);
            fill(&mut c, k, val, json);
            node.children.push(c);
        }
        other => {
            if let Some(s) = scalar(other) {
                if !json && matches!(other, serde_yaml::Value::String(_)) && is_date(&s) {
                    node.yaml_dates.push(k.to_string());
                }
                if matches!(other, serde_yaml::Value::Number(n) if n.is_f64()) {
                    node.yaml_floats.push(k.to_string());
                }
                node.attrs.push((k.to_string(), s));
            }
        }
    }
}
