//! Fleet metrics and the shipped alert rules, with the real Prometheus
//! tools: `promtool check metrics` on what `metalherd metrics` (stdout and
//! `--textfile`) and `metalherd serve`'s `/metrics` expose, from a state
//! with several sites and generations, a drained site, a held lock, a
//! failed replace and a quarantined machine, the values checked against
//! that state; a real Prometheus scraping `serve`; `promtool check rules`
//! and `promtool test rules` on `monitoring/metalherd.rules.yaml`.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use metalherd::state::journal::Journal;
use metalherd::state::records::{self, MachineRecord, MachineState};
use metalherd::state::{Expect, Holder, LockGuard};

use super::serve::{get, start_unarmed};
use super::{example_fleet, metalherd, repo, require, text};

/// A helper process the test started, stopped by PID when the test ends
/// (also when it fails).
struct Kill(std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn promtool() -> std::path::PathBuf {
    require("promtool", "prometheus")
}

/// `promtool check metrics` on `exposition`: its verdict and what it said.
fn check_metrics(exposition: &str) -> (bool, String) {
    let mut child = Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!("{}{}", text(&out.stdout), text(&out.stderr)),
    )
}

/// The value of the one sample of `name` whose labels include every one
/// of `labels` (`site="fra"`).
fn sample(exposition: &str, name: &str, labels: &[&str]) -> Option<f64> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .find(|l| labels.iter().all(|want| l.contains(want)))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// A state to watch: fra at generation 2 (with its PKI) whose second
/// replace failed, ber at generation 1 and drained, muc without a
/// generation and with a quarantined machine, a drill of muc that
/// succeeded. Returns the lock guard of `sites/ber`, held by this process.
fn watched_state(dir: &Path, rt: &tokio::runtime::Runtime) -> Box<dyn LockGuard> {
    let fleet = metalherd::fleet::load(dir).unwrap();
    let (store, sealer) = metalherd::state::open(&fleet).unwrap();
    let store = store.as_ref();
    let holder = Holder::current("replace site ber");
    rt.block_on(async {
        for (site, generation) in [("fra", 2), ("ber", 1)] {
            records::update_site(store, site, |r| r.generation = generation)
                .await
                .unwrap();
        }
        let fra = fleet.site("fra").unwrap();
        metalherd::pki::load_or_create(store, &sealer, fra, 2, 30)
            .await
            .unwrap();
        records::set_drained(store, "ber", Some("drill".into()))
            .await
            .unwrap();
        for m in ["fra-cp-01", "fra-cp-02", "fra-cp-03"] {
            let record = MachineRecord::now(MachineState::Ready, Some(2));
            records::put_machine(store, m, &record, Expect::Any)
                .await
                .unwrap();
        }
        let record = MachineRecord::now(MachineState::Quarantined, None);
        records::put_machine(store, "muc-wk-01", &record, Expect::Any)
            .await
            .unwrap();
        let ok = Journal::begin(store, "replace", "site/fra", &holder)
            .await
            .unwrap();
        ok.finish(None).await.unwrap();
        let failed = Journal::begin(store, "replace", "site/fra", &holder)
            .await
            .unwrap();
        failed
            .finish(Some("boot: fra-wk-01 timed out".into()))
            .await
            .unwrap();
        let drill = Journal::begin(store, "drill", "site/muc", &holder)
            .await
            .unwrap();
        drill.finish(None).await.unwrap();
        store
            .lock("sites/ber", &holder, Duration::from_secs(3600))
            .await
            .unwrap()
    })
}

