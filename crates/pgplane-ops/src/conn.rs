//! Servers pgplane administers and connections to them.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, Result};
use pgplane_core::manifest::{Manifest, LOCAL_SERVER};
use tokio_postgres::{Client, Config, NoTls};

use crate::local::LocalServer;
use crate::secrets::Keyring;

/// The startup options every session pgplane opens carries. An empty `search_path`
/// (CVE-2018-1058): functions, operators and casts resolve from `pg_catalog` alone, so
/// nothing a tenant can create is ever looked up; pgplane's own tables are always written
/// `pgplane.x`, and PostgreSQL's client tools do the same (`ALWAYS_SECURE_SEARCH_PATH_SQL`).
/// `role=none`: the session acts as the user it logged in as, even in a database whose
/// owner ran `ALTER DATABASE … SET role = itself` (which would make an admin session act
/// with the owner's rights). Sent in the startup packet, they outrank `ALTER DATABASE|ROLE
/// … SET` (a client setting beats both), come after the URL's own `options` (the last one
/// wins) and survive `RESET ALL` and `DISCARD ALL` (they are the session's reset values).
pub const SECURE_OPTIONS: &str = "-c search_path= -c role=none";

/// A server by its manifest name, with its admin connection settings.
#[derive(Clone)]
pub struct Target {
    pub name: String,
    /// How to connect, with [`SECURE_OPTIONS`] appended to the URL's own `options`.
    pub config: Config,
    /// The URL's own `options`, for sessions that must see a role's usual settings.
    url_options: Option<String>,
}

impl Target {
    /// Parses an admin URL; every session made from it has the secure search path.
    pub fn from_url(name: &str, url: &str) -> Result<Target> {
        let config = Config::from_str(url).map_err(|e| {
            anyhow::anyhow!("server {name}: the URL is not a valid PostgreSQL connection string ({e}); write postgresql://USER:PASSWORD@HOST:PORT/DATABASE")
        })?;
        let url_options = config.get_options().map(str::to_string);
        let mut t = Target { name: name.to_string(), config, url_options };
        t.config.options(secure_options(t.url_options.as_deref()));
        Ok(t)
    }

    /// The same server, logging in as `role` with `password` (a managed role, see
    /// [`Logins`]); still with the secure search path.
    pub fn login_as(&self, role: &str, password: &str) -> Target {
        let mut t = self.clone();
        t.config.user(role);
        t.config.password(password);
        t
    }

    /// Without [`SECURE_OPTIONS`]: sessions get the search path their role and database
    /// settings give. Only for sessions that run someone's own SQL with that someone's
    /// rights (`wait --for sql:` as a module's owner, or as the user of `--url`).
    pub fn with_usual_search_path(&self) -> Target {
        let mut t = self.clone();
        t.config.options(self.url_options.as_deref().unwrap_or(""));
        t
    }

    /// `host:port` for messages; never the password.
    pub fn display(&self) -> String {
        let (host, port) = self.host_port();
        format!("{host}:{port}")
    }

