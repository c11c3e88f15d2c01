//! `metalherd plan site S [--blue-green]`: the steps `replace` would run
//! (the same list it journals, see `crate::lifecycle::plan`) and the
//! blockers that hold now.

use clap::{Args, Subcommand};
use serde_json::json;

use super::context::{fleet_and_keys, runtime, site};
use super::print::print_checks;
use super::{print_json, Cli, Output};
use crate::fleet::SiteName;
use crate::infra::Real;
use crate::lifecycle;
use crate::state::{self, records};

#[derive(Subcommand, Debug)]
pub enum PlanCommand {
    /// What `replace site S` would do, and which blockers hold now.
    Site(PlanArgs),
}

#[derive(Args, Debug)]
pub struct PlanArgs {
    site: SiteName,
    /// Judge only the recorded state: do not ask the other sites' etcd.
    #[arg(long)]
    no_probe: bool,
    /// Plan a blue-green replace (`replace site S --blue-green`): built on
    /// the spares while the current generation serves.
    #[arg(long)]
    blue_green: bool,
}

pub fn run(cli: &Cli, cmd: &PlanCommand) -> anyhow::Result<()> {
    let PlanCommand::Site(args) = cmd;
    let (fleet, _keys) = fleet_and_keys(cli)?;
    let site = site(&fleet, &args.site)?;
    let bake = lifecycle::bake(&fleet, None)?;
    let (from, checks) = runtime()?.block_on(async {
        let (store, sealer) = state::open(&fleet)?;
        let from = records::site_generation(store.as_ref(), &site.name).await?;
        let opts = lifecycle::Options {
            probe_health: !args.no_probe,
            ..Default::default()
        };
        let checks = lifecycle::check(&fleet, site, store.as_ref(), &sealer, &Real, &opts).await;
        anyhow::Ok((from, checks))
    })?;
    let to = from.unwrap_or(0) + 1;
    let steps = if args.blue_green {
        let next = crate::fleet::roles::blue_green(site)?;
        lifecycle::plan::blue_green(&fleet, site, &next, from, to, bake)
    } else {
        lifecycle::plan::replace(&fleet, site, from, to, bake)
    };
    let blocked = checks.iter().any(|c| !c.ok);
    if cli.output == Output::Json {
        return print_json(&json!({
            "site": site.name, "from_generation": from, "to_generation": to,
            "blue_green": args.blue_green, "steps": steps, "checks": checks, "blocked": blocked,
        }));
    }
    println!(
        "replace site {}{}: generation {} -> {to}, holding the locks `fleet` and `sites/{}`, \
         after the blockers below pass:",
        site.name,
        if args.blue_green { " --blue-green" } else { "" },
        from.map_or("none".to_string(), |g| g.to_string()),
        site.name
    );
    for (i, s) in steps.iter().enumerate() {
        println!("  {:>2}. {:<14} {}", i + 1, s.step, s.does);
    }
    println!("blockers now:");
    print_checks(&checks);
    if blocked {
        println!("replace would be refused (override: --force --reason \"...\")");
    }
    Ok(())
}
