//! A Butane-style YAML subset → Ignition, through CoreOS's own typed
//! structs (`ignition-config`), never by assembling JSON text.
//!
//! Supported: `variant`/`version` (the fleet OS's variant; each version
//! gives the Ignition spec Butane gives it: [`SPECS`]),
//! `storage.files` (contents `inline`, `local` — a file under
//! `templates/`, itself a template — or `source` with
//! `verification.hash`), `storage.directories`, `storage.links`,
//! `systemd.units` (`contents` or `contents_local`, with `dropins`),
//! `passwd.users`, `passwd.groups` and `kernel_arguments`. Any other key
//! is an error, never silently dropped. To support a new key: add it to
//! the `B*` struct and convert it in the matching function.

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

/// Reads a referenced template (`local:`, `contents_local:`) and returns
/// its rendered text.
pub type Resolve<'a> = dyn FnMut(&str) -> Result<String, String> + 'a;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BConfig {
    variant: Text,
    version: Text,
    storage: Option<BStorage>,
    systemd: Option<BSystemd>,
    passwd: Option<BPasswd>,
    kernel_arguments: Option<BKernelArguments>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BStorage {
    files: Option<Vec<BFile>>,
    directories: Option<Vec<BDirectory>>,
    links: Option<Vec<BLink>>,
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
    user: Option<BOwner>,
    group: Option<BOwner>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BContents {
    inline: Option<Text>,
    local: Option<Text>,
    source: Option<Text>,
    verification: Option<BVerification>,
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
    target: Text,
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
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BGroup {
    name: Text,
    gid: Option<i64>,
    system: Option<bool>,
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

struct Conv<'r, 'a> {
    errors: Vec<ButaneError>,
    resolve: &'r mut Resolve<'a>,
    paths: BTreeSet<String>,
    /// The Ignition spec being written (`3.3.0`): what it can express.
    spec: &'static str,
}

impl Conv<'_, '_> {
    fn err(&mut self, v: &Text, field: String, message: impl Into<String>) {
        let (line, column) = v
            .span()
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
        match (self.resolve)(v.as_str()) {
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
        Some(resource)
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
    resolve: &mut Resolve<'_>,
) -> Result<ign::Config, Vec<ButaneError>> {
    let options = LoaderOptions::default().error_on_duplicate_keys(true);
    let node = marked_yaml::parse_yaml_with_options(0, yaml, options).map_err(|e| {
        vec![ButaneError {
            line: 0,
            column: 0,
            field: String::new(),
            message: format!("invalid YAML: {e}"),
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
        resolve,
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
    let config = ign::Config {
        storage: raw.storage.as_ref().map(|s| conv.storage(s)),
        systemd: raw.systemd.as_ref().map(|s| conv.systemd(s)),
        passwd: raw.passwd.as_ref().map(|p| conv.passwd(p)),
        kernel_arguments: raw.kernel_arguments.map(|k| ign::KernelArguments {
            should_exist: k.should_exist,
            should_not_exist: k.should_not_exist,
        }),
        ..Default::default()
    };
    let mut config = config;
    config.ignition.version = Some(spec.to_string());
    if conv.errors.is_empty() {
        Ok(config)
    } else {
        conv.errors.sort_by_key(|e| (e.line, e.column));
        Err(conv.errors)
    }
}

impl Conv<'_, '_> {
    fn storage(&mut self, s: &BStorage) -> ign::Storage {
        let mut out = ign::Storage::default();
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
                link.target = Some(l.target.to_string());
                link.hard = l.hard;
                link.overwrite = l.overwrite;
                link.user = owner_user(&l.user);
                link.group = owner_group(&l.group);
                list.push(link);
            }
            out.links = Some(list);
        }
        out
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
                .map(|u| {
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
                    user
                })
                .collect()
        });
        let groups = p.groups.as_ref().map(|groups| {
            groups
                .iter()
                .map(|g| {
                    let mut group = ign::Group::new(g.name.to_string());
                    group.gid = g.gid;
                    group.system = g.system;
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
