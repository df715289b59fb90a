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
}

/// How deep changelog elements may nest (YAML and JSON parsers stop at 128 themselves).
const MAX_DEPTH: usize = 128;

/// The line where elements first nest deeper than [`MAX_DEPTH`], found by a flat scan of
/// the text (comments, CDATA, processing instructions, declarations and quoted attribute
/// values skipped), or `None`.
fn too_deep(src: &str) -> Option<usize> {
    let b = src.as_bytes();
    let (mut i, mut depth) = (0, 0usize);
    let skip_to = |from: usize, end: &[u8]| {
        b[from..].windows(end.len()).position(|w| w == end).map_or(b.len(), |p| from + p + end.len())
    };
    while i < b.len() {
        if b[i] != b'<' {
            i += 1;
            continue;
        }
        let rest = &b[i..];
        if rest.starts_with(b"<!--") {
            i = skip_to(i + 4, b"-->");
        } else if rest.starts_with(b"<![CDATA[") {
            i = skip_to(i + 9, b"]]>");
        } else if rest.starts_with(b"<?") {
            i = skip_to(i + 2, b"?>");
        } else if rest.starts_with(b"<!") {
            i = skip_to(i + 2, b">");
        } else if rest.starts_with(b"</") {
            depth = depth.saturating_sub(1);
            i = skip_to(i + 2, b">");
        } else {
            // A start tag: up to its `>` outside quotes; `/>` closes it at once.
            let start = i;
            let mut quote = None;
            i += 1;
            while i < b.len() {
                match (quote, b[i]) {
                    (None, q @ (b'"' | b'\'')) => quote = Some(q),
                    (Some(q), c) if c == q => quote = None,
                    (None, b'>') => break,
                    _ => {}
                }
                i += 1;
            }
            if b.get(i.wrapping_sub(1)) != Some(&b'/') {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Some(src[..start].matches('\n').count() + 1);
                }
            }
            i += 1;
        }
    }
    None
}

