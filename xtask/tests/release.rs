//! `cargo xtask release` on the repository's own services, checked with real OCI tools and by
//! running the images with runc (arm64 through qemu-user and binfmt_misc).

mod support;

use std::collections::BTreeSet;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use serde_json::Value;
use support::tls::TlsServer;
use support::{configure_bundle, run, run_bundle, stdout, tool, Container, Release};

const ARCHES: [&str; 2] = ["amd64", "arm64"];

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = Release::shared().dir.join("scratch").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn inspect_raw(reference: &str) -> Value {
    let text = stdout(Command::new(tool("skopeo")).args(["inspect", "--raw", reference]));
    serde_json::from_str(&text).unwrap()
}

fn platforms_of(index: &Value) -> BTreeSet<String> {
    let manifests = index["manifests"].as_array().unwrap();
    manifests
        .iter()
        .map(|m| {
            let platform = &m["platform"];
            let mut name = format!("{}/{}", platform["os"], platform["architecture"]);
            if let Some(variant) = platform["variant"].as_str() {
                name = format!("{name}/{variant}");
            }
            name.replace('"', "")
        })
        .collect()
}

#[test]
fn skopeo_reads_layout_and_archives() {
    let release = Release::shared();
    let expected: BTreeSet<String> =
        ["linux/amd64", "linux/arm64/v8"].iter().map(|s| s.to_string()).collect();
    for image in release.image_names() {
        let reference = release.reference(&image);
        let from_layout = format!("oci:{}:{reference}", release.layout.display());
        let index = inspect_raw(&from_layout);
        assert_eq!(index["mediaType"], "application/vnd.oci.image.index.v1+json", "{image}");
        assert_eq!(platforms_of(&index), expected, "{image}");
        assert_eq!(index["manifests"].as_array().unwrap().len(), 2, "{image}");

        let archive = release.archives.join(format!("{image}.tar"));
        let from_archive = format!("oci-archive:{}:{reference}", archive.display());
        assert_eq!(inspect_raw(&from_archive), index, "{image}: archive differs from layout");

        // A copy of every platform gives back the same index.
        let copy = scratch(&format!("copy-{image}"));
        for source in [&from_layout, &from_archive] {
            let target = format!("oci:{}:{image}", copy.display());
            run(Command::new(tool("skopeo")).args(["copy", "--quiet", "--all", source, &target]));
            assert_eq!(inspect_raw(&target), index, "{image}: copy of {source} differs");
        }
    }
}

#[test]
fn documents_match_oci_schemas() {
    let release = Release::shared();
    let schemas = Path::new("/usr/share/gocode/src/github.com/opencontainers/image-spec/schema");
    let dir = scratch("schemas");
    let mut by_schema: Vec<(&str, Vec<std::path::PathBuf>)> = vec![
        ("image-index-schema.json", vec![release.layout.join("index.json")]),
        ("image-manifest-schema.json", vec![]),
        ("config-schema.json", vec![]),
        ("image-layout-schema.json", vec![release.layout.join("oci-layout")]),
    ];
    let layout_index: Value =
        serde_json::from_slice(&std::fs::read(release.layout.join("index.json")).unwrap()).unwrap();
    for entry in layout_index["manifests"].as_array().unwrap() {
        let digest = entry["digest"].as_str().unwrap();
        let index = release.json_blob(digest);
        let path = dir.join(format!("index-{}.json", &digest[7..19]));
        std::fs::write(&path, release.blob(digest)).unwrap();
        by_schema[0].1.push(path);
        for manifest_entry in index["manifests"].as_array().unwrap() {
            let digest = manifest_entry["digest"].as_str().unwrap();
            let manifest = release.json_blob(digest);
            let path = dir.join(format!("manifest-{}.json", &digest[7..19]));
            std::fs::write(&path, release.blob(digest)).unwrap();
            by_schema[1].1.push(path);
            let config = manifest["config"]["digest"].as_str().unwrap();
            let path = dir.join(format!("config-{}.json", &config[7..19]));
            std::fs::write(&path, release.blob(config)).unwrap();
            by_schema[2].1.push(path);
        }
    }
    assert_eq!(by_schema[1].1.len(), 2 * release.image_names().len());

    let python_path = support::workspace().join(".tools/python");
    for (schema, documents) in by_schema {
        run(Command::new(tool("python3"))
            .env("PYTHONPATH", &python_path)
            .args(["-m", "check_jsonschema", "--schemafile"])
            .arg(schemas.join(schema))
            .args(documents));
    }
}

