//! Rendering the example fleet: snapshots of each role's Ignition and of
//! the iPXE and dnsmasq files, the real `ignition-validate` on every file
//! `render` writes, the real `dnsmasq --test` on every dnsmasq config, and
//! determinism.

use std::collections::HashMap;
use std::process::Command;

use base64::Engine;
use metalherd::keys::{KeyPair, Keys};
use metalherd::render::{self, Rendered, Selection};

use super::{example_fleet, files_below, render_with_cli, repo, require, text};

/// Keys derived from fixed seeds, so snapshots are stable.
pub(super) fn seeded_keys(fleet: &metalherd::fleet::Fleet) -> Keys {
    let host: HashMap<_, _> = fleet
        .machines()
        .enumerate()
        .map(|(i, (_, m))| {
            (
                m.name.clone(),
                KeyPair::from_seed([i as u8 + 1; 32], &format!("root@{}", m.name)),
            )
        })
        .collect();
    Keys {
        host,
        operator: KeyPair::from_seed([200; 32], "metalherd"),
    }
}

fn render_example() -> Rendered {
    let fleet = metalherd::fleet::load(repo()).expect("example fleet loads");
    let keys = seeded_keys(&fleet);
    render::render(&fleet, &keys, &Selection::default(), 1).expect("example fleet renders")
}

fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// Pretty JSON with every `data:` URL decoded, so a snapshot diff shows
/// what changed in the files, not in base64.
pub(super) fn readable(ignition: &str) -> String {
    fn walk(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, v) in map.iter_mut() {
                    if k == "source" {
                        let text = v.as_str().unwrap_or("").to_string();
                        let bytes = match text.strip_prefix("data:;base64,") {
                            Some(b64) => Some(
                                base64::engine::general_purpose::STANDARD
                                    .decode(b64)
                                    .unwrap(),
                            ),
                            None => text.strip_prefix("data:,").map(percent_decode),
                        };
                        if let Some(bytes) = bytes {
                            let decoded = String::from_utf8(bytes).unwrap();
                            *v = match serde_json::from_str::<serde_json::Value>(&decoded) {
                                Ok(mut inner) if inner.get("ignition").is_some() => {
                                    walk(&mut inner);
                                    serde_json::json!({ "embedded ignition config": inner })
                                }
                                // Even a seeded test key stays out of the repository.
                                _ if decoded.contains("PRIVATE KEY") => serde_json::Value::String(
                                    "(decoded) <private key, redacted>".into(),
                                ),
                                _ => serde_json::Value::String(format!("(decoded) {decoded}")),
                            };
                            continue;
                        }
                    }
                    walk(v);
                }
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    let mut value: serde_json::Value = serde_json::from_str(ignition).unwrap();
    walk(&mut value);
    serde_json::to_string_pretty(&value).unwrap()
}

#[test]
fn snapshots_of_each_role() {
    let rendered = render_example();
    let machine = |name: &str| {
        rendered
            .machines
            .iter()
            .find(|m| m.name.as_str() == name)
            .unwrap()
    };
    for (name, role) in [
        ("fra-cp-01", "control-plane"),
        ("fra-wk-01", "worker"),
        ("fra-sp-01", "spare"),
    ] {
        let m = machine(name);
        insta::assert_snapshot!(
            format!("{role}.final.ign"),
            readable(m.final_ignition.as_ref().unwrap())
        );
        insta::assert_snapshot!(format!("{role}.ipxe"), m.ipxe);
    }
    insta::assert_snapshot!("install.ign", readable(&machine("fra-cp-01").ignition));
    let fra = rendered
        .sites
        .iter()
        .find(|s| s.name.as_str() == "fra")
        .unwrap();
    insta::assert_snapshot!("fra.dnsmasq.conf", fra.dnsmasq.as_ref().unwrap());
}

