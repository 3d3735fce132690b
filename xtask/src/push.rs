//! Publishing an OCI image layout to a registry: `cargo xtask push` and `release --push`.
//!
//! The order keeps every pushed document's children in place before it: all blobs (each
//! shared blob uploaded to one repository, then mounted into the others), then every
//! platform manifest by digest, then every image index by digest, and the tags last.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::blobs::{self, BlobStore};
use crate::progress::Progress;
use crate::registry::{BlobOutcome, Client, Endpoint};

/// Media types written to the registry.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// OCI image index and manifests, as in the layout.
    Oci,
    /// Docker manifest list and schema 2 manifests, for registries that reject OCI indexes.
    Docker,
}

pub struct Options {
    /// `HOST[:PORT]/NAMESPACE`; each image goes to `NAMESPACE/IMAGE`.
    pub target: String,
    pub format: Format,
    pub digests_file: PathBuf,
    pub ca_file: Option<PathBuf>,
    pub plain_http: bool,
    /// Blob uploads at once.
    pub jobs: usize,
    /// Push blobs and platform manifests only, without indexes and tags.
    pub by_digest: bool,
}

/// A blob to put into a repository, mounted from `mount_from` when given.
struct BlobTask<'a> {
    repository: &'a str,
    digest: &'a str,
    size: u64,
    mount_from: Option<&'a str>,
}

/// A document (manifest or index) as it will be pushed.
struct Document {
    digest: String,
    media_type: String,
    bytes: Vec<u8>,
}

struct PlatformImage {
    platform: String,
    manifest: Document,
    /// Config and layers: digest and size.
    blobs: Vec<(String, u64)>,
}

struct LayoutImage {
    name: String,
    tag: String,
    repository: String,
    index: Document,
    platforms: Vec<PlatformImage>,
}

/// The digests file of a push: what signing, deployment and `index` read.
#[derive(Serialize, Deserialize)]
pub struct DigestsFile {
    pub registry: String,
    pub format: Format,
    pub images: Vec<DigestsEntry>,
}

#[derive(Serialize, Deserialize)]
pub struct DigestsEntry {
    pub name: String,
    pub repository: String,
    pub tag: String,
    /// `HOST/REPOSITORY@DIGEST` of the index.
    pub reference: Option<String>,
    /// Digest of the index; none for a push by digest, which pushes no index.
    pub digest: Option<String>,
    /// Manifest digest by platform (`linux/arm64/v8`).
    pub platforms: BTreeMap<String, String>,
}

/// Splits `HOST[:PORT]/NAMESPACE` into host and namespace.
pub fn parse_target(target: &str) -> Result<(String, String)> {
    let target = target.trim_end_matches('/');
    let Some((host, namespace)) = target.split_once('/') else {
        bail!("invalid push target {target:?}: expected HOST[:PORT]/NAMESPACE, such as 127.0.0.1:5000/harbor");
    };
    let valid_namespace = namespace.split('/').all(|part| {
        !part.is_empty()
            && part.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
    });
    if host.is_empty() || !valid_namespace {
        bail!(
            "invalid push target {target:?}: the namespace may use lowercase letters, digits, \
             '.', '_', '-' and '/'"
        );
    }
    Ok((host.to_owned(), namespace.to_owned()))
}

