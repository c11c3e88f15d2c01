//! Checking OS images: digests (sha512 from Flatcar's `.DIGESTS` files,
//! sha256 from Fedora CoreOS stream metadata) and detached OpenPGP
//! signatures against the keys the fleet trusts (`os.signing_keys`).
//! rpgp (`pgp`) is a maintained, pure-Rust OpenPGP implementation, so no
//! C library or `gpg` binary is needed at run time.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use pgp::composed::{Deserializable, DetachedSignature, SignedPublicKey};
use pgp::types::KeyDetails;
use sha2::{Digest as _, Sha256, Sha512};

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("signing key {}: {message}", path.display())]
    Key { path: PathBuf, message: String },
    #[error("no signing keys are configured: set os.signing_keys in inventory/fleet.yaml to the vendor's OpenPGP public key file(s); metalherd does not cache unsigned images")]
    NoKeys,
    #[error("{file}: {message}")]
    Signature { file: String, message: String },
    #[error("{file}: {algorithm} digest mismatch: expected {expected}, got {actual}")]
    Digest {
        file: String,
        algorithm: &'static str,
        expected: String,
        actual: String,
    },
    #[error("{file}: {message}")]
    Digests { file: String, message: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A digest algorithm and its expected hex value.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Expected {
    pub algorithm: Algorithm,
    pub hex: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    Sha512,
    Sha256,
}

impl Algorithm {
    pub fn name(&self) -> &'static str {
        match self {
            Algorithm::Sha512 => "sha512",
            Algorithm::Sha256 => "sha256",
        }
    }
}

/// sha512 and sha256 of a file, read once.
pub struct FileDigests {
    pub sha512: String,
    pub sha256: String,
    pub size: u64,
}

pub fn digest_file(path: &Path) -> Result<FileDigests, VerifyError> {
    let io = |source| VerifyError::Io {
        path: path.into(),
        source,
    };
    let mut file = File::open(path).map_err(io)?;
    let (mut s512, mut s256) = (Sha512::new(), Sha256::new());
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        s512.update(&buf[..n]);
        s256.update(&buf[..n]);
        size += n as u64;
    }
    Ok(FileDigests {
        sha512: hex::encode(s512.finalize()),
        sha256: hex::encode(s256.finalize()),
        size,
    })
}

impl FileDigests {
    /// Compares with `expected`, naming `file` on a mismatch.
    pub fn check(&self, file: &str, expected: &Expected) -> Result<(), VerifyError> {
        let actual = match expected.algorithm {
            Algorithm::Sha512 => &self.sha512,
            Algorithm::Sha256 => &self.sha256,
        };
        if actual.eq_ignore_ascii_case(&expected.hex) {
            Ok(())
        } else {
            Err(VerifyError::Digest {
                file: file.to_string(),
                algorithm: expected.algorithm.name(),
                expected: expected.hex.clone(),
                actual: actual.clone(),
            })
        }
    }
}

/// Finds `name`'s sha512 in a Flatcar `.DIGESTS` file: sections headed
/// `# SHA512 HASH`, lines `<hex>  <name>`.
pub fn sha512_from_digests(
    digests: &str,
    digests_name: &str,
    name: &str,
) -> Result<Expected, VerifyError> {
    let mut in_sha512 = false;
    for line in digests.lines() {
        let line = line.trim();
        if let Some(header) = line.strip_prefix('#') {
            in_sha512 = header.trim().eq_ignore_ascii_case("SHA512 HASH");
            continue;
        }
        let mut parts = line.split_whitespace();
        if let (Some(hex), Some(file)) = (parts.next(), parts.next()) {
            if in_sha512 && file.trim_start_matches('*') == name {
                if hex.len() != 128 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(VerifyError::Digests {
                        file: digests_name.to_string(),
                        message: format!("the SHA512 entry for {name} is not 128 hex digits"),
                    });
                }
                return Ok(Expected {
                    algorithm: Algorithm::Sha512,
                    hex: hex.to_ascii_lowercase(),
                });
            }
        }
    }
    Err(VerifyError::Digests {
        file: digests_name.to_string(),
        message: format!("no SHA512 entry for {name}"),
    })
}

/// The OpenPGP public keys an image must be signed by (any one of them).
pub struct SigningKeys {
    keys: Vec<(PathBuf, SignedPublicKey)>,
}

fn armored(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .skip_while(|b| b.is_ascii_whitespace())
        .take(5)
        .eq(b"-----".iter())
}

