//! Compiling: every Go binary with `go build`, and all Rust binaries for all targets in one
//! `cargo zigbuild`, Go and Rust at the same time.
//!
//! The jobs share one GNU make jobserver with a token per core. Cargo (and rustc under it)
//! takes tokens from it natively; each `go build` takes one token while it runs and is limited
//! to one package at a time (`-p 1`), because Go has no jobserver support.
//! NOTE: cargo also keeps the implicit token every jobserver client has, so while cargo and Go
//! overlap, up to cores + 1 compiler processes run.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};

use crate::cache::{self, Cache};
use crate::plan::{BinarySource, Plan};
use crate::progress::Progress;
use crate::shell::Command;
use crate::tools;

/// One binary to produce: an image for a platform, as indexes into the plan.
pub type Job = (usize, usize);

/// Builds the jobs one after another, each with every core to itself, the way they would run
/// by hand; `cargo xtask bench` compares this with `build`.
pub fn build_one_by_one(
    plan: &Plan,
    jobs: &[Job],
    progress: &Progress,
    cores: usize,
) -> Result<BTreeMap<Job, PathBuf>> {
    let jobserver = jobserver::Client::new(cores).context("creating the jobserver")?;
    let mut binaries = BTreeMap::new();
    for &job in jobs {
        if let BinarySource::Go { .. } = plan.images[job.0].source {
            let (job, path) = build_go(plan, job, progress, &jobserver, cores)?;
            binaries.insert(job, path);
        }
    }
    for platform in 0..plan.platforms.len() {
        let rust_jobs: Vec<Job> = jobs
            .iter()
            .copied()
            .filter(|&(image, p)| p == platform && matches!(plan.images[image].source, BinarySource::Rust { .. }))
            .collect();
        binaries.extend(build_rust(plan, &rust_jobs, progress, &jobserver)?);
    }
    Ok(binaries)
}

/// Builds every job and returns the path of each binary.
pub fn build(
    plan: &Plan,
    jobs: &[Job],
    progress: &Progress,
    cores: usize,
) -> Result<BTreeMap<Job, PathBuf>> {
    let jobserver = jobserver::Client::new(cores).context("creating the jobserver")?;
    let (go_jobs, rust_jobs): (Vec<Job>, Vec<Job>) = jobs
        .iter()
        .partition(|(image, _)| matches!(plan.images[*image].source, BinarySource::Go { .. }));

    let (go_results, rust_result) = std::thread::scope(|scope| {
        let rust = scope.spawn(|| build_rust(plan, &rust_jobs, progress, &jobserver));
        let go: Vec<_> = go_jobs
            .iter()
            .map(|job| {
                let jobserver = &jobserver;
                scope.spawn(move || build_go(plan, *job, progress, jobserver, 1))
            })
            .collect();
        let go: Vec<Result<(Job, PathBuf)>> =
            go.into_iter().map(|handle| handle.join().expect("go build thread")).collect();
        (go, rust.join().expect("cargo build thread"))
    });

    // Report errors in plan order so that the same failure always prints the same way.
    let mut binaries = BTreeMap::new();
    let mut errors = Vec::new();
    for result in go_results {
        match result {
            Ok((job, path)) => {
                binaries.insert(job, path);
            }
            Err(err) => errors.push(err),
        }
    }
    match rust_result {
        Ok(paths) => binaries.extend(paths),
        Err(err) => errors.push(err),
    }
    if let Some(first) = errors.into_iter().next() {
        return Err(first);
    }
    Ok(binaries)
}

/// Directory of the Go binaries of one platform.
fn go_output_dir(plan: &Plan, platform: &str) -> PathBuf {
    plan.target_dir.join("xtask/go").join(platform)
}

