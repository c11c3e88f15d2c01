//! `metalherd serve`: the boot server. Machines chain from `/boot.ipxe` to
//! their own `/ipxe` script. Only a machine in an open provisioning window
//! ([`crate::state::provisioning`], shared through the state store by every
//! boot server) gets a script whose Ignition URL carries a fresh one-time
//! token; outside one it gets a script that boots its local disk (or, with
//! no disk, says why and stops). `/ignition` honours a token once, for its
//! MAC only, within a TTL, and delivers one Ignition per window: the first
//! delivery is recorded in the window by compare-and-swap and revokes every
//! other token of the MAC; any later `/ipxe` or `/ignition` for the machine
//! in that window is refused as a possible theft and recorded with the
//! client's address. Once an install stage was delivered, the next network
//! boot in the window is the installed system's: it boots the local disk.
//! A first-boot report closes the window. `HEAD` on `/ipxe` and
//! `/ignition` is refused: a health check must not burn a token.
//! Everything served is rendered at start-up ([`content`]) and on SIGHUP;
//! a fleet that fails to load on reload leaves the previous one serving.
//!
//! Logs: one line per request at info (method, path without the query —
//! so never a token —, status, MAC, duration).

pub mod content;
mod files;
pub mod metrics;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use axum::extract::{ConnectInfo, MatchedPath, Path as UrlPath, Query, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};

use crate::fleet::{self, MacAddr, SiteName};
use crate::state::provisioning::{self, Verdict};
use crate::state::StateStore;
use content::Content;
use metrics::Metrics;

pub struct Options {
    pub fleet_root: PathBuf,
    pub listen: SocketAddr,
    pub sites: Vec<SiteName>,
    pub assets_dir: PathBuf,
    pub token_ttl: Duration,
}

/// Where a machine is in its boot, as seen from here.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    IpxeServed,
    IgnitionServed,
    /// An Ignition request for this machine was refused (`refused` says why).
    IgnitionRefused,
    /// It fetched an extension image whose bytes here differ from the pin:
    /// its Ignition will refuse it and the boot fails (`refused` says which).
    ExtensionMismatch,
    Reported,
    /// It asked `/ipxe` outside a provisioning window and was told to boot
    /// its local disk (or to stop, with no disk).
    OutsideWindow,
    /// Its install stage was delivered in this window: it was told to boot
    /// the installed system from its disk.
    BootingDisk,
}

#[derive(Clone, Debug, Serialize)]
struct Seen {
    last_request_unix: u64,
    client: String,
    stage: Stage,
    /// What the machine reported, and whether it differs from the key
    /// metalherd generated.
    host_key_fingerprint: Option<String>,
    host_key_mismatch: bool,
    /// Why the latest refused Ignition request was refused.
    refused: Option<String>,
    /// Who got the machine's latest Ignition.
    ignition_client: Option<String>,
    /// A token of this machine's was presented after its Ignition had gone
    /// to another request: someone else may hold its config.
    possible_theft: bool,
}

struct Token {
    mac: MacAddr,
    issued: Instant,
    used: bool,
    /// Revoked when another token of its MAC was used: the client that
    /// got the Ignition then.
    revoked: Option<String>,
}

/// Tokens in the order they were issued, which is also the order they
/// expire in: the oldest are dropped first, in O(1), when the table is
/// full or they have expired. Used tokens stay until then, so a replay is
/// recognised as one.
#[derive(Default)]
struct Tokens {
    map: HashMap<String, Token>,
    order: std::collections::VecDeque<String>,
}

impl Tokens {
    fn insert(&mut self, token: String, mac: MacAddr, ttl: Duration) {
        while let Some(oldest) = self.order.front() {
            let expired = self
                .map
                .get(oldest)
                .is_none_or(|t| t.issued.elapsed() > ttl * 2);
            if !expired && self.map.len() < MAX_TOKENS {
                break;
            }
            if let Some(old) = self.order.pop_front() {
                self.map.remove(&old);
            }
        }
        self.order.push_back(token.clone());
        self.map.insert(
            token,
            Token {
                mac,
                issued: Instant::now(),
                used: false,
                revoked: None,
            },
        );
    }

    fn get_mut(&mut self, token: &str) -> Option<&mut Token> {
        self.map.get_mut(token)
    }

