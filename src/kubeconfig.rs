//! Admin kubeconfigs on demand (`metalherd kubeconfig`): a fresh client
//! key and a short-lived certificate (CN `metalherd-admin:<user@host>`,
//! O `system:masters`) signed by the Kubernetes CA of a site's current
//! generation, wrapped in a kubeconfig for the site's API server.
//!
//! [`issue`] is the pure part (a generation's PKI in, the kubeconfig and
//! what to record about it out); [`issue_admin`] is the whole command:
//! which generation may be used (the current one, never a retired or
//! compromised one), the audit entry, the 0600 file. The kubeconfig holds
//! a private key: it is a [`SecretString`], never logged, and no error
//! here carries it. The CA's private key never leaves this module.
//!
//! To change what an admin certificate says: [`issue`]; to add a refusal:
//! a [`KubeconfigError`] variant and a check in [`issue_admin`].

use std::path::{Path, PathBuf};

use base64::Engine as _;
use rcgen::{
    CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SerialNumber,
};
use secrecy::{ExposeSecret, SecretString};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::fleet::Site;
use crate::pki::{ClusterPki, StoredPkiError};
use crate::state::crypt::Sealer;
use crate::state::{self, Holder, StateStore};

/// How long an admin kubeconfig is valid unless `--ttl` says otherwise.
pub const DEFAULT_TTL: std::time::Duration = std::time::Duration::from_secs(8 * 3600);
/// The longest validity issued: an admin credential that outlives a week
/// is one nobody remembers handing out.
pub const MAX_TTL: std::time::Duration = std::time::Duration::from_secs(7 * 86_400);

/// Why no kubeconfig was issued. Names the site, generation or file;
/// never carries key material.
#[derive(Debug, thiserror::Error)]
pub enum KubeconfigError {
    #[error("TTL of {0} s: an admin kubeconfig is valid for at least 1 minute and at most 7 days")]
    Ttl(u64),
    #[error("{site} has no cluster generation in the state: provision or bootstrap it first")]
    NoGeneration { site: String },
    #[error(
        "{site} generation {generation} is retired (the site runs generation {current}): \
         no kubeconfig is issued for it"
    )]
    Retired {
        site: String,
        generation: u64,
        current: u64,
    },
    #[error(
        "{site} generation {generation} is not the current one (the site runs generation {current})"
    )]
    NotCurrent {
        site: String,
        generation: u64,
        current: u64,
    },
    #[error(
        "{site} generation {generation} was retired as compromised ({why}): \
         no kubeconfig is issued for it"
    )]
    Compromised {
        site: String,
        generation: u64,
        why: String,
    },
    #[error("{site} generation {generation}: {source}")]
    Pki {
        site: String,
        generation: u64,
        source: StoredPkiError,
    },
    #[error("{site} generation {generation}: its PKI is not in the state")]
    NoPki { site: String, generation: u64 },
    #[error("{site} generation {generation}: the Kubernetes CA is unusable: {why}")]
    Ca {
        site: String,
        generation: u64,
        why: String,
    },
    #[error("issuing the admin certificate: {0}")]
    Generate(rcgen::Error),
    #[error("{} exists: pass --force to replace it", path.display())]
    Exists { path: PathBuf },
    #[error("writing {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    State(#[from] state::StateError),
}

/// What to issue: for whom, for which site's generation, when, how long.
#[derive(Debug)]
pub struct Request<'a> {
    pub site: &'a Site,
    pub generation: u64,
    /// Who it is for (`user@host`): the certificate's CN after
    /// `metalherd-admin:`.
    pub identity: &'a str,
    pub now: OffsetDateTime,
    pub ttl: std::time::Duration,
}

/// An issued admin kubeconfig and what is recorded about it. `Debug`
/// never shows the kubeconfig.
#[derive(Debug)]
pub struct Issued {
    pub site: String,
    pub generation: u64,
    /// The certificate's subject CN.
    pub subject: String,
    /// Upper-case hex, as `openssl x509 -serial` prints it.
    pub serial: String,
    pub not_after: OffsetDateTime,
    /// Where it was written (`None`: the caller prints it).
    pub path: Option<PathBuf>,
    pub kubeconfig: SecretString,
}

impl Issued {
    /// What was issued, for the operator: `admin kubeconfig for fra
    /// generation 2 (<subject>), serial …, expires …` (never the secret).
    pub fn describe(&self) -> String {
        format!(
            "admin kubeconfig for {} generation {} ({}), serial {}, expires {}",
            self.site,
            self.generation,
            self.subject,
            self.serial,
            self.expires()
        )
    }

    /// The expiry as RFC 3339.
    pub fn expires(&self) -> String {
        self.not_after
            .format(&Rfc3339)
            .unwrap_or_else(|_| self.not_after.to_string())
    }
}

