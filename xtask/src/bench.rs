//! `cargo xtask bench`: measures the release against baselines taken in the same run and
//! prints each figure beside its target as Markdown (also written to
//! `TARGET_DIR/bench/results.md`).
//!
//! Both cold releases start from empty Cargo, Go and Zig caches of their own under
//! `TARGET_DIR/bench`, so neither warms the other.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::Context as Shared;

/// Base layer budget with the CA bundle and every time zone, in bytes.
const BASE_LAYER_BUDGET: u64 = 340_000;

/// Wall time and CPU time (user + system, of every waited-for descendant) of one run.
struct Measured {
    wall: f64,
    cpu: f64,
}

fn children_cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct it is given and keeps no reference.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage);
        usage
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

fn measure(command: &mut Command) -> Result<Measured> {
    let cpu_before = children_cpu_seconds();
    let start = Instant::now();
    let output = command.output().with_context(|| format!("starting {command:?}"))?;
    let wall = start.elapsed().as_secs_f64();
    if !output.status.success() {
        bail!(
            "{command:?} failed with {}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim_end()
        );
    }
    Ok(Measured { wall, cpu: children_cpu_seconds() - cpu_before })
}

/// A release with its own target directory and compiler caches.
struct Sandbox {
    dir: PathBuf,
}

impl Sandbox {
    fn fresh(dir: PathBuf) -> Result<Sandbox> {
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        std::fs::create_dir_all(&dir)?;
        Ok(Sandbox { dir })
    }

    fn release(&self, root: &Path, config: &Path, extra: &[&str]) -> Result<Command> {
        let mut command = xtask(root, config)?;
        command
            .arg("release")
            .arg("--layout")
            .arg(self.dir.join("oci"))
            .arg("--archives")
            .arg(self.dir.join("archives"))
            .arg("--report")
            .arg(self.dir.join("report.json"))
            .args(extra)
            .env("CARGO_TARGET_DIR", self.dir.join("target"))
            .env("GOCACHE", self.dir.join("go-cache"))
            .env("ZIG_GLOBAL_CACHE_DIR", self.dir.join("zig-cache"))
            .env("ZIG_LOCAL_CACHE_DIR", self.dir.join("zig-cache"));
        Ok(command)
    }

    fn report(&self) -> Result<Value> {
        let path = self.dir.join("report.json");
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        Ok(serde_json::from_slice(&bytes)?)
    }
}

/// Returns a quiet command running this xtask binary on the workspace `root`.
fn xtask(root: &Path, config: &Path) -> Result<Command> {
    let mut command = Command::new(std::env::current_exe()?);
    command.arg("--root").arg(root).arg("--config").arg(config).arg("--quiet");
    Ok(command)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "missed"
    }
}

