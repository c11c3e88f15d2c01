//! The boot server's Prometheus metrics: requests by endpoint and status,
//! a latency histogram per endpoint, Ignition replays and possible thefts,
//! requests outside provisioning windows, and unknown MACs.
//! Plain counters under one mutex: a boot storm is thousands of requests
//! a second, far below what that costs.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

const BUCKETS: [f64; 10] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0,
];

#[derive(Default)]
struct Inner {
    requests: BTreeMap<(String, u16), u64>,
    /// Per endpoint: counts per bucket (cumulative at render), sum, count.
    latency: BTreeMap<String, ([u64; BUCKETS.len()], f64, u64)>,
    replays: u64,
    thefts: u64,
    unknown_mac: u64,
    outside_window: u64,
}

#[derive(Default)]
pub struct Metrics(Mutex<Inner>);

impl Metrics {
    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        let mut guard = self.0.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    pub fn request(&self, endpoint: &str, status: u16, took: Duration) {
        let secs = took.as_secs_f64();
        self.with(|m| {
            *m.requests
                .entry((endpoint.to_string(), status))
                .or_default() += 1;
            let (buckets, sum, count) = m.latency.entry(endpoint.to_string()).or_default();
            if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
                buckets[i] += 1;
            }
            *sum += secs;
            *count += 1;
        });
    }

    pub fn replay(&self) {
        self.with(|m| m.replays += 1);
    }

    pub fn possible_theft(&self) {
        self.with(|m| m.thefts += 1);
    }

    pub fn outside_window(&self) {
        self.with(|m| m.outside_window += 1);
    }

    pub fn unknown_mac(&self) {
        self.with(|m| m.unknown_mac += 1);
    }

    /// The Prometheus text exposition format.
    pub fn render(&self) -> String {
        self.with(|m| {
            let mut out = String::new();
            out.push_str("# HELP metalherd_http_requests_total Requests by endpoint and status.\n");
            out.push_str("# TYPE metalherd_http_requests_total counter\n");
            for ((endpoint, status), n) in &m.requests {
                let _ = writeln!(out, "metalherd_http_requests_total{{endpoint=\"{endpoint}\",status=\"{status}\"}} {n}");
            }
            out.push_str("# HELP metalherd_http_request_duration_seconds Request latency.\n");
            out.push_str("# TYPE metalherd_http_request_duration_seconds histogram\n");
            for (endpoint, (buckets, sum, count)) in &m.latency {
                let mut cumulative = 0;
                for (le, n) in BUCKETS.iter().zip(buckets) {
                    cumulative += n;
                    let _ = writeln!(
                        out,
                        "metalherd_http_request_duration_seconds_bucket{{endpoint=\"{endpoint}\",le=\"{le}\"}} {cumulative}"
                    );
                }
                let _ = writeln!(out, "metalherd_http_request_duration_seconds_bucket{{endpoint=\"{endpoint}\",le=\"+Inf\"}} {count}");
                let _ = writeln!(out, "metalherd_http_request_duration_seconds_sum{{endpoint=\"{endpoint}\"}} {sum}");
                let _ = writeln!(out, "metalherd_http_request_duration_seconds_count{{endpoint=\"{endpoint}\"}} {count}");
            }
            out.push_str("# HELP metalherd_ignition_replays_total Ignition requests with an already used token.\n");
            out.push_str("# TYPE metalherd_ignition_replays_total counter\n");
            let _ = writeln!(out, "metalherd_ignition_replays_total {}", m.replays);
            out.push_str("# HELP metalherd_ignition_possible_thefts_total Requests for a machine's iPXE script or Ignition refused because its config had gone to another request in its provisioning window.\n");
            out.push_str("# TYPE metalherd_ignition_possible_thefts_total counter\n");
            let _ = writeln!(out, "metalherd_ignition_possible_thefts_total {}", m.thefts);
            out.push_str("# HELP metalherd_boot_outside_window_total Requests for a machine's iPXE script or Ignition outside its provisioning window (answered without a token, or refused).\n");
            out.push_str("# TYPE metalherd_boot_outside_window_total counter\n");
            let _ = writeln!(out, "metalherd_boot_outside_window_total {}", m.outside_window);
            out.push_str("# HELP metalherd_unknown_mac_total Requests for MACs not in the inventory.\n");
            out.push_str("# TYPE metalherd_unknown_mac_total counter\n");
            let _ = writeln!(out, "metalherd_unknown_mac_total {}", m.unknown_mac);
            out
        })
    }
}
