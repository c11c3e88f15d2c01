//! The Butane-compatibility suite: `tests/butane/*.yaml`, configs built
//! from the Butane specification and its documented examples. Each case
//! is a role file (after templating) and either the Ignition Butane makes
//! of it, compared field by field, or the errors metalherd refuses it with
//! (line, field, words of the message). Every accepted case also passes
//! the real `ignition-validate` without a word. `tests/butane/FIELDS.txt`
//! lists every documented field of the variants metalherd reads; each must
//! appear in some case.
//!
//! Field-by-field means: the same JSON, except that a `data:` URL is
//! compared by what it decodes to (Butane picks percent-encoding or
//! base64 by size, metalherd always base64) and Butane's explicit
//! `"compression": ""` (no compression) may be absent.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use base64::Engine;
use serde::Deserialize;
use serde_json::Value;

use super::{repo, require};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    /// Where the case comes from (the Butane docs' section, or the rule).
    about: String,
    /// The fleet OS's variant (default flatcar).
    variant: Option<String>,
    /// Templates `local:`, `contents_local:`, `ssh_authorized_keys_local:`
    /// and `storage.trees` name (paths under `templates/`).
    files: Option<BTreeMap<String, String>>,
    /// Which of `files` are executable.
    executable: Option<Vec<String>>,
    /// Symlinks under `templates/`: path → target.
    symlinks: Option<BTreeMap<String, String>>,
    butane: String,
    /// The Ignition config Butane writes for it (JSON).
    ignition: Option<String>,
    /// Or the errors metalherd refuses it with, all of them.
    refused: Option<Vec<Refusal>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Refusal {
    line: usize,
    field: String,
    says: String,
}

fn cases() -> Vec<(String, Case)> {
    let dir = repo().join("tests/butane");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    paths.sort();
    assert!(paths.len() >= 10, "the suite is in {}", dir.display());
    paths
        .into_iter()
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&p).unwrap();
            let case: Case = marked_yaml::from_yaml(0, &text)
                .unwrap_or_else(|e| panic!("{name}: bad case file: {e}"));
            (name, case)
        })
        .collect()
}

fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(hex, 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// A `data:` URL's bytes.
fn decode_data_url(url: &str) -> Option<Vec<u8>> {
    let rest = url.strip_prefix("data:")?;
    let (meta, data) = rest.split_once(',')?;
    if meta.ends_with(";base64") {
        base64::engine::general_purpose::STANDARD
            .decode(percent_decode(data))
            .ok()
    } else {
        Some(percent_decode(data))
    }
}

fn normalize(v: &mut Value) {
    match v {
        Value::Object(map) => {
            if map.get("compression") == Some(&Value::String(String::new())) {
                map.remove("compression");
            }
            map.values_mut().for_each(normalize);
        }
        Value::Array(items) => items.iter_mut().for_each(normalize),
        Value::String(s) if s.starts_with("data:") => {
            if let Some(bytes) = decode_data_url(s) {
                *s = format!("decoded data URL: {}", String::from_utf8_lossy(&bytes));
            }
        }
        _ => {}
    }
}

/// The first difference between two JSON values, as a path.
fn first_difference(want: &Value, got: &Value, at: &str) -> Option<String> {
    match (want, got) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            keys.into_iter().find_map(|k| match (a.get(k), b.get(k)) {
                (Some(x), Some(y)) => first_difference(x, y, &format!("{at}.{k}")),
                (Some(x), None) => Some(format!("{at}.{k}: want {x}, metalherd has nothing")),
                (None, Some(y)) => Some(format!("{at}.{k}: metalherd adds {y}")),
                (None, None) => None,
            })
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => a
            .iter()
            .zip(b)
            .enumerate()
            .find_map(|(i, (x, y))| first_difference(x, y, &format!("{at}[{i}]"))),
        _ if want == got => None,
        _ => Some(format!("{at}: want {want}, metalherd has {got}")),
    }
}

