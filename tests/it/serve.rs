//! `metalherd serve`, the real binary on loopback, spoken to over raw
//! HTTP/1.1: MAC spellings, unknown MACs, provisioning windows (`boot
//! arm|disarm`, expiry, one delivery per window), one-time tokens (replay,
//! wrong MAC, expiry, revocation), `/assets` (traversal, Range, ETag), a
//! malformed-request flood, metrics, reload; and `metalherd dnsmasq`
//! checked by dnsmasq.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{example_fleet, metalherd, require, text};

pub(super) struct Server {
    child: Child,
    pub(super) port: u16,
    log: std::path::PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `metalherd boot ARGS` in `fleet` (`arm --site fra`, `disarm M`).
pub(super) fn boot(fleet: &Path, args: &[&str]) -> String {
    let mut all = vec!["boot"];
    all.extend_from_slice(args);
    let out = metalherd(fleet, &all);
    assert!(
        out.status.success(),
        "metalherd {all:?}: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// A boot server for `fleet` with every machine's provisioning window open.
fn start(fleet: &Path, extra: &[&str]) -> Server {
    boot(
        fleet,
        &["arm", "--site", "fra", "--site", "ber", "--site", "muc"],
    );
    start_unarmed(fleet, extra)
}

pub(super) fn start_unarmed(fleet: &Path, extra: &[&str]) -> Server {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let log = fleet.join(format!("serve-{port}.log"));
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec!["serve", "--listen", &listen];
    args.extend_from_slice(extra);
    let child = Command::new(env!("CARGO_BIN_EXE_metalherd"))
        .args(&args)
        .current_dir(fleet)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let server = Server { child, port, log };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok((200, _, _)) = try_get(port, "/healthz", &[]) {
            return server;
        }
        assert!(
            Instant::now() < deadline,
            "serve did not start: {}",
            std::fs::read_to_string(&server.log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends raw bytes; returns (status, head, body).
pub(super) fn raw(port: u16, request: &[u8]) -> std::io::Result<(u16, String, Vec<u8>)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(request)?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(buf.len(), |i| i + 4);
    let head = String::from_utf8_lossy(&buf[..split]).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, head, buf[split..].to_vec()))
}

pub(super) fn try_get(
    port: u16,
    path: &str,
    headers: &[&str],
) -> std::io::Result<(u16, String, Vec<u8>)> {
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    raw(port, req.as_bytes())
}

pub(super) fn get(port: u16, path: &str) -> (u16, String) {
    let (status, _, body) = try_get(port, path, &[]).unwrap();
    (status, String::from_utf8_lossy(&body).to_string())
}

/// One machine's entry in `/api/v1/machines`.
fn machine_status(port: u16, name: &str) -> serde_json::Value {
    let (_, machines) = get(port, "/api/v1/machines");
    let doc: serde_json::Value = serde_json::from_str(&machines).unwrap();
    doc["machines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["machine"] == name)
        .unwrap()
        .clone()
}

fn token_of(script: &str) -> String {
    script
        .split("token=")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

fn metric(port: u16, line_prefix: &str) -> u64 {
    let (_, text) = get(port, "/metrics");
    text.lines()
        .find(|l| l.starts_with(line_prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[test]
fn macs_in_any_spelling_and_unknown_macs() {
    let fleet = example_fleet();
    let s = start(fleet.path(), &[]);
    let (status, chain) = get(s.port, "/boot.ipxe");
    assert_eq!(status, 200);
    assert!(
        chain.contains("chain /ipxe?mac=${mac:hexhyp}&uuid=${uuid}"),
        "{chain}"
    );
    for spelling in [
        "52:54:00:fa:00:01",
        "52-54-00-FA-00-01",
        "525400fa0001",
        "5254.00fa.0001",
    ] {
        let (status, script) = get(s.port, &format!("/ipxe?mac={spelling}&uuid=abc"));
        assert_eq!(status, 200, "{spelling}");
        assert!(
            script.starts_with("#!ipxe\n# fra-cp-01 "),
            "{spelling}: {script}"
        );
        assert!(
            script.contains(
                "ignition.config.url=http://10.10.0.2:8080/ignition?mac=52-54-00-fa-00-01&token="
            ),
            "{script}"
        );
    }
    let (status, _) = get(s.port, "/ipxe?mac=02:00:00:00:00:99");
    assert_eq!(status, 404);
    assert_eq!(
        get(s.port, "/ignition?mac=02:00:00:00:00:99&token=x").0,
        404
    );
    assert_eq!(get(s.port, "/ipxe?mac=not-a-mac").0, 400);
    assert_eq!(get(s.port, "/ipxe").0, 400);
    assert_eq!(metric(s.port, "metalherd_unknown_mac_total"), 2);
    let log = std::fs::read_to_string(&s.log).unwrap();
    assert!(
        log.contains("unknown MAC 02:00:00:00:00:99 from 127.0.0.1"),
        "{log}"
    );
}

#[test]
fn tokens_are_one_time_per_mac_and_expire() {
    let fleet = example_fleet();
    let s = start(fleet.path(), &["--token-ttl", "2"]);
    let (_, script) = get(s.port, "/ipxe?mac=52:54:00:be:00:04");
    let token = token_of(&script);
    assert_eq!(token.len(), 32, "128-bit tokens");
    // Wrong MAC for the token.
    assert_eq!(
        get(
            s.port,
            &format!("/ignition?mac=52:54:00:be:00:05&token={token}")
        )
        .0,
        403
    );
    let (status, ign) = get(
        s.port,
        &format!("/ignition?mac=52-54-00-be-00-04&token={token}"),
    );
    assert_eq!(status, 200);
    let doc: serde_json::Value = serde_json::from_str(&ign).unwrap();
    assert_eq!(doc["ignition"]["version"], "3.3.0");
    // Replay.
    assert_eq!(
        get(
            s.port,
            &format!("/ignition?mac=52-54-00-be-00-04&token={token}")
        )
        .0,
        403
    );
    assert_eq!(metric(s.port, "metalherd_ignition_replays_total"), 1);
    // No token at all (the fleet requires one), and a made-up one.
    assert_eq!(get(s.port, "/ignition?mac=52-54-00-be-00-04").0, 403);
    assert_eq!(
        get(
            s.port,
            "/ignition?mac=52-54-00-be-00-04&token=00000000000000000000000000000000"
        )
        .0,
        403
    );
    // Expiry (in a new window: this one had its delivery).
    boot(fleet.path(), &["arm", "ber-wk-01"]);
    let (_, script) = get(s.port, "/ipxe?mac=52:54:00:be:00:04");
    let late = token_of(&script);
    std::thread::sleep(Duration::from_millis(2300));
    assert_eq!(
        get(
            s.port,
            &format!("/ignition?mac=52-54-00-be-00-04&token={late}")
        )
        .0,
        403
    );

    let log = std::fs::read_to_string(&s.log).unwrap();
    assert!(
        log.contains("token already used (possible replay)"),
        "{log}"
    );
    assert!(log.contains("token expired"), "{log}");
    assert!(
        !log.contains(&token) && !log.contains(&late),
        "tokens never reach the log"
    );

    // The machine's last request was the expired token: the boot server
    // says so, and who got its Ignition before (what `provision` reads).
    let m = machine_status(s.port, "ber-wk-01");
    assert_eq!(m["stage"], "ignition-refused");
    assert_eq!(m["refused"], "token expired");
    assert_eq!(m["ignition_client"], "127.0.0.1");
    assert_eq!(m["site"], "ber");
}

/// Someone who knows a machine's MAC asks `/ipxe` for it too, and fetches
/// the Ignition first: that delivery revokes every other token of the
/// machine, so the machine's own request is refused, counted as a
/// possible theft and flagged, naming where the config went. A `HEAD`
/// (a health check, `curl -I`) is refused and burns nothing.
#[test]
fn the_first_ignition_delivered_revokes_every_other_token_of_its_machine() {
    let fleet = example_fleet();
    // RAM-only machines: one delivery per window, nothing to boot locally.
    let inv = fleet.path().join("inventory/ber.yaml");
    let text = std::fs::read_to_string(&inv).unwrap();
    std::fs::write(&inv, text.replace("    install_disk: /dev/sda\n", "")).unwrap();
    let s = start(fleet.path(), &[]);
    let mac = "52:54:00:be:00:04";
    let head = |path: &str| {
        let req = format!("HEAD {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        raw(s.port, req.as_bytes()).unwrap()
    };
    let (_, script) = get(s.port, &format!("/ipxe?mac={mac}"));
    let token = token_of(&script);
    let (status, said, _) = head(&format!("/ignition?mac={mac}&token={token}"));
    assert_eq!(status, 405, "{said}");
    assert!(said.to_lowercase().contains("allow: get"), "{said}");
    assert_eq!(head(&format!("/ipxe?mac={mac}")).0, 405);
    assert_eq!(
        get(s.port, &format!("/ignition?mac={mac}&token={token}")).0,
        200,
        "the HEAD burned the token"
    );

    // One delivery per window: the machine's next request in it is refused.
    let (status, body) = get(s.port, &format!("/ipxe?mac={mac}"));
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        metric(s.port, "metalherd_ignition_possible_thefts_total"),
        1
    );
    // The next boot, in a new window: the thief asks first, then the machine.
    boot(fleet.path(), &["arm", "ber-wk-01"]);
    let (_, thief) = get(s.port, &format!("/ipxe?mac={mac}"));
    let (_, own) = get(s.port, &format!("/ipxe?mac={mac}"));
    let (thief, own) = (token_of(&thief), token_of(&own));
    assert_ne!(thief, own);
    assert_eq!(
        get(s.port, &format!("/ignition?mac={mac}&token={thief}")).0,
        200
    );
    let (status, body) = get(s.port, &format!("/ignition?mac={mac}&token={own}"));
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("token revoked: the machine's Ignition was already delivered to 127.0.0.1 (possible theft)"),
        "{body}"
    );
    assert_eq!(
        metric(s.port, "metalherd_ignition_possible_thefts_total"),
        2
    );
    assert_eq!(metric(s.port, "metalherd_ignition_replays_total"), 0);
    // The window, which every boot server and `provision` read, names both.
    let status: serde_json::Value = serde_json::from_str(&boot(
        fleet.path(),
        &["status", "ber-wk-01", "--output", "json"],
    ))
    .unwrap();
    let w = &status["windows"][0];
    assert_eq!(w["delivered_to"], "127.0.0.1", "{status}");
    assert_eq!(
        w["exposed_to"],
        serde_json::json!(["127.0.0.1"]),
        "{status}"
    );
    let m = machine_status(s.port, "ber-wk-01");
    assert_eq!(m["stage"], "ignition-refused", "{m}");
    assert_eq!(m["possible_theft"], true, "{m}");
    assert_eq!(m["ignition_client"], "127.0.0.1", "{m}");
    // Another machine is untouched.
    let (_, other) = get(s.port, "/ipxe?mac=52:54:00:be:00:05");
    let other = token_of(&other);
    assert_eq!(
        get(
            s.port,
            &format!("/ignition?mac=52:54:00:be:00:05&token={other}")
        )
        .0,
        200
    );
    assert_eq!(machine_status(s.port, "ber-wk-02")["possible_theft"], false);
    let log = std::fs::read_to_string(&s.log).unwrap();
    assert!(log.contains("possible theft"), "{log}");
    assert!(
        !log.contains(&own) && !log.contains(&thief),
        "tokens never reach the log"
    );
}

/// Outside a provisioning window a machine gets a script that boots its
/// disk (or, RAM-only, says why and stops), never a token; the request is
/// counted and logged with the MAC. `boot arm` opens a window, which
/// expires; `boot disarm` closes one. An install stage's machine that
/// network-boots again in its window boots its disk: no second install,
/// no alarm.
#[test]
fn outside_a_provisioning_window_no_token_and_installs_boot_their_disk() {
    let fleet = example_fleet();
    let inv = fleet.path().join("inventory/ber.yaml");
    let text = std::fs::read_to_string(&inv).unwrap();
    std::fs::write(&inv, text.replacen("    install_disk: /dev/sda\n", "", 1)).unwrap();
    let s = start_unarmed(fleet.path(), &[]);
    let outside = "metalherd_boot_outside_window_total";

    let (status, script) = get(s.port, "/ipxe?mac=52:54:00:fa:00:01");
    assert_eq!(status, 200, "{script}");
    assert!(!script.contains("token="), "{script}");
    assert!(
        script.contains("it has no open provisioning window: booting the local disk")
            && script.contains("\nsanboot --no-describe --drive 0x80 || exit\n"),
        "{script}"
    );
    let (status, script) = get(s.port, "/ipxe?mac=52:54:00:be:00:01");
    assert_eq!(status, 200, "{script}");
    assert!(
        !script.contains("token=") && !script.contains("sanboot") && !script.contains("chain"),
        "{script}"
    );
    assert!(script.contains("metalherd boot arm ber-cp-01"), "{script}");
    assert!(
        script.ends_with(":stopped\nsleep 3600\ngoto stopped\n"),
        "{script}"
    );
    assert_eq!(metric(s.port, outside), 2);
    // Without a window even a tokenless request learns nothing.
    assert_eq!(get(s.port, "/ignition?mac=52:54:00:fa:00:01").0, 403);
    let log = std::fs::read_to_string(&s.log).unwrap();
    assert!(
        log.contains("fra-cp-01: /ipxe from 127.0.0.1 for MAC 52:54:00:fa:00:01 outside a provisioning window (no provisioning window was ever opened for it): no token; told to boot its local disk"),
        "{log}"
    );
    assert_eq!(
        machine_status(s.port, "fra-cp-01")["stage"],
        "outside-window"
    );

    // Armed: a token; expired: none again.
    let armed = boot(
        fleet.path(),
        &[
            "arm",
            "fra-cp-01",
            "--for",
            "3s",
            "--reason",
            "console boot",
        ],
    );
    assert!(
        armed.contains("fra-cp-01") && armed.contains("open"),
        "{armed}"
    );
    let (_, script) = get(s.port, "/ipxe?mac=52:54:00:fa:00:01");
    assert_eq!(token_of(&script).len(), 32, "{script}");
    std::thread::sleep(Duration::from_millis(3500));
    let (_, script) = get(s.port, "/ipxe?mac=52:54:00:fa:00:01");
    assert!(!script.contains("token="), "{script}");
    assert_eq!(metric(s.port, outside), 3);
    // Disarmed: none.
    boot(fleet.path(), &["arm", "fra-cp-01"]);
    let said = boot(
        fleet.path(),
        &["disarm", "fra-cp-01", "--reason", "not today"],
    );
    assert!(
        said.contains("closed") && said.contains("not today"),
        "{said}"
    );
    assert!(!get(s.port, "/ipxe?mac=52:54:00:fa:00:01")
        .1
        .contains("token="));

    // An install: the stage once, then the installed system's network boot
    // in the same window boots the disk; its report closes the window.
    boot(fleet.path(), &["arm", "fra-wk-01"]);
    let (_, script) = get(s.port, "/ipxe?mac=52:54:00:fa:00:04");
    let (status, install) = get(
        s.port,
        &format!(
            "/ignition?mac=52:54:00:fa:00:04&token={}",
            token_of(&script)
        ),
    );
    assert_eq!(status, 200);
    let (status, again) = get(s.port, "/ipxe?mac=52:54:00:fa:00:04");
    assert_eq!(status, 200, "{again}");
    assert!(
        again.contains(
            "its install stage was delivered in this provisioning window: booting the local disk"
        ) && !again.contains("token="),
        "{again}"
    );
    assert_eq!(machine_status(s.port, "fra-wk-01")["stage"], "booting-disk");
    assert_eq!(
        metric(s.port, "metalherd_ignition_possible_thefts_total"),
        0
    );
    // The final config rides percent-encoded in the install stage.
    let doc: serde_json::Value = serde_json::from_str(&install).unwrap();
    let source = doc["storage"]["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == "/opt/metalherd/final.ign")
        .and_then(|f| f["contents"]["source"].as_str())
        .and_then(|s| s.strip_prefix("data:,"))
        .expect("the final config in the install stage")
        .to_string();
    let secret = report_secret(&super::machines::percent_decode(&source));
    let pubkey = std::fs::read_to_string(
        fleet
            .path()
            .join(".metalherd/state/hostkeys/fra/fra-wk-01/ssh_host_ed25519_key.pub"),
    )
    .unwrap();
    let fingerprint = ssh_key::PublicKey::from_openssh(pubkey.trim())
        .unwrap()
        .fingerprint(ssh_key::HashAlg::Sha256)
        .to_string();
    let body = format!("{{\"host_key_fingerprint\":\"{fingerprint}\"}}");
    assert_eq!(
        post(s.port, "/report/fra-wk-01", Some(&secret), &body).0,
        200
    );
    let status = boot(fleet.path(), &["status", "fra-wk-01"]);
    assert!(status.contains("closed   (reported)"), "{status}");
    assert!(!get(s.port, "/ipxe?mac=52:54:00:fa:00:04")
        .1
        .contains("token="));
}

/// Two boot servers for one site on the etcd backend share its windows: a
/// token one of them handed out is refused there once the other delivered
/// the machine's Ignition, counted and flagged as a possible theft; a
/// window disarmed through etcd is closed at both.
#[test]
fn two_boot_servers_on_the_etcd_backend_share_the_windows() {
    let cluster = super::etcd_cluster::EtcdCluster::start();
    let fleet = super::state::fleet_for(Some(&cluster));
    let inv = fleet.path().join("inventory/ber.yaml");
    let text = std::fs::read_to_string(&inv).unwrap();
    std::fs::write(&inv, text.replace("    install_disk: /dev/sda\n", "")).unwrap();
    let a = start(fleet.path(), &["--site", "ber"]);
    let b = start_unarmed(fleet.path(), &["--site", "ber"]);
    let mac = "52:54:00:be:00:04";
    let (_, thief) = get(a.port, &format!("/ipxe?mac={mac}"));
    let (_, own) = get(b.port, &format!("/ipxe?mac={mac}"));
    let (thief, own) = (token_of(&thief), token_of(&own));
    assert_eq!(
        get(b.port, &format!("/ignition?mac={mac}&token={own}")).0,
        200
    );
    let (status, body) = get(a.port, &format!("/ignition?mac={mac}&token={thief}"));
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains(
            "already delivered to 127.0.0.1 in this provisioning window (possible theft)"
        ),
        "{body}"
    );
    assert_eq!(get(a.port, &format!("/ipxe?mac={mac}")).0, 403);
    assert_eq!(
        metric(a.port, "metalherd_ignition_possible_thefts_total"),
        2
    );
    assert_eq!(machine_status(a.port, "ber-wk-01")["possible_theft"], true);
    assert_eq!(
        metric(b.port, "metalherd_ignition_possible_thefts_total"),
        0
    );
    let status: serde_json::Value = serde_json::from_str(&boot(
        fleet.path(),
        &["status", "ber-wk-01", "--output", "json"],
    ))
    .unwrap();
    assert_eq!(
        status["windows"][0]["delivered_to"], "127.0.0.1",
        "{status}"
    );
    assert_eq!(
        status["windows"][0]["exposed_to"],
        serde_json::json!(["127.0.0.1"]),
        "{status}"
    );
    // Disarmed through etcd: neither server hands out a token.
    boot(fleet.path(), &["disarm", "--site", "ber"]);
    for port in [a.port, b.port] {
        let (status, script) = get(port, "/ipxe?mac=52:54:00:be:00:05");
        assert_eq!(status, 200);
        assert!(!script.contains("token="), "{script}");
    }
}

#[test]
fn tokens_can_be_optional_when_the_fleet_says_so() {
    let fleet = example_fleet();
    let yaml = fleet.path().join("inventory/fleet.yaml");
    let text = std::fs::read_to_string(&yaml)
        .unwrap()
        .replace("require_token: true", "require_token: false");
    std::fs::write(&yaml, text).unwrap();
    let s = start(fleet.path(), &[]);
    assert_eq!(get(s.port, "/ignition?mac=52:54:00:3c:00:01").0, 200);
}

#[test]
fn assets_are_served_with_range_and_etag_and_never_outside() {
    let fleet = example_fleet();
    let dir = fleet.path().join("assets/flatcar/4081.2.0");
    std::fs::create_dir_all(&dir).unwrap();
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(dir.join("flatcar_production_pxe.vmlinuz"), &data).unwrap();
    std::fs::write(fleet.path().join("secret.txt"), "do not serve").unwrap();
    let s = start(fleet.path(), &[]);
    let path = "/assets/flatcar/4081.2.0/flatcar_production_pxe.vmlinuz";

    let (status, head, body) = try_get(s.port, path, &[]).unwrap();
    assert_eq!(status, 200);
    assert_eq!(body, data);
    assert!(
        head.to_lowercase().contains("content-length: 100000"),
        "{head}"
    );
    let etag = head
        .lines()
        .find(|l| l.to_lowercase().starts_with("etag:"))
        .unwrap()
        .split_once(':')
        .unwrap()
        .1
        .trim()
        .to_string();

    let (status, head, body) = try_get(s.port, path, &["Range: bytes=1000-1999"]).unwrap();
    assert_eq!(status, 206);
    assert_eq!(body, &data[1000..2000]);
    assert!(
        head.to_lowercase()
            .contains("content-range: bytes 1000-1999/100000"),
        "{head}"
    );
    let (status, _, body) = try_get(s.port, path, &["Range: bytes=-10"]).unwrap();
    assert_eq!((status, body.as_slice()), (206, &data[99_990..]));
    assert_eq!(
        try_get(s.port, path, &["Range: bytes=200000-"]).unwrap().0,
        416
    );
    assert_eq!(
        try_get(s.port, path, &[&format!("If-None-Match: {etag}")])
            .unwrap()
            .0,
        304
    );

    let (status, head, body) = raw(
        s.port,
        format!("HEAD {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .unwrap();
    assert_eq!(status, 200);
    assert!(
        body.is_empty() && head.to_lowercase().contains("content-length: 100000"),
        "{head}"
    );

    for evil in [
        "/assets/../secret.txt",
        "/assets/%2e%2e/secret.txt",
        "/assets/%2E%2E%2Fsecret.txt",
        "/assets/flatcar/../../secret.txt",
        "/assets//etc/passwd",
        "/assets/%2Fetc%2Fpasswd",
        "/assets/..%2f..%2fetc%2fpasswd",
        "/assets/.partial/x",
    ] {
        let (status, _, body) = try_get(s.port, evil, &[]).unwrap();
        let body = String::from_utf8_lossy(&body);
        assert!(status == 404 || status == 400, "{evil}: {status}");
        assert!(
            !body.contains("do not serve") && !body.contains("root:"),
            "{evil} leaked a file"
        );
    }
}

#[test]
fn a_flood_of_malformed_requests_gets_no_5xx_and_the_server_lives() {
    let fleet = example_fleet();
    let s = start(fleet.path(), &[]);
    let junk: [&[u8]; 8] = [
        b"GARBAGE\r\n\r\n",
        b"GET /ipxe?mac=%zz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET /ignition?mac=52:54:00:fa:00:01&token=%00%ff HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET /assets/%00 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"POST /ipxe HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
        b"GET /\xff\xfe HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET /ipxe?mac=52:54:00:fa:00:01&mac=x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    ];
    let started = Instant::now();
    let mut statuses = std::collections::BTreeMap::new();
    for i in 0..10_000 {
        let req = junk[i % junk.len()];
        if let Ok((status, _, _)) = raw(s.port, req) {
            *statuses.entry(status).or_insert(0) += 1;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "bounded in time"
        );
    }
    assert!(statuses.keys().all(|s| *s < 500), "no 5xx: {statuses:?}");
    let (status, script) = get(s.port, "/ipxe?mac=52:54:00:fa:00:01");
    assert_eq!(status, 200, "a legitimate boot still works");
    assert!(script.contains("token="));
}

#[test]
fn sighup_reloads_and_a_broken_fleet_keeps_the_previous_one() {
    let fleet = example_fleet();
    let s = start(fleet.path(), &[]);
    let inv = fleet.path().join("inventory/muc.yaml");
    let good = std::fs::read_to_string(&inv).unwrap();
    std::fs::write(
        &inv,
        good.replace("mac: \"52:54:00:3c:00:05\"", "mac: \"52:54:00:3c:00:55\""),
    )
    .unwrap();
    let hup = |pid: u32| {
        assert!(Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .unwrap()
            .success())
    };
    hup(s.child.id());
    let deadline = Instant::now() + Duration::from_secs(20);
    while get(s.port, "/ipxe?mac=52:54:00:3c:00:55").0 != 200 {
        assert!(Instant::now() < deadline, "reload did not happen");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(get(s.port, "/ipxe?mac=52:54:00:3c:00:05").0, 404);

    std::fs::write(
        &inv,
        good.replace("mac: \"52:54:00:3c:00:05\"", "mac: \"bogus\""),
    )
    .unwrap();
    hup(s.child.id());
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&s.log)
        .unwrap()
        .contains("reload failed, still serving the previous fleet")
    {
        assert!(Instant::now() < deadline, "no reload failure logged");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        get(s.port, "/ipxe?mac=52:54:00:3c:00:55").0,
        200,
        "the previous fleet still serves"
    );
}

#[test]
fn the_dnsmasq_command_prints_a_config_dnsmasq_accepts() {
    let dnsmasq = require("dnsmasq", "dnsmasq-base");
    let fleet = example_fleet();
    for site in ["fra", "ber", "muc"] {
        let out = metalherd(fleet.path(), &["dnsmasq", "--site", site]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let conf = fleet.path().join(format!("{site}.conf"));
        std::fs::write(&conf, &out.stdout).unwrap();
        let r = Command::new(&dnsmasq)
            .arg("--test")
            .arg("-C")
            .arg(&conf)
            .output()
            .unwrap();
        assert!(r.status.success(), "{site}: {}", text(&r.stderr));
    }
}

fn post(port: u16, path: &str, auth: Option<&str>, body: &str) -> (u16, String) {
    let mut req = format!("POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n", body.len());
    if let Some(a) = auth {
        req.push_str(&format!("Authorization: Bearer {a}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    let (status, _, body) = raw(port, req.as_bytes()).unwrap();
    (status, String::from_utf8_lossy(&body).to_string())
}

/// The report secret in a served final config.
fn report_secret(ignition: &str) -> String {
    let doc: serde_json::Value = serde_json::from_str(ignition).unwrap();
    let file = doc["storage"]["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == "/etc/metalherd/report-secret")
        .unwrap();
    file["contents"]["source"]
        .as_str()
        .unwrap()
        .strip_prefix("data:,")
        .unwrap()
        .to_string()
}

#[test]
fn reports_need_the_per_boot_secret_and_host_key_mismatches_are_flagged() {
    let fleet = example_fleet();
    // A RAM-only machine is served its final config directly.
    let inv = fleet.path().join("inventory/ber.yaml");
    let text = std::fs::read_to_string(&inv).unwrap();
    std::fs::write(&inv, text.replacen("    install_disk: /dev/sda\n", "", 1)).unwrap();
    let s = start(fleet.path(), &[]);
    let boot = |mac: &str| {
        boot(fleet.path(), &["arm", "ber-cp-01"]);
        let (_, script) = get(s.port, &format!("/ipxe?mac={mac}"));
        let (status, ign) = get(
            s.port,
            &format!("/ignition?mac={mac}&token={}", token_of(&script)),
        );
        assert_eq!(status, 200);
        ign
    };
    let ign = boot("52:54:00:be:00:01");
    let secret = report_secret(&ign);
    assert_eq!(secret.len(), 32);
    assert!(secret.bytes().all(|b| b.is_ascii_hexdigit()), "{secret}");
    assert_ne!(
        report_secret(&boot("52:54:00:be:00:01")),
        secret,
        "a fresh secret per boot"
    );
    let ign = boot("52:54:00:be:00:01");
    let secret = report_secret(&ign);

    let pubkey = std::fs::read_to_string(
        fleet
            .path()
            .join(".metalherd/state/hostkeys/ber/ber-cp-01/ssh_host_ed25519_key.pub"),
    )
    .unwrap();
    let fingerprint = ssh_key::PublicKey::from_openssh(pubkey.trim())
        .unwrap()
        .fingerprint(ssh_key::HashAlg::Sha256)
        .to_string();
    let good = format!("{{\"host_key_fingerprint\":\"{fingerprint}\"}}");
    assert_eq!(post(s.port, "/report/ber-cp-01", None, &good).0, 401);
    assert_eq!(
        post(
            s.port,
            "/report/ber-cp-01",
            Some("00000000000000000000000000000000"),
            &good
        )
        .0,
        401
    );
    assert_eq!(post(s.port, "/report/nobody", Some(&secret), &good).0, 404);
    assert_eq!(
        post(
            s.port,
            "/report/ber-cp-01",
            Some(&secret),
            &"x".repeat(5000)
        )
        .0,
        413
    );
    assert_eq!(
        post(s.port, "/report/ber-cp-01", Some(&secret), "{}").0,
        400
    );
    assert_eq!(
        post(s.port, "/report/ber-cp-01", Some(&secret), &good),
        (200, "recorded\n".to_string())
    );

    let m = machine_status(s.port, "ber-cp-01");
    assert_eq!(
        (m["stage"].as_str(), m["host_key_mismatch"].as_bool()),
        (Some("reported"), Some(false)),
        "{m}"
    );

    let forged =
        "{\"host_key_fingerprint\":\"SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\"}";
    let (status, said) = post(s.port, "/report/ber-cp-01", Some(&secret), forged);
    assert_eq!(
        (status, said.as_str()),
        (200, "recorded; host key MISMATCH\n")
    );
    let (_, machines) = get(s.port, "/api/v1/machines");
    assert!(
        machines.contains("\"host_key_mismatch\":true"),
        "{machines}"
    );
    let log = std::fs::read_to_string(&s.log).unwrap();
    assert!(log.contains("ber-cp-01: reported host key"), "{log}");
    assert!(!log.contains(&secret), "report secrets never reach the log");

    // A machine with an install stage gets the secret inside its embedded config.
    let (_, script) = get(s.port, "/ipxe?mac=52:54:00:fa:00:02");
    let (_, install) = get(
        s.port,
        &format!(
            "/ignition?mac=52:54:00:fa:00:02&token={}",
            token_of(&script)
        ),
    );
    assert!(!install.contains("metalherdreportsecretplaceholder"));
    let embedded = install
        .split("data:,")
        .find(|p| p.contains("report-secret"))
        .unwrap();
    assert!(
        embedded.contains("%2Fetc%2Fmetalherd%2Freport-secret"),
        "the final config is embedded percent-encoded"
    );
}

/// The server process's resident memory, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// Four clients abuse the boot server from loopback at once, bounded in
/// count and time: malformed requests, a 1 MiB header, a 1 MiB report
/// body, /ipxe for unknown MACs and replays of a used token. No 5xx, the
/// replays are refused and counted exactly, memory stays bounded, and a
/// legitimate machine boots all the way (iPXE, Ignition with its token,
/// its first-boot report) while the flood runs.
#[test]
fn abuse_from_loopback_gets_no_5xx_bounded_memory_and_a_real_boot_goes_through() {
    let fleet = example_fleet();
    // A RAM-only machine is served its final config (with the report secret).
    let inv = fleet.path().join("inventory/ber.yaml");
    let body = std::fs::read_to_string(&inv).unwrap();
    std::fs::write(&inv, body.replace("    install_disk: /dev/sda\n", "")).unwrap();
    let s = start(fleet.path(), &[]);
    boot(fleet.path(), &["disarm", "muc-cp-01"]);
    // ber-cp-02 got its Ignition: any further request in its window is
    // a possible theft.
    let (_, script) = get(s.port, "/ipxe?mac=52:54:00:be:00:02");
    let token = token_of(&script);
    assert_eq!(
        get(
            s.port,
            &format!("/ignition?mac=52:54:00:be:00:02&token={token}")
        )
        .0,
        200
    );
    let port = s.port;
    // A token used once, to be replayed by the flood.
    let (_, script) = get(port, "/ipxe?mac=52:54:00:fa:00:02");
    let used = token_of(&script);
    assert_eq!(
        get(
            port,
            &format!("/ignition?mac=52:54:00:fa:00:02&token={used}")
        )
        .0,
        200
    );
    let warm = rss_kib(s.child.id());

    let big_header = format!(
        "GET /ipxe?mac=52:54:00:fa:00:01 HTTP/1.1\r\nHost: x\r\nX-Junk: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(1 << 20)
    );
    let big_report = format!(
        "POST /report/fra-cp-01 HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nAuthorization: Bearer x\r\nConnection: close\r\n\r\n{}",
        1 << 20,
        "{".repeat(1 << 20)
    );
    let replay = format!(
        "GET /ignition?mac=52:54:00:fa:00:02&token={used} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    );
    let requests: Vec<Vec<u8>> = vec![
        b"GARBAGE\r\n\r\n".to_vec(),
        b"GET /ipxe?mac=%zz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(),
        b"GET /ipxe?mac=02:00:00:00:00:99 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(),
        b"GET /ignition?mac=52:54:00:fa:00:01&token=zz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(),
        b"GET /assets/../../etc/passwd HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(),
        big_header.into_bytes(),
        big_report.into_bytes(),
        replay.into_bytes(),
        // ber-cp-02's Ignition was delivered in its window: a possible theft.
        b"GET /ipxe?mac=52:54:00:be:00:02 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(),
        // muc-cp-01 has no window: the local-boot script.
        b"GET /ipxe?mac=52:54:00:3c:00:01 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(),
    ];
    let requests = std::sync::Arc::new(requests);
    let deadline = Instant::now() + Duration::from_secs(90);
    let flood: Vec<_> = (0..4)
        .map(|t| {
            let requests = requests.clone();
            std::thread::spawn(move || {
                // (request kind, status) -> count; status 0: the server
                // closed the connection without an answer.
                let mut seen = std::collections::BTreeMap::<(usize, u16), u64>::new();
                for i in 0..1500 {
                    if Instant::now() > deadline {
                        break;
                    }
                    let which = (i + t) % requests.len();
                    let status = raw(port, &requests[which]).map_or(0, |(s, _, _)| s);
                    *seen.entry((which, status)).or_default() += 1;
                }
                seen
            })
        })
        .collect();

    // Meanwhile, a real machine boots.
    std::thread::sleep(Duration::from_millis(200));
    let (status, script) = get(port, "/ipxe?mac=52:54:00:be:00:01");
    assert_eq!(status, 200);
    let (status, ign) = get(
        port,
        &format!(
            "/ignition?mac=52:54:00:be:00:01&token={}",
            token_of(&script)
        ),
    );
    assert_eq!(
        status, 200,
        "the legitimate boot gets its Ignition during the flood"
    );
    let pubkey = std::fs::read_to_string(
        fleet
            .path()
            .join(".metalherd/state/hostkeys/ber/ber-cp-01/ssh_host_ed25519_key.pub"),
    )
    .unwrap();
    let fingerprint = ssh_key::PublicKey::from_openssh(pubkey.trim())
        .unwrap()
        .fingerprint(ssh_key::HashAlg::Sha256)
        .to_string();
    let report = format!("{{\"host_key_fingerprint\":\"{fingerprint}\"}}");
    let (status, said) = post(
        port,
        "/report/ber-cp-01",
        Some(&report_secret(&ign)),
        &report,
    );
    assert!(status < 300, "report: {status} {said}");
    assert_eq!(machine_status(port, "ber-cp-01")["stage"], "reported");

    let mut all = std::collections::BTreeMap::<(usize, u16), u64>::new();
    for f in flood {
        for (k, v) in f.join().expect("a flood thread failed") {
            *all.entry(k).or_default() += v;
        }
    }
    eprintln!("flood, (request kind, status) -> count: {all:?}; RSS {warm} KiB before");
    let of_kind = |kind: usize| -> Vec<u16> {
        all.keys()
            .filter(|(k, _)| *k == kind)
            .map(|(_, s)| *s)
            .collect()
    };
    let answered: u64 = all
        .iter()
        .filter(|((_, s), _)| *s > 0)
        .map(|(_, n)| n)
        .sum();
    assert!(answered > 1000, "the flood ran: {all:?}");
    assert!(all.keys().all(|(_, s)| *s < 500), "no 5xx: {all:?}");
    // The 1 MiB header: refused (431), or the connection closed unanswered.
    assert!(of_kind(5).iter().all(|s| [431, 0].contains(s)), "{all:?}");
    // The 1 MiB report: refused by the body limit before any secret check.
    assert!(of_kind(6).iter().all(|s| [413, 0].contains(s)), "{all:?}");
    assert!(of_kind(6).contains(&413), "{all:?}");
    // Every replay refused, and counted.
    assert_eq!(of_kind(7), [403], "{all:?}");
    let replays = all[&(7, 403)];
    assert_eq!(
        metric(port, "metalherd_ignition_replays_total"),
        replays,
        "every replay counted"
    );
    assert_eq!(of_kind(8), [403], "{all:?}");
    assert_eq!(
        metric(port, "metalherd_ignition_possible_thefts_total"),
        all[&(8, 403)],
        "every request after the delivery counted"
    );
    assert_eq!(of_kind(9), [200], "{all:?}");
    assert_eq!(
        metric(port, "metalherd_boot_outside_window_total"),
        all[&(9, 200)],
        "every request outside a window counted"
    );
    let after = rss_kib(s.child.id());
    eprintln!("RSS after the flood: {after} KiB");
    assert!(
        after < warm + 64 * 1024,
        "memory stays bounded: {warm} KiB before, {after} KiB after"
    );
    assert_eq!(get(port, "/healthz").0, 200);
}
