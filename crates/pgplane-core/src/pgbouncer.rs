//! `pgplane pgbouncer`: a PgBouncer configuration for one environment's databases, and the
//! connection budget it must fit in. Pure: the desired state, the manifest's pool sizes and
//! each server's limits in, `pgbouncer.ini` and `userlist.txt` text out.
//!
//! PgBouncer keeps one pool per (database, user) pair: a `[databases]` entry opens at most
//! `pool_size` server connections for each user that logs in to it, and at most
//! `max_db_connections` for all of them together. The most an entry can hold on its server
//! is therefore `min(max_db_connections, pool_size x users)`, where the users are the roles
//! that may connect to that database (its owner and the roles granted CONNECT).

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::manifest::{Manifest, Storage};
use crate::model::{Desired, Purpose};

/// PgBouncer's own `default_pool_size`, used for a module without `pool_size`.
pub const DEFAULT_POOL_SIZE: u32 = 20;

/// One `[databases]` entry: a database as clients name it, where it lives, its pools.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    /// The name clients connect to (the database's own name).
    pub name: String,
    pub server: String,
    pub host: String,
    pub port: u16,
    pub module: String,
    pub storage: Storage,
    /// The tenant of a database-per-tenant database.
    pub tenant: Option<String>,
    pub pool_size: u32,
    /// `max_db_connections`, or the module's `connection_limit` when only that is given.
    pub max_db_connections: Option<u32>,
    /// Roles that may connect: one pool each.
    pub users: Vec<String>,
}

impl Entry {
    /// The most server connections this entry's pools can hold at once.
    pub fn max_server_connections(&self) -> u64 {
        let pools = u64::from(self.pool_size) * self.users.len() as u64;
        match self.max_db_connections {
            Some(max) => pools.min(u64::from(max)),
            None => pools,
        }
    }

    /// How the figure came about, e.g. `200 users x pool_size 5 = 1000, max_db_connections 40`.
    fn explain(&self) -> String {
        let pools = u64::from(self.pool_size) * self.users.len() as u64;
        let users = if self.users.len() == 1 { "user" } else { "users" };
        let mut s = format!("{} {users} x pool_size {} = {pools}", self.users.len(), self.pool_size);
        if let Some(max) = self.max_db_connections {
            s.push_str(&format!(", max_db_connections {max}"));
        }
        s
    }
}

/// Where each server is reached: server name → (host or socket folder, port).
pub type Hosts = BTreeMap<String, (String, u16)>;