pub fn run(progress: &Progress, layout: &Path, options: &Options) -> Result<()> {
    let (host, namespace) = parse_target(&options.target)?;
    let store = BlobStore::open(layout)?;
    let images = read_layout(layout, &store, &namespace, options.format)?;

    let log_progress = progress.logger();
    let endpoint = Endpoint {
        host: host.clone(),
        plain_http: options.plain_http,
        ca_file: options.ca_file.clone(),
    };
    let client = Client::connect(endpoint, log_progress)?;

    // The first repository that needs a blob gets it uploaded, and the others mount it from there.
    let mut owners: BTreeMap<&str, &str> = BTreeMap::new();
    let mut seen: BTreeSet<(&str, &str)> = BTreeSet::new();
    let mut uploads = Vec::new();
    let mut mounts = Vec::new();
    for image in &images {
        let repository = image.repository.as_str();
        for platform in &image.platforms {
            for (digest, size) in &platform.blobs {
                if !seen.insert((repository, digest)) {
                    continue;
                }
                match owners.get(digest.as_str()) {
                    None => {
                        owners.insert(digest, repository);
                        uploads.push(BlobTask { repository, digest, size: *size, mount_from: None });
                    }
                    Some(owner) => {
                        mounts.push(BlobTask { repository, digest, size: *size, mount_from: Some(owner) });
                    }
                }
            }
        }
    }
    let counts = Mutex::new(BTreeMap::<&str, (usize, u64)>::new());
    for tasks in [&uploads, &mounts] {
        parallel(tasks, options.jobs, |task| {
            let short = task.digest.get(7..19).unwrap_or(task.digest);
            let label = format!("{} {short}", task.repository);
            let bar = progress.bytes_bar(&label, task.size);
            let path = store.path(task.digest);
            let outcome = client.push_blob(
                task.repository,
                task.digest,
                &path,
                task.size,
                task.mount_from,
                Some(&bar),
            );
            bar.finish_and_clear();
            let label = match outcome? {
                BlobOutcome::Uploaded => "uploaded",
                BlobOutcome::Mounted => "mounted",
                BlobOutcome::Present => "skipped (present)",
            };
            progress.event(
                "blob",
                serde_json::json!({
                    "repository": task.repository,
                    "digest": task.digest,
                    "size": task.size,
                    "outcome": label,
                }),
            );
            let mut counts = counts.lock().expect("counts lock");
            let entry = counts.entry(label).or_default();
            entry.0 += 1;
            entry.1 += task.size;
            Ok(())
        })?;
    }

    // Manifests, then indexes, each by digest. Tags come only once everything is in place.
    let manifests: Vec<(&LayoutImage, &PlatformImage)> =
        images.iter().flat_map(|i| i.platforms.iter().map(move |p| (i, p))).collect();
    parallel(&manifests, options.jobs, |(image, platform)| {
        let document = &platform.manifest;
        client.put_manifest(&image.repository, &document.digest, &document.media_type, &document.bytes)
    })?;
    if !options.by_digest {
        parallel(&images, options.jobs, |image| {
            let index = &image.index;
            client.put_manifest(&image.repository, &index.digest, &index.media_type, &index.bytes)
        })?;
        for image in &images {
            let index = &image.index;
            client.put_manifest(&image.repository, &image.tag, &index.media_type, &index.bytes)?;
            pushed(progress, &host, &image.repository, &image.tag, &index.digest);
        }
    }

    let counts = counts.into_inner().expect("counts lock");
    let summary: Vec<String> = ["uploaded", "mounted", "skipped (present)"]
        .iter()
        .map(|label| {
            let (blobs, bytes) = counts.get(label).copied().unwrap_or_default();
            format!("{label} {blobs} blobs ({bytes} bytes)")
        })
        .collect();
    eprintln!("blobs: {}", summary.join(", "));

    write_digests_file(&host, options, &images)
}

/// Reports a pushed tag.
pub fn pushed(progress: &Progress, host: &str, repository: &str, tag: &str, digest: &str) {
    progress.println(format!("pushed {host}/{repository}:{tag} {digest}"));
    let fields = serde_json::json!({
        "repository": format!("{host}/{repository}"),
        "tag": tag,
        "digest": digest,
    });
    progress.event("pushed", fields);
}

fn write_digests_file(host: &str, options: &Options, images: &[LayoutImage]) -> Result<()> {
    let entries = images
        .iter()
        .map(|image| DigestsEntry {
            name: image.name.clone(),
            repository: image.repository.clone(),
            tag: image.tag.clone(),
            reference: (!options.by_digest)
                .then(|| format!("{host}/{}@{}", image.repository, image.index.digest)),
            digest: (!options.by_digest).then(|| image.index.digest.clone()),
            platforms: image
                .platforms
                .iter()
                .map(|p| (p.platform.clone(), p.manifest.digest.clone()))
                .collect(),
        })
        .collect();
    let file = DigestsFile { registry: host.to_owned(), format: options.format, images: entries };
    write_json(&options.digests_file, &file)
}

/// Writes a digests file and reports its path.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    blobs::write_atomic(path, &serde_json::to_vec_pretty(value)?)?;
    eprintln!("digests: {}", path.display());
    Ok(())
}

/// Runs `task` on every item with at most `jobs` at once and returns the first error in
/// input order.
fn parallel<T: Sync>(items: &[T], jobs: usize, task: impl Fn(&T) -> Result<()> + Sync) -> Result<()> {
    let next = AtomicUsize::new(0);
    let errors: Mutex<Vec<(usize, anyhow::Error)>> = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..jobs.max(1).min(items.len()) {
            scope.spawn(|| loop {
                let index = next.fetch_add(1, Ordering::SeqCst);
                let Some(item) = items.get(index) else { break };
                if !errors.lock().expect("errors lock").is_empty() {
                    break;
                }
                if let Err(err) = task(item) {
                    errors.lock().expect("errors lock").push((index, err));
                }
            });
        }
    });
    let mut errors = errors.into_inner().expect("errors lock");
    errors.sort_by_key(|(index, _)| *index);
    match errors.into_iter().next() {
        Some((_, err)) => Err(err),
        None => Ok(()),
    }
}