fn build_go(
    plan: &Plan,
    job: Job,
    progress: &Progress,
    jobserver: &jobserver::Client,
    parallel_packages: usize,
) -> Result<(Job, PathBuf)> {
    let (image_index, platform_index) = job;
    let image = &plan.images[image_index];
    let platform = &plan.platforms[platform_index];
    let BinarySource::Go { dir, package, gopath } = &image.source else {
        unreachable!("build_go is only called for Go images");
    };
    let context = || format!("building {} for {}", image.name, platform.oci_name());
    let go = plan.go.tool.require().with_context(context)?;

    let out_dir = go_output_dir(plan, &platform.name);
    fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let out = out_dir.join(&image.name);
    let partial = out_dir.join(format!(".{}.partial", image.name));

    let build = go_command(plan, go, platform, dir, gopath.as_deref())
        .arg("build")
        .arg("-p")
        .arg(parallel_packages.to_string())
        .args(&plan.go.flags)
        .arg(format!("-ldflags={}", plan.go.ldflags.join(" ")))
        .arg("-o")
        .arg(&partial)
        .arg(package);

    // Skip `go build` when no source file it read has changed: its own check costs up to a
    // second on a large GOPATH tree.
    let cache = Cache::open(&plan.target_dir);
    let cache_name = format!("{}-{}", image.name, platform.name);
    let go_version = plan.go.tool.version.as_ref().map(ToString::to_string).unwrap_or_default();
    let inputs = format!("{go_version} {}", build.display());
    if let Some((key, sources)) = cache.go_sources(&cache_name) {
        if out.is_file() && cache::go_key(&inputs, &sources, &out).ok() == Some(key) {
            progress.stage(job, "up to date (go build skipped)");
            return Ok((job, out));
        }
    }

    // `go list` names the package directories and embedded files that the build reads.
    // It runs beside the build, as it only reads.
    let list = go_command(plan, go, platform, dir, gopath.as_deref())
        .arg("list")
        .arg("-deps")
        .arg("-f")
        .arg("{{if not .Standard}}{{.Dir}}{{range .EmbedFiles}}\t{{.}}{{end}}{{end}}")
        .arg(package);
    let token = jobserver.acquire().context("waiting for a jobserver token")?;
    progress.stage(job, "compiling (go build)");
    let (result, listed) = std::thread::scope(|scope| {
        let listed = scope.spawn(|| list.run(&Progress::new(false, true), None));
        (build.run(progress, None), listed.join().expect("go list thread"))
    });
    drop(token);
    result.with_context(context)?;
    // `go build` rewrites its output even when nothing changed. Keeping an identical file
    // keeps its modification time, so the assembly cache sees that it is unchanged.
    if same_content(&partial, &out) {
        fs::remove_file(&partial).with_context(|| format!("removing {}", partial.display()))?;
    } else {
        fs::rename(&partial, &out).with_context(|| format!("renaming to {}", out.display()))?;
    }
    if let Ok(listed) = listed {
        let sources = cache::GoSources::parse(&listed, dir);
        let key = cache::go_key(&inputs, &sources, &out)?;
        cache.store_go_sources(&cache_name, &key, &sources)?;
    }
    Ok((job, out))
}

