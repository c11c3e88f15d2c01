//! Rendering: the fleet plus its keys → per machine an Ignition config
//! and an iPXE script, per site a dnsmasq config. A pure function: no
//! network, no clock, and byte-identical output for the same inputs.
//!
//! Role files (`ignition/<role>.yaml`) and everything under `templates/`
//! are Tera templates; role files are then read as Butane
//! ([`butane`]) and become Ignition (3.3.0 or 3.4.0, as their version says). metalherd adds each machine's
//! identity itself (hostname, pinned SSH host key, the `core` user's
//! keys), so no role file can forget it. Machines with an `install_disk`
//! are served the `install` stage, which carries their final config inside
//! itself.

pub mod butane;
pub mod context;
pub mod locals;
pub mod manifests;

use std::fs;
use std::path::{Path, PathBuf};

use ignition_config::v3_3 as ign;
use serde::Serialize;
use tera::{Context, Tera};

use crate::fleet::{Fleet, Machine, MachineName, OsFlavor, Role, Site, SiteName};
use crate::fsutil::{create_dir_with_mode, create_file, replace_file, swap_dir};
use crate::keys::Keys;

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("cannot load templates: {0}")]
    Templates(String),
    #[error("{template} (for machine {machine}): {message}")]
    Template {
        template: String,
        machine: String,
        message: String,
    },
    #[error("{template} (rendered for machine {machine}) has {} problem(s):{}", errors.len(), list(template, errors))]
    Butane {
        template: String,
        machine: String,
        errors: Vec<butane::ButaneError>,
    },
    #[error("machine {machine}: {message}")]
    Machine { machine: String, message: String },
}

fn list(template: &str, errors: &[butane::ButaneError]) -> String {
    errors
        .iter()
        .map(|e| {
            format!(
                "\n  {template}:{}:{}: {}: {}",
                e.line, e.column, e.field, e.message
            )
        })
        .collect()
}

/// Which part of the fleet to render.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    pub site: Option<SiteName>,
    pub machine: Option<MachineName>,
}

/// One machine's rendered files.
#[derive(Clone, Debug, Serialize)]
pub struct RenderedMachine {
    pub site: SiteName,
    pub name: MachineName,
    pub role: Role,
    /// The Ignition the boot server hands this machine: the install stage
    /// when it installs to disk, its final config otherwise.
    #[serde(skip)]
    pub ignition: String,
    /// The config the installed system boots with, when there is an
    /// install stage (it is embedded in `ignition` too).
    #[serde(skip)]
    pub final_ignition: Option<String>,
    #[serde(skip)]
    pub ipxe: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct RenderedSite {
    pub name: SiteName,
    #[serde(skip)]
    pub dnsmasq: Option<String>,
}

#[derive(Clone, Debug, Default)]
pub struct Rendered {
    pub machines: Vec<RenderedMachine>,
    pub sites: Vec<RenderedSite>,
}

/// A file to write: its path relative to the output directory, contents
/// and mode. Ignition files hold the machine's private host key: 0600.
pub struct OutputFile<'a> {
    pub path: PathBuf,
    pub contents: &'a str,
    pub mode: u32,
}