fn read_json(store: &BlobStore, digest: &str) -> Result<(Vec<u8>, Value)> {
    let bytes = std::fs::read(store.path(digest)).with_context(|| format!("reading blob {digest}"))?;
    let value = serde_json::from_slice(&bytes).with_context(|| format!("blob {digest} is not JSON"))?;
    Ok((bytes, value))
}

const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

fn document(bytes: Vec<u8>, media_type: &str) -> Document {
    Document { digest: blobs::digest_of(&bytes), media_type: media_type.to_owned(), bytes }
}

/// Reads every image named in the layout's `index.json`, converting the documents to Docker
/// media types for `Format::Docker`.
fn read_layout(layout: &Path, store: &BlobStore, namespace: &str, format: Format) -> Result<Vec<LayoutImage>> {
    let path = layout.join("index.json");
    let text = std::fs::read(&path)
        .with_context(|| format!("reading {}: run `cargo xtask release` first", path.display()))?;
    let top: Value = serde_json::from_slice(&text).with_context(|| format!("invalid {}", path.display()))?;
    let mut images = Vec::new();
    for entry in top["manifests"].as_array().into_iter().flatten() {
        let reference = entry["annotations"][oci_spec::image::ANNOTATION_REF_NAME].as_str();
        let Some((name, tag)) = reference.and_then(|r| r.split_once(':')) else { continue };
        let index_digest = entry["digest"].as_str().context("index entry without digest")?;
        let (index_bytes, mut index) = read_json(store, index_digest)?;

        let mut platforms = Vec::new();
        for (position, item) in index["manifests"].as_array().cloned().into_iter().flatten().enumerate() {
            let digest = item["digest"].as_str().context("manifest entry without digest")?;
            let (bytes, mut manifest) = read_json(store, digest)?;
            let mut platform = format!(
                "{}/{}",
                item["platform"]["os"].as_str().unwrap_or("?"),
                item["platform"]["architecture"].as_str().unwrap_or("?")
            );
            if let Some(variant) = item["platform"]["variant"].as_str() {
                platform = format!("{platform}/{variant}");
            }
            let mut blobs = vec![descriptor_of(&manifest["config"])?];
            for layer in manifest["layers"].as_array().into_iter().flatten() {
                blobs.push(descriptor_of(layer)?);
            }
            let manifest = match format {
                Format::Oci => document(bytes, oci_spec::image::MediaType::ImageManifest.to_string().as_str()),
                Format::Docker => {
                    manifest["mediaType"] = DOCKER_MANIFEST.into();
                    manifest["config"]["mediaType"] = DOCKER_CONFIG.into();
                    for layer in manifest["layers"].as_array_mut().into_iter().flatten() {
                        layer["mediaType"] = DOCKER_LAYER.into();
                    }
                    let converted = document(crate::oci::canonical_json(&manifest)?, DOCKER_MANIFEST);
                    let slot = &mut index["manifests"][position];
                    slot["mediaType"] = DOCKER_MANIFEST.into();
                    slot["digest"] = converted.digest.clone().into();
                    slot["size"] = converted.bytes.len().into();
                    converted
                }
            };
            platforms.push(PlatformImage { platform, manifest, blobs });
        }
        let index = match format {
            Format::Oci => document(index_bytes, oci_spec::image::MediaType::ImageIndex.to_string().as_str()),
            Format::Docker => {
                index["mediaType"] = DOCKER_LIST.into();
                document(crate::oci::canonical_json(&index)?, DOCKER_LIST)
            }
        };
        images.push(LayoutImage {
            name: name.to_owned(),
            tag: tag.to_owned(),
            repository: format!("{namespace}/{name}"),
            index,
            platforms,
        });
    }
    if images.is_empty() {
        bail!("{} names no image: run `cargo xtask release` first", path.display());
    }
    Ok(images)
}

fn descriptor_of(value: &Value) -> Result<(String, u64)> {
    let digest = value["digest"].as_str().context("descriptor without digest")?;
    let size = value["size"].as_u64().context("descriptor without size")?;
    Ok((digest.to_owned(), size))
}
