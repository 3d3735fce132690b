//! Image assembly and the OCI image layout: configs, manifests, indexes, `index.json` and one
//! OCI archive per image.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{Context, Result};
use oci_spec::image::{
    Arch, ConfigBuilder, Descriptor, Digest, ImageConfigurationBuilder, ImageIndex, ImageIndexBuilder,
    ImageManifestBuilder, MediaType, Os, PlatformBuilder, RootFsBuilder, ANNOTATION_REF_NAME,
};
use serde::{Deserialize, Serialize};

use crate::blobs::{self, BlobStore, Written};
use crate::layer::{Content, Layer, LayerBlob};
use crate::plan::{Image, Platform};

/// gzip level of app layers. On the 23 MB registry binary, level 4 gave 7.87 MB where level
/// 6 gave 7.72 MB in 45% more time, and `umoci insert` (0.4.7) wrote 8.01 MB.
const APP_LAYER_LEVEL: u32 = 4;

/// One platform's image, written to the blob store.
#[derive(Clone, Serialize, Deserialize)]
pub struct Assembled {
    /// Descriptor of the manifest, with its platform, for the image index.
    pub manifest: Descriptor,
    /// Every blob the manifest refers to, itself included.
    pub blobs: Vec<String>,
    /// Size of the layers and the config as stored, in bytes.
    pub compressed_size: u64,
    /// Size of the app layer as stored, in bytes.
    pub app_layer_size: u64,
}

/// A written image index, with every blob it reaches.
pub struct IndexBlob {
    pub descriptor: Descriptor,
    /// Name of the image in the layout (`NAME:TAG`).
    pub reference: String,
    pub blobs: BTreeSet<String>,
}

/// Serializes an OCI value with sorted object keys, so equal values give equal digests even
/// where the type stores a map with random order.
pub fn canonical_json<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    let value = serde_json::to_value(value).context("serializing OCI JSON")?;
    Ok(serde_json::to_vec(&value)?)
}

fn digest(written: &Written) -> Result<Digest> {
    written.digest.parse().with_context(|| format!("invalid digest {}", written.digest))
}

fn descriptor(media_type: MediaType, written: &Written) -> Result<Descriptor> {
    Ok(Descriptor::new(media_type, written.size, digest(written)?))
}

/// Writes the app layer, the config and the manifest of `image` on `platform`.
pub fn assemble(
    store: &BlobStore,
    base: &LayerBlob,
    image: &Image,
    platform: &Platform,
    binary: &Path,
    mtime: u64,
) -> Result<Assembled> {
    let mut layer = Layer::default();
    layer.add(&image.binary, 0o755, Content::File(binary.to_owned()));
    for file in &image.files {
        layer.add(&file.path, file.mode, Content::File(file.source.clone()));
    }
    let app = layer.write(store, mtime, APP_LAYER_LEVEL)?;

    let config_bytes = config_json(image, platform, &[&base.diff_id, &app.diff_id], mtime)?;
    let config = store.write(&config_bytes)?;

    let layers = vec![
        descriptor(MediaType::ImageLayerGzip, &base.blob)?,
        descriptor(MediaType::ImageLayerGzip, &app.blob)?,
    ];
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(descriptor(MediaType::ImageConfig, &config)?)
        .layers(layers)
        .build()?;
    let manifest_blob = store.write(&canonical_json(&manifest)?)?;

    let mut descriptor = descriptor(MediaType::ImageManifest, &manifest_blob)?;
    descriptor.set_platform(Some(oci_platform(platform)?));
    Ok(Assembled {
        manifest: descriptor,
        blobs: vec![
            manifest_blob.digest,
            config.digest,
            base.blob.digest.clone(),
            app.blob.digest,
        ],
        compressed_size: base.blob.size + app.blob.size + config.size,
        app_layer_size: app.blob.size,
    })
}

pub fn oci_platform(platform: &Platform) -> Result<oci_spec::image::Platform> {
    let mut builder = PlatformBuilder::default()
        .os(Os::from(platform.os.as_str()))
        .architecture(Arch::from(platform.architecture.as_str()));
    if let Some(variant) = &platform.variant {
        builder = builder.variant(variant.clone());
    }
    Ok(builder.build()?)
}