impl SigningKeys {
    /// Reads every key file; each must hold a valid public key whose
    /// subkey bindings verify.
    pub fn load(paths: &[PathBuf]) -> Result<Self, VerifyError> {
        if paths.is_empty() {
            return Err(VerifyError::NoKeys);
        }
        let mut keys = Vec::new();
        for path in paths {
            let key_err = |message: String| VerifyError::Key {
                path: path.clone(),
                message,
            };
            let bytes = std::fs::read(path).map_err(|e| key_err(format!("cannot read: {e}")))?;
            let key = if armored(&bytes) {
                SignedPublicKey::from_armor_single(bytes.as_slice()).map(|(k, _)| k)
            } else {
                SignedPublicKey::from_bytes(bytes.as_slice())
            }
            .map_err(|e| key_err(format!("not an OpenPGP public key: {e}")))?;
            key.verify_bindings()
                .map_err(|e| key_err(format!("its self-signatures do not verify: {e}")))?;
            keys.push((path.clone(), key));
        }
        Ok(SigningKeys { keys })
    }

    /// Checks the detached signature `sig` over the file at `data`.
    /// Returns the fingerprint of the key that made it.
    pub fn verify(&self, file: &str, sig: &[u8], data: &Path) -> Result<String, VerifyError> {
        let sig_err = |message: String| VerifyError::Signature {
            file: file.to_string(),
            message,
        };
        let signature = if armored(sig) {
            DetachedSignature::from_armor_single(sig).map(|(s, _)| s)
        } else {
            DetachedSignature::from_bytes(sig)
        }
        .map_err(|e| {
            sig_err(format!(
                "the signature file is not an OpenPGP signature: {e}"
            ))
        })?
        .signature;

        let issuers: Vec<String> = signature
            .issuer_fingerprint()
            .iter()
            .map(|f| hex::encode_upper(f.as_bytes()))
            .chain(
                signature
                    .issuer_key_id()
                    .iter()
                    .map(|k| hex::encode_upper(k.as_ref())),
            )
            .collect();
        for (path, key) in &self.keys {
            let candidates = std::iter::once((key.fingerprint(), key.legacy_key_id(), None)).chain(
                key.public_subkeys
                    .iter()
                    .map(|s| (s.key.fingerprint(), s.key.legacy_key_id(), Some(s))),
            );
            for (fingerprint, key_id, subkey) in candidates {
                let fp = hex::encode_upper(fingerprint.as_bytes());
                let id = hex::encode_upper(key_id.as_ref());
                if !issuers.iter().any(|i| *i == fp || *i == id) {
                    continue;
                }
                let reader =
                    BufReader::new(File::open(data).map_err(|source| VerifyError::Io {
                        path: data.into(),
                        source,
                    })?);
                let checked = match subkey {
                    None => signature.verify(key, reader),
                    Some(sub) => signature.verify(&sub.key, reader),
                };
                return match checked {
                    Ok(()) => Ok(hex::encode_upper(key.fingerprint().as_bytes())),
                    Err(e) => Err(sig_err(format!(
                        "BAD signature by key {fp} (from {}): the file is not what was signed ({e})",
                        path.display()
                    ))),
                };
            }
        }
        let who = if issuers.is_empty() {
            "an unnamed key".to_string()
        } else {
            format!("key {}", issuers.join(" / "))
        };
        Err(sig_err(format!(
            "signed by {who}, which is not among os.signing_keys ({})",
            self.keys
                .iter()
                .map(|(p, _)| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGESTS: &str = "# MD5 HASH\nd41d8cd98f00b204e9800998ecf8427e  a.bin\n# SHA512 HASH\n";

    #[test]
    fn finds_the_sha512_entry_only() {
        let hex = "ab".repeat(64);
        let text = format!("{DIGESTS}{hex}  a.bin\n");
        let e = sha512_from_digests(&text, "a.bin.DIGESTS", "a.bin").unwrap();
        assert_eq!(e.hex, hex);
        let err = sha512_from_digests(DIGESTS, "a.bin.DIGESTS", "a.bin").unwrap_err();
        assert!(
            err.to_string().contains("no SHA512 entry for a.bin"),
            "{err}"
        );
        let short = format!("{DIGESTS}abcd  a.bin\n");
        assert!(sha512_from_digests(&short, "x", "a.bin").is_err());
    }

    #[test]
    fn no_keys_is_refused() {
        assert!(matches!(SigningKeys::load(&[]), Err(VerifyError::NoKeys)));
    }
}
