//! The planner: desired state + observed state → ordered actions. Pure: no I/O, no clock,
//! no randomness. `plan` prints these actions and `apply` runs exactly these.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::ident::{quote_ident as q, same_setting_value, setting_value_sql};
use crate::model::{Desired, ObjectKind, ObjectRef, Record};
use crate::observed::{Contents, DbContents, Observed, PasswordState, RoleState, ServerState, PUBLIC};

/// A piece of SQL; passwords stay symbolic until the executor runs the statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SqlPart {
    Text(String),
    /// A SCRAM verifier for this role's current password, filled in by the executor.
    Password {
        role: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Sql(pub Vec<SqlPart>);

impl Sql {
    pub fn text(s: impl Into<String>) -> Sql {
        Sql(vec![SqlPart::Text(s.into())])
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The statement as shown to people and in JSON: passwords redacted.
    pub fn redacted(&self) -> String {
        self.render(|_| "'********'".to_string())
    }

    /// The statement as sent: `password` turns a role name into a quoted SCRAM verifier.
    pub fn render(&self, mut password: impl FnMut(&str) -> String) -> String {
        let mut out = String::new();
        for p in &self.0 {
            match p {
                SqlPart::Text(t) => out.push_str(t),
                SqlPart::Password { role } => out.push_str(&password(role)),
            }
        }
        out
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    Adopt,
    CreateRole,
    AlterRole,
    SetPassword,
    CreateDatabase,
    AlterDatabaseOwner,
    AlterDatabaseConnectionLimit,
    RevokePublic,
    GrantConnect,
    RevokeConnect,
    SetDatabaseSetting,
    CreateSchema,
    AlterSchemaOwner,
    RevokeSchema,
    GrantUsage,
    CreateExtension,
    GrantSelect,
    DefaultPrivileges,
    SetSearchPath,
    DropExtension,
    DropSchema,
    DropDatabase,
    DisableRole,
    ReassignOwned,
    DropOwned,
    DropRole,
    Forget,
}

impl ActionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ActionKind::Adopt => "adopt",
            ActionKind::CreateRole => "create_role",
            ActionKind::AlterRole => "alter_role",
            ActionKind::SetPassword => "set_password",
            ActionKind::CreateDatabase => "create_database",
            ActionKind::AlterDatabaseOwner => "alter_database_owner",
            ActionKind::AlterDatabaseConnectionLimit => "alter_database_connection_limit",
            ActionKind::RevokePublic => "revoke_public",
            ActionKind::GrantConnect => "grant_connect",
            ActionKind::RevokeConnect => "revoke_connect",
            ActionKind::SetDatabaseSetting => "set_database_setting",
            ActionKind::CreateSchema => "create_schema",
            ActionKind::AlterSchemaOwner => "alter_schema_owner",
            ActionKind::RevokeSchema => "revoke_schema",
            ActionKind::GrantUsage => "grant_usage",
            ActionKind::CreateExtension => "create_extension",
            ActionKind::GrantSelect => "grant_select",
            ActionKind::DefaultPrivileges => "default_privileges",
            ActionKind::SetSearchPath => "set_search_path",
            ActionKind::DropExtension => "drop_extension",
            ActionKind::DropSchema => "drop_schema",
            ActionKind::DropDatabase => "drop_database",
            ActionKind::DisableRole => "disable_role",
            ActionKind::ReassignOwned => "reassign_owned",
            ActionKind::DropOwned => "drop_owned",
            ActionKind::DropRole => "drop_role",
            ActionKind::Forget => "forget",
        }
    }

    pub fn is_drop(self) -> bool {
        matches!(
            self,
            ActionKind::DropExtension
                | ActionKind::DropSchema
                | ActionKind::DropDatabase
                | ActionKind::DropOwned
                | ActionKind::DropRole
        )
    }
}

/// What the executor writes to the control database around an action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordChange {
    None,
    /// Written and committed *before* the SQL runs, so a crash right after a CREATE never
    /// leaves an object pgplane does not know.
    Claim(Record),
    /// Deleted *after* the SQL succeeded.
    Forget(Record),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Action {
    pub kind: ActionKind,
    /// The object acted on, e.g. `database dev_registry`.
    pub target: String,
    pub object: ObjectRef,
    pub server: String,
    /// Database to run in; `None` runs in the server's admin database.
    pub database: Option<String>,
    /// Empty for record-only actions (adopt, forget).
    pub sql: Sql,
    pub why: String,
    pub record: RecordChange,
    /// Roles and databases the action acts on or runs in, with the OID they had when
    /// planned: the executor checks each right before the statement, so an object dropped
    /// and re-created by someone else meanwhile is never altered or dropped.
    pub expect: Vec<Identity>,
}

