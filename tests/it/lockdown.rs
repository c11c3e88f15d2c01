//! `lockdown cluster C` on the network-namespace test hosts
//! ([`super::hosts`]): a one-control-plane site bootstrapped for real
//! (sshd, sudo, etcd), then locked down with another site's worker as the
//! forensic bastion. Checked from outside metalherd: the real nftables
//! ruleset drops the controller's connections both ways while the bastion
//! gets in with the forensic key (and metalherd's key is refused); the
//! evidence passes `sha256sum -c`, is read-only, has one custody entry per
//! file, and its etcd snapshot satisfies the real `etcdctl`; the state has
//! the machines quarantined and the generation retired; and every command
//! that would power off, wipe or reprovision them refuses.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::hosts::{Hosts, Options};
use super::{example_fleet, require, text};

const FRA: [&str; 2] = ["fra-cp-01", "fra-wk-01"];
const BASTION: &str = "ber-wk-01";

fn all(out: &Output) -> String {
    format!("{}{}", text(&out.stdout), text(&out.stderr))
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", all(out)))
}

/// Site fra with one control plane, one worker and its spare; a drain
/// hook that records its calls in `calls.log`.
fn prepare_fleet(dir: &Path) {
    let site = dir.join("sites/fra.yaml");
    let yaml = std::fs::read_to_string(&site).unwrap();
    let yaml = yaml.replace("control_plane_count: 3", "control_plane_count: 1");
    std::fs::write(&site, yaml).unwrap();
    let inventory = dir.join("inventory/fra.yaml");
    let yaml = std::fs::read_to_string(&inventory).unwrap();
    let mut parts = yaml.split("  - name: ");
    let mut kept = parts.next().unwrap().to_string();
    for block in parts {
        if ["fra-cp-01", "fra-wk-01", "fra-sp-"]
            .iter()
            .any(|m| block.starts_with(m))
        {
            kept.push_str("  - name: ");
            kept.push_str(block);
        }
    }
    std::fs::write(&inventory, kept).unwrap();
    std::fs::create_dir_all(dir.join("scripts")).unwrap();
    let hook = dir.join("scripts/gslb-weight");
    std::fs::write(
        &hook,
        "#!/bin/sh\necho \"gslb-weight $1 $2\" >> calls.log\n",
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
}

/// A fresh forensic key pair; returns (private key path, public key line).
fn forensic_key(dir: &Path) -> (PathBuf, String) {
    let key = dir.join("forensic");
    let out = Command::new("ssh-keygen")
        .args([
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "forensics@bastion",
            "-f",
        ])
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success(), "ssh-keygen: {}", all(&out));
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    (key, public.trim().to_string())
}

/// `ip netns exec NS program args…`.
fn in_ns(ns: &str, program: &str) -> Command {
    let mut cmd = Command::new(require("ip", "iproute2"));
    cmd.args(["netns", "exec", ns, program]);
    cmd
}

/// A TCP connection from namespace `ns` to `addr`:`port` (bash's
/// /dev/tcp, 4 s at most), reading the first 4 bytes.
fn tcp(ns: &str, addr: &str, port: u16) -> Output {
    let probe = format!("exec 3<>/dev/tcp/{addr}/{port} && head -c 4 <&3");
    in_ns(ns, "timeout")
        .args(["4", "bash", "-c", &probe])
        .output()
        .unwrap()
}

/// OpenSSH as `core` from namespace `ns` with `key`, the pinned host keys.
fn ssh_from(hosts: &Hosts, ns: &str, key: &Path, machine: &str) -> Output {
    in_ns(ns, "ssh")
        .args(["-F", "/dev/null", "-i"])
        .arg(key)
        .arg("-o")
        .arg(format!(
            "UserKnownHostsFile={}",
            hosts.known_hosts().display()
        ))
        .args([
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "IdentitiesOnly=yes",
        ])
        .args(["-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes"])
        .args(["-o", "ConnectTimeout=5", "-o", "LogLevel=ERROR"])
        .arg(format!("core@{}", hosts.ip(machine)))
        .args(["--", "id -un; hostname"])
        .output()
        .unwrap()
}

fn calls(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("calls.log")).unwrap_or_default()
}

/// A bootstrapped site fra (one control plane, one worker) with `forensics`
/// configured, and the hosts: fra's nodes and the bastion.
struct Setup {
    fleet: tempfile::TempDir,
    _keys: tempfile::TempDir,
    forensic: PathBuf,
    bastion_ip: String,
    model: metalherd::fleet::Fleet,
    hosts: Hosts,
}