    /// Every unused token of `mac`: its Ignition went to `client`.
    fn revoke_others(&mut self, mac: MacAddr, client: &str) {
        for t in self.map.values_mut() {
            if t.mac == mac && !t.used && t.revoked.is_none() {
                t.revoked = Some(client.to_string());
            }
        }
    }
}

/// Outstanding tokens are bounded: a flood of `/ipxe` requests cannot
/// grow memory without limit.
const MAX_TOKENS: usize = 100_000;

/// A report is a fingerprint in a small JSON document.
const MAX_REPORT_BYTES: usize = 4096;

/// 128 random bits, hex: tokens and report secrets.
fn random_hex() -> String {
    let mut bytes = [0u8; 16];
    OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

pub struct Shared {
    content: RwLock<Arc<Content>>,
    /// Where the provisioning windows are (the fleet's state store).
    store: RwLock<Arc<dyn StateStore>>,
    tokens: Mutex<Tokens>,
    seen: Mutex<HashMap<String, Seen>>,
    /// Per machine, the report secret of its latest Ignition.
    report_secrets: Mutex<HashMap<String, String>>,
    pub metrics: Metrics,
    assets: PathBuf,
    ttl: Duration,
    /// sha512 of served extension images, by path, size and mtime: each
    /// file is hashed once, not on every machine's fetch.
    digests: Mutex<HashMap<PathBuf, (u64, SystemTime, String)>>,
}

impl Shared {
    /// A server's state: what it serves, where its assets are, how long a
    /// token lives. (The fuzz target `serve_request` drives [`router`] with
    /// it in-process.)
    pub fn new(
        content: Content,
        store: Arc<dyn StateStore>,
        assets: PathBuf,
        ttl: Duration,
    ) -> Shared {
        Shared {
            content: RwLock::new(Arc::new(content)),
            store: RwLock::new(store),
            tokens: Mutex::new(Tokens::default()),
            seen: Mutex::new(HashMap::new()),
            report_secrets: Mutex::new(HashMap::new()),
            metrics: Metrics::default(),
            assets,
            ttl,
            digests: Mutex::new(HashMap::new()),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn content(&self) -> Arc<Content> {
        self.content
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn store(&self) -> Arc<dyn StateStore> {
        self.store.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Records a request for `machine`'s config refused because its
    /// Ignition went elsewhere in this window: flagged, counted, logged and
    /// written into the window, where every boot server and the operation
    /// waiting for the machine see it.
    async fn possible_theft(&self, machine: &str, client: SocketAddr, request: &str, why: &str) {
        self.metrics.possible_theft();
        let ip = client.ip().to_string();
        tracing::warn!("{machine}: {request} refused to {ip}: {why}");
        if let Err(e) =
            provisioning::refuse(self.store().as_ref(), machine, &ip, request, why).await
        {
            tracing::error!("{machine}: recording the refused request in the state: {e}");
        }
        self.saw(machine, client, Stage::IgnitionRefused);
        if let Some(seen) = lock(&self.seen).get_mut(machine) {
            seen.refused = Some(why.to_string());
            seen.possible_theft = true;
        }
    }

    fn issue_token(&self, mac: MacAddr) -> String {
        let token = random_hex();
        lock(&self.tokens).insert(token.clone(), mac, self.ttl);
        token
    }

    fn saw(&self, machine: &str, client: SocketAddr, stage: Stage) {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut seen = lock(&self.seen);
        let entry = seen.entry(machine.to_string()).or_insert(Seen {
            last_request_unix: now,
            client: String::new(),
            stage,
            host_key_fingerprint: None,
            host_key_mismatch: false,
            refused: None,
            ignition_client: None,
            possible_theft: false,
        });
        entry.last_request_unix = now;
        entry.client = client.ip().to_string();
        entry.stage = stage;
        if stage == Stage::IgnitionServed {
            entry.ignition_client = Some(entry.client.clone());
        }
    }
}

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/boot.ipxe", get(boot_ipxe))
        .route("/ipxe", get(ipxe).head(no_head))
        .route("/ignition", get(ignition).head(no_head))
        .route("/assets/{*path}", get(assets).head(assets))
        .route(
            "/report/{machine}",
            post(report).layer(axum::extract::DefaultBodyLimit::max(MAX_REPORT_BYTES)),
        )
        .route("/api/v1/machines", get(machines))
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .layer(middleware::from_fn_with_state(shared.clone(), observe))
        .with_state(shared)
}

/// Per-request log line and metrics, for every route.
async fn observe(State(shared): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let endpoint = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("other".to_string(), |m| m.as_str().to_string());
    let mac = req
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("mac=")))
        .map(|m| m.chars().take(20).collect::<String>())
        .unwrap_or_default();
    let resp = next.run(req).await;
    let took = started.elapsed();
    let status = resp.status().as_u16();
    shared.metrics.request(&endpoint, status, took);
    let shown: String = path.chars().take(200).collect();
    tracing::info!(
        "{method} {shown} {status} mac={mac} {:.1}ms",
        took.as_secs_f64() * 1000.0
    );
    resp
}

async fn boot_ipxe() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain")],
        "#!ipxe\nchain /ipxe?mac=${mac:hexhyp}&uuid=${uuid}\n",
    )
}

