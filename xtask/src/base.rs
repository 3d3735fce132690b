//! The base layer that every image shares: what a static binary expects to find on a system.
//! It contains no binary, so one blob serves every platform.

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use crate::layer::{Content, Layer};
use crate::plan::BaseFiles;

/// User and group id of the unprivileged user that images run as by default.
pub const NONROOT: u64 = 65532;

const PASSWD: &str = "\
root:x:0:0:root:/root:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
";

const GROUP: &str = "\
root:x:0:
nonroot:x:65532:
";

// Go's resolver and glibc-style resolvers read this; without it some look up DNS before
// /etc/hosts.
const NSSWITCH: &str = "hosts: files dns\n";

/// Entries of the time-zone directory left out of the image: `posix` and `right` repeat the
/// database, `tzdata.zi` and `leap-seconds.list` are source forms that no runtime loader reads,
/// and `localtime` points at the build machine's own zone.
const ZONEINFO_SKIPPED: &[&str] = &["posix", "right", "tzdata.zi", "leap-seconds.list", "localtime"];

/// Collects the base layer's entries from the build machine's files.
pub fn layer(files: &BaseFiles) -> Result<Layer> {
    let mut layer = Layer::default();
    layer.add("etc/passwd", 0o644, Content::Bytes(PASSWD.into()));
    layer.add("etc/group", 0o644, Content::Bytes(GROUP.into()));
    layer.add("etc/nsswitch.conf", 0o644, Content::Bytes(NSSWITCH.into()));
    layer.add("etc/ssl/certs/ca-certificates.crt", 0o644, Content::File(files.ca_bundle.clone()));
    layer.add("root", 0o700, Content::Directory);
    layer.add("home", 0o755, Content::Directory);
    layer.add_owned("home/nonroot", 0o700, NONROOT, NONROOT, Content::Directory);
    layer.add("tmp", 0o1777, Content::Directory);
    let mut seen = HashMap::new();
    add_zoneinfo(&mut layer, &files.zoneinfo, "usr/share/zoneinfo", &mut seen)?;
    Ok(layer)
}

/// Adds the time-zone files under `dir`. Files with identical content (zone aliases) become
/// hard links to the first one, by sorted path, which keeps the layer small.
fn add_zoneinfo(
    layer: &mut Layer,
    dir: &Path,
    prefix: &str,
    seen: &mut HashMap<[u8; 32], String>,
) -> Result<()> {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .collect::<Result<_, _>>()?;
    entries.sort_by_key(|entry| entry.file_name());
    for entry in entries {
        let name = entry.file_name().to_string_lossy().into_owned();
        if prefix == "usr/share/zoneinfo" && ZONEINFO_SKIPPED.contains(&name.as_str()) {
            continue;
        }
        let path = entry.path();
        let in_layer = format!("{prefix}/{name}");
        let kind = entry.file_type()?;
        if kind.is_symlink() {
            let target = fs::read_link(&path)?.to_string_lossy().into_owned();
            // An absolute link would point outside the database once copied.
            if !target.starts_with('/') {
                layer.add(&in_layer, 0o777, Content::Symlink(target));
            }
        } else if kind.is_dir() {
            layer.add(&in_layer, 0o755, Content::Directory);
            add_zoneinfo(layer, &path, &in_layer, seen)?;
        } else if kind.is_file() {
            let bytes = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            let hash: [u8; 32] = Sha256::digest(&bytes).into();
            match seen.get(&hash) {
                Some(first) => layer.add(&in_layer, 0o644, Content::Hardlink(first.clone())),
                None => {
                    seen.insert(hash, in_layer.clone());
                    layer.add(&in_layer, 0o644, Content::Bytes(bytes));
                }
            }
        }
    }
    Ok(())
}
