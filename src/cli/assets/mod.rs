//! `metalherd assets fetch|verify|list`: the OS image cache the boot server
//! serves at `/assets/`, and the fleet's extensions in it
//! (`crate::assets::extensions`); `metalherd assets sysext build`: a system
//! extension image of node software (see `crate::assets::sysext`).

mod fetch;
mod sysext;

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use serde_json::json;

use super::print::print;
use super::{load_fleet, Cli, Output};
use crate::assets::verify::SigningKeys;
use crate::assets::{self, extensions};
use crate::fleet::Fleet;
use fetch::FetchArgs;
use sysext::SysextCommand;

#[derive(Args, Debug)]
pub struct AssetsArgs {
    /// The cache directory [default: assets/ in the fleet].
    #[arg(long, global = true, value_name = "DIR")]
    assets_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: AssetsCommand,
}

#[derive(Subcommand, Debug)]
enum AssetsCommand {
    /// Download a release's kernel and initrd (and FCOS rootfs), check
    /// each file's digest and OpenPGP signature against os.signing_keys,
    /// and add the release to the cache; then fetch every extension the
    /// fleet declares, check it against its pin (the fleet's, assets.lock's,
    /// or the first time the vendor's checksum file), build its sysext
    /// image and cache it, recording both digests in assets.lock. Nothing
    /// enters the cache unless it verified.
    #[command(disable_version_flag = true)]
    Fetch(FetchArgs),
    /// Re-check every cached file's digest and signature, and every cached
    /// extension image against assets.lock (or the fleet's pin). Exits 1 if
    /// any fails.
    Verify,
    /// Show the cached releases with their files' sizes and digests, and
    /// the cached extension images.
    List,
    /// System extension images of node software (etcd, kubelet) that
    /// systemd-sysext merges over /usr. Needs no fleet.
    #[command(subcommand)]
    Sysext(SysextCommand),
}

pub fn run(cli: &Cli, args: &AssetsArgs) -> anyhow::Result<()> {
    if let AssetsCommand::Sysext(SysextCommand::Build(b)) = &args.command {
        return sysext::build(cli, b);
    }
    let fleet = load_fleet(cli)?;
    let dir = args
        .assets_dir
        .clone()
        .unwrap_or_else(|| fleet.root.join("assets"));
    match &args.command {
        AssetsCommand::Fetch(f) => fetch::fetch(cli, &fleet, &dir, f),
        AssetsCommand::Verify => verify(cli, &fleet, &dir),
        AssetsCommand::List => list(cli, &fleet, &dir),
        AssetsCommand::Sysext(SysextCommand::Build(b)) => sysext::build(cli, b),
    }
}

fn signing_keys(fleet: &Fleet) -> anyhow::Result<SigningKeys> {
    let paths: Vec<PathBuf> = fleet
        .os
        .signing_keys
        .iter()
        .map(|p| fleet.root.join(p))
        .collect();
    Ok(SigningKeys::load(&paths)?)
}

fn verify(cli: &Cli, fleet: &Fleet, dir: &Path) -> anyhow::Result<()> {
    let releases = assets::list(dir)?;
    // Keys are needed only for OS files.
    let results = if releases.is_empty() {
        Vec::new()
    } else {
        assets::verify_cache(dir, &signing_keys(fleet)?)?
    };
    let exts = extensions::verify_cached(fleet, dir);
    let failed = results.iter().filter(|r| !r.ok).count() + exts.iter().filter(|r| !r.ok).count();
    let total = results.len() + exts.len();
    let lines = results.iter().map(|r| format!("{r}\n"));
    let text: String = lines.chain(exts.iter().map(|r| format!("{r}\n"))).collect();
    let doc = json!({ "ok": failed == 0, "files": results, "extensions": exts });
    print(cli, doc, text)?;
    if failed > 0 {
        let summary = format!("{failed} of {total} cached files failed verification");
        return Err(super::Reported(summary).into());
    }
    if cli.output == Output::Text {
        println!("{total} of {total} cached files verified");
    }
    Ok(())
}

fn list(cli: &Cli, fleet: &Fleet, dir: &Path) -> anyhow::Result<()> {
    let releases = assets::list(dir)?;
    let exts = extensions::list_cached(fleet, dir)?;
    let mut text = String::new();
    if releases.is_empty() {
        text = format!("no releases cached in {}\n", dir.display());
    }
    text.extend(releases.iter().map(ToString::to_string));
    if !exts.is_empty() {
        text.push_str("extensions\n");
    }
    text.extend(exts.iter().map(|e| format!("{e}\n")));
    print(
        cli,
        json!({ "dir": dir, "releases": releases, "extensions": exts }),
        text,
    )
}
