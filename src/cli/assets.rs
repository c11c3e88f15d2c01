//! `metalherd assets fetch|verify|list`: the OS image cache the boot server
//! serves at `/assets/`; `metalherd assets sysext build`: a system
//! extension image of node software (see `crate::assets::sysext`).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{ArgGroup, Args, Subcommand, ValueEnum};
use serde_json::json;

use super::{load_fleet, print_json, Cli, Output};
use crate::assets::download::{Fetcher, RetryPolicy};
use crate::assets::sysext::{self, SysextInput, SysextOs, SysextSpec};
use crate::assets::verify::{Algorithm, Expected, SigningKeys};
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
        AssetsCommand::List => list(cli, &dir),
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
