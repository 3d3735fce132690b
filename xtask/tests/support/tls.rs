//! A test CA and an HTTPS server on loopback with a certificate it signed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use super::{run, tool};

/// A test CA and a server certificate for 127.0.0.1 that it signed, made with openssl.
pub struct Certificates {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

impl Certificates {
    pub fn create(dir: &Path) -> Certificates {
        std::fs::create_dir_all(dir).unwrap();
        let file = |name: &str| -> PathBuf { dir.join(name) };
        let openssl = tool("openssl");
        run(Command::new(&openssl)
            .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"])
            .args(["-subj", "/CN=xtask test CA"])
            .arg("-keyout")
            .arg(file("ca.key"))
            .arg("-out")
            .arg(file("ca.pem")));
        run(Command::new(&openssl)
            .args(["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1"])
            .arg("-keyout")
            .arg(file("server.key"))
            .arg("-out")
            .arg(file("server.csr")));
        std::fs::write(file("server.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
        run(Command::new(&openssl)
            .args(["x509", "-req", "-days", "2", "-CAcreateserial"])
            .arg("-in")
            .arg(file("server.csr"))
            .arg("-CA")
            .arg(file("ca.pem"))
            .arg("-CAkey")
            .arg(file("ca.key"))
            .arg("-extfile")
            .arg(file("server.ext"))
            .arg("-out")
            .arg(file("server.pem")));
        Certificates {
            ca_cert: file("ca.pem"),
            ca_key: file("ca.key"),
            server_cert: file("server.pem"),
            server_key: file("server.key"),
        }
    }
}

pub struct TlsServer {
    pub port: u16,
    /// The test CA's certificate in PEM form.
    pub ca_pem: String,
    child: Child,
}

impl TlsServer {
    /// Creates a CA and a certificate for 127.0.0.1 in `dir`, then starts the server with it.
    pub fn start(dir: &Path) -> TlsServer {
        let certificates = Certificates::create(dir);
        let file = |name: &str| -> PathBuf { dir.join(name) };
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/testdata/tls_server.py");
        let port_file = file("port");
        let _ = std::fs::remove_file(&port_file);
        let child = Command::new(tool("python3"))
            .arg(script)
            .arg(&certificates.server_cert)
            .arg(&certificates.server_key)
            .arg(&port_file)
            .spawn()
            .expect("starting the TLS test server");
        let deadline = Instant::now() + Duration::from_secs(30);
        let port = loop {
            if let Ok(text) = std::fs::read_to_string(&port_file) {
                break text.trim().parse().expect("port number");
            }
            assert!(Instant::now() < deadline, "the TLS test server did not start");
            std::thread::sleep(Duration::from_millis(50));
        };
        let ca_pem = std::fs::read_to_string(&certificates.ca_cert).unwrap();
        TlsServer { port, ca_pem, child }
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}/", self.port)
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
