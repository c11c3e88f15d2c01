//! A case's evidence directory (`evidence/<case>/`): one directory per
//! machine holding what was collected, `chain-of-custody.jsonl` (one JSON
//! object per collection action, appended as it happens: who, when, on
//! which machine, which command, which file, its sha256 and size, the exit
//! status), `case.json`, and `MANIFEST.sha256` over every other file
//! (`sha256sum -c` format, paths relative to the case directory).
//!
//! Evidence is never overwritten: the case directory is created, never
//! reused. Files are created 0400 by the runner; [`Evidence::seal`] writes
//! the manifest and makes every directory 0500. Contents may be secret
//! (an etcd snapshot holds the cluster's secrets) and are never printed.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::fleet::{Machine, Role};
use crate::job::Task;
use crate::pki::ClusterPki;
use crate::ssh::Session;
use crate::state::{now_rfc3339, Holder};

/// The manifest's file name.
pub const MANIFEST: &str = "MANIFEST.sha256";
/// The chain-of-custody log's file name.
pub const CUSTODY: &str = "chain-of-custody.jsonl";

/// One collection action, as the chain-of-custody log records it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CustodyEntry {
    pub time: String,
    pub user: String,
    pub host: String,
    pub machine: String,
    pub command: String,
    /// The file written, relative to the case directory; none when the
    /// action produced no file.
    pub file: Option<String>,
    pub sha256: Option<String>,
    pub bytes: Option<u64>,
    /// The remote command's exit status; none when it did not run or
    /// died of a signal.
    pub exit_status: Option<u32>,
    /// The last lines of its stderr, or why the action failed.
    pub stderr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// An open case directory.
pub struct Evidence {
    dir: PathBuf,
    user: String,
    host: String,
    custody: Mutex<std::fs::File>,
}

fn create_dir(path: &Path, mode: u32) -> std::io::Result<()> {
    std::fs::DirBuilder::new().mode(mode).create(path)
}

/// Creates `path` 0400 for writing; fails if it exists.
fn create_file(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o400)
        .open(path)
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The last `n` non-empty lines of `text`.
pub fn tail(text: &str, n: usize) -> Option<String> {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        return None;
    }
    Some(lines[lines.len().saturating_sub(n)..].join("\n"))
}

