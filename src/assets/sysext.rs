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
//! To add an input format: a variant of [`SysextInput`] and a function
//! that hands `take_binaries` a `tar::Archive` of its files.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::SystemTime;

use serde::Serialize;

use super::verify::{self, Algorithm, Expected, VerifyError};

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
        SysextInput::Archive(_) => from_archive(input_path, &copy, &select, &bin_dir)?,
        SysextInput::Deb(_) => from_deb(input_path, &copy, staging.path(), &select, &bin_dir)?,
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

/// A tarball, gzip-compressed or not (told by its first bytes).
fn from_archive(
    input: &Path,
    copy: &Path,
    select: &Select,
    bin_dir: &Path,
) -> Result<Vec<String>, SysextError> {
    let mut head = [0u8; 512];
    let n = File::open(copy)
        .and_then(|mut f| read_up_to(&mut f, &mut head))
        .map_err(io_at(copy))?;
    let file = File::open(copy).map_err(io_at(copy))?;
    let unsupported = |what: &str| SysextError::Input {
        input: input.into(),
        message: format!(
            "{what}: metalherd reads .tar.gz and .tar archives (recompress with \
             `xz -dc FILE | gzip -n`)"
        ),
    };
    match &head[..n] {
        [0x1f, 0x8b, ..] => take_binaries(
            &mut tar::Archive::new(flate2::read::GzDecoder::new(io::BufReader::new(file))),
            input,
            select,
            bin_dir,
        ),
        [0xfd, b'7', b'z', b'X', b'Z', 0, ..] => Err(unsupported("an xz-compressed archive")),
        [0x28, 0xb5, 0x2f, 0xfd, ..] => Err(unsupported("a zstd-compressed archive")),
        [b'B', b'Z', b'h', ..] => Err(unsupported("a bzip2-compressed archive")),
        h if h.len() == 512 && &h[257..262] == b"ustar" => take_binaries(
            &mut tar::Archive::new(io::BufReader::new(file)),
            input,
            select,
            bin_dir,
        ),
        _ => Err(unsupported("not a tar archive")),
    }
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// A Debian package. `dpkg-deb --fsys-tarfile` turns it into one plain
/// tar stream whatever its data member's compression (xz, zstd, gzip) and
/// checks the package's format on the way; it is on every Debian host (the
/// lab's build host is one). Reading the `ar` container ourselves would
/// also need an xz and a zstd decoder, two C libraries in the build, to
/// do what dpkg already does.
fn from_deb(
    input: &Path,
    copy: &Path,
    staging: &Path,
    select: &Select,
    bin_dir: &Path,
) -> Result<Vec<String>, SysextError> {
    let stderr_path = staging.join("dpkg-deb.stderr");
    let stderr = File::create(&stderr_path).map_err(io_at(&stderr_path))?;
    let mut child = Command::new("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(copy)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .map_err(|e| SysextError::Tool {
            program: "dpkg-deb",
            path: input.into(),
            status: "not started".into(),
            stderr: format!("{e} (install it: apt-get install dpkg)"),
        })?;
    let Some(stdout) = child.stdout.take() else {
        return Err(SysextError::Input {
            input: input.into(),
            message: "dpkg-deb's output was not captured".into(),
        });
    };
    let mut archive = tar::Archive::new(io::BufReader::new(stdout));
    let taken = take_binaries(&mut archive, input, select, bin_dir);
    // Read to the end so that dpkg-deb never dies of a closed pipe.
    let _ = io::copy(&mut archive.into_inner(), &mut io::sink());
    let status = child.wait().map_err(io_at(input))?;
    if !status.success() {
        return Err(SysextError::Tool {
            program: "dpkg-deb",
            path: input.into(),
            status: status.to_string(),
            // It names the private copy; name the file the user gave.
            stderr: tail(&fs::read(&stderr_path).unwrap_or_default())
                .replace(&copy.display().to_string(), &input.display().to_string()),
        });
    }
    taken
}

/// Copies the selected regular files of `archive` to `bin_dir`, under
/// their base names, and returns their paths in the image. Nothing else
/// is written: no symlinks, no directories from the input, so nothing in
/// it can point outside the staging directory. An entry whose path is
/// absolute or has `..` makes the whole input suspect and is refused.
fn take_binaries<R: Read>(
    archive: &mut tar::Archive<R>,
    input: &Path,
    select: &Select,
    bin_dir: &Path,
) -> Result<Vec<String>, SysextError> {
    let bad = |message: String| SysextError::Input {
        input: input.into(),
        message,
    };
    let mut taken = Vec::new();
    let mut found = BTreeSet::new();
    let mut seen = Vec::new();
    let entries = archive
        .entries()
        .map_err(|e| bad(format!("not a readable tar archive: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(format!("a damaged tar entry: {e}")))?;
        let raw = entry
            .path()
            .map_err(|e| bad(format!("an entry with an unreadable path: {e}")))?
            .into_owned();
        let Some(path) = clean(&raw) else {
            if raw.components().all(|c| c == Component::CurDir) {
                continue; // the archive's own `./`
            }
            return Err(bad(format!(
                "refusing an archive with the unsafe path `{}` (absolute or with `..`)",
                raw.display()
            )));
        };
        let kind = entry.header().entry_type();
        let regular = matches!(kind, tar::EntryType::Regular | tar::EntryType::Continuous);
        let wanted = match select {
            Select::Named(names) => names.contains(&path),
            Select::AllUnderUsrBin => {
                let direct = path
                    .strip_prefix("usr/bin/")
                    .is_some_and(|b| !b.contains('/'));
                if direct && !regular && !kind.is_dir() {
                    tracing::warn!("{}: skipping {path}: not a regular file", input.display());
                }
                direct && regular
            }
        };
        if regular {
            seen.push(path.clone());
        }
        if !wanted {
            continue;
        }
        if !regular {
            return Err(bad(format!(
                "{path} is a {kind:?} entry, not a regular file; name the file it points to"
            )));
        }
        let name = basename(&path);
        let target = bin_dir.join(name);
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o755)
            .open(&target)
            .map_err(|e| match e.kind() {
                io::ErrorKind::AlreadyExists => bad(format!("{path} is in the archive twice")),
                _ => SysextError::Io {
                    path: target.clone(),
                    source: e,
                },
            })?;
        io::copy(&mut entry, &mut file).map_err(|e| bad(format!("reading {path}: {e}")))?;
        found.insert(path.clone());
        taken.push(format!("usr/bin/{name}"));
    }
    match select {
        Select::Named(names) => {
            let missing: Vec<String> = names.difference(&found).cloned().collect();
            if !missing.is_empty() {
                let wanted: BTreeSet<&str> = missing.iter().map(|m| basename(m)).collect();
                let candidates = seen
                    .into_iter()
                    .filter(|s| wanted.contains(basename(s)))
                    .take(10)
                    .collect();
                return Err(SysextError::MissingBinaries {
                    input: input.into(),
                    missing,
                    candidates,
                });
            }
        }
        Select::AllUnderUsrBin if taken.is_empty() => {
            return Err(bad("the package has no regular files in usr/bin".into()))
        }
        Select::AllUnderUsrBin => {}
    }
    Ok(taken)
}

/// mksquashfs from squashfs-tools, the reference writer (the kernel's own
/// squashfs maintainer's; what Flatcar's sysext-bakery and mkosi use),
/// over backhand: backhand would add about 80 crates, proc macros among
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
