//! The fleet's files exactly as written: serde structs that refuse unknown
//! keys and keep each value's position (marked_yaml's `Spanned`), so the
//! loader can name the line of anything it rejects. Nothing here is
//! checked beyond its YAML shape; `fleet::build` turns these into the typed
//! model. To add a field: add it here, then convert it in `build.rs`.

use std::collections::HashMap;

use marked_yaml::Spanned;
use serde::Deserialize;

/// A scalar with its position. marked_yaml keeps every scalar as text,
/// which spares us YAML 1.1's surprises (`no` as false, `0644` as octal).
pub type Text = Spanned<String>;

/// `inventory/fleet.yaml`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFleet {
    pub name: Text,
    pub os: RawOs,
    pub kubernetes: RawKubernetes,
    pub admins: Vec<RawAdmin>,
    pub state: RawState,
    pub traffic: Option<RawTraffic>,
    pub boot: Option<RawBoot>,
    pub alarms: Option<RawAlarms>,
    pub windows: Option<Vec<Text>>,
    pub rebuild: Option<RawRebuild>,
    pub forensics: Option<RawForensics>,
    pub drill: Option<RawDrill>,
    pub extensions: Option<Vec<Spanned<RawExtension>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOs {
    pub flavor: Text,
    pub channel: Text,
    pub version: Text,
    pub assets_url: Text,
    pub signing_keys: Option<Vec<Text>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKubernetes {
    pub version: Text,
    pub image_registry: Option<Text>,
}

/// One entry of `extensions`: node software as a systemd system extension.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExtension {
    pub name: Text,
    pub version: Text,
    pub roles: Vec<Text>,
    /// A ready sysext image to fetch as is.
    pub image: Option<Text>,
    /// Or: a release archive or Debian package metalherd packs into one.
    pub build: Option<RawExtensionBuild>,
    /// The vendor's checksum file for the fetched file (`SHA256SUMS`, a
    /// `.sha512`), read once to write `assets.lock`.
    pub checksums: Option<Text>,
    /// A detached OpenPGP signature of the checksum file.
    pub checksums_signature: Option<Text>,
    /// Digest pins of the fetched file, written in the fleet.
    pub sha256: Option<Text>,
    pub sha512: Option<Text>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExtensionBuild {
    /// A `.tar.gz` release archive (URL).
    pub archive: Option<Text>,
    /// A Debian package: a URL, or `debian:PACKAGE` (fetched from the
    /// Debian archive by `lab image`, checked against its signed index).
    pub deb: Option<Text>,
    /// Which files of the input become `usr/bin/<name>`.
    #[serde(default)]
    pub binaries: Vec<Text>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub name: Text,
    pub ssh_authorized_key: Text,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawState {
    pub backend: Text,
    pub path: Option<Text>,
    pub endpoints: Option<Vec<Text>>,
    pub encryption_key: Option<Text>,
    /// etcd client TLS: CA, client certificate and key (paths).
    pub ca_file: Option<Text>,
    pub cert_file: Option<Text>,
    pub key_file: Option<Text>,
    /// How long a crashed holder keeps an etcd lock, in seconds.
    pub lock_ttl: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTraffic {
    pub drain: Text,
    pub restore: Text,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBoot {
    pub require_token: Option<Spanned<bool>>,
    pub dhcp: Option<Text>,
    pub window: Option<Text>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAlarms {
    pub command: Option<Text>,
    pub url: Option<Text>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRebuild {
    pub waves: Option<Vec<Vec<Text>>>,
    pub bake: Option<Text>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDrill {
    pub isolate: Text,
    pub reconnect: Text,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawForensics {
    pub bastion: Text,
    pub ssh_authorized_key: Text,
}

/// `sites/<name>.yaml`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSite {
    pub name: Text,
    pub datacenter: Text,
    pub boot_server: Text,
    pub networks: RawNetworks,
    pub cluster: Spanned<RawCluster>,
    pub capacity: Spanned<u32>,
    pub bmc_defaults: Option<RawBmcDefaults>,
    /// A registry mirror this site's nodes pull images from.
    pub registry_mirror: Option<Text>,
    /// The data disks role files may name, with default devices.
    pub disks: Option<HashMap<Text, Text>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNetworks {
    pub provisioning: RawNetwork,
    pub nodes: RawNetwork,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNetwork {
    pub cidr: Text,
    pub gateway: Text,
    #[serde(default)]
    pub dns: Vec<Text>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    pub name: Text,
    pub api_endpoint: Text,
    pub pod_cidr: Text,
    pub service_cidr: Text,
    pub control_plane_count: Option<Spanned<u32>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBmcDefaults {
    pub driver: Option<Text>,
    pub credentials: Option<Text>,
    /// PEM file with the CA that signed the site's BMC certificates.
    pub ca_file: Option<Text>,
    /// Accept any BMC certificate (self-signed ones are common).
    pub insecure: Option<bool>,
}

/// `inventory/<site>.yaml`, without its machines: those are read one at a
/// time so that one bad machine does not hide the errors of the next.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawInventoryHeader {
    pub site: Text,
    /// Checked to be present here; its items are read by `load`.
    #[allow(dead_code)]
    pub machines: serde::de::IgnoredAny,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMachine {
    pub name: Text,
    pub role: Text,
    pub mac: Text,
    pub ip: Text,
    pub install_disk: Option<Text>,
    /// Devices of the site's named data disks where this machine's differ.
    pub disks: Option<HashMap<Text, Text>>,
    pub bmc: RawBmc,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBmc {
    pub driver: Option<Text>,
    pub address: Text,
    pub system: Option<Text>,
    pub credentials: Option<Text>,
}
