//! What most commands start from: the fleet loaded, the lab's network
//! namespace entered for a lab fleet, the roles the state records applied,
//! the SSH keys loaded, and the process's one async runtime.

use anyhow::Context;

use super::{load_fleet, Cli};
use crate::fleet::Fleet;
use crate::keys::{self, Keys};

/// The process's one async runtime (see [`crate::runtime`]).
pub(crate) fn runtime() -> anyhow::Result<&'static tokio::runtime::Runtime> {
    crate::runtime::get().context("starting the async runtime")
}

pub(crate) use crate::lifecycle::site;

/// Loads the fleet and the keys; refuses to invent keys for machines
/// that were never rendered (their Ignition would not carry them).
pub(crate) fn fleet_and_keys(cli: &Cli) -> anyhow::Result<(Fleet, Keys)> {
    let fleet = load_fleet(cli)?;
    // A lab fleet's machines live in the lab's network namespace.
    crate::lab::enter(&fleet)?;
    let fleet = with_recorded_roles(fleet)?;
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

/// The fleet with the roles its state records (a blue-green replace moves
/// a site's roles onto other machines than the inventory names); the
/// inventory's roles when nothing is recorded or the state cannot be read
/// (said as a warning: operations that need the state fail on it anyway).
fn with_recorded_roles(fleet: Fleet) -> anyhow::Result<Fleet> {
    if matches!(&fleet.state.backend, crate::fleet::StateBackend::Local { path } if !fleet.root.join(path).exists())
    {
        return Ok(fleet);
    }
    let read = runtime()?.block_on(async {
        let (store, _) = crate::state::open(&fleet)?;
        crate::fleet::roles::effective(&fleet, store.as_ref(), false).await
    });
    match read {
        Ok(f) => Ok(f),
        Err(e) => {
            tracing::warn!(
                "reading the recorded roles from the state: {e:#}; using the inventory's roles"
            );
            Ok(fleet)
        }
    }
}
