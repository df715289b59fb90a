//! Passwords. pgplane never stores a password: each one is derived from a secret key
//! with HMAC-SHA256 over (server, role, generation), and the server only ever receives a
//! SCRAM-SHA-256 verifier, so neither the control database nor the server's statement
//! log holds a password. Rotation bumps the generation kept in the control database.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The secret key: `PGPLANE_SECRET_KEY`, or `$PGPLANE_HOME/secret.key` (created on first
/// use with 256 random bits, mode 0600). Every pgplane process sharing a control database
/// must use the same key.
pub struct Keyring {
    key: Vec<u8>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keyring(<redacted>)")
    }
}

impl Keyring {
    pub fn load(home: &Path) -> Result<Keyring> {
        if let Ok(k) = std::env::var("PGPLANE_SECRET_KEY") {
            if k.len() < 32 {
                bail!("PGPLANE_SECRET_KEY is {} characters; use at least 32 random characters", k.len());
            }
            return Ok(Keyring { key: k.into_bytes() });
        }
        let path = home.join("secret.key");
        if !path.exists() {
            create_key_file(home, &path)?;
        }
        let text = fs::read_to_string(&path).with_context(|| format!("reading the secret key {}", path.display()))?;
        let key = URL_SAFE_NO_PAD.decode(text.trim()).with_context(|| {
            format!("the secret key {} is not valid base64; restore it from backup", path.display())
        })?;
        if key.len() < 32 {
            bail!("the secret key {} is too short; restore it from backup", path.display());
        }
        Ok(Keyring { key })
    }

    fn derive(&self, purpose: &str) -> String {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(purpose.as_bytes());
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    }

    /// The password of `role` on `server` at `generation` (43 URL-safe characters).
    pub fn password(&self, server: &str, role: &str, generation: i32) -> String {
        self.derive(&format!("pgplane/v1/password/{server}/{role}/{generation}"))
    }

    /// The superuser password of the embedded local server.
    pub fn local_admin_password(&self) -> String {
        self.derive("pgplane/v1/local-admin")
    }
}

/// A SCRAM-SHA-256 verifier for `password`, as stored in `pg_authid.rolpassword`.
pub fn scram_verifier(password: &str) -> String {
    postgres_protocol::password::scram_sha_256(password.as_bytes())
}

/// Creates the home folder private to its owner (0700), whatever the umask: it holds the
/// secret key and the embedded server. Its parent folders are created as usual (others may
/// need to pass through them); an existing home is left as it is.
pub fn create_home(home: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if home.is_dir() {
        return Ok(());
    }
    if let Some(parent) = home.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    match fs::DirBuilder::new().mode(0o700).create(home) {
        Ok(()) => {
            // The umask may have taken bits away (e.g. 0277): set exactly 0700.
            fs::set_permissions(home, fs::Permissions::from_mode(0o700))
                .with_context(|| format!("making {} private", home.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && home.is_dir() => Ok(()),
        Err(e) => Err(e).with_context(|| format!("creating the home folder {}", home.display())),
    }
}

fn create_key_file(home: &Path, path: &PathBuf) -> Result<()> {
    create_home(home)?;
    let mut bytes = [0u8; 32];
    fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)).context("reading /dev/urandom")?;
    // Write to a temporary file, then link it into place: two processes racing here
    // both end up reading the one key that won.
    let tmp = home.join(format!(".secret.key.{}", std::process::id()));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(URL_SAFE_NO_PAD.encode(bytes).as_bytes())?;
    f.sync_all()?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600))?;
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e).with_context(|| format!("creating the secret key {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derivation_is_stable_and_separated() {
        let k = Keyring { key: vec![7; 32] };
        assert_eq!(k.password("main", "dev_a", 1), k.password("main", "dev_a", 1));
        assert_ne!(k.password("main", "dev_a", 1), k.password("main", "dev_a", 2));
        assert_ne!(k.password("main", "dev_a", 1), k.password("main", "dev_b", 1));
        assert_eq!(k.password("main", "dev_a", 1).len(), 43);
        assert!(scram_verifier("x").starts_with("SCRAM-SHA-256$4096:"));
    }
}
