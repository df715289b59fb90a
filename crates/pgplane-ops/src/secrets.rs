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
    /// Where it came from, for messages: `PGPLANE_SECRET_KEY` or the file.
    pub source: String,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keyring(<redacted>)")
    }
}

impl Keyring {
    pub fn load(home: &Path) -> Result<Keyring> {
        let path = home.join("secret.key");
        if std::env::var_os("PGPLANE_SECRET_KEY").is_none() && !path.exists() {
            create_key_file(home, &path)?;
        }
        Keyring::load_existing(home)?.context("the secret key vanished while it was created; run again")
    }

    /// The secret key if there is one (`PGPLANE_SECRET_KEY` or the key file); never
    /// creates one (read-only commands).
    pub fn load_existing(home: &Path) -> Result<Option<Keyring>> {
        if let Ok(k) = std::env::var("PGPLANE_SECRET_KEY") {
            if k.len() < 32 {
                bail!("PGPLANE_SECRET_KEY is {} characters; use at least 32 random characters", k.len());
            }
            return Ok(Some(Keyring { key: k.into_bytes(), source: "PGPLANE_SECRET_KEY".into() }));
        }
        let path = home.join("secret.key");
        if !path.exists() {
            return Ok(None);
        }
        let text = fs::read_to_string(&path).with_context(|| format!("reading the secret key {}", path.display()))?;
        let key = URL_SAFE_NO_PAD.decode(text.trim()).with_context(|| {
            format!("the secret key {} is not valid base64; restore it from backup", path.display())
        })?;
        if key.len() < 32 {
            bail!("the secret key {} is too short; restore it from backup", path.display());
        }
        Ok(Some(Keyring { key, source: path.display().to_string() }))
    }

    /// Names the key without revealing it: an HMAC of a fixed text, 16 characters.
    pub fn fingerprint(&self) -> String {
        self.derive("pgplane/v1/key-fingerprint")[..16].to_string()
    }

    /// A token saying "this verifier was found to match the password of `role` at
    /// `generation`" that only the holder of this key can make (see
    /// `control::store_verified`).
    pub fn verified_token(&self, server: &str, role: &str, generation: i32, verifier: &str) -> String {
        self.derive(&format!("pgplane/v1/verified/{server}/{role}/{generation}/{verifier}"))
    }

    fn derive(&self, purpose: &str) -> String {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(purpose.as_bytes());
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    }

