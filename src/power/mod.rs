//! Power control through each machine's BMC: set the next boot, power on,
//! off, cycle, read the state. One [`PowerDriver`] per BMC kind
//! (`redfish`, `ipmi`, `qemu`, `manual`); [`run`] fans an action out over
//! many machines with one operation at a time per BMC and a limit per site,
//! collecting every outcome instead of stopping at the first failure.
//!
//! To add a driver: implement [`PowerDriver`], add a `BmcDriver` variant
//! in the fleet types and a line in [`driver_for`].

pub mod credentials;
pub mod ipmi;
pub mod manual;
pub mod qemu;
pub mod redfish;
mod report;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::Semaphore;

use crate::assets::download::RetryPolicy;
use crate::fleet::{BmcDriver, Fleet, Machine, Site};
use credentials::Credentials;
pub use report::Report;

/// What a BMC reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PowerState {
    On,
    Off,
}

impl fmt::Display for PowerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PowerState::On => "on",
            PowerState::Off => "off",
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootTarget {
    /// Boot from the network once, then return to the normal order.
    NetworkOnce,
    /// Boot from disk from now on (after provisioning).
    Disk,
}

impl Action {
    /// What the action is called in errors.
    pub fn step(self) -> &'static str {
        match self {
            Action::Status => "status",
            Action::On => "power on",
            Action::Off => "power off",
            Action::Cycle => "power cycle",
            Action::PxeOnce => "network boot once",
            Action::Disk => "boot from disk",
        }
    }
}

/// What one driver call failed on. The machine, BMC and step are added by
/// [`PowerError`].
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("the BMC answered {status}: {detail}")]
    Status {
        status: u16,
        detail: String,
        retry: bool,
    },
    #[error("{0}")]
    Connection(String),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("power state is still {current} after {waited:?} (wanted {wanted})")]
    StateTimeout {
        current: String,
        wanted: PowerState,
        waited: Duration,
    },
    #[error("credentials: {0}")]
    Credentials(String),
    #[error("{0}")]
    Command(String),
    #[error("{0}")]
    Unsupported(String),
}

impl DriverError {
    /// Whether trying again may help: connection errors, timeouts and 5xx
    /// (but not 501 Not Implemented), never 4xx.
    pub fn retryable(&self) -> bool {
        match self {
            DriverError::Status { retry, .. } => *retry,
            DriverError::Connection(_) | DriverError::Timeout(_) => true,
            _ => false,
        }
    }
}

/// A failed power operation: which machine, which BMC, which step.
#[derive(Debug, thiserror::Error)]
#[error("{machine} (BMC {address}): {step}: {source}")]
pub struct PowerError {
    pub machine: String,
    pub address: String,
    pub step: String,
    #[source]
    pub source: DriverError,
}

/// One machine's BMC. Every method does one step and reports it plainly;
/// retries and limits are [`run`]'s job.
#[async_trait::async_trait]
pub trait PowerDriver: Send + Sync {
    async fn status(&self) -> Result<PowerState, DriverError>;
    async fn set_next_boot(&self, target: BootTarget) -> Result<(), DriverError>;
    async fn power_on(&self) -> Result<(), DriverError>;
    async fn power_off(&self) -> Result<(), DriverError>;
    async fn power_cycle(&self) -> Result<(), DriverError>;
}

/// The driver for `machine`'s BMC.
pub fn driver_for(
    fleet: &Fleet,
    site: &Site,
    machine: &Machine,
    opts: &Options,
) -> Result<Box<dyn PowerDriver>, DriverError> {
    let creds = || -> Result<Credentials, DriverError> {
        let reference = machine
            .bmc
            .credentials
            .as_ref()
            .ok_or_else(|| DriverError::Credentials("none configured for this BMC".into()))?;
        Credentials::resolve(reference, &fleet.root)
    };
    Ok(match machine.bmc.driver {
        BmcDriver::Redfish => Box::new(redfish::Redfish::new(
            &machine.bmc,
            creds()?,
            redfish::Tls::from_site(site, &fleet.root),
            opts.state_timeout,
        )?),
        BmcDriver::Ipmi => Box::new(ipmi::Ipmi::new(
            &machine.bmc.address,
            creds()?,
            opts.state_timeout,
        )),
        BmcDriver::Qemu => Box::new(qemu::Qemu::new(&qemu::socket_path(
            &machine.bmc.address,
            &fleet.root,
        ))),
        BmcDriver::Manual => Box::new(manual::Manual::new(
            machine.name.as_str(),
            &machine.bmc.address,
        )),
    })
}

