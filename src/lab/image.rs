//! The lab node image: a Debian kernel and an initrd that boot a QEMU VM
//! the way metalherd boots a Flatcar node, from Debian packages.
//!
//! The initrd is two cpio archives back to back: first, uncompressed, the
//! root filesystem as a zstd squashfs (mmdebstrap, merged-usr: systemd,
//! OpenSSH, Debian's Ignition ...; no etcd: node software reaches lab VMs
//! as system extensions, the way it reaches Flatcar, see
//! [`super::extensions`]); then, gzip-compressed, busybox,
//! a few kernel modules and `/init` ([`INIT`]). `/init` mounts the root
//! read-only under a tmpfs overlay at `/sysroot`, gets an address by DHCP,
//! and starts systemd in an initrd (a tmpfs with the root's `/usr` and a
//! copy of its `/etc`), which runs Ignition's stages as Flatcar's
//! initramfs runs them (fetch from `ignition.config.url` on the kernel
//! command line, disks, mount, files, umount) and switches to the root.
//! Everything is built by one shell script ([`BUILD_SCRIPT`]), run as root.
//!
//! Layout: `<assets>/lab/<suite>/` holds `vmlinuz`, `initrd.img` and
//! `MANIFEST.json`, and `debs/` the Debian packages extensions are built
//! from (downloaded, not installed, by the root's apt, which checks them
//! against Debian's signed index). The manifest records the [`input_hash`] of everything
//! the build depends on (script, `/init`, package lists, suite); a
//! directory whose manifest matches, with files of the recorded sizes and
//! digests, is used as is. A build happens in `<assets>/lab/.build-<pid>/`
//! and replaces the old directory in one rename; a failed build deletes
//! its staging directory and keeps its log as
//! `<assets>/lab/.failed-<suite>.log`.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::fsutil::{create_dir_with_mode, replace_file, swap_dir};

/// The build script (see its header for its arguments).
const BUILD_SCRIPT: &str = include_str!("image/build.sh");
/// The initrd's `/init`.
const INIT: &str = include_str!("image/init");
/// What the root filesystem is made of (and what the build needs from it:
/// busybox-static for the initrd, kmod for `modprobe` and `depmod`;
/// libnss-myhostname resolves the hostname Ignition sets, for sudo; the
/// disk tools Ignition's disks stage runs).
const PACKAGES: &[&str] = &[
    "linux-image-amd64",
    "systemd",
    "systemd-sysv",
    "udev",
    "dbus",
    "openssh-server",
    "sudo",
    "curl",
    "iproute2",
    "ca-certificates",
    "ignition",
    "kmod",
    "busybox-static",
    "libnss-myhostname",
    // What Ignition's disks stage runs, as on Flatcar: sgdisk, mdadm,
    // cryptsetup (mkfs.ext4 and wipefs are in every Debian root); and
    // device-mapper's udev rules, without which systemd never sees an
    // opened LUKS volume's device as ready (Ignition waits for it).
    "gdisk",
    "mdadm",
    "cryptsetup-bin",
    "dmsetup",
    // mkfs.xfs (Fedora CoreOS's root is xfs; Ignition formats with it).
    "xfsprogs",
];
const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";
/// The image's files, as the boot server serves them.
const FILES: [&str; 2] = ["vmlinuz", "initrd.img"];

/// How to build.
#[derive(Clone, Debug, Default)]
pub struct BuildOptions {
    /// The Debian mirror (default `http://deb.debian.org/debian`). Not part
    /// of the input hash: any mirror serves the same suite.
    pub mirror: Option<String>,
    /// Build even when a matching image is there.
    pub force: bool,
    /// Debian packages to download into `debs/` for the fleet's
    /// extensions (`build: { deb: debian:PACKAGE }`).
    pub debs: Vec<String>,
}

/// What [`build`] made or found.
#[derive(Clone, Debug, Serialize)]
pub struct ImageReport {
    /// `<assets>/lab/<version>`.
    pub dir: PathBuf,
    pub input_hash: String,
    /// True when the image was already there and nothing was built.
    pub cached: bool,
    /// How long the build took (when cached, the recorded build's time).
    pub build_seconds: f64,
    pub kernel_bytes: u64,
    pub initrd_bytes: u64,
}

/// `MANIFEST.json` of an image directory.
#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    flavor: String,
    version: String,
    input_hash: String,
    built_at: String,
    build_seconds: f64,
    files: BTreeMap<String, FileEntry>,
    /// Every package in the root, `name=version`.
    packages: Vec<String>,
    /// The downloaded extension packages, by file name under `debs/`.
    #[serde(default)]
    debs: BTreeMap<String, FileEntry>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct FileEntry {
    bytes: u64,
    sha256: String,
}

