//! The lab's QEMU virtual machines, through each VM's QMP socket (the BMC
//! address is the socket's path, optionally `unix:`-prefixed). A VM is
//! "off" when its CPUs are stopped: off is `stop` plus `system_reset`, on
//! is `cont`, a cycle is `system_reset` (plus `cont`). The boot order is
//! fixed when the lab starts a VM (network first), so setting the next
//! boot is accepted and logged.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use super::{BootTarget, DriverError, PowerDriver, PowerState};

/// The QMP socket a BMC address names: `unix:` is optional, and a relative
/// path is relative to the fleet directory (where `metalherd lab up` puts
/// the sockets, under `.metalherd/lab/`).
pub fn socket_path(address: &str, fleet_root: &std::path::Path) -> String {
    let path = std::path::Path::new(address.trim_start_matches("unix:"));
    if path.is_absolute() {
        path.display().to_string()
    } else {
        fleet_root.join(path).display().to_string()
    }
}

pub struct Qemu {
    socket: String,
}

impl Qemu {
    pub fn new(address: &str) -> Self {
        Qemu {
            socket: address.trim_start_matches("unix:").to_string(),
        }
    }

    /// Runs QMP `commands` in one session and returns their results.
    async fn qmp(&self, commands: &[&str]) -> Result<Vec<Value>, DriverError> {
        let fut = async {
            let stream = UnixStream::connect(&self.socket)
                .await
                .map_err(|e| DriverError::Connection(format!("QMP socket {}: {e}", self.socket)))?;
            let (read, mut write) = stream.into_split();
            let mut lines = BufReader::new(read).lines();
            next_reply(&mut lines).await?; // greeting
            let mut results = Vec::new();
            for cmd in std::iter::once(&"qmp_capabilities").chain(commands) {
                let line = format!("{}\n", json!({ "execute": cmd }));
                write
                    .write_all(line.as_bytes())
                    .await
                    .map_err(|e| DriverError::Connection(e.to_string()))?;
                let reply = next_reply(&mut lines).await?;
                if let Some(err) = reply.get("error") {
                    return Err(DriverError::Command(format!(
                        "QMP {cmd}: {}",
                        err["desc"].as_str().unwrap_or("error")
                    )));
                }
                results.push(reply["return"].clone());
            }
            Ok(results.split_off(1))
        };
        tokio::time::timeout(Duration::from_secs(10), fut)
            .await
            .map_err(|_| DriverError::Timeout(Duration::from_secs(10)))?
    }
}

/// The next reply (not an event) on a QMP connection.
async fn next_reply(
    lines: &mut tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>,
) -> Result<Value, DriverError> {
    loop {
        let line = lines
            .next_line()
            .await
            .map_err(|e| DriverError::Connection(e.to_string()))?
            .ok_or_else(|| DriverError::Connection("QMP closed the connection".into()))?;
        let v: Value = serde_json::from_str(&line)
            .map_err(|e| DriverError::Command(format!("bad QMP reply: {e}")))?;
        if v.get("event").is_none() {
            return Ok(v);
        }
    }
}

#[async_trait::async_trait]
impl PowerDriver for Qemu {
    async fn status(&self) -> Result<PowerState, DriverError> {
        let r = self.qmp(&["query-status"]).await?;
        Ok(if r[0]["running"].as_bool() == Some(true) {
            PowerState::On
        } else {
            PowerState::Off
        })
    }

    async fn set_next_boot(&self, target: BootTarget) -> Result<(), DriverError> {
        tracing::debug!(
            "{}: boot order is fixed at VM start; {target:?} noted",
            self.socket
        );
        Ok(())
    }

    async fn power_on(&self) -> Result<(), DriverError> {
        self.qmp(&["cont"]).await.map(|_| ())
    }

    async fn power_off(&self) -> Result<(), DriverError> {
        self.qmp(&["stop", "system_reset"]).await.map(|_| ())
    }

    async fn power_cycle(&self) -> Result<(), DriverError> {
        self.qmp(&["system_reset", "cont"]).await.map(|_| ())
    }
}
