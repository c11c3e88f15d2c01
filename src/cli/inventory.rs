//! `metalherd inventory check|show`: validate the fleet and show it.

use clap::{Args, Subcommand};
use serde_json::json;

use super::context::site;
use super::print::print;
use super::{load_fleet, Cli};
use crate::fleet::show::Inventory;
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
            let (sites, machines) = (fleet.sites.len(), fleet.machines().count());
            let doc = json!({
                "ok": true,
                "fleet": fleet.name,
                "sites": sites,
                "machines": machines,
                "diagnostics": [],
            });
            let text = format!(
                "fleet {}: {sites} sites, {machines} machines: OK",
                fleet.name
            );
            print(cli, doc, text)
        }
        InventoryCommand::Show(args) => {
            let sites: Vec<_> = match &args.site {
                Some(name) => vec![site(&fleet, name)?],
                None => fleet.sites.iter().collect(),
            };
            let text: String = sites.iter().map(|s| Inventory(s).to_string()).collect();
            print(cli, json!({ "fleet": fleet.name, "sites": sites }), text)
        }
    }
}
