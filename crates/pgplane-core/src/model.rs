//! The desired state: every role, database, schema, extension, grant and setting a
//! manifest asks for in one environment, with final names computed and clash-checked.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::ident::check_name;
use crate::manifest::{Manifest, ModuleSpec, Storage};
use crate::naming::Vars;
use crate::tenant::{ModuleState, Registry};

/// What an object is for. Stored with every record so that a name wanted by two
/// different origins is caught as a clash.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Origin {
    pub env: String,
    pub module: String,
    pub tenant: Option<String>,
    pub purpose: Purpose,
}

impl Origin {
    pub fn describe(&self) -> String {
        if self.module.is_empty() {
            // Environment-wide objects such as the branch read-only role belong to no module.
            return format!("env {} ({})", self.env, self.purpose.as_str());
        }
        match &self.tenant {
            Some(t) => format!("env {} module {} tenant {} ({})", self.env, self.module, t, self.purpose.as_str()),
            None => format!("env {} module {} ({})", self.env, self.module, self.purpose.as_str()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    OwnerRole,
    ReadonlyRole,
    TenantRole,
    TenantReadonlyRole,
    /// `branches.readonly_role`: reads every branch and template of the environment.
    BranchReadonlyRole,
    Database,
    TenantDatabase,
    TenantSchema,
    Extension,
}

impl Purpose {
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::OwnerRole => "owner_role",
            Purpose::ReadonlyRole => "readonly_role",
            Purpose::TenantRole => "tenant_role",
            Purpose::TenantReadonlyRole => "tenant_readonly_role",
            Purpose::BranchReadonlyRole => "branch_readonly_role",
            Purpose::Database => "database",
            Purpose::TenantDatabase => "tenant_database",
            Purpose::TenantSchema => "tenant_schema",
            Purpose::Extension => "extension",
        }
    }

    pub fn parse(s: &str) -> Option<Purpose> {
        [
            Purpose::OwnerRole,
            Purpose::ReadonlyRole,
            Purpose::TenantRole,
            Purpose::TenantReadonlyRole,
            Purpose::BranchReadonlyRole,
            Purpose::Database,
            Purpose::TenantDatabase,
            Purpose::TenantSchema,
            Purpose::Extension,
        ]
        .into_iter()
        .find(|p| p.as_str() == s)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ObjectKind {
    Role,
    Database,
    Schema,
    Extension,
}

impl ObjectKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectKind::Role => "role",
            ObjectKind::Database => "database",
            ObjectKind::Schema => "schema",
            ObjectKind::Extension => "extension",
        }
    }

    pub fn parse(s: &str) -> Option<ObjectKind> {
        [ObjectKind::Role, ObjectKind::Database, ObjectKind::Schema, ObjectKind::Extension]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

/// Where an object lives. `database` is empty for cluster-wide objects (roles, databases).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ObjectRef {
    pub server: String,
    pub kind: ObjectKind,
    pub database: String,
    pub name: String,
}

impl ObjectRef {
    pub fn cluster(server: &str, kind: ObjectKind, name: &str) -> ObjectRef {
        ObjectRef { server: server.into(), kind, database: String::new(), name: name.into() }
    }

    pub fn in_db(server: &str, kind: ObjectKind, database: &str, name: &str) -> ObjectRef {
        ObjectRef { server: server.into(), kind, database: database.into(), name: name.into() }
    }

