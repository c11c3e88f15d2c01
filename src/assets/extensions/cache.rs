//! Extension images in the asset cache: installing a verified image,
//! re-checking cached images against their pins, listing them.
//!
//! An image is stored once by content, `blobs/sha512/<hex>` (shared with
//! the OS files), and hard-linked to `extensions/<name>/<name>-<version>.raw`,
//! the path the boot server serves and rendered Ignition fetches.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::ExtensionError;
use crate::assets::verify::{self, Algorithm, Expected, VerifyError};
use crate::fleet::{Extension, ExtensionSource, Fleet};

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> ExtensionError + '_ {
    move |source| ExtensionError::Io {
        path: path.into(),
        source,
    }
}

/// Moves the verified `image` (sha512 `sha512`) into the blob store and
/// links it to `<assets_dir>/<asset_path>` in one rename, mode 0644. The
/// blob is always replaced by the verified file: an older blob shares its
/// inode with every link to it, so it may have been changed through one.
pub(super) fn install(
    image: &Path,
    sha512: &str,
    assets_dir: &Path,
    asset_path: &str,
) -> Result<PathBuf, ExtensionError> {
    let blobs = assets_dir.join("blobs/sha512");
    fs::create_dir_all(&blobs).map_err(io_at(&blobs))?;
    fs::set_permissions(image, fs::Permissions::from_mode(0o644)).map_err(io_at(image))?;
    let blob = blobs.join(sha512);
    fs::rename(image, &blob).map_err(io_at(&blob))?;
    let target = assets_dir.join(asset_path);
    let dir = target.parent().unwrap_or(assets_dir);
    fs::create_dir_all(dir).map_err(io_at(dir))?;
    let name = target.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.new-{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    fs::hard_link(&blob, &tmp).map_err(io_at(&tmp))?;
    let placed = fs::rename(&tmp, &target).map_err(io_at(&target));
    // rename(2) leaves both names when they are links to one inode.
    let _ = fs::remove_file(&tmp);
    placed?;
    Ok(target)
}

/// The sha512 or sha256 a cached image must have, and who says so.
pub fn image_pin(ext: &Extension) -> Option<(Expected, &'static str)> {
    if let Some(l) = &ext.locked {
        let e = Expected {
            algorithm: Algorithm::Sha512,
            hex: l.image_sha512.clone(),
        };
        return Some((e, "assets.lock"));
    }
    match (&ext.source, &ext.pin) {
        (ExtensionSource::Image(_), Some(p)) => Some((p.clone(), "the fleet's pin")),
        _ => None,
    }
}

/// Checks the cached image of `ext` (at `path`) against `expected`.
/// The problem, without the file name, when it does not match.
pub(super) fn check_image(path: &Path, expected: &Expected) -> Result<(), String> {
    let d = verify::digest_file(path).map_err(|e| e.to_string())?;
    match d.check("", expected) {
        Ok(()) => Ok(()),
        Err(VerifyError::Digest {
            algorithm,
            expected,
            actual,
            ..
        }) => Err(format!(
            "{algorithm} digest mismatch: expected {expected}, got {actual}"
        )),
        Err(e) => Err(e.to_string()),
    }
}

/// The outcome of re-checking one cached extension image.
#[derive(Debug, Serialize)]
pub struct ExtensionRecheck {
    pub name: String,
    pub version: String,
    /// Below the cache: `extensions/<name>/<name>-<version>.raw`.
    pub path: String,
    /// What it was checked against (`assets.lock`, the fleet's pin).
    pub against: &'static str,
    pub ok: bool,
    pub problem: Option<String>,
}

/// Re-checks the cached image of every pinned extension the fleet
/// declares. Extensions with no image in the cache are left out.
pub fn verify_cached(fleet: &Fleet, assets_dir: &Path) -> Vec<ExtensionRecheck> {
    let mut out = Vec::new();
    for ext in &fleet.extensions {
        let path = assets_dir.join(ext.asset_path());
        let Some((expected, against)) = image_pin(ext) else {
            continue;
        };
        if !path.exists() {
            continue;
        }
        let problem = check_image(&path, &expected).err();
        out.push(ExtensionRecheck {
            name: ext.name.clone(),
            version: ext.version.clone(),
            path: ext.asset_path(),
            against,
            ok: problem.is_none(),
            problem,
        });
    }
    out
}

/// One image found under `extensions/` in the cache.
#[derive(Debug, Serialize)]
pub struct CachedExtension {
    pub name: String,
    pub version: String,
    pub path: String,
    pub size: u64,
    pub sha512: String,
    /// The fleet declares this name and version and pins its image.
    pub pinned: bool,
}

/// Every `extensions/<name>/<name>-<version>.raw` in the cache, sorted,
/// declared by the fleet or not (an old version stays until removed).
pub fn list_cached(fleet: &Fleet, assets_dir: &Path) -> Result<Vec<CachedExtension>, VerifyError> {
    let mut out = Vec::new();
    let root = assets_dir.join("extensions");
    let Ok(dirs) = fs::read_dir(&root) else {
        return Ok(out);
    };
    let mut names: Vec<String> = dirs
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    for name in names {
        let Ok(files) = fs::read_dir(root.join(&name)) else {
            continue;
        };
        let mut files: Vec<String> = files
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        for file in files {
            let Some(version) = file
                .strip_prefix(&format!("{name}-"))
                .and_then(|v| v.strip_suffix(".raw"))
            else {
                continue;
            };
            let d = verify::digest_file(&root.join(&name).join(&file))?;
            let pinned = fleet
                .extensions
                .iter()
                .any(|e| e.name == name && e.version == version && image_pin(e).is_some());
            out.push(CachedExtension {
                name: name.clone(),
                version: version.to_string(),
                path: format!("extensions/{name}/{file}"),
                size: d.size,
                sha512: d.sha512,
                pinned,
            });
        }
    }
    Ok(out)
}