pub(crate) fn from_xml(file: &str, src: &str) -> Result<Node, ChangelogError> {
    // roxmltree parses nested elements recursively, and the tree is converted (and later
    // walked and dropped) recursively too: refuse a nesting no changelog needs before any
    // of that can exhaust the stack (a candidate's file is untrusted).
    if let Some(line) = too_deep(src) {
        return Err(ChangelogError {
            file: file.to_string(),
            line: Some(line),
            message: format!("elements are nested more than {MAX_DEPTH} deep; no changelog needs that"),
        });
    }
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

/// Reads a YAML or JSON changelog as Liquibase does: with snakeyaml's YAML 1.1 rules for
/// plain (unquoted) scalars (`yes` is true, `007` is 7, `1.50` is the double 1.5, an
/// unquoted date is a date), JSON being YAML.
pub(crate) fn from_yaml(file: &str, src: &str) -> Result<Node, ChangelogError> {
    let mut b = Builder::default();
    let mut parser = yaml_rust2::parser::Parser::new_from_str(src);
    parser.load(&mut b, false).map_err(|e| ChangelogError {
        file: file.to_string(),
        line: Some(e.marker().line()),
        message: format!("not valid YAML: {}", e.info()),
    })?;
    if let Some(e) = b.error {
        return Err(ChangelogError::new(file, Some(e.0), e.1));
    }
    let Some(Y::Map(m, _)) = b.root else {
        return Err(ChangelogError::new(file, Some(1), "a changelog must be a mapping with the key databaseChangeLog"));
    };
    let Some((k, root)) = m.iter().find(|(k, _)| k.text().as_deref() == Some("databaseChangeLog")) else {
        return Err(ChangelogError::new(file, Some(1), "missing the top-level key databaseChangeLog"));
    };
    let mut node = Node::new("databaseChangeLog", Some(k.line()));
    fill(&mut node, "databaseChangeLog", root).map_err(|(line, m)| ChangelogError::new(file, Some(line), m))?;
    Ok(node)
}

/// A YAML value as snakeyaml composes it.
#[derive(Debug, Clone)]
enum Y {
    Scalar(Scalar, usize),
    Seq(Vec<Y>, usize),
    Map(Vec<(Y, Y)>, usize),
}

/// A scalar as snakeyaml's SafeConstructor (with Liquibase's timestamp constructor) makes it.
#[derive(Debug, Clone, PartialEq)]
enum Scalar {
    Null,
    Bool(bool),
    /// An integer, in decimal.
    Int(String),
    /// A double, as Java's `Double.toString` writes it.
    Float(String),
    /// `2020-01-31`: a `java.util.Date` at midnight UTC.
    Date(String),
    /// A timestamp without a zone: Liquibase makes it the text `yyyy-MM-dd HH:mm:ss`.
    LocalTimestamp(String),
    /// A timestamp with a zone: a `java.util.Date`, written in the JVM's time zone.
    ZonedTimestamp(String),
    Str(String),
}

impl Y {
    fn line(&self) -> usize {
        match self {
            Y::Scalar(_, l) | Y::Seq(_, l) | Y::Map(_, l) => *l,
        }
    }

    fn text(&self) -> Option<String> {
        match self {
            Y::Scalar(s, _) => scalar_text(s),
            _ => None,
        }
    }
}

fn scalar_text(s: &Scalar) -> Option<String> {
    match s {
        Scalar::Null => None,
        Scalar::Bool(b) => Some(b.to_string()),
        Scalar::Int(v)
        | Scalar::Float(v)
        | Scalar::Date(v)
        | Scalar::LocalTimestamp(v)
        | Scalar::ZonedTimestamp(v)
        | Scalar::Str(v) => Some(v.clone()),
    }
}

enum Frame {
    Seq(Vec<Y>, usize, usize),
    Map(Vec<(Y, Y)>, Option<Y>, usize, usize),
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    anchors: std::collections::HashMap<usize, Y>,
    root: Option<Y>,
    error: Option<(usize, String)>,
}

impl Builder {
    fn push(&mut self, y: Y, anchor: usize) {
        if anchor > 0 {
            self.anchors.insert(anchor, y.clone());
        }
        match self.stack.last_mut() {
            None => self.root = Some(y),
            Some(Frame::Seq(items, _, _)) => items.push(y),
            Some(Frame::Map(entries, key, _, _)) => match key.take() {
                None => *key = Some(y),
                Some(k) => {
                    if matches!(&k, Y::Scalar(Scalar::Str(s), _) if s == "<<") {
                        // The merge key: the entries of the mapping(s) not given here.
                        let merged: Vec<Y> = match y {
                            Y::Seq(items, _) => items,
                            other => vec![other],
                        };
                        for m in merged {
                            if let Y::Map(more, _) = m {
                                for (mk, mv) in more {
                                    if !entries.iter().any(|(ek, _)| ek.text() == mk.text()) {
                                        entries.push((mk, mv));
                                    }
                                }
                            }
                        }
                    } else {
                        entries.push((k, y));
                    }
                }
            },
        }
    }
}

impl yaml_rust2::parser::MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: yaml_rust2::Event, mark: yaml_rust2::scanner::Marker) {
        use yaml_rust2::Event;
        let line = mark.line();
        match ev {
            Event::Scalar(v, style, anchor, tag) => {
                let plain = style == yaml_rust2::scanner::TScalarStyle::Plain;
                let s = resolve(&v, plain, tag.as_ref().map(|t| t.suffix.as_str()));
                self.push(Y::Scalar(s, line), anchor);
            }
            Event::SequenceStart(anchor, _) => self.stack.push(Frame::Seq(Vec::new(), line, anchor)),
            Event::MappingStart(anchor, _) => self.stack.push(Frame::Map(Vec::new(), None, line, anchor)),
            Event::SequenceEnd | Event::MappingEnd => {
                let (y, anchor) = match self.stack.pop() {
                    Some(Frame::Seq(items, l, a)) => (Y::Seq(items, l), a),
                    Some(Frame::Map(entries, _, l, a)) => (Y::Map(entries, l), a),
                    None => return,
                };
                self.push(y, anchor);
            }
            Event::Alias(id) => match self.anchors.get(&id).cloned() {
                Some(y) => self.push(y, 0),
                None => {
                    self.error.get_or_insert((line, "an alias to an anchor that is not defined".into()));
                }
            },
            _ => {}
        }
    }
}