pub fn run(shared: &Shared, root: &Path, config: &Path) -> Result<()> {
    let plan = crate::plan::load(root, config, true)?;
    let bench_dir = plan.target_dir.join("bench");
    let say = |line: &str| shared.progress.println(line.to_owned());

    say("cold release, one job after another");
    let one_by_one = Sandbox::fresh(bench_dir.join("one-by-one"))?;
    let sequential = measure(&mut one_by_one.release(root, config, &["--one-by-one"])?)?;

    say("cold release, in parallel");
    let parallel_box = Sandbox::fresh(bench_dir.join("parallel"))?;
    let parallel = measure(&mut parallel_box.release(root, config, &[])?)?;
    let report = parallel_box.report()?;

    say("no-op release");
    let mut noop = Vec::new();
    for _ in 0..5 {
        noop.push(measure(&mut parallel_box.release(root, config, &[])?)?.wall);
    }
    let noop = median(noop);

    say("no-op cargo check");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut check = Command::new(&cargo);
    check.args(["check", "--quiet", "--package", "xtask"]).current_dir(root);
    measure(&mut check)?;
    let mut checks = Vec::new();
    for _ in 0..5 {
        checks.push(measure(&mut check)?.wall);
    }
    let check = median(checks);

    say("single-platform builds");
    let host = Sandbox { dir: bench_dir.join("single") };
    let dev = single_platform(root, config, &plan, &host)?;

    say("assembly of each image alone");
    let alone = assemble_alone(&plan, &report, &bench_dir.join("alone"))?;

    say("umoci insert of each binary");
    let umoci = umoci_inserts(&bench_dir.join("umoci"), &report, &alone)?;

    say("pushes to a local registry");
    let pushes = push_timings(root, &parallel_box, &report, &bench_dir.join("push"))?;

    let cores = shared.cores as f64;
    let mut out = String::new();
    writeln!(out, "Machine: {} cores. Command: `cargo xtask bench`.\n", shared.cores)?;
    writeln!(out, "| measure | figure | baseline | ratio | target | |")?;
    writeln!(out, "|---|---|---|---|---|---|")?;
    let speedup = sequential.wall / parallel.wall;
    writeln!(
        out,
        "| cold release, wall | {:.1} s | {:.1} s one job after another | {speedup:.2}x faster | at least 1.3x | {} |",
        parallel.wall,
        sequential.wall,
        verdict(speedup >= 1.3)
    )?;
    let busy = parallel.wall / (parallel.cpu / cores);
    writeln!(
        out,
        "| cold release, wall | {:.1} s | {:.1} CPU-s / {} cores = {:.1} s | {busy:.2}x | within 1.1x | {} |",
        parallel.wall,
        parallel.cpu,
        shared.cores,
        parallel.cpu / cores,
        verdict(busy <= 1.1)
    )?;
    let noop_ratio = noop / check;
    writeln!(
        out,
        "| no-op release, wall (median of 5) | {noop:.2} s | {check:.2} s `cargo check -p xtask` | {noop_ratio:.2}x | within 3x | {} |",
        verdict(noop_ratio <= 3.0)
    )?;
    for row in &dev.noop {
        writeln!(
            out,
            "| no-op `build {}` (median of 5) | {:.2} s | | | under 0.5 s | {} |",
            row.0,
            row.1,
            verdict(row.1 < 0.5)
        )?;
    }
    for row in &dev.rebuild {
        let overhead = row.1 / row.2 - 1.0;
        writeln!(
            out,
            "| `build {}` after a one-line change (median of 3) | {:.2} s | {:.2} s bare `{}` | {:+.1}% | under +10% | {} |",
            row.0,
            row.1,
            row.2,
            row.3,
            overhead * 100.0,
            verdict(overhead < 0.10)
        )?;
    }
    let base = report["base_layer_size"].as_u64().unwrap_or(0);
    writeln!(
        out,
        "| base layer, gzip | {base} bytes | budget {BASE_LAYER_BUDGET} bytes | {:.2} | at most 1.0 | {} |",
        base as f64 / BASE_LAYER_BUDGET as f64,
        verdict(base <= BASE_LAYER_BUDGET)
    )?;
    writeln!(
        out,
        "\nAssembly after the last compiler exits: {:.2} s for every image and platform, layout \
         and archives included. Per image and platform, each assembled alone (app layer, \
         config and manifest), against `umoci insert` of the same binary into an empty image \
         (time; bytes of the new layer):\n",
        report["assemble_seconds"].as_f64().unwrap_or(0.0)
    )?;
    writeln!(out, "| image | platform | ours | umoci insert | time ratio | ours | umoci | size ratio | target: no slower, no larger |")?;
    writeln!(out, "|---|---|---|---|---|---|---|---|---|")?;
    for row in &umoci {
        let time_ratio = row.ours_seconds / row.umoci_seconds;
        let size_ratio = row.ours_bytes as f64 / row.umoci_bytes as f64;
        writeln!(
            out,
            "| {} | {} | {:.3} s | {:.3} s | {time_ratio:.2} | {} | {} | {size_ratio:.3} | {} |",
            row.image,
            row.platform,
            row.ours_seconds,
            row.umoci_seconds,
            row.ours_bytes,
            row.umoci_bytes,
            verdict(time_ratio <= 1.0 && size_ratio <= 1.0)
        )?;
    }
    writeln!(
        out,
        "\nPushing the release to a registry on 127.0.0.1 (the reference registry, plain HTTP), \
         against `skopeo copy --all` of each image from the same layout, in seconds:\n"
    )?;
    writeln!(out, "| case | `cargo xtask push` | `skopeo copy --all` | ratio |")?;
    writeln!(out, "|---|---|---|---|")?;
    for (case, ours, skopeo) in &pushes {
        writeln!(out, "| {case} | {ours:.2} s | {skopeo:.2} s | {:.2} |", ours / skopeo)?;
    }
    print!("{out}");
    crate::blobs::write_atomic(&bench_dir.join("results.md"), out.as_bytes())
}

