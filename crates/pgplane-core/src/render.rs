//! Plans as people and scripts read them. Passwords are always redacted here.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde_json::{json, Value};

use crate::plan::{ActionKind, Plan};

/// The plan as text: one block per action with its SQL, then orphans and a summary.
pub fn plan_text(plan: &Plan) -> String {
    let mut out = String::new();
    for (long, short) in &plan.shortened {
        let _ = writeln!(out, "note: {long:?} is longer than 63 bytes; pgplane uses {short:?}");
    }
    for (i, a) in plan.actions.iter().enumerate() {
        let place = match &a.database {
            Some(db) => format!("{}/{db}", a.server),
            None => a.server.clone(),
        };
        let _ = writeln!(out, "{:>3}. {} {}  [{place}]  ({})", i + 1, a.kind.as_str(), a.target, a.why);
        if !a.sql.is_empty() {
            let _ = writeln!(out, "     {};", a.sql.redacted());
        }
    }
    let pending: Vec<_> =
        plan.orphans.iter().filter(|o| !plan.actions.iter().any(|a| a.target == o.record.object.display())).collect();
    if !pending.is_empty() {
        let _ = writeln!(out, "orphaned (managed, no longer in the manifest; `apply --prune` drops them):");
        for o in pending {
            let state = if o.exists { "" } else { " (already gone)" };
            let _ = writeln!(out, "  - {} [{}]{state}", o.record.object.display(), o.record.object.server);
        }
    }
    for note in &plan.notes {
        let _ = writeln!(out, "note: {note}");
    }
    let _ = writeln!(out, "{}", summary(plan));
    out
}

/// `Plan: 3 to create, 2 to change, 0 to drop (env dev).`
pub fn summary(plan: &Plan) -> String {
    if plan.actions.is_empty() {
        let orphans =
            if plan.orphans.is_empty() { String::new() } else { format!(", {} orphaned", plan.orphans.len()) };
        return format!("No changes (env {}){orphans}.", plan.env);
    }
    let mut create = 0;
    let mut change = 0;
    let mut drop = 0;
    for a in &plan.actions {
        match a.kind {
            ActionKind::CreateRole
            | ActionKind::CreateDatabase
            | ActionKind::CreateSchema
            | ActionKind::CreateExtension => create += 1,
            k if k.is_drop() => drop += 1,
            _ => change += 1,
        }
    }
    let n = plan.changes();
    let noun = if n == 1 { "change" } else { "changes" };
    format!("Plan: {n} {noun}: {create} to create, {change} to change, {drop} to drop (env {}).", plan.env)
}

/// `{"changes": N, "actions": [{"kind", "target", "sql", ...}], "orphans": [...]}`.
pub fn plan_json(plan: &Plan) -> Value {
    let actions: Vec<Value> = plan
        .actions
        .iter()
        .map(|a| {
            json!({
                "kind": a.kind.as_str(),
                "target": a.target,
                "sql": if a.sql.is_empty() { Value::Null } else { Value::String(a.sql.redacted()) },
                "server": a.server,
                "database": a.database,
                "why": a.why,
            })
        })
        .collect();
    let mut by_kind: BTreeMap<&str, usize> = BTreeMap::new();
    for a in &plan.actions {
        *by_kind.entry(a.kind.as_str()).or_default() += 1;
    }
    json!({
        "env": plan.env,
        "changes": plan.changes(),
        "actions": actions,
        "by_kind": by_kind,
        "orphans": plan.orphans,
        "notes": plan.notes,
        "shortened": plan.shortened.iter().map(|(l, s)| json!({"name": l, "used": s})).collect::<Vec<_>>(),
    })
}
