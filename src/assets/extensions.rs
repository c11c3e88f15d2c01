//! Node software in the asset cache: `assets fetch` fetches each extension
//! the fleet declares, checks it against its pin, builds the sysext image
//! (release archives, `.deb` URLs) and caches it where the boot server
//! serves it, then records both digests in `assets.lock`.
//!
//! The digest a fetched input must have comes from, in order: the fleet's
//! pin (`sha256`/`sha512`), the lock's `source_digest`, or, the first time
//! only, the vendor's checksum file (its OpenPGP signature checked against
//! `os.signing_keys` when `checksums_signature` is set). With a lock entry
//! the built image must also be the one the lock records (builds are
//! reproducible), so a vendor that swaps a release's bytes, even with a
//! matching checksum file, is refused. Nothing enters the cache unless it
//! verified, and the lock is written only after the image is in place.
//!
//! `debian:PACKAGE` sources are built by `metalherd lab image`, not here.
//!
//! To add a source kind: its arm in `input` (where to fetch it from) and
//! in `make_image` (how its image is made).

mod cache;
pub mod checksums;
pub mod report;

use std::fs;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::download::{FetchError, Fetcher};
use super::sysext::{self, SysextError, SysextInput, SysextOs, SysextSpec};
use super::verify::{self, Algorithm, Expected, SigningKeys, VerifyError};
use crate::fleet::extensions::sysext_os;
use crate::fleet::lock::{AssetsLock, LockError, LockedExtension, LOCK_FILE};
use crate::fleet::{Extension, ExtensionSource, Fleet, OsFlavor};

pub use cache::{list_cached, verify_cached, CachedExtension, ExtensionRecheck};
use report::Fetched;

/// The VERSION_ID of the lab's Debian (bookworm), which its images require.
const LAB_DEBIAN_VERSION: &str = "12";

#[derive(Debug, thiserror::Error)]
pub enum ExtensionError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error(transparent)]
    Verify(#[from] VerifyError),
    #[error(transparent)]
    Build(#[from] SysextError),
    #[error(transparent)]
    Lock(#[from] LockError),
    /// Served or built bytes that are not what `assets.lock` records.
    #[error(transparent)]
    LockMismatch(Box<LockMismatch>),
    #[error("{0}")]
    Refused(String),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Debug, thiserror::Error)]
#[error(
    "{file}: the {what} file's {algorithm} is {actual}, but {LOCK_FILE} records {locked}: \
     it changed since it was pinned. If the change is expected, delete the entry for `{name}` \
     from {LOCK_FILE} and fetch again (a reviewed change); the cache and {LOCK_FILE} were not changed"
)]
pub struct LockMismatch {
    pub name: String,
    pub file: String,
    /// `served` (the input) or `built` (the image).
    pub what: &'static str,
    pub algorithm: &'static str,
    pub locked: String,
    pub actual: String,
}

/// How to fetch.
pub struct FetchOptions<'a> {
    pub fetcher: &'a Fetcher,
    /// `os.signing_keys`, when the fleet has any.
    pub keys: Option<&'a SigningKeys>,
    /// Look inputs and checksum files up at
    /// `<mirror>/extensions/<name>/<file name of the URL>`.
    pub mirror: Option<&'a str>,
    /// Never write `assets.lock`; refuse what it does not pin.
    pub locked: bool,
    pub assets_dir: &'a Path,
}

/// What the fetched input was checked against.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Basis {
    Pin,
    Lock,
    Checksums {
        url: String,
        /// The fingerprint of the key whose signature verified.
        signed_by: Option<String>,
    },
}

impl std::fmt::Display for Basis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Basis::Pin => write!(f, "the fleet's pin"),
            Basis::Lock => write!(f, "{LOCK_FILE}"),
            Basis::Checksums {
                url,
                signed_by: Some(k),
            } => write!(f, "{url} (signature by key {k} verified)"),
            Basis::Checksums {
                url,
                signed_by: None,
            } => write!(f, "{url} (unsigned)"),
        }
    }
}

