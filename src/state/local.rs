//! The `local` state backend: a directory (`state.path`, by default
//! `.metalherd/state` in the fleet). Each object is a file at its key's
//! path, 0600 in 0700 directories, written to a temporary file, fsynced,
//! renamed over the old one and the directory fsynced: a reader (or a
//! crash) sees the old object or the new one, never a part.
//!
//! Revisions are derived from the contents (the first 8 bytes of their
//! SHA-256), so the files stay plain (`hostkeys/…/ssh_host_ed25519_key`
//! is an OpenSSH key file). Compare-and-swap holds an advisory `flock` on
//! `.store.lock` for the read-compare-write.
//!
//! Locks are files in `.locks/`, created whole (written aside, then
//! hard-linked into place, which fails if the lock exists) and holding
//! their [`Holder`]. A lock whose holder process is gone from this host
//! is reported stale; only `state unlock --force` removes it.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::{check_key, Entry, Expect, Holder, LockGuard, LockInfo, StateError, StateStore};

pub struct LocalStore {
    root: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The revision of `contents`: never 0, which means "absent".
fn revision(contents: &[u8]) -> u64 {
    let digest = Sha256::digest(contents);
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first).max(1)
}

fn mkdirs(path: &Path) -> Result<(), StateError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(io(path))
}

fn fsync_dir(dir: &Path) -> Result<(), StateError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}

/// A temporary name beside `path`, unique to this process and call.
fn temp_beside(path: &Path) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(
        ".{name}.tmp-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Writes `contents` to a new temporary file beside `path`, fsynced.
fn write_temp(path: &Path, contents: &[u8]) -> Result<PathBuf, StateError> {
    let tmp = temp_beside(path);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(&tmp))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(io(&tmp))?;
    Ok(tmp)
}

fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, StateError> {
    match fs::read(path) {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StateError::Io {
            path: path.to_path_buf(),
            source: e,
        }),
    }
}

fn pid_alive(pid: u32) -> bool {
    let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return false;
    };
    !matches!(
        rustix::process::test_kill_process(pid),
        Err(rustix::io::Errno::SRCH)
    )
}

/// Every regular file below `base` (which may be missing), as paths
/// relative to it, skipping hidden names (temporary files, locks).
fn files_below(base: &Path) -> Result<Vec<String>, StateError> {
    let mut out = Vec::new();
    let mut stack = vec![base.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(StateError::Io {
                    path: dir,
                    source: e,
                })
            }
        };
        for entry in entries {
            let entry = entry.map_err(io(&dir))?;
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let path = entry.path();
            if entry.file_type().map_err(io(&path))?.is_dir() {
                stack.push(path);
            } else if let Ok(rel) = path.strip_prefix(base) {
                out.push(rel.to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    Ok(out)
}

impl LocalStore {
    /// The store in `root`, created if missing.
    pub fn open(root: &Path) -> Result<LocalStore, StateError> {
        mkdirs(root)?;
        Ok(LocalStore {
            root: root.to_path_buf(),
        })
    }

    fn path(&self, key: &str) -> Result<PathBuf, StateError> {
        check_key(key)?;
        Ok(self.root.join(key))
    }

    fn lock_path(&self, name: &str) -> Result<PathBuf, StateError> {
        check_key(name)?;
        Ok(self.root.join(".locks").join(name))
    }

    /// Holds the store's advisory lock for the duration of `f`.
    fn exclusive<T>(&self, f: impl FnOnce() -> Result<T, StateError>) -> Result<T, StateError> {
        let path = self.root.join(".store.lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(io(&path))?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive).map_err(|e| {
            StateError::Io {
                path: path.clone(),
                source: e.into(),
            }
        })?;
        let result = f();
        drop(file);
        result
    }

    fn check_expect(key: &str, current: Option<&[u8]>, expect: Expect) -> Result<(), StateError> {
        let found = current.map(revision);
        let ok = match expect {
            Expect::Any => true,
            Expect::Absent => found.is_none(),
            Expect::Revision(r) => found == Some(r),
        };
        if ok {
            return Ok(());
        }
        Err(StateError::Conflict {
            key: key.to_string(),
            expected: match expect {
                Expect::Absent => "no object".into(),
                Expect::Revision(r) => format!("revision {r}"),
                Expect::Any => "anything".into(),
            },
            found: found.map_or("no object".into(), |r| format!("revision {r}")),
        })
    }

    fn read_holder(path: &Path) -> Result<Option<Holder>, StateError> {
        match read_optional(path)? {
            None => Ok(None),
            Some(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| StateError::Backend {
                        backend: format!("local {}", path.display()),
                        message: format!("lock file is not a holder record: {e}"),
                    })
            }
        }
    }

    fn is_stale(holder: &Holder) -> bool {
        holder.host == super::hostname() && !pid_alive(holder.pid)
    }
}