fn check_ttl(ttl: std::time::Duration) -> Result<time::Duration, KubeconfigError> {
    if ttl < std::time::Duration::from_secs(60) || ttl > MAX_TTL {
        return Err(KubeconfigError::Ttl(ttl.as_secs()));
    }
    time::Duration::try_from(ttl).map_err(|_| KubeconfigError::Ttl(ttl.as_secs()))
}

/// A random positive serial of 16 bytes whose first byte is never 0, so
/// its DER (and `openssl`'s hex) is exactly these bytes.
fn random_serial() -> Vec<u8> {
    let mut bytes = [0u8; 16];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut bytes);
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    bytes.to_vec()
}

/// Issues an admin kubeconfig signed by the Kubernetes CA in `pki` (the
/// PKI of `request.site`'s generation `request.generation`). Pure but for
/// the fresh key and serial: no store, no file.
pub fn issue(pki: &ClusterPki, request: &Request<'_>) -> Result<Issued, KubeconfigError> {
    let ttl = check_ttl(request.ttl)?;
    let site = request.site;
    let ca_error = |why: &str| KubeconfigError::Ca {
        site: site.name.to_string(),
        generation: request.generation,
        why: why.to_string(),
    };
    let ca_pem = pki
        .get("kubernetes/ca.crt")
        .ok_or_else(|| ca_error("kubernetes/ca.crt is missing"))?;
    let ca_key = pki
        .get("kubernetes/ca.key")
        .ok_or_else(|| ca_error("kubernetes/ca.key is missing"))?;
    let ca_key = KeyPair::from_pem(ca_key).map_err(|_| ca_error("kubernetes/ca.key is no key"))?;
    let issuer = Issuer::from_ca_cert_pem(ca_pem, &ca_key)
        .map_err(|_| ca_error("kubernetes/ca.crt is no certificate"))?;

    let subject = format!("metalherd-admin:{}", request.identity);
    let serial = random_serial();
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, &subject);
    params
        .distinguished_name
        .push(DnType::OrganizationName, "system:masters");
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    params.not_before = request.now - time::Duration::minutes(1);
    params.not_after = request.now + ttl;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate().map_err(KubeconfigError::Generate)?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(KubeconfigError::Generate)?;

    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    let key_pem = zeroize::Zeroizing::new(key.serialize_pem());
    let cluster = site.cluster.name.as_str();
    let user = format!("metalherd-admin@{}", site.name);
    let context = format!("{cluster}-g{}", request.generation);
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: {cluster}\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\nusers:\n- name: {user}\n  user:\n    client-certificate-data: {crt}\n    client-key-data: {key}\ncontexts:\n- name: {context}\n  context:\n    cluster: {cluster}\n    user: {user}\ncurrent-context: {context}\n",
        server = crate::pki::api_server_url(site),
        ca = b64(ca_pem),
        crt = b64(&cert.pem()),
        key = b64(&key_pem),
    );
    Ok(Issued {
        site: site.name.to_string(),
        generation: request.generation,
        subject,
        serial: hex::encode_upper(serial),
        not_after: params.not_after,
        path: None,
        kubeconfig: SecretString::from(text),
    })
}

/// What `metalherd kubeconfig` was asked for.
#[derive(Debug)]
pub struct Options {
    /// The generation expected (default: the site's current one); any
    /// other is refused.
    pub generation: Option<u64>,
    pub ttl: std::time::Duration,
    /// Write it here (0600) rather than return it for printing.
    pub out: Option<PathBuf>,
    /// Replace an existing `out`.
    pub force: bool,
}