/// No-op and one-line-change timings of single-platform builds.
struct DevTimes {
    /// Image and median seconds of a no-op `build IMAGE`.
    noop: Vec<(String, f64)>,
    /// Image, median seconds of `build IMAGE` and of the bare compiler command, and that
    /// command's name, each after a one-line change.
    rebuild: Vec<(String, f64, f64, String)>,
}

/// Restores a source file when dropped.
struct Edit {
    path: PathBuf,
    original: Vec<u8>,
}

impl Edit {
    fn new(path: PathBuf) -> Result<Edit> {
        let original = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        Ok(Edit { path, original })
    }

    /// Appends a distinct comment line, so the compiler sees a changed file.
    fn change(&self, number: usize) -> Result<()> {
        let mut text = self.original.clone();
        text.extend_from_slice(format!("\n// benchmark edit {number}\n").as_bytes());
        std::fs::write(&self.path, text).with_context(|| format!("writing {}", self.path.display()))
    }
}

impl Drop for Edit {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.path, &self.original);
    }
}

/// Measures no-op single-platform builds of a Go and a Rust image, and their rebuilds after
/// a one-line change against the bare compiler command, on this machine's platform.
fn single_platform(root: &Path, config: &Path, plan: &crate::plan::Plan, sandbox: &Sandbox) -> Result<DevTimes> {
    let arch = std::env::consts::ARCH;
    let Some(platform) = plan.platforms.iter().find(|p| p.rust_target.starts_with(&format!("{arch}-"))) else {
        bail!("no file in targets/ is for this machine ({arch})");
    };
    let build = |image: &str| -> Result<Command> {
        let mut command = xtask(root, config)?;
        command
            .args(["build", image, "--arch", &platform.name, "--layout"])
            .arg(sandbox.dir.join("oci"));
        Ok(command)
    };
    let median_of = |runs: usize, command: &mut dyn FnMut(usize) -> Result<f64>| -> Result<f64> {
        let mut times = Vec::new();
        for run in 0..runs {
            times.push(command(run)?);
        }
        Ok(median(times))
    };

    let mut times = DevTimes { noop: Vec::new(), rebuild: Vec::new() };
    for image in ["exporter", "notifier"] {
        measure(&mut build(image)?)?;
        let noop = median_of(5, &mut |_| Ok(measure(&mut build(image)?)?.wall))?;
        times.noop.push((image.to_owned(), noop));
    }

    let go = plan.go.tool.require()?;
    let exporter = root.join("services/exporter");
    let edit = Edit::new(exporter.join("main.go"))?;
    let ours = median_of(3, &mut |run| {
        edit.change(2 * run)?;
        Ok(measure(&mut build("exporter")?)?.wall)
    })?;
    let bare = median_of(3, &mut |run| {
        edit.change(2 * run + 1)?;
        let mut command = Command::new(go);
        command
            .arg("build")
            .args(&plan.go.flags)
            .arg(format!("-ldflags={}", plan.go.ldflags.join(" ")))
            .arg("-o")
            .arg(sandbox.dir.join("exporter-bare"))
            .arg(".")
            .current_dir(&exporter)
            .envs(&plan.go.env)
            .envs([("CGO_ENABLED", "0"), ("GOOS", "linux"), ("GOARCH", platform.goarch.as_str())]);
        Ok(measure(&mut command)?.wall)
    })?;
    drop(edit);
    times.rebuild.push(("exporter".to_owned(), ours, bare, "go build".to_owned()));

    let zigbuild = plan.rust.zigbuild.require()?;
    let zig = plan.rust.zig.require()?;
    let edit = Edit::new(root.join("services/notifier/src/main.rs"))?;
    let ours = median_of(3, &mut |run| {
        edit.change(2 * run)?;
        Ok(measure(&mut build("notifier")?)?.wall)
    })?;
    let triple = platform.rust_target.to_uppercase().replace('-', "_");
    let bare = median_of(3, &mut |run| {
        edit.change(2 * run + 1)?;
        let mut command = Command::new(zigbuild);
        command
            .args(["zigbuild", "--locked", "--profile", &plan.rust.profile, "--target"])
            .arg(&platform.rust_target)
            .args(["--package", "notifier", "--bin", "notifier"])
            .current_dir(root)
            .env(format!("CARGO_TARGET_{triple}_RUSTFLAGS"), platform.rustflags.join(" "))
            .env("CARGO_ZIGBUILD_ZIG_PATH", zig)
            .env("CARGO_ZIGBUILD_PYTHON_PATH", "/nonexistent/python3");
        Ok(measure(&mut command)?.wall)
    })?;
    drop(edit);
    times.rebuild.push(("notifier".to_owned(), ours, bare, "cargo zigbuild".to_owned()));
    Ok(times)
}

