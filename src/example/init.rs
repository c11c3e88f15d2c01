//! `metalherd init DIR`: a copy of the shipped example fleet (or of the
//! lab's) written into a new or empty directory, all or nothing.

use std::path::Path;

use anyhow::Context;

use crate::fsutil::create_file;

/// Writes the example fleet (the lab's with `lab`) into `dir`, which must
/// be new or empty; returns how many fleet files it wrote. Everything
/// goes to a staging directory beside `dir` first, which then takes its
/// place: an interrupted init leaves no half a fleet.
pub fn init(dir: &Path, lab: bool) -> anyhow::Result<usize> {
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
    let result = write_fleet(&staging, lab)
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
    Ok(count)
}

fn write_fleet(dir: &Path, lab: bool) -> anyhow::Result<usize> {
    let files: Vec<(&str, String)> = if lab {
        crate::lab::fleet::files()
    } else {
        super::FILES
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