/// `HEAD` where a `GET` hands out or consumes a token: refused, so that a
/// health check or `curl -I` changes nothing.
async fn no_head() -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        [(header::ALLOW, "GET")],
        "HEAD is not served here: a GET hands out or consumes a one-time token\n",
    )
        .into_response()
}

#[derive(Deserialize)]
struct MacQuery {
    mac: Option<String>,
    token: Option<String>,
}

fn bad(status: StatusCode, msg: &str) -> Response {
    (status, format!("{msg}\n")).into_response()
}

/// The content a request was answered from, and the machine in it.
type Found = (Arc<Content>, Arc<content::MachineContent>);

/// The machine asked for, or the status and reason to answer instead.
fn lookup(
    shared: &Shared,
    q: &MacQuery,
    client: SocketAddr,
) -> Result<Found, (StatusCode, &'static str)> {
    let raw = q
        .mac
        .as_deref()
        .ok_or((StatusCode::BAD_REQUEST, "missing mac"))?;
    let mac = raw
        .parse::<MacAddr>()
        .map_err(|_| (StatusCode::BAD_REQUEST, "malformed mac"))?;
    let content = shared.content();
    match content.by_mac.get(&mac).cloned() {
        Some(machine) => Ok((content, machine)),
        None => {
            shared.metrics.unknown_mac();
            tracing::warn!("unknown MAC {mac} from {}", client.ip());
            Err((StatusCode::NOT_FOUND, "unknown machine"))
        }
    }
}

async fn ipxe(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    Query(q): Query<MacQuery>,
) -> Response {
    let machine = match lookup(&shared, &q, client) {
        Ok((_, machine)) => machine,
        Err((status, why)) => return bad(status, why),
    };
    let name = machine.name.as_str();
    let why = match provisioning::check(shared.store().as_ref(), name).await {
        Ok(Verdict::Serve) => None,
        Ok(Verdict::Installed) => {
            tracing::info!(
                "{name}: its install stage was delivered in this window: {} told to boot the installed system from disk",
                client.ip()
            );
            shared.saw(name, client, Stage::BootingDisk);
            return script(local_boot(&machine, "installed"));
        }
        Ok(Verdict::Delivered { to }) => {
            let why = format!(
                "the machine's Ignition was already delivered to {to} in this provisioning window (possible theft)"
            );
            shared.possible_theft(name, client, "/ipxe", &why).await;
            return bad(StatusCode::FORBIDDEN, &why);
        }
        Ok(Verdict::Outside(why)) => Some(why),
        Err(e) => {
            tracing::error!("{name}: reading its provisioning window: {e}");
            Some("its provisioning window cannot be read from the state".to_string())
        }
    };
    if let Some(why) = why {
        shared.metrics.outside_window();
        tracing::warn!(
            "{name}: /ipxe from {} for MAC {} outside a provisioning window ({why}): no token; told to {}",
            client.ip(),
            machine.mac,
            if machine.installs { "boot its local disk" } else { "stop" }
        );
        shared.saw(name, client, Stage::OutsideWindow);
        if let Some(seen) = lock(&shared.seen).get_mut(name) {
            seen.refused = Some(format!("/ipxe outside a provisioning window: {why}"));
        }
        return script(local_boot(&machine, "outside"));
    }
    let mac = machine.mac;
    let body = match &machine.ipxe {
        (before, Some(after)) => {
            let token = shared.issue_token(mac);
            format!("{before}&token={token}{after}")
        }
        (whole, None) => whole.clone(),
    };
    shared.saw(name, client, Stage::IpxeServed);
    script(body)
}