fn setup() -> Setup {
    require("nft", "nftables");
    let fleet = example_fleet();
    let f = fleet.path();
    prepare_fleet(f);
    let keys = tempfile::tempdir().unwrap();
    let (forensic, forensic_pub) = forensic_key(keys.path());

    // Without `forensics`, lockdown refuses and says where to set it.
    let out = super::metalherd(
        f,
        &[
            "lockdown", "cluster", "fra", "--case", "INC-0", "--reason", "t",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", all(&out));
    assert!(
        text(&out.stderr).contains("lockdown needs `forensics` in")
            && text(&out.stderr).contains("inventory/fleet.yaml"),
        "{}",
        all(&out)
    );
    let model = metalherd::fleet::load(f).unwrap();
    let bastion_ip = model.machine(BASTION).unwrap().1.ip.to_string();
    let yaml = f.join("inventory/fleet.yaml");
    let mut text_yaml = std::fs::read_to_string(&yaml).unwrap();
    text_yaml.push_str(&format!(
        "forensics:\n  bastion: {bastion_ip}\n  ssh_authorized_key: \"{forensic_pub}\"\n"
    ));
    std::fs::write(&yaml, text_yaml).unwrap();

    let mut machines = FRA.to_vec();
    machines.push(BASTION);
    let hosts = Hosts::start(f, &machines, &Options::default());
    let boot = hosts.metalherd(&["bootstrap", "site", "fra", "--ready-timeout", "90"]);
    assert!(boot.status.success(), "bootstrap: {}", all(&boot));
    Setup {
        fleet,
        _keys: keys,
        forensic,
        bastion_ip,
        model,
        hosts,
    }
}

#[test]
fn lockdown_isolates_collects_evidence_seals_and_quarantines() {
    require("sha256sum", "coreutils");
    let etcdctl = require("etcdctl", "etcd-client");
    let Setup {
        fleet,
        forensic,
        bastion_ip,
        model,
        hosts,
        _keys,
    } = setup();
    let f = fleet.path();
    let gateway = model
        .site("fra")
        .unwrap()
        .networks
        .nodes
        .gateway
        .to_string();
    let cp_ns = hosts.host_namespace("fra-cp-01").to_string();
    // Before: the node reaches the controller (nothing listens there).
    let before = tcp(&cp_ns, &gateway, 22);
    assert!(
        text(&before.stderr).contains("Connection refused"),
        "{}",
        all(&before)
    );

    // --replace-on spares is refused before anything is done.
    let out = hosts.metalherd(&[
        "lockdown",
        "cluster",
        "fra-k8s",
        "--case",
        "INC-1",
        "--reason",
        "t",
        "--replace-on",
        "spares",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", all(&out));
    assert!(
        all(&out).contains("not supported yet: the site has 1 spare machine(s)"),
        "{}",
        all(&out)
    );
    assert!(!f.join("evidence/INC-1").exists() && calls(f).is_empty());

    let started = std::time::Instant::now();
    let out = hosts.metalherd(&[
        "--output",
        "json",
        "lockdown",
        "cluster",
        "fra-k8s",
        "--case",
        "INC-1",
        "--reason",
        "test: suspected compromise",
        "--replace-on",
        "ber",
    ]);
    eprintln!("lockdown took {:.1} s", started.elapsed().as_secs_f64());
    assert!(out.status.success(), "lockdown: {}", all(&out));
    assert!(!all(&out).contains("PRIVATE KEY"), "{}", all(&out));
    let doc = json(&out);
    assert_eq!(doc["ok"], true, "{doc}");
    assert_eq!(doc["case"], "INC-1");
    assert_eq!(doc["site"], "fra");
    assert_eq!(doc["generation"], 1);
    assert!(doc["replace_on"]
        .as_str()
        .unwrap()
        .contains("metalherd replace site ber"));
    // The safety checks failed (no other site runs) and were recorded.
    assert!(
        doc["failing_checks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c.as_str().unwrap().starts_with("other-sites:")),
        "{doc}"
    );
    let steps: Vec<&str> = doc["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        steps,
        [
            "quarantine",
            "drain",
            "isolate",
            "evidence",
            "seal",
            "pki",
            "verify"
        ]
    );
    for m in doc["machines"].as_array().unwrap() {
        for step in ["isolate", "evidence", "seal"] {
            assert_eq!(m[step], "ok", "{m}");
        }
        assert!(m["verify"].as_str().unwrap().starts_with("ok:"), "{m}");
        assert_eq!(m["collector"], gateway.as_str(), "{m}");
    }

    check_network(&hosts, &gateway, &bastion_ip, &forensic, f);
    let case_dir = f.join("evidence/INC-1");
    check_evidence(
        &case_dir,
        doc["manifest_sha256"].as_str().unwrap(),
        &etcdctl,
        f,
    );
    check_state(&hosts, f);

    // Nothing is ever overwritten: the same case again is refused before
    // anything happens.
    let out = hosts.metalherd(&[
        "lockdown", "cluster", "fra", "--case", "INC-1", "--reason", "again",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", all(&out));
    assert!(
        all(&out).contains("evidence is never overwritten"),
        "{}",
        all(&out)
    );
    assert_eq!(
        calls(f).matches("gslb-weight fra 0").count(),
        1,
        "{}",
        calls(f)
    );
}

/// The controller is cut off both ways; the bastion gets in with the
/// forensic key only; the node opens no connection, even to the bastion.
fn check_network(hosts: &Hosts, gateway: &str, bastion_ip: &str, forensic: &Path, f: &Path) {
    let bastion_ns = hosts.host_namespace(BASTION);
    for m in FRA {
        let ip = hosts.ip(m).to_string();
        let from_ctl = hosts
            .ctl_command("timeout")
            .args(["4", "bash", "-c", &format!("exec 3<>/dev/tcp/{ip}/22")])
            .output()
            .unwrap();
        assert_eq!(
            from_ctl.status.code(),
            Some(124),
            "{m}: the controller's connection was not dropped: {}",
            all(&from_ctl)
        );
        let from_bastion = tcp(bastion_ns, &ip, 22);
        assert_eq!(
            text(&from_bastion.stdout),
            "SSH-",
            "{m}: {}",
            all(&from_bastion)
        );

        let ok = ssh_from(hosts, bastion_ns, forensic, m);
        assert!(ok.status.success(), "{m}: forensic key: {}", all(&ok));
        assert_eq!(text(&ok.stdout), format!("core\n{m}\n"));
        let operator = f.join(".metalherd/state/ssh/id_ed25519");
        let refused = ssh_from(hosts, bastion_ns, &operator, m);
        assert!(
            !refused.status.success() && text(&refused.stderr).contains("Permission denied"),
            "{m}: metalherd's key still works: {}",
            all(&refused)
        );

        let ns = hosts.host_namespace(m);
        for (to, what) in [(gateway, "the controller"), (bastion_ip, "the bastion")] {
            let out = tcp(ns, to, 22);
            let said = all(&out);
            assert!(
                said.contains("Operation not permitted") || out.status.code() == Some(124),
                "{m}: a new connection to {what} was not dropped: {said}"
            );
        }
        let table = in_ns(ns, "nft")
            .args(["list", "table", "inet", "metalherd_lockdown"])
            .output()
            .unwrap();
        let rules = text(&table.stdout);
        assert!(table.status.success(), "{m}: {}", all(&table));
        assert_eq!(rules.matches("policy drop;").count(), 3, "{m}: {rules}");
        assert!(
            rules.contains(&format!("ip saddr {bastion_ip} accept")),
            "{rules}"
        );
        assert!(
            !rules.contains("elements"),
            "{m}: the collector address is still allowed: {rules}"
        );
    }
}

/// The manifest checks with `sha256sum -c`, everything is read-only, each
/// evidence file has its custody entry, the snapshot is etcd's.
fn check_evidence(dir: &Path, manifest_sha: &str, etcdctl: &Path, f: &Path) {
    let check = Command::new("sha256sum")
        .args(["--strict", "-c", "MANIFEST.sha256"])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(check.status.success(), "sha256sum -c: {}", all(&check));
    let manifest = std::fs::read_to_string(dir.join("MANIFEST.sha256")).unwrap();
    let sha = Command::new("sha256sum")
        .arg("MANIFEST.sha256")
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(text(&sha.stdout).starts_with(manifest_sha));
    let listed: Vec<(&str, &str)> = manifest
        .lines()
        .map(|l| l.split_once("  ").unwrap())
        .collect();
    let files = super::files_below(dir);
    assert_eq!(listed.len() + 1, files.len(), "{manifest}");
    for file in &files {
        let meta = std::fs::metadata(dir.join(file)).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o400, "{}", file.display());
    }
    for d in [
        dir.to_path_buf(),
        dir.join("fra-cp-01"),
        dir.join("fra-wk-01"),
    ] {
        assert_eq!(
            std::fs::metadata(&d).unwrap().mode() & 0o777,
            0o500,
            "{}",
            d.display()
        );
    }
    for m in FRA {
        for name in [
            "system.txt",
            "processes.txt",
            "sockets.txt",
            "mountinfo.txt",
            "journal.txt",
            "authorized-keys.txt",
            "nftables.txt",
            "kubernetes-sha256.txt",
        ] {
            let path = format!("{m}/{name}");
            assert!(
                listed.iter().any(|(_, p)| *p == path),
                "{path} not in {manifest}"
            );
        }
    }

    let custody = std::fs::read_to_string(dir.join("chain-of-custody.jsonl")).unwrap();
    let entries: Vec<serde_json::Value> = custody
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for (hash, path) in &listed {
        if ["case.json", "chain-of-custody.jsonl"].contains(path) {
            continue;
        }
        let of: Vec<&serde_json::Value> = entries.iter().filter(|e| e["file"] == *path).collect();
        assert_eq!(of.len(), 1, "{path}: {custody}");
        let e = of[0];
        assert_eq!(e["sha256"], *hash, "{e}");
        for field in ["time", "user", "host", "machine", "command"] {
            assert!(
                e[field].as_str().is_some_and(|s| !s.is_empty()),
                "{field}: {e}"
            );
        }
        assert!(e["bytes"].as_u64().is_some(), "{e}");
    }
    // What the nodes were like before the seal: metalherd's key authorized.
    let operator = std::fs::read_to_string(f.join(".metalherd/state/ssh/id_ed25519.pub")).unwrap();
    let operator = operator.split_whitespace().nth(1).unwrap();
    let keys = std::fs::read_to_string(dir.join("fra-wk-01/authorized-keys.txt")).unwrap();
    assert!(keys.contains(operator), "{keys}");
    let rules = std::fs::read_to_string(dir.join("fra-cp-01/nftables.txt")).unwrap();
    assert!(rules.contains("table inet metalherd_lockdown"), "{rules}");
    let hashes = std::fs::read_to_string(dir.join("fra-wk-01/kubernetes-sha256.txt")).unwrap();
    assert!(
        hashes.contains("  /etc/kubernetes/kubelet.conf\n"),
        "{hashes}"
    );

    // The control plane's etcd snapshot, checked by etcd's own tool.
    let snapshot = dir.join("fra-cp-01/etcd-snapshot.db");
    let snap = entries
        .iter()
        .find(|e| e["file"] == "fra-cp-01/etcd-snapshot.db")
        .unwrap_or_else(|| panic!("no snapshot: {custody}"));
    assert_eq!(
        snap["note"], "etcd's own sha256 of the database matches",
        "{snap}"
    );
    let copy = tempfile::tempdir().unwrap();
    std::fs::copy(&snapshot, copy.path().join("db")).unwrap();
    let status = Command::new(etcdctl)
        .env("ETCDCTL_API", "3")
        .args(["snapshot", "status", "-w", "json"])
        .arg(copy.path().join("db"))
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "etcdctl snapshot status: {}",
        all(&status)
    );
    assert!(!entries
        .iter()
        .any(|e| e["machine"] == "fra-wk-01" && e["command"].as_str().unwrap().contains("2379")));

    let case: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("case.json")).unwrap()).unwrap();
    assert_eq!(case["case"], "INC-1");
    assert_eq!(case["reason"], "test: suspected compromise");
    assert_eq!(case["machines"], serde_json::json!(FRA));
    assert!(case["finished"].is_string(), "{case}");
}

/// Quarantined, retired, drained; the PKI's private keys gone; every
/// command that would power off, wipe or reprovision refuses.
fn check_state(hosts: &Hosts, f: &Path) {
    let out = hosts.metalherd(&["--output", "json", "state", "show", "--site", "fra"]);
    let state = json(&out);
    let fra = &state["sites"][0];
    assert_eq!(fra["retired"], serde_json::json!([1]), "{fra}");
    assert_eq!(fra["drained"], "lockdown INC-1", "{fra}");
    for m in fra["machines"].as_array().unwrap() {
        let quarantined = m["state"] == "quarantined";
        assert_eq!(
            quarantined,
            FRA.contains(&m["name"].as_str().unwrap()),
            "{m}"
        );
    }
    let pki = f.join(".metalherd/state/pki/fra/1");
    assert!(pki.join("etcd/ca.crt").is_file());
    for private in ["etcd/ca.key", "etcd/client.key", "kubernetes/admin.conf"] {
        assert!(
            !pki.join(private).exists(),
            "{private} is still in the state"
        );
    }
    assert!(f.join(".metalherd/state/pki/fra/1.compromised").is_file());
    let boot = hosts.metalherd(&["bootstrap", "site", "fra"]);
    assert_eq!(boot.status.code(), Some(1), "{}", all(&boot));
    assert!(
        all(&boot).contains("retired as compromised (case INC-1"),
        "{}",
        all(&boot)
    );
    let audit = hosts.metalherd(&["--output", "json", "audit"]);
    assert!(text(&audit.stdout).contains("\"lockdown\""));

    let env = [("FRA_BMC_CREDENTIALS", "admin:x")];
    for args in [
        &[
            "replace", "site", "fra", "--force", "--reason", "x", "--bake", "0",
        ][..],
        &["rebuild", "--sites", "fra", "--force", "--reason", "x"][..],
        &["power", "off", "--site", "fra"][..],
        &["provision", "site", "fra"][..],
        &["drill", "site", "fra", "--force", "--reason", "x"][..],
    ] {
        let out = hosts.metalherd_env(args, &env);
        let said = all(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {said}");
        assert!(
            said.contains("quarantined machine(s) fra-cp-01"),
            "{args:?}: {said}"
        );
    }
}

/// A node lost before the lockdown: every step still runs on the others,
/// the failure names the machine and the step, nothing is undone, both
/// machines are quarantined and the evidence directory is sealed.
#[test]
fn a_node_that_cannot_be_reached_fails_the_lockdown_by_name_and_the_rest_is_contained() {
    let s = setup();
    let (f, hosts) = (s.fleet.path(), &s.hosts);
    hosts.link_down("fra-wk-01");
    let out = hosts.metalherd(&[
        "--output",
        "json",
        "lockdown",
        "cluster",
        "fra",
        "--case",
        "INC-2",
        "--reason",
        "worker lost",
        "--connect-timeout",
        "3",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", all(&out));
    let doc = json(&out);
    assert_eq!(doc["ok"], false);
    let error = doc["error"].as_str().unwrap();
    assert!(
        error.starts_with("isolate: 1 of 2 failed: fra-wk-01"),
        "{error}"
    );
    let by_name = |name: &str| {
        doc["machines"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["machine"] == name)
            .unwrap()
            .clone()
    };
    let (cp, wk) = (by_name("fra-cp-01"), by_name("fra-wk-01"));
    for step in ["isolate", "evidence", "seal"] {
        assert_eq!(cp[step], "ok", "{cp}");
        assert!(wk[step].as_str().unwrap().starts_with("failed: "), "{wk}");
    }
    assert!(
        wk["isolate"].as_str().unwrap().contains("timed out"),
        "{wk}"
    );
    assert_eq!(cp["quarantined"], true);
    assert_eq!(wk["quarantined"], true);
    // The reached node is contained all the same.
    let ok = ssh_from(
        hosts,
        hosts.host_namespace(BASTION),
        &s.forensic,
        "fra-cp-01",
    );
    assert!(ok.status.success(), "{}", all(&ok));
    let state = json(&hosts.metalherd(&["--output", "json", "state", "show", "--site", "fra"]));
    for m in state["sites"][0]["machines"].as_array().unwrap() {
        if FRA.contains(&m["name"].as_str().unwrap()) {
            assert_eq!(m["state"], "quarantined", "{m}");
        }
    }
    assert!(f.join(".metalherd/state/pki/fra/1.compromised").is_file());
    let dir = f.join("evidence/INC-2");
    let check = Command::new("sha256sum")
        .args(["--strict", "-c", "MANIFEST.sha256"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", all(&check));
    assert!(dir.join("fra-cp-01/etcd-snapshot.db").is_file());
    // The text form names the machine and the step too.
    let said = text(&out.stderr);
    assert!(said.contains("fra-wk-01"), "{said}");
}
