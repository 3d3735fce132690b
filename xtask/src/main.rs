//! The build orchestrator: compiles the repository's Go and Rust services as static binaries
//! for every platform in `targets/` and packages each into a multi-platform scratch image.

mod base;
mod bench;
mod blobs;
mod build;
mod cache;
mod config;
mod doctor;
mod elf;
mod gzip;
mod layer;
mod merge;
mod oci;
mod plan;
mod progress;
mod push;
mod registry;
mod release;
mod run_image;
mod setup;
mod shell;
mod tools;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};

use crate::progress::Progress;

#[derive(Parser)]
#[command(name = "xtask", version, about)]
struct Cli {
    /// Print every command before it runs and its output after it ends.
    #[arg(short, long, global = true)]
    verbose: bool,
    /// Print nothing but results and errors.
    #[arg(short, long, global = true)]
    quiet: bool,
    /// Workspace root; the directory above the xtask crate by default.
    #[arg(long, global = true, env = "XTASK_ROOT")]
    root: Option<PathBuf>,
    /// Directory holding targets/, toolchains/ and images/; the workspace root by default.
    #[arg(long, global = true, env = "XTASK_CONFIG")]
    config: Option<PathBuf>,
    /// Parallel compiler jobs; the number of cores by default.
    #[arg(short, long, global = true, env = "XTASK_JOBS", value_parser = clap::value_parser!(u16).range(1..))]
    jobs: Option<u16>,
    /// Print one JSON object per event on stdout instead of progress lines and tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build every image for every platform and write the OCI layout and archives.
    Release {
        /// OCI image layout to write; TARGET_DIR/oci by default.
        #[arg(long)]
        layout: Option<PathBuf>,
        /// Directory of the per-image OCI archives; TARGET_DIR/oci-archives by default.
        #[arg(long)]
        archives: Option<PathBuf>,
        /// Also write the release's report (sizes, digests, phase times) as JSON to this file.
        #[arg(long)]
        report: Option<PathBuf>,
        /// Build one job after another, each with all cores (the benchmark's baseline).
        #[arg(long, hide = true)]
        one_by_one: bool,
        /// Build only these platforms (file names in targets/); may be repeated.
        #[arg(long = "arch", value_name = "PLATFORM")]
        platforms: Vec<String>,
        /// Push the images to REGISTRY/NAMESPACE after writing them; without a value, to the
        /// `publish.target` of `[workspace.metadata.xtask]` in Cargo.toml.
        #[arg(long, num_args = 0..=1, value_name = "REGISTRY/NAMESPACE")]
        push: Option<Option<String>>,
        /// Push only blobs and platform manifests, by digest and without tags, for `index` to
        /// merge; the digests file is TARGET_DIR/digests-PLATFORM.json by default.
        #[arg(long, value_name = "REGISTRY/NAMESPACE", conflicts_with = "push")]
        push_by_digest: Option<String>,
        #[command(flatten)]
        publish: PublishArgs,
    },
    /// Build images for one platform (the host's by default) into the layout, tagged
    /// `dev-PLATFORM`; only what changed is rebuilt.
    Build {
        /// Images to build; every image by default.
        images: Vec<String>,
        /// Platform to build: a file name in targets/, or `host`.
        #[arg(long = "arch", default_value = "host", value_name = "PLATFORM")]
        platform: String,
        /// OCI image layout to write; TARGET_DIR/oci by default.
        #[arg(long)]
        layout: Option<PathBuf>,
    },
    /// Run an image's entrypoint from its files with bubblewrap, as the image's user, with
    /// its environment and working directory (the host's network is shared).
    Run {
        image: String,
        /// Platform of the image: a file name in targets/, or `host`.
        #[arg(long = "arch", default_value = "host", value_name = "PLATFORM")]
        platform: String,
        /// OCI image layout to read; TARGET_DIR/oci by default.
        #[arg(long)]
        layout: Option<PathBuf>,
        /// Arguments that replace the image's `cmd`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Merge per-platform digests files (from `release --push-by-digest`) into image indexes,
    /// after checking each digest and platform in the registry, then push them and the tags.
    Index {
        /// REGISTRY/NAMESPACE holding the platform manifests.
        #[arg(long, value_name = "REGISTRY/NAMESPACE")]
        push: String,
        /// Tag for every image; each image's own tag by default.
        #[arg(long)]
        tag: Option<String>,
        /// Digests files, one per platform.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[command(flatten)]
        publish: PublishArgs,
    },
    /// Push an existing OCI layout (from `release`) to a registry without building.
    Push {
        /// REGISTRY/NAMESPACE to push to; each image goes to NAMESPACE/IMAGE. By default the
        /// `publish.target` of `[workspace.metadata.xtask]` in Cargo.toml.
        target: Option<String>,
        /// OCI image layout to push; TARGET_DIR/oci by default.
        #[arg(long)]
        layout: Option<PathBuf>,
        #[command(flatten)]
        publish: PublishArgs,
    },
    /// Measure the release against its baselines and print the results as Markdown.
    Bench,
    /// Read and check every configuration file, then print the plan.
    Check,
    /// List the tools and packages the plan needs and whether they are installed.
    Doctor,
    /// Install the pinned toolchains, Rust targets and Debian packages.
    Setup {
        /// Also install what the tests need and register qemu-aarch64 with binfmt_misc.
        #[arg(long)]
        test_tools: bool,
    },
}

/// Options of pushing to a registry.
#[derive(clap::Args)]
struct PublishArgs {
    /// Media types to push: `oci`, or `docker` (manifest list and schema 2) for registries
    /// that reject OCI indexes.
    #[arg(long, value_enum, default_value = "oci")]
    format: push::Format,
    /// JSON file that lists each pushed image with its index and platform digests;
    /// TARGET_DIR/digests.json by default.
    #[arg(long)]
    digests_file: Option<PathBuf>,
    /// PEM file of CA certificates to trust for the registry, besides the system roots.
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// Use plain HTTP. Without it, only a loopback registry that does not speak TLS gets
    /// plain HTTP.
    #[arg(long)]
    plain_http: bool,
    /// Blob uploads at once.
    #[arg(long, default_value_t = 4)]
    upload_jobs: usize,
}

impl PublishArgs {
    fn options(self, target: String, target_dir: &std::path::Path) -> push::Options {
        push::Options {
            target,
            format: self.format,
            digests_file: self.digests_file.unwrap_or_else(|| target_dir.join("digests.json")),
            ca_file: self.ca_file,
            plain_http: self.plain_http,
            jobs: self.upload_jobs,
            by_digest: false,
        }
    }
}

/// Returns the push target given on the command line, else the one in Cargo.toml.
fn push_target(root: &std::path::Path, given: Option<String>) -> Result<String> {
    match given {
        Some(target) => Ok(target),
        None => plan::publish_target(root)?.context(
            "no push target: pass REGISTRY/NAMESPACE, or set publish.target in [workspace.metadata.xtask] of Cargo.toml",
        ),
    }
}

/// Shared state of every subcommand.
pub struct Context {
    pub progress: Progress,
    pub cores: usize,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = cli.json;
    let result = run(cli);
    if json {
        let mut event = serde_json::json!({ "reason": "finished", "success": result.is_ok() });
        if let Err(err) = &result {
            event["error"] = format!("{err:#}").into();
        }
        println!("{event}");
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves `host` to the platform whose Rust target is for this machine's architecture.
fn platform_name(plan: &plan::Plan, name: &str) -> Result<String> {
    if name != "host" {
        return Ok(name.to_owned());
    }
    let arch = std::env::consts::ARCH;
    let platform = plan.platforms.iter().find(|p| p.rust_target.starts_with(&format!("{arch}-")));
    platform.map(|p| p.name.clone()).with_context(|| {
        format!("no file in targets/ is for this machine's architecture ({arch}): pass --arch")
    })
}

fn run(cli: Cli) -> Result<()> {
    let root = match cli.root {
        Some(root) => root,
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".."),
    };
    let root = root.canonicalize().with_context(|| format!("opening {}", root.display()))?;
    let config_dir = cli.config.unwrap_or_else(|| root.clone());
    let cores = cli.jobs.map(usize::from).unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    let progress = Progress::with_json(cli.verbose, cli.quiet, cli.json);
    let shared = Context { progress, cores };

    match cli.command {
        Command::Release {
            layout,
            archives,
            report,
            one_by_one,
            platforms,
            push,
            push_by_digest,
            publish,
        } => {
            let plan = plan::load(&root, &config_dir, true)?;
            // Settle the push target before building, so a missing one fails fast.
            let push_options = match (push, push_by_digest) {
                (Some(target), _) => Some(publish.options(push_target(&root, target)?, &plan.target_dir)),
                (None, Some(target)) => {
                    let name = if platforms.is_empty() { "all".to_owned() } else { platforms.join("-") };
                    let given = publish.digests_file.is_some();
                    let mut options = publish.options(target, &plan.target_dir);
                    if !given {
                        options.digests_file = plan.target_dir.join(format!("digests-{name}.json"));
                    }
                    options.by_digest = true;
                    Some(options)
                }
                (None, None) => None,
            };
            if let Some(options) = &push_options {
                push::parse_target(&options.target)?;
            }
            let options = release::Options {
                one_by_one,
                layout: layout.unwrap_or_else(|| plan.target_dir.join("oci")),
                archives: Some(archives.unwrap_or_else(|| plan.target_dir.join("oci-archives"))),
                images: Vec::new(),
                platforms,
                dev: false,
            };
            let result = release::run(&shared, &plan, &options)?;
            if !shared.progress.json() {
                release::print_table(&result);
            }
            if let Some(path) = report {
                blobs::write_atomic(&path, &serde_json::to_vec_pretty(&result)?)?;
            }
            if let Some(push_options) = push_options {
                push::run(&shared.progress, &options.layout, &push_options)?;
            }
            Ok(())
        }
        Command::Build { images, platform, layout } => {
            let plan = plan::load(&root, &config_dir, true)?;
            let options = release::Options {
                one_by_one: false,
                layout: layout.unwrap_or_else(|| plan.target_dir.join("oci")),
                archives: None,
                images,
                platforms: vec![platform_name(&plan, &platform)?],
                dev: true,
            };
            let result = release::run(&shared, &plan, &options)?;
            if !shared.progress.json() {
                release::print_table(&result);
            }
            Ok(())
        }
        Command::Run { image, platform, layout, args } => {
            let plan = plan::load(&root, &config_dir, false)?;
            let platform = platform_name(&plan, &platform)?;
            let layout = layout.unwrap_or_else(|| plan.target_dir.join("oci"));
            let code = run_image::run(&plan, &layout, &image, &platform, &args)?;
            std::process::exit(code);
        }
        Command::Index { push, tag, files, publish } => {
            let plan = plan::load(&root, &config_dir, false)?;
            let options = publish.options(push, &plan.target_dir);
            merge::run(&shared.progress, &plan, &options, tag.as_deref(), &files)
        }
        Command::Push { target, layout, publish } => {
            let target_dir = plan::target_dir(&root)?;
            let options = publish.options(push_target(&root, target)?, &target_dir);
            let layout = layout.unwrap_or_else(|| target_dir.join("oci"));
            push::run(&shared.progress, &layout, &options)
        }
        Command::Check => {
            let plan = plan::load(&root, &config_dir, true)?;
            plan.require_tools(&plan.images.iter().collect::<Vec<_>>())?;
            for image in &plan.images {
                let platforms: Vec<String> =
                    image.platforms.iter().map(|&p| plan.platforms[p].oci_name()).collect();
                if shared.progress.json() {
                    let fields = serde_json::json!({ "reference": image.reference(), "platforms": platforms });
                    shared.progress.event("plan-image", fields);
                } else {
                    println!("{} {}", image.reference(), platforms.join(" "));
                }
            }
            Ok(())
        }
        Command::Bench => bench::run(&shared, &root, &config_dir),
        Command::Doctor => doctor::run(&shared, &plan::load(&root, &config_dir, false)?),
        Command::Setup { test_tools } => {
            setup::run(&shared, &plan::load(&root, &config_dir, false)?, test_tools)
        }
    }
}
