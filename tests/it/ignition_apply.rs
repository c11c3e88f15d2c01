//! The real `ignition` binary (Debian's build) applies rendered configs
//! into a temporary root: what a machine's first boot would write.
//!
//! Debian's Ignition always tries an SELinux relabel, so the root gets
//! `etc/selinux/config` and PATH a no-op `setfiles`; user creation runs
//! `useradd --root`, so `etc/{passwd,group,shadow,gshadow}` are seeded.
//! Ignition prints the whole config (host keys included) when it fails:
//! its log is redacted before it reaches a failure message.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{render_with_cli, repo, require};

const IGNITION: &str = "/usr/lib/dracut/modules.d/30ignition/ignition";

fn ignition_binary() -> PathBuf {
    let path = PathBuf::from(IGNITION);
    assert!(
        path.is_file(),
        "{IGNITION} is missing: run `apt-get install -y ignition` (or ./scripts/test)"
    );
    require("useradd", "passwd");
    path
}

/// A root Ignition can write into, and a PATH with a no-op `setfiles`.
fn prepare_root(dir: &Path) -> (PathBuf, PathBuf) {
    let root = dir.join("root");
    let bin = dir.join("bin");
    for d in [root.join("etc/selinux"), bin.clone(), dir.join("run")] {
        std::fs::create_dir_all(&d).unwrap();
    }
    // Ignition writes a user's authorized_keys.d as that user: the root
    // must be traversable by others.
    for d in [dir, &root] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::write(
        root.join("etc/selinux/config"),
        "SELINUX=disabled\nSELINUXTYPE=targeted\n",
    )
    .unwrap();
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\n").unwrap();
    std::fs::write(root.join("etc/shadow"), "root:*:19000:0:99999:7:::\n").unwrap();
    std::fs::write(root.join("etc/gshadow"), "root:*::\n").unwrap();
    let setfiles = bin.join("setfiles");
    std::fs::write(&setfiles, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&setfiles, std::fs::Permissions::from_mode(0o755)).unwrap();
    (root, bin)
}

/// Runs the fetch-offline and files stages of `config` into a new root.
fn apply(config: &Path) -> (tempfile::TempDir, PathBuf) {
    try_apply(config).unwrap_or_else(|log| panic!("{log}"))
}

/// Like [`apply`], with Ignition's (redacted) log as the error.
fn try_apply(config: &Path) -> Result<(tempfile::TempDir, PathBuf), String> {
    let ignition = ignition_binary();
    let dir = tempfile::tempdir().unwrap();
    let (root, bin) = prepare_root(dir.path());
    let run = dir.path().join("run");
    for stage in ["fetch-offline", "files"] {
        let out = Command::new(&ignition)
            .args(["-platform", "file", "-stage", stage, "-log-to-stdout"])
            .arg("-root")
            .arg(&root)
            .arg("-config-cache")
            .arg(run.join("config.json"))
            .arg("-state-file")
            .arg(run.join("state"))
            .arg("-neednet")
            .arg(run.join("neednet"))
            .env_clear()
            .env(
                "PATH",
                format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", bin.display()),
            )
            .env("IGNITION_CONFIG_FILE", config)
            .output()
            .unwrap();
        if !out.status.success() {
            let log = String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr);
            let redacted: Vec<String> = log
                .lines()
                .map(|l| {
                    if l.contains("data:") || l.contains("PRIVATE") {
                        "[line with config data redacted]".into()
                    } else {
                        l.to_string()
                    }
                })
                .collect();
            return Err(format!(
                "ignition stage {stage} failed for {}:\n{}",
                config.display(),
                redacted.join("\n")
            ));
        }
    }
    Ok((dir, root))
}

fn read(root: &Path, path: &str) -> String {
    std::fs::read_to_string(root.join(path.trim_start_matches('/')))
        .unwrap_or_else(|e| panic!("{path} was not written: {e}"))
}

fn mode(root: &Path, path: &str) -> u32 {
    std::fs::metadata(root.join(path.trim_start_matches('/')))
        .unwrap()
        .mode()
        & 0o7777
}

fn assert_identity(root: &Path, fleet: &Path, site: &str, machine: &str, ip: &str) {
    assert_eq!(read(root, "/etc/hostname"), format!("{machine}\n"));
    let network = read(root, "/etc/systemd/network/10-nodes.network");
    assert!(network.contains(&format!("Address={ip}/22")), "{network}");
    let state_key = fleet.join(format!(
        ".metalherd/state/hostkeys/{site}/{machine}/ssh_host_ed25519_key"
    ));
    assert_eq!(
        read(root, "/etc/ssh/ssh_host_ed25519_key"),
        std::fs::read_to_string(state_key).unwrap()
    );
    assert_eq!(mode(root, "/etc/ssh/ssh_host_ed25519_key"), 0o600);
    let authorized = read(root, "/home/core/.ssh/authorized_keys.d/ignition");
    assert!(
        authorized.contains("alice@example") && authorized.contains("bob@example"),
        "{authorized}"
    );
    let operator =
        std::fs::read_to_string(fleet.join(".metalherd/state/ssh/id_ed25519.pub")).unwrap();
    assert!(
        authorized.contains(operator.trim()),
        "metalherd's own key is authorized"
    );
    assert!(
        read(root, "/etc/passwd").contains("core:"),
        "the core user exists"
    );
}