#[async_trait::async_trait]
impl StateStore for LocalStore {
    fn describe(&self) -> String {
        format!("local {}", self.root.display())
    }

    async fn get(&self, key: &str) -> Result<Option<Entry>, StateError> {
        let path = self.path(key)?;
        Ok(read_optional(&path)?.map(|value| Entry {
            key: key.to_string(),
            revision: revision(&value),
            value,
        }))
    }

    async fn put(&self, key: &str, value: &[u8], expect: Expect) -> Result<u64, StateError> {
        let path = self.path(key)?;
        let dir = path.parent().unwrap_or(&self.root).to_path_buf();
        mkdirs(&dir)?;
        self.exclusive(|| {
            if expect != Expect::Any {
                Self::check_expect(key, read_optional(&path)?.as_deref(), expect)?;
            }
            let tmp = write_temp(&path, value)?;
            if let Err(e) = fs::rename(&tmp, &path) {
                let _ = fs::remove_file(&tmp);
                return Err(StateError::Io {
                    path: path.clone(),
                    source: e,
                });
            }
            fsync_dir(&dir)?;
            Ok(revision(value))
        })
    }

    async fn delete(&self, key: &str, expect: Expect) -> Result<(), StateError> {
        let path = self.path(key)?;
        self.exclusive(|| {
            let current = read_optional(&path)?;
            if expect != Expect::Any {
                Self::check_expect(key, current.as_deref(), expect)?;
            }
            if current.is_some() {
                fs::remove_file(&path).map_err(io(&path))?;
                if let Some(dir) = path.parent() {
                    fsync_dir(dir)?;
                }
            }
            Ok(())
        })
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Entry>, StateError> {
        let mut out = Vec::new();
        for key in files_below(&self.root)? {
            if key.starts_with(prefix) {
                if let Some(e) = self.get(&key).await? {
                    out.push(e);
                }
            }
        }
        Ok(out)
    }

    async fn lock(
        &self,
        name: &str,
        holder: &Holder,
        _ttl: Duration,
    ) -> Result<Box<dyn LockGuard>, StateError> {
        let path = self.lock_path(name)?;
        let dir = path.parent().unwrap_or(&self.root).to_path_buf();
        mkdirs(&dir)?;
        let record = serde_json::to_vec_pretty(holder).map_err(|e| StateError::Backend {
            backend: self.describe(),
            message: e.to_string(),
        })?;
        let tmp = write_temp(&path, &record)?;
        let linked = fs::hard_link(&tmp, &path);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                fsync_dir(&dir)?;
                Ok(Box::new(LocalLock {
                    path,
                    holder: holder.clone(),
                    released: false,
                }))
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                match Self::read_holder(&path)? {
                    Some(other) => Err(StateError::Locked {
                        name: name.to_string(),
                        since: other.since.clone(),
                        stale: Self::is_stale(&other),
                        holder: Box::new(other),
                    }),
                    // Released in between: one more try.
                    None => Box::pin(self.lock(name, holder, _ttl)).await,
                }
            }
            Err(e) => Err(StateError::Io { path, source: e }),
        }
    }

    async fn locks(&self) -> Result<Vec<LockInfo>, StateError> {
        let base = self.root.join(".locks");
        let mut out = Vec::new();
        for name in files_below(&base)? {
            if let Some(holder) = Self::read_holder(&base.join(&name))? {
                out.push(LockInfo {
                    name,
                    stale: Self::is_stale(&holder),
                    holder,
                });
            }
        }
        Ok(out)
    }

    async fn break_lock(&self, name: &str) -> Result<Option<Holder>, StateError> {
        let path = self.lock_path(name)?;
        let holder = Self::read_holder(&path)?;
        if holder.is_some() {
            fs::remove_file(&path).map_err(io(&path))?;
        }
        Ok(holder)
    }
}

struct LocalLock {
    path: PathBuf,
    holder: Holder,
    released: bool,
}

impl LocalLock {
    /// Removes the lock file if it is still ours.
    fn remove(&mut self) -> Result<(), StateError> {
        if self.released {
            return Ok(());
        }
        self.released = true;
        if LocalStore::read_holder(&self.path)?.as_ref() == Some(&self.holder) {
            fs::remove_file(&self.path).map_err(io(&self.path))?;
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl LockGuard for LocalLock {
    async fn release(mut self: Box<Self>) -> Result<(), StateError> {
        self.remove()
    }
}

impl Drop for LocalLock {
    fn drop(&mut self) {
        let _ = self.remove();
    }
}
