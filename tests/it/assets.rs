//! `metalherd assets`: downloads from a loopback HTTP server (faults on
//! demand) of files signed by real `gpg` with throwaway keys made here.

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256, Sha512};

use super::httpd::Server;
use super::{example_fleet, files_below, metalherd, require, text};

const VERSION: &str = "4081.2.0";
const KERNEL: &str = "flatcar_production_pxe.vmlinuz";
const INITRD: &str = "flatcar_production_pxe_image.cpio.gz";

/// A throwaway GnuPG home; its agent is stopped on drop.
pub struct Gpg {
    home: tempfile::TempDir,
    gpg: PathBuf,
}

impl Gpg {
    pub fn new() -> Gpg {
        let gpg = require("gpg", "gnupg");
        Gpg {
            home: tempfile::Builder::new().prefix("mh-gpg").tempdir().unwrap(),
            gpg,
        }
    }

    fn run(&self, args: &[&str]) -> Vec<u8> {
        let out = Command::new(&self.gpg)
            .env("GNUPGHOME", self.home.path())
            .args([
                "--batch",
                "--quiet",
                "--no-permission-warning",
                "--pinentry-mode",
                "loopback",
                "--passphrase",
                "",
            ])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "gpg {args:?}: {}", text(&out.stderr));
        out.stdout
    }

    /// Like Flatcar's: an RSA certification key with a signing subkey.
    fn rsa_key_with_signing_subkey(&self, uid: &str) -> String {
        self.run(&["--quick-gen-key", uid, "rsa2048", "cert", "never"]);
        let fpr = self.fingerprint(uid);
        self.run(&["--quick-add-key", &fpr, "rsa2048", "sign", "never"]);
        fpr
    }

    pub fn ed25519_key(&self, uid: &str) -> String {
        self.run(&["--quick-gen-key", uid, "ed25519", "sign", "never"]);
        self.fingerprint(uid)
    }

    fn fingerprint(&self, uid: &str) -> String {
        let listing = text(&self.run(&["--with-colons", "--list-keys", uid]));
        let line = listing.lines().find(|l| l.starts_with("fpr:")).unwrap();
        line.split(':').nth(9).unwrap().to_string()
    }

    pub fn export(&self, fpr: &str, to: &Path) {
        let key = self.run(&["--armor", "--export", fpr]);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::write(to, key).unwrap();
    }

    pub fn sign(&self, fpr: &str, data: &[u8]) -> Vec<u8> {
        let file = self.home.path().join("to-sign");
        std::fs::write(&file, data).unwrap();
        self.run(&[
            "--local-user",
            fpr,
            "--detach-sign",
            "--output",
            "-",
            file.to_str().unwrap(),
        ])
    }
}

impl Drop for Gpg {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .env("GNUPGHOME", self.home.path())
            .args(["--kill", "all"])
            .status();
    }
}

