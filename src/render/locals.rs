//! What a role file's local names (`local:`, `contents_local:`,
//! `ssh_authorized_keys_local:`, `storage.trees[].local`) stand for: the
//! fleet's templates under `templates/`, rendered for one machine
//! ([`MachineLocals`]). Trees also need what Tera does not keep: which
//! files are executable and which entries are symlinks ([`TemplateTree`]).

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path};

use tera::{Context, Tera};

use super::butane::{Locals, TreeEntry};

/// One entry under `templates/`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Dir,
    File {
        executable: bool,
    },
    Link(String),
    /// A name starting with `.`: not loaded as a template.
    Hidden,
    /// A socket, FIFO or device.
    Other,
}

/// Every entry under a fleet's `templates/`, by its name in the fleet
/// (`templates/etc/motd`), as `lstat` sees it.
#[derive(Debug, Default)]
pub struct TemplateTree(BTreeMap<String, Node>);

impl TemplateTree {
    /// Reads `root/templates/` (absent: empty).
    pub fn load(root: &Path) -> std::io::Result<TemplateTree> {
        let mut tree = TemplateTree::default();
        let dir = root.join("templates");
        if dir.is_dir() {
            tree.walk(&dir, "templates")?;
        }
        Ok(tree)
    }

    fn walk(&mut self, dir: &Path, name: &str) -> std::io::Result<()> {
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let file_name = entry.file_name().to_string_lossy().into_owned();
            let child = format!("{name}/{file_name}");
            let meta = fs::symlink_metadata(entry.path())?;
            let node = if file_name.starts_with('.') {
                Node::Hidden
            } else if meta.file_type().is_symlink() {
                Node::Link(fs::read_link(entry.path())?.to_string_lossy().into_owned())
            } else if meta.is_dir() {
                self.walk(&entry.path(), &child)?;
                Node::Dir
            } else if meta.is_file() {
                Node::File {
                    executable: meta.permissions().mode() & 0o111 != 0,
                }
            } else {
                Node::Other
            };
            self.0.insert(child, node);
        }
        Ok(())
    }
}

/// The templates as one machine's role file sees them.
pub struct MachineLocals<'a> {
    pub tera: &'a Tera,
    pub ctx: &'a Context,
    pub tree: &'a TemplateTree,
}

impl MachineLocals<'_> {
    fn render(&self, name: &str) -> Result<String, String> {
        if self.tera.get_template(name).is_err() {
            return Err(format!("no such template: {name}"));
        }
        self.tera
            .render(name, self.ctx)
            .map_err(|e| format!("{name}: {}", crate::errfmt::chain(&e)))
    }
}

impl Locals for MachineLocals<'_> {
    fn file(&mut self, name: &str) -> Result<String, String> {
        self.render(&format!("templates/{name}"))
    }

    fn tree(&mut self, name: &str) -> Result<Vec<TreeEntry>, String> {
        let inside = Path::new(name)
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
        if name.is_empty() || !inside {
            return Err(format!(
                "{name:?}: a tree is a directory under templates/, named relative to it"
            ));
        }
        let root = format!("templates/{}", name.trim_end_matches('/'));
        match self.tree.0.get(&root) {
            Some(Node::Dir) => {}
            Some(_) => return Err(format!("{root}: root of tree must be a directory")),
            None => return Err(format!("no such directory: {root}")),
        }
        let prefix = format!("{root}/");
        let mut entries = Vec::new();
        for (full, node) in self.tree.0.range(prefix.clone()..) {
            let Some(path) = full.strip_prefix(&prefix) else {
                break;
            };
            let path = path.to_string();
            match node {
                Node::Dir => {}
                Node::File { executable } => entries.push(TreeEntry::File {
                    text: self.render(full)?,
                    path,
                    executable: *executable,
                }),
                Node::Link(target) => entries.push(TreeEntry::Link {
                    path,
                    target: target.clone(),
                }),
                Node::Hidden => {
                    return Err(format!(
                        "{full}: names starting with `.` under templates/ are not loaded, \
                         so a tree cannot copy them; rename it"
                    ))
                }
                Node::Other => {
                    return Err(format!(
                        "{full}: trees may only contain files, directories, and symlinks"
                    ))
                }
            }
        }
        // Butane walks each directory in name order: `a/b` before `a.conf`.
        entries.sort_by(|x, y| {
            let key = |e: &TreeEntry| match e {
                TreeEntry::File { path, .. } | TreeEntry::Link { path, .. } => path.clone(),
            };
            let (kx, ky) = (key(x), key(y));
            kx.split('/').cmp(ky.split('/'))
        });
        Ok(entries)
    }
}
