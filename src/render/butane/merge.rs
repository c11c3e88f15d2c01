//! Ignition's config merge (`config/merge` in Ignition), which Butane uses
//! to lay what its sugar generates (`with_mount_unit`'s units,
//! `boot_device`'s disks, `grub`'s file) under what the file itself
//! declares. Its rules:
//!
//! - objects merge field by field; a field the child sets replaces the
//!   parent's;
//! - a list's entries with the same key (a disk's device, a partition's
//!   number or else label, a unit's name, a string's value ...) merge, the
//!   parent's order first, then the child's new entries;
//! - `append` lists are concatenated;
//! - files, directories and links share one key space: a child's entry
//!   removes the parent's entry of another kind at its path.
//!
//! Done on the JSON form, so every field of every struct follows the rules
//! without a line per field.

use serde_json::{Map, Value};

use super::ign;

/// The key of an entry of the list at `path` (JSON field names joined by
/// `.`, list indexes left out); `None`: entries never merge.
fn key(path: &str, entry: &Value) -> Option<String> {
    let field = |name: &str| entry.get(name).map(Value::to_string);
    match path {
        "storage.files.append" => None,
        "storage.disks.partitions" => match entry.get("number").and_then(Value::as_i64) {
            Some(n) if n != 0 => Some(format!("number:{n}")),
            _ => field("label").map(|l| format!("label:{l}")),
        },
        "storage.disks" | "storage.filesystems" => field("device"),
        "storage.files" | "storage.directories" | "storage.links" => field("path"),
        "storage.luks.clevis.tang" => field("url"),
        "ignition.config.merge"
        | "ignition.security.tls.certificateAuthorities"
        | "storage.luks.keyFile" => field("source"),
        _ if !entry.is_object() => Some(entry.to_string()),
        // units, dropins, raid, luks, users, groups, HTTP headers
        _ => field("name"),
    }
}

fn merge_value(parent: Value, child: Value, path: &str) -> Value {
    match (parent, child) {
        (Value::Object(p), Value::Object(c)) => Value::Object(merge_object(p, c, path)),
        (Value::Array(p), Value::Array(c)) => Value::Array(merge_list(p, c, path)),
        (_, child) => child,
    }
}

fn merge_object(
    mut parent: Map<String, Value>,
    child: Map<String, Value>,
    path: &str,
) -> Map<String, Value> {
    if path == "storage" {
        drop_other_kinds(&mut parent, &child);
    }
    for (name, c) in child {
        let at = if path.is_empty() {
            name.clone()
        } else {
            format!("{path}.{name}")
        };
        let merged = match parent.remove(&name) {
            Some(p) if !c.is_null() => merge_value(p, c, &at),
            Some(p) => p,
            None => c,
        };
        parent.insert(name, merged);
    }
    parent
}

fn merge_list(parent: Vec<Value>, child: Vec<Value>, path: &str) -> Vec<Value> {
    let mut out = parent;
    for c in child {
        let k = key(path, &c);
        let same = k
            .as_ref()
            .and_then(|k| out.iter().position(|p| key(path, p).as_ref() == Some(k)));
        match same {
            Some(i) => {
                let p = std::mem::take(&mut out[i]);
                out[i] = merge_value(p, c, path);
            }
            None => out.push(c),
        }
    }
    out
}

/// Files, directories and links: a path the child gives one kind of node
/// leaves the parent's node of another kind out.
fn drop_other_kinds(parent: &mut Map<String, Value>, child: &Map<String, Value>) {
    const KINDS: [&str; 3] = ["files", "directories", "links"];
    for kind in KINDS {
        let taken: Vec<Value> = KINDS
            .iter()
            .filter(|other| **other != kind)
            .filter_map(|other| child.get(*other)?.as_array())
            .flatten()
            .filter_map(|e| e.get("path").cloned())
            .collect();
        if let Some(Value::Array(list)) = parent.get_mut(kind) {
            list.retain(|e| e.get("path").is_none_or(|p| !taken.contains(p)));
        }
    }
}

/// `child` merged over `parent`, as Ignition merges a config's
/// `ignition.config.merge` entries.
pub(super) fn merge(
    parent: &ign::Config,
    child: &ign::Config,
) -> Result<ign::Config, serde_json::Error> {
    let p = serde_json::to_value(parent)?;
    let c = serde_json::to_value(child)?;
    serde_json::from_value(merge_value(p, c, ""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> ign::Config {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn keyed_entries_merge_and_the_rest_append_in_ignitions_order() {
        let parent = config(
            r#"{"ignition":{"version":"3.3.0"},"storage":{
              "disks":[{"device":"/dev/sda","wipeTable":true,"partitions":[
                {"label":"boot-1","sizeMiB":384},{"label":"root-1"}]}],
              "raid":[{"name":"md-root","level":"raid1","devices":["/dev/a","/dev/b"]}],
              "files":[{"path":"/etc/x","append":[{"source":"data:,a"}]},{"path":"/etc/y"}]}}"#,
        );
        let child = config(
            r#"{"ignition":{"version":"3.3.0"},"storage":{
              "disks":[{"device":"/dev/sda","partitions":[{"label":"root-1","sizeMiB":10240},
                {"label":"var-1"}]},{"device":"/dev/sdc"}],
              "raid":[{"name":"md-root","devices":["/dev/b","/dev/c"]}],
              "files":[{"path":"/etc/x","mode":420,"append":[{"source":"data:,b"}]}],
              "links":[{"path":"/etc/y","target":"/z"}]}}"#,
        );
        let merged = merge(&parent, &child).unwrap();
        let want = config(
            r#"{"ignition":{"version":"3.3.0"},"storage":{
              "disks":[{"device":"/dev/sda","wipeTable":true,"partitions":[
                {"label":"boot-1","sizeMiB":384},{"label":"root-1","sizeMiB":10240},
                {"label":"var-1"}]},{"device":"/dev/sdc"}],
              "raid":[{"name":"md-root","level":"raid1","devices":["/dev/a","/dev/b","/dev/c"]}],
              "files":[{"path":"/etc/x","mode":420,"append":[{"source":"data:,a"},{"source":"data:,b"}]}],
              "links":[{"path":"/etc/y","target":"/z"}]}}"#,
        );
        assert_eq!(merged, want);
    }
}
