//! `cargo xtask release`: build every image for every platform and write the OCI layout.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use serde::Serialize;

use crate::blobs::BlobStore;
use crate::build::{self, Job};
use crate::cache::Cache;
use crate::layer::LayerBlob;
use crate::oci::{self, Assembled};
use crate::plan::{BinarySource, Plan};
use crate::progress::Progress;
use crate::shell::Command;
use crate::{base, elf, Context as Shared};

pub struct Options {
    /// Build one job after another instead of all at once (for `cargo xtask bench`).
    pub one_by_one: bool,
    /// The OCI image layout to write.
    pub layout: PathBuf,
    /// Directory of the per-image OCI archives; none are written without it.
    pub archives: Option<PathBuf>,
    /// Images to build, by name; every image when empty.
    pub images: Vec<String>,
    /// Platforms to build, by name; every platform of each image when empty.
    pub platforms: Vec<String>,
    /// Tag each image `dev-PLATFORM` instead of its release tag, and keep the other images
    /// already named in the layout's `index.json`.
    pub dev: bool,
}

/// Returns the jobs that `options` selects, checking the names it gives.
fn select_jobs(plan: &Plan, options: &Options) -> Result<Vec<Job>> {
    for name in &options.images {
        if !plan.images.iter().any(|image| &image.name == name) {
            let known: Vec<&str> = plan.images.iter().map(|i| i.name.as_str()).collect();
            bail!("unknown image {name:?}: the images are {}", known.join(", "));
        }
    }
    for name in &options.platforms {
        if !plan.platforms.iter().any(|platform| &platform.name == name) {
            let known: Vec<&str> = plan.platforms.iter().map(|p| p.name.as_str()).collect();
            bail!("unknown platform {name:?}: the platforms are {}", known.join(", "));
        }
    }
    let mut jobs = Vec::new();
    for (index, image) in plan.images.iter().enumerate() {
        if !options.images.is_empty() && !options.images.contains(&image.name) {
            continue;
        }
        let selected: Vec<usize> = image
            .platforms
            .iter()
            .copied()
            .filter(|&p| {
                options.platforms.is_empty() || options.platforms.contains(&plan.platforms[p].name)
            })
            .collect();
        // An image named on the command line must have the platform; with no names, images
        // without it are left out.
        if selected.is_empty() && options.images.is_empty() {
            continue;
        }
        if selected.is_empty() {
            let own: Vec<&str> = image.platforms.iter().map(|&p| plan.platforms[p].name.as_str()).collect();
            bail!(
                "image {} is not built for {}: its platforms are {}",
                image.name,
                options.platforms.join(", "),
                own.join(", ")
            );
        }
        jobs.extend(selected.into_iter().map(|platform| (index, platform)));
    }
    if jobs.is_empty() {
        bail!("no image is built for {}", options.platforms.join(", "));
    }
    Ok(jobs)
}

/// Returns the reference that names an image in the layout.
fn reference(plan: &Plan, options: &Options, image: usize, platforms: &[usize]) -> String {
    let spec = &plan.images[image];
    if options.dev {
        let names: Vec<&str> = platforms.iter().map(|&p| plan.platforms[p].name.as_str()).collect();
        format!("{}:dev-{}", spec.name, names.join("-"))
    } else {
        spec.reference()
    }
}

/// Sizes, digests and phase times of a release, for the table and for `bench`.
#[derive(Serialize)]
pub struct Report {
    pub images: Vec<ImageReport>,
    /// Seconds from the start until the last compiler exited.
    pub compile_seconds: f64,
    /// Seconds from the last compiler's exit until the layout and archives were written.
    pub assemble_seconds: f64,
    pub base_layer_size: u64,
}

#[derive(Serialize)]
pub struct ImageReport {
    pub name: String,
    pub reference: String,
    pub index_digest: String,
    pub platforms: Vec<PlatformReport>,
}

#[derive(Serialize)]
pub struct PlatformReport {
    pub platform: String,
    pub binary: PathBuf,
    pub binary_size: u64,
    pub compressed_size: u64,
    pub app_layer_size: u64,
    /// Seconds spent writing the app layer, config and manifest; none when up to date.
    pub assemble_seconds: Option<f64>,
    pub manifest_digest: String,
}

/// Whether an image was assembled in this run.
enum Assembly {
    UpToDate,
    Done { seconds: f64 },
}

