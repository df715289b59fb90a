//! `{{…}}` placeholders in stack files: `{{item}}` (a `for_each` item that is a scalar),
//! `{{item.KEY}}` (a key of an item that is a map), `{{env}}` (the environment) and
//! `{{stack}}` (the stack's name). Spaces inside the braces are allowed (`{{ item.name }}`).
//!
//! Only a name made of letters, digits, `_` and `.` that does not start with `.` counts as a
//! placeholder, so other tools' templates in commands pass through untouched (`docker
//! inspect -f '{{.State.Status}}'`, `{{json .}}`); such a name that is not one of the
//! above is an error, which catches typos like `{{itme}}`.

use std::collections::BTreeMap;

/// One `for_each` item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// A step without `for_each`.
    None,
    Scalar(String),
    Map(BTreeMap<String, String>),
}

/// What placeholders resolve to.
pub struct Vars<'a> {
    pub item: &'a Item,
    pub env: &'a str,
    pub stack: &'a str,
}

/// Replaces every placeholder in `s`.
pub fn expand(s: &str, vars: &Vars<'_>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(open) = rest.find("{{") {
        let Some(close) = rest[open + 2..].find("}}") else { break };
        let inner = &rest[open + 2..open + 2 + close];
        let name = inner.trim();
        out.push_str(&rest[..open]);
        if is_placeholder(name) {
            out.push_str(&resolve(name, vars)?);
        } else {
            out.push_str(&rest[open..open + 2 + close + 2]);
        }
        rest = &rest[open + 2 + close + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

fn is_placeholder(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
}

fn resolve(name: &str, vars: &Vars<'_>) -> Result<String, String> {
    match (name, vars.item) {
        ("env", _) => Ok(vars.env.to_string()),
        ("stack", _) => Ok(vars.stack.to_string()),
        ("item", Item::Scalar(v)) => Ok(v.clone()),
        ("item", Item::Map(m)) => Err(format!(
            "`{{{{item}}}}` is a map here; name one of its keys: {}",
            m.keys().map(|k| format!("{{{{item.{k}}}}}")).collect::<Vec<_>>().join(", ")
        )),
        (n, Item::None) if n == "item" || n.starts_with("item.") => {
            Err(format!("`{{{{{n}}}}}` is only defined in a step with `for_each`"))
        }
        (n, Item::Map(m)) if n.starts_with("item.") => {
            let key = &n["item.".len()..];
            m.get(key).cloned().ok_or_else(|| {
                format!(
                    "`{{{{{n}}}}}`: the item has no key {key:?} (its keys: {})",
                    m.keys().cloned().collect::<Vec<_>>().join(", ")
                )
            })
        }
        (n, Item::Scalar(v)) if n.starts_with("item.") => {
            Err(format!("`{{{{{n}}}}}`: the item {v:?} is a plain value, not a map; write `{{{{item}}}}`"))
        }
        (n, _) => Err(format!("unknown placeholder `{{{{{n}}}}}`; known are {{{{item}}}}, {{{{item.KEY}}}}, {{{{env}}}} and {{{{stack}}}}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(item: &Item) -> Vars<'_> {
        Vars { item, env: "dev", stack: "apps" }
    }

    #[test]
    fn placeholders_expand() {
        let scalar = Item::Scalar("alpha".into());
        assert_eq!(expand("build-{{item}}-{{ env }}/{{stack}}", &vars(&scalar)).unwrap(), "build-alpha-dev/apps");
        let map = Item::Map([("name".to_string(), "beta".to_string()), ("port".into(), "8082".into())].into());
        assert_eq!(expand("{{item.name}}:{{item.port}}", &vars(&map)).unwrap(), "beta:8082");
    }

    #[test]
    fn other_templates_pass_through() {
        let s = "docker inspect -f '{{.State.Status}}' x; echo {{json .}} {{ unclosed";
        assert_eq!(expand(s, &vars(&Item::None)).unwrap(), s);
    }

    #[test]
    fn mistakes_are_named() {
        let map = Item::Map([("name".to_string(), "beta".to_string())].into());
        assert_eq!(
            expand("{{itme}}", &vars(&map)).unwrap_err(),
            "unknown placeholder `{{itme}}`; known are {{item}}, {{item.KEY}}, {{env}} and {{stack}}"
        );
        assert_eq!(
            expand("{{item.port}}", &vars(&map)).unwrap_err(),
            "`{{item.port}}`: the item has no key \"port\" (its keys: name)"
        );
        assert_eq!(
            expand("{{item}}", &vars(&map)).unwrap_err(),
            "`{{item}}` is a map here; name one of its keys: {{item.name}}"
        );
        assert_eq!(
            expand("{{item}}", &vars(&Item::None)).unwrap_err(),
            "`{{item}}` is only defined in a step with `for_each`"
        );
    }
}
