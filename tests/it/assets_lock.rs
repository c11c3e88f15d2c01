//! `metalherd assets fetch` of the fleet's extensions and `assets.lock`:
//! a loopback "vendor" publishes an etcd-like release tarball (made here
//! with the real `tar`) with a `SHA256SUMS` signed by a throwaway `gpg`
//! key; images are built with the real `mksquashfs` and read back with
//! the real `unsquashfs`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sha2::{Digest, Sha256, Sha512};

use super::assets::Gpg;
use super::httpd::Server;
use super::{example_fleet, files_below, metalherd, render_with_cli, require, text};

const ARCHIVE: &str = "etcd-v3.5.15-linux-amd64.tar.gz";
const IMAGE: &str = "extensions/etcd/etcd-v3.5.15.raw";
const RELEASE_DIR: &str = "/etcd/v3.5.15";

struct Vendor {
    gpg: Gpg,
    signer: String,
    server: Server,
    fleet: tempfile::TempDir,
    archive: Vec<u8>,
}

/// An etcd-like release tarball whose `etcd` is a shell script.
fn tarball(script: &str) -> Vec<u8> {
    let tar = require("tar", "tar");
    let dir = tempfile::tempdir().unwrap();
    let top = dir.path().join("src/etcd-v3.5.15-linux-amd64");
    std::fs::create_dir_all(&top).unwrap();
    let bin = top.join("etcd");
    std::fs::write(&bin, script).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(top.join("README.md"), "etcd\n").unwrap();
    let out = dir.path().join(ARCHIVE);
    let status = Command::new(tar)
        .arg("-czf")
        .arg(&out)
        .arg("-C")
        .arg(dir.path().join("src"))
        .arg("etcd-v3.5.15-linux-amd64")
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::read(out).unwrap()
}

