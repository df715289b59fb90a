//! Where each key and list item of a YAML document starts, by path (`steps[3].needs[1]`).
//!
//! serde_yaml reports positions only for syntax and type errors, never for values that
//! parsed fine, so semantic errors ("unknown step `x`") find their line here. The index
//! reads the block style people write (mappings, sequences, `- key: value` items, flow
//! lists on one line, block scalars); a place it cannot see (a multi-line flow
//! collection) falls back to the nearest enclosing key that it did see.

use std::collections::BTreeMap;

/// 1-based line and column of every path the index could see.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LineIndex {
    places: BTreeMap<String, (usize, usize)>,
}

impl LineIndex {
    /// Indexes a whole YAML document.
    pub fn new(text: &str) -> LineIndex {
        index(text)
    }

    /// The place of `path`, else of its nearest indexed ancestor (`a[1].b` → `a[1]` → `a`).
    pub fn at(&self, path: &str) -> Option<(usize, usize)> {
        let mut p = path;
        loop {
            if let Some(place) = self.places.get(p) {
                return Some(*place);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }

    /// Every indexed path (for tests).
    pub fn paths(&self) -> impl Iterator<Item = (&str, (usize, usize))> {
        self.places.iter().map(|(k, v)| (k.as_str(), *v))
    }
}

/// A key or a list item that may have children.
struct Open {
    /// Column where it starts (0-based).
    col: usize,
    path: String,
    /// Items of the sequence under this node counted so far.
    items: usize,
    is_item: bool,
}

fn index(text: &str) -> LineIndex {
    let mut places = BTreeMap::new();
    let mut stack: Vec<Open> = Vec::new();
    // Inside a block scalar (`key: |`): lines indented more than this column belong to it.
    let mut block_scalar: Option<usize> = None;
    // Items of a document whose root is a sequence.
    let mut root_items = 0usize;
    for (n, raw) in text.lines().enumerate() {
        let line = n + 1;
        let content = strip_comment(raw);
        if content.trim().is_empty() {
            continue;
        }
        let indent = content.len() - content.trim_start().len();
        if let Some(col) = block_scalar {
            if indent > col {
                continue;
            }
            block_scalar = None;
        }
        if content.trim_start().starts_with("---") || content.trim_start().starts_with("...") {
            stack.clear();
            continue;
        }
        let mut col = indent;
        let mut rest = content.trim_start();
        // Any number of `- ` item markers, then maybe a key.
        loop {
            if rest == "-" || rest.starts_with("- ") {
                // A sibling item or deeper content ends here; an open key at the same
                // column keeps its items (`key:\n- a`).
                while let Some(top) = stack.last() {
                    if top.col > col || (top.col == col && top.is_item) {
                        stack.pop();
                    } else {
                        break;
                    }
                }
                let parent = stack.last_mut();
                let path = match parent {
                    Some(p) => {
                        let path = format!("{}[{}]", p.path, p.items);
                        p.items += 1;
                        path
                    }
                    None => {
                        root_items += 1;
                        format!("[{}]", root_items - 1)
                    }
                };
                places.entry(path.clone()).or_insert((line, col + 1));
                stack.push(Open { col, path, items: 0, is_item: true });
                let after = &rest[1..];
                let skipped = after.len() - after.trim_start().len();
                col += 1 + skipped;
                rest = after.trim_start();
                if rest.is_empty() {
                    break;
                }
                continue;
            }
            if let Some((key, value, value_col)) = split_key(rest) {
                while stack.last().is_some_and(|top| top.col >= col) {
                    stack.pop();
                }
                let path = match stack.last() {
                    Some(p) => format!("{}.{key}", p.path),
                    None => key.to_string(),
                };
                places.entry(path.clone()).or_insert((line, col + 1));
                let value = value.trim();
                if value.starts_with('|') || value.starts_with('>') {
                    block_scalar = Some(col);
                } else if value.starts_with('[') {
                    flow_items(
                        &path,
                        value,
                        line,
                        col + value_col + (rest.len() - rest.trim_start().len()),
                        &mut places,
                    );
                } else if value.starts_with('{') {
                    flow_keys(&path, value, line, col + value_col, &mut places);
                }
                stack.push(Open { col, path, items: 0, is_item: false });
            }
            break;
        }
    }
    LineIndex { places }
}

/// `key: value` or `key:` (plain, single- or double-quoted key): the key, the rest after
/// the colon, and the column of that rest relative to the start of `s`.
fn split_key(s: &str) -> Option<(&str, &str, usize)> {
    let (key, after_key) = if let Some(q) = s.chars().next().filter(|c| *c == '"' || *c == '\'') {
        let end = s[1..].find(q)? + 1;
        (&s[1..end], end + 1)
    } else {
        let mut end = None;
        for (i, c) in s.char_indices() {
            if c == ':' && s[i + 1..].chars().next().is_none_or(|n| n == ' ' || n == '\t') {
                end = Some(i);
                break;
            }
            if i == 0 && matches!(c, '[' | '{' | '"' | '\'' | '|' | '>' | '&' | '*' | '!' | '%' | '@' | '`') {
                return None;
            }
        }
        let end = end?;
        (s[..end].trim_end(), end)
    };
    let after = &s[after_key..];
    let after = after.strip_prefix(':')?;
    let value_col = after_key + 1 + (after.len() - after.trim_start().len());
    Some((key, after, value_col))
}

/// Items of a one-line flow list `[a, b, {c: d}]`, each at its own column.
fn flow_items(path: &str, value: &str, line: usize, col: usize, places: &mut BTreeMap<String, (usize, usize)>) {
    let Some(inner) = value.strip_prefix('[') else { return };
    let mut depth = 0usize;
    let mut quote: Option<char> = None;
    let mut item = 0usize;
    let mut start: Option<usize> = None;
    for (i, c) in inner.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => {
                quote = Some(c);
                start.get_or_insert(i);
            }
            (None, '[' | '{') => {
                depth += 1;
                start.get_or_insert(i);
            }
            (None, ']' | '}') if depth > 0 => depth -= 1,
            (None, ']') => break,
            (None, ',') if depth == 0 => {
                if let Some(s) = start.take() {
                    places.entry(format!("{path}[{item}]")).or_insert((line, col + 2 + s));
                }
                item += 1;
            }
            (None, c) if !c.is_whitespace() => {
                start.get_or_insert(i);
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        places.entry(format!("{path}[{item}]")).or_insert((line, col + 2 + s));
    }
}

/// Keys of a one-line flow map `{a: 1, b: 2}`.
fn flow_keys(path: &str, value: &str, line: usize, col: usize, places: &mut BTreeMap<String, (usize, usize)>) {
    let Some(inner) = value.strip_prefix('{') else { return };
    let mut offset = 1;
    for part in inner.split(',') {
        let lead = part.len() - part.trim_start().len();
        if let Some((key, _)) = part.split_once(':') {
            let key = key.trim().trim_matches(['"', '\'']);
            if !key.is_empty() && !key.contains(['{', '}', '[']) {
                places.entry(format!("{path}.{key}")).or_insert((line, col + 1 + offset + lead));
            }
        }
        offset += part.len() + 1;
    }
}

/// The line without a trailing `# comment` (a `#` after a space, outside quotes).
fn strip_comment(line: &str) -> &str {
    let mut quote: Option<char> = None;
    let mut prev = ' ';
    for (i, c) in line.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') if prev == ' ' || prev == '[' || prev == '{' || prev == ',' || prev == ':' => {
                quote = Some(c)
            }
            (None, '#') if prev == ' ' || prev == '\t' || i == 0 => return &line[..i],
            _ => {}
        }
        prev = c;
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_items_and_flow_lists_have_their_lines() {
        let text = "\
version: 1   # comment
groups:
  idx: {mode: exclusive}
steps:
  - name: a
    command: |
      echo 'x: y'
      - not an item
    needs: [b, \"c\"]
  - name: b
    env:
      K: v
    needs:
    - a
";
        let ix = LineIndex::new(text);
        let got: Vec<String> = ix.paths().map(|(p, (l, c))| format!("{p} {l}:{c}")).collect();
        expect_test::expect![[r#"
            [
                "groups 2:1",
                "groups.idx 3:3",
                "groups.idx.mode 3:9",
                "steps 4:1",
                "steps[0] 5:3",
                "steps[0].command 6:5",
                "steps[0].name 5:5",
                "steps[0].needs 9:5",
                "steps[0].needs[0] 9:13",
                "steps[0].needs[1] 9:16",
                "steps[1] 10:3",
                "steps[1].env 11:5",
                "steps[1].env.K 12:7",
                "steps[1].name 10:5",
                "steps[1].needs 13:5",
                "steps[1].needs[0] 14:5",
                "version 1:1",
            ]
        "#]]
        .assert_debug_eq(&got);
        assert_eq!(ix.at("steps[1].needs[0]"), Some((14, 5)));
        // Not indexed: the nearest ancestor.
        assert_eq!(ix.at("steps[0].wait.timeout"), Some((5, 3)));
        assert_eq!(ix.at("nothing"), None);
    }

    #[test]
    fn nested_sections_keep_their_prefix() {
        let text = "modules:\n  - name: m\nstacks:\n  - name: s\n    steps:\n      - name: x\n        needs: [y]\n";
        let ix = LineIndex::new(text);
        assert_eq!(ix.at("stacks[0].steps[0].needs[0]"), Some((7, 17)));
        assert_eq!(ix.at("stacks[0].name"), Some((4, 5)));
    }
}
