//! `metalherd drill site S`: a disaster drill (see
//! `crate::lifecycle::drill`), with its report written as Markdown, JSON
//! and an SVG timeline under `reports/`.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use serde_json::json;

use super::args::How;
use super::context::{fleet_and_keys, runtime, site};
use super::print::{print, ran};
use super::{Cli, Reported};
use crate::fleet::window::parse_duration;
use crate::fleet::SiteName;
use crate::job::Reporter;
use crate::lifecycle::drill::{self, Drill};
use crate::operation::Env;

#[derive(Subcommand, Debug)]
pub enum DrillCommand {
    /// Take site S away, prove the other sites carry the load, optionally
    /// rebuild S, and write a report with the time each step took.
    Site(DrillArgs),
}

#[derive(Args, Debug)]
pub struct DrillArgs {
    site: SiteName,
    /// Cut the site's network with the `drill.isolate` hook of fleet.yaml
    /// and leave its machines running (default: power them off).
    #[arg(long)]
    isolate: bool,
    /// Rebuild the site afterwards (a replace onto generation N+1) and
    /// measure the recovery time. Without it the site stays down and
    /// drained; `metalherd replace site S` brings it back.
    #[arg(long)]
    rebuild: bool,
    /// Keep checking the other sites this long after the site went away
    /// (every 10 s) before the drill counts them as carrying the load.
    #[arg(long, default_value = "0", value_name = "DURATION")]
    observe: String,
    /// Where the report files go [default: reports/ in the fleet].
    #[arg(long, value_name = "DIR")]
    reports: Option<PathBuf>,
    #[command(flatten)]
    how: How,
}

pub fn run(cli: &Cli, cmd: &DrillCommand) -> anyhow::Result<()> {
    let DrillCommand::Site(args) = cmd;
    if args.how.blue_green {
        bail!("--blue-green is for `replace` and `rebuild`: a drill takes the whole site away");
    }
    let observe = parse_duration(&args.observe).context("--observe")?;
    let (fleet, keys) = fleet_and_keys(cli)?;
    let how = args.how.how(&fleet)?;
    let site = site(&fleet, &args.site)?;
    if args.isolate && fleet.drill.is_none() {
        bail!(
            "--isolate needs the `drill` hooks in {}: drill: {{ isolate: \"…{{site}}\", reconnect: \"…{{site}}\" }}",
            fleet.root.join("inventory/fleet.yaml").display()
        );
    }
    let reports_dir = match &args.reports {
        Some(dir) => {
            std::path::absolute(dir).with_context(|| format!("--reports {}", dir.display()))?
        }
        None => fleet.root.join("reports"),
    };
    let reporter = Reporter::new(super::progress_bars(cli));
    let drill = Drill {
        isolate: args.isolate,
        rebuild: args.rebuild,
        observe,
        how,
    };
    let env = Env::open(&fleet)?;
    let outcome =
        runtime()?.block_on(drill::drill(&env, &fleet, &keys, site, &drill, &reporter))?;
    let report = ran(cli, &format!("drill of {}", site.name), site, outcome)?;
    let files = report.write(&reports_dir)?;
    let mut doc = serde_json::to_value(&report)?;
    doc["reports"] = json!(files);
    doc["state_io"] = json!(env.io.snapshot());
    print(cli, doc, report.text(&files))?;
    if report.ok {
        Ok(())
    } else {
        Err(Reported(format!(
            "drill of {} failed: {}",
            site.name,
            report.error.as_deref().unwrap_or("see the report")
        ))
        .into())
    }
}
