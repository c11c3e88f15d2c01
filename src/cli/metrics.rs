//! `metalherd metrics [--site S]... [--textfile FILE]`: the fleet's state
//! as Prometheus metrics (`crate::metrics`), on stdout or written
//! atomically for node_exporter's textfile collector, so a cron-driven
//! nightly job needs no server.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use super::context::runtime;
use super::{load_fleet, Cli, Output};
use crate::fleet::SiteName;
use crate::metrics::Snapshot;
use crate::state;

#[derive(Args, Debug)]
pub struct MetricsArgs {
    /// Only these sites (repeatable) [default: all].
    #[arg(long, value_name = "SITE")]
    site: Vec<SiteName>,
    /// Write to FILE (atomically, mode 0644: for node_exporter's textfile
    /// collector, e.g. /var/lib/prometheus/node-exporter/metalherd.prom)
    /// instead of printing.
    #[arg(long, value_name = "FILE")]
    textfile: Option<PathBuf>,
}

pub fn run(cli: &Cli, args: &MetricsArgs) -> anyhow::Result<()> {
    let fleet = load_fleet(cli)?;
    for s in &args.site {
        anyhow::ensure!(
            fleet.site(s.as_str()).is_some(),
            "no site `{s}` in fleet {}",
            fleet.name
        );
    }
    let snapshot = runtime()?.block_on(async {
        let (store, _) = state::open(&fleet)?;
        anyhow::Ok(Snapshot::read(&fleet, store.as_ref(), &args.site).await?)
    })?;
    let text = snapshot.encode();
    match &args.textfile {
        Some(path) => {
            crate::fsutil::write_atomic(path, text.as_bytes(), 0o644)
                .with_context(|| format!("writing {}", path.display()))?;
            if cli.output == Output::Json {
                super::print_json(&serde_json::json!({
                    "ok": true, "textfile": path, "metrics": snapshot
                }))?;
            } else {
                println!("wrote {}", path.display());
            }
        }
        None if cli.output == Output::Json => {
            super::print_json(&serde_json::json!({ "ok": true, "metrics": snapshot }))?;
        }
        None => print!("{text}"),
    }
    Ok(())
}
