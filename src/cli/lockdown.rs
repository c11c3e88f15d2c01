//! `metalherd lockdown cluster C --case ID --reason TEXT`: containment of
//! a suspected compromise (see `crate::lifecycle::lockdown` for the steps).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::json;

use super::args::SshArgs;
use super::context::{fleet_and_keys, runtime};
use super::print::print;
use super::Cli;
use crate::job::Reporter;
use crate::lifecycle::lockdown::{self, CaseId, Options, ReplaceOn};

#[derive(Subcommand, Debug)]
pub enum LockdownCommand {
    /// Lock down one cluster after a suspected compromise: drain it; on
    /// every node drop all traffic but the forensic bastion's (nftables);
    /// collect evidence over SSH into evidence/<case>/ with a sha256
    /// manifest and a chain-of-custody log; replace metalherd's SSH key
    /// with the forensic key; retire the generation's PKI for good; mark
    /// the machines quarantined. Machines stay powered. Not blocked by the
    /// safety checks (failing ones are recorded).
    Cluster(ClusterArgs),
}

#[derive(Args, Debug)]
pub struct ClusterArgs {
    /// The cluster: its name (`fra-k8s`) or its site's (`fra`).
    cluster: String,
    /// The incident's id (letters, digits, '.', '_', '-'; e.g. INC-4711);
    /// names the evidence directory.
    #[arg(long, value_name = "ID")]
    case: CaseId,
    /// Why (recorded in the journal, the audit log and case.json).
    #[arg(long, value_name = "TEXT")]
    reason: String,
    /// The directory holding one evidence directory per case
    /// [default: evidence/ in the fleet directory].
    #[arg(long, value_name = "DIR")]
    evidence_dir: Option<PathBuf>,
    /// Where a replacement cluster should run: another site (the command
    /// to run is printed), or `spares` (not supported yet: refused).
    #[arg(long, value_name = "spares|SITE")]
    replace_on: Option<ReplaceOn>,
    /// Machines worked on at once.
    #[arg(long, default_value_t = 8, value_name = "N")]
    parallel: usize,
    /// Seconds each command on a machine may take.
    #[arg(long, default_value_t = 300, value_name = "SECS")]
    step_timeout: u64,
    #[command(flatten)]
    ssh: SshArgs,
}

pub fn run(cli: &Cli, cmd: &LockdownCommand) -> anyhow::Result<()> {
    let LockdownCommand::Cluster(args) = cmd;
    anyhow::ensure!(!args.reason.trim().is_empty(), "--reason must say why");
    let (fleet, keys) = fleet_and_keys(cli)?;
    let site = lockdown::cluster_site(&fleet, &args.cluster)?;
    lockdown::forensics(&fleet)?;
    let next = args
        .replace_on
        .as_ref()
        .map(|on| lockdown::replace_hint(&fleet, site, on))
        .transpose()?;
    let opts = Options {
        case: args.case.clone(),
        reason: args.reason.clone(),
        evidence_root: args
            .evidence_dir
            .clone()
            .unwrap_or_else(|| fleet.root.join("evidence")),
        user: args.ssh.user.clone(),
        timeouts: args.ssh.timeouts(Duration::from_secs(args.step_timeout)),
        parallel: args.parallel,
        verify_deadline: Duration::from_secs(20),
    };
    let reporter = Reporter::new(super::progress_bars(cli));
    let report = runtime()?.block_on(lockdown::lockdown(&fleet, &keys, site, &opts, &reporter))?;
    let mut doc = serde_json::to_value(&report)?;
    doc["replace_on"] = json!(next);
    print(cli, doc, report.text(next.as_deref()))?;
    match &report.error {
        None => Ok(()),
        Some(e) => Err(super::Reported(format!(
            "lockdown of {} (case {}) failed: {}; the machines stay quarantined and nothing was undone",
            report.cluster,
            report.case,
            e.lines().next().unwrap_or("")
        ))
        .into()),
    }
}
