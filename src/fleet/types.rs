//! Newtypes for the values the inventory is made of. Each parses from the
//! spelling an SRE writes and refuses anything else, so nothing past the
//! loader handles raw strings. Add a type here when a new field needs more
//! than "any string".

use std::fmt;
use std::str::FromStr;

use ipnet::IpNet;
use serde::Serialize;
use std::net::IpAddr;

/// A 48-bit Ethernet address. Accepts `aa:bb:cc:dd:ee:ff`,
/// `aa-bb-cc-dd-ee-ff`, `aabb.ccdd.eeff` and `aabbccddeeff`, any case;
/// displays as lower-case with colons.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr([u8; 6]);

impl MacAddr {
    pub fn octets(&self) -> [u8; 6] {
        self.0
    }

    /// The spelling iPXE's `${mac:hexhyp}` produces: `aa-bb-cc-dd-ee-ff`.
    pub fn hexhyp(&self) -> String {
        self.to_string().replace(':', "-")
    }
}

impl FromStr for MacAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let digits: String = match s.len() {
            17 => {
                let sep = s.as_bytes()[2];
                if sep != b':' && sep != b'-' {
                    return Err(format!("malformed MAC address {s:?}"));
                }
                let groups: Vec<&str> = s.split(sep as char).collect();
                if groups.len() != 6 || groups.iter().any(|g| g.len() != 2) {
                    return Err(format!("malformed MAC address {s:?}"));
                }
                groups.concat()
            }
            14 => {
                let groups: Vec<&str> = s.split('.').collect();
                if groups.len() != 3 || groups.iter().any(|g| g.len() != 4) {
                    return Err(format!("malformed MAC address {s:?}"));
                }
                groups.concat()
            }
            12 => s.to_string(),
            _ => return Err(format!("malformed MAC address {s:?}")),
        };
        let mut octets = [0u8; 6];
        for (i, octet) in octets.iter_mut().enumerate() {
            let pair = digits
                .get(2 * i..2 * i + 2)
                .ok_or_else(|| format!("malformed MAC address {s:?}"))?;
            *octet = u8::from_str_radix(pair, 16)
                .ok()
                .filter(|_| pair.bytes().all(|b| b.is_ascii_hexdigit()))
                .ok_or_else(|| format!("malformed MAC address {s:?}"))?;
        }
        Ok(MacAddr(octets))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MacAddr({self})")
    }
}

impl Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Checks a name used as a DNS label: 1–63 characters of lower-case ASCII
/// letters, digits and `-`, starting with a letter and not ending with `-`.
fn check_label(kind: &str, s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.as_bytes()[0].is_ascii_lowercase()
        && !s.ends_with('-')
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid {kind} {s:?}: use 1-63 lower-case letters, digits and '-', starting with a letter"
        ))
    }
}

macro_rules! label_newtype {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                check_label($kind, s)?;
                Ok($name(s.to_string()))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

label_newtype!(
    /// A site (data center) name, e.g. `fra`; also the name of its files.
    SiteName,
    "site name"
);
label_newtype!(
    /// A machine name, e.g. `fra-cp-01`; becomes the machine's hostname.
    MachineName,
    "machine name"
);
label_newtype!(
    /// A Kubernetes cluster name, e.g. `fra-k8s`.
    ClusterName,
    "cluster name"
);

/// Where a secret lives. The inventory never holds a secret itself, only
/// a reference to one: `env:NAME` (an environment variable) or `file:PATH`.
#[derive(Clone, PartialEq, Eq, Debug, Serialize)]
#[serde(into = "String")]
pub enum SecretRef {
    Env(String),
    File(String),
}

/// Why a string is not a secret reference. The offending value is never
/// kept, so it cannot reach a message.
#[derive(Debug, PartialEq, Eq)]
pub struct InlineSecret;

impl FromStr for SecretRef {
    type Err = InlineSecret;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(name) = s.strip_prefix("env:") {
            let valid = !name.is_empty()
                && !name.as_bytes()[0].is_ascii_digit()
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            return if valid {
                Ok(SecretRef::Env(name.to_string()))
            } else {
                Err(InlineSecret)
            };
        }
        if let Some(path) = s.strip_prefix("file:") {
            return if path.is_empty() || path.contains(char::is_whitespace) {
                Err(InlineSecret)
            } else {
                Ok(SecretRef::File(path.to_string()))
            };
        }
        Err(InlineSecret)
    }
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretRef::Env(name) => write!(f, "env:{name}"),
            SecretRef::File(path) => write!(f, "file:{path}"),
        }
    }
}

