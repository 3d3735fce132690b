//! The content-addressed blob directory of an OCI image layout (`blobs/sha256/`).
//!
//! Every blob is written to a temporary file in the same directory, hashed on the way, and
//! renamed to its digest only when complete, so a reader never sees a partial blob. A blob
//! that already exists is kept as it is.

use std::fs;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sha2::{Digest as _, Sha256};
use tempfile::NamedTempFile;

pub struct BlobStore {
    dir: PathBuf,
}

/// A blob in the store: its digest (`sha256:HEX`) and size in bytes.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Written {
    pub digest: String,
    pub size: u64,
}

impl BlobStore {
    /// Opens the store of the layout at `layout`, creating `blobs/sha256` if needed.
    pub fn open(layout: &Path) -> Result<BlobStore> {
        let dir = layout.join("blobs").join("sha256");
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(BlobStore { dir })
    }

    /// Returns the path of the blob with digest `sha256:HEX`.
    pub fn path(&self, digest: &str) -> PathBuf {
        self.dir.join(digest.trim_start_matches("sha256:"))
    }

    pub fn writer(&self) -> Result<BlobWriter> {
        let file = NamedTempFile::with_prefix_in(".partial-", &self.dir)
            .with_context(|| format!("creating a temporary file in {}", self.dir.display()))?;
        Ok(BlobWriter { file: BufWriter::new(file), hasher: Sha256::new(), size: 0, dir: self.dir.clone() })
    }

    pub fn write(&self, bytes: &[u8]) -> Result<Written> {
        let mut writer = self.writer()?;
        writer.write_all(bytes).context("writing a blob")?;
        writer.commit()
    }
}

pub struct BlobWriter {
    file: BufWriter<NamedTempFile>,
    hasher: Sha256,
    size: u64,
    dir: PathBuf,
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.file.write(buf)?;
        self.hasher.update(&buf[..written]);
        self.size += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl BlobWriter {
    /// Renames the finished blob to its digest; an existing blob of that digest is kept.
    pub fn commit(self) -> Result<Written> {
        let digest = sha256_digest(self.hasher);
        let file = self.file.into_inner().map_err(|err| err.into_error())?;
        let target = self.dir.join(digest.trim_start_matches("sha256:"));
        if !target.exists() {
            // Not synced: the rename alone keeps an interrupted run from leaving a partial
            // blob, and `index.json`, which is synced, is written last.
            rename_readable(file, &target)?;
        }
        Ok(Written { digest, size: self.size })
    }
}

/// Formats a finished SHA-256 as an OCI digest string.
pub fn sha256_digest(hasher: Sha256) -> String {
    format!("sha256:{}", hex::encode(hasher.finalize()))
}

/// Returns the OCI digest (`sha256:HEX`) of `bytes`.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(bytes))
}

/// Returns the hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut file = NamedTempFile::with_prefix_in(".partial-", dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    file.write_all(bytes).with_context(|| format!("writing {}", path.display()))?;
    persist(file, path)
}

/// Syncs a finished temporary file, makes it readable and renames it to `path`.
pub fn persist(file: NamedTempFile, path: &Path) -> Result<()> {
    file.as_file().sync_all().with_context(|| format!("syncing {}", path.display()))?;
    rename_readable(file, path)
}

/// Makes a finished temporary file readable and renames it to `path`.
pub fn rename_readable(file: NamedTempFile, path: &Path) -> Result<()> {
    make_readable(&file)?;
    file.persist(path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Gives a temporary file (created 0600) the 0644 mode of the files it replaces.
fn make_readable(file: &NamedTempFile) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(file.path(), fs::Permissions::from_mode(0o644))
        .with_context(|| format!("setting the mode of {}", file.path().display()))
}