impl Rendered {
    pub fn files(&self) -> Vec<OutputFile<'_>> {
        let mut out = Vec::new();
        for m in &self.machines {
            let dir = Path::new(m.site.as_str());
            out.push(OutputFile {
                path: dir.join(format!("{}.ign", m.name)),
                contents: &m.ignition,
                mode: 0o600,
            });
            if let Some(fin) = &m.final_ignition {
                out.push(OutputFile {
                    path: dir.join(format!("{}.final.ign", m.name)),
                    contents: fin,
                    mode: 0o600,
                });
            }
            out.push(OutputFile {
                path: dir.join(format!("{}.ipxe", m.name)),
                contents: &m.ipxe,
                mode: 0o644,
            });
        }
        for s in &self.sites {
            if let Some(conf) = &s.dnsmasq {
                out.push(OutputFile {
                    path: Path::new(s.name.as_str()).join("dnsmasq.conf"),
                    contents: conf,
                    mode: 0o644,
                });
            }
        }
        out
    }

    /// Writes every file under `dir`. A whole site (rendered without
    /// `--machine`) is written to a fresh directory that then takes the
    /// place of `DIR/<site>` in one step, so readers (the boot server) see
    /// the old or the new site, never a mix, and stale files disappear.
    /// Single machines are written file by file, each atomically. Nothing
    /// is fsynced: it can be rendered again. Site directories are 0700
    /// because they hold private host keys. Sites are written in parallel.
    pub fn write_to(&self, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
        fs::create_dir_all(dir)?;
        let files = self.files();
        std::thread::scope(|scope| {
            let writers: Vec<_> = self
                .sites
                .iter()
                .map(|site| {
                    let mine: Vec<&OutputFile> = files
                        .iter()
                        .filter(|f| f.path.starts_with(site.name.as_str()))
                        .collect();
                    scope.spawn(move || write_site(dir, site, &mine))
                })
                .collect();
            writers.into_iter().try_for_each(|w| {
                w.join()
                    .unwrap_or_else(|_| Err(std::io::Error::other("writer thread panicked")))
            })
        })?;
        Ok(files.iter().map(|f| dir.join(&f.path)).collect())
    }
}

/// The file that marks a directory as one `render` wrote: only such a
/// directory (or an empty one) is replaced.
pub const RENDERED_MARKER: &str = ".metalherd-rendered";

/// Refuses to write into `target` unless it is absent, empty or marked as
/// rendered by metalherd: `render --out` must never replace a directory a
/// user made (a fleet's own `templates/`, say).
fn ours(target: &Path) -> std::io::Result<()> {
    let Ok(mut entries) = fs::read_dir(target) else {
        return Ok(());
    };
    if entries.next().is_none() || target.join(RENDERED_MARKER).exists() {
        return Ok(());
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AlreadyExists,
        format!(
            "{} exists and metalherd did not render it (no {RENDERED_MARKER} in it): refusing to \
             replace it; render into another --out directory, or remove it",
            target.display()
        ),
    ))
}

fn write_site(dir: &Path, site: &RenderedSite, files: &[&OutputFile]) -> std::io::Result<()> {
    let target = dir.join(site.name.as_str());
    ours(&target)?;
    let marker = "rendered by metalherd: `render` replaces this directory\n";
    if site.dnsmasq.is_none() {
        create_dir_with_mode(&target, 0o700)?;
        replace_file(&target.join(RENDERED_MARKER), marker.as_bytes(), 0o644)?;
        for f in files {
            replace_file(&dir.join(&f.path), f.contents.as_bytes(), f.mode)?;
        }
        return Ok(());
    }
    let staging = dir.join(format!(".{}.new-{}", site.name, std::process::id()));
    let result = (|| {
        if staging.exists() {
            fs::remove_dir_all(&staging)?;
        }
        create_dir_with_mode(&staging, 0o700)?;
        create_file(&staging.join(RENDERED_MARKER), marker.as_bytes(), 0o644)?;
        for f in files {
            let name = f.path.file_name().unwrap_or_default();
            create_file(&staging.join(name), f.contents.as_bytes(), f.mode)?;
        }
        swap_dir(&staging, &target)
    })();
    if result.is_err() {
        let _ = fs::remove_dir_all(&staging);
    }
    result
}

/// Loads the fleet's role files and templates into one Tera instance,
/// named by their path in the fleet (`ignition/worker.yaml`,
/// `templates/systemd/kubelet.service`).
pub fn load_templates(root: &Path) -> Result<Tera, RenderError> {
    let mut tera = Tera::default();
    tera.autoescape_on(vec![]);
    let mut files = Vec::new();
    for dir in ["ignition", "templates"] {
        collect_files(&root.join(dir), dir, &mut files)
            .map_err(|e| RenderError::Templates(format!("{}: {e}", root.join(dir).display())))?;
    }
    files.sort();
    let mut sources = Vec::new();
    for (name, path) in files {
        let text = fs::read_to_string(&path)
            .map_err(|e| RenderError::Templates(format!("{}: {e}", path.display())))?;
        sources.push((name, text));
    }
    tera.add_raw_templates(sources)
        .map_err(|e| RenderError::Templates(crate::errfmt::chain(&e)))?;
    Ok(tera)
}

