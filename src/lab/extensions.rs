//! Node software for lab VMs, delivered the way it reaches Flatcar: the lab
//! fleet declares etcd as a system extension built from Debian's package
//! (`build: { deb: debian:etcd-server }`); `lab image` downloads that
//! package with the image (Debian's apt checks it against the signed
//! archive index), packs its binaries into a sysext with
//! [`crate::assets::sysext`], puts the image in the asset cache the boot
//! server serves, and records its digests in the fleet's `assets.lock`.
//! Every VM then gets etcd only by the real Ignition fetching that image
//! from the boot server, checking its sha512, and the real
//! `systemd-sysext` merging it.
//!
//! To add a Debian-built extension to the lab: declare it in the lab fleet
//! (`lab/fleet.rs`); nothing here names a package.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Serialize;

use crate::assets::sysext::{self, SysextInput, SysextOs, SysextSpec};
use crate::assets::verify::{self, Algorithm, Expected};
use crate::fleet::lock::{AssetsLock, LockedExtension};
use crate::fleet::{Extension, ExtensionSource, Fleet};

/// What one Debian-built extension came to.
#[derive(Clone, Debug, Serialize)]
pub struct BuiltExtension {
    pub name: String,
    pub version: String,
    /// The `.deb` it was built from (file name in the image's `debs/`).
    pub deb: String,
    pub image: PathBuf,
    pub size: u64,
    pub sha512: String,
    /// True when the cached image already matched the lock.
    pub cached: bool,
}

/// `debian:PACKAGE` extensions of `fleet`, with their package names.
fn debian_extensions(fleet: &Fleet) -> impl Iterator<Item = (&Extension, &str)> {
    fleet.extensions.iter().filter_map(|e| match &e.source {
        ExtensionSource::Deb { source, .. } => source.strip_prefix("debian:").map(|p| (e, p)),
        _ => None,
    })
}

/// The Debian packages `lab image` must download for `fleet`.
pub fn debian_packages(fleet: &Fleet) -> Vec<String> {
    let mut out: Vec<String> = debian_extensions(fleet)
        .map(|(_, p)| p.to_string())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Debian's `VERSION_ID` for a suite: what an extension's release file
/// must name to be merged on the lab image.
fn version_id(suite: &str) -> anyhow::Result<&'static str> {
    match suite {
        "bookworm" => Ok("12"),
        "trixie" => Ok("13"),
        _ => bail!("no Debian VERSION_ID known for suite {suite:?}: add it to lab/extensions.rs"),
    }
}

/// Builds every `debian:` extension of `fleet` from the packages in
/// `image_dir/debs/` (their sha256 as the image build recorded them) into
/// `assets_dir`, and records each in the fleet's `assets.lock`.
pub fn build_and_lock(
    fleet: &Fleet,
    image_dir: &Path,
    assets_dir: &Path,
    recorded_debs: &std::collections::BTreeMap<String, String>,
) -> anyhow::Result<Vec<BuiltExtension>> {
    let mut lock = AssetsLock::read(&fleet.root)?;
    lock.version = 1;
    let mut out = Vec::new();
    for (ext, package) in debian_extensions(fleet) {
        let (deb, sha256) = recorded_debs
            .iter()
            .find(|(file, _)| file.starts_with(&format!("{package}_")))
            .with_context(|| {
                format!(
                    "the lab image in {} has no package {package} for extension {}; build it again with `metalherd lab image --force`",
                    image_dir.display(),
                    ext.name
                )
            })?;
        let target = assets_dir.join(ext.asset_path());
        let source = ext.source.location();
        let expected = Expected {
            algorithm: Algorithm::Sha256,
            hex: sha256.clone(),
        };
        if let Some(entry) = lock.extensions.get(&ext.name) {
            let same_input = entry.source == source && entry.source_digest == expected;
            if same_input && target.is_file() {
                let d = verify::digest_file(&target)?;
                if d.sha512 == entry.image_sha512 {
                    out.push(BuiltExtension {
                        name: ext.name.clone(),
                        version: ext.version.clone(),
                        deb: deb.clone(),
                        image: target,
                        size: d.size,
                        sha512: d.sha512,
                        cached: true,
                    });
                    continue;
                }
            }
        }
        let binaries = match &ext.source {
            ExtensionSource::Deb { binaries, .. } => binaries.clone(),
            _ => Vec::new(),
        };
        let spec = SysextSpec {
            name: ext.name.clone(),
            version: ext.version.clone(),
            os: SysextOs::Debian,
            os_version: Some(version_id(&fleet.os.version)?.to_string()),
            binaries,
            expected: expected.clone(),
        };
        if let Some(dir) = target.parent() {
            crate::fsutil::create_dir_with_mode(dir, 0o755)
                .with_context(|| format!("creating {}", dir.display()))?;
        }
        let input = SysextInput::Deb(image_dir.join("debs").join(deb));
        let image = sysext::build(&spec, &input, &target)
            .with_context(|| format!("building extension {} from {deb}", ext.name))?;
        lock.extensions.insert(
            ext.name.clone(),
            LockedExtension {
                version: ext.version.clone(),
                source,
                os: crate::fleet::extensions::sysext_os(fleet.os.flavor).to_string(),
                source_digest: expected,
                image: ext.file_name(),
                image_size: image.size,
                image_sha512: image.sha512.clone(),
            },
        );
        out.push(BuiltExtension {
            name: ext.name.clone(),
            version: ext.version.clone(),
            deb: deb.clone(),
            image: image.path,
            size: image.size,
            sha512: image.sha512,
            cached: false,
        });
    }
    if out.iter().any(|b| !b.cached) {
        lock.write(&fleet.root)?;
    }
    Ok(out)
}
