//! The command line as a user meets it: exit codes, `init`, JSON output,
//! completions, and that no secret reaches the output.

use super::{example_fleet, files_below, metalherd, repo, text};

#[test]
fn usage_errors_exit_2_and_help_explains() {
    let dir = tempfile::tempdir().unwrap();
    let out = metalherd(dir.path(), &["render"]);
    assert_eq!(out.status.code(), Some(2), "missing --out is a usage error");
    assert!(text(&out.stderr).contains("--out"), "{}", text(&out.stderr));
    let out = metalherd(dir.path(), &["no-such-command"]);
    assert_eq!(out.status.code(), Some(2));
    let help = metalherd(dir.path(), &["render", "--help"]);
    assert!(help.status.success());
    assert!(
        text(&help.stdout).contains("DIR/<site>/<machine>.ign"),
        "{}",
        text(&help.stdout)
    );
}

#[test]
fn a_missing_fleet_fails_with_exit_1_and_says_where() {
    let dir = tempfile::tempdir().unwrap();
    let out = metalherd(dir.path(), &["inventory", "check"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("inventory/fleet.yaml: cannot read"),
        "{stderr}"
    );
}

#[test]
fn init_writes_a_fleet_that_checks_and_renders_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("myfleet");
    let out = metalherd(dir.path(), &["init", "myfleet"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let check = metalherd(&target, &["inventory", "check"]);
    assert!(check.status.success(), "{}", text(&check.stderr));
    let ignored = std::fs::read_to_string(target.join(".gitignore")).unwrap();
    for secret in ["/.metalherd/", "/evidence/", "*.age"] {
        assert!(ignored.lines().any(|l| l == secret), "{secret}: {ignored}");
    }

    let before = std::fs::read_to_string(target.join("sites/fra.yaml")).unwrap();
    std::fs::write(target.join("sites/fra.yaml"), "# mine\n").unwrap();
    let again = metalherd(dir.path(), &["init", "myfleet"]);
    assert_eq!(again.status.code(), Some(1));
    let said = text(&again.stderr);
    assert!(
        said.contains("is not empty") && said.contains("nothing was written"),
        "{said}"
    );

    // An existing empty directory is fine, and no staging directory is left.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let out = metalherd(dir.path(), &["init", "empty"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(empty.join("inventory/fleet.yaml").exists());
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.starts_with('.')), "{names:?}");
    assert_eq!(
        std::fs::read_to_string(target.join("sites/fra.yaml")).unwrap(),
        "# mine\n"
    );
    assert_ne!(before, "# mine\n");
}

