//! `metalherd boot arm|disarm|status`: provisioning windows opened and
//! closed by hand, for boots no operation drives (a machine power-cycled
//! at its console, a hand-run install). Operations open their own (see
//! [`super::steps`]); the records are [`crate::state::provisioning`]'s.
//! Arming and disarming are written to the audit log.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

use crate::state::provisioning::{self, unix_now, Status, Window};
use crate::state::{Holder, StateStore};

/// One machine's window as `boot` commands report it.
#[derive(Debug, Serialize)]
pub struct Line {
    pub machine: String,
    pub status: Status,
    /// Seconds left while open.
    pub expires_in_s: Option<u64>,
    pub opened: String,
    pub by: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub closed: Option<String>,
    /// Who got its Ignition in the window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivered_to: Option<String>,
    /// Every client involved when its config was asked for more than once.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub exposed_to: Vec<String>,
}

impl Line {
    fn new(machine: &str, w: &Window, now: u64) -> Line {
        let status = w.status(now);
        Line {
            machine: machine.to_string(),
            status,
            expires_in_s: (status == Status::Open).then(|| w.expires_unix.saturating_sub(now)),
            opened: w.opened.clone(),
            by: w.by.clone(),
            closed: w.closed.clone(),
            delivered_to: w.delivered.as_ref().map(|d| d.client.clone()),
            exposed_to: w.exposed_to(),
        }
    }
}

/// What `boot arm`, `boot disarm` and `boot status` print.
#[derive(Debug, Serialize)]
pub struct Report {
    /// `armed`, `disarmed` or `status`.
    pub action: &'static str,
    pub windows: Vec<Line>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.windows.is_empty() {
            return writeln!(f, "no provisioning windows");
        }
        for l in &self.windows {
            write!(f, "{:<20} {:<8}", l.machine, l.status.to_string())?;
            if let Some(s) = l.expires_in_s {
                write!(f, " {}m{:02}s left", s / 60, s % 60)?;
            }
            if let Some(why) = &l.closed {
                write!(f, " ({why})")?;
            }
            if let Some(c) = &l.delivered_to {
                write!(f, " Ignition delivered to {c}")?;
            }
            if !l.exposed_to.is_empty() {
                write!(
                    f,
                    " EXPOSED: its config was asked for by {}",
                    l.exposed_to.join(", ")
                )?;
            }
            writeln!(f, "  [opened {} by {}]", l.opened, l.by)?;
        }
        Ok(())
    }
}

/// Opens a window of `duration` for each of `machines` (refused as a whole
/// when one is quarantined), recorded in the audit log.
pub async fn arm(
    store: &dyn StateStore,
    machines: &[&str],
    duration: Duration,
    reason: Option<&str>,
) -> anyhow::Result<Report> {
    anyhow::ensure!(
        !duration.is_zero(),
        "a provisioning window of 0 s would never let a machine boot: give --for such as 30m"
    );
    crate::lifecycle::refuse_quarantined(store, machines, "boot arm").await?;
    let holder = Holder::current("boot arm");
    let now = unix_now();
    let mut windows = Vec::new();
    for m in machines {
        let w = provisioning::open(store, m, &holder.to_string(), duration).await?;
        windows.push(Line::new(m, &w, now));
    }
    crate::state::audit(
        store,
        "boot arm",
        serde_json::json!({
            "machines": machines, "for_s": duration.as_secs(), "reason": reason,
        }),
    )
    .await?;
    Ok(Report {
        action: "armed",
        windows,
    })
}

/// Closes the open windows of `machines`, recorded in the audit log.
pub async fn disarm(
    store: &dyn StateStore,
    machines: &[&str],
    reason: Option<&str>,
) -> anyhow::Result<Report> {
    let holder = Holder::current("boot disarm");
    let why = format!(
        "disarmed by {}{}",
        holder.user,
        reason.map(|r| format!(": {r}")).unwrap_or_default()
    );
    let mut closed = Vec::new();
    for m in machines {
        if provisioning::close(store, m, &why).await? {
            closed.push(*m);
        }
    }
    crate::state::audit(
        store,
        "boot disarm",
        serde_json::json!({ "machines": machines, "closed": closed, "reason": reason }),
    )
    .await?;
    let mut report = status(store, machines).await?;
    report.action = "disarmed";
    Ok(report)
}

/// The latest window of each of `machines` that ever had one.
pub async fn status(store: &dyn StateStore, machines: &[&str]) -> anyhow::Result<Report> {
    let now = unix_now();
    let windows = provisioning::list(store)
        .await?
        .into_iter()
        .filter(|(m, _)| machines.contains(&m.as_str()))
        .map(|(m, w)| Line::new(&m, &w, now))
        .collect();
    Ok(Report {
        action: "status",
        windows,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::state::memory::MemoryStore;

    #[test]
    fn arm_opens_disarm_closes_and_both_are_audited() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let store = MemoryStore::new();
            let armed = arm(
                &store,
                &["a", "b"],
                Duration::from_secs(600),
                Some("console"),
            )
            .await
            .unwrap();
            assert!(armed.windows.iter().all(|l| l.status == Status::Open));
            assert!(armed.to_string().contains("10m00s left"), "{armed}");
            let disarmed = disarm(&store, &["a"], Some("done")).await.unwrap();
            assert_eq!(disarmed.windows.len(), 1);
            assert_eq!(disarmed.windows[0].status, Status::Closed);
            assert!(disarmed.to_string().contains(": done)"), "{disarmed}");
            let both = status(&store, &["a", "b"]).await.unwrap();
            assert_eq!(both.windows[1].status, Status::Open);
            let log = crate::state::audit_log(&store, 10).await.unwrap();
            let actions: Vec<&str> = log.iter().filter_map(|e| e["action"].as_str()).collect();
            assert!(actions.contains(&"boot arm") && actions.contains(&"boot disarm"));
            assert!(arm(&store, &["a"], Duration::ZERO, None).await.is_err());
        });
    }
}