pub fn run(shared: &Shared, plan: &Plan, options: &Options) -> Result<Report> {
    let start = Instant::now();
    let jobs = select_jobs(plan, options)?;
    let mut images: Vec<_> = jobs.iter().map(|&(image, _)| &plan.images[image]).collect();
    images.dedup_by_key(|image| image.name.clone());
    plan.require_tools(&images)?;
    let epoch = source_date_epoch(&plan.root)?;
    add_rust_targets(shared, plan, &jobs)?;

    let progress = &shared.progress;
    for &(image, platform) in &jobs {
        progress.add((image, platform), &plan.images[image].name, &plan.platforms[platform].oci_name());
    }
    let result = release(plan, options, &jobs, progress, shared.cores, epoch, start);
    progress.clear();
    result
}

fn release(
    plan: &Plan,
    options: &Options,
    jobs: &[Job],
    progress: &Progress,
    cores: usize,
    epoch: u64,
    start: Instant,
) -> Result<Report> {
    let binaries = if options.one_by_one {
        build::build_one_by_one(plan, jobs, progress, cores)?
    } else {
        build::build(plan, jobs, progress, cores)?
    };
    let compiled = Instant::now();

    let store = BlobStore::open(&options.layout)?;
    let cache = Cache::open(&plan.target_dir);
    let base_layer = write_base_layer(plan, &store, &cache, epoch)?;
    let assembled: Vec<(Assembled, Assembly)> = jobs
        .par_iter()
        .map(|&(image, platform)| {
            let spec = &plan.images[image];
            let target = &plan.platforms[platform];
            let context = || format!("assembling {} for {}", spec.name, target.oci_name());
            let binary = &binaries[&(image, platform)];
            let base_digest = &base_layer.blob.digest;
            let key = Cache::assembly_key(spec, target, binary, base_digest, epoch)
                .with_context(context)?;
            let cache_name = format!("{}-{}", spec.name, target.name);
            if let Some(assembled) = cache.assembled(&cache_name, &key, &store) {
                return Ok((assembled, Assembly::UpToDate));
            }
            // A binary is checked before anything that refers to it is written. An unchanged
            // binary passed this check when its cached assembly was made.
            progress.stage((image, platform), "checking");
            elf::check_static(binary, target.elf_machine)
                .with_context(|| format!("packaging {} for {}", spec.name, target.oci_name()))?;
            progress.stage((image, platform), "assembling");
            let started = Instant::now();
            let assembled = oci::assemble(&store, &base_layer, spec, target, binary, epoch)
                .with_context(context)?;
            let seconds = started.elapsed().as_secs_f64();
            cache.store_assembled(&cache_name, &key, &assembled)?;
            Ok((assembled, Assembly::Done { seconds }))
        })
        .collect::<Result<_>>()?;

    // Group the platform manifests by image, in plan order.
    let mut by_image: BTreeMap<usize, Vec<(usize, Assembled, Assembly)>> = BTreeMap::new();
    for (&(image, platform), (manifest, assembly)) in jobs.iter().zip(assembled) {
        by_image.entry(image).or_default().push((platform, manifest, assembly));
    }
    let mut indexes = Vec::new();
    for (&image, manifests) in &by_image {
        let list: Vec<&Assembled> = manifests.iter().map(|(_, m, _)| m).collect();
        let platforms: Vec<usize> = manifests.iter().map(|(p, _, _)| *p).collect();
        let reference = reference(plan, options, image, &platforms);
        indexes.push((image, oci::write_index(&store, &reference, &list)?));
    }
    if let Some(archives) = &options.archives {
        indexes.par_iter().try_for_each(|(image, index)| {
            let spec = &plan.images[*image];
            let path = archives.join(format!("{}.tar", spec.name));
            // The archive's bytes follow from the index descriptor and the mtime alone.
            let key = format!("{} {} {epoch}", index.descriptor.digest(), index.reference);
            if cache.archive_is_current(&path, &key) {
                return Ok(());
            }
            oci::write_archive(&store, index, &path, epoch)?;
            cache.store_archive(&path, &key)
        })?;
    }
    let descriptors: Vec<_> = indexes.iter().map(|(_, index)| &index.descriptor).collect();
    oci::write_layout(&options.layout, &descriptors, options.dev)?;
    let finished = Instant::now();

    let mut images = Vec::new();
    for ((image, index), (_, manifests)) in indexes.iter().zip(&by_image) {
        let spec = &plan.images[*image];
        let mut platforms = Vec::new();
        for (platform, manifest, assembly) in manifests {
            let binary = &binaries[&(*image, *platform)];
            let binary_size = std::fs::metadata(binary)?.len();
            let (message, assemble_seconds) = match assembly {
                Assembly::UpToDate => ("up to date", None),
                Assembly::Done { seconds } => ("done", Some(*seconds)),
            };
            progress.finish((*image, *platform), message);
            progress.event(
                "image-platform",
                serde_json::json!({
                    "image": spec.name,
                    "platform": plan.platforms[*platform].oci_name(),
                    "manifest_digest": manifest.manifest.digest().to_string(),
                    "binary_size": binary_size,
                    "compressed_size": manifest.compressed_size,
                    "assembled": assemble_seconds.is_some(),
                }),
            );
            platforms.push(PlatformReport {
                platform: plan.platforms[*platform].oci_name(),
                binary: binary.clone(),
                binary_size,
                compressed_size: manifest.compressed_size,
                app_layer_size: manifest.app_layer_size,
                assemble_seconds,
                manifest_digest: manifest.manifest.digest().to_string(),
            });
        }
        progress.event(
            "image",
            serde_json::json!({
                "image": spec.name,
                "reference": index.reference,
                "index_digest": index.descriptor.digest().to_string(),
            }),
        );
        images.push(ImageReport {
            name: spec.name.clone(),
            reference: index.reference.clone(),
            index_digest: index.descriptor.digest().to_string(),
            platforms,
        });
    }
    Ok(Report {
        images,
        compile_seconds: seconds(compiled - start),
        assemble_seconds: seconds(finished - compiled),
        base_layer_size: base_layer.blob.size,
    })
}

