//! `metalherd init DIR`: write a copy of the shipped example fleet to start
//! a fleet repository from. Refuses to write over existing files.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use serde_json::json;

use super::{print_json, Cli, Output};
use crate::example;
use crate::fsutil::write_atomic;

#[derive(Args, Debug)]
pub struct InitArgs {
    /// The directory to create (or an empty one).
    dir: PathBuf,
}

pub fn run(cli: &Cli, args: &InitArgs) -> anyhow::Result<()> {
    let dir = &args.dir;
    let clashes: Vec<&str> = example::FILES
        .iter()
        .map(|(path, _)| *path)
        .filter(|path| dir.join(path).exists())
        .collect();
    anyhow::ensure!(
        clashes.is_empty(),
        "{} already holds {} (and {} more file(s)); nothing was written",
        dir.display(),
        clashes.first().copied().unwrap_or_default(),
        clashes.len().saturating_sub(1)
    );
    for (path, text) in example::FILES {
        let target = dir.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        write_atomic(&target, text.as_bytes(), 0o644)
            .with_context(|| format!("writing {}", target.display()))?;
    }
    let gitignore = dir.join(".gitignore");
    if !gitignore.exists() {
        let text =
            "# metalherd's local state holds private keys: never commit it.\n/.metalherd/\n/out/\n";
        std::fs::write(&gitignore, text)
            .with_context(|| format!("writing {}", gitignore.display()))?;
    }
    if cli.output == Output::Json {
        return print_json(&json!({ "ok": true, "dir": dir, "files": example::FILES.len() }));
    }
    println!(
        "wrote the example fleet ({} files) to {}; next: edit sites/ and inventory/, then `metalherd --fleet {} inventory check`",
        example::FILES.len(),
        dir.display(),
        dir.display()
    );
    Ok(())
}
