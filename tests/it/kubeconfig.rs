//! `metalherd kubeconfig`: admin kubeconfigs checked with the real
//! `openssl` (chain to the generation's Kubernetes CA and not another's,
//! expiry) and the real `kubectl` (it parses); refusals for a site
//! without a generation, a retired and a compromised generation, an
//! existing file; the audit entry; the CA's private key nowhere in what
//! the command prints or writes.
//!
//! The state is seeded through the library (a generation's PKI and the
//! site record, as `bootstrap` leaves them), so no machines are needed.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use metalherd::state::{self, Expect, SiteRecord};

use super::{example_fleet, metalherd_env, require, text};

fn all(out: &Output) -> String {
    format!("{}{}", text(&out.stdout), text(&out.stderr))
}

/// The PKI of each of `generations` of `site` stored in the fleet's state,
/// and the site recorded at `current` with `retired` before it.
pub fn seed(fleet: &Path, site: &str, generations: &[u64], current: u64, retired: &[u64]) {
    let loaded = metalherd::fleet::load(fleet).unwrap();
    let s = loaded.site(site).unwrap();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let (store, sealer) = state::open(&loaded).unwrap();
            for g in generations {
                metalherd::pki::load_or_create(store.as_ref(), &sealer, s, *g, 90)
                    .await
                    .unwrap();
            }
            let record = SiteRecord {
                generation: current,
                updated: state::now_rfc3339(),
                retired: retired.to_vec(),
                ..SiteRecord::default()
            };
            state::put_json(
                store.as_ref(),
                &format!("sites/{site}"),
                &record,
                Expect::Any,
            )
            .await
            .unwrap();
        });
}

fn pki(fleet: &Path, site: &str, generation: u64) -> PathBuf {
    metalherd::pki::state_path(&fleet.join(".metalherd/state"), site, generation)
}

/// The body lines of a PEM file (no armour), long enough to search for.
fn pem_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 20)
        .map(str::to_string)
        .collect()
}

/// Fails if `said` holds the CA private key at `ca_key`: its PEM lines,
/// or its base64 (as a kubeconfig would carry it).
fn assert_no_ca_key(said: &str, ca_key: &Path, place: &str) {
    use base64::Engine as _;
    let pem = std::fs::read_to_string(ca_key).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(pem.as_bytes());
    assert!(!said.contains(&b64), "{place}: holds the CA key (base64)");
    for line in pem_lines(ca_key) {
        assert!(!said.contains(&line), "{place}: holds a line of the CA key");
    }
}

fn kubeconfig(fleet: &Path, args: &[&str]) -> Output {
    let mut all = vec!["kubeconfig"];
    all.extend_from_slice(args);
    metalherd_env(fleet, &all, &[])
}

fn openssl(args: &[&str]) -> Output {
    Command::new(require("openssl", "openssl"))
        .args(args)
        .output()
        .unwrap()
}

/// The client certificate of a kubeconfig, written to `dir/client.crt`.
fn client_cert(kubeconfig: &str, dir: &Path) -> PathBuf {
    use base64::Engine as _;
    let data = kubeconfig
        .lines()
        .find_map(|l| l.trim().strip_prefix("client-certificate-data: "))
        .expect("client-certificate-data");
    let pem = base64::engine::general_purpose::STANDARD
        .decode(data)
        .unwrap();
    let path = dir.join("client.crt");
    std::fs::write(&path, pem).unwrap();
    path
}

