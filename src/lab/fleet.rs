//! The lab fleet: the shipped example fleet (same sites, machines, MACs,
//! addresses and role templates) with the three changes that put it on
//! virtual machines: `os.flavor: lab` with the Debian suite as its version,
//! `boot.dhcp: server` (the lab's dnsmasq is the only DHCP server), and
//! each machine's BMC a QEMU QMP socket under `.metalherd/lab/qmp/`
//! instead of Redfish, with no install disk (the lab runs from RAM) and
//! its named data disks the VM's virtio disks (`/dev/vda`, … in order).

use crate::example;

/// The Debian suite the lab image is built from.
pub const SUITE: &str = "bookworm";

/// The lab's stand-in for a global load balancer: the traffic hooks call
/// it, and it records each weight change in `.metalherd/lab/gslb.log`.
const GSLB: &str = "#!/bin/sh\n\
# The lab's global load balancer: records \"SITE WEIGHT\" with the time.\n\
# A real fleet's traffic hooks call its GSLB's API here.\n\
set -eu\n\
mkdir -p .metalherd/lab\n\
echo \"$(date -u +%Y-%m-%dT%H:%M:%SZ) $1 weight $2\" >> .metalherd/lab/gslb.log\n";

/// The lab's stand-in for a site's network automation, for `drill site S
/// --isolate`: sets the site's bridge down (its machines keep running,
/// cut off from everything) or up again, and records it.
const LINK: &str = "#!/bin/sh\n\
# The lab's network automation: `lab-link SITE down|up` cuts site SITE off\n\
# (its bridge down: the VMs keep running) or reconnects it. A real fleet's\n\
# drill hooks call its switches' or firewalls' automation here.\n\
set -eu\n\
ip link set \"br-$1\" \"$2\"\n\
mkdir -p .metalherd/lab\n\
echo \"$(date -u +%Y-%m-%dT%H:%M:%SZ) $1 link $2\" >> .metalherd/lab/network.log\n";

