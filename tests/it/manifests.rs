//! The control plane's static-pod manifests checked by the real
//! `kubernetes-validate --strict` (Kubernetes' own OpenAPI schemas, no
//! unknown fields), with a negative control so the check cannot pass
//! vacuously, and a snapshot of fra-cp-01's kube-apiserver manifest.

use std::path::Path;
use std::process::Command;

use metalherd::fleet::{OsFlavor, Role};
use metalherd::render::manifests::control_plane_manifests;

use super::{repo, require_pip, text};

/// The schema version to validate against: the fleet's `v1.31.2` as
/// `1.31.0`, the form of kubernetes-validate's bundled schema directories
/// (`kubernetes-json-schema/v1.31.0-local-strict`; 1.37.0 bundles 1.25 to
/// 1.37, one per minor release). Patch releases do not change the API.
fn schema_version(fleet_version: &str) -> (String, String) {
    let v = fleet_version.trim_start_matches('v');
    let mut parts = v.split('.');
    let (major, minor) = (parts.next().unwrap(), parts.next().unwrap());
    (format!("{major}.{minor}.0"), format!("{major}.{minor}"))
}

/// Runs `kubernetes-validate --strict -k <version>` on `files`; returns
/// whether it succeeded and what it said.
fn validate(version: &str, files: &[&Path]) -> (bool, String) {
    let program = require_pip("kubernetes-validate", "kubernetes-validate");
    let out = Command::new(program)
        .args(["--strict", "-k", version])
        .args(files)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!("{}{}", text(&out.stdout), text(&out.stderr)),
    )
}

#[test]
fn control_plane_manifests_pass_kubernetes_validate_strict() {
    let fleet = metalherd::fleet::load(repo()).unwrap();
    assert_eq!(
        fleet.kubernetes.version, "v1.31.2",
        "the example fleet's version; update this test's comments when it changes"
    );
    let (version, minor) = schema_version(&fleet.kubernetes.version);
    // The templates mount the OS's CA directories by flavor: check both.
    let mut fcos = fleet.clone();
    fcos.os.flavor = OsFlavor::Fcos;
    let dir = tempfile::tempdir().unwrap();
    let mut paths = Vec::new();
    for (flavor, fleet) in [("flatcar", &fleet), ("fcos", &fcos)] {
        let site = fleet.site("fra").unwrap();
        for m in site
            .machines
            .iter()
            .filter(|m| m.role == Role::ControlPlane)
        {
            for f in control_plane_manifests(fleet, site, m, 1).unwrap() {
                let name = Path::new(&f.path).file_name().unwrap().to_str().unwrap();
                let path = dir.path().join(format!("{flavor}-{}-{name}", m.name));
                std::fs::write(&path, f.contents.as_bytes()).unwrap();
                paths.push(path);
            }
        }
    }
    assert_eq!(
        paths.len(),
        18,
        "2 flavors x 3 control planes x 3 manifests"
    );
    let fcos_apiserver = std::fs::read_to_string(&paths[9]).unwrap();
    assert!(
        fcos_apiserver.contains("path: /etc/pki\n"),
        "{fcos_apiserver}"
    );

    let files: Vec<&Path> = paths.iter().map(|p| p.as_path()).collect();
    let (ok, said) = validate(&version, &files);
    assert!(ok, "kubernetes-validate rejected a manifest:\n{said}");
    // A kind it has no schema for is only a warning with exit status 0:
    // every file must say it passed, against the fleet's minor version.
    assert!(!said.contains("WARN"), "{said}");
    for (path, component) in paths.iter().zip(
        [
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
        ]
        .iter()
        .cycle(),
    ) {
        let line = format!(
            "INFO {} passed for resource pod/{component} against version {minor}",
            path.display()
        );
        assert!(said.contains(&line), "want `{line}` in:\n{said}");
    }
}

#[test]
fn kubernetes_validate_strict_rejects_an_unknown_field() {
    let fleet = metalherd::fleet::load(repo()).unwrap();
    let (version, _) = schema_version(&fleet.kubernetes.version);
    let site = fleet.site("fra").unwrap();
    let cp = site.machines.iter().find(|m| m.role == Role::ControlPlane);
    let files = control_plane_manifests(&fleet, site, cp.unwrap(), 1).unwrap();
    let good = files[0].contents.as_str();
    // The same manifest, once with a field no Pod has and once with a
    // well-known field in the wrong place.
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "unknown-field.yaml",
            good.replace(
                "  hostNetwork: true\n",
                "  hostNetwork: true\n  hostNetworking: true\n",
            ),
            "spec: Additional properties are not allowed ('hostNetworking' was unexpected)",
        ),
        (
            "misplaced-field.yaml",
            good.replace(
                "      imagePullPolicy: IfNotPresent\n",
                "      imagePullPolicy: IfNotPresent\n      priorityClassName: system-node-critical\n",
            ),
            "'priorityClassName' was unexpected",
        ),
    ];
    for (name, bad, expected) in &cases {
        assert_ne!(bad, good, "{name}: the edit applied");
        let path = dir.path().join(name);
        std::fs::write(&path, bad).unwrap();
        let (ok, said) = validate(&version, &[&path]);
        assert!(!ok, "{name} must be rejected:\n{said}");
        assert!(
            said.contains("did not validate") && said.contains(expected),
            "{name}: want `{expected}` in:\n{said}"
        );
    }
    // And the unedited manifest passes, so the rejections are the edits'.
    let path = dir.path().join("good.yaml");
    std::fs::write(&path, good).unwrap();
    let (ok, said) = validate(&version, &[&path]);
    assert!(ok, "{said}");
}

#[test]
fn snapshot_of_the_kube_apiserver_manifest() {
    let fleet = metalherd::fleet::load(repo()).unwrap();
    let (site, machine) = fleet.machine("fra-cp-01").unwrap();
    let files = control_plane_manifests(&fleet, site, machine, 1).unwrap();
    assert_eq!(
        files[0].path,
        "/etc/kubernetes/manifests/kube-apiserver.yaml"
    );
    insta::assert_snapshot!("fra-cp-01.kube-apiserver.yaml", files[0].contents.as_str());
}
