//! A blocking client for the push side of the OCI distribution API.
//!
//! Written on ureq rather than taken from a registry crate: the Rust OCI clients (oci-client)
//! are async, retry nothing, take blobs as byte vectors with no progress, and decide the
//! upload flow themselves. Publishing here needs a byte count per blob for the progress bars,
//! retries that honour `Retry-After`, a restart when a registry loses an upload session,
//! cross-repository mounts with a fallback, and one error line that names the registry's own
//! error code, in a code base that is otherwise synchronous.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use indicatif::ProgressBar;
use serde::Deserialize;
use url::Url;

use super::auth::{self, Challenge, Credentials};

/// Attempts of one request before its error is returned.
const MAX_ATTEMPTS: u32 = 8;
/// Longest wait between attempts, also the cap on a registry's `Retry-After`.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// How to reach a registry.
pub struct Endpoint {
    /// `host[:port]`, as in image references.
    pub host: String,
    /// Use `http://` instead of `https://`.
    pub plain_http: bool,
    /// PEM file of extra CA certificates to trust besides the system roots.
    pub ca_file: Option<PathBuf>,
}

pub struct Client {
    agent: ureq::Agent,
    base: Url,
    host: String,
    credentials: Option<Credentials>,
    /// `Authorization` header values by the scopes they were issued for.
    authorizations: Mutex<HashMap<String, String>>,
    log: Arc<dyn Fn(String) + Send + Sync>,
}

/// A request body that can be sent again on a retry.
pub enum Body<'a> {
    Empty,
    Bytes(&'a [u8]),
    File { path: &'a std::path::Path, size: u64, progress: Option<&'a ProgressBar> },
}

/// Kind of a request failure.
enum Failure {
    /// Worth another attempt after a wait: a connection error, 408, 429 or 5xx.
    Transient { error: anyhow::Error, retry_after: Option<Duration> },
    Final(anyhow::Error),
}

#[derive(Deserialize)]
struct ErrorBody {
    errors: Vec<RegistryError>,
}

#[derive(Deserialize)]
struct RegistryError {
    code: String,
    #[serde(default)]
    message: String,
}

/// A response's status, headers and body, read in full (bodies here are small JSON).
pub struct Reply {
    pub status: u16,
    pub headers: ureq::http::HeaderMap,
    pub body: Vec<u8>,
    /// URL the request went to, for resolving a relative `Location`.
    pub url: Url,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }

    /// Resolves the `Location` header against the request URL; an absolute one stays as it is
    /// and a query in it is kept.
    pub fn location(&self) -> Result<Url> {
        let location = self.header("location").context("the registry sent no Location header")?;
        self.url.join(location).with_context(|| format!("invalid Location header {location:?}"))
    }

    /// Formats the registry's error codes and messages, or the start of a non-JSON body.
    pub fn error_text(&self) -> String {
        if let Ok(parsed) = serde_json::from_slice::<ErrorBody>(&self.body) {
            if !parsed.errors.is_empty() {
                let parts: Vec<String> = parsed
                    .errors
                    .iter()
                    .map(|e| format!("{}: {}", e.code, e.message))
                    .collect();
                return parts.join("; ");
            }
        }
        let text = String::from_utf8_lossy(&self.body);
        let text: String = text.trim().chars().take(200).collect();
        if text.is_empty() {
            "no error body".to_owned()
        } else {
            format!("non-JSON body {text:?}")
        }
    }

    pub fn has_error_code(&self, code: &str) -> bool {
        serde_json::from_slice::<ErrorBody>(&self.body)
            .is_ok_and(|parsed| parsed.errors.iter().any(|e| e.code == code))
    }
}

fn is_loopback(host: &str) -> bool {
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name == "localhost" || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn root_certificates(ca_file: Option<&std::path::Path>) -> Result<ureq::tls::RootCerts> {
    let mut certificates: Vec<ureq::tls::Certificate<'static>> = Vec::new();
    let system = rustls_native_certs::load_native_certs();
    for certificate in system.certs {
        certificates.push(ureq::tls::Certificate::from_der(certificate.as_ref()).to_owned());
    }
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let mut found = 0;
        for item in ureq::tls::parse_pem(&pem) {
            if let ureq::tls::PemItem::Certificate(certificate) = item? {
                certificates.push(certificate.to_owned());
                found += 1;
            }
        }
        if found == 0 {
            bail!("{} contains no PEM certificate", path.display());
        }
    }
    Ok(ureq::tls::RootCerts::new_with_certs(&certificates))
}

