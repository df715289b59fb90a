//! `pgplane destroy`: everything pgplane manages for one environment, as one plan. Pure.
//!
//! Two parts. First the copies — branch databases, template databases and the leftovers
//! of an interrupted template build — which live in their own control tables: each is
//! dropped when it is the database pgplane created (same OID as recorded), forgotten when
//! it is gone, and left alone (its record forgotten) when another database holds its name.
//! Then the managed objects (tenants' and modules' schemas, extensions, databases and
//! roles): the ordinary planner with an empty desired state and `prune`, run against the
//! catalog as it will be once the copies are gone — one engine, with its identity checks
//! (a role or database re-created under a recorded name is never dropped).

use std::collections::BTreeSet;
use std::fmt::Write;

use serde::Serialize;

use crate::model::Desired;
use crate::observed::Observed;
use crate::plan::{plan, Plan, PlanError, PlanOptions};

/// What kind of copy a database is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CopyKind {
    Branch,
    Template,
    /// `<template>__build` or `<template>__retired` of a build that did not finish.
    TemplateLeftover,
}

impl CopyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CopyKind::Branch => "branch",
            CopyKind::Template => "template",
            CopyKind::TemplateLeftover => "template leftover",
        }
    }
}

/// A database pgplane recorded in its branch or template tables.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Copy {
    pub kind: CopyKind,
    /// The branch id or template name the row is about.
    pub owner: String,
    pub server: String,
    pub database: String,
    /// What the row says about the database's identity.
    pub identity: Identity,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "oid")]
pub enum Identity {
    /// pgplane created it with this OID.
    Oid(u32),
    /// Recorded by a pgplane that kept no OID (or a build leftover, claimed by name):
    /// the database under the name is taken as pgplane's.
    ByName,
    /// pgplane never created it (the row was claimed, the copy never happened).
    NotCreated,
}

/// What destroy does with a copy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "action")]
pub enum Fate {
    /// `DROP DATABASE` (after `IS_TEMPLATE false` for a template); the OID it has now,
    /// checked again right before.
    Drop { oid: u32, is_template: bool },
    /// Not pgplane's: left alone, its row forgotten.
    Keep { why: String },
    /// Already gone: its row is forgotten.
    Gone,
    /// On a server the manifest does not list: nothing can be checked; the row stays.
    Unreachable,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CopyStep {
    #[serde(flatten)]
    pub copy: Copy,
    pub fate: Fate,
}

/// The whole plan: the copies first, then the managed objects.
#[derive(Debug, Clone)]
pub struct DestroyPlan {
    pub env: String,
    pub copies: Vec<CopyStep>,
    pub objects: Plan,
}

impl DestroyPlan {
    /// Statements and record changes to run.
    pub fn changes(&self) -> usize {
        self.copies.iter().filter(|c| !matches!(c.fate, Fate::Unreachable)).count() + self.objects.changes()
    }

    /// Databases the plan drops (copies and managed databases), as (server, name).
    pub fn dropped_databases(&self) -> BTreeSet<(String, String)> {
        let mut out: BTreeSet<(String, String)> = self
            .copies
            .iter()
            .filter(|c| matches!(c.fate, Fate::Drop { .. }))
            .map(|c| (c.copy.server.clone(), c.copy.database.clone()))
            .collect();
        for a in &self.objects.actions {
            if a.kind == crate::plan::ActionKind::DropDatabase {
                out.insert((a.server.clone(), a.object.name.clone()));
            }
        }
        out
    }