    /// The key `pgplane serve` signs console sessions with: the same in every replica that
    /// shares this secret key (so any replica accepts any replica's cookie), never the key.
    pub fn console_session_key(&self) -> [u8; 32] {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(b"pgplane/v1/console-sessions");
        mac.finalize().into_bytes().into()
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

/// More iterations than pgplane (4096) or PostgreSQL's default ever use: such a verifier
/// was not set by pgplane, and deriving it could stall a plan (a role may set any
/// verifier string as its own password).
const MAX_SCRAM_ITERATIONS: u32 = 100_000;

/// Whether `stored` (`pg_authid.rolpassword`: `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`)
/// is a verifier of `password`: the SCRAM keys are derived again with the stored salt and
/// iteration count (RFC 5802) and both compared. Anything else (an MD5 hash, plain text,
/// a malformed entry) is not.
pub fn verifier_matches(password: &str, stored: &str) -> bool {
    use base64::engine::general_purpose::STANDARD;
    use sha2::Digest;
    let parse = || {
        let rest = stored.strip_prefix("SCRAM-SHA-256$")?;
        let (params, keys) = rest.split_once('$')?;
        let (iterations, salt) = params.split_once(':')?;
        let (stored_key, server_key) = keys.split_once(':')?;
        let iterations: u32 = iterations.parse().ok().filter(|i| (1..=MAX_SCRAM_ITERATIONS).contains(i))?;
        Some((
            iterations,
            STANDARD.decode(salt).ok()?,
            STANDARD.decode(stored_key).ok()?,
            STANDARD.decode(server_key).ok()?,
        ))
    };
    let Some((iterations, salt, stored_key, server_key)) = parse() else { return false };
    let hmac = |key: &[u8], data: &[u8]| {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
        mac.update(data);
        mac.finalize().into_bytes()
    };
    // Hi(): PBKDF2-HMAC-SHA-256 with one block. pgplane's passwords are ASCII, which
    // SASLprep leaves as they are.
    let keyed = <Hmac<Sha256> as KeyInit>::new_from_slice(password.as_bytes()).expect("HMAC takes any key length");
    let mut mac = keyed.clone();
    mac.update(&salt);
    mac.update(&1u32.to_be_bytes());
    let mut u = mac.finalize().into_bytes();
    let mut salted = u;
    for _ in 1..iterations {
        let mut mac = keyed.clone();
        mac.update(&u);
        u = mac.finalize().into_bytes();
        for (s, b) in salted.iter_mut().zip(u.iter()) {
            *s ^= b;
        }
    }
    let client_key = hmac(&salted, b"Client Key");
    let want_stored = Sha256::digest(client_key);
    let want_server = hmac(&salted, b"Server Key");
    want_stored.as_slice() == stored_key.as_slice() && want_server.as_slice() == server_key.as_slice()
}

/// Whether this process's secret key is the one the control database's passwords derive
/// from. `recorded`: the fingerprint in the control database; `checked`/`differing`: how
/// many managed roles' passwords were compared and how many did not match. An error names
/// the key and what to do, so pgplane never hands out (or sets) passwords of another key.
pub fn check_key(
    recorded: Option<&str>,
    keys: Option<&Keyring>,
    home: &Path,
    checked: usize,
    differing: usize,
    accept_new: bool,
) -> Result<()> {
    let fix = "use the key every pgplane sharing this control database uses (PGPLANE_SECRET_KEY or \
               $PGPLANE_HOME/secret.key, restored from backup); if the key was replaced on purpose, \
               `pgplane apply --new-secret-key` sets every managed role's password anew";
    match (recorded, keys) {
        _ if accept_new => Ok(()),
        (Some(fp), None) => bail!(
            "no secret key: PGPLANE_SECRET_KEY is not set and {} does not exist, but the passwords of this \
             control database derive from key {fp}; {fix}",
            home.join("secret.key").display()
        ),
        (Some(fp), Some(k)) if k.fingerprint() != fp => bail!(
            "wrong secret key: {} has fingerprint {}, but the passwords of this control database derive from \
             key {fp}; {fix}",
            k.source,
            k.fingerprint()
        ),
        (None, Some(k)) if checked >= 2 && differing == checked => bail!(
            "every managed role's password ({checked} checked) differs from what the secret key in {} (fingerprint {}) \
             derives: most likely this is not the key they were made with; {fix}",
            k.source,
            k.fingerprint()
        ),
        _ => Ok(()),
    }
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
        let k = Keyring { key: vec![7; 32], source: "test".into() };
        assert_eq!(k.password("main", "dev_a", 1), k.password("main", "dev_a", 1));
        assert_ne!(k.password("main", "dev_a", 1), k.password("main", "dev_a", 2));
        assert_ne!(k.password("main", "dev_a", 1), k.password("main", "dev_b", 1));
        assert_eq!(k.password("main", "dev_a", 1).len(), 43);
        assert!(scram_verifier("x").starts_with("SCRAM-SHA-256$4096:"));
        assert_ne!(k.fingerprint(), Keyring { key: vec![8; 32], source: "test".into() }.fingerprint());
    }

    #[test]
    fn scram_verifiers_are_checked_against_the_password() {
        let v = scram_verifier("right");
        assert!(verifier_matches("right", &v));
        assert!(!verifier_matches("wrong", &v));
        for bad in ["md5abcdef", "", "SCRAM-SHA-256$x", "SCRAM-SHA-256$999999999:AAAA$AAAA:AAAA"] {
            assert!(!verifier_matches("right", bad), "{bad}");
        }
    }
}
