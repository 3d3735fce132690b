//! A single HTTP/1.1 POST over rustls, with the request and response written
//! and parsed by hand.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

/// Maximum size in bytes of a response head (status line and headers).
const MAX_RESPONSE_HEAD_BYTES: usize = 16 * 1024;

/// Parsed `https://HOST[:PORT][/PATH][?QUERY]` URL.
#[derive(Debug, PartialEq, Eq)]
pub struct HttpsUrl {
    /// Host name or IP address, without the brackets of an IPv6 literal.
    pub host: String,
    pub port: u16,
    /// Authority as written in the URL, sent as the `Host` header.
    pub authority: String,
    /// Path and query, starting with `/`.
    pub path: String,
}

impl HttpsUrl {
    pub fn parse(url: &str) -> Result<Self, String> {
        let invalid = |reason: &str| format!("invalid URL {url:?}: {reason}");

        let rest = url
            .get(..8)
            .filter(|scheme| scheme.eq_ignore_ascii_case("https://"))
            .map(|_| &url[8..])
            .ok_or_else(|| invalid("expected https://HOST[:PORT]/PATH"))?;
        if rest.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(invalid("contains whitespace or control characters"));
        }
        let rest = rest
            .split_once('#')
            .map_or(rest, |(before, _fragment)| before);

        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(authority_end);
        let path = match path {
            "" => "/".to_owned(),
            query if query.starts_with('?') => format!("/{query}"),
            path => path.to_owned(),
        };
        if authority.contains('@') {
            return Err(invalid("user information is not supported"));
        }

        let (host, port) =
            split_host_port(authority).ok_or_else(|| invalid("invalid host or port"))?;
        Ok(Self {
            host: host.to_owned(),
            port,
            authority: authority.to_owned(),
            path,
        })
    }
}

/// Splits `host`, `host:port`, `[ipv6]` or `[ipv6]:port` into host and port,
/// with 443 as the default port.
fn split_host_port(authority: &str) -> Option<(&str, u16)> {
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (host, after) = bracketed.split_once(']')?;
        match after {
            "" => (host, None),
            _ => (host, Some(after.strip_prefix(':')?)),
        }
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let port = match port {
        None => 443,
        Some(port) => port.parse().ok().filter(|&port| port != 0)?,
    };
    (!host.is_empty()).then_some((host, port))
}

/// Builds a client configuration that trusts only the system CA certificates.
///
/// rustls-native-certs reads SSL_CERT_FILE and SSL_CERT_DIR when either is
/// set, and otherwise the file and directory that openssl-probe finds, such as
/// /etc/ssl/certs/ca-certificates.crt.
pub fn client_config() -> Result<ClientConfig, String> {
    let loaded = rustls_native_certs::load_native_certs();
    for err in &loaded.errors {
        eprintln!("notifier: warning: {err}");
    }
    let mut roots = RootCertStore::empty();
    let (_added, ignored) = roots.add_parsable_certificates(loaded.certs);
    if ignored > 0 {
        eprintln!("notifier: warning: ignored {ignored} CA certificates that failed to parse");
    }
    if roots.is_empty() {
        return Err("no CA certificates found: install /etc/ssl/certs/ca-certificates.crt or set SSL_CERT_FILE".to_owned());
    }

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| format!("configure TLS: {err}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Posts `body` as text/plain to `url` and returns the final status code and
/// reason phrase. Informational (1xx) responses are skipped.
///
/// `timeout` bounds the TCP connect and each read or write, not the whole
/// exchange.
pub fn post(
    url: &HttpsUrl,
    body: &[u8],
    config: Arc<ClientConfig>,
    timeout: Duration,
) -> Result<(u16, String), String> {
    let endpoint = match url.host.contains(':') {
        true => format!("[{}]:{}", url.host, url.port),
        false => format!("{}:{}", url.host, url.port),
    };
    let socket = connect(&url.host, url.port, timeout)?;
    socket
        .set_read_timeout(Some(timeout))
        .and_then(|()| socket.set_write_timeout(Some(timeout)))
        .map_err(|err| format!("set socket timeouts: {err}"))?;

    let server_name = ServerName::try_from(url.host.clone())
        .map_err(|err| format!("invalid server name {:?}: {err}", url.host))?;
    let connection = ClientConnection::new(config, server_name)
        .map_err(|err| format!("start TLS session with {endpoint}: {err}"))?;
    let mut tls = StreamOwned::new(connection, socket);

    // Complete the handshake before writing so that a certificate error gets
    // its own message.
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock).map_err(|err| {
            format!(
                "TLS handshake with {endpoint} failed: {}",
                describe(&err, timeout)
            )
        })?;
    }

    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: notifier/{}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        url.path,
        url.authority,
        env!("CARGO_PKG_VERSION"),
        body.len(),
    );
    tls.write_all(head.as_bytes())
        .and_then(|()| tls.write_all(body))
        .and_then(|()| tls.flush())
        .map_err(|err| format!("send request to {endpoint}: {}", describe(&err, timeout)))?;

    let status = read_final_status(&mut tls)
        .map_err(|err| format!("read response from {endpoint}: {}", describe(&err, timeout)))?;

    // The status is all that is needed, so close without reading the body.
    // A failed close_notify does not change the outcome.
    tls.conn.send_close_notify();
    let _ = tls.flush();
    Ok(status)
}

