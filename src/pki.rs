//! The PKI of one cluster generation, made by metalherd (rcgen): an etcd
//! CA with server, peer and client certificates per control-plane node, a
//! Kubernetes CA with the API server, admin, controller-manager, scheduler
//! and per-node kubelet client certificates, a front-proxy CA and client,
//! the service-account key pair, and kubeconfigs. Clusters are replaced,
//! not renewed, so validity is short (default 90 days).
//!
//! Everything is returned in memory as [`PkiFile`]s; private ones are
//! written 0600 in 0700 directories and never printed (`Debug` shows
//! names only). [`load_or_create`] keeps one PKI per site and generation
//! in the state store (`pki/<site>/<generation>/`, private files sealed
//! with the state's key). Delivering it over SSH is `bootstrap`'s part.

use std::fmt;
use std::net::IpAddr;
use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};
use zeroize::Zeroizing;

use crate::fleet::{Role, Site};
use crate::fsutil::{create_dir_with_mode, write_atomic};

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("generating {what}: {source}")]
    Generate { what: String, source: rcgen::Error },
    #[error("writing {}: {source}", path.display())]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// One file of the PKI: its path relative to the generation's PKI
/// directory, contents, and whether it is secret.
pub struct PkiFile {
    pub path: String,
    pub contents: Zeroizing<String>,
    pub private: bool,
}

impl fmt::Debug for PkiFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = if self.private {
            "****"
        } else {
            "(certificate)"
        };
        f.debug_struct("PkiFile")
            .field("path", &self.path)
            .field("contents", &shown)
            .finish()
    }
}

#[derive(Debug, Default)]
pub struct ClusterPki {
    pub files: Vec<PkiFile>,
}

impl ClusterPki {
    pub fn get(&self, path: &str) -> Option<&str> {
        self.files
            .iter()
            .find(|f| f.path == path)
            .map(|f| f.contents.as_str())
    }

    /// Writes every file under `dir`: private files 0600, certificates
    /// 0644, directories 0700.
    pub fn write_to(&self, dir: &Path) -> Result<(), PkiError> {
        for f in &self.files {
            let path = dir.join(&f.path);
            if let Some(parent) = path.parent() {
                create_dir_with_mode(parent, 0o700).map_err(|source| PkiError::Io {
                    path: parent.into(),
                    source,
                })?;
            }
            let mode = if f.private { 0o600 } else { 0o644 };
            write_atomic(&path, f.contents.as_bytes(), mode).map_err(|source| PkiError::Io {
                path: path.clone(),
                source,
            })?;
        }
        Ok(())
    }
}

/// Where the PKI of `site`'s generation `generation` lives in a local
/// state directory (the local backend keeps each object at its key).
pub fn state_path(state_dir: &Path, site: &str, generation: u64) -> std::path::PathBuf {
    state_dir.join(state_prefix(site, generation))
}

/// The state-store key prefix of a generation's PKI.
pub fn state_prefix(site: &str, generation: u64) -> String {
    crate::state::Key::pki(site, generation).to_string()
}

/// Errors of [`load_or_create`]: making the PKI or storing it.
#[derive(Debug, thiserror::Error)]
pub enum StoredPkiError {
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    /// `lockdown` retired the generation for good (its private keys are
    /// gone from the state): nothing may use or remake it.
    #[error(
        "the PKI of {site} generation {generation} was retired as compromised ({why}); \
         use a new generation"
    )]
    Compromised {
        site: String,
        generation: u64,
        why: String,
    },
}

/// The state-store key that marks a generation's PKI as compromised
/// (written by `lockdown`, holding the case).
pub fn compromised_marker(site: &str, generation: u64) -> String {
    crate::state::Key::pki_compromised(site, generation).to_string()
}

/// The stored PKI of `site`'s generation `generation`, or a new one made
/// and stored first. Private files are sealed with the state's key when
/// one is configured. The PKI counts as stored once its `complete` marker
/// is written, after every file: a PKI cut short by a crash is made anew.
/// Returns the PKI and whether it was created.
pub async fn load_or_create(
    store: &dyn crate::state::StateStore,
    sealer: &crate::state::crypt::Sealer,
    site: &Site,
    generation: u64,
    validity_days: i64,
) -> Result<(ClusterPki, bool), StoredPkiError> {
    use crate::state::Expect;
    let prefix = state_prefix(site.name.as_str(), generation);
    let marker = crate::state::Key::pki_complete(&site.name, generation);
    if let Some(pki) = load(store, sealer, site, generation).await? {
        return Ok((pki, false));
    }
    let pki = generate(site, OffsetDateTime::now_utc(), validity_days)?;
    for f in &pki.files {
        let key = format!("{prefix}{}", f.path);
        let stored = if f.private {
            sealer.seal(&key, f.contents.as_bytes())?
        } else {
            f.contents.as_bytes().to_vec()
        };
        store.put(&key, &stored, Expect::Any).await?;
    }
    store
        .put(&marker, crate::state::now_rfc3339().as_bytes(), Expect::Any)
        .await?;
    Ok((pki, true))
}

