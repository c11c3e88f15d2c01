//! `metalherd boot arm|disarm|status (MACHINE… | --site S…)`: provisioning
//! windows by hand.

use clap::{Args, Subcommand};

use super::context::{machines, runtime};
use super::print::print;
use super::{load_fleet, Cli};
use crate::fleet::{MachineName, SiteName};
use crate::provision::windows;

#[derive(Subcommand, Debug)]
pub enum BootCommand {
    /// Open machines' provisioning windows: the boot server gives each its
    /// Ignition once, inside the window, and answers a script that boots
    /// the local disk outside one. Operations that boot machines open
    /// their own; arm for a boot you drive by hand (then power-cycle the
    /// machine, e.g. `metalherd power pxe-once MACHINE`). Audited.
    Arm(ArmArgs),
    /// Close machines' open provisioning windows. Audited.
    Disarm(DisarmArgs),
    /// Machines' latest provisioning windows: open, closed (why) or
    /// expired; who got the Ignition; who else asked for it.
    Status(Select),
}

/// Which machines.
#[derive(Args, Debug)]
pub struct Select {
    /// These machines; or use --site.
    #[arg(
        value_name = "MACHINE",
        required_unless_present = "site",
        conflicts_with = "site"
    )]
    machine: Vec<MachineName>,
    /// Every machine of this site, spares included (repeatable).
    #[arg(long, value_name = "SITE")]
    site: Vec<SiteName>,
}

#[derive(Args, Debug)]
pub struct ArmArgs {
    #[command(flatten)]
    select: Select,
    /// How long the windows stay open unless the machine reports first
    /// (`90s`, `30m`, `2h`) [default: boot.window in fleet.yaml, else 30m].
    #[arg(long = "for", value_name = "DURATION")]
    duration: Option<String>,
    /// Why; recorded in the audit log.
    #[arg(long, value_name = "TEXT")]
    reason: Option<String>,
}

#[derive(Args, Debug)]
pub struct DisarmArgs {
    #[command(flatten)]
    select: Select,
    /// Why; recorded in the audit log and in the windows.
    #[arg(long, value_name = "TEXT")]
    reason: Option<String>,
}

impl Select {
    fn names(&self, fleet: &crate::fleet::Fleet) -> anyhow::Result<Vec<String>> {
        let mut names = Vec::new();
        for site in &self.site {
            for (_, m) in machines(fleet, Some(site), &[])? {
                names.push(m.name.to_string());
            }
        }
        for (_, m) in machines(fleet, None, &self.machine)? {
            names.push(m.name.to_string());
        }
        Ok(names)
    }
}

pub fn run(cli: &Cli, cmd: &BootCommand) -> anyhow::Result<()> {
    let fleet = load_fleet(cli)?;
    let select = match cmd {
        BootCommand::Arm(a) => &a.select,
        BootCommand::Disarm(d) => &d.select,
        BootCommand::Status(s) => s,
    };
    let names = select.names(&fleet)?;
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let (store, _) = crate::state::open(&fleet)?;
    let store = store.as_ref();
    let report = runtime()?.block_on(async {
        match cmd {
            BootCommand::Arm(a) => {
                let duration = match &a.duration {
                    Some(d) => crate::fleet::window::parse_duration(d)
                        .map_err(|e| anyhow::anyhow!("--for: {e:#}"))?,
                    None => fleet.boot.window,
                };
                windows::arm(store, &names, duration, a.reason.as_deref()).await
            }
            BootCommand::Disarm(d) => windows::disarm(store, &names, d.reason.as_deref()).await,
            BootCommand::Status(_) => windows::status(store, &names).await,
        }
    })?;
    print(cli, &report, &report)
}
