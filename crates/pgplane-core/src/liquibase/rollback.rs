//! What undoes a changeset, as Liquibase 4.28 decides it: the changes of its `<rollback>`
//! (run in the order written), or, without one, the inverse of each change (Liquibase's
//! `createInverses()`), last change first. A changeset whose rollback pgplane cannot run
//! is a [`Refusal`] naming the changeset and its file:line.

use std::fmt;

use super::{sqlgen, Change, ChangeSet, ChangelogError, Location, Name, NoCatalog, Statement};

/// How a changeset is rolled back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Rollback {
    /// No rollback given: each change is undone by its automatic inverse, last change first.
    #[default]
    Auto,
    /// A `<rollback>` block, `--rollback` lines or the changes of a referenced changeset,
    /// run in the order written. Empty (`<rollback/>`, `--rollback empty`): nothing runs,
    /// only the ledger row goes.
    Changes(Vec<Change>),
    /// A rollback pgplane cannot run (a change type it does not support, a reference to a
    /// changeset that does not exist…). Only a rollback that would run it is refused;
    /// `update` never runs it, so it never blocks `update`.
    Unusable(ChangelogError),
}

/// A changeset that cannot be rolled back, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// `file::id::author`.
    pub changeset: String,
    pub location: Location,
    pub reason: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: changeset {} cannot be rolled back: {}", self.location, self.changeset, self.reason)
    }
}

/// The fix every refusal shares.
pub const REFUSAL_FIX: &str = "give the changeset a <rollback> block (YAML/JSON `rollback:`, formatted SQL \
    `--rollback` lines) with the statements that undo it, or an empty one (`<rollback/>`, `--rollback empty`) if \
    nothing needs undoing";

impl ChangeSet {
    /// The statements that undo this changeset, in the order they run, its `modifySql`
    /// applied where `applyToRollback` says so. Unqualified names get `default_schema`, as in
    /// [`ChangeSet::sql`]. Statements may be actions (`output`, …), as in `update`.
    pub fn rollback_statements(&self, default_schema: Option<&str>) -> Result<Vec<Statement>, Refusal> {
        let refuse = |reason: String| Refusal {
            changeset: format!("{}::{}::{}", self.filename, self.id, self.author),
            location: self.location.clone(),
            reason,
        };
        let mut out = match &self.rollback {
            Rollback::Changes(changes) => {
                // Liquibase skips a rollback SQL that reads `empty`.
                let run: Vec<Change> = changes
                    .iter()
                    .filter(|c| !matches!(c, Change::Sql(s) if s.sql.trim().eq_ignore_ascii_case("empty")))
                    .cloned()
                    .collect();
                sqlgen::statements(&run, default_schema, &NoCatalog)
                    .map_err(|e| refuse(format!("its rollback cannot run: {e}")))?
            }
            Rollback::Unusable(e) => {
                return Err(Refusal {
                    // Where the rollback went wrong, e.g. the unsupported change inside it.
                    location: Location { file: e.file.clone(), line: e.line.unwrap_or(self.location.line) },
                    ..refuse(format!("its rollback cannot run: {}", e.message))
                });
            }
            Rollback::Auto => {
                let mut out = Vec::new();
                for (i, change) in self.changes.iter().enumerate().rev() {
                    let inverse = inverse(change, default_schema)
                        .map_err(|why| refuse(format!("it has no rollback of its own, and {why}")))?;
                    let statements = sqlgen::statements(&inverse, default_schema, &NoCatalog)
                        .map_err(|e| refuse(format!("the automatic rollback of {}: {e}", change.type_name())))?;
                    out.extend(statements.into_iter().map(|s| Statement { change_index: i, ..s }));
                }
                out
            }
        };
        for s in &mut out {
            s.sql = sqlgen::modify(&s.sql, &self.modify_sql, true);
        }
        Ok(out)
    }
}