/// A role or database as the plan saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub kind: ObjectKind,
    pub name: String,
    pub oid: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Orphan {
    #[serde(flatten)]
    pub record: Record,
    /// Whether the object still exists on the server.
    pub exists: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub env: String,
    pub actions: Vec<Action>,
    /// Managed objects of this environment that the manifest no longer wants.
    pub orphans: Vec<Orphan>,
    /// Names shortened to fit 63 bytes: (full name, name used).
    pub shortened: Vec<(String, String)>,
    /// Things people should know that are not changes (e.g. an orphan that cannot be pruned).
    pub notes: Vec<String>,
}

impl Plan {
    pub fn changes(&self) -> usize {
        self.actions.len()
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PlanOptions {
    /// Drop managed objects the manifest no longer wants.
    pub prune: bool,
    /// Take over existing objects with target names that pgplane does not manage.
    pub adopt: bool,
}

/// Why no plan can be made. Nothing may run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", problems.join("\n"))]
pub struct PlanError {
    pub problems: Vec<String>,
}

/// Computes the ordered actions that take `observed` to `desired`.
///
/// Order: adopt → roles → databases → database privileges and settings → inside each database
/// (schemas, extensions, read grants) → role settings → drops (extensions, schemas,
/// databases, roles) → forgotten records.
pub fn plan(desired: &Desired, observed: &Observed, opts: PlanOptions) -> Result<Plan, PlanError> {
    let mut p = Planner { desired, observed, opts, actions: Vec::new(), problems: Vec::new(), notes: Vec::new() };
    let empty = ServerState::default();
    let server = |name: &str| observed.servers.get(name).unwrap_or(&empty);
    let records: BTreeMap<&ObjectRef, &Record> = observed.records.iter().map(|r| (&r.object, r)).collect();

    // Ownership: every wanted name is ours already, free, or adoptable.
    let mut adopted: BTreeSet<ObjectRef> = BTreeSet::new();
    let wanted = desired.objects();
    for (obj, origin) in &wanted {
        let (obj, origin) = (obj.clone(), *origin);
        let exists = server(&obj.server).exists(&obj);
        let state = server(&obj.server);
        match records.get(&obj) {
            Some(rec) if &rec.origin != origin => p.problems.push(format!(
                "name clash: {} is already managed by pgplane for {}, and {} wants it too; change a name or the naming templates",
                obj.display(),
                rec.origin.describe(),
                origin.describe()
            )),
            Some(rec) => {
                if let Some((recorded, now)) = state.replaced(rec) {
                    if opts.adopt {
                        adopted.insert(obj.clone());
                        p.push(
                            ActionKind::Adopt,
                            &obj,
                            None,
                            Sql::default(),
                            &format!("re-created outside pgplane (OID {recorded}, now {now}) and --adopt was given: pgplane records it as its own"),
                            RecordChange::Claim(Record { object: obj.clone(), origin: origin.clone(), oid: Some(now) }),
                        );
                    } else {
                        p.problems.push(format!(
                            "{} is not the one pgplane created: it was dropped and re-created outside pgplane (OID {recorded}, now {now}), \
                             so pgplane leaves it alone; adopt it with `pgplane adopt` or `pgplane apply --adopt` if it is meant to be {}, \
                             or drop it",
                            obj.display(),
                            origin.describe()
                        ));
                    }
                }
            }
            None if exists == Some(true) && obj.kind == ObjectKind::Extension => {}
            None if exists == Some(true) => {
                if opts.adopt {
                    adopted.insert(obj.clone());
                    p.push(
                        ActionKind::Adopt,
                        &obj,
                        None,
                        Sql::default(),
                        "exists and --adopt was given: pgplane records it as its own",
                        RecordChange::Claim(Record {
                            object: obj.clone(),
                            origin: origin.clone(),
                            oid: state.oid(obj.kind, &obj.name),
                        }),
                    );
                } else {
                    p.problems.push(format!(
                        "{} already exists and pgplane does not manage it (wanted by {}); \
                         adopt it with `pgplane adopt` or `pgplane apply --adopt`, or change the naming templates",
                        obj.display(),
                        origin.describe()
                    ));
                }
            }
            None => {}
        }
    }
    if !p.problems.is_empty() {
        return Err(PlanError { problems: p.problems });
    }

    let desired_refs: BTreeSet<ObjectRef> = wanted.into_iter().map(|(o, _)| o).collect();
    p.roles(&server, &adopted);
    p.databases(&server);
    p.contents(&server);
    p.role_settings(&server);
    let orphans = p.orphans(&server, &desired_refs);

    let mut shortened = Vec::new();
    for r in &desired.roles {
        if let Some(l) = &r.long_name {
            shortened.push((l.clone(), r.name.clone()));
        }
    }
    for d in &desired.databases {
        if let Some(l) = &d.long_name {
            shortened.push((l.clone(), d.name.clone()));
        }
    }
    for s in &desired.schemas {
        if let Some(l) = &s.long_name {
            shortened.push((l.clone(), s.name.clone()));
        }
    }
    shortened.sort();
    shortened.dedup();
    Ok(Plan { env: desired.env.clone(), actions: p.actions, orphans, shortened, notes: p.notes })
}

impl Planner<'_> {
    /// Why a record's object is not pgplane's any more: the role or database under its
    /// name has another OID, or (for a schema or extension) its database has.
    fn replaced(&self, r: &Record) -> Option<String> {
        let state = self.observed.servers.get(&r.object.server)?;
        if let Some((recorded, now)) = state.replaced(r) {
            return Some(format!("dropped and re-created outside pgplane: OID {recorded}, now {now}"));
        }
        if r.object.database.is_empty() {
            return None;
        }
        let db = ObjectRef::cluster(&r.object.server, ObjectKind::Database, &r.object.database);
        let db_record = self.observed.records.iter().find(|x| x.object == db)?;
        state.replaced(db_record).map(|(recorded, now)| {
            format!("its database {} was dropped and re-created outside pgplane: OID {recorded}, now {now}", db.name)
        })
    }
}

struct Planner<'a> {
    desired: &'a Desired,
    observed: &'a Observed,
    opts: PlanOptions,
    actions: Vec<Action>,
    problems: Vec<String>,
    notes: Vec<String>,
}