/// snakeyaml 2.2's implicit resolver (YAML 1.1), for plain scalars and explicit tags.
fn resolve(v: &str, plain: bool, tag: Option<&str>) -> Scalar {
    use std::sync::OnceLock;
    static RES: OnceLock<[regex::Regex; 5]> = OnceLock::new();
    let [boolean, int, float, null, timestamp] = RES.get_or_init(|| {
        [
            regex::Regex::new(r"^(?:yes|Yes|YES|no|No|NO|true|True|TRUE|false|False|FALSE|on|On|ON|off|Off|OFF)$"),
            regex::Regex::new(r"^(?:[-+]?0b_*[0-1][0-1_]*|[-+]?0_*[0-7][0-7_]*|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x_*[0-9a-fA-F][0-9a-fA-F_]*|[-+]?[1-9][0-9_]*(?::[0-5]?[0-9])+)$"),
            regex::Regex::new(r"^([-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)|[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?|[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
            regex::Regex::new(r"^(?:~|null|Null|NULL| )$"),
            regex::Regex::new(r"^(?:[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]|[0-9][0-9][0-9][0-9]-[0-9][0-9]?-[0-9][0-9]?(?:[Tt]|[ \t]+)[0-9][0-9]?:[0-9][0-9]:[0-9][0-9](?:\.[0-9]*)?(?:[ \t]*(?:Z|[-+][0-9][0-9]?(?::[0-9][0-9])?))?)$"),
        ]
        .map(|r| r.expect("snakeyaml's patterns are valid"))
    });
    let kind = match tag {
        Some("str") => return Scalar::Str(v.to_string()),
        Some(t) => t,
        None if !plain => return Scalar::Str(v.to_string()),
        None => {
            // snakeyaml tries its resolvers in this order.
            if v.is_empty() || null.is_match(v) {
                "null"
            } else if boolean.is_match(v) {
                "bool"
            } else if int.is_match(v) {
                "int"
            } else if float.is_match(v) {
                "float"
            } else if timestamp.is_match(v) {
                "timestamp"
            } else {
                "str"
            }
        }
    };
    match kind {
        "null" => Scalar::Null,
        "bool" => Scalar::Bool(matches!(v.to_ascii_lowercase().as_str(), "yes" | "true" | "on")),
        "int" => yaml_int(v).map(Scalar::Int).unwrap_or_else(|| Scalar::Str(v.to_string())),
        "float" => yaml_float(v).map(Scalar::Float).unwrap_or_else(|| Scalar::Str(v.to_string())),
        "timestamp" => {
            let b = v.as_bytes();
            if b.len() == 10 && b[4] == b'-' && b[7] == b'-' {
                Scalar::Date(v.to_string())
            } else if v.ends_with('Z') || v[10..].contains(['+', '-']) {
                Scalar::ZonedTimestamp(v.to_string())
            } else {
                local_timestamp(v).map(Scalar::LocalTimestamp).unwrap_or_else(|| Scalar::Str(v.to_string()))
            }
        }
        _ => Scalar::Str(v.to_string()),
    }
}

/// `ConstructYamlInt`: binary, octal (a leading 0), hexadecimal, base 60, decimal.
fn yaml_int(v: &str) -> Option<String> {
    let v = v.replace('_', "");
    let (neg, v) = match v.strip_prefix('-') {
        Some(r) => (true, r.to_string()),
        None => (false, v.strip_prefix('+').unwrap_or(&v).to_string()),
    };
    let value: i128 = if v == "0" {
        0
    } else if let Some(b) = v.strip_prefix("0b") {
        i128::from_str_radix(b, 2).ok()?
    } else if let Some(h) = v.strip_prefix("0x") {
        i128::from_str_radix(h, 16).ok()?
    } else if v.contains(':') {
        v.split(':').try_fold(0i128, |acc, d| Some(acc * 60 + d.parse::<i128>().ok()?))?
    } else if let Some(o) = v.strip_prefix('0') {
        i128::from_str_radix(o, 8).ok()?
    } else {
        // Decimal: kept as written (BigInteger keeps every digit).
        return Some(format!("{}{v}", if neg && v != "0" { "-" } else { "" }));
    };
    Some(if neg { (-value).to_string() } else { value.to_string() })
}

/// `ConstructYamlFloat`, then Java's `Double.toString`.
fn yaml_float(v: &str) -> Option<String> {
    let v = v.replace('_', "").to_ascii_lowercase();
    let (neg, body) = match v.strip_prefix('-') {
        Some(r) => (true, r.to_string()),
        None => (false, v.strip_prefix('+').unwrap_or(&v).to_string()),
    };
    let value: f64 = if body == ".inf" {
        f64::INFINITY
    } else if body == ".nan" {
        f64::NAN
    } else if body.contains(':') {
        let mut parts: Vec<&str> = body.split(':').collect();
        let last: f64 = parts.pop()?.parse().ok()?;
        let mut acc = 0f64;
        for p in parts {
            acc = acc * 60.0 + p.parse::<f64>().ok()?;
        }
        acc * 60.0 + last
    } else {
        body.parse().ok()?
    };
    Some(java_double(if neg { -value } else { value }))
}

/// Java's `Double.toString`: shortest digits, plain between 10^-3 and 10^7, else
/// `d.dddE±n`.
pub(crate) fn java_double(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity".into() } else { "-Infinity".into() };
    }
    if f == 0.0 {
        return if f.is_sign_negative() { "-0.0".into() } else { "0.0".into() };
    }
    let a = f.abs();
    if (1e-3..1e7).contains(&a) {
        let s = format!("{f}");
        if s.contains('.') {
            s
        } else {
            format!("{s}.0")
        }
    } else {
        let s = format!("{f:e}");
        let (m, e) = s.split_once('e').unwrap_or((&s, "0"));
        let m = if m.contains('.') { m.to_string() } else { format!("{m}.0") };
        format!("{m}E{e}")
    }
}

