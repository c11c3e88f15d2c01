//! The scale benchmark's entry point ([`bench`]), which
//! `bench/site-scale` runs once per site size, and its report.

use std::time::Duration;

use serde_json::{json, Value};

use super::super::machines::all;
use super::{args, failures, phases_of, tuning, Run, Scale, Shape};

fn env_or(key: &str, default: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| default.to_string())
}

fn secs(text: &str) -> Duration {
    Duration::from_secs_f64(text.parse().unwrap_or_else(|e| panic!("{text:?}: {e}")))
}

/// One run's line of the report.
fn run_report(s: &Scale, name: &str, run: &Run, serve_before: (f64, u64)) -> Value {
    let doc: Value = serde_json::from_slice(&run.out.stdout).unwrap_or(Value::Null);
    let serve = s.boot_server_usage();
    let phases: Vec<Value> = phases_of(&doc)
        .iter()
        .map(|p| json!({ "name": p["name"], "s": p["duration_ms"].as_f64().unwrap_or(0.0) / 1000.0, "ok": p["ok"] }))
        .collect();
    let failed: Vec<Value> = failures(&doc)
        .into_iter()
        .map(
            |(machine, phase, error)| json!({ "machine": machine, "phase": phase, "error": error }),
        )
        .collect();
    let states = s.machine_states();
    let not_ready: Vec<&str> = s
        .serving()
        .into_iter()
        .filter(|m| states.get(*m).map(String::as_str) != Some("ready"))
        .collect();
    json!({
        "run": name,
        "ready": s.serving().len() - not_ready.len(),
        "not_ready": not_ready,
        "exit": run.out.status.code(),
        "wall_s": run.wall.as_secs_f64(),
        "beyond_boot_delay_s": run.wall.as_secs_f64() - s.shape.boot_delay.as_secs_f64(),
        "cpu_s": run.cpu,
        "peak_rss_mib": run.peak_rss_kib.map(|k| k as f64 / 1024.0),
        "ssh_peak": run.ssh_peak,
        "bmc_in_flight_peak": run.bmc_peak,
        "boot_server_cpu_s": serve.0 - serve_before.0,
        "phases": phases,
        "failed": failed,
        "set_aside": doc["set_aside"].as_array().or_else(|| doc["report"]["set_aside"].as_array()).map_or(0, Vec::len),
        "state_io": doc.get("state_io").or_else(|| doc["report"].get("state_io")).cloned(),
        "json_bytes": run.out.stdout.len(),
        "recovery_s": doc["recovery_ms"].as_f64().map(|ms| ms / 1000.0),
        "error": doc["error"].as_str().map(str::to_string).or_else(|| (!run.out.status.success()).then(|| all(&run.out))),
    })
}

