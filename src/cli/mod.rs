//! The command line: argument parsing (clap derive; the doc comments are
//! the `--help`), dispatch to one `run` per subcommand, and how results and
//! errors are printed. Data goes to stdout (text or `--output json`), logs
//! and errors to stderr. Exit codes: 0 success, 1 failure or invalid
//! input, 2 usage error, 3 a lock held by another run.
//!
//! To add a command: a module here with its `Args` and `run`, a variant in
//! [`Command`], a line in `dispatch`.

mod args;
mod assets;
mod audit;
mod boot;
mod bootstrap;
mod context;
mod dev;
mod drill;
mod errors;
mod init;
mod inventory;
mod kubeconfig;
mod lab;
mod lockdown;
mod metrics;
mod plan;
mod power;
mod print;
mod provision;
mod rebuild;
mod render;
mod replace;
mod serve;
mod ssh;
mod state;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

use crate::fleet::{self, Fleet, LoadError};

/// Provisions bare-metal Kubernetes across data centers and replaces whole
/// clusters like cattle.
///
/// metalherd reads a fleet repository (sites/, inventory/, ignition/,
/// templates/) and renders every machine's boot configuration from it.
#[derive(Parser, Debug)]
#[command(
    name = "metalherd",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    /// The fleet repository to use.
    #[arg(
        long,
        global = true,
        value_name = "DIR",
        default_value = ".",
        env = "METALHERD_FLEET"
    )]
    pub fleet: PathBuf,

    /// How to print results: text for people, json for scripts.
    #[arg(long, global = true, value_enum, default_value_t = Output::Text)]
    pub output: Output,

    /// Log more (-v: debug, -vv: trace). Logs go to stderr.
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    pub verbose: u8,

    /// Log only errors.
    #[arg(short, long, global = true)]
    pub quiet: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Check and show the fleet's inventory.
    #[command(subcommand)]
    Inventory(inventory::InventoryCommand),
    /// Render Ignition, iPXE and dnsmasq configs into a directory.
    Render(render::RenderArgs),
    /// Fetch, verify and list the cached OS images the boot server serves.
    Assets(assets::AssetsArgs),
    /// Power control through the machines' BMCs (Redfish, IPMI, QEMU, manual).
    Power(power::PowerArgs),
    /// Provisioning windows: when the boot server may give a machine its
    /// Ignition (once). Operations open their own; these are for boots you
    /// drive by hand.
    #[command(subcommand)]
    Boot(boot::BootCommand),
    /// The boot server: iPXE scripts, one-time-token Ignition, OS images.
    Serve(serve::ServeArgs),
    /// Provision a site end to end: network boot, reports, SSH, etcd quorum.
    #[command(subcommand)]
    Provision(provision::ProvisionCommand),
    /// What `replace` would do to a site, and which blockers hold now.
    #[command(subcommand)]
    Plan(plan::PlanCommand),
    /// Replace a site's cluster with a fresh generation, under the safety rules.
    #[command(subcommand)]
    Replace(replace::ReplaceCommand),
    /// The nightly job: replace sites in waves, one at a time, stopping at
    /// the first failure.
    Rebuild(rebuild::RebuildArgs),
    /// A disaster drill: take a site away, prove the others carry the
    /// load, optionally rebuild it, and write a timed report.
    #[command(subcommand)]
    Drill(drill::DrillCommand),
    /// Contain a suspected compromise: isolate a cluster's nodes but for
    /// the forensic bastion, collect evidence, quarantine the machines.
    #[command(subcommand)]
    Lockdown(lockdown::LockdownCommand),
    /// Release a quarantined machine (recorded with a reason).
    #[command(subcommand)]
    Release(audit::ReleaseCommand),
    /// The audit log: every operation, who ran it, overrides and their reasons.
    Audit(audit::AuditArgs),
    /// Issue a short-lived admin kubeconfig for a site's current cluster
    /// generation (recorded in the audit log).
    ///
    /// A fresh client key and a certificate (O=system:masters) signed by
    /// the generation's Kubernetes CA. Refused for a site without a
    /// generation and for a retired or compromised generation. Printed to
    /// stdout, or written 0600 with --out.
    Kubeconfig(kubeconfig::KubeconfigArgs),
    /// The lab: the fleet's sites as QEMU VMs in a network namespace.
    #[command(subcommand)]
    Lab(lab::LabCommand),
    /// Bootstrap a site's control plane over SSH: PKI, etcd quorum, API server.
    #[command(subcommand)]
    Bootstrap(bootstrap::BootstrapCommand),
    /// Log in to a machine (or run one command) with its host key pinned.
    Ssh(ssh::SshCommandArgs),
    /// Run a command on many machines at once, with a summary.
    Exec(ssh::ExecArgs),
    /// metalherd's state: generations, machines, locks, the journal.
    #[command(subcommand)]
    State(state::StateCommand),
    /// Print (or write) a site's rendered dnsmasq config.
    Dnsmasq(serve::DnsmasqArgs),
    /// The fleet's state as Prometheus metrics (stdout, or --textfile FILE).
    Metrics(metrics::MetricsArgs),
    /// Start a fleet repository of your own from the shipped example.
    Init(init::InitArgs),
    /// Print a shell completion script.
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Developer tools (fleet generators for benchmarks).
    #[command(subcommand, hide = true)]
    Dev(dev::DevCommand),
}

