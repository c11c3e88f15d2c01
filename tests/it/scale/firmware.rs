//! The scale harness's firmware stand-ins and the sushy notification
//! listener that drives them.
//!
//! sushy's fake driver PUTs a system's whole record to the listener on
//! every change (power requested, applied, boot device set), inside the
//! Redfish request that made it. The listener (one thread in the
//! controller namespace) answers at once and hands the record to the
//! machine's stand-in. A requested power change is pending until its
//! `apply_time` (sushy picks 1-11 s); the same pending change arrives
//! again with later changes (the boot device), so the stand-ins act on
//! each `(state, apply_time)` once.
//!
//! A stand-in is a thread in its machine's namespace. At the pending
//! change's time: `Off` cuts the host's power ([`PowerCut`]); `On` (and
//! a restart, which cuts at once) powers on: with the boot device `Pxe`
//! it consumes the one-time override (PATCHes the boot target back to
//! `Hdd` through sushy, as firmware does) and, after the shape's jittered
//! boot delay, network-boots: `/ipxe` for a token, `/ignition` with it
//! (a 403 retried for 30 s, as Ignition does), the first-boot report with
//! the config's secret and the pinned host key's fingerprint. A boot that
//! does not get through is retried every second until it does or a newer
//! power change arrives. Without `Pxe` the machine boots its disk: its
//! host (sshd) is up already.

use std::collections::HashMap;
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::super::hosts::PowerCut;
use super::super::machines::{percent_decode, BOOT_SERVER};
use super::http;

/// `admin:password`, sushy's only user, as a Basic credential.
pub const BASIC_AUTH: &str = "Basic YWRtaW46cGFzc3dvcmQ=";

/// A system's record as sushy notifies it.
#[derive(Clone, Debug)]
struct Notice {
    pending: Option<(String, f64)>,
    boot_device: String,
}

fn parse_notice(body: &str) -> Option<(String, Notice)> {
    let doc: serde_json::Value = serde_json::from_str(body).ok()?;
    let uuid = doc["uuid"].as_str()?.to_string();
    let pending = doc["pending_power"].as_object().and_then(|p| {
        Some((
            p.get("power_state")?.as_str()?.to_string(),
            p.get("apply_time")?.as_f64()?,
        ))
    });
    let boot_device = doc["boot_device"].as_str().unwrap_or("Hdd").to_string();
    Some((
        uuid,
        Notice {
            pending,
            boot_device,
        },
    ))
}

/// What the stand-ins saw, per machine (in the harness's machine order).
#[derive(Clone, Debug, Default)]
pub struct Counts {
    pub power_ons: usize,
    pub power_offs: usize,
    /// Network boots that reported.
    pub network_boots: usize,
    /// Network boots the boot server sent to the local disk.
    pub local_boots: usize,
    /// Network boot attempts that did not get through (retried).
    pub failed_boots: usize,
    /// Why the latest attempt failed.
    pub last_failure: Option<String>,
    /// Things a firmware should never see (a failed override PATCH, an
    /// install config).
    pub errors: Vec<String>,
    /// A power change pending or a boot under way.
    pub busy: bool,
}

/// Shared between the listener, the stand-ins and the harness.
#[derive(Default)]
pub struct Board {
    pub counts: Mutex<Vec<Counts>>,
    /// Systems with a power change requested and not yet seen applied:
    /// the BMC operations in flight (now, and the peak).
    pending: Mutex<HashMap<String, bool>>,
    pub in_flight_peak: Mutex<usize>,
    pub notifications: Mutex<usize>,
}

impl Board {
    fn note_pending(&self, uuid: &str, pending: bool) {
        let mut map = self.pending.lock().unwrap();
        map.insert(uuid.to_string(), pending);
        let now = map.values().filter(|p| **p).count();
        let mut peak = self.in_flight_peak.lock().unwrap();
        *peak = (*peak).max(now);
    }
}

/// What one stand-in needs to boot its machine.
pub struct Machine {
    pub index: usize,
    pub name: String,
    pub uuid: String,
    pub mac: String,
    pub fingerprint: String,
    pub ns: String,
    pub cut: PowerCut,
}

/// How long a boot takes, before the network boot.
#[derive(Clone, Copy, Debug)]
pub struct Delay {
    pub mean: Duration,
    pub jitter: Duration,
}

