//! Liquibase's context and label expressions (`dev, test`, `!prod`, `a and (b or c)`) and
//! `dbms` lists.

/// Evaluates `expr` with `atom(name)` deciding each name. Grammar (lowest precedence
/// first): `or`/`,` → `and` → `!`/`not` → `( … )` | name. Names compare case-insensitively.
pub(crate) fn eval(expr: &str, atom: &dyn Fn(&str) -> bool) -> bool {
    let tokens = tokenize(expr);
    if tokens.is_empty() {
        return true;
    }
    let mut p = Parser { t: &tokens, i: 0, atom };
    p.or()
}

fn tokenize(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for c in s.chars() {
        match c {
            '(' | ')' | ',' | '!' => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
                out.push(c.to_string());
            }
            c if c.is_whitespace() => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

struct Parser<'a> {
    t: &'a [String],
    i: usize,
    atom: &'a dyn Fn(&str) -> bool,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&str> {
        self.t.get(self.i).map(String::as_str)
    }
    fn or(&mut self) -> bool {
        let mut v = self.and();
        while let Some(t) = self.peek() {
            if t == "," || t.eq_ignore_ascii_case("or") {
                self.i += 1;
                let r = self.and();
                v = v || r;
            } else {
                break;
            }
        }
        v
    }
    fn and(&mut self) -> bool {
        let mut v = self.not();
        while let Some(t) = self.peek() {
            if t.eq_ignore_ascii_case("and") {
                self.i += 1;
                let r = self.not();
                v = v && r;
            } else {
                break;
            }
        }
        v
    }
    fn not(&mut self) -> bool {
        match self.peek() {
            Some(t) if t == "!" || t.eq_ignore_ascii_case("not") => {
                self.i += 1;
                !self.not()
            }
            Some("(") => {
                self.i += 1;
                let v = self.or();
                if self.peek() == Some(")") {
                    self.i += 1;
                }
                v
            }
            Some(t) => {
                let t = t.to_string();
                self.i += 1;
                (self.atom)(&t)
            }
            None => true,
        }
    }
}

/// A changeset context expression against the contexts given at run time. No contexts
/// given, or no expression on the changeset: selected.
pub(crate) fn contexts_match(expr: Option<&str>, runtime: &[String]) -> bool {
    let runtime: Vec<&str> = runtime.iter().map(|s| s.trim()).filter(|s| !s.is_empty()).collect();
    match expr.map(str::trim).filter(|e| !e.is_empty()) {
        None => true,
        Some(_) if runtime.is_empty() => true,
        Some(e) => eval(e, &|name| runtime.iter().any(|r| r.eq_ignore_ascii_case(name))),
    }
}

/// A run-time label expression against a changeset's comma-separated labels. No expression
/// given, or no labels on the changeset: selected.
pub(crate) fn labels_match(labels: Option<&str>, runtime: Option<&str>) -> bool {
    let set: Vec<&str> = labels.unwrap_or("").split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
    match runtime.map(str::trim).filter(|e| !e.is_empty()) {
        None => true,
        Some(_) if set.is_empty() => true,
        Some(e) => eval(e, &|name| set.iter().any(|l| l.eq_ignore_ascii_case(name))),
    }
}

/// A `dbms` list (`postgresql, h2`, `!oracle`, `all`, `none`) against a database short name.
pub(crate) fn dbms_match(list: Option<&str>, db: &str) -> bool {
    let items: Vec<&str> = list.unwrap_or("").split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
    if items.is_empty() {
        return true;
    }
    let mut positive = false;
    for i in &items {
        if i.eq_ignore_ascii_case("none") {
            return false;
        }
        if let Some(neg) = i.strip_prefix('!') {
            if neg.trim().eq_ignore_ascii_case(db) {
                return false;
            }
        } else {
            positive = true;
            if i.eq_ignore_ascii_case(db) || i.eq_ignore_ascii_case("all") {
                return true;
            }
        }
    }
    !positive
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expressions() {
        let rt = vec!["dev".to_string()];
        assert!(contexts_match(Some("dev, test"), &rt));
        assert!(!contexts_match(Some("!dev"), &rt));
        assert!(contexts_match(Some("test or dev"), &rt));
        assert!(!contexts_match(Some("dev and test"), &rt));
        assert!(contexts_match(Some("dev and (test or !prod)"), &rt));
        assert!(contexts_match(Some("prod"), &[]));
        assert!(labels_match(Some("core, seed"), Some("seed and !reporting")));
        assert!(!labels_match(Some("core"), Some("seed")));
        assert!(labels_match(None, Some("seed")));
        assert!(dbms_match(Some("postgresql"), "postgresql"));
        assert!(!dbms_match(Some("oracle, h2"), "postgresql"));
        assert!(dbms_match(Some("!oracle"), "postgresql"));
        assert!(!dbms_match(Some("none"), "postgresql"));
    }
}