/// Deterministic bytes that do not compress.
fn payload(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn digests_file(name: &str, data: &[u8]) -> String {
    format!(
        "# MD5 HASH\n00000000000000000000000000000000  {name}\n# SHA512 HASH\n{}  {name}\n",
        hex::encode(Sha512::digest(data))
    )
}

/// Publishes a Flatcar-like release on `server`, signed by `signer`.
fn publish(server: &Server, gpg: &Gpg, signer: &str, files: &[(&str, Vec<u8>)]) {
    for (name, data) in files {
        server.put(&format!("/{VERSION}/{name}"), data.clone());
        server.put(
            &format!("/{VERSION}/{name}.DIGESTS"),
            digests_file(name, data),
        );
        server.put(&format!("/{VERSION}/{name}.sig"), gpg.sign(signer, data));
    }
}

struct Setup {
    gpg: Gpg,
    signer: String,
    server: Server,
    fleet: tempfile::TempDir,
    kernel: Vec<u8>,
    initrd: Vec<u8>,
}

/// A fleet trusting one RSA key, and a server with a release it signed.
fn setup() -> Setup {
    let gpg = Gpg::new();
    let signer = gpg.rsa_key_with_signing_subkey("Test Release Key <release@example.com>");
    let fleet = example_fleet();
    gpg.export(&signer, &fleet.path().join("keys/release.asc"));
    let yaml = fleet.path().join("inventory/fleet.yaml");
    let text = std::fs::read_to_string(&yaml).unwrap();
    let text = text.replace(
        "  assets_url:",
        "  signing_keys: [keys/release.asc]\n  assets_url:",
    );
    std::fs::write(&yaml, text).unwrap();
    let server = Server::start();
    let (kernel, initrd) = (payload(1, 300_000), payload(2, 2_000_000));
    publish(
        &server,
        &gpg,
        &signer,
        &[(KERNEL, kernel.clone()), (INITRD, initrd.clone())],
    );
    Setup {
        gpg,
        signer,
        server,
        fleet,
        kernel,
        initrd,
    }
}

fn fetch(s: &Setup, extra: &[&str]) -> std::process::Output {
    let url = s.server.url();
    let mut args = vec![
        "assets",
        "fetch",
        "--mirror",
        &url,
        "--retries",
        "2",
        "--retry-delay-ms",
        "10",
        // The example fleet's extensions are tests/it/assets_lock.rs's.
        "--os-only",
    ];
    args.extend_from_slice(extra);
    metalherd(s.fleet.path(), &args)
}

fn release_dir(s: &Setup) -> PathBuf {
    s.fleet.path().join("assets/flatcar").join(VERSION)
}

/// Nothing was cached and no partial download was left behind.
fn assert_cache_untouched(s: &Setup) {
    assert!(!release_dir(s).exists(), "nothing may be cached");
    let assets = s.fleet.path().join("assets");
    let leftovers: Vec<_> = if assets.exists() {
        files_below(&assets)
    } else {
        Vec::new()
    };
    assert!(
        leftovers.is_empty(),
        "no partial file may be left: {leftovers:?}"
    );
}

#[test]
fn a_good_release_is_verified_cached_listed_and_reverified() {
    let s = setup();
    let out = fetch(&s, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let dir = release_dir(&s);
    assert_eq!(std::fs::read(dir.join(KERNEL)).unwrap(), s.kernel);
    assert_eq!(std::fs::read(dir.join(INITRD)).unwrap(), s.initrd);
    let blob = s
        .fleet
        .path()
        .join("assets/blobs/sha512")
        .join(hex::encode(Sha512::digest(&s.initrd)));
    assert_eq!(
        std::fs::read(&blob).unwrap(),
        s.initrd,
        "content-addressed copy"
    );
    assert!(
        dir.join(format!("{KERNEL}.sig")).exists()
            && dir.join(format!("{KERNEL}.DIGESTS")).exists()
    );

    let listed = metalherd(s.fleet.path(), &["--output", "json", "assets", "list"]);
    let doc: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    let files = &doc["releases"][0]["files"];
    assert_eq!(doc["releases"][0]["version"], VERSION);
    assert_eq!(files[1]["name"], INITRD);
    assert_eq!(files[1]["size"], 2_000_000);
    assert_eq!(files[1]["sha512"], hex::encode(Sha512::digest(&s.initrd)));
    assert_eq!(files[1]["signed_by"], s.signer);

    let verify = metalherd(s.fleet.path(), &["assets", "verify"]);
    assert!(verify.status.success(), "{}", text(&verify.stdout));
    assert!(text(&verify.stdout).contains("2 of 2 cached files verified"));

    // A byte flipped in the cache is found by `assets verify`.
    let mut bad = s.initrd.clone();
    bad[1234] ^= 1;
    std::fs::write(dir.join(INITRD), bad).unwrap();
    let verify = metalherd(s.fleet.path(), &["assets", "verify"]);
    assert_eq!(verify.status.code(), Some(1));
    assert!(
        text(&verify.stdout).contains(&format!(
            "FAIL  flatcar/{VERSION}/{INITRD}: {INITRD}: sha512 digest mismatch"
        )),
        "{}",
        text(&verify.stdout)
    );
}

#[test]
fn a_tampered_byte_is_refused_by_the_digest() {
    let s = setup();
    let mut tampered = s.initrd.clone();
    tampered[777] ^= 0x40;
    s.server.put(&format!("/{VERSION}/{INITRD}"), tampered);
    let out = fetch(&s, &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!(
            "{INITRD}: sha512 digest mismatch: expected {}",
            hex::encode(Sha512::digest(&s.initrd))
        )),
        "{err}"
    );
    assert!(err.contains("the cache was not changed"), "{err}");
    assert_cache_untouched(&s);
}

#[test]
fn a_tampered_byte_with_a_matching_digest_is_refused_by_the_signature() {
    let s = setup();
    let mut tampered = s.kernel.clone();
    tampered[10] ^= 0x01;
    s.server
        .put(&format!("/{VERSION}/{KERNEL}"), tampered.clone());
    s.server.put(
        &format!("/{VERSION}/{KERNEL}.DIGESTS"),
        digests_file(KERNEL, &tampered),
    );
    let out = fetch(&s, &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!("{KERNEL}: BAD signature by key")),
        "{err}"
    );
    assert_cache_untouched(&s);
}