impl Evidence {
    /// Creates the case directory `dir` (its parent too, 0700), failing
    /// if it exists: evidence is never overwritten.
    pub fn create(dir: &Path, holder: &Holder) -> anyhow::Result<Evidence> {
        if let Some(parent) = dir.parent() {
            if !parent.as_os_str().is_empty() && !parent.exists() {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(parent)
                    .with_context(|| format!("creating {}", parent.display()))?;
            }
        }
        match create_dir(dir, 0o700) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => bail!(
                "{} exists: evidence is never overwritten (use another --case or --evidence-dir)",
                dir.display()
            ),
            Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
        }
        let custody = std::fs::OpenOptions::new()
            .append(true)
            .create_new(true)
            .mode(0o600)
            .open(dir.join(CUSTODY))
            .with_context(|| format!("creating {}", dir.join(CUSTODY).display()))?;
        Ok(Evidence {
            dir: dir.to_path_buf(),
            user: holder.user.clone(),
            host: holder.host.clone(),
            custody: Mutex::new(custody),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// An entry for `machine` and `command`, stamped now with who runs it.
    pub fn entry(&self, machine: &str, command: &str) -> CustodyEntry {
        CustodyEntry {
            time: now_rfc3339(),
            user: self.user.clone(),
            host: self.host.clone(),
            machine: machine.to_string(),
            command: command.to_string(),
            file: None,
            sha256: None,
            bytes: None,
            exit_status: None,
            stderr: None,
            note: None,
        }
    }

    /// Appends `entry` to the chain-of-custody log, durably.
    pub fn record(&self, entry: &CustodyEntry) -> anyhow::Result<()> {
        let mut line = serde_json::to_vec(entry)?;
        line.push(b'\n');
        let mut file = self
            .custody
            .lock()
            .map_err(|_| anyhow::anyhow!("the chain-of-custody log is poisoned"))?;
        file.write_all(&line)?;
        file.sync_data()?;
        Ok(())
    }

    /// The directory of `machine`'s evidence, created 0700 on first use;
    /// returns it and its path relative to the case directory.
    fn machine_dir(&self, machine: &str) -> anyhow::Result<PathBuf> {
        if machine.is_empty() || machine.contains('/') || machine.starts_with('.') {
            bail!("{machine:?} cannot name an evidence directory");
        }
        let dir = self.dir.join(machine);
        match create_dir(&dir, 0o700) {
            Ok(()) => Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(dir),
            Err(e) => Err(e).with_context(|| format!("creating {}", dir.display())),
        }
    }

    /// Writes `bytes` to `<machine>/<name>` (0400, never over a file);
    /// returns the relative path and the sha256.
    pub fn write(
        &self,
        machine: &str,
        name: &str,
        bytes: &[u8],
    ) -> anyhow::Result<(String, String)> {
        let path = self.machine_dir(machine)?.join(name);
        let mut file =
            create_file(&path).with_context(|| format!("creating {}", path.display()))?;
        file.write_all(bytes)?;
        file.sync_all()?;
        Ok((format!("{machine}/{name}"), sha256_hex(bytes)))
    }

    /// Writes `case.json` and the manifest, then makes every directory
    /// 0500 (files are 0400 already). Returns the manifest's sha256.
    pub fn seal(self, case: &serde_json::Value) -> anyhow::Result<String> {
        {
            let file = self
                .custody
                .lock()
                .map_err(|_| anyhow::anyhow!("the chain-of-custody log is poisoned"))?;
            file.sync_all()?;
            file.set_permissions(std::fs::Permissions::from_mode(0o400))?;
        }
        let mut f = create_file(&self.dir.join("case.json"))?;
        f.write_all(&serde_json::to_vec_pretty(case)?)?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        let mut files = Vec::new();
        let mut dirs = vec![self.dir.clone()];
        walk(&self.dir, &mut files, &mut dirs)?;
        files.sort();
        let mut manifest = String::new();
        for rel in &files {
            let bytes = std::fs::read(self.dir.join(rel))
                .with_context(|| format!("reading {}", self.dir.join(rel).display()))?;
            manifest.push_str(&format!("{}  {}\n", sha256_hex(&bytes), rel));
        }
        let mut f = create_file(&self.dir.join(MANIFEST))?;
        f.write_all(manifest.as_bytes())?;
        f.sync_all()?;
        // Deepest first: a directory made read-only cannot take new names.
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for d in &dirs {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o500))
                .with_context(|| format!("making {} read-only", d.display()))?;
        }
        Ok(sha256_hex(manifest.as_bytes()))
    }
}

/// Every file below `dir` (relative, `/`-separated) but the manifest, and
/// every directory.
fn walk(dir: &Path, files: &mut Vec<String>, dirs: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let root = dir.to_path_buf();
    let mut stack = vec![root.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).with_context(|| format!("listing {}", d.display()))? {
            let e = e?;
            let path = e.path();
            if e.file_type()?.is_dir() {
                dirs.push(path.clone());
                stack.push(path);
                continue;
            }
            let rel = path
                .strip_prefix(&root)
                .context("a file outside the case directory")?
                .to_string_lossy()
                .into_owned();
            if rel != MANIFEST {
                files.push(rel);
            }
        }
    }
    Ok(())
}

/// Collects `machine`'s evidence: each [`super::node::COLLECT`] command's stdout
/// into a file, and a control plane's etcd snapshot; every action in the
/// chain-of-custody log. A command that ran but failed is recorded, not
/// fatal; a session or disk failure is. Returns the files written.
pub async fn collect(
    ev: &Evidence,
    m: &Machine,
    s: &Session,
    task: &Task,
    pki: &Result<crate::pki::ClusterPki, String>,
) -> anyhow::Result<usize> {
    let name = m.name.as_str();
    let mut files = 0;
    for c in super::node::COLLECT {
        task.phase(&format!("evidence: {}", c.file));
        let mut entry = ev.entry(name, c.command);
        let out = match s
            .exec(&format!("collect {}", c.file), c.command, None)
            .await
        {
            Ok(out) => out,
            Err(e) => {
                entry.stderr = Some(format!("{e}"));
                ev.record(&entry)?;
                return Err(e.into());
            }
        };
        let (file, sha) = ev.write(name, c.file, &out.stdout)?;
        files += 1;
        entry.time = now_rfc3339();
        entry.file = Some(file);
        entry.sha256 = Some(sha);
        entry.bytes = Some(out.stdout.len() as u64);
        entry.exit_status = out.code;
        entry.stderr = tail(&String::from_utf8_lossy(&out.stderr), 20);
        ev.record(&entry)?;
    }
    if m.role == Role::ControlPlane {
        task.phase("evidence: etcd snapshot");
        let command = format!(
            "POST https://{}/v3/maintenance/snapshot (etcd v3 gateway, from metalherd, TLS with \
             the generation's etcd CA and metalherd's client certificate)",
            std::net::SocketAddr::new(m.ip, 2379)
        );
        let mut entry = ev.entry(name, &command);
        match pki {
            Err(why) => entry.stderr = Some(format!("no snapshot: {why}")),
            Ok(pki) => match etcd_snapshot(ev, pki, name, m.ip, "etcd-snapshot.db").await {
                Ok(snap) => {
                    files += 1;
                    entry.time = now_rfc3339();
                    entry.file = Some(snap.file);
                    entry.sha256 = Some(snap.sha256);
                    entry.bytes = Some(snap.bytes);
                    entry.note = Some(if snap.integrity {
                        "etcd's own sha256 of the database matches".into()
                    } else {
                        "etcd's own sha256 of the database does NOT match".into()
                    });
                }
                Err(e) => entry.stderr = Some(format!("no snapshot (is etcd running?): {e:#}")),
            },
        }
        ev.record(&entry)?;
    }
    task.output(&format!("{files} evidence files"));
    Ok(files)
}