    /// `role dev_registry`, `schema dev_users.acme_users`.
    pub fn display(&self) -> String {
        if self.database.is_empty() {
            format!("{} {}", self.kind.as_str(), self.name)
        } else {
            format!("{} {}.{}", self.kind.as_str(), self.database, self.name)
        }
    }
}

/// An object pgplane manages, as recorded in the control database.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Record {
    #[serde(flatten)]
    pub object: ObjectRef,
    pub origin: Origin,
    /// The OID of the role or database pgplane created or adopted: an object with the same
    /// name and another OID is not pgplane's. `None` for schemas and extensions (they live
    /// in a database pgplane owns), for objects not created yet, and for records an older
    /// pgplane wrote (apply fills those in the first time it sees the object).
    #[serde(skip)]
    pub oid: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredRole {
    pub server: String,
    pub name: String,
    pub origin: Origin,
    /// The template output before it was shortened to 63 bytes, if it was.
    pub long_name: Option<String>,
    /// May log in (false: a disabled tenant's role).
    pub login: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredDatabase {
    pub server: String,
    pub name: String,
    pub owner: String,
    /// -1: no limit.
    pub connection_limit: i32,
    /// Roles besides the owner that may connect.
    pub connect: BTreeSet<String>,
    /// Roles that must not hold CONNECT (a disabled tenant's roles, the owner included).
    pub revoke_connect: BTreeSet<String>,
    /// Database-level settings (`ALTER DATABASE … SET`), sorted by name; pgplane manages
    /// only these names.
    pub settings: Vec<(String, String)>,
    pub origin: Origin,
    pub long_name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredSchema {
    pub server: String,
    pub database: String,
    pub name: String,
    pub owner: String,
    pub origin: Origin,
    pub long_name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredExtension {
    pub server: String,
    pub database: String,
    pub name: String,
    pub origin: Origin,
}

/// `reader` may read every current and future table that `owner` creates in `schema`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ReadGrant {
    pub server: String,
    pub database: String,
    pub schema: String,
    pub owner: String,
    pub reader: String,
}

/// `ALTER ROLE role IN DATABASE database SET search_path TO schema`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RoleSetting {
    pub server: String,
    pub database: String,
    pub role: String,
    pub search_path: String,
}

/// Where a module's (or tenant's) storage is, and who owns it: what `credentials` hands out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    pub module: String,
    pub tenant: Option<String>,
    pub server: String,
    pub database: String,
    pub schema: Option<String>,
    pub owner_role: String,
    pub readonly_role: Option<String>,
    /// The module version the storage runs (`None`: the module declares no `versions:`).
    pub version: Option<String>,
    /// The tenant's parameters (defaults filled in); empty for a module's own storage.
    pub parameters: BTreeMap<String, bool>,
    /// False for a disabled tenant module: its roles cannot log in or connect.
    pub enabled: bool,
    /// Registered in the control database (`tenant add`), not listed in the manifest.
    pub registered: bool,
}

/// One tenant's use of a module, whichever way it is declared.
struct TenantUse<'a> {
    name: &'a str,
    enabled: bool,
    server: &'a str,
    version: Option<String>,
    parameters: BTreeMap<String, bool>,
    registered: bool,
}

#[derive(Debug, Clone, Default)]
pub struct Desired {
    pub env: String,
    pub roles: Vec<DesiredRole>,
    pub databases: Vec<DesiredDatabase>,
    pub schemas: Vec<DesiredSchema>,
    pub extensions: Vec<DesiredExtension>,
    pub read_grants: Vec<ReadGrant>,
    pub role_settings: Vec<RoleSetting>,
    pub endpoints: Vec<Endpoint>,
}

/// Names PostgreSQL or pgplane keep for themselves.
pub const RESERVED_DATABASES: &[&str] = &["postgres", "template0", "template1", "pgplane"];

/// Two origins want the same name, or a name is reserved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", problems.join("\n"))]
pub struct NamingError {
    pub problems: Vec<String>,
}

