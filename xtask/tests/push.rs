//! `cargo xtask push` against the reference registry started on loopback: plain HTTP, basic
//! auth over TLS, token auth, and a fault-injecting proxy in front of it. Every push is read
//! back with skopeo and compared with the layout.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use serde_json::Value;
use support::proxy::{Faults, Proxy};
use support::registry::{Auth, Registry, PASSWORD, USERNAME};
use support::{run, stdout, tool, xtask, Release};

/// Returns the release every push test publishes, made once for this test binary.
fn release() -> &'static Release {
    static RELEASE: OnceLock<Release> = OnceLock::new();
    RELEASE.get_or_init(|| Release::run("push-release"))
}

fn scratch(name: &str) -> PathBuf {
    let dir = release().dir.join("scratch").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Index digest of each image in the layout, by image name.
fn layout_digests(release: &Release) -> BTreeMap<String, String> {
    let index: Value =
        serde_json::from_slice(&std::fs::read(release.layout.join("index.json")).unwrap()).unwrap();
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| {
            let name = entry["annotations"]["org.opencontainers.image.ref.name"].as_str().unwrap();
            let name = name.split(':').next().unwrap().to_owned();
            (name, entry["digest"].as_str().unwrap().to_owned())
        })
        .collect()
}

fn push_command(target: &str, digests: &Path) -> Command {
    let mut command = xtask();
    command
        .arg("push")
        .arg(target)
        .arg("--layout")
        .arg(&release().layout)
        .arg("--digests-file")
        .arg(digests)
        .env_remove("XTASK_REGISTRY_USERNAME")
        .env_remove("XTASK_REGISTRY_PASSWORD")
        .env("DOCKER_CONFIG", digests.parent().unwrap().join("no-docker-config"));
    command
}

