//! `metalherd assets sysext build`: a system extension image of node
//! software from a pinned package or archive (see `crate::assets::sysext`).

use std::path::PathBuf;

use anyhow::Context;
use clap::{ArgGroup, Args, Subcommand, ValueEnum};
use serde_json::json;

use crate::assets::sysext::{self, SysextInput, SysextOs, SysextSpec};
use crate::assets::verify::{Algorithm, Expected};
use crate::cli::print::print;
use crate::cli::Cli;

#[derive(Subcommand, Debug)]
pub(super) enum SysextCommand {
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
pub(super) struct SysextBuildArgs {
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

pub(super) fn build(cli: &Cli, args: &SysextBuildArgs) -> anyhow::Result<()> {
    let (input, what) = match (&args.deb, &args.archive) {
        (Some(deb), _) => (SysextInput::Deb(deb.clone()), deb),
        (None, Some(archive)) => (SysextInput::Archive(archive.clone()), archive),
        (None, None) => anyhow::bail!("give --deb FILE or --archive FILE"),
    };
    let (algorithm, hex) = match (&args.sha256, &args.sha512) {
        (Some(hex), _) => (Algorithm::Sha256, hex),
        (None, Some(hex)) => (Algorithm::Sha512, hex),
        (None, None) => anyhow::bail!("give --sha256 HEX or --sha512 HEX"),
    };
    let hex = hex.to_ascii_lowercase();
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
        expected: Expected { algorithm, hex },
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
    let (path, size, sha512) = (image.path.display(), image.size, &image.sha512);
    let mut text = format!("built {path}: {size} bytes, sha512 {sha512}\n");
    text.extend(image.files.iter().map(|f| format!("  {f}\n")));
    let release = sysext::extension_release(&spec);
    print(
        cli,
        json!({ "ok": true, "image": image, "extension_release": release }),
        text,
    )
}