#[test]
fn a_wrong_digest_is_refused() {
    let s = setup();
    let wrong = "# SHA512 HASH\n".to_string() + &"0".repeat(128) + "  " + KERNEL + "\n";
    s.server.put(&format!("/{VERSION}/{KERNEL}.DIGESTS"), wrong);
    let out = fetch(&s, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains(&format!(
            "{KERNEL}: sha512 digest mismatch: expected {}",
            "0".repeat(128)
        )),
        "{}",
        text(&out.stderr)
    );
    assert_cache_untouched(&s);
}

#[test]
fn a_signature_by_another_key_is_refused() {
    let s = setup();
    let other = s.gpg.ed25519_key("Someone Else <other@example.com>");
    s.server.put(
        &format!("/{VERSION}/{INITRD}.sig"),
        s.gpg.sign(&other, &s.initrd),
    );
    let out = fetch(&s, &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!("{INITRD}: signed by key {other}")),
        "{err}"
    );
    assert!(err.contains("which is not among os.signing_keys"), "{err}");
    assert_cache_untouched(&s);
}

#[test]
fn an_unknown_or_unusable_signing_key_is_refused() {
    let s = setup();
    let yaml = s.fleet.path().join("inventory/fleet.yaml");
    let original = std::fs::read_to_string(&yaml).unwrap();
    std::fs::write(
        &yaml,
        original.replace("keys/release.asc", "keys/missing.asc"),
    )
    .unwrap();
    let out = fetch(&s, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("keys/missing.asc: cannot read"),
        "{}",
        text(&out.stderr)
    );

    std::fs::write(
        s.fleet.path().join("keys/garbage.asc"),
        "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nnot a key\n-----END PGP PUBLIC KEY BLOCK-----\n",
    )
    .unwrap();
    std::fs::write(
        &yaml,
        original.replace("keys/release.asc", "keys/garbage.asc"),
    )
    .unwrap();
    let out = fetch(&s, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("keys/garbage.asc: not an OpenPGP public key"),
        "{}",
        text(&out.stderr)
    );

    std::fs::write(
        &yaml,
        original.replace("  signing_keys: [keys/release.asc]\n", ""),
    )
    .unwrap();
    let out = fetch(&s, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no signing keys are configured"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        s.server.requests().is_empty(),
        "nothing is downloaded without keys to check it"
    );
    assert_cache_untouched(&s);
}

#[test]
fn a_download_cut_off_half_way_resumes_with_range() {
    let s = setup();
    let path = format!("/{VERSION}/{INITRD}");
    s.server
        .state
        .lock()
        .unwrap()
        .cut_after
        .insert(path.clone(), 1_000_000);
    let out = fetch(&s, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("resuming at byte 1000000"),
        "{}",
        text(&out.stderr)
    );
    let ranges: Vec<_> = s
        .server
        .requests()
        .into_iter()
        .filter(|(p, _)| *p == path)
        .map(|(_, r)| r)
        .collect();
    assert_eq!(ranges, vec![None, Some("bytes=1000000-".to_string())]);
    assert_eq!(
        std::fs::read(release_dir(&s).join(INITRD)).unwrap(),
        s.initrd
    );
}