/// Writes the base layer, or reuses it when its source files and the mtime are unchanged and
/// its blob is in the store.
fn write_base_layer(plan: &Plan, store: &BlobStore, cache: &Cache, epoch: u64) -> Result<LayerBlob> {
    let sources = [plan.base.ca_bundle.as_path(), plan.base.zoneinfo.as_path()];
    let key = crate::cache::files_key(&format!("base {epoch}"), &sources)?;
    if let Some(layer) = cache.base_layer(&key, store) {
        return Ok(layer);
    }
    let layer = base::layer(&plan.base)?.write(store, epoch, 9).context("writing the base layer")?;
    cache.store_base_layer(&key, &layer)?;
    Ok(layer)
}

fn seconds(duration: Duration) -> f64 {
    duration.as_secs_f64()
}

/// Returns `SOURCE_DATE_EPOCH`, or else the time of the last commit, used as every mtime and
/// as the images' creation time.
pub fn source_date_epoch(root: &Path) -> Result<u64> {
    if let Ok(value) = std::env::var("SOURCE_DATE_EPOCH") {
        return value.trim().parse().with_context(|| {
            format!("invalid SOURCE_DATE_EPOCH {value:?}: expected seconds since 1970")
        });
    }
    let output = duct::cmd!("git", "log", "-1", "--format=%ct")
        .dir(root)
        .stderr_capture()
        .stdout_capture()
        .unchecked()
        .run()
        .context("running git to read the last commit's time")?;
    let text = String::from_utf8_lossy(&output.stdout);
    match text.trim().parse() {
        Ok(epoch) if output.status.success() => Ok(epoch),
        _ => bail!(
            "cannot read the last commit's time in {} ({}): set SOURCE_DATE_EPOCH to the \
             images' timestamp in seconds since 1970",
            root.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        ),
    }
}

/// Adds the Rust targets the jobs need with rustup, when they are missing.
fn add_rust_targets(shared: &Shared, plan: &Plan, jobs: &[Job]) -> Result<()> {
    let mut targets: Vec<&str> = jobs
        .iter()
        .filter(|(image, _)| matches!(plan.images[*image].source, BinarySource::Rust { .. }))
        .map(|(_, platform)| plan.platforms[*platform].rust_target.as_str())
        .collect();
    targets.sort();
    targets.dedup();
    crate::setup::add_rust_targets(shared, &targets)
}

/// Prints the release's table: one row per image and platform, then each image's index.
pub fn print_table(report: &Report) {
    println!(
        "{:<16} {:<16} {:>12} {:>12}  {}",
        "IMAGE", "PLATFORM", "BINARY", "COMPRESSED", "DIGEST"
    );
    for image in &report.images {
        for platform in &image.platforms {
            println!(
                "{:<16} {:<16} {:>12} {:>12}  {}",
                image.name,
                platform.platform,
                platform.binary_size,
                platform.compressed_size,
                platform.manifest_digest
            );
        }
        println!("{:<16} {:<16} {:>12} {:>12}  {}", image.name, "index", "", "", image.index_digest);
    }
}

/// Runs `rustup target list --installed`.
pub fn installed_targets(shared: &Shared) -> Result<Vec<String>> {
    let output = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .run(&shared.progress, None)
        .context("listing installed Rust targets (is rustup installed?)")?;
    Ok(output.lines().map(str::to_owned).collect())
}