impl Desired {
    /// Computes every object of `env` — the manifest's modules and tenants, and the tenants
    /// registered in the control database (`registry`, enabled or disabled; purging ones are
    /// not wanted) — and checks the names against each other.
    pub fn build(manifest: &Manifest, env: &str, registry: &Registry) -> Result<Desired, NamingError> {
        if let Err(m) = check_name("environment", env) {
            return Err(NamingError { problems: vec![m] });
        }
        let n = &manifest.naming;
        let mut d = Desired { env: env.to_string(), ..Desired::default() };
        let mut problems = check_registry(manifest, registry);
        for m in &manifest.modules {
            let vars = Vars { env, module: &m.name, ..Vars::default() };
            let limit = m.connection_limit.unwrap_or(-1);
            let tenants = match tenant_uses(manifest, registry, m) {
                Ok(t) => t,
                Err(mut p) => {
                    problems.append(&mut p);
                    continue;
                }
            };
            let b = Builder { env, module: &m.name, server: &m.server, login: true };
            match m.storage {
                Storage::Database | Storage::SchemaPerTenant => {
                    let owner = b.role(&mut d, n.owner_role.render_long(vars), None, Purpose::OwnerRole);
                    let (db, db_long) = n.database.render_long(vars);
                    let mut connect = BTreeSet::new();
                    b.extensions(&mut d, &db, &m.extensions, None);
                    if m.storage == Storage::Database {
                        let readonly = m.readonly_role.then(|| {
                            let ro = n.readonly_role.render_long(Vars { owner: &owner, ..vars });
                            b.reader(&mut d, ro, &db, "public", &owner, None, Purpose::ReadonlyRole)
                        });
                        connect.extend(readonly.clone());
                        d.endpoints.push(Endpoint {
                            module: m.name.clone(),
                            tenant: None,
                            server: b.server.into(),
                            database: db.clone(),
                            schema: None,
                            owner_role: owner.clone(),
                            readonly_role: readonly,
                            version: m.newest_version().map(str::to_string),
                            parameters: BTreeMap::new(),
                            enabled: true,
                            registered: false,
                        });
                    }
                    let mut revoke = BTreeSet::new();
                    for t in tenants.iter().filter(|_| m.storage == Storage::SchemaPerTenant) {
                        let b = Builder { login: t.enabled, ..b };
                        let tv = Vars { tenant: t.name, ..vars };
                        let tr = b.role(&mut d, n.tenant_role.render_long(tv), Some(t.name), Purpose::TenantRole);
                        let (schema, schema_long) = n.tenant_schema.render_long(tv);
                        d.schemas.push(DesiredSchema {
                            server: b.server.into(),
                            database: db.clone(),
                            name: schema.clone(),
                            owner: tr.clone(),
                            origin: b.origin(Some(t.name), Purpose::TenantSchema),
                            long_name: schema_long,
                        });
                        b.search_path(&mut d, &db, &tr, &schema);
                        let readonly = m.readonly_role.then(|| {
                            let ro = n.readonly_role.render_long(Vars { owner: &tr, ..tv });
                            let ro = b.reader(&mut d, ro, &db, &schema, &tr, Some(t.name), Purpose::TenantReadonlyRole);
                            b.search_path(&mut d, &db, &ro, &schema);
                            ro
                        });
                        let mine = [Some(tr.clone()), readonly.clone()].into_iter().flatten();
                        if t.enabled {
                            connect.extend(mine);
                        } else {
                            revoke.extend(mine);
                        }
                        b.endpoint(&mut d, t, &db, Some(schema), &tr, readonly);
                    }
                    d.databases.push(DesiredDatabase {
                        server: b.server.into(),
                        name: db,
                        owner,
                        connection_limit: limit,
                        connect,
                        revoke_connect: revoke,
                        settings: m.settings.clone(),
                        origin: b.origin(None, Purpose::Database),
                        long_name: db_long,
                    });
                }
                Storage::DatabasePerTenant => {
                    for t in &tenants {
                        let b = Builder { login: t.enabled, server: t.server, ..b };
                        let tv = Vars { tenant: t.name, ..vars };
                        let tr = b.role(&mut d, n.tenant_role.render_long(tv), Some(t.name), Purpose::TenantRole);
                        let (db, db_long) = n.tenant_database.render_long(tv);
                        b.extensions(&mut d, &db, &m.extensions, Some(t.name));
                        let readonly = m.readonly_role.then(|| {
                            let ro = n.readonly_role.render_long(Vars { owner: &tr, ..tv });
                            b.reader(&mut d, ro, &db, "public", &tr, Some(t.name), Purpose::TenantReadonlyRole)
                        });
                        b.endpoint(&mut d, t, &db, None, &tr, readonly.clone());
                        let (connect, revoke_connect) = if t.enabled {
                            (readonly.into_iter().collect(), BTreeSet::new())
                        } else {
                            (BTreeSet::new(), [Some(tr.clone()), readonly].into_iter().flatten().collect())
                        };
                        d.databases.push(DesiredDatabase {
                            server: b.server.into(),
                            name: db,
                            owner: tr,
                            connection_limit: limit,
                            connect,
                            revoke_connect,
                            settings: m.settings.clone(),
                            origin: b.origin(Some(t.name), Purpose::TenantDatabase),
                            long_name: db_long,
                        });
                    }
                }
            }
        }
        if !problems.is_empty() {
            return Err(NamingError { problems });
        }
        if let Some(name) = &manifest.branches.readonly_role_in(env) {
            // On every server holding a template (branches are stamped there), else on the
            // first server. It gets no database and no grants here: `template build` and
            // `branch create` grant it CONNECT and SELECT.
            let mut servers: BTreeSet<&str> = manifest
                .templates
                .iter()
                .filter_map(|t| manifest.module(&t.module))
                .map(|m| m.server.as_str())
                .collect();
            let first = manifest.server_names().into_iter().next().unwrap_or_default();
            if servers.is_empty() {
                servers.insert(&first);
            }
            for server in servers {
                let b = Builder { env, module: "", server, login: true };
                b.role(&mut d, (name.clone(), None), None, Purpose::BranchReadonlyRole);
            }
        }
        d.check_names()?;
        d.roles.sort_by(|a, b| (&a.server, &a.name).cmp(&(&b.server, &b.name)));
        d.databases.sort_by(|a, b| (&a.server, &a.name).cmp(&(&b.server, &b.name)));
        d.schemas.sort_by(|a, b| (&a.server, &a.database, &a.name).cmp(&(&b.server, &b.database, &b.name)));
        d.extensions.sort_by(|a, b| (&a.server, &a.database, &a.name).cmp(&(&b.server, &b.database, &b.name)));
        d.read_grants.sort();
        d.role_settings.sort();
        Ok(d)
    }

