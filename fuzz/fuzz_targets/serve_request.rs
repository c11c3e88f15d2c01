//! The boot server's routes, in-process, on arbitrary requests: the input's
//! first line is `METHOD URI`, the rest is the body. Served from the example
//! fleet, every machine's provisioning window open. No request may panic or
//! get a 5xx.
#![no_main]

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Method, Request};
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;

struct Fixture {
    _fleet: tempfile::TempDir,
    app: axum::Router,
    rt: tokio::runtime::Runtime,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let fleet = tempfile::tempdir().unwrap();
        for (path, text) in metalherd::example::FILES {
            let p = fleet.path().join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        let model = metalherd::fleet::load(fleet.path()).unwrap();
        let content = metalherd::serve::content::build(&model, &[]).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // Every machine's provisioning window open (for a day): the
        // fuzzer reaches token issue, delivery and the refusals after it.
        let store = metalherd::state::memory::MemoryStore::new();
        for m in model.sites.iter().flat_map(|s| &s.machines) {
            rt.block_on(metalherd::state::provisioning::open(
                &store,
                &m.name,
                "fuzz",
                Duration::from_secs(86_400),
            ))
            .unwrap();
        }
        let shared = metalherd::serve::Shared::new(
            content,
            Arc::new(store),
            fleet.path().join("assets"),
            Duration::from_secs(600),
        );
        let app = metalherd::serve::router(Arc::new(shared));
        Fixture {
            _fleet: fleet,
            app,
            rt,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let split = data.iter().position(|b| *b == b'\n').unwrap_or(data.len());
    let line = String::from_utf8_lossy(&data[..split]);
    let body = data.get(split + 1..).unwrap_or_default().to_vec();
    let (method, uri) = line.split_once(' ').unwrap_or(("GET", &line));
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return;
    };
    let Ok(request) = Request::builder()
        .method(method)
        .uri(uri)
        .extension(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 40000))))
        .body(Body::from(body))
    else {
        return;
    };
    let response =
        f.rt.block_on(f.app.clone().oneshot(request))
            .expect("the router is infallible");
    assert!(
        !response.status().is_server_error(),
        "{} for {line:?}",
        response.status()
    );
});
