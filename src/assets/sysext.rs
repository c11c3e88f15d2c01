//! System extension (sysext) images: node software (etcd, kubelet) packed
//! as a squashfs that `systemd-sysext` merges over the node's `/usr`.
//!
//! [`build`] takes a release archive (`.tar.gz`) or a Debian package whose
//! digest is pinned, checks that digest before reading anything else,
//! picks the named binaries out of it, and writes `<name>.raw` holding
//! exactly `usr/bin/<binary>`… and
//! `usr/lib/extension-release.d/extension-release.<name>`. The same input
//! and spec give the same image, byte for byte.
//!
//! On the node the image must be called `<name>.raw` (in
//! `/etc/extensions/` or `/var/lib/extensions/`): systemd-sysext looks for
//! `extension-release.<image name>` inside it.
//!
//! To add an input format: a variant of [`SysextInput`] and a function in
//! `unpack` that hands `take_binaries` a `tar::Archive` of its files.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::SystemTime;

use serde::Serialize;

use super::verify::{self, Algorithm, Expected, VerifyError};

mod unpack;

/// The OS an image is for: the extension-release `ID=`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SysextOs {
    /// `ID=flatcar`.
    Flatcar,
    /// `ID=fedora` (Fedora CoreOS).
    Fedora,
    /// `ID=debian` (the lab image).
    Debian,
    /// `ID=_any`: static binaries that need nothing from the host's /usr.
    Any,
}

impl SysextOs {
    pub fn id(self) -> &'static str {
        match self {
            SysextOs::Flatcar => "flatcar",
            SysextOs::Fedora => "fedora",
            SysextOs::Debian => "debian",
            SysextOs::Any => "_any",
        }
    }
}

/// Where the binaries come from.
#[derive(Clone, Debug)]
pub enum SysextInput {
    /// A Debian package (`.deb`), read with `dpkg-deb`.
    Deb(PathBuf),
    /// A release tarball: gzip-compressed (`.tar.gz`, `.tgz`) or plain
    /// `.tar`, told apart by content, not name.
    Archive(PathBuf),
}

impl SysextInput {
    pub fn path(&self) -> &Path {
        match self {
            SysextInput::Deb(p) | SysextInput::Archive(p) => p,
        }
    }
}

/// What to build. [`build`] checks it before doing anything.
#[derive(Clone, Debug)]
pub struct SysextSpec {
    /// The image's name: `<name>.raw` on the node, `extension-release.<name>`
    /// inside. Lower-case letters, digits, `-` and `_`.
    pub name: String,
    /// The software's version, recorded as `SYSEXT_VERSION_ID=` (systemd
    /// shows it and does not match on it).
    pub version: String,
    pub os: SysextOs,
    /// The host `VERSION_ID=` the image requires (`12` for Debian bookworm,
    /// the Fedora major for Fedora CoreOS). Required for Fedora and Debian,
    /// whose os-release has no `SYSEXT_LEVEL`; for Flatcar, leave it unset
    /// to get `SYSEXT_LEVEL=1.0` (any Flatcar release); refused with `Any`.
    pub os_version: Option<String>,
    /// The input's files to install as `usr/bin/<basename>`: paths inside a
    /// tarball (`etcd-v3.5.16-linux-amd64/etcd`) or a package
    /// (`usr/bin/etcd`). For a `.deb`, empty means every regular file
    /// directly under `usr/bin`.
    pub binaries: Vec<String>,
    /// The input's pinned digest, checked before anything is unpacked.
    pub expected: Expected,
}

