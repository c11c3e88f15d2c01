//! The state's keys and records, typed: every key metalherd reads or
//! writes is built here ([`Key`]), and each record type has one read and
//! one update function, so a read → compare-and-swap → write is written
//! once. Code outside `state/` never spells a key.
//!
//! To add a record: a `Key` constructor, the record type, and a
//! `read_*`/`update_*` pair like [`update_site`].

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::{get_json, now_rfc3339, put_json, Expect, StateError, StateStore};

/// A key (or a lock name, or a key prefix) of the state.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key(String);

impl Key {
    /// The fleet-wide lock: one disrupting operation at a time.
    pub fn fleet() -> Key {
        Key("fleet".into())
    }

    /// `sites/<site>`: the site's [`SiteRecord`], and the site's lock.
    pub fn site(site: impl fmt::Display) -> Key {
        Key(format!("sites/{site}"))
    }

    /// `machines/<machine>`: the machine's [`MachineRecord`].
    pub fn machine(machine: impl fmt::Display) -> Key {
        Key(format!("machines/{machine}"))
    }

    /// `pki/<site>/<generation>/`: the prefix of a generation's PKI files.
    pub fn pki(site: impl fmt::Display, generation: u64) -> Key {
        Key(format!("pki/{site}/{generation}/"))
    }

    /// The marker of a generation whose PKI was written completely.
    pub fn pki_complete(site: impl fmt::Display, generation: u64) -> Key {
        Key(format!("pki/{site}/{generation}.complete"))
    }

    /// The marker of a generation retired as compromised (lockdown).
    pub fn pki_compromised(site: impl fmt::Display, generation: u64) -> Key {
        Key(format!("pki/{site}/{generation}.compromised"))
    }

    /// `provisioning/<machine>`: the machine's latest provisioning window
    /// ([`super::provisioning`]); `provisioning("")` is the prefix of all.
    pub fn provisioning(machine: impl fmt::Display) -> Key {
        Key(format!("provisioning/{machine}"))
    }

    /// The prefix of the audit log's entries.
    pub fn audit_log() -> Key {
        Key("audit/".into())
    }

    /// `reports/drill/<site>/<stem>`: a drill's report.
    pub fn drill_report(site: impl fmt::Display, stem: &str) -> Key {
        Key(format!("reports/drill/{site}/{stem}"))
    }

    /// A journal target: `site/<site>`.
    pub fn target_site(site: impl fmt::Display) -> String {
        format!("site/{site}")
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for Key {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A machine's place in its lifecycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MachineState {
    Available,
    Provisioning,
    Ready,
    Draining,
    Wiped,
    Quarantined,
}

impl MachineState {
    /// The state as the state store spells it (`available`).
    pub fn as_str(self) -> &'static str {
        match self {
            MachineState::Available => "available",
            MachineState::Provisioning => "provisioning",
            MachineState::Ready => "ready",
            MachineState::Draining => "draining",
            MachineState::Wiped => "wiped",
            MachineState::Quarantined => "quarantined",
        }
    }
}

/// `machines/<name>`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MachineRecord {
    pub state: MachineState,
    pub since: String,
    pub generation: Option<u64>,
    /// Why the latest provision of `generation` set the machine aside
    /// (`<step>: <cause>`): it did not converge with the rest of its
    /// site, and the next run of that provision finishes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<String>,
}

impl MachineRecord {
    /// A machine entering `state` now.
    pub fn now(state: MachineState, generation: Option<u64>) -> MachineRecord {
        MachineRecord {
            state,
            since: now_rfc3339(),
            generation,
            failed: None,
        }
    }

    /// A machine a provision of `generation` set aside at `step`.
    pub fn set_aside(generation: u64, step: &str, cause: &str) -> MachineRecord {
        MachineRecord {
            failed: Some(format!("{step}: {cause}")),
            ..MachineRecord::now(MachineState::Provisioning, Some(generation))
        }
    }

    /// Whether the machine runs `generation`, done.
    pub fn ready_at(&self, generation: u64) -> bool {
        self.state == MachineState::Ready && self.generation == Some(generation)
    }
}

/// `sites/<name>`: the generation running there.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SiteRecord {
    pub generation: u64,
    pub updated: String,
    /// Generations that ran there before, oldest first.
    pub retired: Vec<u64>,
    /// Set while the site is drained (taken out of service), with why; a
    /// failed replace leaves it set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drained: Option<String>,
    /// When the site was drained (RFC 3339), while it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drained_since: Option<String>,
    /// The roles of the site's machines in the current generation, where a
    /// blue-green replace moved them away from the inventory's (machine →
    /// role; machines not listed keep their inventory role).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub roles: BTreeMap<String, crate::fleet::Role>,
    /// The roles of the generation a blue-green replace is building; the
    /// boot server renders these while they are set.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub next_roles: BTreeMap<String, crate::fleet::Role>,
}