#[test]
fn installing_machines_carry_their_final_config() {
    let rendered = render_example();
    for m in &rendered.machines {
        let fin = m
            .final_ignition
            .as_ref()
            .expect("every example machine installs to disk");
        let encoded = metalherd::render::butane::data_url_plain(fin.as_bytes());
        assert!(
            m.ignition.contains(&encoded),
            "{}: install stage embeds the final config",
            m.name
        );
        let install =
            "flatcar-install -d /dev/sda -C stable -V 4081.2.0 -i /opt/metalherd/final.ign";
        assert!(
            m.ignition.contains(install),
            "{}: the install unit pins channel and version",
            m.name
        );
        assert!(
            m.ipxe.contains("ignition.config.url=http://10."),
            "{}",
            m.ipxe
        );
    }
}

#[test]
fn ignition_validate_accepts_every_rendered_file_without_warnings() {
    let validate = require("ignition-validate", "ignition");
    // With both extensions pinned, so that their files, links and the
    // sysext unit are validated too.
    let fleet = super::example_fleet();
    super::ignition_apply::lock_extension(fleet.path(), "etcd", b"etcd image");
    super::ignition_apply::lock_extension(fleet.path(), "kubernetes", b"kubernetes image");
    let out = render_with_cli(fleet.path());
    let cp = std::fs::read_to_string(out.path().join("fra/fra-cp-01.final.ign")).unwrap();
    for want in [
        "/opt/extensions/etcd/etcd-v3.5.15.raw",
        "/opt/extensions/kubernetes/kubernetes-v1.31.2.raw",
        "/etc/extensions/kubernetes.raw",
        "systemd-sysext.service",
    ] {
        assert!(cp.contains(want), "control plane config lacks {want}");
    }
    let files: Vec<_> = files_below(out.path())
        .into_iter()
        .filter(|f| f.extension().is_some_and(|e| e == "ign"))
        .collect();
    assert_eq!(
        files.len(),
        36,
        "18 machines x (install stage + final config)"
    );
    let mut problems = Vec::new();
    for f in &files {
        let r = Command::new(&validate)
            .arg(out.path().join(f))
            .output()
            .unwrap();
        let said = format!("{}{}", text(&r.stdout), text(&r.stderr));
        if !r.status.success() || !said.trim().is_empty() {
            problems.push(format!(
                "{}: exit {:?}: {said}",
                f.display(),
                r.status.code()
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "ignition-validate complained:\n{}",
        problems.join("\n")
    );

    // The validator really validates: a config it must reject.
    let bad = out.path().join("bad.ign");
    std::fs::write(
        &bad,
        r#"{"ignition":{"version":"3.3.0"},"storage":{"files":[{"path":"relative/path"}]}}"#,
    )
    .unwrap();
    let r = Command::new(&validate).arg(&bad).output().unwrap();
    assert!(
        !r.status.success(),
        "ignition-validate must reject a relative path"
    );
}

#[test]
fn dnsmasq_accepts_every_rendered_config() {
    let dnsmasq = require("dnsmasq", "dnsmasq-base");
    let out = render_with_cli(repo());
    for site in ["fra", "ber", "muc"] {
        let conf = out.path().join(site).join("dnsmasq.conf");
        let r = Command::new(&dnsmasq)
            .arg("--test")
            .arg(format!("--conf-file={}", conf.display()))
            .output()
            .unwrap();
        let said = format!("{}{}", text(&r.stdout), text(&r.stderr));
        assert!(
            r.status.success() && said.contains("syntax check OK"),
            "{site}: {said}"
        );
    }
    let bad = out.path().join("bad.conf");
    std::fs::write(&bad, "dhcp-range=not-an-address,proxy\n").unwrap();
    let r = Command::new(&dnsmasq)
        .arg("--test")
        .arg(format!("--conf-file={}", bad.display()))
        .output()
        .unwrap();
    assert!(
        !r.status.success(),
        "dnsmasq --test must reject a bad range"
    );
}

#[test]
fn two_renders_are_byte_identical() {
    let fleet = example_fleet();
    let a = render_with_cli(fleet.path());
    let b = render_with_cli(fleet.path());
    let files = files_below(a.path());
    assert_eq!(files, files_below(b.path()));
    // Per site: three files per machine, dnsmasq.conf, the render marker.
    assert_eq!(files.len(), 18 * 3 + 3 * 2);
    for f in &files {
        let (x, y) = (
            std::fs::read(a.path().join(f)).unwrap(),
            std::fs::read(b.path().join(f)).unwrap(),
        );
        assert!(x == y, "{} differs between two renders", f.display());
    }
    // And the library agrees with itself for fixed keys.
    let (r1, r2) = (render_example(), render_example());
    for (m1, m2) in r1.machines.iter().zip(&r2.machines) {
        assert_eq!(m1.ignition, m2.ignition);
    }
}

#[test]
fn the_fcos_flavor_renders_valid_configs_and_installs_with_coreos_inst() {
    let validate = require("ignition-validate", "ignition");
    let fleet = example_fleet();
    let edit = |path: &str, from: &str, to: &str| {
        let p = fleet.path().join(path);
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.contains(from), "{path} holds {from:?}");
        std::fs::write(&p, text.replace(from, to)).unwrap();
    };
    edit("inventory/fleet.yaml", "flavor: flatcar", "flavor: fcos");
    edit(
        "inventory/fleet.yaml",
        "version: \"4081.2.0\"",
        "version: \"41.20241027.3.0\"",
    );
    for role in ["control-plane", "worker", "spare", "install"] {
        edit(
            &format!("ignition/{role}.yaml"),
            "variant: flatcar\nversion: 1.0.0",
            "variant: fcos\nversion: 1.4.0",
        );
    }
    let out = render_with_cli(fleet.path());
    let files = files_below(out.path());
    assert!(
        !files
            .iter()
            .any(|f| f.to_string_lossy().ends_with(".final.ign")),
        "fcos has no install stage: {files:?}"
    );
    let ipxe = std::fs::read_to_string(out.path().join("fra/fra-wk-01.ipxe")).unwrap();
    assert!(ipxe.contains("coreos.inst.install_dev=/dev/sda"), "{ipxe}");
    assert!(
        ipxe.contains(
            "coreos.inst.ignition_url=http://10.10.0.2:8080/ignition?mac=52-54-00-fa-00-04"
        ),
        "{ipxe}"
    );
    for f in files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "ign"))
    {
        let r = Command::new(&validate)
            .arg(out.path().join(f))
            .output()
            .unwrap();
        let said = format!("{}{}", text(&r.stdout), text(&r.stderr));
        assert!(
            r.status.success() && said.trim().is_empty(),
            "{}: {said}",
            f.display()
        );
    }

    // A role file whose variant does not match the fleet's OS is refused.
    edit("ignition/worker.yaml", "variant: fcos", "variant: flatcar");
    let dir = tempfile::tempdir().unwrap();
    let r = super::metalherd(
        fleet.path(),
        &["render", "--out", dir.path().to_str().unwrap()],
    );
    assert_eq!(r.status.code(), Some(1));
    assert!(
        text(&r.stderr).contains("needs `variant: fcos`"),
        "{}",
        text(&r.stderr)
    );
}

