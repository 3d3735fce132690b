//! `cargo xtask index`: merges the digests files of per-platform runs (`release --arch X
//! --push-by-digest`) into one image index per image and pushes the indexes and tags.
//!
//! Everything is checked before anything is pushed: each platform the plan expects has a
//! manifest in some file, each manifest is in the registry, and its config names the platform
//! that its file claims. The index is built exactly as `release` builds it, so a merged index
//! has the digest of a full release of the same commit.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use oci_spec::image::{Descriptor, Digest, MediaType};
use serde_json::Value;

use crate::plan::Plan;
use crate::progress::Progress;
use crate::push::{self, DigestsEntry, DigestsFile};
use crate::registry::{Client, Endpoint};

/// A platform manifest as one of the files names it.
struct Claimed {
    digest: String,
    file: PathBuf,
}

pub fn run(
    progress: &Progress,
    plan: &Plan,
    options: &push::Options,
    tag: Option<&str>,
    files: &[PathBuf],
) -> Result<()> {
    let (host, namespace) = push::parse_target(&options.target)?;
    let claimed = read_files(files)?;

    // Every image of the plan needs a manifest for each of its platforms.
    let mut missing = Vec::new();
    for image in &plan.images {
        for &platform in &image.platforms {
            let name = plan.platforms[platform].oci_name();
            if !claimed.get(&image.name).is_some_and(|platforms| platforms.contains_key(&name)) {
                missing.push(format!("{} for {name}", image.name));
            }
        }
    }
    if !missing.is_empty() {
        bail!(
            "the digests files lack {}: add the file of each missing platform's \
             `release --arch PLATFORM --push-by-digest` run",
            missing.join(", ")
        );
    }
    for (name, platforms) in &claimed {
        let Some(image) = plan.images.iter().find(|image| &image.name == name) else {
            bail!("the digests files name image {name:?}, which the plan does not have");
        };
        for (platform, claim) in platforms {
            let expected = image.platforms.iter().any(|&p| &plan.platforms[p].oci_name() == platform);
            if !expected {
                bail!(
                    "{} names {name} for {platform}, which the plan does not build it for",
                    claim.file.display()
                );
            }
        }
    }

    let endpoint = Endpoint {
        host: host.clone(),
        plain_http: options.plain_http,
        ca_file: options.ca_file.clone(),
    };
    let client = Client::connect(endpoint, progress.logger())?;

    // Check every manifest in the registry and build the indexes; push nothing yet.
    let mut indexes = Vec::new();
    let mut indexes_docker = false;
    for image in &plan.images {
        let repository = format!("{namespace}/{}", image.name);
        let mut descriptors = Vec::new();
        let mut platform_digests = BTreeMap::new();
        for &platform_index in &image.platforms {
            let platform = &plan.platforms[platform_index];
            let claim = &claimed[&image.name][&platform.oci_name()];
            let descriptor = check_manifest(&client, &repository, platform, claim)?;
            platform_digests.insert(platform.oci_name(), claim.digest.clone());
            descriptors.push(descriptor);
        }
        let docker = descriptors.iter().any(|d| d.media_type().to_string().contains("docker"));
        indexes_docker |= docker;
        let mut bytes = crate::oci::index_json(descriptors)?;
        let mut media_type = MediaType::ImageIndex.to_string();
        if docker {
            let mut value: Value = serde_json::from_slice(&bytes)?;
            media_type = "application/vnd.docker.distribution.manifest.list.v2+json".to_owned();
            value["mediaType"] = media_type.clone().into();
            bytes = crate::oci::canonical_json(&value)?;
        }
        let digest = crate::blobs::digest_of(&bytes);
        indexes.push((image, repository, bytes, media_type, digest, platform_digests));
    }

    for (_, repository, bytes, media_type, digest, _) in &indexes {
        client.put_manifest(repository, digest, media_type, bytes)?;
    }
    let mut entries = Vec::new();
    for (image, repository, bytes, media_type, digest, platforms) in indexes {
        let tag = tag.unwrap_or(&image.tag);
        client.put_manifest(&repository, tag, &media_type, &bytes)?;
        push::pushed(progress, &host, &repository, tag, &digest);
        entries.push(DigestsEntry {
            name: image.name.clone(),
            reference: Some(format!("{host}/{repository}@{digest}")),
            repository,
            tag: tag.to_owned(),
            digest: Some(digest),
            platforms,
        });
    }
    let docker = indexes_docker;
    let format = if docker { push::Format::Docker } else { push::Format::Oci };
    let file = DigestsFile { registry: host, format, images: entries };
    push::write_json(&options.digests_file, &file)
}

/// Reads the digests files into image name, platform, claimed manifest.
fn read_files(files: &[PathBuf]) -> Result<BTreeMap<String, BTreeMap<String, Claimed>>> {
    let mut claimed: BTreeMap<String, BTreeMap<String, Claimed>> = BTreeMap::new();
    for path in files {
        let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let file: DigestsFile =
            serde_json::from_slice(&text).with_context(|| format!("invalid digests file {}", path.display()))?;
        for image in file.images {
            for (platform, digest) in image.platforms {
                let platforms = claimed.entry(image.name.clone()).or_default();
                if let Some(earlier) = platforms.get(&platform) {
                    if earlier.digest != digest {
                        bail!(
                            "{} and {} name different manifests of {} for {platform}",
                            earlier.file.display(),
                            path.display(),
                            image.name
                        );
                    }
                }
                platforms.insert(platform, Claimed { digest, file: path.clone() });
            }
        }
    }
    Ok(claimed)
}

/// Checks that the registry has the claimed manifest and that its config is for `platform`,
/// and returns its descriptor for the index.
fn check_manifest(
    client: &Client,
    repository: &str,
    platform: &crate::plan::Platform,
    claim: &Claimed,
) -> Result<Descriptor> {
    let where_ = || format!("{}/{repository}", client.host());
    let source = claim.file.display();
    let Some(bytes) = client.get_manifest(repository, &claim.digest)? else {
        bail!("{source} names manifest {} that {} does not have", claim.digest, where_());
    };
    let manifest: Value = serde_json::from_slice(&bytes)
        .with_context(|| format!("manifest {} in {} is not JSON", claim.digest, where_()))?;
    let media_type = manifest["mediaType"].as_str().unwrap_or_default().to_owned();
    let config_digest = manifest["config"]["digest"].as_str().unwrap_or_default();
    let Some(config) = client.get_blob(repository, config_digest)? else {
        bail!("{} lacks config {config_digest} of manifest {}", where_(), claim.digest);
    };
    let config: Value = serde_json::from_slice(&config)?;
    let mut found = format!(
        "{}/{}",
        config["os"].as_str().unwrap_or("?"),
        config["architecture"].as_str().unwrap_or("?")
    );
    if let Some(variant) = config["variant"].as_str() {
        found = format!("{found}/{variant}");
    }
    if found != platform.oci_name() {
        bail!(
            "{source} names manifest {} for {}, but its config is for {found}",
            claim.digest,
            platform.oci_name()
        );
    }
    let digest: Digest = claim.digest.parse().with_context(|| format!("invalid digest {}", claim.digest))?;
    let media_type = if media_type.is_empty() { MediaType::ImageManifest } else { MediaType::from(media_type.as_str()) };
    let mut descriptor = Descriptor::new(media_type, bytes.len() as u64, digest);
    descriptor.set_platform(Some(crate::oci::oci_platform(platform)?));
    Ok(descriptor)
}
