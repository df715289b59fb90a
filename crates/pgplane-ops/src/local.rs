//! The embedded local server: found binaries, `initdb` into `$PGPLANE_HOME/local`, started
//! on loopback (as the `postgres` OS user when pgplane runs as root) and reused.

use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::secrets::Keyring;

pub struct LocalServer {
    dir: PathBuf,
}

#[derive(Debug, Serialize)]
pub struct LocalStatus {
    pub running: bool,
    pub initialized: bool,
    pub data_dir: String,
    pub port: Option<u16>,
    pub pid: Option<u32>,
    pub version: Option<String>,
    pub log_file: String,
}

/// The OS user that runs the server when pgplane runs as root (initdb refuses root).
const SERVER_OS_USER: &str = "postgres";

impl LocalServer {
    pub fn new(home: &Path) -> LocalServer {
        LocalServer { dir: home.join("local") }
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn log_file(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    fn port_file(&self) -> PathBuf {
        self.dir.join("port")
    }

    pub fn port(&self) -> Option<u16> {
        fs::read_to_string(self.port_file()).ok()?.trim().parse().ok()
    }

    /// The admin URL (superuser `postgres` on 127.0.0.1). Holds the password.
    pub fn url(&self, keys: &Keyring) -> Result<String> {
        let port = self.port().context("the local server was never started; run `pgplane local start`")?;
        Ok(format!("postgresql://postgres:{}@127.0.0.1:{port}/postgres", keys.local_admin_password()))
    }

    pub fn status(&self) -> Result<LocalStatus> {
        let data = self.data_dir();
        let initialized = data.join("PG_VERSION").exists();
        let pid = if initialized { running_pid(&data) } else { None };
        Ok(LocalStatus {
            running: pid.is_some(),
            initialized,
            data_dir: data.display().to_string(),
            port: self.port(),
            pid,
            version: fs::read_to_string(data.join("PG_VERSION")).ok().map(|s| s.trim().to_string()),
            log_file: self.log_file().display().to_string(),
        })
    }

    /// Starts the server (initialising it first if needed); returns at once when it runs.
    pub fn start(&self, keys: &Keyring, port: Option<u16>) -> Result<LocalStatus> {
        if let Some(home) = self.dir.parent() {
            crate::secrets::create_home(home)?;
        }
        match fs::create_dir(&self.dir) {
            Ok(()) => fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700))
                .with_context(|| format!("making {} private", self.dir.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).with_context(|| format!("creating {}", self.dir.display())),
        }
        let lock = fs::File::create(self.dir.join(".lock")).context("creating the local server lock file")?;
        lock.lock().context("locking the local server folder")?;
        let result = self.start_locked(keys, port);
        let _ = lock.unlock();
        result
    }

    fn start_locked(&self, keys: &Keyring, port: Option<u16>) -> Result<LocalStatus> {
        let bin = find_bindir()?;
        let major = server_major(&bin)?;
        let runner = Runner::new()?;
        runner.prepare_dir(&self.dir)?;
        let data = self.data_dir();
        match fs::read_to_string(data.join("PG_VERSION")) {
            Ok(v) if v.trim() != major => bail!(
                "the data folder {} was initialised by PostgreSQL {}, but the binaries found in {} are PostgreSQL {major}; \
                 set PGPLANE_PG_BINDIR to PostgreSQL {} binaries, or move the folder away to start afresh",
                data.display(),
                v.trim(),
                bin.display(),
                v.trim()
            ),
            Ok(_) => {}
            Err(_) => self.initdb(&runner, &bin, keys)?,
        }
        if let Some(pid) = running_pid(&data) {
            if port.is_some_and(|p| Some(p) != self.port()) {
                bail!(
                    "the local server already runs on port {} (pid {pid}); stop it first to change the port",
                    self.port().unwrap_or(0)
                );
            }
            return self.status();
        }
        let port = match port.or_else(|| std::env::var("PGPLANE_LOCAL_PORT").ok().and_then(|p| p.parse().ok())) {
            Some(p) => p,
            None => match self.port() {
                Some(p) => p,
                None => free_port()?,
            },
        };
        if TcpListener::bind(("127.0.0.1", port)).is_err() {
            bail!(
                "port {port} on 127.0.0.1 is taken by another program; choose another with \
                 `pgplane local start --port N` (or PGPLANE_LOCAL_PORT=N)"
            );
        }
        fs::write(self.port_file(), port.to_string()).context("saving the local server port")?;
        let mut opts = format!("-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories=''");
        if let Ok(extra) = std::env::var("PGPLANE_LOCAL_OPTIONS") {
            opts.push(' ');
            opts.push_str(&extra);
        }
        let out = runner.run(
            &bin.join("pg_ctl"),
            &[
                "start".as_ref(),
                "-D".as_ref(),
                data.as_os_str(),
                "-l".as_ref(),
                self.log_file().as_os_str(),
                "-w".as_ref(),
                "-t".as_ref(),
                "120".as_ref(),
                "-o".as_ref(),
                opts.as_ref(),
            ],
        )?;
        if !out.status.success() {
            let log = fs::read_to_string(self.log_file()).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(8).collect::<Vec<_>>().into_iter().rev().collect();
            bail!(
                "the local server did not start: {}\n{}\n(log: {})",
                String::from_utf8_lossy(&out.stderr).trim(),
                tail.join("\n"),
                self.log_file().display()
            );
        }
        self.status()
    }

    fn initdb(&self, runner: &Runner, bin: &Path, keys: &Keyring) -> Result<()> {
        let data = self.data_dir();
        let pwfile = self.dir.join(".pwfile");
        let _ = fs::remove_file(&pwfile);
        {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&pwfile)
                .context("writing the initdb password file")?;
            f.write_all(keys.local_admin_password().as_bytes()).context("writing the initdb password file")?;
        }
        runner.chown(&pwfile)?;
        let out = runner.run(
            &bin.join("initdb"),
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-U".as_ref(),
                "postgres".as_ref(),
                "--auth=scram-sha-256".as_ref(),
                "--pwfile".as_ref(),
                pwfile.as_os_str(),
                "-E".as_ref(),
                "UTF8".as_ref(),
                "--locale=C".as_ref(),
                "--no-sync".as_ref(),
            ],
        );
        let _ = fs::remove_file(&pwfile);
        let out = out?;
        if !out.status.success() {
            let _ = fs::remove_dir_all(&data);
            bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(())
    }