/// Each Butane version gives the spec Butane gives it: 1.1.0 → Ignition
/// 3.4.0, where setuid bits are allowed; 1.0.0 → 3.3.0, where they are
/// refused. Debian's Ignition (2.14) knows 3.4.0 only as
/// `3.4.0-experimental`: the rendered 3.4.0 configs pass the real
/// `ignition-validate` under that name, with no warning.
#[test]
fn butane_versions_give_their_ignition_spec_checked_by_the_real_validator() {
    let validate = require("ignition-validate", "ignition");
    let fleet = example_fleet();
    let setuid = "storage:\n  files:\n    - path: /opt/bin/helper\n      mode: 04755\n      contents: { inline: \"#!/bin/sh\\n\" }\n";
    let worker = fleet.path().join("ignition/worker.yaml");
    let text_of = std::fs::read_to_string(&worker).unwrap();
    assert!(text_of.contains("\nstorage:\n  files:\n"), "{text_of}");
    let with_setuid = text_of.replacen("\nstorage:\n  files:\n", &format!("\n{setuid}"), 1);
    std::fs::write(&worker, &with_setuid).unwrap();

    // 1.0.0 (3.3.0): refused, naming the file, line and field.
    let out = tempfile::tempdir().unwrap();
    let r = super::metalherd(
        fleet.path(),
        &["render", "--out", out.path().to_str().unwrap()],
    );
    assert_eq!(r.status.code(), Some(1));
    let stderr = text(&r.stderr);
    assert!(
        stderr.contains("ignition/worker.yaml") && stderr.contains("need Ignition spec 3.4.0"),
        "{stderr}"
    );

    // 1.1.0 (3.4.0): every role file says so, and the setuid file renders.
    for role in ["control-plane", "worker", "spare", "install"] {
        let p = fleet.path().join(format!("ignition/{role}.yaml"));
        let t = std::fs::read_to_string(&p).unwrap();
        assert!(t.contains("version: 1.0.0"), "{role}");
        std::fs::write(&p, t.replace("version: 1.0.0", "version: 1.1.0")).unwrap();
    }
    let out = render_with_cli(fleet.path());
    let worker_ign = std::fs::read_to_string(out.path().join("fra/fra-wk-01.final.ign")).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&worker_ign).unwrap();
    assert_eq!(doc["ignition"]["version"], "3.4.0");
    let helper = doc["storage"]["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == "/opt/bin/helper")
        .unwrap_or_else(|| panic!("no helper in {doc}"));
    assert_eq!(helper["mode"], 0o4755);
    let dir = tempfile::tempdir().unwrap();
    let mut validated = 0;
    for f in files_below(out.path())
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "ign"))
    {
        let body = std::fs::read_to_string(out.path().join(f)).unwrap();
        assert!(body.contains(r#""version":"3.4.0""#), "{}", f.display());
        let experimental = dir.path().join(f.file_name().unwrap());
        std::fs::write(
            &experimental,
            body.replace(r#""version":"3.4.0""#, r#""version":"3.4.0-experimental""#),
        )
        .unwrap();
        let r = Command::new(&validate).arg(&experimental).output().unwrap();
        let said = format!("{}{}", text(&r.stdout), text(&r.stderr));
        assert!(
            r.status.success() && said.trim().is_empty(),
            "{}: {said}",
            f.display()
        );
        validated += 1;
    }
    assert!(validated >= 18, "validated only {validated} configs");
}

/// One role file serves machines whose disks differ: `machine.disks.etcd`
/// is the site's default device, or the machine's own.
#[test]
fn named_disks_give_each_machine_its_own_device() {
    // The shipped fleet: etcd's disk is the site's (fra, muc: NVMe; ber:
    // SATA), but muc-cp-03's own (an older chassis).
    let fleet = example_fleet();
    let out = render_with_cli(fleet.path());
    let config = |site: &str, machine: &str| -> serde_json::Value {
        let body = std::fs::read_to_string(out.path().join(format!("{site}/{machine}.final.ign")))
            .unwrap();
        serde_json::from_str(&body).unwrap()
    };
    for (site, machine, device) in [
        ("fra", "fra-cp-01", "/dev/nvme0n1"),
        ("ber", "ber-cp-02", "/dev/sdb"),
        ("muc", "muc-cp-01", "/dev/nvme0n1"),
        ("muc", "muc-cp-03", "/dev/sdb"),
    ] {
        let doc = config(site, machine);
        let filesystems = &doc["storage"]["filesystems"];
        assert_eq!(
            filesystems,
            &serde_json::json!([{
                "device": device, "format": "ext4", "label": "etcd", "mountOptions": ["noatime"],
                "path": "/var/lib/etcd", "wipeFilesystem": true
            }]),
            "{machine}"
        );
        let units = doc["systemd"]["units"].as_array().unwrap();
        let mount = units
            .iter()
            .find(|u| u["name"] == "var-lib-etcd.mount")
            .unwrap_or_else(|| panic!("{machine}: no mount unit in {units:?}"));
        let contents = mount["contents"].as_str().unwrap();
        assert!(
            contents.contains(&format!("What={device}\n"))
                && contents.contains("Where=/var/lib/etcd\n")
                && contents.contains("Options=noatime\n")
                && mount["enabled"] == true,
            "{machine}: {contents}"
        );
        let etcd = units.iter().find(|u| u["name"] == "etcd.service").unwrap();
        assert!(etcd["contents"]
            .as_str()
            .unwrap()
            .contains("RequiresMountsFor=/var/lib/etcd\n"));
    }
    // Workers run no etcd: no filesystem for it.
    assert!(config("fra", "fra-wk-01")["storage"]["filesystems"].is_null());
    // The inventory shows them.
    let shown = super::metalherd(
        fleet.path(),
        &["--output", "json", "inventory", "show", "--site", "muc"],
    );
    let doc: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert!(doc.to_string().contains("/dev/sdb"), "{doc}");

    // A role file that names a disk needs it at every site it serves.
    let p = fleet.path().join("sites/ber.yaml");
    let site = std::fs::read_to_string(&p).unwrap();
    std::fs::write(&p, site.replace("disks: { etcd: /dev/sdb }", "")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let r = super::metalherd(
        fleet.path(),
        &["render", "--out", dir.path().to_str().unwrap()],
    );
    assert_eq!(r.status.code(), Some(1));
    let stderr = text(&r.stderr);
    assert!(
        stderr.contains("ignition/control-plane.yaml") && stderr.contains("ber-cp-01"),
        "{stderr}"
    );
}

#[test]
fn a_tree_under_templates_reaches_each_machine_rendered_for_it() {
    // Butane's storage.trees: a directory under templates/, each file a
    // template rendered for the machine, executables 0755, symlinks links
    // (their targets are the node's paths, absent here).
    use std::os::unix::fs::PermissionsExt;
    let fleet = example_fleet();
    let tree = fleet.path().join("templates/worker-tree");
    std::fs::create_dir_all(tree.join("etc/profile.d")).unwrap();
    std::fs::write(
        tree.join("etc/motd"),
        "{{ machine.name }} of {{ site.name }}\n",
    )
    .unwrap();
    let script = tree.join("etc/profile.d/site.sh");
    std::fs::write(&script, "export SITE={{ site.name }}\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("/opt/site/bin/tool", tree.join("etc/tool")).unwrap();
    let role = fleet.path().join("ignition/worker.yaml");
    let body = std::fs::read_to_string(&role).unwrap();
    assert!(body.contains("\nstorage:\n  files:\n"), "{body}");
    std::fs::write(
        &role,
        body.replacen(
            "\nstorage:\n  files:\n",
            "\nstorage:\n  trees:\n    - local: worker-tree\n  files:\n",
            1,
        ),
    )
    .unwrap();
    let out = render_with_cli(fleet.path());
    for (site, machine) in [("fra", "fra-wk-01"), ("ber", "ber-wk-01")] {
        let body = std::fs::read_to_string(out.path().join(format!("{site}/{machine}.final.ign")))
            .or_else(|_| std::fs::read_to_string(out.path().join(format!("{site}/{machine}.ign"))))
            .unwrap();
        let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
        let file = |path: &str| {
            doc["storage"]["files"]
                .as_array()
                .unwrap()
                .iter()
                .find(|f| f["path"] == path)
                .unwrap_or_else(|| panic!("{machine}: no {path}"))
                .clone()
        };
        let contents = |f: &serde_json::Value| {
            use base64::Engine;
            let url = f["contents"]["source"].as_str().unwrap();
            let data = url.strip_prefix("data:;base64,").unwrap();
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(data)
                .unwrap();
            String::from_utf8(bytes).unwrap()
        };
        let motd = file("/etc/motd");
        assert_eq!(contents(&motd), format!("{machine} of {site}\n"));
        assert_eq!(motd["mode"], 0o644);
        let sh = file("/etc/profile.d/site.sh");
        assert_eq!(contents(&sh), format!("export SITE={site}\n"));
        assert_eq!(sh["mode"], 0o755);
        let link = doc["storage"]["links"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["path"] == "/etc/tool")
            .unwrap_or_else(|| panic!("{machine}: no link"));
        assert_eq!(link["target"], "/opt/site/bin/tool");
    }
}
