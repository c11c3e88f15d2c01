//! What the scale harness's threads need to talk from inside a network
//! namespace without a process per request: entering a namespace (the
//! calling thread only, `setns(CLONE_NEWNET)`), a tiny blocking HTTP/1.1
//! client (one connection per request, `Connection: close`;
//! `Content-Length` and chunked bodies), and reading the one request a
//! connection carries (for the sushy notification listener).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Moves the calling thread (only it) into network namespace `ns`
/// (`/var/run/netns/<ns>`, as `ip netns add` makes it).
pub fn enter(ns: &str) {
    let file = std::fs::File::open(format!("/var/run/netns/{ns}"))
        .unwrap_or_else(|e| panic!("network namespace {ns}: {e}"));
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
        .unwrap_or_else(|e| panic!("setns into {ns}: {e}"));
}

/// Runs `f` on a thread of its own in network namespace `ns` and returns
/// what it returns (a socket bound there stays there).
pub fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = ns.to_string();
    std::thread::spawn(move || {
        enter(&ns);
        f()
    })
    .join()
    .unwrap()
}

/// An answer: status and body.
pub struct Answer {
    pub status: u16,
    pub body: String,
}

/// One request to `addr` (`ip:port`); `Err` when the connection fails or
/// the answer is not HTTP. The status is the caller's to judge.
pub fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Result<Answer, String> {
    let to: SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    let mut stream = TcpStream::connect_timeout(&to, Duration::from_secs(5))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .and_then(|_| stream.set_write_timeout(Some(Duration::from_secs(15))))
        .map_err(|e| e.to_string())?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    let body = body.unwrap_or("");
    if !body.is_empty() || method != "GET" {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    head.push_str(body);
    stream
        .write_all(head.as_bytes())
        .map_err(|e| format!("{method} {addr}{path}: {e}"))?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .map_err(|e| format!("{method} {addr}{path}: reading the answer: {e}"))?;
    parse_answer(&raw).map_err(|e| format!("{method} {addr}{path}: {e}"))
}

/// Like [`request`], an `Err` for any status but 2xx too.
pub fn ok(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Result<String, String> {
    let answer = request(addr, method, path, headers, body)?;
    if (200..300).contains(&answer.status) {
        Ok(answer.body)
    } else {
        Err(format!(
            "{method} http://{addr}{path}: {} {}",
            answer.status,
            answer.body.trim()
        ))
    }
}

fn parse_answer(raw: &[u8]) -> Result<Answer, String> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of headers in the answer")?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not an HTTP status line: {head}"))?;
    let header = |name: &str| {
        head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    };
    let rest = &raw[split + 4..];
    let body = if header("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
        dechunk(rest)?
    } else if let Some(len) = header("content-length").and_then(|l| l.parse::<usize>().ok()) {
        rest.get(..len)
            .ok_or("the answer is shorter than its Content-Length")?
            .to_vec()
    } else {
        rest.to_vec()
    };
    Ok(Answer {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("a chunk without its size line")?;
        let size = String::from_utf8_lossy(&rest[..line_end]);
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|e| format!("chunk size {size:?}: {e}"))?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        body.extend_from_slice(rest.get(..size).ok_or("a chunk cut short")?);
        rest = rest.get(size + 2..).ok_or("a chunk without its CRLF")?;
    }
}

/// Reads the one request on `stream` (request line, headers, a
/// `Content-Length` body): its method, path and body.
pub fn read_request(stream: &TcpStream) -> Result<(String, String, String), String> {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).map_err(|e| e.to_string())?;
    let mut parts = line.split_whitespace();
    let (method, path) = (
        parts.next().unwrap_or_default().to_string(),
        parts.next().unwrap_or_default().to_string(),
    );
    let mut length = 0;
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).map_err(|e| e.to_string())?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((k, v)) = header.split_once(':') {
            if k.trim().eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().map_err(|e| format!("{header}: {e}"))?;
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).map_err(|e| e.to_string())?;
    Ok((method, path, String::from_utf8_lossy(&body).into_owned()))
}

#[test]
fn answers_with_a_length_or_in_chunks_are_read_whole() {
    let plain = parse_answer(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello").unwrap();
    assert_eq!((plain.status, plain.body.as_str()), (200, "hello"));
    let chunked = parse_answer(
        b"HTTP/1.1 403 Forbidden\r\ntransfer-encoding: chunked\r\n\r\n4\r\nhell\r\n1;x=y\r\no\r\n0\r\n\r\n",
    )
    .unwrap();
    assert_eq!((chunked.status, chunked.body.as_str()), (403, "hello"));
    assert!(parse_answer(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nhello").is_err());
    assert!(parse_answer(b"garbage").is_err());
}