    pub fn stop(&self) -> Result<bool> {
        let data = self.data_dir();
        if running_pid(&data).is_none() {
            return Ok(false);
        }
        let bin = find_bindir()?;
        let runner = Runner::new()?;
        let out = runner.run(
            &bin.join("pg_ctl"),
            &["stop".as_ref(), "-D".as_ref(), data.as_os_str(), "-m".as_ref(), "fast".as_ref(), "-w".as_ref()],
        )?;
        if !out.status.success() {
            bail!("pg_ctl stop failed: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(true)
    }
}

/// The postmaster's pid if `postmaster.pid` names a live process.
fn running_pid(data: &Path) -> Option<u32> {
    let text = fs::read_to_string(data.join("postmaster.pid")).ok()?;
    let pid: u32 = text.lines().next()?.trim().parse().ok()?;
    Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
}

fn free_port() -> Result<u16> {
    let l = TcpListener::bind(("127.0.0.1", 0)).context("finding a free port on 127.0.0.1")?;
    Ok(l.local_addr()?.port())
}

/// Finds the server binaries: `PGPLANE_PG_BINDIR`, then `PATH`, `pg_config --bindir`,
/// and the newest `/usr/lib/postgresql/*/bin`.
pub fn find_bindir() -> Result<PathBuf> {
    let has_server =
        |d: &Path| d.join("initdb").is_file() && d.join("pg_ctl").is_file() && d.join("postgres").is_file();
    if let Ok(dir) = std::env::var("PGPLANE_PG_BINDIR") {
        let dir = PathBuf::from(dir);
        if has_server(&dir) {
            return Ok(dir);
        }
        bail!(
            "PGPLANE_PG_BINDIR={} holds no PostgreSQL server binaries (initdb, pg_ctl, postgres); \
             point it at a folder such as /usr/lib/postgresql/15/bin, or install the server with \
             `apt-get install postgresql` (Debian/Ubuntu)",
            dir.display()
        );
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if has_server(&dir) {
                return Ok(dir);
            }
        }
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").stderr(Stdio::null()).output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && has_server(&dir) {
            return Ok(dir);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            has_server(&bin).then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, dir)) = versions.pop() {
        return Ok(dir);
    }
    bail!(
        "no PostgreSQL server binaries found (looked in PATH, `pg_config --bindir` and /usr/lib/postgresql/*/bin); \
         install them with `apt-get install postgresql` (Debian/Ubuntu), or set PGPLANE_PG_BINDIR, \
         or give the manifest a `servers:` entry with the URL of an existing server"
    )
}