    /// Databases whose records this plan removes: the dropped ones, and those forgotten
    /// because they are gone or not pgplane's (their cached observations go too).
    pub fn forgotten_databases(&self) -> BTreeSet<(String, String)> {
        let mut out = self.dropped_databases();
        for c in &self.copies {
            if matches!(c.fate, Fate::Keep { .. } | Fate::Gone) {
                out.insert((c.copy.server.clone(), c.copy.database.clone()));
            }
        }
        for a in &self.objects.actions {
            if a.kind == crate::plan::ActionKind::Forget && a.object.kind == crate::model::ObjectKind::Database {
                out.insert((a.server.clone(), a.object.name.clone()));
            }
        }
        out
    }
}

/// Why the planner's drops happen, in destroy's words.
pub const WHY: &str = "destroy: the environment goes";

/// Plans the destruction of environment `env`: `copies` from the branch and template
/// tables, `observed` read with every record of the control database.
pub fn plan_destroy(env: &str, copies: Vec<Copy>, observed: &Observed) -> Result<DestroyPlan, PlanError> {
    let mut after = observed.clone();
    let mut steps = Vec::new();
    for copy in copies {
        let fate = match observed.servers.get(&copy.server) {
            None => Fate::Unreachable,
            Some(state) => match state.databases.get(&copy.database) {
                None => Fate::Gone,
                Some(db) => match copy.identity {
                    Identity::NotCreated => Fate::Keep {
                        why: format!(
                            "database {} was not created by pgplane for {} {} (the copy was never recorded); left alone",
                            copy.database,
                            copy.kind.as_str(),
                            copy.owner
                        ),
                    },
                    Identity::Oid(recorded) if recorded != db.oid => Fate::Keep {
                        why: format!(
                            "database {} is not the one pgplane created for {} {} (OID {recorded}, now {}: dropped and \
                             re-created outside pgplane); left alone",
                            copy.database,
                            copy.kind.as_str(),
                            copy.owner,
                            db.oid
                        ),
                    },
                    Identity::Oid(_) | Identity::ByName => Fate::Drop { oid: db.oid, is_template: db.is_template },
                },
            },
        };
        if matches!(fate, Fate::Drop { .. }) {
            if let Some(state) = after.servers.get_mut(&copy.server) {
                state.databases.remove(&copy.database);
                for r in state.roles.values_mut() {
                    r.dependent_databases.remove(&copy.database);
                    r.owns_objects_in.remove(&copy.database);
                }
            }
        }
        steps.push(CopyStep { copy, fate });
    }
    steps.sort_by(|a, b| {
        (a.copy.kind, &a.copy.server, &a.copy.database).cmp(&(b.copy.kind, &b.copy.server, &b.copy.database))
    });
    let desired = Desired { env: env.to_string(), ..Desired::default() };
    let mut objects = plan(&desired, &after, PlanOptions { prune: true, adopt: false })?;
    for a in &mut objects.actions {
        if a.why == "removed from the manifest; --prune given" {
            a.why = WHY.to_string();
        }
    }
    for n in &mut objects.notes {
        *n = n
            .replace("run apply --prune again", "run `pgplane destroy` again")
            .replace("list it under `servers:` to prune them", "list it under `servers:` to destroy them");
    }
    Ok(DestroyPlan { env: env.to_string(), copies: steps, objects })
}

/// The plan as text: the copies, then the managed objects as `plan` shows actions.
pub fn destroy_text(p: &DestroyPlan) -> String {
    let mut out = String::new();
    let mut n = 0;
    for c in &p.copies {
        let what =
            format!("{} {} (database {}) [{}]", c.copy.kind.as_str(), c.copy.owner, c.copy.database, c.copy.server);
        let line = match &c.fate {
            Fate::Drop { is_template: true, .. } => {
                format!("drop {what}  (template: IS_TEMPLATE false, then DROP DATABASE … WITH (FORCE))")
            }
            Fate::Drop { .. } => format!("drop {what}  (DROP DATABASE … WITH (FORCE))"),
            Fate::Keep { why } => format!("forget {what}  ({why})"),
            Fate::Gone => format!("forget {what}  (it no longer exists)"),
            Fate::Unreachable => {
                format!("keep {what}  (server {} is not in the manifest: list it under `servers:`)", c.copy.server)
            }
        };
        n += 1;
        let _ = writeln!(out, "{n:>3}. {line}");
    }
    for a in &p.objects.actions {
        n += 1;
        let place = match &a.database {
            Some(db) => format!("{}/{db}", a.server),
            None => a.server.clone(),
        };
        let _ = writeln!(out, "{n:>3}. {} {}  [{place}]  ({})", a.kind.as_str(), a.target, a.why);
        if !a.sql.is_empty() {
            let _ = writeln!(out, "     {};", a.sql.redacted());
        }
    }
    for note in &p.objects.notes {
        let _ = writeln!(out, "note: {note}");
    }
    let drops = p.dropped_databases().len();
    let roles = p.objects.actions.iter().filter(|a| a.kind == crate::plan::ActionKind::DropRole).count();
    if p.changes() == 0 {
        let _ = writeln!(out, "Nothing to destroy: pgplane manages nothing in env {}.", p.env);
    } else {
        let _ = writeln!(
            out,
            "Destroy: {} step(s): {drops} database(s) and {roles} role(s) to drop (env {}).",
            p.changes(),
            p.env
        );
    }
    out
}

/// `{"env", "changes", "copies": [...], "actions": [...], "notes": [...]}`.
pub fn destroy_json(p: &DestroyPlan) -> serde_json::Value {
    let mut doc = crate::render::plan_json(&p.objects);
    doc["changes"] = serde_json::json!(p.changes());
    doc["copies"] = serde_json::json!(p.copies);
    doc
}
