//! The TOML files as written: `targets/*.toml`, `toolchains/*.toml` and `images/*.toml`.
//!
//! Every struct rejects unknown keys, so a misspelled key is an error that names the file, the
//! line and the key. Values that need checking beyond their type keep their span
//! (`toml::Spanned`) so that `plan` can point at the line that contains them.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use toml::Spanned;

/// A TOML file read from disk, kept with its text so spans can be turned into line numbers.
pub struct Source<T> {
    pub path: PathBuf,
    pub text: String,
    pub value: T,
}

impl<T: DeserializeOwned> Source<T> {
    pub fn read(path: &Path) -> Result<Source<T>> {
        let text =
            fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        // toml's error message carries the line, the column and the offending key or value.
        let value = toml::from_str(&text).map_err(|err| {
            anyhow::anyhow!("invalid {}: {}", path.display(), err.to_string().trim_end())
        })?;
        Ok(Source { path: path.to_owned(), text, value })
    }
}

impl<T> Source<T> {
    /// Formats "FILE:LINE" for the start of `span`.
    pub fn at<V>(&self, spanned: &Spanned<V>) -> String {
        let offset = spanned.span().start.min(self.text.len());
        let line = self.text[..offset].matches('\n').count() + 1;
        format!("{}:{}", self.path.display(), line)
    }
}

/// `targets/NAME.toml`: everything that differs between platforms.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetFile {
    pub oci: OciPlatform,
    pub go: GoTarget,
    pub rust: RustTarget,
    pub elf: ElfTarget,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OciPlatform {
    pub os: Spanned<String>,
    pub architecture: String,
    pub variant: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoTarget {
    pub goarch: String,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RustTarget {
    pub target: Spanned<String>,
    #[serde(default)]
    pub rustflags: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ElfTarget {
    /// ELF `e_machine` by name: `x86_64`, `aarch64`, `riscv64`, ...
    pub machine: Spanned<String>,
}

/// `toolchains/go.toml`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoToolchain {
    pub pypi: String,
    pub min_version: Spanned<String>,
    #[serde(default)]
    pub flags: Vec<String>,
    #[serde(default)]
    pub ldflags: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

/// `toolchains/rust.toml`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RustToolchain {
    pub min_version: Spanned<String>,
    #[serde(default = "default_profile")]
    pub profile: String,
    pub cross: RustCross,
}

fn default_profile() -> String {
    "release".to_owned()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RustCross {
    pub cargo_zigbuild: Spanned<String>,
    pub zig_pypi: String,
    pub zig_min_version: Spanned<String>,
}

/// `images/NAME.toml`: one image, built for every platform unless `platforms` narrows it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageFile {
    #[serde(default = "default_tag")]
    pub tag: Spanned<String>,
    pub platforms: Option<Vec<Spanned<String>>>,
    pub go: Option<Spanned<GoSource>>,
    pub rust: Option<Spanned<RustSource>>,
    /// Path of the binary inside the image; `/usr/local/bin/NAME` by default.
    pub binary: Option<Spanned<String>>,
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub cmd: Vec<String>,
    #[serde(default = "default_user")]
    pub user: Spanned<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub ports: Vec<Spanned<String>>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub workdir: Option<Spanned<String>>,
    #[serde(default, rename = "file")]
    pub files: Vec<Spanned<ExtraFile>>,
}

fn default_tag() -> Spanned<String> {
    Spanned::new(0..0, "latest".to_owned())
}

fn default_user() -> Spanned<String> {
    Spanned::new(0..0, "65532:65532".to_owned())
}

/// A Go package, from a module directory in the repository or from a GOPATH tree.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoSource {
    /// Module directory relative to the repository root (contains `go.mod`).
    pub module: Option<String>,
    /// GOPATH tree to build in GOPATH mode (`GO111MODULE=off`).
    pub gopath: Option<String>,
    /// Package to build: relative to `module` (`.`, `./cmd/x`) or an import path under `gopath`.
    #[serde(default = "default_package")]
    pub package: String,
    /// Debian packages that provide the sources; `cargo xtask setup` installs them.
    #[serde(default)]
    pub debian_packages: Vec<String>,
}

fn default_package() -> String {
    ".".to_owned()
}

/// A binary target of a Cargo package in this workspace.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RustSource {
    pub package: Spanned<String>,
    /// Binary target name; the package's only binary when omitted.
    pub bin: Option<Spanned<String>>,
}

/// A file copied from the repository into the app layer.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtraFile {
    /// Path relative to the repository root.
    pub source: Spanned<String>,
    /// Absolute path inside the image.
    pub path: Spanned<String>,
    /// Permission bits, 0o644 when omitted.
    pub mode: Option<u32>,
}

/// `[workspace.metadata.xtask.base]` in the workspace `Cargo.toml`: where the base layer's
/// files come from on the build machine.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaseFiles {
    pub ca_bundle: Spanned<String>,
    pub zoneinfo: Spanned<String>,
    /// Debian packages that provide `ca_bundle` and `zoneinfo`.
    #[serde(default)]
    pub debian_packages: Vec<String>,
}

#[derive(Deserialize)]
pub struct CargoManifest {
    pub workspace: CargoWorkspace,
}

#[derive(Deserialize)]
pub struct CargoWorkspace {
    pub metadata: WorkspaceMetadata,
}

#[derive(Deserialize)]
pub struct WorkspaceMetadata {
    pub xtask: XtaskMetadata,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct XtaskMetadata {
    pub base: BaseFiles,
    pub publish: Option<PublishSettings>,
}

/// `[workspace.metadata.xtask.publish]`: defaults of `push` and `release --push`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishSettings {
    /// `REGISTRY/NAMESPACE` that images are pushed to.
    pub target: Option<String>,
}

/// Lists `DIR/*.toml`, sorted by name, so the plan's order does not depend on the file system.
pub fn toml_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    let mut paths = Vec::new();
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_some_and(|ext| ext == "toml") {
            paths.push(path);
        }
    }
    paths.sort();
    Ok(paths)
}

/// Returns the file stem, which names a platform or an image.
pub fn stem(path: &Path) -> String {
    path.file_stem().unwrap_or_default().to_string_lossy().into_owned()
}