/// A built image.
#[derive(Clone, Debug, Serialize)]
pub struct SysextImage {
    pub path: PathBuf,
    pub size: u64,
    pub sha512: String,
    pub sha256: String,
    /// The files in the image, sorted (directories left out).
    pub files: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SysextError {
    #[error("sysext `{name}`: {message}")]
    Spec { name: String, message: String },
    /// The input's digest did not match (names the file, both digests).
    #[error(transparent)]
    Verify(#[from] VerifyError),
    #[error("{}: {message}", input.display())]
    Input { input: PathBuf, message: String },
    #[error("{}: {}", input.display(), missing_message(missing, candidates))]
    MissingBinaries {
        input: PathBuf,
        missing: Vec<String>,
        /// Files of the input with the same base name as a missing one.
        candidates: Vec<String>,
    },
    #[error("{program} failed on {} ({status}): {stderr}", path.display())]
    Tool {
        program: &'static str,
        path: PathBuf,
        status: String,
        /// The last lines it printed.
        stderr: String,
    },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
}

fn missing_message(missing: &[String], candidates: &[String]) -> String {
    let mut s = format!("not found in the input: {}", missing.join(", "));
    if !candidates.is_empty() {
        s.push_str(&format!(" (it has {})", candidates.join(", ")));
    }
    s
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> SysextError + '_ {
    move |source| SysextError::Io {
        path: path.into(),
        source,
    }
}

/// systemd's name for the only architecture metalherd provisions.
const ARCHITECTURE: &str = "x86-64";

/// The `extension-release.<name>` file for `spec` (assumed valid; [`build`]
/// checks it).
///
/// How systemd 252 (Flatcar's, and Debian 12's) matches it against the
/// host, read in `src/shared/extension-release.c`
/// (`extension_release_validate`) and confirmed in Debian 12's
/// libsystemd-shared-252.so:
/// - `ARCHITECTURE=`, if set and not `_any`, must equal the host's
///   (`x86-64`), else the image is skipped;
/// - `ID=` must be set; `ID=_any` matches every host and nothing else is
///   compared (supported in 252);
/// - otherwise `ID=` must equal the host's; then, if the host has no
///   `VERSION_ID` and no `SYSEXT_LEVEL`, it matches; if both host and image
///   set `SYSEXT_LEVEL` they must be equal (`VERSION_ID` is then ignored);
///   else, if the host has `VERSION_ID`, the image must have the same one.
///
/// So Flatcar (os-release `SYSEXT_LEVEL=1.0`) takes `SYSEXT_LEVEL=1.0` from
/// any release, as its sysext-bakery writes; Debian and Fedora CoreOS have
/// only `VERSION_ID`, which the image must then carry.
/// `SYSEXT_ID`/`SYSEXT_VERSION_ID` are the os-release(5) names for the
/// extension's own identity; systemd 252 ignores them.
pub fn extension_release(spec: &SysextSpec) -> String {
    let mut s = format!("ID={}\n", spec.os.id());
    match (spec.os, &spec.os_version) {
        (SysextOs::Any, _) => {}
        (_, Some(v)) => s.push_str(&format!("VERSION_ID={v}\n")),
        (SysextOs::Flatcar, None) => s.push_str("SYSEXT_LEVEL=1.0\n"),
        (SysextOs::Fedora | SysextOs::Debian, None) => {}
    }
    s.push_str(&format!(
        "ARCHITECTURE={ARCHITECTURE}\nSYSEXT_ID={}\nSYSEXT_VERSION_ID={}\n",
        spec.name, spec.version
    ));
    s
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// Characters that need no quoting in os-release and are enough for any
/// version string (`3.5.16`, `1:3.4.23-1+deb12u1`, `1.31.0~rc1`).
fn is_version(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".+-_~:".contains(&b))
}

/// A path inside an input, relative and without `..`, with `./` dropped;
/// `None` when it is absolute or climbs out.
fn clean(path: &Path) -> Option<String> {
    let mut parts = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => parts.push(p.to_str()?),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Which files to take, as clean paths.
enum Select {
    Named(BTreeSet<String>),
    AllUnderUsrBin,
}

fn validate(spec: &SysextSpec, input: &SysextInput) -> Result<Select, SysextError> {
    let bad = |message: String| SysextError::Spec {
        name: spec.name.clone(),
        message,
    };
    if !is_name(&spec.name) {
        return Err(bad(
            "the name must be 1-64 lower-case letters, digits, `-` or `_`".into(),
        ));
    }
    if !is_version(&spec.version) {
        return Err(bad(format!(
            "version `{}` must be letters, digits and `.+-_~:`",
            spec.version
        )));
    }
    match (spec.os, &spec.os_version) {
        (SysextOs::Any, Some(_)) => {
            return Err(bad(
                "an OS version means nothing with ID=_any; leave it out".into(),
            ))
        }
        (SysextOs::Fedora | SysextOs::Debian, None) => {
            return Err(bad(format!(
                "{} hosts match extensions by VERSION_ID only: give the OS version \
                 (e.g. {})",
                spec.os.id(),
                if spec.os == SysextOs::Debian {
                    "12"
                } else {
                    "41"
                }
            )))
        }
        (_, Some(v)) if !is_version(v) => {
            return Err(bad(format!(
                "OS version `{v}` must be letters, digits and `.+-_~:`"
            )))
        }
        _ => {}
    }
    let len = match spec.expected.algorithm {
        Algorithm::Sha256 => 64,
        Algorithm::Sha512 => 128,
    };
    if spec.expected.hex.len() != len || !spec.expected.hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad(format!(
            "the expected {} must be {len} hex digits",
            spec.expected.algorithm.name()
        )));
    }
    if spec.binaries.is_empty() {
        return match input {
            SysextInput::Deb(_) => Ok(Select::AllUnderUsrBin),
            SysextInput::Archive(_) => Err(bad(
                "name the archive's binaries to install (paths inside it)".into(),
            )),
        };
    }
    let mut named = BTreeSet::new();
    let mut basenames = BTreeSet::new();
    for b in &spec.binaries {
        // A leading `/` is how people write a package's paths; accept it.
        let path = clean(Path::new(b.trim_start_matches('/'))).ok_or_else(|| {
            bad(format!(
                "binary `{b}` must be a path inside the input, without `..`"
            ))
        })?;
        if !basenames.insert(basename(&path).to_string()) {
            return Err(bad(format!(
                "two binaries are named `{}`; both would be usr/bin/{}",
                basename(&path),
                basename(&path)
            )));
        }
        named.insert(path);
    }
    Ok(Select::Named(named))
}

/// Builds the image for `spec` from `input` and writes it to `out`
/// atomically (mode 0644): a temporary file beside `out`, then a rename.
///
/// The input's digest is checked first; on a mismatch nothing is unpacked
/// and nothing is written. What is unpacked is a private copy, checked
/// again, so the file cannot change between the check and the reading.
pub fn build(
    spec: &SysextSpec,
    input: &SysextInput,
    out: &Path,
) -> Result<SysextImage, SysextError> {
    let select = validate(spec, input)?;
    let input_path = input.path();
    let label = input_path.display().to_string();
    verify::digest_file(input_path)?.check(&label, &spec.expected)?;

    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let staging = tempfile::Builder::new()
        .prefix(&format!(".{}.sysext-", spec.name))
        .tempdir_in(dir)
        .map_err(io_at(dir))?;
    let copy = staging.path().join("input");
    fs::copy(input_path, &copy).map_err(io_at(&copy))?;
    verify::digest_file(&copy)?.check(&label, &spec.expected)?;

    let root = staging.path().join("root");
    let bin_dir = root.join("usr/bin");
    let release_dir = root.join("usr/lib/extension-release.d");
    for d in [&bin_dir, &release_dir] {
        fs::create_dir_all(d).map_err(io_at(d))?;
    }
    let mut files = match input {
        SysextInput::Archive(_) => unpack::from_archive(input_path, &copy, &select, &bin_dir)?,
        SysextInput::Deb(_) => {
            unpack::from_deb(input_path, &copy, staging.path(), &select, &bin_dir)?
        }
    };
    let release = release_dir.join(format!("extension-release.{}", spec.name));
    fs::write(&release, extension_release(spec)).map_err(io_at(&release))?;
    files.push(format!(
        "usr/lib/extension-release.d/extension-release.{}",
        spec.name
    ));
    files.sort();
    fix_metadata(&root, &files)?;

    let image = staging.path().join("image.raw");
    mksquashfs(&root, &image)?;
    fs::set_permissions(&image, fs::Permissions::from_mode(0o644)).map_err(io_at(&image))?;
    File::open(&image)
        .and_then(|f| f.sync_all())
        .map_err(io_at(&image))?;
    let digests = verify::digest_file(&image)?;
    fs::rename(&image, out).map_err(io_at(out))?;
    Ok(SysextImage {
        path: out.to_path_buf(),
        size: digests.size,
        sha512: digests.sha512,
        sha256: digests.sha256,
        files,
    })
}

/// Fixed modes and times on everything staged. mksquashfs is told to
/// override owners and times too (`-all-root`, `-all-time`); setting them
/// here as well keeps the tree right whatever the umask or clock.
fn fix_metadata(root: &Path, files: &[String]) -> Result<(), SysextError> {
    let epoch = SystemTime::UNIX_EPOCH;
    for f in files {
        let path = root.join(f);
        let mode = if f.starts_with("usr/bin/") {
            0o755
        } else {
            0o644
        };
        let file = File::options()
            .write(true)
            .open(&path)
            .map_err(io_at(&path))?;
        file.set_permissions(fs::Permissions::from_mode(mode))
            .and_then(|()| file.set_modified(epoch))
            .map_err(io_at(&path))?;
    }
    for d in [
        "usr/bin",
        "usr/lib/extension-release.d",
        "usr/lib",
        "usr",
        "",
    ] {
        let path = root.join(d);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).map_err(io_at(&path))?;
        File::open(&path)
            .and_then(|f| f.set_modified(epoch))
            .map_err(io_at(&path))?;
    }
    Ok(())
}