/// Parses the command line, runs the command and maps the outcome to an
/// exit code.
pub fn main() -> ExitCode {
    errors::quiet_on_broken_pipe();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return errors::usage(e),
    };
    errors::init_logging(&cli);
    match dispatch(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            if let Some(Exit(code)) = err.downcast_ref::<Exit>() {
                return ExitCode::from(*code);
            }
            let broken_pipe = |e: &(dyn std::error::Error + 'static)| {
                let kind = e
                    .downcast_ref::<std::io::Error>()
                    .map(std::io::Error::kind)
                    .or_else(|| {
                        e.downcast_ref::<serde_json::Error>()
                            .and_then(serde_json::Error::io_error_kind)
                    });
                kind == Some(std::io::ErrorKind::BrokenPipe)
            };
            if err.chain().any(broken_pipe) {
                return ExitCode::from(errors::BROKEN_PIPE);
            }
            errors::report_error(&cli, &err);
            // A lock held by another run is not a failure of this one:
            // schedulers tell the two apart by the exit code.
            let code = err
                .chain()
                .find_map(|e| e.downcast_ref::<crate::state::StateError>())
                .map_or(1, |e| e.exit_code());
            ExitCode::from(code)
        }
    }
}

fn dispatch(cli: &Cli) -> anyhow::Result<()> {
    match &cli.command {
        Command::Inventory(cmd) => inventory::run(cli, cmd),
        Command::Render(args) => render::run(cli, args),
        Command::Init(args) => init::run(cli, args),
        Command::Provision(cmd) => provision::run(cli, cmd),
        Command::Plan(cmd) => plan::run(cli, cmd),
        Command::Replace(cmd) => replace::run(cli, cmd),
        Command::Audit(args) => audit::audit(cli, args),
        Command::Kubeconfig(args) => kubeconfig::run(cli, args),
        Command::Rebuild(args) => rebuild::run(cli, args),
        Command::Release(cmd) => audit::release(cli, cmd),
        Command::Lockdown(cmd) => lockdown::run(cli, cmd),
        Command::Drill(cmd) => drill::run(cli, cmd),
        Command::Lab(cmd) => lab::run(cli, cmd),
        Command::Assets(args) => assets::run(cli, args),
        Command::Power(args) => power::run(cli, args),
        Command::Boot(cmd) => boot::run(cli, cmd),
        Command::Serve(args) => serve::run(cli, args),
        Command::Dnsmasq(args) => serve::dnsmasq(cli, args),
        Command::Metrics(args) => metrics::run(cli, args),
        Command::Bootstrap(cmd) => bootstrap::run(cli, cmd),
        Command::Ssh(args) => ssh::run_ssh(cli, args),
        Command::Exec(args) => ssh::run_exec(cli, args),
        Command::State(cmd) => state::run(cli, cmd),
        Command::Completions { shell } => {
            clap_complete::generate(
                *shell,
                &mut Cli::command(),
                "metalherd",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Command::Dev(cmd) => dev::run(cli, cmd),
    }
}

/// Loads the fleet named by `--fleet`.
pub(crate) fn load_fleet(cli: &Cli) -> Result<Fleet, LoadError> {
    fleet::load(&cli.fleet)
}

/// Prints a JSON document to stdout.
pub(crate) fn print_json(value: &serde_json::Value) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

/// Whether to draw progress bars: on a terminal, in text mode, without
/// `--verbose` (whose log lines would tear them).
pub(crate) fn progress_bars(cli: &Cli) -> bool {
    cli.output == Output::Text && cli.verbose == 0 && !cli.quiet && std::io::stderr().is_terminal()
}

/// The exit status of a remote command, passed through (`metalherd ssh`).
#[derive(Debug, thiserror::Error)]
#[error("the remote command exited with status {0}")]
pub(crate) struct Exit(pub u8);

/// A failure whose details the command has already printed (as its
/// `--output json` document, or as text lines): only the exit code and a
/// one-line summary on stderr remain to be given.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Reported(pub String);
