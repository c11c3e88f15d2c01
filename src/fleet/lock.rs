//! `assets.lock`: the digests of node software, recorded once and then
//! enforced, as `Cargo.lock` does for crates. The first `assets fetch` of
//! an extension that the fleet does not pin itself takes the digest from
//! the vendor's checksum file (its signature checked where one is
//! published) and writes it here; every later fetch must match, and
//! changing a pin is a reviewed diff of this file. `lab image` writes the
//! entries of the extensions it builds from Debian packages.
//!
//! The file lives in the fleet directory, beside `inventory/`, and is
//! committed. JSON, keys sorted, one field a line: diffs stay readable.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::assets::verify::Expected;

/// The lock file's name in the fleet directory.
pub const LOCK_FILE: &str = "assets.lock";

/// The whole file.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AssetsLock {
    /// Format version (1).
    pub version: u32,
    /// By extension name.
    #[serde(default)]
    pub extensions: BTreeMap<String, LockedExtension>,
}

/// What was fetched (or built) for one extension, and its digests.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LockedExtension {
    /// The declaration it was recorded for: version, source location and
    /// the OS its image targets. A lock entry that no longer matches its
    /// declaration is a fleet error.
    pub version: String,
    pub source: String,
    pub os: String,
    /// The fetched input's digest (the vendor's, or the fleet's pin).
    pub source_digest: Expected,
    /// The image nodes fetch: its file name, size and sha512.
    pub image: String,
    pub image_size: u64,
    pub image_sha512: String,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("{}:{line}:{column}: {message}", path.display())]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl AssetsLock {
    /// Reads `<root>/assets.lock`; an empty lock when there is none.
    pub fn read(root: &Path) -> Result<AssetsLock, LockError> {
        let path = root.join(LOCK_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(AssetsLock {
                    version: 1,
                    extensions: BTreeMap::new(),
                })
            }
            Err(source) => return Err(LockError::Io { path, source }),
        };
        serde_json::from_str(&text).map_err(|e| LockError::Parse {
            path: PathBuf::from(LOCK_FILE),
            line: e.line(),
            column: e.column(),
            message: e.to_string(),
        })
    }

    /// The file's text: pretty JSON with a trailing newline.
    pub fn to_text(&self) -> String {
        let mut text = serde_json::to_string_pretty(self).unwrap_or_default();
        text.push('\n');
        text
    }

    /// Writes `<root>/assets.lock` atomically.
    pub fn write(&self, root: &Path) -> Result<(), LockError> {
        let path = root.join(LOCK_FILE);
        crate::fsutil::replace_file(&path, self.to_text().as_bytes(), 0o644)
            .map_err(|source| LockError::Io { path, source })
    }
}
