//! `storage.trees`: Butane's sugar for a local directory copied in, as its
//! `processTrees` copies it. Every file under the tree becomes a
//! `storage.files` entry (mode 0755 if executable, else 0644, unless the
//! file is also declared with a mode), every symlink a `storage.links`
//! entry. A file or link the role file declares at the same path without
//! contents (or target) gets them from the tree; one that already has
//! them, or a node of another kind there, is an error. Here "local" means
//! what it means everywhere in a role file: a directory under
//! `templates/`, each file rendered for the machine.

use marked_yaml::Spanned;
use serde::Deserialize;

use super::{data_url, ign, Conv, Text};

/// One entry of a tree, as [`super::Locals::tree`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TreeEntry {
    /// A regular file: its path below the tree's root (`/`-separated),
    /// its rendered text, and whether any execute bit is set.
    File {
        path: String,
        text: String,
        executable: bool,
    },
    /// A symbolic link and its target, as `readlink` gives it.
    Link { path: String, target: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BTree {
    local: Option<Text>,
    path: Option<Text>,
}

/// Butane's message for a path the tree meets already taken.
const NODE_EXISTS: &str = "matching filesystem node has existing contents or different type";

fn join(base: &str, rel: &str) -> String {
    if base.ends_with('/') {
        format!("{base}{rel}")
    } else {
        format!("{base}/{rel}")
    }
}

impl Conv<'_> {
    /// Copies each tree into `out`'s files and links.
    pub(super) fn trees(&mut self, trees: &[Spanned<BTree>], out: &mut ign::Storage) {
        for (i, tree) in trees.iter().enumerate() {
            let field = format!("storage.trees[{i}]");
            let Some(local) = &tree.local else {
                self.err(
                    tree,
                    format!("{field}.local"),
                    "local is required: the directory under templates/ to copy",
                );
                continue;
            };
            let base = tree.path.as_ref().map_or("/", |p| p.as_str());
            if !base.starts_with('/') {
                if let Some(p) = &tree.path {
                    self.err(
                        p,
                        format!("{field}.path"),
                        format!("{base:?} must be an absolute path"),
                    );
                }
                continue;
            }
            let entries = match self.locals.tree(local.as_str()) {
                Ok(entries) => entries,
                Err(message) => {
                    self.err(local, format!("{field}.local"), message);
                    continue;
                }
            };
            for entry in entries {
                if let Err(dest) = self.tree_entry(base, entry, out) {
                    self.err(
                        local,
                        format!("{field}.local"),
                        format!("{dest}: {NODE_EXISTS}"),
                    );
                }
            }
        }
    }

    /// Puts one entry of a tree rooted at `base` into `out`; `Err(path)`
    /// when its path is already taken.
    fn tree_entry(
        &mut self,
        base: &str,
        entry: TreeEntry,
        out: &mut ign::Storage,
    ) -> Result<(), String> {
        match entry {
            TreeEntry::File {
                path,
                text,
                executable,
            } => {
                let dest = join(base, &path);
                let mode = if executable { 0o755 } else { 0o644 };
                let source = Some(data_url(text.as_bytes()));
                let files = out.files.get_or_insert_with(Vec::new);
                if let Some(file) = files.iter_mut().find(|f| f.path == dest) {
                    let resource = file.contents.get_or_insert_with(Default::default);
                    if resource.source.is_some() {
                        return Err(dest);
                    }
                    resource.source = source;
                    file.mode.get_or_insert(mode);
                } else if !self.paths.insert(dest.clone()) {
                    return Err(dest);
                } else {
                    let mut file = ign::File::new(dest);
                    file.contents = Some(ign::Resource {
                        source,
                        ..Default::default()
                    });
                    file.mode = Some(mode);
                    files.push(file);
                }
            }
            TreeEntry::Link { path, target } => {
                let dest = join(base, &path);
                let links = out.links.get_or_insert_with(Vec::new);
                if let Some(link) = links.iter_mut().find(|l| l.path == dest) {
                    if link.target.as_ref().is_some_and(|t| !t.is_empty()) {
                        return Err(dest);
                    }
                    link.target = Some(target);
                } else if !self.paths.insert(dest.clone()) {
                    return Err(dest);
                } else {
                    let mut link = ign::Link::new(dest);
                    link.target = Some(target);
                    links.push(link);
                }
            }
        }
        Ok(())
    }
}
