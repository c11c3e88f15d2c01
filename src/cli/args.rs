//! Argument groups shared by several commands: how to reach machines over
//! SSH, how long a provision's parts may take, and how a replace runs.

use std::time::Duration;

use anyhow::bail;
use clap::Args;

use crate::fleet::Fleet;
use crate::lifecycle::{self, replace};
use crate::provision;
use crate::ssh::Timeouts;

/// Connection settings shared by `ssh`, `exec` and `bootstrap`.
#[derive(Args, Debug, Clone)]
pub struct SshArgs {
    /// The user to log in as (metalherd's key is in its authorized keys).
    #[arg(long, default_value = "core")]
    pub user: String,
    /// Seconds to wait for a connection and authentication.
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    pub connect_timeout: u64,
}

impl SshArgs {
    /// The SSH timeouts: connecting as given, each command `step`.
    pub(crate) fn timeouts(&self, step: Duration) -> Timeouts {
        Timeouts {
            connect: Duration::from_secs(self.connect_timeout),
            step,
        }
    }
}

/// How long each part of a provision may take, and how wide it fans out.
#[derive(Args, Debug)]
pub struct Tuning {
    /// Seconds a machine may take from power-on to its first-boot report.
    #[arg(long, default_value_t = 900, value_name = "SECS")]
    boot_timeout: u64,
    /// Seconds each step on a machine may take (power, SSH commands).
    #[arg(long, default_value_t = 120, value_name = "SECS")]
    step_timeout: u64,
    /// Seconds to wait for etcd quorum and for the API server's /readyz.
    #[arg(long, default_value_t = 300, value_name = "SECS")]
    ready_timeout: u64,
    /// SSH sessions at once in the site (boot checks, bootstrap). Waiting
    /// for machines to boot is not bounded: every machine waits at once.
    #[arg(long, default_value_t = 32, value_name = "N")]
    parallel: usize,
    /// BMC operations at once in the site (each BMC itself takes one at a
    /// time). Each waits seconds on its BMC and costs a socket.
    #[arg(long, default_value_t = 256, value_name = "N")]
    bmc_parallel: usize,
    #[command(flatten)]
    ssh: SshArgs,
}

impl Tuning {
    pub(crate) fn tuning(&self) -> provision::Tuning {
        provision::Tuning {
            boot_timeout: Duration::from_secs(self.boot_timeout),
            step_timeout: Duration::from_secs(self.step_timeout),
            ready_timeout: Duration::from_secs(self.ready_timeout),
            parallel: self.parallel,
            bmc_parallel: self.bmc_parallel,
            user: self.ssh.user.clone(),
            connect_timeout: Duration::from_secs(self.ssh.connect_timeout),
        }
    }
}

/// How a replace runs (`replace`, `rebuild`, `drill --rebuild`).
#[derive(Args, Debug)]
pub struct How {
    /// Bake time with health green before traffic returns (`90s`, `10m`,
    /// `1h`) [default: rebuild.bake in fleet.yaml, else 10m].
    #[arg(long, value_name = "DURATION")]
    bake: Option<String>,
    /// Override the failing safety checks (recorded with --reason).
    #[arg(long, requires = "reason")]
    force: bool,
    /// Why the override is needed (recorded in the journal and audit log).
    #[arg(long, value_name = "TEXT")]
    reason: Option<String>,
    /// Days the new generation's certificates are valid.
    #[arg(long, default_value_t = 90, value_name = "DAYS")]
    validity_days: i64,
    /// Build the new generation on the site's spare machines while the
    /// current one keeps serving, switch traffic over (drained only for
    /// the switch), then power the old machines off as the new spares.
    /// Needs as many spares as serving machines.
    #[arg(long)]
    pub(crate) blue_green: bool,
    #[command(flatten)]
    tuning: Tuning,
}

impl How {
    /// The replace's settings; refuses `--force` without a reason worth
    /// recording.
    pub(crate) fn how(&self, fleet: &Fleet) -> anyhow::Result<replace::How> {
        if self.force && self.reason.as_deref().is_none_or(|r| r.trim().is_empty()) {
            bail!("--force needs a --reason \"...\" (it is recorded)");
        }
        Ok(replace::How {
            force: self.force,
            reason: self.reason.clone(),
            validity_days: self.validity_days,
            blue_green: self.blue_green,
            bake: lifecycle::bake(fleet, self.bake.as_deref())?,
            tuning: self.tuning.tuning(),
        })
    }
}
