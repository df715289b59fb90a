//! A step's credentials: the role pgplane manages, logged in with the password pgplane
//! derives for it (never `SET ROLE` from an admin session). Handed to processes as the
//! variables `pgplane credentials --format env` prints, and to SQL steps and waits as a
//! connection. Passwords live only in memory and in the environment of the step's
//! process; every line a step prints passes through [`Redactor`] before it is shown,
//! logged or recorded.

use std::borrow::Cow;

use anyhow::{bail, Result};
use pgplane_core::model::{Desired, ObjectKind};
use pgplane_core::stack::Access;
use tokio_postgres::Client;

use crate::conn::{Servers, Target};
use crate::control;
use crate::secrets::Keyring;

/// A role's login on its server.
#[derive(Clone)]
pub struct Login {
    pub access: Access,
    /// The server's admin target (host and port; the admin's user and password are replaced).
    pub server: Target,
    password: String,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Login({}@{}/{})", self.access.role, self.server.display(), self.access.database)
    }
}

impl Login {
    /// The secrets to hide in output: the password (URLs carry it verbatim: it is URL-safe).
    pub fn secrets(&self) -> Vec<String> {
        vec![self.password.clone()]
    }

    fn url(&self) -> String {
        let (host, port) = self.server.host_port();
        let host = if host.contains(':') { format!("[{host}]") } else { host };
        format!("postgresql://{}:{}@{host}:{port}/{}", self.access.role, self.password, self.access.database)
    }

    /// `PGHOST`, `PGPORT`, `PGDATABASE`, `PGUSER`, `PGPASSWORD`, `PGOPTIONS` and
    /// `DATABASE_SCHEMA` for a tenant's schema, `DATABASE_URL`: as `credentials --format env`.
    pub fn env(&self) -> Vec<(String, String)> {
        let (host, port) = self.server.host_port();
        let mut out = vec![
            ("PGHOST".to_string(), host),
            ("PGPORT".to_string(), port.to_string()),
            ("PGDATABASE".to_string(), self.access.database.clone()),
            ("PGUSER".to_string(), self.access.role.clone()),
            ("PGPASSWORD".to_string(), self.password.clone()),
        ];
        if let Some(schema) = &self.access.schema {
            out.push(("PGOPTIONS".to_string(), format!("-c search_path={schema}")));
            out.push(("DATABASE_SCHEMA".to_string(), schema.clone()));
        }
        out.push(("DATABASE_URL".to_string(), self.url()));
        out
    }

    /// A target that logs in as the role to its database (search path set for a tenant's schema).
    pub fn target(&self) -> Target {
        // The role's own session: its usual search path (a tenant's: its schema).
        let mut t = self.server.with_usual_search_path().login_as(&self.access.role, &self.password);
        t.config.dbname(&self.access.database);
        if let Some(schema) = &self.access.schema {
            t.config.options(format!("-c search_path={schema}"));
        }
        t
    }
}

/// The variables a step's process never inherits from pgplane's own environment.
pub const NOT_INHERITED: &[&str] = &["PGPLANE_SECRET_KEY", "PGPLANE_TOKENS"];
/// Replaced by a step's credentials (removed when it has some, so nothing mixes).
pub const CONNECTION_VARS: &[&str] = &[
    "PGHOST",
    "PGPORT",
    "PGDATABASE",
    "PGUSER",
    "PGPASSWORD",
    "PGOPTIONS",
    "PGSERVICE",
    "DATABASE_URL",
    "DATABASE_SCHEMA",
];

/// Logins for every step that names a module or role. Each role must be one pgplane
/// manages for this environment (recorded in the control database), or the error says to
/// run `pgplane apply`.
pub async fn logins(
    accesses: &[Option<Access>],
    desired: &Desired,
    servers: &Servers,
    control: &Client,
    keys: &Keyring,
) -> Result<Vec<Option<Login>>> {
    let records = control::read_records(control).await?;
    let mut out = Vec::new();
    for a in accesses {
        let Some(a) = a else {
            out.push(None);
            continue;
        };
        let managed = records.iter().any(|r| {
            r.object.kind == ObjectKind::Role
                && r.object.server == a.server
                && r.object.name == a.role
                && r.origin.env == desired.env
        });
        if !managed {
            bail!(
                "role {} on server {} is not provisioned by pgplane for environment {} yet; run `pgplane apply` first",
                a.role,
                a.server,
                desired.env
            );
        }
        let generation = control::generation(control, &a.server, &a.role).await?;
        out.push(Some(Login {
            access: a.clone(),
            server: servers.get(&a.server)?.clone(),
            password: keys.password(&a.server, &a.role, generation),
        }));
    }
    Ok(out)
}

/// Hides secrets in a step's output.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    secrets: Vec<String>,
}

impl Redactor {
    pub fn new(secrets: Vec<String>) -> Redactor {
        // Short values would hide ordinary text; derived passwords are 43 characters.
        Redactor { secrets: secrets.into_iter().filter(|s| s.len() >= 8).collect() }
    }

    pub fn apply<'a>(&self, line: &'a str) -> Cow<'a, str> {
        if !self.secrets.iter().any(|s| line.contains(s.as_str())) {
            return Cow::Borrowed(line);
        }
        let mut out = line.to_string();
        for s in &self.secrets {
            out = out.replace(s.as_str(), "********");
        }
        Cow::Owned(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_hidden_and_short_values_ignored() {
        let r = Redactor::new(vec!["s3cr3t-password-value".into(), "ab".into()]);
        assert_eq!(r.apply("url postgresql://u:s3cr3t-password-value@h/db ab"), "url postgresql://u:********@h/db ab");
        assert!(matches!(r.apply("nothing here"), Cow::Borrowed(_)));
    }
}