fn config_json(image: &Image, platform: &Platform, diff_ids: &[&str], mtime: u64) -> Result<Vec<u8>> {
    let mut env = Vec::new();
    if !image.env.contains_key("PATH") {
        env.push("PATH=/usr/local/bin:/usr/bin:/bin".to_owned());
    }
    env.extend(image.env.iter().map(|(key, value)| format!("{key}={value}")));

    let mut config = ConfigBuilder::default()
        .user(image.user.clone())
        .env(env)
        .entrypoint(image.entrypoint.clone())
        .exposed_ports(image.ports.clone())
        .labels(image.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect::<HashMap<_, _>>());
    if !image.cmd.is_empty() {
        config = config.cmd(image.cmd.clone());
    }
    if let Some(workdir) = &image.workdir {
        config = config.working_dir(workdir.clone());
    }

    let diff_ids: Vec<String> = diff_ids.iter().map(|id| id.to_string()).collect();
    let created = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(mtime));
    let mut configuration = ImageConfigurationBuilder::default()
        .created(created.to_string())
        .os(Os::from(platform.os.as_str()))
        .architecture(Arch::from(platform.architecture.as_str()))
        .config(config.build()?)
        .rootfs(RootFsBuilder::default().typ("layers").diff_ids(diff_ids).build()?);
    if let Some(variant) = &platform.variant {
        configuration = configuration.variant(variant.clone());
    }
    canonical_json(&configuration.build()?)
}

/// Returns the bytes of an image index over platform manifest descriptors. The bytes depend
/// only on the descriptors, so an index merged from separate runs equals a release's.
pub fn index_json(manifests: Vec<Descriptor>) -> Result<Vec<u8>> {
    let index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(manifests)
        .build()?;
    canonical_json(&index)
}

/// Writes the image index over its platforms' manifests. The returned descriptor carries
/// `reference` as `org.opencontainers.image.ref.name`.
pub fn write_index(store: &BlobStore, reference: &str, platforms: &[&Assembled]) -> Result<IndexBlob> {
    let bytes = index_json(platforms.iter().map(|p| p.manifest.clone()).collect())?;
    let written = store.write(&bytes)?;
    let mut descriptor = descriptor(MediaType::ImageIndex, &written)?;
    let annotations = HashMap::from([(ANNOTATION_REF_NAME.to_owned(), reference.to_owned())]);
    descriptor.set_annotations(Some(annotations));

    let mut blobs: BTreeSet<String> = platforms.iter().flat_map(|p| p.blobs.clone()).collect();
    blobs.insert(written.digest);
    Ok(IndexBlob { descriptor, reference: reference.to_owned(), blobs })
}

/// Writes `oci-layout` and then `index.json` naming `indexes`, each by temporary file and
/// rename, so a reader sees either the previous layout or the new one. With `keep_others`,
/// the entries of the previous `index.json` under other names stay, ahead of the new ones.
pub fn write_layout(layout: &Path, indexes: &[&Descriptor], keep_others: bool) -> Result<()> {
    blobs::write_atomic(&layout.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let name = |d: &Descriptor| {
        d.annotations().as_ref().and_then(|a| a.get(ANNOTATION_REF_NAME).cloned())
    };
    let mut manifests = Vec::new();
    if keep_others {
        let new_names: Vec<Option<String>> = indexes.iter().map(|d| name(d)).collect();
        let previous = std::fs::read(layout.join("index.json")).ok();
        let previous: Option<ImageIndex> = previous.and_then(|b| serde_json::from_slice(&b).ok());
        let store = BlobStore::open(layout)?;
        for entry in previous.map(|index| index.manifests().clone()).unwrap_or_default() {
            let present = store.path(entry.digest().as_ref()).is_file();
            if present && !new_names.contains(&name(&entry)) {
                manifests.push(entry);
            }
        }
    }
    manifests.extend(indexes.iter().map(|d| (*d).clone()));
    blobs::write_atomic(&layout.join("index.json"), &index_json(manifests)?)
}

/// Writes an OCI archive (a tar of an image layout) that contains one image.
pub fn write_archive(store: &BlobStore, index: &IndexBlob, path: &Path, mtime: u64) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut layer = Layer::default();
    layer.add("oci-layout", 0o644, Content::Bytes(br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec()));
    let single = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(vec![index.descriptor.clone()])
        .build()?;
    layer.add("index.json", 0o644, Content::Bytes(canonical_json(&single)?));
    for digest in &index.blobs {
        let hex = digest.trim_start_matches("sha256:");
        layer.add(&format!("blobs/sha256/{hex}"), 0o644, Content::File(store.path(digest)));
    }
    layer
        .write_tar_atomic(path, mtime)
        .with_context(|| format!("writing the OCI archive {}", path.display()))
}
