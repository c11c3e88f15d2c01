//! `metalherd plan site S [--blue-green]`: the steps `replace` would run
//! (the same list it journals, see `crate::lifecycle::plan`) and the
//! blockers that hold now.

use clap::{Args, Subcommand};

use super::context::{fleet_and_keys, runtime, site};
use super::print::print;
use super::Cli;
use crate::fleet::SiteName;
use crate::infra::{Infra, Real};
use crate::lifecycle::{self, plan::site::site_plan};
use crate::state;

#[derive(Subcommand, Debug)]
pub enum PlanCommand {
    /// What `replace site S` would do, and which blockers hold now. Exits
    /// 4 when a blocker holds (the replace would be refused without
    /// `--force`), 0 otherwise.
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
    let plan = runtime()?.block_on(async {
        let (store, sealer) = state::open(&fleet)?;
        let seams = (store.as_ref(), &sealer, &Real as &dyn Infra);
        site_plan(&fleet, site, seams, !args.no_probe, args.blue_green, bake).await
    })?;
    print(cli, &plan, &plan)?;
    // A plan the replace would refuse: exit 4, as the replace would, so a
    // script can tell without reading the text.
    if plan.blocked {
        return Err(super::Exit(super::print::BLOCKED).into());
    }
    Ok(())
}
