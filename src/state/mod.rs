//! metalherd's state: what outlives every cluster. Which generation runs
//! at each site, each machine's lifecycle state, the PKI and SSH keys, the
//! journal of every operation. One [`StateStore`] trait, two backends:
//!
//! - [`local`] (the default): a directory, every write to a temporary
//!   file, fsync, rename, fsync of the directory; locks are files holding
//!   their holder (pid, host, start time), reported stale when the holder
//!   is gone from this host;
//! - [`etcd`]: the etcd v3 API through etcd's JSON gateway (reqwest, so no
//!   protobuf compiler is needed to build metalherd): transactions for
//!   compare-and-swap, locks bound to a lease the holder keeps alive.
//!
//! Keys are `/`-separated paths (`sites/fra/generation`). Objects below
//! `secrets/` are sealed with `state.encryption_key` when one is set
//! ([`crypt`]). [`journal`] records operations step by step on top.
//!
//! [`records`] names every key and holds the record types with their one
//! update function each; [`summary`] is what `state show` reports of
//! them; [`provisioning`] holds the provisioning windows the boot server
//! serves machines in; [`memory`] is the in-memory backend of the unit tests.
//!
//! To add a backend: implement [`StateStore`] (and [`LockGuard`]), add a
//! `StateBackend` variant in the fleet and a line in [`open`].

pub mod counted;
pub mod crypt;
pub mod etcd;
pub mod journal;
pub mod local;
pub mod memory;
pub mod migrate;
pub mod provisioning;
pub mod records;
pub mod summary;

pub use records::{Key, MachineRecord, MachineState, SiteRecord};

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What a write expects to find.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Whatever is there (or nothing).
    Any,
    /// Nothing: create only.
    Absent,
    /// Exactly this revision of the object.
    Revision(u64),
}

/// One object and the revision a compare-and-swap names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub value: Vec<u8>,
    pub revision: u64,
}

/// Who holds a lock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub pid: u32,
    pub host: String,
    pub user: String,
    /// What the holder is doing (`bootstrap site fra`).
    pub operation: String,
    /// When the lock was taken (RFC 3339, UTC).
    pub since: String,
}

impl Holder {
    /// This process, about to do `operation`.
    pub fn current(operation: &str) -> Holder {
        Holder {
            pid: std::process::id(),
            host: hostname(),
            user: std::env::var("SUDO_USER")
                .or_else(|_| std::env::var("USER"))
                .unwrap_or_else(|_| format!("uid {}", rustix::process::getuid().as_raw())),
            operation: operation.to_string(),
            since: now_rfc3339(),
        }
    }
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (pid {} on {}, {})",
            self.user, self.pid, self.host, self.operation
        )
    }
}

/// A lock as `state locks` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct LockInfo {
    pub name: String,
    pub holder: Holder,
    /// The holder's process is gone (local backend, same host only).
    pub stale: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(
        "{key}: changed concurrently (expected {expected}, found {found}); re-read and try again"
    )]
    Conflict {
        key: String,
        expected: String,
        found: String,
    },
    #[error("{name} is locked by {holder} since {since}{}", if *.stale { " (stale: that process is gone; break it with `metalherd state unlock --force --reason`)" } else { "" })]
    Locked {
        name: String,
        holder: Box<Holder>,
        since: String,
        stale: bool,
    },
    #[error("{backend}: {message}")]
    Backend { backend: String, message: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{key}: {message}")]
    Sealed { key: String, message: String },
    #[error(
        "invalid state key {0:?}: keys are /-separated names of letters, digits, '.', '_' and '-'"
    )]
    BadKey(String),
}

impl StateError {
    /// The exit code for commands that failed on this error: a lock held
    /// elsewhere is not a failure of this run, and schedulers want to
    /// tell the two apart.
    pub fn exit_code(&self) -> u8 {
        match self {
            StateError::Locked { .. } => 3,
            _ => 1,
        }
    }
}

/// A held lock. Dropping it without [`LockGuard::release`] frees it on a
/// best-effort basis (local) or when its lease expires (etcd).
#[async_trait::async_trait]
pub trait LockGuard: Send + Sync {
    async fn release(self: Box<Self>) -> Result<(), StateError>;
}

#[async_trait::async_trait]
pub trait StateStore: Send + Sync {
    /// `local /path` or `etcd https://…`, for messages.
    fn describe(&self) -> String;
    async fn get(&self, key: &str) -> Result<Option<Entry>, StateError>;
    /// Writes `value` if `expect` holds; returns the new revision.
    async fn put(&self, key: &str, value: &[u8], expect: Expect) -> Result<u64, StateError>;
    async fn delete(&self, key: &str, expect: Expect) -> Result<(), StateError>;
    /// Every object whose key starts with `prefix`, in key order.
    async fn list(&self, prefix: &str) -> Result<Vec<Entry>, StateError>;
    /// Takes lock `name` for `holder`, or fails with [`StateError::Locked`].
    /// `ttl` bounds how long a crashed holder keeps it (etcd leases).
    async fn lock(
        &self,
        name: &str,
        holder: &Holder,
        ttl: Duration,
    ) -> Result<Box<dyn LockGuard>, StateError>;
    async fn locks(&self) -> Result<Vec<LockInfo>, StateError>;
    /// Removes lock `name` whoever holds it; returns the holder it had.
    async fn break_lock(&self, name: &str) -> Result<Option<Holder>, StateError>;
}

