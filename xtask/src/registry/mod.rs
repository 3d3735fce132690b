//! Blob and manifest operations of the OCI distribution API, on top of `client`.

pub mod auth;
pub mod client;

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use indicatif::ProgressBar;

pub use client::{Body, Client, Endpoint};

/// Attempts of a whole blob upload (a new session each time) before giving up.
const UPLOAD_ATTEMPTS: u32 = 6;

fn pull_push(repository: &str) -> String {
    format!("repository:{repository}:pull,push")
}

fn pull(repository: &str) -> String {
    format!("repository:{repository}:pull")
}

/// Outcome of pushing a blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlobOutcome {
    Uploaded,
    Mounted,
    Present,
}

impl Client {
    /// Checks whether `repository` has the blob `digest` (HEAD).
    pub fn blob_exists(&self, repository: &str, digest: &str) -> Result<bool> {
        let url = self.url(&format!("v2/{repository}/blobs/{digest}"))?;
        let reply = self.send("HEAD", &url, &[pull_push(repository)], &[], &Body::Empty)?;
        match reply.status {
            200 => Ok(true),
            404 => Ok(false),
            status => bail!("checking blob {digest} in {}/{repository}: HTTP {status}", self.host()),
        }
    }

    /// Starts an upload session, mounting the blob from `from` when given. Returns `None` when
    /// the registry mounted the blob, else the session's URL.
    fn start_upload(&self, repository: &str, mount: Option<(&str, &str)>) -> Result<Option<url::Url>> {
        let mut url = self.url(&format!("v2/{repository}/blobs/uploads/"))?;
        let mut scopes = vec![pull_push(repository)];
        if let Some((digest, from)) = mount {
            url.query_pairs_mut().append_pair("mount", digest).append_pair("from", from);
            scopes.push(pull(from));
        }
        let reply = self.send("POST", &url, &scopes, &[], &Body::Empty)?;
        match reply.status {
            201 if mount.is_some() => Ok(None),
            202 => Ok(Some(reply.location()?)),
            status => Err(anyhow!(
                "starting an upload to {}/{repository}: HTTP {status}: {}",
                self.host(),
                reply.error_text()
            )),
        }
    }

    /// Uploads the blob at `path` in one PUT, restarting with a new session when the transfer
    /// fails or the registry forgot the session (`BLOB_UPLOAD_UNKNOWN`), unless the blob
    /// turns out to have arrived.
    pub fn upload_blob(
        &self,
        repository: &str,
        digest: &str,
        path: &Path,
        size: u64,
        progress: Option<&ProgressBar>,
        mut session: Option<url::Url>,
    ) -> Result<()> {
        let context = || format!("uploading blob {digest} to {}/{repository}", self.host());
        let scopes = [pull_push(repository)];
        for attempt in 1..=UPLOAD_ATTEMPTS {
            let mut url = match session.take() {
                Some(url) => url,
                None => self.start_upload(repository, None).with_context(context)?.expect("no mount requested"),
            };
            url.query_pairs_mut().append_pair("digest", digest);
            let body = Body::File { path, size, progress };
            let failure = match self.send_once("PUT", &url, &scopes, &[], &body) {
                Ok(reply) if reply.status == 201 || reply.status == 204 => return Ok(()),
                Ok(reply) if reply.has_error_code("BLOB_UPLOAD_UNKNOWN") => {
                    anyhow!("the registry forgot the upload session: {}", reply.error_text())
                }
                Ok(reply) => {
                    return Err(anyhow!("HTTP {}: {}", reply.status, reply.error_text())).with_context(context)
                }
                Err((error, true)) => error,
                Err((error, false)) => return Err(error).with_context(context),
            };
            if self.blob_exists(repository, digest).with_context(context)? {
                return Ok(());
            }
            if attempt == UPLOAD_ATTEMPTS {
                return Err(failure).with_context(context);
            }
            self.log_line(format!("restarting the upload of {digest} to {repository}: {failure:#}"));
            std::thread::sleep(std::time::Duration::from_millis(500 * u64::from(attempt)));
        }
        unreachable!("the loop returns on its last attempt")
    }

    /// Makes sure `repository` has the blob: skips it when present, mounts it from
    /// `mount_from` when given and allowed, and uploads it otherwise.
    pub fn push_blob(
        &self,
        repository: &str,
        digest: &str,
        path: &Path,
        size: u64,
        mount_from: Option<&str>,
        progress: Option<&ProgressBar>,
    ) -> Result<BlobOutcome> {
        let context = || format!("pushing blob {digest} to {}/{repository}", self.host());
        if self.blob_exists(repository, digest).with_context(context)? {
            return Ok(BlobOutcome::Present);
        }
        let mut session = None;
        if let Some(from) = mount_from {
            // A registry that cannot mount returns 202 with a fresh session, used for upload.
            match self.start_upload(repository, Some((digest, from))).with_context(context)? {
                None => return Ok(BlobOutcome::Mounted),
                Some(url) => session = Some(url),
            }
        }
        self.upload_blob(repository, digest, path, size, progress, session)?;
        Ok(BlobOutcome::Uploaded)
    }

    /// Puts a manifest or index under `reference` (a digest or a tag).
    pub fn put_manifest(&self, repository: &str, reference: &str, media_type: &str, bytes: &[u8]) -> Result<()> {
        let url = self.url(&format!("v2/{repository}/manifests/{reference}"))?;
        let headers = [("Content-Type", media_type)];
        let reply = self
            .send("PUT", &url, &[pull_push(repository)], &headers, &Body::Bytes(bytes))
            .with_context(|| format!("pushing manifest {reference} to {}/{repository}", self.host()))?;
        if reply.status != 201 {
            bail!(
                "the registry {} rejected manifest {reference} of {repository}: HTTP {}: {}",
                self.host(),
                reply.status,
                reply.error_text()
            );
        }
        Ok(())
    }
}

/// Media types a manifest GET accepts: OCI and Docker, images and indexes.
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json";

impl Client {
    /// Fetches the manifest `digest` of `repository`, or none when the registry lacks it. The
    /// bytes are checked against the digest.
    pub fn get_manifest(&self, repository: &str, digest: &str) -> Result<Option<Vec<u8>>> {
        let url = self.url(&format!("v2/{repository}/manifests/{digest}"))?;
        let headers = [("Accept", MANIFEST_ACCEPT)];
        self.get_checked(repository, &url, &headers, digest)
    }

    /// Fetches the blob `digest` of `repository`, or none when the registry lacks it.
    pub fn get_blob(&self, repository: &str, digest: &str) -> Result<Option<Vec<u8>>> {
        let url = self.url(&format!("v2/{repository}/blobs/{digest}"))?;
        self.get_checked(repository, &url, &[], digest)
    }

    fn get_checked(&self, repository: &str, url: &url::Url, headers: &[(&str, &str)], digest: &str) -> Result<Option<Vec<u8>>> {
        let reply = self.send("GET", url, &[pull_push(repository)], headers, &Body::Empty)?;
        match reply.status {
            200 => {}
            404 => return Ok(None),
            status => bail!("fetching {digest} from {}/{repository}: HTTP {status}: {}", self.host(), reply.error_text()),
        }
        let actual = crate::blobs::digest_of(&reply.body);
        if actual != digest {
            bail!("{}/{repository} returned {actual} for {digest}", self.host());
        }
        Ok(Some(reply.body))
    }
}