/// What happened to one extension.
#[derive(Debug, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    Cached {
        input: String,
        source_digest: Expected,
        basis: Basis,
        /// Below the cache: `extensions/<name>/<name>-<version>.raw`.
        image: String,
        image_size: u64,
        image_sha512: String,
        lock_written: bool,
    },
    /// Not fetched (`debian:` packages); `note` says why and what was
    /// checked instead.
    Skipped { note: String },
}

/// Fetches every extension of `fleet`, each on its own: one failure does
/// not stop the others. Results in `fleet.yaml` order.
pub async fn fetch_all(opts: &FetchOptions<'_>, fleet: &Fleet) -> Vec<Fetched> {
    let mut out = Vec::new();
    for ext in &fleet.extensions {
        let result = fetch_one(opts, fleet, ext).await;
        out.push(Fetched::new(ext, result));
    }
    out
}

/// The file name of `url` (its last path segment).
fn file_name_of(url: &url::Url) -> Option<String> {
    let name = url.path_segments()?.next_back()?;
    (!name.is_empty()).then(|| name.to_string())
}

/// Where to fetch `url` of `ext` from: the vendor, or the mirror.
fn locate(
    opts: &FetchOptions<'_>,
    ext: &Extension,
    url: &url::Url,
) -> Result<String, ExtensionError> {
    let name = file_name_of(url)
        .ok_or_else(|| ExtensionError::Refused(format!("{url}: the URL names no file")))?;
    Ok(match opts.mirror {
        Some(m) => format!("{}/extensions/{}/{name}", m.trim_end_matches('/'), ext.name),
        None => url.to_string(),
    })
}

async fn fetch_one(
    opts: &FetchOptions<'_>,
    fleet: &Fleet,
    ext: &Extension,
) -> Result<Outcome, ExtensionError> {
    let url = match &ext.source {
        ExtensionSource::Image(url) | ExtensionSource::Archive { url, .. } => url.clone(),
        ExtensionSource::Deb { source, .. } => match url::Url::parse(source) {
            Ok(url) if !source.starts_with("debian:") => url,
            _ => return lab_built(opts, ext, source),
        },
    };
    let file = file_name_of(&url).unwrap_or_else(|| ext.name.clone());
    let (expected, basis) = expected_digest(opts, ext, &file).await?;
    let partial = partial_dir(opts)?;
    let part = partial.join(format!("ext-{}-{file}.part", ext.name));
    opts.fetcher
        .fetch_to(&locate(opts, ext, &url)?, &part, &file)
        .await?;
    let made = check_input(ext, &part, &file, &expected, &basis)
        .and_then(|()| make_image(fleet, ext, &part, &partial, &expected));
    let image = match made {
        Ok(image) => image,
        Err(e) => {
            let _ = fs::remove_file(&part);
            return Err(e);
        }
    };
    let _ = fs::remove_file(&part);
    let installed = check_image_against_lock(ext, &image).and_then(|()| {
        cache::install(
            &image.path,
            &image.sha512,
            opts.assets_dir,
            &ext.asset_path(),
        )
    });
    if let Err(e) = installed {
        let _ = fs::remove_file(&image.path);
        return Err(e);
    }
    let lock_written = !opts.locked && ext.locked.is_none();
    if lock_written {
        write_lock_entry(fleet, ext, &expected, &image)?;
    }
    tracing::info!(
        "extension {}: {file} verified against {basis}; image cached",
        ext.name
    );
    Ok(Outcome::Cached {
        input: file,
        source_digest: expected,
        basis,
        image: ext.asset_path(),
        image_size: image.size,
        image_sha512: image.sha512,
        lock_written,
    })
}