fn collect_files(dir: &Path, name: &str, out: &mut Vec<(String, PathBuf)>) -> std::io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let file_name = entry.file_name().to_string_lossy().into_owned();
        if file_name.starts_with('.') {
            continue;
        }
        let child = format!("{name}/{file_name}");
        let kind = entry.file_type()?;
        if kind.is_dir() {
            collect_files(&entry.path(), &child, out)?;
        } else if kind.is_symlink() && !entry.path().is_file() {
            // A link to a directory, or to a path on the node (a tree's
            // link, `storage.trees`): not a template.
        } else {
            out.push((child, entry.path()));
        }
    }
    Ok(())
}

/// Renders the selected part of `fleet` for cluster generation
/// `generation`. Nothing is written; see [`Rendered::write_to`].
pub fn render(
    fleet: &Fleet,
    keys: &Keys,
    selection: &Selection,
    generation: u64,
) -> Result<Rendered, RenderError> {
    let tera = load_templates(&fleet.root)?;
    let tree = locals::TemplateTree::load(&fleet.root).map_err(|e| {
        RenderError::Templates(format!("{}: {e}", fleet.root.join("templates").display()))
    })?;
    let renderer = Renderer {
        fleet,
        keys,
        tera: &tera,
        tree: &tree,
    };
    let mut out = Rendered::default();
    for site in &fleet.sites {
        if selection.site.as_ref().is_some_and(|s| *s != site.name) {
            continue;
        }
        let site_ctx = context::site_context(fleet, site, generation);
        let machines: Vec<&Machine> = site
            .machines
            .iter()
            .filter(|m| {
                selection
                    .machine
                    .as_ref()
                    .is_none_or(|want| *want == m.name)
            })
            .collect();
        let any = !machines.is_empty();
        out.machines
            .extend(renderer.machines(site, &machines, &site_ctx)?);
        if selection.machine.is_none() {
            let ctx = context::dnsmasq_context(renderer.fleet, &site_ctx, site);
            let conf =
                renderer.template("templates/dnsmasq/dnsmasq.conf", &ctx, site.name.as_str())?;
            out.sites.push(RenderedSite {
                name: site.name.clone(),
                dnsmasq: Some(conf),
            });
        } else if any {
            out.sites.push(RenderedSite {
                name: site.name.clone(),
                dnsmasq: None,
            });
        }
    }
    Ok(out)
}

/// Where the boot server puts each boot's report secret (32 hex digits).
pub const REPORT_SECRET_PLACEHOLDER: &str = "metalherdreportsecretplaceholder";

/// Where the first-boot callback's script goes on the machine.
const REPORT_SCRIPT: &str = "/etc/metalherd/report.sh";

/// The first-boot callback's script: posts the host key's fingerprint with
/// the per-boot secret, retrying until the boot server answers. A file of
/// its own, not an inline `sh -c`, so no JSON quote goes through systemd's
/// unquoting (which once ate them: the lab caught it). The secret goes to
/// curl on stdin as a header file, never in its argv.
fn report_script(url: &str) -> String {
    format!(
        "#!/bin/sh\n\
         # Tells metalherd's boot server that this machine booted, and which\n\
         # SSH host key it runs with. Rendered by metalherd.\n\
         set -eu\n\
         fp=$(ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub | cut -d' ' -f2)\n\
         printf 'Authorization: Bearer %s\\n' \"$(cat /etc/metalherd/report-secret)\" |\n\
         \tcurl -fsS -m 30 --retry 20 --retry-all-errors -H @- \\\n\
         \t-H 'Content-Type: application/json' \\\n\
         \t-d \"{{\\\"host_key_fingerprint\\\":\\\"$fp\\\"}}\" \\\n\
         \t{url}\n"
    )
}

