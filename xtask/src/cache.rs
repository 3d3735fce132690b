//! Skips work whose inputs have not changed since the last release into the same target
//! directory: assembling an image for a platform, and writing an image's OCI archive.
//!
//! A binary or extra file counts as unchanged when its size, modification time and inode are
//! the same. The compilers rewrite a binary they rebuild, which changes at least the time.
//! A cached result is used only when every blob it names is present in the layout.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::blobs::{self, BlobStore};
use crate::layer::LayerBlob;
use crate::oci::Assembled;
use crate::plan::{Image, Platform};

pub struct Cache {
    dir: PathBuf,
}

#[derive(Serialize, Deserialize)]
struct Entry<T> {
    key: String,
    value: T,
}

/// Size, modification time and inode of a file.
fn stamp(path: &Path) -> Result<(u64, i64, i64, u64)> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    Ok((meta.size(), meta.mtime(), meta.mtime_nsec(), meta.ino()))
}

impl Cache {
    pub fn open(target_dir: &Path) -> Cache {
        Cache { dir: target_dir.join("xtask/cache") }
    }

    /// Returns the key of an image's assembly: everything that goes into its blobs.
    pub fn assembly_key(
        image: &Image,
        platform: &Platform,
        binary: &Path,
        base_digest: &str,
        mtime: u64,
    ) -> Result<String> {
        let mut files = vec![stamp(binary)?];
        for file in &image.files {
            files.push(stamp(&file.source)?);
        }
        let inputs = serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "image": image,
            "platform": platform,
            "binary": binary,
            "files": files,
            "base": base_digest,
            "mtime": mtime,
        });
        Ok(blobs::sha256_hex(&serde_json::to_vec(&inputs)?))
    }

    fn path(&self, kind: &str, name: &str) -> PathBuf {
        self.dir.join(kind).join(format!("{name}.json"))
    }

    fn read_entry<T: DeserializeOwned>(&self, kind: &str, name: &str) -> Option<Entry<T>> {
        let bytes = std::fs::read(self.path(kind, name)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    fn read<T: DeserializeOwned>(&self, kind: &str, name: &str, key: &str) -> Option<T> {
        let entry: Entry<T> = self.read_entry(kind, name)?;
        (entry.key == key).then_some(entry.value)
    }

    /// Returns the key and the source list of the last `go build` of `name`.
    pub fn go_sources(&self, name: &str) -> Option<(String, GoSources)> {
        let entry: Entry<GoSources> = self.read_entry("go", name)?;
        Some((entry.key, entry.value))
    }

    /// Returns the cached base layer for `key` if its blob is in `store`.
    pub fn base_layer(&self, key: &str, store: &BlobStore) -> Option<LayerBlob> {
        let layer: LayerBlob = self.read("base", "layer", key)?;
        store.path(&layer.blob.digest).is_file().then_some(layer)
    }

    pub fn store_base_layer(&self, key: &str, layer: &LayerBlob) -> Result<()> {
        self.write("base", "layer", key, layer)
    }

    /// Returns the key of the last `cargo zigbuild` named `name`.
    pub fn rust_key(&self, name: &str) -> Option<String> {
        let entry: Entry<()> = self.read_entry("cargo", name)?;
        Some(entry.key)
    }

    pub fn store_rust_key(&self, name: &str, key: &str) -> Result<()> {
        self.write("cargo", name, key, ())
    }

    pub fn store_go_sources(&self, name: &str, key: &str, sources: &GoSources) -> Result<()> {
        self.write("go", name, key, sources)
    }

    fn write<T: Serialize>(&self, kind: &str, name: &str, key: &str, value: T) -> Result<()> {
        let entry = Entry { key: key.to_owned(), value };
        blobs::write_atomic(&self.path(kind, name), &serde_json::to_vec(&entry)?)
    }

    /// Returns the cached assembly of `name` if its key matches and its blobs are in `store`.
    pub fn assembled(&self, name: &str, key: &str, store: &BlobStore) -> Option<Assembled> {
        let assembled: Assembled = self.read("assembled", name, key)?;
        assembled.blobs.iter().all(|digest| store.path(digest).is_file()).then_some(assembled)
    }

    pub fn store_assembled(&self, name: &str, key: &str, assembled: &Assembled) -> Result<()> {
        self.write("assembled", name, key, assembled)
    }

    /// Checks whether `archive` was written from the index `key` and is still in place.
    pub fn archive_is_current(&self, archive: &Path, key: &str) -> bool {
        let name = blobs::sha256_hex(archive.to_string_lossy().as_bytes());
        let stamped: Option<(u64, i64, i64, u64)> = self.read("archives", &name, key);
        stamped.is_some_and(|stamped| stamp(archive).is_ok_and(|now| now == stamped))
    }

    pub fn store_archive(&self, archive: &Path, key: &str) -> Result<()> {
        let name = blobs::sha256_hex(archive.to_string_lossy().as_bytes());
        self.write("archives", &name, key, stamp(archive)?)
    }
}

/// The files a `go build` read outside the standard library: whole package directories
/// (not their subdirectories) and embedded files.
#[derive(Serialize, Deserialize)]
pub struct GoSources {
    dirs: Vec<PathBuf>,
    files: Vec<PathBuf>,
}

impl GoSources {
    /// Parses `go list` lines of a directory followed by its embedded files, tab-separated.
    /// The build's own directory is always included, for `go.mod` and `go.sum`.
    pub fn parse(listed: &str, build_dir: &Path) -> GoSources {
        let mut dirs = vec![build_dir.to_owned()];
        let mut files = Vec::new();
        for line in listed.lines().filter(|line| !line.trim().is_empty()) {
            let mut parts = line.split('\t');
            let dir = PathBuf::from(parts.next().unwrap_or_default());
            files.extend(parts.map(|file| dir.join(file)));
            dirs.push(dir);
        }
        dirs.sort();
        dirs.dedup();
        GoSources { dirs, files }
    }
}

/// Returns the key of a Go build: its command line and toolchain version (`inputs`), the
/// stamp of every file in the source directories and of each embedded file, and the stamp of
/// the output, so that a replaced binary is rebuilt.
pub fn go_key(inputs: &str, sources: &GoSources, out: &Path) -> Result<String> {
    let mut stamps = Vec::new();
    for dir in &sources.dirs {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .collect::<Result<_, _>>()?;
        entries.sort_by_key(|entry| entry.file_name());
        for entry in entries {
            if entry.file_type()?.is_file() {
                stamps.push((entry.path(), stamp(&entry.path())?));
            }
        }
    }
    for file in &sources.files {
        stamps.push((file.clone(), stamp(file)?));
    }
    stamps.push((out.to_owned(), stamp(out)?));
    let inputs = serde_json::json!({ "inputs": inputs, "stamps": stamps });
    Ok(blobs::sha256_hex(&serde_json::to_vec(&inputs)?))
}

/// Returns the key of a cargo build: its command line and rustc version (`inputs`), the
/// stamp of every file under the workspace packages' directories (target directories and
/// hidden ones left out), of the workspace's `Cargo.toml`, `Cargo.lock` and
/// `.cargo/config.toml`, and of each output.
/// NOTE: a build script that reads a file outside the workspace, or an environment variable
/// not in the command line, is not tracked; dependencies from crates.io are fixed by
/// `Cargo.lock`.
pub fn rust_key(inputs: &str, root: &Path, package_dirs: &[PathBuf], outputs: &[&Path]) -> Result<String> {
    let mut stamps = Vec::new();
    for name in ["Cargo.toml", "Cargo.lock", ".cargo/config.toml"] {
        let path = root.join(name);
        if path.exists() {
            stamps.push((path.clone(), stamp(&path)?));
        }
    }
    for dir in package_dirs {
        walk(dir, &mut stamps)?;
    }
    for output in outputs {
        stamps.push((output.to_path_buf(), stamp(output)?));
    }
    let inputs = serde_json::json!({ "inputs": inputs, "stamps": stamps });
    Ok(blobs::sha256_hex(&serde_json::to_vec(&inputs)?))
}

fn walk(dir: &Path, stamps: &mut Vec<(PathBuf, (u64, i64, i64, u64))>) -> Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .collect::<Result<_, _>>()?;
    entries.sort_by_key(|entry| entry.file_name());
    for entry in entries {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let kind = entry.file_type()?;
        if kind.is_dir() {
            if name != "target" && !name.starts_with('.') {
                walk(&entry.path(), stamps)?;
            }
        } else if kind.is_file() {
            stamps.push((entry.path(), stamp(&entry.path())?));
        }
    }
    Ok(())
}

/// Returns a key over `label` and the stamps of `paths`: files, or directories walked whole.
pub fn files_key(label: &str, paths: &[&Path]) -> Result<String> {
    let mut stamps = Vec::new();
    for path in paths {
        if path.is_dir() {
            walk(path, &mut stamps)?;
        } else {
            stamps.push((path.to_path_buf(), stamp(path)?));
        }
    }
    let inputs = serde_json::json!({ "label": label, "stamps": stamps });
    Ok(blobs::sha256_hex(&serde_json::to_vec(&inputs)?))
}
