//! Machines without a usable BMC: print what a person must do, wait for
//! them to confirm on the terminal.

use std::io::{BufRead, IsTerminal, Write};

use super::{BootTarget, DriverError, PowerDriver, PowerState};

pub struct Manual {
    machine: String,
    location: String,
}

impl Manual {
    pub fn new(machine: &str, location: &str) -> Self {
        Manual {
            machine: machine.to_string(),
            location: location.to_string(),
        }
    }

    async fn ask(&self, what: String) -> Result<(), DriverError> {
        let machine = self.machine.clone();
        let location = self.location.clone();
        tokio::task::spawn_blocking(move || {
            if !std::io::stdin().is_terminal() {
                return Err(DriverError::Unsupported(format!(
                    "manual BMC: a person must {what} on {machine} ({location}); run this at a terminal"
                )));
            }
            eprint!("{machine} ({location}): please {what}, then press Enter: ");
            let _ = std::io::stderr().flush();
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line).map_err(|e| DriverError::Command(e.to_string()))?;
            Ok(())
        })
        .await
        .map_err(|e| DriverError::Command(e.to_string()))?
    }
}

#[async_trait::async_trait]
impl PowerDriver for Manual {
    async fn status(&self) -> Result<PowerState, DriverError> {
        Err(DriverError::Unsupported(
            "a manual BMC cannot report the power state".into(),
        ))
    }

    async fn set_next_boot(&self, target: BootTarget) -> Result<(), DriverError> {
        let what = match target {
            BootTarget::NetworkOnce => "set the next boot to the network (PXE), once",
            BootTarget::Disk => "set the boot order to disk first",
        };
        self.ask(what.into()).await
    }

    async fn power_on(&self) -> Result<(), DriverError> {
        self.ask("power the machine on".into()).await
    }

    async fn power_off(&self) -> Result<(), DriverError> {
        self.ask("power the machine off".into()).await
    }

    async fn power_cycle(&self) -> Result<(), DriverError> {
        self.ask("power-cycle the machine".into()).await
    }
}
