//! `exec`: one command on many machines over SSH, host keys pinned, as a
//! fan-out job (one task per machine, a limit per site, failures
//! collected). Every machine that ran the command keeps its output and
//! exit status in the report, failed or not.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;

use anyhow::Context;
use serde::Serialize;

use crate::fleet::{Machine, Site};
use crate::job::{self, Reporter};
use crate::keys::Keys;
use crate::ssh::{self, Session, Timeouts};

/// A machine's SSH identity: address and pinned host key.
pub fn target(keys: &Keys, machine: &Machine) -> anyhow::Result<ssh::Target> {
    let host_key = keys
        .host
        .get(&machine.name)
        .with_context(|| format!("{}: no host key in metalherd's state: it was never rendered or provisioned with this fleet's state", machine.name))?;
    Ok(ssh::Target::new(
        machine.name.as_str(),
        machine.ip,
        host_key,
    ))
}

/// How `exec` runs.
pub struct Options {
    /// The command line, quoted for the remote shell.
    pub command: String,
    pub user: String,
    pub timeouts: Timeouts,
    /// Machines at once per site.
    pub parallel: usize,
}

/// What `exec` did on every machine, in the order they were given.
#[derive(Debug, Serialize)]
pub struct Report {
    pub ok: bool,
    pub results: Vec<MachineResult>,
    /// `exec: 6 of 6 done`, or which failed and why ([`job::summary`]).
    pub summary: String,
}

/// One machine's result; output and exit status only if the command ran.
#[derive(Debug, Serialize)]
pub struct MachineResult {
    pub machine: String,
    pub site: String,
    pub ok: bool,
    pub exit_code: Option<u32>,
    pub stdout: Option<String>,
    pub stderr: Option<String>,
    pub error: Option<String>,
    pub duration_ms: u128,
}

/// The output of a command that ran.
struct Output {
    exit_code: Option<u32>,
    stdout: String,
    stderr: String,
}

/// Runs the command on `machines` (see the module docs).
pub async fn exec(
    machines: &[(&Site, &Machine)],
    keys: &Keys,
    opts: &Options,
    reporter: &Reporter,
) -> Report {
    let targets: Vec<job::Target> = machines
        .iter()
        .map(|(s, m)| job::Target {
            machine: m.name.to_string(),
            site: s.name.to_string(),
        })
        .collect();
    let outputs = Mutex::new(HashMap::new());
    let outcomes = job::run(&targets, opts.parallel, reporter, |t, task| {
        let target = machines
            .iter()
            .find(|(_, m)| m.name.as_str() == t.machine)
            .map(|(_, m)| target(keys, m));
        let outputs = &outputs;
        async move {
            let target = target.context("machine vanished")??;
            task.phase("connect");
            let session =
                Session::connect(&target, &opts.user, &keys.operator, opts.timeouts).await?;
            task.phase("run");
            let out = session.exec("exec", &opts.command, None).await?;
            session.close().await;
            let output = Output {
                exit_code: out.code,
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            };
            task.output(&output.stderr);
            let failed =
                (!out.success()).then(|| output.exit_code.map_or(Nonzero::Signal, Nonzero::Status));
            if let Ok(mut map) = outputs.lock() {
                map.insert(t.machine.clone(), output);
            }
            match failed {
                None => Ok(()),
                Some(e) => Err(anyhow::Error::new(e)),
            }
        }
    })
    .await;
    let (ok, summary) = job::summary("exec", &outcomes);
    let mut outputs = outputs.into_inner().unwrap_or_default();
    let results = outcomes
        .into_iter()
        .map(|o| {
            let out = outputs.remove(&o.machine);
            MachineResult {
                exit_code: out.as_ref().and_then(|r| r.exit_code),
                stderr: out.as_ref().map(|r| r.stderr.clone()),
                stdout: out.map(|r| r.stdout),
                machine: o.machine,
                site: o.site,
                ok: o.ok,
                error: o.error,
                duration_ms: o.duration_ms,
            }
        })
        .collect();
    Report {
        ok,
        results,
        summary,
    }
}

/// Each machine's output, its lines prefixed `<machine> | `.
impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for r in &self.results {
            for line in r.stdout.iter().flat_map(|s| s.lines()) {
                writeln!(f, "{} | {line}", r.machine)?;
            }
        }
        Ok(())
    }
}

/// A command that ran and exited non-zero (or died of a signal).
#[derive(Debug, thiserror::Error)]
enum Nonzero {
    #[error("the command exited with status {0}")]
    Status(u32),
    #[error("the command was killed by a signal")]
    Signal,
}