/// Checks that `key` is a relative path of plain names.
pub fn check_key(key: &str) -> Result<(), StateError> {
    let ok = !key.is_empty()
        && key.split('/').all(|part| {
            !part.is_empty()
                && part != "."
                && part != ".."
                && !part.starts_with('.')
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        });
    if ok {
        Ok(())
    } else {
        Err(StateError::BadKey(key.to_string()))
    }
}

pub fn hostname() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "unknown time".into())
}

/// The fleet's state store and the sealer for its secrets, as
/// `fleet.yaml`'s `state` section names them.
pub fn open(
    fleet: &crate::fleet::Fleet,
) -> Result<(std::sync::Arc<dyn StateStore>, crypt::Sealer), StateError> {
    use crate::fleet::StateBackend;
    let sealer = match &fleet.state.encryption_key {
        Some(r) => crypt::Sealer::from_ref(r, &fleet.root)?,
        None => crypt::Sealer::none(),
    };
    let store: std::sync::Arc<dyn StateStore> = match &fleet.state.backend {
        StateBackend::Local { path } => {
            std::sync::Arc::new(local::LocalStore::open(&fleet.root.join(path))?)
        }
        StateBackend::Etcd {
            endpoints,
            ca_file,
            cert_file,
            key_file,
            lock_ttl,
        } => {
            let read = |p: &std::path::Path| {
                let path = fleet.root.join(p);
                std::fs::read_to_string(&path).map_err(|source| StateError::Io { path, source })
            };
            let tls = match (ca_file, cert_file, key_file) {
                (Some(ca), Some(cert), Some(key)) => Some(etcd::EtcdTls {
                    ca_pem: read(ca)?,
                    cert_pem: read(cert)?,
                    key_pem: zeroize::Zeroizing::new(read(key)?),
                }),
                _ => None,
            };
            std::sync::Arc::new(etcd::EtcdStore::new(
                endpoints.clone(),
                tls,
                &format!("/metalherd/{}/", fleet.name),
                Duration::from_secs(*lock_ttl),
            )?)
        }
    };
    Ok((store, sealer))
}

/// How long a crashed holder's lock outlives it, as configured.
pub fn lock_ttl(fleet: &crate::fleet::Fleet) -> Duration {
    match &fleet.state.backend {
        crate::fleet::StateBackend::Etcd { lock_ttl, .. } => Duration::from_secs(*lock_ttl),
        crate::fleet::StateBackend::Local { .. } => Duration::from_secs(30),
    }
}

/// Reads a JSON object of the store.
pub async fn get_json<T: serde::de::DeserializeOwned>(
    store: &dyn StateStore,
    key: &str,
) -> Result<Option<(T, u64)>, StateError> {
    match store.get(key).await? {
        None => Ok(None),
        Some(e) => serde_json::from_slice(&e.value)
            .map(|v| Some((v, e.revision)))
            .map_err(|err| StateError::Backend {
                backend: store.describe(),
                message: format!("{key} is not what metalherd wrote: {err}"),
            }),
    }
}

/// Writes a JSON object of the store.
pub async fn put_json<T: Serialize>(
    store: &dyn StateStore,
    key: &str,
    value: &T,
    expect: Expect,
) -> Result<u64, StateError> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| StateError::Backend {
        backend: store.describe(),
        message: e.to_string(),
    })?;
    store.put(key, &bytes, expect).await
}

/// Appends an entry to the audit log (`audit/<time>-<random>`).
pub async fn audit(
    store: &dyn StateStore,
    action: &str,
    detail: serde_json::Value,
) -> Result<(), StateError> {
    let holder = Holder::current(action);
    let key = format!(
        "{}{}-{:08x}",
        records::Key::audit_log(),
        holder.since.replace([':', '-', '.', '+'], ""),
        rand_core::RngCore::next_u32(&mut rand_core::OsRng)
    );
    let record = serde_json::json!({
        "time": holder.since, "user": holder.user, "host": holder.host, "pid": holder.pid,
        "action": action, "detail": detail,
    });
    put_json(store, &key, &record, Expect::Absent)
        .await
        .map(|_| ())
}

/// Breaks lock `name` on purpose, recorded in the audit log with `reason`;
/// returns who held it (none: no such lock is held, nothing recorded).
pub async fn unlock(
    store: &dyn StateStore,
    name: &str,
    reason: &str,
) -> Result<Option<Holder>, StateError> {
    let Some(holder) = store.break_lock(name).await? else {
        return Ok(None);
    };
    let detail = serde_json::json!({ "lock": name, "holder": holder, "reason": reason });
    audit(store, "state unlock", detail).await?;
    Ok(Some(holder))
}

/// The audit log's last `limit` entries, oldest first (as [`audit`] wrote
/// them; unreadable ones left out).
pub async fn audit_log(
    store: &dyn StateStore,
    limit: usize,
) -> Result<Vec<serde_json::Value>, StateError> {
    let list = store.list(&records::Key::audit_log()).await?;
    let mut entries: Vec<serde_json::Value> = list
        .iter()
        .filter_map(|e| serde_json::from_slice(&e.value).ok())
        .collect();
    entries.sort_by(|a, b| a["time"].as_str().cmp(&b["time"].as_str()));
    let skip = entries.len().saturating_sub(limit);
    Ok(entries.split_off(skip))
}