/// The stored PKI of `site`'s generation `generation`, when it is complete
/// (never made here). A generation retired as compromised is refused.
pub async fn load(
    store: &dyn crate::state::StateStore,
    sealer: &crate::state::crypt::Sealer,
    site: &Site,
    generation: u64,
) -> Result<Option<ClusterPki>, StoredPkiError> {
    let prefix = state_prefix(site.name.as_str(), generation);
    if let Some(e) = store
        .get(&compromised_marker(site.name.as_str(), generation))
        .await?
    {
        return Err(StoredPkiError::Compromised {
            site: site.name.to_string(),
            generation,
            why: String::from_utf8_lossy(&e.value).trim().to_string(),
        });
    }
    let marker = crate::state::Key::pki_complete(&site.name, generation);
    if store.get(&marker).await?.is_none() {
        return Ok(None);
    }
    let mut out = ClusterPki::default();
    for e in store.list(&prefix).await? {
        let path = e.key[prefix.len()..].to_string();
        let private = path.ends_with(".key") || path.ends_with(".conf");
        let plain = sealer.open(&e.key, &e.value)?;
        out.files.push(PkiFile {
            path,
            contents: Zeroizing::new(String::from_utf8_lossy(&plain).into_owned()),
            private,
        });
    }
    Ok(Some(out))
}

/// A CA: its key and what signing with it needs.
struct Ca {
    key: KeyPair,
    params: CertificateParams,
    pem: String,
}

struct Builder {
    /// The cluster's name and API server URL, for kubeconfigs.
    cluster: String,
    server: String,
    now: OffsetDateTime,
    validity: Duration,
    out: ClusterPki,
}

fn gen_err(what: &str) -> impl FnOnce(rcgen::Error) -> PkiError + '_ {
    move |source| PkiError::Generate {
        what: what.to_string(),
        source,
    }
}

impl Builder {
    fn push(&mut self, path: String, contents: String, private: bool) {
        self.out.files.push(PkiFile {
            path,
            contents: Zeroizing::new(contents),
            private,
        });
    }

    fn params(&self, common_name: &str, sans: Vec<String>) -> Result<CertificateParams, PkiError> {
        let mut p = CertificateParams::new(sans).map_err(gen_err(common_name))?;
        p.distinguished_name.push(DnType::CommonName, common_name);
        p.not_before = self.now - Duration::minutes(5);
        p.not_after = self.now + self.validity;
        p.use_authority_key_identifier_extension = true;
        Ok(p)
    }

    fn ca(&mut self, dir: &str, common_name: &str) -> Result<Ca, PkiError> {
        let key = KeyPair::generate().map_err(gen_err(common_name))?;
        let mut params = self.params(common_name, Vec::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).map_err(gen_err(common_name))?;
        let pem = cert.pem();
        self.push(format!("{dir}/ca.crt"), pem.clone(), false);
        self.push(format!("{dir}/ca.key"), key.serialize_pem(), true);
        Ok(Ca { key, params, pem })
    }

    /// A leaf certificate signed by `ca`; returns (cert PEM, key PEM).
    fn leaf(
        &mut self,
        ca: &Ca,
        path: &str,
        common_name: &str,
        organization: Option<&str>,
        sans: Vec<String>,
        usages: Vec<ExtendedKeyUsagePurpose>,
    ) -> Result<(String, String), PkiError> {
        let key = KeyPair::generate().map_err(gen_err(common_name))?;
        let mut params = self.params(common_name, sans)?;
        if let Some(o) = organization {
            params.distinguished_name.push(DnType::OrganizationName, o);
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = usages;
        let issuer = Issuer::from_params(&ca.params, &ca.key);
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(gen_err(common_name))?;
        let (crt, pem_key) = (cert.pem(), key.serialize_pem());
        self.push(format!("{path}.crt"), crt.clone(), false);
        self.push(format!("{path}.key"), pem_key.clone(), true);
        Ok((crt, pem_key))
    }

    fn kubeconfig(&mut self, path: &str, ca: &Ca, user: &str, crt: &str, key: &str) {
        use base64::Engine;
        let (cluster, server) = (&self.cluster, &self.server);
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: {cluster}\n  cluster:\n    server: {server}\n    certificate-authority-data: {}\nusers:\n- name: {user}\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\ncontexts:\n- name: {user}@{cluster}\n  context:\n    cluster: {cluster}\n    user: {user}\ncurrent-context: {user}@{cluster}\n",
            b64(&ca.pem),
            b64(crt),
            b64(key)
        );
        self.push(path.to_string(), text, true);
    }
}