impl Planner<'_> {
    fn push(&mut self, kind: ActionKind, obj: &ObjectRef, db: Option<&str>, sql: Sql, why: &str, record: RecordChange) {
        // What must still be the same object when the statement runs: the role or database
        // acted on, and the database the statement runs in (or the object lives in).
        let mut expect: Vec<Identity> = Vec::new();
        if let Some(state) = self.observed.servers.get(&obj.server) {
            let mut want = |kind: ObjectKind, name: &str| {
                if let Some(oid) = state.oid(kind, name) {
                    if !expect.iter().any(|e| e.kind == kind && e.name == name) {
                        expect.push(Identity { kind, name: name.to_string(), oid });
                    }
                }
            };
            if !sql.is_empty() {
                want(obj.kind, &obj.name);
                if !obj.database.is_empty() {
                    want(ObjectKind::Database, &obj.database);
                }
                if let Some(db) = db {
                    want(ObjectKind::Database, db);
                }
            }
        }
        self.actions.push(Action {
            kind,
            target: obj.display(),
            object: obj.clone(),
            server: obj.server.clone(),
            database: db.map(str::to_string),
            sql,
            why: why.to_string(),
            record,
            expect,
        });
    }

    fn roles<'s>(&mut self, server: &impl Fn(&str) -> &'s ServerState, adopted: &BTreeSet<ObjectRef>) {
        for r in &self.desired.roles {
            let obj = ObjectRef::cluster(&r.server, ObjectKind::Role, &r.name);
            match server(&r.server).roles.get(&r.name) {
                None => {
                    let sql = Sql(vec![
                        SqlPart::Text(format!(
                            "CREATE ROLE {} {} NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT PASSWORD ",
                            q(&r.name),
                            if r.login { "LOGIN" } else { "NOLOGIN" }
                        )),
                        SqlPart::Password { role: r.name.clone() },
                    ]);
                    let rec = RecordChange::Claim(Record { object: obj.clone(), origin: r.origin.clone(), oid: None });
                    self.push(ActionKind::CreateRole, &obj, None, sql, &format!("{} is missing", obj.display()), rec);
                }
                Some(state) => {
                    let want = RoleState { login: r.login, ..RoleState::default() };
                    let mut fixes = Vec::new();
                    let mut why = Vec::new();
                    let attrs = [
                        ("LOGIN", "NOLOGIN", want.login, state.login),
                        ("SUPERUSER", "NOSUPERUSER", want.superuser, state.superuser),
                        ("CREATEDB", "NOCREATEDB", want.createdb, state.createdb),
                        ("CREATEROLE", "NOCREATEROLE", want.createrole, state.createrole),
                        ("REPLICATION", "NOREPLICATION", want.replication, state.replication),
                        ("BYPASSRLS", "NOBYPASSRLS", want.bypassrls, state.bypassrls),
                        ("INHERIT", "NOINHERIT", want.inherit, state.inherit),
                    ];
                    for (on, off, want, have) in attrs {
                        if want != have {
                            fixes.push(if want { on } else { off });
                            why.push(if have { on } else { off });
                        }
                    }
                    if !fixes.is_empty() {
                        let mut sql = format!("ALTER ROLE {} {}", q(&r.name), fixes.join(" "));
                        let why = if !r.login && state.login {
                            // Its open sessions end too: a disabled tenant reaches nothing.
                            sql.push_str(&format!(
                                "; SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = {}",
                                crate::ident::quote_literal(&r.name)
                            ));
                            "disabled: the role may not log in".to_string()
                        } else if r.login && !state.login && fixes == ["LOGIN"] {
                            "enabled: the role may log in".to_string()
                        } else {
                            format!("drift: role has {}", why.join(" "))
                        };
                        self.push(ActionKind::AlterRole, &obj, None, Sql::text(sql), &why, RecordChange::None);
                    }
                    let why = if adopted.contains(&obj) {
                        Some("adopted: pgplane sets a password it can hand out with `pgplane credentials`")
                    } else {
                        match state.password {
                            PasswordState::Differs => Some(
                                "drift: its password is not the one pgplane derives (changed outside pgplane); \
                                 `pgplane credentials` hands out the derived one",
                            ),
                            PasswordState::Missing => Some("drift: it has no password"),
                            PasswordState::Matches | PasswordState::Unknown => None,
                        }
                    };
                    if let Some(why) = why {
                        let sql = Sql(vec![
                            SqlPart::Text(format!("ALTER ROLE {} PASSWORD ", q(&r.name))),
                            SqlPart::Password { role: r.name.clone() },
                        ]);
                        self.push(ActionKind::SetPassword, &obj, None, sql, why, RecordChange::None);
                    }
                }
            }
        }
    }

    fn databases<'s>(&mut self, server: &impl Fn(&str) -> &'s ServerState) {
        for d in &self.desired.databases {
            let obj = ObjectRef::cluster(&d.server, ObjectKind::Database, &d.name);
            let grant_all_connects = |p: &mut Self, missing: &BTreeSet<String>| {
                for role in missing {
                    let sql = Sql::text(format!("GRANT CONNECT ON DATABASE {} TO {}", q(&d.name), q(role)));
                    let why = format!("role {role} must be able to connect");
                    p.push(ActionKind::GrantConnect, &obj, None, sql, &why, RecordChange::None);
                }
            };
            match server(&d.server).databases.get(&d.name) {
                None => {
                    let sql = Sql::text(format!(
                        "CREATE DATABASE {} OWNER {} CONNECTION LIMIT {}",
                        q(&d.name),
                        q(&d.owner),
                        d.connection_limit
                    ));
                    let rec = RecordChange::Claim(Record { object: obj.clone(), origin: d.origin.clone(), oid: None });
                    self.push(
                        ActionKind::CreateDatabase,
                        &obj,
                        None,
                        sql,
                        &format!("{} is missing", obj.display()),
                        rec,
                    );
                    let sql = Sql::text(format!("REVOKE ALL ON DATABASE {} FROM PUBLIC", q(&d.name)));
                    let why = "least privilege: only the module's roles may connect";
                    self.push(ActionKind::RevokePublic, &obj, None, sql, why, RecordChange::None);
                    grant_all_connects(self, &d.connect);
                    if d.revoke_connect.contains(&d.owner) {
                        let sql = Sql::text(format!("REVOKE CONNECT ON DATABASE {} FROM {}", q(&d.name), q(&d.owner)));
                        let why = format!("disabled: role {} may not connect", d.owner);
                        self.push(ActionKind::RevokeConnect, &obj, None, sql, &why, RecordChange::None);
                    }
                }
                Some(state) => {
                    if state.owner != d.owner {
                        let sql = Sql::text(format!("ALTER DATABASE {} OWNER TO {}", q(&d.name), q(&d.owner)));
                        let why = format!("drift: owner is {}", state.owner);
                        self.push(ActionKind::AlterDatabaseOwner, &obj, None, sql, &why, RecordChange::None);
                    }
                    if state.connection_limit != d.connection_limit {
                        let sql =
                            Sql::text(format!("ALTER DATABASE {} CONNECTION LIMIT {}", q(&d.name), d.connection_limit));
                        let why =
                            format!("connection limit is {}, want {}", state.connection_limit, d.connection_limit);
                        self.push(ActionKind::AlterDatabaseConnectionLimit, &obj, None, sql, &why, RecordChange::None);
                    }
                    if let Some(privs) = state.privileges.get(PUBLIC).filter(|p| !p.is_empty()) {
                        let sql = Sql::text(format!("REVOKE ALL ON DATABASE {} FROM PUBLIC", q(&d.name)));
                        let why = format!(
                            "drift: PUBLIC has {}",
                            privs.iter().map(String::as_str).collect::<Vec<_>>().join(", ")
                        );
                        self.push(ActionKind::RevokePublic, &obj, None, sql, &why, RecordChange::None);
                    }
                    let missing: BTreeSet<String> = d
                        .connect
                        .iter()
                        .filter(|r| !state.privileges.get(*r).is_some_and(|p| p.contains("CONNECT")))
                        .cloned()
                        .collect();
                    grant_all_connects(self, &missing);
                    // The owner connects through its implicit privileges unless a disable took
                    // them away: an enabled owner gets CONNECT back.
                    let owner_can = state.privileges.get(&d.owner).is_some_and(|p| p.contains("CONNECT"));
                    if !owner_can && !d.revoke_connect.contains(&d.owner) && !state.privileges.is_empty() {
                        let sql = Sql::text(format!("GRANT CONNECT ON DATABASE {} TO {}", q(&d.name), q(&d.owner)));
                        let why = format!("role {} (the owner) must be able to connect", d.owner);
                        self.push(ActionKind::GrantConnect, &obj, None, sql, &why, RecordChange::None);
                    }
                    for role in &d.revoke_connect {
                        if state.privileges.get(role).is_some_and(|p| p.contains("CONNECT")) {
                            let sql = Sql::text(format!("REVOKE CONNECT ON DATABASE {} FROM {}", q(&d.name), q(role)));
                            let why = format!("disabled: role {role} may not connect");
                            self.push(ActionKind::RevokeConnect, &obj, None, sql, &why, RecordChange::None);
                        }
                    }
                }
            }
            // Only the names the manifest lists are pgplane's: a setting removed from the
            // manifest (or set by hand under another name) stays as it is.
            let have = server(&d.server).databases.get(&d.name).map(|state| &state.settings);
            for (name, value) in &d.settings {
                let current = have.and_then(|h| h.get(name));
                let why = match current {
                    Some(v) if same_setting_value(name, v, value) => continue,
                    Some(v) => format!("drift: {name} is {v}, want {value}"),
                    None => format!("setting {name} is missing"),
                };
                let sql = Sql::text(format!(
                    "ALTER DATABASE {} SET {} = {}",
                    q(&d.name),
                    q(name),
                    setting_value_sql(name, value)
                ));
                self.push(ActionKind::SetDatabaseSetting, &obj, None, sql, &why, RecordChange::None);
            }
        }
    }

    fn contents<'s>(&mut self, server: &impl Fn(&str) -> &'s ServerState) {
        let managed_roles: BTreeSet<&str> = self.desired.roles.iter().map(|r| r.name.as_str()).collect();
        for d in &self.desired.databases {
            let readers: Vec<(String, String)> = self
                .desired
                .read_grants
                .iter()
                .filter(|g| g.server == d.server && g.database == d.name)
                .map(|g| (g.schema.clone(), g.reader.clone()))
                .collect();
            let fresh;
            let contents = match server(&d.server).databases.get(&d.name) {
                None => {
                    // A new database is a copy of template1. Tables there are rare; readers
                    // are assumed to be able to read all of them (none).
                    fresh = match &server(&d.server).template {
                        Some(t) => DbContents { select_all: readers.iter().cloned().collect(), ..t.clone() },
                        None => DbContents::fresh(readers.clone()),
                    };
                    &fresh
                }
                Some(state) => match &state.contents {
                    Contents::Known(c) => c,
                    Contents::Unknown => {
                        self.problems.push(format!("database {} could not be read; run plan again", d.name));
                        continue;
                    }
                },
            };
            let db = Some(d.name.as_str());

            // PostgreSQL 15 revokes CREATE on public from PUBLIC; keep it that way.
            if let Some(public) = contents.schemas.get("public") {
                if public.privileges.get(PUBLIC).is_some_and(|p| p.contains("CREATE")) {
                    let obj = ObjectRef::in_db(&d.server, ObjectKind::Schema, &d.name, "public");
                    let sql = Sql::text("REVOKE CREATE ON SCHEMA public FROM PUBLIC");
                    self.push(
                        ActionKind::RevokeSchema,
                        &obj,
                        db,
                        sql,
                        "drift: PUBLIC may create in public",
                        RecordChange::None,
                    );
                }
            }

            for s in self.desired.schemas.iter().filter(|s| s.server == d.server && s.database == d.name) {
                let obj = ObjectRef::in_db(&s.server, ObjectKind::Schema, &s.database, &s.name);
                let readers: BTreeSet<&str> = self
                    .desired
                    .read_grants
                    .iter()
                    .filter(|g| g.server == s.server && g.database == s.database && g.schema == s.name)
                    .map(|g| g.reader.as_str())
                    .collect();
                match contents.schemas.get(&s.name) {
                    None => {
                        let sql = Sql::text(format!("CREATE SCHEMA {} AUTHORIZATION {}", q(&s.name), q(&s.owner)));
                        let rec =
                            RecordChange::Claim(Record { object: obj.clone(), origin: s.origin.clone(), oid: None });
                        self.push(
                            ActionKind::CreateSchema,
                            &obj,
                            db,
                            sql,
                            &format!("{} is missing", obj.display()),
                            rec,
                        );
                    }
                    Some(state) => {
                        if state.owner != s.owner {
                            let sql = Sql::text(format!("ALTER SCHEMA {} OWNER TO {}", q(&s.name), q(&s.owner)));
                            let why = format!("drift: owner is {}", state.owner);
                            self.push(ActionKind::AlterSchemaOwner, &obj, db, sql, &why, RecordChange::None);
                        }
                        // Isolation: nobody but its owner and readers reaches a tenant's schema.
                        for (grantee, privs) in &state.privileges {
                            let foreign = grantee == PUBLIC
                                || (managed_roles.contains(grantee.as_str())
                                    && grantee != &s.owner
                                    && !readers.contains(grantee.as_str()));
                            if foreign && !privs.is_empty() {
                                let who = if grantee == PUBLIC { "PUBLIC".to_string() } else { q(grantee) };
                                let sql = Sql::text(format!("REVOKE ALL ON SCHEMA {} FROM {who}", q(&s.name)));
                                let why = format!("isolation: {grantee} must not reach this schema");
                                self.push(ActionKind::RevokeSchema, &obj, db, sql, &why, RecordChange::None);
                            }
                        }
                    }
                }
            }

            for e in self.desired.extensions.iter().filter(|e| e.server == d.server && e.database == d.name) {
                if !contents.extensions.contains(&e.name) {
                    let obj = ObjectRef::in_db(&e.server, ObjectKind::Extension, &e.database, &e.name);
                    // Into `public` by name: pgplane's sessions have an empty search path, so
                    // nothing else would name the schema (before, `"$user", public` did).
                    let sql = Sql::text(format!("CREATE EXTENSION {} SCHEMA public", q(&e.name)));
                    let rec = RecordChange::Claim(Record { object: obj.clone(), origin: e.origin.clone(), oid: None });
                    self.push(
                        ActionKind::CreateExtension,
                        &obj,
                        db,
                        sql,
                        &format!("{} is missing", obj.display()),
                        rec,
                    );
                }
            }

            for g in self.desired.read_grants.iter().filter(|g| g.server == d.server && g.database == d.name) {
                let obj = ObjectRef::in_db(&g.server, ObjectKind::Schema, &g.database, &g.schema);
                let schema_created = !contents.schemas.contains_key(&g.schema);
                let has_usage = contents
                    .schemas
                    .get(&g.schema)
                    .is_some_and(|s| s.privileges.get(&g.reader).is_some_and(|p| p.contains("USAGE")));
                if !has_usage {
                    let sql = Sql::text(format!("GRANT USAGE ON SCHEMA {} TO {}", q(&g.schema), q(&g.reader)));
                    let why = format!("read-only role {} reads this schema", g.reader);
                    self.push(ActionKind::GrantUsage, &obj, db, sql, &why, RecordChange::None);
                }
                if !schema_created && !contents.select_all.contains(&(g.schema.clone(), g.reader.clone())) {
                    let sql =
                        Sql::text(format!("GRANT SELECT ON ALL TABLES IN SCHEMA {} TO {}", q(&g.schema), q(&g.reader)));
                    let why = format!("read-only role {} lacks SELECT on some tables", g.reader);
                    self.push(ActionKind::GrantSelect, &obj, db, sql, &why, RecordChange::None);
                }
                if !contents.default_select.contains(&(g.owner.clone(), g.schema.clone(), g.reader.clone())) {
                    let sql = Sql::text(format!(
                        "ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA {} GRANT SELECT ON TABLES TO {}",
                        q(&g.owner),
                        q(&g.schema),
                        q(&g.reader)
                    ));
                    let why = format!("future tables of {} must be readable by {}", g.owner, g.reader);
                    self.push(ActionKind::DefaultPrivileges, &obj, db, sql, &why, RecordChange::None);
                }
            }
        }
    }

    fn role_settings<'s>(&mut self, server: &impl Fn(&str) -> &'s ServerState) {
        for s in &self.desired.role_settings {
            let have = server(&s.server).role_settings.get(&(s.database.clone(), s.role.clone()));
            let current = have
                .and_then(|cfg| cfg.iter().find_map(|c| c.strip_prefix("search_path=")).map(|v| v.replace('"', "")));
            if current.as_deref() != Some(s.search_path.as_str()) {
                let obj = ObjectRef::cluster(&s.server, ObjectKind::Role, &s.role);
                let sql = Sql::text(format!(
                    "ALTER ROLE {} IN DATABASE {} SET search_path TO {}",
                    q(&s.role),
                    q(&s.database),
                    q(&s.search_path)
                ));
                let why = format!("the role works in schema {} by default", s.search_path);
                self.push(ActionKind::SetSearchPath, &obj, None, sql, &why, RecordChange::None);
            }
        }
    }

    fn orphans<'s>(&mut self, server: &impl Fn(&str) -> &'s ServerState, desired: &BTreeSet<ObjectRef>) -> Vec<Orphan> {
        let mut orphans: Vec<Orphan> = self
            .observed
            .records
            .iter()
            .filter(|r| r.origin.env == self.desired.env && !desired.contains(&r.object))
            .map(|r| {
                // A server no longer in the manifest is not observed: its objects may exist.
                let known = self.observed.servers.contains_key(&r.object.server);
                Orphan {
                    record: r.clone(),
                    exists: !known
                        || (server(&r.object.server).exists(&r.object) != Some(false) && self.replaced(r).is_none()),
                }
            })
            .collect();
        // Another object under a recorded name: pgplane's is gone, the other is left alone.
        for o in &orphans {
            if let Some(why) = self.replaced(&o.record) {
                self.notes.push(format!(
                    "{} is not the one pgplane created ({why}); pgplane never drops or alters it{}",
                    o.record.object.display(),
                    if self.opts.prune { " and forgets its record" } else { "; apply --prune forgets its record" }
                ));
            }
        }
        for server_name in orphans.iter().map(|o| &o.record.object.server).collect::<BTreeSet<_>>() {
            if !self.observed.servers.contains_key(server_name) {
                self.notes.push(format!(
                    "server {server_name} is not in the manifest: pgplane cannot see or prune its managed objects; \
                     list it under `servers:` to prune them"
                ));
            }
        }
        // Drop order: things inside databases, then databases, then roles.
        let rank = |k: ObjectKind| match k {
            ObjectKind::Extension => 0,
            ObjectKind::Schema => 1,
            ObjectKind::Database => 2,
            ObjectKind::Role => 3,
        };
        orphans.sort_by(|a, b| {
            (rank(a.record.object.kind), &a.record.object).cmp(&(rank(b.record.object.kind), &b.record.object))
        });
        if !self.opts.prune {
            return orphans;
        }
        let dropped_dbs: BTreeSet<(String, String)> = orphans
            .iter()
            .filter(|o| o.record.object.kind == ObjectKind::Database && o.exists)
            .map(|o| (o.record.object.server.clone(), o.record.object.name.clone()))
            .collect();
        // Records of objects inside a database dropped by this plan are forgotten only
        // after the DROP DATABASE succeeded.
        let mut after_drop = Vec::new();
        for o in &orphans {
            let obj = &o.record.object;
            if !self.observed.servers.contains_key(&obj.server) {
                continue;
            }
            let forget = RecordChange::Forget(o.record.clone());
            let in_dropped_db =
                !obj.database.is_empty() && dropped_dbs.contains(&(obj.server.clone(), obj.database.clone()));
            let db_missing = !obj.database.is_empty() && !server(&obj.server).databases.contains_key(&obj.database);
            if in_dropped_db && o.exists {
                after_drop.push(o);
                continue;
            }
            if !o.exists || db_missing {
                let why = if self.replaced(&o.record).is_some() {
                    "another object holds its name (re-created outside pgplane); that one is left alone"
                } else {
                    "it no longer exists"
                };
                self.push(ActionKind::Forget, obj, None, Sql::default(), why, forget);
                continue;
            }
            let why = "removed from the manifest; --prune given";
            match obj.kind {
                ObjectKind::Extension => {
                    let sql = Sql::text(format!("DROP EXTENSION {}", q(&obj.name)));
                    self.push(ActionKind::DropExtension, obj, Some(&obj.database), sql, why, forget);
                }
                ObjectKind::Schema => {
                    let sql = Sql::text(format!("DROP SCHEMA {} CASCADE", q(&obj.name)));
                    self.push(ActionKind::DropSchema, obj, Some(&obj.database), sql, why, forget);
                }
                ObjectKind::Database => {
                    let sql = Sql::text(format!("DROP DATABASE {} WITH (FORCE)", q(&obj.name)));
                    self.push(ActionKind::DropDatabase, obj, None, sql, why, forget);
                }
                ObjectKind::Role => {
                    let state = server(&obj.server).roles.get(&obj.name).cloned().unwrap_or_default();
                    // Who takes over what it owns in a database that stays: its successor (the
                    // desired role with the same origin, e.g. after a naming change), else
                    // that database's owner (e.g. a tenant removed from a shared database).
                    let successor = self
                        .desired
                        .roles
                        .iter()
                        .find(|r| r.server == obj.server && r.origin == o.record.origin)
                        .map(|r| r.name.clone());
                    let kept_owner = |db: &str| {
                        self.desired
                            .databases
                            .iter()
                            .find(|d| d.server == obj.server && d.name == db)
                            .map(|d| successor.clone().unwrap_or_else(|| d.owner.clone()))
                    };
                    // Objects it owns in a database that stays move to that database's owner;
                    // in a database pgplane does not manage (or no longer wants) they are not
                    // ours to move or drop: keep the role and say so.
                    let blocking: Vec<&String> = state
                        .owns_objects_in
                        .iter()
                        .filter(|db| {
                            !dropped_dbs.contains(&(obj.server.clone(), (*db).clone())) && kept_owner(db).is_none()
                        })
                        .collect();
                    let owned_dbs: Vec<&String> = server(&obj.server)
                        .databases
                        .iter()
                        .filter(|(name, d)| {
                            d.owner == obj.name && !dropped_dbs.contains(&(obj.server.clone(), (*name).clone()))
                        })
                        .map(|(name, _)| name)
                        .filter(|name| kept_owner(name).is_none())
                        .collect();
                    if !blocking.is_empty() || !owned_dbs.is_empty() {
                        let mut places: Vec<String> =
                            blocking.iter().map(|db| format!("objects in database {db}")).collect();
                        places.extend(owned_dbs.iter().map(|db| format!("database {db}")));
                        self.notes.push(format!(
                            "role {} is kept although orphaned: it owns {}, which pgplane does not manage; \
                             reassign or drop those, then run apply --prune again",
                            obj.name,
                            places.join(", ")
                        ));
                        continue;
                    }
                    // First nobody may log in as it, and its sessions end: it cannot create
                    // anything between the reassignment and the drop.
                    let sql = Sql::text(format!(
                        "ALTER ROLE {name} NOLOGIN; SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = {lit}",
                        name = q(&obj.name),
                        lit = crate::ident::quote_literal(&obj.name)
                    ));
                    self.push(
                        ActionKind::DisableRole,
                        obj,
                        None,
                        sql,
                        "no new sessions while it is dropped",
                        RecordChange::None,
                    );
                    for dep in &state.dependent_databases {
                        if dropped_dbs.contains(&(obj.server.clone(), dep.clone())) {
                            continue;
                        }
                        // One statement string runs as one transaction: reassign and drop together.
                        if state.owns_objects_in.contains(dep) {
                            let new_owner = kept_owner(dep).expect("checked above");
                            let sql = Sql::text(format!(
                                "REASSIGN OWNED BY {old} TO {new}; DROP OWNED BY {old}",
                                old = q(&obj.name),
                                new = q(&new_owner)
                            ));
                            let why = format!("its objects in {dep} move to {new_owner}; its privileges there go");
                            self.push(ActionKind::ReassignOwned, obj, Some(dep), sql, &why, RecordChange::None);
                        } else {
                            let sql = Sql::text(format!("DROP OWNED BY {}", q(&obj.name)));
                            let why = format!("revoke its privileges in {dep}");
                            self.push(ActionKind::DropOwned, obj, Some(dep), sql, &why, RecordChange::None);
                        }
                    }
                    // Privileges on databases (shared objects, whoever granted them) go with
                    // DROP OWNED in any database; it owns nothing in the admin database, or it
                    // would have been kept above.
                    let sql = Sql::text(format!("DROP OWNED BY {}", q(&obj.name)));
                    self.push(
                        ActionKind::DropOwned,
                        obj,
                        None,
                        sql,
                        "revoke its privileges on databases",
                        RecordChange::None,
                    );
                    let sql = Sql::text(format!("DROP ROLE {}", q(&obj.name)));
                    self.push(ActionKind::DropRole, obj, None, sql, why, forget);
                }
            }
        }
        for o in after_drop {
            let forget = RecordChange::Forget(o.record.clone());
            self.push(ActionKind::Forget, &o.record.object, None, Sql::default(), "its database was dropped", forget);
        }
        orphans
    }
}
