//! The broken-fleet corpus: `tests/broken-fleets/*.yaml`, one case per
//! validation rule. Each case edits a copy of the example fleet, runs
//! `metalherd inventory check`, and expects exit code 1 and each listed
//! diagnostic (file:line, field, message), in order, in text and JSON.
//! A case's `secret`, if given, must appear nowhere in the output.

use std::path::Path;

use serde::Deserialize;

use super::{example_fleet, metalherd, repo, text};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    rule: String,
    edits: Vec<Edit>,
    expect: Vec<Expect>,
    /// The expected diagnostics are all there are: no consequence of the
    /// problem is reported beside it.
    only: Option<bool>,
    secret: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Edit {
    file: String,
    replace: Option<String>,
    with: Option<String>,
    /// Write the whole file instead of replacing a part.
    contents: Option<String>,
    delete: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    /// `file:line`, or `file` for the whole file
    at: String,
    field: String,
    message: String,
}

fn apply(fleet: &Path, edit: &Edit, case: &str) {
    let path = fleet.join(&edit.file);
    if edit.delete == Some(true) {
        std::fs::remove_file(&path).unwrap();
        return;
    }
    if let Some(contents) = &edit.contents {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, contents).unwrap();
        return;
    }
    let (from, to) = (edit.replace.as_ref().unwrap(), edit.with.as_ref().unwrap());
    let old = std::fs::read_to_string(&path).unwrap();
    assert!(
        old.contains(from.as_str()),
        "{case}: {} does not contain {from:?}",
        edit.file
    );
    std::fs::write(&path, old.replacen(from.as_str(), to, 1)).unwrap();
}

fn run_case(path: &Path) -> Result<(), String> {
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    let yaml = std::fs::read_to_string(path).unwrap();
    let case: Case =
        marked_yaml::from_yaml(0, &yaml).map_err(|e| format!("{name}: bad case file: {e}"))?;
    let fleet = example_fleet();
    for edit in &case.edits {
        apply(fleet.path(), edit, &name);
    }

    let out = metalherd(fleet.path(), &["inventory", "check"]);
    let stderr = text(&out.stderr);
    let stdout = text(&out.stdout);
    if out.status.code() != Some(1) {
        return Err(format!(
            "{name} ({}): exit code {:?}, want 1\n{stderr}",
            case.rule,
            out.status.code()
        ));
    }
    let lines: Vec<&str> = stderr.lines().collect();
    let mut from = 0;
    for want in &case.expect {
        // `file:line`, or `file` alone for a problem with the whole file.
        let prefix = if want.at.contains(':') {
            format!("error: {}:", want.at)
        } else {
            format!("error: {}: ", want.at)
        };
        let found = lines[from..].iter().position(|l| {
            l.starts_with(&prefix)
                && (want.field.is_empty() || l.contains(&format!(" {}: ", want.field)))
                && l.contains(&want.message)
        });
        match found {
            Some(i) => from += i + 1,
            None => {
                return Err(format!(
                    "{name} ({}): no diagnostic at {} for field {} containing {:?} (in order) in:\n{stderr}",
                    case.rule, want.at, want.field, want.message
                ))
            }
        }
    }

    let json_out = metalherd(fleet.path(), &["--output", "json", "inventory", "check"]);
    let doc: serde_json::Value = serde_json::from_slice(&json_out.stdout)
        .map_err(|e| format!("{name}: --output json is not JSON: {e}"))?;
    let diags = doc["diagnostics"].as_array().cloned().unwrap_or_default();
    for want in &case.expect {
        let (file, line) = want.at.rsplit_once(':').unwrap_or((&want.at, "0"));
        let hit = diags.iter().any(|d| {
            d["file"] == file
                && d["line"].as_u64() == line.parse().ok()
                && d["field"] == want.field.as_str()
        });
        if !hit {
            return Err(format!(
                "{name}: JSON diagnostics lack {} {}: {doc}",
                want.at, want.field
            ));
        }
    }
    if case.only == Some(true) && diags.len() != case.expect.len() {
        return Err(format!(
            "{name}: want only the {} expected diagnostics, got {}:\n{stderr}",
            case.expect.len(),
            diags.len()
        ));
    }
    if json_out.status.code() != Some(1) || doc["ok"] != false {
        return Err(format!("{name}: JSON check must fail with ok=false"));
    }

    if let Some(secret) = &case.secret {
        let everything = format!(
            "{stdout}{stderr}{}{}",
            text(&json_out.stdout),
            text(&json_out.stderr)
        );
        if everything.contains(secret.as_str()) {
            return Err(format!(
                "{name}: the inline secret was echoed:\n{everything}"
            ));
        }
    }
    Ok(())
}

#[test]
fn every_broken_fleet_is_rejected_with_file_line_and_field() {
    let dir = repo().join("tests/broken-fleets");
    let mut cases: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    cases.sort();
    assert!(
        cases.len() >= 20,
        "the corpus has one case per rule; found only {}",
        cases.len()
    );
    let failures: Vec<String> = cases.iter().filter_map(|c| run_case(c).err()).collect();
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
}

#[test]
fn the_example_fleet_passes() {
    let out = metalherd(repo(), &["inventory", "check"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout).trim(),
        "fleet example: 3 sites, 18 machines: OK"
    );
}
