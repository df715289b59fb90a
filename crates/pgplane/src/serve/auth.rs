//! Bearer tokens with a scope. Tokens are kept only as SHA-256 digests and compared in
//! constant time against every configured token (no early exit), so neither the memory
//! of the process nor the time of a request tells anything about them.

use std::path::Path;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What a token may do: `read` everything, or also change things (`admin`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    Read,
    Admin,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Admin => "admin",
        }
    }
}

pub struct Tokens {
    digests: Vec<(Scope, [u8; 32])>,
    /// Console sessions: `EXPIRY.HMAC(key, digest ‖ EXPIRY)` per token, so the console's
    /// cookie is not the bearer token (it opens no API route) and ends after
    /// [`SESSION_SECS`]. The key is derived from the secret key (see
    /// [`Tokens::use_session_key`]): every replica accepts every replica's cookie.
    session_key: [u8; 32],
}

/// How long a console session lasts.
pub const SESSION_SECS: u64 = 12 * 3600;

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Tokens shorter than this are refused: they would be guessable.
const MIN_TOKEN_LEN: usize = 16;

impl Tokens {
    /// From `--tokens-file` (one `scope:token` per line, `#` comments, blank lines) and
    /// `PGPLANE_TOKENS` (`scope:token,scope:token`); both may be given.
    pub fn load(file: Option<&Path>, env: Option<&str>) -> Result<Tokens> {
        let mut digests = Vec::new();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            for (i, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                digests.push(parse(line).with_context(|| format!("{}:{}", path.display(), i + 1))?);
            }
        }
        if let Some(env) = env {
            for (i, item) in env.split(',').map(str::trim).filter(|s| !s.is_empty()).enumerate() {
                digests.push(parse(item).with_context(|| format!("PGPLANE_TOKENS, entry {}", i + 1))?);
            }
        }
        let mut session_key = [0u8; 32];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut session_key))
            .context("reading /dev/urandom for the console's session key")?;
        Ok(Tokens { digests, session_key })
    }

    /// Signs console sessions with `key` (derived from the secret key, shared by replicas)
    /// instead of the random one `load` made.
    pub fn use_session_key(&mut self, key: [u8; 32]) {
        self.session_key = key;
    }

    /// The console cookie for a valid token, or `None`.
    pub fn session_for(&self, token: &str) -> Option<String> {
        self.scope_of(token)?;
        let expires = now_secs() + SESSION_SECS;
        Some(format!("{expires}.{}", pgplane_core::ident::hex(&session(&self.session_key, &digest(token), expires))))
    }

    /// The scope of an unexpired console cookie, compared in constant time like tokens.
    pub fn scope_of_session(&self, cookie: &str) -> Option<Scope> {
        let (expires, mac) = cookie.split_once('.')?;
        let expires: u64 = expires.parse().ok()?;
        if expires <= now_secs() || expires > now_secs() + SESSION_SECS {
            return None;
        }
        let bytes: Vec<u8> = (0..mac.len() / 2)
            .map(|i| mac.get(2 * i..2 * i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
            .collect::<Option<_>>()?;
        let presented: [u8; 32] = bytes.try_into().ok()?;
        let mut found: Option<Scope> = None;
        for (scope, d) in &self.digests {
            let equal: bool = session(&self.session_key, d, expires).ct_eq(&presented).into();
            if equal {
                found = found.max(Some(*scope));
            }
        }
        found
    }

    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    /// The scope of a presented token (the highest, should it be listed twice), if any.
    pub fn scope_of(&self, presented: &str) -> Option<Scope> {
        let digest = digest(presented);
        let mut found: Option<Scope> = None;
        for (scope, d) in &self.digests {
            let equal: bool = d.ct_eq(&digest).into();
            if equal {
                found = found.max(Some(*scope));
            }
        }
        found
    }
}

fn parse(item: &str) -> Result<(Scope, [u8; 32])> {
    let Some((scope, token)) = item.split_once(':') else {
        bail!("expected `scope:token` (scope `read` or `admin`)");
    };
    let scope = match scope.trim() {
        "read" => Scope::Read,
        "admin" => Scope::Admin,
        other => bail!("unknown scope {other:?}: use `read` or `admin`"),
    };
    let token = token.trim();
    if token.len() < MIN_TOKEN_LEN {
        bail!(
            "the {} token is {} characters long; use at least {MIN_TOKEN_LEN} (e.g. `openssl rand -hex 24`)",
            scope.as_str(),
            token.len()
        );
    }
    Ok((scope, digest(token)))
}

fn session(key: &[u8; 32], digest: &[u8; 32], expires: u64) -> [u8; 32] {
    use hmac::{Hmac, KeyInit, Mac};
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(digest);
    mac.update(&expires.to_le_bytes());
    mac.finalize().into_bytes().into()
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_from_env_and_file() {
        let dir = std::env::temp_dir().join(format!("pgplane-tokens-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("tokens");
        std::fs::write(&file, "# portal\nread:rrrrrrrrrrrrrrrrrrrr\n\nadmin:aaaaaaaaaaaaaaaaaaaa\n").expect("write");
        let t = Tokens::load(Some(&file), Some("read:eeeeeeeeeeeeeeeeeeee")).expect("tokens");
        assert_eq!(t.scope_of("rrrrrrrrrrrrrrrrrrrr"), Some(Scope::Read));
        assert_eq!(t.scope_of("aaaaaaaaaaaaaaaaaaaa"), Some(Scope::Admin));
        assert_eq!(t.scope_of("eeeeeeeeeeeeeeeeeeee"), Some(Scope::Read));
        assert_eq!(t.scope_of("aaaaaaaaaaaaaaaaaaa"), None);
        assert_eq!(t.scope_of(""), None);
        // Console cookies: not the token, valid for its scope, unknown otherwise.
        let cookie = t.session_for("aaaaaaaaaaaaaaaaaaaa").expect("session");
        assert!(!cookie.contains(&pgplane_core::ident::hex(b"aaaaaaaaaaaaaaaaaaaa")));
        assert_eq!(t.scope_of_session(&cookie), Some(Scope::Admin));
        assert_eq!(t.session_for("nope-nope-nope-nope"), None);
        assert_eq!(t.scope_of_session("00"), None);
        assert_eq!(t.scope_of_session(&cookie[..62]), None);
        std::fs::write(&file, "read:ok-but-fine-length\nwrite:xxxxxxxxxxxxxxxxxxxxxx\n").expect("write");
        let err = format!("{:#}", Tokens::load(Some(&file), None).err().expect("bad scope"));
        assert!(err.contains("tokens:2") && err.contains("unknown scope \"write\""), "{err}");
        let err = format!("{:#}", Tokens::load(None, Some("admin:short")).err().expect("short"));
        assert!(err.contains("PGPLANE_TOKENS, entry 1") && err.contains("at least 16"), "{err}");
        assert!(!err.contains("short\""), "the token itself is never echoed");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
