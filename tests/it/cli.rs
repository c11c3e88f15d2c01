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
    // With --output json a script gets a document on stdout too.
    let out = metalherd(dir.path(), &["--output", "json", "render"]);
    assert_eq!(out.status.code(), Some(2));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(&out.stdout)));
    assert_eq!(
        (&doc["ok"], &doc["usage"]),
        (&serde_json::json!(false), &serde_json::json!(true))
    );
    assert!(doc["error"].as_str().unwrap().contains("--out"), "{doc}");
    assert!(
        text(&out.stderr).contains("--out"),
        "clap's text stays on stderr"
    );
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
    // One line, and how to point metalherd at a fleet.
    assert_eq!(stderr.matches("cannot read").count(), 1, "{stderr}");
    assert!(
        stderr.contains("is not a fleet repository")
            && stderr.contains("--fleet DIR or METALHERD_FLEET"),
        "{stderr}"
    );
}

#[test]
fn ssh_and_exec_on_a_never_provisioned_fleet_refuse_and_make_no_keys() {
    // A user at the wrong fleet (the repo root, not the lab's): a key made
    // now is one no machine has, so connecting cannot work; say so.
    let fleet = example_fleet();
    for args in [
        &["ssh", "fra-cp-01", "--", "true"][..],
        &["exec", "--site", "fra", "--", "true"][..],
    ] {
        let out = metalherd(fleet.path(), args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains("has no SSH keys in its state")
                && stderr.contains("point --fleet at the fleet that was provisioned"),
            "{args:?}: {stderr}"
        );
        assert!(
            !fleet.path().join(".metalherd/state/ssh").exists()
                && !fleet.path().join(".metalherd/state/hostkeys").exists(),
            "{args:?} generated keys"
        );
    }
}