impl From<SecretRef> for String {
    fn from(r: SecretRef) -> String {
        r.to_string()
    }
}

/// What a machine is for.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, serde::Deserialize, PartialOrd, Ord,
)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    ControlPlane,
    Worker,
    Spare,
}

impl Role {
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::ControlPlane => "control-plane",
            Role::Worker => "worker",
            Role::Spare => "spare",
        }
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "control-plane" => Ok(Role::ControlPlane),
            "worker" => Ok(Role::Worker),
            "spare" => Ok(Role::Spare),
            _ => Err(format!(
                "unknown role {s:?}: expected control-plane, worker or spare"
            )),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The OS a fleet's machines run.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OsFlavor {
    Flatcar,
    Fcos,
    /// The lab's node image, built from Debian packages by `metalherd lab
    /// image`; it runs live from RAM and reads Flatcar-variant role files.
    Lab,
}

impl OsFlavor {
    pub fn as_str(&self) -> &'static str {
        match self {
            OsFlavor::Flatcar => "flatcar",
            OsFlavor::Fcos => "fcos",
            OsFlavor::Lab => "lab",
        }
    }

    /// The Butane `variant` role files of this flavor use (their
    /// `version` picks the Ignition spec: `render::butane::SPECS`).
    pub fn butane_variant(&self) -> &'static str {
        match self {
            OsFlavor::Flatcar => "flatcar",
            OsFlavor::Fcos => "fcos",
            // The same role files serve Flatcar and the lab.
            OsFlavor::Lab => "flatcar",
        }
    }
}

impl FromStr for OsFlavor {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "flatcar" => Ok(OsFlavor::Flatcar),
            "fcos" => Ok(OsFlavor::Fcos),
            "lab" => Ok(OsFlavor::Lab),
            _ => Err(format!(
                "unknown OS flavor {s:?}: expected flatcar, fcos or lab"
            )),
        }
    }
}

/// A BMC driver name.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BmcDriver {
    Redfish,
    Ipmi,
    Qemu,
    Manual,
}

impl BmcDriver {
    pub fn as_str(&self) -> &'static str {
        match self {
            BmcDriver::Redfish => "redfish",
            BmcDriver::Ipmi => "ipmi",
            BmcDriver::Qemu => "qemu",
            BmcDriver::Manual => "manual",
        }
    }
}

impl fmt::Display for BmcDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BmcDriver {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "redfish" => Ok(BmcDriver::Redfish),
            "ipmi" => Ok(BmcDriver::Ipmi),
            "qemu" => Ok(BmcDriver::Qemu),
            "manual" => Ok(BmcDriver::Manual),
            _ => Err(format!(
                "unknown BMC driver {s:?}: expected redfish, ipmi, qemu or manual"
            )),
        }
    }
}

/// A network in CIDR notation, e.g. `10.10.4.0/22`. The address must be the
/// network's own (`10.10.4.5/22` is refused: it names a host, not a
/// network, and is almost always a typo).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize)]
#[serde(transparent)]
pub struct Cidr(IpNet);

impl Cidr {
    pub fn net(&self) -> IpNet {
        self.0
    }

    pub fn contains(&self, ip: &IpAddr) -> bool {
        self.0.contains(ip)
    }

    pub fn overlaps(&self, other: &Cidr) -> bool {
        self.0.contains(&other.0.network()) || other.0.contains(&self.0.network())
    }

