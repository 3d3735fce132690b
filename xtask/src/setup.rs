//! `cargo xtask setup`: installs what the plan needs on a Debian machine. Go and Zig come from
//! PyPI into `.tools/python`, cargo-zigbuild from crates.io into `.tools/cargo`, the Rust
//! targets through rustup, and the Debian packages that sources and the base layer come from
//! through apt-get. `--test-tools` adds what the tests run. Each step is skipped when its
//! result is already in place, so a second run does nothing.

use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::plan::Plan;
use crate::shell::Command;
use crate::tools::{self, Tool};
use crate::Context as Shared;

/// Debian packages the tests run: the reference registry, OCI tools, runtimes to start the
/// unpacked images, qemu for arm64, and the OCI JSON schemas.
pub const TEST_PACKAGES: &[&str] = &[
    "docker-registry",
    "skopeo",
    "umoci",
    "runc",
    "bubblewrap",
    "qemu-user-static",
    "golang-github-opencontainers-image-spec-dev",
    "openssl",
    "git",
];

/// PyPI requirement of the JSON-schema checker the tests run.
pub const CHECK_JSONSCHEMA: &str = "check-jsonschema==0.39.0";

pub fn run(shared: &Shared, plan: &Plan, test_tools: bool) -> Result<()> {
    let mut packages: Vec<String> = plan.debian_packages.iter().cloned().collect();
    // `cargo xtask run` starts images with bubblewrap.
    packages.push("bubblewrap".to_owned());
    if test_tools {
        packages.extend(TEST_PACKAGES.iter().map(|p| p.to_string()));
    }
    install_debian_packages(shared, &packages)?;

    let mut requirements = Vec::new();
    if !pinned_is_installed(&plan.go.tool, &plan.go.pypi, &tools::python_dir(&plan.root)) {
        requirements.push(plan.go.pypi.clone());
    }
    if !pinned_is_installed(&plan.rust.zig, &plan.rust.zig_pypi, &tools::python_dir(&plan.root)) {
        requirements.push(plan.rust.zig_pypi.clone());
    }
    if test_tools && !tools::python_dir(&plan.root).join("bin/check-jsonschema").is_file() {
        requirements.push(CHECK_JSONSCHEMA.to_owned());
    }
    pip_install(shared, &plan.root, &requirements)?;

    let zigbuild = &plan.rust.zigbuild;
    let local_zigbuild = tools::cargo_root(&plan.root).join("bin/cargo-zigbuild");
    let current = tools::probe_version(&local_zigbuild, &["--version"]);
    if current.as_ref() != Some(&zigbuild.minimum) {
        shared.progress.println(format!("installing cargo-zigbuild {}", zigbuild.minimum));
        Command::new(&plan.rust.cargo)
            .args(["install", "--locked", "--force", "cargo-zigbuild", "--version"])
            .arg(zigbuild.minimum.to_string())
            .arg("--root")
            .arg(tools::cargo_root(&plan.root))
            .run(&shared.progress, None)
            .context("installing cargo-zigbuild")?;
    }

    let mut targets: Vec<&str> = plan.platforms.iter().map(|p| p.rust_target.as_str()).collect();
    targets.dedup();
    add_rust_targets(shared, &targets)?;

    if test_tools {
        register_qemu(shared)?;
    }
    Ok(())
}

/// Checks whether the project-local copy of a tool has the version that `requirement`
/// (`name==VERSION`) pins.
fn pinned_is_installed(tool: &Tool, requirement: &str, python_dir: &Path) -> bool {
    let pinned = requirement.split_once("==").and_then(|(_, v)| tools::parse_version(v));
    let local = tool.path.as_deref().is_some_and(|path| path.starts_with(python_dir));
    local && pinned.is_some() && tool.version == pinned
}