    /// Every object this desired state claims, with its origin.
    pub fn objects(&self) -> Vec<(ObjectRef, &Origin)> {
        let mut out = Vec::new();
        for r in &self.roles {
            out.push((ObjectRef::cluster(&r.server, ObjectKind::Role, &r.name), &r.origin));
        }
        for db in &self.databases {
            out.push((ObjectRef::cluster(&db.server, ObjectKind::Database, &db.name), &db.origin));
        }
        for s in &self.schemas {
            out.push((ObjectRef::in_db(&s.server, ObjectKind::Schema, &s.database, &s.name), &s.origin));
        }
        for e in &self.extensions {
            out.push((ObjectRef::in_db(&e.server, ObjectKind::Extension, &e.database, &e.name), &e.origin));
        }
        out
    }

    fn check_names(&self) -> Result<(), NamingError> {
        let mut problems = Vec::new();
        let mut seen: BTreeMap<ObjectRef, &Origin> = BTreeMap::new();
        for (obj, origin) in self.objects() {
            match obj.kind {
                ObjectKind::Database
                    if RESERVED_DATABASES.contains(&obj.name.as_str()) || obj.name.starts_with("pg_") =>
                {
                    problems.push(format!(
                        "database name {:?} ({}) is reserved (postgres, template0, template1, pgplane and pg_*); \
                         change the naming template or the name",
                        obj.name,
                        origin.describe()
                    ))
                }
                ObjectKind::Role if obj.name.starts_with("pg_") || obj.name == "postgres" || obj.name == "public" => {
                    problems.push(format!(
                        "role name {:?} ({}) is reserved by PostgreSQL; change the naming template or the name",
                        obj.name,
                        origin.describe()
                    ))
                }
                ObjectKind::Schema
                    if obj.name.starts_with("pg_")
                        || ["public", "information_schema", "pgplane"].contains(&obj.name.as_str()) =>
                {
                    problems.push(format!(
                        "schema name {:?} ({}) is reserved; change naming.tenant_schema",
                        obj.name,
                        origin.describe()
                    ))
                }
                _ => {}
            }
            if let Some(other) = seen.get(&obj) {
                if *other != origin {
                    problems.push(format!(
                        "name clash: {} is wanted by {} and by {}; change a name or the naming templates",
                        obj.display(),
                        other.describe(),
                        origin.describe()
                    ));
                }
            } else {
                seen.insert(obj, origin);
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(NamingError { problems })
        }
    }

    pub fn endpoint(&self, module: &str, tenant: Option<&str>) -> Option<&Endpoint> {
        self.endpoints.iter().find(|e| e.module == module && e.tenant.as_deref() == tenant)
    }
}

/// Registered tenants that the manifest lists too, or that enable a module the manifest
/// no longer has (or no longer gives per-tenant storage): the desired state would be
/// ambiguous, so nothing is planned until one side changes.
fn check_registry(manifest: &Manifest, registry: &Registry) -> Vec<String> {
    let mut problems = Vec::new();
    for t in &registry.tenants {
        if manifest.tenants.iter().any(|m| m.name == t.name) {
            problems.push(format!(
                "tenant {:?} is listed in {} and registered with `pgplane tenant add`, so its desired state is \
                 ambiguous and nothing is planned: remove it from the manifest again (then `pgplane tenant remove {} \
                 --purge` if it should go, before listing it in the manifest)",
                t.name,
                manifest.file.display(),
                t.name
            ));
        }
        for tm in t.modules.iter().filter(|m| m.state != ModuleState::Purging) {
            match manifest.module(&tm.module) {
                None => problems.push(format!(
                    "registered tenant {:?} has module {:?}, which is not in {}; put the module back, or purge it: \
                     `pgplane tenant remove {} --module {} --purge`",
                    t.name,
                    tm.module,
                    manifest.file.display(),
                    t.name,
                    tm.module
                )),
                Some(m) if m.storage == Storage::Database => problems.push(format!(
                    "registered tenant {:?} has module {:?}, which now has `storage: database`; tenants need \
                     per-tenant storage",
                    t.name, tm.module
                )),
                Some(_) => {}
            }
        }
    }
    problems
}

/// The tenants of a module: the manifest's (enabled, at the newest version, default
/// parameters) and the registered ones (as recorded), sorted by name; with each one's
/// server (its placement for `server: auto`).
fn tenant_uses<'a>(
    manifest: &'a Manifest,
    registry: &'a Registry,
    m: &'a ModuleSpec,
) -> Result<Vec<TenantUse<'a>>, Vec<String>> {
    let mut out = Vec::new();
    let mut problems = Vec::new();
    let mut server_of = |tenant: &str, recorded: Option<&'a str>| -> &'a str {
        if !m.auto_server {
            return &m.server;
        }
        match recorded {
            Some(s) if manifest.server_names().iter().any(|n| n == s) => s,
            Some(s) => {
                problems.push(format!(
                    "tenant {tenant:?}'s database of module {} was placed on server {s:?}, which is not in `servers` \
                     any more; list it again",
                    m.name
                ));
                &m.server
            }
            None => {
                problems.push(format!(
                    "tenant {tenant:?} of module {} (`server: auto`) has no server yet; plan and apply place it",
                    m.name
                ));
                &m.server
            }
        }
    };
    for t in manifest.tenants.iter().filter(|t| t.modules.contains(&m.name)) {
        let placed = registry.placements.get(&(t.name.clone(), m.name.clone())).map(String::as_str);
        out.push(TenantUse {
            name: &t.name,
            enabled: true,
            server: server_of(&t.name, placed),
            version: m.newest_version().map(str::to_string),
            parameters: m.parameters.iter().map(|p| (p.name.clone(), p.default)).collect(),
            registered: false,
        });
    }
    for t in &registry.tenants {
        for tm in t.modules.iter().filter(|tm| tm.module == m.name && tm.state != ModuleState::Purging) {
            out.push(TenantUse {
                name: &t.name,
                enabled: tm.state == ModuleState::Enabled,
                server: server_of(&t.name, tm.server.as_deref()),
                version: tm.version.clone(),
                parameters: tm.parameters.clone(),
                registered: true,
            });
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    out.sort_by(|a, b| a.name.cmp(b.name));
    Ok(out)
}

/// Adds the objects of one module to a [`Desired`], tagging each with its origin.
#[derive(Clone, Copy)]
struct Builder<'a> {
    env: &'a str,
    module: &'a str,
    server: &'a str,
    /// Whether the roles it adds may log in.
    login: bool,
}