/// Issues an admin kubeconfig for `site`'s current generation: refuses a
/// site without one and a generation retired or compromised, records the
/// issue in the audit log (who, site, generation, serial, expiry), then
/// writes it to `opts.out` (0600, atomically, never over a file unless
/// `opts.force`). Nothing is issued or written when refused.
pub async fn issue_admin(
    store: &dyn StateStore,
    sealer: &Sealer,
    site: &Site,
    opts: &Options,
) -> Result<Issued, KubeconfigError> {
    check_ttl(opts.ttl)?;
    if let Some(path) = opts.out.as_deref().filter(|p| !opts.force && p.exists()) {
        return Err(KubeconfigError::Exists { path: path.into() });
    }
    let name = site.name.to_string();
    let record = state::records::read_site(store, &site.name)
        .await?
        .filter(|r| r.generation > 0)
        .ok_or_else(|| KubeconfigError::NoGeneration { site: name.clone() })?;
    let current = record.generation;
    let generation = opts.generation.unwrap_or(current);
    // Said first: a lockdown also retires the generation, and
    // "compromised" is what the reader must hear.
    let marker = crate::pki::compromised_marker(site.name.as_str(), generation);
    if let Some(e) = store.get(&marker).await? {
        return Err(KubeconfigError::Compromised {
            site: name,
            generation,
            why: String::from_utf8_lossy(&e.value).trim().to_string(),
        });
    }
    if record.retired.contains(&generation) {
        return Err(KubeconfigError::Retired {
            site: name,
            generation,
            current,
        });
    }
    if generation != current {
        return Err(KubeconfigError::NotCurrent {
            site: name,
            generation,
            current,
        });
    }
    let pki = crate::pki::load(store, sealer, site, generation)
        .await
        .map_err(|source| KubeconfigError::Pki {
            site: name.clone(),
            generation,
            source,
        })?
        .ok_or_else(|| KubeconfigError::NoPki {
            site: name.clone(),
            generation,
        })?;
    let holder = Holder::current("kubeconfig");
    let identity = format!("{}@{}", holder.user, holder.host);
    let mut issued = issue(
        &pki,
        &Request {
            site,
            generation,
            identity: &identity,
            now: OffsetDateTime::now_utc(),
            ttl: opts.ttl,
        },
    )?;
    drop(pki);
    // Recorded before it is handed out: an issued credential the audit
    // log does not know of is worse than a recorded one never delivered.
    state::audit(
        store,
        "kubeconfig",
        serde_json::json!({
            "site": name, "generation": generation, "serial": issued.serial,
            "subject": issued.subject, "expires": issued.expires(), "out": opts.out,
        }),
    )
    .await?;
    if let Some(path) = &opts.out {
        write(path, &issued.kubeconfig, opts.force)?;
        issued.path = Some(path.clone());
    }
    Ok(issued)
}

/// Writes the kubeconfig 0600, whole or not at all; over an existing file
/// only when `force`.
fn write(path: &Path, kubeconfig: &SecretString, force: bool) -> Result<(), KubeconfigError> {
    let bytes = kubeconfig.expose_secret().as_bytes();
    let written = if force {
        crate::fsutil::write_atomic(path, bytes, 0o600)
    } else {
        crate::fsutil::create_atomic(path, bytes, 0o600)
    };
    written.map_err(|source| match source.kind() {
        std::io::ErrorKind::AlreadyExists => KubeconfigError::Exists { path: path.into() },
        _ => KubeconfigError::Io {
            path: path.into(),
            source,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fleet() -> crate::fleet::Fleet {
        crate::fleet::load(Path::new(env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    #[test]
    fn issues_a_kubeconfig_for_the_site_with_the_ca_but_never_its_key() {
        let fleet = fleet();
        let site = fleet.site("fra").unwrap();
        let now = OffsetDateTime::now_utc();
        let pki = crate::pki::generate(site, now, 90).unwrap();
        let request = Request {
            site,
            generation: 3,
            identity: "alice@ops1",
            now,
            ttl: std::time::Duration::from_secs(2 * 3600),
        };
        let issued = issue(&pki, &request).unwrap();
        assert_eq!(issued.not_after, now + time::Duration::hours(2));
        assert_eq!(issued.subject, "metalherd-admin:alice@ops1");
        assert_eq!(issued.serial.len(), 32);
        let text = issued.kubeconfig.expose_secret();
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
        let ca = pki.get("kubernetes/ca.crt").unwrap();
        for want in [
            "server: https://10.10.4.10:6443".to_string(),
            format!("certificate-authority-data: {}", b64(ca)),
            "- name: metalherd-admin@fra".into(),
            "current-context: fra-k8s-g3".into(),
            "client-key-data: ".into(),
        ] {
            assert!(text.contains(&want), "lacks {want}");
        }
        let ca_key = b64(pki.get("kubernetes/ca.key").unwrap());
        assert!(!text.contains(&ca_key));
        let shown = format!("{issued:?}");
        assert!(!shown.contains("client-key-data"), "{shown}");

        // The issuer is the CA: its subject names the certificate's issuer.
        let crt = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("client-certificate-data: "))
            .unwrap();
        let engine = base64::engine::general_purpose::STANDARD;
        let crt = String::from_utf8(engine.decode(crt).unwrap()).unwrap();
        let der_of = |pem: &str| {
            let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
            engine.decode(body).unwrap()
        };
        let (der, ca_der) = (der_of(&crt), der_of(ca));
        let cn = b"fra-k8s Kubernetes CA";
        let found = |hay: &[u8]| hay.windows(cn.len()).any(|w| w == cn);
        assert!(found(&der) && found(&ca_der));
    }

    #[test]
    fn a_ttl_over_a_week_or_under_a_minute_is_refused() {
        let fleet = fleet();
        let site = fleet.site("ber").unwrap();
        let now = OffsetDateTime::now_utc();
        let pki = crate::pki::generate(site, now, 90).unwrap();
        for secs in [8 * 86_400, 30] {
            let request = Request {
                site,
                generation: 1,
                identity: "a@b",
                now,
                ttl: std::time::Duration::from_secs(secs),
            };
            let err = issue(&pki, &request).unwrap_err();
            assert!(err.to_string().contains("at most 7 days"), "{err}");
        }
    }
}