    /// The network and broadcast addresses, which no host may use. (IPv6
    /// has no broadcast; its all-ones address is refused all the same.)
    pub fn reserved(&self) -> [IpAddr; 2] {
        [self.0.network(), self.0.broadcast()]
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let net: IpNet = s.parse().map_err(|_| {
            // Say which half is wrong: a prefix too long for the address
            // family is the usual slip.
            let why = match s.split_once('/') {
                Some((addr, prefix)) => {
                    match (addr.parse::<std::net::IpAddr>(), prefix.parse::<u8>()) {
                        (Ok(a), Ok(p)) => {
                            let max = if a.is_ipv4() { 32 } else { 128 };
                            format!(
                                "the prefix /{p} is longer than an {} address has (at most /{max})",
                                if a.is_ipv4() { "IPv4" } else { "IPv6" }
                            )
                        }
                        (Err(_), _) => format!("{addr:?} is not an IP address"),
                        (_, Err(_)) => format!("{prefix:?} is not a prefix length"),
                    }
                }
                None => "no /PREFIX".to_string(),
            };
            format!("malformed CIDR {s:?}: {why}; expected ADDRESS/PREFIX, e.g. 10.10.4.0/22")
        })?;
        if net.trunc() != net {
            return Err(format!(
                "malformed CIDR {s:?}: host bits are set; the network is {}",
                net.trunc()
            ));
        }
        Ok(Cidr(net))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Parses an IP address, IPv4 or IPv6, refusing the ambiguous spellings
/// (leading zeros, shortened IPv4) that some tools read as octal.
pub fn parse_ip(s: &str) -> Result<IpAddr, String> {
    s.parse().map_err(|_| format!("malformed IP address {s:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn mac_spellings_agree() {
        let want: MacAddr = "52:54:00:fa:00:01".parse().unwrap();
        for s in [
            "52-54-00-FA-00-01",
            "525400fa0001",
            "5254.00fa.0001",
            "52:54:00:Fa:00:01",
        ] {
            assert_eq!(s.parse::<MacAddr>().unwrap(), want, "{s}");
        }
        assert_eq!(want.hexhyp(), "52-54-00-fa-00-01");
    }

    #[test]
    fn mac_rejects_malformed() {
        for s in [
            "",
            "52:54:00:fa:00",
            "52:54:00:fa:00:0g",
            "52:54-00:fa:00:01",
            "52:54:00:fa:00:001",
            "+2:54:00:fa:00:01",
            "5254.00fa.000",
            "52;54;00;fa;00;01",
        ] {
            assert!(s.parse::<MacAddr>().is_err(), "{s} should be rejected");
        }
    }

    #[test]
    fn names_are_dns_labels() {
        assert!("fra-cp-01".parse::<MachineName>().is_ok());
        for s in ["", "Fra", "1fra", "fra-", "fra_cp", &"a".repeat(64)] {
            assert!(s.parse::<MachineName>().is_err(), "{s}");
        }
    }

    #[test]
    fn secret_refs() {
        assert_eq!(
            "env:FRA_BMC".parse::<SecretRef>(),
            Ok(SecretRef::Env("FRA_BMC".into()))
        );
        assert_eq!(
            "file:/etc/metalherd/bmc".parse::<SecretRef>(),
            Ok(SecretRef::File("/etc/metalherd/bmc".into()))
        );
        for s in [
            "hunter2",
            "env:",
            "env:1X",
            "env:A-B",
            "file:",
            "admin:secret",
        ] {
            assert_eq!(s.parse::<SecretRef>(), Err(InlineSecret), "{s}");
        }
    }

    #[test]
    fn cidrs() {
        let c: Cidr = "10.10.4.0/22".parse().unwrap();
        assert!(c.contains(&"10.10.7.255".parse().unwrap()));
        assert!(!c.contains(&"10.10.8.0".parse().unwrap()));
        assert_eq!(c.reserved()[1], "10.10.7.255".parse::<IpAddr>().unwrap());
        for s in [
            "10.10.4.0",
            "10.10.4.5/22",
            "10.10.4.0/33",
            "fra",
            "10.10.4.0/-1",
        ] {
            assert!(s.parse::<Cidr>().is_err(), "{s}");
        }
        let too_long = "10.10.4.0/33".parse::<Cidr>().unwrap_err();
        assert!(
            too_long.contains("the prefix /33 is longer than an IPv4 address has (at most /32)"),
            "{too_long}"
        );
        let a: Cidr = "10.64.0.0/14".parse().unwrap();
        assert!(a.overlaps(&"10.65.0.0/16".parse().unwrap()));
        assert!(!a.overlaps(&"10.96.0.0/16".parse().unwrap()));
    }

    #[test]
    fn ips() {
        assert!(parse_ip("10.10.4.11").is_ok());
        assert!(parse_ip("2001:db8::1").is_ok());
        for s in [
            "10.10.4",
            "10.10.4.256",
            "010.10.4.11",
            "10.10.4.11/32",
            " 10.10.4.11",
        ] {
            assert!(parse_ip(s).is_err(), "{s}");
        }
    }

    proptest! {
        #[test]
        fn mac_round_trips(octets in any::<[u8; 6]>()) {
            let mac = MacAddr(octets);
            prop_assert_eq!(mac.to_string().parse::<MacAddr>().unwrap(), mac);
            prop_assert_eq!(mac.hexhyp().parse::<MacAddr>().unwrap(), mac);
            prop_assert_eq!(mac.to_string().to_uppercase().parse::<MacAddr>().unwrap(), mac);
            prop_assert_eq!(mac.to_string().replace(':', "").parse::<MacAddr>().unwrap(), mac);
        }


        #[test]
        fn ipv4_round_trips(octets in any::<[u8; 4]>()) {
            let ip = IpAddr::from(octets);
            prop_assert_eq!(parse_ip(&ip.to_string()).unwrap(), ip);
        }

        #[test]
        fn cidr_contains_agrees_with_prefix(octets in any::<[u8; 4]>(), prefix in 0u8..=32, probe in any::<u32>()) {
            let net = IpNet::new(IpAddr::from(octets), prefix).unwrap().trunc();
            let cidr: Cidr = net.to_string().parse().unwrap();
            let probe = std::net::Ipv4Addr::from(probe);
            let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - prefix) };
            let inside = (u32::from(probe) & mask) == (u32::from(std::net::Ipv4Addr::from(octets)) & mask);
            prop_assert_eq!(cidr.contains(&IpAddr::V4(probe)), inside);
        }

        #[test]
        fn cidr_with_host_bits_is_refused(octets in any::<[u8; 4]>(), prefix in 0u8..32) {
            let ip = std::net::Ipv4Addr::from(octets);
            let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - prefix) };
            let has_host_bits = u32::from(ip) & !mask != 0;
            prop_assert_eq!(format!("{ip}/{prefix}").parse::<Cidr>().is_err(), has_host_bits);
        }

