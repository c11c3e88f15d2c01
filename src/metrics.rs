//! The fleet's state as Prometheus metrics, for alerts a platform team can
//! page on: per site the generation, when it was recorded, when its
//! certificates expire, whether it is drained and since when; per
//! operation and target the last run's end and result and the last
//! success; machines per lifecycle state; locks and since when; quarantined
//! machines. Times are Unix timestamps (seconds), so that a rule computes
//! an age with `time() - …` and a textfile written by a nightly job stays
//! true between runs.
//!
//! Read from the typed state records ([`Snapshot::read`]), then encoded by
//! `prometheus-client` ([`Snapshot::encode`]). `metalherd serve` appends it
//! to `/metrics`; `metalherd metrics --textfile FILE` writes it for
//! node_exporter's textfile collector.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;

use crate::fleet::{Fleet, SiteName};
use crate::state::journal::{OpRecord, Status};
use crate::state::records::{Key, MachineState, SiteRecord};
use crate::state::{get_json, StateError, StateStore};

/// One site as the metrics show it.
#[derive(Debug, Default, Serialize, PartialEq)]
pub struct SiteMetrics {
    pub site: String,
    /// 0 before the first provision.
    pub generation: u64,
    /// When the site's record last changed (the generation recorded).
    pub updated: Option<i64>,
    /// The earliest `notAfter` of the current generation's certificates.
    pub certificates_expire: Option<i64>,
    pub drained: bool,
    pub drained_since: Option<i64>,
    /// Machines per lifecycle state (every state, zeros included).
    pub machines: BTreeMap<&'static str, u64>,
    pub quarantined: Vec<String>,
}

/// The latest run of one operation on one target.
#[derive(Debug, Serialize, PartialEq)]
pub struct OperationMetrics {
    pub kind: String,
    /// The site, or the operation's target where it is not a site.
    pub target: String,
    pub running: bool,
    /// The last run's end, and whether it succeeded (none while running).
    pub last_end: Option<i64>,
    pub last_succeeded: Option<bool>,
    /// The last successful run's end.
    pub last_success: Option<i64>,
}

/// A lock held.
#[derive(Debug, Serialize, PartialEq)]
pub struct LockMetrics {
    pub lock: String,
    pub operation: String,
    pub since: Option<i64>,
    pub stale: bool,
}

/// What the state says, as the metrics will show it.
#[derive(Debug, Default, Serialize)]
pub struct Snapshot {
    pub sites: Vec<SiteMetrics>,
    pub operations: Vec<OperationMetrics>,
    pub locks: Vec<LockMetrics>,
}

const STATES: [MachineState; 6] = [
    MachineState::Available,
    MachineState::Provisioning,
    MachineState::Ready,
    MachineState::Draining,
    MachineState::Wiped,
    MachineState::Quarantined,
];

/// An RFC 3339 time as a Unix timestamp.
fn timestamp(text: &str) -> Option<i64> {
    text.parse::<jiff::Timestamp>().ok().map(|t| t.as_second())
}

impl Snapshot {
    /// Reads the state of `fleet`'s sites (`only` those, when given).
    pub async fn read(
        fleet: &Fleet,
        store: &dyn StateStore,
        only: &[SiteName],
    ) -> Result<Snapshot, StateError> {
        let mut snapshot = Snapshot::default();
        for site in &fleet.sites {
            if !only.is_empty() && !only.contains(&site.name) {
                continue;
            }
            let record = get_json::<SiteRecord>(store, &Key::site(&site.name))
                .await?
                .map(|(r, _)| r)
                .unwrap_or_default();
            let mut m = SiteMetrics {
                site: site.name.to_string(),
                generation: record.generation,
                updated: timestamp(&record.updated),
                drained: record.drained.is_some(),
                drained_since: record.drained_since.as_deref().and_then(timestamp),
                machines: STATES.iter().map(|s| (s.as_str(), 0)).collect(),
                ..SiteMetrics::default()
            };
            if record.generation > 0 {
                m.certificates_expire =
                    earliest_expiry(store, site.name.as_str(), record.generation).await?;
            }
            for machine in &site.machines {
                let state = get_json::<crate::state::records::MachineRecord>(
                    store,
                    &Key::machine(&machine.name),
                )
                .await?
                .map_or(MachineState::Available, |(r, _)| r.state);
                *m.machines.entry(state.as_str()).or_default() += 1;
                if state == MachineState::Quarantined {
                    m.quarantined.push(machine.name.to_string());
                }
            }
            snapshot.sites.push(m);
        }
        snapshot.operations = operations(store, &snapshot.sites).await?;
        snapshot.locks = store
            .locks()
            .await?
            .into_iter()
            .map(|l| LockMetrics {
                lock: l.name,
                operation: l.holder.operation,
                since: timestamp(&l.holder.since),
                stale: l.stale,
            })
            .collect();
        Ok(snapshot)
    }

