//! metalherd's integration tests: one binary (faster to build and link),
//! one module per area, sharing the helpers below. Tests that need a real
//! program (ignition-validate, ignition, dnsmasq) fail with the command
//! that installs it; `./scripts/test` installs them all.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod assets;
mod assets_lock;
mod bootstrap;
mod broken_fleets;
mod butane_compat;
mod cli;
mod crash;
mod docs;
mod early_errors;
mod etcd_cluster;
mod faults;
mod hosts;
mod httpd;
mod ignition_apply;
mod injection;
mod installs;
mod kubeconfig;
mod lab;
mod lifecycle;
mod lockdown;
mod machines;
mod manifests;
mod metrics;
mod netboot;
mod pki;
mod power;
mod render;
mod scale;
mod secrets;
mod serve;
mod state;
mod state_etcd_smoke;
mod sysext;
mod theft;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The lab's scenarios ([`lab::scenarios`]): by far the longest test, so
/// it is named to sort first (libtest starts tests in name order) and runs
/// from the start on one test thread while the rest of the suite shares
/// the other.
#[test]
fn a_lab_first() {
    lab::scenarios();
}

/// The repository, which is also the shipped example fleet.
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A fresh copy of the example fleet (only its four fleet directories) in
/// a temporary directory.
pub fn example_fleet() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    for (path, text) in metalherd::example::FILES {
        let target = dir.path().join(path);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::write(&target, text).unwrap();
    }
    dir
}

/// Runs the metalherd binary with `args`, in `cwd`, with a clean environment.
pub fn metalherd(cwd: &Path, args: &[&str]) -> Output {
    metalherd_env(cwd, args, &[])
}

/// Like [`metalherd`], with extra environment variables (`PATH` may be
/// among them, replacing the inherited one).
pub fn metalherd_env(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_metalherd"));
    cmd.args(args)
        .current_dir(cwd)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run metalherd")
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The path of a program the test needs, or a failure that says how to
/// install it. Never a silent skip.
pub fn require(program: &str, debian_package: &str) -> PathBuf {
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
    {
        let candidate = dir.join(program);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "{program} is not installed: run `apt-get install -y {debian_package}` \
         (or ./scripts/test, which installs everything the tests need)"
    );
}

/// Like [`require`], for a program from PyPI, which `./scripts/test`
/// installs into `target/test-venv` and puts on PATH.
pub fn require_pip(program: &str, pip_package: &str) -> PathBuf {
    let venv = repo().join("target/test-venv/bin").join(program);
    if venv.is_file() {
        return venv;
    }
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        if dir.join(program).is_file() {
            return dir.join(program);
        }
    }
    panic!(
        "{program} is not installed: run ./scripts/test (it installs {pip_package} into \
         target/test-venv), or `pip install {pip_package}`"
    );
}

/// Renders `fleet` with the CLI into a new temporary directory.
pub fn render_with_cli(fleet: &Path) -> tempfile::TempDir {
    let out = tempfile::tempdir().unwrap();
    let result = metalherd(fleet, &["render", "--out", out.path().to_str().unwrap()]);
    assert!(
        result.status.success(),
        "render failed: {}",
        text(&result.stderr)
    );
    out
}

/// Every file below `dir`, relative paths sorted.
pub fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().to_path_buf());
            }
        }
    }
    out.sort();
    out
}