impl Client {
    pub fn new(endpoint: &Endpoint, log: Arc<dyn Fn(String) + Send + Sync>) -> Result<Client> {
        if endpoint.plain_http && endpoint.ca_file.is_some() {
            bail!("--plain-http and --ca-file contradict each other: choose one for {}", endpoint.host);
        }
        let tls = ureq::tls::TlsConfig::builder()
            .root_certs(root_certificates(endpoint.ca_file.as_deref())?)
            .build();
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(5)
            .timeout_connect(Some(Duration::from_secs(15)))
            .timeout_recv_response(Some(Duration::from_secs(120)))
            .tls_config(tls)
            .user_agent(concat!("xtask/", env!("CARGO_PKG_VERSION")))
            .build();
        let scheme = if endpoint.plain_http { "http" } else { "https" };
        let base = Url::parse(&format!("{scheme}://{}/", endpoint.host))
            .with_context(|| format!("invalid registry host {:?}", endpoint.host))?;
        Ok(Client {
            agent: config.new_agent(),
            base,
            host: endpoint.host.clone(),
            credentials: auth::credentials_for(&endpoint.host)?,
            authorizations: Mutex::new(HashMap::new()),
            log,
        })
    }

    /// Chooses plain HTTP for a loopback registry that does not speak TLS, as local test and
    /// development registries usually do. Any other host needs `--plain-http` for that.
    pub fn connect(mut endpoint: Endpoint, log: Arc<dyn Fn(String) + Send + Sync>) -> Result<Client> {
        if endpoint.plain_http || endpoint.ca_file.is_some() || !is_loopback(&endpoint.host) {
            return Client::new(&endpoint, log);
        }
        endpoint.plain_http = true;
        let plain = Client::new(&endpoint, log.clone())?;
        let probe = plain.agent.get(plain.base.join("v2/")?.as_str()).call();
        // Go's TLS servers reply to a plain request with 400 and this sentence.
        let speaks_tls = match probe {
            Ok(mut response) => {
                let body = response.body_mut().read_to_string().unwrap_or_default();
                response.status().as_u16() == 400 && body.contains("HTTPS server")
            }
            Err(_) => true,
        };
        if !speaks_tls {
            return Ok(plain);
        }
        endpoint.plain_http = false;
        Client::new(&endpoint, log)
    }