#[test]
fn rootfs_holds_base_files() {
    let release = Release::shared();
    let bundle = scratch("rootfs").join("worker");
    release.unpack("worker", "amd64", &bundle);
    let rootfs = bundle.join("rootfs");
    let meta = |path: &str| std::fs::symlink_metadata(rootfs.join(path)).unwrap();
    let mode = |path: &str| meta(path).permissions().mode() & 0o7777;
    let owner = |path: &str| (meta(path).uid(), meta(path).gid());

    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap();
    assert!(passwd.contains("root:x:0:0:root:/root:"), "{passwd}");
    assert!(passwd.contains("nonroot:x:65532:65532:nonroot:/home/nonroot:"), "{passwd}");
    let group = std::fs::read_to_string(rootfs.join("etc/group")).unwrap();
    assert!(group.contains("root:x:0:"), "{group}");
    assert!(group.contains("nonroot:x:65532:"), "{group}");

    assert_eq!(mode("tmp"), 0o1777);
    assert_eq!(owner("tmp"), (0, 0));
    assert_eq!(mode("root"), 0o700);
    assert_eq!(owner("home/nonroot"), (65532, 65532));
    assert_eq!(mode("home/nonroot"), 0o700);

    let bundle_in_image = std::fs::read(rootfs.join("etc/ssl/certs/ca-certificates.crt")).unwrap();
    let host_bundle = std::fs::read("/etc/ssl/certs/ca-certificates.crt").unwrap();
    assert_eq!(bundle_in_image, host_bundle);
    assert_eq!(mode("etc/ssl/certs/ca-certificates.crt"), 0o644);

    for zone in ["UTC", "Europe/Paris", "Asia/Kolkata", "America/New_York"] {
        let data = std::fs::read(rootfs.join("usr/share/zoneinfo").join(zone)).unwrap();
        assert!(data.starts_with(b"TZif"), "{zone} is not a TZif file");
    }
    assert!(!rootfs.join("usr/share/zoneinfo/right").exists());

    assert_eq!(mode("usr/local/bin/worker"), 0o755);
    assert_eq!(owner("usr/local/bin/worker"), (0, 0));
    assert_eq!(owner("usr/local/bin"), (0, 0));
}

/// Reads every entry header of a gzip-compressed layer.
fn layer_headers(bytes: &[u8]) -> Vec<(String, u32, u64, u64, u64, String, String)> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
    let mut headers = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let header = entry.header().clone();
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        let user = header.username().unwrap().unwrap_or("").to_owned();
        let group = header.groupname().unwrap().unwrap_or("").to_owned();
        let mut sink = Vec::new();
        entry.read_to_end(&mut sink).unwrap();
        headers.push((
            path,
            header.mode().unwrap(),
            header.uid().unwrap(),
            header.gid().unwrap(),
            header.mtime().unwrap(),
            user,
            group,
        ));
    }
    headers
}

