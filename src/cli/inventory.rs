//! `metalherd inventory check|show`: validate the fleet and show it.

use clap::{Args, Subcommand};
use serde_json::json;

use super::{load_fleet, print_json, Cli, Output};
use crate::fleet::SiteName;

#[derive(Subcommand, Debug)]
pub enum InventoryCommand {
    /// Validate every file of the fleet; list every problem with its file,
    /// line and field. Exits 1 if there is any.
    Check,
    /// Show the sites and machines of the fleet.
    Show(ShowArgs),
}

#[derive(Args, Debug)]
pub struct ShowArgs {
    /// Only this site.
    #[arg(long, value_name = "SITE")]
    site: Option<SiteName>,
}

pub fn run(cli: &Cli, cmd: &InventoryCommand) -> anyhow::Result<()> {
    let fleet = load_fleet(cli)?;
    match cmd {
        InventoryCommand::Check => {
            let machines = fleet.machines().count();
            if cli.output == Output::Json {
                print_json(&json!({
                    "ok": true,
                    "fleet": fleet.name,
                    "sites": fleet.sites.len(),
                    "machines": machines,
                    "diagnostics": [],
                }))
            } else {
                println!(
                    "fleet {}: {} sites, {} machines: OK",
                    fleet.name,
                    fleet.sites.len(),
                    machines
                );
                Ok(())
            }
        }
        InventoryCommand::Show(args) => {
            let sites: Vec<_> = match &args.site {
                Some(name) => {
                    let site = fleet.site(name.as_str()).ok_or_else(|| {
                        anyhow::anyhow!("no site `{name}` in fleet {}", fleet.name)
                    })?;
                    vec![site]
                }
                None => fleet.sites.iter().collect(),
            };
            if cli.output == Output::Json {
                return print_json(&json!({ "fleet": fleet.name, "sites": sites }));
            }
            for site in sites {
                println!(
                    "site {} ({}), cluster {} at {}:{}, {} control planes, capacity {}%",
                    site.name,
                    site.datacenter,
                    site.cluster.name,
                    site.cluster.api_endpoint.host,
                    site.cluster.api_endpoint.port,
                    site.cluster.control_plane_count,
                    site.capacity
                );
                println!(
                    "  {:<16} {:<14} {:<18} {:<16} BMC",
                    "MACHINE", "ROLE", "MAC", "IP"
                );
                for m in &site.machines {
                    println!(
                        "  {:<16} {:<14} {:<18} {:<16} {} {}",
                        m.name.as_str(),
                        m.role.as_str(),
                        m.mac.to_string(),
                        m.ip.to_string(),
                        m.bmc.driver,
                        m.bmc.address
                    );
                }
            }
            Ok(())
        }
    }
}
