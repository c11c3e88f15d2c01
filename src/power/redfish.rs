//! Redfish (DMTF) over HTTPS with reqwest: boot override on the
//! ComputerSystem, `ComputerSystem.Reset`, and `PowerState` polled until a
//! change shows, since BMCs apply power changes seconds after accepting
//! them. Name URLs that redirect to UUID URLs are followed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::sync::OnceCell;

use super::credentials::Credentials;
use super::{BootTarget, DriverError, PowerDriver, PowerState};
use crate::fleet::{Bmc, Site};

/// How to check a site's BMC certificates.
#[derive(Clone, Debug, Default)]
pub struct Tls {
    pub ca_file: Option<PathBuf>,
    pub insecure: bool,
}

impl Tls {
    pub fn from_site(site: &Site, fleet_root: &Path) -> Tls {
        Tls {
            ca_file: site
                .bmc_defaults
                .ca_file
                .as_ref()
                .map(|f| fleet_root.join(f)),
            insecure: site.bmc_defaults.insecure,
        }
    }
}

pub struct Redfish {
    client: reqwest::Client,
    base: String,
    system: Option<String>,
    resolved: OnceCell<String>,
    creds: Credentials,
    state_timeout: Duration,
    poll: Duration,
}

impl Redfish {
    pub fn new(
        bmc: &Bmc,
        creds: Credentials,
        tls: Tls,
        state_timeout: Duration,
    ) -> Result<Self, DriverError> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            .user_agent(concat!("metalherd/", env!("CARGO_PKG_VERSION")));
        if tls.insecure {
            tracing::warn!(
                "{}: BMC certificate checks are off (bmc_defaults.insecure: true)",
                bmc.address
            );
            builder = builder.danger_accept_invalid_certs(true);
        }
        if let Some(ca) = &tls.ca_file {
            let pem = std::fs::read(ca).map_err(|e| {
                DriverError::Connection(format!("cannot read CA file {}: {e}", ca.display()))
            })?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .map_err(|e| DriverError::Connection(format!("CA file {}: {e}", ca.display())))?;
            builder = builder.add_root_certificate(cert);
        }
        let client = builder
            .build()
            .map_err(|e| DriverError::Connection(e.to_string()))?;
        Ok(Redfish {
            client,
            base: bmc.address.trim_end_matches('/').to_string(),
            system: bmc.system.clone(),
            resolved: OnceCell::new(),
            creds,
            state_timeout,
            poll: Duration::from_millis(500),
        })
    }

    fn url(&self, path: &str) -> String {
        if path.starts_with("http://") || path.starts_with("https://") {
            path.to_string()
        } else {
            format!("{}{}", self.base, path)
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, DriverError> {
        let mut req = self
            .client
            .request(method, self.url(path))
            .basic_auth(&self.creds.user, Some(self.creds.password()));
        if let Some(body) = body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.to_string());
        }
        let resp = req.send().await.map_err(|e| {
            if e.is_timeout() {
                DriverError::Timeout(Duration::from_secs(30))
            } else {
                DriverError::Connection(crate::errfmt::chain(&e))
            }
        })?;
        let status = resp.status();
        let text = resp
            .text()
            .await
            .map_err(|e| DriverError::Connection(crate::errfmt::chain(&e)))?;
        if !status.is_success() {
            return Err(DriverError::Status {
                status: status.as_u16(),
                detail: redfish_message(&text).unwrap_or_else(|| reason(status)),
                retry: status.is_server_error() && status != StatusCode::NOT_IMPLEMENTED,
            });
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// The ComputerSystem's path: the inventory's `system`, or the first
    /// member of `/redfish/v1/Systems`.
    async fn system(&self) -> Result<&str, DriverError> {
        self.resolved
            .get_or_try_init(|| async {
                if let Some(s) = &self.system {
                    return Ok(s.clone());
                }
                let systems = self.call(Method::GET, "/redfish/v1/Systems", None).await?;
                systems["Members"][0]["@odata.id"]
                    .as_str()
                    .map(str::to_string)
                    .ok_or_else(|| {
                        DriverError::Unsupported("the BMC lists no ComputerSystem".into())
                    })
            })
            .await
            .map(String::as_str)
    }

    async fn power_state(&self) -> Result<String, DriverError> {
        let system = self.system().await?.to_string();
        let doc = self.call(Method::GET, &system, None).await?;
        Ok(doc["PowerState"].as_str().unwrap_or("Unknown").to_string())
    }

    async fn reset(&self, kind: &str) -> Result<(), DriverError> {
        let system = self.system().await?.to_string();
        let action = format!(
            "{}/Actions/ComputerSystem.Reset",
            system.trim_end_matches('/')
        );
        self.call(Method::POST, &action, Some(json!({ "ResetType": kind })))
            .await
            .map(|_| ())
    }

    async fn wait_for(&self, wanted: PowerState) -> Result<(), DriverError> {
        super::wait_for_state(|| self.status(), wanted, self.state_timeout, self.poll).await
    }
}

fn reason(status: StatusCode) -> String {
    status.canonical_reason().unwrap_or("error").to_string()
}

/// The human part of a Redfish error body, if there is one.
fn redfish_message(body: &str) -> Option<String> {
    let v: Value = serde_json::from_str(body).ok()?;
    let err = &v["error"];
    err["@Message.ExtendedInfo"][0]["Message"]
        .as_str()
        .or_else(|| err["message"].as_str())
        .map(str::to_string)
}

#[async_trait::async_trait]
impl PowerDriver for Redfish {
    async fn status(&self) -> Result<PowerState, DriverError> {
        match self.power_state().await?.as_str() {
            "On" | "PoweringOff" => Ok(PowerState::On),
            "Off" | "PoweringOn" => Ok(PowerState::Off),
            other => Err(DriverError::Unsupported(format!(
                "unknown PowerState {other:?}"
            ))),
        }
    }

    async fn set_next_boot(&self, target: BootTarget) -> Result<(), DriverError> {
        let (source, enabled) = match target {
            BootTarget::NetworkOnce => ("Pxe", "Once"),
            BootTarget::Disk => ("Hdd", "Continuous"),
        };
        let system = self.system().await?.to_string();
        let body = json!({ "Boot": { "BootSourceOverrideTarget": source, "BootSourceOverrideEnabled": enabled } });
        self.call(Method::PATCH, &system, Some(body)).await?;
        // Read it back: some BMCs accept the PATCH and ignore it.
        let doc = self.call(Method::GET, &system, None).await?;
        let boot = &doc["Boot"];
        let got = boot["BootSourceOverrideTarget"].as_str().unwrap_or("");
        if got != source {
            return Err(DriverError::Unsupported(format!(
                "the BMC accepted boot target {source} but reports {got:?}"
            )));
        }
        let got_enabled = boot["BootSourceOverrideEnabled"].as_str().unwrap_or("");
        if got_enabled != enabled {
            // Once per run at warn (a site's BMCs are alike: hundreds of
            // the same line say nothing more), then at debug.
            static WARNED: std::sync::atomic::AtomicBool =
                std::sync::atomic::AtomicBool::new(false);
            if WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                tracing::debug!(
                    "{}: boot override reads back as {got_enabled:?}, not {enabled:?}",
                    self.base
                );
                return Ok(());
            }
            tracing::warn!(
                "{}: boot override reads back as {got_enabled:?}, not {enabled:?}; the machine may keep booting from {source} (said once per run; -v for every BMC)",
                self.base
            );
        }
        Ok(())
    }

    async fn power_on(&self) -> Result<(), DriverError> {
        if self.status().await? == PowerState::On {
            return Ok(());
        }
        self.reset("On").await?;
        self.wait_for(PowerState::On).await
    }

    async fn power_off(&self) -> Result<(), DriverError> {
        if self.status().await? == PowerState::Off {
            return Ok(());
        }
        self.reset("ForceOff").await?;
        self.wait_for(PowerState::Off).await
    }

    /// Tries the reset types BMCs offer for a cycle, best first:
    /// `PowerCycle`, `ForceRestart`, then off and on. A BMC that does not
    /// implement one answers 501 (or 400), which is not retried.
    async fn power_cycle(&self) -> Result<(), DriverError> {
        for kind in ["PowerCycle", "ForceRestart"] {
            match self.reset(kind).await {
                Ok(()) => {
                    // Some BMCs show Off during the restart; the first
                    // look is a pause later, then until On.
                    return self.wait_for(PowerState::On).await;
                }
                Err(DriverError::Status {
                    status: status @ (400 | 501),
                    ..
                }) => {
                    tracing::info!(
                        "{}: reset type {kind} not supported ({status}); trying the next",
                        self.base
                    );
                }
                Err(e) => return Err(e),
            }
        }
        self.power_off().await?;
        self.power_on().await
    }
}