#[test]
fn layers_are_deterministic() {
    let release = Release::shared();
    let index = inspect_raw(&format!(
        "oci:{}:{}",
        release.layout.display(),
        release.reference("registry")
    ));
    let mut base_digests = BTreeSet::new();
    for entry in index["manifests"].as_array().unwrap() {
        let manifest = release.json_blob(entry["digest"].as_str().unwrap());
        let layers = manifest["layers"].as_array().unwrap();
        assert_eq!(layers.len(), 2);
        base_digests.insert(layers[0]["digest"].as_str().unwrap().to_owned());

        let config = release.json_blob(manifest["config"]["digest"].as_str().unwrap());
        assert_eq!(config["config"]["User"], "65532:65532");
        assert_eq!(config["rootfs"]["diff_ids"].as_array().unwrap().len(), 2);

        for layer in layers {
            let bytes = release.blob(layer["digest"].as_str().unwrap());
            // gzip header: no modification time, no file name, OS byte 255 (unknown).
            assert_eq!(&bytes[4..8], &[0, 0, 0, 0], "gzip mtime");
            assert_eq!(bytes[3] & 0x08, 0, "gzip FNAME flag");
            assert_eq!(bytes[9], 255, "gzip OS byte");

            let headers = layer_headers(&bytes);
            let paths: Vec<&str> = headers.iter().map(|h| h.0.trim_end_matches('/')).collect();
            let mut sorted = paths.clone();
            sorted.sort_by_key(|p| p.split('/').map(str::to_owned).collect::<Vec<_>>());
            assert_eq!(paths, sorted, "entries are sorted");
            let mtimes: BTreeSet<u64> = headers.iter().map(|h| h.4).collect();
            assert_eq!(mtimes.len(), 1, "one mtime for every entry");
            for (path, _, uid, gid, _, user, group) in &headers {
                assert!(user.is_empty(), "{path} has a user name");
                assert!(group.is_empty(), "{path} has a group name");
                if !path.starts_with("home/nonroot") {
                    assert_eq!((*uid, *gid), (0, 0), "{path}");
                }
                // Every parent directory comes before its entries.
                if let Some((parent, _)) = path.trim_end_matches('/').rsplit_once('/') {
                    let parent_index = paths.iter().position(|p| *p == parent);
                    let index = paths.iter().position(|p| *p == path.trim_end_matches('/'));
                    assert!(parent_index < index, "{parent} is missing or after {path}");
                }
            }
        }
    }
    assert_eq!(base_digests.len(), 1, "every platform shares one base layer");
}

#[test]
fn releases_are_reproducible() {
    let first = Release::shared();
    let second = Release::run("again");
    let index = |release: &Release| std::fs::read(release.layout.join("index.json")).unwrap();
    assert_eq!(index(first), index(&second), "index.json differs between two releases");
    for image in first.image_names() {
        let archive = |release: &Release| {
            std::fs::read(release.archives.join(format!("{image}.tar"))).unwrap()
        };
        assert!(archive(first) == archive(&second), "{image}.tar differs between two releases");
    }
}

#[test]
fn worker_runs_as_nonroot() {
    let release = Release::shared();
    for arch in ARCHES {
        let bundle = scratch(&format!("worker-{arch}")).join("bundle");
        release.unpack("worker", arch, &bundle);
        configure_bundle(&bundle, &["/usr/local/bin/worker", "-once"], &[]);
        let output = run_bundle(&bundle);
        let text = String::from_utf8_lossy(&output.stdout);
        let errors = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{arch}: {text}{errors}");
        assert!(
            text.contains("user nonroot uid 65532 home /home/nonroot tmp /tmp/job-"),
            "{arch}: {text}"
        );
        assert!(text.trim_end().ends_with(" ok"), "{arch}: {text}");
    }
}

/// Appends the test CA to the CA bundle of an unpacked image.
fn trust(bundle: &Path, ca_pem: &str) {
    let path = bundle.join("rootfs/etc/ssl/certs/ca-certificates.crt");
    let mut certificates = std::fs::read_to_string(&path).unwrap();
    certificates.push_str(ca_pem);
    std::fs::write(&path, certificates).unwrap();
}