/// The Kubernetes service's cluster IP: the first address of the
/// service CIDR.
fn first_service_ip(site: &Site) -> Option<IpAddr> {
    match site.cluster.service_cidr.net().network() {
        IpAddr::V4(v4) => u32::from(v4).checked_add(1).map(|x| IpAddr::V4(x.into())),
        IpAddr::V6(v6) => u128::from(v6).checked_add(1).map(|x| IpAddr::V6(x.into())),
    }
}

/// The URL of `site`'s API server, as kubeconfigs name it (an IPv6
/// address in brackets).
pub fn api_server_url(site: &Site) -> String {
    let endpoint = &site.cluster.api_endpoint;
    if endpoint.host.contains(':') {
        format!("https://[{}]:{}", endpoint.host, endpoint.port)
    } else {
        format!("https://{}:{}", endpoint.host, endpoint.port)
    }
}

/// Makes the whole PKI of `site`'s cluster, valid from `now` for
/// `validity_days`.
pub fn generate(
    site: &Site,
    now: OffsetDateTime,
    validity_days: i64,
) -> Result<ClusterPki, PkiError> {
    use ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
    let cluster = site.cluster.name.as_str();
    let endpoint = &site.cluster.api_endpoint;
    let mut b = Builder {
        cluster: cluster.to_string(),
        server: api_server_url(site),
        now,
        validity: Duration::days(validity_days),
        out: ClusterPki::default(),
    };
    let control_planes: Vec<_> = site
        .machines
        .iter()
        .filter(|m| m.role == Role::ControlPlane)
        .collect();

    let etcd = b.ca("etcd", &format!("{cluster} etcd CA"))?;
    for m in &control_planes {
        let sans = vec![
            m.ip.to_string(),
            m.name.to_string(),
            "localhost".into(),
            "127.0.0.1".into(),
        ];
        let dir = format!("nodes/{}/etcd", m.name);
        b.leaf(
            &etcd,
            &format!("{dir}/server"),
            m.name.as_str(),
            None,
            sans.clone(),
            vec![ServerAuth, ClientAuth],
        )?;
        b.leaf(
            &etcd,
            &format!("{dir}/peer"),
            m.name.as_str(),
            None,
            sans,
            vec![ServerAuth, ClientAuth],
        )?;
    }
    b.leaf(
        &etcd,
        "etcd/client",
        "metalherd",
        None,
        Vec::new(),
        vec![ClientAuth],
    )?;
    b.leaf(
        &etcd,
        "etcd/apiserver-etcd-client",
        "kube-apiserver-etcd-client",
        None,
        Vec::new(),
        vec![ClientAuth],
    )?;

    let k8s = b.ca("kubernetes", &format!("{cluster} Kubernetes CA"))?;
    let mut sans = vec![
        endpoint.host.clone(),
        "kubernetes".into(),
        "kubernetes.default".into(),
        "kubernetes.default.svc".into(),
        "kubernetes.default.svc.cluster.local".into(),
    ];
    sans.extend(first_service_ip(site).map(|ip| ip.to_string()));
    sans.extend(control_planes.iter().map(|m| m.ip.to_string()));
    sans.dedup();
    b.leaf(
        &k8s,
        "kubernetes/apiserver",
        "kube-apiserver",
        None,
        sans,
        vec![ServerAuth],
    )?;
    b.leaf(
        &k8s,
        "kubernetes/apiserver-kubelet-client",
        "kube-apiserver-kubelet-client",
        Some("system:masters"),
        Vec::new(),
        vec![ClientAuth],
    )?;
    for (path, cn, org) in [
        (
            "kubernetes/admin",
            "kubernetes-admin",
            Some("system:masters"),
        ),
        (
            "kubernetes/controller-manager",
            "system:kube-controller-manager",
            None,
        ),
        ("kubernetes/scheduler", "system:kube-scheduler", None),
    ] {
        let (crt, key) = b.leaf(&k8s, path, cn, org, Vec::new(), vec![ClientAuth])?;
        let user = path.rsplit('/').next().unwrap_or(path);
        b.kubeconfig(&format!("{path}.conf"), &k8s, user, &crt, &key);
    }
    for m in &site.machines {
        if m.role == Role::Spare {
            continue;
        }
        let path = format!("nodes/{}/kubelet", m.name);
        let (crt, key) = b.leaf(
            &k8s,
            &path,
            &format!("system:node:{}", m.name),
            Some("system:nodes"),
            Vec::new(),
            vec![ClientAuth],
        )?;
        let user = format!("system:node:{}", m.name);
        b.kubeconfig(&format!("{path}.conf"), &k8s, &user, &crt, &key);
    }

    let proxy = b.ca("front-proxy", &format!("{cluster} front-proxy CA"))?;
    b.leaf(
        &proxy,
        "front-proxy/client",
        "front-proxy-client",
        None,
        Vec::new(),
        vec![ClientAuth],
    )?;

    let sa = KeyPair::generate().map_err(gen_err("service-account key"))?;
    b.push("kubernetes/sa.key".into(), sa.serialize_pem(), true);
    b.push("kubernetes/sa.pub".into(), sa.public_key_pem(), false);
    Ok(b.out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stored_generation_is_reused_whole() {
        use std::os::unix::fs::MetadataExt;
        let fleet = crate::fleet::load(Path::new(env!("CARGO_MANIFEST_DIR"))).unwrap();
        let site = fleet.site("muc").unwrap();
        let state = tempfile::tempdir().unwrap();
        let store = crate::state::local::LocalStore::open(state.path()).unwrap();
        let sealer = crate::state::crypt::Sealer::none();
        let (first, created) = load_or_create(&store, &sealer, site, 4, 90).await.unwrap();
        assert!(created);
        let (again, created) = load_or_create(&store, &sealer, site, 4, 90).await.unwrap();
        assert!(!created);
        let mut a: Vec<_> = first
            .files
            .iter()
            .map(|f| (&f.path, f.contents.as_str(), f.private))
            .collect();
        a.sort();
        let b: Vec<_> = again
            .files
            .iter()
            .map(|f| (&f.path, f.contents.as_str(), f.private))
            .collect();
        assert_eq!(a, b);
        let dir = state_path(state.path(), "muc", 4);
        let key = std::fs::metadata(dir.join("etcd/ca.key")).unwrap();
        assert_eq!(key.mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        let (other, _) = load_or_create(&store, &sealer, site, 5, 90).await.unwrap();
        assert_ne!(other.get("etcd/ca.crt"), first.get("etcd/ca.crt"));
    }

    #[tokio::test]
    async fn a_compromised_generation_is_never_loaded_nor_made_again() {
        let fleet = crate::fleet::load(Path::new(env!("CARGO_MANIFEST_DIR"))).unwrap();
        let site = fleet.site("muc").unwrap();
        let state = tempfile::tempdir().unwrap();
        let store = crate::state::local::LocalStore::open(state.path()).unwrap();
        let sealer = crate::state::crypt::Sealer::none();
        load_or_create(&store, &sealer, site, 2, 90).await.unwrap();
        use crate::state::StateStore;
        store
            .put(
                &compromised_marker("muc", 2),
                b"case INC-1",
                crate::state::Expect::Any,
            )
            .await
            .unwrap();
        let e = load(&store, &sealer, site, 2).await.err().unwrap();
        assert!(e.to_string().contains("compromised (case INC-1)"), "{e}");
        assert!(load_or_create(&store, &sealer, site, 2, 90).await.is_err());
        assert!(load(&store, &sealer, site, 3).await.unwrap().is_none());
    }

    #[test]
    fn debug_never_shows_private_material() {
        let fleet = crate::fleet::load(Path::new(env!("CARGO_MANIFEST_DIR"))).unwrap();
        let pki = generate(fleet.site("fra").unwrap(), OffsetDateTime::now_utc(), 90).unwrap();
        let shown = format!("{pki:?}");
        assert!(!shown.contains("PRIVATE KEY"), "{shown}");
        assert!(pki
            .get("kubernetes/sa.key")
            .unwrap()
            .contains("PRIVATE KEY"));
        assert!(pki
            .files
            .iter()
            .filter(|f| f.path.ends_with(".key"))
            .all(|f| f.private));
    }
}