    /// The Prometheus text exposition (OpenMetrics, as `prometheus-client`
    /// writes it; its closing `# EOF` is a comment to Prometheus's parser).
    pub fn encode(&self) -> String {
        type Labels = Vec<(String, String)>;
        type Float = Gauge<f64, AtomicU64>;
        let mut registry = Registry::default();
        let mut family = |name: &str, help: &str| {
            let f = Family::<Labels, Float>::default();
            registry.register(name, help, f.clone());
            f
        };
        let generation = family(
            "metalherd_site_generation",
            "The cluster generation recorded as running at the site (0: none yet)",
        );
        let updated = family(
            "metalherd_site_generation_recorded_timestamp_seconds",
            "When the site's generation was last recorded (Unix time)",
        );
        let expiry = family(
            "metalherd_site_certificates_expiry_timestamp_seconds",
            "The earliest notAfter of the current generation's certificates (Unix time); they are renewed only by replacing the generation",
        );
        let drained = family(
            "metalherd_site_drained",
            "1 while the site is drained (taken out of service), 0 otherwise",
        );
        let drained_since = family(
            "metalherd_site_drained_since_timestamp_seconds",
            "When the site was drained (Unix time), while it is",
        );
        let machines = family(
            "metalherd_machines",
            "The site's machines per lifecycle state",
        );
        let quarantined = family(
            "metalherd_machine_quarantined",
            "1 for each quarantined machine (until `metalherd release`)",
        );
        let running = family(
            "metalherd_operation_running",
            "1 while the latest run of the operation on the target has not finished",
        );
        let last_end = family(
            "metalherd_operation_last_end_timestamp_seconds",
            "When the latest finished run of the operation on the target ended (Unix time)",
        );
        let last_ok = family(
            "metalherd_operation_last_succeeded",
            "1 if the latest finished run of the operation on the target succeeded, 0 if it failed",
        );
        let last_success = family(
            "metalherd_operation_last_success_timestamp_seconds",
            "When the operation last succeeded on the target (Unix time)",
        );
        let lock_since = family(
            "metalherd_lock_held_since_timestamp_seconds",
            "When each held lock was taken (Unix time)",
        );
        let lock_stale = family(
            "metalherd_lock_stale",
            "1 if the lock's holder is gone (local state, same host), 0 otherwise",
        );
        let label = |pairs: &[(&str, &str)]| -> Labels {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let as_f64 = |v: i64| v as f64;
        for s in &self.sites {
            let site = label(&[("site", &s.site)]);
            generation.get_or_create(&site).set(s.generation as f64);
            if let Some(t) = s.updated {
                updated.get_or_create(&site).set(as_f64(t));
            }
            if let Some(t) = s.certificates_expire {
                let generation = s.generation.to_string();
                expiry
                    .get_or_create(&label(&[("site", &s.site), ("generation", &generation)]))
                    .set(as_f64(t));
            }
            drained
                .get_or_create(&site)
                .set(f64::from(u8::from(s.drained)));
            if let (true, Some(t)) = (s.drained, s.drained_since) {
                drained_since.get_or_create(&site).set(as_f64(t));
            }
            for (state, n) in &s.machines {
                machines
                    .get_or_create(&label(&[("site", &s.site), ("state", state)]))
                    .set(*n as f64);
            }
            for m in &s.quarantined {
                quarantined
                    .get_or_create(&label(&[("site", &s.site), ("machine", m)]))
                    .set(1.0);
            }
        }
        for op in &self.operations {
            let labels = label(&[("operation", &op.kind), ("target", &op.target)]);
            running
                .get_or_create(&labels)
                .set(f64::from(u8::from(op.running)));
            if let Some(t) = op.last_end {
                last_end.get_or_create(&labels).set(as_f64(t));
            }
            if let Some(ok) = op.last_succeeded {
                last_ok.get_or_create(&labels).set(f64::from(u8::from(ok)));
            }
            if let Some(t) = op.last_success {
                last_success.get_or_create(&labels).set(as_f64(t));
            }
        }
        for l in &self.locks {
            let labels = label(&[("lock", &l.lock), ("operation", &l.operation)]);
            if let Some(t) = l.since {
                lock_since.get_or_create(&labels).set(as_f64(t));
            }
            lock_stale
                .get_or_create(&label(&[("lock", &l.lock)]))
                .set(f64::from(u8::from(l.stale)));
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &registry);
        sorted_samples(&out)
    }
}

/// `text` with each family's samples in order (`prometheus-client` keeps
/// them in a hash map), so that the same state gives the same file.
fn sorted_samples(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut samples: Vec<&str> = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') {
            samples.sort_unstable();
            for s in samples.drain(..) {
                out.push_str(s);
                out.push('\n');
            }
            out.push_str(line);
            out.push('\n');
        } else {
            samples.push(line);
        }
    }
    samples.sort_unstable();
    for s in samples {
        out.push_str(s);
        out.push('\n');
    }
    out
}

