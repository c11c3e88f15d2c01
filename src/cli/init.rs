//! `metalherd init DIR`: write a copy of the shipped example fleet to start
//! a fleet repository from, into a new or empty directory only.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use serde_json::json;

use super::{print_json, Cli, Output};
use crate::example;
use crate::fsutil::create_file;

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
    let empty = match std::fs::read_dir(dir) {
        Ok(mut entries) => entries.next().is_none(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    anyhow::ensure!(
        empty,
        "{} is not empty; init writes only into a new or empty directory; nothing was written",
        dir.display()
    );
    // Everything goes to a staging directory beside the target first, which
    // then takes its place: an interrupted init leaves no half a fleet.
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "fleet".into());
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
    let staging = parent.join(format!(".{name}.init-{}", std::process::id()));
    let mut count = 0;
    let result = write_fleet(&staging, args.lab)
        .map(|n| count = n)
        .and_then(|()| {
            if dir.exists() {
                std::fs::remove_dir(dir)
                    .with_context(|| format!("replacing empty {}", dir.display()))?;
            }
            std::fs::rename(&staging, dir)
                .with_context(|| format!("moving the fleet into {}", dir.display()))
        });
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    result?;
    if cli.output == Output::Json {
        return print_json(&json!({ "ok": true, "dir": dir, "files": count }));
    }
    if args.lab {
        println!(
            "wrote the lab fleet ({} files) to {}; next, as root: `metalherd --fleet {} lab image`, `lab up --site fra`, `provision site fra`",
            count,
            dir.display(),
            dir.display()
        );
    } else {
        println!(
            "wrote the example fleet ({} files) to {}; next: edit sites/ and inventory/, then `metalherd --fleet {} inventory check`",
            count,
            dir.display(),
            dir.display()
        );
    }
    Ok(())
}

fn write_fleet(dir: &Path, lab: bool) -> anyhow::Result<usize> {
    let files: Vec<(&str, String)> = if lab {
        crate::lab::fleet::files()
    } else {
        example::FILES
            .iter()
            .map(|(p, t)| (*p, t.to_string()))
            .collect()
    };
    for (path, text) in &files {
        let target = dir.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        create_file(&target, text.as_bytes(), 0o644)
            .with_context(|| format!("writing {}", target.display()))?;
    }
    let text =
        "# metalherd's local state holds private keys: never commit it.\n/.metalherd/\n/out/\n# Cached OS images: large, and fetched again by `metalherd assets fetch`.\n/assets/\n# `lockdown` evidence (etcd snapshots hold the cluster's secrets): kept apart, never committed.\n/evidence/\n# Age identities (`state keygen --out keys/state.age`): secrets.\n*.age\n";
    create_file(&dir.join(".gitignore"), text.as_bytes(), 0o644).context("writing .gitignore")?;
    Ok(files.len())
}
