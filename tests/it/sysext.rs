//! `assets::sysext`: images built from inputs made here with the real
//! `tar` and `dpkg-deb`, read back with the real `unsquashfs`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use metalherd::assets::sysext::{self, SysextError, SysextInput, SysextOs, SysextSpec};
use metalherd::assets::verify::{Algorithm, Expected};
use sha2::{Digest, Sha256, Sha512};

use super::{metalherd, require, text};

const ETCD: &[u8] = b"#!/bin/sh\necho etcd 3.5.16\n";
const ETCDCTL: &[u8] = b"#!/bin/sh\necho etcdctl 3.5.16\n";

fn sha256(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", text(&out.stderr));
    out.stdout
}

/// An etcd-like release tarball, made by GNU tar: a top directory with
/// two scripts and a README.
fn etcd_tarball(dir: &Path) -> PathBuf {
    let tar = require("tar", "tar");
    let top = dir.join("src/etcd-v3.5.16-linux-amd64");
    std::fs::create_dir_all(&top).unwrap();
    for (name, body) in [("etcd", ETCD), ("etcdctl", ETCDCTL), ("README.md", b"hi\n")] {
        std::fs::write(top.join(name), body).unwrap();
    }
    let out = dir.join("etcd-v3.5.16-linux-amd64.tar.gz");
    run(Command::new(tar)
        .arg("-czf")
        .arg(&out)
        .arg("-C")
        .arg(dir.join("src"))
        .arg("etcd-v3.5.16-linux-amd64"));
    out
}

/// A Debian package made by `dpkg-deb --build`: two programs in usr/bin,
/// a doc file elsewhere.
fn etcd_deb(dir: &Path) -> PathBuf {
    let dpkg_deb = require("dpkg-deb", "dpkg");
    let pkg = dir.join("pkg");
    std::fs::create_dir_all(pkg.join("DEBIAN")).unwrap();
    std::fs::create_dir_all(pkg.join("usr/bin")).unwrap();
    std::fs::create_dir_all(pkg.join("usr/share/doc/etcd-server")).unwrap();
    std::fs::write(
        pkg.join("DEBIAN/control"),
        "Package: etcd-server\nVersion: 3.4.23-4\nArchitecture: amd64\n\
         Maintainer: metalherd tests <tests@example.invalid>\nDescription: test package\n",
    )
    .unwrap();
    for (name, body) in [("etcd", ETCD), ("etcdctl", ETCDCTL)] {
        let p = pkg.join("usr/bin").join(name);
        std::fs::write(&p, body).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::write(pkg.join("usr/share/doc/etcd-server/copyright"), "x\n").unwrap();
    let out = dir.join("etcd-server_3.4.23-4_amd64.deb");
    run(Command::new(dpkg_deb)
        .args(["--root-owner-group", "--build"])
        .arg(&pkg)
        .arg(&out));
    out
}

fn spec(os: SysextOs, os_version: Option<&str>, binaries: &[&str], input: &Path) -> SysextSpec {
    SysextSpec {
        name: "etcd".into(),
        version: "3.5.16".into(),
        os,
        os_version: os_version.map(str::to_string),
        binaries: binaries.iter().map(|b| b.to_string()).collect(),
        expected: Expected {
            algorithm: Algorithm::Sha256,
            hex: sha256(input),
        },
    }
}

/// `unsquashfs -l`: every path in the image, without the root prefix.
fn listing(image: &Path) -> Vec<String> {
    let unsquashfs = require("unsquashfs", "squashfs-tools");
    let out = text(&run(Command::new(unsquashfs).arg("-l").arg(image)));
    out.lines()
        .filter_map(|l| l.strip_prefix("squashfs-root/"))
        .map(str::to_string)
        .collect()
}

fn cat(image: &Path, path: &str) -> Vec<u8> {
    let unsquashfs = require("unsquashfs", "squashfs-tools");
    run(Command::new(unsquashfs).arg("-cat").arg(image).arg(path))
}

const RELEASE: &str = "usr/lib/extension-release.d/extension-release.etcd";

fn expected_listing(bins: &[&str]) -> Vec<String> {
    let mut v = vec!["usr".to_string(), "usr/bin".to_string()];
    v.extend(bins.iter().map(|b| format!("usr/bin/{b}")));
    v.extend([
        "usr/lib".to_string(),
        "usr/lib/extension-release.d".to_string(),
        RELEASE.to_string(),
    ]);
    v
}

#[test]
fn sysext_from_tarball_holds_exactly_the_binary_and_release() {
    let dir = tempfile::tempdir().unwrap();
    let input = etcd_tarball(dir.path());
    let s = spec(
        SysextOs::Flatcar,
        None,
        &["etcd-v3.5.16-linux-amd64/etcd"],
        &input,
    );
    let out = dir.path().join("etcd.raw");
    let image = sysext::build(&s, &SysextInput::Archive(input), &out).unwrap();

    assert_eq!(image.path, out);
    assert_eq!(
        image.files,
        vec!["usr/bin/etcd".to_string(), RELEASE.to_string()]
    );
    assert_eq!(listing(&out), expected_listing(&["etcd"]));
    assert_eq!(cat(&out, "usr/bin/etcd"), ETCD);
    assert_eq!(
        text(&cat(&out, RELEASE)),
        "ID=flatcar\nSYSEXT_LEVEL=1.0\nARCHITECTURE=x86-64\nSYSEXT_ID=etcd\n\
         SYSEXT_VERSION_ID=3.5.16\n"
    );
    // Owners and modes as unsquashfs reads them.
    let unsquashfs = require("unsquashfs", "squashfs-tools");
    let long = text(&run(Command::new(unsquashfs).arg("-lln").arg(&out)));
    let line = |p: &str| {
        long.lines()
            .find(|l| l.ends_with(&format!("squashfs-root/{p}")))
            .unwrap_or_else(|| panic!("{p} not in {long}"))
            .to_string()
    };
    assert!(
        line("usr/bin/etcd").starts_with("-rwxr-xr-x 0/0 "),
        "{long}"
    );
    assert!(line(RELEASE).starts_with("-rw-r--r-- 0/0 "), "{long}");
    assert!(line("usr/bin").starts_with("drwxr-xr-x 0/0 "), "{long}");

    let meta = std::fs::metadata(&out).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o644);
    assert_eq!(image.size, meta.len());
    assert_eq!(
        image.sha512,
        hex::encode(Sha512::digest(std::fs::read(&out).unwrap()))
    );
    // Only the image is left beside it (and the input): no staging.
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["etcd-v3.5.16-linux-amd64.tar.gz", "etcd.raw", "src"]
    );
}

