//! Named data disks: a site declares the disk names its role files use
//! (`disks: { etcd: /dev/sdb }`, each with a default device) and a
//! machine may point a name at another device (`disks: { etcd:
//! /dev/nvme1n1 }`), so that one role file (`{{ machine.disks.etcd }}`)
//! serves machines whose disks differ. A machine uses each device once,
//! and never its install disk as a data disk.

use std::collections::{BTreeMap, HashMap};

use marked_yaml::Span;

use super::{grammar, Ctx, Site, Text};

/// A disk name as role files write it after `machine.disks.`.
fn disk_name(s: &str) -> Result<String, String> {
    let ok = s.len() <= 32
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s:?} is not a disk name: a lowercase letter, then lowercase letters, digits and _ \
             (templates write it as machine.disks.NAME)"
        ))
    }
}

/// The entries of a `disks:` map in file order.
fn in_order(raw: &HashMap<Text, Text>) -> Vec<(&Text, &Text)> {
    let mut entries: Vec<(&Text, &Text)> = raw.iter().collect();
    entries.sort_by_key(|(k, _)| k.span().start().map(|m| (m.line(), m.column())));
    entries
}

impl Ctx {
    /// A site's declared disks and their default devices.
    pub(super) fn site_disks(
        &mut self,
        raw: Option<&HashMap<Text, Text>>,
    ) -> BTreeMap<String, String> {
        let mut disks = BTreeMap::new();
        for (name, device) in raw.map(in_order).unwrap_or_default() {
            let field = format!("disks.{}", name.as_str());
            let name = self.parse(name, &field, disk_name);
            let device = self.parse(device, &field, grammar::device);
            if let (Some(name), Some(device)) = (name, device) {
                disks.insert(name, device);
            }
        }
        disks
    }

    /// A machine's disks: its site's defaults with its own overrides,
    /// each name one its site declares, each device used once and none
    /// its install disk. `None` when a problem was reported.
    pub(super) fn machine_disks(
        &mut self,
        raw: Option<&HashMap<Text, Text>>,
        at: &str,
        site: Option<&Site>,
        install_disk: Option<&str>,
        machine: &Span,
    ) -> Option<BTreeMap<String, String>> {
        let mut disks = site.map(|s| s.disks.clone()).unwrap_or_default();
        let mut ok = true;
        // Where each name got its device, to point at the machine's line.
        let mut spans: HashMap<String, &Text> = HashMap::new();
        for (name, device) in raw.map(in_order).unwrap_or_default() {
            let field = format!("{at}.disks.{}", name.as_str());
            let Some(parsed) = self.parse(name, &field, disk_name) else {
                ok = false;
                continue;
            };
            if let Some(site) = site {
                if !site.disks.contains_key(&parsed) {
                    let declared: Vec<&str> = site.disks.keys().map(String::as_str).collect();
                    let declared = if declared.is_empty() {
                        "none".to_string()
                    } else {
                        declared.join(", ")
                    };
                    self.err(
                        name.span(),
                        field,
                        format!(
                            "site `{}` declares no disk `{parsed}` (declared: {declared}); \
                             add it to sites/{}.yaml's `disks` with a default device",
                            site.name, site.name
                        ),
                    );
                    ok = false;
                    continue;
                }
            }
            match self.parse(device, &field, grammar::device) {
                Some(d) => {
                    disks.insert(parsed.clone(), d);
                    spans.insert(parsed, device);
                }
                None => ok = false,
            }
        }
        // In name order, so the report is stable.
        let mut by_device: HashMap<&str, &str> = HashMap::new();
        for (name, device) in &disks {
            let problem = if install_disk == Some(device.as_str()) {
                Some(format!(
                    "{device} is the machine's install_disk: installing the OS would wipe \
                     disk `{name}`"
                ))
            } else if let Some(first) = by_device.get(device.as_str()) {
                Some(format!(
                    "{device} is both disk `{first}` and disk `{name}` of this machine: one \
                     device, one use"
                ))
            } else {
                by_device.insert(device, name);
                None
            };
            if let Some(problem) = problem {
                // At the machine's own entry for either disk when it has
                // one, else at the machine (it inherits the site's default).
                let other = by_device.get(device.as_str()).copied();
                let own = spans
                    .get(name)
                    .map(|s| (name.as_str(), *s))
                    .or_else(|| other.and_then(|o| spans.get(o).map(|s| (o, *s))));
                match own {
                    Some((which, span)) => {
                        self.err(span.span(), format!("{at}.disks.{which}"), problem)
                    }
                    None => self.err(
                        machine,
                        format!("{at}.disks.{name}"),
                        format!("{problem} (the site's default)"),
                    ),
                }
                ok = false;
            }
        }
        ok.then_some(disks)
    }
}