    /// Prints a line through the caller's log, for retries and restarts.
    pub fn log_line(&self, line: String) {
        (self.log)(line);
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn url(&self, path: &str) -> Result<Url> {
        Ok(self.base.join(path)?)
    }

    /// Sends a request, retrying transient failures with backoff, and responding to an
    /// authentication challenge once. `scopes` are the token scopes the request needs.
    pub fn send(&self, method: &str, url: &Url, scopes: &[String], headers: &[(&str, &str)], body: &Body) -> Result<Reply> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.send_authorized(method, url, scopes, headers, body) {
                Ok(reply) => return Ok(reply),
                Err(Failure::Final(error)) => return Err(error),
                Err(Failure::Transient { error, retry_after }) => {
                    if attempt >= MAX_ATTEMPTS {
                        return Err(error.context(format!("giving up after {attempt} attempts")));
                    }
                    let wait = retry_after.unwrap_or_else(|| backoff(attempt)).min(MAX_BACKOFF);
                    (self.log)(format!(
                        "retrying {method} {} in {:.1} s (attempt {} of {MAX_ATTEMPTS}): {error:#}",
                        url.path(),
                        wait.as_secs_f64(),
                        attempt + 1
                    ));
                    std::thread::sleep(wait);
                }
            }
        }
    }

    /// Sends a request once; a transient failure is returned to the caller to handle.
    pub fn send_once(&self, method: &str, url: &Url, scopes: &[String], headers: &[(&str, &str)], body: &Body) -> Result<Reply, (anyhow::Error, bool)> {
        match self.send_authorized(method, url, scopes, headers, body) {
            Ok(reply) => Ok(reply),
            Err(Failure::Final(error)) => Err((error, false)),
            Err(Failure::Transient { error, .. }) => Err((error, true)),
        }
    }

    fn send_authorized(&self, method: &str, url: &Url, scopes: &[String], headers: &[(&str, &str)], body: &Body) -> Result<Reply, Failure> {
        let key = scopes.join(" ");
        let cached = self.authorizations.lock().expect("authorization lock").get(&key).cloned();
        let reply = self.send_raw(method, url, headers, cached.as_deref(), body)?;
        if reply.status != 401 {
            return classify(reply);
        }
        let Some(challenge) = reply.header("www-authenticate").and_then(auth::parse_challenge) else {
            return Err(Failure::Final(anyhow!(
                "{} rejected the request with 401 and no usable WWW-Authenticate challenge",
                self.host
            )));
        };
        let authorization = self.authorize(&challenge, scopes)?;
        self.authorizations.lock().expect("authorization lock").insert(key, authorization.clone());
        let reply = self.send_raw(method, url, headers, Some(&authorization), body)?;
        if reply.status == 403 {
            return Err(Failure::Final(anyhow!(
                "{} denied {method} {} (HTTP 403: {}): check that the account may push there",
                self.host,
                url.path(),
                reply.error_text()
            )));
        }
        if reply.status == 401 {
            let hint = if self.credentials.is_some() {
                "check the user name and password"
            } else {
                "no credentials found: run `docker login`, or set XTASK_REGISTRY_USERNAME and XTASK_REGISTRY_PASSWORD"
            };
            return Err(Failure::Final(anyhow!(
                "authentication to {} failed (HTTP {}: {}): {hint}",
                self.host,
                reply.status,
                reply.error_text()
            )));
        }
        classify(reply)
    }

    /// Returns an `Authorization` header value for a challenge: basic credentials, or a bearer
    /// token fetched from the challenge's realm for `scopes`.
    fn authorize(&self, challenge: &Challenge, scopes: &[String]) -> Result<String, Failure> {
        match challenge {
            Challenge::Basic => match &self.credentials {
                Some(credentials) => Ok(credentials.basic_header()),
                None => Err(Failure::Final(anyhow!(
                    "{} needs credentials: run `docker login {}`, or set \
                     XTASK_REGISTRY_USERNAME and XTASK_REGISTRY_PASSWORD",
                    self.host,
                    self.host
                ))),
            },
            Challenge::Bearer { realm, service } => {
                let mut url = Url::parse(realm)
                    .map_err(|err| Failure::Final(anyhow!("invalid token realm {realm:?}: {err}")))?;
                {
                    // query_pairs_mut percent-encodes values, so robot names with '$' and
                    // scopes with ':' and ',' arrive intact.
                    let mut query = url.query_pairs_mut();
                    if let Some(service) = service {
                        query.append_pair("service", service);
                    }
                    for scope in scopes {
                        query.append_pair("scope", scope);
                    }
                    if let Some(credentials) = &self.credentials {
                        query.append_pair("account", &credentials.username);
                    }
                }
                let basic = self.credentials.as_ref().map(Credentials::basic_header);
                let reply = self.send_raw("GET", &url, &[], basic.as_deref(), &Body::Empty)?;
                if reply.status == 401 || reply.status == 403 {
                    return Err(Failure::Final(anyhow!(
                        "authentication to {} failed: the token server {} rejected the credentials ({})",
                        self.host,
                        url.host_str().unwrap_or("?"),
                        reply.error_text()
                    )));
                }
                let reply = classify(reply)?;
                #[derive(Deserialize)]
                struct Token {
                    token: Option<String>,
                    access_token: Option<String>,
                }
                // serde's message would quote the body, which contains the token.
                let token: Token = serde_json::from_slice(&reply.body).map_err(|_| {
                    Failure::Final(anyhow!(
                        "invalid token response from {}: expected a JSON object with `token`",
                        url.host_str().unwrap_or("?")
                    ))
                })?;
                let token = token.token.or(token.access_token).ok_or_else(|| {
                    Failure::Final(anyhow!("the token response from {} has no token", url.host_str().unwrap_or("?")))
                })?;
                Ok(format!("Bearer {token}"))
            }
        }
    }

    fn send_raw(&self, method: &str, url: &Url, headers: &[(&str, &str)], authorization: Option<&str>, body: &Body) -> Result<Reply, Failure> {
        let mut request = ureq::http::Request::builder().method(method).uri(url.as_str());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(authorization) = authorization {
            request = request.header("Authorization", authorization);
        }
        let result = match body {
            Body::Empty => {
                let request = request.header("Content-Length", "0").body(()).map_err(final_error)?;
                self.agent.run(request)
            }
            Body::Bytes(bytes) => {
                let request = request.body(bytes.to_vec()).map_err(final_error)?;
                self.agent.run(request)
            }
            Body::File { path, size, progress } => {
                let file = File::open(path).map_err(|err| final_error(anyhow!("opening {}: {err}", path.display())))?;
                if let Some(bar) = progress {
                    bar.set_position(0);
                }
                let mut reader = Counting { inner: file, progress: *progress };
                let body = ureq::SendBody::from_reader(&mut reader);
                let request = request
                    .header("Content-Length", size.to_string())
                    .header("Content-Type", "application/octet-stream")
                    .body(body)
                    .map_err(final_error)?;
                self.agent.run(request)
            }
        };
        let mut response = match result {
            Ok(response) => response,
            Err(ureq::Error::HostNotFound) => {
                return Err(Failure::Final(anyhow!(
                    "unknown registry host {}: check the name, or the network's DNS",
                    self.host
                )))
            }
            // ureq reports a failed name lookup as an I/O error carrying the resolver's text.
            Err(ureq::Error::Io(err)) if err.to_string().contains("lookup address") => {
                return Err(Failure::Final(anyhow!(
                    "unknown registry host {}: the name lookup failed ({err}): check the name, \
                     or the network's DNS",
                    self.host
                )))
            }
            Err(err @ (ureq::Error::Io(_) | ureq::Error::Timeout(_) | ureq::Error::ConnectionFailed | ureq::Error::Protocol(_))) => {
                return Err(Failure::Transient {
                    error: anyhow!("{method} {url} failed: {err}"),
                    retry_after: None,
                })
            }
            Err(err) => return Err(Failure::Final(anyhow!("{method} {url} failed: {err}"))),
        };
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let mut bytes = Vec::new();
        if method != "HEAD" {
            let read = response.body_mut().as_reader().take(16 << 20).read_to_end(&mut bytes);
            if let Err(err) = read {
                return Err(Failure::Transient {
                    error: anyhow!("reading the response to {method} {url}: {err}"),
                    retry_after: None,
                });
            }
        }
        Ok(Reply { status, headers, body: bytes, url: url.clone() })
    }
}