/// The benchmark `bench/site-scale` runs, one site size per run:
/// `SCALE_N` machines (default 30), `SCALE_BOOT_DELAY` and `SCALE_JITTER`
/// seconds (default 10 and 3), `SCALE_FAULTS=1` for the faults
/// (healed before a rerun), `SCALE_PARALLEL` for `--parallel`,
/// `SCALE_BMC_PARALLEL` for `--bmc-parallel`,
/// `SCALE_BACKEND=etcd` for the state in etcd (default `local`),
/// `SCALE_METALHERD` for the binary (the bench's release build).
/// Provisions ber and muc as small healthy sites (three control planes
/// and a worker each), then runs `provision site fra`, `replace site
/// fra` and `drill site fra --rebuild`, the last two without `--force`
/// (the safety checks find ber and muc healthy), and writes the report as
/// JSON to `SCALE_OUT` (and prints it).
#[test]
#[ignore = "a benchmark: bench/site-scale runs it"]
fn bench() {
    let n: usize = env_or("SCALE_N", "30").parse().unwrap();
    let shape = Shape::new(
        n,
        secs(&env_or("SCALE_BOOT_DELAY", "10")),
        secs(&env_or("SCALE_JITTER", "3")),
    );
    let faults = env_or("SCALE_FAULTS", "0") == "1";
    let mut shape = if faults { shape.with_faults() } else { shape };
    shape.etcd = match env_or("SCALE_BACKEND", "local").as_str() {
        "local" => false,
        "etcd" => true,
        other => panic!("SCALE_BACKEND={other}: local or etcd"),
    };
    shape.other_sites = true;
    let mut s = Scale::start(shape);
    eprintln!(
        "{n} machines: hosts up in {:.1} s; {} processes, {:.0} MiB PSS",
        s.host_setup.as_secs_f64(),
        s.host_memory.0,
        s.host_memory.1 as f64 / 1024.0
    );
    let faults_json = json!({
        "bmc_refusing": s.shape.bmc_refusing, "bmc_silent": s.shape.bmc_silent, "ssh_silent": s.shape.ssh_silent,
    });
    let tail = tuning(&s.shape, 60);
    // The small sites first: fra's runs all see them up (their etcd
    // members idle on the same cores).
    let mut other_sites = serde_json::Map::new();
    for site in ["ber", "muc"] {
        let run = s.metalherd(&args(&["provision", "site", site], &tail));
        assert!(
            run.out.status.success(),
            "provision site {site}: {}",
            all(&run.out)
        );
        eprintln!("provision {site}: {:.1} s", run.wall.as_secs_f64());
        other_sites.insert(
            site.into(),
            json!({ "provision_s": run.wall.as_secs_f64() }),
        );
    }
    s.firmware.settle(Duration::from_secs(120));
    let mut runs = Vec::new();
    let provision = args(&["--output", "json", "provision", "site", "fra"], &tail);
    let serve = s.boot_server_usage();
    let run = s.metalherd(&provision);
    eprintln!(
        "provision: exit {:?} in {:.1} s",
        run.out.status.code(),
        run.wall.as_secs_f64()
    );
    runs.push(run_report(&s, "provision", &run, serve));
    if faults {
        s.firmware.settle(Duration::from_secs(120));
        s.heal();
        let serve = s.boot_server_usage();
        let run = s.metalherd(&provision);
        eprintln!(
            "rerun: exit {:?} in {:.1} s",
            run.out.status.code(),
            run.wall.as_secs_f64()
        );
        runs.push(run_report(&s, "provision rerun", &run, serve));
    }
    s.firmware.settle(Duration::from_secs(120));
    let replace = args(
        &["--output", "json", "replace", "site", "fra", "--bake", "0"],
        &tail,
    );
    let serve = s.boot_server_usage();
    let run = s.metalherd(&replace);
    eprintln!(
        "replace: exit {:?} in {:.1} s",
        run.out.status.code(),
        run.wall.as_secs_f64()
    );
    runs.push(run_report(&s, "replace", &run, serve));
    s.firmware.settle(Duration::from_secs(120));
    let reports = tempfile::tempdir().unwrap();
    let drill = args(
        &[
            "--output",
            "json",
            "drill",
            "site",
            "fra",
            "--rebuild",
            "--bake",
            "0",
            "--reports",
            reports.path().to_str().unwrap(),
        ],
        &tail,
    );
    let serve = s.boot_server_usage();
    let run = s.metalherd(&drill);
    eprintln!(
        "drill: exit {:?} in {:.1} s",
        run.out.status.code(),
        run.wall.as_secs_f64()
    );
    runs.push(run_report(&s, "drill --rebuild", &run, serve));
    s.firmware.settle(Duration::from_secs(120));
    let counts = s.firmware.counts();
    let (serve_cpu, serve_rss) = s.boot_server_usage();
    let (sushy_cpu, sushy_rss) = s.sushy_usage();
    let report = json!({
        "machines": n,
        "serving": s.serving().len(),
        "spares": n - s.serving().len(),
        "boot_delay_s": s.shape.boot_delay.as_secs_f64(),
        "jitter_s": s.shape.jitter.as_secs_f64(),
        "parallel": std::env::var("SCALE_PARALLEL").ok(),
        "bmc_parallel": std::env::var("SCALE_BMC_PARALLEL").ok(),
        "backend": if s.shape.etcd { "etcd" } else { "local" },
        "faults": faults_json,
        "other_sites": other_sites,
        "host_setup_s": s.host_setup.as_secs_f64(),
        "host_processes": s.host_memory.0,
        "host_pss_mib": s.host_memory.1 as f64 / 1024.0,
        "runs": runs,
        "boot_server": { "cpu_s": serve_cpu, "peak_rss_mib": serve_rss as f64 / 1024.0 },
        "sushy": { "cpu_s": sushy_cpu, "peak_rss_mib": sushy_rss as f64 / 1024.0 },
        "notifications": *s.firmware.board.notifications.lock().unwrap(),
        "firmware": {
            "power_ons": counts.iter().map(|c| c.power_ons).sum::<usize>(),
            "power_offs": counts.iter().map(|c| c.power_offs).sum::<usize>(),
            "network_boots": counts.iter().map(|c| c.network_boots).sum::<usize>(),
            "local_boots": counts.iter().map(|c| c.local_boots).sum::<usize>(),
            "failed_boot_attempts": counts.iter().map(|c| c.failed_boots).sum::<usize>(),
            "errors": counts.iter().flat_map(|c| c.errors.clone()).collect::<Vec<_>>(),
        },
    });
    let pretty = serde_json::to_string_pretty(&report).unwrap();
    println!("{pretty}");
    if let Ok(path) = std::env::var("SCALE_OUT") {
        std::fs::write(path, pretty).unwrap();
    }
}
