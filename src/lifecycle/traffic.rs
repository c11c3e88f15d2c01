//! Taking a site's traffic away and giving it back: the state records the
//! site drained (with why) before the fleet's `traffic.drain` hook runs,
//! and clears it only after `traffic.restore` succeeded, so a failure in
//! between leaves the site recorded as drained. The hooks (and the drill's
//! `isolate`/`reconnect`) are the user's commands, run by [`hook`] (through [`Infra::hook`]).

use std::time::Duration;

use anyhow::{bail, Context};

use crate::fleet::{Fleet, Site};
use crate::infra::Infra;
use crate::state::{records, StateStore};

/// How long a hook may run.
const HOOK_TIMEOUT: Duration = Duration::from_secs(300);

/// Runs the hook `which` (`drain`, `restore`, `isolate`, …) of the fleet:
/// `command` with `{site}` substituted, by `sh -c` in the fleet directory,
/// bounded to 300 s; a non-zero exit fails with its last stderr line.
pub async fn hook(fleet: &Fleet, site: &Site, which: &str, command: &str) -> anyhow::Result<()> {
    let command = command.replace("{site}", site.name.as_str());
    let out = tokio::time::timeout(
        HOOK_TIMEOUT,
        tokio::process::Command::new("sh")
            .arg("-c")
            .arg(&command)
            .current_dir(&fleet.root)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .with_context(|| {
        format!(
            "{which} `{command}` did not finish within {} s",
            HOOK_TIMEOUT.as_secs()
        )
    })?
    .with_context(|| format!("running {which} `{command}`"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        bail!(
            "{which} `{command}` exited {}: {}",
            out.status
                .code()
                .map_or("by signal".into(), |c| c.to_string()),
            err.lines().last().unwrap_or("")
        );
    }
    Ok(())
}

/// Records `site` drained (`why`), then runs `traffic.drain` if the fleet
/// has one (through `infra`).
pub async fn drain(
    store: &dyn StateStore,
    infra: &dyn Infra,
    fleet: &Fleet,
    site: &Site,
    why: String,
) -> anyhow::Result<()> {
    records::set_drained(store, &site.name, Some(why)).await?;
    if let Some(t) = &fleet.traffic {
        infra.hook(fleet, site, "traffic.drain", &t.drain).await?;
    }
    Ok(())
}

/// Runs `traffic.restore` if the fleet has one (through `infra`), then
/// records `site` in service.
pub async fn restore(
    store: &dyn StateStore,
    infra: &dyn Infra,
    fleet: &Fleet,
    site: &Site,
) -> anyhow::Result<()> {
    if let Some(t) = &fleet.traffic {
        infra
            .hook(fleet, site, "traffic.restore", &t.restore)
            .await?;
    }
    records::set_drained(store, &site.name, None).await?;
    Ok(())
}
