//! The `etcd` state backend: the etcd v3 API through etcd's JSON gateway
//! (`POST /v3/kv/range`, `/v3/kv/txn`, `/v3/lease/grant`, …: HTTP and
//! JSON, keys and values base64), spoken with reqwest.
//!
//! Why the gateway and not the `etcd-client` crate: `etcd-client` compiles
//! etcd's protobuf definitions at build time and so needs `protoc` (Debian
//! `protobuf-compiler`) on every machine that builds metalherd. The JSON
//! gateway is served by every etcd 3.4+ member on its client port, needs
//! nothing beyond the HTTP client metalherd already has, and exposes the
//! same transactions and leases.
//!
//! Layout below the store's prefix (`/metalherd/<fleet>/`):
//! `objects/<key>` holds each object, `locks/<name>` each lock.
//!
//! - Revisions are etcd's `mod_revision` of the key; compare-and-swap is a
//!   transaction comparing `mod_revision` (or `create_revision == 0` for
//!   create-only) whose failure branch reads what is there.
//! - A lock is a key created (if absent) in a transaction, attached to a
//!   lease the holder keeps alive from a background task. Releasing
//!   revokes the lease, which deletes the key; a holder that crashes (or
//!   drops its guard) stops the keepalives and etcd deletes the key when
//!   the lease expires, so nothing is ever stale for longer than the TTL.
//! - Every request tries the endpoints in turn: a member that is down,
//!   slow or answers 5xx hands over to the next one. Writes whose outcome
//!   is unknown (sent, then no answer) are reported as failures, never as
//!   successes (see `Inner::call`).
//! - Errors name endpoints, keys and revisions, never values (values may
//!   be sealed secrets).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::json;
use url::Url;
use zeroize::Zeroizing;

use super::{check_key, Entry, Expect, Holder, LockGuard, LockInfo, StateError, StateStore};

/// How long a TCP (and TLS) connection to one member may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one request to one member may take before the next member is
/// tried. etcd itself gives up on a proposal after about 7 s (5 s plus two
/// election timeouts), so a cluster without quorum is noticed here first.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Keys per range request when listing.
const PAGE: u64 = 500;

/// Client TLS for etcd: the CA that signed the members' certificates and
/// the client certificate and key (PEM; PKCS#8, PKCS#1 or SEC1 keys).
#[derive(Clone)]
pub struct EtcdTls {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: Zeroizing<String>,
}

impl fmt::Debug for EtcdTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdTls")
            .field("ca_pem", &format_args!("<{} bytes>", self.ca_pem.len()))
            .field("cert_pem", &format_args!("<{} bytes>", self.cert_pem.len()))
            .field("key_pem", &format_args!("<redacted>"))
            .finish()
    }
}

/// The etcd state store. Cheap to share: the HTTP client (and its
/// connection pool) lives behind an `Arc`, also used by lock keepalives.
pub struct EtcdStore {
    inner: Arc<Inner>,
}

impl fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.inner.endpoints_text())
            .field("prefix", &self.inner.prefix)
            .field("lock_ttl", &self.inner.lock_ttl)
            .finish()
    }
}

struct Inner {
    client: reqwest::Client,
    endpoints: Vec<Url>,
    /// Ends with `/`.
    prefix: String,
    lock_ttl: Duration,
}

// ---------------------------------------------------------------------------
// The gateway's JSON. Its int64 fields are JSON strings, and fields at
// their default value (0, false, empty) are left out entirely.

fn int<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Num {
        Text(String),
        Int(i64),
    }
    match Num::deserialize(d)? {
        Num::Int(i) => Ok(i),
        Num::Text(s) => s
            .parse()
            .map_err(|_| serde::de::Error::custom("expected an integer")),
    }
}

#[derive(Debug, Default, Deserialize)]
struct Header {
    #[serde(default, deserialize_with = "int")]
    revision: i64,
}

#[derive(Debug, Default, Deserialize)]
struct Kv {
    #[serde(default)]
    key: String,
    #[serde(default)]
    value: String,
    #[serde(default, deserialize_with = "int")]
    mod_revision: i64,
    #[serde(default, deserialize_with = "int")]
    lease: i64,
}

#[derive(Debug, Default, Deserialize)]
struct RangeResponse {
    #[serde(default)]
    header: Header,
    #[serde(default)]
    kvs: Vec<Kv>,
    #[serde(default)]
    more: bool,
}

#[derive(Debug, Default, Deserialize)]
struct PutResponse {
    #[serde(default)]
    header: Header,
}

#[derive(Debug, Default, Deserialize)]
struct DeleteRangeResponse {
    #[serde(default)]
    prev_kvs: Vec<Kv>,
}