/// Connects to the first address of `host` that accepts a connection.
fn connect(host: &str, port: u16, timeout: Duration) -> Result<TcpStream, String> {
    let addresses = (host, port)
        .to_socket_addrs()
        .map_err(|err| format!("resolve {host}: {err}"))?;
    let mut last_error = None;
    for address in addresses {
        match TcpStream::connect_timeout(&address, timeout) {
            Ok(socket) => return Ok(socket),
            Err(err) => last_error = Some(format!("connect to {address}: {err}")),
        }
    }
    Err(last_error.unwrap_or_else(|| format!("resolve {host}: no addresses found")))
}

/// Describes `err`, naming the timeout when a socket read or write ran into it.
fn describe(err: &io::Error, timeout: Duration) -> String {
    match err.kind() {
        // A socket timeout surfaces as EAGAIN (WouldBlock) on Linux.
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            format!("timed out after {}s", timeout.as_secs())
        }
        _ => err.to_string(),
    }
}

/// Reads response heads until one has a status other than 1xx, and returns
/// its status code and reason phrase. A malformed or oversized head is an
/// `InvalidData` error.
fn read_final_status(reader: &mut impl Read) -> io::Result<(u16, String)> {
    let mut buffer = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = find_subsequence(&buffer, b"\r\n\r\n") {
            let (code, reason) = parse_status_line(&buffer[..end])
                .map_err(|message| io::Error::new(io::ErrorKind::InvalidData, message))?;
            // 101 Switching Protocols ends HTTP/1.1, so only the other 1xx
            // responses precede a final one.
            if (100..200).contains(&code) && code != 101 {
                buffer.drain(..end + 4);
                continue;
            }
            return Ok((code, reason));
        }
        if buffer.len() > MAX_RESPONSE_HEAD_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("response head exceeds {MAX_RESPONSE_HEAD_BYTES} bytes"),
            ));
        }

        let read = match reader.read(&mut chunk) {
            Ok(read) => read,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            // rustls reports UnexpectedEof when the peer closes without close_notify.
            Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => 0,
            Err(err) => return Err(err),
        };
        if read == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before a complete response head arrived",
            ));
        }
        buffer.extend_from_slice(&chunk[..read]);
    }
}

/// Parses the first line of `head`, such as `HTTP/1.1 204 No Content`.
fn parse_status_line(head: &[u8]) -> Result<(u16, String), String> {
    let line_end = find_subsequence(head, b"\r\n").unwrap_or(head.len());
    let line = String::from_utf8_lossy(&head[..line_end]);
    let invalid = || format!("invalid status line {line:?}");

    let (version, rest) = line.split_once(' ').ok_or_else(invalid)?;
    if !version.starts_with("HTTP/1.") {
        return Err(invalid());
    }
    let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
    if code.len() != 3 {
        return Err(invalid());
    }
    let code = code.parse::<u16>().map_err(|_| invalid())?;
    Ok((code, reason.to_owned()))
}

fn find_subsequence(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_url_forms() {
        let url = HttpsUrl::parse("https://example.com").unwrap();
        assert_eq!(
            (url.host.as_str(), url.port, url.path.as_str()),
            ("example.com", 443, "/")
        );

        let url = HttpsUrl::parse("HTTPS://127.0.0.1:8443/hooks/a?x=1#top").unwrap();
        assert_eq!(url.host, "127.0.0.1");
        assert_eq!(url.port, 8443);
        assert_eq!(url.authority, "127.0.0.1:8443");
        assert_eq!(url.path, "/hooks/a?x=1");

        let url = HttpsUrl::parse("https://[::1]:9443?q").unwrap();
        assert_eq!(url.host, "::1");
        assert_eq!(url.port, 9443);
        assert_eq!(url.path, "/?q");
    }

    #[test]
    fn parse_url_rejections() {
        for url in [
            "http://example.com/",
            "https://",
            "https://:443/",
            "https://example.com:0/",
            "https://example.com:99999/",
            "https://example.com:port/",
            "https://user@example.com/",
            "https://[::1/",
            "https://[::1]x/",
            "https://example.com/a b",
            "https://example.com/a\r\nX: y",
        ] {
            assert!(HttpsUrl::parse(url).is_err(), "{url:?} was accepted");
        }
    }

    #[test]
    fn final_status_skips_informational() {
        let raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\nX: y\r\n\r\n";
        let status = read_final_status(&mut &raw[..]).unwrap();
        assert_eq!(status, (204, "No Content".to_owned()));
    }

    #[test]
    fn final_status_errors() {
        assert!(read_final_status(&mut &b""[..]).is_err());
        assert!(read_final_status(&mut &b"HTTP/1.1 200 OK\r\n"[..]).is_err());
        assert!(read_final_status(&mut &b"SSH-2.0-OpenSSH\r\n\r\n"[..]).is_err());
        assert!(read_final_status(&mut &b"HTTP/1.1 20 OK\r\n\r\n"[..]).is_err());
    }

    #[test]
    fn status_line_without_reason() {
        assert_eq!(
            parse_status_line(b"HTTP/1.1 200").unwrap(),
            (200, String::new())
        );
    }
}