/// The input hash (sha256 hex of every input: the build script, /init,
/// the package list, the suite) — the cache key.
pub fn input_hash(version: &str, debs: &[String]) -> String {
    hash_inputs(BUILD_SCRIPT, INIT, PACKAGES, version, debs)
}

fn hash_inputs(
    script: &str,
    init: &str,
    packages: &[&str],
    version: &str,
    debs: &[String],
) -> String {
    let mut h = Sha256::new();
    // Each input length-prefixed, so that no two input sets hash alike.
    let mut part = |name: &str, bytes: &[u8]| {
        h.update(name.as_bytes());
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    part("metalherd-lab-image/1", b"");
    part("build.sh", script.as_bytes());
    part("init", init.as_bytes());
    part("packages", packages.join(",").as_bytes());
    part("suite", version.as_bytes());
    if !debs.is_empty() {
        part("debs", debs.join(",").as_bytes());
    }
    hex::encode(h.finalize())
}

/// A Debian suite name: lowercase letters only (it becomes a directory
/// name and a mmdebstrap argument).
fn validate_version(version: &str) -> anyhow::Result<()> {
    if version.is_empty() || !version.bytes().all(|b| b.is_ascii_lowercase()) {
        bail!(
            "lab image version {version:?}: expected a Debian suite name of lowercase letters, such as \"bookworm\""
        );
    }
    Ok(())
}

/// Builds (or finds cached) the lab image into `<assets_dir>/lab/<version>/`
/// with files `vmlinuz`, `initrd.img`, `MANIFEST.json`.
pub fn build(
    assets_dir: &Path,
    version: &str,
    opts: &BuildOptions,
    progress: &dyn Fn(&str),
) -> anyhow::Result<ImageReport> {
    validate_version(version)?;
    let lab = assets_dir.join("lab");
    let target = lab.join(version);
    let hash = input_hash(version, &opts.debs);
    if !opts.force {
        if let Some(report) = cached(&target, &hash) {
            return Ok(report);
        }
    }
    preflight()?;
    create_dir_with_mode(&lab, 0o755).with_context(|| format!("creating {}", lab.display()))?;
    remove_stale_builds(&lab);

    let staging = lab.join(format!(".build-{}", std::process::id()));
    if staging.exists() {
        remove_tree(&staging)?;
    }
    let log = lab.join(format!(".build-{}.log", std::process::id()));
    let started = Instant::now();
    let result = build_in(&staging, &log, version, &hash, opts, progress, started);
    match result {
        Ok(manifest) => {
            let _ = fs::remove_file(&log);
            swap_dir(&staging, &target)
                .with_context(|| format!("moving the new image to {}", target.display()))?;
            progress("done");
            Ok(ImageReport {
                dir: target,
                input_hash: hash,
                cached: false,
                build_seconds: manifest.build_seconds,
                kernel_bytes: manifest.files["vmlinuz"].bytes,
                initrd_bytes: manifest.files["initrd.img"].bytes,
            })
        }
        Err(e) => {
            let cleanup = remove_tree(&staging);
            let kept = lab.join(format!(".failed-{version}.log"));
            let e = match fs::rename(&log, &kept) {
                Ok(()) => anyhow::anyhow!("{e:#}\n(full build log: {})", kept.display()),
                Err(_) => e,
            };
            match cleanup {
                Ok(()) => Err(e),
                Err(c) => Err(e.context(format!("and cleaning up failed too: {c:#}"))),
            }
        }
    }
}

/// Runs the build script into `staging` and writes the manifest there.
fn build_in(
    staging: &Path,
    log: &Path,
    version: &str,
    hash: &str,
    opts: &BuildOptions,
    progress: &dyn Fn(&str),
    started: Instant,
) -> anyhow::Result<Manifest> {
    let work = staging.join("work");
    create_dir_with_mode(&work, 0o700).with_context(|| format!("creating {}", work.display()))?;
    fs::set_permissions(staging, fs::Permissions::from_mode(0o755))?;
    let script = work.join("build.sh");
    fs::write(&script, BUILD_SCRIPT).with_context(|| format!("writing {}", script.display()))?;
    fs::write(work.join("init"), INIT).context("writing init")?;
    let mirror = opts.mirror.as_deref().unwrap_or(DEFAULT_MIRROR);

    let log_file = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let mut child = Command::new("sh")
        .arg(&script)
        .args([version, mirror, &PACKAGES.join(",")])
        .arg(&work)
        .arg(staging)
        .arg(opts.debs.join(","))
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log_file)
        .spawn()
        .context("starting the lab image build script (sh)")?;
    let mut step = String::from("start");
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines() {
            let line = line.context("reading the build script's progress")?;
            // "step NAME what the user sees"
            if let Some(s) = line.strip_prefix("step ") {
                step = s.split(' ').next().unwrap_or(s).to_string();
                if s != "done" {
                    progress(s);
                }
            }
        }
    }
    let status = child.wait().context("waiting for the build script")?;
    if !status.success() {
        bail!(
            "building the lab image failed at step `{step}` ({status}); the last lines of its output:\n{}",
            tail(log, 15)
        );
    }

    progress("manifest");
    let packages_txt = staging.join("packages.txt");
    let packages = fs::read_to_string(&packages_txt)
        .with_context(|| format!("reading {}", packages_txt.display()))?
        .lines()
        .map(str::to_string)
        .collect();
    fs::remove_file(&packages_txt)?;
    remove_tree(&work)?;
    let mut files = BTreeMap::new();
    for name in FILES {
        let path = staging.join(name);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644))
            .with_context(|| format!("the build made no {}", path.display()))?;
        files.insert(name.to_string(), file_entry(&path)?);
    }
    let mut debs = BTreeMap::new();
    let debs_dir = staging.join("debs");
    for entry in
        fs::read_dir(&debs_dir).with_context(|| format!("reading {}", debs_dir.display()))?
    {
        let path = entry?.path();
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644))?;
        debs.insert(name, file_entry(&path)?);
    }
    for want in &opts.debs {
        if !debs.keys().any(|f| f.starts_with(&format!("{want}_"))) {
            bail!(
                "the build downloaded no package {want} into {}",
                debs_dir.display()
            );
        }
    }
    let manifest = Manifest {
        flavor: "lab".into(),
        version: version.into(),
        input_hash: hash.into(),
        built_at: time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .context("formatting the build time")?,
        build_seconds: (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        files,
        packages,
        debs,
    };
    write_manifest(staging, &manifest)?;
    Ok(manifest)
}

