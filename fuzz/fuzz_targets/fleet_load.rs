//! The fleet loader on arbitrary files: the input is split at `\0` into
//! `inventory/fleet.yaml`, `sites/fra.yaml` and `inventory/fra.yaml` (the
//! corpus starts from the example fleet's). Errors are fine, a panic is
//! not; every diagnostic names a file or directory.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

fn dir() -> &'static std::path::Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("inventory")).unwrap();
        std::fs::create_dir_all(d.path().join("sites")).unwrap();
        d
    })
    .path()
}

fuzz_target!(|data: &[u8]| {
    let root = dir();
    let mut parts = data.splitn(3, |b| *b == 0);
    for file in [
        "inventory/fleet.yaml",
        "sites/fra.yaml",
        "inventory/fra.yaml",
    ] {
        std::fs::write(root.join(file), parts.next().unwrap_or_default()).unwrap();
    }
    if let Err(e) = metalherd::fleet::load(root) {
        for d in &e.diagnostics {
            let shown = d.to_string();
            assert!(
                !shown.starts_with(':'),
                "a diagnostic without its file: {shown}"
            );
        }
    }
});
