//! Provisioning windows: `provisioning/<machine>`, the time in which the
//! boot server may hand a machine its Ignition, once.
//!
//! An operation that powers a machine on for a new boot (provision,
//! replace, a blue-green replace, a drill's rebuild) opens its window
//! first; `metalherd boot arm` opens one by hand. A window closes on the
//! machine's first-boot report, when the operation ends, on `boot disarm`,
//! or when it expires. Every boot server of the fleet reads and writes the
//! same records, so with the etcd backend several servers for one site
//! share them: the first Ignition delivered in a window is recorded by
//! compare-and-swap ([`deliver`]), and any later request for the machine's
//! config in that window is refused and recorded ([`refuse`]) with the
//! client's address — whoever made it may hold the machine's host key.

use std::fmt;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::records::Key;
use super::{get_json, now_rfc3339, put_json, Expect, StateError, StateStore};

/// How long a window stays open when `fleet.yaml` says nothing
/// (`boot.window`).
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(30 * 60);

/// How a window closed by a report with the wrong host key says so
/// (`reported host key SHA256:…, not the one metalherd generated`).
pub const MISMATCH: &str = "reported host key ";

/// Refused requests kept per window: enough to name every client of an
/// attack, bounded against a flood.
const MAX_REFUSED: usize = 16;

/// A machine's latest provisioning window.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    /// When it was opened (RFC 3339, UTC), and as unix seconds.
    pub opened: String,
    pub opened_unix: u64,
    /// Unix seconds after which it is closed whatever happened.
    pub expires_unix: u64,
    /// Who opened it: `provision site fra by root (pid 7 on ctl)`.
    pub by: String,
    /// Why it was closed before it expired (`reported`, `provision site
    /// fra ended`, `disarmed by root: …`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed: Option<String>,
    /// Who got the machine's Ignition in this window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered: Option<Delivery>,
    /// Requests for the machine's config refused in this window because it
    /// had been delivered (or outside it, with a token of an earlier one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refused: Vec<Refused>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub client: String,
    pub unix: u64,
    /// What was delivered is an install stage: the next network boot in
    /// the window is the installed system's, and boots the local disk.
    pub install: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refused {
    pub client: String,
    pub unix: u64,
    /// `/ipxe` or `/ignition`.
    pub request: String,
    pub why: String,
}

/// Where a window is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Open,
    Closed,
    Expired,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Open => "open",
            Status::Closed => "closed",
            Status::Expired => "expired",
        })
    }
}

impl Window {
    /// A window opened now by `by` for `duration`.
    pub fn new(by: &str, duration: Duration) -> Window {
        let now = unix_now();
        Window {
            opened: now_rfc3339(),
            opened_unix: now,
            expires_unix: now + duration.as_secs().max(1),
            by: by.to_string(),
            closed: None,
            delivered: None,
            refused: Vec::new(),
        }
    }

    pub fn status(&self, now: u64) -> Status {
        if self.closed.is_some() {
            Status::Closed
        } else if now >= self.expires_unix {
            Status::Expired
        } else {
            Status::Open
        }
    }

    pub fn is_open(&self, now: u64) -> bool {
        self.status(now) == Status::Open
    }

    /// Every client that got or asked for the machine's config in this
    /// window beyond the one delivery: empty when nothing is amiss.
    pub fn exposed_to(&self) -> Vec<String> {
        if self.refused.is_empty() {
            return Vec::new();
        }
        let mut clients: Vec<String> = self.delivered.iter().map(|d| d.client.clone()).collect();
        for r in &self.refused {
            if !clients.contains(&r.client) {
                clients.push(r.client.clone());
            }
        }
        clients
    }

