//! `metalherd lab up|down|status|console|image`: run a lab fleet on QEMU
//! virtual machines on this host (see `crate::lab`).

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use super::context::machine;
use super::print::{print, progress};
use super::{load_fleet, Cli};
use crate::fleet::{MachineName, SiteName};
use crate::lab::{self, Accel, UpOptions};
use anyhow::Context;
use clap::{Args, Subcommand};

#[derive(Subcommand, Debug)]
pub enum LabCommand {
    /// Build (or find cached) the lab's node image: a Debian kernel and an
    /// initrd that runs Ignition, then systemd, sshd and etcd from RAM.
    Image(ImageArgs),
    /// Start the lab (as root): namespace, bridges, boot servers, dnsmasq,
    /// one powered-off VM per machine.
    Up(UpArgs),
    /// Stop every process of the lab and delete its namespace.
    Down(DownArgs),
    /// What runs, and each VM's state.
    Status,
    /// A machine's serial console: its log so far, then (on a terminal)
    /// the live console; Ctrl-] leaves.
    Console(ConsoleArgs),
}

#[derive(Args, Debug)]
pub struct ImageArgs {
    /// Build again even when the cached image matches.
    #[arg(long)]
    force: bool,
    /// The Debian mirror [default: http://deb.debian.org/debian].
    #[arg(long, value_name = "URL")]
    mirror: Option<String>,
    /// The image cache [default: assets/ in the fleet].
    #[arg(long, value_name = "DIR")]
    assets_dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct UpArgs {
    /// Start only these sites (repeatable) [default: all].
    #[arg(long, value_name = "SITE")]
    site: Vec<SiteName>,
    /// The lab's network namespace.
    #[arg(long, default_value = lab::DEFAULT_NAME, value_name = "NAME")]
    name: String,
    /// Memory per VM in MiB (768 is comfortable; etcd preallocates 128).
    /// `lab up` refuses, before starting anything, when every VM (spares
    /// too) at this plus QEMU's own (under TCG 128 MiB of translation
    /// cache and about 100 MiB) would not fit in MemAvailable.
    #[arg(long, default_value_t = 768, value_name = "MIB")]
    memory: u32,
    /// CPU virtualisation: auto probes KVM and falls back to TCG.
    #[arg(long, value_enum, default_value_t = Accel::Auto)]
    accel: Accel,
    /// The image cache [default: assets/ in the fleet].
    #[arg(long, value_name = "DIR")]
    assets_dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct DownArgs {
    /// The namespace to clean up when the lab's record is gone.
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
}

#[derive(Args, Debug)]
pub struct ConsoleArgs {
    machine: MachineName,
}

pub fn run(cli: &Cli, cmd: &LabCommand) -> anyhow::Result<()> {
    let fleet = load_fleet(cli)?;
    let assets = |dir: &Option<PathBuf>| dir.clone().unwrap_or_else(|| fleet.root.join("assets"));
    match cmd {
        LabCommand::Image(args) => {
            let progress = progress(cli, "lab image");
            let assets = assets(&args.assets_dir);
            let mirror = args.mirror.clone();
            let image = lab::report::build_image(&fleet, &assets, mirror, args.force, &progress)?;
            print(cli, &image, &image)
        }
        LabCommand::Up(args) => {
            let opts = UpOptions {
                name: args.name.clone(),
                sites: args.site.clone(),
                memory_mb: args.memory,
                accel: args.accel,
                metalherd: std::env::current_exe().context("finding the metalherd binary")?,
                assets_dir: assets(&args.assets_dir),
            };
            let report = lab::up(&fleet, &opts, &progress(cli, "lab up"))?;
            print(cli, &report, report.text(&fleet))
        }
        LabCommand::Down(args) => {
            let report = lab::down(&fleet, args.name.as_deref())?;
            print(cli, &report, &report)?;
            let deleted = report.namespace_deleted;
            anyhow::ensure!(deleted, "the lab's namespace is still there");
            Ok(())
        }
        LabCommand::Status => {
            let status = lab::status(&fleet)?;
            print(cli, &status, status.text(&fleet.name))
        }
        LabCommand::Console(args) => {
            machine(&fleet, &args.machine)?;
            let (socket, log) = lab::console_paths(&fleet, args.machine.as_str());
            let so_far = std::fs::read(&log)
                .with_context(|| format!("reading {} (is the lab up?)", log.display()))?;
            std::io::stdout().write_all(&so_far)?;
            if !std::io::stdin().is_terminal() {
                return Ok(());
            }
            lab::console::attach(&socket)
        }
    }
}
