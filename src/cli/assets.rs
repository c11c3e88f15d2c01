//! `metalherd assets fetch|verify|list`: the OS image cache the boot server
//! serves at `/assets/`, and the fleet's extensions in it
//! (`crate::assets::extensions`); `metalherd assets sysext build`: a system
//! extension image of node software (see `crate::assets::sysext`).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{ArgGroup, Args, Subcommand, ValueEnum};
use serde_json::json;

use super::{load_fleet, print_json, Cli, Output};
use crate::assets::download::{Fetcher, RetryPolicy};
use crate::assets::sysext::{self, SysextInput, SysextOs, SysextSpec};
use crate::assets::verify::{Algorithm, Expected, SigningKeys};
use crate::assets::{self, extensions, Release};
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

#[derive(Subcommand, Debug)]
enum SysextCommand {
    /// Build a sysext image from a release archive or a Debian package
    /// whose digest you pin: the digest is checked before anything is
    /// unpacked; the image holds only the named binaries (usr/bin/<base
    /// name>, root-owned, 0755) and its extension-release file, and is the
    /// same byte for byte from the same input and options. Install it on
    /// the node as /etc/extensions/<name>.raw.
    #[command(disable_version_flag = true)]
    Build(SysextBuildArgs),
}

#[derive(Args, Debug)]
#[command(group(ArgGroup::new("input").required(true).args(["deb", "archive"])))]
#[command(group(ArgGroup::new("digest").required(true).args(["sha256", "sha512"])))]
struct SysextBuildArgs {
    /// The extension's name: lower-case letters, digits, `-`, `_`. The
    /// node must see the image as <name>.raw.
    #[arg(long)]
    name: String,
    /// The software's version, recorded as SYSEXT_VERSION_ID.
    #[arg(long = "version", id = "sysext_version", value_name = "VERSION")]
    sysext_version: String,
    /// The OS the image is for (extension-release ID; `any` is ID=_any,
    /// for static binaries).
    #[arg(long, value_enum)]
    os: SysextOsArg,
    /// The host VERSION_ID to require: needed for debian (12) and fedora
    /// (the Fedora major); without it a flatcar image says SYSEXT_LEVEL=1.0
    /// and fits every Flatcar release.
    #[arg(long, value_name = "VERSION")]
    os_version: Option<String>,
    /// A Debian package to take the binaries from.
    #[arg(long, value_name = "FILE")]
    deb: Option<PathBuf>,
    /// A release tarball (.tar.gz, .tgz or .tar) to take the binaries from.
    #[arg(long, value_name = "FILE")]
    archive: Option<PathBuf>,
    /// A file of the input to install as usr/bin/<base name>, as a path
    /// inside it (etcd-v3.5.16-linux-amd64/etcd, or usr/bin/etcd in a
    /// package). Repeat for more. Without it, a package's every file in
    /// usr/bin.
    #[arg(long = "binary", value_name = "PATH")]
    binaries: Vec<String>,
    /// The input's pinned sha256 (hex).
    #[arg(long, value_name = "HEX")]
    sha256: Option<String>,
    /// The input's pinned sha512 (hex).
    #[arg(long, value_name = "HEX")]
    sha512: Option<String>,
    /// Where to write the image (replaced atomically).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum SysextOsArg {
    Flatcar,
    Fedora,
    Debian,
    Any,
}

#[derive(Args, Debug)]
#[command(group(ArgGroup::new("only").args(["extensions_only", "os_only"])))]
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