/// Starts Debian's `docker-registry` on a free loopback port with storage under `dir`, and
/// returns the child process and its `host:port`.
fn start_registry(dir: &Path) -> Result<(std::process::Child, String)> {
    let registry = which::which("docker-registry")
        .context("docker-registry not found (the push benchmark runs it): run `cargo xtask setup --test-tools`")?;
    std::fs::create_dir_all(dir)?;
    let config = format!(
        "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:0\n",
        dir.join("storage").display()
    );
    std::fs::write(dir.join("config.yml"), config)?;
    let log = dir.join("registry.log");
    let child = Command::new(registry)
        .arg("serve")
        .arg(dir.join("config.yml"))
        .stdout(std::fs::File::create(&log)?)
        .stderr(std::fs::File::create(dir.join("registry.err"))?)
        .spawn()?;
    let deadline = Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(dir.join("registry.err")).unwrap_or_default()
            + &std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(start) = text.find("listening on 127.0.0.1:") {
            let rest = &text[start + "listening on ".len()..];
            let host: String = rest.chars().take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':').collect();
            return Ok((child, host));
        }
        if Instant::now() > deadline {
            bail!("docker-registry did not start: {text}");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Pushes the parallel release to fresh namespaces of a local registry with `cargo xtask
/// push` and with `skopeo copy --all`, first with an empty registry and then with every blob
/// present.
fn push_timings(root: &Path, sandbox: &Sandbox, report: &Value, dir: &Path) -> Result<Vec<(String, f64, f64)>> {
    let skopeo = which::which("skopeo")
        .context("skopeo not found (the push benchmark compares with it): run `cargo xtask setup --test-tools`")?;
    let _ = std::fs::remove_dir_all(dir);
    let (mut child, host) = start_registry(dir)?;
    let layout = sandbox.dir.join("oci");
    let ours = |namespace: &str| -> Result<f64> {
        let mut command = xtask(root, root)?;
        command
            .args(["push", &format!("{host}/{namespace}"), "--layout"])
            .arg(&layout)
            .arg("--digests-file")
            .arg(dir.join(format!("{namespace}.json")));
        Ok(measure(&mut command)?.wall)
    };
    let theirs = |namespace: &str| -> Result<f64> {
        let mut total = 0.0;
        for image in report["images"].as_array().into_iter().flatten() {
            let name = image["name"].as_str().unwrap_or_default();
            let reference = image["reference"].as_str().unwrap_or_default();
            let tag = reference.split(':').nth(1).unwrap_or("latest");
            let mut command = Command::new(&skopeo);
            command
                .args(["copy", "--quiet", "--all", "--dest-tls-verify=false"])
                .arg(format!("oci:{}:{reference}", layout.display()))
                .arg(format!("docker://{host}/{namespace}/{name}:{tag}"));
            total += measure(&mut command)?.wall;
        }
        Ok(total)
    };
    let result = (|| {
        let cold = ("empty registry".to_owned(), ours("ours")?, theirs("skopeo")?);
        let warm = ("every blob present".to_owned(), ours("ours")?, theirs("skopeo")?);
        Ok(vec![cold, warm])
    })();
    let _ = child.kill();
    let _ = child.wait();
    result
}

struct UmociRow {
    image: String,
    platform: String,
    ours_seconds: f64,
    ours_bytes: u64,
    umoci_seconds: f64,
    umoci_bytes: u64,
}

/// Inserts each binary of the report into an empty umoci image and measures the time and
/// the size of the layer that umoci writes.
/// Assembles each image of the report on its own into a fresh store and returns the seconds
/// each took, by image name and platform.
fn assemble_alone(plan: &crate::plan::Plan, report: &Value, dir: &Path) -> Result<Vec<(String, String, f64)>> {
    let _ = std::fs::remove_dir_all(dir);
    let store = crate::blobs::BlobStore::open(dir)?;
    let epoch = crate::release::source_date_epoch(&plan.root)?;
    let base = crate::base::layer(&plan.base)?.write(&store, epoch, 9)?;
    let mut times = Vec::new();
    for image_report in report["images"].as_array().into_iter().flatten() {
        let name = image_report["name"].as_str().unwrap_or_default();
        let image = plan.images.iter().find(|i| i.name == name).context("image of the report not in the plan")?;
        for platform_report in image_report["platforms"].as_array().into_iter().flatten() {
            let platform_name = platform_report["platform"].as_str().unwrap_or_default();
            let platform = plan
                .platforms
                .iter()
                .find(|p| p.oci_name() == platform_name)
                .context("platform of the report not in the plan")?;
            let binary = Path::new(platform_report["binary"].as_str().unwrap_or_default());
            let start = Instant::now();
            crate::oci::assemble(&store, &base, image, platform, binary, epoch)?;
            times.push((name.to_owned(), platform_name.to_owned(), start.elapsed().as_secs_f64()));
        }
    }
    Ok(times)
}

fn umoci_inserts(dir: &Path, report: &Value, alone: &[(String, String, f64)]) -> Result<Vec<UmociRow>> {
    let umoci = which::which("umoci")
        .context("umoci not found (the benchmark compares with it): run `cargo xtask setup --test-tools`")?;
    let _ = std::fs::remove_dir_all(dir);
    let layout = dir.join("layout");
    let run = |args: &[&str]| -> Result<Measured> {
        measure(Command::new(&umoci).args(args))
    };
    let layout_str = layout.to_string_lossy().into_owned();
    run(&["init", "--layout", &layout_str])?;
    run(&["new", "--image", &format!("{layout_str}:empty")])?;

    let mut rows = Vec::new();
    for image in report["images"].as_array().into_iter().flatten() {
        for platform in image["platforms"].as_array().into_iter().flatten() {
            let binary = platform["binary"].as_str().unwrap_or_default();
            let name = image["name"].as_str().unwrap_or_default().to_owned();
            let platform_name = platform["platform"].as_str().unwrap_or_default();
            let Some((_, _, ours_seconds)) =
                alone.iter().find(|(n, p, _)| *n == name && p == platform_name)
            else {
                continue;
            };
            let ours_seconds = *ours_seconds;
            let tag = format!("{}-{}", name, rows.len());
            let before = blob_sizes(&layout)?;
            let measured = run(&[
                "insert",
                "--image",
                &format!("{layout_str}:empty"),
                "--tag",
                &tag,
                binary,
                &format!("/usr/local/bin/{name}"),
            ])?;
            let after = blob_sizes(&layout)?;
            // The largest new blob is the layer; the others are small JSON documents.
            let layer = after.iter().filter(|(d, _)| !before.iter().any(|(b, _)| b == d)).map(|(_, s)| *s).max();
            rows.push(UmociRow {
                image: name,
                platform: platform["platform"].as_str().unwrap_or_default().to_owned(),
                ours_seconds,
                ours_bytes: platform["app_layer_size"].as_u64().unwrap_or(0),
                umoci_seconds: measured.wall,
                umoci_bytes: layer.unwrap_or(0),
            });
        }
    }
    Ok(rows)
}

fn blob_sizes(layout: &Path) -> Result<Vec<(String, u64)>> {
    let mut sizes = Vec::new();
    for entry in std::fs::read_dir(layout.join("blobs/sha256"))? {
        let entry = entry?;
        sizes.push((entry.file_name().to_string_lossy().into_owned(), entry.metadata()?.len()));
    }
    Ok(sizes)
}