#[test]
fn exporter_loads_zone_and_verifies_tls() {
    let release = Release::shared();
    let server = TlsServer::start(&scratch("exporter-tls"));
    let url = server.url();
    for arch in ARCHES {
        let bundle = scratch(&format!("exporter-{arch}")).join("bundle");
        release.unpack("exporter", arch, &bundle);
        let probe = ["/usr/local/bin/exporter", "probe", "-tz", "Asia/Kolkata", "-url", &url];

        // The image's own bundle does not hold the test CA, so verification must fail.
        configure_bundle(&bundle, &probe, &[]);
        let untrusted = run_bundle(&bundle);
        let errors = String::from_utf8_lossy(&untrusted.stderr);
        assert!(!untrusted.status.success(), "{arch}: an unknown CA was accepted");
        assert!(errors.contains("certificate"), "{arch}: {errors}");

        trust(&bundle, &server.ca_pem);
        let output = run_bundle(&bundle);
        let text = String::from_utf8_lossy(&output.stdout);
        let errors = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{arch}: {text}{errors}");
        assert!(text.contains("zone Asia/Kolkata offset +05:30"), "{arch}: {text}");
        assert!(text.contains(&format!("fetch {url} status 200")), "{arch}: {text}");
    }
}

#[test]
fn notifier_verifies_tls_with_ring() {
    let release = Release::shared();
    let server = TlsServer::start(&scratch("notifier-tls"));
    let url = server.url();
    for arch in ARCHES {
        let bundle = scratch(&format!("notifier-{arch}")).join("bundle");
        release.unpack("notifier", arch, &bundle);
        let args = ["/usr/local/bin/notifier", "--url", &url, "--message", "release done"];
        configure_bundle(&bundle, &args, &[]);
        let untrusted = run_bundle(&bundle);
        assert!(!untrusted.status.success(), "{arch}: an unknown CA was accepted");

        trust(&bundle, &server.ca_pem);
        let output = run_bundle(&bundle);
        let text = String::from_utf8_lossy(&output.stdout);
        let errors = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{arch}: {text}{errors}");
        assert!(text.contains(&format!("delivered {url} status 200")), "{arch}: {text}");
    }
}

#[test]
fn statusd_and_xtask_images_start() {
    let release = Release::shared();
    for arch in ARCHES {
        let bundle = scratch(&format!("xtask-{arch}")).join("bundle");
        release.unpack("xtask", arch, &bundle);
        configure_bundle(&bundle, &["/usr/local/bin/xtask", "--version"], &[]);
        let output = run_bundle(&bundle);
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{arch}: {text}");
        assert!(text.starts_with("xtask "), "{arch}: {text}");

        let bundle = scratch(&format!("statusd-{arch}")).join("bundle");
        release.unpack("statusd", arch, &bundle);
        let port = support::free_port();
        let listen = format!("127.0.0.1:{port}");
        configure_bundle(&bundle, &["/usr/local/bin/statusd", "--listen", &listen], &[]);
        let container = Container::start(&bundle);
        let response = support::http_get(port, "/healthz", 60);
        let response = response.unwrap_or_else(|| panic!("{arch}: {}", container.log_text()));
        assert!(response.starts_with("HTTP/1.1 200") || response.starts_with("HTTP/1.0 200"), "{arch}: {response}");
        assert!(response.ends_with("ok\n"), "{arch}: {response}");
    }
}

#[test]
fn registry_image_serves_v2() {
    let release = Release::shared();
    for arch in ARCHES {
        let bundle = scratch(&format!("registry-{arch}")).join("bundle");
        release.unpack("registry", arch, &bundle);
        let port = support::free_port();
        let config = format!(
            "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: /tmp/registry\n\
             http:\n  addr: 127.0.0.1:{port}\n"
        );
        std::fs::write(bundle.join("rootfs/etc/docker/registry/test.yml"), config).unwrap();
        let args = ["/usr/local/bin/registry", "serve", "/etc/docker/registry/test.yml"];
        configure_bundle(&bundle, &args, &[]);
        let container = Container::start(&bundle);
        let response = support::http_get(port, "/v2/", 120);
        let response = response.unwrap_or_else(|| panic!("{arch}: {}", container.log_text()));
        assert!(response.starts_with("HTTP/1.0 200"), "{arch}: {response}");
        assert!(response.contains("Docker-Distribution-Api-Version: registry/2.0"), "{arch}: {response}");
    }
}
