//! A small HTTP/1.1 file server on loopback for tests, with faults on
//! demand: answer 500, or drop the connection part-way through a body.
//! It honours `Range: bytes=N-`, records every request, and stops when
//! dropped.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

#[derive(Default)]
pub struct State {
    pub files: HashMap<String, Vec<u8>>,
    /// Path → how many more requests get a 500.
    pub fail_500: HashMap<String, usize>,
    /// Path → drop the connection after this many body bytes (once).
    pub cut_after: HashMap<String, usize>,
    /// (path, Range header) of every request, in order.
    pub requests: Vec<(String, Option<String>)>,
}

pub struct Server {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl Server {
    pub fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        let accept = std::thread::spawn(move || {
            while !sp.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let st = st.clone();
                        std::thread::spawn(move || {
                            let _ = serve(stream, &st);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Server {
            addr,
            state,
            stop,
            accept: Some(accept),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn put(&self, path: &str, body: impl Into<Vec<u8>>) {
        self.state
            .lock()
            .unwrap()
            .files
            .insert(path.to_string(), body.into());
    }

    pub fn requests(&self) -> Vec<(String, Option<String>)> {
        self.state.lock().unwrap().requests.clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

fn serve(stream: TcpStream, state: &Mutex<State>) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let mut range = None;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header == "\r\n" {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("range") {
                range = Some(value.trim().to_string());
            }
        }
    }
    let mut out = stream;
    let (status, body, cut, content_range) = {
        let mut s = state.lock().unwrap();
        s.requests.push((path.clone(), range.clone()));
        // Files are found by path; the query (an Ignition URL's `mac=`) is
        // recorded, not matched.
        let path = path.split('?').next().unwrap_or("/").to_string();
        if let Some(n) = s.fail_500.get_mut(&path).filter(|n| **n > 0) {
            *n -= 1;
            ("500 Internal Server Error", b"boom".to_vec(), None, None)
        } else if let Some(file) = s.files.get(&path).cloned() {
            let cut = s.cut_after.remove(&path);
            let start = range
                .as_deref()
                .and_then(|r| r.strip_prefix("bytes="))
                .and_then(|r| r.strip_suffix('-'))
                .and_then(|n| n.parse::<usize>().ok());
            match start {
                Some(start) if start < file.len() => {
                    let cr = format!("bytes {start}-{}/{}", file.len() - 1, file.len());
                    ("206 Partial Content", file[start..].to_vec(), cut, Some(cr))
                }
                Some(_) => ("416 Range Not Satisfiable", Vec::new(), None, None),
                None => ("200 OK", file, cut, None),
            }
        } else {
            ("404 Not Found", b"not found".to_vec(), None, None)
        }
    };
    let mut head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if let Some(cr) = content_range {
        head.push_str(&format!("Content-Range: {cr}\r\n"));
    }
    head.push_str("\r\n");
    out.write_all(head.as_bytes())?;
    match cut {
        Some(n) if n < body.len() => {
            out.write_all(&body[..n])?;
            out.flush()?;
            // Drop the connection mid-body.
            out.shutdown(std::net::Shutdown::Both)
        }
        _ => out.write_all(&body),
    }
}
