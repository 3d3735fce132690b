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
mod layer;
mod oci;
mod plan;
mod progress;
mod push;
mod registry;
mod release;
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
    #[arg(short, long, global = true, env = "XTASK_JOBS")]
    jobs: Option<usize>,
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
        /// Push the images to REGISTRY/NAMESPACE after writing them; without a value, to the
        /// `publish.target` of `[workspace.metadata.xtask]` in Cargo.toml.
        #[arg(long, num_args = 0..=1, value_name = "REGISTRY/NAMESPACE")]
        push: Option<Option<String>>,
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
        }
    }
}

/// Returns the push target given on the command line, else the one in Cargo.toml.
fn push_target(root: &std::path::Path, given: Option<String>) -> Result<String> {
    match given {
        Some(target) => Ok(target),
        None => plan::publish_target(root)?.context(
            "no push target: pass REGISTRY/NAMESPACE, or set publish.target in              [workspace.metadata.xtask] of Cargo.toml",
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
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let root = match cli.root {
        Some(root) => root,
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".."),
    };
    let root = root.canonicalize().with_context(|| format!("opening {}", root.display()))?;
    let config_dir = cli.config.unwrap_or_else(|| root.clone());
    let cores = cli.jobs.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    let shared = Context { progress: Progress::new(cli.verbose, cli.quiet), cores };

    match cli.command {
        Command::Release { layout, archives, report, one_by_one, push, publish } => {
            let plan = plan::load(&root, &config_dir, true)?;
            // Settle the push target before building, so a missing one fails fast.
            let push_options = match push {
                Some(target) => Some(publish.options(push_target(&root, target)?, &plan.target_dir)),
                None => None,
            };
            if let Some(options) = &push_options {
                push::parse_target(&options.target)?;
            }
            let options = release::Options {
                one_by_one,
                layout: layout.unwrap_or_else(|| plan.target_dir.join("oci")),
                archives: archives.unwrap_or_else(|| plan.target_dir.join("oci-archives")),
            };
            let result = release::run(&shared, &plan, &options)?;
            release::print_table(&result);
            if let Some(path) = report {
                blobs::write_atomic(&path, &serde_json::to_vec_pretty(&result)?)?;
            }
            if let Some(push_options) = push_options {
                push::run(&shared.progress, &options.layout, &push_options)?;
            }
            Ok(())
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
                println!("{} {}", image.reference(), platforms.join(" "));
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
