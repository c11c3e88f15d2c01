//! `metalherd audit` (the audit log: every operation, who ran it,
//! overrides and their reasons) and `metalherd release machine M` (a
//! quarantined machine made available again, audited).

use clap::{Args, Subcommand};
use serde_json::json;

use super::context::runtime;
use super::{load_fleet, print_json, Cli, Output};
use crate::fleet::MachineName;
use crate::state::{self, Key};

#[derive(Args, Debug)]
pub struct AuditArgs {
    /// Show the last N entries.
    #[arg(long, default_value_t = 50, value_name = "N")]
    limit: usize,
}

pub fn audit(cli: &Cli, args: &AuditArgs) -> anyhow::Result<()> {
    let fleet = load_fleet(cli)?;
    let mut entries = runtime()?.block_on(async {
        let (store, _) = state::open(&fleet)?;
        let list = store.list(&Key::audit_log()).await?;
        anyhow::Ok(
            list.iter()
                .filter_map(|e| serde_json::from_slice::<serde_json::Value>(&e.value).ok())
                .collect::<Vec<_>>(),
        )
    })?;
    entries.sort_by(|a, b| a["time"].as_str().cmp(&b["time"].as_str()));
    let skip = entries.len().saturating_sub(args.limit);
    let shown = &entries[skip..];
    if cli.output == Output::Json {
        return print_json(&json!({ "entries": shown }));
    }
    if shown.is_empty() {
        println!("the audit log is empty");
    }
    for e in shown {
        println!(
            "{}  {}@{}  {:<10} {}",
            e["time"].as_str().unwrap_or(""),
            e["user"].as_str().unwrap_or(""),
            e["host"].as_str().unwrap_or(""),
            e["action"].as_str().unwrap_or(""),
            e["detail"]
        );
    }
    Ok(())
}

#[derive(Subcommand, Debug)]
pub enum ReleaseCommand {
    /// Release a quarantined machine: it becomes `available` again, and
    /// commands may power it off, wipe it and reprovision it.
    Machine(ReleaseArgs),
}

#[derive(Args, Debug)]
pub struct ReleaseArgs {
    machine: MachineName,
    /// Why (the investigation's outcome, a ticket); recorded in the audit log.
    #[arg(long, value_name = "TEXT")]
    reason: String,
}

pub fn release(cli: &Cli, cmd: &ReleaseCommand) -> anyhow::Result<()> {
    let ReleaseCommand::Machine(args) = cmd;
    let fleet = load_fleet(cli)?;
    anyhow::ensure!(
        fleet.machine(args.machine.as_str()).is_some(),
        "no machine `{}` in fleet {}",
        args.machine,
        fleet.name
    );
    anyhow::ensure!(!args.reason.trim().is_empty(), "--reason must say why");
    let since = runtime()?.block_on(async {
        let (store, _) = state::open(&fleet)?;
        crate::lifecycle::lockdown::release(store.as_ref(), &args.machine, &args.reason).await
    })?;
    if cli.output == Output::Json {
        return print_json(
            &json!({ "ok": true, "machine": args.machine, "quarantined_since": since }),
        );
    }
    println!(
        "{} released (quarantined since {since}); it is available again",
        args.machine
    );
    Ok(())
}
