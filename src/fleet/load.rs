//! Finding and reading the fleet's files into their raw form. Each file is
//! parsed on its own, and an inventory's machines one at a time, so that
//! every problem of a run is reported, not only the first.

use std::fs;
use std::path::{Path, PathBuf};

use marked_yaml::{LoaderOptions, Node};
use serde::de::DeserializeOwned;

use super::diag::Diagnostics;
use super::raw::{RawFleet, RawInventoryHeader, RawMachine, RawSite, Text};

pub(super) const FLEET_FILE: &str = "inventory/fleet.yaml";

/// A site file, read.
pub(super) struct SiteFile {
    pub id: usize,
    /// The file name without `.yaml`, which must equal the site's name.
    pub stem: String,
    pub site: RawSite,
}

/// An inventory file, read; `machines` holds those that had the right shape.
pub(super) struct InventoryFile {
    pub id: usize,
    pub stem: String,
    pub header: RawInventoryHeader,
    pub machines: Vec<(usize, RawMachine)>,
    /// Some machine entries were malformed and are missing from `machines`.
    pub incomplete: bool,
    /// The names of the malformed entries (where they have one), so that a
    /// duplicate name is reported even when its machine lacks, say, `bmc`.
    pub malformed_names: Vec<(usize, Text)>,
}

/// Just the name of a machine entry that failed to deserialize.
#[derive(serde::Deserialize)]
struct NameOnly {
    name: Text,
}

pub(super) struct RawFiles {
    pub fleet: Option<(usize, RawFleet)>,
    /// The names of all site files found, including those that failed to
    /// parse: their sites exist, they are only broken.
    pub site_stems: Vec<String>,
    /// Inventory files that are not readable YAML (or lack a header): their
    /// sites' machine counts cannot be judged, so no consequence of the
    /// error is reported beside it.
    pub unreadable_inventories: Vec<String>,
    pub sites: Vec<SiteFile>,
    pub inventories: Vec<InventoryFile>,
}

/// Reads every file of the fleet in `root`; problems go to `diags`.
pub(super) fn read_all(root: &Path, diags: &mut Diagnostics) -> RawFiles {
    let fleet_id = diags.add_file(PathBuf::from(FLEET_FILE));
    // Not a fleet at all: one line that says so and how to give one, not
    // a "cannot read" per folder.
    if !root.join(FLEET_FILE).exists() && !root.join("sites").exists() {
        diags.push(
            fleet_id,
            0,
            0,
            String::new(),
            format!(
                "cannot read: {} is not a fleet repository (no {FLEET_FILE}, no sites/): point \
                 metalherd at one with --fleet DIR or METALHERD_FLEET, or start one with \
                 `metalherd init DIR`",
                root.display()
            ),
        );
        return RawFiles {
            fleet: None,
            site_stems: Vec::new(),
            unreadable_inventories: Vec::new(),
            sites: Vec::new(),
            inventories: Vec::new(),
        };
    }
    let fleet =
        parse_file(root, fleet_id, diags).and_then(|node| deserialize(&node, fleet_id, "", diags));

    let mut sites = Vec::new();
    let mut site_stems = Vec::new();
    for path in yaml_files(root, "sites", diags) {
        let id = diags.add_file(path.clone());
        let stem = stem(&path);
        site_stems.push(stem.clone());
        if let Some(node) = parse_file(root, id, diags) {
            if let Some(site) = deserialize::<RawSite>(&node, id, "", diags) {
                sites.push(SiteFile { id, stem, site });
            }
        }
    }

    let mut inventories = Vec::new();
    let mut unreadable_inventories = Vec::new();
    for path in yaml_files(root, "inventory", diags) {
        if path == Path::new(FLEET_FILE) {
            continue;
        }
        let id = diags.add_file(path.clone());
        let stem = stem(&path);
        let Some(node) = parse_file(root, id, diags) else {
            unreadable_inventories.push(stem);
            continue;
        };
        let Some(header) = deserialize::<RawInventoryHeader>(&node, id, "", diags) else {
            unreadable_inventories.push(stem);
            continue;
        };
        let mut machines = Vec::new();
        let mut malformed_names = Vec::new();
        let mut incomplete = false;
        match node.as_mapping().and_then(|m| m.get("machines")) {
            Some(Node::Sequence(seq)) => {
                for (i, item) in seq.iter().enumerate() {
                    let prefix = format!("machines[{i}]");
                    if let Some(m) = deserialize::<RawMachine>(item, id, &prefix, diags) {
                        machines.push((i, m));
                    } else {
                        incomplete = true;
                        if let Ok(n) = marked_yaml::from_node::<NameOnly>(item) {
                            malformed_names.push((i, n.name));
                        }
                    }
                }
            }
            Some(other) => {
                incomplete = true;
                diags.at(id, other.span(), "machines", "expected a list of machines")
            }
            None => {}
        }
        inventories.push(InventoryFile {
            id,
            stem,
            header,
            machines,
            incomplete,
            malformed_names,
        });
    }

    RawFiles {
        fleet: fleet.map(|f| (fleet_id, f)),
        site_stems,
        unreadable_inventories,
        sites,
        inventories,
    }
}

