//! Branch databases, the pure part: turning CI branch ids into database names, and
//! deciding what garbage collection drops.

use std::collections::BTreeSet;

use serde::Serialize;

use crate::manifest::BranchPolicy;
use crate::naming::Vars;

/// A CI id (`feature/ABC-12`, `1234`, `Fix Bug!`) as the `{branch}` part of a name:
/// lowercase ASCII letters and digits, every other run of characters one `_`, no `_` at
/// either end.
pub fn sanitize(id: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut gap = false;
    for c in id.chars() {
        if c.is_ascii_alphanumeric() {
            if gap && !out.is_empty() {
                out.push('_');
            }
            gap = false;
            out.push(c.to_ascii_lowercase());
        } else {
            gap = true;
        }
    }
    if out.is_empty() {
        return Err(format!("branch id {id:?} has no letters or digits; use e.g. the merge request number"));
    }
    Ok(out)
}

/// The database name of branch `id` of `template` (at most 63 bytes, see
/// [`crate::ident::fit_identifier`]).
pub fn database_name(policy: &BranchPolicy, env: &str, template: &str, id: &str) -> Result<String, String> {
    let branch = sanitize(id)?;
    let name = policy.database.render(Vars { env, template, branch: &branch, ..Vars::default() });
    if name.starts_with("pg_") || crate::model::RESERVED_DATABASES.contains(&name.as_str()) {
        return Err(format!(
            "branch {id:?} would be database {name:?}, a name reserved for PostgreSQL or pgplane; choose another id"
        ));
    }
    Ok(name)
}

/// What garbage collection knows about a branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Known {
    pub id: String,
    /// Seconds since the epoch, if it has a time to live.
    pub expires_at: Option<i64>,
    /// A deployment that no pgplane process is running any more.
    pub interrupted: bool,
    /// A pgplane process is working on it right now.
    pub busy: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Drop {
    pub id: String,
    pub reason: String,
}

/// Which branches `gc` drops: those not in the live list (when one is given), those past
/// their time to live, and interrupted deployments. Busy branches are left for next time.
pub fn gc(branches: &[Known], keep: Option<&BTreeSet<String>>, now: i64) -> Vec<Drop> {
    // Compare ids as names: `Feature/ABC-12` in the live list keeps `feature_abc_12`.
    let keep: Option<BTreeSet<String>> =
        keep.map(|k| k.iter().map(|id| sanitize(id).unwrap_or_else(|_| id.clone())).collect());
    let mut out = Vec::new();
    for b in branches {
        if b.busy {
            continue;
        }
        let name = sanitize(&b.id).unwrap_or_else(|_| b.id.clone());
        let reason = if keep.as_ref().is_some_and(|k| !k.contains(&name)) {
            Some("not in the live list".to_string())
        } else if let Some(at) = b.expires_at.filter(|at| *at <= now) {
            Some(format!("expired {} ago", human_secs(now - at)))
        } else if b.interrupted {
            Some("its deployment was interrupted (no pgplane process runs it)".to_string())
        } else {
            None
        };
        if let Some(reason) = reason {
            out.push(Drop { id: b.id.clone(), reason });
        }
    }
    out
}

fn human_secs(s: i64) -> String {
    match s {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

/// A `--match` pattern: `*` matches any run of characters, everything else itself.
pub fn glob(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let (mut pi, mut ni, mut star, mut mark) = (0, 0, None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == n[ni] || p[pi] == '?') {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::naming::{NameTemplate, Var};

    #[test]
    fn ci_ids_become_safe_names() {
        assert_eq!(sanitize("feature/ABC-12").unwrap(), "feature_abc_12");
        assert_eq!(sanitize("1234").unwrap(), "1234");
        assert_eq!(sanitize("Fix Bug!").unwrap(), "fix_bug");
        assert_eq!(sanitize("--a--b--").unwrap(), "a_b");
        assert_eq!(sanitize("émile/ß").unwrap(), "mile");
        assert!(sanitize("!!!").unwrap_err().contains("no letters or digits"));
    }

    #[test]
    fn names_follow_the_policy_and_fit_63_bytes() {
        let policy = BranchPolicy {
            database: NameTemplate::parse(
                "{template}_dev_{branch}",
                &[Var::Template, Var::Branch],
                &[Var::Template, Var::Branch, Var::Env],
            )
            .unwrap(),
            ..BranchPolicy::default()
        };
        assert_eq!(
            database_name(&policy, "dev", "registry_template", "MR-1234").unwrap(),
            "registry_template_dev_mr_1234"
        );
        let long = database_name(&policy, "dev", "registry_template", &"x".repeat(80)).unwrap();
        assert_eq!(long.len(), 63);
        assert_eq!(long, database_name(&policy, "dev", "registry_template", &"x".repeat(80)).unwrap());
    }

    fn known(id: &str, expires_at: Option<i64>) -> Known {
        Known { id: id.into(), expires_at, interrupted: false, busy: false }
    }

    #[test]
    fn gc_drops_what_is_not_live_or_expired_and_spares_busy_ones() {
        let branches = [
            known("1", None),
            known("2", Some(50)),
            known("Feature/X", None),
            Known { busy: true, ..known("4", Some(0)) },
            Known { interrupted: true, ..known("5", None) },
        ];
        let keep: BTreeSet<String> = ["1", "2", "feature_x", "4", "5"].iter().map(|s| s.to_string()).collect();
        let d = gc(&branches, Some(&keep), 100);
        assert_eq!(
            d.iter().map(|d| (d.id.as_str(), d.reason.as_str())).collect::<Vec<_>>(),
            [("2", "expired 50s ago"), ("5", "its deployment was interrupted (no pgplane process runs it)")]
        );
        let keep: BTreeSet<String> = ["1".to_string()].into();
        let d: Vec<String> = gc(&branches, Some(&keep), 0).into_iter().map(|d| d.id).collect();
        assert_eq!(d, ["2", "Feature/X", "5"]);
        assert!(gc(&branches[..1], None, 100).is_empty());
    }

    #[test]
    fn glob_patterns() {
        assert!(glob("registry_template_dev_*", "registry_template_dev_12"));
        assert!(!glob("registry_template_dev_*", "payments_dev_12"));
        assert!(glob("*", "x"));
        assert!(glob("a?c*", "abcdef"));
        assert!(!glob("abc", "abcd"));
    }
}
