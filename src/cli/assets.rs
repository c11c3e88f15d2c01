//! `metalherd assets fetch|verify|list`: the OS image cache the boot server
//! serves at `/assets/`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::json;

use super::{load_fleet, print_json, Cli, Output};
use crate::assets::download::{Fetcher, RetryPolicy};
use crate::assets::verify::SigningKeys;
use crate::assets::{self, Release};
use crate::fleet::{Fleet, OsFlavor};

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
    /// and add the release to the cache. Nothing enters the cache unless
    /// every file verified.
    #[command(disable_version_flag = true)]
    Fetch(FetchArgs),
    /// Re-check every cached file's digest and signature. Exits 1 if any
    /// fails.
    Verify,
    /// Show the cached releases with their files' sizes and digests.
    List,
}

#[derive(Args, Debug)]
struct FetchArgs {
    /// OS flavor [default: os.flavor].
    #[arg(long, value_parser = ["flatcar", "fcos"])]
    flavor: Option<String>,
    /// Release channel [default: os.channel].
    #[arg(long)]
    channel: Option<String>,
    /// Exact release version [default: os.version].
    #[arg(long = "version", id = "release_version", value_name = "VERSION")]
    release_version: Option<String>,
    /// Fetch from this mirror instead of the vendor: Flatcar files at
    /// URL/<version>/<file>, Fedora CoreOS metadata at
    /// URL/streams/<channel>.json.
    #[arg(long, value_name = "URL")]
    mirror: Option<String>,
    /// Retries per file after a connection error, timeout or 5xx.
    #[arg(long, default_value_t = 5)]
    retries: u32,
    /// The first pause between retries, doubling each time (up to 30 s).
    #[arg(long, default_value_t = 1000, value_name = "MS", hide = true)]
    retry_delay_ms: u64,
}

pub fn run(cli: &Cli, args: &AssetsArgs) -> anyhow::Result<()> {
    let fleet = load_fleet(cli)?;
    let dir = args
        .assets_dir
        .clone()
        .unwrap_or_else(|| fleet.root.join("assets"));
    match &args.command {
        AssetsCommand::Fetch(f) => fetch(cli, &fleet, &dir, f),
        AssetsCommand::Verify => verify(cli, &fleet, &dir),
        AssetsCommand::List => list(cli, &dir),
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

fn fetch(cli: &Cli, fleet: &Fleet, dir: &std::path::Path, args: &FetchArgs) -> anyhow::Result<()> {
    let flavor = match args.flavor.as_deref() {
        Some("fcos") => OsFlavor::Fcos,
        Some(_) => OsFlavor::Flatcar,
        None => fleet.os.flavor,
    };
    let release = Release {
        flavor,
        channel: args
            .channel
            .clone()
            .unwrap_or_else(|| fleet.os.channel.clone()),
        version: args
            .release_version
            .clone()
            .unwrap_or_else(|| fleet.os.version.clone()),
    };
    let keys = signing_keys(fleet)?;
    let policy = RetryPolicy {
        retries: args.retries,
        base_delay: Duration::from_millis(args.retry_delay_ms),
        max_delay: Duration::from_secs(30),
    };
    let bars = std::io::stderr().is_terminal() && cli.verbose == 0 && !cli.quiet;
    let fetcher = Fetcher::new(policy, bars)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let what = format!(
        "{} {} {}",
        release.flavor.as_str(),
        release.channel,
        release.version
    );
    let manifest = runtime
        .block_on(assets::fetch(
            &fetcher,
            &keys,
            &release,
            args.mirror.as_deref(),
            dir,
        ))
        .with_context(|| format!("fetching {what}; the cache was not changed"))?;
    if cli.output == Output::Json {
        return print_json(&json!({ "ok": true, "dir": dir, "release": manifest }));
    }
    println!(
        "cached {what} in {}: {} files verified",
        dir.join(release.flavor.as_str())
            .join(&release.version)
            .display(),
        manifest.files.len()
    );
    Ok(())
}

fn verify(cli: &Cli, fleet: &Fleet, dir: &std::path::Path) -> anyhow::Result<()> {
    let keys = signing_keys(fleet)?;
    let results = assets::verify_cache(dir, &keys)?;
    let failed: Vec<_> = results.iter().filter(|r| !r.ok).collect();
    if cli.output == Output::Json {
        print_json(&json!({ "ok": failed.is_empty(), "files": results }))?;
    } else {
        for r in &results {
            match &r.problem {
                None => println!("ok    {}/{}/{}", r.flavor, r.version, r.name),
                Some(p) => println!("FAIL  {}/{}/{}: {p}", r.flavor, r.version, r.name),
            }
        }
    }
    if !failed.is_empty() {
        let summary = format!(
            "{} of {} cached files failed verification",
            failed.len(),
            results.len()
        );
        return Err(super::Reported(summary).into());
    }
    if cli.output == Output::Text {
        println!(
            "{} of {} cached files verified",
            results.len(),
            results.len()
        );
    }
    Ok(())
}

fn list(cli: &Cli, dir: &std::path::Path) -> anyhow::Result<()> {
    let releases = assets::list(dir)?;
    if cli.output == Output::Json {
        return print_json(&json!({ "dir": dir, "releases": releases }));
    }
    if releases.is_empty() {
        println!("no releases cached in {}", dir.display());
    }
    for r in &releases {
        println!("{} {} ({})", r.flavor, r.version, r.channel);
        for f in &r.files {
            println!(
                "  {:<48} {:>12} bytes  sha512 {}…",
                f.name,
                f.size,
                &f.sha512[..16.min(f.sha512.len())]
            );
        }
    }
    Ok(())
}
