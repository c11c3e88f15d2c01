//! No fleet text can rewrite what machines execute. Every scalar value of
//! the example fleet's files (`fleet.yaml`, each site, each inventory) is
//! given, one at a time, each hostile suffix below (a line break with an
//! iPXE `chain`, a dnsmasq directive, a unit line; `#`, quotes, `${…}`,
//! `%`, `;`, `,`, a backslash, non-ASCII). Either the fleet is refused
//! with an error naming that file, line and field, or it renders to
//! exactly the directives the unchanged fleet renders: every iPXE script,
//! dnsmasq config, unit and file in the Ignition has the same lines with
//! the same keys and not one more of the characters that could escape a
//! value; and a dnsmasq config that changed still passes the real
//! `dnsmasq --test`.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use metalherd::render::{self, Rendered, Selection};

use super::render::{readable, seeded_keys};
use super::{example_fleet, require, text};

const SUFFIXES: &[&str] = &[
    "\nchain http://127.0.0.1:9/evil.ipxe",
    "\ndhcp-script=/tmp/evil",
    "\nExecStartPre=/tmp/evil",
    " #x",
    "\"'",
    "${net0/mac}",
    "%n%%",
    ";x,y",
    "\\",
    "é\u{2028}",
];

/// The characters that could end or escape a value somewhere a template
/// puts one; each text's count of each must not change.
const ESCAPES: &[char] = &[
    '\n', '\r', '#', '"', '\'', '$', '%', ';', ',', '\\', '{', '}', '&', '\u{2028}',
];

/// The texts machines and dnsmasq read, by where they are.
fn texts(r: &Rendered) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for m in &r.machines {
        out.insert(format!("{}.ipxe", m.name), m.ipxe.clone());
        for (kind, ign) in [
            ("ign", Some(&m.ignition)),
            ("final", m.final_ignition.as_ref()),
        ] {
            let Some(ign) = ign else { continue };
            let v: serde_json::Value = serde_json::from_str(&readable(ign)).unwrap();
            let mut strings = Vec::new();
            collect(&v, "", &mut strings);
            for (path, s) in strings {
                out.insert(format!("{}.{kind}{path}", m.name), s);
            }
        }
    }
    for s in &r.sites {
        if let Some(conf) = &s.dnsmasq {
            out.insert(format!("{}/dnsmasq.conf", s.name), conf.clone());
        }
    }
    out
}

fn collect(v: &serde_json::Value, at: &str, out: &mut Vec<(String, String)>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                collect(v, &format!("{at}.{k}"), out);
            }
        }
        serde_json::Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                collect(v, &format!("{at}[{i}]"), out);
            }
        }
        serde_json::Value::String(s) => out.push((at.to_string(), s.clone())),
        _ => {}
    }
}

/// Each line's indentation and key (up to the first `=`, `:` or space),
/// and the count of each escaping character.
fn shape(text: &str) -> (Vec<String>, Vec<usize>) {
    let lines = text
        .lines()
        .map(|l| {
            let body = l.trim_start();
            let indent = &l[..l.len() - body.len()];
            let key = body.split(['=', ':', ' ']).next().unwrap_or("");
            format!("{indent}{key}")
        })
        .collect();
    let counts = ESCAPES
        .iter()
        .map(|c| text.chars().filter(|x| x == c).count())
        .collect();
    (lines, counts)
}

fn render_fleet(dir: &Path) -> Result<Rendered, metalherd::fleet::LoadError> {
    let fleet = metalherd::fleet::load(dir)?;
    let keys = seeded_keys(&fleet);
    Ok(render::render(&fleet, &keys, &Selection::default(), 1).expect("a loaded fleet renders"))
}