fn write_manifest(dir: &Path, manifest: &Manifest) -> anyhow::Result<()> {
    let path = dir.join("MANIFEST.json");
    let mut json = serde_json::to_vec_pretty(manifest)?;
    json.push(b'\n');
    replace_file(&path, &json, 0o644).with_context(|| format!("writing {}", path.display()))
}

fn file_entry(path: &Path) -> anyhow::Result<FileEntry> {
    let mut file = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        bytes += n as u64;
    }
    Ok(FileEntry {
        bytes,
        sha256: hex::encode(h.finalize()),
    })
}

/// The image in `dir`, when its manifest has `hash` and its files are the
/// ones the manifest records.
fn cached(dir: &Path, hash: &str) -> Option<ImageReport> {
    let manifest: Manifest =
        serde_json::from_slice(&fs::read(dir.join("MANIFEST.json")).ok()?).ok()?;
    if manifest.input_hash != hash {
        return None;
    }
    for name in FILES {
        let recorded = manifest.files.get(name)?;
        let path = dir.join(name);
        // The size first: a cheap check before the digest.
        if fs::metadata(&path).ok()?.len() != recorded.bytes {
            return None;
        }
        if file_entry(&path).ok()? != *recorded {
            return None;
        }
    }
    for (name, recorded) in &manifest.debs {
        if file_entry(&dir.join("debs").join(name)).ok()? != *recorded {
            return None;
        }
    }
    Some(ImageReport {
        dir: dir.to_path_buf(),
        input_hash: hash.to_string(),
        cached: true,
        build_seconds: manifest.build_seconds,
        kernel_bytes: manifest.files["vmlinuz"].bytes,
        initrd_bytes: manifest.files["initrd.img"].bytes,
    })
}

/// The extension packages an image directory holds: file name under
/// `debs/` → sha256, as its manifest recorded them at build time.
pub fn recorded_debs(dir: &Path) -> anyhow::Result<BTreeMap<String, String>> {
    let path = dir.join("MANIFEST.json");
    let manifest: Manifest = serde_json::from_slice(
        &fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
    )
    .with_context(|| format!("parsing {}", path.display()))?;
    Ok(manifest
        .debs
        .into_iter()
        .map(|(name, entry)| (name, entry.sha256))
        .collect())
}