fn final_error(err: impl Into<anyhow::Error>) -> Failure {
    Failure::Final(err.into())
}

/// Sorts a reply into success (2xx, 3xx and 404, which callers handle) and failures.
fn classify(reply: Reply) -> Result<Reply, Failure> {
    let status = reply.status;
    if status < 400 || status == 404 {
        return Ok(reply);
    }
    let error = anyhow!("HTTP {status}: {}", reply.error_text());
    if status == 408 || status == 429 || status >= 500 {
        let retry_after = reply
            .header("retry-after")
            .and_then(|value| value.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        return Err(Failure::Transient { error, retry_after });
    }
    Ok(reply)
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(250 * 2u64.pow(attempt.min(7)))
}

/// Counts the bytes read into a progress bar.
struct Counting<'a> {
    inner: File,
    progress: Option<&'a ProgressBar>,
}

impl Read for Counting<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let read = self.inner.read(buf)?;
        if let Some(bar) = self.progress {
            bar.inc(read as u64);
        }
        Ok(read)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_are_recognized() {
        assert!(is_loopback("127.0.0.1:5000"));
        assert!(is_loopback("localhost"));
        assert!(is_loopback("[::1]:5000"));
        assert!(!is_loopback("registry.example:5000"));
        assert!(!is_loopback("10.0.0.1"));
    }

    #[test]
    fn relative_location_keeps_query() {
        let reply = Reply {
            status: 202,
            headers: {
                let mut headers = ureq::http::HeaderMap::new();
                headers.insert("location", "/v2/ns/x/blobs/uploads/abc?_state=xyz".parse().unwrap());
                headers
            },
            body: Vec::new(),
            url: Url::parse("https://r.example:5000/v2/ns/x/blobs/uploads/").unwrap(),
        };
        assert_eq!(
            reply.location().unwrap().as_str(),
            "https://r.example:5000/v2/ns/x/blobs/uploads/abc?_state=xyz"
        );
    }

    #[test]
    fn non_json_error_is_reported() {
        let reply = Reply {
            status: 502,
            headers: ureq::http::HeaderMap::new(),
            body: b"<html>bad gateway</html>".to_vec(),
            url: Url::parse("https://r.example/v2/").unwrap(),
        };
        assert_eq!(reply.error_text(), "non-JSON body \"<html>bad gateway</html>\"");
    }
}
