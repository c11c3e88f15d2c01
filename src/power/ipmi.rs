//! IPMI over LAN through Debian's `ipmitool -I lanplus`, as a subprocess.
//! The password goes through the environment (`-E` reads
//! `IPMI_PASSWORD`), never argv, where any user could read it in `ps`.

use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

use super::credentials::Credentials;
use super::{BootTarget, DriverError, PowerDriver, PowerState};

pub struct Ipmi {
    host: String,
    port: Option<String>,
    creds: Credentials,
    state_timeout: Duration,
}

impl Ipmi {
    /// `address` is `host` or `host:port` (default port 623).
    pub fn new(address: &str, creds: Credentials, state_timeout: Duration) -> Self {
        let address = address.trim_start_matches("ipmi://");
        let (host, port) = match address.rsplit_once(':') {
            Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) && !h.contains(':') => {
                (h.to_string(), Some(p.to_string()))
            }
            _ => (address.to_string(), None),
        };
        Ipmi {
            host,
            port,
            creds,
            state_timeout,
        }
    }

    async fn ipmitool(&self, args: &[&str]) -> Result<String, DriverError> {
        let mut cmd = Command::new("ipmitool");
        cmd.args([
            "-I",
            "lanplus",
            "-H",
            &self.host,
            "-U",
            &self.creds.user,
            "-E",
            "-N",
            "2",
            "-R",
            "2",
        ]);
        if let Some(port) = &self.port {
            cmd.args(["-p", port]);
        }
        cmd.args(args)
            .env("IPMI_PASSWORD", self.creds.password())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let out = tokio::time::timeout(Duration::from_secs(30), cmd.output())
            .await
            .map_err(|_| DriverError::Timeout(Duration::from_secs(30)))?
            .map_err(|e| {
                DriverError::Command(format!(
                    "cannot run ipmitool: {e} (install it: apt-get install ipmitool)"
                ))
            })?;
        let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if out.status.success() {
            return Ok(stdout);
        }
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        let lower = stderr.to_lowercase();
        // Session setup failures are the network's or the BMC's; worth a retry.
        if lower.contains("unable to establish")
            || lower.contains("timeout")
            || lower.contains("no response")
        {
            Err(DriverError::Connection(format!(
                "ipmitool {}: {stderr}",
                args.join(" ")
            )))
        } else {
            Err(DriverError::Command(format!(
                "ipmitool {} failed: {stderr}",
                args.join(" ")
            )))
        }
    }

    async fn wait_for(&self, wanted: PowerState) -> Result<(), DriverError> {
        super::wait_for_state(
            || self.status(),
            wanted,
            self.state_timeout,
            Duration::from_millis(500),
        )
        .await
    }
}

#[async_trait::async_trait]
impl PowerDriver for Ipmi {
    async fn status(&self) -> Result<PowerState, DriverError> {
        let out = self.ipmitool(&["chassis", "power", "status"]).await?;
        if out.ends_with(" on") {
            Ok(PowerState::On)
        } else if out.ends_with(" off") {
            Ok(PowerState::Off)
        } else {
            Err(DriverError::Unsupported(format!(
                "unexpected answer {out:?}"
            )))
        }
    }

    async fn set_next_boot(&self, target: BootTarget) -> Result<(), DriverError> {
        match target {
            BootTarget::NetworkOnce => self.ipmitool(&["chassis", "bootdev", "pxe"]).await?,
            BootTarget::Disk => {
                self.ipmitool(&["chassis", "bootdev", "disk", "options=persistent"])
                    .await?;
                // Read it back: some BMCs accept the setting and ignore it.
                let flags = self.ipmitool(&["chassis", "bootparam", "get", "5"]).await?;
                if !flags.contains("Hard-Drive") {
                    return Err(DriverError::Unsupported(format!(
                        "the BMC accepted boot device disk but reports {:?}",
                        flags
                            .lines()
                            .find(|l| l.contains("Boot Device Selector"))
                            .unwrap_or(flags.trim())
                    )));
                }
                if !flags.contains("all future boots") {
                    tracing::warn!(
                        "{}: the BMC reports the disk boot for the next boot only, not persistently; \
                         a later reboot may boot from the network (outside a provisioning window \
                         the boot server sends it to its disk)",
                        self.host
                    );
                }
                String::new()
            }
        };
        Ok(())
    }

    async fn power_on(&self) -> Result<(), DriverError> {
        self.ipmitool(&["chassis", "power", "on"]).await?;
        self.wait_for(PowerState::On).await
    }

    async fn power_off(&self) -> Result<(), DriverError> {
        self.ipmitool(&["chassis", "power", "off"]).await?;
        self.wait_for(PowerState::Off).await
    }

    async fn power_cycle(&self) -> Result<(), DriverError> {
        // `power cycle` fails on a machine that is off; turn it on instead.
        if self.status().await? == PowerState::Off {
            return self.power_on().await;
        }
        match self.ipmitool(&["chassis", "power", "cycle"]).await {
            Ok(_) => self.wait_for(PowerState::On).await,
            // Some BMCs refuse `cycle` ("Invalid data field"): off, then on.
            Err(DriverError::Command(why)) => {
                tracing::info!("{}: {why}; powering off and on instead", self.host);
                self.power_off().await?;
                self.power_on().await
            }
            Err(e) => Err(e),
        }
    }
}
