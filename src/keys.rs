//! SSH keys metalherd generates and keeps: one host key per machine (so
//! every later SSH connection checks an exact, pinned key) and metalherd's
//! own user key, which the `core` user of every machine trusts.
//!
//! Keys live in the local state directory, private files 0600 in 0700
//! directories: `hostkeys/<site>/<machine>/ssh_host_ed25519_key` and
//! `ssh/id_ed25519`. A key is generated once and reused on every render,
//! so rendering stays deterministic. (The state-store issue moves these
//! behind the `StateStore` trait; the layout is its starting point.)

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use rand_core::OsRng;
use ssh_key::{Algorithm, HashAlg, LineEnding, PrivateKey};
use zeroize::Zeroizing;

use crate::fleet::{Fleet, MachineName};
use crate::fsutil::{create_dir_with_mode, replace_file, sync_filesystem};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read or write key {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("key {} is not a valid OpenSSH private key: {source}", path.display())]
    Parse {
        path: PathBuf,
        source: ssh_key::Error,
    },
    #[error("cannot generate an SSH key: {0}")]
    Generate(ssh_key::Error),
    #[error("a key-loading thread panicked")]
    Panicked,
    #[error("state store: {0}")]
    State(#[from] crate::state::StateError),
    #[error("state key {key} is not a valid OpenSSH private key: {source}")]
    ParseStored { key: String, source: ssh_key::Error },
}

/// An Ed25519 key pair. `Debug` never shows the private half.
#[derive(Clone)]
pub struct KeyPair {
    private_openssh: Zeroizing<String>,
    public_openssh: String,
    fingerprint: String,
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyPair")
            .field("fingerprint", &self.fingerprint)
            .field("private", &"****")
            .finish()
    }
}

impl KeyPair {
    fn from_private(key: &PrivateKey) -> Result<Self, ssh_key::Error> {
        Ok(KeyPair {
            private_openssh: key.to_openssh(LineEnding::LF)?,
            public_openssh: key.public_key().to_openssh()?,
            fingerprint: key.fingerprint(HashAlg::Sha256).to_string(),
        })
    }

    /// A new random key with `comment`.
    pub fn generate(comment: &str) -> Result<Self, KeyError> {
        let mut key =
            PrivateKey::random(&mut OsRng, Algorithm::Ed25519).map_err(KeyError::Generate)?;
        key.set_comment(comment);
        Self::from_private(&key).map_err(KeyError::Generate)
    }

    /// A key derived from a 32-byte seed: for tests and snapshots only.
    pub fn from_seed(seed: [u8; 32], comment: &str) -> Self {
        let pair = ssh_key::private::Ed25519Keypair::from_seed(&seed);
        let mut key = PrivateKey::from(pair);
        key.set_comment(comment);
        match Self::from_private(&key) {
            Ok(k) => k,
            // Encoding an in-memory Ed25519 key cannot fail.
            Err(e) => unreachable!("encoding an Ed25519 key: {e}"),
        }
    }

    /// The OpenSSH private key file's contents. Handle with care.
    pub fn private_openssh(&self) -> &str {
        &self.private_openssh
    }

    /// The `ssh-ed25519 AAAA… comment` line.
    pub fn public_openssh(&self) -> &str {
        &self.public_openssh
    }

    /// `SHA256:…`, as `ssh-keygen -l` prints it.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    fn load(path: &Path) -> Result<Self, KeyError> {
        let text = Zeroizing::new(fs::read_to_string(path).map_err(|source| KeyError::Io {
            path: path.into(),
            source,
        })?);
        let key = PrivateKey::from_openssh(text.as_bytes()).map_err(|source| KeyError::Parse {
            path: path.into(),
            source,
        })?;
        Self::from_private(&key).map_err(|source| KeyError::Parse {
            path: path.into(),
            source,
        })
    }

    /// Loads the key at `path`, or (with `create`) generates and stores a
    /// new one; `None` when there is none and none may be made. New keys
    /// are made durable by the caller, all at once (`ensure`).
    fn load_or_create(
        path: &Path,
        comment: &str,
        create: Create,
    ) -> Result<Option<(Self, bool)>, KeyError> {
        if path.exists() {
            return Ok(Some((Self::load(path)?, false)));
        }
        if create == Create::No {
            return Ok(None);
        }
        let io_err = |source| KeyError::Io {
            path: path.into(),
            source,
        };
        let key = Self::generate(comment)?;
        if let Some(dir) = path.parent() {
            create_dir_with_mode(dir, 0o700).map_err(io_err)?;
        }
        replace_file(path, key.private_openssh().as_bytes(), 0o600).map_err(io_err)?;
        let public = path.with_extension("pub");
        replace_file(
            &public,
            format!("{}\n", key.public_openssh()).as_bytes(),
            0o644,
        )
        .map_err(io_err)?;
        Ok(Some((key, true)))
    }
}

