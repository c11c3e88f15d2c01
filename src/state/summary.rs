//! What `state show` reports: each site's recorded generation and drain,
//! each machine's lifecycle state and the role it holds now, and the
//! locks, read from the store for the fleet's sites. A machine the state
//! does not know is `available`.
//!
//! To show more of a record: a field on [`SiteSummary`] or
//! [`MachineSummary`] (it appears in `--output json` at once) and, if
//! people need it, in their text.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use super::records::{Key, MachineRecord, MachineState, SiteRecord};
use super::{get_json, LockInfo, StateError, StateStore};
use crate::fleet::{Fleet, MachineName, Role, SiteName};

/// The state of the fleet's sites (or of one), with the locks held.
#[derive(Debug, Serialize)]
pub struct Summary {
    /// The store it was read from ([`StateStore::describe`]).
    pub store: String,
    pub sites: Vec<SiteSummary>,
    pub locks: Vec<LockInfo>,
}

/// One site as the state records it.
#[derive(Debug, Serialize)]
pub struct SiteSummary {
    pub name: SiteName,
    /// The generation running there; none before the first provision.
    pub generation: Option<u64>,
    pub updated: Option<String>,
    pub retired: Vec<u64>,
    /// Why the site is drained, while it is.
    pub drained: Option<String>,
    /// The roles a blue-green replace moved; none when it moved none.
    pub roles: Option<BTreeMap<String, Role>>,
    /// The roles of the generation a blue-green replace is building.
    pub next_roles: Option<BTreeMap<String, Role>>,
    pub machines: Vec<MachineSummary>,
}

/// One machine as the state records it.
#[derive(Debug, Serialize)]
pub struct MachineSummary {
    pub name: MachineName,
    /// The role it holds now: the state's after a blue-green replace.
    pub role: Role,
    /// The role the inventory gives it.
    pub inventory_role: Role,
    pub state: MachineState,
    pub since: Option<String>,
    pub generation: Option<u64>,
}

/// Reads the summary of the fleet's sites, or of the site `only`.
pub async fn summary(
    fleet: &Fleet,
    store: &dyn StateStore,
    only: Option<&str>,
) -> Result<Summary, StateError> {
    let mut sites = Vec::new();
    for site in &fleet.sites {
        if only.is_some_and(|o| o != site.name.as_str()) {
            continue;
        }
        let record = get_json::<SiteRecord>(store, &Key::site(&site.name))
            .await?
            .map(|(r, _)| r);
        let moved = record.as_ref().map(|r| r.roles.clone()).unwrap_or_default();
        let mut machines = Vec::new();
        for m in &site.machines {
            let r = get_json::<MachineRecord>(store, &Key::machine(&m.name))
                .await?
                .map(|(r, _)| r);
            machines.push(MachineSummary {
                name: m.name.clone(),
                role: moved.get(m.name.as_str()).copied().unwrap_or(m.role),
                inventory_role: m.role,
                state: r.as_ref().map_or(MachineState::Available, |r| r.state),
                since: r.as_ref().map(|r| r.since.clone()),
                generation: r.as_ref().and_then(|r| r.generation),
            });
        }
        sites.push(SiteSummary {
            name: site.name.clone(),
            generation: record.as_ref().map(|r| r.generation),
            updated: record.as_ref().map(|r| r.updated.clone()),
            retired: record
                .as_ref()
                .map(|r| r.retired.clone())
                .unwrap_or_default(),
            drained: record.as_ref().and_then(|r| r.drained.clone()),
            next_roles: record.map(|r| r.next_roles).filter(|n| !n.is_empty()),
            roles: (!moved.is_empty()).then_some(moved),
            machines,
        });
    }
    Ok(Summary {
        store: store.describe(),
        sites,
        locks: store.locks().await?,
    })
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "state: {}", self.store)?;
        for s in &self.sites {
            let generation = s.generation.map_or("none".into(), |g| g.to_string());
            write!(f, "site {}: generation {generation}", s.name)?;
            match &s.drained {
                Some(why) => writeln!(f, ", DRAINED ({why})")?,
                None => writeln!(f)?,
            }
            for m in &s.machines {
                let moved = if m.role != m.inventory_role {
                    format!(
                        "  (inventory: {}; moved by a blue-green replace)",
                        m.inventory_role
                    )
                } else {
                    String::new()
                };
                let (name, role, state) = (m.name.as_str(), m.role.as_str(), m.state.as_str());
                writeln!(f, "  {name:<16} {role:<14} {state}{moved}")?;
            }
        }
        write!(f, "{}", Locks(&self.locks))
    }
}

/// The locks held, one line each, stale ones said so.
pub struct Locks<'a>(pub &'a [LockInfo]);

impl fmt::Display for Locks<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            writeln!(f, "no locks held")?;
        }
        for l in self.0 {
            let stale = if l.stale {
                " (STALE: the process is gone)"
            } else {
                ""
            };
            writeln!(
                f,
                "lock {}: held by {} since {}{stale}",
                l.name, l.holder, l.holder.since
            )?;
        }
        Ok(())
    }
}
