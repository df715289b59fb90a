//! The observed state: what the catalog and the control database hold right now.
//! Filled by the executor crate's observer; read by the planner.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::model::{ObjectKind, ObjectRef, Record};

/// The grantee name used for `PUBLIC` in privilege maps.
pub const PUBLIC: &str = "PUBLIC";

#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub servers: BTreeMap<String, ServerState>,
    /// Every record of the control database (all environments). Empty when the control
    /// database does not exist yet.
    pub records: Vec<Record>,
}

#[derive(Debug, Clone, Default)]
pub struct ServerState {
    pub roles: BTreeMap<String, RoleState>,
    pub databases: BTreeMap<String, DatabaseState>,
    /// `(database, role)` → `setconfig` entries such as `search_path=acme_users`.
    pub role_settings: BTreeMap<(String, String), Vec<String>>,
    /// The contents of `template1`, which `CREATE DATABASE` copies; read only when a
    /// database is to be created. `None`: assume PostgreSQL 15's defaults.
    pub template: Option<DbContents>,
}

impl ServerState {
    /// The OID of an existing role or database (`None` for other kinds, absent objects
    /// and unknown OIDs).
    pub fn oid(&self, kind: ObjectKind, name: &str) -> Option<u32> {
        let oid = match kind {
            ObjectKind::Role => self.roles.get(name)?.oid,
            ObjectKind::Database => self.databases.get(name)?.oid,
            ObjectKind::Schema | ObjectKind::Extension => return None,
        };
        (oid != 0).then_some(oid)
    }

    /// `Some((recorded, now))` when a record's role or database exists under its name but
    /// with another OID than pgplane recorded: it was dropped and re-created outside
    /// pgplane, and is not pgplane's.
    pub fn replaced(&self, record: &Record) -> Option<(u32, u32)> {
        let recorded = record.oid?;
        let now = self.oid(record.object.kind, &record.object.name)?;
        (now != recorded).then_some((recorded, now))
    }

    /// `Some(true)` exists, `Some(false)` absent, `None` unknown (database contents not read).
    pub fn exists(&self, obj: &ObjectRef) -> Option<bool> {
        match obj.kind {
            ObjectKind::Role => Some(self.roles.contains_key(&obj.name)),
            ObjectKind::Database => Some(self.databases.contains_key(&obj.name)),
            ObjectKind::Schema | ObjectKind::Extension => match self.databases.get(&obj.database) {
                None => Some(false),
                Some(db) => match &db.contents {
                    Contents::Unknown => None,
                    Contents::Known(c) if obj.kind == ObjectKind::Schema => Some(c.schemas.contains_key(&obj.name)),
                    Contents::Known(c) => Some(c.extensions.contains(&obj.name)),
                },
            },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleState {
    /// `pg_authid.oid`: who it is, beyond its name (0: not known, e.g. in tests).
    pub oid: u32,
    pub login: bool,
    pub superuser: bool,
    pub createdb: bool,
    pub createrole: bool,
    pub replication: bool,
    pub bypassrls: bool,
    pub inherit: bool,
    /// Databases where the role owns objects or holds privileges (`pg_shdepend`).
    pub dependent_databases: BTreeSet<String>,
    /// Databases where the role owns objects (a subset of `dependent_databases`).
    pub owns_objects_in: BTreeSet<String>,
    /// Whether its password is the one pgplane derives (checked outside the planner,
    /// which never sees a secret).
    pub password: PasswordState,
}

/// A role's stored password against the one pgplane derives for it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PasswordState {
    /// Not checked (not a managed role, or no secret key at hand).
    #[default]
    Unknown,
    /// The stored SCRAM verifier is the derived password's.
    Matches,
    /// Another password (changed outside pgplane), or a verifier of another kind.
    Differs,
    /// No password at all.
    Missing,
}

impl Default for RoleState {
    /// What `CREATE ROLE ... LOGIN` gives: the state pgplane wants.
    fn default() -> Self {
        RoleState {
            oid: 0,
            login: true,
            superuser: false,
            createdb: false,
            createrole: false,
            replication: false,
            bypassrls: false,
            inherit: true,
            dependent_databases: BTreeSet::new(),
            owns_objects_in: BTreeSet::new(),
            password: PasswordState::Unknown,
        }
    }
}

pub type Privileges = BTreeMap<String, BTreeSet<String>>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseState {
    /// `pg_database.oid` (0: not known, e.g. in tests).
    pub oid: u32,
    pub owner: String,
    pub connection_limit: i32,
    pub is_template: bool,
    /// Grantee (role name or `PUBLIC`) → privileges (`CONNECT`, `TEMPORARY`, `CREATE`).
    pub privileges: Privileges,
    /// Database-level settings (`pg_db_role_setting` with `setrole = 0`): parameter name,
    /// lowercased (PostgreSQL stores canonical spellings such as `DateStyle`) → value as stored.
    pub settings: BTreeMap<String, String>,
    pub contents: Contents,
}

impl DatabaseState {
    /// Reads `setconfig` entries (`name=value`) into [`DatabaseState::settings`].
    pub fn parse_settings(setconfig: &[String]) -> BTreeMap<String, String> {
        setconfig
            .iter()
            .filter_map(|entry| entry.split_once('='))
            .map(|(name, value)| (name.to_ascii_lowercase(), value.to_string()))
            .collect()
    }
}

/// The inside of a database, which needs a connection to that database to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Contents {
    /// Not read: the planner must not guess.
    Unknown,
    Known(DbContents),
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DbContents {
    pub schemas: BTreeMap<String, SchemaState>,
    pub extensions: BTreeSet<String>,
    /// `(owner role, schema, reader)` with `ALTER DEFAULT PRIVILEGES ... GRANT SELECT ON TABLES`.
    pub default_select: BTreeSet<(String, String, String)>,
    /// `(schema, reader)` where the reader has SELECT on every table and view.
    pub select_all: BTreeSet<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchemaState {
    pub owner: String,
    /// Grantee (role name or `PUBLIC`) → privileges (`USAGE`, `CREATE`).
    pub privileges: Privileges,
}

impl DbContents {
    /// A database just created from `template1`: `public` owned by `pg_database_owner`,
    /// USAGE for PUBLIC (PostgreSQL 15 defaults), no tables. `readers` have SELECT on all
    /// (zero) tables of every schema.
    pub fn fresh(readers: impl IntoIterator<Item = (String, String)>) -> DbContents {
        let mut schemas = BTreeMap::new();
        schemas.insert(
            "public".to_string(),
            SchemaState {
                owner: "pg_database_owner".into(),
                privileges: BTreeMap::from([
                    (PUBLIC.to_string(), BTreeSet::from(["USAGE".to_string()])),
                    ("pg_database_owner".to_string(), BTreeSet::from(["USAGE".to_string(), "CREATE".to_string()])),
                ]),
            },
        );
        DbContents {
            schemas,
            extensions: BTreeSet::new(),
            default_select: BTreeSet::new(),
            select_all: readers.into_iter().collect(),
        }
    }
}