#[test]
fn sysext_from_deb_takes_every_usr_bin_file_for_debian_12() {
    let dir = tempfile::tempdir().unwrap();
    let input = etcd_deb(dir.path());
    let s = spec(SysextOs::Debian, Some("12"), &[], &input);
    let out = dir.path().join("etcd.raw");
    let image = sysext::build(&s, &SysextInput::Deb(input.clone()), &out).unwrap();
    assert_eq!(listing(&out), expected_listing(&["etcd", "etcdctl"]));
    assert_eq!(image.files.len(), 3);
    assert_eq!(cat(&out, "usr/bin/etcdctl"), ETCDCTL);
    assert_eq!(
        text(&cat(&out, RELEASE)),
        "ID=debian\nVERSION_ID=12\nARCHITECTURE=x86-64\nSYSEXT_ID=etcd\n\
         SYSEXT_VERSION_ID=3.5.16\n"
    );

    // Named, with or without the leading slash.
    let s = spec(SysextOs::Debian, Some("12"), &["/usr/bin/etcd"], &input);
    sysext::build(&s, &SysextInput::Deb(input), &out).unwrap();
    assert_eq!(listing(&out), expected_listing(&["etcd"]));

    // Not a package: dpkg-deb's reason, naming the file given.
    let junk = dir.path().join("junk.deb");
    std::fs::write(&junk, "not a package\n").unwrap();
    let s = spec(SysextOs::Debian, Some("12"), &[], &junk);
    let err = sysext::build(
        &s,
        &SysextInput::Deb(junk.clone()),
        &dir.path().join("j.raw"),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("not a Debian format archive") && err.contains(junk.to_str().unwrap()),
        "{err}"
    );
    assert!(!err.contains(".sysext-"), "{err}");
    assert!(!dir.path().join("j.raw").exists());
}