    pub fn host_port(&self) -> (String, u16) {
        let host = match self.config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
            None => "localhost".into(),
        };
        (host, self.config.get_ports().first().copied().unwrap_or(5432))
    }

    /// Connects to `db`, or to the admin database of the URL, for reading.
    pub async fn connect(&self, db: Option<&str>) -> Result<Client> {
        self.connect_as(db, Role::Read).await
    }

    /// Connects with an `application_name` that says whether this session may change
    /// things: mutating sessions are `pgplane-apply/<pid>` so that the next lock holder
    /// can find statements a killed pgplane left running (see [`crate::control::lock`]).
    pub async fn connect_as(&self, db: Option<&str>, role: Role) -> Result<Client> {
        let name = match role {
            Role::Read => "pgplane".to_string(),
            Role::Apply => apply_application_name(),
            Role::Migrate => "pgplane-migrate".to_string(),
            Role::Branch => "pgplane-branch".to_string(),
        };
        self.connect_named(db, &name).await
    }

    /// Connects with a given `application_name` (branch operations name their sessions
    /// after the branch, so the next holder of its lock can end a dead process's leftovers).
    pub async fn connect_named(&self, db: Option<&str>, application_name: &str) -> Result<Client> {
        let (client, conn) = self.open(db, application_name).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }

    /// A session and its connection task, before anything drives it.
    async fn open(
        &self,
        db: Option<&str>,
        application_name: &str,
    ) -> Result<(Client, tokio_postgres::Connection<tokio_postgres::Socket, tokio_postgres::tls::NoTlsStream>)> {
        let mut cfg = self.config.clone();
        if let Some(db) = db {
            cfg.dbname(db);
        }
        cfg.application_name(application_name);
        if cfg.get_connect_timeout().is_none() {
            cfg.connect_timeout(Duration::from_secs(10));
        }
        cfg.connect(NoTls).await.with_context(|| {
            format!(
                "connecting to server {} ({}) database {}",
                self.name,
                self.display(),
                db.or(self.config.get_dbname()).unwrap_or("postgres")
            )
        })
    }

    /// Connects and `LISTEN`s on `channel`; `on_notify` gets each notification's payload.
    /// The returned client must be kept: dropping it ends the session. Its connection task
    /// ends (and `on_closed` is called) when the session breaks.
    pub async fn listen(
        &self,
        db: Option<&str>,
        application_name: &str,
        channel: &str,
        on_notify: impl Fn(&str) + Send + 'static,
        on_closed: impl FnOnce() + Send + 'static,
    ) -> Result<Client> {
        use futures_util::StreamExt;
        let (client, mut conn) = self.open(db, application_name).await?;
        tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
            while let Some(Ok(m)) = messages.next().await {
                if let tokio_postgres::AsyncMessage::Notification(n) = m {
                    on_notify(n.payload());
                }
            }
            on_closed();
        });
        client.batch_execute(&format!("LISTEN {}", pgplane_core::ident::quote_ident(channel))).await?;
        Ok(client)
    }
}

fn secure_options(url_options: Option<&str>) -> String {
    match url_options.map(str::trim).filter(|o| !o.is_empty()) {
        // Later settings win: ours comes last.
        Some(o) => format!("{o} {SECURE_OPTIONS}"),
        None => SECURE_OPTIONS.to_string(),
    }
}

/// How pgplane logs in as the roles it manages (migrations run as their owner, never as the
/// admin after `SET ROLE`): each password is derived from the secret key at the role's
/// current generation (`pgplane.role_secrets` in the control database; 1 when never
/// rotated), exactly as `credentials` hands it out.
#[derive(Default)]
pub struct Logins {
    /// (server, role) → password.
    passwords: BTreeMap<(String, String), String>,
}

impl std::fmt::Debug for Logins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.passwords.keys()).finish()
    }
}

impl Logins {
    /// Passwords of `roles` (server, role) from `keys` and the generations recorded in
    /// `control` (`None`: no control database yet, every role at generation 1).
    pub async fn load<'r>(
        keys: &Keyring,
        control: Option<&Client>,
        roles: impl IntoIterator<Item = (&'r str, &'r str)>,
    ) -> Result<Logins> {
        let mut generations: BTreeMap<(String, String), i32> = BTreeMap::new();
        if let Some(c) = control {
            for r in c
                .query("SELECT server, role, generation FROM pgplane.role_secrets", &[])
                .await
                .context("reading password generations from the control database")?
            {
                generations.insert((r.get(0), r.get(1)), r.get(2));
            }
        }
        let passwords = roles
            .into_iter()
            .map(|(server, role)| {
                let key = (server.to_string(), role.to_string());
                let generation = generations.get(&key).copied().unwrap_or(1);
                let password = keys.password(server, role, generation);
                (key, password)
            })
            .collect();
        Ok(Logins { passwords })
    }

    /// [`Logins::load`] reading the generations from the control database on `control_server`
    /// (none yet: generation 1).
    pub async fn load_from<'r>(
        keys: &Keyring,
        control_server: &Target,
        roles: impl IntoIterator<Item = (&'r str, &'r str)>,
    ) -> Result<Logins> {
        let control = match control_server.connect(Some(crate::control::CONTROL_DB)).await {
            Ok(c) => Some(c),
            Err(e)
                if e.chain().any(|c| {
                    c.downcast_ref::<tokio_postgres::Error>()
                        .is_some_and(|e| e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_DATABASE))
                }) =>
            {
                None
            }
            Err(e) => return Err(e),
        };
        Logins::load(keys, control.as_ref(), roles).await
    }

    /// `server` logging in as `role`.
    pub fn target(&self, server: &Target, role: &str) -> Result<Target> {
        let password = self.passwords.get(&(server.name.clone(), role.to_string())).with_context(|| {
            format!(
                "role {role} on server {} is not a role of this environment, so pgplane cannot log in as it",
                server.name
            )
        })?;
        Ok(server.login_as(role, password))
    }
}