fn server_major(bin: &Path) -> Result<String> {
    let out = Command::new(bin.join("postgres")).arg("--version").output().context("running postgres --version")?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"
    let version = text.split_whitespace().nth(2).context("unexpected `postgres --version` output")?;
    Ok(version.split('.').next().unwrap_or(version).to_string())
}

/// Runs server commands directly, or as the `postgres` OS user when we are root.
struct Runner {
    as_user: Option<(u32, u32)>,
}

impl Runner {
    fn new() -> Result<Runner> {
        let uid = fs::metadata("/proc/self").context("reading /proc/self")?.uid();
        if uid != 0 {
            return Ok(Runner { as_user: None });
        }
        let passwd = fs::read_to_string("/etc/passwd").context("reading /etc/passwd")?;
        let ids = passwd.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&SERVER_OS_USER)).then(|| Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?)))?
        });
        match ids {
            Some(ids) => Ok(Runner { as_user: Some(ids) }),
            None => bail!(
                "pgplane runs as root, and PostgreSQL refuses to run as root, but there is no `{SERVER_OS_USER}` OS user; \
                 create it (apt-get install postgresql does) or run pgplane as another user"
            ),
        }
    }

    /// Makes `dir` (and everything in it) belong to the server user, and checks that user
    /// can reach it.
    fn prepare_dir(&self, dir: &Path) -> Result<()> {
        let Some((uid, gid)) = self.as_user else {
            return Ok(());
        };
        chown_tree(dir, uid, gid)?;
        // A home created private (0700, root's) closes `local/` to the server user: let
        // its group pass through (0710), without listing or reading anything in it.
        if let Some(home) = dir.parent() {
            let meta = fs::metadata(home).with_context(|| format!("reading {}", home.display()))?;
            if meta.uid() == 0 && meta.mode() & 0o777 == 0o700 {
                std::os::unix::fs::chown(home, None, Some(gid)).with_context(|| format!("chgrp {}", home.display()))?;
                fs::set_permissions(home, fs::Permissions::from_mode(0o710))
                    .with_context(|| format!("letting the server user through {}", home.display()))?;
            }
        }
        let ok = Command::new("runuser")
            .args(["-u", SERVER_OS_USER, "--", "test", "-w"])
            .arg(dir)
            .status()
            .context("running runuser")?
            .success();
        if !ok {
            bail!(
                "the `{SERVER_OS_USER}` OS user cannot reach {}: a parent folder is closed to other users. \
                 Set PGPLANE_HOME to a folder under a path others can traverse (e.g. /var/lib/pgplane or /tmp/pgplane)",
                dir.display()
            );
        }
        Ok(())
    }

    fn chown(&self, path: &Path) -> Result<()> {
        if let Some((uid, gid)) = self.as_user {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))
                .with_context(|| format!("chown {}", path.display()))?;
        }
        Ok(())
    }

    fn run(&self, program: &Path, args: &[&std::ffi::OsStr]) -> Result<Output> {
        let mut cmd = match self.as_user {
            None => Command::new(program),
            Some(_) => {
                let mut c = Command::new("runuser");
                c.args(["-u", SERVER_OS_USER, "--"]).arg(program);
                c
            }
        };
        cmd.args(args).stdin(Stdio::null()).current_dir("/");
        cmd.output().with_context(|| format!("running {}", program.display()))
    }
}

fn chown_tree(dir: &Path, uid: u32, gid: u32) -> Result<()> {
    let meta = fs::symlink_metadata(dir)?;
    if meta.uid() != uid {
        std::os::unix::fs::lchown(dir, Some(uid), Some(gid)).with_context(|| format!("chown {}", dir.display()))?;
    }
    if meta.is_dir() {
        for entry in fs::read_dir(dir)? {
            let p = entry?.path();
            // The server's own files already belong to it; only fix the top levels.
            if p.file_name().is_some_and(|n| n == "data") {
                let m = fs::symlink_metadata(&p)?;
                if m.uid() != uid {
                    chown_tree(&p, uid, gid)?;
                }
                continue;
            }
            chown_tree(&p, uid, gid)?;
        }
    }
    Ok(())
}
