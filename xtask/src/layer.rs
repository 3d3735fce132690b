//! Deterministic layer tarballs: entries sorted by path, every parent directory written
//! explicitly, owner 0:0 unless stated, no user or group names, one fixed mtime, and a gzip
//! header with no name and no time. The same entries always give the same bytes.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use tar::{EntryType, Header};

use crate::blobs::{BlobStore, Written};

/// Content of an entry.
pub enum Content {
    Directory,
    Bytes(Vec<u8>),
    File(PathBuf),
    Symlink(String),
    /// A hard link to another entry of the same layer, by its path in the layer.
    Hardlink(String),
}

pub struct Entry {
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub content: Content,
}

/// The entries of one layer, keyed by their path without the leading '/'.
#[derive(Default)]
pub struct Layer {
    entries: BTreeMap<Vec<String>, Entry>,
}

/// A written layer: the compressed blob and the digest of the uncompressed tar (its diff id).
#[derive(serde::Serialize, serde::Deserialize)]
pub struct LayerBlob {
    pub blob: Written,
    pub diff_id: String,
}

impl Layer {
    /// Adds an entry owned by root, and its missing parent directories with mode 0755.
    pub fn add(&mut self, path: &str, mode: u32, content: Content) {
        self.add_owned(path, mode, 0, 0, content);
    }

    /// Adds an entry with an explicit owner; a directory added this way replaces the 0755
    /// parent directory that an earlier entry created.
    pub fn add_owned(&mut self, path: &str, mode: u32, uid: u64, gid: u64, content: Content) {
        let parts: Vec<String> =
            path.split('/').filter(|part| !part.is_empty()).map(str::to_owned).collect();
        for depth in 1..parts.len() {
            self.entries.entry(parts[..depth].to_vec()).or_insert(Entry {
                mode: 0o755,
                uid: 0,
                gid: 0,
                content: Content::Directory,
            });
        }
        self.entries.insert(parts, Entry { mode, uid, gid, content });
    }

    /// Writes the layer as a gzip-compressed tar into `store`.
    pub fn write(&self, store: &BlobStore, mtime: u64, level: u32) -> Result<LayerBlob> {
        let tar = self.write_tar(Vec::new(), mtime)?;
        let (diff_id, compressed) =
            rayon::join(|| crate::blobs::digest_of(&tar), || crate::gzip::compress(&tar, level));
        let mut blob = store.writer()?;
        blob.write_all(&compressed?).context("writing a layer")?;
        Ok(LayerBlob { blob: blob.commit()?, diff_id })
    }

    /// Writes the entries as an uncompressed tar into `out` and returns `out`.
    pub fn write_tar<W: Write>(&self, out: W, mtime: u64) -> Result<W> {
        let mut tar = tar::Builder::new(out);
        for (parts, entry) in &self.entries {
            let path = parts.join("/");
            append(&mut tar, &path, entry, mtime).with_context(|| format!("adding /{path}"))?;
        }
        tar.into_inner().context("finishing the tar stream")
    }

    /// Writes the entries as an uncompressed tar file at `path`, through a temporary file.
    pub fn write_tar_atomic(&self, path: &Path, mtime: u64) -> Result<()> {
        let dir = path.parent().unwrap_or(Path::new("."));
        let file = tempfile::NamedTempFile::with_prefix_in(".partial-", dir)
            .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
        let file = self.write_tar(io::BufWriter::new(file), mtime)?;
        let file = file.into_inner().map_err(|err| err.into_error())?;
        crate::blobs::rename_readable(file, path)
    }
}

fn append<W: Write>(tar: &mut tar::Builder<W>, path: &str, entry: &Entry, mtime: u64) -> Result<()> {
    let mut header = Header::new_gnu();
    header.set_mode(entry.mode);
    header.set_uid(entry.uid);
    header.set_gid(entry.gid);
    header.set_mtime(mtime);
    match &entry.content {
        Content::Directory => {
            header.set_entry_type(EntryType::Directory);
            header.set_size(0);
            tar.append_data(&mut header, format!("{path}/"), io::empty())?;
        }
        Content::Bytes(bytes) => {
            header.set_entry_type(EntryType::Regular);
            header.set_size(bytes.len() as u64);
            tar.append_data(&mut header, path, bytes.as_slice())?;
        }
        Content::File(source) => {
            let file = std::fs::File::open(source)
                .with_context(|| format!("opening {}", source.display()))?;
            header.set_entry_type(EntryType::Regular);
            header.set_size(file.metadata()?.len());
            tar.append_data(&mut header, path, file)?;
        }
        Content::Symlink(target) => {
            header.set_entry_type(EntryType::Symlink);
            header.set_size(0);
            tar.append_link(&mut header, path, target)?;
        }
        Content::Hardlink(target) => {
            header.set_entry_type(EntryType::Link);
            header.set_size(0);
            tar.append_link(&mut header, path, target)?;
        }
    }
    Ok(())
}