    /// One sentence on what went wrong in this window, for an operation's
    /// error: `None` when nothing did.
    pub fn exposure(&self) -> Option<String> {
        if self.refused.is_empty() {
            return None;
        }
        let delivered = match &self.delivered {
            Some(d) => format!("its Ignition was delivered to {}", d.client),
            None => "its Ignition was not delivered".to_string(),
        };
        let refused: Vec<String> = self
            .refused
            .iter()
            .map(|r| format!("{} from {} ({})", r.request, r.client, r.why))
            .collect();
        Some(format!(
            "{delivered}, and the boot server refused {} in its provisioning window: {}; \
             clients involved: {}; treat this machine's host key as exposed",
            if refused.len() == 1 {
                "another request"
            } else {
                "other requests"
            },
            refused.join("; "),
            self.exposed_to().join(", ")
        ))
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The latest window of `machine` and its revision, if it ever had one.
pub async fn read(
    store: &dyn StateStore,
    machine: impl fmt::Display,
) -> Result<Option<(Window, u64)>, StateError> {
    get_json::<Window>(store, &Key::provisioning(machine)).await
}

/// Every machine's latest window, by machine name.
pub async fn list(store: &dyn StateStore) -> Result<Vec<(String, Window)>, StateError> {
    let prefix = Key::provisioning("");
    let mut out = Vec::new();
    for e in store.list(&prefix).await? {
        let name = e.key.trim_start_matches(prefix.as_str()).to_string();
        let window = serde_json::from_slice(&e.value).map_err(|err| StateError::Backend {
            backend: store.describe(),
            message: format!("{} is not what metalherd wrote: {err}", e.key),
        })?;
        out.push((name, window));
    }
    Ok(out)
}

/// Opens a new window for `machine` (replacing its last one, open or not).
pub async fn open(
    store: &dyn StateStore,
    machine: impl fmt::Display,
    by: &str,
    duration: Duration,
) -> Result<Window, StateError> {
    let window = Window::new(by, duration);
    put_json(store, &Key::provisioning(machine), &window, Expect::Any).await?;
    Ok(window)
}

/// How many times a change re-reads after a concurrent write.
const ATTEMPTS: usize = 8;

/// Applies `change` to the latest window of `machine` by compare-and-swap,
/// re-reading when another writer (another boot server) got there first.
/// `change` returns what to answer and whether to write; no window: `None`.
async fn update<T>(
    store: &dyn StateStore,
    machine: &str,
    mut change: impl FnMut(&mut Window) -> (T, bool),
) -> Result<Option<T>, StateError> {
    let key = Key::provisioning(machine);
    let mut attempt = 0;
    loop {
        let Some((mut window, revision)) = get_json::<Window>(store, &key).await? else {
            return Ok(None);
        };
        let (answer, write) = change(&mut window);
        if !write {
            return Ok(Some(answer));
        }
        match put_json(store, &key, &window, Expect::Revision(revision)).await {
            Ok(_) => return Ok(Some(answer)),
            Err(StateError::Conflict { .. }) if attempt + 1 < ATTEMPTS => attempt += 1,
            Err(e) => return Err(e),
        }
    }
}

/// Closes the window of `machine` with `why` if it is open; says whether
/// it was.
pub async fn close(store: &dyn StateStore, machine: &str, why: &str) -> Result<bool, StateError> {
    let now = unix_now();
    let closed = update(store, machine, |w| {
        let open = w.is_open(now);
        if open {
            w.closed = Some(why.to_string());
        }
        (open, open)
    })
    .await?;
    Ok(closed.unwrap_or(false))
}

/// What the boot server may do for a machine's request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Open and nothing delivered yet: go on (for `/ignition`: delivered,
    /// and recorded as such).
    Serve,
    /// Its install stage was delivered in this window: this boot is the
    /// installed system's, which boots its local disk.
    Installed,
    /// Its Ignition went to `to` in this window already.
    Delivered { to: String },
    /// No open window: why (`no provisioning window`, `closed: reported`,
    /// `expired 3 min ago`).
    Outside(String),
}

fn outside(window: Option<&Window>, now: u64) -> Verdict {
    Verdict::Outside(match window {
        None => "no provisioning window was ever opened for it".to_string(),
        Some(w) => match (&w.closed, w.status(now)) {
            (Some(why), _) => format!("its provisioning window is closed ({why})"),
            _ => format!(
                "its provisioning window expired {} s ago",
                now.saturating_sub(w.expires_unix)
            ),
        },
    })
}

fn verdict(window: &Window, now: u64) -> Verdict {
    if !window.is_open(now) {
        return outside(Some(window), now);
    }
    match &window.delivered {
        None => Verdict::Serve,
        Some(d) if d.install => Verdict::Installed,
        Some(d) => Verdict::Delivered {
            to: d.client.clone(),
        },
    }
}

/// What `/ipxe` may do for `machine` now (it changes nothing).
pub async fn check(store: &dyn StateStore, machine: &str) -> Result<Verdict, StateError> {
    let now = unix_now();
    Ok(match read(store, machine).await? {
        Some((w, _)) => verdict(&w, now),
        None => outside(None, now),
    })
}

/// Records that `machine`'s Ignition goes to `client` if its window is
/// open and nothing was delivered in it yet (by any boot server): then
/// [`Verdict::Serve`]; otherwise the verdict that forbids it.
pub async fn deliver(
    store: &dyn StateStore,
    machine: &str,
    client: &str,
    install: bool,
) -> Result<Verdict, StateError> {
    let now = unix_now();
    let found = update(store, machine, |w| {
        let v = verdict(w, now);
        let write = v == Verdict::Serve;
        if write {
            w.delivered = Some(Delivery {
                client: client.to_string(),
                unix: now,
                install,
            });
        }
        (v, write)
    })
    .await?;
    Ok(found.unwrap_or_else(|| outside(None, now)))
}

/// Records a refused request for `machine`'s config in its latest window
/// (the first [`MAX_REFUSED`] of them).
pub async fn refuse(
    store: &dyn StateStore,
    machine: &str,
    client: &str,
    request: &str,
    why: &str,
) -> Result<(), StateError> {
    let refused = Refused {
        client: client.to_string(),
        unix: unix_now(),
        request: request.to_string(),
        why: why.to_string(),
    };
    update(store, machine, |w| {
        let write = w.refused.len() < MAX_REFUSED;
        if write {
            w.refused.push(refused.clone());
        }
        ((), write)
    })
    .await
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::state::memory::MemoryStore;

    fn block<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn one_delivery_per_window_then_refusals_name_every_client() {
        block(async {
            let store = MemoryStore::new();
            let m = "fra-wk-01";
            assert!(matches!(
                check(&store, m).await.unwrap(),
                Verdict::Outside(_)
            ));
            assert!(matches!(
                deliver(&store, m, "10.0.0.9", false).await.unwrap(),
                Verdict::Outside(_)
            ));
            open(&store, m, "test", Duration::from_secs(60))
                .await
                .unwrap();
            assert_eq!(check(&store, m).await.unwrap(), Verdict::Serve);
            assert_eq!(
                deliver(&store, m, "10.0.0.9", false).await.unwrap(),
                Verdict::Serve
            );
            // Another boot server (the same store) sees the delivery.
            assert_eq!(
                deliver(&store, m, "10.0.0.5", false).await.unwrap(),
                Verdict::Delivered {
                    to: "10.0.0.9".into()
                }
            );
            let (w, _) = read(&store, m).await.unwrap().unwrap();
            assert_eq!(w.exposure(), None, "nothing refused yet");
            refuse(&store, m, "10.0.0.5", "/ignition", "delivered")
                .await
                .unwrap();
            let (w, _) = read(&store, m).await.unwrap().unwrap();
            assert_eq!(w.exposed_to(), vec!["10.0.0.9", "10.0.0.5"]);
            assert!(w
                .exposure()
                .unwrap()
                .contains("treat this machine's host key as exposed"));
            for _ in 0..40 {
                refuse(&store, m, "10.0.0.6", "/ipxe", "flood")
                    .await
                    .unwrap();
            }
            let (w, _) = read(&store, m).await.unwrap().unwrap();
            assert_eq!(w.refused.len(), MAX_REFUSED);
        });
    }

    #[test]
    fn installs_boot_their_disk_and_windows_close_and_expire() {
        block(async {
            let store = MemoryStore::new();
            let m = "fra-cp-01";
            open(&store, m, "test", Duration::from_secs(60))
                .await
                .unwrap();
            deliver(&store, m, "10.0.0.9", true).await.unwrap();
            assert_eq!(check(&store, m).await.unwrap(), Verdict::Installed);
            assert!(close(&store, m, "reported").await.unwrap());
            assert!(!close(&store, m, "again").await.unwrap());
            let Verdict::Outside(why) = check(&store, m).await.unwrap() else {
                panic!("closed is outside")
            };
            assert!(why.contains("closed (reported)"), "{why}");

            let mut w = Window::new("test", Duration::from_secs(60));
            w.expires_unix = unix_now() - 5;
            put_json(&store, &Key::provisioning(m), &w, Expect::Any)
                .await
                .unwrap();
            let Verdict::Outside(why) = check(&store, m).await.unwrap() else {
                panic!("expired is outside")
            };
            assert!(why.contains("expired"), "{why}");
            assert_eq!(list(&store).await.unwrap()[0].0, m);
        });
    }
}