pub fn run(cli: &Cli, args: &AssetsArgs) -> anyhow::Result<()> {
    if let AssetsCommand::Sysext(SysextCommand::Build(b)) = &args.command {
        return sysext_build(cli, b);
    }
    let fleet = load_fleet(cli)?;
    let dir = args
        .assets_dir
        .clone()
        .unwrap_or_else(|| fleet.root.join("assets"));
    match &args.command {
        AssetsCommand::Fetch(f) => fetch(cli, &fleet, &dir, f),
        AssetsCommand::Verify => verify(cli, &fleet, &dir),
        AssetsCommand::List => list(cli, &fleet, &dir),
        AssetsCommand::Sysext(SysextCommand::Build(b)) => sysext_build(cli, b),
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

fn fetch(cli: &Cli, fleet: &Fleet, dir: &Path, args: &FetchArgs) -> anyhow::Result<()> {
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
    let runtime = super::context::runtime()?;
    let mut release = serde_json::Value::Null;
    if os {
        let keys = keys.as_ref().context("no signing keys")?;
        release = fetch_os(cli, fleet, dir, args, flavor, (&fetcher, keys, runtime))?;
    } else if !args.extensions_only && cli.output == Output::Text {
        println!("skipped the OS: the lab's image is built by `metalherd lab image`, not fetched");
    }
    if args.os_only {
        if cli.output == Output::Json {
            return print_json(&json!({ "ok": true, "dir": dir, "release": release }));
        }
        return Ok(());
    }
    let opts = extensions::FetchOptions {
        fetcher: &fetcher,
        keys: keys.as_ref(),
        mirror: args.mirror.as_deref(),
        locked: args.locked,
        assets_dir: dir,
    };
    let results = runtime.block_on(extensions::fetch_all(&opts, fleet));
    let mut docs = Vec::new();
    let mut failed = Vec::new();
    for (ext, result) in &results {
        let what = format!("extension {} {}", ext.name, ext.version);
        match result {
            Ok(outcome) => {
                let mut doc = serde_json::to_value(outcome)?;
                doc["ok"] = json!(true);
                docs.push(doc);
                if cli.output == Output::Text {
                    print_outcome(&what, ext, outcome);
                }
            }
            Err(e) => {
                let message = crate::errfmt::chain(e);
                docs.push(json!({ "ok": false, "error": message }));
                failed.push(ext.name.as_str());
                if cli.output == Output::Text {
                    println!("FAIL  {what}: {message}");
                }
            }
        }
        if let Some(doc) = docs.last_mut() {
            doc["name"] = json!(ext.name);
            doc["version"] = json!(ext.version);
        }
    }
    if cli.output == Output::Json {
        print_json(&json!({
            "ok": failed.is_empty(),
            "dir": dir,
            "release": release,
            "extensions": docs,
        }))?;
    }
    if !failed.is_empty() {
        return Err(super::Reported(format!(
            "{} of {} extensions failed: {}",
            failed.len(),
            results.len(),
            failed.join(", ")
        ))
        .into());
    }
    Ok(())
}

fn print_outcome(what: &str, ext: &crate::fleet::Extension, outcome: &extensions::Outcome) {
    match outcome {
        extensions::Outcome::Cached {
            input,
            source_digest,
            basis,
            image,
            image_size,
            image_sha512,
            lock_written,
        } => {
            let lock = if *lock_written {
                "assets.lock written"
            } else if ext.locked.is_some() {
                "matches assets.lock"
            } else {
                "assets.lock not written (--locked)"
            };
            println!(
                "cached {what}: {input} {} verified against {basis}; image {image} \
                 ({image_size} bytes, sha512 {}…); {lock}",
                source_digest.algorithm.name(),
                &image_sha512[..16.min(image_sha512.len())]
            );
        }
        extensions::Outcome::Skipped { note } => println!("skipped {what}: {note}"),
    }
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
    let what = format!(
        "{} {} {}",
        release.flavor.as_str(),
        release.channel,
        release.version
    );
    let manifest = runtime
        .block_on(assets::fetch(
            fetcher,
            keys,
            &release,
            args.mirror.as_deref(),
            dir,
        ))
        .with_context(|| format!("fetching {what}; the cache was not changed"))?;
    if cli.output == Output::Text {
        println!(
            "cached {what} in {}: {} files verified",
            dir.join(release.flavor.as_str())
                .join(&release.version)
                .display(),
            manifest.files.len()
        );
    }
    Ok(serde_json::to_value(manifest)?)
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
    if cli.output == Output::Json {
        print_json(&json!({ "ok": failed == 0, "files": results, "extensions": exts }))?;
    } else {
        for r in &results {
            match &r.problem {
                None => println!("ok    {}/{}/{}", r.flavor, r.version, r.name),
                Some(p) => println!("FAIL  {}/{}/{}: {p}", r.flavor, r.version, r.name),
            }
        }
        for r in &exts {
            match &r.problem {
                None => println!("ok    {} (matches {})", r.path, r.against),
                Some(p) => println!("FAIL  {}: {p} ({})", r.path, r.against),
            }
        }
    }
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
    if cli.output == Output::Json {
        return print_json(&json!({ "dir": dir, "releases": releases, "extensions": exts }));
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
    if !exts.is_empty() {
        println!("extensions");
    }
    for e in &exts {
        println!(
            "  {:<20} {:<27} {:>12} bytes  sha512 {}…  {}",
            e.name,
            e.version,
            e.size,
            &e.sha512[..16.min(e.sha512.len())],
            if e.pinned { "pinned" } else { "NOT pinned" }
        );
    }
    Ok(())
}

fn sysext_build(cli: &Cli, args: &SysextBuildArgs) -> anyhow::Result<()> {
    let (input, what) = match (&args.deb, &args.archive) {
        (Some(deb), _) => (SysextInput::Deb(deb.clone()), deb),
        (None, Some(archive)) => (SysextInput::Archive(archive.clone()), archive),
        (None, None) => anyhow::bail!("give --deb FILE or --archive FILE"),
    };
    let expected = match (&args.sha256, &args.sha512) {
        (Some(hex), _) => Expected {
            algorithm: Algorithm::Sha256,
            hex: hex.to_ascii_lowercase(),
        },
        (None, Some(hex)) => Expected {
            algorithm: Algorithm::Sha512,
            hex: hex.to_ascii_lowercase(),
        },
        (None, None) => anyhow::bail!("give --sha256 HEX or --sha512 HEX"),
    };
    let spec = SysextSpec {
        name: args.name.clone(),
        version: args.sysext_version.clone(),
        os: match args.os {
            SysextOsArg::Flatcar => SysextOs::Flatcar,
            SysextOsArg::Fedora => SysextOs::Fedora,
            SysextOsArg::Debian => SysextOs::Debian,
            SysextOsArg::Any => SysextOs::Any,
        },
        os_version: args.os_version.clone(),
        binaries: args.binaries.clone(),
        expected,
    };
    let image = sysext::build(&spec, &input, &args.out).with_context(|| {
        format!(
            "building sysext `{}` from {}; nothing was written",
            spec.name,
            what.display()
        )
    })?;
    let raw_name = format!("{}.raw", spec.name);
    if image.path.file_name() != Some(std::ffi::OsStr::new(&raw_name)) {
        tracing::warn!(
            "{}: install it on the node as {raw_name}: systemd-sysext looks inside for \
             extension-release.<image name>",
            image.path.display()
        );
    }
    if cli.output == Output::Json {
        return print_json(&json!({
            "ok": true,
            "image": image,
            "extension_release": sysext::extension_release(&spec),
        }));
    }
    println!(
        "built {}: {} bytes, sha512 {}",
        image.path.display(),
        image.size,
        image.sha512
    );
    for f in &image.files {
        println!("  {f}");
    }
    Ok(())
}
