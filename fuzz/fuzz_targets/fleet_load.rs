//! The fleet loader on arbitrary files: the input is split at `\0` into
//! `inventory/fleet.yaml`, `sites/fra.yaml` and `inventory/fra.yaml` (the
//! corpus starts from the example fleet's; the templates and role files
//! are the example's). Errors are fine, a panic is not; every diagnostic
//! names a file or directory. A fleet that loads is rendered, and no value
//! may add a directive: each iPXE script's commands and each dnsmasq
//! config's directives are, counted, at most those of its template (one
//! `dhcp-host` per machine).
#![no_main]

use std::collections::HashMap;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use metalherd::keys::{KeyPair, Keys};
use metalherd::render::{self, Selection};

const FUZZED: [&str; 3] = [
    "inventory/fleet.yaml",
    "sites/fra.yaml",
    "inventory/fra.yaml",
];

fn dir() -> &'static std::path::Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = tempfile::tempdir().unwrap();
        for (path, text) in metalherd::example::FILES {
            if path.starts_with("inventory/") || path.starts_with("sites/") {
                continue;
            }
            let target = d.path().join(path);
            std::fs::create_dir_all(target.parent().unwrap()).unwrap();
            std::fs::write(target, text).unwrap();
        }
        std::fs::create_dir_all(d.path().join("inventory")).unwrap();
        std::fs::create_dir_all(d.path().join("sites")).unwrap();
        d
    })
    .path()
}

/// A line's command or directive: its first word, up to `=` for dnsmasq;
/// `None` for a blank line or a comment.
fn directive(line: &str) -> Option<String> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let word = line.split(|c: char| c.is_whitespace() || c == '=').next()?;
    Some(word.to_string())
}

/// The directives of a template, counted (Tera tags removed).
fn template_directives(path: &str) -> HashMap<String, usize> {
    let text = metalherd::example::FILES
        .iter()
        .find(|(p, _)| *p == path)
        .map(|(_, t)| *t)
        .unwrap_or_default();
    let mut out = HashMap::new();
    for line in text.lines() {
        let mut plain = String::new();
        let mut rest = line;
        while let Some(start) = rest.find("{%") {
            plain.push_str(&rest[..start]);
            rest = rest[start..]
                .find("%}")
                .map_or("", |end| &rest[start + end + 2..]);
        }
        plain.push_str(rest);
        if let Some(d) = directive(&plain) {
            *out.entry(d).or_default() += 1;
        }
    }
    out
}

/// Fails when `text` has a directive its template lacks, or more of one
/// than the template has (`repeats` may repeat).
fn check(what: &str, text: &str, template: &HashMap<String, usize>, repeats: &str) {
    let mut seen: HashMap<String, usize> = HashMap::new();
    for line in text.lines() {
        if let Some(d) = directive(line) {
            *seen.entry(d).or_default() += 1;
        }
    }
    for (d, n) in &seen {
        let allowed = template.get(d).copied().unwrap_or(0);
        assert!(
            allowed > 0 && (*n <= allowed || d == repeats),
            "{what}: {n} × {d:?} where its template has {allowed}:\n{text}"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let root = dir();
    let mut parts = data.splitn(3, |b| *b == 0);
    for file in FUZZED {
        std::fs::write(root.join(file), parts.next().unwrap_or_default()).unwrap();
    }
    let fleet = match metalherd::fleet::load(root) {
        Ok(fleet) => fleet,
        Err(e) => {
            for d in &e.diagnostics {
                let shown = d.to_string();
                assert!(
                    !shown.starts_with(':'),
                    "a diagnostic without its file: {shown}"
                );
            }
            return;
        }
    };
    let host = fleet
        .machines()
        .enumerate()
        .map(|(i, (_, m))| {
            (
                m.name.clone(),
                KeyPair::from_seed([i as u8 + 1; 32], "root@fuzz"),
            )
        })
        .collect();
    let keys = Keys {
        host,
        operator: KeyPair::from_seed([200; 32], "metalherd"),
    };
    // A fleet can load and still not render (a role file it names may be
    // missing here): only what renders is checked.
    let Ok(rendered) = render::render(&fleet, &keys, &Selection::default(), 1) else {
        return;
    };
    let ipxe = template_directives(&format!("templates/ipxe/{}.ipxe", fleet.os.flavor.as_str()));
    for m in &rendered.machines {
        check(m.name.as_str(), &m.ipxe, &ipxe, "");
    }
    let dnsmasq = template_directives("templates/dnsmasq/dnsmasq.conf");
    for s in &rendered.sites {
        if let Some(conf) = &s.dnsmasq {
            check(s.name.as_str(), conf, &dnsmasq, "dhcp-host");
        }
    }
});