/// A `debian:` source: nothing to fetch. Its image, if `lab image` has
/// put one in the cache, is re-checked against the lock.
fn lab_built(
    opts: &FetchOptions<'_>,
    ext: &Extension,
    source: &str,
) -> Result<Outcome, ExtensionError> {
    let path = opts.assets_dir.join(ext.asset_path());
    let mut note = format!("{source} is built by `metalherd lab image`, not fetched");
    match (cache::image_pin(ext), path.exists()) {
        (Some((expected, against)), true) => match cache::check_image(&path, &expected) {
            Ok(()) => note.push_str(&format!("; its cached image matches {against}")),
            Err(p) => {
                return Err(ExtensionError::Refused(format!(
                    "{}: {p} ({against}); rebuild it with `metalherd lab image`",
                    ext.asset_path()
                )))
            }
        },
        (None, true) => note.push_str("; its cached image is not pinned yet"),
        (_, false) => note.push_str("; no image cached yet"),
    }
    Ok(Outcome::Skipped { note })
}

/// `.partial/` in the cache, where downloads wait to be verified.
fn partial_dir(opts: &FetchOptions<'_>) -> Result<PathBuf, ExtensionError> {
    let partial = opts.assets_dir.join(".partial");
    fs::create_dir_all(&partial).map_err(|source| ExtensionError::Io {
        path: partial.clone(),
        source,
    })?;
    Ok(partial)
}

/// The digest the fetched input must have, and who says so.
async fn expected_digest(
    opts: &FetchOptions<'_>,
    ext: &Extension,
    file: &str,
) -> Result<(Expected, Basis), ExtensionError> {
    if let Some(pin) = &ext.pin {
        return Ok((pin.clone(), Basis::Pin));
    }
    if let Some(l) = &ext.locked {
        return Ok((l.source_digest.clone(), Basis::Lock));
    }
    if opts.locked {
        return Err(ExtensionError::Refused(format!(
            "extension `{}` is not in {LOCK_FILE} and --locked given: it has no pin in the fleet; \
             run `metalherd assets fetch` without --locked once and commit {LOCK_FILE}",
            ext.name
        )));
    }
    let Some(checksums) = &ext.checksums else {
        return Err(ExtensionError::Refused(format!(
            "extension `{}` has nothing to check it against: no sha256/sha512 pin, no entry in \
             {LOCK_FILE} and no checksums URL; pin it in inventory/fleet.yaml or name the \
             vendor's checksum file",
            ext.name
        )));
    };
    let sums_name = file_name_of(checksums).unwrap_or_else(|| "checksums".into());
    let bytes = opts
        .fetcher
        .fetch_bytes(&locate(opts, ext, checksums)?)
        .await?;
    let signed_by = match &ext.checksums_signature {
        None => None,
        Some(sig_url) => {
            let keys = opts.keys.ok_or(VerifyError::NoKeys)?;
            let sig = opts
                .fetcher
                .fetch_bytes(&locate(opts, ext, sig_url)?)
                .await?;
            let partial = partial_dir(opts)?;
            let tmp =
                tempfile::NamedTempFile::new_in(&partial).map_err(|source| ExtensionError::Io {
                    path: partial.clone(),
                    source,
                })?;
            fs::write(tmp.path(), &bytes).map_err(|source| ExtensionError::Io {
                path: tmp.path().into(),
                source,
            })?;
            Some(keys.verify(&sums_name, &sig, tmp.path())?)
        }
    };
    let text = String::from_utf8_lossy(&bytes);
    let expected = checksums::digest_for(&text, &sums_name, file)?;
    Ok((
        expected,
        Basis::Checksums {
            url: checksums.to_string(),
            signed_by,
        },
    ))
}

/// The fetched input against its expected digest; against the lock, a
/// mismatch says the vendor's bytes changed.
fn check_input(
    ext: &Extension,
    part: &Path,
    file: &str,
    expected: &Expected,
    basis: &Basis,
) -> Result<(), ExtensionError> {
    match verify::digest_file(part)?.check(file, expected) {
        Err(VerifyError::Digest {
            algorithm, actual, ..
        }) if matches!(basis, Basis::Lock) => {
            Err(ExtensionError::LockMismatch(Box::new(LockMismatch {
                name: ext.name.clone(),
                file: file.to_string(),
                what: "served",
                algorithm,
                locked: expected.hex.clone(),
                actual,
            })))
        }
        other => Ok(other?),
    }
}