#[test]
fn check_and_show_speak_json() {
    let out = metalherd(repo(), &["--output", "json", "inventory", "check"]);
    assert!(out.status.success());
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["ok"], true);
    assert_eq!(doc["machines"], 18);

    let out = metalherd(
        repo(),
        &["--output", "json", "inventory", "show", "--site", "ber"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let sites = doc["sites"].as_array().unwrap();
    assert_eq!(sites.len(), 1);
    assert_eq!(sites[0]["name"], "ber");
    assert_eq!(sites[0]["machines"].as_array().unwrap().len(), 6);
    assert_eq!(sites[0]["machines"][0]["mac"], "52:54:00:be:00:01");
    assert_eq!(
        sites[0]["machines"][0]["bmc"]["credentials"],
        "env:BER_BMC_CREDENTIALS"
    );

    let out = metalherd(repo(), &["inventory", "show", "--site", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no site `nope`"));
}

#[test]
fn completions_are_printed() {
    let out = metalherd(repo(), &["completions", "bash"]);
    assert!(out.status.success());
    assert!(text(&out.stdout).contains("metalherd"));
}

#[test]
fn render_selects_a_site_or_a_machine() {
    let fleet = example_fleet();
    let out = tempfile::tempdir().unwrap();
    let o = out.path().to_str().unwrap();
    let r = metalherd(
        fleet.path(),
        &["--output", "json", "render", "--site", "ber", "--out", o],
    );
    assert!(r.status.success(), "{}", text(&r.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(doc["machines"].as_array().unwrap().len(), 6);
    let files = files_below(out.path());
    assert!(files.iter().all(|f| f.starts_with("ber")), "{files:?}");
    assert_eq!(files.len(), 6 * 3 + 1, "{files:?}");

    let out2 = tempfile::tempdir().unwrap();
    let r = metalherd(
        fleet.path(),
        &[
            "render",
            "--machine",
            "muc-wk-02",
            "--out",
            out2.path().to_str().unwrap(),
        ],
    );
    assert!(r.status.success(), "{}", text(&r.stderr));
    let files: Vec<String> = files_below(out2.path())
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    assert_eq!(
        files,
        [
            "muc/muc-wk-02.final.ign",
            "muc/muc-wk-02.ign",
            "muc/muc-wk-02.ipxe"
        ]
    );

    let r = metalherd(
        fleet.path(),
        &["render", "--machine", "nope-01", "--out", o],
    );
    assert_eq!(r.status.code(), Some(1));
    assert!(text(&r.stderr).contains("no machine `nope-01`"));
}

#[test]
fn a_template_error_names_the_file_and_writes_nothing() {
    let fleet = example_fleet();
    let worker = fleet.path().join("ignition/worker.yaml");
    let yaml = std::fs::read_to_string(&worker).unwrap();
    std::fs::write(
        &worker,
        yaml.replace(
            "      enabled: true\n",
            "      enabled: true\n      colour: red\n",
        ),
    )
    .unwrap();
    let out = tempfile::tempdir().unwrap();
    let r = metalherd(
        fleet.path(),
        &["render", "--out", out.path().to_str().unwrap()],
    );
    assert_eq!(r.status.code(), Some(1));
    let stderr = text(&r.stderr);
    assert!(stderr.contains("ignition/worker.yaml"), "{stderr}");
    assert!(stderr.contains("systemd.units[0].colour"), "{stderr}");
    assert!(stderr.contains("unknown key"), "{stderr}");
    assert!(
        files_below(out.path()).is_empty(),
        "nothing may be written on a template error"
    );
}

#[test]
fn state_keys_are_private_and_never_printed() {
    use std::os::unix::fs::MetadataExt;
    let fleet = example_fleet();
    let out = tempfile::tempdir().unwrap();
    let r = metalherd(
        fleet.path(),
        &[
            "--output",
            "json",
            "-v",
            "render",
            "--out",
            out.path().to_str().unwrap(),
        ],
    );
    assert!(r.status.success(), "{}", text(&r.stderr));
    let printed = format!("{}{}", text(&r.stdout), text(&r.stderr));
    assert!(!printed.contains("PRIVATE KEY"), "{printed}");
    let state = fleet.path().join(".metalherd/state");
    let key = state.join("hostkeys/fra/fra-cp-01/ssh_host_ed25519_key");
    assert_eq!(std::fs::metadata(&key).unwrap().mode() & 0o777, 0o600);
    assert_eq!(
        std::fs::metadata(key.parent().unwrap()).unwrap().mode() & 0o777,
        0o700
    );
    assert_eq!(
        std::fs::metadata(state.join("ssh/id_ed25519"))
            .unwrap()
            .mode()
            & 0o777,
        0o600
    );
    let private = std::fs::read_to_string(&key).unwrap();
    let body: String = private.lines().nth(1).unwrap().to_string();
    assert!(!printed.contains(&body));
    for f in files_below(out.path()) {
        let mode = std::fs::metadata(out.path().join(&f)).unwrap().mode() & 0o777;
        let want = if f.extension().is_some_and(|e| e == "ign") {
            0o600
        } else {
            0o644
        };
        assert_eq!(mode, want, "{}", f.display());
    }
    assert_eq!(
        std::fs::metadata(out.path().join("fra")).unwrap().mode() & 0o777,
        0o700
    );
}

/// `metalherd … | head`: when the reader has gone, the output ends quietly
/// with SIGPIPE's exit code (141), whether it is text (`println!`) or JSON,
/// never with a panic and a backtrace.
#[test]
fn a_reader_that_went_away_ends_the_output_quietly() {
    let fleet = example_fleet();
    for args in [
        &["inventory", "show"][..],
        &["--output", "json", "inventory", "show"][..],
    ] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_metalherd"))
            .args(args)
            .current_dir(fleet.path())
            .env("RUST_BACKTRACE", "1")
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap();
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(141), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(!stderr.contains("Broken pipe"), "{args:?}: {stderr}");
    }
}

#[test]
fn keygen_out_writes_a_private_key_file_that_the_state_then_uses() {
    use std::os::unix::fs::PermissionsExt;
    let fleet = example_fleet();
    let f = fleet.path();
    let out = metalherd(f, &["state", "keygen", "--out", "keys/state.age"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(said.contains("wrote keys/state.age (0600)"), "{said}");
    assert!(
        !said.contains("AGE-SECRET-KEY"),
        "the key was printed: {said}"
    );
    let key = f.join("keys/state.age");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::metadata(f.join("keys"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o700
    );
    let first = std::fs::read(&key).unwrap();
    let again = metalherd(f, &["state", "keygen", "--out", "keys/state.age"]);
    assert_eq!(again.status.code(), Some(1));
    assert!(
        text(&again.stderr).contains("an existing key is never overwritten"),
        "{}",
        text(&again.stderr)
    );
    assert_eq!(
        std::fs::read(&key).unwrap(),
        first,
        "the key was overwritten"
    );
    // The fleet uses it: secrets are sealed with it.
    let yaml = f.join("inventory/fleet.yaml");
    let text_yaml = std::fs::read_to_string(&yaml).unwrap();
    let start = text_yaml.find("state:\n").unwrap();
    let end = text_yaml.find("traffic:\n").unwrap();
    std::fs::write(
        &yaml,
        format!(
            "{}state:\n  backend: local\n  path: .metalherd/state\n  encryption_key: file:keys/state.age\n{}",
            &text_yaml[..start],
            &text_yaml[end..]
        ),
    )
    .unwrap();
    let render = metalherd(f, &["render", "--out", "out"]);
    assert!(render.status.success(), "{}", text(&render.stderr));
    // A key file others may read is refused.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let refused = metalherd(f, &["render", "--out", "out2"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        text(&refused.stderr).contains("is open to other users (mode 0644)"),
        "{}",
        text(&refused.stderr)
    );
}
