//! `metalherd replace site S [--blue-green]`: the site's cluster replaced
//! by a fresh generation under the safety rules (see
//! `crate::lifecycle::replace`).

use std::time::Instant;

use clap::{Args, Subcommand};

use super::args::How;
use super::context::{fleet_and_keys, runtime, site};
use super::print::{finish, print, ran, Phases};
use super::Cli;
use crate::fleet::SiteName;
use crate::job::Reporter;
use crate::lifecycle::replace;
use crate::operation::Env;

#[derive(Subcommand, Debug)]
pub enum ReplaceCommand {
    /// Replace one site's cluster with generation N+1: drain, power off,
    /// provision, health, bake, restore traffic, retire generation N.
    Site(ReplaceArgs),
}

#[derive(Args, Debug)]
pub struct ReplaceArgs {
    site: SiteName,
    #[command(flatten)]
    how: How,
}

pub fn run(cli: &Cli, cmd: &ReplaceCommand) -> anyhow::Result<()> {
    let ReplaceCommand::Site(args) = cmd;
    let started = Instant::now();
    let (fleet, keys) = fleet_and_keys(cli)?;
    let site = site(&fleet, &args.site)?;
    let how = args.how.how(&fleet)?;
    let reporter = Reporter::new(super::progress_bars(cli));
    let env = Env::open(&fleet)?;
    let outcome =
        runtime()?.block_on(replace::replace(&env, &fleet, &keys, site, &how, &reporter))?;
    let mut report = ran(cli, &format!("replace of {}", site.name), site, outcome)?;
    report.report.took_ms = started.elapsed().as_millis();
    report.report.state_io = Some(env.io.snapshot());
    print(cli, &report, Phases(&report.report.phases))?;
    let from = report
        .from_generation
        .map_or("none".into(), |g| g.to_string());
    let done = format!(
        "replace of {}: generation {from} -> {} done in {:.0} s",
        site.name,
        report.report.generation,
        report.report.took_ms as f64 / 1000.0
    );
    let failed = format!("replace of {} failed (the site stays drained)", site.name);
    finish(
        cli,
        report.report.error.as_deref(),
        &report.report.phases,
        done,
        failed,
    )
}