/// Liquibase's timestamp constructor: a zoneless timestamp becomes `yyyy-MM-dd HH:mm:ss`
/// (fractions of a second dropped).
fn local_timestamp(v: &str) -> Option<String> {
    let (date, time) = v.split_once(['T', 't', ' ', '\t'])?;
    let mut d = date.split('-').map(|p| p.parse::<u32>().ok());
    let (y, m, dd) = (d.next()??, d.next()??, d.next()??);
    let time = time.trim();
    let mut t = time.split(':');
    let (h, mi) = (t.next()?.parse::<u32>().ok()?, t.next()?.parse::<u32>().ok()?);
    let sec: f64 = t.next()?.parse().ok()?;
    Some(format!("{y:04}-{m:02}-{dd:02} {h:02}:{mi:02}:{:02}", sec.floor() as u32))
}

/// Fills `node` (named `key`) from a YAML value: mapping entries become attributes or
/// children, list items `{name: …}` become children (`{name: scalar}` attributes).
fn fill(node: &mut Node, key: &str, v: &Y) -> Result<(), (usize, String)> {
    match v {
        Y::Map(m, _) => {
            for (k, val) in m {
                let (Some(name), line) = (k.text(), k.line()) else { continue };
                add(node, &name, line, val)?;
            }
        }
        Y::Seq(items, _) => {
            for item in items {
                match item {
                    Y::Map(m, _) if key == "changes" || key == "rollback" => {
                        // A change given as `- sql: text` or `- empty:` is a change all the
                        // same, its text the value of a DIRECT_VALUE property.
                        for (k, val) in m {
                            let (Some(name), line) = (k.text(), k.line()) else { continue };
                            match val {
                                Y::Scalar(s, l) => {
                                    let mut c = Node::new(&name, Some(line));
                                    c.text = value_text(&name, s, *l)?;
                                    node.children.push(c);
                                }
                                _ => add(node, &name, line, val)?,
                            }
                        }
                    }
                    Y::Map(m, _) => {
                        for (k, val) in m {
                            let (Some(name), line) = (k.text(), k.line()) else { continue };
                            add(node, &name, line, val)?;
                        }
                    }
                    Y::Scalar(s, l) => {
                        if let Some(s) = value_text(key, s, *l)? {
                            node.attrs.push((key.to_string(), s));
                        }
                    }
                    Y::Seq(..) => {}
                }
            }
        }
        Y::Scalar(s, l) => node.text = value_text(key, s, *l)?,
    }
    Ok(())
}

/// The text Liquibase makes of a scalar under `key`; a date or zoned timestamp pgplane
/// cannot write as Liquibase would (Java's `Date.toString`, which depends on the JVM's time
/// zone) is an error, except under the `*Date` keys, which take dates.
fn value_text(key: &str, s: &Scalar, line: usize) -> Result<Option<String>, (usize, String)> {
    match s {
        Scalar::Date(v) | Scalar::ZonedTimestamp(v) if !key.ends_with("Date") => Err((
            line,
            format!(
                "{key}: the unquoted {v} is a YAML date, which Liquibase turns into Java's date text (like \"Fri Jan 31 00:00:00 UTC 2020\", in the time zone of its JVM); quote it"
            ),
        )),
        Scalar::ZonedTimestamp(v) => Err((
            line,
            format!(
                "{key}: the unquoted {v} is a YAML timestamp with a zone, which Liquibase turns into Java's date text in the time zone of its JVM; quote it"
            ),
        )),
        other => Ok(scalar_text(other)),
    }
}

