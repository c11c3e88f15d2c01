//! Butane's block-device sections — `storage.disks` (partitions),
//! `storage.raid`, `storage.luks` and `storage.filesystems` with its
//! `with_mount_unit` sugar — checked the way Ignition's validator checks
//! them (each problem at its line in the role file), and converted to
//! Ignition the way Butane converts them (`base/v0_4`, `base/v0_5`).

use std::collections::{BTreeMap, BTreeSet};

use ignition_config::v3_3 as ign;
use marked_yaml::Spanned;
use serde::Deserialize;

use super::{BContents, Conv, Text};

type Int = Spanned<i64>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BDisk {
    pub(super) device: Text,
    pub(super) wipe_table: Option<bool>,
    pub(super) partitions: Option<Vec<Spanned<BPartition>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BPartition {
    pub(super) number: Option<Int>,
    pub(super) label: Option<Text>,
    pub(super) size_mib: Option<Int>,
    pub(super) start_mib: Option<Int>,
    pub(super) type_guid: Option<Text>,
    pub(super) guid: Option<Text>,
    pub(super) wipe_partition_entry: Option<bool>,
    pub(super) should_exist: Option<bool>,
    pub(super) resize: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BRaid {
    name: Text,
    level: Option<Text>,
    devices: Option<Vec<Text>>,
    spares: Option<Int>,
    options: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BLuks {
    name: Text,
    device: Option<Text>,
    key_file: Option<BContents>,
    label: Option<Text>,
    uuid: Option<Text>,
    options: Option<Vec<String>>,
    wipe_volume: Option<bool>,
    clevis: Option<Spanned<BClevis>>,
    /// Ignition 3.4.0 only.
    discard: Option<Spanned<bool>>,
    /// Ignition 3.4.0 only.
    open_options: Option<Spanned<Vec<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BClevis {
    tang: Option<Vec<BTang>>,
    tpm2: Option<bool>,
    threshold: Option<Int>,
    custom: Option<BClevisCustom>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BTang {
    url: Text,
    thumbprint: Option<String>,
    /// Ignition 3.4.0 only.
    advertisement: Option<Text>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BClevisCustom {
    pin: Option<Text>,
    config: Option<String>,
    needs_network: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BFilesystem {
    device: Text,
    format: Option<Text>,
    path: Option<Text>,
    label: Option<Text>,
    uuid: Option<Text>,
    options: Option<Vec<String>>,
    mount_options: Option<Vec<String>>,
    wipe_filesystem: Option<bool>,
    /// Butane sugar: a systemd mount (or swap) unit for the filesystem.
    with_mount_unit: Option<Spanned<bool>>,
}

/// Ignition's `guid` syntax (empty allowed).
fn valid_guid(s: &str) -> bool {
    if s.is_empty() {
        return true;
    }
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The longest label each filesystem format takes (Ignition's limits,
/// from the mkfs man pages).
fn label_limit(format: &str) -> Option<usize> {
    match format {
        "ext4" => Some(16),
        "btrfs" => Some(256),
        "xfs" => Some(12),
        "swap" => Some(15),
        "vfat" => Some(11),
        _ => None,
    }
}

const FORMATS: &[&str] = &["ext4", "btrfs", "xfs", "swap", "vfat", "none"];

const RAID_LEVELS: &[&str] = &[
    "linear", "raid0", "0", "stripe", "raid1", "1", "mirror", "raid4", "4", "raid5", "5", "raid6",
    "6", "raid10", "10",
];

/// systemd's path escaping (`systemd-escape --path`), which names a mount
/// unit after its mount point.
pub fn unit_name_path_escape(path: &str) -> String {
    let trimmed: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    if trimmed.is_empty() {
        return "-".into();
    }
    let joined = trimmed.join("/");
    let mut out = String::with_capacity(joined.len());
    for (i, b) in joined.bytes().enumerate() {
        match b {
            b'/' => out.push('-'),
            b'.' if i == 0 => out.push_str("\\x2e"),
            b if b.is_ascii_alphanumeric() || b":_.".contains(&b) => out.push(b as char),
            b => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out
}

/// The unit Butane's `with_mount_unit` makes for a filesystem: a mount
/// unit named after its path (after the device's fsck), or a swap unit
/// named after its device; `_netdev` when a tang-bound LUKS volume holds
/// it, so it waits for the network.
pub fn mount_unit(
    device: &str,
    format: &str,
    path: Option<&str>,
    mount_options: &[String],
    remote: bool,
) -> ign::Unit {
    let mut options: Vec<&str> = mount_options.iter().map(String::as_str).collect();
    if remote {
        options.push("_netdev");
    }
    let options = if options.is_empty() {
        String::new()
    } else {
        format!("\nOptions={}", options.join(","))
    };
    let escaped_device = unit_name_path_escape(device);
    let (name, contents) = if format == "swap" {
        (
            format!("{escaped_device}.swap"),
            format!(
                "# Generated by Butane\n[Swap]\nWhat={device}{options}\n\n[Install]\nRequiredBy=swap.target"
            ),
        )
    } else {
        let path = path.unwrap_or("/");
        let target = if remote {
            "remote-fs.target"
        } else {
            "local-fs.target"
        };
        (
            format!("{}.mount", unit_name_path_escape(path)),
            format!(
                "# Generated by Butane\n[Unit]\nRequires=systemd-fsck@{escaped_device}.service\n\
                 After=systemd-fsck@{escaped_device}.service\n\n[Mount]\nWhere={path}\n\
                 What={device}\nType={format}{options}\n\n[Install]\nRequiredBy={target}"
            ),
        )
    };
    let mut unit = ign::Unit::new(name);
    unit.enabled = Some(true);
    unit.contents = Some(contents);
    unit
}

impl Conv<'_> {
    pub(super) fn device_path(&mut self, v: &Text, field: String) {
        if !v.starts_with('/') {
            self.err(
                v,
                field,
                format!("{:?} must be an absolute device path", v.as_str()),
            );
        }
    }

    pub(super) fn disks(&mut self, disks: &[BDisk]) -> Vec<ign::Disk> {
        let mut devices = BTreeSet::new();
        let mut out = Vec::new();
        for (i, d) in disks.iter().enumerate() {
            let field = format!("storage.disks[{i}]");
            self.device_path(&d.device, format!("{field}.device"));
            if !devices.insert(d.device.as_str()) {
                self.err(
                    &d.device,
                    format!("{field}.device"),
                    format!("disk {} is configured twice", d.device.as_str()),
                );
            }
            let mut disk = ign::Disk::new(d.device.to_string());
            disk.wipe_table = d.wipe_table;
            if let Some(parts) = &d.partitions {
                disk.partitions = Some(self.partitions(parts, &field));
            }
            out.push(disk);
        }
        out
    }

    fn partitions(&mut self, parts: &[Spanned<BPartition>], disk: &str) -> Vec<ign::Partition> {
        let mut numbers = BTreeMap::new();
        let mut labels = BTreeSet::new();
        let mut placed: Vec<(usize, i64, i64)> = Vec::new();
        let mut out = Vec::new();
        for (j, p) in parts.iter().enumerate() {
            let field = format!("{disk}.partitions[{j}]");
            let number = p.number.as_ref().map_or(0, |n| **n);
            if let Some(n) = &p.number {
                if **n < 0 {
                    self.err(
                        n,
                        format!("{field}.number"),
                        "a partition number is 1 or more (0: the next free one)",
                    );
                } else if **n != 0 {
                    if let Some(first) = numbers.insert(**n, j) {
                        self.err(
                            n,
                            format!("{field}.number"),
                            format!(
                                "partition number {} is already {disk}.partitions[{first}]",
                                **n
                            ),
                        );
                    }
                }
            }
            if number == 0 && p.label.is_none() {
                self.err(
                    p,
                    field.clone(),
                    "a partition needs a number or a label (Ignition finds it by one of them)",
                );
            }
            if p.should_exist == Some(false)
                && (p.label.is_some()
                    || p.type_guid.as_ref().is_some_and(|g| !g.is_empty())
                    || p.guid.as_ref().is_some_and(|g| !g.is_empty())
                    || p.start_mib.is_some()
                    || p.size_mib.is_some())
            {
                self.err(
                    p,
                    field.clone(),
                    "should_exist: false deletes the partition: give it only a number",
                );
            }
            if let Some(label) = &p.label {
                if label.len() > 36 {
                    self.err(
                        label,
                        format!("{field}.label"),
                        "a GPT partition label is at most 36 characters",
                    );
                } else if label.contains(':') {
                    self.err(
                        label,
                        format!("{field}.label"),
                        "a partition label cannot contain `:` (sgdisk cannot escape it)",
                    );
                } else if !labels.insert(label.as_str()) {
                    self.err(
                        label,
                        format!("{field}.label"),
                        format!(
                            "partition label {} is used twice on this disk",
                            label.as_str()
                        ),
                    );
                }
            }
            for (guid, name) in [(&p.guid, "guid"), (&p.type_guid, "type_guid")] {
                if let Some(g) = guid.as_ref().filter(|g| !valid_guid(g)) {
                    self.err(
                        g,
                        format!("{field}.{name}"),
                        format!("{:?} is not a GUID (8-4-4-4-12 hex digits)", g.as_str()),
                    );
                }
            }
            for (v, name) in [(&p.size_mib, "size_mib"), (&p.start_mib, "start_mib")] {
                if let Some(v) = v.as_ref().filter(|v| ***v < 0) {
                    self.err(v, format!("{field}.{name}"), "sizes and starts are MiB, 0 or more (0: as much as fits / the first free space)");
                }
            }
            if let (Some(start), Some(size)) = (&p.start_mib, &p.size_mib) {
                if **start > 0 && **size >= 0 {
                    let end = if **size == 0 {
                        **start
                    } else {
                        **start + **size - 1
                    };
                    if let Some((other, _, _)) =
                        placed.iter().find(|(_, s, e)| **start <= *e && end >= *s)
                    {
                        self.err(
                            start,
                            format!("{field}.start_mib"),
                            format!("overlaps {disk}.partitions[{other}]"),
                        );
                    }
                    placed.push((j, **start, end));
                }
            }
            let part = ign::Partition {
                number: p.number.as_ref().map(|n| **n),
                label: p.label.as_ref().map(|l| l.to_string()),
                size_mib: p.size_mib.as_ref().map(|n| **n),
                start_mib: p.start_mib.as_ref().map(|n| **n),
                type_guid: p.type_guid.as_ref().map(|g| g.to_string()),
                guid: p.guid.as_ref().map(|g| g.to_string()),
                wipe_partition_entry: p.wipe_partition_entry,
                should_exist: p.should_exist,
                resize: p.resize,
            };
            out.push(part);
        }
        out
    }

    pub(super) fn raids(&mut self, raids: &[BRaid]) -> Vec<ign::Raid> {
        let mut names = BTreeSet::new();
        let mut out = Vec::new();
        for (i, r) in raids.iter().enumerate() {
            let field = format!("storage.raid[{i}]");
            if !names.insert(r.name.as_str()) {
                self.err(
                    &r.name,
                    format!("{field}.name"),
                    format!("array {} is configured twice", r.name.as_str()),
                );
            }
            match &r.level {
                None => self.err(
                    &r.name,
                    format!("{field}.level"),
                    "an array needs a level (raid0, raid1, raid5, …)",
                ),
                Some(level) if !RAID_LEVELS.contains(&level.as_str()) => self.err(
                    level,
                    format!("{field}.level"),
                    format!(
                        "{:?} is not a RAID level; use one of {}",
                        level.as_str(),
                        RAID_LEVELS.join(", ")
                    ),
                ),
                Some(level) => {
                    let striped = ["linear", "raid0", "0", "stripe"].contains(&level.as_str());
                    if let Some(spares) = r.spares.as_ref().filter(|s| striped && ***s != 0) {
                        self.err(
                            spares,
                            format!("{field}.spares"),
                            format!("level {} has no spares", level.as_str()),
                        );
                    }
                }
            }
            match &r.devices {
                Some(devices) if !devices.is_empty() => {
                    for (j, d) in devices.iter().enumerate() {
                        self.device_path(d, format!("{field}.devices[{j}]"));
                    }
                }
                _ => self.err(
                    &r.name,
                    format!("{field}.devices"),
                    "an array needs its member devices",
                ),
            }
            let mut raid = ign::Raid::new(r.name.to_string());
            raid.level = r.level.as_ref().map(|l| l.to_string());
            raid.devices = r
                .devices
                .as_ref()
                .map(|d| d.iter().map(|d| d.to_string()).collect());
            raid.spares = r.spares.as_ref().map(|s| **s);
            raid.options = r.options.clone();
            out.push(raid);
        }
        out
    }

    pub(super) fn luks(&mut self, volumes: &[BLuks], variant: &str) -> Vec<ign::Luks> {
        let mut names = BTreeSet::new();
        let mut out = Vec::new();
        for (i, l) in volumes.iter().enumerate() {
            let field = format!("storage.luks[{i}]");
            if l.name.contains('/') {
                self.err(
                    &l.name,
                    format!("{field}.name"),
                    "a LUKS volume's name (its /dev/mapper name) cannot contain `/`",
                );
            }
            if !names.insert(l.name.as_str()) {
                self.err(
                    &l.name,
                    format!("{field}.name"),
                    format!("volume {} is configured twice", l.name.as_str()),
                );
            }
            match &l.device {
                Some(d) => self.device_path(d, format!("{field}.device")),
                None => self.err(
                    &l.name,
                    format!("{field}.device"),
                    "a LUKS volume needs its device",
                ),
            }
            if let Some(label) = l.label.as_ref().filter(|l| l.len() > 47) {
                self.err(
                    label,
                    format!("{field}.label"),
                    "a LUKS2 label is at most 47 characters",
                );
            }
            if let Some(d) = &l.discard {
                self.needs_3_4(d, format!("{field}.discard"));
            }
            if let Some(o) = &l.open_options {
                self.needs_3_4(o, format!("{field}.open_options"));
            }
            let mut luks = ign::Luks::new(l.name.to_string());
            luks.device = l.device.as_ref().map(|d| d.to_string());
            luks.label = l.label.as_ref().map(|d| d.to_string());
            luks.uuid = l.uuid.as_ref().map(|d| d.to_string());
            luks.options = l.options.clone();
            luks.wipe_volume = l.wipe_volume;
            luks.key_file = l
                .key_file
                .as_ref()
                .and_then(|k| self.contents(k, &format!("{field}.key_file")));
            if let Some(clevis) = &l.clevis {
                luks.clevis = self.clevis(clevis, &format!("{field}.clevis"), variant);
            }
            out.push(luks);
        }
        out
    }

    /// A Clevis config's tang servers (`<field>.tang`).
    pub(super) fn tangs(&mut self, tangs: &[BTang], field: &str) -> Vec<ign::Tang> {
        tangs
            .iter()
            .enumerate()
            .map(|(j, t)| {
                let f = format!("{field}.tang[{j}]");
                if !(t.url.starts_with("http://") || t.url.starts_with("https://")) {
                    self.err(
                        &t.url,
                        format!("{f}.url"),
                        "a tang server is an http(s) URL",
                    );
                }
                if let Some(a) = &t.advertisement {
                    self.needs_3_4(a, format!("{f}.advertisement"));
                }
                ign::Tang {
                    url: Some(t.url.to_string()),
                    thumbprint: t.thumbprint.clone(),
                }
            })
            .collect()
    }

    fn clevis(&mut self, c: &Spanned<BClevis>, field: &str, variant: &str) -> Option<ign::Clevis> {
        if variant == "flatcar" {
            // Butane's flatcar variants filter the field out as unsupported.
            self.err(
                c,
                field.to_string(),
                "Flatcar does not support Clevis (Butane refuses it for the flatcar variant); use a key_file",
            );
            return None;
        }
        let custom_pin = c.custom.as_ref().and_then(|x| x.pin.as_ref());
        if let Some(pin) = custom_pin {
            let others = c.tang.as_ref().is_some_and(|t| !t.is_empty())
                || c.tpm2 == Some(true)
                || c.threshold.as_ref().is_some_and(|t| **t != 0);
            if others {
                self.err(
                    pin,
                    format!("{field}.custom.pin"),
                    "a custom pin cannot be combined with tang, tpm2 or threshold",
                );
            }
            if !["tpm2", "tang", "sss"].contains(&pin.as_str()) {
                self.err(
                    pin,
                    format!("{field}.custom.pin"),
                    format!("{:?} is not a Clevis pin (tpm2, tang or sss)", pin.as_str()),
                );
            }
        }
        let tang = c.tang.as_ref().map(|t| self.tangs(t, field));
        Some(ign::Clevis {
            custom: c.custom.as_ref().map(|x| ign::ClevisCustom {
                pin: x.pin.as_ref().map(|p| p.to_string()),
                config: x.config.clone(),
                needs_network: x.needs_network,
            }),
            tang,
            threshold: c.threshold.as_ref().map(|t| **t),
            tpm2: c.tpm2,
        })
    }

    /// `storage.filesystems`, and the units `with_mount_unit` asks for.
    pub(super) fn filesystems(
        &mut self,
        filesystems: &[BFilesystem],
        luks: &[BLuks],
    ) -> (Vec<ign::Filesystem>, Vec<ign::Unit>) {
        let mut devices = BTreeSet::new();
        let mut paths = BTreeSet::new();
        let mut out = Vec::new();
        let mut units = Vec::new();
        for (i, f) in filesystems.iter().enumerate() {
            let field = format!("storage.filesystems[{i}]");
            self.device_path(&f.device, format!("{field}.device"));
            if !devices.insert(f.device.as_str()) {
                self.err(
                    &f.device,
                    format!("{field}.device"),
                    format!("filesystem on {} is configured twice", f.device.as_str()),
                );
            }
            if let Some(path) = &f.path {
                if !path.starts_with('/') {
                    self.err(
                        path,
                        format!("{field}.path"),
                        format!("{:?} must be an absolute path", path.as_str()),
                    );
                } else if !paths.insert(path.as_str()) {
                    self.err(
                        path,
                        format!("{field}.path"),
                        format!("two filesystems are mounted at {}", path.as_str()),
                    );
                }
            }
            match &f.format {
                Some(format) if !FORMATS.contains(&format.as_str()) => self.err(
                    format,
                    format!("{field}.format"),
                    format!(
                        "{:?} is not a filesystem format; use one of {}",
                        format.as_str(),
                        FORMATS.join(", ")
                    ),
                ),
                Some(_) => {}
                None => {
                    let others = f.path.is_some()
                        || f.label.is_some()
                        || f.uuid.is_some()
                        || f.wipe_filesystem == Some(true)
                        || f.options.as_ref().is_some_and(|o| !o.is_empty())
                        || f.mount_options.as_ref().is_some_and(|o| !o.is_empty());
                    if others {
                        self.err(&f.device, format!("{field}.format"), "a filesystem with a path, label, uuid, options or wipe_filesystem needs its format");
                    }
                }
            }
            if let (Some(label), Some(format)) = (&f.label, &f.format) {
                if let Some(limit) = label_limit(format).filter(|l| label.len() > *l) {
                    self.err(
                        label,
                        format!("{field}.label"),
                        format!("{} labels are at most {limit} characters", format.as_str()),
                    );
                }
            }
            if let Some(with) = f.with_mount_unit.as_ref().filter(|w| ***w) {
                match &f.format {
                    None => self.err(
                        with,
                        format!("{field}.format"),
                        "with_mount_unit needs the filesystem's format",
                    ),
                    Some(format) if format.as_str() != "swap" && f.path.is_none() => self.err(
                        with,
                        format!("{field}.path"),
                        "with_mount_unit needs the path to mount it at",
                    ),
                    Some(format) => {
                        let remote = luks.iter().any(|l| {
                            let opened = f.device.as_str()
                                == format!("/dev/mapper/{}", l.name.as_str())
                                || f.device.as_str()
                                    == format!("/dev/disk/by-id/dm-name-{}", l.name.as_str());
                            opened
                                && l.clevis
                                    .as_ref()
                                    .and_then(|c| c.tang.as_ref())
                                    .is_some_and(|t| !t.is_empty())
                        });
                        units.push(mount_unit(
                            &f.device,
                            format,
                            f.path.as_ref().map(|p| p.as_str()),
                            f.mount_options.as_deref().unwrap_or_default(),
                            remote,
                        ));
                    }
                }
            }
            let mut fs = ign::Filesystem::new(f.device.to_string());
            fs.format = f.format.as_ref().map(|x| x.to_string());
            fs.path = f.path.as_ref().map(|x| x.to_string());
            fs.label = f.label.as_ref().map(|x| x.to_string());
            fs.uuid = f.uuid.as_ref().map(|x| x.to_string());
            fs.options = f.options.clone();
            fs.mount_options = f.mount_options.clone();
            fs.wipe_filesystem = f.wipe_filesystem;
            out.push(fs);
        }
        (out, units)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_escape_as_systemd_escapes_them() {
        // Expected values from `systemd-escape --path`.
        assert_eq!(unit_name_path_escape("/var/lib/etcd"), "var-lib-etcd");
        assert_eq!(unit_name_path_escape("/"), "-");
        assert_eq!(
            unit_name_path_escape("/dev/disk/by-label/etcd"),
            "dev-disk-by\\x2dlabel-etcd"
        );
        assert_eq!(unit_name_path_escape("//srv//.data/"), "srv-.data");
        assert_eq!(unit_name_path_escape("/.hidden"), "\\x2ehidden");
        assert_eq!(unit_name_path_escape("/a b"), "a\\x20b");
    }

    #[test]
    fn guids_follow_ignitions_pattern() {
        assert!(valid_guid("0FC63DAF-8483-4772-8E79-3D69D8477DE4"));
        assert!(valid_guid(""));
        assert!(!valid_guid("0FC63DAF-8483-4772-8E79-3D69D8477DE"));
        assert!(!valid_guid("linux"));
    }
}
