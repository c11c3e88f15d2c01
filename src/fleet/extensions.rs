//! `extensions` in `fleet.yaml` (node software as systemd system
//! extensions) and their entries in `assets.lock`: every value parsed,
//! every rule checked, problems reported with file, line and field like
//! the rest of the fleet.
//!
//! To add a source kind: a field in `raw::RawExtensionBuild`, a variant of
//! [`ExtensionSource`], its conversion in `source` below.

use std::collections::HashMap;

use super::build::Ctx;
use super::lock::{AssetsLock, LOCK_FILE};
use super::raw::{RawExtension, Text};
use super::{Extension, ExtensionSource, OsFlavor, Role};
use crate::assets::verify::{Algorithm, Expected};

/// Names Kubernetes extensions go by: their version must be
/// `kubernetes.version`.
const KUBERNETES_NAMES: [&str; 2] = ["kubernetes", "kubelet"];

/// Parses `sha256:`/`sha512:` hex pins.
pub(super) fn parse_digest(algorithm: Algorithm, s: &str) -> Result<Expected, String> {
    let len = match algorithm {
        Algorithm::Sha256 => 64,
        Algorithm::Sha512 => 128,
    };
    if s.len() != len || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "malformed {} digest: expected {len} hex digits, got {} characters",
            algorithm.name(),
            s.len()
        ));
    }
    Ok(Expected {
        algorithm,
        hex: s.to_ascii_lowercase(),
    })
}

fn check_name(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.as_bytes()[0].is_ascii_lowercase()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid extension name {s:?}: use 1-63 lower-case letters, digits, '-' and '_', starting with a letter"
        ))
    }
}

fn check_version(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._+~-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid extension version {s:?}: use letters, digits and . _ + ~ -"
        ))
    }
}

/// The OS an image for `flavor` declares in its extension-release file
/// (`ID=`), which is what `assets.lock` records.
pub fn sysext_os(flavor: OsFlavor) -> &'static str {
    match flavor {
        OsFlavor::Flatcar => "flatcar",
        OsFlavor::Fcos => "fedora",
        OsFlavor::Lab => "debian",
    }
}

impl Ctx {
    /// Every extension of `fleet.yaml`, with its lock entry attached when
    /// it matches the declaration.
    pub(super) fn extensions(
        &mut self,
        raw: &[marked_yaml::Spanned<RawExtension>],
        flavor: Option<OsFlavor>,
        kubernetes_version: &Text,
        lock: &AssetsLock,
    ) -> Vec<Extension> {
        let mut out = Vec::new();
        let mut seen: HashMap<String, usize> = HashMap::new();
        for (i, e) in raw.iter().enumerate() {
            let at = format!("extensions[{i}]");
            if let Some(first) = seen.get(e.name.as_str()) {
                self.err(
                    e.name.span(),
                    format!("{at}.name"),
                    format!(
                        "extension `{}` is already declared (extensions[{first}])",
                        e.name.as_str()
                    ),
                );
                continue;
            }
            seen.insert(e.name.to_string(), i);
            let Some(mut ext) = self.extension(e, &at) else {
                continue;
            };
            if KUBERNETES_NAMES.contains(&ext.name.as_str())
                && ext.version != kubernetes_version.as_str()
            {
                self.err(
                    e.version.span(),
                    format!("{at}.version"),
                    format!(
                        "the {} extension is {} but kubernetes.version is {}: they must agree",
                        ext.name,
                        ext.version,
                        kubernetes_version.as_str()
                    ),
                );
            }
            if let (Some(entry), Some(flavor)) = (lock.extensions.get(&ext.name), flavor) {
                let os = sysext_os(flavor);
                let source = ext.source.location();
                let mut differs = Vec::new();
                if entry.version != ext.version {
                    differs.push(format!(
                        "version {} (declared {})",
                        entry.version, ext.version
                    ));
                }
                if entry.source != source {
                    differs.push(format!("source {} (declared {source})", entry.source));
                }
                if entry.os != os {
                    differs.push(format!("OS {} (the fleet's is {os})", entry.os));
                }
                if let Some(pin) = &ext.pin {
                    if entry.source_digest != *pin {
                        differs.push(format!(
                            "{} {} (pinned here: {})",
                            entry.source_digest.algorithm.name(),
                            entry.source_digest.hex,
                            pin.hex
                        ));
                    }
                }
                if differs.is_empty() {
                    ext.locked = Some(entry.clone());
                } else {
                    self.err(
                        e.name.span(),
                        format!("{at}.name"),
                        format!(
                            "{LOCK_FILE}'s entry for `{}` no longer matches this declaration: it records {}; \
                             delete that entry and run `metalherd assets fetch` to pin it again (a reviewed change to {LOCK_FILE})",
                            ext.name,
                            differs.join(", "),
                        ),
                    );
                }
            }
            out.push(ext);
        }
        out
    }

