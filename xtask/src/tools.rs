//! External tools: each is resolved once (environment override, then the project-local
//! `.tools` directory that `cargo xtask setup` fills, then `PATH`) and its version is checked
//! against the minimum that the toolchain files state.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use semver::Version;

/// One external program the plan needs.
#[derive(Clone)]
pub struct Tool {
    pub name: &'static str,
    /// Environment variable that overrides the lookup with a path.
    pub env: &'static str,
    pub path: Option<PathBuf>,
    pub version: Option<Version>,
    pub minimum: Version,
    /// How to install a suitable version, such as "`cargo xtask setup`".
    pub install: String,
    /// Images that need the tool, for error messages.
    pub needed_by: String,
}

impl Tool {
    /// Returns the path of a tool that is present and new enough, or an error that names what
    /// needs it and how to install it.
    pub fn require(&self) -> Result<&Path> {
        let Some(path) = &self.path else {
            bail!(
                "{} not found ({} need it): run {}, or set {} to its path",
                self.name,
                self.needed_by,
                self.install,
                self.env
            );
        };
        if !path.is_file() {
            bail!(
                "{} not found at {} ({} need it): run {}, or set {} to its path",
                self.name,
                path.display(),
                self.needed_by,
                self.install,
                self.env
            );
        }
        match &self.version {
            None => bail!(
                "cannot read the version of {} at {}: run {}",
                self.name,
                path.display(),
                self.install
            ),
            Some(version) if *version < self.minimum => bail!(
                "{} {} at {} is too old, {} need at least {}: run {}",
                self.name,
                version,
                path.display(),
                self.needed_by,
                self.minimum,
                self.install
            ),
            Some(_) => Ok(path),
        }
    }
}

/// Directory, relative to the workspace root, that `cargo xtask setup` installs tools into.
pub const TOOLS_DIR: &str = ".tools";

pub fn python_dir(root: &Path) -> PathBuf {
    root.join(TOOLS_DIR).join("python")
}

pub fn cargo_root(root: &Path) -> PathBuf {
    root.join(TOOLS_DIR).join("cargo")
}

/// Finds a program: `$ENV`, then the first existing `local` path, then `PATH`.
pub fn locate(env: &str, local: &[PathBuf], program: &str) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(env).filter(|value| !value.is_empty()) {
        return Some(PathBuf::from(path));
    }
    if let Some(path) = local.iter().find(|path| path.is_file()) {
        return Some(path.clone());
    }
    which::which(program).ok()
}

/// Runs `program args` and returns the first version-like word of its output, if any.
pub fn probe_version(program: &Path, args: &[&str]) -> Option<Version> {
    let output = duct::cmd(program, args)
        .stderr_to_stdout()
        .stdout_capture()
        .unchecked()
        .run()
        .ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.split_whitespace().find_map(parse_version)
}

/// Parses `1.27.3`, `go1.27.3`, `1.22` or `0.17.1-dev` leniently into a semver version.
pub fn parse_version(word: &str) -> Option<Version> {
    let word = word.trim_start_matches("go").trim_start_matches('v');
    let core: String = word.chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
    let mut parts = core.split('.').filter(|part| !part.is_empty());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next().map_or(Some(0), |part| part.parse().ok())?;
    let patch = parts.next().map_or(Some(0), |part| part.parse().ok())?;
    if !core.contains('.') {
        return None;
    }
    Some(Version::new(major, minor, patch))
}

/// Parses a `min_version` value from a toolchain file.
pub fn parse_minimum(value: &str, at: &str) -> Result<Version> {
    parse_version(value).with_context(|| {
        format!("{at}: invalid min_version {value:?}: expected a version such as \"1.22\"")
    })
}

/// Returns `PATH` with `dirs` in front, for child processes that look tools up themselves.
pub fn path_with(dirs: &[PathBuf]) -> OsString {
    let mut all: Vec<PathBuf> = dirs.to_vec();
    if let Some(path) = std::env::var_os("PATH") {
        all.extend(std::env::split_paths(&path));
    }
    std::env::join_paths(all).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_leniently() {
        assert_eq!(parse_version("go1.27.3"), Some(Version::new(1, 27, 3)));
        assert_eq!(parse_version("1.22"), Some(Version::new(1, 22, 0)));
        assert_eq!(parse_version("0.17.1-dev.3"), Some(Version::new(0, 17, 1)));
        assert_eq!(parse_version("rustc"), None);
        assert_eq!(parse_version("64"), None);
    }
}