fn pip_install(shared: &Shared, root: &Path, requirements: &[String]) -> Result<()> {
    if requirements.is_empty() {
        return Ok(());
    }
    shared.progress.println(format!("installing {} from PyPI", requirements.join(" ")));
    let python = which::which("python3").context(
        "python3 not found (setup installs Go and Zig with pip): run `apt-get install python3-pip`",
    )?;
    let has_pip = duct::cmd!(&python, "-m", "pip", "--version").stdout_null().stderr_null().run().is_ok();
    if !has_pip {
        install_debian_packages(shared, &["python3-pip".to_owned()])?;
    }
    Command::new(python)
        // Debian marks its Python as externally managed; `--target` installs into
        // .tools/python only, so the marker does not apply. Older pips ignore the variable.
        .env("PIP_BREAK_SYSTEM_PACKAGES", "1")
        .args(["-m", "pip", "install", "--disable-pip-version-check", "--no-input", "--upgrade"])
        .arg("--target")
        .arg(tools::python_dir(root))
        .args(requirements)
        .run(&shared.progress, None)
        .context("installing from PyPI")?;
    Ok(())
}

fn install_debian_packages(shared: &Shared, packages: &[String]) -> Result<()> {
    let missing: Vec<&String> = packages.iter().filter(|p| !debian_package_installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let list = missing.iter().map(|p| p.as_str()).collect::<Vec<_>>().join(" ");
    if !is_root() {
        bail!("missing Debian packages {list}: run `sudo apt-get install {list}`, then try again");
    }
    shared.progress.println(format!("installing Debian packages {list}"));
    Command::new("apt-get").arg("update").run(&shared.progress, None).context("apt-get update")?;
    Command::new("apt-get")
        .args(["install", "--yes", "--no-install-recommends"])
        .args(missing.iter().map(|p| p.as_str()))
        .env("DEBIAN_FRONTEND", "noninteractive")
        .run(&shared.progress, None)
        .with_context(|| format!("installing Debian packages {list}"))?;
    Ok(())
}

pub fn debian_package_installed(package: &str) -> bool {
    duct::cmd!("dpkg-query", "--show", "--showformat=${Status}", package)
        .stderr_null()
        .stdout_capture()
        .unchecked()
        .run()
        .is_ok_and(|output| String::from_utf8_lossy(&output.stdout).trim() == "install ok installed")
}

fn is_root() -> bool {
    duct::cmd!("id", "-u").read().is_ok_and(|uid| uid.trim() == "0")
}

/// Adds the Rust targets that rustup does not list as installed.
pub fn add_rust_targets(shared: &Shared, targets: &[&str]) -> Result<()> {
    if targets.is_empty() {
        return Ok(());
    }
    let installed = crate::release::installed_targets(shared)?;
    let missing: Vec<&str> =
        targets.iter().copied().filter(|t| !installed.iter().any(|i| i == t)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    shared.progress.println(format!("adding Rust targets {}", missing.join(" ")));
    Command::new("rustup")
        .args(["target", "add"])
        .args(&missing)
        .run(&shared.progress, None)
        .with_context(|| format!("adding Rust targets {}", missing.join(" ")))?;
    Ok(())
}

const BINFMT_DIR: &str = "/proc/sys/fs/binfmt_misc";
const QEMU_AARCH64_RULE: &str = "/usr/lib/binfmt.d/qemu-aarch64.conf";

/// Registers qemu-user-static for arm64 executables with binfmt_misc, mounting binfmt_misc
/// first when needed. Debian's rule carries the F flag, so the kernel keeps the interpreter
/// open and it also works inside a container's root directory.
fn register_qemu(shared: &Shared) -> Result<()> {
    let entry = Path::new(BINFMT_DIR).join("qemu-aarch64");
    if entry.exists() {
        return Ok(());
    }
    if !is_root() {
        bail!("qemu-aarch64 is not registered with binfmt_misc: run `sudo cargo xtask setup --test-tools`");
    }
    if !Path::new(BINFMT_DIR).join("register").exists() {
        Command::new("mount")
            .args(["-t", "binfmt_misc", "binfmt_misc", BINFMT_DIR])
            .run(&shared.progress, None)
            .context("mounting binfmt_misc")?;
    }
    let rule = std::fs::read_to_string(QEMU_AARCH64_RULE)
        .with_context(|| format!("reading {QEMU_AARCH64_RULE} (from qemu-user-static)"))?;
    std::fs::write(Path::new(BINFMT_DIR).join("register"), rule.trim_end())
        .context("registering qemu-aarch64 with binfmt_misc")?;
    shared.progress.println("registered qemu-aarch64 with binfmt_misc".to_owned());
    Ok(())
}