/// Every file of the lab fleet: its path and contents.
pub fn files() -> Vec<(&'static str, String)> {
    let mut files: Vec<(&'static str, String)> = example::FILES
        .iter()
        .map(|(path, text)| {
            let text = if *path == "inventory/fleet.yaml" {
                fleet_yaml(text)
            } else if path.starts_with("inventory/") {
                inventory(text)
            } else if path.starts_with("sites/") {
                site(text)
            } else {
                text.to_string()
            };
            (*path, text)
        })
        .collect();
    files.push(("scripts/lab-gslb", GSLB.to_string()));
    files.push(("scripts/lab-link", LINK.to_string()));
    files
}

/// The lab fleet's node software: etcd from Debian's package, built into
/// an extension by `lab image`. It takes the place of the example's
/// `extensions` (and the comment above them).
fn lab_extensions() -> String {
    format!(
        "# Node software for the lab's Debian VMs, as on Flatcar a system extension:\n\
         # `metalherd lab image` builds etcd's from Debian's etcd-server package (apt\n\
         # checks it against Debian's signed archive index) and records its digests\n\
         # in assets.lock; VMs get it only through Ignition and systemd-sysext. No\n\
         # kubernetes extension: no package source the lab reaches has a current\n\
         # kubelet, so lab clusters stop at a healthy etcd quorum.\n\
         extensions:\n  \
         - name: etcd\n    \
         version: {SUITE}\n    \
         roles: [control-plane]\n    \
         build:\n      \
         deb: debian:etcd-server\n"
    )
}

fn fleet_yaml(text: &str) -> String {
    // The example's extensions block: from its comment to `admins:`.
    let text = match (text.find("# Node software"), text.find("\nadmins:")) {
        (Some(start), Some(end)) if start < end => {
            format!("{}{}{}", &text[..start], lab_extensions(), &text[end + 1..])
        }
        _ => text.to_string(),
    };
    let mut out = String::new();
    let mut section = "";
    for line in text.lines() {
        if !line.starts_with(' ') && !line.starts_with('#') && line.contains(':') {
            section = line.split(':').next().unwrap_or("");
        }
        let key = line.trim_start().split(':').next().unwrap_or("");
        match (section, key) {
            ("name", "name") => {
                let name = line.split_once(':').map_or("", |(_, v)| v.trim());
                out.push_str(&format!(
                    "name: {name}-lab   # its own name: the lab's state and keys never mix with {name}'s\n"
                ));
            }
            ("os", "flavor") => {
                out.push_str("  flavor: lab                # built by `metalherd lab image`\n")
            }
            ("os", "version") => out.push_str(&format!(
                "  version: {SUITE}           # the Debian suite of the lab image\n"
            )),
            ("traffic", "drain") => out.push_str(
                "  drain: \"sh scripts/lab-gslb {site} 0\"      # the lab's stand-in GSLB\n",
            ),
            ("traffic", "restore") => {
                out.push_str("  restore: \"sh scripts/lab-gslb {site} 100\"\n")
            }
            ("boot", "require_token") => {
                out.push_str(line);
                out.push_str("\n  dhcp: server               # the lab's dnsmasq leases the addresses itself\n");
            }
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out.push_str(
        "drill:                       # `drill site S --isolate` cuts the site's bridge\n  \
         isolate: \"sh scripts/lab-link {site} down\"\n  \
         reconnect: \"sh scripts/lab-link {site} up\"\n",
    );
    out.replacen(
        "# Fleet-wide settings of the example fleet.",
        "# Fleet-wide settings of the example fleet as the lab runs it (`metalherd init --lab`).",
        1,
    )
}

/// A site's named data disks as a lab VM has them: one virtio disk each,
/// `/dev/vda`, `/dev/vdb`, … in the order the site names them.
fn site(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let named = line
            .strip_prefix("disks:")
            .and_then(|rest| rest.split('#').next())
            .and_then(|map| map.trim().strip_prefix('{'))
            .and_then(|map| map.strip_suffix('}'));
        match named {
            Some(map) => {
                let disks: Vec<String> = map
                    .split(',')
                    .filter_map(|pair| pair.split(':').next())
                    .map(str::trim)
                    .filter(|name| !name.is_empty())
                    .enumerate()
                    .map(|(i, name)| format!("{name}: /dev/vd{}", (b'a' + i as u8) as char))
                    .collect();
                out.push_str(&format!(
                    "disks: {{ {} }}   # the lab VMs' virtio disks\n",
                    disks.join(", ")
                ));
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// Drops `install_disk` and machine `disks` lines (a lab VM's disks are
/// its site's) and turns each machine's `bmc:` block into a
/// QEMU socket named after the machine.
fn inventory(text: &str) -> String {
    let mut out = String::new();
    let mut machine = String::new();
    let mut in_bmc = false;
    for line in text.lines() {
        let trimmed = line.trim_start();
        if let Some(name) = trimmed.strip_prefix("- name:") {
            machine = name.trim().to_string();
        }
        if in_bmc {
            if line.starts_with("      ") {
                continue;
            }
            in_bmc = false;
        }
        if trimmed.starts_with("install_disk:") || trimmed.starts_with("disks:") {
            continue;
        }
        if trimmed == "bmc:" {
            in_bmc = true;
            out.push_str(&format!(
                "    bmc: {{ driver: qemu, address: \"unix:.metalherd/lab/qmp/{machine}.qmp\" }}\n"
            ));
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lab_fleet_differs_only_where_it_must() {
        let files = files();
        assert_eq!(files.len(), example::FILES.len() + 2);
        assert!(files.iter().any(|(p, _)| *p == "scripts/lab-link"));
        assert!(files.iter().any(|(p, _)| *p == "scripts/lab-gslb"));
        let fleet = &files
            .iter()
            .find(|(p, _)| *p == "inventory/fleet.yaml")
            .unwrap()
            .1;
        assert!(fleet.contains("  flavor: lab"), "{fleet}");
        assert!(fleet.contains(&format!("  version: {SUITE}")), "{fleet}");
        assert!(fleet.contains("  dhcp: server"), "{fleet}");
        assert!(
            fleet.contains("version: v1.31.2"),
            "kubernetes untouched: {fleet}"
        );
        assert!(fleet.contains("deb: debian:etcd-server"), "{fleet}");
        assert!(
            fleet.contains("\nname: example-lab "),
            "its own name: {fleet}"
        );
        assert!(
            !fleet.contains("kubernetes-node-linux-amd64"),
            "the lab declares no kubernetes extension: {fleet}"
        );
        let fra = &files
            .iter()
            .find(|(p, _)| *p == "inventory/fra.yaml")
            .unwrap()
            .1;
        assert!(!fra.contains("install_disk"), "{fra}");
        let muc = &files
            .iter()
            .find(|(p, _)| *p == "inventory/muc.yaml")
            .unwrap()
            .1;
        assert!(!muc.contains("disks:"), "{muc}");
        let site = &files
            .iter()
            .find(|(p, _)| *p == "sites/ber.yaml")
            .unwrap()
            .1;
        assert!(
            site.contains("\ndisks: { etcd: /dev/vda }   # the lab VMs' virtio disks\n"),
            "{site}"
        );
        assert_eq!(
            super::site("disks: { etcd: /dev/sdb, data: /dev/sdc }  # x\nname: a\n"),
            "disks: { etcd: /dev/vda, data: /dev/vdb }   # the lab VMs' virtio disks\nname: a\n"
        );
        assert!(!fra.contains("redfish"), "{fra}");
        assert!(
            fra.contains(
                "bmc: { driver: qemu, address: \"unix:.metalherd/lab/qmp/fra-cp-01.qmp\" }"
            ),
            "{fra}"
        );
        assert_eq!(fra.matches("driver: qemu").count(), 6);
    }
}
