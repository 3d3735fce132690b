//! Registry credentials and the authentication challenges of the distribution spec.
//!
//! Credentials come, in this order, from `XTASK_REGISTRY_USERNAME` and
//! `XTASK_REGISTRY_PASSWORD` (for CI), then from the Docker config file
//! (`$DOCKER_CONFIG/config.json` or `~/.docker/config.json`): a credential helper named for
//! the registry in `credHelpers`, an `auths` entry, or the default helper in `credsStore`.
//! No credential is ever formatted into a message: `Credentials` prints as `<redacted>`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use base64::Engine;
use serde::Deserialize;

#[derive(Clone)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Credentials {
    /// Returns the value of an `Authorization: Basic` header.
    pub fn basic_header(&self) -> String {
        let pair = format!("{}:{}", self.username, self.password);
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair))
    }
}

#[derive(Deserialize, Default)]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, DockerAuth>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: BTreeMap<String, String>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
}

#[derive(Deserialize, Default)]
struct DockerAuth {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

#[derive(Deserialize)]
struct HelperOutput {
    #[serde(rename = "Username")]
    username: String,
    #[serde(rename = "Secret")]
    secret: String,
}

fn docker_config_path() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
        return Some(PathBuf::from(dir).join("config.json"));
    }
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".docker/config.json"))
}

/// Finds the credentials for `host` (`name[:port]`), or none for anonymous access.
pub fn credentials_for(host: &str) -> Result<Option<Credentials>> {
    let username = std::env::var("XTASK_REGISTRY_USERNAME").ok().filter(|v| !v.is_empty());
    if let Some(username) = username {
        // The value never goes into an error, as std's own errors would quote it.
        let password = match std::env::var_os("XTASK_REGISTRY_PASSWORD") {
            None => bail!("XTASK_REGISTRY_USERNAME is set but XTASK_REGISTRY_PASSWORD is not"),
            Some(value) => value
                .into_string()
                .map_err(|_| anyhow::anyhow!("XTASK_REGISTRY_PASSWORD is not valid UTF-8"))?,
        };
        return Ok(Some(Credentials { username, password }));
    }

    let Some(path) = docker_config_path() else { return Ok(None) };
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
    };
    // serde's messages quote the offending value, which may be a credential.
    let config: DockerConfig = serde_json::from_str(&text).map_err(|err| {
        anyhow::anyhow!(
            "invalid {} at line {} column {}: expected the Docker config format",
            path.display(),
            err.line(),
            err.column()
        )
    })?;

    if let Some(helper) = config.cred_helpers.get(host) {
        return run_helper(helper, host);
    }
    let entry = config.auths.iter().find(|(key, _)| auth_key_host(key) == host);
    if let Some((key, auth)) = entry {
        let context = || format!("invalid auths entry {key:?} in {}", path.display());
        if let Some(encoded) = &auth.auth {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .map_err(|_| anyhow::anyhow!("{}: `auth` is not base64", context()))?;
            let pair = String::from_utf8(decoded)
                .map_err(|_| anyhow::anyhow!("{}: `auth` is not UTF-8", context()))?;
            let Some((username, password)) = pair.split_once(':') else {
                bail!("{}: expected base64 of USER:PASSWORD", context());
            };
            return Ok(Some(Credentials { username: username.into(), password: password.into() }));
        }
        if let (Some(username), Some(password)) = (&auth.username, &auth.password) {
            return Ok(Some(Credentials { username: username.clone(), password: password.clone() }));
        }
    }
    match &config.creds_store {
        Some(helper) => run_helper(helper, host),
        None => Ok(None),
    }
}

/// Reduces an `auths` key (`https://host/v1/`, `host`) to its host.
fn auth_key_host(key: &str) -> &str {
    let key = key.trim_start_matches("https://").trim_start_matches("http://");
    key.split('/').next().unwrap_or(key)
}

/// Runs `docker-credential-HELPER get` with the host on its stdin.
fn run_helper(helper: &str, host: &str) -> Result<Option<Credentials>> {
    let program = format!("docker-credential-{helper}");
    let mut child = Command::new(&program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting the credential helper {program} (is it installed?)"))?;
    child.stdin.take().expect("piped stdin").write_all(host.as_bytes())?;
    let output = child.wait_with_output()?;
    if !output.status.success() {
        let message = String::from_utf8_lossy(&output.stdout);
        if message.contains("credentials not found") {
            return Ok(None);
        }
        bail!("credential helper {program} failed for {host} with {}", output.status);
    }
    let parsed: HelperOutput = serde_json::from_slice(&output.stdout).map_err(|_| {
        anyhow::anyhow!("invalid output of the credential helper {program}: expected Username and Secret")
    })?;
    Ok(Some(Credentials { username: parsed.username, password: parsed.secret }))
}

/// A `WWW-Authenticate` challenge.
#[derive(Debug, PartialEq)]
pub enum Challenge {
    Basic,
    Bearer { realm: String, service: Option<String> },
}

/// Parses a `WWW-Authenticate` header such as
/// `Bearer realm="https://auth.example/token",service="registry",scope="..."`.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let (scheme, rest) = header.trim().split_once(' ').unwrap_or((header.trim(), ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let params = parse_params(rest);
    let realm = params.get("realm")?.clone();
    Some(Challenge::Bearer { realm, service: params.get("service").cloned() })
}

/// Splits `key="value",key=value` pairs; commas inside quotes belong to the value.
fn parse_params(text: &str) -> BTreeMap<String, String> {
    let mut params = BTreeMap::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else { break };
        let key = key.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let (value, remainder) = if let Some(quoted) = after.strip_prefix('"') {
            let end = quoted.find('"').unwrap_or(quoted.len());
            (&quoted[..end], quoted.get(end + 1..).unwrap_or(""))
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        params.insert(key, value.to_owned());
        rest = remainder.trim_start_matches(',').trim();
    }
    params
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenge_parses() {
        let header = r#"Bearer realm="https://auth.example/token?a=b,c",service="registry.example",scope="repository:ns/x:pull,push""#;
        let expected = Challenge::Bearer {
            realm: "https://auth.example/token?a=b,c".into(),
            service: Some("registry.example".into()),
        };
        assert_eq!(parse_challenge(header), Some(expected));
    }

    #[test]
    fn basic_challenge_parses() {
        assert_eq!(parse_challenge(r#"Basic realm="Registry Realm""#), Some(Challenge::Basic));
    }

    #[test]
    fn credentials_never_print() {
        let credentials = Credentials { username: "robot$ci".into(), password: "s3cret".into() };
        assert_eq!(format!("{credentials:?}"), "<redacted>");
    }

    #[test]
    fn auth_keys_reduce_to_hosts() {
        assert_eq!(auth_key_host("https://index.docker.io/v1/"), "index.docker.io");
        assert_eq!(auth_key_host("127.0.0.1:5000"), "127.0.0.1:5000");
    }
}
