//! `metalherd audit` (the audit log: every operation, who ran it,
//! overrides and their reasons) and `metalherd release machine M` (a
//! quarantined machine made available again, audited).

use clap::{Args, Subcommand};
use serde_json::json;

use super::context::{machine, runtime};
use super::print::print;
use super::{load_fleet, Cli};
use crate::fleet::MachineName;
use crate::state;

#[derive(Args, Debug)]
pub struct AuditArgs {
    /// Show the last N entries.
    #[arg(long, default_value_t = 50, value_name = "N")]
    limit: usize,
}

pub fn audit(cli: &Cli, args: &AuditArgs) -> anyhow::Result<()> {
    let fleet = load_fleet(cli)?;
    let shown = runtime()?.block_on(async {
        let (store, _) = state::open(&fleet)?;
        anyhow::Ok(state::audit_log(store.as_ref(), args.limit).await?)
    })?;
    let mut text = String::new();
    if shown.is_empty() {
        text.push_str("the audit log is empty\n");
    }
    for e in &shown {
        let field = |name: &str| e[name].as_str().unwrap_or("").to_string();
        let (time, user, host) = (field("time"), field("user"), field("host"));
        let (action, detail) = (field("action"), &e["detail"]);
        text.push_str(&format!("{time}  {user}@{host}  {action:<10} {detail}\n"));
    }
    print(cli, json!({ "entries": shown }), text)
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
    machine(&fleet, &args.machine)?;
    anyhow::ensure!(!args.reason.trim().is_empty(), "--reason must say why");
    let since = runtime()?.block_on(async {
        let (store, _) = state::open(&fleet)?;
        crate::lifecycle::lockdown::release(store.as_ref(), &args.machine, &args.reason).await
    })?;
    let text = format!(
        "{} released (quarantined since {since}); it is available again",
        args.machine
    );
    let doc = json!({ "ok": true, "machine": args.machine, "quarantined_since": since });
    print(cli, doc, text)
}
