//! Every operation that takes locks gives them back when it fails before
//! its first step, on the local backend and on etcd (a real three-member
//! cluster, locks as leases with a 60 s TTL, so a lock left to expire
//! would still show): provision, bootstrap, replace, blue-green, rebuild,
//! drill and lockdown, each at every point where it can fail early —
//! someone else holding a lock it needs, the safety checks refusing it, a
//! quarantined machine, a blue-green replace with too few spares, an
//! evidence directory that cannot be made.

use std::path::Path;
use std::process::{Command, Output};

use metalherd::state::crypt::Sealer;
use metalherd::state::{records, Expect, Holder, Key, MachineRecord, MachineState};

use super::etcd_cluster::EtcdCluster;
use super::{example_fleet, text};

/// The example fleet with `forensics` set, its state local or in
/// `cluster`.
fn fleet_for(cluster: Option<&EtcdCluster>) -> tempfile::TempDir {
    let fleet = example_fleet();
    let f = fleet.path();
    let (secret, _) = Sealer::generate_identity();
    std::fs::write(f.join("state.key"), secret.as_bytes()).unwrap();
    std::fs::set_permissions(
        f.join("state.key"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let path = f.join("inventory/fleet.yaml");
    let yaml = std::fs::read_to_string(&path).unwrap();
    let state = match cluster {
        None => {
            "state:\n  backend: local\n  path: .metalherd/state\n  encryption_key: file:state.key\n"
                .to_string()
        }
        Some(c) => {
            let endpoints: Vec<String> = c.endpoints().iter().map(|u| format!("\"{u}\"")).collect();
            format!(
                "state:\n  backend: etcd\n  endpoints: [{}]\n  ca_file: {}\n  cert_file: {}\n  key_file: {}\n  encryption_key: file:state.key\n  lock_ttl: 60\n",
                endpoints.join(", "),
                c.ca_file().display(),
                c.cert_file().display(),
                c.key_file().display()
            )
        }
    };
    let start = yaml.find("state:\n").unwrap();
    let end = yaml.find("traffic:\n").unwrap();
    let forensics = "forensics:\n  bastion: 192.0.2.10\n  ssh_authorized_key: \"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl forensics@bastion\"\n";
    std::fs::write(
        &path,
        format!("{}{state}{}{forensics}", &yaml[..start], &yaml[end..]),
    )
    .unwrap();
    fleet
}

fn run(fleet: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_metalherd"))
        .arg("--fleet")
        .arg(fleet)
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("USER", "tester")
        .output()
        .unwrap()
}

/// The names of the locks the state shows as held (stale ones included).
fn locks(fleet: &Path) -> Vec<String> {
    let out = run(fleet, &["--output", "json", "state", "locks"]);
    assert!(out.status.success(), "state locks: {}", text(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    doc["locks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap().to_string())
        .collect()
}

/// One runtime for the test's own state calls (an etcd client's pooled
/// connections belong to the runtime that made them).
fn block<T>(f: impl std::future::Future<Output = T>) -> T {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap()
        })
        .block_on(f)
}

fn set_machine(fleet: &Path, machine: &str, state: MachineState) {
    let model = metalherd::fleet::load(fleet).unwrap();
    block(async {
        let (store, _) = metalherd::state::open(&model).unwrap();
        let record = MachineRecord::now(state, None);
        records::put_machine(store.as_ref(), machine, &record, Expect::Any)
            .await
            .unwrap();
    });
}

/// Runs `args`, which must fail with `code` saying `says`, and leave no
/// lock held but `others`'.
fn fails_early(fleet: &Path, args: &[&str], code: i32, says: &str, others: &[&str]) {
    let out = run(fleet, args);
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(code), "{args:?}: {said}");
    assert!(
        said.contains(says),
        "{args:?} does not say {says:?}: {said}"
    );
    assert_eq!(locks(fleet), others, "{args:?} left a lock held: {said}");
}

fn every_operation_gives_its_locks_back(fleet: &Path) {
    let force = ["--force", "--reason", "test"];
    let with_force = |args: &[&'static str]| -> Vec<&'static str> {
        args.iter().chain(force.iter()).copied().collect()
    };

    // The safety checks refuse (no other site has a generation): exit 4.
    fails_early(fleet, &["replace", "site", "fra"], 4, "refused", &[]);
    fails_early(fleet, &["drill", "site", "fra"], 4, "refused", &[]);
    fails_early(fleet, &["rebuild", "--sites", "fra"], 4, "blocked", &[]);

    // Too few spares for a blue-green replace.
    fails_early(
        fleet,
        &with_force(&["replace", "site", "muc", "--blue-green"]),
        1,
        "spare",
        &[],
    );

    // A quarantined machine: every operation that would touch it refuses.
    set_machine(fleet, "fra-cp-01", MachineState::Quarantined);
    fails_early(fleet, &["provision", "site", "fra"], 1, "quarantined", &[]);
    for args in [
        with_force(&["replace", "site", "fra"]),
        with_force(&["drill", "site", "fra"]),
        with_force(&["rebuild", "--sites", "fra"]),
    ] {
        fails_early(fleet, &args, 1, "quarantined", &[]);
    }
    set_machine(fleet, "fra-cp-01", MachineState::Available);

    // The evidence directory cannot be made (its parent is a file).
    std::fs::write(fleet.join("not-a-dir"), "").unwrap();
    let evidence = fleet.join("not-a-dir/evidence");
    fails_early(
        fleet,
        &[
            "lockdown",
            "cluster",
            "fra",
            "--case",
            "INC-1",
            "--reason",
            "test",
            "--evidence-dir",
            evidence.to_str().unwrap(),
        ],
        1,
        "not-a-dir",
        &[],
    );

    // Someone else holds a lock the operation needs: exit 3, and theirs
    // is the only lock left (the one taken before it is given back).
    let model = metalherd::fleet::load(fleet).unwrap();
    let (store, _) = metalherd::state::open(&model).unwrap();
    let other = Holder::current("someone else");
    for (lock, args) in [
        (Key::fleet(), with_force(&["replace", "site", "fra"])),
        (Key::site("fra"), with_force(&["replace", "site", "fra"])),
        (Key::site("fra"), with_force(&["drill", "site", "fra"])),
        (Key::site("fra"), vec!["provision", "site", "fra"]),
        (Key::site("fra"), vec!["bootstrap", "site", "fra"]),
        (
            Key::site("fra"),
            vec![
                "lockdown", "cluster", "fra", "--case", "INC-2", "--reason", "t",
            ],
        ),
    ] {
        let held = block(store.lock(&lock, &other, std::time::Duration::from_secs(60))).unwrap();
        fails_early(fleet, &args, 3, "locked", &[lock.as_str()]);
        block(held.release()).unwrap();
    }
    assert!(locks(fleet).is_empty());
}

#[test]
fn local_operations_give_their_locks_back_when_they_fail_early() {
    let fleet = fleet_for(None);
    every_operation_gives_its_locks_back(fleet.path());
}

#[test]
fn etcd_operations_give_their_locks_back_when_they_fail_early() {
    let cluster = EtcdCluster::start();
    let fleet = fleet_for(Some(&cluster));
    every_operation_gives_its_locks_back(fleet.path());
}