/// The `[databases]` entries of an environment: one per database of `desired` (module
/// databases, shared schema-per-tenant databases, each database-per-tenant database),
/// with the pools of the module it belongs to. Databases on servers missing from `hosts`
/// are an error naming them.
pub fn entries(desired: &Desired, manifest: &Manifest, hosts: &Hosts) -> Result<Vec<Entry>, String> {
    let mut out = Vec::new();
    for db in &desired.databases {
        let module = manifest.module(&db.origin.module).ok_or_else(|| {
            format!("database {} belongs to module {}, which the manifest does not list", db.name, db.origin.module)
        })?;
        let (host, port) = hosts
            .get(&db.server)
            .cloned()
            .ok_or_else(|| format!("database {} is on server {}, whose address is unknown", db.name, db.server))?;
        let mut users: BTreeSet<String> = db.connect.clone();
        users.insert(db.owner.clone());
        let max_db_connections = module
            .pool
            .max_db_connections
            .or_else(|| module.connection_limit.and_then(|l| u32::try_from(l).ok()).filter(|l| *l > 0));
        out.push(Entry {
            name: db.name.clone(),
            server: db.server.clone(),
            host,
            port,
            module: module.name.clone(),
            storage: module.storage,
            tenant: (db.origin.purpose == Purpose::TenantDatabase).then(|| db.origin.tenant.clone()).flatten(),
            pool_size: module.pool.pool_size.unwrap_or(DEFAULT_POOL_SIZE),
            max_db_connections,
            users: users.into_iter().collect(),
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// The roles that log in through PgBouncer (every user of an entry), each with its server.
pub fn users(entries: &[Entry]) -> Result<Vec<(String, String)>, String> {
    let mut seen: BTreeMap<&str, &str> = BTreeMap::new();
    for e in entries {
        for u in &e.users {
            match seen.get(u.as_str()) {
                Some(server) if *server != e.server => {
                    return Err(format!(
                        "role {u} logs in on servers {server} and {}, with a different password on each: one \
                         PgBouncer cannot authenticate it for both; give each server a PgBouncer of its own",
                        e.server
                    ))
                }
                _ => {
                    seen.insert(u, &e.server);
                }
            }
        }
    }
    Ok(seen.into_iter().map(|(u, s)| (u.to_string(), s.to_string())).collect())
}

/// A server's connection limits (`SHOW max_connections` …). `reserved_connections` is
/// PostgreSQL 16's; `None` on older servers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Limits {
    pub server: String,
    pub max_connections: u32,
    pub superuser_reserved_connections: u32,
    pub reserved_connections: Option<u32>,
}

impl Limits {
    /// Connections ordinary roles may open.
    pub fn available(&self) -> i64 {
        i64::from(self.max_connections)
            - i64::from(self.superuser_reserved_connections)
            - i64::from(self.reserved_connections.unwrap_or(0))
    }

    /// `max_connections 100 - superuser_reserved_connections 3`.
    fn explain(&self) -> String {
        let mut s = format!(
            "max_connections {} - superuser_reserved_connections {}",
            self.max_connections, self.superuser_reserved_connections
        );
        if let Some(r) = self.reserved_connections {
            s.push_str(&format!(" - reserved_connections {r}"));
        }
        s
    }
}

/// One server's budget: what the pools may hold against what it allows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Budget {
    pub server: String,
    /// The most server connections all entries on this server can hold at once.
    pub needed: u64,
    /// `max_connections` minus the reserved connections and `reserve` (kept for clients
    /// that do not go through PgBouncer).
    pub available: i64,
    pub reserve: u32,
    pub limits: Limits,
}

impl Budget {
    /// `main: 45 of 97 server connections (max_connections 100 - superuser_reserved_connections 3)`.
    pub fn summary(&self) -> String {
        let reserve = if self.reserve > 0 { format!(" - --reserve {}", self.reserve) } else { String::new() };
        format!(
            "server {}: pools hold up to {} of {} server connections ({}{reserve})",
            self.server,
            self.needed,
            self.available,
            self.limits.explain()
        )
    }
}

/// The pools of one or more servers add up past what the server allows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", problems.join("\n"))]
pub struct BudgetError {
    pub problems: Vec<String>,
}

/// Checks that each server's entries fit: the sum of their
/// [`Entry::max_server_connections`] may not exceed [`Limits::available`] minus `reserve`.
/// An overflow names the server, the figures and the largest entries with how they add up.
pub fn budget(entries: &[Entry], limits: &[Limits], reserve: u32) -> Result<Vec<Budget>, BudgetError> {
    let mut out = Vec::new();
    let mut problems = Vec::new();
    let servers: BTreeSet<&str> = entries.iter().map(|e| e.server.as_str()).collect();
    for server in servers {
        let Some(l) = limits.iter().find(|l| l.server == server) else {
            problems.push(format!("server {server}: its connection limits are unknown"));
            continue;
        };
        let mut mine: Vec<&Entry> = entries.iter().filter(|e| e.server == server).collect();
        let needed: u64 = mine.iter().map(|e| e.max_server_connections()).sum();
        let available = l.available() - i64::from(reserve);
        let b = Budget { server: server.to_string(), needed, available, reserve, limits: l.clone() };
        if i128::from(needed) > i128::from(available) {
            mine.sort_by(|a, b| b.max_server_connections().cmp(&a.max_server_connections()).then(a.name.cmp(&b.name)));
            let largest: Vec<String> = mine
                .iter()
                .take(3)
                .map(|e| format!("{} (module {}) {} ({})", e.name, e.module, e.max_server_connections(), e.explain()))
                .collect();
            problems.push(format!(
                "{}: {} over. Largest: {}{}. Lower `pool_size` or set `max_db_connections` on these modules in the \
                 manifest, or raise the server's max_connections",
                b.summary(),
                i128::from(needed) - i128::from(available),
                largest.join("; "),
                if mine.len() > 3 { format!("; and {} more", mine.len() - 3) } else { String::new() }
            ));
        }
        out.push(b);
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(BudgetError { problems })
    }
}

/// How PgBouncer hands out server connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PoolMode {
    /// A server connection per client session (PgBouncer's default; every feature works).
    Session,
    /// A server connection per transaction (more clients per connection; no session
    /// state such as `SET`, advisory session locks or `LISTEN` across transactions).
    Transaction,
}

impl PoolMode {
    pub fn as_str(self) -> &'static str {
        match self {
            PoolMode::Session => "session",
            PoolMode::Transaction => "transaction",
        }
    }
}