/// What [`run`] does to each machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// Read the power state.
    Status,
    /// Power on and wait until the BMC reports on.
    On,
    /// Power off (hard) and wait until the BMC reports off.
    Off,
    /// Power-cycle (or power on if off).
    Cycle,
    /// Boot from the network once, then power-cycle or power on.
    PxeOnce,
    /// Boot from disk from now on (after provisioning).
    Disk,
}

/// Polls `status` until it reports `wanted`: BMCs accept a power change
/// at once and apply it seconds later. The first look is `poll` after the
/// request, each pause after it twice the one before, up to
/// [`MAX_POLL`]: a BMC's web server is small, and a site's worth of
/// changes in flight (hundreds) asking twice a second each is load that
/// slows every answer (measured in `bench/site-scale`), for a change that
/// takes seconds to show anyway.
pub(crate) async fn wait_for_state<F, Fut>(
    mut status: F,
    wanted: PowerState,
    timeout: Duration,
    poll: Duration,
) -> Result<(), DriverError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<PowerState, DriverError>>,
{
    let started = std::time::Instant::now();
    let mut pause = poll;
    loop {
        tokio::time::sleep(pause).await;
        let current = status().await?;
        if current == wanted {
            return Ok(());
        }
        if started.elapsed() >= timeout {
            return Err(DriverError::StateTimeout {
                current: current.to_string(),
                wanted,
                waited: started.elapsed(),
            });
        }
        pause = (pause * 2).min(MAX_POLL.max(poll));
    }
}

/// The longest pause between two looks at a power state.
pub const MAX_POLL: Duration = Duration::from_secs(2);

#[derive(Clone, Debug)]
pub struct Options {
    /// Operations at once per site.
    pub per_site: usize,
    /// How long to wait for a power state change to show.
    pub state_timeout: Duration,
    pub retry: RetryPolicy,
}

/// The outcome for one machine.
#[derive(Debug, Serialize)]
pub struct Outcome {
    pub machine: String,
    pub site: String,
    pub bmc: String,
    pub ok: bool,
    /// The power state after the action, when known.
    pub state: Option<PowerState>,
    pub error: Option<String>,
    pub duration_ms: u128,
}