/// Whether a missing key is generated (rendering, provisioning) or left
/// missing (connecting: a key made now is one no machine has).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Create {
    Yes,
    No,
}

/// The keys rendering needs: every machine's host key and metalherd's
/// user key.
#[derive(Clone, Debug)]
pub struct Keys {
    pub host: HashMap<MachineName, KeyPair>,
    pub operator: KeyPair,
}

/// Loads every key the fleet needs from the fleet's state store,
/// generating the missing ones; returns the keys and how many were made.
/// A local store without `state.encryption_key` keeps plain OpenSSH key
/// files (the fast path below, [`ensure`]); otherwise every private key is
/// sealed and goes through the `StateStore` (etcd, or sealed local files).
pub fn ensure_state(fleet: &Fleet) -> Result<(Keys, usize), KeyError> {
    let (keys, created) = load_state(fleet, Create::Yes)?;
    Ok((keys.ok_or(KeyError::Panicked)?, created))
}

/// The keys the fleet's state holds, generating none: `None` without
/// metalherd's own key (nothing was ever rendered or provisioned with
/// this state), and only the machines that have a host key.
pub fn existing(fleet: &Fleet) -> Result<Option<Keys>, KeyError> {
    Ok(load_state(fleet, Create::No)?.0)
}

fn load_state(fleet: &Fleet, create: Create) -> Result<(Option<Keys>, usize), KeyError> {
    use crate::fleet::StateBackend;
    if matches!(fleet.state.backend, StateBackend::Local { .. })
        && fleet.state.encryption_key.is_none()
    {
        return load(fleet, &fleet.state_dir(), create);
    }
    // Callers may be inside the runtime or not: block on it from a thread
    // of our own (blocking from one of its tasks would panic).
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime = crate::runtime::get().map_err(|source| KeyError::Io {
                    path: fleet.root.clone(),
                    source,
                })?;
                runtime.block_on(load_from_store(fleet, create))
            })
            .join()
            .unwrap_or(Err(KeyError::Panicked))
    })
}

async fn stored_key(
    store: &dyn crate::state::StateStore,
    sealer: &crate::state::crypt::Sealer,
    key: &str,
    comment: &str,
    create: Create,
) -> Result<Option<(KeyPair, bool)>, KeyError> {
    use crate::state::{Expect, StateError};
    let parse = |bytes: &[u8]| -> Result<KeyPair, KeyError> {
        let err = |source| KeyError::ParseStored {
            key: key.to_string(),
            source,
        };
        let private = PrivateKey::from_openssh(bytes).map_err(err)?;
        KeyPair::from_private(&private).map_err(err)
    };
    if let Some(e) = store.get(key).await? {
        return Ok(Some((parse(&sealer.open(key, &e.value)?)?, false)));
    }
    if create == Create::No {
        return Ok(None);
    }
    let pair = KeyPair::generate(comment)?;
    let sealed = sealer.seal(key, pair.private_openssh().as_bytes())?;
    match store.put(key, &sealed, Expect::Absent).await {
        Ok(_) => {}
        // Another run made it first: use theirs.
        Err(StateError::Conflict { .. }) => {
            if let Some(e) = store.get(key).await? {
                return Ok(Some((parse(&sealer.open(key, &e.value)?)?, false)));
            }
        }
        Err(e) => return Err(e.into()),
    }
    let public = format!("{}\n", pair.public_openssh());
    store
        .put(&format!("{key}.pub"), public.as_bytes(), Expect::Any)
        .await?;
    Ok(Some((pair, true)))
}