/// A fleet directory holding the case's templates, as `render` reads one.
fn fleet_with_templates(case: &Case, dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let root = dir.to_path_buf();
    std::fs::create_dir_all(root.join("ignition")).unwrap();
    std::fs::create_dir_all(root.join("templates")).unwrap();
    for (path, text) in case.files.iter().flatten() {
        let file = root.join("templates").join(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, text).unwrap();
        let exec = case.executable.iter().flatten().any(|e| e == path);
        let mode = if exec { 0o755 } else { 0o644 };
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    for (path, target) in case.symlinks.iter().flatten() {
        let link = root.join("templates").join(path);
        std::fs::create_dir_all(link.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(target, link).unwrap();
    }
    root
}

fn run(name: &str, case: &Case, validate: &Path, dir: &Path) -> Result<(), String> {
    let variant = case.variant.as_deref().unwrap_or("flatcar");
    let root = fleet_with_templates(case, &dir.join(name.trim_end_matches(".yaml")));
    let tera = metalherd::render::load_templates(&root).map_err(|e| format!("{name}: {e}"))?;
    let tree = metalherd::render::locals::TemplateTree::load(&root).unwrap();
    let ctx = tera::Context::new();
    let mut locals = metalherd::render::locals::MachineLocals {
        tera: &tera,
        ctx: &ctx,
        tree: &tree,
    };
    let result = metalherd::render::butane::transpile(&case.butane, variant, &mut locals);
    match (result, &case.ignition, &case.refused) {
        (Ok(config), Some(want), None) => {
            let json = metalherd::render::to_json(&config);
            let mut got: Value = serde_json::from_str(&json).unwrap();
            let mut want: Value = serde_json::from_str(want)
                .map_err(|e| format!("{name}: the expected Ignition is not JSON: {e}"))?;
            normalize(&mut got);
            normalize(&mut want);
            if let Some(diff) = first_difference(&want, &got, "$") {
                return Err(format!(
                    "{name} ({}): {diff}\nmetalherd wrote {json}",
                    case.about
                ));
            }
            // Debian's Ignition (2.14) knows 3.4.0 as 3.4.0-experimental.
            let file = dir.join(name.replace(".yaml", ".ign"));
            std::fs::write(
                &file,
                json.replace(r#""version":"3.4.0""#, r#""version":"3.4.0-experimental""#),
            )
            .unwrap();
            let out = std::process::Command::new(validate)
                .arg(&file)
                .output()
                .unwrap();
            let said = String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr);
            if !out.status.success() || !said.trim().is_empty() {
                return Err(format!(
                    "{name} ({}): ignition-validate says: {said}\n{json}",
                    case.about
                ));
            }
            Ok(())
        }
        (Err(errors), None, Some(want)) => {
            let got: Vec<String> = errors
                .iter()
                .map(|e| format!("{}: {}: {}", e.line, e.field, e.message))
                .collect();
            let all_found = want.len() == errors.len()
                && want.iter().zip(&errors).all(|(w, e)| {
                    e.line == w.line && e.field == w.field && e.message.contains(&w.says)
                });
            if all_found {
                Ok(())
            } else {
                Err(format!(
                    "{name} ({}): want exactly {:?}, got {got:#?}",
                    case.about,
                    want.iter()
                        .map(|w| format!("{}: {}: …{}…", w.line, w.field, w.says))
                        .collect::<Vec<_>>()
                ))
            }
        }
        (Ok(config), None, Some(_)) => Err(format!(
            "{name} ({}): should be refused, but renders {}",
            case.about,
            metalherd::render::to_json(&config)
        )),
        (Err(errors), Some(_), None) => Err(format!(
            "{name} ({}): should render, but is refused: {errors:#?}",
            case.about
        )),
        _ => Err(format!("{name}: give exactly one of ignition or refused")),
    }
}

#[test]
fn every_case_renders_as_butane_does_or_is_refused_by_name() {
    let validate = require("ignition-validate", "ignition");
    let dir = tempfile::tempdir().unwrap();
    let failures: Vec<String> = cases()
        .iter()
        .filter_map(|(name, case)| run(name, case, &validate, dir.path()).err())
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Every key path a YAML document uses, list items folded into their list.
fn key_paths(node: &marked_yaml::Node, prefix: &str, out: &mut BTreeSet<String>) {
    match node {
        marked_yaml::Node::Mapping(map) => {
            for (k, v) in map.iter() {
                let path = if prefix.is_empty() {
                    k.as_str().to_string()
                } else {
                    format!("{prefix}.{}", k.as_str())
                };
                out.insert(path.clone());
                key_paths(v, &path, out);
            }
        }
        marked_yaml::Node::Sequence(items) => {
            items.iter().for_each(|i| key_paths(i, prefix, out));
        }
        marked_yaml::Node::Scalar(_) => {}
    }
}

#[test]
fn every_documented_butane_field_is_covered() {
    let mut used = BTreeSet::new();
    for (name, case) in cases() {
        let node = marked_yaml::parse_yaml(0, &case.butane)
            .unwrap_or_else(|e| panic!("{name}: butane is not YAML: {e}"));
        key_paths(&node, "", &mut used);
    }
    let fields = std::fs::read_to_string(repo().join("tests/butane/FIELDS.txt")).unwrap();
    let documented: Vec<&str> = fields
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(documented.len() > 200, "{} fields", documented.len());
    let missing: Vec<&&str> = documented.iter().filter(|f| !used.contains(**f)).collect();
    assert!(
        missing.is_empty(),
        "documented Butane fields no case in tests/butane/ uses: {missing:#?}"
    );
}