/// The `[pgbouncer]` section's settings pgplane writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub env: String,
    pub listen_addr: String,
    pub listen_port: u16,
    /// The `auth_file` as PgBouncer will open it.
    pub auth_file: String,
    pub pool_mode: PoolMode,
}

/// A value in a `[databases]` connection string or a `[pgbouncer]` setting: host names,
/// addresses and socket folders only (nothing PgBouncer would have to unquote).
fn plain(what: &str, v: &str) -> Result<String, String> {
    if !v.is_empty() && v.chars().all(|c| c.is_ascii_alphanumeric() || "._:/-".contains(c)) {
        Ok(v.to_string())
    } else {
        Err(format!("{what} {v:?} cannot be written into pgbouncer.ini: use letters, digits and . _ : / - only"))
    }
}

/// `pgbouncer.ini`: one `[databases]` entry per database, then the `[pgbouncer]` settings.
pub fn render_ini(entries: &[Entry], budgets: &[Budget], s: &Settings) -> Result<String, String> {
    let mut out = String::new();
    out.push_str(&format!(
        ";; PgBouncer configuration of environment {}, written by `pgplane pgbouncer`.\n\
         ;; Applications connect here with their own roles; pgplane's admin connections go to\n\
         ;; PostgreSQL directly (they send startup options PgBouncer does not pass on).\n",
        s.env
    ));
    for b in budgets {
        out.push_str(&format!(";; {}\n", b.summary()));
    }
    out.push_str("\n[databases]\n");
    for e in entries {
        let mut line = format!(
            "{} = host={} port={} dbname={} pool_size={}",
            plain("database", &e.name)?,
            plain("host", &e.host)?,
            e.port,
            plain("database", &e.name)?,
            e.pool_size
        );
        if let Some(max) = e.max_db_connections {
            line.push_str(&format!(" max_db_connections={max}"));
        }
        let whose = match &e.tenant {
            Some(t) => format!("module {}, tenant {t}", e.module),
            None => format!("module {} ({})", e.module, e.storage.as_str()),
        };
        out.push_str(&format!(";; {whose}: up to {} server connections\n{line}\n", e.max_server_connections()));
    }
    out.push_str(&format!(
        "\n[pgbouncer]\n\
         listen_addr = {}\n\
         listen_port = {}\n\
         auth_type = scram-sha-256\n\
         auth_file = {}\n\
         pool_mode = {}\n\
         default_pool_size = {DEFAULT_POOL_SIZE}\n\
         reserve_pool_size = 0\n\
         ignore_startup_parameters = extra_float_digits\n",
        plain("listen address", &s.listen_addr)?,
        s.listen_port,
        plain("auth_file", &s.auth_file)?,
        s.pool_mode.as_str()
    ));
    Ok(out)
}

/// `userlist.txt`: `"role" "SCRAM-SHA-256$…"` per role, sorted. The verifiers are the ones
/// the server holds (PgBouncer logs in to the server with keys it derives from the
/// client's SCRAM exchange, which works only when both sides hold the same verifier);
/// never a password.
pub fn render_userlist(verifiers: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::new();
    for (role, verifier) in verifiers {
        if !verifier.starts_with("SCRAM-SHA-256$") || verifier.contains('"') || verifier.contains('\n') {
            return Err(format!("role {role} has no SCRAM-SHA-256 verifier; run `pgplane apply` to set its password"));
        }
        out.push_str(&format!("\"{}\" \"{verifier}\"\n", role.replace('"', "\"\"")));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_values_only() {
        assert!(plain("host", "127.0.0.1").is_ok());
        assert!(plain("host", "/var/run/postgresql").is_ok());
        for bad in ["", "a b", "x'y", "h;x", "a\nb", "p=1"] {
            assert!(plain("host", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn userlist_refuses_what_is_not_a_scram_verifier() {
        let mut v = BTreeMap::new();
        v.insert("a".to_string(), "md5abc".to_string());
        assert!(render_userlist(&v).unwrap_err().contains("role a"));
    }
}