fn fleet_copy_rendered() -> (tempfile::TempDir, tempfile::TempDir) {
    let fleet = super::example_fleet();
    let out = render_with_cli(fleet.path());
    (fleet, out)
}

#[test]
fn control_plane_config_applies() {
    let (fleet, out) = fleet_copy_rendered();
    let (_dir, root) = apply(&out.path().join("fra/fra-cp-01.final.ign"));
    assert_identity(&root, fleet.path(), "fra", "fra-cp-01", "10.10.4.11");
    let etcd = read(&root, "/etc/etcd/etcd.env");
    assert!(etcd.contains("ETCD_INITIAL_CLUSTER=fra-cp-01=https://10.10.4.11:2380,fra-cp-02=https://10.10.4.12:2380,fra-cp-03=https://10.10.4.13:2380"), "{etcd}");
    assert!(read(&root, "/etc/systemd/system/etcd.service")
        .contains("EnvironmentFile=/etc/etcd/etcd.env"));
    assert!(read(&root, "/etc/systemd/system/kubelet.service").contains("--node-ip=10.10.4.11"));
    let preset = read(&root, "/etc/systemd/system-preset/20-ignition.preset");
    assert!(
        preset.contains("enable etcd.service") && preset.contains("enable kubelet.service"),
        "{preset}"
    );
    let masked = std::fs::read_link(root.join("etc/systemd/system/update-engine.service")).unwrap();
    assert_eq!(masked, Path::new("/dev/null"));
    assert_eq!(mode(&root, "/etc/etcd/pki"), 0o700);
    assert!(
        !root.join("etc/etcd/pki/server.key").exists(),
        "cluster PKI never travels in Ignition"
    );
}

#[test]
fn worker_config_applies() {
    let (fleet, out) = fleet_copy_rendered();
    let (_dir, root) = apply(&out.path().join("muc/muc-wk-02.final.ign"));
    assert_identity(&root, fleet.path(), "muc", "muc-wk-02", "10.30.4.15");
    assert!(read(&root, "/etc/systemd/system/kubelet.service").contains("--node-ip=10.30.4.15"));
    assert!(read(&root, "/etc/kubernetes/kubelet.yaml").contains("- 10.98.0.10"));
    assert!(
        !root.join("etc/systemd/system/etcd.service").exists(),
        "workers run no etcd"
    );
    let preset = read(&root, "/etc/systemd/system-preset/20-ignition.preset");
    assert!(preset.contains("enable kubelet.service"), "{preset}");
}

#[test]
fn install_stage_applies_and_carries_the_final_config() {
    let (_fleet, out) = fleet_copy_rendered();
    let (_dir, root) = apply(&out.path().join("ber/ber-cp-02.ign"));
    let embedded = std::fs::read(root.join("opt/metalherd/final.ign")).unwrap();
    assert_eq!(
        embedded,
        std::fs::read(out.path().join("ber/ber-cp-02.final.ign")).unwrap()
    );
    assert_eq!(mode(&root, "/opt/metalherd/final.ign"), 0o600);
    let unit = read(&root, "/etc/systemd/system/flatcar-install.service");
    assert!(
        unit.contains(
            "flatcar-install -d /dev/sda -C stable -V 4081.2.0 -i /opt/metalherd/final.ign"
        ),
        "{unit}"
    );
    let _ = repo();
}

/// Records `image` as the built image of the fleet's extension `name` in
/// its assets.lock, as `assets fetch` or `lab image` would.
pub fn lock_extension(fleet: &Path, name: &str, image: &[u8]) -> String {
    use sha2::Digest;
    let model = metalherd::fleet::load(fleet).unwrap();
    let ext = model.extensions.iter().find(|e| e.name == name).unwrap();
    let sha512 = hex::encode(sha2::Sha512::digest(image));
    let mut lock = metalherd::fleet::lock::AssetsLock::read(fleet).unwrap();
    lock.version = 1;
    lock.extensions.insert(
        name.to_string(),
        metalherd::fleet::lock::LockedExtension {
            version: ext.version.clone(),
            source: ext.source.location(),
            os: metalherd::fleet::extensions::sysext_os(model.os.flavor).to_string(),
            source_digest: metalherd::assets::verify::Expected {
                algorithm: metalherd::assets::verify::Algorithm::Sha256,
                hex: hex::encode(sha2::Sha256::digest(image)),
            },
            image: ext.file_name(),
            image_size: image.len() as u64,
            image_sha512: sha512.clone(),
        },
    );
    lock.write(fleet).unwrap();
    sha512
}