fn read_digests(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// Checks the digests file against the layout and reads every image back with skopeo.
fn check_pushed(host: &str, digests: &Value, skopeo_args: &[&str]) {
    let expected = layout_digests(release());
    let images = digests["images"].as_array().unwrap();
    assert_eq!(images.len(), expected.len());
    for image in images {
        let name = image["name"].as_str().unwrap();
        let digest = image["digest"].as_str().unwrap();
        assert_eq!(digest, expected[name], "{name}: pushed index digest");
        assert_eq!(image["platforms"].as_object().unwrap().len(), 2, "{name}");

        let repository = image["repository"].as_str().unwrap();
        let tag = image["tag"].as_str().unwrap();
        let remote = format!("docker://{host}/{repository}:{tag}");
        let raw = run(Command::new(tool("skopeo")).args(["inspect", "--raw"]).args(skopeo_args).arg(&remote)).stdout;
        let raw_digest = format!("sha256:{}", sha256_hex(&raw));
        assert_eq!(raw_digest, digest, "{name}: the tag serves another index");

        let copy = scratch(&format!("copy-{name}"));
        run(Command::new(tool("skopeo"))
            .args(["copy", "--quiet", "--all"])
            .args(skopeo_args.iter().map(|a| a.replace("--tls-verify", "--src-tls-verify").replace("--creds", "--src-creds").replace("--cert-dir", "--src-cert-dir")))
            .arg(&remote)
            .arg(format!("oci:{}:{name}", copy.display())));
        let copied: Value = serde_json::from_slice(&std::fs::read(copy.join("index.json")).unwrap()).unwrap();
        assert_eq!(copied["manifests"][0]["digest"].as_str().unwrap(), digest, "{name}: copy back");
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

fn blob_uploads(proxy: &Proxy) -> usize {
    proxy.requests().iter().filter(|r| r.method == "PUT" && r.path.contains("/blobs/uploads/")).count()
}

fn stderr_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn plain_push_round_trips_and_skips_blobs() {
    let dir = scratch("plain");
    let registry = Registry::start(&dir.join("registry"), Auth::None);
    let proxy = Proxy::start(registry.port, Faults::default());
    let target = format!("{}/harbor", proxy.host());
    let digests = dir.join("digests.json");

    let first = String::from_utf8(run(&mut push_command(&target, &digests)).stderr).unwrap();
    assert!(first.contains("mounted"), "{first}");
    let uploads = blob_uploads(&proxy);
    // Each blob is uploaded once: the shared base layer goes to one repository and is
    // mounted into the others.
    let mounts = proxy.requests().iter().filter(|r| r.path.contains("mount=") && r.status == 201).count();
    assert!(mounts >= release().image_names().len() - 1, "{mounts} mounts");
    check_pushed(&proxy.host(), &read_digests(&digests), &["--tls-verify=false"]);

    let before = proxy.requests().len();
    let second = String::from_utf8(run(&mut push_command(&target, &digests)).stderr).unwrap();
    assert!(second.contains("uploaded 0 blobs"), "{second}");
    let later_uploads = proxy.requests()[before..]
        .iter()
        .filter(|r| r.method == "PUT" && r.path.contains("/blobs/uploads/"))
        .count();
    assert_eq!(later_uploads, 0, "a second push uploaded blobs");
    assert!(uploads > 0);
}

#[test]
fn basic_auth_over_tls() {
    let dir = scratch("basic");
    let registry = Registry::start(&dir.join("registry"), Auth::BasicTls);
    let ca_file = registry.ca_file.clone().unwrap();
    let target = format!("{}/harbor", registry.host());
    let digests = dir.join("digests.json");

    let mut push = push_command(&target, &digests);
    push.arg("--ca-file").arg(&ca_file);
    push.env("XTASK_REGISTRY_USERNAME", USERNAME).env("XTASK_REGISTRY_PASSWORD", PASSWORD);
    run(&mut push);

    let cert_dir = dir.join("certs");
    std::fs::create_dir_all(&cert_dir).unwrap();
    std::fs::copy(&ca_file, cert_dir.join("ca.crt")).unwrap();
    let creds = format!("--creds={USERNAME}:{PASSWORD}");
    let cert_arg = format!("--cert-dir={}", cert_dir.display());
    check_pushed(&registry.host(), &read_digests(&digests), &[&creds, &cert_arg]);

    // A wrong password gives one error line that names the registry and shows no secret.
    let mut wrong = push_command(&target, &dir.join("wrong.json"));
    wrong.arg("--ca-file").arg(&ca_file);
    wrong.env("XTASK_REGISTRY_USERNAME", USERNAME).env("XTASK_REGISTRY_PASSWORD", "wrong-Pa$$");
    let output = wrong.output().unwrap();
    let err = stderr_of(&output);
    assert!(!output.status.success());
    assert!(err.contains(&format!("authentication to {} failed", registry.host())), "{err}");
    assert!(err.contains("HTTP 401"), "{err}");
    assert!(!err.contains("wrong-Pa$$"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");

    // Without the CA file the registry's certificate is not trusted.
    let output = push_command(&target, &dir.join("untrusted.json")).output().unwrap();
    assert!(!output.status.success());
    assert!(stderr_of(&output).contains("certificate"), "{}", stderr_of(&output));
}

#[test]
fn token_auth_with_docker_config() {
    let dir = scratch("token");
    let registry = Registry::start(&dir.join("registry"), Auth::Token);
    let target = format!("{}/harbor", registry.host());
    let digests = dir.join("digests.json");

    // Credentials from a Docker config file, as `docker login` writes them.
    let config_dir = dir.join("docker");
    std::fs::create_dir_all(&config_dir).unwrap();
    let auth = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(format!("{USERNAME}:{PASSWORD}"))
    };
    let config = serde_json::json!({"auths": {registry.host(): {"auth": auth}}});
    std::fs::write(config_dir.join("config.json"), config.to_string()).unwrap();
    let mut push = push_command(&target, &digests);
    push.env("DOCKER_CONFIG", &config_dir);
    run(&mut push);

    let requests = registry.token_requests.lock().unwrap().clone();
    let decoded: Vec<Vec<(String, String)>> = requests
        .iter()
        .map(|query| url::form_urlencoded::parse(query.as_bytes()).into_owned().collect())
        .collect();
    assert!(
        decoded.iter().all(|pairs| pairs.contains(&("account".into(), USERNAME.into()))),
        "the robot name did not arrive intact: {requests:?}"
    );
    let has_mount_scope = decoded.iter().any(|pairs| {
        let scopes: Vec<&str> = pairs.iter().filter(|(k, _)| k == "scope").map(|(_, v)| v.as_str()).collect();
        scopes.len() == 2 && scopes[1].ends_with(":pull") && scopes[0].ends_with(":pull,push")
    });
    assert!(has_mount_scope, "no token asked for pull on a mount source: {requests:?}");

    let creds = format!("--creds={USERNAME}:{PASSWORD}");
    check_pushed(&registry.host(), &read_digests(&digests), &["--tls-verify=false", &creds]);
}

#[test]
fn push_survives_faults_in_order() {
    let dir = scratch("faults");
    let registry = Registry::start(&dir.join("registry"), Auth::None);
    let faults = Faults {
        drop_blob_puts: [1, 3, 4].into(),
        too_many_requests: [2, 9].into(),
        unavailable: [5, 6, 7].into(),
        server_errors: [12, 20].into(),
        slow_bytes_per_second: Some(40 << 20),
        reject_manifests: false,
        forget_uploads: [6].into(),
    };
    let proxy = Proxy::start(registry.port, faults);
    let target = format!("{}/harbor", proxy.host());
    let digests = dir.join("digests.json");
    let output = push_command(&target, &digests).output().unwrap();
    let err = stderr_of(&output);
    assert!(output.status.success(), "{err}");
    assert!(err.contains("retrying"), "{err}");
    assert!(err.contains("restarting the upload"), "{err}");
    assert!(err.contains("the registry forgot the upload session"), "{err}");

    let pushed = read_digests(&digests);
    check_pushed(&proxy.host(), &pushed, &["--tls-verify=false"]);

    // No index or tag reached the registry before every platform manifest.
    let indexes: Vec<String> = pushed["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|image| image["digest"].as_str().unwrap().to_owned())
        .collect();
    let log = proxy.requests();
    let successful_manifest_puts: Vec<&str> = log
        .iter()
        .filter(|r| r.method == "PUT" && r.path.contains("/manifests/") && r.status == 201)
        .map(|r| r.path.rsplit('/').next().unwrap())
        .collect();
    let first_index = successful_manifest_puts
        .iter()
        .position(|reference| !reference.starts_with("sha256:") || indexes.iter().any(|d| d == reference))
        .unwrap();
    let last_platform = successful_manifest_puts
        .iter()
        .rposition(|reference| reference.starts_with("sha256:") && !indexes.iter().any(|d| d == reference))
        .unwrap();
    assert!(last_platform < first_index, "an index was pushed before a platform manifest: {successful_manifest_puts:?}");
}

#[test]
fn docker_format_push() {
    let dir = scratch("docker-format");
    let registry = Registry::start(&dir.join("registry"), Auth::None);
    let target = format!("{}/harbor", registry.host());
    let digests = dir.join("digests.json");
    let mut push = push_command(&target, &digests);
    push.args(["--format", "docker"]);
    run(&mut push);

    let pushed = read_digests(&digests);
    for image in pushed["images"].as_array().unwrap() {
        let remote = format!("docker://{}/{}:{}", registry.host(), image["repository"].as_str().unwrap(), image["tag"].as_str().unwrap());
        let raw = stdout(Command::new(tool("skopeo")).args(["inspect", "--raw", "--tls-verify=false", &remote]));
        let list: Value = serde_json::from_str(&raw).unwrap();
        assert_eq!(list["mediaType"], "application/vnd.docker.distribution.manifest.list.v2+json");
        for entry in list["manifests"].as_array().unwrap() {
            assert_eq!(entry["mediaType"], "application/vnd.docker.distribution.manifest.v2+json");
            let by_digest = format!("docker://{}/{}@{}", registry.host(), image["repository"].as_str().unwrap(), entry["digest"].as_str().unwrap());
            let raw = stdout(Command::new(tool("skopeo")).args(["inspect", "--raw", "--tls-verify=false", &by_digest]));
            let manifest: Value = serde_json::from_str(&raw).unwrap();
            assert_eq!(manifest["config"]["mediaType"], "application/vnd.docker.container.image.v1+json");
            for layer in manifest["layers"].as_array().unwrap() {
                assert_eq!(layer["mediaType"], "application/vnd.docker.image.rootfs.diff.tar.gzip");
            }
        }
    }
}

#[test]
fn rejected_manifest_is_one_error_line() {
    let dir = scratch("rejected");
    let registry = Registry::start(&dir.join("registry"), Auth::None);
    let faults = Faults { reject_manifests: true, ..Faults::default() };
    let proxy = Proxy::start(registry.port, faults);
    let target = format!("{}/harbor", proxy.host());
    let output = push_command(&target, &dir.join("digests.json")).output().unwrap();
    let err = stderr_of(&output);
    assert!(!output.status.success());
    assert!(err.contains("rejected manifest"), "{err}");
    assert!(err.contains("MANIFEST_INVALID: manifest invalid"), "{err}");
    assert!(err.contains(&proxy.host()), "{err}");
    assert!(!dir.join("digests.json").exists(), "a failed push wrote a digests file");
    // No tag was pushed after the failure.
    assert!(proxy.requests().iter().all(|r| !(r.method == "PUT" && r.path.ends_with(":0.1.0"))));
}

#[test]
fn unknown_host_is_one_error_line() {
    // A network namespace of its own has no network at all, so the name lookup fails on
    // this machine and no query leaves it.
    let dir = scratch("unknown-host");
    let mut push = Command::new(tool("unshare"));
    push.arg("--net").arg(env!("CARGO_BIN_EXE_xtask"));
    push.arg("--root").arg(support::workspace());
    push.args(["push", "registry.unknown.test:5000/harbor", "--layout"]).arg(&release().layout);
    push.arg("--digests-file").arg(dir.join("digests.json"));
    push.env("CARGO_TARGET_DIR", support::test_target_dir());
    let output = push.output().unwrap();
    let err = stderr_of(&output);
    assert!(!output.status.success());
    assert!(err.contains("unknown registry host registry.unknown.test:5000"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
}