/// What a snapshot download found.
pub struct Snapshot {
    pub file: String,
    pub sha256: String,
    pub bytes: u64,
    /// Whether etcd's own trailing sha256 of the database matched.
    pub integrity: bool,
}

/// Takes an etcd snapshot of the member at `ip` from metalherd's side,
/// through the v3 JSON gateway (`POST /v3/maintenance/snapshot`, a stream
/// of base64 chunks), over TLS with the generation's etcd CA and
/// metalherd's client certificate, into `<machine>/<name>` (0400). Nothing
/// on the suspect node is trusted or given a key: no binary of its own
/// runs, no client key travels to it. The member answers without quorum.
pub async fn etcd_snapshot(
    evidence: &Evidence,
    pki: &ClusterPki,
    machine: &str,
    ip: std::net::IpAddr,
    name: &str,
) -> anyhow::Result<Snapshot> {
    let ca = pki.get("etcd/ca.crt").context("the PKI has no etcd CA")?;
    let identity = zeroize::Zeroizing::new(format!(
        "{}{}",
        pki.get("etcd/client.crt")
            .context("no etcd client certificate")?,
        pki.get("etcd/client.key")
            .context("no etcd client key (retired?)")?
    ));
    let client = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes())?)
        .identity(reqwest::Identity::from_pem(identity.as_bytes())?)
        .connect_timeout(std::time::Duration::from_secs(5))
        .read_timeout(std::time::Duration::from_secs(60))
        .build()?;
    let url = match ip {
        std::net::IpAddr::V4(v4) => format!("https://{v4}:2379/v3/maintenance/snapshot"),
        std::net::IpAddr::V6(v6) => format!("https://[{v6}]:2379/v3/maintenance/snapshot"),
    };
    let mut resp = client
        .post(&url)
        .body("{}")
        .send()
        .await
        .with_context(|| format!("POST {url}"))?
        .error_for_status()?;
    let path = evidence.machine_dir(machine)?.join(name);
    let mut file = create_file(&path).with_context(|| format!("creating {}", path.display()))?;
    let mut state = Stream::default();
    while let Some(chunk) = resp.chunk().await? {
        state.pending.extend_from_slice(&chunk);
        while let Some(end) = state.pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = state.pending.drain(..=end).collect();
            state.line(&line, &mut file)?;
        }
    }
    let rest = std::mem::take(&mut state.pending);
    state.line(&rest, &mut file)?;
    file.sync_all()?;
    if state.bytes == 0 {
        bail!("{url} sent no snapshot data");
    }
    let integrity = state.body.finalize().as_slice() == state.held.as_slice();
    Ok(Snapshot {
        file: format!("{machine}/{name}"),
        sha256: hex::encode(state.all.finalize()),
        bytes: state.bytes,
        integrity,
    })
}

/// The decoding state of a snapshot stream: the file's hash, and the
/// hash of all but the last 32 bytes (etcd appends the sha256 of the
/// database), held back until more arrive.
#[derive(Default)]
struct Stream {
    pending: Vec<u8>,
    all: Sha256,
    body: Sha256,
    held: Vec<u8>,
    bytes: u64,
}