fn add(node: &mut Node, k: &str, line: usize, val: &Y) -> Result<(), (usize, String)> {
    match val {
        // `rollback:` with no value is an empty rollback for Liquibase, not a missing one.
        Y::Scalar(Scalar::Null, _) if k == "rollback" => node.children.push(Node::new(k, Some(line))),
        Y::Scalar(Scalar::Null, _) => {}
        Y::Map(..) => {
            let mut c = Node::new(k, Some(line));
            fill(&mut c, k, val)?;
            node.children.push(c);
        }
        Y::Seq(items, _) if !items.is_empty() && items.iter().all(|i| matches!(i, Y::Scalar(..))) => {
            for i in items {
                if let Y::Scalar(s, l) = i {
                    if let Some(s) = value_text(k, s, *l)? {
                        node.attrs.push((k.to_string(), s));
                    }
                }
            }
        }
        Y::Seq(..) => {
            let mut c = Node::new(k, Some(line));
            fill(&mut c, k, val)?;
            node.children.push(c);
        }
        Y::Scalar(s, l) => {
            if let Some(text) = value_text(k, s, *l)? {
                match s {
                    Scalar::Date(_) => node.yaml_dates.push(k.to_string()),
                    Scalar::Float(_) => node.yaml_floats.push(k.to_string()),
                    _ => {}
                }
                node.attrs.push((k.to_string(), text));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_scalars_resolve_as_snakeyaml_does() {
        let r = |v: &str| resolve(v, true, None);
        assert_eq!(r("yes"), Scalar::Bool(true));
        assert_eq!(r("Off"), Scalar::Bool(false));
        assert_eq!(r("007"), Scalar::Int("7".into()));
        assert_eq!(r("0x1F"), Scalar::Int("31".into()));
        assert_eq!(r("0b101"), Scalar::Int("5".into()));
        assert_eq!(r("1:30"), Scalar::Int("90".into()));
        assert_eq!(r("1_000"), Scalar::Int("1000".into()));
        assert_eq!(r("-12"), Scalar::Int("-12".into()));
        assert_eq!(r("09"), Scalar::Str("09".into()));
        assert_eq!(r("1.50"), Scalar::Float("1.5".into()));
        assert_eq!(r("1e3"), Scalar::Float("1000.0".into()));
        assert_eq!(r("1.0e10"), Scalar::Float("1.0E10".into()));
        assert_eq!(r("0.0001"), Scalar::Float("1.0E-4".into()));
        assert_eq!(r("~"), Scalar::Null);
        assert_eq!(r("2020-01-31"), Scalar::Date("2020-01-31".into()));
        assert_eq!(r("2020-01-31T10:20:30.5"), Scalar::LocalTimestamp("2020-01-31 10:20:30".into()));
        assert_eq!(r("2020-01-31T10:20:30Z"), Scalar::ZonedTimestamp("2020-01-31T10:20:30Z".into()));
        assert_eq!(r("varchar(10)"), Scalar::Str("varchar(10)".into()));
        assert_eq!(resolve("yes", false, None), Scalar::Str("yes".into()));
        assert_eq!(resolve("12", true, Some("str")), Scalar::Str("12".into()));
    }

    #[test]
    fn yaml_lines_and_scalar_changes() {
        let src = "databaseChangeLog:\n  - changeSet:\n      id: 001\n      author: a\n      changes:\n        - sql: SELECT 1\n        - empty:\n";
        let n = from_yaml("x.yaml", src).unwrap();
        let cs = &n.children[0];
        assert_eq!(cs.name, "changeSet");
        assert_eq!(cs.line, Some(2));
        assert_eq!(cs.get("id").as_deref(), Some("1"));
        let changes = cs.flat_children("changes");
        assert_eq!(changes.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["sql", "empty"]);
        assert_eq!(changes[0].text.as_deref(), Some("SELECT 1"));
        let err = from_yaml("x.yaml", "databaseChangeLog:\n  - changeSet:\n      id: 2020-01-31\n").unwrap_err();
        assert!(err.message.contains("quote it"), "{err}");
        assert_eq!(err.line, Some(3));
    }

    #[test]
    fn nesting_is_measured_without_parsing() {
        let ok = "<?xml version=\"1.0\"?>\n<databaseChangeLog a=\"x>y\">\n<!-- <a><a> -->\n<changeSet id=\"1\">\
                  <sql><![CDATA[<b><b>]]></sql><empty/></changeSet></databaseChangeLog>";
        assert_eq!(too_deep(ok), None);
        let open = |n: usize| "<a>".repeat(n);
        assert_eq!(too_deep(&format!("{}{}", open(MAX_DEPTH), "</a>".repeat(MAX_DEPTH))), None);
        assert_eq!(too_deep(&format!("<r>\n{}", open(MAX_DEPTH))), Some(2));
        assert_eq!(too_deep(&"<a/>".repeat(1000)), None);
        let e = from_xml("deep.xml", &format!("<databaseChangeLog>{}", open(100_000))).unwrap_err();
        assert!(e.message.contains("nested more than 128"), "{}", e.message);
    }
}
