//! The reference registry (Debian's `docker-registry`) started on a free loopback port with
//! temporary storage: plain HTTP, htpasswd basic auth over TLS, or token auth with a token
//! server that this module runs.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;

use super::tool;

pub const USERNAME: &str = "robot$ci";
pub const PASSWORD: &str = "s3cret-Pa$$word";

pub enum Auth {
    None,
    /// htpasswd with `USERNAME`/`PASSWORD`, served over TLS with a certificate for 127.0.0.1.
    BasicTls,
    /// Bearer tokens from a token server that accepts `USERNAME`/`PASSWORD`.
    Token,
}

pub struct Registry {
    pub port: u16,
    pub dir: PathBuf,
    /// CA of the TLS certificate, for `BasicTls`.
    pub ca_file: Option<PathBuf>,
    /// Token requests the token server received, as their query strings.
    pub token_requests: Arc<Mutex<Vec<String>>>,
    child: Child,
}

impl Registry {
    pub fn start(dir: &Path, auth: Auth) -> Registry {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir.join("storage")).unwrap();
        let mut config = format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n  \
             delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:0\n",
            dir.join("storage").display()
        );
        let mut ca_file = None;
        let token_requests = Arc::new(Mutex::new(Vec::new()));
        match auth {
            Auth::None => {}
            Auth::BasicTls => {
                let tls = super::tls::Certificates::create(&dir.join("tls"));
                let hash = bcrypt::hash(PASSWORD, 5).unwrap();
                std::fs::write(dir.join("htpasswd"), format!("{USERNAME}:{hash}\n")).unwrap();
                config.push_str(&format!(
                    "  tls:\n    certificate: {}\n    key: {}\nauth:\n  htpasswd:\n    realm: test\n    path: {}\n",
                    tls.server_cert.display(),
                    tls.server_key.display(),
                    dir.join("htpasswd").display()
                ));
                ca_file = Some(tls.ca_cert);
            }
            Auth::Token => {
                let signing = super::tls::Certificates::create(&dir.join("token"));
                let realm = start_token_server(&signing.ca_cert, &signing.ca_key, token_requests.clone());
                config.push_str(&format!(
                    "auth:\n  token:\n    realm: {realm}\n    service: test-registry\n    \
                     issuer: test-issuer\n    rootcertbundle: {}\n",
                    signing.ca_cert.display()
                ));
            }
        }
        std::fs::write(dir.join("config.yml"), config).unwrap();

        let log_path = dir.join("registry.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let child = Command::new(tool("docker-registry"))
            .arg("serve")
            .arg(dir.join("config.yml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting docker-registry");
        let deadline = Instant::now() + Duration::from_secs(30);
        let port = loop {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            if let Some(port) = listening_port(&text) {
                break port;
            }
            assert!(Instant::now() < deadline, "docker-registry did not start:\n{text}");
            std::thread::sleep(Duration::from_millis(50));
        };
        Registry { port, dir: dir.to_owned(), ca_file, token_requests, child }
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("registry.log")).unwrap_or_default()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Finds the port in the registry's `listening on 127.0.0.1:PORT` log line.
fn listening_port(log: &str) -> Option<u16> {
    let start = log.find("listening on 127.0.0.1:")? + "listening on 127.0.0.1:".len();
    let digits: String = log[start..].chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Runs a token server on a free loopback port and returns its realm URL. It grants every
/// requested scope to `USERNAME`/`PASSWORD` (and pull to anonymous requests), signing RS256
/// tokens whose `x5c` header carries `cert`, which the registry trusts as its root bundle.
fn start_token_server(cert: &Path, key: &Path, requests: Arc<Mutex<Vec<String>>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let pem = std::fs::read_to_string(cert).unwrap();
    let der_base64: String = pem.lines().filter(|line| !line.starts_with("-----")).collect();
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(&std::fs::read(key).unwrap()).unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let _ = serve_token(stream, &der_base64, &key, &requests);
        }
    });
    format!("http://127.0.0.1:{port}/token")
}

fn serve_token(
    mut stream: TcpStream,
    x5c: &str,
    key: &jsonwebtoken::EncodingKey,
    requests: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut authorization = None;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        if line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("authorization") {
                authorization = Some(value.trim().to_owned());
            }
        }
    }
    let target = request_line.split_whitespace().nth(1).unwrap_or("/");
    let url = url::Url::parse(&format!("http://token{target}")).unwrap();
    requests.lock().unwrap().push(url.query().unwrap_or("").to_owned());

    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{USERNAME}:{PASSWORD}"))
    );
    let account = url.query_pairs().find(|(k, _)| k == "account").map(|(_, v)| v.into_owned());
    let authenticated = authorization.as_deref() == Some(expected.as_str());
    if authorization.is_some() && (!authenticated || account.as_deref() != Some(USERNAME)) {
        let body = r#"{"errors":[{"code":"UNAUTHORIZED","message":"invalid credentials"}]}"#;
        write!(stream, "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())?;
        return Ok(());
    }
    let mut access = Vec::new();
    for (key, scope) in url.query_pairs() {
        if key != "scope" {
            continue;
        }
        let parts: Vec<&str> = scope.split(':').collect();
        if parts.len() != 3 {
            continue;
        }
        let actions: Vec<&str> = parts[2]
            .split(',')
            .filter(|action| authenticated || *action == "pull")
            .collect();
        access.push(serde_json::json!({"type": parts[0], "name": parts[1], "actions": actions}));
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let claims = serde_json::json!({
        "iss": "test-issuer",
        "sub": if authenticated { USERNAME } else { "" },
        "aud": "test-registry",
        "exp": now + 600,
        "nbf": now - 10,
        "iat": now,
        "jti": format!("{now}-{}", requests.lock().unwrap().len()),
        "access": access,
    });
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.x5c = Some(vec![x5c.to_owned()]);
    let token = jsonwebtoken::encode(&header, &claims, key).unwrap();
    let body = serde_json::json!({"token": token, "expires_in": 600}).to_string();
    write!(stream, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())?;
    Ok(())
}