/// The listener and the stand-ins; stopped (and joined) when dropped.
pub struct Firmware {
    pub board: Arc<Board>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Firmware {
    /// Starts the listener on `listener` (bound in the controller
    /// namespace) and a stand-in per machine; `sushy` is the Redfish
    /// service's `ip:port` (reachable from the hosts).
    pub fn start(
        listener: TcpListener,
        machines: Vec<Machine>,
        sushy: &str,
        delay: Delay,
    ) -> Firmware {
        let board = Arc::new(Board {
            counts: Mutex::new(vec![Counts::default(); machines.len()]),
            ..Board::default()
        });
        let stop = Arc::new(AtomicBool::new(false));
        let mut routes = HashMap::new();
        let mut threads = Vec::new();
        for (seed, m) in machines.into_iter().enumerate() {
            let (tx, rx) = mpsc::channel();
            routes.insert(m.uuid.clone(), tx);
            let (board, stop, sushy) = (board.clone(), stop.clone(), sushy.to_string());
            threads.push(std::thread::spawn(move || {
                http::enter(&m.ns);
                stand_in(&m, rx, &board, &stop, &sushy, delay, seed as u64 + 1)
            }));
        }
        let (b, s) = (board.clone(), stop.clone());
        threads.push(std::thread::spawn(move || listen(listener, routes, &b, &s)));
        Firmware {
            board,
            stop,
            threads,
        }
    }

    pub fn counts(&self) -> Vec<Counts> {
        self.board.counts.lock().unwrap().clone()
    }

    /// Waits (up to `wait`) until no stand-in has a power change pending
    /// or a boot under way; false if one still has.
    pub fn settle(&self, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        while self.counts().iter().any(|c| c.busy) {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        true
    }
}

impl Drop for Firmware {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The notification listener: answers each PUT at once (sushy waits for
/// it inside its own request) and routes the record by UUID.
fn listen(
    listener: TcpListener,
    routes: HashMap<String, Sender<Notice>>,
    board: &Board,
    stop: &AtomicBool,
) {
    listener.set_nonblocking(true).unwrap();
    // A thread per notification: sushy sends one per power change from
    // as many request threads as metalherd has BMC operations in flight
    // (128 at once), and the accept backlog (128) must never fill, or
    // sushy answers metalherd 500.
    let routes = &routes;
    std::thread::scope(|scope| {
        while !stop.load(Ordering::SeqCst) {
            let stream = match listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                }
                Err(e) => panic!("notification listener: {e}"),
            };
            scope.spawn(move || {
                stream.set_nonblocking(false).unwrap();
                let request = http::read_request(&stream);
                let Ok((_, _, body)) = request else { return };
                // Routed before the answer: sushy's next change of the
                // same system comes after this one's answer.
                *board.notifications.lock().unwrap() += 1;
                if let Some((uuid, notice)) = parse_notice(&body) {
                    board.note_pending(&uuid, notice.pending.is_some());
                    if let Some(tx) = routes.get(&uuid) {
                        let _ = tx.send(notice);
                    }
                }
                let _ = std::io::Write::write_all(
                    &mut &stream,
                    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
            });
        }
    });
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// A small xorshift: the jitter needs no more.
fn next_random(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn boot_delay(delay: Delay, rng: &mut u64) -> Duration {
    let span = delay.jitter.as_millis() as u64 * 2;
    let offset = if span == 0 {
        0
    } else {
        next_random(rng) % (span + 1)
    };
    (delay.mean + Duration::from_millis(offset)).saturating_sub(delay.jitter)
}

/// One machine's firmware (see the module docs).
fn stand_in(
    m: &Machine,
    rx: Receiver<Notice>,
    board: &Board,
    stop: &AtomicBool,
    sushy: &str,
    delay: Delay,
    seed: u64,
) {
    let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut boot_device = String::from("Hdd");
    let mut last_pending: Option<(String, f64)> = None;
    let mut scheduled: Option<(String, f64)> = None;
    let mut boot_at: Option<Instant> = None;
    let count = |f: &dyn Fn(&mut Counts)| f(&mut board.counts.lock().unwrap()[m.index]);
    while !stop.load(Ordering::SeqCst) {
        let wait = match (&scheduled, boot_at) {
            (Some((_, at)), _) => Duration::from_secs_f64((at - unix_now()).clamp(0.0, 0.2)),
            (None, Some(at)) => at
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(200)),
            (None, None) => Duration::from_millis(200),
        };
        match rx.recv_timeout(wait) {
            Ok(notice) => {
                boot_device = notice.boot_device;
                if let Some(p) = notice.pending {
                    if last_pending.as_ref() != Some(&p) {
                        last_pending = Some(p.clone());
                        // A newer power change ends whatever boot was on.
                        boot_at = None;
                        if p.0.contains("Restart") {
                            m.cut.apply();
                        }
                        scheduled = Some(p);
                    }
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        if let Some((state, _)) = scheduled.take_if(|(_, at)| *at <= unix_now()) {
            if state == "Off" {
                m.cut.apply();
                count(&|c| c.power_offs += 1);
            } else {
                count(&|c| c.power_ons += 1);
                if boot_device == "Pxe" {
                    if let Err(e) = consume_override(m, sushy) {
                        count(&|c| {
                            c.errors
                                .push(format!("{}: consuming the override: {e}", m.name))
                        });
                    }
                    boot_at = Some(Instant::now() + boot_delay(delay, &mut rng));
                }
            }
        }
        if boot_at.is_some_and(|at| at <= Instant::now()) {
            boot_at = match network_boot(m) {
                Ok(Boot::Reported) => {
                    count(&|c| c.network_boots += 1);
                    None
                }
                Ok(Boot::Local) => {
                    count(&|c| c.local_boots += 1);
                    None
                }
                Err(e) => {
                    count(&|c| {
                        c.failed_boots += 1;
                        c.last_failure = Some(e.clone());
                    });
                    Some(Instant::now() + Duration::from_secs(1))
                }
            };
        }
        let busy = scheduled.is_some() || boot_at.is_some();
        count(&|c| c.busy = busy);
    }
}

/// The firmware takes the one-time network boot: the override goes back
/// to the disk.
fn consume_override(m: &Machine, sushy: &str) -> Result<String, String> {
    let body = r#"{"Boot": {"BootSourceOverrideTarget": "Hdd"}}"#;
    let path = format!("/redfish/v1/Systems/{}", m.uuid);
    let headers = [
        ("Authorization", BASIC_AUTH),
        ("Content-Type", "application/json"),
    ];
    http::ok(sushy, "PATCH", &path, &headers, Some(body))
}

enum Boot {
    Reported,
    /// Told to boot its disk (no provisioning window).
    Local,
}

/// One network boot as the machine's iPXE, Ignition and first boot do it.
fn network_boot(m: &Machine) -> Result<Boot, String> {
    let script = http::ok(
        BOOT_SERVER,
        "GET",
        &format!("/ipxe?mac={}", m.mac),
        &[],
        None,
    )?;
    let Some(token) = script
        .split("token=")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
    else {
        return Ok(Boot::Local);
    };
    let path = format!("/ignition?mac={}&token={token}", m.mac);
    let deadline = Instant::now() + Duration::from_secs(30);
    let config = loop {
        let answer = http::request(BOOT_SERVER, "GET", &path, &[], None)?;
        match answer.status {
            200 => break answer.body,
            403 if Instant::now() < deadline => std::thread::sleep(Duration::from_secs(1)),
            other => return Err(format!("GET {path}: {other} {}", answer.body.trim())),
        }
    };
    let doc: serde_json::Value = serde_json::from_str(&config).map_err(|e| e.to_string())?;
    let file = |path: &str| {
        doc["storage"]["files"]
            .as_array()?
            .iter()
            .find(|f| f["path"] == path)?["contents"]["source"]
            .as_str()?
            .strip_prefix("data:,")
            .map(percent_decode)
    };
    if file("/opt/metalherd/final.ign").is_some() {
        return Err("an install config: the scale harness's machines run from RAM".into());
    }
    let secret = file("/etc/metalherd/report-secret").ok_or("no report secret in the config")?;
    let auth = format!("Bearer {secret}");
    let body = format!("{{\"host_key_fingerprint\":\"{}\"}}", m.fingerprint);
    http::ok(
        BOOT_SERVER,
        "POST",
        &format!("/report/{}", m.name),
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        Some(&body),
    )?;
    Ok(Boot::Reported)
}

#[test]
fn a_notice_carries_the_pending_change_and_the_boot_device() {
    let (uuid, notice) = parse_notice(
        r#"{"uuid": "u1", "name": "fra-wk-001", "power_state": "Off",
            "pending_power": {"power_state": "On", "apply_time": 1700000003},
            "boot_device": "Pxe", "nics": []}"#,
    )
    .unwrap();
    assert_eq!(uuid, "u1");
    assert_eq!(notice.pending, Some(("On".into(), 1_700_000_003.0)));
    assert_eq!(notice.boot_device, "Pxe");
    let (_, applied) =
        parse_notice(r#"{"uuid": "u1", "power_state": "On", "pending_power": null}"#).unwrap();
    assert_eq!(
        (applied.pending, applied.boot_device.as_str()),
        (None, "Hdd")
    );
    let delay = Delay {
        mean: Duration::from_secs(3),
        jitter: Duration::from_secs(1),
    };
    let mut rng = 7;
    for _ in 0..100 {
        let d = boot_delay(delay, &mut rng);
        assert!(
            d >= Duration::from_secs(2) && d <= Duration::from_secs(4),
            "{d:?}"
        );
    }
}
