//! `metalherd ssh <machine> [-- cmd]` and `metalherd exec (--site S |
//! --machines a,b) -- cmd`: SSH with the host keys metalherd generated
//! pinned, as `core` with metalherd's own key.

use std::time::Duration;

use clap::Args;

use super::args::SshArgs;
use super::context::{fleet_and_existing_keys, machine, machines, runtime};
use super::print::print;
use super::{Cli, Output};
use crate::exec;
use crate::fleet::{MachineName, SiteName};
use crate::job::Reporter;
use crate::ssh::{command_line, Session};

#[derive(Args, Debug)]
pub struct SshCommandArgs {
    /// The machine to log in to.
    machine: MachineName,
    /// A command to run instead of an interactive shell. As with OpenSSH,
    /// the words are joined with spaces into one command line for the
    /// remote shell: `-- 'ls /opt; which kubelet'` runs both commands, and
    /// quoting meant for the remote shell must survive the local one.
    #[arg(last = true, value_name = "CMD")]
    command: Vec<String>,
    #[command(flatten)]
    ssh: SshArgs,
}

#[derive(Args, Debug)]
pub struct ExecArgs {
    /// The machines of this site that serve its current generation (the
    /// roles the state records; spares, powered off, left out).
    #[arg(
        long,
        value_name = "SITE",
        required_unless_present = "machines",
        conflicts_with = "machines"
    )]
    site: Option<SiteName>,
    /// With --site: its spares too.
    #[arg(long, requires = "site")]
    include_spares: bool,
    /// These machines, comma-separated.
    #[arg(long, value_name = "A,B", value_delimiter = ',')]
    machines: Vec<MachineName>,
    /// The command to run on each machine (after `--`), joined with spaces
    /// into one command line for the remote shell, as OpenSSH does.
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<String>,
    /// Machines at once per site.
    #[arg(long, default_value_t = 32, value_name = "N")]
    parallel: usize,
    /// Seconds the command may run on each machine.
    #[arg(long, default_value_t = 300, value_name = "SECS")]
    timeout: u64,
    #[command(flatten)]
    ssh: SshArgs,
}

pub fn run_ssh(cli: &Cli, args: &SshCommandArgs) -> anyhow::Result<()> {
    let (fleet, keys) = fleet_and_existing_keys(cli)?;
    let (_, machine) = machine(&fleet, &args.machine)?;
    let target = exec::target(&keys, machine)?;
    let timeouts = args.ssh.timeouts(Duration::MAX);
    let command = (!args.command.is_empty()).then(|| command_line(&args.command));
    let code = runtime()?.block_on(async {
        let session = Session::connect(&target, &args.ssh.user, &keys.operator, timeouts).await?;
        let code = session.interactive(command.as_deref()).await?;
        session.close().await;
        anyhow::Ok(code)
    })?;
    if code == 0 {
        Ok(())
    } else {
        Err(super::Exit(u8::try_from(code).unwrap_or(255)).into())
    }
}

pub fn run_exec(cli: &Cli, args: &ExecArgs) -> anyhow::Result<()> {
    // The fleet with the roles its state records: a site's spares are
    // powered off, so by default only what serves.
    let (fleet, keys) = fleet_and_existing_keys(cli)?;
    let mut chosen = machines(&fleet, args.site.as_ref(), &args.machines)?;
    if args.site.is_some() && !args.include_spares {
        chosen.retain(|(_, m)| m.role != crate::fleet::Role::Spare);
    }
    let opts = exec::Options {
        command: command_line(&args.command),
        user: args.ssh.user.clone(),
        timeouts: args.ssh.timeouts(Duration::from_secs(args.timeout)),
        parallel: args.parallel,
    };
    let reporter = Reporter::new(super::progress_bars(cli));
    let report = runtime()?.block_on(exec::exec(&chosen, &keys, &opts, &reporter));
    print(cli, &report, &report)?;
    let summary = &report.summary;
    if report.ok {
        if cli.output == Output::Text {
            println!("{summary}");
        }
        return Ok(());
    }
    if cli.output == Output::Text {
        eprintln!("{summary}");
    }
    let first = summary.lines().next().unwrap_or("exec failed");
    Err(super::Reported(first.to_string()).into())
}
