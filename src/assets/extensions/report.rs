//! `assets fetch`'s word on each extension: what was cached or skipped,
//! or why it failed, as a line of text and as a JSON document.

use std::fmt;

use serde::Serialize;

use super::{ExtensionError, Outcome};
use crate::fleet::Extension;

/// One extension's result of [`super::fetch_all`].
#[derive(Debug, Serialize)]
pub struct Fetched {
    pub name: String,
    pub version: String,
    pub ok: bool,
    #[serde(flatten)]
    pub outcome: Option<Outcome>,
    /// Why it failed, with its causes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// assets.lock pinned it before this fetch.
    #[serde(skip)]
    pub locked: bool,
}

impl Fetched {
    /// The result of fetching `ext`.
    pub fn new(ext: &Extension, result: Result<Outcome, ExtensionError>) -> Fetched {
        let (outcome, error) = match result {
            Ok(o) => (Some(o), None),
            Err(e) => (None, Some(crate::errfmt::chain(&e))),
        };
        Fetched {
            name: ext.name.to_string(),
            version: ext.version.to_string(),
            ok: error.is_none(),
            outcome,
            error,
            locked: ext.locked.is_some(),
        }
    }
}

impl fmt::Display for Fetched {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = format!("extension {} {}", self.name, self.version);
        match (&self.outcome, &self.error) {
            (_, Some(message)) => write!(f, "FAIL  {what}: {message}"),
            (Some(Outcome::Skipped { note }), None) => write!(f, "skipped {what}: {note}"),
            (
                Some(Outcome::Cached {
                    input,
                    source_digest,
                    basis,
                    image,
                    image_size,
                    image_sha512,
                    lock_written,
                }),
                None,
            ) => {
                let lock = if *lock_written {
                    "assets.lock written"
                } else if self.locked {
                    "matches assets.lock"
                } else {
                    "assets.lock not written (--locked)"
                };
                write!(
                    f,
                    "cached {what}: {input} {} verified against {basis}; image {image} \
                     ({image_size} bytes, sha512 {}…); {lock}",
                    source_digest.algorithm.name(),
                    &image_sha512[..16.min(image_sha512.len())]
                )
            }
            (None, None) => Ok(()),
        }
    }
}
