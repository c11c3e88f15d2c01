//! `metalherd power status|on|off|cycle|pxe-once|disk (<machine>|--site S)`.

use std::time::Duration;

use clap::Args;

use super::context::machines;
use super::print::print;
use super::{load_fleet, Cli};
use crate::assets::download::RetryPolicy;
use crate::fleet::{MachineName, SiteName};
use crate::power::{self, Action, Options};

#[derive(Args, Debug)]
pub struct PowerArgs {
    /// What to do.
    #[arg(value_enum)]
    action: Action,
    /// One machine; or use --site.
    #[arg(
        value_name = "MACHINE",
        required_unless_present = "site",
        conflicts_with = "site"
    )]
    machine: Option<MachineName>,
    /// Every machine of this site.
    #[arg(long, value_name = "SITE")]
    site: Option<SiteName>,
    /// Operations at once per site (always one at a time per BMC), as
    /// `provision --bmc-parallel`.
    #[arg(long, default_value_t = 256, value_name = "N")]
    parallel: usize,
    /// Seconds to wait for a power change to show.
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    timeout: u64,
    /// Retries of a step after a timeout, connection error or 5xx.
    #[arg(long, default_value_t = 3)]
    retries: u32,
    /// The first pause between retries, doubling each time (up to 10 s).
    #[arg(long, default_value_t = 1000, value_name = "MS", hide = true)]
    retry_delay_ms: u64,
}

pub fn run(cli: &Cli, args: &PowerArgs) -> anyhow::Result<()> {
    let fleet = load_fleet(cli)?;
    let targets = machines(&fleet, args.site.as_ref(), args.machine.as_slice())?;
    let action = args.action;
    let opts = Options {
        per_site: args.parallel,
        state_timeout: Duration::from_secs(args.timeout),
        retry: RetryPolicy {
            retries: args.retries,
            base_delay: Duration::from_millis(args.retry_delay_ms),
            max_delay: Duration::from_secs(10),
        },
    };
    let runtime = super::context::runtime()?;
    let what = format!(
        "power {}",
        serde_json::to_value(action)?.as_str().unwrap_or("")
    );
    let names: Vec<&str> = targets.iter().map(|(_, m)| m.name.as_str()).collect();
    let store = match action {
        power::Action::Status => None,
        _ => {
            let (store, _) = crate::state::open(&fleet)?;
            runtime.block_on(crate::lifecycle::refuse_quarantined(
                store.as_ref(),
                &names,
                &what,
            ))?;
            Some(store)
        }
    };
    let outcomes = runtime.block_on(power::run(&fleet, &targets, action, &opts));
    let report = power::Report::new(action, outcomes);
    // A change of power is recorded in the audit log, whatever came of it.
    if let Some(store) = &store {
        let failed: Vec<&str> = report
            .results
            .iter()
            .filter(|o| !o.ok)
            .map(|o| o.machine.as_str())
            .collect();
        let detail = serde_json::json!({ "machines": names, "ok": report.ok, "failed": failed });
        runtime.block_on(crate::state::audit(store.as_ref(), &what, detail))?;
    }
    print(cli, &report, &report)?;
    if report.ok {
        Ok(())
    } else {
        Err(super::Reported(report.summary).into())
    }
}
