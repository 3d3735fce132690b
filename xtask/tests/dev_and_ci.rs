//! Developer builds (`build`, `run`, `--json`) and CI publishing: each platform built in its
//! own process and target directory, pushed by digest, then merged with `index`.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use support::registry::{Auth, Registry};
use support::{run, stdout, test_target_dir, tool, workspace};

fn scratch(name: &str) -> PathBuf {
    let dir = test_target_dir().join("dev-and-ci").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Returns the xtask command with its own Cargo target directory.
fn xtask_in(target_dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_xtask"));
    command.arg("--root").arg(workspace()).env("CARGO_TARGET_DIR", target_dir);
    command
}

fn events(output: &str) -> Vec<Value> {
    output.lines().map(|line| serde_json::from_str(line).expect("one JSON object per line")).collect()
}

#[test]
fn single_arch_build_is_incremental() {
    let dir = scratch("single");
    let layout = dir.join("oci");
    let build = || {
        let output = stdout(
            support::xtask().args(["--json", "build", "worker", "--arch", "amd64", "--layout"]).arg(&layout),
        );
        events(&output)
    };

    let first = build();
    let platforms: Vec<&Value> = first.iter().filter(|e| e["reason"] == "image-platform").collect();
    assert_eq!(platforms.len(), 1, "{first:?}");
    assert_eq!(platforms[0]["platform"], "linux/amd64");
    assert_eq!(platforms[0]["assembled"], true);
    let image = first.iter().find(|e| e["reason"] == "image").unwrap();
    assert_eq!(image["reference"], "worker:dev-amd64");
    assert_eq!(first.last().unwrap()["reason"], "finished");
    assert_eq!(first.last().unwrap()["success"], true);

    let index = stdout(Command::new(tool("skopeo")).args(["inspect", "--raw"]).arg(format!(
        "oci:{}:worker:dev-amd64",
        layout.display()
    )));
    let index: Value = serde_json::from_str(&index).unwrap();
    assert_eq!(index["manifests"].as_array().unwrap().len(), 1);
    assert_eq!(index["manifests"][0]["platform"]["architecture"], "amd64");

    // Nothing changed, so nothing is compiled or assembled again.
    let second = build();
    let assembled = second.iter().filter(|e| e["reason"] == "image-platform" && e["assembled"] == true).count();
    assert_eq!(assembled, 0, "{second:?}");
    let compiled = second
        .iter()
        .filter(|e| e["reason"] == "stage" && e["stage"].as_str().unwrap().starts_with("compiling"))
        .count();
    assert_eq!(compiled, 0, "{second:?}");
    let up_to_date = second.iter().filter(|e| e["stage"] == "up to date").count();
    assert_eq!(up_to_date, 1, "{second:?}");

    // `run` starts the image's entrypoint from its files as the image's user.
    let output = stdout(support::xtask().args(["run", "worker", "--arch", "amd64", "--layout"]).arg(&layout).args(["--", "-once"]));
    assert!(output.contains("user nonroot uid 65532 home /home/nonroot"), "{output}");
}

#[test]
fn unknown_image_is_rejected() {
    let output = support::xtask().args(["build", "wroker"]).output().unwrap();
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(err.contains("unknown image \"wroker\": the images are exporter, notifier"), "{err}");
}

fn tags(registry: &Registry, repository: &str) -> Vec<String> {
    let response = support::http_get(registry.port, &format!("/v2/{repository}/tags/list"), 10).unwrap();
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("");
    let value: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    value["tags"].as_array().into_iter().flatten().map(|t| t.as_str().unwrap().to_owned()).collect()
}

/// Returns the manifest digest that a digests file names for `image` on `platform`.
fn platform_digest(path: &Path, image: &str, platform: &str) -> String {
    let file: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let images = file["images"].as_array().unwrap();
    let entry = images.iter().find(|i| i["name"] == image).unwrap();
    entry["platforms"][platform].as_str().unwrap().to_owned()
}

fn index_digests(path: &Path) -> Vec<(String, String)> {
    let file: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let mut digests: Vec<(String, String)> = file["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["name"].as_str().unwrap().to_owned(), i["digest"].as_str().unwrap().to_owned()))
        .collect();
    digests.sort();
    digests
}

#[test]
fn split_and_merge_equals_full_release() {
    let dir = scratch("split");
    let registry = Registry::start(&dir.join("registry"), Auth::None);
    let host = registry.host();

    // The reference: one full release pushed with tags.
    let full = dir.join("full.json");
    run(support::xtask()
        .args(["-q", "release", "--layout"])
        .arg(dir.join("full-oci"))
        .arg("--archives")
        .arg(dir.join("full-archives"))
        .arg("--push")
        .arg(format!("{host}/full"))
        .arg("--digests-file")
        .arg(&full));

    // Each platform in its own process and target directory, pushed by digest only.
    let mut files = Vec::new();
    for arch in ["amd64", "arm64"] {
        let file = dir.join(format!("digests-{arch}.json"));
        run(xtask_in(&test_target_dir().join(format!("split-{arch}")))
            .args(["-q", "release", "--arch", arch, "--layout"])
            .arg(dir.join(format!("{arch}-oci")))
            .arg("--archives")
            .arg(dir.join(format!("{arch}-archives")))
            .arg("--push-by-digest")
            .arg(format!("{host}/split"))
            .arg("--digests-file")
            .arg(&file));
        files.push(file);
    }
    assert!(tags(&registry, "split/worker").is_empty(), "a push by digest pushed tags");

    // Bad merges fail before pushing anything.
    let merge = |files: &[PathBuf], digests: &Path| {
        let mut command = support::xtask();
        command.args(["index", "--push"]).arg(format!("{host}/split")).arg("--digests-file").arg(digests);
        command.args(files).output().unwrap()
    };
    let output = merge(&files[..1], &dir.join("bad.json"));
    let err = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success());
    assert!(err.contains("the digests files lack exporter for linux/arm64/v8"), "{err}");

    let text = std::fs::read_to_string(&files[1]).unwrap();
    let worker_arm64 = platform_digest(&files[1], "worker", "linux/arm64/v8");
    let unknown = dir.join("unknown-digest.json");
    let fake = format!("sha256:{}", "0".repeat(64));
    std::fs::write(&unknown, text.replace(&worker_arm64, &fake)).unwrap();
    let output = merge(&[files[0].clone(), unknown], &dir.join("bad.json"));
    let err = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success());
    assert!(err.contains(&format!("names manifest {fake} that {host}/split/worker does not have")), "{err}");

    let worker_amd64 = platform_digest(&files[0], "worker", "linux/amd64");
    let mismatch = dir.join("mismatch.json");
    std::fs::write(&mismatch, text.replace(&worker_arm64, &worker_amd64)).unwrap();
    let output = merge(&[files[0].clone(), mismatch], &dir.join("bad.json"));
    let err = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success());
    assert!(err.contains("for linux/arm64/v8, but its config is for linux/amd64"), "{err}");
    assert!(tags(&registry, "split/worker").is_empty(), "a failed merge pushed tags");
    assert!(!dir.join("bad.json").exists());

    // The good merge gives the digests of the full release.
    let merged = dir.join("merged.json");
    let output = merge(&files, &merged);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(index_digests(&merged), index_digests(&full));
    assert_eq!(tags(&registry, "split/worker"), vec!["0.1.0".to_owned()]);
}