fn build_rust(
    plan: &Plan,
    jobs: &[Job],
    progress: &Progress,
    jobserver: &jobserver::Client,
) -> Result<BTreeMap<Job, PathBuf>> {
    if jobs.is_empty() {
        return Ok(BTreeMap::new());
    }
    let rust = &plan.rust;
    let mut packages = Vec::new();
    let mut bins = Vec::new();
    let mut platforms = Vec::new();
    for &(image, platform) in jobs {
        if let BinarySource::Rust { package, bin } = &plan.images[image].source {
            push_unique(&mut packages, package.clone());
            push_unique(&mut bins, bin.clone());
        }
        push_unique(&mut platforms, platform);
    }
    let names: Vec<&str> = jobs.iter().map(|(image, _)| plan.images[*image].name.as_str()).collect();
    let platform_names: Vec<String> =
        platforms.iter().map(|index| plan.platforms[*index].oci_name()).collect();
    let context = || {
        let mut unique = names.clone();
        unique.dedup();
        format!("building {} for {}", unique.join(", "), platform_names.join(", "))
    };

    rust.rustc.require().with_context(context)?;
    let zigbuild = rust.zigbuild.require().with_context(context)?;
    let zig = rust.zig.require().with_context(context)?;

    let mut command = Command::new(zigbuild)
        .arg("zigbuild")
        .arg("--locked")
        .arg("--profile")
        .arg(&rust.profile);
    for platform in &platforms {
        command = command.arg("--target").arg(&plan.platforms[*platform].rust_target);
    }
    for package in &packages {
        command = command.arg("--package").arg(package);
    }
    for bin in &bins {
        command = command.arg("--bin").arg(bin);
    }
    command = command.dir(&plan.root);
    for platform in &platforms {
        let platform = &plan.platforms[*platform];
        if platform.rustflags.is_empty() {
            continue;
        }
        let triple = platform.rust_target.to_uppercase().replace('-', "_");
        // CARGO_ENCODED_RUSTFLAGS would override these, so per-target flags stay separate.
        command = command.env(format!("CARGO_TARGET_{triple}_RUSTFLAGS"), platform.rustflags.join(" "));
    }
    // cargo-zigbuild looks for `python3 -m ziglang` before `zig`. Its Python is set to a
    // path that does not exist, so it uses the Zig that the plan resolved and checked.
    command = command
        .env("CARGO", &rust.cargo)
        .env("CARGO_ZIGBUILD_ZIG_PATH", zig)
        .env("CARGO_ZIGBUILD_PYTHON_PATH", "/nonexistent/python3")
        .env("PATH", tools::path_with(&[zig.parent().unwrap_or(Path::new("/")).to_owned()]));

    let profile_dir = if rust.profile == "dev" { "debug" } else { rust.profile.as_str() };
    let outputs: Vec<(Job, PathBuf)> = jobs
        .iter()
        .filter_map(|&(image, platform)| {
            let BinarySource::Rust { bin, .. } = &plan.images[image].source else { return None };
            let triple = &plan.platforms[platform].rust_target;
            Some(((image, platform), plan.target_dir.join(triple).join(profile_dir).join(bin)))
        })
        .collect();

    // Skip cargo when no file of the workspace's packages changed since its last run with
    // the same command: even a no-op `cargo zigbuild` costs a few tenths of a second.
    let cache = Cache::open(&plan.target_dir);
    let rustc_version = rust.rustc.version.as_ref().map(ToString::to_string).unwrap_or_default();
    let inputs = format!("{rustc_version} {}", command.display());
    let output_paths: Vec<&Path> = outputs.iter().map(|(_, path)| path.as_path()).collect();
    let cache_name = format!("cargo-{}", crate::blobs::sha256_hex(inputs.as_bytes()));
    let key = || cache::rust_key(&inputs, &plan.root, &plan.rust_package_dirs, &output_paths);
    let current = output_paths.iter().all(|path| path.is_file())
        && cache.rust_key(&cache_name).is_some_and(|stored| key().ok() == Some(stored));
    if current {
        for job in jobs {
            progress.stage(*job, "up to date (cargo skipped)");
        }
    } else {
        for job in jobs {
            progress.stage(*job, "compiling (cargo zigbuild)");
        }
        command.run(progress, Some(jobserver)).with_context(context)?;
        for (_, path) in &outputs {
            if !path.is_file() {
                return Err(anyhow!("cargo zigbuild finished but {} is missing", path.display()))
                    .with_context(context);
            }
        }
        cache.store_rust_key(&cache_name, &key()?)?;
    }
    Ok(outputs.into_iter().collect())
}

/// Returns a `go` command in `dir` with the toolchain's and the platform's environment.
fn go_command(
    plan: &Plan,
    go: &Path,
    platform: &crate::plan::Platform,
    dir: &Path,
    gopath: Option<&Path>,
) -> Command {
    let mut command = Command::new(go).dir(dir);
    for (key, value) in &plan.go.env {
        command = command.env(key, value);
    }
    for (key, value) in &platform.go_env {
        command = command.env(key, value);
    }
    command = command.env("CGO_ENABLED", "0").env("GOOS", "linux").env("GOARCH", &platform.goarch);
    if let Some(gopath) = gopath {
        command = command.env("GO111MODULE", "off").env("GOPATH", gopath);
    }
    command
}

fn same_content(a: &Path, b: &Path) -> bool {
    let (Ok(a_meta), Ok(b_meta)) = (fs::metadata(a), fs::metadata(b)) else { return false };
    a_meta.len() == b_meta.len() && fs::read(a).ok() == fs::read(b).ok()
}

fn push_unique<T: PartialEq>(items: &mut Vec<T>, item: T) {
    if !items.contains(&item) {
        items.push(item);
    }
}
