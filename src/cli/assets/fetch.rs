//! `metalherd assets fetch`: an OS release and the fleet's extensions
//! into the cache, each verified before it enters.

use std::io::IsTerminal;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use clap::{ArgGroup, Args};
use serde_json::json;

use super::signing_keys;
use crate::assets::download::{Fetcher, RetryPolicy};
use crate::assets::verify::SigningKeys;
use crate::assets::{self, extensions, Release};
use crate::cli::print::{failures, print};
use crate::cli::{Cli, Output};
use crate::fleet::{Fleet, OsFlavor};

#[derive(Args, Debug)]
#[command(group(ArgGroup::new("only").args(["extensions_only", "os_only"])))]
pub(super) struct FetchArgs {
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
    /// URL/streams/<channel>.json, an extension's input, checksum file and
    /// signature at URL/extensions/<name>/<file name of its URL>.
    #[arg(long, value_name = "URL")]
    mirror: Option<String>,
    /// Fetch only the fleet's extensions, not the OS release.
    #[arg(long)]
    extensions_only: bool,
    /// Fetch only the OS release, not the extensions.
    #[arg(long)]
    os_only: bool,
    /// Never write assets.lock: refuse an extension that neither the fleet
    /// nor assets.lock pins (for CI and nightly jobs).
    #[arg(long)]
    locked: bool,
    /// Retries per file after a connection error, timeout or 5xx.
    #[arg(long, default_value_t = 5)]
    retries: u32,
    /// The first pause between retries, doubling each time (up to 30 s).
    #[arg(long, default_value_t = 1000, value_name = "MS", hide = true)]
    retry_delay_ms: u64,
}

pub(super) fn fetch(cli: &Cli, fleet: &Fleet, dir: &Path, args: &FetchArgs) -> anyhow::Result<()> {
    let flavor = match args.flavor.as_deref() {
        Some("fcos") => OsFlavor::Fcos,
        Some(_) => OsFlavor::Flatcar,
        None => fleet.os.flavor,
    };
    let os = !args.extensions_only && flavor != OsFlavor::Lab;
    // The OS release needs keys; extensions only if a checksum file is
    // signed.
    let keys = if os || !fleet.os.signing_keys.is_empty() {
        Some(signing_keys(fleet)?)
    } else {
        None
    };
    let policy = RetryPolicy {
        retries: args.retries,
        base_delay: Duration::from_millis(args.retry_delay_ms),
        max_delay: Duration::from_secs(30),
    };
    let bars = std::io::stderr().is_terminal() && cli.verbose == 0 && !cli.quiet;
    let fetcher = Fetcher::new(policy, bars)?;
    let runtime = crate::cli::context::runtime()?;
    let mut release = serde_json::Value::Null;
    if os {
        let keys = keys.as_ref().context("no signing keys")?;
        release = fetch_os(cli, fleet, dir, args, flavor, (&fetcher, keys, runtime))?;
    } else if !args.extensions_only && cli.output == Output::Text {
        println!("skipped the OS: the lab's image is built by `metalherd lab image`, not fetched");
    }
    if args.os_only {
        return print(
            cli,
            json!({ "ok": true, "dir": dir, "release": release }),
            "",
        );
    }
    let opts = extensions::FetchOptions {
        fetcher: &fetcher,
        keys: keys.as_ref(),
        mirror: args.mirror.as_deref(),
        locked: args.locked,
        assets_dir: dir,
    };
    let results = runtime.block_on(extensions::fetch_all(&opts, fleet));
    let failed: Vec<&str> = results
        .iter()
        .filter(|r| !r.ok)
        .map(|r| r.name.as_str())
        .collect();
    let text: String = results.iter().map(|r| format!("{r}\n")).collect();
    let doc =
        json!({ "ok": failed.is_empty(), "dir": dir, "release": release, "extensions": results });
    print(cli, doc, text)?;
    failures("extensions", results.len(), &failed)
}

/// The OS release part of `assets fetch`: its manifest as JSON.
fn fetch_os(
    cli: &Cli,
    fleet: &Fleet,
    dir: &Path,
    args: &FetchArgs,
    flavor: OsFlavor,
    (fetcher, keys, runtime): (&Fetcher, &SigningKeys, &tokio::runtime::Runtime),
) -> anyhow::Result<serde_json::Value> {
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
    let manifest = runtime
        .block_on(assets::fetch(
            fetcher,
            keys,
            &release,
            args.mirror.as_deref(),
            dir,
        ))
        .with_context(|| format!("fetching {release}; the cache was not changed"))?;
    if cli.output == Output::Text {
        let cached = dir.join(release.flavor.as_str()).join(&release.version);
        let files = manifest.files.len();
        println!(
            "cached {release} in {}: {files} files verified",
            cached.display()
        );
    }
    Ok(serde_json::to_value(manifest)?)
}