/// Root, and the programs the script runs, before anything is started.
fn preflight() -> anyhow::Result<()> {
    if !rustix::process::geteuid().is_root() {
        bail!(
            "building the lab image needs root (mmdebstrap --mode=root, chroot); run it with sudo"
        );
    }
    let dirs = [
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ];
    let missing: Vec<&str> = [
        ("mmdebstrap", "mmdebstrap"),
        ("mksquashfs", "squashfs-tools"),
        ("cpio", "cpio"),
        ("gzip", "gzip"),
        ("chroot", "coreutils"),
    ]
    .into_iter()
    .filter(|(program, _)| !dirs.iter().any(|d| Path::new(d).join(program).is_file()))
    .map(|(_, package)| package)
    .collect();
    if !missing.is_empty() {
        bail!(
            "building the lab image needs more programs: apt-get install {}",
            missing.join(" ")
        );
    }
    if !Path::new("/usr/share/mmdebstrap/hooks/merged-usr").is_dir() {
        bail!("mmdebstrap has no merged-usr hook (/usr/share/mmdebstrap/hooks/merged-usr); install mmdebstrap >= 1.0");
    }
    Ok(())
}

/// Deletes the staging directories of builds whose process is gone.
fn remove_stale_builds(lab: &Path) {
    let Ok(entries) = fs::read_dir(lab) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(".build-") else {
            continue;
        };
        let pid = pid.trim_end_matches(".log");
        if pid.parse::<u32>().is_err() || Path::new("/proc").join(pid).exists() {
            continue;
        }
        let path = entry.path();
        let _ = if path.is_dir() {
            remove_tree(&path)
        } else {
            fs::remove_file(&path).map_err(Into::into)
        };
    }
}

/// Deletes a build tree. A build killed halfway may leave mmdebstrap's
/// mounts (`/dev`, `/proc`, `/sys`) in its chroot: those are detached
/// first, and nothing is deleted while any is left.
fn remove_tree(path: &Path) -> anyhow::Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let real = fs::canonicalize(path).with_context(|| format!("resolving {}", path.display()))?;
    let mut mounts = mounts_under(&real);
    mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in &mounts {
        let _ = Command::new("umount")
            .args(["--lazy", m])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    if let Some(m) = mounts_under(&real).first() {
        bail!(
            "not deleting {}: {m} is still mounted (umount it, then delete the directory)",
            path.display()
        );
    }
    fs::remove_dir_all(path).with_context(|| format!("deleting {}", path.display()))
}

/// Mount points at or below `dir` (an absolute, resolved path).
fn mounts_under(dir: &Path) -> Vec<String> {
    let dir = dir.to_string_lossy();
    let prefix = format!("{}/", dir.trim_end_matches('/'));
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mountinfo)
        .filter(|m| *m == dir || m.starts_with(&prefix))
        .collect()
}

/// Mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let mut out = Vec::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let octal = i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c));
        if b[i] == b'\\' && octal {
            let v = b[i + 1..i + 4]
                .iter()
                .fold(0u32, |v, c| v * 8 + u32::from(c - b'0'));
            out.push(u8::try_from(v).unwrap_or(b'?'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_hash_is_stable_and_covers_every_input() {
        let base = input_hash("bookworm", &[]);
        assert_eq!(base, input_hash("bookworm", &[]));
        assert_eq!(base.len(), 64);
        assert!(base.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(
            base,
            hash_inputs(BUILD_SCRIPT, INIT, PACKAGES, "bookworm", &[])
        );
        let variants = [
            input_hash("trixie", &[]),
            hash_inputs(&format!("{BUILD_SCRIPT}#"), INIT, PACKAGES, "bookworm", &[]),
            hash_inputs(BUILD_SCRIPT, &format!("{INIT}#"), PACKAGES, "bookworm", &[]),
            hash_inputs(BUILD_SCRIPT, INIT, &PACKAGES[1..], "bookworm", &[]),
            // Moving a byte from one input to the next changes the hash.
            hash_inputs(BUILD_SCRIPT, &format!("x{INIT}"), PACKAGES, "bookworm", &[]),
        ];
        let with_debs = input_hash("bookworm", &["etcd-server".to_string()]);
        assert_ne!(base, with_debs, "the extension packages are an input");
        for v in &variants {
            assert_ne!(&base, v);
        }
        assert_ne!(
            hash_inputs("ab", "c", &[], "x", &[]),
            hash_inputs("a", "bc", &[], "x", &[])
        );
    }

    #[test]
    fn versions_are_suite_names() {
        assert!(validate_version("bookworm").is_ok());
        assert!(validate_version("trixie").is_ok());
        for bad in [
            "",
            "Bookworm",
            "bookworm-backports",
            "../etc",
            "12",
            "sid/",
            "a b",
        ] {
            let err = validate_version(bad).unwrap_err().to_string();
            assert!(err.contains("lowercase letters"), "{bad}: {err}");
        }
        let err = build(
            Path::new("/nonexistent"),
            "../x",
            &BuildOptions::default(),
            &|_| {},
        )
        .unwrap_err();
        assert!(err.to_string().contains("Debian suite"), "{err}");
    }

    fn fake_image(assets: &Path, hash: &str) -> PathBuf {
        let dir = assets.join("lab/bookworm");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("vmlinuz"), b"kernel").unwrap();
        fs::write(dir.join("initrd.img"), b"initrd!").unwrap();
        let files = FILES
            .iter()
            .map(|n| (n.to_string(), file_entry(&dir.join(n)).unwrap()))
            .collect();
        let manifest = Manifest {
            flavor: "lab".into(),
            version: "bookworm".into(),
            input_hash: hash.into(),
            built_at: "2026-01-01T00:00:00Z".into(),
            build_seconds: 61.5,
            files,
            packages: vec!["systemd=252.38-1~deb12u1".into()],
            debs: BTreeMap::new(),
        };
        write_manifest(&dir, &manifest).unwrap();
        dir
    }

    #[test]
    fn a_matching_image_is_used_as_is() {
        let assets = tempfile::tempdir().unwrap();
        let hash = input_hash("bookworm", &[]);
        let dir = fake_image(assets.path(), &hash);
        // No root, no mmdebstrap needed: nothing is built.
        let report = build(assets.path(), "bookworm", &BuildOptions::default(), &|s| {
            panic!("progress {s} on a cached image")
        })
        .unwrap();
        assert!(report.cached);
        assert_eq!(report.dir, dir);
        assert_eq!(report.input_hash, hash);
        assert_eq!((report.kernel_bytes, report.initrd_bytes), (6, 7));
        assert_eq!(report.build_seconds, 61.5);
        let manifest: serde_json::Value =
            serde_json::from_slice(&fs::read(dir.join("MANIFEST.json")).unwrap()).unwrap();
        assert_eq!(manifest["flavor"], "lab");
        assert_eq!(manifest["files"]["vmlinuz"]["bytes"], 6);
        assert_eq!(
            manifest["files"]["initrd.img"]["sha256"],
            hex::encode(Sha256::digest(b"initrd!"))
        );
    }

    #[test]
    fn a_changed_or_different_image_is_not_used() {
        let assets = tempfile::tempdir().unwrap();
        let hash = input_hash("bookworm", &[]);
        let dir = fake_image(assets.path(), &hash);
        assert!(cached(&dir, &hash).is_some());
        assert!(
            cached(&dir, &input_hash("trixie", &[])).is_none(),
            "other inputs"
        );
        fs::write(dir.join("initrd.img"), b"initrd?").unwrap();
        assert!(cached(&dir, &hash).is_none(), "same size, other contents");
        fs::write(dir.join("initrd.img"), b"initrd!").unwrap();
        assert!(cached(&dir, &hash).is_some());
        fs::remove_file(dir.join("vmlinuz")).unwrap();
        assert!(cached(&dir, &hash).is_none(), "a file is missing");
        fake_image(assets.path(), &hash);
        fs::write(dir.join("MANIFEST.json"), b"{").unwrap();
        assert!(cached(&dir, &hash).is_none(), "a broken manifest");
    }

    #[test]
    fn mountinfo_paths_are_unescaped() {
        assert_eq!(unescape_mountinfo(r"/tmp/a\040b"), "/tmp/a b");
        assert_eq!(unescape_mountinfo(r"/x\134y"), r"/x\y");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
    }

    /// Builds the real image (root, network to a Debian mirror, ~2 min):
    /// `sudo cargo test --lib lab::image -- --ignored --nocapture`.
    /// Into `$METALHERD_LAB_ASSETS` (default `/tmp/labimg`); set
    /// `METALHERD_LAB_FORCE=1` to rebuild a cached image.
    #[test]
    #[ignore]
    fn build_for_real() {
        let assets = std::env::var_os("METALHERD_LAB_ASSETS")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/tmp/labimg"));
        let opts = BuildOptions {
            mirror: None,
            force: std::env::var_os("METALHERD_LAB_FORCE").is_some(),
            debs: vec!["etcd-server".into()],
        };
        let started = Instant::now();
        let report = build(&assets, "bookworm", &opts, &|s| {
            eprintln!("[{:6.1}s] {s}", started.elapsed().as_secs_f64())
        })
        .unwrap();
        eprintln!("{report:#?}");
        assert!(report.dir.join("MANIFEST.json").is_file());
        // A second call finds it.
        let again = build(&assets, "bookworm", &BuildOptions::default(), &|_| {}).unwrap();
        assert!(again.cached);
    }
}