#[derive(Debug, Default, Deserialize)]
struct ResponseOp {
    #[serde(default)]
    response_range: Option<RangeResponse>,
}

#[derive(Debug, Default, Deserialize)]
struct TxnResponse {
    #[serde(default)]
    header: Header,
    #[serde(default)]
    succeeded: bool,
    #[serde(default)]
    responses: Vec<ResponseOp>,
}

impl TxnResponse {
    /// The key the failure branch's range read, if it exists.
    fn failure_kv(&self) -> Option<&Kv> {
        self.responses
            .iter()
            .find_map(|r| r.response_range.as_ref())
            .and_then(|r| r.kvs.first())
    }
}

#[derive(Debug, Default, Deserialize)]
struct LeaseGrantResponse {
    #[serde(default, rename = "ID", deserialize_with = "int")]
    id: i64,
    #[serde(default, rename = "TTL", deserialize_with = "int")]
    ttl: i64,
    #[serde(default)]
    error: String,
}

#[derive(Debug, Default, Deserialize)]
struct LeaseKeepAliveResult {
    #[serde(default, rename = "TTL", deserialize_with = "int")]
    ttl: i64,
}

/// `/v3/lease/keepalive` is a stream: one `{"result": …}` per request.
#[derive(Debug, Default, Deserialize)]
struct LeaseKeepAliveResponse {
    #[serde(default)]
    result: Option<LeaseKeepAliveResult>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

/// An error body: `{"error": "...", "message": "...", "code": 14}`.
#[derive(Debug, Default, Deserialize)]
struct ErrorBody {
    #[serde(default)]
    error: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    code: i64,
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn unb64(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
    base64::engine::general_purpose::STANDARD.decode(text)
}

/// The end of the range holding every key that starts with `prefix`
/// (etcd's convention): the prefix with its last byte below 0xff
/// incremented and what follows dropped; `\0` (to the end of the
/// keyspace) when there is no such byte.
fn range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// The first JSON value of `bytes` (a stream endpoint may send several;
/// the gateway may append trailers). Parse errors are described by
/// position only: serde's messages may quote the input, and a response
/// may hold values.
fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let mut stream = serde_json::Deserializer::from_slice(bytes).into_iter::<T>();
    match stream.next() {
        Some(Ok(v)) => Ok(v),
        Some(Err(e)) => Err(format!(
            "unexpected answer ({:?} error at line {} column {})",
            e.classify(),
            e.line(),
            e.column()
        )),
        None => Err("empty answer".into()),
    }
}

/// What etcd said in an error body, shortened; the HTTP status if the
/// body is not etcd's.
fn error_text(status: reqwest::StatusCode, bytes: &[u8]) -> (String, i64) {
    let body: ErrorBody = parse(bytes).unwrap_or_default();
    let said = if body.message.is_empty() {
        body.error
    } else {
        body.message
    };
    if said.is_empty() {
        (format!("HTTP {status}"), body.code)
    } else {
        let said: String = said.chars().take(300).collect();
        (format!("{said} (HTTP {})", status.as_u16()), body.code)
    }
}

/// A reqwest error with its causes, without the URL (the caller names the
/// endpoint).
fn error_chain(e: &reqwest::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    if e.is_timeout() {
        parts.push("no answer in time".into());
    } else if e.is_connect() {
        parts.push("cannot connect".into());
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    if parts.is_empty() {
        parts.push(e.to_string());
    }
    parts.join(": ")
}

/// Why a call failed.
#[derive(Debug)]
enum CallError {
    /// A member answered 4xx: the request itself is wrong (or names a
    /// lease that is gone). Other members would say the same.
    Rejected {
        endpoint: String,
        message: String,
        /// The gRPC status code (5: not found).
        code: i64,
    },
    /// No member answered successfully.
    Unavailable {
        /// Every endpoint and what went wrong there.
        failures: Vec<(String, String)>,
        /// Some member may have received the request (timeout, 5xx, broken
        /// answer) and applied it, or may apply it later.
        uncertain: bool,
        /// Some failure looks like lost quorum or leader: a timeout,
        /// etcd's `request timed out` / `no leader` / deadline errors.
        quorum_hint: bool,
    },
    /// A 2xx answer that is not what the API promises.
    Garbled { endpoint: String, message: String },
}

/// A successful call, and whether an attempt at an earlier endpoint may
/// have been applied too (matters for compare-and-swap).
struct Called<T> {
    reply: T,
    uncertain_before: bool,
}

impl Inner {
    fn endpoints_text(&self) -> String {
        self.endpoints
            .iter()
            .map(|u| u.as_str().trim_end_matches('/'))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn describe(&self) -> String {
        format!("etcd {} ({})", self.endpoints_text(), self.prefix)
    }

    fn backend(&self, message: String) -> StateError {
        StateError::Backend {
            backend: self.describe(),
            message,
        }
    }

    fn object_key(&self, key: &str) -> String {
        format!("{}objects/{key}", self.prefix)
    }

    fn lock_key(&self, name: &str) -> String {
        format!("{}locks/{name}", self.prefix)
    }

    /// Turns a failed call into the store's error, saying what `what`
    /// (`put sites/fra/generation`) was and, for writes, that it did not
    /// take effect as far as anyone can tell.
    fn call_error(&self, what: &str, write: bool, e: CallError) -> StateError {
        match e {
            CallError::Rejected {
                endpoint, message, ..
            } => self.backend(format!("{what}: {endpoint} refused it: {message}")),
            CallError::Garbled { endpoint, message } => {
                self.backend(format!("{what}: {endpoint}: {message}"))
            }
            CallError::Unavailable {
                failures,
                uncertain,
                quorum_hint,
            } => {
                let each = failures
                    .iter()
                    .map(|(ep, why)| format!("{ep}: {why}"))
                    .collect::<Vec<_>>()
                    .join("; ");
                let mut message = format!("{what} failed: no etcd member could serve it ({each})");
                if quorum_hint {
                    message.push_str(
                        ". The cluster has probably lost quorum (fewer than a majority of \
                         its members up and connected); bring members back",
                    );
                }
                if write && uncertain {
                    message.push_str(
                        ". The write was not confirmed and is not in effect; but a member \
                         that received it may still commit it when quorum returns (a leader \
                         cut off from its followers keeps it in its log), so re-read before \
                         retrying",
                    );
                }
                self.backend(message)
            }
        }
    }

    /// POSTs `body` to `path` (`v3/kv/range`) at each endpoint in turn
    /// until one answers.
    ///
    /// The next endpoint is tried after a connection failure, a timeout,
    /// a 5xx or a broken answer. A 4xx is final: every member would say
    /// the same. A write sent to one member that then timed out may or
    /// may not be applied there; trying it at the next member is still
    /// right for what this store writes (a plain put is idempotent; a
    /// compare-and-swap cannot apply twice, and a lost race with our own
    /// earlier attempt is reported as a conflict, never as success), and
    /// when no member confirms, the write is reported as failed.
    async fn call<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &serde_json::Value,
        timeout: Duration,
    ) -> Result<Called<T>, CallError> {
        let payload = body.to_string();
        let mut failures = Vec::new();
        let mut uncertain = false;
        let mut quorum_hint = false;
        for endpoint in &self.endpoints {
            let name = endpoint.as_str().trim_end_matches('/').to_string();
            let mut url = endpoint.clone();
            url.set_path(&format!("{}/{path}", endpoint.path().trim_end_matches('/')));
            let sent = self
                .client
                .post(url)
                .timeout(timeout)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(payload.clone())
                .send()
                .await;
            let response = match sent {
                Ok(r) => r,
                Err(e) => {
                    // A connection that never opened carried nothing.
                    if !e.is_connect() {
                        uncertain = true;
                    }
                    quorum_hint |= e.is_timeout();
                    failures.push((name, error_chain(&e)));
                    continue;
                }
            };
            let status = response.status();
            let bytes = match response.bytes().await {
                Ok(b) => b,
                Err(e) => {
                    uncertain = true;
                    quorum_hint |= e.is_timeout();
                    failures.push((name, error_chain(&e)));
                    continue;
                }
            };
            if status.is_success() {
                return match parse::<T>(&bytes) {
                    Ok(reply) => Ok(Called {
                        reply,
                        uncertain_before: uncertain,
                    }),
                    Err(message) => Err(CallError::Garbled {
                        endpoint: name,
                        message,
                    }),
                };
            }
            let (message, code) = error_text(status, &bytes);
            if status.is_client_error() {
                return Err(CallError::Rejected {
                    endpoint: name,
                    message,
                    code,
                });
            }
            uncertain = true;
            let lower = message.to_ascii_lowercase();
            quorum_hint |= ["timed out", "deadline", "no leader", "leader changed"]
                .iter()
                .any(|s| lower.contains(s));
            failures.push((name, message));
        }
        Err(CallError::Unavailable {
            failures,
            uncertain,
            quorum_hint,
        })
    }

    /// Every key-value whose key starts with `prefix` (a full etcd key),
    /// page by page at one revision.
    async fn range_prefix(&self, prefix: &str, what: &str) -> Result<Vec<Kv>, StateError> {
        let end = b64(&range_end(prefix.as_bytes()));
        let mut start = prefix.as_bytes().to_vec();
        let mut revision = 0i64;
        let mut out = Vec::new();
        loop {
            let mut body = json!({
                "key": b64(&start),
                "range_end": end,
                "limit": PAGE.to_string(),
            });
            if revision > 0 {
                body["revision"] = json!(revision.to_string());
            }
            let page: RangeResponse = self
                .call("v3/kv/range", &body, REQUEST_TIMEOUT)
                .await
                .map_err(|e| self.call_error(what, false, e))?
                .reply;
            if revision == 0 {
                revision = page.header.revision;
            }
            let more = page.more;
            out.extend(page.kvs);
            match out.last() {
                Some(last) if more => {
                    start = unb64(&last.key).map_err(|_| {
                        self.backend(format!("{what}: etcd sent a key that is not base64"))
                    })?;
                    start.push(0);
                }
                _ => return Ok(out),
            }
        }
    }

    /// One key-value, if the key exists.
    async fn range_one(&self, full_key: &str, what: &str) -> Result<Option<Kv>, StateError> {
        let body = json!({ "key": b64(full_key.as_bytes()) });
        let reply: RangeResponse = self
            .call("v3/kv/range", &body, REQUEST_TIMEOUT)
            .await
            .map_err(|e| self.call_error(what, false, e))?
            .reply;
        Ok(reply.kvs.into_iter().next())
    }

    /// A transaction: if `compare` holds, `success`, else read `full_key`.
    async fn txn(
        &self,
        full_key: &str,
        compare: serde_json::Value,
        success: Vec<serde_json::Value>,
        what: &str,
    ) -> Result<Called<TxnResponse>, StateError> {
        let body = json!({
            "compare": [compare],
            "success": success,
            "failure": [{ "request_range": { "key": b64(full_key.as_bytes()) } }],
        });
        self.call("v3/kv/txn", &body, REQUEST_TIMEOUT)
            .await
            .map_err(|e| self.call_error(what, true, e))
    }

    async fn grant(&self, ttl_secs: i64, what: &str) -> Result<(i64, i64), StateError> {
        let body = json!({ "TTL": ttl_secs.to_string() });
        let reply: LeaseGrantResponse = self
            .call("v3/lease/grant", &body, REQUEST_TIMEOUT)
            .await
            .map_err(|e| self.call_error(what, true, e))?
            .reply;
        if !reply.error.is_empty() || reply.id == 0 {
            let said: String = reply.error.chars().take(300).collect();
            return Err(self.backend(format!("{what}: etcd granted no lease: {said}")));
        }
        Ok((reply.id, reply.ttl.max(ttl_secs)))
    }

    /// Revokes `lease`; `Ok(false)` if etcd no longer knows it (expired).
    async fn revoke(&self, lease: i64, what: &str) -> Result<bool, StateError> {
        let body = json!({ "ID": lease.to_string() });
        match self
            .call::<serde_json::Value>("v3/lease/revoke", &body, REQUEST_TIMEOUT)
            .await
        {
            Ok(_) => Ok(true),
            Err(CallError::Rejected { code: 5, .. }) => Ok(false),
            Err(e) => Err(self.call_error(what, true, e)),
        }
    }

    /// Renews `lease`; returns its remaining TTL (0: it is gone).
    async fn keepalive(&self, lease: i64, timeout: Duration) -> Result<i64, StateError> {
        let body = json!({ "ID": lease.to_string() });
        let what = format!("keep lease {lease:x} alive");
        match self
            .call::<LeaseKeepAliveResponse>("v3/lease/keepalive", &body, timeout)
            .await
        {
            Ok(Called { reply, .. }) => match (reply.result, reply.error) {
                (Some(result), _) => Ok(result.ttl),
                (None, Some(_)) | (None, None) => {
                    Err(self.backend(format!("{what}: etcd answered with an error")))
                }
            },
            Err(CallError::Rejected { code: 5, .. }) => Ok(0),
            Err(e) => Err(self.call_error(&what, true, e)),
        }
    }

    /// `kv`'s key without `strip` (the range's prefix).
    fn relative_key(&self, kv: &Kv, strip: &str, what: &str) -> Result<String, StateError> {
        let key = unb64(&kv.key)
            .ok()
            .and_then(|k| String::from_utf8(k).ok())
            .ok_or_else(|| self.backend(format!("{what}: etcd sent a key that is not UTF-8")))?;
        key.strip_prefix(strip)
            .map(str::to_string)
            .ok_or_else(|| self.backend(format!("{what}: etcd sent a key outside the range")))
    }

    fn entry(&self, kv: Kv, strip: &str, what: &str) -> Result<Entry, StateError> {
        let key = self.relative_key(&kv, strip, what)?;
        let value = unb64(&kv.value).map_err(|_| {
            self.backend(format!(
                "{what}: {key}: etcd sent a value that is not base64"
            ))
        })?;
        Ok(Entry {
            key,
            value,
            revision: revision(kv.mod_revision),
        })
    }

    fn holder(&self, kv: &Kv, name: &str) -> Result<Holder, StateError> {
        unb64(&kv.value)
            .ok()
            .and_then(|v| serde_json::from_slice(&v).ok())
            .ok_or_else(|| {
                self.backend(format!(
                    "lock {name}: its record is not a holder record (break it with \
                     `metalherd state unlock --force --reason`)"
                ))
            })
    }
}

fn revision(r: i64) -> u64 {
    u64::try_from(r).unwrap_or(0)
}

fn expected_text(expect: Expect) -> String {
    match expect {
        Expect::Any => "anything".into(),
        Expect::Absent => "no object".into(),
        Expect::Revision(r) => format!("revision {r}"),
    }
}

/// The compare of a transaction for `expect` (not `Any`).
fn compare(full_key: &str, expect: Expect) -> serde_json::Value {
    let key = b64(full_key.as_bytes());
    match expect {
        Expect::Revision(r) => json!({
            "result": "EQUAL", "target": "MOD", "key": key, "mod_revision": r.to_string(),
        }),
        Expect::Absent | Expect::Any => json!({
            "result": "EQUAL", "target": "CREATE", "key": key, "create_revision": "0",
        }),
    }
}

impl EtcdStore {
    /// A store over the members at `endpoints` (`https://10.0.0.1:2379`),
    /// keeping everything below `prefix` (`/metalherd/<fleet>/`; a missing
    /// final `/` is added). `tls` gives the CA and client certificate for
    /// `https` endpoints with client-certificate authentication; without
    /// it, `https` endpoints are checked against the system's CAs.
    /// `lock_ttl` is the lease TTL of locks taken with a zero TTL.
    pub fn new(
        endpoints: Vec<Url>,
        tls: Option<EtcdTls>,
        prefix: &str,
        lock_ttl: Duration,
    ) -> Result<EtcdStore, StateError> {
        let config = |message: String| StateError::Backend {
            backend: "etcd".into(),
            message,
        };
        if endpoints.is_empty() {
            return Err(config("no endpoints configured".into()));
        }
        for e in &endpoints {
            if !matches!(e.scheme(), "http" | "https") || e.host_str().is_none() {
                return Err(config(format!(
                    "endpoint {e}: expected http(s)://host:port"
                )));
            }
        }
        let prefix = prefix.trim();
        if prefix.is_empty() || prefix == "/" {
            return Err(config(
                "an empty key prefix would share the whole etcd keyspace; use /metalherd/<fleet>/"
                    .into(),
            ));
        }
        let prefix = if prefix.ends_with('/') {
            prefix.to_string()
        } else {
            format!("{prefix}/")
        };
        let mut builder = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            // etcd members are reached directly, never through an
            // HTTP(S)_PROXY meant for the internet.
            .no_proxy();
        if let Some(tls) = tls {
            let cas = reqwest::Certificate::from_pem_bundle(tls.ca_pem.as_bytes())
                .map_err(|e| config(format!("CA certificate: {}", error_chain(&e))))?;
            if cas.is_empty() {
                return Err(config("CA certificate: no certificate in the PEM".into()));
            }
            builder = builder.tls_built_in_root_certs(false);
            for ca in cas {
                builder = builder.add_root_certificate(ca);
            }
            let mut pem = Zeroizing::new(Vec::with_capacity(
                tls.cert_pem.len() + tls.key_pem.len() + 1,
            ));
            pem.extend_from_slice(tls.cert_pem.as_bytes());
            pem.push(b'\n');
            pem.extend_from_slice(tls.key_pem.as_bytes());
            let identity = reqwest::Identity::from_pem(&pem)
                .map_err(|e| config(format!("client certificate and key: {}", error_chain(&e))))?;
            builder = builder.identity(identity);
        }
        let client = builder
            .build()
            .map_err(|e| config(format!("HTTP client: {}", error_chain(&e))))?;
        Ok(EtcdStore {
            inner: Arc::new(Inner {
                client,
                endpoints,
                prefix,
                lock_ttl,
            }),
        })
    }

    /// The conflict for `key` whose transaction found `kv` (or nothing).
    fn conflict(key: &str, expect: Expect, kv: Option<&Kv>, uncertain_before: bool) -> StateError {
        let mut found = kv.map_or("no object".to_string(), |kv| {
            format!("revision {}", kv.mod_revision)
        });
        if uncertain_before {
            found.push_str(
                " — an earlier attempt of this write at another member got no answer, so \
                 this may be that attempt's result",
            );
        }
        StateError::Conflict {
            key: key.to_string(),
            expected: expected_text(expect),
            found,
        }
    }
}

#[async_trait::async_trait]
impl StateStore for EtcdStore {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    async fn get(&self, key: &str) -> Result<Option<Entry>, StateError> {
        check_key(key)?;
        let what = format!("get {key}");
        let strip = format!("{}objects/", self.inner.prefix);
        match self
            .inner
            .range_one(&self.inner.object_key(key), &what)
            .await?
        {
            Some(kv) => Ok(Some(self.inner.entry(kv, &strip, &what)?)),
            None => Ok(None),
        }
    }

    async fn put(&self, key: &str, value: &[u8], expect: Expect) -> Result<u64, StateError> {
        check_key(key)?;
        let inner = &self.inner;
        let what = format!("put {key}");
        let full = inner.object_key(key);
        let put = json!({ "key": b64(full.as_bytes()), "value": b64(value) });
        if expect == Expect::Any {
            let reply: PutResponse = inner
                .call("v3/kv/put", &put, REQUEST_TIMEOUT)
                .await
                .map_err(|e| inner.call_error(&what, true, e))?
                .reply;
            return Ok(revision(reply.header.revision));
        }
        let done = inner
            .txn(
                &full,
                compare(&full, expect),
                vec![json!({ "request_put": put })],
                &what,
            )
            .await?;
        if done.reply.succeeded {
            Ok(revision(done.reply.header.revision))
        } else {
            Err(Self::conflict(
                key,
                expect,
                done.reply.failure_kv(),
                done.uncertain_before,
            ))
        }
    }

    async fn delete(&self, key: &str, expect: Expect) -> Result<(), StateError> {
        check_key(key)?;
        let inner = &self.inner;
        let what = format!("delete {key}");
        let full = inner.object_key(key);
        let delete = json!({ "key": b64(full.as_bytes()) });
        match expect {
            Expect::Any => {
                inner
                    .call::<serde_json::Value>("v3/kv/deleterange", &delete, REQUEST_TIMEOUT)
                    .await
                    .map_err(|e| inner.call_error(&what, true, e))?;
                Ok(())
            }
            Expect::Absent | Expect::Revision(_) => {
                let success = match expect {
                    Expect::Revision(_) => vec![json!({ "request_delete_range": delete })],
                    _ => Vec::new(),
                };
                let done = inner
                    .txn(&full, compare(&full, expect), success, &what)
                    .await?;
                if done.reply.succeeded {
                    Ok(())
                } else {
                    Err(Self::conflict(
                        key,
                        expect,
                        done.reply.failure_kv(),
                        done.uncertain_before,
                    ))
                }
            }
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Entry>, StateError> {
        let what = format!("list {prefix}");
        let strip = format!("{}objects/", self.inner.prefix);
        let full = format!("{strip}{prefix}");
        let mut out = self
            .inner
            .range_prefix(&full, &what)
            .await?
            .into_iter()
            .map(|kv| self.inner.entry(kv, &strip, &what))
            .collect::<Result<Vec<_>, _>>()?;
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn lock(
        &self,
        name: &str,
        holder: &Holder,
        ttl: Duration,
    ) -> Result<Box<dyn LockGuard>, StateError> {
        check_key(name)?;
        let inner = &self.inner;
        let what = format!("lock {name}");
        let ttl = if ttl.is_zero() { inner.lock_ttl } else { ttl };
        let ttl_secs = i64::try_from(ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0))
            .unwrap_or(i64::MAX)
            .max(1);
        let record =
            serde_json::to_vec(holder).map_err(|e| inner.backend(format!("{what}: {e}")))?;
        let full = inner.lock_key(name);
        // A lock released between our compare and our read is tried again.
        for _ in 0..3 {
            let (lease, granted) = inner.grant(ttl_secs, &what).await?;
            let put = json!({
                "request_put": {
                    "key": b64(full.as_bytes()),
                    "value": b64(&record),
                    "lease": lease.to_string(),
                }
            });
            let done = match inner
                .txn(&full, compare(&full, Expect::Absent), vec![put], &what)
                .await
            {
                Ok(done) => done,
                Err(e) => {
                    // If the put landed after all, the revoke deletes it.
                    if let Err(r) = inner.revoke(lease, &what).await {
                        tracing::warn!("{r}; the lease expires by itself within {ttl_secs} s");
                    }
                    return Err(e);
                }
            };
            let ours =
                done.reply.succeeded || done.reply.failure_kv().is_some_and(|kv| kv.lease == lease);
            if ours {
                return Ok(Box::new(EtcdLock::start(
                    inner.clone(),
                    name.to_string(),
                    lease,
                    Duration::from_secs(u64::try_from(granted).unwrap_or(1)),
                )));
            }
            if let Err(r) = inner.revoke(lease, &what).await {
                tracing::warn!("{r}; the lease expires by itself within {ttl_secs} s");
            }
            if let Some(kv) = done.reply.failure_kv() {
                let other = inner.holder(kv, name)?;
                return Err(StateError::Locked {
                    name: name.to_string(),
                    since: other.since.clone(),
                    holder: Box::new(other),
                    stale: false,
                });
            }
        }
        Err(inner.backend(format!(
            "{what}: the lock changed hands repeatedly while taking it; try again"
        )))
    }

    async fn locks(&self) -> Result<Vec<LockInfo>, StateError> {
        let inner = &self.inner;
        let base = format!("{}locks/", inner.prefix);
        let mut out = Vec::new();
        for kv in inner.range_prefix(&base, "list locks").await? {
            let name = inner.relative_key(&kv, &base, "list locks")?;
            out.push(LockInfo {
                holder: inner.holder(&kv, &name)?,
                name,
                // A lease-bound lock never outlives its holder by more
                // than the TTL.
                stale: false,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn break_lock(&self, name: &str) -> Result<Option<Holder>, StateError> {
        check_key(name)?;
        let inner = &self.inner;
        let what = format!("break lock {name}");
        let body = json!({ "key": b64(inner.lock_key(name).as_bytes()), "prev_kv": true });
        let reply: DeleteRangeResponse = inner
            .call("v3/kv/deleterange", &body, REQUEST_TIMEOUT)
            .await
            .map_err(|e| inner.call_error(&what, true, e))?
            .reply;
        let Some(kv) = reply.prev_kvs.into_iter().next() else {
            return Ok(None);
        };
        // Its holder's keepalives now find the lease gone and say so.
        if kv.lease != 0 {
            if let Err(e) = inner.revoke(kv.lease, &what).await {
                tracing::warn!("{e}");
            }
        }
        inner.holder(&kv, name).map(Some)
    }
}

/// A held etcd lock: the lease it is bound to and the task renewing it.
struct EtcdLock {
    inner: Arc<Inner>,
    name: String,
    lease: i64,
    ttl: Duration,
    keepalive: tokio::task::JoinHandle<()>,
}

impl EtcdLock {
    fn start(inner: Arc<Inner>, name: String, lease: i64, ttl: Duration) -> EtcdLock {
        let period = (ttl / 3).max(Duration::from_millis(200));
        let task_inner = inner.clone();
        let task_name = name.clone();
        let keepalive = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(period);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await; // the first tick is immediate
            loop {
                ticks.tick().await;
                // Each try must leave time for the next before expiry.
                let timeout = period.clamp(Duration::from_millis(500), REQUEST_TIMEOUT);
                match task_inner.keepalive(lease, timeout).await {
                    Ok(left) if left > 0 => {}
                    Ok(_) => {
                        tracing::error!(
                            "lock {task_name}: its lease expired or was revoked \
                             (lock broken?); it is no longer held"
                        );
                        return;
                    }
                    Err(e) => tracing::warn!("lock {task_name}: {e}"),
                }
            }
        });
        EtcdLock {
            inner,
            name,
            lease,
            ttl,
            keepalive,
        }
    }
}

#[async_trait::async_trait]
impl LockGuard for EtcdLock {
    async fn release(self: Box<Self>) -> Result<(), StateError> {
        self.keepalive.abort();
        let what = format!("release lock {}", self.name);
        match self.inner.revoke(self.lease, &what).await {
            Ok(true) => Ok(()),
            Ok(false) => {
                tracing::warn!("{what}: its lease had already expired");
                Ok(())
            }
            Err(e) => Err(StateError::Backend {
                backend: self.inner.describe(),
                message: format!(
                    "{e} (the lock frees itself when its lease expires, within {} s)",
                    self.ttl.as_secs()
                ),
            }),
        }
    }
}

impl Drop for EtcdLock {
    /// Stops renewing: etcd deletes the lock when the lease expires.
    fn drop(&mut self) {
        self.keepalive.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_end_follows_etcds_prefix_convention() {
        assert_eq!(range_end(b"/metalherd/a/"), b"/metalherd/a0".to_vec());
        assert_eq!(range_end(b"ab"), b"ac".to_vec());
        assert_eq!(range_end(b"a\xff"), b"b".to_vec());
        assert_eq!(range_end(b"a\xff\xff"), b"b".to_vec());
        assert_eq!(range_end(b"\xff\xff"), vec![0]);
        assert_eq!(range_end(b""), vec![0]);
    }

    #[test]
    fn base64_round_trips_binary_values() {
        let value: Vec<u8> = (0..=255).collect();
        assert_eq!(unb64(&b64(&value)).ok(), Some(value));
        assert_eq!(b64(b"k1"), "azE=");
    }

    #[test]
    fn gateway_json_with_omitted_defaults_and_string_integers() {
        // A failed transaction: no "succeeded"; an empty value: no "value".
        let txn: TxnResponse = parse(
            br#"{"header":{"revision":"7"},"responses":[{"response_range":{"header":{"revision":"7"},"kvs":[{"key":"azE=","create_revision":"2","mod_revision":"5","version":"1"}],"count":"1"}}]}"#,
        )
        .unwrap_or_default();
        assert!(!txn.succeeded);
        assert_eq!(txn.header.revision, 7);
        let kv = txn
            .failure_kv()
            .map(|kv| (kv.mod_revision, kv.value.clone()));
        assert_eq!(kv, Some((5, String::new())));
        // The keepalive stream, then the gateway's trailer.
        let ka: LeaseKeepAliveResponse =
            parse(b"{\"result\":{\"ID\":\"42\",\"TTL\":\"3\"}}\nGrpc-Trailer: x")
                .unwrap_or_default();
        assert_eq!(ka.result.map(|r| r.ttl), Some(3));
        let grant: LeaseGrantResponse =
            parse(br#"{"ID":"2324035572133664522","TTL":2}"#).unwrap_or_default();
        assert_eq!((grant.id, grant.ttl), (2324035572133664522, 2));
    }

    #[test]
    fn parse_errors_never_quote_the_answer() {
        let err = parse::<RangeResponse>(br#"{"kvs":[{"value":12345678901234567890123}]}"#)
            .err()
            .unwrap_or_default();
        assert!(err.contains("line 1"), "{err}");
        assert!(!err.contains("1234567890"), "{err}");
    }

    #[test]
    fn error_bodies_are_reduced_to_etcds_message() {
        let (text, code) = error_text(
            reqwest::StatusCode::SERVICE_UNAVAILABLE,
            br#"{"error":"etcdserver: request timed out","message":"etcdserver: request timed out","code":14}"#,
        );
        assert_eq!(text, "etcdserver: request timed out (HTTP 503)");
        assert_eq!(code, 14);
        let (text, _) = error_text(reqwest::StatusCode::BAD_GATEWAY, b"<html>");
        assert_eq!(text, "HTTP 502 Bad Gateway");
    }

    #[test]
    fn tls_debug_hides_the_key() {
        let tls = EtcdTls {
            ca_pem: "CA".into(),
            cert_pem: "CERT".into(),
            key_pem: Zeroizing::new("-----BEGIN PRIVATE KEY-----secret".into()),
        };
        let shown = format!("{tls:?}");
        assert!(
            !shown.contains("secret") && shown.contains("redacted"),
            "{shown}"
        );
    }

    #[test]
    fn the_prefix_is_normalized_and_never_empty() {
        let url = |s: &str| Url::parse(s).ok().into_iter().collect::<Vec<_>>();
        let store = EtcdStore::new(
            url("http://127.0.0.1:1"),
            None,
            "/metalherd/x",
            Duration::ZERO,
        );
        assert_eq!(
            store.map(|s| s.inner.object_key("a/b")).ok().as_deref(),
            Some("/metalherd/x/objects/a/b")
        );
        assert!(EtcdStore::new(url("http://127.0.0.1:1"), None, "", Duration::ZERO).is_err());
        assert!(EtcdStore::new(url("ftp://h:1"), None, "/m/", Duration::ZERO).is_err());
        assert!(EtcdStore::new(Vec::new(), None, "/m/", Duration::ZERO).is_err());
    }

    #[tokio::test]
    async fn every_endpoint_and_its_error_is_named_when_none_answers() {
        // Two ports nobody listens on (bound, then closed).
        let ports: Vec<u16> = (0..2)
            .filter_map(|_| std::net::TcpListener::bind("127.0.0.1:0").ok())
            .filter_map(|l| l.local_addr().ok())
            .map(|a| a.port())
            .collect();
        let endpoints = ports
            .iter()
            .filter_map(|p| Url::parse(&format!("http://127.0.0.1:{p}")).ok())
            .collect::<Vec<_>>();
        assert_eq!(endpoints.len(), 2);
        let Ok(store) = EtcdStore::new(endpoints, None, "/t/", Duration::from_secs(5)) else {
            panic!("store");
        };
        let err = store
            .put("a/b", b"secret-value", Expect::Any)
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        for p in ports {
            assert!(
                err.contains(&format!("http://127.0.0.1:{p}: cannot connect")),
                "{err}"
            );
        }
        assert!(err.contains("put a/b failed"), "{err}");
        assert!(!err.contains("secret-value"), "{err}");
    }
}
