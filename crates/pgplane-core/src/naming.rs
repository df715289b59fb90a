//! Naming templates such as `{env}_{module}` and the names they produce.

use std::fmt;

use crate::ident::fit_identifier_keeping;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Var {
    Env,
    Module,
    Tenant,
    /// The owner role's computed name (for `readonly_role`).
    Owner,
    /// A template database's name (for `branches.database`).
    Template,
    /// A sanitised branch id (for `branches.database`).
    Branch,
}

impl Var {
    fn name(self) -> &'static str {
        match self {
            Var::Env => "env",
            Var::Module => "module",
            Var::Tenant => "tenant",
            Var::Owner => "owner",
            Var::Template => "template",
            Var::Branch => "branch",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Lit(String),
    Var(Var),
}

/// A parsed naming template. Literal parts use the safe alphabet (a-z, 0-9, _), so
/// every computed name does too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameTemplate {
    text: String,
    parts: Vec<Part>,
}

impl fmt::Display for NameTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Values for a template's variables.
#[derive(Debug, Clone, Copy, Default)]
pub struct Vars<'a> {
    pub env: &'a str,
    pub module: &'a str,
    pub tenant: &'a str,
    pub owner: &'a str,
    pub template: &'a str,
    pub branch: &'a str,
}

impl NameTemplate {
    pub fn parse(text: &str, required: &[Var], allowed: &[Var]) -> Result<NameTemplate, String> {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut chars = text.chars();
        while let Some(c) = chars.next() {
            if c == '{' {
                let name: String = chars.by_ref().take_while(|&c| c != '}').collect();
                let var = allowed.iter().copied().find(|v| v.name() == name).ok_or_else(|| {
                    format!(
                        "unknown placeholder {{{name}}} in {text:?}; allowed here: {}",
                        allowed.iter().map(|v| format!("{{{}}}", v.name())).collect::<Vec<_>>().join(", ")
                    )
                })?;
                if !lit.is_empty() {
                    parts.push(Part::Lit(std::mem::take(&mut lit)));
                }
                parts.push(Part::Var(var));
            } else if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' {
                lit.push(c);
            } else {
                return Err(format!(
                    "character '{c}' in {text:?} is not allowed; templates use a-z, 0-9, _ and placeholders"
                ));
            }
        }
        if !lit.is_empty() {
            parts.push(Part::Lit(lit));
        }
        for r in required {
            if !parts.contains(&Part::Var(*r)) {
                return Err(format!("{text:?} must contain {{{}}} so that names stay unique", r.name()));
            }
        }
        match parts.first() {
            Some(Part::Lit(l)) if l.starts_with(|c: char| c.is_ascii_digit()) => {
                return Err(format!("{text:?} must not start with a digit"));
            }
            None => return Err("template is empty".into()),
            _ => {}
        }
        Ok(NameTemplate { text: text.to_string(), parts })
    }

    /// The full name before fitting it to 63 bytes.
    pub fn render_raw(&self, vars: Vars<'_>) -> String {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Lit(l) => out.push_str(l),
                Part::Var(Var::Env) => out.push_str(vars.env),
                Part::Var(Var::Module) => out.push_str(vars.module),
                Part::Var(Var::Tenant) => out.push_str(vars.tenant),
                Part::Var(Var::Owner) => out.push_str(vars.owner),
                Part::Var(Var::Template) => out.push_str(vars.template),
                Part::Var(Var::Branch) => out.push_str(vars.branch),
            }
        }
        out
    }

    /// The fitted name, and the full one when it had to be shortened.
    pub fn render_long(&self, vars: Vars<'_>) -> (String, Option<String>) {
        let raw = self.render_raw(vars);
        let fitted = fit_identifier_keeping(&raw, self.suffix());
        let long = (raw != fitted).then_some(raw);
        (fitted, long)
    }

    /// The name PostgreSQL will hold: the raw name, shortened with a hash suffix when
    /// longer than 63 bytes (see [`fit_identifier`]).
    pub fn render(&self, vars: Vars<'_>) -> String {
        fit_identifier_keeping(&self.render_raw(vars), self.suffix())
    }

    /// The literal text after the last placeholder (`_readonly` in `{owner}_readonly`):
    /// a shortened name keeps it, so names of different kinds stay told apart.
    fn suffix(&self) -> &str {
        match self.parts.last() {
            Some(Part::Lit(l)) if self.parts.len() > 1 => l,
            _ => "",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ident::fit_identifier;

    #[test]
    fn renders() {
        let t = NameTemplate::parse("{env}_{tenant}_{module}", &[Var::Tenant], &[Var::Env, Var::Tenant, Var::Module])
            .expect("valid");
        assert_eq!(t.render(Vars { env: "dev", tenant: "acme", module: "users", ..Vars::default() }), "dev_acme_users");
    }

    #[test]
    fn a_shortened_name_keeps_the_templates_suffix() {
        let t = NameTemplate::parse("{owner}_readonly", &[Var::Owner], &[Var::Owner]).expect("valid");
        let owner = fit_identifier(&"o".repeat(70));
        let name = t.render(Vars { owner: &owner, ..Vars::default() });
        assert_eq!(name.len(), 63, "{name}");
        assert!(name.ends_with("_readonly"), "{name}");
        assert_ne!(name, t.render(Vars { owner: &fit_identifier(&"p".repeat(70)), ..Vars::default() }));
        // Short names are untouched.
        assert_eq!(t.render(Vars { owner: "dev_app", ..Vars::default() }), "dev_app_readonly");
    }

    #[test]
    fn rejects_unknown_placeholder_and_bad_chars() {
        assert!(NameTemplate::parse("{env}_{modul}", &[], &[Var::Env, Var::Module]).is_err());
        assert!(NameTemplate::parse("{env}-{module}", &[], &[Var::Env, Var::Module]).is_err());
        assert!(NameTemplate::parse("{env}", &[Var::Module], &[Var::Env, Var::Module]).is_err());
        assert!(NameTemplate::parse("1{module}", &[Var::Module], &[Var::Module]).is_err());
    }
}