fn report_unit() -> String {
    format!(
        "[Unit]\nDescription=Tell metalherd this machine has booted\n\
         Wants=network-online.target\nAfter=network-online.target\n\
         ConditionPathExists=/etc/metalherd/report-secret\n\n\
         [Service]\nType=oneshot\nExecStart=/bin/sh {REPORT_SCRIPT}\n\n\
         [Install]\nWantedBy=multi-user.target\n"
    )
}

/// What `{{ final_ignition_source }}` renders to in `install.yaml`; the
/// renderer replaces it with the final config as a data URL.
const FINAL_CONFIG_PLACEHOLDER: &str = "data:,metalherd-final-ignition";

struct Renderer<'a> {
    fleet: &'a Fleet,
    keys: &'a Keys,
    tera: &'a Tera,
    tree: &'a locals::TemplateTree,
}

impl Renderer<'_> {
    /// Renders `machines` on all cores, keeping their order. The first
    /// error (in machine order) wins.
    fn machines(
        &self,
        site: &Site,
        machines: &[&Machine],
        site_ctx: &Context,
    ) -> Result<Vec<RenderedMachine>, RenderError> {
        crate::parallel::map_in_order(
            machines,
            || RenderError::Templates("a rendering thread panicked".into()),
            |m| self.machine(site, m, site_ctx),
        )
    }

    fn template(&self, name: &str, ctx: &Context, machine: &str) -> Result<String, RenderError> {
        self.tera
            .render(name, ctx)
            .map_err(|e| RenderError::Template {
                template: name.to_string(),
                machine: machine.to_string(),
                message: crate::errfmt::chain(&e),
            })
    }

    /// Renders `ignition/<role>.yaml` to an Ignition config with the
    /// machine's identity added.
    fn ignition(
        &self,
        role_file: &str,
        ctx: &Context,
        site: &Site,
        machine: &Machine,
        report: bool,
    ) -> Result<ign::Config, RenderError> {
        let yaml = self.template(role_file, ctx, machine.name.as_str())?;
        let mut locals = locals::MachineLocals {
            tera: self.tera,
            ctx,
            tree: self.tree,
        };
        let mut config =
            butane::transpile(&yaml, self.fleet.os.flavor.butane_variant(), &mut locals).map_err(
                |errors| RenderError::Butane {
                    template: role_file.to_string(),
                    machine: machine.name.to_string(),
                    errors,
                },
            )?;
        self.add_identity(&mut config, site, machine, report)?;
        Ok(config)
    }

    fn machine(
        &self,
        site: &Site,
        machine: &Machine,
        site_ctx: &Context,
    ) -> Result<RenderedMachine, RenderError> {
        let ctx = context::machine_context(site_ctx, site, machine);
        let role_file = format!("ignition/{}.yaml", machine.role.as_str());
        let mut config = self.ignition(&role_file, &ctx, site, machine, true)?;
        self.add_extensions(&mut config, site, machine)?;
        let final_config = to_json(&config);

        let installs = machine.install_disk.is_some() && self.fleet.os.flavor == OsFlavor::Flatcar;
        let (ignition, final_ignition) = if installs {
            // The final config goes in after transpiling: passed through
            // the YAML parser as text it would cost more than everything
            // else a machine needs.
            let mut install_ctx = ctx.clone();
            install_ctx.insert("final_ignition_source", FINAL_CONFIG_PLACEHOLDER);
            let mut install =
                self.ignition("ignition/install.yaml", &install_ctx, site, machine, false)?;
            // Percent-encoded, not base64: the report-secret placeholder
            // must stay findable in the served bytes.
            let source = butane::data_url_plain(final_config.as_bytes());
            let embedded = install
                .storage
                .iter_mut()
                .flat_map(|s| s.files.iter_mut().flatten())
                .filter_map(|f| f.contents.as_mut())
                .filter(|c| c.source.as_deref() == Some(FINAL_CONFIG_PLACEHOLDER))
                .map(|c| c.source = Some(source.clone()))
                .count();
            if embedded == 0 {
                return Err(RenderError::Machine {
                    machine: machine.name.to_string(),
                    message: "ignition/install.yaml must embed the final config: a file with `contents: { source: \"{{ final_ignition_source }}\" }`".into(),
                });
            }
            (to_json(&install), Some(final_config))
        } else {
            (final_config, None)
        };
        let ipxe_file = format!("templates/ipxe/{}.ipxe", self.fleet.os.flavor.as_str());
        let ipxe = self.template(&ipxe_file, &ctx, machine.name.as_str())?;
        Ok(RenderedMachine {
            site: site.name.clone(),
            name: machine.name.clone(),
            role: machine.role,
            ignition,
            final_ignition,
            ipxe,
        })
    }

    /// The machine's node software: each extension of its role as a file
    /// under `/opt/extensions/<name>/` fetched from the site's boot server
    /// with its pinned sha512 checked by Ignition, the
    /// `/etc/extensions/<name>.raw` link `systemd-sysext` merges, and
    /// `systemd-sysext.service` enabled (Flatcar enables it already; Fedora
    /// CoreOS and the lab do not). Extensions not pinned yet are left out
    /// (see [`unpinned`]); nothing unverified reaches a machine.
    fn add_extensions(
        &self,
        config: &mut ign::Config,
        site: &Site,
        machine: &Machine,
    ) -> Result<(), RenderError> {
        let mut any = false;
        for ext in self
            .fleet
            .extensions
            .iter()
            .filter(|e| e.for_role(machine.role))
        {
            let Some(hash) = ext.image_hash() else {
                continue;
            };
            any = true;
            let target = format!("/opt/extensions/{}/{}", ext.name, ext.file_name());
            let mut file = ign::File::new(target.clone());
            file.mode = Some(0o644);
            file.overwrite = Some(true);
            file.contents = Some(ign::Resource {
                // `mac` lets the boot server say which machine fetched an
                // image that will fail its hash check.
                source: Some(format!(
                    "{}/assets/{}?mac={}",
                    context::trim_slash(&site.boot_server),
                    ext.asset_path(),
                    machine.mac.hexhyp()
                )),
                verification: Some(ign::Verification { hash: Some(hash) }),
                ..Default::default()
            });
            let mut link = ign::Link::new(format!("/etc/extensions/{}.raw", ext.name));
            link.target = Some(target);
            link.overwrite = Some(true);
            link.hard = Some(false);
            let storage = config.storage.get_or_insert_with(Default::default);
            let files = storage.files.get_or_insert_with(Vec::new);
            let links = storage.links.get_or_insert_with(Vec::new);
            if files.iter().any(|f| f.path == file.path)
                || links.iter().any(|l| l.path == link.path)
            {
                return Err(RenderError::Machine {
                    machine: machine.name.to_string(),
                    message: format!(
                        "{} (extension {}) is managed by metalherd; remove it from the role file",
                        link.path, ext.name
                    ),
                });
            }
            files.push(file);
            links.push(link);
        }
        if any {
            let units = config
                .systemd
                .get_or_insert_with(Default::default)
                .units
                .get_or_insert_with(Vec::new);
            if !units.iter().any(|u| u.name == "systemd-sysext.service") {
                let mut unit = ign::Unit::new("systemd-sysext.service".into());
                unit.enabled = Some(true);
                units.push(unit);
            }
        }
        Ok(())
    }

    /// Hostname, pinned SSH host key and the `core` user's keys: what
    /// every later step relies on, so the code adds it, not the templates.
    /// With `report`, also the first-boot callback: a unit that posts the
    /// host key's fingerprint to `/report/<machine>` with the per-boot
    /// secret the boot server splices in where [`REPORT_SECRET_PLACEHOLDER`]
    /// stands.
    fn add_identity(
        &self,
        config: &mut ign::Config,
        site: &Site,
        machine: &Machine,
        report: bool,
    ) -> Result<(), RenderError> {
        let key = self
            .keys
            .host
            .get(&machine.name)
            .ok_or_else(|| RenderError::Machine {
                machine: machine.name.to_string(),
                message: "no SSH host key was loaded for it".into(),
            })?;
        let file = |path: &str, contents: &str, mode: i64| {
            let mut f = ign::File::new(path.to_string());
            f.mode = Some(mode);
            f.overwrite = Some(true);
            f.contents = Some(ign::Resource {
                source: Some(butane::data_url(contents.as_bytes())),
                ..Default::default()
            });
            f
        };
        let mut identity = vec![
            file("/etc/hostname", &format!("{}\n", machine.name), 0o644),
            file(
                "/etc/ssh/ssh_host_ed25519_key",
                key.private_openssh(),
                0o600,
            ),
            file(
                "/etc/ssh/ssh_host_ed25519_key.pub",
                &format!("{}\n", key.public_openssh()),
                0o644,
            ),
        ];
        if report {
            // Plain (not base64) so the placeholder stays visible, also
            // inside an install stage that embeds this config.
            let mut secret = ign::File::new("/etc/metalherd/report-secret".into());
            secret.mode = Some(0o600);
            secret.overwrite = Some(true);
            secret.contents = Some(ign::Resource {
                source: Some(format!("data:,{REPORT_SECRET_PLACEHOLDER}")),
                ..Default::default()
            });
            identity.push(secret);
            let url = format!(
                "{}/report/{}",
                context::trim_slash(&site.boot_server),
                machine.name
            );
            // Percent-encoded like the secret: the report URL stays
            // findable in the served config.
            let mut script = file(REPORT_SCRIPT, "", 0o755);
            script.contents = Some(ign::Resource {
                source: Some(butane::data_url_plain(report_script(&url).as_bytes())),
                ..Default::default()
            });
            identity.push(script);
            let mut unit = ign::Unit::new("metalherd-report.service".into());
            unit.enabled = Some(true);
            unit.contents = Some(report_unit());
            let units = config
                .systemd
                .get_or_insert_with(Default::default)
                .units
                .get_or_insert_with(Vec::new);
            units.push(unit);
        }
        let storage = config.storage.get_or_insert_with(Default::default);
        let files = storage.files.get_or_insert_with(Vec::new);
        for f in &identity {
            if files.iter().any(|g| g.path == f.path) {
                return Err(RenderError::Machine {
                    machine: machine.name.to_string(),
                    message: format!(
                        "{} is managed by metalherd; remove it from the role file",
                        f.path
                    ),
                });
            }
        }
        files.splice(0..0, identity);

        let mut keys: Vec<String> = self
            .fleet
            .admins
            .iter()
            .map(|a| a.ssh_authorized_key.clone())
            .collect();
        keys.push(self.keys.operator.public_openssh().to_string());
        let passwd = config.passwd.get_or_insert_with(Default::default);
        let users = passwd.users.get_or_insert_with(Vec::new);
        match users.iter_mut().find(|u| u.name == "core") {
            Some(core) => core
                .ssh_authorized_keys
                .get_or_insert_with(Vec::new)
                .extend(keys),
            None => {
                let mut core = ign::User::new("core".into());
                core.ssh_authorized_keys = Some(keys);
                users.insert(0, core);
            }
        }
        Ok(())
    }
}