/// The values the state above must show, in `exposition`.
fn assert_shows_the_state(exposition: &str) {
    let at = |name: &str, labels: &[&str]| {
        sample(exposition, name, labels)
            .unwrap_or_else(|| panic!("no {name}{labels:?} in:\n{exposition}"))
    };
    assert_eq!(at("metalherd_site_generation", &["site=\"fra\""]), 2.0);
    assert_eq!(at("metalherd_site_generation", &["site=\"ber\""]), 1.0);
    assert_eq!(at("metalherd_site_generation", &["site=\"muc\""]), 0.0);
    let expiry = at(
        "metalherd_site_certificates_expiry_timestamp_seconds",
        &["site=\"fra\"", "generation=\"2\""],
    );
    let in_days = (expiry - now()) / 86400.0;
    assert!(
        (29.0..=30.5).contains(&in_days),
        "fra's certificates (30-day) expire in {in_days} days"
    );
    assert_eq!(at("metalherd_site_drained", &["site=\"ber\""]), 1.0);
    assert_eq!(at("metalherd_site_drained", &["site=\"fra\""]), 0.0);
    let since = at(
        "metalherd_site_drained_since_timestamp_seconds",
        &["site=\"ber\""],
    );
    assert!((now() - since).abs() < 600.0, "drained since {since}");
    assert_eq!(
        at("metalherd_machines", &["site=\"fra\"", "state=\"ready\""]),
        3.0
    );
    assert_eq!(
        at(
            "metalherd_machines",
            &["site=\"fra\"", "state=\"available\""]
        ),
        3.0
    );
    assert_eq!(
        at(
            "metalherd_machines",
            &["site=\"muc\"", "state=\"quarantined\""]
        ),
        1.0
    );
    assert_eq!(
        at(
            "metalherd_machine_quarantined",
            &["site=\"muc\"", "machine=\"muc-wk-01\""]
        ),
        1.0
    );
    let replace = ["operation=\"replace\"", "target=\"fra\""];
    assert_eq!(at("metalherd_operation_last_succeeded", &replace), 0.0);
    assert_eq!(at("metalherd_operation_running", &replace), 0.0);
    let success = at(
        "metalherd_operation_last_success_timestamp_seconds",
        &replace,
    );
    let end = at("metalherd_operation_last_end_timestamp_seconds", &replace);
    assert!(success <= end && now() - end < 600.0, "{success} {end}");
    let drill = ["operation=\"drill\"", "target=\"muc\""];
    assert_eq!(at("metalherd_operation_last_succeeded", &drill), 1.0);
    let since = at(
        "metalherd_lock_held_since_timestamp_seconds",
        &["lock=\"sites/ber\"", "operation=\"replace site ber\""],
    );
    assert!((now() - since).abs() < 600.0, "lock since {since}");
    assert_eq!(at("metalherd_lock_stale", &["lock=\"sites/ber\""]), 0.0);
}

