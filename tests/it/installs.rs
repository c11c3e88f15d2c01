//! Disk installs without loops, on the machines harness with machines that
//! install to a disk behind network-first firmware
//! ([`Machines::start_installing`]): `provision` ends with one install per
//! machine (the network boot after the install is told to boot the disk,
//! not installed again, and raises no alarm), the report from the
//! installed system, and each BMC set to boot from disk and read back; a
//! reboot afterwards does not touch the network; `replace` sets a network
//! boot again for its one install.

use super::machines::{all, Machines};

const MACHINES: [&str; 2] = ["fra-cp-01", "fra-wk-01"];
const MACS: [&str; 2] = ["52:54:00:fa:00:01", "52:54:00:fa:00:04"];

/// `/ipxe` requests per machine in the boot server's log, and whether it
/// logged a possible theft.
fn ipxe_requests(site: &Machines) -> (Vec<usize>, bool) {
    let log = std::fs::read_to_string(site.fleet.path().join("serve.log")).unwrap();
    let counts = MACS
        .iter()
        .map(|mac| {
            log.lines()
                .filter(|l| l.contains(&format!("GET /ipxe 200 mac={mac}")))
                .count()
        })
        .collect();
    (counts, log.contains("possible theft"))
}

fn boots_from_disk(site: &Machines) {
    for m in MACHINES {
        let device = site.boot_device(m);
        assert!(
            device.contains("Boot Device Selector : Force Boot from default Hard-Drive"),
            "{m}: {device}"
        );
    }
}

#[test]
fn disk_installs_boot_once_then_from_disk_and_replace_installs_again() {
    let site = Machines::start_installing(&MACHINES);
    let timeouts = ["--boot-timeout", "60", "--ready-timeout", "90"];
    let mut provision = vec!["provision", "site", "fra"];
    provision.extend(timeouts);
    let out = site.metalherd(&provision);
    assert!(out.status.success(), "provision: {}", all(&out));
    site.firmware.settle();
    let said = all(&out);
    assert!(said.contains("boot from disk"), "{said}");
    assert_eq!(site.firmware.installs(), (vec![1, 1], vec![0, 0]));
    // The install stage's boot and the installed system's: two requests,
    // the second answered with the local-disk script.
    assert_eq!(ipxe_requests(&site), (vec![2, 2], false));
    assert_eq!(site.firmware.local_boots(), vec![1, 1]);
    boots_from_disk(&site);

    // A reboot boots the disk: no network boot, no install.
    let out = site.metalherd(&["power", "cycle", "fra-wk-01"]);
    assert!(out.status.success(), "power cycle: {}", all(&out));
    site.firmware.settle();
    assert_eq!(site.firmware.installs(), (vec![1, 1], vec![0, 1]));
    assert_eq!(ipxe_requests(&site), (vec![2, 2], false));

    // replace sets a network boot once again: one more install each, then
    // the disk again.
    let mut replace = vec![
        "replace",
        "site",
        "fra",
        "--force",
        "--reason",
        "install test",
        "--bake",
        "0",
    ];
    replace.extend(timeouts);
    let out = site.metalherd(&replace);
    assert!(out.status.success(), "replace: {}", all(&out));
    site.firmware.settle();
    assert_eq!(site.firmware.installs(), (vec![2, 2], vec![0, 1]));
    assert_eq!(ipxe_requests(&site), (vec![4, 4], false));
    boots_from_disk(&site);
}