#[test]
fn an_unreachable_or_failing_server_gives_up_after_bounded_retries() {
    let s = setup();
    // A port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let out = metalherd(
        s.fleet.path(),
        &[
            "assets",
            "fetch",
            "--mirror",
            &dead,
            "--retries",
            "2",
            "--retry-delay-ms",
            "10",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("gave up after 3 attempts"), "{err}");
    assert!(err.to_lowercase().contains("connect"), "{err}");

    s.server
        .state
        .lock()
        .unwrap()
        .fail_500
        .insert(format!("/{VERSION}/{KERNEL}.sig"), 100);
    let out = fetch(&s, &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("gave up after 3 attempts; last error: the server answered 500"),
        "{err}"
    );
    let tries = s
        .server
        .requests()
        .iter()
        .filter(|(p, _)| p.ends_with(".sig"))
        .count();
    assert_eq!(tries, 3);

    // A 404 is not retried.
    s.server.state.lock().unwrap().fail_500.clear();
    s.server
        .state
        .lock()
        .unwrap()
        .files
        .remove(&format!("/{VERSION}/{KERNEL}.sig"));
    let before = s.server.requests().len();
    let out = fetch(&s, &[]);
    assert!(
        text(&out.stderr).contains("the server answered 404 Not Found"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(s.server.requests().len(), before + 1);
    assert_cache_untouched(&s);
}

#[test]
fn fedora_coreos_is_fetched_through_its_stream_metadata() {
    let s = setup();
    let version = "41.20241027.3.0";
    let base = format!(
        "https://builds.coreos.fedoraproject.org/prod/streams/stable/builds/{version}/x86_64"
    );
    let mut formats = serde_json::Map::new();
    for (part, file, seed) in [
        (
            "kernel",
            format!("fedora-coreos-{version}-live-kernel-x86_64"),
            3,
        ),
        (
            "initramfs",
            format!("fedora-coreos-{version}-live-initramfs.x86_64.img"),
            4,
        ),
        (
            "rootfs",
            format!("fedora-coreos-{version}-live-rootfs.x86_64.img"),
            5,
        ),
    ] {
        let data = payload(seed, 100_000);
        let path = format!("/prod/streams/stable/builds/{version}/x86_64/{file}");
        s.server.put(&path, data.clone());
        s.server
            .put(&format!("{path}.sig"), s.gpg.sign(&s.signer, &data));
        formats.insert(
            part.into(),
            serde_json::json!({
                "location": format!("{base}/{file}"),
                "signature": format!("{base}/{file}.sig"),
                "sha256": hex::encode(Sha256::digest(&data)),
            }),
        );
    }
    let stream = serde_json::json!({"stream": "stable", "architectures": {"x86_64": {"artifacts": {"metal": {
        "release": version, "formats": {"pxe": formats}}}}}});
    s.server.put("/streams/stable.json", stream.to_string());
    let out = fetch(&s, &["--flavor", "fcos", "--version", version]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let dir = s.fleet.path().join("assets/fcos").join(version);
    assert!(dir
        .join(format!("fedora-coreos-{version}-live-rootfs.x86_64.img"))
        .exists());

    let out = fetch(&s, &["--flavor", "fcos", "--version", "40.1.0"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains(&format!("offers {version}, not 40.1.0")),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn verify_with_json_prints_one_document_even_on_failure() {
    let s = setup();
    assert!(fetch(&s, &[]).status.success());
    std::fs::write(release_dir(&s).join(KERNEL), b"not the kernel").unwrap();
    let out = metalherd(s.fleet.path(), &["--output", "json", "assets", "verify"]);
    assert_eq!(out.status.code(), Some(1));
    let doc: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("exactly one JSON document");
    assert_eq!(doc["ok"], false);
    assert_eq!(doc["files"][0]["ok"], false);
    assert_eq!(doc["files"][1]["ok"], true);
}