fn stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The `*.yaml` files directly in `root/dir`, sorted by name, as paths
/// relative to `root`.
fn yaml_files(root: &Path, dir: &str, diags: &mut Diagnostics) -> Vec<PathBuf> {
    let entries = match fs::read_dir(root.join(dir)) {
        Ok(entries) => entries,
        Err(e) => {
            let id = diags.add_file(PathBuf::from(format!("{dir}/")));
            diags.push(
                id,
                0,
                0,
                String::new(),
                format!("cannot read directory: {e}"),
            );
            return Vec::new();
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".yaml") && !name.starts_with('.'))
        .map(|name| Path::new(dir).join(name))
        .collect();
    files.sort();
    files
}

/// Reads and parses one file into marked YAML nodes.
fn parse_file(root: &Path, id: usize, diags: &mut Diagnostics) -> Option<Node> {
    let rel = diags.file(id).clone();
    let text = match fs::read_to_string(root.join(&rel)) {
        Ok(text) => text,
        Err(e) => {
            diags.push(id, 0, 0, String::new(), format!("cannot read: {e}"));
            return None;
        }
    };
    let options = LoaderOptions::default().error_on_duplicate_keys(true);
    match marked_yaml::parse_yaml_with_options(id, text.as_str(), options) {
        Ok(node) => Some(node),
        Err(e) => {
            push_yaml_error(diags, id, &e);
            None
        }
    }
}

/// Reports a YAML syntax error at its line.
fn push_yaml_error(diags: &mut Diagnostics, id: usize, e: &marked_yaml::LoadError) {
    let p = crate::errfmt::yaml_problem(e);
    diags.push(id, p.line, p.column, p.field, p.message);
}

/// Deserializes `node` into `T`, reporting a shape error (unknown key,
/// missing field, wrong type) with its position. `prefix` is the path of
/// `node` within its file, for the field name in the message.
fn deserialize<T: DeserializeOwned>(
    node: &Node,
    id: usize,
    prefix: &str,
    diags: &mut Diagnostics,
) -> Option<T> {
    match marked_yaml::from_node::<T>(node) {
        Ok(value) => Some(value),
        Err(err) => {
            let inner_path = err.path().filter(|p| *p != ".").unwrap_or("").to_string();
            let inner = err.into_inner();
            let (line, column) = inner
                .start_mark()
                .map(|m| (m.line(), m.column()))
                .unwrap_or((0, 0));
            let mut field = join_path(prefix, &inner_path);
            let message = match &inner {
                marked_yaml::Error::UnknownFieldError(name, expected, _) => {
                    // serde_path_to_error's path may already end with the key.
                    if !field.ends_with(name.as_str()) {
                        field = join_path(&field, name);
                    }
                    format!("unknown key; expected one of: {}", expected.join(", "))
                }
                other => {
                    let text = other.to_string();
                    if let Some(missing) = text
                        .strip_prefix("missing field `")
                        .and_then(|r| r.strip_suffix('`'))
                    {
                        field = join_path(&field, missing);
                        "missing".to_string()
                    } else {
                        text
                    }
                }
            };
            diags.push(id, line, column, field, message);
            None
        }
    }
}

fn join_path(prefix: &str, rest: &str) -> String {
    match (prefix.is_empty(), rest.is_empty()) {
        (true, _) => rest.to_string(),
        (false, true) => prefix.to_string(),
        (false, false) if rest.starts_with('[') => format!("{prefix}{rest}"),
        (false, false) => format!("{prefix}.{rest}"),
    }
}
