//! What most commands start from: the fleet loaded, the lab's network
//! namespace entered for a lab fleet, the roles the state records applied,
//! the SSH keys loaded, the machines named, and the process's one async
//! runtime.

use anyhow::Context;

use super::{load_fleet, Cli};
use crate::fleet::{Fleet, Machine, MachineName, Site, SiteName};
use crate::keys::{self, Keys};

/// The process's one async runtime (see [`crate::runtime`]).
pub(crate) fn runtime() -> anyhow::Result<&'static tokio::runtime::Runtime> {
    crate::runtime::get().context("starting the async runtime")
}

pub(crate) use crate::lifecycle::site;

/// The machines a command names: every machine of `site` (spares
/// included), else the `named` ones.
pub(crate) fn machines<'a>(
    fleet: &'a Fleet,
    site: Option<&SiteName>,
    named: &[MachineName],
) -> anyhow::Result<Vec<(&'a Site, &'a Machine)>> {
    if let Some(s) = site {
        let site = self::site(fleet, s)?;
        return Ok(site.machines.iter().map(|m| (site, m)).collect());
    }
    named.iter().map(|m| machine(fleet, m)).collect()
}

/// Machine `name` of `fleet` with its site, or an error naming the fleet.
pub(crate) fn machine<'a>(
    fleet: &'a Fleet,
    name: &MachineName,
) -> anyhow::Result<(&'a Site, &'a Machine)> {
    fleet
        .machine(name.as_str())
        .with_context(|| format!("no machine `{name}` in fleet {}", fleet.name))
}

/// Loads the fleet and the keys it already has, for connecting to its
/// machines: a key made now is one no machine holds, so none is made.
/// Without metalherd's own key the fleet was never provisioned with this
/// state: say so, and name the labs up for other fleets.
pub(crate) fn fleet_and_existing_keys(cli: &Cli) -> anyhow::Result<(Fleet, Keys)> {
    let fleet = load_fleet(cli)?;
    crate::lab::enter(&fleet)?;
    let fleet = runtime()?.block_on(crate::fleet::roles::recorded(fleet));
    let state_dir = fleet.state_dir();
    let keys = keys::existing(&fleet)
        .with_context(|| format!("loading SSH keys from {}", state_dir.display()))?;
    match keys {
        Some(keys) => Ok((fleet, keys)),
        None => anyhow::bail!(
            "fleet {} ({}) has no SSH keys in its state ({}): metalherd never rendered or \
             provisioned it here, so none of its machines would accept a connection; \
             provision it first, or point --fleet at the fleet that was provisioned{}",
            fleet.name,
            fleet.root.display(),
            state_dir.display(),
            crate::lab::elsewhere(&fleet)
        ),
    }
}

/// Loads the fleet and the keys, generating the missing ones (for
/// rendering and provisioning, whose Ignition carries them).
pub(crate) fn fleet_and_keys(cli: &Cli) -> anyhow::Result<(Fleet, Keys)> {
    let fleet = load_fleet(cli)?;
    // A lab fleet's machines live in the lab's network namespace.
    crate::lab::enter(&fleet)?;
    let fleet = runtime()?.block_on(crate::fleet::roles::recorded(fleet));
    let state_dir = fleet.state_dir();
    let (keys, created) = keys::ensure_state(&fleet)
        .with_context(|| format!("loading SSH keys from {}", state_dir.display()))?;
    if created > 0 {
        tracing::warn!(
            "generated {created} SSH key(s) that no machine has yet: render and provision those machines before connecting"
        );
    }
    Ok((fleet, keys))
}