/// Why logging in as a managed role failed, and what to check.
pub fn login_error(e: anyhow::Error, role: &str) -> anyhow::Error {
    e.context(format!(
        "logging in as role {role} (migrations run as the owner role itself, never as the admin): the role needs \
         LOGIN, the password pgplane derives (`pgplane apply` sets it; PGPLANE_SECRET_KEY must be the key apply \
         used), a free connection under its CONNECTION LIMIT, and a pg_hba.conf line that lets it log in with a \
         password from this host"
    ))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Read,
    Apply,
    /// Runs migrations: not an apply session, so apply's reaper leaves it alone.
    Migrate,
    /// Builds templates and branch databases (also left alone by apply's reaper).
    Branch,
}

pub const APPLY_APPLICATION_PREFIX: &str = "pgplane-apply/";

/// `pgplane-apply/<installation>/<nonce>`: `installation` is the random id stored in the
/// control database (set once the lock is held and the schema is migrated, see
/// [`crate::control::ensure`]), `nonce` is random per process, so pid 1 in every
/// container still gets a name of its own.
static APPLY_TAG: std::sync::OnceLock<String> = std::sync::OnceLock::new();

fn nonce() -> &'static str {
    static NONCE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NONCE.get_or_init(|| {
        let mut bytes = [0u8; 6];
        let _ = std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes));
        let t =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        format!("{}{:08x}", pgplane_core::ident::hex(&bytes), t ^ std::process::id())
    })
}

pub fn set_apply_installation(id: &str) {
    let _ = APPLY_TAG.set(id.to_string());
}

/// The `LIKE` pattern matching every pgplane-apply session of this cluster.
pub fn apply_pattern() -> String {
    format!("{APPLY_APPLICATION_PREFIX}{}/%", APPLY_TAG.get().map(String::as_str).unwrap_or("unlocked"))
}

pub fn apply_application_name() -> String {
    format!("{APPLY_APPLICATION_PREFIX}{}/{}", APPLY_TAG.get().map(String::as_str).unwrap_or("unlocked"), nonce())
}

/// The servers of a manifest in order; the first holds the control database.
pub struct Servers {
    pub list: Vec<Target>,
}

impl Servers {
    /// Resolves the manifest's servers, starting the embedded one when none is listed.
    /// `keys` is asked for only when the embedded server is needed.
    pub fn resolve<'k>(
        manifest: &Manifest,
        local: &LocalServer,
        keys: impl FnOnce() -> Result<&'k Keyring>,
    ) -> Result<Servers> {
        if manifest.servers.is_empty() {
            return Ok(Servers { list: vec![start_local(local, keys()?)?] });
        }
        let list = manifest.servers.iter().map(|s| Target::from_url(&s.name, &s.url)).collect::<Result<Vec<_>>>()?;
        Ok(Servers { list })
    }

    pub fn first(&self) -> &Target {
        &self.list[0]
    }

    pub fn get(&self, name: &str) -> Result<&Target> {
        self.list.iter().find(|t| t.name == name).with_context(|| format!("unknown server {name}"))
    }

    /// Admin connections for reading and locking (the executor opens its own for the plan).
    pub async fn connect_all(&self) -> Result<BTreeMap<String, Client>> {
        let mut out = BTreeMap::new();
        for t in &self.list {
            out.insert(t.name.clone(), t.connect(None).await?);
        }
        Ok(out)
    }
}

pub fn start_local(local: &LocalServer, keys: &Keyring) -> Result<Target> {
    local.start(keys, None).context("starting the embedded local server (no `servers:` in the manifest)")?;
    Target::from_url(LOCAL_SERVER, &local.url(keys)?)
}