/// The real Ignition fetches a control plane's etcd extension from the
/// site's boot server (here a loopback test server) with the pinned
/// sha512 checked: the file lands byte-identical, `/etc/extensions/etcd.raw`
/// links to it and systemd-sysext is enabled. Served bytes that differ
/// from the pin make Ignition fail, naming the hash mismatch.
#[test]
fn control_plane_extension_is_fetched_over_http_with_its_hash_checked() {
    let server = super::httpd::Server::start();
    let fleet = super::example_fleet();
    let site = fleet.path().join("sites/fra.yaml");
    let yaml = std::fs::read_to_string(&site).unwrap();
    std::fs::write(
        &site,
        yaml.replace(
            "boot_server: http://10.10.0.2:8080",
            &format!("boot_server: {}", server.url()),
        ),
    )
    .unwrap();
    let image: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    lock_extension(fleet.path(), "etcd", &image);
    let out = render_with_cli(fleet.path());
    let config = out.path().join("fra/fra-cp-01.final.ign");
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(
        text.contains("/assets/extensions/etcd/etcd-v3.5.15.raw"),
        "the config fetches the extension from the boot server"
    );
    assert!(
        !text.contains("kubernetes-v1.31.2.raw"),
        "the unpinned kubernetes extension is left out"
    );

    server.put("/assets/extensions/etcd/etcd-v3.5.15.raw", image.clone());
    let (_dir, root) = apply(&config);
    let landed = std::fs::read(root.join("opt/extensions/etcd/etcd-v3.5.15.raw")).unwrap();
    assert!(landed == image, "the extension landed byte-identical");
    assert_eq!(
        std::fs::read_link(root.join("etc/extensions/etcd.raw")).unwrap(),
        Path::new("/opt/extensions/etcd/etcd-v3.5.15.raw")
    );
    let preset = read(&root, "/etc/systemd/system-preset/20-ignition.preset");
    assert!(preset.contains("enable systemd-sysext.service"), "{preset}");
    assert!(read(&root, "/etc/systemd/system/etcd.service").contains("ExecStart=/usr/bin/etcd"));
    assert!(
        server
            .requests()
            .iter()
            .any(|(p, _)| p.starts_with("/assets/extensions/etcd/etcd-v3.5.15.raw")),
        "Ignition fetched it from the boot server"
    );

    let mut tampered = image.clone();
    tampered[1000] ^= 0xff;
    server.put("/assets/extensions/etcd/etcd-v3.5.15.raw", tampered);
    let log = match try_apply(&config) {
        Ok(_) => panic!("Ignition applied an extension whose bytes differ from the pin"),
        Err(log) => log,
    };
    assert!(
        log.to_lowercase().contains("hash"),
        "the failure names the hash: {log}"
    );
}

/// A site's registry mirror: Ignition writes containerd's `hosts.toml` for
/// the fleet's image registry (parsed by Python's tomllib, a real TOML
/// parser) naming the mirror, the containerd config that points at it,
/// and the drop-in that makes Flatcar's containerd read that config. A
/// site without a mirror gets none of it.
#[test]
fn registry_mirror_renders_containerd_hosts_toml() {
    let fleet = super::example_fleet();
    let site = fleet.path().join("sites/fra.yaml");
    let yaml = std::fs::read_to_string(&site).unwrap();
    std::fs::write(
        &site,
        format!("{yaml}registry_mirror: https://mirror.fra.example:5000\n"),
    )
    .unwrap();
    let out = render_with_cli(fleet.path());
    let (_dir, root) = apply(&out.path().join("fra/fra-wk-01.final.ign"));
    let hosts = root.join("etc/containerd/certs.d/registry.k8s.io/hosts.toml");
    let python = super::require("python3", "python3");
    let parsed = Command::new(python)
        .args([
            "-c",
            "import json, sys, tomllib; print(json.dumps(tomllib.load(open(sys.argv[1], 'rb'))))",
        ])
        .arg(&hosts)
        .output()
        .unwrap();
    assert!(
        parsed.status.success(),
        "hosts.toml is not TOML: {}",
        String::from_utf8_lossy(&parsed.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&parsed.stdout).unwrap();
    assert_eq!(doc["server"], "https://registry.k8s.io", "{doc}");
    assert_eq!(
        doc["host"]["https://mirror.fra.example:5000"]["capabilities"],
        serde_json::json!(["pull", "resolve"]),
        "{doc}"
    );
    let config = read(&root, "/etc/containerd/config.toml");
    assert!(
        config.contains("config_path = \"/etc/containerd/certs.d\""),
        "{config}"
    );
    let dropin = read(
        &root,
        "/etc/systemd/system/containerd.service.d/10-metalherd.conf",
    );
    assert!(
        dropin.contains("CONTAINERD_CONFIG=/etc/containerd/config.toml"),
        "{dropin}"
    );

    let (_dir, ber) = apply(&out.path().join("ber/ber-wk-01.final.ign"));
    assert!(
        !ber.join("etc/containerd").exists(),
        "a site without a mirror pulls from the registry as is"
    );
}
