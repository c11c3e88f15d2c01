//! Hidden developer commands. `dev gen-fleet` writes a large synthetic
//! fleet for benchmarks (see `crate::example::synthetic`).

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::Cli;
use crate::example;

#[derive(Subcommand, Debug)]
pub enum DevCommand {
    /// Write a synthetic fleet of SITES sites with MACHINES machines each.
    GenFleet(GenFleetArgs),
}

#[derive(Args, Debug)]
pub struct GenFleetArgs {
    /// Where to write the fleet (must not hold one yet).
    dir: PathBuf,
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(2..=50))]
    sites: u8,
    #[arg(long, default_value_t = 270, value_parser = clap::value_parser!(u16).range(3..=1000))]
    machines: u16,
}

pub fn run(_cli: &Cli, cmd: &DevCommand) -> anyhow::Result<()> {
    let DevCommand::GenFleet(args) = cmd;
    example::synthetic::write(&args.dir, args.sites, args.machines)?;
    println!(
        "wrote a fleet of {} sites x {} machines to {}",
        args.sites,
        args.machines,
        args.dir.display()
    );
    Ok(())
}
