//! OS images: fetch a pinned Flatcar or Fedora CoreOS release, verify it
//! (digest and OpenPGP signature) before it enters the cache, and keep the
//! cache that the boot server serves at `/assets/`. Node software
//! (system extensions) enters the same cache through [`extensions`].
//!
//! Cache layout (under `assets/` in the fleet, or `--assets-dir`):
//! `blobs/sha512/<hex>` holds each file once, by content; a release
//! directory `<flavor>/<version>/` links its files there by name, beside
//! their `.sig` (and Flatcar's `.DIGESTS`) and a `MANIFEST.json`. A release
//! directory appears in one rename, complete and verified, or not at all.
//! Extension images are linked there as
//! `extensions/<name>/<name>-<version>.raw`, each in one rename; their
//! digests are in the fleet's `assets.lock`. Downloads in progress live in
//! `.partial/` and resume from there.

pub mod download;
pub mod extensions;
pub mod sysext;
mod text;
pub mod verify;

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::fleet::OsFlavor;
use crate::fsutil::{create_file, swap_dir};
use download::{FetchError, Fetcher};
use verify::{Algorithm, Expected, SigningKeys, VerifyError};

#[derive(Debug, thiserror::Error)]
pub enum AssetError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error(transparent)]
    Verify(#[from] VerifyError),
    #[error("{0}")]
    Metadata(String),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> AssetError + '_ {
    move |source| AssetError::Io {
        path: path.into(),
        source,
    }
}

/// Which release to fetch.
#[derive(Clone, Debug)]
pub struct Release {
    pub flavor: OsFlavor,
    pub channel: String,
    pub version: String,
}

/// One file of a release, where to get it and how to check it.
#[derive(Clone, Debug)]
struct Planned {
    name: String,
    url: String,
    signature_url: String,
    check: Check,
}

#[derive(Clone, Debug)]
enum Check {
    /// Flatcar: the sha512 line of `<name>.DIGESTS`.
    DigestsFile { url: String },
    /// Fedora CoreOS: the sha256 from the stream metadata.
    Known(Expected),
}

/// What the cache records of one verified file.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CachedFile {
    pub name: String,
    pub size: u64,
    pub sha512: String,
    pub sha256: String,
    /// The digest the vendor published, which the file was checked against.
    pub expected: Expected,
    /// Fingerprint of the OpenPGP key whose signature verified.
    pub signed_by: String,
    pub source: String,
}

/// `MANIFEST.json` of one release directory.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    pub flavor: String,
    pub channel: String,
    pub version: String,
    pub files: Vec<CachedFile>,
}

const FLATCAR_FILES: [&str; 2] = [
    "flatcar_production_pxe.vmlinuz",
    "flatcar_production_pxe_image.cpio.gz",
];

fn join(base: &str, path: &str) -> String {
    format!(
        "{}/{}",
        base.trim_end_matches('/'),
        path.trim_start_matches('/')
    )
}

/// The files of `release`. For Flatcar the mirror (or the vendor's server)
/// holds `<version>/<file>`; for Fedora CoreOS it holds
/// `streams/<channel>.json` and the artifacts at the paths it names.
async fn plan(
    fetcher: &Fetcher,
    release: &Release,
    mirror: Option<&str>,
) -> Result<Vec<Planned>, AssetError> {
    match release.flavor {
        OsFlavor::Flatcar => {
            let default = format!(
                "https://{}.release.flatcar-linux.net/amd64-usr",
                release.channel
            );
            let base = join(mirror.unwrap_or(&default), &release.version);
            Ok(FLATCAR_FILES
                .iter()
                .map(|name| Planned {
                    name: name.to_string(),
                    url: join(&base, name),
                    signature_url: join(&base, &format!("{name}.sig")),
                    check: Check::DigestsFile {
                        url: join(&base, &format!("{name}.DIGESTS")),
                    },
                })
                .collect())
        }
        OsFlavor::Lab => Err(AssetError::Metadata(
            "the lab's image is built, not fetched: run `metalherd lab image`".into(),
        )),
        OsFlavor::Fcos => {
            let origin = "https://builds.coreos.fedoraproject.org";
            let stream_url = join(
                mirror.unwrap_or(origin),
                &format!("streams/{}.json", release.channel),
            );
            let bytes = fetcher.fetch_bytes(&stream_url).await?;
            fcos_plan(&bytes, &stream_url, release, mirror, origin)
        }
    }
}