/// A made image waiting in `.partial/` to enter the cache.
struct Image {
    path: PathBuf,
    size: u64,
    sha512: String,
}

/// The sysext image from the verified input `part`: the input itself for
/// a ready image, else built for the fleet's OS.
fn make_image(
    fleet: &Fleet,
    ext: &Extension,
    part: &Path,
    partial: &Path,
    expected: &Expected,
) -> Result<Image, ExtensionError> {
    let out = partial.join(format!(".{}.image", ext.file_name()));
    let (input, binaries) = match &ext.source {
        ExtensionSource::Image(_) => {
            fs::rename(part, &out).map_err(|source| ExtensionError::Io {
                path: out.clone(),
                source,
            })?;
            let d = verify::digest_file(&out)?;
            return Ok(Image {
                path: out,
                size: d.size,
                sha512: d.sha512,
            });
        }
        ExtensionSource::Archive { binaries, .. } => (SysextInput::Archive(part.into()), binaries),
        ExtensionSource::Deb { binaries, .. } => (SysextInput::Deb(part.into()), binaries),
    };
    let (os, os_version) = target_os(fleet);
    let spec = SysextSpec {
        name: ext.name.clone(),
        version: ext.version.clone(),
        os,
        os_version,
        binaries: binaries.clone(),
        expected: expected.clone(),
    };
    let built = sysext::build(&spec, &input, &out)?;
    Ok(Image {
        path: built.path,
        size: built.size,
        sha512: built.sha512,
    })
}

/// The OS (extension-release `ID=` and `VERSION_ID=`) images are built for.
fn target_os(fleet: &Fleet) -> (SysextOs, Option<String>) {
    match fleet.os.flavor {
        // SYSEXT_LEVEL=1.0: every Flatcar release.
        OsFlavor::Flatcar => (SysextOs::Flatcar, None),
        // FCOS has no SYSEXT_LEVEL; its VERSION_ID is the Fedora major,
        // the first component of os.version (40.20240416.3.1).
        OsFlavor::Fcos => {
            let major = fleet.os.version.split('.').next().unwrap_or_default();
            (SysextOs::Fedora, Some(major.to_string()))
        }
        OsFlavor::Lab => (SysextOs::Debian, Some(LAB_DEBIAN_VERSION.into())),
    }
}

fn check_image_against_lock(ext: &Extension, image: &Image) -> Result<(), ExtensionError> {
    match &ext.locked {
        Some(l) if !l.image_sha512.eq_ignore_ascii_case(&image.sha512) => {
            Err(ExtensionError::LockMismatch(Box::new(LockMismatch {
                name: ext.name.clone(),
                file: ext.file_name(),
                what: "built",
                algorithm: Algorithm::Sha512.name(),
                locked: l.image_sha512.clone(),
                actual: image.sha512.clone(),
            })))
        }
        _ => Ok(()),
    }
}

/// Adds `ext`'s entry to the fleet's `assets.lock`, re-read just before
/// so entries written meanwhile are kept.
fn write_lock_entry(
    fleet: &Fleet,
    ext: &Extension,
    expected: &Expected,
    image: &Image,
) -> Result<(), ExtensionError> {
    let mut lock = AssetsLock::read(&fleet.root)?;
    lock.version = 1;
    lock.extensions.insert(
        ext.name.clone(),
        LockedExtension {
            version: ext.version.clone(),
            source: ext.source.location(),
            os: sysext_os(fleet.os.flavor).to_string(),
            source_digest: expected.clone(),
            image: ext.file_name(),
            image_size: image.size,
            image_sha512: image.sha512.clone(),
        },
    );
    lock.write(&fleet.root)?;
    Ok(())
}
