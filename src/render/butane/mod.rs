//! Butane → Ignition, through CoreOS's own typed structs
//! (`ignition-config`), never by assembling JSON text.
//!
//! Every field of the variants and versions in [`SPECS`] means what it
//! means in Butane (storage, disks, raid, luks, filesystems with
//! `with_mount_unit` ([`storage`]), files with `append`, resources with
//! compression and HTTP headers, `ignition.config.merge`, timeouts, TLS and
//! proxy, passwd, systemd, kernel arguments), sugar included:
//! `storage.trees` ([`trees`]), fcos `boot_device` and `grub` ([`fcos`],
//! laid under the file's storage by Ignition's merge, [`merge`]). Local
//! names (`local:`, `contents_local:`, `ssh_authorized_keys_local`, trees)
//! are templates under `templates/`, given by the caller's [`Locals`].
//! Fields metalherd does not write (`ignition.config.replace`, 3.4.0-only
//! LUKS fields) are errors naming them, and so is any unknown key: nothing
//! is silently dropped. To support a new key: add it to the `B*` struct,
//! convert it, and add a case to `tests/butane/`.

mod fcos;
mod merge;
mod storage;
mod trees;

pub use trees::TreeEntry;

use std::collections::BTreeSet;

use base64::Engine;
use ignition_config::v3_3 as ign;
use marked_yaml::{LoaderOptions, Spanned};
use serde::Deserialize;

type Text = Spanned<String>;

/// The Butane variants and versions metalherd reads, and the Ignition
/// spec Butane produces for each (its `config/<variant>/v<version>`
/// translations): a role file gets the spec its version stands for.
pub const SPECS: &[(&str, &str, &str)] = &[
    ("flatcar", "1.0.0", "3.3.0"),
    ("flatcar", "1.1.0", "3.4.0"),
    ("fcos", "1.4.0", "3.3.0"),
    ("fcos", "1.5.0", "3.4.0"),
];

/// One problem in a role file, after templating.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ButaneError {
    pub line: usize,
    pub column: usize,
    pub field: String,
    pub message: String,
}

/// What a role file's local names stand for: templates under
/// `templates/`, rendered for the machine. The error is the whole message
/// (it names the template).
pub trait Locals {
    /// The rendered text of `templates/<name>` (`local:`,
    /// `contents_local:`, `ssh_authorized_keys_local:`).
    fn file(&mut self, name: &str) -> Result<String, String>;
    /// Everything under the directory `templates/<name>/`
    /// (`storage.trees`), files rendered, in path order.
    fn tree(&mut self, name: &str) -> Result<Vec<TreeEntry>, String>;
}

/// A function from a name to a template's text is the [`Locals`] of a
/// caller without directories (`storage.trees` is then an error).
impl<F: FnMut(&str) -> Result<String, String>> Locals for F {
    fn file(&mut self, name: &str) -> Result<String, String> {
        self(name)
    }

