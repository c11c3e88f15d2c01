//! The cluster PKI checked by the real `openssl`: every certificate
//! verifies against its CA for its purpose (server or client), SANs are
//! as the API server and etcd need them, validity is the configured one,
//! and private files are 0600 in 0700 directories.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use super::{files_below, repo, require, text};

fn openssl(args: &[&str], dir: &Path) -> (bool, String) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!("{}{}", text(&out.stdout), text(&out.stderr)),
    )
}

#[test]
fn every_certificate_verifies_with_its_ca_purpose_sans_and_validity() {
    require("openssl", "openssl");
    let fleet = metalherd::fleet::load(repo()).unwrap();
    let site = fleet.site("fra").unwrap();
    let pki = metalherd::pki::generate(site, time::OffsetDateTime::now_utc(), 90).unwrap();
    let dir = tempfile::tempdir().unwrap();
    pki.write_to(dir.path()).unwrap();
    let d = dir.path();

    let files = files_below(d);
    let certs: Vec<String> = files
        .iter()
        .map(|p| p.display().to_string())
        .filter(|p| p.ends_with(".crt") && !p.ends_with("ca.crt"))
        .collect();
    assert_eq!(certs.len(), 19, "{certs:?}");
    for cert in &certs {
        let ca = if cert.starts_with("etcd/") || cert.contains("/etcd/") {
            "etcd/ca.crt"
        } else if cert.starts_with("front-proxy/") {
            "front-proxy/ca.crt"
        } else {
            "kubernetes/ca.crt"
        };
        let purpose = if cert.ends_with("server.crt")
            || cert.ends_with("peer.crt")
            || cert.ends_with("apiserver.crt")
        {
            "sslserver"
        } else {
            "sslclient"
        };
        let (ok, said) = openssl(&["verify", "-CAfile", ca, "-purpose", purpose, cert], d);
        assert!(
            ok && said.contains(": OK"),
            "{cert} against {ca} as {purpose}: {said}"
        );
        // Not accepted by another CA.
        let other = if ca == "etcd/ca.crt" {
            "kubernetes/ca.crt"
        } else {
            "etcd/ca.crt"
        };
        let (ok, _) = openssl(&["verify", "-CAfile", other, cert], d);
        assert!(!ok, "{cert} must not verify against {other}");
    }
    // Peers authenticate each other: etcd server and peer certs are also client certs.
    let (ok, said) = openssl(
        &[
            "verify",
            "-CAfile",
            "etcd/ca.crt",
            "-purpose",
            "sslclient",
            "nodes/fra-cp-02/etcd/peer.crt",
        ],
        d,
    );
    assert!(ok, "{said}");
    let (ok, _) = openssl(
        &[
            "verify",
            "-CAfile",
            "kubernetes/ca.crt",
            "-purpose",
            "sslserver",
            "kubernetes/admin.crt",
        ],
        d,
    );
    assert!(!ok, "a client certificate is not a server certificate");

    let (_, sans) = openssl(
        &[
            "x509",
            "-noout",
            "-ext",
            "subjectAltName",
            "-in",
            "kubernetes/apiserver.crt",
        ],
        d,
    );
    for want in [
        "IP Address:10.10.4.10",
        "DNS:kubernetes",
        "DNS:kubernetes.default.svc.cluster.local",
        "IP Address:10.96.0.1",
        "IP Address:10.10.4.11",
        "IP Address:10.10.4.13",
    ] {
        assert!(sans.contains(want), "apiserver SANs lack {want}: {sans}");
    }
    let (_, sans) = openssl(
        &[
            "x509",
            "-noout",
            "-ext",
            "subjectAltName",
            "-in",
            "nodes/fra-cp-02/etcd/server.crt",
        ],
        d,
    );
    for want in [
        "IP Address:10.10.4.12",
        "DNS:fra-cp-02",
        "DNS:localhost",
        "IP Address:127.0.0.1",
    ] {
        assert!(sans.contains(want), "etcd server SANs lack {want}: {sans}");
    }
    let (_, subject) = openssl(
        &[
            "x509",
            "-noout",
            "-subject",
            "-in",
            "nodes/fra-wk-01/kubelet.crt",
        ],
        d,
    );
    assert!(
        subject.contains("CN = system:node:fra-wk-01") && subject.contains("O = system:nodes"),
        "{subject}"
    );

    let day = 86_400;
    assert!(
        openssl(
            &[
                "x509",
                "-noout",
                "-checkend",
                &(89 * day).to_string(),
                "-in",
                "kubernetes/apiserver.crt"
            ],
            d
        )
        .0
    );
    assert!(
        !openssl(
            &[
                "x509",
                "-noout",
                "-checkend",
                &(91 * day).to_string(),
                "-in",
                "kubernetes/apiserver.crt"
            ],
            d
        )
        .0
    );

    let (ok, said) = openssl(&["pkey", "-pubin", "-in", "kubernetes/sa.pub", "-noout"], d);
    assert!(ok, "{said}");
    let admin = std::fs::read_to_string(d.join("kubernetes/admin.conf")).unwrap();
    assert!(
        admin.contains("server: https://10.10.4.10:6443") && admin.contains("client-key-data: "),
        "{admin}"
    );

    for f in &files {
        let meta = std::fs::metadata(d.join(f)).unwrap();
        let name = f.display().to_string();
        let private = name.ends_with(".key") || name.ends_with(".conf");
        assert_eq!(
            meta.mode() & 0o777,
            if private { 0o600 } else { 0o644 },
            "{name}"
        );
        assert_eq!(
            std::fs::metadata(d.join(f).parent().unwrap())
                .unwrap()
                .mode()
                & 0o777,
            0o700,
            "{name}"
        );
    }
}