#[test]
fn lab_up_refuses_vms_that_would_not_fit_in_memory_before_starting_anything() {
    // (As root, as the tests run: `lab up` checks root first.)
    let dir = tempfile::tempdir().unwrap();
    let out = metalherd(dir.path(), &["init", "--lab", "lab"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let name = format!("mhmem{}", std::process::id() % 100_000);
    let fleet = dir.path().join("lab");
    let out = metalherd(
        &fleet,
        &["lab", "up", "--name", &name, "--memory", "1000000"],
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("the lab's 18 VMs may take")
            && stderr.contains("MiB available (MemAvailable)")
            && stderr.contains("--site SITE")
            && stderr.contains("--memory 512"),
        "{stderr}"
    );
    assert!(
        !std::path::Path::new("/run/netns").join(&name).exists(),
        "a namespace was made before the check"
    );
    assert!(
        !fleet.join(".metalherd/lab").exists(),
        "lab files were made"
    );
}

#[test]
fn state_show_of_an_unknown_site_says_so() {
    let fleet = example_fleet();
    let out = metalherd(fleet.path(), &["state", "show", "--site", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no site `nope` in fleet example"),
        "{}",
        text(&out.stderr)
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
    // Three files per machine, dnsmasq's config, and the marker that lets
    // the next render replace the directory.
    assert_eq!(files.len(), 6 * 3 + 2, "{files:?}");

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
            "muc/.metalherd-rendered",
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

/// A provision whose BMCs cannot be reached (no credentials in the
/// environment) powers nothing on: it records no machine `provisioning`,
/// says each machine's failure once (not on stdout and again on stderr),
/// leaves no provisioning window open, and is in the audit log; so are
/// power changes, whatever came of them.
#[test]
fn a_provision_that_powers_nothing_on_records_nothing_and_is_audited() {
    let fleet = example_fleet();
    let f = fleet.path();
    let out = metalherd(f, &["provision", "site", "fra"]);
    assert_eq!(out.status.code(), Some(1));
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    for m in [
        "fra-cp-01",
        "fra-cp-02",
        "fra-cp-03",
        "fra-wk-01",
        "fra-wk-02",
    ] {
        assert_eq!(
            said.matches(&format!("{m}: {m} (BMC")).count(),
            1,
            "{m} named once: {said}"
        );
    }
    let show = metalherd(f, &["--output", "json", "state", "show", "--site", "fra"]);
    let doc: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
    let states: Vec<&serde_json::Value> = doc["sites"][0]["machines"]
        .as_array()
        .map(|ms| ms.iter().map(|m| &m["state"]).collect())
        .unwrap_or_default();
    assert!(
        states.iter().all(|s| *s != "provisioning"),
        "nothing was powered on: {doc}"
    );
    let windows = metalherd(f, &["boot", "status", "--site", "fra"]);
    let windows = text(&windows.stdout);
    assert!(!windows.contains(" open "), "{windows}");
    assert!(
        windows.contains("the boot of provision site fra ended"),
        "{windows}"
    );

    let out = metalherd(f, &["power", "on", "fra-wk-01"]);
    assert_eq!(out.status.code(), Some(1));
    let audit = metalherd(f, &["--output", "json", "audit"]);
    let doc: serde_json::Value = serde_json::from_slice(&audit.stdout).unwrap();
    let entries = doc["entries"].as_array().unwrap_or_else(|| panic!("{doc}"));
    let provision = entries.iter().find(|e| e["action"] == "provision");
    assert_eq!(
        provision.map(|e| (&e["detail"]["site"], &e["detail"]["ok"])),
        Some((&serde_json::json!("fra"), &serde_json::json!(false))),
        "{doc}"
    );
    let power = entries.iter().find(|e| e["action"] == "power on");
    assert_eq!(
        power.map(|e| &e["detail"]["failed"]),
        Some(&serde_json::json!(["fra-wk-01"])),
        "{doc}"
    );
}

/// `scripts/lab-demo`'s first lines (`scripts/lib/as-root.sh`): as root it
/// runs on without sudo (minimal root installs have none); as a user it
/// re-runs itself with sudo; as a user without sudo it says to run it as
/// root. (The script's users are run with `setpriv`, so this needs root.)
#[test]
fn the_lab_demo_runs_as_root_without_sudo_and_re_runs_itself_with_sudo_otherwise() {
    let setpriv = super::require("setpriv", "util-linux");
    assert!(
        rustix::process::getuid().is_root(),
        "this test runs the script as another user with setpriv: run it as root"
    );
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::copy(repo().join("scripts/lib/as-root.sh"), d.join("as-root.sh")).unwrap();
    let fake = d.join("bin");
    std::fs::create_dir(&fake).unwrap();
    std::fs::write(fake.join("sudo"), "#!/bin/sh\necho \"sudo $*\"\n").unwrap();
    for p in [d, fake.as_path(), fake.join("sudo").as_path()] {
        std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(
        d.join("as-root.sh"),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let script = format!(
        ". {}/as-root.sh; as_root ./lab-demo fra; echo \"ran as $(id -u)\"",
        d.display()
    );
    let run = |user: Option<&str>, path: &str| {
        let mut cmd = match user {
            Some(uid) => {
                let mut c = std::process::Command::new(&setpriv);
                c.args([
                    &format!("--reuid={uid}"),
                    &format!("--regid={uid}"),
                    "--clear-groups",
                    "/bin/sh",
                ]);
                c
            }
            None => std::process::Command::new("/bin/sh"),
        };
        let out = cmd
            .args(["-c", &script])
            .current_dir(d)
            .env_clear()
            .env("PATH", path)
            .output()
            .unwrap();
        (out.status.code(), text(&out.stdout), text(&out.stderr))
    };
    // A PATH of only what the script needs (a real sudo may be in
    // /usr/bin), with or without the fake sudo before it.
    let only = d.join("only");
    std::fs::create_dir(&only).unwrap();
    for tool in ["id", "basename"] {
        let found = ["/usr/bin", "/bin"]
            .iter()
            .map(|b| std::path::Path::new(b).join(tool))
            .find(|p| p.exists())
            .unwrap();
        std::os::unix::fs::symlink(found, only.join(tool)).unwrap();
    }
    std::fs::set_permissions(&only, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let only = only.display().to_string();

    let (code, out, _) = run(None, &only);
    assert_eq!(
        (code, out.as_str()),
        (Some(0), "ran as 0\n"),
        "root, no sudo"
    );
    let (code, out, err) = run(Some("65534"), &format!("{}:{only}", fake.display()));
    assert_eq!(
        (code, out.as_str()),
        (Some(0), "sudo -- ./lab-demo fra\n"),
        "a user re-runs it with sudo: {err}"
    );
    assert!(
        err.contains("lab-demo: needs root; re-running with sudo"),
        "{err}"
    );
    let (code, out, err) = run(Some("65534"), &only);
    assert_eq!((code, out.as_str()), (Some(1), ""), "{err}");
    assert!(err.contains("there is no sudo: run it as root"), "{err}");
}

/// `render --out DIR` replaces only what it rendered: a `DIR/<site>` a
/// user made is refused by name and left as it was; an empty one, or one
/// metalherd rendered before, is replaced.
#[test]
fn render_never_replaces_a_directory_it_did_not_render() {
    let fleet = example_fleet();
    let f = fleet.path();
    let out = f.join("out");
    std::fs::create_dir_all(out.join("fra")).unwrap();
    std::fs::write(out.join("fra/notes.txt"), "mine").unwrap();
    std::fs::create_dir_all(out.join("ber")).unwrap();
    let said = metalherd(f, &["render", "--out", "out"]);
    assert_eq!(said.status.code(), Some(1), "{}", text(&said.stderr));
    let err = text(&said.stderr);
    assert!(
        err.contains("fra exists and metalherd did not render it (no .metalherd-rendered in it)"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("fra/notes.txt")).unwrap(),
        "mine"
    );
    std::fs::remove_dir_all(out.join("fra")).unwrap();
    for _ in 0..2 {
        let said = metalherd(f, &["render", "--out", "out"]);
        assert!(said.status.success(), "{}", text(&said.stderr));
        assert!(out.join("fra/.metalherd-rendered").exists());
        assert!(out.join("ber/ber-cp-01.ign").exists());
    }
}

/// One inline secret in a site's `bmc_defaults` is one error: the
/// machines that rely on those defaults are not each reported again as
/// lacking credentials.
#[test]
fn a_refused_default_credential_is_reported_once() {
    let fleet = example_fleet();
    let site = fleet.path().join("sites/muc.yaml");
    let text_before = std::fs::read_to_string(&site).unwrap();
    std::fs::write(
        &site,
        text_before.replace(
            "credentials: \"env:MUC_BMC_CREDENTIALS\"",
            "credentials: \"root:calvin-s3cret\"",
        ),
    )
    .unwrap();
    let out = metalherd(fleet.path(), &["inventory", "check"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("error: 1 problem in fleet"), "{stderr}");
    assert!(!stderr.contains("needs credentials"), "{stderr}");
    assert!(stderr.contains("bmc_defaults.credentials"), "{stderr}");
}