#[test]
fn kubeconfig_chains_to_the_current_generation_expires_with_ttl_and_is_audited() {
    let fleet = example_fleet();
    let f = fleet.path();
    seed(f, "fra", &[1, 2], 2, &[1]);
    let work = tempfile::tempdir().unwrap();
    let out = kubeconfig(f, &["--site", "fra", "--ttl", "2h"]);
    assert!(out.status.success(), "{}", all(&out));
    let issued_at = time::OffsetDateTime::now_utc();
    let config = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert!(
        config.contains("server: https://10.10.4.10:6443")
            && config.contains("current-context: fra-k8s-g2")
            && config.contains("- name: metalherd-admin@fra"),
        "{config}"
    );
    let crt = client_cert(&config, work.path());
    let crt = crt.to_str().unwrap();

    // The chain: the current generation's CA, as a client; not the other's.
    let ca2 = pki(f, "fra", 2).join("kubernetes/ca.crt");
    let ca1 = pki(f, "fra", 1).join("kubernetes/ca.crt");
    let v = openssl(&[
        "verify",
        "-CAfile",
        ca2.to_str().unwrap(),
        "-purpose",
        "sslclient",
        crt,
    ]);
    assert!(
        v.status.success() && text(&v.stdout).contains(": OK"),
        "{}",
        all(&v)
    );
    let v = openssl(&["verify", "-CAfile", ca1.to_str().unwrap(), crt]);
    assert!(!v.status.success(), "verifies against generation 1's CA");

    // Subject, serial, expiry.
    let x = openssl(&[
        "x509", "-noout", "-subject", "-serial", "-enddate", "-nameopt", "RFC2253", "-in", crt,
    ]);
    let x = text(&x.stdout);
    assert!(
        x.contains("O=system:masters") && x.contains("CN=metalherd-admin:"),
        "{x}"
    );
    let serial = x
        .lines()
        .find_map(|l| l.strip_prefix("serial="))
        .unwrap()
        .to_string();
    assert!(
        stderr.contains(&serial),
        "serial {serial} not printed: {stderr}"
    );
    let end = x.lines().find_map(|l| l.strip_prefix("notAfter=")).unwrap();
    let fmt = time::format_description::parse_borrowed::<2>(
        "[month repr:short] [day padding:space] [hour]:[minute]:[second] [year] GMT",
    )
    .unwrap();
    let end = time::PrimitiveDateTime::parse(end.trim(), &fmt)
        .unwrap()
        .assume_utc();
    let off = (end - (issued_at + time::Duration::hours(2))).abs();
    assert!(
        off <= time::Duration::minutes(1),
        "expiry {end} is off by {off}"
    );

    // kubectl parses it (with a HOME of its own).
    let home = tempfile::tempdir().unwrap();
    let file = work.path().join("kc");
    std::fs::write(&file, &config).unwrap();
    let kc = Command::new(require("kubectl", "kubernetes-client"))
        .args(["config", "view", "--kubeconfig", file.to_str().unwrap()])
        .args([
            "-o",
            "jsonpath={.current-context} {.clusters[0].cluster.server}",
        ])
        .env("HOME", home.path())
        .env_remove("KUBECONFIG")
        .output()
        .unwrap();
    assert!(kc.status.success(), "{}", all(&kc));
    assert_eq!(text(&kc.stdout), "fra-k8s-g2 https://10.10.4.10:6443");

    // Audited: who, site, generation, serial, expiry.
    let audit = metalherd_env(f, &["--output", "json", "audit"], &[]);
    let doc: serde_json::Value = serde_json::from_slice(&audit.stdout).unwrap();
    let entry = doc["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "kubeconfig")
        .unwrap_or_else(|| panic!("no kubeconfig entry: {doc}"));
    let d = &entry["detail"];
    assert_eq!(d["site"], "fra", "{entry}");
    assert_eq!(d["generation"], 2, "{entry}");
    assert_eq!(d["serial"].as_str().unwrap().to_uppercase(), serial);
    assert!(
        d["expires"].is_string() && entry["user"].is_string(),
        "{entry}"
    );

    let ca_key = pki(f, "fra", 2).join("kubernetes/ca.key");
    assert_no_ca_key(&config, &ca_key, "stdout");
    assert_no_ca_key(&stderr, &ca_key, "stderr");
    assert_no_ca_key(&text(&audit.stdout), &ca_key, "audit");
}

#[test]
fn kubeconfig_out_is_0600_never_overwritten_without_force_and_json_says_where() {
    let fleet = example_fleet();
    let f = fleet.path();
    seed(f, "muc", &[1], 1, &[]);
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("muc.kubeconfig");
    let path = file.to_str().unwrap();
    let out = metalherd_env(
        f,
        &[
            "--output",
            "json",
            "kubeconfig",
            "--site",
            "muc",
            "--out",
            path,
        ],
        &[],
    );
    assert!(out.status.success(), "{}", all(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["site"], "muc");
    assert_eq!(doc["generation"], 1);
    assert_eq!(doc["path"], path);
    assert!(
        doc["kubeconfig"].is_null(),
        "the kubeconfig went to the file"
    );
    assert!(
        doc["serial"].is_string() && doc["expiry"].is_string(),
        "{doc}"
    );
    let expiry = time::OffsetDateTime::parse(
        doc["expiry"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let off = (expiry - (time::OffsetDateTime::now_utc() + time::Duration::hours(8))).abs();
    assert!(off <= time::Duration::minutes(1), "the default TTL is 8h");
    assert_eq!(std::fs::metadata(&file).unwrap().mode() & 0o777, 0o600);
    let first = std::fs::read(&file).unwrap();
    assert!(text(&first).contains("current-context: muc-k8s-g1"));

    // Again without --force: refused, the file as it was.
    let again = kubeconfig(f, &["--site", "muc", "--out", path]);
    assert_eq!(again.status.code(), Some(1), "{}", all(&again));
    assert!(all(&again).contains("--force"), "{}", all(&again));
    assert_eq!(std::fs::read(&file).unwrap(), first);

    // With --force: replaced, still 0600.
    let forced = kubeconfig(f, &["--site", "muc", "--out", path, "--force"]);
    assert!(forced.status.success(), "{}", all(&forced));
    assert_ne!(std::fs::read(&file).unwrap(), first);
    assert_eq!(std::fs::metadata(&file).unwrap().mode() & 0o777, 0o600);
    let left: Vec<_> = std::fs::read_dir(work.path()).unwrap().collect();
    assert_eq!(left.len(), 1, "no temporary file is left behind");

    // The JSON form without --out carries the kubeconfig.
    let json = metalherd_env(f, &["--output", "json", "kubeconfig", "--site", "muc"], &[]);
    let doc: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert!(doc["kubeconfig"]
        .as_str()
        .unwrap()
        .contains("client-key-data: "));

    let ca_key = pki(f, "muc", 1).join("kubernetes/ca.key");
    for (place, said) in [
        ("json stdout", text(&out.stdout)),
        ("json stderr", text(&out.stderr)),
        ("the file", text(&std::fs::read(&file).unwrap())),
        ("json kubeconfig", text(&json.stdout)),
        ("json kubeconfig stderr", text(&json.stderr)),
    ] {
        assert_no_ca_key(&said, &ca_key, place);
    }
}

#[test]
fn kubeconfig_is_refused_for_retired_compromised_or_missing_generations() {
    let fleet = example_fleet();
    let f = fleet.path();
    seed(f, "fra", &[1, 2], 2, &[1]);
    // What lockdown leaves: muc's generation 1 marked compromised and retired.
    seed(f, "muc", &[1], 1, &[1]);
    let marker = f
        .join(".metalherd/state")
        .join(metalherd::pki::compromised_marker("muc", 1));
    std::fs::write(&marker, "case INC-7").unwrap();
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("kc");
    let path = file.to_str().unwrap();
    for (args, want) in [
        (
            &["--site", "fra", "--generation", "1"][..],
            "fra generation 1 is retired",
        ),
        (
            &["--site", "fra", "--generation", "3"],
            "fra generation 3 is not the current one",
        ),
        (
            &["--site", "muc"],
            "muc generation 1 was retired as compromised (case INC-7)",
        ),
        (&["--site", "ber"], "ber has no cluster generation"),
        (&["--site", "nosuch"], "no site `nosuch`"),
        (&["--site", "fra", "--ttl", "8d"], "at most 7 days"),
    ] {
        let mut with_out = args.to_vec();
        with_out.extend(["--out", path]);
        for a in [args.to_vec(), with_out] {
            let out = kubeconfig(f, &a);
            assert_eq!(out.status.code(), Some(1), "{a:?}: {}", all(&out));
            let said = all(&out);
            assert!(said.contains(want), "{a:?}: {said}");
            assert!(!said.contains("client-key-data"), "{a:?}: {said}");
            assert!(!file.exists(), "{a:?} wrote a file");
        }
    }
    // Nothing issued, nothing audited.
    let audit = metalherd_env(f, &["--output", "json", "audit"], &[]);
    assert!(
        !text(&audit.stdout).contains("\"kubeconfig\""),
        "{}",
        text(&audit.stdout)
    );
}
