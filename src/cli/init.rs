//! `metalherd init DIR`: write a copy of the shipped example fleet to start
//! a fleet repository from, into a new or empty directory only.

use std::path::PathBuf;

use clap::Args;
use serde_json::json;

use super::print::print;
use super::Cli;
use crate::example;

#[derive(Args, Debug)]
pub struct InitArgs {
    /// The directory to create (or an empty one).
    dir: PathBuf,
    /// Write the example fleet as the lab runs it: `os.flavor: lab`, QEMU
    /// BMCs, DHCP served by the lab's dnsmasq (see `metalherd lab --help`).
    #[arg(long)]
    lab: bool,
}

pub fn run(cli: &Cli, args: &InitArgs) -> anyhow::Result<()> {
    let dir = &args.dir;
    let count = example::init::init(dir, args.lab)?;
    let d = dir.display();
    let text = if args.lab {
        format!("wrote the lab fleet ({count} files) to {d}; next, as root: `metalherd --fleet {d} lab image`, `lab up --site fra`, `provision site fra`")
    } else {
        format!("wrote the example fleet ({count} files) to {d}; next: edit sites/ and inventory/, then `metalherd --fleet {d} inventory check`")
    };
    print(cli, json!({ "ok": true, "dir": dir, "files": count }), text)
}
