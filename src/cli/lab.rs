//! `metalherd lab up|down|status|console|image`: run a lab fleet on QEMU
//! virtual machines on this host (see `crate::lab`).

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::json;

use super::{load_fleet, print_json, Cli, Output};
use crate::fleet::{MachineName, SiteName};
use crate::lab::{self, Accel, UpOptions};

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
        LabCommand::Image(args) => image(cli, &fleet, args, assets(&args.assets_dir)),
        LabCommand::Up(args) => {
            let quiet = cli.output == Output::Json || cli.quiet;
            let progress = |line: &str| {
                if !quiet {
                    eprintln!("lab up: {line}");
                }
            };
            let opts = UpOptions {
                name: args.name.clone(),
                sites: args.site.clone(),
                memory_mb: args.memory,
                accel: args.accel,
                metalherd: std::env::current_exe().context("finding the metalherd binary")?,
                assets_dir: assets(&args.assets_dir),
            };
            let report = lab::up(&fleet, &opts, &progress)?;
            if cli.output == Output::Json {
                return print_json(&serde_json::to_value(&report)?);
            }
            let vms = report
                .record
                .processes
                .iter()
                .filter(|p| p.role.starts_with("vm "))
                .count();
            println!(
                "lab {} is up in {:.1} s: sites {}, {vms} VMs (powered off, {}), consoles in {}",
                report.record.name,
                report.took_ms as f64 / 1000.0,
                report.record.sites.join(", "),
                report.record.accel,
                lab::dir(&fleet).join("logs").display()
            );
            println!(
                "next: metalherd provision site {}",
                report.record.sites.first().map_or("SITE", |s| s.as_str())
            );
            Ok(())
        }
        LabCommand::Down(args) => {
            let report = lab::down(&fleet, args.name.as_deref())?;
            if cli.output == Output::Json {
                return print_json(&serde_json::to_value(&report)?);
            }
            println!(
                "lab {} is down: stopped {} processes; namespace {}",
                report.name.as_deref().unwrap_or("?"),
                report.stopped.len(),
                if report.namespace_deleted {
                    "deleted"
                } else {
                    "STILL PRESENT"
                }
            );
            for s in &report.stopped {
                println!("    {s}");
            }
            anyhow::ensure!(
                report.namespace_deleted,
                "the lab's namespace is still there"
            );
            Ok(())
        }
        LabCommand::Status => {
            let status = lab::status(&fleet)?;
            if cli.output == Output::Json {
                return print_json(&serde_json::to_value(&status)?);
            }
            match &status.name {
                None => println!("no lab is up for fleet {}", fleet.name),
                Some(name) => {
                    println!(
                        "lab {name}: {} (namespace {}, {})",
                        if status.up { "up" } else { "DEGRADED" },
                        if status.namespace {
                            "present"
                        } else {
                            "missing"
                        },
                        status.accel.as_deref().unwrap_or("?")
                    );
                    for p in &status.processes {
                        println!(
                            "    {:<24} pid {:<8} {}{}",
                            p.role,
                            p.pid,
                            if p.running { "running" } else { "GONE" },
                            p.vm.as_deref()
                                .map(|v| format!(" (vm {v})"))
                                .unwrap_or_default()
                        );
                    }
                }
            }
            Ok(())
        }
        LabCommand::Console(args) => {
            anyhow::ensure!(
                fleet.machine(args.machine.as_str()).is_some(),
                "no machine `{}` in fleet {}",
                args.machine,
                fleet.name
            );
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

fn image(
    cli: &Cli,
    fleet: &crate::fleet::Fleet,
    args: &ImageArgs,
    assets: PathBuf,
) -> anyhow::Result<()> {
    lab::ensure_lab_fleet(fleet)?;
    let quiet = cli.output == Output::Json || cli.quiet;
    let progress = |line: &str| {
        if !quiet {
            eprintln!("lab image: {line}");
        }
    };
    let report = lab::image::build(
        &assets,
        &fleet.os.version,
        &lab::image::BuildOptions {
            mirror: args.mirror.clone(),
            force: args.force,
            debs: lab::extensions::debian_packages(fleet),
        },
        &progress,
    )?;
    let recorded = lab::image::recorded_debs(&report.dir)?;
    let extensions = lab::extensions::build_and_lock(fleet, &report.dir, &assets, &recorded)?;
    if cli.output == Output::Json {
        return print_json(&json!({
            "dir": report.dir,
            "input_hash": report.input_hash,
            "cached": report.cached,
            "build_seconds": report.build_seconds,
            "kernel_bytes": report.kernel_bytes,
            "initrd_bytes": report.initrd_bytes,
            "extensions": extensions,
        }));
    }
    if report.cached {
        println!(
            "lab image {} is cached in {} (input {})",
            fleet.os.version,
            report.dir.display(),
            &report.input_hash[..12.min(report.input_hash.len())]
        );
    } else {
        println!(
            "built lab image {} in {:.0} s: kernel {:.1} MB, initrd {:.1} MB, in {}",
            fleet.os.version,
            report.build_seconds,
            report.kernel_bytes as f64 / 1e6,
            report.initrd_bytes as f64 / 1e6,
            report.dir.display()
        );
    }
    for e in &extensions {
        println!(
            "extension {} {}: {} ({} bytes, sha512 {}…) from {}, {} assets.lock",
            e.name,
            e.version,
            e.image.display(),
            e.size,
            &e.sha512[..16.min(e.sha512.len())],
            e.deb,
            if e.cached { "matches" } else { "recorded in" }
        );
    }
    Ok(())
}
