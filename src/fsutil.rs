//! Writing files so that a reader never sees half of one: write to a
//! temporary file beside the target, fsync, rename, fsync the directory.
//! Secret files are created with their final mode, never widened later.

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Writes `contents` to `path` atomically with permission `mode`, and
/// durably: when this returns, the new contents survive a power loss.
/// For state that cannot be recreated (keys, the journal).
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    write_file(path, contents, mode, true)
}

/// Like [`write_atomic`], without the two fsyncs: a reader still sees the
/// old or the new file, never half of one, but a power loss may undo the
/// write. For output that can be rendered again; syncing every one of
/// thousands of files would cost more than rendering them.
pub fn replace_file(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    write_file(path, contents, mode, false)
}

/// Creates `path` atomically and durably with permission `mode`, failing
/// with [`io::ErrorKind::AlreadyExists`] if it exists: the file is
/// written whole beside it, then hard-linked into place (which never
/// replaces a file, even one that appeared meanwhile). For secrets handed
/// to a user (`kubeconfig --out`), who must never get half of one nor
/// lose the one they had.
pub fn create_atomic(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let (dir, tmp) = temp_beside(path)?;
    let result = (|| {
        write_temp(&tmp, contents, mode, true)?;
        fs::hard_link(&tmp, path)?;
        fs::File::open(dir)?.sync_all()
    })();
    let _ = fs::remove_file(&tmp);
    result
}

/// Reads a secret the user keeps in a file (`file:` BMC credentials, the
/// state's age identity), refusing it, as OpenSSH refuses a private key,
/// when its group or others may read or write it: a secret in such a file
/// is no longer secret, and metalherd would be using it as if it were.
/// Errors name the file (and say what to do), never the contents.
pub fn read_private(path: &Path) -> io::Result<String> {
    let cannot =
        |e: io::Error| io::Error::new(e.kind(), format!("cannot read {}: {e}", path.display()));
    let mode = fs::metadata(path).map_err(cannot)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} is open to other users (mode {mode:04o}); a secret file must be \
                 0600 (chmod 600 {})",
                path.display(),
                path.display()
            ),
        ));
    }
    fs::read_to_string(path).map_err(cannot)
}

/// The directory `path` is in: `.` for a bare file name (whose parent is
/// the empty path, which cannot be opened to sync it).
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// The directory of `path` and a temporary name beside it.
fn temp_beside(path: &Path) -> io::Result<(&Path, std::path::PathBuf)> {
    let dir = parent_dir(path);
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    Ok((dir, tmp))
}

fn write_temp(tmp: &Path, contents: &[u8], mode: u32, durable: bool) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(tmp)?;
    // The umask may have narrowed the mode; a pre-existing temp file
    // may have a wider one. Either way, set exactly what was asked.
    file.set_permissions(fs::Permissions::from_mode(mode))?;
    file.write_all(contents)?;
    if durable {
        file.sync_all()?;
    }
    Ok(())
}

fn write_file(path: &Path, contents: &[u8], mode: u32, durable: bool) -> io::Result<()> {
    let (dir, tmp) = temp_beside(path)?;
    let result = (|| {
        write_temp(&tmp, contents, mode, durable)?;
        fs::rename(&tmp, path)?;
        if durable {
            fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Flushes the filesystem holding `path` to stable storage: one call
/// makes a batch of [`replace_file`] writes durable.
pub fn sync_filesystem(path: &Path) -> io::Result<()> {
    let dir = fs::File::open(path)?;
    rustix::fs::syncfs(&dir).map_err(io::Error::from)
}

/// Creates a new file (failing if it exists) with exactly `mode`.
pub fn create_file(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    file.set_permissions(fs::Permissions::from_mode(mode))?;
    file.write_all(contents)
}

/// Puts directory `new` in the place of `target` in one step: readers see
/// the old or the new directory, never a mix. The old one is removed. If
/// `target` does not exist yet, `new` is simply renamed.
pub fn swap_dir(new: &Path, target: &Path) -> io::Result<()> {
    use rustix::fs::{renameat_with, RenameFlags, CWD};
    if !target.exists() {
        return fs::rename(new, target);
    }
    renameat_with(CWD, new, CWD, target, RenameFlags::EXCHANGE).map_err(io::Error::from)?;
    // `new` now holds the previous contents.
    fs::remove_dir_all(new)
}

/// Creates `path` and its missing parents with permission `mode`, and
/// sets `mode` on `path` itself if it already existed.
pub fn create_dir_with_mode(path: &Path, mode: u32) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(mode).create(path)?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn writes_with_exact_mode_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        write_atomic(&path, b"one", 0o600).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        write_atomic(&path, b"two", 0o644).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o644);
        let leftovers: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file is left behind");
    }

    #[test]
    fn a_secret_file_open_to_others_is_refused_by_name_without_its_contents() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bmc");
        fs::write(&path, "admin:hunter2\n").unwrap();
        for open in [0o644, 0o640, 0o604, 0o620] {
            fs::set_permissions(&path, fs::Permissions::from_mode(open)).unwrap();
            let err = read_private(&path).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
            let msg = err.to_string();
            assert!(msg.contains(&format!("mode {open:04o}")) && msg.contains("chmod 600"));
            assert!(!msg.contains("hunter2"), "{msg}");
        }
        for private in [0o600, 0o400] {
            fs::set_permissions(&path, fs::Permissions::from_mode(private)).unwrap();
            assert_eq!(read_private(&path).unwrap(), "admin:hunter2\n");
        }
    }

    #[test]
    fn create_atomic_never_replaces_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubeconfig");
        create_atomic(&path, b"one", 0o600).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        let err = create_atomic(&path, b"two", 0o600).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&path).unwrap(), b"one");
        let left: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "no temporary file is left behind");
    }

    #[test]
    fn a_bare_file_name_is_in_the_current_directory() {
        assert_eq!(parent_dir(Path::new("fra.dnsmasq")), Path::new("."));
        assert_eq!(parent_dir(Path::new("out/fra.ign")), Path::new("out"));
        assert_eq!(parent_dir(Path::new("/fra.ign")), Path::new("/"));
    }

    #[test]
    fn swap_replaces_a_whole_directory() {
        let dir = tempfile::tempdir().unwrap();
        let (new, target) = (dir.path().join("new"), dir.path().join("site"));
        for d in [&new, &target] {
            fs::create_dir(d).unwrap();
        }
        fs::write(target.join("stale"), "old").unwrap();
        create_file(&new.join("fresh"), b"new", 0o600).unwrap();
        swap_dir(&new, &target).unwrap();
        assert!(!target.join("stale").exists());
        assert_eq!(fs::read(target.join("fresh")).unwrap(), b"new");
        assert!(!new.exists());
        assert!(
            create_file(&target.join("fresh"), b"x", 0o600).is_err(),
            "create_file never overwrites"
        );
    }
}
