//! The Butane-style transpiler on arbitrary YAML: errors are fine, a panic
//! is not; whatever it accepts must serialize to Ignition JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;
use metalherd::render::{butane, to_json};

fuzz_target!(|data: &[u8]| {
    let Ok(yaml) = std::str::from_utf8(data) else {
        return;
    };
    for variant in ["flatcar", "fcos"] {
        let mut resolve = |path: &str| -> Result<String, String> {
            if path.len() < 64 {
                Ok(format!("contents of {path}\n"))
            } else {
                Err(format!("no such file: {path}"))
            }
        };
        if let Ok(config) = butane::transpile(yaml, variant, &mut resolve) {
            let json = to_json(&config);
            assert!(json.starts_with('{'), "{json}");
        }
    }
});