/// The earliest `notAfter` among the certificates of `site`'s generation
/// (private files are not opened).
async fn earliest_expiry(
    store: &dyn StateStore,
    site: &str,
    generation: u64,
) -> Result<Option<i64>, StateError> {
    let prefix = crate::pki::state_prefix(site, generation);
    let mut earliest: Option<i64> = None;
    for e in store.list(&prefix).await? {
        if !e.key.ends_with(".crt") {
            continue;
        }
        let Ok((_, pem)) = x509_parser::pem::parse_x509_pem(&e.value) else {
            continue;
        };
        let Ok(cert) = pem.parse_x509() else {
            continue;
        };
        let t = cert.validity().not_after.timestamp();
        earliest = Some(earliest.map_or(t, |e| e.min(t)));
    }
    Ok(earliest)
}

/// The latest run of each operation on each target (of the sites shown,
/// where the target is a site), with its last success.
async fn operations(
    store: &dyn StateStore,
    sites: &[SiteMetrics],
) -> Result<Vec<OperationMetrics>, StateError> {
    let history = crate::state::journal::history(store).await?;
    // Newest first: the first record of a (kind, target) is its latest.
    let mut latest: BTreeMap<(String, String), OperationMetrics> = BTreeMap::new();
    for op in &history {
        let target = op
            .target
            .strip_prefix("site/")
            .unwrap_or(&op.target)
            .to_string();
        if op.target.starts_with("site/") && !sites.iter().any(|s| s.site == target) {
            continue;
        }
        let entry = latest
            .entry((op.kind.clone(), target.clone()))
            .or_insert_with(|| OperationMetrics {
                kind: op.kind.clone(),
                target,
                running: op.status == Status::Running,
                last_end: None,
                last_succeeded: None,
                last_success: None,
            });
        record_run(entry, op);
    }
    Ok(latest.into_values().collect())
}

/// Takes an older run of the entry's operation into account: the first
/// finished one gives the last result, the first succeeded one the last
/// success.
fn record_run(entry: &mut OperationMetrics, op: &OpRecord) {
    let ended = op.ended.as_deref().and_then(timestamp);
    if op.status != Status::Running && entry.last_succeeded.is_none() {
        entry.last_end = ended;
        entry.last_succeeded = Some(op.status == Status::Succeeded);
    }
    if op.status == Status::Succeeded && entry.last_success.is_none() {
        entry.last_success = ended;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::journal::Journal;
    use crate::state::memory::MemoryStore;
    use crate::state::Holder;

    fn fleet() -> (tempfile::TempDir, Fleet) {
        let dir = tempfile::tempdir().unwrap();
        for (path, text) in crate::example::FILES {
            let target = dir.path().join(path);
            std::fs::create_dir_all(target.parent().unwrap()).unwrap();
            std::fs::write(&target, text).unwrap();
        }
        let fleet = crate::fleet::load(dir.path()).unwrap();
        (dir, fleet)
    }

    #[tokio::test]
    async fn a_running_retry_keeps_the_last_result_and_success() {
        let (_dir, fleet) = fleet();
        let store = MemoryStore::new();
        let holder = Holder::current("replace site fra");
        // Succeeded, then failed, then a new run (resuming the failed one).
        let ok = Journal::begin(&store, "replace", "site/fra", &holder)
            .await
            .unwrap();
        let ok = ok.finish(None).await.unwrap();
        let failed = Journal::begin(&store, "replace", "site/fra", &holder)
            .await
            .unwrap();
        failed.finish(Some("boom".into())).await.unwrap();
        let snapshot = Snapshot::read(&fleet, &store, &[]).await.unwrap();
        let op = &snapshot.operations[0];
        assert_eq!((op.running, op.last_succeeded), (false, Some(false)));
        assert_eq!(op.last_success, ok.ended.as_deref().and_then(timestamp));
        // The retry resumes the failed run: running, last result unknown
        // until it ends, the success kept.
        let _retry = Journal::begin(&store, "replace", "site/fra", &holder)
            .await
            .unwrap();
        let snapshot = Snapshot::read(&fleet, &store, &[]).await.unwrap();
        let op = &snapshot.operations[0];
        assert!(op.running, "{op:?}");
        assert_eq!(op.last_success, ok.ended.as_deref().and_then(timestamp));
        // Only the sites asked for.
        let only = ["ber".parse::<SiteName>().unwrap()];
        let snapshot = Snapshot::read(&fleet, &store, &only).await.unwrap();
        assert!(snapshot.operations.is_empty() && snapshot.sites.len() == 1);
    }

    #[tokio::test]
    async fn drained_since_is_the_first_drain_and_cleared_on_restore() {
        let store = MemoryStore::new();
        crate::state::records::set_drained(&store, "fra", Some("replace".into()))
            .await
            .unwrap();
        let first = crate::state::records::read_site(&store, "fra")
            .await
            .unwrap()
            .unwrap()
            .drained_since;
        assert!(first.is_some());
        crate::state::records::set_drained(&store, "fra", Some("drill".into()))
            .await
            .unwrap();
        let again = crate::state::records::read_site(&store, "fra")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(again.drained_since, first);
        crate::state::records::set_drained(&store, "fra", None)
            .await
            .unwrap();
        let restored = crate::state::records::read_site(&store, "fra")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(restored.drained_since, None);
    }
}