/// Liquibase's `createInverses()` for one change: the changes that undo it, or why there
/// are none. Types without an arm here have no automatic rollback in Liquibase either.
pub fn inverse(change: &Change, _default_schema: Option<&str>) -> Result<Vec<Change>, String> {
    let none = || Err(format!("Liquibase has no automatic rollback for {}", change.type_name()));
    let rename = |old: &String, new: &String| (new.clone(), old.clone());
    Ok(match change {
        Change::CreateTable { table, .. } => vec![Change::DropTable { table: table.clone(), cascade: false }],
        Change::AddColumn { table, columns } => {
            // Defaults first, then one dropColumn of all the columns, as AddColumnChange does.
            let mut out: Vec<Change> = columns
                .iter()
                .filter(|c| c.default.is_some())
                .map(|c| Change::DropDefaultValue { table: table.clone(), column: c.name.clone() })
                .collect();
            out.push(Change::DropColumn {
                table: table.clone(),
                columns: columns.iter().map(|c| c.name.clone()).collect(),
            });
            out
        }
        Change::RenameTable { schema, old, new } => {
            let (old, new) = rename(old, new);
            vec![Change::RenameTable { schema: schema.clone(), old, new }]
        }
        Change::RenameColumn { table, old, new, .. } => {
            let (old, new) = rename(old, new);
            vec![Change::RenameColumn { table: table.clone(), old, new, remarks: None }]
        }
        Change::RenameSequence { schema, old, new } => {
            let (old, new) = rename(old, new);
            vec![Change::RenameSequence { schema: schema.clone(), old, new }]
        }
        Change::RenameView { schema, old, new } => {
            let (old, new) = rename(old, new);
            vec![Change::RenameView { schema: schema.clone(), old, new }]
        }
        Change::AddNotNullConstraint { table, column, .. } => {
            vec![Change::DropNotNullConstraint { table: table.clone(), column: column.clone() }]
        }
        Change::DropNotNullConstraint { table, column } => vec![Change::AddNotNullConstraint {
            table: table.clone(),
            column: column.clone(),
            default_null_value: None,
            column_type: None,
            validate: true,
        }],
        Change::AddDefaultValue { table, column, .. } => {
            vec![Change::DropDefaultValue { table: table.clone(), column: column.clone() }]
        }
        // Without a name, dropPrimaryKey looks it up, as Liquibase's does.
        Change::AddPrimaryKey { table, constraint_name, .. } => {
            vec![Change::DropPrimaryKey { table: table.clone(), constraint_name: constraint_name.clone() }]
        }
        Change::AddUniqueConstraint { table, constraint_name, .. } => match constraint_name {
            Some(c) => vec![Change::DropUniqueConstraint { table: table.clone(), constraint_name: c.clone() }],
            None => {
                return Err("Liquibase's automatic rollback of addUniqueConstraint needs its constraintName \
                            (without one it runs DROP CONSTRAINT null)"
                    .into())
            }
        },
        Change::AddForeignKeyConstraint { table, constraint_name, .. } => {
            vec![Change::DropForeignKeyConstraint { table: table.clone(), constraint_name: constraint_name.clone() }]
        }
        Change::AddLookupTable { existing, new_table, constraint_name, .. } => {
            // AddLookupTableChange's final constraint name, then the new table.
            let name = constraint_name
                .clone()
                .unwrap_or_else(|| format!("FK_{}_{}", existing.name, new_table.name).to_uppercase());
            vec![
                Change::DropForeignKeyConstraint { table: existing.clone(), constraint_name: name },
                Change::DropTable { table: new_table.clone(), cascade: false },
            ]
        }
        Change::CreateIndex { table, index_name, .. } => vec![Change::DropIndex {
            index: Name { schema: table.schema.clone(), name: index_name.clone() },
            table: Some(table.name.clone()),
        }],
        Change::CreateSequence { sequence, .. } => vec![Change::DropSequence { sequence: sequence.clone() }],
        Change::CreateView { view, .. } => vec![Change::DropView { view: view.clone(), if_exists: false }],
        Change::TagDatabase { .. } => vec![],
        // sql, sqlFile, insert, update, delete, drops, modifyDataType, remarks, loadData, and
        // every change type added later: no automatic rollback (as in Liquibase) until listed
        // above.
        _ => return none(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_without_inverse_name_themselves() {
        let c = Change::DropTable { table: Name { schema: None, name: "t".into() }, cascade: false };
        assert_eq!(inverse(&c, None).unwrap_err(), "Liquibase has no automatic rollback for dropTable");
        let c = Change::AddUniqueConstraint {
            table: Name { schema: None, name: "t".into() },
            columns: vec!["a".into()],
            constraint_name: None,
            deferrable: false,
            initially_deferred: false,
            tablespace: None,
            for_index: None,
        };
        assert!(inverse(&c, None).unwrap_err().contains("constraintName"));
    }
}
