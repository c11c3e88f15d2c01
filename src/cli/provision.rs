//! `metalherd provision site S`: the whole job on one site, from powered-off
//! machines to a recorded cluster generation: network boot (see
//! `crate::provision`), then the bootstrap (see `crate::bootstrap`).

use clap::{Args, Subcommand};

use super::args::Tuning;
use super::context::{fleet_and_keys, runtime, site};
use super::print::{finish, print, Phases};
use super::Cli;
use crate::fleet::SiteName;
use crate::job::Reporter;
use crate::operation::Env;
use crate::provision::{self, Generation};
use crate::state::Holder;

#[derive(Subcommand, Debug)]
pub enum ProvisionCommand {
    /// Provision one site: power on, network boot, report, SSH, etcd quorum.
    Site(SiteArgs),
}

#[derive(Args, Debug)]
pub struct SiteArgs {
    /// The site to provision (every machine but the spares).
    site: SiteName,
    /// The cluster generation to provision.
    #[arg(long, default_value_t = 1, value_name = "N")]
    generation: u64,
    /// Days the generation's certificates are valid.
    #[arg(long, default_value_t = 90, value_name = "DAYS")]
    validity_days: i64,
    #[command(flatten)]
    tuning: Tuning,
}

pub fn run(cli: &Cli, cmd: &ProvisionCommand) -> anyhow::Result<()> {
    let ProvisionCommand::Site(args) = cmd;
    let (fleet, keys) = fleet_and_keys(cli)?;
    let site = site(&fleet, &args.site)?;
    let reporter = Reporter::new(super::progress_bars(cli));
    let env = Env::open(&fleet)?;
    let holder = Holder::current(&format!("provision site {}", site.name));
    let generation = Generation {
        number: args.generation,
        validity_days: args.validity_days,
    };
    let mut report = runtime()?.block_on(provision::provision(
        env.ctx(&fleet, site, &keys, &holder, &reporter),
        &args.tuning.tuning(),
        generation,
    ))?;
    report.state_io = Some(env.io.snapshot());
    let status = if report.ok { "ok" } else { "FAILED" };
    let total = format!(
        "{:<16} {status:<7} {:>8.1} s",
        "total",
        report.took_ms as f64 / 1000.0
    );
    print(
        cli,
        &report,
        format_args!("{}{total}", Phases(&report.phases)),
    )?;
    let what = format!(
        "provision of {} (generation {})",
        report.site, report.generation
    );
    let done = format!("{what}: done; every machine ready");
    finish(
        cli,
        report.error.as_deref(),
        &report.phases,
        done,
        format!("{what} failed"),
    )
}