async fn load_from_store(fleet: &Fleet, create: Create) -> Result<(Option<Keys>, usize), KeyError> {
    let (store, sealer) = crate::state::open(fleet)?;
    let store = store.as_ref();
    let Some((operator, new)) =
        stored_key(store, &sealer, "ssh/id_ed25519", "metalherd", create).await?
    else {
        return Ok((None, 0));
    };
    let mut created = usize::from(new);
    let mut host = HashMap::new();
    for (site, machine) in fleet.machines() {
        let key = format!(
            "hostkeys/{}/{}/ssh_host_ed25519_key",
            site.name, machine.name
        );
        let comment = format!("root@{}", machine.name);
        if let Some((pair, new)) = stored_key(store, &sealer, &key, &comment, create).await? {
            created += usize::from(new);
            host.insert(machine.name.clone(), pair);
        }
    }
    Ok((Some(Keys { host, operator }), created))
}

/// Loads every key the fleet needs from `state_dir`, generating the
/// missing ones. Returns the keys and how many were generated.
pub fn ensure(fleet: &Fleet, state_dir: &Path) -> Result<(Keys, usize), KeyError> {
    let (keys, created) = load(fleet, state_dir, Create::Yes)?;
    Ok((keys.ok_or(KeyError::Panicked)?, created))
}

fn load(
    fleet: &Fleet,
    state_dir: &Path,
    create: Create,
) -> Result<(Option<Keys>, usize), KeyError> {
    let mut created = 0;
    let operator_path = state_dir.join("ssh/id_ed25519");
    let Some((operator, new)) = KeyPair::load_or_create(&operator_path, "metalherd", create)?
    else {
        return Ok((None, 0));
    };
    created += usize::from(new);
    // Loading checks each key (ssh-key derives the public half from the
    // private one), which is most of the cost: spread it over all cores.
    let jobs: Vec<(MachineName, PathBuf)> = fleet
        .machines()
        .map(|(site, machine)| {
            let path = state_dir
                .join("hostkeys")
                .join(site.name.as_str())
                .join(machine.name.as_str())
                .join("ssh_host_ed25519_key");
            (machine.name.clone(), path)
        })
        .collect();
    let loaded = crate::parallel::map_in_order(
        &jobs,
        || KeyError::Panicked,
        |(name, path)| {
            let key = KeyPair::load_or_create(path, &format!("root@{name}"), create)?;
            Ok(key.map(|(key, new)| (name.clone(), key, new)))
        },
    )?;
    let mut host = HashMap::new();
    for (name, key, new) in loaded.into_iter().flatten() {
        created += usize::from(new);
        host.insert(name, key);
    }
    if created > 0 {
        // One sync for all new keys: a pinned host key must survive a
        // power loss, and one fsync per key would cost seconds per fleet.
        sync_filesystem(state_dir).map_err(|source| KeyError::Io {
            path: state_dir.into(),
            source,
        })?;
    }
    Ok((Some(Keys { host, operator }), created))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_private_key() {
        let key = KeyPair::from_seed([7; 32], "t");
        let shown = format!("{key:?}");
        assert!(!shown.contains("PRIVATE"), "{shown}");
        assert!(key.private_openssh().contains("OPENSSH PRIVATE KEY"));
    }

    #[test]
    fn seeded_keys_are_deterministic() {
        let a = KeyPair::from_seed([1; 32], "t");
        let b = KeyPair::from_seed([1; 32], "t");
        assert_eq!(a.private_openssh(), b.private_openssh());
        assert_eq!(a.public_openssh(), b.public_openssh());
    }

    #[test]
    fn stored_key_is_reused_and_private() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/key");
        // Without leave to create, a missing key stays missing.
        assert!(KeyPair::load_or_create(&path, "x", Create::No)
            .unwrap()
            .is_none());
        assert!(!path.exists());
        let (first, created) = KeyPair::load_or_create(&path, "x", Create::Yes)
            .unwrap()
            .unwrap();
        assert!(created);
        let (again, created) = KeyPair::load_or_create(&path, "x", Create::No)
            .unwrap()
            .unwrap();
        assert!(!created);
        assert_eq!(first.fingerprint(), again.fingerprint());
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        assert_eq!(
            fs::metadata(path.parent().unwrap()).unwrap().mode() & 0o777,
            0o700
        );
    }
}