impl Builder<'_> {
    fn origin(&self, tenant: Option<&str>, purpose: Purpose) -> Origin {
        Origin { env: self.env.into(), module: self.module.into(), tenant: tenant.map(str::to_string), purpose }
    }

    /// Adds a LOGIN role; returns its name.
    fn role(
        &self,
        d: &mut Desired,
        (name, long_name): (String, Option<String>),
        tenant: Option<&str>,
        purpose: Purpose,
    ) -> String {
        d.roles.push(DesiredRole {
            server: self.server.into(),
            name: name.clone(),
            origin: self.origin(tenant, purpose),
            long_name,
            login: self.login,
        });
        name
    }

    /// Adds a read-only role that reads every current and future table `owner` creates in
    /// `schema` of `database`; returns its name.
    #[allow(clippy::too_many_arguments)]
    fn reader(
        &self,
        d: &mut Desired,
        name: (String, Option<String>),
        database: &str,
        schema: &str,
        owner: &str,
        tenant: Option<&str>,
        purpose: Purpose,
    ) -> String {
        let reader = self.role(d, name, tenant, purpose);
        d.read_grants.push(ReadGrant {
            server: self.server.into(),
            database: database.into(),
            schema: schema.into(),
            owner: owner.into(),
            reader: reader.clone(),
        });
        reader
    }

    fn extensions(&self, d: &mut Desired, database: &str, names: &[String], tenant: Option<&str>) {
        for e in names {
            d.extensions.push(DesiredExtension {
                server: self.server.into(),
                database: database.into(),
                name: e.clone(),
                origin: self.origin(tenant, Purpose::Extension),
            });
        }
    }

    fn search_path(&self, d: &mut Desired, database: &str, role: &str, schema: &str) {
        d.role_settings.push(RoleSetting {
            server: self.server.into(),
            database: database.into(),
            role: role.into(),
            search_path: schema.into(),
        });
    }

    fn endpoint(
        &self,
        d: &mut Desired,
        tenant: &TenantUse<'_>,
        database: &str,
        schema: Option<String>,
        owner: &str,
        readonly: Option<String>,
    ) {
        d.endpoints.push(Endpoint {
            module: self.module.into(),
            tenant: Some(tenant.name.to_string()),
            server: self.server.into(),
            database: database.into(),
            schema,
            owner_role: owner.into(),
            readonly_role: readonly,
            version: tenant.version.clone(),
            parameters: tenant.parameters.clone(),
            enabled: tenant.enabled,
            registered: tenant.registered,
        });
    }
}