fn sha256(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn sha512(data: &[u8]) -> String {
    hex::encode(Sha512::digest(data))
}

/// Puts `archive` on `server` under `base` with a `SHA256SUMS` that
/// matches it, signed by `signer`.
fn publish(server: &Server, base: &str, gpg: &Gpg, signer: &str, archive: &[u8]) {
    let sums = format!(
        "{}  etcd-v3.5.15-darwin-arm64.zip\n{}  {ARCHIVE}\n",
        "0".repeat(64),
        sha256(archive)
    );
    server.put(&format!("{base}/{ARCHIVE}"), archive.to_vec());
    server.put(
        &format!("{base}/SHA256SUMS.asc"),
        gpg.sign(signer, sums.as_bytes()),
    );
    server.put(&format!("{base}/SHA256SUMS"), sums);
}

/// The example fleet with one extension, etcd, from the loopback vendor,
/// and the vendor's key in `os.signing_keys`.
fn setup() -> Vendor {
    let gpg = Gpg::new();
    let signer = gpg.ed25519_key("Test Vendor <release@vendor.example>");
    let fleet = example_fleet();
    gpg.export(&signer, &fleet.path().join("keys/vendor.asc"));
    let server = Server::start();
    let archive = tarball("#!/bin/sh\necho etcd 3.5.15\n");
    publish(&server, RELEASE_DIR, &gpg, &signer, &archive);
    let base = format!("{}{RELEASE_DIR}", server.url());
    let yaml = fleet.path().join("inventory/fleet.yaml");
    let original = std::fs::read_to_string(&yaml).unwrap();
    let (head, rest) = original.split_once("extensions:\n").unwrap();
    let (_, tail) = rest.split_once("admins:").unwrap();
    let extensions = format!(
        "extensions:\n  - name: etcd\n    version: v3.5.15\n    roles: [control-plane]\n    \
         build:\n      archive: {base}/{ARCHIVE}\n      \
         binaries: [etcd-v3.5.15-linux-amd64/etcd]\n    \
         checksums: {base}/SHA256SUMS\n    checksums_signature: {base}/SHA256SUMS.asc\n"
    );
    let head = head.replace(
        "  assets_url:",
        "  signing_keys: [keys/vendor.asc]\n  assets_url:",
    );
    std::fs::write(&yaml, format!("{head}{extensions}admins:{tail}")).unwrap();
    Vendor {
        gpg,
        signer,
        server,
        fleet,
        archive,
    }
}

fn fetch(v: &Vendor, extra: &[&str]) -> Output {
    let mut args = vec![
        "assets",
        "fetch",
        "--extensions-only",
        "--retries",
        "1",
        "--retry-delay-ms",
        "10",
    ];
    args.extend_from_slice(extra);
    metalherd(v.fleet.path(), &args)
}

fn both(out: &Output) -> String {
    format!("{}{}", text(&out.stdout), text(&out.stderr))
}

fn lock(v: &Vendor) -> serde_json::Value {
    let text = std::fs::read_to_string(v.fleet.path().join("assets.lock")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn cached(v: &Vendor) -> PathBuf {
    v.fleet.path().join("assets").join(IMAGE)
}

/// No lock, and no file in the cache (an empty `.partial/` may remain).
fn assert_nothing_written(v: &Vendor) {
    assert!(!v.fleet.path().join("assets.lock").exists(), "no lock");
    let assets = v.fleet.path().join("assets");
    if assets.exists() {
        assert_eq!(
            files_below(&assets),
            Vec::<PathBuf>::new(),
            "no cache entry"
        );
    }
}

/// The machine's rendered final Ignition config.
fn rendered(out: &Path, machine: &str) -> serde_json::Value {
    let site = &machine[..3];
    let path = out.join(site).join(format!("{machine}.final.ign"));
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn first_fetch_writes_the_lock_caches_the_image_and_render_includes_it() {
    let v = setup();
    let before = render_with_cli(v.fleet.path());
    let unpinned = rendered(before.path(), "fra-cp-01").to_string();
    assert!(!unpinned.contains("/opt/extensions/etcd"), "not pinned yet");

    let out = fetch(&v, &[]);
    assert!(out.status.success(), "{}", both(&out));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(&format!("signature by key {} verified", v.signer)),
        "{stdout}"
    );
    assert!(stdout.contains("assets.lock written"), "{stdout}");

    let image = std::fs::read(cached(&v)).unwrap();
    let entry = &lock(&v)["extensions"]["etcd"];
    assert_eq!(entry["version"], "v3.5.15");
    assert_eq!(
        entry["source"],
        format!("{}{RELEASE_DIR}/{ARCHIVE}", v.server.url())
    );
    assert_eq!(entry["os"], "flatcar");
    assert_eq!(entry["source_digest"]["algorithm"], "sha256");
    assert_eq!(entry["source_digest"]["hex"], sha256(&v.archive));
    assert_eq!(entry["image"], "etcd-v3.5.15.raw");
    assert_eq!(entry["image_size"], image.len());
    assert_eq!(entry["image_sha512"], sha512(&image));
    let meta = std::fs::metadata(cached(&v)).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o644);
    let blob = v
        .fleet
        .path()
        .join("assets/blobs/sha512")
        .join(sha512(&image));
    assert_eq!(std::fs::read(blob).unwrap(), image, "content-addressed");
    let unsquashfs = require("unsquashfs", "squashfs-tools");
    let listing = Command::new(unsquashfs)
        .arg("-l")
        .arg(cached(&v))
        .output()
        .unwrap();
    assert!(
        text(&listing.stdout).contains("squashfs-root/usr/bin/etcd\n"),
        "{}",
        text(&listing.stdout)
    );

    let check = metalherd(v.fleet.path(), &["inventory", "check"]);
    assert!(check.status.success(), "{}", both(&check));
    let after = render_with_cli(v.fleet.path());
    let config = rendered(after.path(), "fra-cp-01");
    let files = config["storage"]["files"].as_array().unwrap();
    let file = files
        .iter()
        .find(|f| f["path"] == "/opt/extensions/etcd/etcd-v3.5.15.raw")
        .expect("the extension is rendered");
    assert_eq!(
        file["contents"]["source"],
        format!("http://10.10.0.2:8080/assets/{IMAGE}?mac=52-54-00-fa-00-01")
    );
    assert_eq!(
        file["contents"]["verification"]["hash"],
        format!("sha512-{}", sha512(&image))
    );

    // Again: the same bytes match the lock, which stays as it was.
    let lock_text = std::fs::read(v.fleet.path().join("assets.lock")).unwrap();
    let out = fetch(&v, &["--locked"]);
    assert!(out.status.success(), "{}", both(&out));
    assert!(
        text(&out.stdout).contains("matches assets.lock"),
        "{}",
        both(&out)
    );
    assert_eq!(
        std::fs::read(v.fleet.path().join("assets.lock")).unwrap(),
        lock_text
    );
    let listed = metalherd(v.fleet.path(), &["--output", "json", "assets", "list"]);
    let doc: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(doc["extensions"][0]["path"], IMAGE);
    assert_eq!(doc["extensions"][0]["pinned"], true);
    assert_eq!(doc["extensions"][0]["sha512"], sha512(&image));
}

#[test]
fn changed_vendor_bytes_are_refused_by_the_lock_even_with_matching_checksums() {
    let v = setup();
    assert!(fetch(&v, &[]).status.success());
    let lock_text = std::fs::read(v.fleet.path().join("assets.lock")).unwrap();
    let image = std::fs::read(cached(&v)).unwrap();

    // The vendor swaps the release and updates (and re-signs) SHA256SUMS.
    let swapped = tarball("#!/bin/sh\necho etcd 3.5.15, but not the one we reviewed\n");
    publish(&v.server, RELEASE_DIR, &v.gpg, &v.signer, &swapped);
    let out = fetch(&v, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    let said = both(&out);
    assert!(
        said.contains(&format!(
            "{ARCHIVE}: the served file's sha256 is {}, but assets.lock records {}",
            sha256(&swapped),
            sha256(&v.archive)
        )),
        "{said}"
    );
    assert!(said.contains("1 of 1 extensions failed: etcd"), "{said}");
    assert_eq!(
        std::fs::read(v.fleet.path().join("assets.lock")).unwrap(),
        lock_text,
        "the lock is unchanged"
    );
    assert_eq!(std::fs::read(cached(&v)).unwrap(), image, "the cache too");
    let partial = v.fleet.path().join("assets/.partial");
    assert_eq!(files_below(&partial), Vec::<PathBuf>::new());
}

#[test]
fn locked_without_a_lock_entry_refuses_and_writes_nothing() {
    let v = setup();
    let out = fetch(&v, &["--locked", "--output", "json"]);
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["ok"], false);
    assert_eq!(doc["extensions"][0]["name"], "etcd");
    let error = doc["extensions"][0]["error"].as_str().unwrap();
    assert!(
        error.contains("`etcd` is not in assets.lock and --locked given"),
        "{error}"
    );
    assert!(v.server.requests().is_empty(), "nothing was fetched");
    assert_nothing_written(&v);
}

#[test]
fn a_checksum_file_with_a_bad_signature_is_refused_and_nothing_written() {
    let v = setup();
    let forged = format!("{}  {ARCHIVE}\n", "ab".repeat(32));
    v.server
        .put(&format!("{RELEASE_DIR}/SHA256SUMS"), forged.into_bytes());
    let out = fetch(&v, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    assert!(
        both(&out).contains("SHA256SUMS: BAD signature by key"),
        "{}",
        both(&out)
    );
    let fetched: Vec<String> = v.server.requests().into_iter().map(|(p, _)| p).collect();
    assert!(
        !fetched.iter().any(|p| p.ends_with(ARCHIVE)),
        "the archive is not fetched: {fetched:?}"
    );
    assert_nothing_written(&v);
}

#[test]
fn verify_names_a_tampered_cached_extension() {
    let v = setup();
    assert!(fetch(&v, &[]).status.success());
    let out = metalherd(v.fleet.path(), &["assets", "verify"]);
    assert!(out.status.success(), "{}", both(&out));
    assert!(
        text(&out.stdout).contains(&format!("ok    {IMAGE} (matches assets.lock)")),
        "{}",
        both(&out)
    );

    let locked = lock(&v)["extensions"]["etcd"]["image_sha512"]
        .as_str()
        .unwrap()
        .to_string();
    let mut bytes = std::fs::read(cached(&v)).unwrap();
    bytes[100] ^= 0x20;
    std::fs::write(cached(&v), &bytes).unwrap();
    let out = metalherd(v.fleet.path(), &["assets", "verify"]);
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    assert!(
        text(&out.stdout).contains(&format!(
            "FAIL  {IMAGE}: sha512 digest mismatch: expected {locked}, got {}",
            sha512(&bytes)
        )),
        "{}",
        both(&out)
    );
}

#[test]
fn a_mirror_serves_inputs_and_checksums_for_air_gapped_sites() {
    let v = setup();
    let mirror = Server::start();
    publish(&mirror, "/extensions/etcd", &v.gpg, &v.signer, &v.archive);
    let out = fetch(&v, &["--mirror", &mirror.url()]);
    assert!(out.status.success(), "{}", both(&out));
    assert!(v.server.requests().is_empty(), "the vendor is not asked");
    assert_eq!(
        lock(&v)["extensions"]["etcd"]["source"],
        format!("{}{RELEASE_DIR}/{ARCHIVE}", v.server.url()),
        "the lock records the declared source"
    );
    assert!(cached(&v).exists());
}

#[test]
fn debian_packages_are_left_to_lab_image_and_their_cached_image_checked() {
    let v = setup();
    let yaml = v.fleet.path().join("inventory/fleet.yaml");
    let text_before = std::fs::read_to_string(&yaml).unwrap();
    let tools = "  - name: tools\n    version: \"1.0\"\n    roles: [worker]\n    \
                 build:\n      deb: debian:etcd-client\nadmins:";
    std::fs::write(&yaml, text_before.replacen("admins:", tools, 1)).unwrap();
    let out = fetch(&v, &[]);
    assert!(out.status.success(), "{}", both(&out));
    assert!(
        text(&out.stdout).contains(
            "skipped extension tools 1.0: debian:etcd-client is built by `metalherd lab image`, \
             not fetched; no image cached yet"
        ),
        "{}",
        both(&out)
    );

    // As `lab image` would leave it: an image and its lock entry; then
    // the cached file is changed.
    super::ignition_apply::lock_extension(v.fleet.path(), "tools", b"the image");
    let cached = v.fleet.path().join("assets/extensions/tools/tools-1.0.raw");
    std::fs::create_dir_all(cached.parent().unwrap()).unwrap();
    std::fs::write(&cached, b"the image").unwrap();
    let out = fetch(&v, &[]);
    assert!(out.status.success(), "{}", both(&out));
    assert!(
        text(&out.stdout).contains("its cached image matches assets.lock"),
        "{}",
        both(&out)
    );
    std::fs::write(&cached, b"another image").unwrap();
    let out = fetch(&v, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    assert!(
        text(&out.stdout).contains(&format!(
            "FAIL  extension tools 1.0: extensions/tools/tools-1.0.raw: sha512 digest mismatch: \
             expected {}, got {}",
            sha512(b"the image"),
            sha512(b"another image")
        )),
        "{}",
        both(&out)
    );
}
