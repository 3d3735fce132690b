//! `cargo xtask run`: runs an image from the layout without a container engine. The image's
//! layers are unpacked once per manifest under TARGET_DIR/xtask/run, and bubblewrap starts the
//! entrypoint in them as the image's user, with its environment and working directory.
//! The host's network is shared, so a server in the image is reachable on the host.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::blobs::BlobStore;
use crate::plan::Plan;

pub fn run(plan: &Plan, layout: &Path, image: &str, platform: &str, args: &[String]) -> Result<i32> {
    let Some(spec) = plan.images.iter().find(|i| i.name == image) else {
        let known: Vec<&str> = plan.images.iter().map(|i| i.name.as_str()).collect();
        bail!("unknown image {image:?}: the images are {}", known.join(", "));
    };
    let Some(target) = plan.platforms.iter().find(|p| p.name == platform) else {
        let known: Vec<&str> = plan.platforms.iter().map(|p| p.name.as_str()).collect();
        bail!("unknown platform {platform:?}: the platforms are {}", known.join(", "));
    };
    let store = BlobStore::open(layout)?;
    let index_path = layout.join("index.json");
    let index: Value = serde_json::from_slice(
        &std::fs::read(&index_path).with_context(|| format!("reading {}", index_path.display()))?,
    )?;

    // A development build of this platform comes first, then the release.
    let names = [format!("{image}:dev-{platform}"), spec.reference()];
    let entries = index["manifests"].as_array().cloned().unwrap_or_default();
    let entry = names.iter().find_map(|name| {
        entries.iter().find(|e| e["annotations"][oci_spec::image::ANNOTATION_REF_NAME] == name.as_str())
    });
    let Some(entry) = entry else {
        bail!(
            "{} has no {} or {}: run `cargo xtask build {image} --arch {platform}`",
            layout.display(),
            names[0],
            names[1]
        );
    };
    let image_index = read_json(&store, entry["digest"].as_str().unwrap_or_default())?;
    let expected = serde_json::to_value(crate::oci::oci_platform(target)?)?;
    let manifest_entry = image_index["manifests"].as_array().into_iter().flatten().find(|m| {
        let platform = &m["platform"];
        platform["architecture"] == expected["architecture"]
            && platform["os"] == expected["os"]
            && platform["variant"] == expected["variant"]
    });
    let Some(manifest_entry) = manifest_entry else {
        bail!("the image {image} in {} has no {} manifest", layout.display(), target.oci_name());
    };
    let manifest_digest = manifest_entry["digest"].as_str().unwrap_or_default();
    let manifest = read_json(&store, manifest_digest)?;
    let config = read_json(&store, manifest["config"]["digest"].as_str().unwrap_or_default())?;

    let dir = plan.target_dir.join("xtask/run").join(format!("{image}-{platform}"));
    let rootfs = dir.join("rootfs");
    let marker = dir.join("manifest-digest");
    if std::fs::read_to_string(&marker).ok().as_deref() != Some(manifest_digest) {
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        std::fs::create_dir_all(&rootfs)?;
        for layer in manifest["layers"].as_array().into_iter().flatten() {
            let digest = layer["digest"].as_str().unwrap_or_default();
            let file = std::fs::File::open(store.path(digest))
                .with_context(|| format!("opening layer {digest}"))?;
            let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
            archive.set_preserve_permissions(true);
            archive.set_overwrite(true);
            archive.unpack(&rootfs).with_context(|| format!("unpacking layer {digest}"))?;
        }
        std::fs::write(&marker, manifest_digest)?;
    }

    let settings = &config["config"];
    let user = settings["User"].as_str().unwrap_or("0:0");
    let (uid, gid) = user.split_once(':').unwrap_or((user, user));
    let workdir = settings["WorkingDir"].as_str().filter(|w| !w.is_empty()).unwrap_or("/");
    let strings = |value: &Value| -> Vec<String> {
        value.as_array().into_iter().flatten().filter_map(|v| v.as_str().map(str::to_owned)).collect()
    };
    let mut argv = strings(&settings["Entrypoint"]);
    argv.extend(if args.is_empty() { strings(&settings["Cmd"]) } else { args.to_vec() });
    if argv.is_empty() {
        bail!("the image {image} has neither an entrypoint nor a command");
    }

    let bwrap = which::which("bwrap")
        .context("bwrap not found (`cargo xtask run` needs it): run `apt-get install bubblewrap`")?;
    let mut command = std::process::Command::new(bwrap);
    command
        .args(["--unshare-user", "--uid", uid, "--gid", gid])
        .args(["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--die-with-parent"])
        .arg("--bind")
        .arg(&rootfs)
        .arg("/")
        .args(["--proc", "/proc", "--dev", "/dev", "--chdir", workdir, "--clearenv"]);
    for variable in strings(&settings["Env"]) {
        let (key, value) = variable.split_once('=').unwrap_or((&variable, ""));
        command.args(["--setenv", key, value]);
    }
    command.arg("--").args(&argv);
    let status = command.status().context("starting bwrap")?;
    Ok(status.code().unwrap_or(1))
}

fn read_json(store: &BlobStore, digest: &str) -> Result<Value> {
    let bytes = std::fs::read(store.path(digest)).with_context(|| format!("reading blob {digest}"))?;
    serde_json::from_slice(&bytes).with_context(|| format!("blob {digest} is not JSON"))
}