fn fcos_plan(
    bytes: &[u8],
    stream_url: &str,
    release: &Release,
    mirror: Option<&str>,
    origin: &str,
) -> Result<Vec<Planned>, AssetError> {
    let bad = |what: &str| AssetError::Metadata(format!("{stream_url}: {what}"));
    let stream: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| bad(&format!("not JSON: {e}")))?;
    let metal = &stream["architectures"]["x86_64"]["artifacts"]["metal"];
    let offered = metal["release"]
        .as_str()
        .ok_or_else(|| bad("no x86_64 metal release"))?;
    if offered != release.version {
        return Err(bad(&format!(
            "stream `{}` offers {offered}, not {}; pin os.version to {offered} or use a mirror that has {}",
            release.channel, release.version, release.version
        )));
    }
    let mut out = Vec::new();
    for part in ["kernel", "initramfs", "rootfs"] {
        let a = &metal["formats"]["pxe"][part];
        let (Some(location), Some(signature), Some(sha256)) = (
            a["location"].as_str(),
            a["signature"].as_str(),
            a["sha256"].as_str(),
        ) else {
            return Err(bad(&format!(
                "pxe {part} lacks location, signature or sha256"
            )));
        };
        let relocate = |url: &str| match (mirror, url.strip_prefix(origin)) {
            (Some(m), Some(path)) => join(m, path),
            _ => url.to_string(),
        };
        let name = location.rsplit('/').next().unwrap_or(part).to_string();
        out.push(Planned {
            name,
            url: relocate(location),
            signature_url: relocate(signature),
            check: Check::Known(Expected {
                algorithm: Algorithm::Sha256,
                hex: sha256.to_ascii_lowercase(),
            }),
        });
    }
    Ok(out)
}

/// A file downloaded and verified, waiting to enter the cache.
struct Verified {
    part: PathBuf,
    signature: Vec<u8>,
    digests: Option<Vec<u8>>,
    record: CachedFile,
}

/// Fetches and verifies every file of `release` and adds the release to
/// the cache in `assets_dir`. Nothing enters the cache unless every file
/// verified; a file that fails a check is deleted.
pub async fn fetch(
    fetcher: &Fetcher,
    keys: &SigningKeys,
    release: &Release,
    mirror: Option<&str>,
    assets_dir: &Path,
) -> Result<Manifest, AssetError> {
    let partial = assets_dir.join(".partial");
    fs::create_dir_all(&partial).map_err(io_at(&partial))?;
    let planned = plan(fetcher, release, mirror).await?;
    let mut verified: Vec<Verified> = Vec::new();
    for p in &planned {
        match fetch_one(fetcher, keys, p, &partial).await {
            Ok(v) => verified.push(v),
            Err(e) => {
                // A file that failed a check taints the whole release:
                // drop what this run downloaded. An interrupted download
                // stays in .partial/ to be resumed.
                if matches!(e, AssetError::Verify(_) | AssetError::Metadata(_)) {
                    for v in &verified {
                        let _ = fs::remove_file(&v.part);
                    }
                }
                return Err(e);
            }
        }
    }
    commit(release, verified, assets_dir)
}

async fn fetch_one(
    fetcher: &Fetcher,
    keys: &SigningKeys,
    p: &Planned,
    partial: &Path,
) -> Result<Verified, AssetError> {
    let signature = fetcher.fetch_bytes(&p.signature_url).await?;
    let (expected, digests) = match &p.check {
        Check::DigestsFile { url } => {
            let bytes = fetcher.fetch_bytes(url).await?;
            let text = String::from_utf8_lossy(&bytes);
            (
                verify::sha512_from_digests(&text, &format!("{}.DIGESTS", p.name), &p.name)?,
                Some(bytes),
            )
        }
        Check::Known(expected) => (expected.clone(), None),
    };
    let part = partial.join(format!("{}.part", p.name));
    fetcher.fetch_to(&p.url, &part, &p.name).await?;
    let checked = (|| {
        let digests_of = verify::digest_file(&part)?;
        digests_of.check(&p.name, &expected)?;
        let signed_by = keys.verify(&p.name, &signature, &part)?;
        Ok::<_, VerifyError>((digests_of, signed_by))
    })();
    let (d, signed_by) = match checked {
        Ok(ok) => ok,
        Err(e) => {
            let _ = fs::remove_file(&part);
            return Err(e.into());
        }
    };
    tracing::info!(
        "{}: sha512 and signature (key {signed_by}) verified",
        p.name
    );
    Ok(Verified {
        part,
        signature,
        digests,
        record: CachedFile {
            name: p.name.clone(),
            size: d.size,
            sha512: d.sha512,
            sha256: d.sha256,
            expected,
            signed_by,
            source: p.url.clone(),
        },
    })
}

