//! `metalherd serve` (the boot server) and `metalherd dnsmasq` (the DHCP
//! side of a site's network boot).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use super::context::site;
use super::{load_fleet, Cli};
use crate::fleet::SiteName;
use crate::keys;
use crate::render::{self, Selection};
use crate::serve::{self, Options};

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address and port to listen on.
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR")]
    listen: SocketAddr,
    /// Serve only these sites (repeatable) [default: all].
    #[arg(long, value_name = "SITE")]
    site: Vec<SiteName>,
    /// The OS image cache served at /assets/ [default: assets/ in the fleet].
    #[arg(long, value_name = "DIR")]
    assets_dir: Option<PathBuf>,
    /// How long a one-time Ignition token stays valid.
    #[arg(long, default_value_t = 1800, value_name = "SECS")]
    token_ttl: u64,
}

pub fn run(cli: &Cli, args: &ServeArgs) -> anyhow::Result<()> {
    let fleet = load_fleet(cli)?;
    for s in &args.site {
        site(&fleet, s)?;
    }
    let opts = Options {
        fleet_root: cli.fleet.clone(),
        listen: args.listen,
        sites: args.site.clone(),
        assets_dir: args
            .assets_dir
            .clone()
            .unwrap_or_else(|| fleet.root.join("assets")),
        token_ttl: Duration::from_secs(args.token_ttl),
    };
    super::context::runtime()?.block_on(serve::run(opts))
}

#[derive(Args, Debug)]
pub struct DnsmasqArgs {
    /// The site.
    #[arg(long, value_name = "SITE")]
    site: SiteName,
    /// Write here instead of printing.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

pub fn dnsmasq(cli: &Cli, args: &DnsmasqArgs) -> anyhow::Result<()> {
    let fleet = load_fleet(cli)?;
    site(&fleet, &args.site)?;
    let (keys, _) = keys::ensure_state(&fleet)?;
    let selection = Selection {
        site: Some(args.site.clone()),
        machine: None,
    };
    let rendered = render::render(&fleet, &keys, &selection, 1)?;
    let conf = rendered
        .sites
        .into_iter()
        .find_map(|s| s.dnsmasq)
        .context("the site rendered no dnsmasq config")?;
    match &args.out {
        Some(path) => crate::fsutil::write_atomic(path, conf.as_bytes(), 0o644)
            .with_context(|| format!("writing {}", path.display())),
        None => {
            print!("{conf}");
            Ok(())
        }
    }
}