async fn retrying<T, F, Fut>(policy: &RetryPolicy, what: &str, mut op: F) -> Result<T, DriverError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, DriverError>>,
{
    let mut attempt = 0;
    loop {
        match op().await {
            Err(e) if e.retryable() && attempt < policy.retries => {
                let pause = policy
                    .base_delay
                    .saturating_mul(1 << attempt.min(16))
                    .min(policy.max_delay);
                tracing::warn!("{what}: {e}; retrying in {pause:.1?}");
                tokio::time::sleep(pause).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

async fn act(
    driver: &dyn PowerDriver,
    action: Action,
    retry: &RetryPolicy,
    who: &str,
) -> Result<PowerState, (String, DriverError)> {
    let step = |name: &'static str| move |e| (name.to_string(), e);
    let status = || async { retrying(retry, who, || driver.status()).await };
    match action {
        Action::Status => status().await.map_err(step("status")),
        Action::On => {
            retrying(retry, who, || driver.power_on())
                .await
                .map_err(step("power on"))?;
            Ok(PowerState::On)
        }
        Action::Off => {
            retrying(retry, who, || driver.power_off())
                .await
                .map_err(step("power off"))?;
            Ok(PowerState::Off)
        }
        Action::Cycle => {
            retrying(retry, who, || driver.power_cycle())
                .await
                .map_err(step("power cycle"))?;
            Ok(PowerState::On)
        }
        Action::PxeOnce => {
            retrying(retry, who, || driver.set_next_boot(BootTarget::NetworkOnce))
                .await
                .map_err(step("set next boot to network"))?;
            match status().await.map_err(step("status"))? {
                PowerState::On => retrying(retry, who, || driver.power_cycle())
                    .await
                    .map_err(step("power cycle"))?,
                PowerState::Off => retrying(retry, who, || driver.power_on())
                    .await
                    .map_err(step("power on"))?,
            }
            Ok(PowerState::On)
        }
        Action::Disk => {
            retrying(retry, who, || driver.set_next_boot(BootTarget::Disk))
                .await
                .map_err(step("set next boot to disk"))?;
            status().await.map_err(step("status"))
        }
    }
}

/// Runs `action` on every machine in `targets`: one task per machine, one
/// operation at a time per BMC address, `opts.per_site` at a time per site.
/// Every outcome is returned, in `targets` order.
pub async fn run(
    fleet: &Fleet,
    targets: &[(&Site, &Machine)],
    action: Action,
    opts: &Options,
) -> Vec<Outcome> {
    run_with(targets, action, opts, |site, machine| {
        driver_for(fleet, site, machine, opts)
    })
    .await
}

/// [`run`] with the drivers made by `make` (tests pass fakes).
pub async fn run_with<F>(
    targets: &[(&Site, &Machine)],
    action: Action,
    opts: &Options,
    make: F,
) -> Vec<Outcome>
where
    F: Fn(&Site, &Machine) -> Result<Box<dyn PowerDriver>, DriverError>,
{
    let mut per_bmc: HashMap<String, Arc<Semaphore>> = HashMap::new();
    let mut per_site: HashMap<String, Arc<Semaphore>> = HashMap::new();
    let mut tasks = Vec::new();
    for (site, machine) in targets {
        // A BMC is its address plus the system it manages: one Redfish
        // service may front several systems, each its own "BMC" here.
        let bmc_key = format!(
            "{} {}",
            machine.bmc.address,
            machine.bmc.system.as_deref().unwrap_or("")
        );
        let bmc_limit = per_bmc
            .entry(bmc_key)
            .or_insert_with(|| Arc::new(Semaphore::new(1)))
            .clone();
        let site_limit = per_site
            .entry(site.name.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(opts.per_site.max(1))))
            .clone();
        let driver = make(site, machine);
        let (name, site_name, address) = (
            machine.name.to_string(),
            site.name.to_string(),
            machine.bmc.address.clone(),
        );
        // A quarter more than the state wait inside, which says more
        // (the state the BMC still reports) when it is what ran out.
        let (retry, bound) = (opts.retry, opts.state_timeout + opts.state_timeout / 4);
        tasks.push(tokio::spawn(async move {
            // Timed from when the limits let the operation start.
            let mut started = std::time::Instant::now();
            let result = match driver {
                Err(e) => Err(("connect".to_string(), e)),
                Ok(driver) => {
                    let _site = site_limit.acquire_owned().await;
                    let _bmc = bmc_limit.acquire_owned().await;
                    started = std::time::Instant::now();
                    tracing::debug!("{name}: {action:?} via {address}");
                    // The whole action, retries included, within the
                    // step's time: a BMC that accepts connections and never
                    // answers costs its machine this long, not retries
                    // times the HTTP client's own timeout.
                    match tokio::time::timeout(bound, act(driver.as_ref(), action, &retry, &name))
                        .await
                    {
                        Ok(result) => result,
                        Err(_) => Err((action.step().to_string(), DriverError::Timeout(bound))),
                    }
                }
            };
            let (ok, state, error) = match result {
                Ok(state) => (true, Some(state), None),
                Err((step, source)) => {
                    let e = PowerError {
                        machine: name.clone(),
                        address: address.clone(),
                        step,
                        source,
                    };
                    (false, None, Some(e.to_string()))
                }
            };
            Outcome {
                machine: name,
                site: site_name,
                bmc: address,
                ok,
                state,
                error,
                duration_ms: started.elapsed().as_millis(),
            }
        }));
    }
    let mut out = Vec::new();
    for (task, (site, machine)) in tasks.into_iter().zip(targets) {
        out.push(task.await.unwrap_or_else(|e| Outcome {
            machine: machine.name.to_string(),
            site: site.name.to_string(),
            bmc: machine.bmc.address.clone(),
            ok: false,
            state: None,
            error: Some(format!("the task failed: {e}")),
            duration_ms: 0,
        }));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Counts how many operations run at once on each BMC.
    struct Fake {
        busy: Arc<AtomicUsize>,
        peak: Arc<AtomicUsize>,
    }

    #[async_trait::async_trait]
    impl PowerDriver for Fake {
        async fn status(&self) -> Result<PowerState, DriverError> {
            Ok(PowerState::On)
        }
        async fn set_next_boot(&self, _: BootTarget) -> Result<(), DriverError> {
            Ok(())
        }
        async fn power_on(&self) -> Result<(), DriverError> {
            let now = self.busy.fetch_add(1, Ordering::SeqCst) + 1;
            self.peak.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
            self.busy.fetch_sub(1, Ordering::SeqCst);
            Ok(())
        }
        async fn power_off(&self) -> Result<(), DriverError> {
            self.busy.fetch_add(1, Ordering::SeqCst);
            Err(DriverError::Status {
                status: 404,
                detail: "no".into(),
                retry: false,
            })
        }
        async fn power_cycle(&self) -> Result<(), DriverError> {
            Ok(())
        }
    }

    fn opts(per_site: usize) -> Options {
        Options {
            per_site,
            state_timeout: Duration::from_secs(1),
            retry: RetryPolicy {
                retries: 2,
                base_delay: Duration::from_millis(1),
                max_delay: Duration::from_millis(2),
            },
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_operation_per_bmc_and_a_limit_per_site() {
        let fleet = crate::fleet::load(std::path::Path::new(env!("CARGO_MANIFEST_DIR"))).unwrap();
        let fra = fleet.site("fra").unwrap();
        let targets: Vec<_> = fra.machines.iter().map(|m| (fra, m)).collect();
        // Every machine on one BMC: strictly one at a time.
        let (busy, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let shared = |_: &Site, _: &Machine| -> Result<Box<dyn PowerDriver>, DriverError> {
            Ok(Box::new(Fake {
                busy: busy.clone(),
                peak: peak.clone(),
            }))
        };
        let mut one_bmc: Vec<Machine> = fra.machines.clone();
        for m in &mut one_bmc {
            m.bmc.address = "https://10.10.1.99".into();
        }
        let same: Vec<_> = one_bmc.iter().map(|m| (fra, m)).collect();
        let out = run_with(&same, Action::On, &opts(8), shared).await;
        assert!(out.iter().all(|o| o.ok));
        assert_eq!(peak.load(Ordering::SeqCst), 1);
        // Six BMCs, a site limit of 2: two at a time.
        peak.store(0, Ordering::SeqCst);
        let out = run_with(&targets, Action::On, &opts(2), shared).await;
        assert_eq!(out.len(), 6);
        assert_eq!(peak.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_4xx_is_not_retried_and_is_reported_with_machine_bmc_and_step() {
        let fleet = crate::fleet::load(std::path::Path::new(env!("CARGO_MANIFEST_DIR"))).unwrap();
        let (site, machine) = fleet.machine("ber-wk-01").unwrap();
        let (busy, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let make = |_: &Site, _: &Machine| -> Result<Box<dyn PowerDriver>, DriverError> {
            Ok(Box::new(Fake {
                busy: busy.clone(),
                peak: peak.clone(),
            }))
        };
        let out = run_with(&[(site, machine)], Action::Off, &opts(1), make).await;
        assert_eq!(
            out[0].error.as_deref(),
            Some("ber-wk-01 (BMC https://10.20.1.14): power off: the BMC answered 404: no")
        );
        assert_eq!(busy.load(Ordering::SeqCst), 1, "tried once, not retried");
    }
}
