//! `metalherd bootstrap site S`: deliver the generation's PKI and
//! configuration over SSH, form the etcd quorum, start the control plane
//! (see `crate::bootstrap` for the phases).

use std::time::Duration;

use clap::{Args, Subcommand};

use super::args::SshArgs;
use super::context::{fleet_and_keys, runtime, site};
use super::print::{finish, print, Phases};
use super::Cli;
use crate::bootstrap::Options;
use crate::fleet::SiteName;
use crate::job::Reporter;
use crate::operation::Env;
use crate::state::Holder;

#[derive(Subcommand, Debug)]
pub enum BootstrapCommand {
    /// Bootstrap the control plane of one site's cluster.
    Site(SiteArgs),
}

#[derive(Args, Debug)]
pub struct SiteArgs {
    /// The site whose machines have booted their Ignition.
    site: SiteName,
    /// The cluster generation (its PKI is made once and kept in the state).
    #[arg(long, default_value_t = 1, value_name = "N")]
    generation: u64,
    /// Days the generation's certificates are valid (clusters are replaced, not renewed).
    #[arg(long, default_value_t = 90, value_name = "DAYS")]
    validity_days: i64,
    /// SSH sessions at once in the site.
    #[arg(long, default_value_t = 32, value_name = "N")]
    parallel: usize,
    /// Seconds each step on a machine may take.
    #[arg(long, default_value_t = 120, value_name = "SECS")]
    step_timeout: u64,
    /// Seconds to wait for etcd quorum and for the API server's /readyz.
    #[arg(long, default_value_t = 180, value_name = "SECS")]
    ready_timeout: u64,
    #[command(flatten)]
    ssh: SshArgs,
}

pub fn run(cli: &Cli, cmd: &BootstrapCommand) -> anyhow::Result<()> {
    let BootstrapCommand::Site(args) = cmd;
    let (fleet, keys) = fleet_and_keys(cli)?;
    let site = site(&fleet, &args.site)?;
    let opts = Options {
        generation: args.generation,
        user: args.ssh.user.clone(),
        timeouts: args.ssh.timeouts(Duration::from_secs(args.step_timeout)),
        parallel: args.parallel,
        ready_timeout: Duration::from_secs(args.ready_timeout),
        skip: Default::default(),
        leaves_some: false,
    };
    let reporter = Reporter::new(super::progress_bars(cli));
    let env = Env::open(&fleet)?;
    let holder = Holder::current(&format!("bootstrap site {}", site.name));
    let report = runtime()?.block_on(crate::provision::bootstrap(
        env.ctx(&fleet, site, &keys, &holder, &reporter),
        &opts,
        args.validity_days,
    ))?;
    print(cli, &report, Phases(&report.phases))?;
    let what = format!(
        "bootstrap of {} (generation {})",
        report.site, report.generation
    );
    let (done, failed) = (format!("{what}: done"), format!("{what} failed"));
    finish(cli, report.error.as_deref(), &report.phases, done, failed)
}
