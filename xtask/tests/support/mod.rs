//! Shared test support: the workspace, the xtask binary, real external tools (a missing one
//! fails the test, it never skips it), one release shared by every test of a binary, and
//! unpacked images run with runc.

#![allow(dead_code)]

pub mod proxy;
pub mod registry;
pub mod tls;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;

use serde_json::Value;

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

/// Target directory of the releases that tests run, apart from the one `cargo test` holds
/// locked while it builds.
pub fn test_target_dir() -> PathBuf {
    workspace().join("target/xtask-tests")
}

/// Returns a command running the xtask binary under test, quiet and for the test target dir.
pub fn xtask() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_xtask"));
    command.arg("--root").arg(workspace()).env("CARGO_TARGET_DIR", test_target_dir());
    command
}

/// Finds an external tool or fails with the command that installs it.
pub fn tool(name: &str) -> PathBuf {
    which(name).unwrap_or_else(|| {
        panic!("{name} not found: run `cargo xtask setup --test-tools` to install the test tools")
    })
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|path| path.is_file())
}

/// Runs a command and returns its output, failing the test with its output when it fails.
pub fn run(command: &mut Command) -> Output {
    let output = command.output().unwrap_or_else(|err| panic!("starting {command:?}: {err}"));
    if !output.status.success() {
        panic!(
            "{command:?} failed with {}\nstdout:\n{}\nstderr:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    output
}

pub fn stdout(command: &mut Command) -> String {
    String::from_utf8(run(command).stdout).expect("UTF-8 output")
}

/// The output of one `cargo xtask release` into a temporary directory.
pub struct Release {
    pub dir: PathBuf,
    pub layout: PathBuf,
    pub archives: PathBuf,
    pub report: Value,
}

impl Release {
    /// Runs a release into `target/xtask-tests/NAME`.
    pub fn run(name: &str) -> Release {
        let dir = test_target_dir().join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let layout = dir.join("oci");
        let archives = dir.join("archives");
        let report = dir.join("report.json");
        run(xtask()
            .arg("release")
            .arg("--layout")
            .arg(&layout)
            .arg("--archives")
            .arg(&archives)
            .arg("--report")
            .arg(&report));
        let report = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
        Release { dir, layout, archives, report }
    }

    /// Returns the release that every test of this test binary shares, run once.
    pub fn shared() -> &'static Release {
        static RELEASE: OnceLock<Release> = OnceLock::new();
        RELEASE.get_or_init(|| Release::run("release"))
    }

    pub fn image_names(&self) -> Vec<String> {
        let images = self.report["images"].as_array().unwrap();
        images.iter().map(|image| image["name"].as_str().unwrap().to_owned()).collect()
    }

    pub fn reference(&self, image: &str) -> String {
        let images = self.report["images"].as_array().unwrap();
        let found = images.iter().find(|i| i["name"] == image).expect("image in the report");
        found["reference"].as_str().unwrap().to_owned()
    }

    pub fn blob(&self, digest: &str) -> Vec<u8> {
        let hex = digest.trim_start_matches("sha256:");
        std::fs::read(self.layout.join("blobs/sha256").join(hex)).unwrap()
    }

    pub fn json_blob(&self, digest: &str) -> Value {
        serde_json::from_slice(&self.blob(digest)).unwrap()
    }

    /// Unpacks `image` for `arch` (`amd64` or `arm64`) into a runc bundle with umoci, through a
    /// single-platform copy made by skopeo.
    pub fn unpack(&self, image: &str, arch: &str, bundle: &Path) {
        let single = bundle.with_extension("layout");
        let _ = std::fs::remove_dir_all(&single);
        let _ = std::fs::remove_dir_all(bundle);
        let source = format!("oci:{}:{}", self.layout.display(), self.reference(image));
        let mut copy = Command::new(tool("skopeo"));
        copy.args(["copy", "--quiet", "--override-os", "linux", "--override-arch", arch]);
        if arch == "arm64" {
            copy.args(["--override-variant", "v8"]);
        }
        run(copy.arg(&source).arg(format!("oci:{}:{image}", single.display())));
        run(Command::new(tool("umoci"))
            .args(["unpack", "--image"])
            .arg(format!("{}:{image}", single.display()))
            .arg(bundle));
    }
}

/// A container started with runc from an unpacked bundle, sharing the host's network so it
/// reaches the test's loopback servers. Killed and deleted on drop.
pub struct Container {
    id: String,
    child: Option<Child>,
    pub log: PathBuf,
}

/// Rewrites the bundle's runc config: the process's arguments and environment, no terminal,
/// and no network namespace.
pub fn configure_bundle(bundle: &Path, args: &[&str], env: &[&str]) {
    let path = bundle.join("config.json");
    let mut config: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    config["process"]["args"] = args.iter().map(|a| Value::from(*a)).collect();
    config["process"]["terminal"] = Value::Bool(false);
    let process_env = config["process"]["env"].as_array_mut().unwrap();
    process_env.extend(env.iter().map(|e| Value::from(*e)));
    let namespaces = config["linux"]["namespaces"].as_array_mut().unwrap();
    namespaces.retain(|namespace| namespace["type"] != "network");
    std::fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
}

/// Derives a runc container id, unique among the tests, from the bundle's last two path parts.
fn container_id(bundle: &Path) -> String {
    let parent = bundle.parent().and_then(Path::file_name).unwrap_or_default();
    let name = bundle.file_name().unwrap_or_default();
    let id = format!("{}-{}", parent.to_string_lossy(), name.to_string_lossy());
    format!("xtask-test-{}-{}", std::process::id(), id.replace('.', "-"))
}

/// Runs the bundle's process to completion and returns its output.
pub fn run_bundle(bundle: &Path) -> Output {
    let id = container_id(bundle);
    let output = Command::new(tool("runc"))
        .args(["run", "--bundle"])
        .arg(bundle)
        .arg(&id)
        .stdin(Stdio::null())
        .output()
        .expect("starting runc");
    let _ = Command::new(tool("runc")).args(["delete", "--force", &id]).output();
    output
}

impl Container {
    /// Starts the bundle's process in the background, its output going to a log file.
    pub fn start(bundle: &Path) -> Container {
        let id = container_id(bundle);
        let log = bundle.with_extension("log");
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(tool("runc"))
            .args(["run", "--bundle"])
            .arg(bundle)
            .arg(&id)
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("starting runc");
        Container { id, child: Some(child), log }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("runc").args(["kill", &self.id, "KILL"]).output();
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
        let _ = Command::new("runc").args(["delete", "--force", &self.id]).output();
    }
}

/// Returns a TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Sends `GET path` over plain HTTP/1.0 and returns the status line and body, retrying for
/// up to `seconds` while the server starts (arm64 servers start slowly under qemu).
pub fn http_get(port: u16, path: &str, seconds: u64) -> Option<String> {
    use std::io::{Read, Write};
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    while std::time::Instant::now() < deadline {
        if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
            if stream.write_all(request.as_bytes()).is_ok() {
                let mut response = String::new();
                if stream.read_to_string(&mut response).is_ok() && !response.is_empty() {
                    return Some(response);
                }
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    None
}