#[test]
fn fleet_metrics_pass_promtool_and_show_what_the_state_holds() {
    let fleet = example_fleet();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let guard = watched_state(fleet.path(), &rt);

    let out = metalherd(fleet.path(), &["metrics"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let exposition = text(&out.stdout);
    let (ok, said) = check_metrics(&exposition);
    assert!(ok, "promtool check metrics: {said}\n{exposition}");
    assert!(exposition.contains("# HELP metalherd_site_generation "));
    assert!(exposition.contains("# TYPE metalherd_site_generation gauge"));
    assert_shows_the_state(&exposition);

    // The textfile for node_exporter: written whole, readable by it.
    let file = fleet.path().join("metalherd.prom");
    let out = metalherd(
        fleet.path(),
        &["metrics", "--textfile", file.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let written = std::fs::read_to_string(&file).unwrap();
    let (ok, said) = check_metrics(&written);
    assert!(ok, "promtool check metrics (textfile): {said}");
    assert_shows_the_state(&written);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644);

    // --site narrows the sites; an unknown one is refused.
    let out = metalherd(fleet.path(), &["metrics", "--site", "ber"]);
    let only = text(&out.stdout);
    assert!(
        only.contains("site=\"ber\"") && !only.contains("site=\"fra\""),
        "{only}"
    );
    let out = metalherd(fleet.path(), &["metrics", "--site", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    drop(guard);
}

/// A real Prometheus scrapes `metalherd serve`'s `/metrics`; its query API
/// returns the fleet's series.
#[test]
fn a_real_prometheus_scrapes_the_boot_server_and_answers_queries() {
    let prometheus = require("prometheus", "prometheus");
    let fleet = example_fleet();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let guard = watched_state(fleet.path(), &rt);
    let server = start_unarmed(fleet.path(), &[]);
    let (status, exposition) = get(server.port, "/metrics");
    assert_eq!(status, 200);
    let (ok, said) = check_metrics(&exposition);
    assert!(ok, "promtool check metrics (serve): {said}\n{exposition}");
    assert!(exposition.contains("metalherd_http_requests_total"));
    assert_shows_the_state(&exposition);

    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{ scrape_interval: 1s, evaluation_interval: 1s }}\n\
             rule_files: [{}]\n\
             scrape_configs:\n  - job_name: metalherd\n    static_configs:\n      - targets: ['127.0.0.1:{}']\n",
            repo().join("monitoring/metalherd.rules.yaml").display(),
            server.port
        ),
    )
    .unwrap();
    let log = dir.path().join("prometheus.log");
    let child = Command::new(&prometheus)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let _prometheus = Kill(child);
    let query = |q: &str| -> Option<serde_json::Value> {
        let path = format!("/api/v1/query?query={q}");
        let (status, _, body) = super::serve::try_get(port, &path, &[]).ok()?;
        (status == 200).then(|| serde_json::from_slice(&body).ok())?
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let result = loop {
        if let Some(doc) = query("metalherd_site_generation") {
            let series = doc["data"]["result"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if series.len() == 3 {
                break series;
            }
        }
        if Instant::now() > deadline {
            panic!(
                "prometheus returned no metalherd series within 60 s:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let value = |site: &str| {
        result
            .iter()
            .find(|s| s["metric"]["site"] == site)
            .and_then(|s| s["value"][1].as_str())
            .map(str::to_string)
    };
    assert_eq!(value("fra").as_deref(), Some("2"), "{result:?}");
    assert_eq!(value("ber").as_deref(), Some("1"), "{result:?}");
    assert_eq!(value("muc").as_deref(), Some("0"), "{result:?}");
    // The shipped rules load and evaluate against the scraped series:
    // fra's failed replace fires.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let firing = query("ALERTS%7Balertname%3D%22MetalherdReplaceFailed%22%7D")
            .and_then(|doc| doc["data"]["result"].as_array().cloned())
            .unwrap_or_default();
        if firing.iter().any(|a| a["metric"]["target"] == "fra") {
            break;
        }
        if Instant::now() > deadline {
            panic!(
                "MetalherdReplaceFailed did not fire for fra:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    drop(guard);
}

#[test]
fn the_shipped_alert_rules_pass_promtool_check_and_their_unit_tests() {
    let rules = repo().join("monitoring/metalherd.rules.yaml");
    let out = Command::new(promtool())
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool check rules: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains("SUCCESS: 8 rules found"),
        "{}",
        text(&out.stdout)
    );
    let out = Command::new(promtool())
        .args(["test", "rules", "metalherd.rules.test.yaml"])
        .current_dir(repo().join("tests/alerts"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool test rules: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    // Every shipped alert has a unit test.
    let tests =
        std::fs::read_to_string(repo().join("tests/alerts/metalherd.rules.test.yaml")).unwrap();
    for line in std::fs::read_to_string(&rules).unwrap().lines() {
        if let Some(name) = line.trim().strip_prefix("- alert: ") {
            assert!(
                tests.contains(&format!("alertname: {name}")),
                "alert {name} has no promtool unit test"
            );
        }
    }
}

/// The `alarms` blocker against a real Alertmanager (Debian's
/// `prometheus-alertmanager`, on loopback, clustering off): no alert,
/// nothing blocks; an active alert blocks `plan` by name; silenced, it
/// no longer does.
#[test]
fn the_alarms_blocker_reads_a_real_alertmanager() {
    let alertmanager = require("prometheus-alertmanager", "prometheus-alertmanager");
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.path().join("alertmanager.yml");
    std::fs::write(
        &config,
        "route: { receiver: nobody }\nreceivers: [ { name: nobody } ]\n",
    )
    .unwrap();
    let log = dir.path().join("alertmanager.log");
    let child = Command::new(&alertmanager)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--cluster.listen-address=")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut alertmanager = Kill(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !matches!(
        super::serve::try_get(port, "/-/ready", &[]),
        Ok((200, _, _))
    ) {
        assert!(
            Instant::now() < deadline,
            "alertmanager did not start: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        if let Ok(Some(status)) = alertmanager.0.try_wait() {
            panic!(
                "alertmanager exited ({status}): {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let post = |path: &str, body: &str| -> (u16, String) {
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let (status, _, body) = super::serve::raw(port, request.as_bytes()).unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    };

    let fleet = example_fleet();
    let fleet_yaml = fleet.path().join("inventory/fleet.yaml");
    let mut text_of = std::fs::read_to_string(&fleet_yaml).unwrap();
    text_of.push_str(&format!("alarms:\n  url: http://127.0.0.1:{port}\n"));
    std::fs::write(&fleet_yaml, text_of).unwrap();
    let alarms = || -> serde_json::Value {
        let out = metalherd(
            fleet.path(),
            &["--output", "json", "plan", "site", "fra", "--no-probe"],
        );
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("plan: not JSON ({e}): {}", text(&out.stderr)));
        doc["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "alarms")
            .cloned()
            .unwrap_or_else(|| panic!("no alarms check: {doc}"))
    };
    let quiet = alarms();
    assert_eq!(quiet["ok"], true, "{quiet}");

    let starts = "2020-01-01T00:00:00Z";
    let (status, said) = post(
        "/api/v2/alerts",
        &format!(
            r#"[{{"labels":{{"alertname":"EtcdNoLeader","site":"ber"}},"startsAt":"{starts}"}}]"#
        ),
    );
    assert_eq!(status, 200, "posting an alert: {said}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let firing = loop {
        let check = alarms();
        if check["ok"] == false {
            break check;
        }
        assert!(
            Instant::now() < deadline,
            "the alert never blocked: {check}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let detail = firing["detail"].as_str().unwrap();
    assert!(
        detail.contains("1 active alert(s)") && detail.contains("EtcdNoLeader"),
        "{firing}"
    );

    // Silenced, it is not active any more.
    let (status, said) = post(
        "/api/v2/silences",
        r#"{"matchers":[{"name":"alertname","value":"EtcdNoLeader","isRegex":false}],"startsAt":"2020-01-01T00:00:00Z","endsAt":"2099-01-01T00:00:00Z","createdBy":"metalherd test","comment":"maintenance"}"#,
    );
    assert_eq!(status, 200, "posting a silence: {said}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let check = alarms();
        if check["ok"] == true {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the silenced alert still blocks: {check}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