        #[test]
        fn mac_parser_never_panics(s in "\\PC{0,20}") {
            let _ = s.parse::<MacAddr>();
        }

        #[test]
        fn valid_labels_parse(s in "[a-z][a-z0-9-]{0,61}[a-z0-9]") {
            prop_assert!(s.parse::<MachineName>().is_ok());
        }

        #[test]
        fn labels_with_other_characters_fail(s in "[a-z]{1,10}[^a-z0-9-][a-z]{0,10}") {
            prop_assert!(s.parse::<SiteName>().is_err());
        }

        #[test]
        fn arbitrary_strings_are_never_secret_refs_unless_prefixed(s in "[^ef]\\PC{0,30}") {
            prop_assert!(s.parse::<SecretRef>().is_err());
        }
    }
}

/// How a site's dnsmasq answers DHCP: `proxy` beside the network's own DHCP
/// server (only PXE answers), or `server`, handing out addresses itself
/// (the lab, or a provisioning network with no other DHCP server).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DhcpMode {
    Proxy,
    Server,
}

impl FromStr for DhcpMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "proxy" => Ok(DhcpMode::Proxy),
            "server" => Ok(DhcpMode::Server),
            _ => Err(format!("unknown DHCP mode {s:?}: expected proxy or server")),
        }
    }
}