#[test]
fn sysext_release_file_per_os_target() {
    let dir = tempfile::tempdir().unwrap();
    let input = etcd_tarball(dir.path());
    let cases = [
        (SysextOs::Fedora, Some("41"), "ID=fedora\nVERSION_ID=41\n"),
        (
            SysextOs::Flatcar,
            Some("4081.2.0"),
            "ID=flatcar\nVERSION_ID=4081.2.0\n",
        ),
        (SysextOs::Any, None, "ID=_any\n"),
    ];
    for (os, v, head) in cases {
        let s = spec(os, v, &["etcd-v3.5.16-linux-amd64/etcd"], &input);
        let out = dir.path().join("etcd.raw");
        sysext::build(&s, &SysextInput::Archive(input.clone()), &out).unwrap();
        assert_eq!(
            text(&cat(&out, RELEASE)),
            format!("{head}ARCHITECTURE=x86-64\nSYSEXT_ID=etcd\nSYSEXT_VERSION_ID=3.5.16\n"),
            "{os:?}"
        );
    }
}

#[test]
fn sysext_builds_are_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let input = etcd_tarball(dir.path());
    let s = spec(
        SysextOs::Flatcar,
        None,
        &[
            "etcd-v3.5.16-linux-amd64/etcd",
            "etcd-v3.5.16-linux-amd64/etcdctl",
        ],
        &input,
    );
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    let first = sysext::build(
        &s,
        &SysextInput::Archive(input.clone()),
        &a.join("etcd.raw"),
    )
    .unwrap();
    // A second later, from elsewhere: clocks and paths must not leak in.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let second = sysext::build(&s, &SysextInput::Archive(input), &b.join("etcd.raw")).unwrap();
    assert_eq!(first.sha512, second.sha512);
    assert_eq!(
        std::fs::read(a.join("etcd.raw")).unwrap(),
        std::fs::read(b.join("etcd.raw")).unwrap()
    );
}

#[test]
fn sysext_digest_mismatch_is_refused_before_anything_is_built() {
    let dir = tempfile::tempdir().unwrap();
    let input = etcd_tarball(dir.path());
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let mut s = spec(
        SysextOs::Flatcar,
        None,
        &["etcd-v3.5.16-linux-amd64/etcd"],
        &input,
    );
    let actual = s.expected.hex.clone();
    s.expected.hex = "0".repeat(64);
    let err = sysext::build(
        &s,
        &SysextInput::Archive(input.clone()),
        &out_dir.join("etcd.raw"),
    )
    .unwrap_err();
    assert!(matches!(err, SysextError::Verify(_)), "{err:?}");
    let msg = err.to_string();
    for part in [input.to_str().unwrap(), "sha256", &"0".repeat(64), &actual] {
        assert!(msg.contains(part), "{msg} lacks {part}");
    }
    assert_eq!(std::fs::read_dir(&out_dir).unwrap().count(), 0);
}

#[test]
fn sysext_missing_binary_is_named_with_what_the_input_has() {
    let dir = tempfile::tempdir().unwrap();
    let input = etcd_tarball(dir.path());
    let s = spec(SysextOs::Flatcar, None, &["etcd"], &input);
    let out = dir.path().join("etcd.raw");
    let err = sysext::build(&s, &SysextInput::Archive(input), &out).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("not found in the input: etcd")
            && msg.contains("etcd-v3.5.16-linux-amd64/etcd"),
        "{msg}"
    );
    assert!(!out.exists());
}

