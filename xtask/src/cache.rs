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

    fn read<T: DeserializeOwned>(&self, kind: &str, name: &str, key: &str) -> Option<T> {
        let bytes = std::fs::read(self.path(kind, name)).ok()?;
        let entry: Entry<T> = serde_json::from_slice(&bytes).ok()?;
        (entry.key == key).then_some(entry.value)
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