/// mksquashfs from squashfs-tools, the reference writer (the kernel's own
/// squashfs maintainer's; what Flatcar's sysext-bakery and mkosi use),
/// over backhand: backhand would add some 40 crates, proc macros among
/// them, to every build, and its images are proven mostly against its own
/// reader, while the lab already needs squashfs-tools. gzip because every
/// kernel with squashfs reads it (Flatcar's, Fedora's and Debian's also
/// read xz and zstd; the binaries are small). Reproducible: squashfs-tools
/// 4.4+ write in a fixed order; owners, times and xattrs are fixed or
/// dropped. SOURCE_DATE_EPOCH is removed from its environment because
/// mksquashfs refuses it together with `-mkfs-time`/`-all-time`.
fn mksquashfs(root: &Path, image: &Path) -> Result<(), SysextError> {
    let tool_err = |status: String, stderr: String| SysextError::Tool {
        program: "mksquashfs",
        path: image.into(),
        status,
        stderr,
    };
    let out = Command::new("mksquashfs")
        .arg(root)
        .arg(image)
        .args([
            "-noappend",
            "-comp",
            "gzip",
            "-all-root",
            "-no-xattrs",
            "-mkfs-time",
            "0",
            "-all-time",
            "0",
            "-no-progress",
            "-quiet",
        ])
        .env_remove("SOURCE_DATE_EPOCH")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            tool_err(
                "not started".into(),
                format!("{e} (install it: apt-get install squashfs-tools)"),
            )
        })?;
    if !out.status.success() {
        let mut text = out.stdout;
        text.extend_from_slice(&out.stderr);
        return Err(tool_err(out.status.to_string(), tail(&text)));
    }
    Ok(())
}

