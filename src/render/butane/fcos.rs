//! The fcos variant's own sugar, expanded as Butane's `config/fcos/v1_4`
//! and `v1_5` expand it, then laid under the file's own storage with
//! Ignition's merge ([`super::merge`]), so a file can resize or add to
//! what the sugar makes:
//!
//! - `boot_device`: a root mirrored over several disks (BIOS boot or
//!   PReP, ESP, `/boot` and root partitions on each, RAID1s, an ESP
//!   filesystem per disk, `/boot` ext4) and/or an encrypted root (LUKS
//!   `root`, bound by Clevis to a TPM2 and/or tang servers), root xfs;
//! - `grub.users`: GRUB superusers and their PBKDF2 password hashes in
//!   `/boot/grub2/user.cfg`.
//!
//! Butane's warnings about them are errors here (metalherd renders no
//! config that warns): a mirror without `layout`, a `root` partition
//! smaller than 8 GiB, or one that cannot grow, or at a number other
//! than the one Fedora CoreOS gives it.

use marked_yaml::Spanned;
use serde::Deserialize;

use super::storage::{BDisk, BTang};
use super::{data_url, ign, Conv, Text};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BBootDevice {
    layout: Option<Text>,
    luks: Option<BBootLuks>,
    mirror: Option<BMirror>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BBootLuks {
    /// Ignition 3.4.0 only.
    discard: Option<Spanned<bool>>,
    tang: Option<Vec<BTang>>,
    threshold: Option<Spanned<i64>>,
    tpm2: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BMirror {
    devices: Option<Spanned<Vec<Text>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BGrub {
    users: Option<Vec<Spanned<BGrubUser>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BGrubUser {
    name: Option<Text>,
    password_hash: Option<Text>,
}

// Butane's fcos partition layout (`config/fcos/v1_5/translate.go`).
const RESERVED_TYPE_GUID: &str = "8DA63339-0007-60C0-C436-083AC8230908";
const BIOS_TYPE_GUID: &str = "21686148-6449-6E6F-744E-656564454649";
const PREP_TYPE_GUID: &str = "9E1A2D38-C612-4316-AA26-8B49521E5A8B";
const ESP_TYPE_GUID: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
const RESERVED_SIZE_MIB: i64 = 1;
const BIOS_SIZE_MIB: i64 = 1;
const PREP_SIZE_MIB: i64 = 4;
const ESP_SIZE_MIB: i64 = 127;
const BOOT_SIZE_MIB: i64 = 384;

fn partition(label: String, size_mib: Option<i64>, type_guid: Option<&str>) -> ign::Partition {
    ign::Partition {
        label: Some(label),
        size_mib,
        type_guid: type_guid.map(str::to_string),
        ..Default::default()
    }
}

fn filesystem(device: String, format: &str, label: Option<String>, wipe: bool) -> ign::Filesystem {
    let mut fs = ign::Filesystem::new(device);
    fs.format = Some(format.into());
    fs.label = label;
    fs.wipe_filesystem = wipe.then_some(true);
    fs
}

impl Conv<'_> {
    /// The storage `boot_device` stands for (`None`: nothing asked, or an
    /// error recorded).
    pub(super) fn boot_device(&mut self, b: &Spanned<BBootDevice>) -> Option<ign::Config> {
        let (mut bios, mut esp, mut prep) = (false, false, false);
        let mut layout_known = true;
        match b.layout.as_ref().map(|l| l.as_str()) {
            None | Some("x86_64") => (bios, esp) = (true, true),
            Some("aarch64") => esp = true,
            Some("ppc64le") => prep = true,
            Some(_) => layout_known = false,
        }
        if let Some(layout) = b.layout.as_ref().filter(|_| !layout_known) {
            self.err(
                layout,
                "boot_device.layout".into(),
                "layout must be one of: aarch64, ppc64le, x86_64",
            );
        }
        let devices: &[Text] = b
            .mirror
            .as_ref()
            .and_then(|m| m.devices.as_ref())
            .map_or(&[], |d| d.as_slice());
        if let Some(list) = b.mirror.as_ref().and_then(|m| m.devices.as_ref()) {
            if list.len() == 1 {
                self.err(
                    list,
                    "boot_device.mirror.devices".into(),
                    "mirroring requires at least two devices",
                );
            }
            if !list.is_empty() && b.layout.is_none() {
                self.err(
                    list,
                    "boot_device.layout".into(),
                    "boot_device.layout should be specified when boot_device.mirror is \
                     specified (Butane warns; metalherd renders no config that warns)",
                );
            }
        }
        let luks = b.luks.as_ref();
        if let Some(d) = luks.and_then(|l| l.discard.as_ref()) {
            self.needs_3_4(d, "boot_device.luks.discard".into());
        }
        let want_luks = luks.is_some_and(|l| {
            l.tpm2 == Some(true) || l.tang.as_ref().is_some_and(|t| !t.is_empty())
        });
        let want_mirror = !devices.is_empty();
        if !layout_known || (!want_luks && !want_mirror) {
            return None;
        }

        let mut storage = ign::Storage::default();
        let (mut disks, mut filesystems) = (Vec::new(), Vec::new());
        for (i, device) in devices.iter().enumerate() {
            self.device_path(device, format!("boot_device.mirror.devices[{i}]"));
            let n = i + 1;
            let mut parts = Vec::new();
            if bios {
                parts.push(partition(
                    format!("bios-{n}"),
                    Some(BIOS_SIZE_MIB),
                    Some(BIOS_TYPE_GUID),
                ));
            } else if prep {
                parts.push(partition(
                    format!("prep-{n}"),
                    Some(PREP_SIZE_MIB),
                    Some(PREP_TYPE_GUID),
                ));
            } else {
                parts.push(partition(
                    format!("reserved-{n}"),
                    Some(RESERVED_SIZE_MIB),
                    Some(RESERVED_TYPE_GUID),
                ));
            }
            if esp {
                parts.push(partition(
                    format!("esp-{n}"),
                    Some(ESP_SIZE_MIB),
                    Some(ESP_TYPE_GUID),
                ));
            } else {
                parts.push(partition(
                    format!("reserved-{n}"),
                    Some(RESERVED_SIZE_MIB),
                    Some(RESERVED_TYPE_GUID),
                ));
            }
            parts.push(partition(format!("boot-{n}"), Some(BOOT_SIZE_MIB), None));
            parts.push(partition(format!("root-{n}"), None, None));
            let mut disk = ign::Disk::new(device.to_string());
            disk.wipe_table = Some(true);
            disk.partitions = Some(parts);
            disks.push(disk);
            if esp {
                filesystems.push(filesystem(
                    format!("/dev/disk/by-partlabel/esp-{n}"),
                    "vfat",
                    Some(format!("esp-{n}")),
                    true,
                ));
            }
        }
        if want_mirror {
            let members = |prefix: &str| {
                (1..=devices.len())
                    .map(|n| format!("/dev/disk/by-partlabel/{prefix}-{n}"))
                    .collect::<Vec<_>>()
            };
            let mut boot = ign::Raid::new("md-boot".into());
            boot.devices = Some(members("boot"));
            boot.level = Some("raid1".into());
            // The superblock at the end, so BIOS GRUB needs no RAID.
            boot.options = Some(vec!["--metadata=1.0".into()]);
            let mut root = ign::Raid::new("md-root".into());
            root.devices = Some(members("root"));
            root.level = Some("raid1".into());
            storage.raid = Some(vec![boot, root]);
            storage.disks = Some(disks);
            filesystems.push(filesystem(
                "/dev/md/md-boot".into(),
                "ext4",
                Some("boot".into()),
                true,
            ));
        }
        if let Some(l) = luks.filter(|_| want_luks) {
            let device = if want_mirror {
                "/dev/md/md-root"
            } else {
                "/dev/disk/by-partlabel/root"
            };
            let mut volume = ign::Luks::new("root".into());
            volume.device = Some(device.into());
            volume.label = Some("luks-root".into());
            volume.wipe_volume = Some(true);
            volume.clevis = Some(ign::Clevis {
                custom: None,
                tang: l.tang.as_ref().map(|t| self.tangs(t, "boot_device.luks")),
                threshold: l.threshold.as_ref().map(|t| **t),
                tpm2: l.tpm2,
            });
            storage.luks = Some(vec![volume]);
        }
        let root = if want_luks {
            "/dev/mapper/root"
        } else {
            "/dev/md/md-root"
        };
        filesystems.push(filesystem(root.into(), "xfs", Some("root".into()), true));
        storage.filesystems = Some(filesystems);
        Some(ign::Config {
            storage: Some(storage),
            ..ign::Config::new(ign::Ignition::default())
        })
    }

    /// The file and filesystem `grub.users` stands for.
    pub(super) fn grub(&mut self, g: &Spanned<BGrub>) -> Option<ign::Config> {
        let users = g.users.as_deref().filter(|u| !u.is_empty())?;
        let mut names = Vec::new();
        let mut commands = Vec::new();
        for (i, u) in users.iter().enumerate() {
            let field = format!("grub.users[{i}]");
            match &u.name {
                Some(name) if !name.is_empty() => names.push(name.to_string()),
                _ => self.err(u, format!("{field}.name"), "field \"name\" is required"),
            }
            match &u.password_hash {
                Some(hash) if !hash.is_empty() => {
                    let name = u.name.as_ref().map_or("", |n| n.as_str());
                    commands.push(format!("password_pbkdf2 {name} {}", hash.as_str()))
                }
                _ => self.err(
                    u,
                    format!("{field}.password_hash"),
                    "field \"password_hash\" is required",
                ),
            }
        }
        let text = format!(
            "# Generated by Butane\n\nset superusers=\"{}\"\n{}\n",
            names.join(" "),
            commands.join("\n")
        );
        let mut file = ign::File::new("/boot/grub2/user.cfg".into());
        file.append = Some(vec![ign::Resource {
            source: Some(data_url(text.as_bytes())),
            ..Default::default()
        }]);
        let mut boot = ign::Filesystem::new("/dev/disk/by-label/boot".into());
        boot.format = Some("ext4".into());
        boot.path = Some("/boot".into());
        Some(ign::Config {
            storage: Some(ign::Storage {
                files: Some(vec![file]),
                filesystems: Some(vec![boot]),
                ..Default::default()
            }),
            ..ign::Config::new(ign::Ignition::default())
        })
    }

    /// Butane's fcos checks of a partition labelled `root` (warnings
    /// there, errors here).
    pub(super) fn root_partition_checks(&mut self, disks: &[BDisk]) {
        for (i, d) in disks.iter().enumerate() {
            let parts = d.partitions.as_deref().unwrap_or_default();
            for (j, p) in parts.iter().enumerate() {
                let Some(label) = &p.label else { continue };
                let field = format!("storage.disks[{i}].partitions[{j}]");
                if label.as_str() == "root" {
                    match p.size_mib.as_ref().filter(|s| ***s != 0) {
                        None => {
                            let unplaced_other = parts.iter().enumerate().any(|(k, q)| {
                                k != j && q.start_mib.as_ref().is_none_or(|s| **s == 0)
                            });
                            if unplaced_other {
                                self.err(
                                    label,
                                    format!("{field}.label"),
                                    "root partition cannot expand; it is set to fill available \
                                     space but is followed by an auto-positioned partition",
                                );
                            }
                        }
                        Some(size) if **size < 8192 => self.err(
                            size,
                            format!("{field}.size_mib"),
                            "root should have 8GiB of space assigned",
                        ),
                        Some(_) => {}
                    }
                }
                if d.wipe_table != Some(true) {
                    let number = p.number.as_ref().map_or(0, |n| **n);
                    let want = match label.as_str() {
                        "BIOS-BOOT" | "PowerPC-PReP-boot" => Some(1),
                        "EFI-SYSTEM" => Some(2),
                        "boot" => Some(3),
                        "root" => Some(4),
                        _ => None,
                    };
                    if want.is_some_and(|n| n != number) {
                        self.err(
                            label,
                            format!("{field}.label"),
                            "incorrect partition number; a new partition will be created using \
                             reserved label",
                        );
                    }
                }
            }
        }
    }
}
