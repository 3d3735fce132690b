//! A fault-injecting HTTP proxy on a free loopback port in front of a test registry. It
//! forwards each request on a fresh upstream connection, logs method, path and status, and
//! injects the faults it is given by request number.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default, Clone)]
pub struct Faults {
    /// Blob uploads (PUT with a body, counted from 1) cut off halfway through the body.
    pub drop_blob_puts: BTreeSet<usize>,
    /// Requests (counted from 1) that get 429 and `Retry-After: 1`.
    pub too_many_requests: BTreeSet<usize>,
    /// Requests that get 503 and an HTML body.
    pub unavailable: BTreeSet<usize>,
    /// Requests that get 500 and a JSON error.
    pub server_errors: BTreeSet<usize>,
    /// Throttle for forwarded request bodies, in bytes per second.
    pub slow_bytes_per_second: Option<u64>,
    /// Reply to every manifest PUT with 400 MANIFEST_INVALID.
    pub reject_manifests: bool,
    /// Blob uploads (counted like `drop_blob_puts`) that get 404 BLOB_UPLOAD_UNKNOWN, as from
    /// a registry that forgot the upload session.
    pub forget_uploads: BTreeSet<usize>,
}

/// One request as the proxy saw it; `status` 0 when the proxy cut the connection.
#[derive(Clone, Debug)]
pub struct Logged {
    pub method: String,
    pub path: String,
    pub status: u16,
}

pub struct Proxy {
    pub port: u16,
    pub log: Arc<Mutex<Vec<Logged>>>,
}

struct Shared {
    upstream: u16,
    faults: Faults,
    requests: AtomicUsize,
    blob_puts: AtomicUsize,
    log: Arc<Mutex<Vec<Logged>>>,
}

impl Proxy {
    pub fn start(upstream: u16, faults: Faults) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let log = Arc::new(Mutex::new(Vec::new()));
        let shared = Arc::new(Shared {
            upstream,
            faults,
            requests: AtomicUsize::new(0),
            blob_puts: AtomicUsize::new(0),
            log: log.clone(),
        });
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let shared = shared.clone();
                std::thread::spawn(move || {
                    let _ = serve(stream, &shared);
                });
            }
        });
        Proxy { port, log }
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn requests(&self) -> Vec<Logged> {
        self.log.lock().unwrap().clone()
    }
}

fn respond(client: &mut TcpStream, status: &str, headers: &str, body: &str) -> std::io::Result<()> {
    write!(client, "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\n\r\n{body}", body.len())
}

fn serve(client: TcpStream, shared: &Shared) -> std::io::Result<()> {
    let mut reader = BufReader::new(client.try_clone()?);
    let mut client = client;
    loop {
        let mut head = Vec::new();
        loop {
            let mut line = Vec::new();
            if reader.read_until(b'\n', &mut line)? == 0 {
                return Ok(());
            }
            let end = line == b"\r\n";
            head.extend_from_slice(&line);
            if end {
                break;
            }
        }
        let text = String::from_utf8_lossy(&head).into_owned();
        let mut lines = text.split("\r\n");
        let request_line = lines.next().unwrap_or_default().to_owned();
        let mut parts = request_line.split_whitespace();
        let method = parts.next().unwrap_or_default().to_owned();
        let path = parts.next().unwrap_or_default().to_owned();
        let mut length = 0usize;
        let mut upstream_head = format!("{request_line}\r\n");
        for line in lines.filter(|line| !line.is_empty()) {
            let (name, value) = line.split_once(':').unwrap_or((line, ""));
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap_or(0);
            }
            if !name.eq_ignore_ascii_case("connection") {
                upstream_head.push_str(line);
                upstream_head.push_str("\r\n");
            }
        }
        upstream_head.push_str("Connection: close\r\n\r\n");

        let number = shared.requests.fetch_add(1, Ordering::SeqCst) + 1;
        let log = |status: u16| {
            shared.log.lock().unwrap().push(Logged { method: method.clone(), path: path.clone(), status });
        };
        let faults = &shared.faults;
        let is_blob_put = method == "PUT" && path.contains("/blobs/uploads/") && length > 0;
        let blob_put = if is_blob_put { shared.blob_puts.fetch_add(1, Ordering::SeqCst) + 1 } else { 0 };
        let injected = if faults.forget_uploads.contains(&blob_put) {
            let body = r#"{"errors":[{"code":"BLOB_UPLOAD_UNKNOWN","message":"blob upload unknown to registry"}]}"#;
            Some(("404 Not Found", "Content-Type: application/json\r\n", body.to_owned()))
        } else if faults.too_many_requests.contains(&number) {
            Some(("429 Too Many Requests", "Retry-After: 1\r\n", String::new()))
        } else if faults.unavailable.contains(&number) {
            Some(("503 Service Unavailable", "Content-Type: text/html\r\n", "<html>maintenance</html>".to_owned()))
        } else if faults.server_errors.contains(&number) {
            let body = r#"{"errors":[{"code":"UNKNOWN","message":"injected failure"}]}"#.to_owned();
            Some(("500 Internal Server Error", "Content-Type: application/json\r\n", body))
        } else if faults.reject_manifests && method == "PUT" && path.contains("/manifests/") {
            let body = r#"{"errors":[{"code":"MANIFEST_INVALID","message":"manifest invalid","detail":"injected"}]}"#.to_owned();
            Some(("400 Bad Request", "Content-Type: application/json\r\n", body))
        } else {
            None
        };
        if let Some((status, headers, body)) = injected {
            std::io::copy(&mut (&mut reader).take(length as u64), &mut std::io::sink())?;
            respond(&mut client, status, headers, &body)?;
            log(status[..3].parse().unwrap());
            continue;
        }

        let mut upstream = TcpStream::connect(("127.0.0.1", shared.upstream))?;
        upstream.write_all(upstream_head.as_bytes())?;
        let drop_this = faults.drop_blob_puts.contains(&blob_put);
        let mut remaining = length;
        let mut buffer = vec![0u8; 16 * 1024];
        while remaining > 0 {
            if drop_this && remaining <= length / 2 {
                log(0);
                let _ = client.shutdown(Shutdown::Both);
                let _ = upstream.shutdown(Shutdown::Both);
                return Ok(());
            }
            let chunk = remaining.min(buffer.len());
            reader.read_exact(&mut buffer[..chunk])?;
            upstream.write_all(&buffer[..chunk])?;
            remaining -= chunk;
            if let (Some(rate), true) = (faults.slow_bytes_per_second, is_blob_put) {
                std::thread::sleep(Duration::from_secs_f64(chunk as f64 / rate as f64));
            }
        }
        let mut response = Vec::new();
        upstream.read_to_end(&mut response)?;
        let status = String::from_utf8_lossy(&response[..response.len().min(12)])
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or(0);
        client.write_all(&response)?;
        log(status);
        // The registry closes every upstream connection and sends `Connection: close`.
        if String::from_utf8_lossy(&response).to_ascii_lowercase().contains("connection: close") {
            return Ok(());
        }
    }
}