/// The last lines a program printed, enough to say why it failed.
fn tail(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(10);
    lines[start..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(os: SysextOs, os_version: Option<&str>) -> SysextSpec {
        SysextSpec {
            name: "etcd".into(),
            version: "3.5.16".into(),
            os,
            os_version: os_version.map(str::to_string),
            binaries: vec!["etcd-v3.5.16-linux-amd64/etcd".into()],
            expected: Expected {
                algorithm: Algorithm::Sha256,
                hex: "ab".repeat(32),
            },
        }
    }

    #[test]
    fn extension_release_per_os() {
        let tail = "ARCHITECTURE=x86-64\nSYSEXT_ID=etcd\nSYSEXT_VERSION_ID=3.5.16\n";
        let cases = [
            (SysextOs::Flatcar, None, "ID=flatcar\nSYSEXT_LEVEL=1.0\n"),
            (
                SysextOs::Flatcar,
                Some("4081.2.0"),
                "ID=flatcar\nVERSION_ID=4081.2.0\n",
            ),
            (SysextOs::Fedora, Some("41"), "ID=fedora\nVERSION_ID=41\n"),
            (SysextOs::Debian, Some("12"), "ID=debian\nVERSION_ID=12\n"),
            (SysextOs::Any, None, "ID=_any\n"),
        ];
        for (os, v, head) in cases {
            assert_eq!(extension_release(&spec(os, v)), format!("{head}{tail}"));
        }
    }

    #[test]
    fn bad_specs_are_refused() {
        let archive = SysextInput::Archive("x.tar.gz".into());
        let refused = |s: SysextSpec, why: &str| {
            let err = validate(&s, &archive).err().expect("refused").to_string();
            assert!(err.contains(why), "{err}");
        };
        for name in ["", "Etcd", "../etcd", "a/b", "etcd.raw", "a b"] {
            let mut s = spec(SysextOs::Flatcar, None);
            s.name = name.into();
            refused(s, "the name must be");
        }
        refused(spec(SysextOs::Debian, None), "give the OS version");
        refused(spec(SysextOs::Fedora, None), "give the OS version");
        refused(spec(SysextOs::Any, Some("12")), "_any");
        refused(spec(SysextOs::Debian, Some("12\nID=x")), "OS version");
        let mut s = spec(SysextOs::Flatcar, None);
        s.version = "1 2".into();
        refused(s, "version");
        let mut s = spec(SysextOs::Flatcar, None);
        s.binaries = vec!["../etc/passwd".into()];
        refused(s, "without `..`");
        let mut s = spec(SysextOs::Flatcar, None);
        s.binaries = vec!["a/etcd".into(), "b/etcd".into()];
        refused(s, "two binaries");
        let mut s = spec(SysextOs::Flatcar, None);
        s.binaries.clear();
        refused(s, "name the archive's binaries");
        let mut s = spec(SysextOs::Flatcar, None);
        s.expected.hex = "abc".into();
        refused(s, "64 hex digits");
        let mut s = spec(SysextOs::Flatcar, None);
        s.binaries.clear();
        assert!(matches!(
            validate(&s, &SysextInput::Deb("x.deb".into())),
            Ok(Select::AllUnderUsrBin)
        ));
    }

    #[test]
    fn clean_paths() {
        assert_eq!(
            clean(Path::new("./usr/bin/etcd")).as_deref(),
            Some("usr/bin/etcd")
        );
        assert_eq!(clean(Path::new("a//b/./c")).as_deref(), Some("a/b/c"));
        assert_eq!(clean(Path::new("/usr/bin/etcd")), None);
        assert_eq!(clean(Path::new("usr/../../x")), None);
        assert_eq!(clean(Path::new("./")), None);
    }
}
