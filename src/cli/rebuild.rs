//! `metalherd rebuild --all | --sites a,b`: the nightly job (see
//! `crate::lifecycle::rebuild`). Exit 0 when every site was replaced, 4
//! when a blocker stopped it, 1 when a replace failed.

use anyhow::bail;
use clap::Args;
use serde_json::json;

use super::args::How;
use super::context::{fleet_and_keys, runtime, site};
use super::print::{print, BLOCKED};
use super::{Cli, Exit, Output, Reported};
use crate::fleet::SiteName;
use crate::job::Reporter;
use crate::lifecycle::rebuild::{self, Status};
use crate::operation::Env;

#[derive(Args, Debug)]
pub struct RebuildArgs {
    /// Every site, in the waves of `rebuild.waves` (default: one site per wave).
    #[arg(long, conflicts_with = "sites")]
    all: bool,
    /// Only these sites (comma-separated), in wave order.
    #[arg(long, value_delimiter = ',', value_name = "A,B")]
    sites: Vec<SiteName>,
    #[command(flatten)]
    how: How,
}

pub fn run(cli: &Cli, args: &RebuildArgs) -> anyhow::Result<()> {
    if !args.all && args.sites.is_empty() {
        bail!("say which sites: --all, or --sites a,b");
    }
    let (fleet, keys) = fleet_and_keys(cli)?;
    let how = args.how.how(&fleet)?;
    for s in &args.sites {
        site(&fleet, s)?;
    }
    let waves = rebuild::waves(&fleet, &args.sites);
    let reporter = Reporter::new(super::progress_bars(cli));
    let report = runtime()?.block_on(rebuild::rebuild(
        &Env::open(&fleet)?,
        &fleet,
        &keys,
        waves,
        &how,
        &reporter,
    ))?;
    let doc = json!({
        "ok": report.stopped.is_none(),
        "waves": report.waves,
        "sites": report.sites,
        "stopped": report.stopped.as_ref().map(|(status, why)| json!({"status": status, "reason": why})),
    });
    let text: String = report.sites.iter().map(|o| format!("{o}\n")).collect();
    print(cli, doc, text)?;
    match report.stopped {
        None => Ok(()),
        Some((Status::Blocked, why)) => {
            if cli.output == Output::Text {
                eprintln!("rebuild stopped: blocked: {why}");
            }
            Err(Exit(BLOCKED).into())
        }
        Some((_, why)) => Err(Reported(format!(
            "rebuild stopped at the first failure (that site stays drained, later sites untouched): {why}"
        ))
        .into()),
    }
}