    fn extension(&mut self, e: &RawExtension, at: &str) -> Option<Extension> {
        let name = self.parse(&e.name, &format!("{at}.name"), |s| {
            check_name(s).map(|_| s.to_string())
        });
        let version = self.parse(&e.version, &format!("{at}.version"), |s| {
            check_version(s).map(|_| s.to_string())
        });
        let mut roles = Vec::new();
        for (j, r) in e.roles.iter().enumerate() {
            roles.extend(self.parse_as::<Role>(r, &format!("{at}.roles[{j}]")));
        }
        if e.roles.is_empty() {
            self.err(
                e.name.span(),
                format!("{at}.roles"),
                "no roles: name the roles that get this extension (control-plane, worker, spare)",
            );
        }
        let source = self.source(e, at);
        let mut pin = None;
        for (algorithm, v, field) in [
            (Algorithm::Sha256, &e.sha256, "sha256"),
            (Algorithm::Sha512, &e.sha512, "sha512"),
        ] {
            if let Some(v) = v {
                if pin.is_some() {
                    self.err(
                        v.span(),
                        format!("{at}.{field}"),
                        "pin one digest, sha256 or sha512, not both",
                    );
                    continue;
                }
                pin = self.parse(v, &format!("{at}.{field}"), |s| parse_digest(algorithm, s));
            }
        }
        let checksums = e
            .checksums
            .as_ref()
            .and_then(|u| self.url(u, &format!("{at}.checksums"), &["http", "https"]));
        let checksums_signature = e.checksums_signature.as_ref().and_then(|u| {
            if e.checksums.is_none() {
                self.err(
                    u.span(),
                    format!("{at}.checksums_signature"),
                    "a signature needs the checksum file it signs: set checksums too",
                );
            }
            self.url(u, &format!("{at}.checksums_signature"), &["http", "https"])
        });
        Some(Extension {
            name: name?,
            version: version?,
            roles,
            source: source?,
            checksums,
            checksums_signature,
            pin,
            locked: None,
        })
    }

    fn source(&mut self, e: &RawExtension, at: &str) -> Option<ExtensionSource> {
        match (&e.image, &e.build) {
            (Some(image), None) => self
                .url(image, &format!("{at}.image"), &["http", "https"])
                .map(ExtensionSource::Image),
            (None, Some(b)) => {
                let binaries: Vec<String> = b.binaries.iter().map(|s| s.to_string()).collect();
                for (j, bin) in b.binaries.iter().enumerate() {
                    if bin.is_empty() || bin.split('/').any(|c| c == "..") || bin.starts_with('/') {
                        self.err(
                            bin.span(),
                            format!("{at}.build.binaries[{j}]"),
                            "a relative path inside the archive, without `..`",
                        );
                    }
                }
                match (&b.archive, &b.deb) {
                    (Some(url), None) => {
                        if binaries.is_empty() {
                            self.err(
                                url.span(),
                                format!("{at}.build.binaries"),
                                "name the files of the archive that go to usr/bin",
                            );
                        }
                        let url = self.url(url, &format!("{at}.build.archive"), &["http", "https"]);
                        url.map(|url| ExtensionSource::Archive { url, binaries })
                    }
                    (None, Some(deb)) => {
                        let ok = match deb.strip_prefix("debian:") {
                            Some(pkg) => {
                                !pkg.is_empty()
                                    && pkg.bytes().all(|b| {
                                        b.is_ascii_lowercase()
                                            || b.is_ascii_digit()
                                            || b"+-.".contains(&b)
                                    })
                            }
                            None => self
                                .url(deb, &format!("{at}.build.deb"), &["http", "https"])
                                .is_some(),
                        };
                        if !ok && deb.starts_with("debian:") {
                            self.err(
                                deb.span(),
                                format!("{at}.build.deb"),
                                "expected debian:PACKAGE (a Debian package name) or an http(s) URL",
                            );
                        }
                        ok.then(|| ExtensionSource::Deb {
                            source: deb.to_string(),
                            binaries,
                        })
                    }
                    (a, _) => {
                        let span = a.as_ref().map(|t| *t.span()).unwrap_or(*e.name.span());
                        self.err(
                            &span,
                            format!("{at}.build"),
                            "give exactly one of archive (a .tar.gz URL) or deb",
                        );
                        None
                    }
                }
            }
            (Some(image), Some(_)) => {
                self.err(
                    image.span(),
                    format!("{at}.image"),
                    "give either image (a ready sysext) or build, not both",
                );
                None
            }
            (None, None) => {
                self.err(
                    e.name.span(),
                    format!("{at}.image"),
                    "no source: give image (a ready sysext URL) or build (archive or deb)",
                );
                None
            }
        }
    }
}