/// The scalar values of a fleet file: (line number, key, value as written,
/// the line's text before the value).
fn scalars(text: &str) -> Vec<(usize, String, String, String)> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let body = line.trim_start();
        if body.starts_with('#') {
            continue;
        }
        let body = body.strip_prefix("- ").unwrap_or(body);
        let Some((key, value)) = body.split_once(": ") else {
            continue;
        };
        if !key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
            continue;
        }
        let value = match value.find(" #") {
            Some(c) if !value.starts_with('"') => &value[..c],
            _ => value,
        }
        .trim();
        if value.is_empty() || value.starts_with(['[', '{', '|', '>', '&', '*']) {
            continue;
        }
        let value = value.trim_matches('"');
        let before = &line[..line.find(": ").unwrap() + 2];
        out.push((
            i + 1,
            key.to_string(),
            value.to_string(),
            before.to_string(),
        ));
    }
    out
}

#[test]
fn no_fleet_value_can_add_a_directive_to_what_machines_run() {
    let dnsmasq = require("dnsmasq", "dnsmasq-base");
    let fleet = example_fleet();
    let dir = fleet.path();
    let baseline: BTreeMap<String, _> = texts(&render_fleet(dir).unwrap())
        .into_iter()
        .map(|(k, v)| (k, (shape(&v), v)))
        .collect();
    let mut files: Vec<String> = vec!["inventory/fleet.yaml".into()];
    for d in ["sites", "inventory"] {
        let mut names: Vec<String> = std::fs::read_dir(dir.join(d))
            .unwrap()
            .map(|e| format!("{d}/{}", e.unwrap().file_name().to_string_lossy()))
            .filter(|n| n.ends_with(".yaml") && n != "inventory/fleet.yaml")
            .collect();
        names.sort();
        files.extend(names);
    }
    let (mut refused, mut rendered, mut fields) = (0, 0, 0);
    for file in &files {
        let path = dir.join(file);
        let original = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = original.lines().collect();
        for (n, key, value, before) in scalars(&original) {
            fields += 1;
            for suffix in SUFFIXES {
                let hostile = serde_json::to_string(&format!("{value}{suffix}")).unwrap();
                let mut edited: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
                edited[n - 1] = format!("{before}{hostile}");
                std::fs::write(&path, edited.join("\n") + "\n").unwrap();
                let case = format!("{file}:{n} {key}: {hostile}");
                match render_fleet(dir) {
                    Err(e) => {
                        refused += 1;
                        let named = e.diagnostics.iter().any(|d| {
                            d.file == Path::new(file) && d.line == n && d.field.ends_with(&key)
                        });
                        assert!(
                            named,
                            "{case}: refused, but not at {file}:{n} field {key}: {:#?}",
                            e.diagnostics
                        );
                    }
                    Ok(r) => {
                        rendered += 1;
                        for (at, t) in texts(&r) {
                            let Some((expected, before)) = baseline.get(&at) else {
                                panic!("{case}: renders {at}, which the example does not");
                            };
                            assert_eq!(&shape(&t), expected, "{case}: {at} changed shape:\n{t}");
                            if at.ends_with("dnsmasq.conf") && t != *before {
                                let conf = dir.join("dnsmasq-test.conf");
                                std::fs::write(&conf, &t).unwrap();
                                let out = Command::new(&dnsmasq)
                                    .arg("--test")
                                    .arg(format!("--conf-file={}", conf.display()))
                                    .output()
                                    .unwrap();
                                assert!(
                                    out.status.success(),
                                    "{case}: dnsmasq --test: {}",
                                    text(&out.stderr)
                                );
                            }
                        }
                    }
                }
            }
            std::fs::write(&path, &original).unwrap();
        }
    }
    eprintln!(
        "{fields} fields × {} suffixes: {refused} refused, {rendered} rendered the same directives",
        SUFFIXES.len()
    );
    // Every field was tried, and both outcomes occur (a test that could
    // only refuse, or only render, would prove less than it says).
    assert!(fields > 60, "only {fields} fields found");
    assert!(
        refused > 0 && rendered > 0,
        "{refused} refused, {rendered} rendered"
    );
}