/// The extensions `fleet` declares that have no digest yet (no pin in
/// the fleet, no entry in `assets.lock`), each with the roles that lose
/// it: rendering leaves them out, and `serve` and `provision` say so.
pub fn unpinned(fleet: &Fleet) -> Vec<String> {
    fleet
        .extensions
        .iter()
        .filter(|e| e.image_hash().is_none())
        .map(|e| {
            let roles: Vec<&str> = e.roles.iter().map(|r| r.as_str()).collect();
            format!(
                "extension {} {} ({}) is not pinned yet and is left out of the rendered configs: \
                 run `metalherd assets fetch` on a machine that reaches its source to record its \
                 digest in assets.lock",
                e.name,
                e.version,
                roles.join(", ")
            )
        })
        .collect()
}

/// Compact Ignition JSON without the `null`s the generated structs would
/// otherwise emit for every unset field. serde_json's map is ordered, so
/// the output is deterministic.
pub fn to_json(config: &ign::Config) -> String {
    fn strip(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(map) => {
                map.retain(|_, v| !v.is_null());
                map.values_mut().for_each(strip);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut value = serde_json::to_value(config).unwrap_or(serde_json::Value::Null);
    strip(&mut value);
    let mut text = value.to_string();
    text.push('\n');
    text
}
