//! `metalherd ssh <machine> [-- cmd]` and `metalherd exec (--site S |
//! --machines a,b) -- cmd`: SSH with the host keys metalherd generated
//! pinned, as `core` with metalherd's own key.

use std::time::Duration;

use anyhow::Context;
use clap::Args;
use serde::Serialize;
use serde_json::json;

use super::args::SshArgs;
use super::context::{fleet_and_keys, runtime};
use super::{print_json, Cli, Output};
use crate::fleet::{Fleet, Machine, MachineName, Site, SiteName};
use crate::job::{self, Reporter, Target};
use crate::keys::Keys;
use crate::ssh::{command_line, Session, Timeouts};

#[derive(Args, Debug)]
pub struct SshCommandArgs {
    /// The machine to log in to.
    machine: MachineName,
    /// A command to run instead of an interactive shell.
    #[arg(last = true, value_name = "CMD")]
    command: Vec<String>,
    #[command(flatten)]
    ssh: SshArgs,
}

#[derive(Args, Debug)]
pub struct ExecArgs {
    /// Every machine of this site (spares included).
    #[arg(
        long,
        value_name = "SITE",
        required_unless_present = "machines",
        conflicts_with = "machines"
    )]
    site: Option<SiteName>,
    /// These machines, comma-separated.
    #[arg(long, value_name = "A,B", value_delimiter = ',')]
    machines: Vec<MachineName>,
    /// The command to run on each machine (after `--`).
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<String>,
    /// Machines at once per site.
    #[arg(long, default_value_t = 32, value_name = "N")]
    parallel: usize,
    /// Seconds the command may run on each machine.
    #[arg(long, default_value_t = 300, value_name = "SECS")]
    timeout: u64,
    #[command(flatten)]
    ssh: SshArgs,
}

/// A machine's SSH identity: address and pinned host key.
pub(crate) fn ssh_target(keys: &Keys, machine: &Machine) -> anyhow::Result<crate::ssh::Target> {
    let host_key = keys
        .host
        .get(&machine.name)
        .with_context(|| format!("{}: no host key in metalherd's state", machine.name))?;
    Ok(crate::ssh::Target::new(
        machine.name.as_str(),
        machine.ip,
        host_key,
    ))
}

pub fn run_ssh(cli: &Cli, args: &SshCommandArgs) -> anyhow::Result<()> {
    let (fleet, keys) = fleet_and_keys(cli)?;
    let (_, machine) = fleet
        .machine(args.machine.as_str())
        .with_context(|| format!("no machine `{}` in fleet {}", args.machine, fleet.name))?;
    let target = ssh_target(&keys, machine)?;
    let timeouts = Timeouts {
        connect: Duration::from_secs(args.ssh.connect_timeout),
        step: Duration::MAX,
    };
    let command = (!args.command.is_empty()).then(|| command_line(&args.command));
    let code = runtime()?.block_on(async {
        let session = Session::connect(&target, &args.ssh.user, &keys.operator, timeouts).await?;
        let code = session.interactive(command.as_deref()).await?;
        session.close().await;
        anyhow::Ok(code)
    })?;
    if code == 0 {
        Ok(())
    } else {
        Err(super::Exit(u8::try_from(code).unwrap_or(255)).into())
    }
}

/// One machine's result of `exec`.
#[derive(Debug, Serialize)]
struct ExecResult {
    exit_code: Option<u32>,
    stdout: String,
    stderr: String,
}

fn selected<'a>(fleet: &'a Fleet, args: &ExecArgs) -> anyhow::Result<Vec<(&'a Site, &'a Machine)>> {
    if let Some(s) = &args.site {
        let site = fleet
            .site(s.as_str())
            .with_context(|| format!("no site `{s}` in fleet {}", fleet.name))?;
        return Ok(site.machines.iter().map(|m| (site, m)).collect());
    }
    args.machines
        .iter()
        .map(|m| {
            fleet
                .machine(m.as_str())
                .with_context(|| format!("no machine `{m}` in fleet {}", fleet.name))
        })
        .collect()
}

pub fn run_exec(cli: &Cli, args: &ExecArgs) -> anyhow::Result<()> {
    let (fleet, keys) = fleet_and_keys(cli)?;
    let chosen = selected(&fleet, args)?;
    let command = command_line(&args.command);
    let timeouts = Timeouts {
        connect: Duration::from_secs(args.ssh.connect_timeout),
        step: Duration::from_secs(args.timeout),
    };
    let targets: Vec<Target> = chosen
        .iter()
        .map(|(s, m)| Target {
            machine: m.name.to_string(),
            site: s.name.to_string(),
        })
        .collect();
    let reporter = Reporter::new(super::progress_bars(cli));
    // Outputs of every machine that ran the command, failed or not.
    let outputs = std::sync::Mutex::new(std::collections::HashMap::new());
    let outcomes = runtime()?.block_on(job::run(&targets, args.parallel, &reporter, |t, task| {
        let target = chosen
            .iter()
            .find(|(_, m)| m.name.as_str() == t.machine)
            .map(|(_, m)| ssh_target(&keys, m));
        let (keys, user, command, outputs) = (&keys, &args.ssh.user, &command, &outputs);
        async move {
            let target = target.context("machine vanished")??;
            task.phase("connect");
            let session = Session::connect(&target, user, &keys.operator, timeouts).await?;
            task.phase("run");
            let out = session.exec("exec", command, None).await?;
            session.close().await;
            let result = ExecResult {
                exit_code: out.code,
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            };
            task.output(&result.stderr);
            let failed = (!out.success()).then_some(Nonzero(result.exit_code));
            if let Ok(mut map) = outputs.lock() {
                map.insert(t.machine.clone(), result);
            }
            match failed {
                None => Ok(()),
                Some(e) => Err(anyhow::Error::new(e)),
            }
        }
    }));
    let (ok, summary) = job::summary("exec", &outcomes);
    let outputs = outputs.into_inner().unwrap_or_default();
    if cli.output == Output::Json {
        let results: Vec<_> = outcomes
            .iter()
            .map(|o| {
                let r = outputs.get(&o.machine);
                json!({
                    "machine": o.machine, "site": o.site, "ok": o.ok,
                    "exit_code": r.and_then(|r| r.exit_code),
                    "stdout": r.map(|r| r.stdout.as_str()),
                    "stderr": r.map(|r| r.stderr.as_str()),
                    "error": o.error, "duration_ms": o.duration_ms,
                })
            })
            .collect();
        print_json(&json!({ "ok": ok, "results": results, "summary": summary }))?;
    } else {
        for o in &outcomes {
            if let Some(r) = outputs.get(&o.machine) {
                for line in r.stdout.lines() {
                    println!("{} | {line}", o.machine);
                }
            }
        }
        if ok {
            println!("{summary}");
        } else {
            eprintln!("{summary}");
        }
    }
    if ok {
        Ok(())
    } else {
        Err(super::Reported(summary.lines().next().unwrap_or("exec failed").to_string()).into())
    }
}

/// A command that ran and exited non-zero (or died of a signal).
#[derive(Debug)]
struct Nonzero(Option<u32>);

impl std::fmt::Display for Nonzero {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(c) => write!(f, "the command exited with status {c}"),
            None => write!(f, "the command was killed by a signal"),
        }
    }
}

impl std::error::Error for Nonzero {}
