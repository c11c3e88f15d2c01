//! Vendors' checksum files: `<hex>  <name>` or `<hex> *<name>` lines
//! (`sha256sum` output, etcd's `SHA256SUMS`), or a bare hex digest for
//! one file (Kubernetes' `<archive>.sha512`). The algorithm follows from
//! the digest's length: 64 hex digits sha256, 128 sha512.

use crate::assets::verify::{Algorithm, Expected, VerifyError};

fn hex_digest(s: &str) -> Option<Expected> {
    if !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let algorithm = match s.len() {
        64 => Algorithm::Sha256,
        128 => Algorithm::Sha512,
        _ => return None,
    };
    Some(Expected {
        algorithm,
        hex: s.to_ascii_lowercase(),
    })
}

/// `name`'s digest in the checksum file `text` (called `file` in errors).
pub fn digest_for(text: &str, file: &str, name: &str) -> Result<Expected, VerifyError> {
    let bad = |message: String| VerifyError::Digests {
        file: file.to_string(),
        message,
    };
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    for line in &lines {
        let mut parts = line.split_whitespace();
        if let (Some(hex), Some(entry)) = (parts.next(), parts.next()) {
            let entry = entry.trim_start_matches('*');
            if entry == name || entry.rsplit('/').next() == Some(name) {
                return hex_digest(hex).ok_or_else(|| {
                    bad(format!(
                        "the entry for {name} is not a sha256 or sha512 hex digest"
                    ))
                });
            }
        }
    }
    if let [only] = lines.as_slice() {
        if let Some(e) = hex_digest(only) {
            return Ok(e);
        }
    }
    Err(bad(format!("no entry for {name}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_lines_and_bare_digests() {
        let a = "ab".repeat(32);
        let b = "CD".repeat(64);
        let text = format!("# made by sha256sum\n{a}  other.tar.gz\n{b} *etcd.tar.gz\n");
        let e = digest_for(&text, "SUMS", "etcd.tar.gz").unwrap();
        assert_eq!(e.algorithm, Algorithm::Sha512);
        assert_eq!(e.hex, b.to_ascii_lowercase());
        let e = digest_for(&format!("{a}\n"), "x.sha256", "k.tar.gz").unwrap();
        assert_eq!((e.algorithm, e.hex), (Algorithm::Sha256, a.clone()));
    }

    #[test]
    fn missing_or_malformed_entries_are_refused() {
        let a = "ab".repeat(32);
        let err = digest_for(&format!("{a}  other\n{a}  more\n"), "SUMS", "etcd").unwrap_err();
        assert!(err.to_string().contains("SUMS: no entry for etcd"), "{err}");
        let err = digest_for("abc  etcd\n", "SUMS", "etcd").unwrap_err();
        assert!(err.to_string().contains("not a sha256 or sha512"), "{err}");
        assert!(digest_for("xyz\n", "SUMS", "etcd").is_err());
    }
}