fn script(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/plain")], body).into_response()
}

/// The iPXE script of a machine that must not network-boot now: boot the
/// local disk (`sanboot` on BIOS; `exit` hands UEFI firmware back its boot
/// order), or, with no disk to boot, say why and stop there — not fall
/// back to the firmware, which would ask again and again.
fn local_boot(machine: &content::MachineContent, why: &str) -> String {
    let name = &machine.name;
    let said = match why {
        "installed" => "its install stage was delivered in this provisioning window",
        _ => "it has no open provisioning window",
    };
    if machine.installs {
        format!(
            "#!ipxe\necho metalherd: {name}: {said}: booting the local disk\n\
             sanboot --no-describe --drive 0x80 || exit\n"
        )
    } else {
        format!(
            "#!ipxe\necho metalherd: {name}: {said}, and it runs from RAM: nothing to boot.\n\
             echo Open a window (metalherd boot arm {name}) and power-cycle it.\n\
             :stopped\nsleep 3600\ngoto stopped\n"
        )
    }
}

async fn ignition(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    Query(q): Query<MacQuery>,
) -> Response {
    let (content, machine) = match lookup(&shared, &q, client) {
        Ok(found) => found,
        Err((status, why)) => return bad(status, why),
    };
    let name = machine.name.as_str();
    let mac = machine.mac;
    let ip = client.ip().to_string();
    // The token first: a request without a valid one learns nothing of
    // the window.
    match q.token.as_deref() {
        None if content.require_token => {
            tracing::warn!("{name}: Ignition requested without a token from {ip}");
            return bad(StatusCode::FORBIDDEN, "token required");
        }
        None => {}
        Some(token) => {
            let verdict = match lock(&shared.tokens).get_mut(token) {
                None => Err(("unknown token".to_string(), false)),
                Some(t) if t.mac != mac => {
                    Err(("token issued to another machine".to_string(), false))
                }
                Some(t) if t.used => {
                    shared.metrics.replay();
                    Err(("token already used (possible replay)".to_string(), true))
                }
                Some(t) if t.revoked.is_some() => Err((
                    format!(
                        "token revoked: the machine's Ignition was already delivered to {} (possible theft)",
                        t.revoked.as_deref().unwrap_or("?")
                    ),
                    true,
                )),
                Some(t) if t.issued.elapsed() > shared.ttl => {
                    Err(("token expired".to_string(), false))
                }
                Some(_) => Ok(()),
            };
            if let Err((why, theft)) = verdict {
                if theft && why.starts_with("token revoked") {
                    shared.possible_theft(name, client, "/ignition", &why).await;
                    return bad(StatusCode::FORBIDDEN, &why);
                }
                if theft {
                    // A replay: recorded in the window as well, where every
                    // boot server and the waiting operation see it.
                    let store = shared.store();
                    let _ =
                        provisioning::refuse(store.as_ref(), name, &ip, "/ignition", &why).await;
                }
                tracing::warn!("{name}: Ignition refused to {ip}: {why}");
                shared.saw(name, client, Stage::IgnitionRefused);
                if let Some(seen) = lock(&shared.seen).get_mut(name) {
                    seen.refused = Some(why.clone());
                }
                return bad(StatusCode::FORBIDDEN, &why);
            }
        }
    }
    // Then the window: one delivery in it, whichever boot server makes it.
    let store = shared.store();
    match provisioning::deliver(store.as_ref(), name, &ip, machine.installs).await {
        Ok(Verdict::Serve) => {}
        Ok(Verdict::Delivered { to }) => {
            let why = format!(
                "the machine's Ignition was already delivered to {to} in this provisioning window (possible theft)"
            );
            shared.possible_theft(name, client, "/ignition", &why).await;
            return bad(StatusCode::FORBIDDEN, &why);
        }
        Ok(Verdict::Installed) => {
            let why = "the machine's install stage was already delivered in this provisioning window (possible theft)";
            shared.possible_theft(name, client, "/ignition", why).await;
            return bad(StatusCode::FORBIDDEN, why);
        }
        Ok(Verdict::Outside(why)) => {
            let why = format!("no provisioning window: {why}");
            shared.metrics.outside_window();
            if q.token.is_some() {
                // A valid token of an earlier window: someone kept it.
                let _ = provisioning::refuse(store.as_ref(), name, &ip, "/ignition", &why).await;
            }
            tracing::warn!("{name}: Ignition refused to {ip}: {why}");
            shared.saw(name, client, Stage::IgnitionRefused);
            if let Some(seen) = lock(&shared.seen).get_mut(name) {
                seen.refused = Some(why.clone());
            }
            return bad(StatusCode::FORBIDDEN, &why);
        }
        Err(e) => {
            tracing::error!("{name}: recording the delivery of its Ignition in the state: {e}");
            return bad(
                StatusCode::SERVICE_UNAVAILABLE,
                "the state store cannot record the delivery; try again",
            );
        }
    }
    if let Some(token) = q.token.as_deref() {
        let mut tokens = lock(&shared.tokens);
        if let Some(t) = tokens.get_mut(token) {
            t.used = true;
        }
        tokens.revoke_others(mac, &ip);
    }
    shared.saw(name, client, Stage::IgnitionServed);
    let secret = random_hex();
    let body = machine.ignition_with(&secret);
    lock(&shared.report_secrets).insert(machine.name.clone(), secret);
    (
        [
            (header::CONTENT_TYPE, "application/vnd.coreos.ignition+json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

#[derive(Deserialize)]
struct Report {
    host_key_fingerprint: String,
}

/// Compares without stopping at the first difference.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// `POST /report/{machine}`: the first-boot callback, authenticated by the
/// secret of the machine's latest Ignition.
async fn report(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    UrlPath(name): UrlPath<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let content = shared.content();
    let Some(machine) = content.by_mac.values().find(|m| m.name == name).cloned() else {
        return bad(StatusCode::NOT_FOUND, "unknown machine");
    };
    let offered = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let expected = lock(&shared.report_secrets).get(&name).cloned();
    if !expected.as_deref().is_some_and(|e| same(e, offered)) {
        tracing::warn!(
            "{name}: report from {} refused: wrong or missing report secret",
            client.ip()
        );
        return bad(StatusCode::UNAUTHORIZED, "wrong or missing report secret");
    }
    let Ok(report) = serde_json::from_slice::<Report>(&body) else {
        return bad(
            StatusCode::BAD_REQUEST,
            "expected {\"host_key_fingerprint\": \"SHA256:...\"}",
        );
    };
    let reported: String = report.host_key_fingerprint.chars().take(80).collect();
    let mismatch = reported != machine.host_key_fingerprint;
    if mismatch {
        tracing::warn!(
            "{name}: reported host key {reported:?} but metalherd generated {}",
            machine.host_key_fingerprint
        );
    }
    let closed = if mismatch {
        format!(
            "{}{reported}, not the one metalherd generated",
            provisioning::MISMATCH
        )
    } else {
        "reported".to_string()
    };
    match provisioning::close(shared.store().as_ref(), &name, &closed).await {
        Ok(_) => {}
        Err(e) => tracing::error!("{name}: closing its provisioning window: {e}"),
    }
    shared.saw(&name, client, Stage::Reported);
    if let Some(seen) = lock(&shared.seen).get_mut(&name) {
        seen.host_key_fingerprint = Some(reported);
        seen.host_key_mismatch = mismatch;
    }
    let said = if mismatch {
        "recorded; host key MISMATCH\n"
    } else {
        "recorded\n"
    };
    (StatusCode::OK, said).into_response()
}

async fn assets(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    UrlPath(path): UrlPath<String>,
    Query(q): Query<MacQuery>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    let content = shared.content();
    if let Some(expected) = content.extensions.get(&path) {
        if let Some(problem) = shared.check_extension(&path, expected).await {
            // Served all the same: the machine's Ignition checks the hash
            // and refuses it, which is the guarantee; this says who.
            tracing::error!("{problem}");
            let machine = q
                .mac
                .as_deref()
                .and_then(|m| m.parse::<MacAddr>().ok())
                .and_then(|mac| content.by_mac.get(&mac).cloned());
            if let Some(m) = machine {
                shared.saw(&m.name, client, Stage::ExtensionMismatch);
                if let Some(seen) = lock(&shared.seen).get_mut(m.name.as_str()) {
                    seen.refused = Some(problem);
                }
            }
        }
    }
    files::serve(&shared.assets, &path, &method, &headers).await
}

impl Shared {
    /// Why the extension image at `path` (under the assets directory) is
    /// not the pinned one, if it is not.
    async fn check_extension(&self, path: &str, expected: &str) -> Option<String> {
        let file = self.assets.join(path);
        let meta = tokio::fs::metadata(&file).await.ok()?;
        let key = (meta.len(), meta.modified().ok()?);
        let cached = lock(&self.digests)
            .get(&file)
            .filter(|(len, mtime, _)| (*len, *mtime) == key)
            .map(|(_, _, d)| d.clone());
        let actual = match cached {
            Some(d) => d,
            None => {
                let f = file.clone();
                let d = tokio::task::spawn_blocking(move || crate::assets::verify::digest_file(&f))
                    .await
                    .ok()?
                    .ok()?
                    .sha512;
                lock(&self.digests).insert(file, (key.0, key.1, d.clone()));
                d
            }
        };
        (actual != expected).then(|| {
            format!(
                "extension image {path} served from {} has sha512 {}…, not the pinned {}… \
                 (assets.lock): Ignition refuses it; `metalherd assets verify` names the file",
                self.assets.display(),
                &actual[..16],
                &expected[..16.min(expected.len())]
            )
        })
    }
}

async fn machines(State(shared): State<Arc<Shared>>) -> Response {
    let content = shared.content();
    let seen = lock(&shared.seen).clone();
    let mut list: Vec<serde_json::Value> = content
        .by_mac
        .values()
        .map(|m| {
            let s = seen.get(&m.name);
            serde_json::json!({
                "machine": m.name,
                "site": m.site,
                "role": m.role,
                "mac": m.mac,
                "last_request_unix": s.map(|s| s.last_request_unix),
                "client": s.map(|s| s.client.clone()),
                "stage": s.map(|s| s.stage),
                "host_key_fingerprint": s.and_then(|s| s.host_key_fingerprint.clone()),
                "host_key_mismatch": s.map(|s| s.host_key_mismatch),
                "refused": s.and_then(|s| s.refused.clone()),
                "ignition_client": s.and_then(|s| s.ignition_client.clone()),
                "possible_theft": s.map(|s| s.possible_theft),
            })
        })
        .collect();
    list.sort_by(|a, b| a["machine"].as_str().cmp(&b["machine"].as_str()));
    axum::Json(serde_json::json!({ "machines": list })).into_response()
}

/// The server's own counters, then the fleet's state for the sites it
/// serves ([`crate::metrics`]), read at each scrape.
async fn metrics_text(State(shared): State<Arc<Shared>>) -> Response {
    let content = shared.content();
    let store = shared.store();
    let fleet = match crate::metrics::Snapshot::read(&content.fleet, store.as_ref(), &content.sites)
        .await
    {
        Ok(snapshot) => snapshot.encode(),
        Err(e) => {
            tracing::warn!("fleet metrics: reading the state: {e}");
            "# fleet metrics unavailable: the state could not be read\n".to_string()
        }
    };
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        format!("{}{fleet}", shared.metrics.render()),
    )
        .into_response()
}

/// The fleet with the roles in effect for booting machines: the
/// inventory's, or the state's where a blue-green replace moved them (the
/// roles of the generation being built while one runs). Rendered off the
/// async threads.
async fn load(opts: Arc<Options>) -> anyhow::Result<(Content, fleet::Fleet, String)> {
    let fleet = fleet::load(&opts.fleet_root)?;
    for warning in crate::render::unpinned(&fleet) {
        tracing::warn!("{warning}");
    }
    let view = async {
        let (store, _) = crate::state::open(&fleet)?;
        let roles = recorded_roles(&fleet, &opts.sites).await?;
        let view = crate::fleet::roles::effective(&fleet, store.as_ref(), true).await?;
        anyhow::Ok((view, roles))
    };
    // A state the boot server cannot read (an etcd backend that is down)
    // must not stop machines booting: the inventory's roles, said loudly.
    let (view, roles) = match view.await {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(
                "reading the recorded roles from the state: {e:#}; rendering the inventory's roles"
            );
            (fleet.clone(), String::new())
        }
    };
    let content = tokio::task::spawn_blocking(move || content::build(&view, &opts.sites)).await??;
    Ok((content, fleet, roles))
}

/// The roles the state records for booting the served sites' machines
/// (empty while it records none), to notice when they move.
async fn recorded_roles(fleet: &fleet::Fleet, sites: &[SiteName]) -> anyhow::Result<String> {
    let (store, _) = crate::state::open(fleet)?;
    let mut out = String::new();
    for site in &fleet.sites {
        if !sites.is_empty() && !sites.contains(&site.name) {
            continue;
        }
        let key = crate::state::Key::site(&site.name);
        if let Some((record, _)) =
            crate::state::get_json::<crate::state::SiteRecord>(store.as_ref(), &key).await?
        {
            for (m, role) in crate::fleet::roles::in_effect(&record, true) {
                out.push_str(&format!("{m}={role} "));
            }
        }
    }
    Ok(out)
}

/// How often the boot server looks at the state for moved roles.
const ROLE_WATCH: Duration = Duration::from_secs(2);

/// Serves until SIGINT or SIGTERM; SIGHUP re-renders, and so does a change
/// of the roles the state records (a blue-green replace starting or
/// switching), noticed within [`ROLE_WATCH`].
pub async fn run(opts: Options) -> anyhow::Result<()> {
    let opts = Arc::new(opts);
    let (content, mut loaded, roles) = load(opts.clone()).await?;
    let (store, _) = crate::state::open(&loaded)?;
    tracing::info!(
        "serving {} machines on {}; provisioning windows in {}",
        content.machines,
        opts.listen,
        store.describe()
    );
    let shared = Arc::new(Shared::new(
        content,
        store,
        opts.assets_dir.clone(),
        opts.token_ttl,
    ));
    let listener = tokio::net::TcpListener::bind(opts.listen).await?;
    let app = router(shared.clone()).into_make_service_with_connect_info::<SocketAddr>();

    let reloader = shared.clone();
    let reload_opts = opts.clone();
    tokio::spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            return;
        };
        let mut roles = roles;
        let mut watch = tokio::time::interval(ROLE_WATCH);
        loop {
            tokio::select! {
                hup = hup.recv() => if hup.is_none() { return },
                _ = watch.tick() => {
                    match recorded_roles(&loaded, &reload_opts.sites).await {
                        Ok(now) if now != roles => {
                            tracing::info!("the state moved roles: re-rendering");
                        }
                        _ => continue,
                    }
                }
            }
            match load(reload_opts.clone()).await {
                Ok((content, fleet, now)) => {
                    tracing::info!("reloaded: serving {} machines", content.machines);
                    match crate::state::open(&fleet) {
                        Ok((store, _)) => {
                            *reloader.store.write().unwrap_or_else(|p| p.into_inner()) = store
                        }
                        Err(e) => tracing::error!(
                            "reload: opening the state store, keeping the previous one: {e}"
                        ),
                    }
                    roles = now;
                    loaded = fleet;
                    *reloader.content.write().unwrap_or_else(|p| p.into_inner()) =
                        Arc::new(content);
                }
                Err(e) => tracing::error!(
                    "reload failed, still serving the previous fleet: {}",
                    crate::errfmt::chain(e.as_ref())
                ),
            }
        }
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
            }
        })
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_table_stays_bounded_and_drops_the_oldest_first() {
        let mut t = Tokens::default();
        let mac: MacAddr = "52:54:00:fa:00:01".parse().unwrap();
        for i in 0..MAX_TOKENS + 10 {
            t.insert(format!("t{i}"), mac, Duration::from_secs(60));
        }
        assert_eq!(t.map.len(), MAX_TOKENS);
        assert!(t.get_mut("t0").is_none() && t.get_mut("t9").is_none());
        assert!(t.get_mut("t10").is_some() && t.get_mut(&format!("t{}", MAX_TOKENS + 9)).is_some());
    }
}