/// A tarball with an entry named `name`, written with raw header bytes
/// (tar writers refuse `..`, an attacker's does not).
fn crafted_tarball(path: &Path, entries: &[(&str, tar::EntryType, &str, &[u8])]) {
    let file = std::fs::File::create(path).unwrap();
    let gz = flate2::write::GzEncoder::new(file, flate2::Compression::default());
    let mut builder = tar::Builder::new(gz);
    for (name, kind, link, body) in entries {
        let mut header = tar::Header::new_gnu();
        header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        header.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        header.set_entry_type(*kind);
        header.set_size(body.len() as u64);
        header.set_mode(0o755);
        header.set_cksum();
        builder.append(&header, *body).unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap();
}

#[test]
fn sysext_refuses_unsafe_paths_and_symlinks() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("etcd.raw");
    let regular = tar::EntryType::Regular;

    let evil = dir.path().join("evil.tar.gz");
    crafted_tarball(
        &evil,
        &[
            ("../escape", regular, "", b"x"),
            ("bin/etcd", regular, "", ETCD),
        ],
    );
    let s = spec(SysextOs::Flatcar, None, &["bin/etcd"], &evil);
    let err = sysext::build(&s, &SysextInput::Archive(evil), &out).unwrap_err();
    assert!(err.to_string().contains("unsafe path `../escape`"), "{err}");
    assert!(!out.exists());

    let link = dir.path().join("link.tar.gz");
    crafted_tarball(
        &link,
        &[("bin/etcd", tar::EntryType::Symlink, "/etc/shadow", b"")],
    );
    let s = spec(SysextOs::Flatcar, None, &["bin/etcd"], &link);
    let err = sysext::build(&s, &SysextInput::Archive(link), &out).unwrap_err();
    assert!(err.to_string().contains("not a regular file"), "{err}");
    assert!(!out.exists());
}

#[test]
fn sysext_build_cli_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let input = etcd_tarball(dir.path());
    let sha512 = hex::encode(Sha512::digest(std::fs::read(&input).unwrap()));
    let out = dir.path().join("etcd.raw");
    // Run outside any fleet: sysext build needs none.
    let args = |out: &Path, digest: &str| -> Vec<String> {
        [
            "assets",
            "sysext",
            "build",
            "--name",
            "etcd",
            "--version",
            "3.5.16",
            "--os",
            "debian",
            "--os-version",
            "12",
            "--archive",
            input.to_str().unwrap(),
            "--binary",
            "etcd-v3.5.16-linux-amd64/etcd",
            "--binary",
            "etcd-v3.5.16-linux-amd64/etcdctl",
            "--sha512",
            digest,
            "--out",
            out.to_str().unwrap(),
            "--output",
            "json",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let a = args(&out, &sha512);
    let result = metalherd(
        dir.path(),
        &a.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert!(result.status.success(), "{}", text(&result.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&result.stdout).unwrap();
    assert_eq!(doc["ok"], true);
    assert_eq!(
        doc["image"]["sha512"],
        hex::encode(Sha512::digest(std::fs::read(&out).unwrap()))
    );
    assert_eq!(doc["image"]["files"][1], "usr/bin/etcdctl");
    assert!(doc["extension_release"]
        .as_str()
        .unwrap()
        .starts_with("ID=debian\nVERSION_ID=12\n"));
    assert_eq!(listing(&out), expected_listing(&["etcd", "etcdctl"]));

    // Text output: the path, size and sha512 on one line.
    let mut t = a.clone();
    t.truncate(t.len() - 2);
    let result = metalherd(
        dir.path(),
        &t.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert!(result.status.success(), "{}", text(&result.stderr));
    let first = text(&result.stdout).lines().next().unwrap().to_string();
    let size = std::fs::metadata(&out).unwrap().len();
    assert_eq!(
        first,
        format!(
            "built {}: {size} bytes, sha512 {}",
            out.display(),
            doc["image"]["sha512"].as_str().unwrap()
        )
    );

    // A wrong digest: exit 1, the reason, no image.
    let other = dir.path().join("other.raw");
    let mut bad = args(&other, &"1".repeat(128));
    bad.truncate(bad.len() - 2);
    let result = metalherd(
        dir.path(),
        &bad.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert_eq!(result.status.code(), Some(1));
    assert!(
        text(&result.stderr).contains("sha512 digest mismatch"),
        "{}",
        text(&result.stderr)
    );
    assert!(!other.exists());
}
