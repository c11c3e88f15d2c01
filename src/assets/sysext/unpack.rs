//! Reading the binaries out of an input: a tarball (gzip or plain, told by
//! its first bytes) or a Debian package (through `dpkg-deb`). Only the
//! selected regular files are written, each to `usr/bin/<base name>`.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path};
use std::process::{Command, Stdio};

use super::{basename, clean, io_at, tail, Select, SysextError};

/// A tarball, gzip-compressed or not (told by its first bytes).
pub(super) fn from_archive(
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
pub(super) fn from_deb(
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