    fn tree(&mut self, name: &str) -> Result<Vec<TreeEntry>, String> {
        Err(format!("no directory templates/{name} to copy here"))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BConfig {
    variant: Text,
    version: Text,
    ignition: Option<BIgnition>,
    storage: Option<BStorage>,
    systemd: Option<BSystemd>,
    passwd: Option<BPasswd>,
    kernel_arguments: Option<BKernelArguments>,
    /// fcos sugar: a mirrored and/or encrypted root.
    boot_device: Option<Spanned<fcos::BBootDevice>>,
    /// fcos 1.5.0: GRUB superusers.
    grub: Option<Spanned<fcos::BGrub>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BStorage {
    disks: Option<Vec<storage::BDisk>>,
    raid: Option<Vec<storage::BRaid>>,
    luks: Option<Vec<storage::BLuks>>,
    filesystems: Option<Vec<storage::BFilesystem>>,
    files: Option<Vec<BFile>>,
    directories: Option<Vec<BDirectory>>,
    links: Option<Vec<BLink>>,
    /// Butane sugar: a directory under `templates/` copied in.
    trees: Option<Vec<Spanned<trees::BTree>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BIgnition {
    config: Option<BIgnitionConfig>,
    timeouts: Option<BTimeouts>,
    security: Option<BSecurity>,
    proxy: Option<BProxy>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BIgnitionConfig {
    merge: Option<Vec<BContents>>,
    replace: Option<Spanned<BContents>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BTimeouts {
    http_response_headers: Option<Spanned<i64>>,
    http_total: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BSecurity {
    tls: Option<BTls>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BTls {
    certificate_authorities: Option<Vec<BContents>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BProxy {
    http_proxy: Option<Text>,
    https_proxy: Option<Text>,
    no_proxy: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BOwner {
    id: Option<i64>,
    name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BFile {
    path: Text,
    mode: Option<Text>,
    overwrite: Option<bool>,
    contents: Option<BContents>,
    append: Option<Vec<BContents>>,
    user: Option<BOwner>,
    group: Option<BOwner>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BContents {
    inline: Option<Text>,
    local: Option<Text>,
    source: Option<Text>,
    compression: Option<Text>,
    http_headers: Option<Vec<BHeader>>,
    verification: Option<BVerification>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BHeader {
    name: Text,
    value: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BVerification {
    hash: Text,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BDirectory {
    path: Text,
    mode: Option<Text>,
    overwrite: Option<bool>,
    user: Option<BOwner>,
    group: Option<BOwner>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BLink {
    path: Text,
    /// May come from a tree instead.
    target: Option<Text>,
    hard: Option<bool>,
    overwrite: Option<bool>,
    user: Option<BOwner>,
    group: Option<BOwner>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BSystemd {
    units: Option<Vec<BUnit>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BUnit {
    name: Text,
    enabled: Option<bool>,
    mask: Option<bool>,
    contents: Option<String>,
    contents_local: Option<Text>,
    dropins: Option<Vec<BDropin>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BDropin {
    name: Text,
    contents: Option<String>,
    contents_local: Option<Text>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BPasswd {
    users: Option<Vec<BUser>>,
    groups: Option<Vec<BGroup>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BUser {
    name: Text,
    ssh_authorized_keys: Option<Vec<String>>,
    groups: Option<Vec<String>>,
    home_dir: Option<String>,
    shell: Option<String>,
    uid: Option<i64>,
    gecos: Option<String>,
    primary_group: Option<String>,
    no_create_home: Option<bool>,
    system: Option<bool>,
    password_hash: Option<String>,
    no_log_init: Option<bool>,
    no_user_group: Option<bool>,
    should_exist: Option<Spanned<bool>>,
    /// Butane sugar: keys read from files (here: templates), one per line.
    ssh_authorized_keys_local: Option<Vec<Text>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BGroup {
    name: Text,
    gid: Option<i64>,
    system: Option<bool>,
    password_hash: Option<String>,
    should_exist: Option<Spanned<bool>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BKernelArguments {
    should_exist: Option<Vec<String>>,
    should_not_exist: Option<Vec<String>>,
}

/// Encodes `bytes` as a `data:` URL, as Ignition reads inline contents.
pub fn data_url(bytes: &[u8]) -> String {
    format!(
        "data:;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

/// Encodes `bytes` as a percent-encoded `data:` URL: letters, digits and
/// `-._~` stay as they are, so a marker made of them can be found (and
/// replaced) in the encoded text.
pub fn data_url_plain(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(bytes.len() * 2 + 6);
    out.push_str("data:,");
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

struct Conv<'r> {
    errors: Vec<ButaneError>,
    locals: &'r mut dyn Locals,
    paths: BTreeSet<String>,
    /// The Ignition spec being written (`3.3.0`): what it can express.
    spec: &'static str,
}

impl Conv<'_> {
    fn err<T>(&mut self, v: &Spanned<T>, field: String, message: impl Into<String>) {
        self.err_at(v.span(), field, message);
    }

    fn err_at(&mut self, span: &marked_yaml::Span, field: String, message: impl Into<String>) {
        let (line, column) = span
            .start()
            .map(|m| (m.line(), m.column()))
            .unwrap_or((0, 0));
        self.errors.push(ButaneError {
            line,
            column,
            field,
            message: message.into(),
        });
    }

    fn path(&mut self, v: &Text, field: String) -> String {
        if !v.starts_with('/') {
            self.err(
                v,
                field.clone(),
                format!("{:?} must be an absolute path", v.as_str()),
            );
        }
        if !self.paths.insert(v.to_string()) {
            self.err(v, field, format!("{} is configured twice", v.as_str()));
        }
        v.to_string()
    }

    fn mode(&mut self, v: &Option<Text>, field: String) -> Option<i64> {
        let v = v.as_ref()?;
        let s = v.as_str();
        let parsed = match s
            .strip_prefix("0o")
            .or_else(|| s.strip_prefix('0').filter(|r| !r.is_empty()))
        {
            Some(octal) => i64::from_str_radix(octal, 8).ok(),
            None => s.parse::<i64>().ok(),
        };
        match parsed {
            // Ignition before 3.4.0 ignores these bits (its validator warns;
            // Butane refuses them at such a version).
            Some(m) if m & 0o7000 != 0 && self.spec == "3.3.0" => {
                self.err(
                    v,
                    field,
                    format!(
                        "{s}: setuid, setgid and sticky bits need Ignition spec 3.4.0 \
                         (Butane version 1.1.0 for flatcar, 1.5.0 for fcos); this file's \
                         version gives 3.3.0, which ignores them"
                    ),
                );
                None
            }
            Some(m) if (0..=0o7777).contains(&m) => Some(m),
            _ => {
                self.err(
                    v,
                    field,
                    format!("{s:?} is not a file mode; write it in octal, e.g. 0644"),
                );
                None
            }
        }
    }

    fn local(&mut self, v: &Text, field: String) -> Option<String> {
        match self.locals.file(v.as_str()) {
            Ok(text) => Some(text),
            Err(msg) => {
                self.err(v, field, msg);
                None
            }
        }
    }

    fn contents(&mut self, c: &BContents, field: &str) -> Option<ign::Resource> {
        let set = [c.inline.as_ref(), c.local.as_ref(), c.source.as_ref()];
        let given: Vec<&Text> = set.into_iter().flatten().collect();
        if given.len() != 1 {
            if let Some(first) = given.first() {
                self.err(
                    first,
                    field.to_string(),
                    "give exactly one of inline, local or source",
                );
            }
            return None;
        }
        let mut resource = ign::Resource::default();
        if let Some(inline) = &c.inline {
            resource.source = Some(data_url(inline.as_bytes()));
        } else if let Some(local) = &c.local {
            resource.source = Some(data_url(
                self.local(local, format!("{field}.local"))?.as_bytes(),
            ));
        } else if let Some(source) = &c.source {
            let remote = source.starts_with("http://") || source.starts_with("https://");
            if !remote && !source.starts_with("data:") {
                self.err(
                    source,
                    format!("{field}.source"),
                    "source must be an http(s) or data URL",
                );
            }
            match &c.verification {
                Some(v) if valid_hash(&v.hash) => {
                    resource.verification = Some(ign::Verification {
                        hash: Some(v.hash.to_string()),
                    })
                }
                Some(v) => self.err(
                    &v.hash,
                    format!("{field}.verification.hash"),
                    "expected sha512-<128 hex digits> or sha256-<64 hex digits>",
                ),
                None if remote => self.err(
                    source,
                    format!("{field}.verification.hash"),
                    "content fetched from a URL needs verification.hash (sha512-…)",
                ),
                None => {}
            }
            resource.source = Some(source.to_string());
        }
        if let Some(compression) = &c.compression {
            if !["", "gzip"].contains(&compression.as_str()) {
                self.err(
                    compression,
                    format!("{field}.compression"),
                    format!(
                        "{:?} is not a compression Ignition reads; use gzip",
                        compression.as_str()
                    ),
                );
            }
            resource.compression = Some(compression.to_string());
        }
        if let Some(headers) = &c.http_headers {
            let remote = c
                .source
                .as_ref()
                .is_some_and(|s| s.starts_with("http://") || s.starts_with("https://"));
            let mut names = BTreeSet::new();
            let mut list = Vec::new();
            for (i, h) in headers.iter().enumerate() {
                let f = format!("{field}.http_headers[{i}].name");
                if !remote {
                    self.err(
                        &h.name,
                        f.clone(),
                        "HTTP headers go with an http(s) source only",
                    );
                }
                if h.name.is_empty() {
                    self.err(&h.name, f.clone(), "a header needs a name");
                } else if !names.insert(h.name.to_ascii_lowercase()) {
                    self.err(
                        &h.name,
                        f,
                        format!("header {} is given twice", h.name.as_str()),
                    );
                }
                let mut header = ign::HttpHeadersItem::new(h.name.to_string());
                header.value = h.value.clone();
                list.push(header);
            }
            resource.http_headers = Some(list);
        }
        Some(resource)
    }

    /// Refuses a field only Ignition 3.4.0 has when this file writes 3.3.0,
    /// and at 3.4.0 too: the only Ignition the tests can run here (Debian's
    /// 2.14, which reads 3.4.0 as 3.4.0-experimental) does not know these
    /// fields (its validator says "Unused key"), so nothing could prove
    /// that a config carrying them does what it says.
    fn needs_3_4<T>(&mut self, v: &Spanned<T>, field: String) {
        let why = if self.spec == "3.3.0" {
            "it needs Ignition spec 3.4.0 (Butane version 1.1.0 for flatcar, 1.5.0 for fcos)"
        } else {
            "metalherd does not write this Ignition 3.4.0 field yet: the Ignition its \
             tests run (Debian's 2.14, 3.4.0-experimental) ignores it (\"Unused key\")"
        };
        self.err(v, field, format!("not supported: {why}"));
    }

    fn unit_text(
        &mut self,
        contents: &Option<String>,
        local: &Option<Text>,
        field: &str,
    ) -> Option<String> {
        match (contents, local) {
            (Some(_), Some(l)) => {
                self.err(
                    l,
                    field.to_string(),
                    "give contents or contents_local, not both",
                );
                None
            }
            (Some(c), None) => Some(c.clone()),
            (None, Some(l)) => self.local(l, format!("{field}.contents_local")),
            (None, None) => None,
        }
    }
}

fn valid_hash(h: &str) -> bool {
    let check =
        |hex: &str, len: usize| hex.len() == len && hex.bytes().all(|b| b.is_ascii_hexdigit());
    h.strip_prefix("sha512-").is_some_and(|x| check(x, 128))
        || h.strip_prefix("sha256-").is_some_and(|x| check(x, 64))
}

fn owner_user(o: &Option<BOwner>) -> Option<ign::NodeUser> {
    o.as_ref().map(|o| ign::NodeUser {
        id: o.id,
        name: o.name.clone(),
    })
}

fn owner_group(o: &Option<BOwner>) -> Option<ign::NodeGroup> {
    o.as_ref().map(|o| ign::NodeGroup {
        id: o.id,
        name: o.name.clone(),
    })
}

/// Parses `yaml` (a role file after templating) and converts it to an
/// Ignition config. `variant` is what the fleet's OS flavor requires.
pub fn transpile(
    yaml: &str,
    variant: &str,
    locals: &mut dyn Locals,
) -> Result<ign::Config, Vec<ButaneError>> {
    let options = LoaderOptions::default().error_on_duplicate_keys(true);
    let node = marked_yaml::parse_yaml_with_options(0, yaml, options).map_err(|e| {
        let p = crate::errfmt::yaml_problem(&e);
        vec![ButaneError {
            line: p.line,
            column: p.column,
            field: p.field,
            message: p.message,
        }]
    })?;
    let raw: BConfig = marked_yaml::from_node(&node).map_err(|e| {
        let path = e.path().unwrap_or("").to_string();
        let inner = e.into_inner();
        let (line, column) = inner
            .start_mark()
            .map(|m| (m.line(), m.column()))
            .unwrap_or((0, 0));
        let (field, message) = match &inner {
            marked_yaml::Error::UnknownFieldError(name, expected, _) => (
                if path.is_empty() || path == "." || path.ends_with(name.as_str()) {
                    if path.is_empty() || path == "." {
                        name.clone()
                    } else {
                        path.clone()
                    }
                } else {
                    format!("{path}.{name}")
                },
                format!("unknown key; expected one of: {}", expected.join(", ")),
            ),
            other => (path, other.to_string()),
        };
        vec![ButaneError {
            line,
            column,
            field,
            message,
        }]
    })?;

    let versions: Vec<&(&str, &str, &str)> =
        SPECS.iter().filter(|(v, _, _)| *v == variant).collect();
    let accepted = versions
        .iter()
        .map(|(_, version, spec)| format!("{version} (Ignition {spec})"))
        .collect::<Vec<_>>()
        .join(", ");
    let spec = versions
        .iter()
        .find(|(_, version, _)| *version == raw.version.as_str())
        .map_or("3.3.0", |(_, _, spec)| *spec);
    let mut conv = Conv {
        errors: Vec::new(),
        locals,
        paths: BTreeSet::new(),
        spec,
    };
    if raw.variant.as_str() != variant {
        conv.err(
            &raw.variant,
            "variant".into(),
            format!(
                "this fleet's OS needs `variant: {variant}` (version {accepted}), not {} {}",
                raw.variant.as_str(),
                raw.version.as_str()
            ),
        );
    } else if !versions.iter().any(|(_, v, _)| *v == raw.version.as_str()) {
        conv.err(
            &raw.version,
            "version".into(),
            format!(
                "{variant} {} is not a version metalherd reads; use {accepted}",
                raw.version.as_str()
            ),
        );
    }
    if variant == "flatcar" {
        let fcos_only = [
            ("boot_device", raw.boot_device.as_ref().map(|v| v.span())),
            ("grub", raw.grub.as_ref().map(|v| v.span())),
        ];
        for (name, span) in fcos_only {
            if let Some(span) = span {
                conv.err_at(
                    span,
                    name.into(),
                    format!("unknown key: Butane's flatcar variant has no {name} (fcos only)"),
                );
            }
        }
    } else if let Some(disks) = raw.storage.as_ref().and_then(|s| s.disks.as_ref()) {
        conv.root_partition_checks(disks);
    }
    let (storage, mount_units) = match &raw.storage {
        Some(s) => {
            let (storage, units) = conv.storage(s, variant);
            (Some(storage), units)
        }
        None => (None, Vec::new()),
    };
    let systemd = raw.systemd.as_ref().map(|s| conv.systemd(s));
    let mut config = ign::Config {
        ignition: raw
            .ignition
            .as_ref()
            .map(|i| conv.ignition(i))
            .unwrap_or_default(),
        storage,
        systemd: with_mount_units(systemd, mount_units),
        passwd: raw.passwd.as_ref().map(|p| conv.passwd(p)),
        kernel_arguments: raw.kernel_arguments.map(|k| ign::KernelArguments {
            should_exist: k.should_exist,
            should_not_exist: k.should_not_exist,
        }),
    };
    if variant != "flatcar" {
        // Butane expands boot_device over the file's storage, then grub
        // over both.
        let sugar = [
            raw.boot_device
                .as_ref()
                .map(|b| (b.span(), "boot_device", conv.boot_device(b))),
            raw.grub.as_ref().map(|g| (g.span(), "grub", conv.grub(g))),
        ];
        for (span, name, generated) in sugar.into_iter().flatten() {
            let Some(generated) = generated else { continue };
            match merge::merge(&generated, &config) {
                Ok(merged) => config = merged,
                Err(e) => conv.err_at(span, name.into(), format!("merging what it makes: {e}")),
            }
        }
    }
    config.ignition.version = Some(spec.to_string());
    if conv.errors.is_empty() {
        Ok(config)
    } else {
        conv.errors.sort_by_key(|e| (e.line, e.column));
        Err(conv.errors)
    }
}

/// Butane's merge of the units `with_mount_unit` makes under the file's
/// own: a unit the file declares by the same name keeps what it sets.
fn with_mount_units(
    systemd: Option<ign::Systemd>,
    generated: Vec<ign::Unit>,
) -> Option<ign::Systemd> {
    if generated.is_empty() {
        return systemd;
    }
    let declared = systemd.and_then(|s| s.units).unwrap_or_default();
    let mut units = Vec::new();
    for mut unit in generated {
        if let Some(own) = declared.iter().find(|u| u.name == unit.name) {
            unit.contents = own.contents.clone().or(unit.contents);
            unit.enabled = own.enabled.or(unit.enabled);
            unit.mask = own.mask.or(unit.mask);
            unit.dropins = own.dropins.clone().or(unit.dropins);
        }
        units.push(unit);
    }
    let generated: BTreeSet<String> = units.iter().map(|u| u.name.clone()).collect();
    units.extend(
        declared
            .into_iter()
            .filter(|u| !generated.contains(&u.name)),
    );
    Some(ign::Systemd { units: Some(units) })
}

impl Conv<'_> {
    fn ignition(&mut self, i: &BIgnition) -> ign::Ignition {
        let mut out = ign::Ignition::default();
        if let Some(config) = &i.config {
            if let Some(replace) = &config.replace {
                self.err(
                    replace,
                    "ignition.config.replace".into(),
                    "not supported: a replacing config would discard what metalherd adds to \
                     every machine (host keys, network, the boot report); use merge",
                );
            }
            let merge = config.merge.as_ref().map(|merge| {
                merge
                    .iter()
                    .enumerate()
                    .filter_map(|(j, c)| {
                        let field = format!("ignition.config.merge[{j}]");
                        let text = c.inline.as_ref().map(|t| (t.to_string(), t));
                        let text = text.or_else(|| {
                            let local = c.local.as_ref()?;
                            Some((self.local(local, format!("{field}.local"))?, local))
                        });
                        if let Some((text, at)) = text {
                            if let Err(e) = ignition_config::Config::parse_str(&text) {
                                self.err(at, field.clone(), format!("not an Ignition config: {e}"));
                            }
                        }
                        self.contents(c, &field)
                    })
                    .collect()
            });
            out.config = Some(ign::IgnitionConfig {
                merge,
                replace: None,
            });
        }
        if let Some(t) = &i.timeouts {
            for (v, name) in [
                (&t.http_response_headers, "http_response_headers"),
                (&t.http_total, "http_total"),
            ] {
                if let Some(v) = v.as_ref().filter(|v| ***v < 0) {
                    self.err(
                        v,
                        format!("ignition.timeouts.{name}"),
                        "a timeout is seconds, 0 or more",
                    );
                }
            }
            out.timeouts = Some(ign::Timeouts {
                http_response_headers: t.http_response_headers.as_ref().map(|v| **v),
                http_total: t.http_total.as_ref().map(|v| **v),
            });
        }
        if let Some(security) = &i.security {
            let tls = security.tls.as_ref().map(|tls| ign::SecurityTls {
                certificate_authorities: tls.certificate_authorities.as_ref().map(|cas| {
                    cas.iter()
                        .enumerate()
                        .filter_map(|(j, c)| {
                            self.contents(
                                c,
                                &format!("ignition.security.tls.certificate_authorities[{j}]"),
                            )
                        })
                        .collect()
                }),
            });
            out.security = Some(ign::Security { tls });
        }
        if let Some(p) = &i.proxy {
            for (v, name) in [
                (&p.http_proxy, "http_proxy"),
                (&p.https_proxy, "https_proxy"),
            ] {
                let Some(v) = v else { continue };
                if !(v.starts_with("http://") || v.starts_with("https://")) {
                    self.err(
                        v,
                        format!("ignition.proxy.{name}"),
                        format!("{:?} is not a proxy URL (http://host:port)", v.as_str()),
                    );
                } else if name == "https_proxy" && v.starts_with("http://") {
                    // Ignition warns about it; rendered configs carry no warnings.
                    self.err(
                        v,
                        format!("ignition.proxy.{name}"),
                        "a proxy for HTTPS reached over plain HTTP (Ignition warns about it); give an https:// proxy",
                    );
                }
            }
            out.proxy = Some(ign::Proxy {
                http_proxy: p.http_proxy.as_ref().map(|v| v.to_string()),
                https_proxy: p.https_proxy.as_ref().map(|v| v.to_string()),
                no_proxy: p
                    .no_proxy
                    .as_ref()
                    .map(|n| n.iter().map(|x| Some(x.clone())).collect()),
            });
        }
        out
    }

    fn storage(&mut self, s: &BStorage, variant: &str) -> (ign::Storage, Vec<ign::Unit>) {
        let mut out = ign::Storage::default();
        if let Some(disks) = &s.disks {
            out.disks = Some(self.disks(disks));
        }
        if let Some(raid) = &s.raid {
            out.raid = Some(self.raids(raid));
        }
        if let Some(luks) = &s.luks {
            out.luks = Some(self.luks(luks, variant));
        }
        let mut mount_units = Vec::new();
        if let Some(filesystems) = &s.filesystems {
            let (list, units) =
                self.filesystems(filesystems, s.luks.as_deref().unwrap_or_default());
            out.filesystems = Some(list);
            mount_units = units;
        }
        if let Some(files) = &s.files {
            let mut list = Vec::new();
            for (i, f) in files.iter().enumerate() {
                let field = format!("storage.files[{i}]");
                let mut file = ign::File::new(self.path(&f.path, format!("{field}.path")));
                file.mode = self.mode(&f.mode, format!("{field}.mode"));
                file.overwrite = f.overwrite;
                file.user = owner_user(&f.user);
                file.group = owner_group(&f.group);
                file.contents = f
                    .contents
                    .as_ref()
                    .and_then(|c| self.contents(c, &format!("{field}.contents")));
                file.append = f.append.as_ref().map(|append| {
                    append
                        .iter()
                        .enumerate()
                        .filter_map(|(j, c)| self.contents(c, &format!("{field}.append[{j}]")))
                        .collect()
                });
                if f.overwrite == Some(true) && file.contents.is_none() {
                    self.err(
                        &f.path,
                        format!("{field}.overwrite"),
                        "overwrite: true needs contents (Ignition would write an empty file)",
                    );
                }
                list.push(file);
            }
            out.files = Some(list);
        }
        if let Some(dirs) = &s.directories {
            let mut list = Vec::new();
            for (i, d) in dirs.iter().enumerate() {
                let field = format!("storage.directories[{i}]");
                let mut dir = ign::Directory::new(self.path(&d.path, format!("{field}.path")));
                dir.mode = self.mode(&d.mode, format!("{field}.mode"));
                dir.overwrite = d.overwrite;
                dir.user = owner_user(&d.user);
                dir.group = owner_group(&d.group);
                list.push(dir);
            }
            out.directories = Some(list);
        }
        if let Some(links) = &s.links {
            let mut list = Vec::new();
            for (i, l) in links.iter().enumerate() {
                let field = format!("storage.links[{i}]");
                let mut link = ign::Link::new(self.path(&l.path, format!("{field}.path")));
                link.target = l.target.as_ref().map(|t| t.to_string());
                link.hard = l.hard;
                link.overwrite = l.overwrite;
                link.user = owner_user(&l.user);
                link.group = owner_group(&l.group);
                list.push(link);
            }
            out.links = Some(list);
        }
        if let Some(trees) = &s.trees {
            self.trees(trees, &mut out);
        }
        for (i, l) in s.links.iter().flatten().enumerate() {
            let target = out
                .links
                .as_ref()
                .and_then(|links| links[i].target.as_ref());
            if target.is_none_or(|t| t.is_empty()) {
                self.err(
                    &l.path,
                    format!("storage.links[{i}].target"),
                    "a link needs a target (from target: or a tree)",
                );
            }
        }
        (out, mount_units)
    }

    fn systemd(&mut self, s: &BSystemd) -> ign::Systemd {
        let mut names = BTreeSet::new();
        let units = s.units.as_ref().map(|units| {
            let mut list = Vec::new();
            for (i, u) in units.iter().enumerate() {
                let field = format!("systemd.units[{i}]");
                if !names.insert(u.name.to_string()) {
                    self.err(
                        &u.name,
                        format!("{field}.name"),
                        format!("unit {} is configured twice", u.name.as_str()),
                    );
                }
                let mut unit = ign::Unit::new(u.name.to_string());
                unit.enabled = u.enabled;
                unit.mask = u.mask;
                unit.contents = self.unit_text(&u.contents, &u.contents_local, &field);
                unit.dropins = u.dropins.as_ref().map(|ds| {
                    ds.iter()
                        .enumerate()
                        .map(|(j, d)| {
                            let mut dropin = ign::Dropin::new(d.name.to_string());
                            dropin.contents = self.unit_text(
                                &d.contents,
                                &d.contents_local,
                                &format!("{field}.dropins[{j}]"),
                            );
                            dropin
                        })
                        .collect()
                });
                list.push(unit);
            }
            list
        });
        ign::Systemd { units }
    }

    fn passwd(&mut self, p: &BPasswd) -> ign::Passwd {
        let users = p.users.as_ref().map(|users| {
            users
                .iter()
                .enumerate()
                .map(|(i, u)| {
                    let mut user = ign::User::new(u.name.to_string());
                    user.ssh_authorized_keys = u.ssh_authorized_keys.clone();
                    user.groups = u.groups.clone();
                    user.home_dir = u.home_dir.clone();
                    user.shell = u.shell.clone();
                    user.uid = u.uid;
                    user.gecos = u.gecos.clone();
                    user.primary_group = u.primary_group.clone();
                    user.no_create_home = u.no_create_home;
                    user.system = u.system;
                    user.password_hash = u.password_hash.clone();
                    user.no_log_init = u.no_log_init;
                    user.no_user_group = u.no_user_group;
                    user.should_exist = u.should_exist.as_ref().map(|v| **v);
                    if let Some(files) = &u.ssh_authorized_keys_local {
                        let keys = user.ssh_authorized_keys.get_or_insert_with(Vec::new);
                        for (j, file) in files.iter().enumerate() {
                            let field = format!("passwd.users[{i}].ssh_authorized_keys_local[{j}]");
                            if let Some(text) = self.local(file, field) {
                                keys.extend(
                                    text.lines().filter(|l| !l.is_empty()).map(str::to_string),
                                );
                            }
                        }
                    }
                    if let Some(no) = u.should_exist.as_ref().filter(|v| !***v) {
                        let others = user.ssh_authorized_keys.is_some()
                            || user.groups.is_some()
                            || user.home_dir.is_some()
                            || user.shell.is_some()
                            || user.uid.is_some()
                            || user.gecos.is_some()
                            || user.primary_group.is_some()
                            || user.no_create_home.is_some()
                            || user.system.is_some()
                            || user.password_hash.is_some()
                            || user.no_log_init.is_some()
                            || user.no_user_group.is_some();
                        if others {
                            self.err(
                                no,
                                format!("passwd.users[{i}].should_exist"),
                                "should_exist: false deletes the user: give it only a name",
                            );
                        }
                    }
                    user
                })
                .collect()
        });
        let groups = p.groups.as_ref().map(|groups| {
            groups
                .iter()
                .enumerate()
                .map(|(i, g)| {
                    let mut group = ign::Group::new(g.name.to_string());
                    group.gid = g.gid;
                    group.system = g.system;
                    group.password_hash = g.password_hash.clone();
                    group.should_exist = g.should_exist.as_ref().map(|v| **v);
                    if let Some(no) = g.should_exist.as_ref().filter(|v| !***v) {
                        if g.gid.is_some() || g.system.is_some() || g.password_hash.is_some() {
                            self.err(
                                no,
                                format!("passwd.groups[{i}].should_exist"),
                                "should_exist: false deletes the group: give it only a name",
                            );
                        }
                    }
                    group
                })
                .collect()
        });
        ign::Passwd { users, groups }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_local(_: &str) -> Result<String, String> {
        Err("no templates here".into())
    }

    #[test]
    fn unknown_key_is_an_error_with_its_line() {
        let yaml = "variant: flatcar\nversion: 1.1.0\nstorage:\n  files:\n    - path: /etc/x\n      colour: red\n";
        let errs = transpile(yaml, "flatcar", &mut no_local).unwrap_err();
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].line, 6, "{errs:?}");
        assert!(errs[0].field.ends_with("colour"), "{errs:?}");
    }

    #[test]
    fn modes_are_octal() {
        let yaml = "variant: flatcar\nversion: 1.1.0\nstorage:\n  files:\n    - path: /etc/x\n      mode: 0644\n      contents: { inline: hi }\n";
        let config = transpile(yaml, "flatcar", &mut no_local).unwrap();
        let file = &config.storage.unwrap().files.unwrap()[0];
        assert_eq!(file.mode, Some(0o644));
        assert_eq!(
            file.contents.as_ref().unwrap().source.as_deref(),
            Some("data:;base64,aGk=")
        );
    }

    #[test]
    fn remote_source_needs_a_hash() {
        let yaml = "variant: flatcar\nversion: 1.1.0\nstorage:\n  files:\n    - path: /opt/bin/x\n      contents: { source: \"http://10.0.0.1/x\" }\n";
        let errs = transpile(yaml, "flatcar", &mut no_local).unwrap_err();
        assert!(errs[0].message.contains("verification.hash"), "{errs:?}");
    }

    #[test]
    fn wrong_variant_and_duplicate_paths() {
        let yaml = "variant: fcos\nversion: 1.5.0\nstorage:\n  directories:\n    - path: /a\n    - path: /a\n";
        let errs = transpile(yaml, "flatcar", &mut no_local).unwrap_err();
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert_eq!(errs[0].field, "variant");
        assert_eq!(errs[1].line, 6);
    }

    #[test]
    fn each_version_gives_the_spec_butane_gives_it_and_modes_follow_it() {
        let file = |version: &str, mode: &str| {
            format!("variant: flatcar\nversion: {version}\nstorage:\n  files:\n    - path: /opt/bin/x\n      mode: {mode}\n      contents: {{ inline: hi }}\n")
        };
        let old = transpile(&file("1.0.0", "0755"), "flatcar", &mut no_local).unwrap();
        assert_eq!(old.ignition.version.as_deref(), Some("3.3.0"));
        let new = transpile(&file("1.1.0", "04755"), "flatcar", &mut no_local).unwrap();
        assert_eq!(new.ignition.version.as_deref(), Some("3.4.0"));
        // What a 3.4.0 file says, CoreOS's 3.4.0 structs read back.
        let json = crate::render::to_json(&new);
        let read: ignition_config::v3_4::Config = serde_json::from_str(&json).unwrap();
        assert_eq!(read.ignition.version, "3.4.0");
        let mode = new.storage.unwrap().files.unwrap()[0].mode;
        assert_eq!(mode, Some(0o4755));
        let errs = transpile(&file("1.0.0", "04755"), "flatcar", &mut no_local).unwrap_err();
        assert_eq!(
            (errs[0].line, errs[0].field.as_str()),
            (6, "storage.files[0].mode"),
            "{errs:?}"
        );
        assert!(
            errs[0].message.contains("need Ignition spec 3.4.0"),
            "{errs:?}"
        );
        let errs = transpile(&file("1.2.0", "0755"), "flatcar", &mut no_local).unwrap_err();
        assert_eq!(
            (errs[0].line, errs[0].field.as_str()),
            (2, "version"),
            "{errs:?}"
        );
        assert!(
            errs[0]
                .message
                .contains("1.0.0 (Ignition 3.3.0), 1.1.0 (Ignition 3.4.0)"),
            "{errs:?}"
        );
        let fcos = "variant: fcos\nversion: 1.4.0\n";
        let fcos = transpile(fcos, "fcos", &mut no_local).unwrap();
        assert_eq!(fcos.ignition.version.as_deref(), Some("3.3.0"));
    }
}
