//! Secrets at rest: PKI private keys, SSH host keys and metalherd's own
//! key are sealed with `state.encryption_key` (an age X25519 identity,
//! `AGE-SECRET-KEY-1…`, read from `env:NAME` or `file:PATH`) before they
//! reach a backend, and opened when read. Without a key they are stored as
//! they are (allowed for the local backend only; files stay 0600).
//!
//! A sealed object is an age file (`age-encryption.org/v1` header), so
//! `age -d -i KEY` can open it outside metalherd.

use std::path::Path;
use std::str::FromStr;

use secrecy::ExposeSecret;
use zeroize::Zeroizing;

use super::StateError;
use crate::fleet::SecretRef;

const AGE_HEADER: &[u8] = b"age-encryption.org/v1\n";

/// Seals and opens secret objects.
pub struct Sealer {
    identity: Option<age::x25519::Identity>,
    /// Where the key came from, for messages (never the key itself).
    source: String,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("source", &self.source)
            .field("identity", &self.identity.as_ref().map(|_| "****"))
            .finish()
    }
}

fn sealed_err(key: &str, message: impl Into<String>) -> StateError {
    StateError::Sealed {
        key: key.to_string(),
        message: message.into(),
    }
}

impl Sealer {
    /// No encryption.
    pub fn none() -> Sealer {
        Sealer {
            identity: None,
            source: "none".into(),
        }
    }

    /// The identity `reference` names (`file:` paths relative to the fleet).
    pub fn from_ref(reference: &SecretRef, fleet_root: &Path) -> Result<Sealer, StateError> {
        let what = format!("state.encryption_key ({reference})");
        let text = Zeroizing::new(match reference {
            SecretRef::Env(name) => std::env::var(name).map_err(|_| {
                sealed_err(&what, format!("environment variable {name} is not set"))
            })?,
            SecretRef::File(path) => {
                let path = fleet_root.join(path);
                crate::fsutil::read_private(&path).map_err(|e| sealed_err(&what, e.to_string()))?
            }
        });
        // An age key file has comment lines; the identity is the line that
        // starts with AGE-SECRET-KEY-.
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with("AGE-SECRET-KEY-"))
            .ok_or_else(|| sealed_err(&what, "holds no age identity (AGE-SECRET-KEY-1…)"))?;
        let identity = age::x25519::Identity::from_str(line)
            .map_err(|_| sealed_err(&what, "is not a valid age identity"))?;
        Ok(Sealer {
            identity: Some(identity),
            source: reference.to_string(),
        })
    }

    /// A new identity, as `age-keygen` writes it (for `state keygen`).
    pub fn generate_identity() -> (Zeroizing<String>, String) {
        let identity = age::x25519::Identity::generate();
        let public = identity.to_public().to_string();
        let secret = Zeroizing::new(identity.to_string().expose_secret().to_string());
        (secret, public)
    }

    pub fn enabled(&self) -> bool {
        self.identity.is_some()
    }

    /// What the object `key` is stored as.
    pub fn seal(&self, key: &str, plain: &[u8]) -> Result<Vec<u8>, StateError> {
        let Some(identity) = &self.identity else {
            return Ok(plain.to_vec());
        };
        age::encrypt(&identity.to_public(), plain)
            .map_err(|e| sealed_err(key, format!("cannot encrypt: {e}")))
    }

    /// The plain contents of the stored object `key`.
    pub fn open(&self, key: &str, stored: &[u8]) -> Result<Zeroizing<Vec<u8>>, StateError> {
        if !is_sealed(stored) {
            return Ok(Zeroizing::new(stored.to_vec()));
        }
        let Some(identity) = &self.identity else {
            return Err(sealed_err(
                key,
                "is encrypted, but fleet.yaml names no state.encryption_key",
            ));
        };
        age::decrypt(identity, stored).map(Zeroizing::new).map_err(|e| {
            sealed_err(
                key,
                format!(
                    "cannot decrypt with the key from {}: {e} (is it the key the state was written with?)",
                    self.source
                ),
            )
        })
    }
}

/// Whether `stored` is an age file.
pub fn is_sealed(stored: &[u8]) -> bool {
    stored.starts_with(AGE_HEADER)
}

/// Writes a new identity to `path` (created 0600, in a 0700 directory if
/// that is new; an existing file is never overwritten); returns its
/// public key.
pub fn write_identity(path: &std::path::Path) -> anyhow::Result<String> {
    use anyhow::Context;
    let (secret, public) = Sealer::generate_identity();
    let text = format!("# public key: {public}\n{}\n", secret.as_str());
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            crate::fsutil::create_dir_with_mode(dir, 0o700)
                .with_context(|| format!("creating {}", dir.display()))?;
        }
    }
    crate::fsutil::create_file(path, text.as_bytes(), 0o600).with_context(|| {
        format!(
            "writing {} (an existing key is never overwritten)",
            path.display()
        )
    })?;
    Ok(public)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer_with(secret: &str) -> Sealer {
        let dir = tempfile::tempdir().unwrap();
        crate::fsutil::write_atomic(
            &dir.path().join("k"),
            format!("# created: now\n{secret}\n").as_bytes(),
            0o600,
        )
        .unwrap();
        Sealer::from_ref(&SecretRef::File("k".into()), dir.path()).unwrap()
    }

    #[test]
    fn round_trip_and_wrong_key() {
        let (secret, _) = Sealer::generate_identity();
        let sealer = sealer_with(&secret);
        let sealed = sealer
            .seal("secrets/x", b"-----BEGIN PRIVATE KEY-----")
            .unwrap();
        assert!(is_sealed(&sealed));
        assert!(!sealed.windows(7).any(|w| w == b"PRIVATE"));
        assert_eq!(
            &*sealer.open("secrets/x", &sealed).unwrap(),
            b"-----BEGIN PRIVATE KEY-----"
        );
        let (other, _) = Sealer::generate_identity();
        let err = sealer_with(&other).open("secrets/x", &sealed).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("secrets/x: cannot decrypt"), "{msg}");
        assert!(!msg.contains("AGE-SECRET-KEY"), "{msg}");
        let err = Sealer::none().open("secrets/x", &sealed).unwrap_err();
        assert!(err.to_string().contains("names no state.encryption_key"));
        assert!(!format!("{sealer:?}").contains("AGE-SECRET"));
    }

    #[test]
    fn a_bad_key_file_is_named_not_shown() {
        let dir = tempfile::tempdir().unwrap();
        crate::fsutil::write_atomic(&dir.path().join("k"), b"AGE-SECRET-KEY-1NOTAKEY\n", 0o600)
            .unwrap();
        let err = Sealer::from_ref(&SecretRef::File("k".into()), dir.path()).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("file:k") && msg.contains("not a valid age identity"),
            "{msg}"
        );
        assert!(!msg.contains("NOTAKEY"), "{msg}");
    }
}