/// The record of `site`, if any.
pub async fn read_site(
    store: &dyn StateStore,
    site: impl fmt::Display,
) -> Result<Option<SiteRecord>, StateError> {
    Ok(get_json::<SiteRecord>(store, &Key::site(site))
        .await?
        .map(|(r, _)| r))
}

/// The generation running at `site` (none before the first provision).
pub async fn site_generation(
    store: &dyn StateStore,
    site: impl fmt::Display,
) -> Result<Option<u64>, StateError> {
    Ok(read_site(store, site)
        .await?
        .map(|r| r.generation)
        .filter(|g| *g > 0))
}

/// How many times an update re-reads after a concurrent write.
const UPDATE_ATTEMPTS: usize = 5;

/// Changes the record of `site` with `change` (on an empty record when
/// there is none), stamps it `updated` now and writes it with
/// compare-and-swap, re-reading and re-applying `change` when another
/// writer got there first. Returns the record written.
pub async fn update_site(
    store: &dyn StateStore,
    site: impl fmt::Display,
    mut change: impl FnMut(&mut SiteRecord),
) -> Result<SiteRecord, StateError> {
    let key = Key::site(site);
    let mut attempt = 0;
    loop {
        let (mut record, expect) = match get_json::<SiteRecord>(store, &key).await? {
            Some((r, rev)) => (r, Expect::Revision(rev)),
            None => (SiteRecord::default(), Expect::Absent),
        };
        change(&mut record);
        record.updated = now_rfc3339();
        match put_json(store, &key, &record, expect).await {
            Ok(_) => return Ok(record),
            Err(StateError::Conflict { .. }) if attempt + 1 < UPDATE_ATTEMPTS => attempt += 1,
            Err(e) => return Err(e),
        }
    }
}

/// Marks `site` drained with why (or not drained: `None`).
pub async fn set_drained(
    store: &dyn StateStore,
    site: impl fmt::Display,
    drained: Option<String>,
) -> Result<(), StateError> {
    update_site(store, site, |r| {
        // Drained again while drained: it has been out of service since
        // the first time.
        r.drained_since = match (&r.drained_since, &drained) {
            (_, None) => None,
            (Some(since), Some(_)) if r.drained.is_some() => Some(since.clone()),
            (_, Some(_)) => Some(now_rfc3339()),
        };
        r.drained = drained.clone();
    })
    .await
    .map(|_| ())
}

/// The record of `machine` and its revision, if any.
pub async fn read_machine(
    store: &dyn StateStore,
    machine: impl fmt::Display,
) -> Result<Option<(MachineRecord, u64)>, StateError> {
    get_json::<MachineRecord>(store, &Key::machine(machine)).await
}

/// Writes the record of `machine` if `expect` holds.
pub async fn put_machine(
    store: &dyn StateStore,
    machine: impl fmt::Display,
    record: &MachineRecord,
    expect: Expect,
) -> Result<u64, StateError> {
    put_json(store, &Key::machine(machine), record, expect).await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::state::memory::MemoryStore;

    fn block<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn keys_are_valid_state_keys() {
        for k in [
            Key::fleet(),
            Key::site("fra"),
            Key::machine("fra-cp-01"),
            Key::pki_complete("fra", 2),
            Key::pki_compromised("fra", 2),
            Key::provisioning("fra-cp-01"),
        ] {
            crate::state::check_key(&k).unwrap();
        }
        assert_eq!(&*Key::site("fra"), "sites/fra");
        assert!(Key::pki("fra", 2).starts_with("pki/fra/2/"));
    }

    #[test]
    fn update_site_creates_changes_and_survives_a_concurrent_writer() {
        block(async {
            let store = MemoryStore::new();
            assert!(read_site(&store, "fra").await.unwrap().is_none());
            set_drained(&store, "fra", Some("replace".into()))
                .await
                .unwrap();
            let r = read_site(&store, "fra").await.unwrap().unwrap();
            assert_eq!(r.drained.as_deref(), Some("replace"));
            assert_eq!(r.generation, 0);
            assert!(!r.updated.is_empty());
            assert_eq!(site_generation(&store, "fra").await.unwrap(), None);

            // Another writer changes the record between our read and write:
            // the change is applied again on what it wrote, not lost.
            let other = store.clone();
            let mut raced = false;
            let written = update_site(&store, "fra", |r| {
                if !raced {
                    raced = true;
                    let other = other.clone();
                    std::thread::spawn(move || {
                        block(update_site(&other, "fra", |r| r.generation = 7)).unwrap()
                    })
                    .join()
                    .unwrap();
                }
                r.drained = None;
            })
            .await
            .unwrap();
            assert_eq!(written.generation, 7);
            assert_eq!(written.drained, None);
            assert_eq!(site_generation(&store, "fra").await.unwrap(), Some(7));
        });
    }
}