impl Stream {
    fn line(&mut self, line: &[u8], file: &mut std::fs::File) -> anyhow::Result<()> {
        use base64::Engine;
        if line.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        let v: serde_json::Value =
            serde_json::from_slice(line).context("the snapshot stream is not JSON")?;
        if let Some(e) = v.get("error") {
            bail!(
                "etcd refused the snapshot: {}",
                e.get("message").and_then(|m| m.as_str()).unwrap_or("")
            );
        }
        let Some(blob) = v["result"]["blob"].as_str() else {
            return Ok(());
        };
        let data = base64::engine::general_purpose::STANDARD
            .decode(blob)
            .context("a snapshot chunk is not base64")?;
        file.write_all(&data)?;
        self.all.update(&data);
        self.bytes += data.len() as u64;
        self.held.extend_from_slice(&data);
        if self.held.len() > 32 {
            let cut = self.held.len() - 32;
            self.body.update(&self.held[..cut]);
            self.held.drain(..cut);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn holder() -> Holder {
        Holder::current("test")
    }

    #[test]
    fn a_sealed_case_is_read_only_and_its_manifest_checks() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("evidence/INC-1");
        let ev = Evidence::create(&dir, &holder()).unwrap();
        let (rel, sha) = ev
            .write("fra-cp-01", "processes.txt", b"ps output\n")
            .unwrap();
        assert_eq!(rel, "fra-cp-01/processes.txt");
        let mut entry = ev.entry("fra-cp-01", "sudo ps auxww");
        entry.file = Some(rel.clone());
        entry.sha256 = Some(sha.clone());
        ev.record(&entry).unwrap();
        assert!(ev.write("fra-cp-01", "processes.txt", b"again").is_err());
        let manifest_sha = ev.seal(&serde_json::json!({"case": "INC-1"})).unwrap();

        let manifest = std::fs::read_to_string(dir.join(MANIFEST)).unwrap();
        assert_eq!(sha256_hex(manifest.as_bytes()), manifest_sha);
        assert!(manifest.contains(&format!("{sha}  fra-cp-01/processes.txt\n")));
        assert!(
            manifest.contains("  case.json\n") && manifest.contains("  chain-of-custody.jsonl\n")
        );
        for line in manifest.lines() {
            let (hash, path) = line.split_once("  ").unwrap();
            assert_eq!(sha256_hex(&std::fs::read(dir.join(path)).unwrap()), hash);
            assert_eq!(
                std::fs::metadata(dir.join(path)).unwrap().mode() & 0o777,
                0o400
            );
        }
        for d in [dir.clone(), dir.join("fra-cp-01")] {
            assert_eq!(std::fs::metadata(&d).unwrap().mode() & 0o777, 0o500);
        }
        let custody = std::fs::read_to_string(dir.join(CUSTODY)).unwrap();
        let e: CustodyEntry = serde_json::from_str(custody.lines().next().unwrap()).unwrap();
        assert_eq!(e.sha256.as_deref(), Some(sha.as_str()));
        // Never reused.
        let again = Evidence::create(&dir, &holder()).err().unwrap().to_string();
        assert!(again.contains("never overwritten"), "{again}");
        // (Writable again, so the temporary directory can go.)
        for d in [dir.clone(), dir.join("fra-cp-01")] {
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
        }
    }

    #[test]
    fn a_machine_name_cannot_leave_the_case_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let ev = Evidence::create(&tmp.path().join("c"), &holder()).unwrap();
        assert!(ev.write("../x", "f", b"").is_err());
        assert!(ev.write(".hidden", "f", b"").is_err());
    }

    #[test]
    fn the_snapshot_stream_is_decoded_and_etcd_s_own_hash_checked() {
        use base64::Engine;
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("db");
        let mut file = std::fs::File::create(&path).unwrap();
        let body = vec![7u8; 100];
        let mut db = body.clone();
        db.extend_from_slice(&Sha256::digest(&body));
        let mut s = Stream::default();
        for part in db.chunks(30) {
            let b64 = base64::engine::general_purpose::STANDARD.encode(part);
            let line = format!("{{\"result\":{{\"blob\":\"{b64}\"}}}}");
            s.line(line.as_bytes(), &mut file).unwrap();
        }
        assert_eq!(s.bytes, 132);
        assert_eq!(std::fs::read(&path).unwrap(), db);
        assert_eq!(s.body.finalize().as_slice(), s.held.as_slice());
        let err = Stream::default()
            .line(br#"{"error":{"message":"permission denied"}}"#, &mut file)
            .err()
            .unwrap();
        assert!(err.to_string().contains("permission denied"));
    }
}
