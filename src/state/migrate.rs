//! `state migrate --to etcd`: the local state copied into etcd (secrets
//! sealed on the way), every object verified there, then fleet.yaml's
//! `state:` section switched to etcd. Nothing may change the local state
//! while it is copied: the copy holds the lock `state/migrate` and refuses
//! to start while any other lock is held.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use serde_json::json;
use url::Url;

use super::crypt::{self, Sealer};
use super::etcd::{EtcdStore, EtcdTls};
use super::{Expect, Holder, StateStore};
use crate::fleet::{Fleet, StateBackend};

/// Where the state goes, as `state migrate` is told.
#[derive(Clone, Debug)]
pub struct EtcdTarget {
    pub endpoints: Vec<Url>,
    /// Client TLS for etcd (paths relative to the fleet, as fleet.yaml
    /// keeps them): all three or none.
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Seconds a crashed holder's lock outlives it.
    pub lock_ttl: u64,
}

/// Copies `source` (the fleet's local state) into `to`, verifies it and
/// switches fleet.yaml; returns how many objects were copied and the
/// target's description.
pub async fn to_etcd(
    fleet: &Fleet,
    source: &dyn StateStore,
    to: &EtcdTarget,
) -> anyhow::Result<(usize, String)> {
    anyhow::ensure!(
        matches!(fleet.state.backend, StateBackend::Local { .. }),
        "the state is already in {}",
        source.describe()
    );
    let reference = fleet.state.encryption_key.as_ref().context(
        "set state.encryption_key in fleet.yaml first (`metalherd state keygen`): secrets in etcd are sealed",
    )?;
    let sealer = Sealer::from_ref(reference, &fleet.root)?;
    let target = EtcdStore::new(
        to.endpoints.clone(),
        tls(fleet, to)?,
        &format!("/metalherd/{}/", fleet.name),
        Duration::from_secs(to.lock_ttl),
    )?;
    // Nobody may change the local state while it is copied.
    let holder = Holder::current("state migrate --to etcd");
    let lock = source
        .lock("state/migrate", &holder, Duration::from_secs(to.lock_ttl))
        .await?;
    for busy in source.locks().await? {
        anyhow::ensure!(
            busy.name == "state/migrate",
            "{} is locked by {} since {}: migrate when no operation runs",
            busy.name,
            busy.holder,
            busy.holder.since
        );
    }
    let objects = source.list("").await?;
    for e in &objects {
        let value = if is_secret(&e.key) && !crypt::is_sealed(&e.value) {
            sealer.seal(&e.key, &e.value)?
        } else {
            e.value.clone()
        };
        target.put(&e.key, &value, Expect::Any).await?;
    }
    // Verify: every object reads back from etcd with the same contents.
    for e in &objects {
        let copied = target
            .get(&e.key)
            .await?
            .with_context(|| format!("{} is missing in etcd after the copy", e.key))?;
        anyhow::ensure!(
            *sealer.open(&e.key, &copied.value)? == *sealer.open(&e.key, &e.value)?,
            "{} differs in etcd after the copy",
            e.key
        );
    }
    switch_fleet_yaml(fleet, to)?;
    lock.release().await?;
    super::audit(
        &target,
        "state migrate",
        json!({ "from": source.describe(), "to": target.describe(), "objects": objects.len() }),
    )
    .await?;
    Ok((objects.len(), target.describe()))
}

fn tls(fleet: &Fleet, to: &EtcdTarget) -> anyhow::Result<Option<EtcdTls>> {
    let read = |p: &Option<PathBuf>, what: &str| -> anyhow::Result<Option<String>> {
        p.as_ref()
            .map(|p| {
                std::fs::read_to_string(fleet.root.join(p))
                    .with_context(|| format!("reading {what} {}", p.display()))
            })
            .transpose()
    };
    match (
        read(&to.ca_file, "--ca-file")?,
        read(&to.cert_file, "--cert-file")?,
        read(&to.key_file, "--key-file")?,
    ) {
        (Some(ca_pem), Some(cert_pem), Some(key)) => Ok(Some(EtcdTls {
            ca_pem,
            cert_pem,
            key_pem: zeroize::Zeroizing::new(key),
        })),
        (None, None, None) => Ok(None),
        _ => anyhow::bail!("--ca-file, --cert-file and --key-file go together"),
    }
}

/// Whether the object `key` holds private key material (sealed in etcd).
fn is_secret(key: &str) -> bool {
    key.ends_with(".key")
        || key.ends_with(".conf")
        || key.ends_with("_key")
        || key == "ssh/id_ed25519"
}

/// Replaces the `state:` section of inventory/fleet.yaml (up to the next
/// top-level key) with the etcd settings, keeping the encryption key; the
/// old file is put back when the new one does not load.
fn switch_fleet_yaml(fleet: &Fleet, to: &EtcdTarget) -> anyhow::Result<()> {
    let path = fleet.root.join("inventory/fleet.yaml");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let start = text
        .find("\nstate:")
        .map(|i| i + 1)
        .or_else(|| text.starts_with("state:").then_some(0))
        .with_context(|| format!("{}: no top-level state: section", path.display()))?;
    // The section ends at the next line that starts a top-level key.
    let body = text[start..]
        .find('\n')
        .map_or(text.len(), |i| start + i + 1);
    let mut end = text.len();
    let mut offset = body;
    for line in text[body..].split_inclusive('\n') {
        if !line.starts_with([' ', '\t', '#', '\n']) {
            end = offset;
            break;
        }
        offset += line.len();
    }
    let mut section = String::from("state:\n  backend: etcd\n  endpoints:\n");
    for e in &to.endpoints {
        section.push_str(&format!("    - \"{e}\"\n"));
    }
    for (name, value) in [
        ("ca_file", &to.ca_file),
        ("cert_file", &to.cert_file),
        ("key_file", &to.key_file),
    ] {
        if let Some(v) = value {
            section.push_str(&format!("  {name}: \"{}\"\n", v.display()));
        }
    }
    if let Some(k) = &fleet.state.encryption_key {
        section.push_str(&format!("  encryption_key: \"{k}\"\n"));
    }
    section.push_str(&format!("  lock_ttl: {}\n", to.lock_ttl));
    let new = format!("{}{section}{}", &text[..start], &text[end..]);
    crate::fsutil::write_atomic(&path, new.as_bytes(), 0o644)
        .with_context(|| format!("writing {}", path.display()))?;
    // The new file must load; if not, put the old one back.
    if let Err(e) = crate::fleet::load(&fleet.root) {
        let _ = crate::fsutil::write_atomic(&path, text.as_bytes(), 0o644);
        anyhow::bail!("the switched fleet.yaml does not load ({e}); left it as it was");
    }
    Ok(())
}