/// Moves verified files into the blob store and links them into a fresh
/// release directory, which then replaces `<flavor>/<version>` in one step.
fn commit(
    release: &Release,
    verified: Vec<Verified>,
    assets_dir: &Path,
) -> Result<Manifest, AssetError> {
    let blobs = assets_dir.join("blobs/sha512");
    fs::create_dir_all(&blobs).map_err(io_at(&blobs))?;
    let flavor_dir = assets_dir.join(release.flavor.as_str());
    fs::create_dir_all(&flavor_dir).map_err(io_at(&flavor_dir))?;
    let staging = flavor_dir.join(format!(".{}.new-{}", release.version, std::process::id()));
    if staging.exists() {
        fs::remove_dir_all(&staging).map_err(io_at(&staging))?;
    }
    fs::create_dir(&staging).map_err(io_at(&staging))?;
    let result = (|| {
        let mut files = Vec::new();
        for v in verified {
            let blob = blobs.join(&v.record.sha512);
            if blob.exists() {
                fs::remove_file(&v.part).map_err(io_at(&v.part))?;
            } else {
                fs::set_permissions(&v.part, std::os::unix::fs::PermissionsExt::from_mode(0o644))
                    .map_err(io_at(&v.part))?;
                fs::rename(&v.part, &blob).map_err(io_at(&blob))?;
            }
            let name = staging.join(&v.record.name);
            fs::hard_link(&blob, &name).map_err(io_at(&name))?;
            let sig = staging.join(format!("{}.sig", v.record.name));
            create_file(&sig, &v.signature, 0o644).map_err(io_at(&sig))?;
            if let Some(d) = &v.digests {
                let path = staging.join(format!("{}.DIGESTS", v.record.name));
                create_file(&path, d, 0o644).map_err(io_at(&path))?;
            }
            files.push(v.record);
        }
        let manifest = Manifest {
            flavor: release.flavor.as_str().to_string(),
            channel: release.channel.clone(),
            version: release.version.clone(),
            files,
        };
        let text = serde_json::to_vec_pretty(&manifest)
            .map_err(|e| AssetError::Metadata(e.to_string()))?;
        let path = staging.join("MANIFEST.json");
        create_file(&path, &text, 0o644).map_err(io_at(&path))?;
        let target = flavor_dir.join(&release.version);
        swap_dir(&staging, &target).map_err(io_at(&target))?;
        Ok(manifest)
    })();
    if result.is_err() {
        let _ = fs::remove_dir_all(&staging);
    }
    result
}

/// Every release in the cache, by flavor and version.
pub fn list(assets_dir: &Path) -> Result<Vec<Manifest>, AssetError> {
    let mut out = Vec::new();
    for flavor in ["flatcar", "fcos"] {
        let dir = assets_dir.join(flavor);
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        let mut versions: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .map(|e| e.path())
            .collect();
        versions.sort();
        for v in versions {
            let path = v.join("MANIFEST.json");
            let text = fs::read(&path).map_err(io_at(&path))?;
            let manifest: Manifest = serde_json::from_slice(&text)
                .map_err(|e| AssetError::Metadata(format!("{}: {e}", path.display())))?;
            out.push(manifest);
        }
    }
    Ok(out)
}

/// The outcome of re-checking one cached file.
#[derive(Debug, Serialize)]
pub struct Recheck {
    pub flavor: String,
    pub version: String,
    pub name: String,
    pub ok: bool,
    pub problem: Option<String>,
}

/// Re-checks every cached file: its digest against the manifest and the
/// vendor's digest, and its signature against the current signing keys.
pub fn verify_cache(assets_dir: &Path, keys: &SigningKeys) -> Result<Vec<Recheck>, AssetError> {
    let mut out = Vec::new();
    for m in list(assets_dir)? {
        let dir = assets_dir.join(&m.flavor).join(&m.version);
        for f in &m.files {
            let path = dir.join(&f.name);
            let problem = recheck(&path, f, keys).err().map(|e| e.to_string());
            out.push(Recheck {
                flavor: m.flavor.clone(),
                version: m.version.clone(),
                name: f.name.clone(),
                ok: problem.is_none(),
                problem,
            });
        }
    }
    Ok(out)
}

fn recheck(path: &Path, f: &CachedFile, keys: &SigningKeys) -> Result<(), AssetError> {
    let d = verify::digest_file(path)?;
    d.check(
        &f.name,
        &Expected {
            algorithm: Algorithm::Sha512,
            hex: f.sha512.clone(),
        },
    )?;
    d.check(&f.name, &f.expected)?;
    let sig_path = path.with_file_name(format!("{}.sig", f.name));
    let sig = fs::read(&sig_path).map_err(io_at(&sig_path))?;
    keys.verify(&f.name, &sig, path)?;
    Ok(())
}
